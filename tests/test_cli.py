"""End-to-end command-line tests on the micro benchmark (a handful of authors, a one-layer model)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from transformers import AutoModelForCausalLM

from tests.helpers import folder_hash, micro, run_cli

HEADLINE = ("forget_quality", "model_utility", "forget_truth_ratio", "forget_probability", "forget_rouge_l")


def test_demo_writes_the_results_contract(micro_cache: Path, tmp_path: Path, monkeypatch, capsys) -> None:
    out = tmp_path / "demo"
    assert run_cli(["demo", "--output", str(out), *micro(micro_cache)], monkeypatch) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary) == {"target", "oracle", "unlearned"}
    for model_name, values in summary.items():
        for metric in (*HEADLINE, "retain_probability", "world_facts_truth_ratio", "real_authors_rouge_l"):
            assert isinstance(values[metric], float), (model_name, metric)
    # The oracle is compared with its own reference: KS p-value of identical samples.
    assert summary["oracle"]["forget_quality"] == pytest.approx(1.0)
    per_sample = json.loads((out / "per_sample.json").read_text())
    assert len(per_sample["unlearned"]["forget"]) == len(per_sample["target"]["forget"]) > 0
    assert {"question", "generation", "probability", "truth_ratio", "rouge_l_recall"} <= set(per_sample["unlearned"]["forget"][0])
    config = json.loads((out / "config.json").read_text())
    assert config["method"] == "npo" and config["hyperparameters"]["beta"] == 0.1
    assert (out / "model" / "model.safetensors").exists() and (out / "log.txt").read_text()
    AutoModelForCausalLM.from_pretrained(out / "model")
    printed = capsys.readouterr().out
    assert "forget_quality" in printed and "unlearned" in printed


def test_unlearn_then_eval_builtin(micro_cache: Path, micro_bench, tmp_path: Path, monkeypatch) -> None:
    target_before = folder_hash(micro_bench.target_dir)
    out = tmp_path / "unlearned"
    code = run_cli(["unlearn", "--method", "graddiff", "--forget", "forget10", "--output", str(out),
                    "--set", "num_epochs=1", *micro(micro_cache)], monkeypatch)
    assert code == 0
    summary = json.loads((out / "summary.json").read_text())
    assert 0.0 <= summary["forget_quality"] <= 1.0 and "model_utility" in summary
    assert json.loads((out / "config.json").read_text())["hyperparameters"]["num_epochs"] == 1.0
    assert folder_hash(micro_bench.target_dir) == target_before, "the source model must never be written to"

    evaluated = tmp_path / "eval"
    assert run_cli(["eval", "--model", str(out / "model"), "--benchmark", "forget10", "--output", str(evaluated),
                    *micro(micro_cache)], monkeypatch) == 0
    again = json.loads((evaluated / "summary.json").read_text())
    # Evaluating the saved model reproduces the numbers computed right after unlearning.
    for metric in HEADLINE:
        assert again[metric] == pytest.approx(summary[metric], rel=1e-5, abs=1e-9), metric


def test_unlearn_on_user_files(micro_bench, tmp_path: Path, monkeypatch) -> None:
    forget_file = tmp_path / "forget.jsonl"
    retain_file = tmp_path / "retain.json"
    forget_file.write_text("\n".join(json.dumps(r) for r in micro_bench.split("forget10")), encoding="utf-8")
    retain_file.write_text(json.dumps(micro_bench.split("retain90")), encoding="utf-8")
    out = tmp_path / "run"
    code = run_cli(["unlearn", "--model", str(micro_bench.target_dir), "--method", "npo", "--forget", str(forget_file),
                    "--retain", str(retain_file), "--oracle-reference", str(micro_bench.reference_path("forget10")),
                    "--set", "learning_rate=2e-3", "--set", "num_epochs=2", "--output", str(out)], monkeypatch)
    assert code == 0
    summary = json.loads((out / "summary.json").read_text())
    assert {"forget_quality", "forget_truth_ratio", "retain_probability"} <= set(summary)
    assert "model_utility" not in summary  # no utility sets were given, so it is not guessed


def test_finetune_tiny_model_on_a_file(micro_bench, tmp_path: Path, monkeypatch) -> None:
    data = tmp_path / "qa.jsonl"
    data.write_text("\n".join(json.dumps({"question": r["question"], "answer": r["answer"]})
                              for r in micro_bench.split("forget10")), encoding="utf-8")
    out = tmp_path / "ft"
    code = run_cli(["finetune", "--data", str(data), "--output", str(out), "--max-epochs", "2", "--preset", "micro"], monkeypatch)
    assert code == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["epochs"] == 2 and len(summary["accuracy_history"]) == 2
    model = AutoModelForCausalLM.from_pretrained(out / "model")
    assert model.config.hidden_size == 32


def test_methods_lists_papers(monkeypatch, capsys) -> None:
    from unlearnkit.methods import METHODS

    assert run_cli(["methods", "--verbose"], monkeypatch) == 0
    printed = capsys.readouterr().out
    for name in METHODS.names():
        assert f"\n{name}\n" in f"\n{printed}"
    assert printed.count("Paper:") == len(METHODS.names()) and "beta (float, default 0.1)" in printed
    assert "[objective]" in printed and "lora_rank (int, default 0)" in printed


def test_lora_adapter_saved_alone_then_evaluated(micro_cache: Path, micro_bench, tmp_path: Path, monkeypatch) -> None:
    out = tmp_path / "lora"
    code = run_cli(["unlearn", "--method", "npo", "--forget", "forget10", "--output", str(out), "--set", "num_epochs=1",
                    "--set", "lora_rank=4", "--set", "lora_merge=false", "--set", "learning_rate=1e-2", *micro(micro_cache)], monkeypatch)
    assert code == 0
    saved = {path.name for path in (out / "model").iterdir()}
    # The adapter alone: no full copy of the base weights, and a pointer to the base model.
    assert {"adapter_model.safetensors", "adapter_config.json"} <= saved and "model.safetensors" not in saved
    base = json.loads((out / "model" / "adapter_config.json").read_text())["base_model_name_or_path"]
    assert Path(base) == micro_bench.target_dir.resolve()
    summary = json.loads((out / "summary.json").read_text())
    evaluated = tmp_path / "eval"
    assert run_cli(["eval", "--model", str(out / "model"), "--benchmark", "forget10", "--output", str(evaluated),
                    *micro(micro_cache)], monkeypatch) == 0
    again = json.loads((evaluated / "summary.json").read_text())
    for metric in HEADLINE:
        assert again[metric] == pytest.approx(summary[metric], rel=1e-5, abs=1e-9), metric


def test_data_export(tmp_path: Path, monkeypatch) -> None:
    out = tmp_path / "data"
    assert run_cli(["data", "export", "--output", str(out), "--preset", "micro"], monkeypatch) == 0
    rows = [json.loads(line) for line in (out / "forget10.jsonl").read_text().splitlines()]
    assert rows and {"question", "answer", "paraphrased_answer", "perturbed_answer", "paraphrased_question"} <= set(rows[0])


def test_own_data_workflow_target_oracle_reference(micro_bench, tmp_path: Path, monkeypatch) -> None:
    """A user's own data: fine-tune a target and an oracle, store the oracle's reference, unlearn, get forget quality."""
    def write(name: str, rows: list[dict]) -> Path:
        path = tmp_path / name
        path.write_text("\n".join(json.dumps(r) for r in rows), encoding="utf-8")
        return path

    forget = write("forget.jsonl", micro_bench.split("forget10"))
    retain = write("retain.jsonl", micro_bench.split("retain90"))
    common = ["--max-epochs", "3", "--preset", "micro"]
    assert run_cli(["finetune", "--data", str(forget), "--data", str(retain), "--output", str(tmp_path / "target"), *common],
                   monkeypatch) == 0
    assert run_cli(["finetune", "--data", str(retain), "--output", str(tmp_path / "oracle"), *common], monkeypatch) == 0
    reference = tmp_path / "oracle" / "forget_reference.json"
    assert run_cli(["eval", "--model", str(tmp_path / "oracle" / "model"), "--forget", str(forget), "--save-reference", str(reference),
                    "--output", str(tmp_path / "oracle-eval")], monkeypatch) == 0
    stored = json.loads(reference.read_text())
    per_sample = json.loads((tmp_path / "oracle-eval" / "per_sample.json").read_text())["forget"]
    assert stored["truth_ratio"] == [row["truth_ratio"] for row in per_sample]
    assert run_cli(["unlearn", "--model", str(tmp_path / "target" / "model"), "--method", "simnpo", "--forget", str(forget),
                    "--retain", str(retain), "--oracle-reference", str(reference), "--set", "num_epochs=1",
                    "--output", str(tmp_path / "unlearned")], monkeypatch) == 0
    assert 0.0 <= json.loads((tmp_path / "unlearned" / "summary.json").read_text())["forget_quality"] <= 1.0


FIXTURES = Path(__file__).parent / "fixtures"


def test_generation_cap_follows_each_data_source(micro_cache: Path, micro_bench, tmp_path: Path, monkeypatch) -> None:
    """TOFU's cap for tofu: names (200), MUSE's for knowmem (32), 200 for a user's file, 48 on the built-in splits; an
    explicit --max-new-tokens wins everywhere. The cap generated with is the one config.json records."""
    from unlearnkit.evaluation import evaluator

    asked: list[int] = []

    def recording(model, tokenizer, fmt, questions, max_new_tokens, batch_size):
        asked.append(max_new_tokens)
        return ["x"] * len(questions)

    monkeypatch.setattr(evaluator, "greedy_answers", recording)
    own = tmp_path / "facts.jsonl"
    own.write_text(json.dumps({"question": "Who wrote it?", "answer": "Nobody."}) + "\n", encoding="utf-8")
    sources = ["--forget", f"tofu:forget01@{FIXTURES / 'tofu'}", "--retain", f"muse-news:knowmem/retain_qa@{FIXTURES / 'muse-news'}",
               "--world-facts", str(own)]

    def caps(*extra: str) -> dict:
        out = tmp_path / f"eval-{len(list(tmp_path.iterdir()))}"
        asked.clear()
        assert run_cli(["eval", "--model", str(micro_bench.target_dir), "--output", str(out), *extra], monkeypatch) == 0
        config = json.loads((out / "config.json").read_text())
        assert list(config["max_new_tokens"].values()) == asked  # recorded as generated, split by split
        return config["max_new_tokens"]

    assert caps(*sources) == {"forget": 200, "retain": 32, "world_facts": 200}
    assert caps(*sources, "--max-new-tokens", "12") == {"forget": 12, "retain": 12, "world_facts": 12}
    assert caps("--benchmark", "forget10", *micro(micro_cache)) == dict.fromkeys(["forget", "retain", "real_authors", "world_facts"], 48)


def test_reference_prompt_format_is_recorded(micro_bench, tmp_path: Path, monkeypatch) -> None:
    out = tmp_path / "eval"
    assert run_cli(["eval", "--model", str(micro_bench.target_dir), "--forget", f"tofu:forget01@{FIXTURES / 'tofu'}",
                    "--prompt-format", "tofu-llama2", "--max-new-tokens", "4", "--output", str(out)], monkeypatch) == 0
    config = json.loads((out / "config.json").read_text())
    assert (config["prompt_format"], config["system_prompt"], config["date_string"]) == ("tofu-llama2", None, None)
    assert json.loads((out / "summary.json").read_text())["forget_probability"] > 0


def _command_names() -> list[list[str]]:
    from unlearnkit.cli.commands import app, data_app  # importing the commands registers them

    names = [[command.name or command.callback.__name__.replace("_", "-")] for command in app.registered_commands]
    return names + [["data", command.name or command.callback.__name__] for command in data_app.registered_commands]


@pytest.mark.parametrize("command", _command_names(), ids=" ".join)
def test_every_command_prints_its_help_verbatim(command: list[str], monkeypatch, capsys) -> None:
    # Help texts hold brackets ("[INST] q [/INST]", "hf:NAME[:CONFIG][@SPLIT]", "unlearnkit[general]"): shown as written.
    assert run_cli([*command, "--help"], monkeypatch) == 0
    text = capsys.readouterr().out
    assert f"{command[-1]} [OPTIONS]" in text and "Traceback" not in text
    if "--prompt-format" in text:
        assert "[INST]" in " ".join(text.split())
