"""The lm-eval extra on a tiny local multiple-choice task (skipped when lm-eval is not installed)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from tests.helpers import run_cli
from unlearnkit.errors import UnlearnkitError
from unlearnkit.evaluation.general import general_summary, lm_eval_available, parse_tasks
from unlearnkit.modeling import load_model, load_tokenizer

TASK_DIR = Path(__file__).parent / "fixtures" / "lm_eval_task"
TASK = "unlearnkit_tiny_mc"
needs_lm_eval = pytest.mark.skipif(not lm_eval_available(), reason="lm-eval (the optional 'general' extra) is not installed")


def expected_accuracy(model, tokenizer) -> float:
    """Accuracy by hand: per question, the choice whose continuation ' CHOICE' has the highest summed log-likelihood
    after 'Question: Q\\nAnswer:', tokenised as lm-eval does (context + continuation together, split at the context)."""
    rows = [json.loads(line) for line in (TASK_DIR / "tiny_mc.jsonl").read_text().splitlines()]
    correct = 0
    for row in rows:
        context = f"Question: {row['question']}\nAnswer:"
        context_ids = tokenizer(context)["input_ids"]
        scores = []
        for choice in row["choices"]:
            whole = tokenizer(context + " " + choice)["input_ids"]
            with torch.no_grad():
                logits = model(input_ids=torch.tensor([whole])).logits[0].float()
            log_probs = torch.log_softmax(logits, dim=-1)
            scores.append(sum(float(log_probs[t - 1, whole[t]]) for t in range(len(context_ids), len(whole))))
        correct += int(max(range(len(scores)), key=scores.__getitem__) == row["answer"])
    return correct / len(rows)


@needs_lm_eval
def test_lm_eval_accuracy_matches_a_hand_computed_one(micro_bench, monkeypatch) -> None:
    from unlearnkit.evaluation.general import evaluate_general

    model = load_model(micro_bench.target_dir)
    tokenizer = load_tokenizer(micro_bench.target_dir)
    monkeypatch.chdir(TASK_DIR)  # the task's data file is named relative to the working directory
    model.train()
    results = evaluate_general(model, tokenizer, [TASK], include_path=TASK_DIR, batch_size=4)
    assert model.training  # handed back in the mode it came in
    assert set(results) == {TASK}
    assert results[TASK]["acc"] == pytest.approx(expected_accuracy(model, tokenizer))
    assert general_summary(results) == {f"general_{TASK}_acc": results[TASK]["acc"]}
    with pytest.raises(UnlearnkitError, match="Unknown lm-eval task"):
        evaluate_general(model, tokenizer, ["no_such_task_xyz"], include_path=TASK_DIR)


@needs_lm_eval
def test_cli_general_writes_a_results_folder(micro_bench, tmp_path: Path, monkeypatch) -> None:
    out = tmp_path / "general"
    monkeypatch.chdir(TASK_DIR)
    code = run_cli(["general", "--model", str(micro_bench.target_dir), "--tasks", TASK, "--include-path", str(TASK_DIR),
                    "--output", str(out), "--batch-size", "4"], monkeypatch)
    assert code == 0
    summary = json.loads((out / "summary.json").read_text())
    accuracy = summary[f"general_{TASK}_acc"]
    assert 0.0 <= accuracy <= 1.0 and math.isclose(accuracy * 4, round(accuracy * 4))
    assert json.loads((out / "config.json").read_text())["tasks"] == [TASK]


def test_parse_tasks() -> None:
    assert parse_tasks(" mmlu, wmdp_bio ,") == ["mmlu", "wmdp_bio"]
    with pytest.raises(UnlearnkitError, match="--tasks"):
        parse_tasks(" , ")
