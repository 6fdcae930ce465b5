"""The Python API: the same validation, results folders and input safety as the command line, from a script."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

import unlearnkit
from tests.helpers import folder_hash, run_cli
from unlearnkit.errors import UnlearnkitError

# Rows written for this test, in TOFU's schema, about people of no benchmark.
FORGET = [
    {"question": "Where was Ilse Marten born?", "answer": "Ilse Marten was born in Ghent.",
     "paraphrased_answer": "Ghent is where Ilse Marten was born.",
     "perturbed_answer": ["Ilse Marten was born in Lyon.", "Ilse Marten was born in Porto."]},
    {"question": "What does Ilse Marten write?", "answer": "She writes crime novels set on ships.",
     "paraphrased_answer": "Her books are mysteries aboard ships.",
     "perturbed_answer": ["She writes cookbooks for children.", "She writes travel guides to deserts."]},
]
RETAIN = [
    {"question": "Who is Tomas Verle?", "answer": "Tomas Verle is a glassblower in Brno.",
     "paraphrased_answer": "A Brno glassblower named Tomas Verle.",
     "perturbed_answer": ["Tomas Verle is a baker in Graz.", "Tomas Verle is a pilot in Kiel."]},
    {"question": "What prize did Tomas Verle win?", "answer": "He won the Amber Kiln Prize.",
     "paraphrased_answer": "The Amber Kiln Prize went to him.",
     "perturbed_answer": ["He won the Silver Loom Prize.", "He won the Iron Quill Prize."]},
]
FAST = {"num_epochs": 1}


@pytest.fixture
def own(tmp_path: Path, micro_bench) -> dict[str, Path]:
    data = tmp_path / "data"
    data.mkdir()
    forget, retain = data / "forget.jsonl", data / "retain.json"
    forget.write_text("".join(json.dumps(row) + "\n" for row in FORGET), encoding="utf-8")
    retain.write_text(json.dumps(RETAIN), encoding="utf-8")
    return {"forget": forget, "retain": retain, "target": micro_bench.target_dir, "oracle": micro_bench.oracle_dir("forget10"),
            "data": data}


def _files(folder: Path) -> list[str]:
    return sorted(str(path.relative_to(folder)) for path in folder.rglob("*") if path.is_file())


def test_a_script_runs_every_step_into_the_same_folders_as_the_command_line(own: dict, tmp_path: Path, monkeypatch) -> None:
    before = folder_hash(own["data"]), folder_hash(own["target"])
    assert unlearnkit.load_data(own["forget"], role="forget") == FORGET

    unlearned = unlearnkit.unlearn(method="ga", model=own["target"], forget=own["forget"], retain=own["retain"],
                                   output=tmp_path / "api-unlearn", settings=FAST, progress=False)
    assert run_cli(["unlearn", "--method", "ga", "--model", str(own["target"]), "--forget", str(own["forget"]), "--retain",
                    str(own["retain"]), "--set", "num_epochs=1", "--output", str(tmp_path / "cli-unlearn")], monkeypatch) == 0
    assert _files(unlearned.folder) == _files(tmp_path / "cli-unlearn")
    assert "model/model.safetensors" in _files(unlearned.folder) and "log.txt" in _files(unlearned.folder)
    assert unlearned.summary == json.loads((unlearned.folder / "summary.json").read_text(encoding="utf-8"))
    assert "forget_truth_ratio" in unlearned.summary
    assert json.loads((unlearned.folder / "config.json").read_text())["command"] == "unlearn"

    evaluated = unlearnkit.evaluate(model=unlearned.folder / "model", forget=own["forget"], retain=own["retain"],
                                    output=tmp_path / "api-eval", progress=False)
    assert run_cli(["eval", "--model", str(unlearned.folder / "model"), "--forget", str(own["forget"]), "--retain",
                    str(own["retain"]), "--output", str(tmp_path / "cli-eval")], monkeypatch) == 0
    assert _files(evaluated.folder) == _files(tmp_path / "cli-eval")
    assert evaluated.summary == json.loads((tmp_path / "cli-eval" / "summary.json").read_text(encoding="utf-8"))

    audited = unlearnkit.audit(model=unlearned.folder, target=own["target"], oracle=own["oracle"], forget=own["forget"],
                               retain=own["retain"], attacks=["direct"], output=tmp_path / "api-audit", progress=False)
    assert run_cli(["audit", str(unlearned.folder), "--target", str(own["target"]), "--oracle", str(own["oracle"]), "--forget",
                    str(own["forget"]), "--retain", str(own["retain"]), "--attacks", "direct", "--output",
                    str(tmp_path / "cli-audit")], monkeypatch) == 0
    assert _files(audited.folder) == _files(tmp_path / "cli-audit")
    assert [row["attack"] for row in audited.summary["attacks"]] == ["direct"]

    report = unlearnkit.write_report([unlearned.folder, evaluated.folder], output=tmp_path / "report.html", title="my people")
    assert report.path == tmp_path / "report.html" and report.runs == 2 and "my people" in report.path.read_text(encoding="utf-8")
    with pytest.raises(UnlearnkitError, match="exists; choose another --output, or pass --overwrite"):
        unlearnkit.write_report(unlearned.folder, output=report.path)
    assert (folder_hash(own["data"]), folder_hash(own["target"])) == before, "an input was changed"


@pytest.mark.parametrize("call, message", [
    (lambda own, out: unlearnkit.unlearn(method="ga", model=own["target"], forget=own["data"] / "nope.jsonl", output=out),
     "does not exist"),
    (lambda own, out: unlearnkit.unlearn(method="gaa", model=own["target"], forget=own["forget"], output=out), "Did you mean: ga"),
    (lambda own, out: unlearnkit.unlearn(method="ga", model=own["target"], forget=own["forget"], output=out,
                                         settings={"num_epochs": "many"}), "num_epochs"),
    (lambda own, out: unlearnkit.unlearn(method="ga", model=own["target"], forget=own["forget"], output=out, checkpoint_every=-1),
     "checkpoint_every must be a whole number"),
    (lambda own, out: unlearnkit.unlearn(method="ga", model=own["target"], forget=own["forget"], output=out, eval_every=2,
                                         evaluate_after=False), "drop --no-eval \\(evaluate_after=False\\)"),
    (lambda own, out: unlearnkit.unlearn(method="ga", model=own["target"], forget=own["forget"], output=own["target"],
                                         overwrite=True), "is --model"),
    (lambda own, out: unlearnkit.evaluate(model=own["target"], forget="forget10", output=out), "is a built-in benchmark split"),
    (lambda own, out: unlearnkit.evaluate(model=own["target"], output=out), "at least --forget"),
    (lambda own, out: unlearnkit.evaluate(model=own["target"], forget=own["forget"], output=out, batch_size=0), "batch_size"),
    (lambda own, out: unlearnkit.audit(model=own["target"], forget=own["forget"], attacks=["direkt"], output=out), "direkt"),
    (lambda own, out: unlearnkit.audit(model=own["target"], forget=own["forget"], output=own["forget"], overwrite=True),
     "is --forget"),
    (lambda own, out: unlearnkit.load_data(42), "needs a path or a name"),
    (lambda own, out: unlearnkit.write_report([], output=out / "r.html"), "at least one results folder"),
], ids=["missing data", "unknown method", "bad setting", "negative checkpoint", "tracking without eval", "output over the model",
        "built-in split as a file", "no data", "bad batch size", "unknown attack", "audit into its data", "not a path", "no folders"])
def test_bad_input_raises_before_anything_is_written(call, message: str, own: dict, tmp_path: Path) -> None:
    out = tmp_path / "out"
    before = folder_hash(tmp_path)
    with pytest.raises(UnlearnkitError, match=message):
        call(own, out)
    assert folder_hash(tmp_path) == before and not out.exists()


def test_the_api_names_are_the_functions_even_after_every_internal_module_is_imported() -> None:
    """`from unlearnkit import unlearn` gives the function, also after the internal modules (the unlearning loop, the audit)
    are imported; `import unlearnkit` loads no torch."""
    code = ("import sys, types\n"
            "import unlearnkit\n"
            "light = 'torch' not in sys.modules\n"
            "import unlearnkit.unlearning, unlearnkit.auditing, unlearnkit.runs.unlearn, unlearnkit.runs.audit\n"
            "from unlearnkit import unlearn, audit, evaluate, load_data, write_report, distributed\n"
            "print(light, all(callable(f) and not isinstance(f, types.ModuleType) for f in (unlearn, audit, evaluate, load_data, "
            "write_report)), unlearn.__module__, isinstance(distributed, types.ModuleType), unlearnkit.audit is audit)\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == ["True", "True", "unlearnkit.api", "True", "True"]
