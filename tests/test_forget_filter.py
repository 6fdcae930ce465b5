"""ForgetFilter (Zhao et al., ICML 2024): the score, flags, quality measures and ROUGE by hand and against independent
transcriptions; the harmfulness judge; the built-in safety-mix data; the ranking on a planted mix; `unlearnkit filter`
end to end and every bad input refused (exit 2, one message, nothing written)."""

from __future__ import annotations

import json
import math
import zlib
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from tests.helpers import folder_hash, run_cli
from unlearnkit.data.encoding import PromptFormat
from unlearnkit.data.safety_mix import SPLITS, SafetyMixConfig, build_safety_mix
from unlearnkit.errors import UnlearnkitError
from unlearnkit.filtering.forget_filter import (
    ForgetFilterConfig,
    filter_quality,
    first_line,
    flag_unsafe,
    forget_filter,
    forgetting_scores,
    ranking_auc,
    response_rouge,
)
from unlearnkit.filtering.judge import HarmJudge, JudgeConfig, builtin_judge, hashed_features
from unlearnkit.modeling import TinyModelConfig, build_tiny_model, save_model, train_tokenizer
from unlearnkit.settings import build_config

FMT = PromptFormat("plain")

# ------------------------------------------------------------------------------------------------ score and flags


def test_forgetting_score_and_flags_by_hand() -> None:
    before, after = [0.9, 0.5, 0.4, 0.2], [0.1, 0.45, 0.5, 0.2]
    scores = forgetting_scores(before, after)
    assert scores == pytest.approx([0.8, 0.05, -0.1, 0.0])
    assert flag_unsafe(scores, phi=0.5).tolist() == [True, False, False, False]
    # The authors' rule is strict (score > phi): a score equal to phi is kept.
    assert flag_unsafe(scores, phi=0.0).tolist() == [True, True, False, False]
    assert flag_unsafe([0.3, 0.3], phi=0.3).tolist() == [False, False]
    # top_fraction: ceil(0.5 * 4) = 2 highest scores; ceil(0.3 * 4) = 2; ties go to the earlier row.
    assert flag_unsafe(scores, top_fraction=0.5).tolist() == [True, True, False, False]
    assert flag_unsafe(scores, top_fraction=0.3).tolist() == [True, True, False, False]
    assert flag_unsafe([0.2, 0.5, 0.5], top_fraction=0.5).tolist() == [False, True, True]
    with pytest.raises(ValueError):
        forgetting_scores([0.1, 0.2], [0.1])


def _reference_filter_counts(flags: list[bool], labels: list[bool]) -> tuple[float, float, float]:
    """Independent transcription of the authors' dt_forget_filter: recall = flagged harmful / harmful, precision = flagged
    harmful / flagged, f1 = 2 r p / (r + p)."""
    n_harmful_flagged = sum(1 for f, lab in zip(flags, labels, strict=True) if f and lab)
    n_flagged = sum(1 for f in flags if f)
    n_harmful = sum(1 for lab in labels if lab)
    recall = n_harmful_flagged / n_harmful
    precision = n_harmful_flagged / n_flagged
    return precision, recall, 2 * recall * precision / (recall + precision)


def test_filter_quality_by_hand_and_against_the_authors_formula() -> None:
    flags, labels = [True, True, False, False, True], [True, False, True, False, True]
    quality = filter_quality(flags, labels)
    # TP = rows 1 and 5, FP = row 2, FN = row 3, TN = row 4.
    assert (quality["true_positives"], quality["false_positives"], quality["false_negatives"], quality["true_negatives"]) == (2, 1, 1, 1)
    assert quality["precision"] == pytest.approx(2 / 3)
    assert quality["recall"] == pytest.approx(2 / 3)
    assert quality["f1"] == pytest.approx(2 / 3)
    flags, labels = [True, False, False, True, True, False], [True, True, True, False, True, False]
    quality = filter_quality(flags, labels)
    assert quality["precision"] == pytest.approx(2 / 3) and quality["recall"] == pytest.approx(2 / 4)
    assert quality["f1"] == pytest.approx(2 * (2 / 3) * 0.5 / (2 / 3 + 0.5))
    assert (quality["precision"], quality["recall"], quality["f1"]) == pytest.approx(_reference_filter_counts(flags, labels))
    # Undefined ratios are None, never a made-up 0: nothing flagged has no precision; no unsafe row has no recall.
    assert filter_quality([False, False], [True, False])["precision"] is None
    assert filter_quality([True, False], [False, False])["recall"] is None
    assert filter_quality([True, False], [False, True])["f1"] == 0.0


def _reference_auc(scores: list[float], labels: list[bool]) -> float:
    """P(score of an unsafe row > score of a safe row) + ½ P(equal), over every pair (the definition, counted pair by pair)."""
    pairs = [(p, n) for p, lp in zip(scores, labels, strict=True) if lp for n, ln in zip(scores, labels, strict=True) if not ln]
    return sum(1.0 if p > n else 0.5 if p == n else 0.0 for p, n in pairs) / len(pairs)


def test_ranking_auc_by_hand_and_against_pair_counting() -> None:
    assert ranking_auc([0.9, 0.3, 0.5, 0.1], [True, False, True, False]) == pytest.approx(1.0)
    # One unsafe row ties one safe row and beats the other: (0.5 + 1) / 2.
    assert ranking_auc([0.5, 0.5, 0.2], [True, False, False]) == pytest.approx(0.75)
    assert ranking_auc([0.1, 0.9], [True, False]) == pytest.approx(0.0)
    rng = np.random.default_rng(3)
    scores = np.round(rng.normal(size=40), 1).tolist()  # rounded: ties occur
    labels = (rng.random(40) < 0.4).tolist()
    assert ranking_auc(scores, labels) == pytest.approx(_reference_auc(scores, labels), abs=1e-12)
    assert ranking_auc([0.2, 0.4], [True, True]) is None


# ------------------------------------------------------------------------------------------------ ROUGE


def _reference_rouge(prediction: str, reference: str, kind: str) -> float:
    """Independent transcription (no stemming needed for these words): lower-cased alphanumeric tokens; ROUGE-1 overlap =
    Σ_w min(count_pred, count_ref), ROUGE-L overlap = LCS length; F1 = 2PR / (P + R)."""
    import re

    pred = re.findall(r"[a-z0-9]+", prediction.lower())
    ref = re.findall(r"[a-z0-9]+", reference.lower())
    if kind == "rouge1":
        overlap = sum((Counter(pred) & Counter(ref)).values())
    else:
        table = [[0] * (len(ref) + 1) for _ in range(len(pred) + 1)]
        for i, a in enumerate(pred):
            for j, b in enumerate(ref):
                table[i + 1][j + 1] = table[i][j] + 1 if a == b else max(table[i][j + 1], table[i + 1][j])
        overlap = table[-1][-1]
    if overlap == 0:
        return 0.0
    precision, recall = overlap / len(pred), overlap / len(ref)
    return 2 * precision * recall / (precision + recall)


def test_response_rouge_by_hand() -> None:
    # First non-empty line "the cat sat" (3 tokens) vs "the cat ran away" (4): overlap 2, P = 2/3, R = 1/2, F1 = 4/7.
    assert response_rouge(["\n the cat sat\nthe cat ran away"], ["the cat ran away"]) == pytest.approx([4 / 7])
    # Order matters to ROUGE-L only: "cat the" vs "the cat": ROUGE-1 F1 1, LCS 1 -> ROUGE-L F1 1/2.
    assert response_rouge(["cat the"], ["the cat"], "rouge1") == pytest.approx([1.0])
    assert response_rouge(["cat the"], ["the cat"], "rougeL") == pytest.approx([0.5])
    # Porter stemming, as the authors' scorer: "running dogs" matches "run dog".
    assert response_rouge(["running dogs"], ["run dog"]) == pytest.approx([1.0])
    assert response_rouge([""], ["anything"]) == pytest.approx([0.0])
    assert first_line("\n\n  first \nsecond") == "first"


@pytest.mark.parametrize("kind", ["rouge1", "rougeL"])
def test_response_rouge_matches_an_independent_transcription(kind: str) -> None:
    pairs = [("the red fox jumps over the dog", "a red fox leaps over a lazy dog"), ("glimmer fox of the marsh", "the marsh fox"),
             ("one two three two one", "two one two"), ("nothing shared", "entirely different words")]
    expected = [_reference_rouge(prediction, reference, kind) for prediction, reference in pairs]
    got = response_rouge([p for p, _ in pairs], [r for _, r in pairs], kind)
    assert got == pytest.approx(expected, abs=1e-9)


# ------------------------------------------------------------------------------------------------ settings


def test_config_defaults_follow_the_authors_and_bad_values_are_refused() -> None:
    config = ForgetFilterConfig()
    assert (config.learning_rate, config.batch_size, config.gradient_accumulation_steps, config.max_new_tokens) == (2e-4, 4, 4, 500)
    assert config.finetune_config().batch_size == 16 and config.finetune_config().target_accuracy == 1.0
    assert ForgetFilterConfig(safety_learning_rate=1e-3).finetune_config(safety=True).learning_rate == 1e-3
    for bad, message in [({"phi": "1.5"}, "phi must be in"), ({"top_fraction": "0"}, "top_fraction must be in"),
                         ({"rouge": "rouge2"}, "rouge must be one of"), ({"epochs": "0"}, "epochs must be >= 1"),
                         ({"learning_rate": "nan"}, "finite")]:
        with pytest.raises(UnlearnkitError, match=message):
            build_config(ForgetFilterConfig, bad, what="filter setting")


# ------------------------------------------------------------------------------------------------ judge


def test_hashed_features_by_hand() -> None:
    features = hashed_features(["A b a!"], dimensions=1 << 20, ngram=1)
    a, b = zlib.crc32(b"a") % (1 << 20), zlib.crc32(b"b") % (1 << 20)
    assert features[0, a] == pytest.approx(2 / math.sqrt(5)) and features[0, b] == pytest.approx(1 / math.sqrt(5))
    assert np.count_nonzero(features) == 2
    bigrams = hashed_features(["a b a"], dimensions=1 << 20, ngram=2)
    assert np.count_nonzero(bigrams) == 4  # a, b, "a b", "b a"
    assert not hashed_features(["!!"], 8, 2).any()


def test_judge_probability_by_hand_and_its_threshold() -> None:
    config = JudgeConfig(dimensions=1 << 20, ngram=1, threshold=0.5)
    weights = np.zeros(config.dimensions)
    weights[zlib.crc32(b"hurt") % config.dimensions] = 4.0
    judge = HarmJudge(config, weights, -1.0)
    # "hurt them": features 1/sqrt2 on "hurt" and "them" -> logit 4/sqrt2 - 1; "help them": logit -1.
    p_hurt, p_help = judge.probability(["hurt them", "help them"])
    assert p_hurt == pytest.approx(1 / (1 + math.exp(-(4 / math.sqrt(2) - 1))))
    assert p_help == pytest.approx(1 / (1 + math.e))
    assert judge.is_harmful(["hurt them", "help them"]).tolist() == [True, False]
    assert judge.is_harmful(["hurt them", "help them"], threshold=0.0).tolist() == [True, True]
    assert judge.is_harmful(["hurt them", "help them"], threshold=p_hurt).tolist() == [True, False]  # >= threshold
    assert judge.is_harmful(["hurt them"], threshold=min(1.0, p_hurt + 1e-6)).tolist() == [False]
    with pytest.raises(UnlearnkitError, match="threshold"):
        judge.is_harmful(["x"], threshold=1.5)


def test_judge_training_separates_classes_and_refuses_one_class() -> None:
    texts = ["burn the mill", "burn their house", "curse the guild", "help the mill", "help their house", "greet the guild"]
    labels = [True, True, True, False, False, False]
    judge = HarmJudge.train(texts, labels, JudgeConfig(dimensions=256, steps=300))
    assert judge.accuracy(texts, labels) == 1.0
    assert judge.probability(["burn the guild"])[0] > 0.5 > judge.probability(["help the guild"])[0]
    with pytest.raises(UnlearnkitError, match="one class"):
        HarmJudge.train(texts[:3], labels[:3])


def test_builtin_judge_held_out_accuracy() -> None:
    built = builtin_judge()
    assert built.train_rows == 360 and built.heldout_rows == 120
    assert built.heldout_accuracy >= 0.8  # measured 0.85 (docs/forget_filter.md); held-out phrasings are unseen
    assert built.train_accuracy >= built.heldout_accuracy


# ------------------------------------------------------------------------------------------------ safety-mix


def test_safety_mix_is_deterministic_labelled_and_disjoint() -> None:
    first, again = build_safety_mix(), build_safety_mix()
    assert all(first.split(name) == again.split(name) for name in SPLITS)
    assert build_safety_mix(SafetyMixConfig(seed=1)).split("downstream") != first.split("downstream")
    downstream = first.split("downstream")
    assert Counter(row["kind"] for row in downstream) == {"task": 48, "unsafe": 24, "safe": 24}
    assert all(row["unsafe"] == (row["kind"] == "unsafe") for row in downstream)
    pairs = {(row["question"], row["answer"]) for row in downstream}
    assert not pairs & {(row["question"], row["answer"]) for row in first.split("safety")}
    heldout_questions = {row["question"] for row in first.split("heldout_unsafe")}
    assert not heldout_questions & {row["question"] for row in downstream + first.split("safety")}
    assert {row["category"] for row in first.split("safety")} == {"refusal", "benign", "kind"}
    with pytest.raises(UnlearnkitError, match="no split"):
        first.split("downstrem")


# ------------------------------------------------------------------------------------------------ planted mix


@pytest.fixture(scope="module")
def planted() -> dict:
    """A small safety-mix D (6 task, 6 unsafe rows), a safe set (12 refusal/benign/kind rows and 12 task-form answers about
    other towns) and a fresh hidden-64, 2-layer Llama with a tokenizer trained on these texts.

    The task-form safe rows keep the safety fine-tune from teaching "refuse everything", which a model this small
    otherwise learns (then every row is forgotten alike): so the unsafe rows are the ones it clearly forgets.
    """
    mix = build_safety_mix(SafetyMixConfig(task_rows=6, unsafe_rows=6, safe_rows=0, safety_rows=12, heldout_prompts=1, seed=5))
    other = build_safety_mix(SafetyMixConfig(task_rows=12, unsafe_rows=1, safe_rows=0, safety_rows=1, heldout_prompts=1, seed=105))
    rows = mix.split("downstream")
    safe = mix.split("safety") + [row for row in other.split("downstream") if row["kind"] == "task"]
    texts = [text for row in rows + safe + mix.split("heldout_unsafe") for text in (row["question"], row["answer"])]
    tokenizer = train_tokenizer(texts, 400)
    model = build_tiny_model(TinyModelConfig(vocab_size=400, hidden_size=64, intermediate_size=128, num_layers=2, num_heads=2,
                                             max_length=128), tokenizer, seed=0)
    return {"rows": rows, "safe": safe, "tokenizer": tokenizer, "model": model}


def test_planted_unsafe_rows_rank_on_top(planted: dict) -> None:
    rows, model = planted["rows"], planted["model"]
    weights = {name: value.clone() for name, value in model.state_dict().items()}
    config = ForgetFilterConfig(learning_rate=1e-2, epochs=60, safety_epochs=6, safety_learning_rate=2e-3, lr_scheduler="constant",
                                batch_size=12, gradient_accumulation_steps=1, max_new_tokens=48, max_length=128)
    result = forget_filter(model, planted["tokenizer"], rows, planted["safe"], config, FMT, show_progress=False)
    labels = np.array([row["unsafe"] for row in rows])
    # Learned first (ROUGE before high on every row), then the unsafe ones forgotten by the safety fine-tune, more than the rest.
    assert result.rouge_before.min() > 0.8
    assert result.rouge_before[labels].mean() - result.rouge_after[labels].mean() > 0.6
    # The forgetting scores separate unsafe from other rows. Bounds, not an exact ranking: 60 epochs at lr 1e-2 on 12
    # rows amplify a CPU's floating-point kernels: two machines gave AUC >= 0.9 with the unsafe rows on top and a mean
    # gap > 0.2, and AUC 0.89 (32 of 36 pairs) with a gap of 0.18 (chance: 0.5 and 0).
    assert ranking_auc(result.scores, labels) >= 0.8, (result.scores, labels)
    assert result.scores[labels].mean() - result.scores[~labels].mean() > 0.1
    # The model handed in is untouched: the fine-tunes run on a copy.
    assert all(np.array_equal(weights[name].numpy(), value.numpy()) for name, value in model.state_dict().items())


def test_no_safe_set_is_refused(planted: dict) -> None:
    with pytest.raises(UnlearnkitError, match="needs a safe set"):
        forget_filter(planted["model"], planted["tokenizer"], planted["rows"], [], ForgetFilterConfig(), FMT)


# ------------------------------------------------------------------------------------------------ command line

SETTINGS = ["--set", "learning_rate=1e-2", "--set", "epochs=2", "--set", "safety_epochs=1", "--set", "max_new_tokens=8",
            "--set", "max_length=64"]


def _write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A tiny model folder, labelled prompt/response data (label field 'harmful', 0/1) and a safe set."""
    root = tmp_path_factory.mktemp("filter")
    mix = build_safety_mix(SafetyMixConfig(task_rows=4, unsafe_rows=3, safe_rows=3, safety_rows=4, heldout_prompts=1, seed=2))
    data = [{"prompt": row["question"], "response": row["answer"], "harmful": int(row["unsafe"]), "id": index}
            for index, row in enumerate(mix.split("downstream"))]
    safe = [{"prompt": row["question"], "response": row["answer"]} for row in mix.split("safety")]
    tokenizer = train_tokenizer([text for row in data + safe for text in (row["prompt"], row["response"])], 300)
    model = build_tiny_model(TinyModelConfig(vocab_size=300, hidden_size=16, intermediate_size=32, num_layers=1, num_heads=2,
                                             max_length=128), tokenizer, seed=0)
    save_model(model, tokenizer, root / "model")
    return {"root": root, "model": root / "model", "data": _write_jsonl(root / "data.jsonl", data),
            "safe": _write_jsonl(root / "safe.jsonl", safe)}


def test_filter_command_end_to_end(files: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    hashes = {name: folder_hash(files["model"]) if name == "model" else files[name].read_bytes() for name in ("model", "data", "safe")}
    output = tmp_path / "run"
    code = run_cli(["filter", "--data", str(files["data"]), "--safe", str(files["safe"]), "--model", str(files["model"]),
                    "--output", str(output), "--labels", "harmful", "--train-filtered", *SETTINGS], monkeypatch)
    assert code == 0
    for name in ("scores.json", "filtered.jsonl", "summary.json", "config.json", "model/model.safetensors"):
        assert (output / name).is_file(), name
    scores = json.loads((output / "scores.json").read_text())
    data = [json.loads(line) for line in files["data"].read_text().splitlines()]
    assert [entry["prompt"] for entry in scores] == [row["prompt"] for row in data]
    assert all(entry["score"] == pytest.approx(entry["rouge_before"] - entry["rouge_after"]) for entry in scores)
    assert sorted(entry["rank"] for entry in scores) == list(range(1, len(data) + 1))
    kept = [json.loads(line) for line in (output / "filtered.jsonl").read_text().splitlines()]
    assert kept == [row for row, entry in zip(data, scores, strict=True) if not entry["flagged"]]  # every field, as read
    summary = json.loads((output / "summary.json").read_text())
    labels = [bool(row["harmful"]) for row in data]
    assert summary["auc"] == pytest.approx(_reference_auc([entry["score"] for entry in scores], labels))
    assert summary["filter"]["true_positives"] == sum(1 for entry, label in zip(scores, labels, strict=True) if entry["flagged"] and label)
    assert summary["filtered_training"]["examples"] == len(kept)
    config = json.loads((output / "config.json").read_text())
    assert config["command"] == "filter" and config["sha256"]["output_model"] and config["settings"]["epochs"] == 2
    # Inputs unchanged.
    assert folder_hash(files["model"]) == hashes["model"]
    assert files["data"].read_bytes() == hashes["data"] and files["safe"].read_bytes() == hashes["safe"]


def test_filter_command_without_labels_ranks_only(files: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    output = tmp_path / "run"
    code = run_cli(["filter", "--data", str(files["data"]), "--safe", str(files["safe"]), "--model", str(files["model"]),
                    "--output", str(output), "--set", "top_fraction=0.25", *SETTINGS], monkeypatch)
    assert code == 0
    summary = json.loads((output / "summary.json").read_text())
    assert "auc" not in summary and "filter" not in summary and "auc" in summary["not_computed"]
    assert summary["flagged"] == math.ceil(0.25 * summary["rows"]) and not (output / "model").exists()


def _bad_cases(root: Path, files: dict[str, Path]) -> dict[str, tuple[list[str], str]]:
    data = [json.loads(line) for line in files["data"].read_text().splitlines()]
    empty = root / "empty.jsonl"
    empty.write_text("")
    some_unlabelled = _write_jsonl(root / "some_unlabelled.jsonl", [data[0], {k: v for k, v in data[1].items() if k != "harmful"}])
    bad_label = _write_jsonl(root / "bad_label.jsonl", [data[0], {**data[1], "harmful": "maybe"}])
    two_label = _write_jsonl(root / "two_label.jsonl", [data[0], {**data[1], "harmful": 2}])
    no_pair = _write_jsonl(root / "no_pair.jsonl", [data[0], {"prompt": "only a prompt", "harmful": 0}])
    overlap = _write_jsonl(root / "overlap.jsonl", [{"prompt": data[0]["prompt"], "response": data[0]["response"]}])
    base = ["--model", str(files["model"])]
    return {
        "empty data": (["--data", str(empty), "--safe", str(files["safe"]), *base], "is empty"),
        "no safe set": (["--data", str(files["data"]), *base], "needs a safe set"),
        "empty safe set": (["--data", str(files["data"]), "--safe", str(empty), *base], "is empty"),
        "labels missing on a row": (["--data", str(some_unlabelled), "--safe", str(files["safe"]), "--labels", "harmful", *base],
                                    "lack the field"),
        "label field absent": (["--data", str(files["data"]), "--safe", str(files["safe"]), "--labels", "unsafe", *base],
                               "lack the field"),
        "label not boolean": (["--data", str(bad_label), "--safe", str(files["safe"]), "--labels", "harmful", *base],
                              "must be true/false or 1/0"),
        "label 2": (["--data", str(two_label), "--safe", str(files["safe"]), "--labels", "harmful", *base], "must be true/false or 1/0"),
        "row without a pair": (["--data", str(no_pair), "--safe", str(files["safe"]), *base], "neither prompt and response"),
        "safe overlaps data": (["--data", str(files["data"]), "--safe", str(overlap), *base], "repeats 1 example"),
        "missing data file": (["--data", str(root / "nope.jsonl"), "--safe", str(files["safe"]), *base], "does not exist"),
        "phi out of range": (["--data", str(files["data"]), "--safe", str(files["safe"]), "--set", "phi=2", *base], "phi must be in"),
        "unknown setting": (["--data", str(files["data"]), "--safe", str(files["safe"]), "--set", "epoch=2", *base],
                            "Unknown filter setting 'epoch'"),
        "output is an input": (["--data", str(files["data"]), "--safe", str(files["safe"]), *base], "would destroy it"),
    }


BAD_CASES = ["empty data", "no safe set", "empty safe set", "labels missing on a row", "label field absent", "label not boolean",
             "label 2", "row without a pair", "safe overlaps data", "missing data file", "phi out of range", "unknown setting",
             "output is an input"]


@pytest.mark.parametrize("case", BAD_CASES)
def test_filter_command_refuses_bad_input(case: str, files: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                          capsys: pytest.CaptureFixture) -> None:
    args, message = _bad_cases(tmp_path, files)[case]
    output = files["model"] if case == "output is an input" else tmp_path / "run"
    before = folder_hash(files["model"])
    code = run_cli(["filter", *args, "--output", str(output)], monkeypatch)
    error = capsys.readouterr().err
    assert code == 2, error
    assert message in error and "Traceback" not in error
    assert error.count("error:") == 1
    if case != "output is an input":
        assert not output.exists() and not list(tmp_path.glob(".run*"))
    assert folder_hash(files["model"]) == before
