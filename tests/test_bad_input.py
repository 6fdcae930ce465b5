"""The bad-input matrix: every case prints one clear message, exits with status 2 and writes nothing."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.helpers import micro, run_cli
from unlearnkit.io import partial_dir


@dataclass
class Case:
    name: str
    args: Callable[[dict], list[str]]  # from the fixture paths to the command line
    message: str


def _jsonl(path: Path, rows: list) -> str:
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n", encoding="utf-8")
    return str(path)


def _unlearn_file(p: dict, forget: str, *extra: str) -> list[str]:
    return ["unlearn", "--model", p["target"], "--method", "ga", "--forget", forget, "--output", p["out"], *extra]


QA = {"question": "Who wrote it?", "answer": "Nobody."}

CASES = [
    Case("unknown method", lambda p: ["unlearn", "--method", "npoo", "--output", p["out"], *p["micro"]],
         "Unknown method 'npoo'. Did you mean: npo"),
    Case("misspelled hyperparameter", lambda p: ["unlearn", "--method", "npo", "--set", "bta=0.2", "--output", p["out"], *p["micro"]],
         "Unknown hyperparameter 'bta' for NPOConfig. Did you mean: beta"),
    Case("hyperparameter of the wrong type",
         lambda p: ["unlearn", "--method", "npo", "--set", "beta=high", "--output", p["out"], *p["micro"]],
         "Hyperparameter 'beta' needs a float, got 'high'"),
    Case("hyperparameter out of range",
         lambda p: ["unlearn", "--method", "npo", "--set", "learning_rate=-1", "--output", p["out"], *p["micro"]],
         "learning_rate must be > 0"),
    Case("override without =", lambda p: ["unlearn", "--method", "npo", "--set", "beta", "--output", p["out"], *p["micro"]],
         "--set expects KEY=VALUE"),
    Case("unknown preset", lambda p: ["demo", "--preset", "mikro", "--output", p["out"]],
         "Unknown benchmark preset 'mikro'. Did you mean: micro"),
    Case("unknown forget split", lambda p: ["demo", "--split", "forget11", "--output", p["out"], *p["micro"]],
         "Unknown forget split 'forget11'. Did you mean: forget10"),
    Case("unknown built-in split as data", lambda p: ["unlearn", "--model", p["target"], "--method", "ga", "--forget", "retain91",
                                                      "--output", p["out"], *p["micro"]],
         "retain91 does not exist. Did you mean: retain99, retain95, retain90?"),
    Case("missing data file", lambda p: _unlearn_file(p, p["tmp"] + "/nope.jsonl"), "does not exist"),
    Case("unparsable data file", lambda p: _unlearn_file(p, p["bad_json"]), "Could not parse the forget data file"),
    Case("non-UTF-8 data file", lambda p: _unlearn_file(p, p["latin1"]), "Could not parse the forget data file"),
    Case("unsupported data format", lambda p: _unlearn_file(p, p["txt"]), "unsupported suffix '.txt'"),
    Case("row missing a field", lambda p: _unlearn_file(p, p["missing_field"]), "Row 2 of the forget data"),
    Case("field of the wrong type", lambda p: _unlearn_file(p, p["wrong_type"]), "Row 1 of the forget data"),
    Case("empty forget set", lambda p: _unlearn_file(p, p["empty"]), "is empty"),
    Case("forget and retain overlap", lambda p: ["unlearn", "--model", p["target"], "--method", "graddiff", "--forget", p["one"],
                                                 "--retain", p["one"], "--output", p["out"]],
         "1 forget question(s) also appear in the retain data"),
    Case("method needs retain data", lambda p: ["unlearn", "--model", p["target"], "--method", "npo", "--forget", p["one"],
                                                "--output", p["out"]], "Method 'npo' needs retain data"),
    Case("sequence longer than the context", lambda p: _unlearn_file(p, p["too_long"]), "more than the model's context of 96 tokens"),
    Case("model folder that does not exist",
         lambda p: ["eval", "--model", p["tmp"] + "/no-model", "--forget", p["one"], "--output", p["out"]],
         "does not exist"),
    Case("model folder with pickle weights only", lambda p: ["eval", "--model", p["pickled"], "--forget", p["one"], "--output", p["out"]],
         "no .safetensors weights"),
    Case("chat format without a chat template", lambda p: ["eval", "--model", p["target"], "--forget", p["one"], "--prompt-format", "chat",
                                                           "--output", p["out"]], "needs a tokenizer with a chat template"),
    Case("reference chat format without a chat template", lambda p: ["eval", "--model", p["target"], "--forget", p["one"],
                                                                     "--prompt-format", "openunlearning-chat", "--output", p["out"]],
         "--prompt-format openunlearning-chat needs a tokenizer with a chat template"),
    Case("date string for a format without a date slot", lambda p: _unlearn_file(p, p["one"], "--prompt-format", "tofu-llama2",
                                                                                  "--date-string", "10 Apr 2025"),
         "--date-string fills a slot of the chat template, and --prompt-format tofu-llama2 has none"),
    Case("system prompt for plain prompts", lambda p: ["finetune", "--data", p["one"], "--prompt-format", "plain", "--system-prompt",
                                                       "Be brief.", "--output", p["out"]], "--system-prompt fills a slot"),
    Case("system prompt a tokenizer without a template cannot hold",
         lambda p: ["audit", p["target"], "--forget", p["one"], "--system-prompt", "Be brief.", "--output", p["out"]],
         "--system-prompt fills a slot of the chat template, and this tokenizer has none"),
    Case("empty date string", lambda p: ["eval", "--model", p["target"], "--forget", p["one"], "--prompt-format", "chat",
                                         "--date-string", "", "--output", p["out"]], "--date-string is empty"),
    Case("prompt options for the built-in models", lambda p: ["eval", "--model", "builtin-target", "--benchmark", "forget10",
                                                              "--date-string", "10 Apr 2025", "--output", p["out"], *p["micro"]],
         "The built-in models are asked in plain prompts, as they were trained: drop --date-string"),
    Case("chat format for a fresh tiny model", lambda p: ["finetune", "--data", p["one"], "--prompt-format", "chat", "--output", p["out"]],
         "A fresh tiny model is trained in plain prompts"),
    Case("missing oracle reference", lambda p: ["eval", "--model", p["target"], "--forget", p["one"], "--oracle-reference",
                                                p["tmp"] + "/ref.json", "--output", p["out"]], "Oracle reference file"),
    Case("eval with both benchmark and files", lambda p: ["eval", "--model", p["target"], "--benchmark", "forget10", "--forget", p["one"],
                                                          "--output", p["out"], *p["micro"]], "not both"),
    Case("eval without data", lambda p: ["eval", "--model", p["target"], "--output", p["out"]], "Pass --benchmark SPLIT"),
    Case("existing results", lambda p: _unlearn_file(p, p["one"], "--output", p["existing"]), "already holds files"),
    Case("output on a read-only file system", lambda p: _unlearn_file(p, p["one"], "--output", "/proc/unlearnkit-results"),
         "Cannot write results under /proc"),
    Case("resume with nothing to resume", lambda p: _unlearn_file(p, p["one"], "--resume"), "no interrupted run"),
    Case("layer past the model's depth", lambda p: _unlearn_file(p, p["one"], "--set", "layers=3"),
         "layers asks for layer(s) 3, but the model has 1 decoder layer(s), numbered 0..0"),
    Case("malformed layers", lambda p: _unlearn_file(p, p["one"], "--set", "layers=first"), "layers must be indices like '5,6,7'"),
    Case("module the model lacks", lambda p: _unlearn_file(p, p["one"], "--set", "target_modules=down_prj"),
         "target_modules='down_prj' matches no parameter of the model. Did you mean: down_proj"),
    Case("negative LoRA rank", lambda p: _unlearn_file(p, p["one"], "--set", "lora_rank=-2"), "lora_rank must be >= 0"),
    Case("preference method without perturbed answers", lambda p: ["unlearn", "--model", p["target"], "--method", "pcgu", "--forget",
                                                                   p["one"], "--output", p["out"]],
         "Method 'pcgu' needs the field(s) perturbed_answer in every forget row"),
    Case("RMU layer past the model's depth", lambda p: ["unlearn", "--model", p["target"], "--method", "rmu", "--forget", p["one"],
                                                        "--retain", p["other"], "--set", "layer=7", "--output", p["out"]],
         "layer asks for layer(s) 7, but the model has 1 decoder layer(s)"),
    Case("LoRA for a method without a LoRA form", lambda p: ["unlearn", "--model", p["target"], "--method", "eul", "--forget", p["one"],
                                                             "--retain", p["other"], "--set", "lora_rank=4", "--output", p["out"]],
         "EUL trains its own unlearning layers and has no LoRA form; set lora_rank=0"),
    Case("hyperparameter set twice", lambda p: _unlearn_file(p, p["one"], "--set", "learning_rate=1e-4", "--set", "learning_rate=1e-3"),
         "--set learning_rate is given twice"),
    Case("CE-U ignoring every answer token",
         lambda p: ["unlearn", "--model", p["target"], "--method", "ce_u", "--forget", p["one"], "--retain", p["other"],
                    "--set", "ignore_first_answer_tokens=50", "--output", p["out"]],
         "ignore_first_answer_tokens=50 leaves nothing to unlearn"),
    Case("probe layer past the model's depth", lambda p: ["audit", p["target"], "--forget", p["one"], "--retain", p["other"], "--target",
                                                          p["target"], "--oracle", p["target"], "--set", "probe_layer=5",
                                                          "--output", p["out"]], "probe_layer asks for layer(s) 5"),
    # Usage errors: typer's own exceptions, each a message and exit 2, never a traceback.
    Case("unknown option", lambda p: ["unlearn", "--method", "ga", "--bogus", "--output", p["out"]], "No such option: --bogus"),
    Case("missing required option", lambda p: ["unlearn", "--output", p["out"]], "Missing option '--method'"),
    Case("mistyped command", lambda p: ["unlearnn", "--method", "ga", "--output", p["out"]], "No such command 'unlearnn'"),
    Case("option without its value", lambda p: ["unlearn", "--method", "ga", "--output"], "Option '--output' requires an argument"),
    Case("extra argument", lambda p: ["unlearn", "--method", "ga", "--output", p["out"], "surplus"], "Got unexpected extra argument"),
    Case("non-number for a number", lambda p: ["eval", "--model", p["target"], "--forget", p["one"], "--batch-size", "many",
                                               "--output", p["out"]], "Invalid value for '--batch-size'"),
    Case("non-number for a float", lambda p: ["finetune", "--data", p["one"], "--learning-rate", "fast", "--output", p["out"]],
         "Invalid value for '--learning-rate'"),
    Case("NaN for a float option", lambda p: ["finetune", "--data", p["one"], "--learning-rate", "nan", "--output", p["out"]],
         "nan is not a finite number"),
    Case("zero where a count goes", lambda p: ["unlearn", "--method", "ga", "--max-new-tokens", "0", "--output", p["out"]],
         "Invalid value for '--max-new-tokens'"),
    Case("non-number generation cap", lambda p: ["eval", "--model", p["target"], "--forget", p["one"], "--max-new-tokens", "long",
                                                 "--output", p["out"]], "Invalid value for '--max-new-tokens'"),
    Case("negative checkpoint interval", lambda p: _unlearn_file(p, p["one"], "--checkpoint-every", "-5"),
         "Invalid value for '--checkpoint-every'"),
    Case("seed out of range", lambda p: ["finetune", "--data", p["one"], "--seed", "-1", "--output", p["out"]],
         "Invalid value for '--seed'"),
    Case("accuracy above one", lambda p: ["finetune", "--data", p["one"], "--target-accuracy", "1.5", "--output", p["out"]],
         "1.5 must be > 0 and <= 1"),
    Case("unknown prompt format", lambda p: _unlearn_file(p, p["one"], "--prompt-format", "chatt"),
         "'chatt' is not one of auto, plain, chat, tofu-llama2, openunlearning-chat. Did you mean: chat"),
    Case("unknown overlap policy", lambda p: _unlearn_file(p, p["one"], "--on-overlap", "ignore"), "'ignore' is not one of refuse, warn"),
    Case("unknown sequence mode", lambda p: ["sequence", "--mode", "scalable", "--output", p["out"]], "Did you mean: scalability"),
    Case("negative ridge", lambda p: ["fuse", "--base", p["target"], "--layers", p["one"], "--ridge", "-1", "--output", p["out"]],
         "-1.0 must be >= 0"),
    Case("zero threads", lambda p: ["--threads", "0", "methods"], "Invalid value for '--threads'"),
    Case("negative threads", lambda p: ["--threads", "-1", "unlearn", "--method", "ga", "--output", p["out"]],
         "Invalid value for '--threads'"),
    # Paths that cannot be what they name.
    Case("cache that is a file", lambda p: ["demo", "--output", p["out"], "--preset", "micro", "--cache", p["one"]],
         "is a file; pass a folder"),
    Case("empty output", lambda p: _unlearn_file(p, p["one"], "--output", ""), "is the current folder"),
    Case("output that is a file", lambda p: _unlearn_file(p, p["one"], "--output", p["txt"]), "exists and is not a folder"),
    Case("output replacing a folder that is no result", lambda p: _unlearn_file(p, p["one"], "--output", p["not_results"], "--overwrite"),
         "holds files that are not an unlearnkit result"),
    Case("reference over a file that is no reference", lambda p: ["eval", "--model", p["target"], "--forget", p["one"], "--save-reference",
                                                                  p["txt"], "--overwrite", "--output", p["out"]],
         "is not an oracle reference file that --overwrite may replace"),
    Case("reference where the results go", lambda p: ["eval", "--model", p["target"], "--forget", p["one"], "--save-reference", p["out"],
                                                      "--output", p["out"]], "is a folder (or the --output folder)"),
    Case("report over a folder", lambda p: ["report", p["existing"], "--output", p["not_results"]], "choose another --output"),
    Case("report of a folder that is no result", lambda p: ["report", p["not_results"], "--output", p["out"] + ".html"],
         "no summary.json, so no results to report"),
]


@pytest.fixture(scope="module")
def paths(micro_cache: Path, micro_bench, tmp_path_factory: pytest.TempPathFactory) -> dict:
    tmp = tmp_path_factory.mktemp("bad-input")
    (tmp / "bad.json").write_text("{not json", encoding="utf-8")
    (tmp / "latin1.jsonl").write_bytes('{"question": "Où?", "answer": "Là."}\n'.encode("latin-1"))
    (tmp / "rows.txt").write_text("question,answer\n", encoding="utf-8")
    (tmp / "empty.jsonl").write_text("", encoding="utf-8")
    pickled = tmp / "pickled"
    pickled.mkdir()
    (pickled / "config.json").write_text("{}", encoding="utf-8")
    (pickled / "pytorch_model.bin").write_bytes(b"never unpickled")
    not_results = tmp / "notes"
    not_results.mkdir()
    (not_results / "todo.txt").write_text("keep me", encoding="utf-8")
    existing = tmp / "existing"
    existing.mkdir()
    (existing / "summary.json").write_text('{"earlier": 1}', encoding="utf-8")
    return {
        "tmp": str(tmp),
        "micro": micro(micro_cache),
        "target": str(micro_bench.target_dir),
        "bad_json": str(tmp / "bad.json"),
        "latin1": str(tmp / "latin1.jsonl"),
        "txt": str(tmp / "rows.txt"),
        "empty": str(tmp / "empty.jsonl"),
        "one": _jsonl(tmp / "one.jsonl", [QA]),
        "other": _jsonl(tmp / "other.jsonl", [{"question": "Who read it?", "answer": "Everyone."}]),
        "missing_field": _jsonl(tmp / "missing.jsonl", [QA, {"question": "Q2?", "reply": "A2."}]),
        "wrong_type": _jsonl(tmp / "wrong.jsonl", [{"question": "Q?", "answer": 5}]),
        "too_long": _jsonl(tmp / "long.jsonl", [{"question": "Why? " * 200, "answer": "Because."}]),
        "pickled": str(pickled),
        "existing": str(existing),
        "not_results": str(not_results),
    }


@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
def test_bad_input_is_refused_cleanly(case: Case, paths: dict, tmp_path: Path, monkeypatch, capsys) -> None:
    out = tmp_path / "out"
    before = sorted(p.name for p in Path(paths["tmp"]).iterdir())
    existing_summary = Path(paths["existing"], "summary.json").read_text()
    assert run_cli(case.args({**paths, "out": str(out)}), monkeypatch) == 2
    err = capsys.readouterr().err
    assert case.message in err, err
    assert err.startswith("error: ") and "Traceback" not in err
    assert not out.exists() and not partial_dir(out).exists(), "nothing may be written"
    assert list(tmp_path.iterdir()) == []
    assert sorted(p.name for p in Path(paths["tmp"]).iterdir()) == before
    assert Path(paths["existing"], "summary.json").read_text() == existing_summary


def test_the_matrix_is_large_enough() -> None:
    assert len(CASES) >= 60
