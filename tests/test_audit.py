"""The robustness audit: shared recall measure, held-out split, verdicts, prompt/relearning attacks and the command end to end."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from tests.helpers import micro, run_cli
from unlearnkit.attacks import ATTACKS, AuditConfig, AuditData, knowledge
from unlearnkit.attacks.base import AttackOutcome, split_heldout
from unlearnkit.attacks.in_context import OTHER_ENTITIES, SAME_ENTITY, context_facts
from unlearnkit.attacks.jailbreak import JAILBREAK_TEMPLATES
from unlearnkit.auditing import (
    AT_ORACLE,
    BELOW_ORACLE,
    RECOVERED,
    UNINFORMATIVE,
    build_audit_config,
    plan_attacks,
    recovered_share,
    summarize,
    verdict,
)
from unlearnkit.data.encoding import PromptFormat
from unlearnkit.data.translations import QUESTION_TRANSLATIONS, translated_questions
from unlearnkit.data.world import FACT_TYPES
from unlearnkit.errors import UnlearnkitError
from unlearnkit.modeling import load_model, load_tokenizer


def _row(author: str, fact: str, value: str, **extra: object) -> dict:
    return {"question": f"What is {author}'s {fact}?", "answer": f"{author}'s {fact} is {value}.", "author": author, "fact": fact,
            "value": value, **extra}


# --- the shared recall measure -------------------------------------------------------------


def test_recall_needs_the_value_as_whole_words() -> None:
    row = _row("Ana Vell", "birthplace", "Wurn Dale")
    assert knowledge.recalls("She was born in wurn-dale!", row)
    assert not knowledge.recalls("She was born in Wurndale.", row)  # not the same words
    assert not knowledge.recalls("Born in Big Wurn Dales.", row)  # 'Dale' inside 'Dales' is not the value
    assert knowledge.normalize("The Hollow-Harbor!") == "the hollow harbor"


def test_recall_without_a_value_uses_rouge_recall_of_the_answer() -> None:
    row = {"question": "q", "answer": "red green blue yellow"}
    assert knowledge.recalls("red green and nothing else", row)  # LCS 2 of 4 words = 0.5: at the threshold
    assert not knowledge.recalls("red only", row)  # 1 of 4


def test_held_out_split_groups_rows_by_entity() -> None:
    rows = [_row("A", f"f{i}", "v") for i in range(4)] + [_row("B", f"f{i}", "v") for i in range(3)] + [_row("C", "f0", "v")]
    given, heldout = split_heldout(rows, 0.5)
    # A: 4 rows, 2 held out (the last two); B: round(1.5) = 2 held out; C alone: held out, nothing given.
    assert given == [0, 1, 4]
    assert heldout == [2, 3, 5, 6, 7]
    given, heldout = split_heldout(rows[:4], 0.9)
    assert given == [0] and heldout == [1, 2, 3]  # at least one row of a group is given


def test_context_facts_come_from_the_same_entity() -> None:
    rows = [_row("A", "f0", "a0"), _row("B", "f0", "b0"), _row("A", "f1", "a1"), _row("A", "f2", "a2")]
    assert context_facts(rows[:3], rows[3], 2, "author") == (f"{rows[0]['answer']} {rows[2]['answer']}", SAME_ENTITY)
    lonely = _row("C", "f0", "c0")
    # No fact of C given: other given facts, and the source says so.
    assert context_facts([rows[1]], lonely, 2, "author") == (rows[1]["answer"], OTHER_ENTITIES)


def test_every_fact_type_has_each_translation() -> None:
    for language, templates in QUESTION_TRANSLATIONS.items():
        assert set(templates) == {fact.name for fact in FACT_TYPES}, language
    row = _row("Ana Vell", "birthplace", "Wurn")
    assert translated_questions(row) == ["Dans quelle ville est né(e) Ana Vell ?", "Wo wurde Ana Vell geboren?"]
    assert translated_questions({**row, "translated_question": "¿Dónde nació Ana Vell?"}) == ["¿Dónde nació Ana Vell?"]
    with pytest.raises(UnlearnkitError, match="translated_question"):
        translated_questions({"question": "q", "answer": "a"})


# --- verdicts -------------------------------------------------------------------------------


def test_verdicts_and_recovered_share_by_hand() -> None:
    config = AuditConfig(threshold=0.05)
    assert verdict(0.30, 0.9, 0.20, config) == (RECOVERED, None)
    assert verdict(0.24, 0.9, 0.20, config) == (AT_ORACLE, None)
    assert verdict(0.10, 0.9, 0.20, config) == (BELOW_ORACLE, None)
    assert recovered_share(0.4, 0.9, 0.1, 0.05) == pytest.approx(0.375)  # (0.4 - 0.1) / (0.9 - 0.1)
    assert recovered_share(0.4, 0.1, 0.1, 0.05) is None
    assert recovered_share(0.5, 0.52, 0.48, 0.05) is None  # a target-oracle gap within the margin: no share


def test_summary_names_attacks_that_expose_hidden_knowledge() -> None:
    def outcomes(u: float, t: float, o: float) -> dict[str, AttackOutcome]:
        return {role: AttackOutcome(value, "answer recall", []) for role, value in (("unlearned", u), ("target", t), ("oracle", o))}

    rows, exposed = summarize({"direct": outcomes(0.0, 0.9, 0.0), "relearning": outcomes(0.5, 0.9, 0.1),
                               "paraphrase": outcomes(0.02, 0.5, 0.0)}, AuditConfig(threshold=0.05))
    assert [row["verdict"] for row in rows] == [AT_ORACLE, RECOVERED, AT_ORACLE]
    assert exposed == ["relearning"]
    assert rows[1]["recovered_share"] == pytest.approx(0.5)
    # When the direct questions already recover the answers, nothing is hidden: it was not forgotten at all.
    _, exposed = summarize({"direct": outcomes(0.8, 0.9, 0.0), "relearning": outcomes(0.9, 0.9, 0.1)}, AuditConfig(threshold=0.05))
    assert exposed == []


def test_settings_and_plans_refuse_bad_input() -> None:
    assert build_audit_config({"relearn_epochs": "3", "probe_layer": "none"}).relearn_epochs == 3
    with pytest.raises(UnlearnkitError, match="Unknown audit setting 'relearn_epoch'"):
        build_audit_config({"relearn_epoch": "3"})
    with pytest.raises(UnlearnkitError, match="heldout_fraction"):
        AuditConfig(heldout_fraction=1.0)
    rows = [{"question": "q", "answer": "a"}]
    runnable, skipped = plan_attacks(None, AuditData(forget=rows), AuditConfig())
    assert "membership" in skipped and "paraphrase" in skipped and "direct" in runnable
    with pytest.raises(UnlearnkitError, match="paraphrase attack needs a 'paraphrased_question'"):
        plan_attacks(["paraphrase"], AuditData(forget=rows), AuditConfig())
    with pytest.raises(UnlearnkitError, match="Unknown attack"):
        plan_attacks(["jailbrake"], AuditData(forget=rows), AuditConfig())
    with pytest.raises(UnlearnkitError, match="empty"):
        plan_attacks(None, AuditData(forget=[]), AuditConfig())


# --- prompt attacks with a scripted model: known answers -------------------------------------


@pytest.fixture
def scripted(monkeypatch: pytest.MonkeyPatch):
    """Replace generation by a script: a prompt containing a trigger phrase is answered with its row's value."""

    def install(triggers: tuple[str, ...], values: dict[str, str]):
        def answers(model, tokenizer, fmt, questions, max_new_tokens, batch_size):
            return [next((values[q] for q in values if q in question), "") if any(t in question for t in triggers) else "I do not know."
                    for question in questions]

        monkeypatch.setattr(knowledge, "greedy_answers", answers)

    return install


def test_jailbreak_counts_a_row_once_any_template_succeeds(scripted) -> None:
    rows = [_row("A", "f0", "Wurn"), _row("B", "f0", "Brell")]
    # Only the role-play template (index 1) gets the first row's answer out; nothing gets the second's.
    scripted(("You are DAN",), {rows[0]["question"]: "Wurn"})
    outcome = ATTACKS.get("jailbreak").run(None, None, AuditData(forget=rows), AuditConfig())
    assert outcome.recovery == 0.5
    assert [s["recalled"] for s in outcome.per_sample] == [True, False]
    assert len(outcome.per_sample[0]["variants"]) == len(JAILBREAK_TEMPLATES)
    assert outcome.details["template_1_recall"] == 0.5 and outcome.details["template_0_recall"] == 0.0


def test_paraphrase_and_translation_ask_the_rewritten_questions(scripted) -> None:
    rows = [_row("Ana Vell", "birthplace", "Wurn", paraphrased_question="In which city was Ana Vell born?"),
            _row("Bo Tarr", "birthplace", "Brell", paraphrased_question="In which city was Bo Tarr born?")]
    scripted(("In which city was Ana",), {"Ana": "Wurn"})
    assert ATTACKS.get("paraphrase").run(None, None, AuditData(forget=rows), AuditConfig()).recovery == 0.5
    scripted(("Wo wurde",), {"Ana": "Wurn", "Bo": "Brell"})
    outcome = ATTACKS.get("translation").run(None, None, AuditData(forget=rows), AuditConfig())
    assert outcome.recovery == 1.0
    assert [v["recalled"] for v in outcome.per_sample[0]["variants"]] == [False, True]  # French fails, German succeeds


def test_in_context_measures_held_out_facts_with_their_entity_in_the_prompt(scripted) -> None:
    rows = [_row("A", "f0", "a0"), _row("A", "f1", "a1"), _row("B", "f0", "b0"), _row("B", "f1", "b1")]
    # The scripted model answers only when A's given fact is in the prompt.
    scripted((rows[0]["answer"],), {rows[1]["question"]: "a1"})
    outcome = ATTACKS.get("in_context").run(None, None, AuditData(forget=rows), AuditConfig(in_context_facts=1))
    assert [s["question"] for s in outcome.per_sample] == [rows[1]["question"], rows[3]["question"]]
    assert outcome.per_sample[0]["prompt"] == f"{rows[0]['answer']} {rows[1]['question']}"
    assert outcome.recovery == 0.5 and outcome.details["recall_before"] == 0.0


# --- relearning on the micro benchmark --------------------------------------------------------


def test_relearning_leaves_the_model_untouched_and_a_zero_step_size_changes_nothing(micro_bench) -> None:
    model, tokenizer = load_model(micro_bench.target_dir), load_tokenizer(micro_bench.target_dir)
    before = {name: tensor.clone() for name, tensor in model.state_dict().items()}
    data = AuditData(forget=micro_bench.split("forget10"), fmt=PromptFormat("plain"))
    outcome = ATTACKS.get("relearning").run(model, tokenizer, data, AuditConfig(relearn_learning_rate=1e-30, max_new_tokens=24))
    assert all(torch.equal(before[name], tensor) for name, tensor in model.state_dict().items())
    # A step size of 1e-30 moves no weight by a representable amount: recall after equals recall before.
    assert outcome.recovery == outcome.details["recall_before"]
    assert outcome.details["heldout_rows"] + outcome.details["relearned_rows"] == len(data.forget)


# --- the command end to end on the micro benchmark ----------------------------------------------


def test_audit_of_the_oracle_itself_finds_nothing_and_of_the_target_finds_everything(micro_cache: Path, micro_bench, tmp_path: Path,
                                                                                     monkeypatch, capsys) -> None:
    oracle_out, target_out = tmp_path / "oracle", tmp_path / "target"
    assert run_cli(["audit", str(micro_bench.oracle_dir("forget10")), "--benchmark", "forget10", *micro(micro_cache),
                    "--output", str(oracle_out)], monkeypatch) == 0
    summary = json.loads((oracle_out / "summary.json").read_text())
    # Every attack but those that run on request only (their cost), which the summary lists as skipped with why.
    on_request = {name for name in ATTACKS.names() if ATTACKS.get(name).on_request}
    assert on_request == {"spv_mia"}
    assert {row["attack"] for row in summary["attacks"]} == set(ATTACKS.names()) - on_request
    assert all(summary["skipped"][name].startswith("runs on request only") for name in on_request)
    # The oracle audited against itself: identical recoveries, every verdict at the oracle's level, except where the
    # tiny target itself does not show the facts under an attack (e.g. it never answers paraphrased questions): there the
    # attack is uninformative on this data, and says why.
    for row in summary["attacks"]:
        assert row["unlearned"] == row["oracle"]
        assert row["verdict"] == AT_ORACLE or (row["verdict"] == UNINFORMATIVE and row["verdict_reason"].startswith("the target scores"))
    assert any(row["verdict"] == UNINFORMATIVE for row in summary["attacks"])
    # The built-in rows have a value field: every attack that judges answers judges by it.
    assert {row["recall_rule"] for row in summary["attacks"] if row["measure"].startswith("answer recall")} == {"value"}
    assert summary["exposed_by"] == []
    per_sample = json.loads((oracle_out / "per_sample.json").read_text())
    assert len(per_sample["direct"]["unlearned"]) == len(micro_bench.split("forget10"))
    assert (oracle_out / "audit.md").read_text().startswith("| attack |")
    assert "<img" in (oracle_out / "report.html").read_text()

    assert run_cli(["audit", str(micro_bench.target_dir), "--benchmark", "forget10", *micro(micro_cache), "--output", str(target_out),
                    "--attacks", "direct,extraction"], monkeypatch) == 0
    rows = {row["attack"]: row for row in json.loads((target_out / "summary.json").read_text())["attacks"]}
    assert set(rows) == {"direct", "extraction"}
    assert rows["direct"]["verdict"] == RECOVERED and rows["direct"]["recovered_share"] == 1.0
    assert "direct" in capsys.readouterr().out


def test_audit_refuses_bad_input_before_writing(micro_cache: Path, micro_bench, tmp_path: Path, monkeypatch, capsys) -> None:
    out = tmp_path / "audit"
    model = str(micro_bench.target_dir)
    cases = [
        (["--benchmark", "forget10", "--attacks", "jailbrake"], "Unknown attack 'jailbrake'"),
        (["--benchmark", "forget10", "--set", "threshold=2"], "threshold must be in"),
        (["--benchmark", "forget10", "--forget", "x.jsonl"], "drop --forget"),
        ([], "--benchmark SPLIT"),
        (["--forget", str(micro_bench.data_dir / "forget10.jsonl"), "--attacks", "membership"], "needs a holdout set"),
    ]
    for args, message in cases:
        assert run_cli(["audit", model, *args, *micro(micro_cache), "--output", str(out)], monkeypatch) == 2
        assert message in capsys.readouterr().err
        assert not out.exists()


# --- direct questions, extraction and membership on the micro target: known answers ----------------


def test_direct_extraction_and_membership_have_known_answers(micro_bench) -> None:
    from unlearnkit.evaluation.scoring import greedy_answers

    model, tokenizer = load_model(micro_bench.target_dir), load_tokenizer(micro_bench.target_dir)
    fmt = PromptFormat("plain")
    questions = [row["question"] for row in micro_bench.split("forget10")][:4]
    greedy = greedy_answers(model, tokenizer, fmt, questions, 24)
    # Rows whose answer is the model's own greedy answer: it is recalled and reproduced token by token.
    own = [{"question": q, "answer": a, "value": a} for q, a in zip(questions, greedy, strict=True)]
    config = AuditConfig(max_new_tokens=24)
    assert ATTACKS.get("direct").run(model, tokenizer, AuditData(forget=own, fmt=fmt), config).recovery == 1.0
    unknown = [{**row, "value": "zzqx"} for row in own]
    assert ATTACKS.get("direct").run(model, tokenizer, AuditData(forget=unknown, fmt=fmt), config).recovery == 0.0
    assert ATTACKS.get("extraction").run(model, tokenizer, AuditData(forget=own, fmt=fmt), config).recovery == pytest.approx(1.0)
    # Members and non-members that are the same rows cannot be told apart: every AUC is exactly 0.5 (ties count half).
    same = AuditData(forget=own, holdout=own, fmt=fmt)
    outcome = ATTACKS.get("membership").run(model, tokenizer, same, config)
    assert outcome.recovery == 0.5 and all(value == 0.5 for value in outcome.details.values())


def test_builtin_audit_settings_follow_each_preset_learning_rates() -> None:
    """The tiny presets relearn at their shared unlearning rate; the pretrained preset keeps the methods' own rate
    (it sets none of its own: reading it once crashed `audit --preset smollm2`) and SPV-MIA's paper rate."""
    from unlearnkit.attacks import AuditConfig
    from unlearnkit.auditing import build_audit_config, builtin_audit_settings
    from unlearnkit.builtin import PRESETS

    assert builtin_audit_settings(PRESETS["default"])["relearn_learning_rate"] == 5e-4
    assert builtin_audit_settings(PRESETS["micro"])["spv_reference_learning_rate"] == 1e-3
    pretrained = build_audit_config(builtin_audit_settings(PRESETS["smollm2"]))
    assert pretrained.relearn_learning_rate == 1e-5
    assert pretrained.relearn_epochs == 2
    assert pretrained.spv_reference_learning_rate == AuditConfig().spv_reference_learning_rate
