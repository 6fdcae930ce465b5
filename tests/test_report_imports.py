"""The report reads results folders only: it imports no torch, transformers, method, attack, evaluation or runner module.

What it shows of metrics, methods and attacks comes from the folders
(``metric_info``, ``method_info``, ``attack_info`` in ``config.json``, written
with :mod:`unlearnkit.descriptions`); the few constants it keeps (the
leaderboard's columns, labels and directions, the split order) are checked here
against the modules they mirror.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

import unlearnkit.report
from unlearnkit.descriptions import UNLEARN_SECONDS, attack_descriptions, config_descriptions, method_description, metric_descriptions
from unlearnkit.report import glossary, leaderboard

REPORT = Path(unlearnkit.report.__file__).resolve().parent
MODULES = sorted("unlearnkit.report" + ("" if path.stem == "__init__" else f".{path.stem}") for path in REPORT.glob("*.py"))
# What the report may import from the package besides itself (``unlearnkit`` for ``__version__``).
ALLOWED = {"unlearnkit", "unlearnkit.errors", "unlearnkit.io"}
FORBIDDEN = ("torch", "transformers", "unlearnkit.methods", "unlearnkit.attacks", "unlearnkit.evaluation", "unlearnkit.bench",
             "unlearnkit.auditing", "unlearnkit.jobs", "unlearnkit.runs", "unlearnkit.cli", "unlearnkit.descriptions")


def _loaded(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


def test_importing_every_report_module_loads_no_torch_and_no_upper_module() -> None:
    code = ("import importlib, json, sys\n"
            f"for name in {MODULES!r}:\n"
            "    importlib.import_module(name)\n"
            "print(json.dumps(sorted(sys.modules)))\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    modules = json.loads(done.stdout.strip().splitlines()[-1])
    loaded = {prefix: sorted(name for name in modules if _loaded(name, prefix)) for prefix in FORBIDDEN}
    assert {prefix: names for prefix, names in loaded.items() if names} == {}
    package = {name for name in modules if _loaded(name, "unlearnkit")}
    assert package - ALLOWED - set(MODULES) == set(), "the report loaded package modules outside its allowed set"


def test_no_report_module_imports_above_errors_and_io_even_lazily() -> None:
    # A lazy import (inside a function) escapes the fresh-interpreter test until the function runs: read the source.
    for path in REPORT.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                names = [node.module or ""]
            else:
                continue
            for name in names:
                assert not any(_loaded(name, prefix) for prefix in ("torch", "transformers")), f"{path.name} imports {name}"
                if _loaded(name, "unlearnkit"):
                    assert name in ALLOWED or _loaded(name, "unlearnkit.report"), f"{path.name} imports {name}"


def test_the_report_constants_match_the_modules_they_mirror() -> None:
    from unlearnkit.builtin import FORGET_SPLITS
    from unlearnkit.evaluation.catalog import ARROWS, FAMILIES, metric_catalog

    assert glossary.ARROWS == ARROWS
    assert glossary.FAMILY_ORDER[:-1] == FAMILIES and glossary.FAMILY_ORDER[-1] == "cost"
    assert leaderboard.SPLIT_ORDER == FORGET_SPLITS
    described = metric_descriptions(glossary.LEADERBOARD_METRICS)
    assert list(glossary.LEADERBOARD_LABELS) == list(glossary.LEADERBOARD_METRICS)
    for name, (label, better) in glossary.LEADERBOARD_LABELS.items():
        assert (described[name]["label"], described[name]["better"]) == (label, better), name
    assert set(described) == set(glossary.LEADERBOARD_METRICS) and described["unlearn_seconds"] == UNLEARN_SECONDS
    catalog = metric_catalog()
    assert described["forget_quality"]["definition"] == catalog.get("forget_quality").definition


def test_descriptions_for_the_runners() -> None:
    from unlearnkit.attacks import ATTACKS
    from unlearnkit.evaluation.catalog import FAMILIES, metric_catalog
    from unlearnkit.methods import METHODS

    described = metric_descriptions(["model_utility", "selected_step", "forget_quality", "mia_min_k_auc"])
    catalog = metric_catalog()
    in_order = sorted((name for name in catalog.names() if name in described), key=lambda name: FAMILIES.index(catalog.get(name).family))
    assert list(described) == in_order  # the catalog's order, by family
    assert set(described) == {"model_utility", "forget_quality", "mia_min_k_auc"}  # selected_step: no metric, skipped
    assert set(described["mia_min_k_auc"]) == {"label", "better", "definition", "paper", "family"}
    assert described["mia_min_k_auc"]["better"] == "near 0.5"

    npo = method_description("npo")
    assert {key: npo[key] for key in ("name", "paper", "summary", "family")} == {
        "name": "npo", "paper": METHODS.get("npo").paper, "summary": METHODS.get("npo").summary, "family": METHODS.get("npo").family}
    assert npo["defaults"]["learning_rate"] == 1e-5 and "beta" in npo["defaults"]
    json.dumps(npo)  # goes into config.json as it is
    for name in METHODS.names():
        assert method_description(name)["defaults"], name

    attacks = attack_descriptions(["direct", "relearning"])
    assert attacks["relearning"] == {"family": ATTACKS.get("relearning").family, "paper": ATTACKS.get("relearning").paper,
                                     "summary": ATTACKS.get("relearning").summary}
    with pytest.raises(Exception, match="relearnin"):
        attack_descriptions(["relearnin"])

    demo = {"target": {"forget_quality": 1e-3}, "unlearned": {"forget_quality": 0.5, "model_utility": 0.4, "selected_step": 3}}
    keys = config_descriptions(demo, method="ga")
    assert set(keys) == {"metric_info", "method_info"}
    assert set(keys["metric_info"]) == {"forget_quality", "model_utility", "unlearn_seconds"}
    flat = config_descriptions({"forget_probability": 0.2}, attacks=["direct"])
    assert set(flat) == {"metric_info", "attack_info"} and set(flat["metric_info"]) == {"forget_probability"}
