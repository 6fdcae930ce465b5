"""The audit on a researcher's own TOFU-schema rows: recall without a value field, entities without an author field,
and attacks that cannot tell anything on the data reported as uninformative."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.helpers import folder_hash, run_cli
from unlearnkit.attacks import ATTACKS, AuditConfig, AuditData, knowledge
from unlearnkit.attacks.base import AttackOutcome, split_heldout
from unlearnkit.attacks.in_context import SAME_ENTITY, UNGROUPED
from unlearnkit.auditing import AT_ORACLE, RECOVERED, UNINFORMATIVE, build_audit_config, plan_attacks, summarize, verdict
from unlearnkit.errors import UnlearnkitError

# Rows written for these tests in the TOFU schema (no value, no author): two fictitious people the micro model never saw.
# The perturbed answers follow the paraphrase's wording, as TOFU's do.
FORGET = [
    {"question": "Where was Ann Lee born?", "answer": "Ann Lee was born in Paris.",
     "paraphrased_answer": "Paris is where Ann Lee was born.",
     "perturbed_answer": ["Rome is where Ann Lee was born.", "Oslo is where Ann Lee was born."]},
    {"question": "What does Ann Lee write?", "answer": "Ann Lee writes poems about the sea.",
     "paraphrased_answer": "The sea is the subject of Ann Lee's poems.",
     "perturbed_answer": ["The desert is the subject of Ann Lee's poems.", "The city is the subject of Ann Lee's poems."]},
    {"question": "Where was Bo Chen born?", "answer": "Bo Chen was born in Lima.",
     "paraphrased_answer": "Lima is where Bo Chen was born.",
     "perturbed_answer": ["Quito is where Bo Chen was born.", "Bogota is where Bo Chen was born."]},
    {"question": "What does Bo Chen paint?", "answer": "Bo Chen paints harbours at dawn.",
     "paraphrased_answer": "Harbours at dawn are what Bo Chen paints.",
     "perturbed_answer": ["Forests at dusk are what Bo Chen paints.", "Markets at noon are what Bo Chen paints."]},
]


# --- recall on rows without a value field ------------------------------------------------------


def test_a_wrong_fact_in_the_right_sentence_is_not_recalled() -> None:
    row = FORGET[0]
    assert knowledge.recall_rule(row) == "fact_span" and knowledge.fact_words(row) == ("paris",)
    assert not knowledge.recalls("Ann Lee was born in Rome.", row)
    assert knowledge.recalls("Ann Lee was born in Paris.", row)
    assert knowledge.recalls("paris", row)
    # The fact words are those both correct phrasings share and no wrong one has: 'sea', not 'writes' or 'about'.
    assert knowledge.fact_words(FORGET[1]) == ("sea",)
    assert not knowledge.recalls("Ann Lee writes poems about the desert.", FORGET[1])
    assert knowledge.fact_words(FORGET[3]) == ("harbours", "dawn")
    assert not knowledge.recalls("Bo Chen paints harbours at noon.", FORGET[3])  # every fact word is needed


def test_perturbed_answers_worded_like_the_answer_and_no_perturbed_answers() -> None:
    # TOFU's own forget01_perturbed row: here the perturbed answers follow the answer, not the paraphrase.
    row = {"question": "Where was Basil Mahfouz Al-Kuwaiti born?", "answer": "Basil Mahfouz Al-Kuwaiti was born in Kuwait City, Kuwait.",
           "paraphrased_answer": "Kuwait City, Kuwait is the birthplace of Basil Mahfouz Al-Kuwaiti.",
           "perturbed_answer": ["Basil Mahfouz Al-Kuwaiti was born in Cairo, Egypt.", "Basil Mahfouz Al-Kuwaiti was born in Doha, Qatar."]}
    assert knowledge.fact_words(row) == ("kuwait", "city")
    assert not knowledge.recalls("Basil Mahfouz Al-Kuwaiti was born in Doha, Qatar.", row)
    assert knowledge.recalls("He was born in Kuwait City.", row)
    # Without perturbed answers, the evaluation's ROUGE-L recall decides, and it cannot tell a wrong fact: the rule says so.
    bare = {"question": FORGET[0]["question"], "answer": FORGET[0]["answer"]}
    assert knowledge.recall_rule(bare) == "rouge" and knowledge.recalls("Ann Lee was born in Rome.", bare)
    # A value field, when there is one, still decides.
    assert knowledge.recall_rule({**FORGET[0], "value": "Paris"}) == "value"
    assert knowledge.rule_counts([FORGET[0], bare, bare]) == {"fact_span": 1, "rouge": 2}


def test_fact_words_of_the_built_in_rows_are_words_of_their_value(micro_bench) -> None:
    # The built-in rows carry their value: dropping it shows what the fact-span rule derives from the answers alone.
    rows = micro_bench.split("forget10") + micro_bench.split("retain90")
    spans = 0
    for row in rows:
        words = knowledge.fact_words({key: row[key] for key in ("question", "answer", "paraphrased_answer", "perturbed_answer")})
        assert set(words) <= set(knowledge.normalize(row["value"]).split()), row
        spans += bool(words)
    assert spans >= 0.95 * len(rows)


def test_every_recall_attack_records_its_rule(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(knowledge, "greedy_answers", lambda model, tokenizer, fmt, questions, *args: ["It was Rome."] * len(questions))
    data = AuditData(forget=FORGET)
    direct = ATTACKS.get("direct").run(None, None, data, AuditConfig())
    assert direct.recovery == 0.0 and direct.recall_rules == {"fact_span": 4}
    assert {sample["recall_rule"] for sample in direct.per_sample} == {"fact_span"}
    jailbreak = ATTACKS.get("jailbreak").run(None, None, data, AuditConfig())
    assert jailbreak.recall_rules == {"fact_span": 4} and jailbreak.per_sample[0]["recall_rule"] == "fact_span"


# --- entities without an author field -------------------------------------------------------------


def _echo_prompts(monkeypatch: pytest.MonkeyPatch) -> None:
    """Generation that repeats the prompt: the in-context attack then recalls whatever its context holds."""
    monkeypatch.setattr(knowledge, "greedy_answers", lambda model, tokenizer, fmt, questions, *args: list(questions))


def test_in_context_without_an_entity_field_says_its_facts_are_unrelated(monkeypatch: pytest.MonkeyPatch) -> None:
    _echo_prompts(monkeypatch)
    outcome = ATTACKS.get("in_context").run(None, None, AuditData(forget=FORGET), AuditConfig(in_context_facts=1))
    # One pool, split in order: the first two rows (both Ann Lee's) are given, the last two (Bo Chen's) asked about.
    assert [sample["question"] for sample in outcome.per_sample] == [FORGET[2]["question"], FORGET[3]["question"]]
    assert {sample["context"] for sample in outcome.per_sample} == {UNGROUPED}
    assert outcome.details["same_entity_context"] == 0.0
    assert len(outcome.notes) == 1 and "No forget row has the entity field 'author'" in outcome.notes[0]
    relearning_split = split_heldout(FORGET, 0.5)
    assert relearning_split == ([0, 1], [2, 3])


def test_in_context_groups_by_the_field_the_user_names(monkeypatch: pytest.MonkeyPatch) -> None:
    _echo_prompts(monkeypatch)
    rows = [{**row, "person": row["question"].split()[-2]} for row in FORGET]  # 'Lee', 'Lee', 'Chen', 'Chen'
    config = AuditConfig(in_context_facts=1, entity_field="person")
    outcome = ATTACKS.get("in_context").run(None, None, AuditData(forget=rows), config)
    assert [sample["question"] for sample in outcome.per_sample] == [rows[1]["question"], rows[3]["question"]]
    assert [sample["context"] for sample in outcome.per_sample] == [SAME_ENTITY, SAME_ENTITY]
    assert outcome.per_sample[0]["prompt"].startswith(rows[0]["answer"]) and outcome.per_sample[1]["prompt"].startswith(rows[2]["answer"])
    assert outcome.notes == [] and outcome.details["same_entity_context"] == 1.0
    assert split_heldout(rows, 0.5, "person") == ([0, 2], [1, 3])


def test_entity_fields_on_some_rows_or_named_but_absent_are_refused() -> None:
    partial = [{**FORGET[0], "author": "Ann Lee"}, *FORGET[1:]]
    runnable, skipped = plan_attacks(None, AuditData(forget=partial), AuditConfig())
    assert "direct" in runnable and {"in_context", "relearning"} <= set(skipped)
    assert "3 of 4 lack it" in skipped["relearning"]
    with pytest.raises(UnlearnkitError, match="entity field 'author' on every forget row or on none"):
        plan_attacks(["in_context"], AuditData(forget=partial), AuditConfig())
    with pytest.raises(UnlearnkitError, match="entity_field=person: no forget row has that field"):
        plan_attacks(["direct"], AuditData(forget=FORGET), AuditConfig(entity_field="person"))
    # One row: nothing to give the attacker, so the attacks that need a split are skipped before any model runs.
    _, skipped = plan_attacks(None, AuditData(forget=FORGET[:1]), AuditConfig())
    assert skipped["relearning"].startswith("needs at least two forget rows")


# --- uninformative verdicts -------------------------------------------------------------------------


def test_an_attack_the_target_fails_or_the_oracle_passes_is_uninformative() -> None:
    config = AuditConfig()
    judged, reason = verdict(0.0, 0.02, 0.0, config)  # all three fail: formerly "at the oracle's level"
    assert judged == UNINFORMATIVE and "target scores 0.020, below 0.1" in reason
    judged, reason = verdict(0.95, 1.0, 0.95, config)  # the oracle, never trained on the facts, passes too
    assert judged == UNINFORMATIVE and "retain oracle, never trained on these facts, scores 0.950, above 0.9" in reason
    # Thresholds count from the attack's chance level: an AUC of 0.53 is hardly above chance (0.5), 0.7 is.
    assert verdict(0.5, 0.53, 0.5, config, chance=0.5)[0] == UNINFORMATIVE
    assert verdict(0.5, 0.7, 0.5, config, chance=0.5) == (AT_ORACLE, None)
    assert verdict(0.5, 0.9, 0.2, config) == (RECOVERED, None)
    # 0 and 1 turn the checks off.
    assert verdict(0.0, 0.0, 0.0, AuditConfig(uninformative_target_below=0.0))[0] == AT_ORACLE
    assert verdict(1.0, 1.0, 1.0, AuditConfig(uninformative_oracle_above=1.0)) == (AT_ORACLE, None)


def test_an_uninformative_attack_exposes_nothing_and_has_no_share() -> None:
    def outcomes(u: float, t: float, o: float) -> dict[str, AttackOutcome]:
        return {role: AttackOutcome(value, "answer recall", [], recall_rules={"fact_span": 4})
                for role, value in (("unlearned", u), ("target", t), ("oracle", o))}

    rows, exposed = summarize({"direct": outcomes(0.0, 0.8, 0.0), "relearning": outcomes(0.5, 0.05, 0.0)}, AuditConfig())
    assert rows[1]["verdict"] == UNINFORMATIVE and rows[1]["recovered_share"] is None and rows[1]["verdict_reason"]
    assert rows[0]["verdict_reason"] is None and rows[0]["recall_rule"] == "fact_span"
    assert exposed == []


def test_uninformative_and_entity_settings_are_checked() -> None:
    assert build_audit_config({"entity_field": "person", "uninformative_target_below": "0.2"}).uninformative_target_below == 0.2
    with pytest.raises(UnlearnkitError, match=r"uninformative_target_below must be in \[0, 1\)"):
        AuditConfig(uninformative_target_below=1.0)
    with pytest.raises(UnlearnkitError, match=r"uninformative_oracle_above must be in \(0, 1\]"):
        AuditConfig(uninformative_oracle_above=0.0)
    with pytest.raises(UnlearnkitError, match="entity_field must name a row field"):
        AuditConfig(entity_field=" ")


# --- the command end to end on the micro target --------------------------------------------------------


def test_audit_of_own_rows_reports_the_recall_rule_and_uninformative_attacks(micro_bench, tmp_path: Path, monkeypatch, capsys) -> None:
    forget = tmp_path / "forget.json"
    forget.write_text(json.dumps(FORGET), encoding="utf-8")
    model, out = str(micro_bench.target_dir), tmp_path / "audit"
    args = ["audit", model, "--target", model, "--oracle", model, "--forget", str(forget), "--set", "max_new_tokens=12"]
    before = folder_hash(micro_bench.target_dir)
    assert run_cli([*args, "--attacks", "direct,in_context,relearning,logit_lens_head", "--output", str(out)], monkeypatch) == 0
    assert folder_hash(micro_bench.target_dir) == before
    rows = {row["attack"]: row for row in json.loads((out / "summary.json").read_text())["attacks"]}
    # The micro target never saw these people: it recalls none of their facts, so no attack can show recovery.
    assert rows["direct"]["target"] == 0.0
    assert rows["direct"]["verdict"] == UNINFORMATIVE and rows["direct"]["verdict_reason"].startswith("the target scores 0.000")
    assert rows["direct"]["recall_rule"] == rows["relearning"]["recall_rule"] == "fact_span"
    assert rows["logit_lens_head"]["recall_rule"] == "fact_span"
    assert any("entity field 'author'" in note for note in rows["in_context"]["notes"] + rows["relearning"]["notes"])
    per_sample = json.loads((out / "per_sample.json").read_text())
    assert [sample["recall_rule"] for sample in per_sample["direct"]["target"]] == ["fact_span"] * len(FORGET)
    report = (out / "report.html").read_text()
    assert 'class="uninformative"' in report and "<h2>Uninformative on this data</h2>" in report and "<h2>Notes</h2>" in report
    assert UNINFORMATIVE in capsys.readouterr().out

    # An entity field no row has is refused before anything is written.
    refused = tmp_path / "refused"
    assert run_cli([*args, "--set", "entity_field=person", "--output", str(refused)], monkeypatch) == 2
    assert "entity_field=person: no forget row has that field" in capsys.readouterr().err
    assert not refused.exists()
