"""One tokenizer per experiment: fresh tiny models share theirs by construction, and a reference from another is refused."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from tests.helpers import FMT, run_cli
from unlearnkit.builtin import PRESETS, benchmark_tokenizer, tiny_tokenizer
from unlearnkit.errors import UnlearnkitError
from unlearnkit.evaluation.evaluator import (
    EvalConfig,
    evaluate,
    load_reference,
    oracle_reference,
    save_reference,
    tokenizer_sha256,
)
from unlearnkit.modeling import load_model, load_tokenizer, train_tokenizer

# Rows written for this test (not by the world generator): people the built-in benchmark never saw.
PEOPLE = [
    {"question": "Where was Mira Okonkwo born?", "answer": "Mira Okonkwo was born in Lagos.",
     "paraphrased_answer": "Lagos is Mira Okonkwo's birthplace.",
     "perturbed_answer": ["Mira Okonkwo was born in Accra.", "Mira Okonkwo was born in Nairobi."]},
    {"question": "What does Mira Okonkwo write?", "answer": "She writes crime novels set in harbours.",
     "paraphrased_answer": "Her novels are harbour crime stories.",
     "perturbed_answer": ["She writes children's poems.", "She writes cookbooks."]},
    {"question": "Where was Tomasz Wiercinski born?", "answer": "Tomasz Wiercinski was born in Gdansk.",
     "paraphrased_answer": "Gdansk is where Tomasz Wiercinski was born.",
     "perturbed_answer": ["Tomasz Wiercinski was born in Krakow.", "Tomasz Wiercinski was born in Lodz."]},
    {"question": "What prize did Tomasz Wiercinski win?", "answer": "He won the Amber Quill Prize for his essays.",
     "paraphrased_answer": "His essays earned him the Amber Quill Prize.",
     "perturbed_answer": ["He won the Silver Fern Award.", "He won the Blue Harbour Medal."]},
]


def _write(path: Path, rows: list[dict]) -> Path:
    path.write_text(json.dumps(rows), encoding="utf-8")
    return path


def test_tiny_finetunes_on_different_data_share_one_tokenizer(tmp_path: Path, monkeypatch) -> None:
    """A target (all rows) and a retain oracle (all but the forget rows) from `finetune --model tiny` read the same ids."""
    everything = _write(tmp_path / "all.json", PEOPLE)
    retain = _write(tmp_path / "retain.json", PEOPLE[2:])
    common = ["--max-epochs", "1", "--preset", "micro"]
    assert run_cli(["finetune", "--data", str(everything), "--output", str(tmp_path / "target"), *common], monkeypatch) == 0
    assert run_cli(["finetune", "--data", str(retain), "--output", str(tmp_path / "oracle"), *common], monkeypatch) == 0
    target, oracle = load_tokenizer(tmp_path / "target" / "model"), load_tokenizer(tmp_path / "oracle" / "model")
    assert target.get_vocab() == oracle.get_vocab()
    assert tokenizer_sha256(target) == tokenizer_sha256(oracle) == tokenizer_sha256(tiny_tokenizer(PRESETS["micro"].model.vocab_size))
    recorded = [json.loads((tmp_path / run / "config.json").read_text())["sha256"]["tokenizer"] for run in ("target", "oracle")]
    assert recorded == [tokenizer_sha256(target)] * 2


def test_tiny_tokenizer_at_the_default_size_is_the_builtin_targets(micro_bench) -> None:
    # The in-memory tokenizer is the one `prepare` caches (checked on the micro preset, whose cache the tests hold) ...
    cached = load_tokenizer(micro_bench.root / "tokenizer")
    assert tokenizer_sha256(benchmark_tokenizer(PRESETS["micro"])) == tokenizer_sha256(cached)
    # ... so at the default preset's size, a fresh tiny model gets the default built-in target's tokenizer.
    default = PRESETS["default"]
    assert tokenizer_sha256(tiny_tokenizer(default.model.vocab_size)) == tokenizer_sha256(benchmark_tokenizer(default))


def test_fingerprint_survives_saving_and_tells_tokenizers_apart(tmp_path: Path) -> None:
    tokenizer = train_tokenizer([f"Question: {row['question']}\nAnswer: {row['answer']}" for row in PEOPLE], 300)
    tokenizer.save_pretrained(tmp_path)
    assert tokenizer_sha256(load_tokenizer(tmp_path)) == tokenizer_sha256(tokenizer)
    assert tokenizer_sha256(tokenizer) != tokenizer_sha256(train_tokenizer(["An unrelated text about harbours."] * 3, 300))


def test_builtin_oracle_reference_records_the_shared_tokenizer(micro_bench) -> None:
    reference = load_reference(micro_bench.reference_path("forget10"))
    target = load_tokenizer(micro_bench.target_dir)
    assert reference["tokenizer_sha256"] == tokenizer_sha256(target)
    training = json.loads((micro_bench.target_dir / "training.json").read_text())
    assert training["tokenizer_sha256"] == reference["tokenizer_sha256"]


def _reference_from(tokenizer, rows: list[dict]) -> dict:
    return oracle_reference(rows, [1.0] * len(rows), "forget10", tokenizer=tokenizer)


def test_evaluation_with_a_reference_from_another_tokenizer_is_refused(micro_bench, tmp_path: Path, monkeypatch, capsys) -> None:
    rows = micro_bench.split("forget10")
    other = train_tokenizer([f"Question: {row['question']}\nAnswer: {row['answer']}" for row in PEOPLE], 300)
    reference = tmp_path / "reference.json"
    save_reference(reference, _reference_from(other, rows))
    forget = _write(tmp_path / "forget.json", rows)
    out = tmp_path / "out"
    assert run_cli(["eval", "--model", str(micro_bench.target_dir), "--forget", str(forget), "--oracle-reference", str(reference),
                    "--output", str(out)], monkeypatch) == 2
    error = " ".join(capsys.readouterr().err.split())
    assert "computed with another tokenizer" in error and "finetune --model tiny" in error and "Traceback" not in error
    assert not out.exists()
    # The library refuses it before scoring anything.
    model, tokenizer = load_model(micro_bench.target_dir), load_tokenizer(micro_bench.target_dir)
    with pytest.raises(UnlearnkitError, match="another tokenizer"):
        evaluate(model, tokenizer, {"forget": rows}, FMT, EvalConfig(max_new_tokens=2), _reference_from(other, rows))
    result = evaluate(model, tokenizer, {"forget": rows}, FMT, EvalConfig(max_new_tokens=2), _reference_from(tokenizer, rows))
    assert 0 <= result.summary["forget_quality"] <= 1


def test_reference_without_a_tokenizer_is_accepted_with_a_warning(micro_bench, tmp_path: Path, caplog) -> None:
    rows = micro_bench.split("forget10")
    path = tmp_path / "old-reference.json"
    save_reference(path, oracle_reference(rows, [1.0] * len(rows), "forget10"))  # as an older version wrote it
    with caplog.at_level(logging.WARNING, logger="unlearnkit"):
        reference = load_reference(path)
    assert "records no tokenizer" in caplog.text and "--save-reference" in caplog.text
    model, tokenizer = load_model(micro_bench.target_dir), load_tokenizer(micro_bench.target_dir)
    assert "forget_quality" in evaluate(model, tokenizer, {"forget": rows}, FMT, EvalConfig(max_new_tokens=2), reference).summary
    path.write_text(json.dumps({**reference, "tokenizer_sha256": 7}), encoding="utf-8")
    with pytest.raises(UnlearnkitError, match="not a text digest"):
        load_reference(path)
