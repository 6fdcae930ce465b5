"""`unlearnkit report`: one self-contained HTML page from results folders, checked by parsing it and in headless Chromium."""

from __future__ import annotations

import base64
import io
import json
import os
import re
import shutil
import subprocess
from html import escape
from html.parser import HTMLParser
from pathlib import Path

import pytest
from PIL import Image

from tests.helpers import bench_folder, run_cli
from unlearnkit.attacks import ATTACKS
from unlearnkit.descriptions import attack_descriptions, config_descriptions
from unlearnkit.errors import UnlearnkitError
from unlearnkit.evaluation.catalog import describe_metric
from unlearnkit.methods import METHODS
from unlearnkit.report.audit import write_audit_report
from unlearnkit.report.html import write_report
from unlearnkit.report.results import load_runs

REPO = Path(__file__).resolve().parents[1]
ARTIFACTS = REPO / "test-artifacts"  # git-ignored: files a person may look at after the tests
RUNS = ("ga-forget10-seed0", "npo-forget10-seed0")
# One trade-off plot (one split), and per run its truth-ratio distribution and its training curves.
EXPECTED_IMAGES = 1 + 2 * len(RUNS)


@pytest.fixture(scope="session")
def bench_run(micro_cache: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return bench_folder(micro_cache, tmp_path_factory.mktemp("bench"))


@pytest.fixture(scope="session")
def chromium() -> str:
    """Debian's headless Chromium; installed with apt-get where missing and this process may (root)."""
    found = shutil.which("chromium") or ("/usr/bin/chromium" if Path("/usr/bin/chromium").is_file() else None)
    if found:
        return found
    if not shutil.which("apt-get") or os.geteuid() != 0:
        pytest.skip("Chromium is not installed and this process cannot install it (needs root and apt-get): "
                    "run `apt-get install -y chromium` to enable the browser check of the report.")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = ["apt-get", "install", "-y", "chromium"]
    result = subprocess.run(install, check=False, capture_output=True, text=True, env=env, timeout=540)
    if result.returncode != 0:  # a fresh machine may have no package lists yet
        subprocess.run(["apt-get", "update"], check=False, capture_output=True, text=True, env=env, timeout=300)
        result = subprocess.run(install, check=False, capture_output=True, text=True, env=env, timeout=540)
    found = shutil.which("chromium")
    if result.returncode != 0 or not found:
        pytest.skip(f"Chromium could not be installed with apt-get: {(result.stderr or result.stdout)[-500:]}")
    return found


class _Page(HTMLParser):
    """The parts of the page the tests look at: images, sections and the visible text."""

    def __init__(self) -> None:
        super().__init__()
        self.images: list[dict[str, str | None]] = []
        self.sections: list[str] = []
        self.scripts = 0
        self.external: list[str] = []
        self.text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        attributes = dict(attrs)
        if tag == "img":
            self.images.append(attributes)
        if tag == "section":
            self.sections.append(attributes.get("id") or "")
        if tag == "script":
            self.scripts += 1
        for name in ("src", "href"):
            value = attributes.get(name) or ""
            if re.match(r"(https?:)?//", value):
                self.external.append(value)

    def handle_data(self, data: str) -> None:
        self.text.append(data)


def _parse(path: Path) -> _Page:
    page = _Page()
    page.feed(path.read_text(encoding="utf-8"))
    page.close()
    return page


def _png(src: str) -> Image.Image:
    prefix = "data:image/png;base64,"
    assert src.startswith(prefix), src[:40]
    return Image.open(io.BytesIO(base64.b64decode(src[len(prefix):], validate=True)))


def _report(folders: list[Path], output: Path, monkeypatch) -> int:
    return run_cli(["report", *map(str, folders), "--output", str(output)], monkeypatch)


def test_report_from_a_bench_folder(bench_run: Path, tmp_path: Path, monkeypatch, capsys) -> None:
    output = tmp_path / "report.html"
    assert _report([bench_run], output, monkeypatch) == 0
    assert f"Report on {len(RUNS)} run(s)" in capsys.readouterr().out
    page = _parse(output)
    assert page.sections == ["tradeoff", "metrics", "methods", "runs", "examples"]
    assert page.scripts == 0 and page.external == [], "the page must open without network and run no script"
    assert len(page.images) == EXPECTED_IMAGES
    for attributes in page.images:
        image = _png(attributes["src"] or "")
        assert image.size[0] > 100 and image.size[1] > 100
        assert (str(image.size[0]), str(image.size[1])) == (attributes["width"], attributes["height"])
        colours = image.convert("L").getextrema()
        assert colours[0] < colours[1], f"blank plot: {attributes['alt']}"
    text = " ".join(page.text)
    for method in ("ga", "npo"):
        config = json.loads((bench_run / f"{method}-forget10-seed0" / "config.json").read_text())
        if "method_info" in config:  # written by the runners (unlearnkit.descriptions); a folder without shows no paper
            assert METHODS.get(method).paper in text  # each method's citation
    assert "learning_rate" in text and "higher ↑" in text and "lower ↓" in text  # hyperparameters, directions
    samples = json.loads((bench_run / RUNS[1] / "per_sample.json").read_text())
    for split in ("forget", "retain"):
        assert samples["unlearned"][split][0]["question"] in text
        assert samples["unlearned"][split][0]["generation"].strip() in text
        assert samples["target"][split][0]["generation"].strip() in text
    # The bench wrote the same report into its folder, and each run's demo folder has its own.
    assert len(_parse(bench_run / "report.html").images) == EXPECTED_IMAGES
    assert len(_parse(bench_run / RUNS[0] / "report.html").images) == 3


def test_report_groups_seeds_and_escapes_text(bench_run: Path, tmp_path: Path, monkeypatch) -> None:
    # A second seed of npo, made by hand from the first: its metrics differ, its generation holds markup.
    first = tmp_path / "npo-seed0"
    second = tmp_path / "npo-seed1"
    shutil.copytree(bench_run / RUNS[1], first, ignore=shutil.ignore_patterns("model"))
    shutil.copytree(first, second)
    config = json.loads((second / "config.json").read_text())
    config["hyperparameters"]["seed"] = 1
    (second / "config.json").write_text(json.dumps(config))
    summary = json.loads((first / "summary.json").read_text())
    utility = summary["unlearned"]["model_utility"]
    summary["unlearned"]["model_utility"] = utility + 0.02
    (second / "summary.json").write_text(json.dumps(summary))
    samples = json.loads((first / "per_sample.json").read_text())
    samples["unlearned"]["forget"][0]["generation"] = '<script>alert("x")</script> & more'
    (first / "per_sample.json").write_text(json.dumps(samples))

    output = tmp_path / "report.html"
    assert _report([first, second], output, monkeypatch) == 0
    html = output.read_text(encoding="utf-8")
    assert "<script" not in html and "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt; &amp; more" in html
    page = _parse(output)
    assert len(page.images) == 1 + 2 * 2
    # Two seeds: mean and sample std of (u, u + 0.02) are u + 0.01 and 0.02 / sqrt(2).
    assert f"{utility + 0.01:.3f} ± {0.02 / 2 ** 0.5:.3f}" in html
    assert "seed</code></td><td>0, 1</td>" in html


def test_report_refuses_incompatible_benchmarks(bench_run: Path, tmp_path: Path, monkeypatch, capsys) -> None:
    other = tmp_path / "other-benchmark"
    shutil.copytree(bench_run / RUNS[0], other, ignore=shutil.ignore_patterns("model"))
    config = json.loads((other / "config.json").read_text())
    config["cache"] = str(Path(config["cache"]).with_name("builtin-" + "f" * 16))
    (other / "config.json").write_text(json.dumps(config))
    output = tmp_path / "report.html"
    assert _report([bench_run / RUNS[0], other], output, monkeypatch) == 2
    error = capsys.readouterr().err
    assert str(other) in error and "another benchmark" in error and "builtin-" + "f" * 16 in error
    assert not output.exists()


def test_report_refuses_folders_without_results(bench_run: Path, tmp_path: Path, monkeypatch, capsys) -> None:
    output = tmp_path / "report.html"
    empty = tmp_path / "empty"
    empty.mkdir()
    assert _report([bench_run, empty], output, monkeypatch) == 2
    assert f"{empty}: no summary.json" in capsys.readouterr().err
    finetuned = tmp_path / "finetuned"
    finetuned.mkdir()
    (finetuned / "config.json").write_text(json.dumps({"command": "finetune"}))
    (finetuned / "summary.json").write_text(json.dumps({"examples": 12, "epochs": 3}))
    assert _report([finetuned], output, monkeypatch) == 2
    assert f"{finetuned}: summary.json holds no evaluation metrics" in capsys.readouterr().err
    assert _report([tmp_path / "missing"], output, monkeypatch) == 2
    assert "no such folder" in capsys.readouterr().err
    assert not output.exists()
    output.write_text("an earlier report")
    assert _report([bench_run], output, monkeypatch) == 2
    assert "exists" in capsys.readouterr().err and output.read_text() == "an earlier report"


# --- folders written by hand: what the report shows comes from the folders alone ----------------------------------


def _demo_folder(root: Path, method: str, seed: int, described: bool) -> Path:
    """A demo results folder as the runners write it; ``described``: with metric_info and method_info in config.json."""
    folder = root / f"{method}-forget10-seed{seed}"
    folder.mkdir(parents=True)
    rows = [{"question": f"Q{i}?", "answer": f"A{i}", "generation": f"G{i} {method}", "truth_ratio": 0.2 + 0.1 * i} for i in range(4)]
    summary = {
        "target": {"forget_quality": 2e-4, "model_utility": 0.61, "forget_truth_ratio": 0.4, "mia_min_k_auc": 0.9},
        "oracle": {"forget_quality": 1.0, "model_utility": 0.6, "forget_truth_ratio": 0.7, "mia_min_k_auc": 0.5},
        "unlearned": {"forget_quality": 0.3 + 0.1 * seed, "model_utility": 0.55, "forget_truth_ratio": 0.65, "mia_min_k_auc": 0.55,
                      "selected_step": 2},
    }
    config = {"command": "demo", "method": method, "forget_split": "forget10", "cache": str(root / "builtin-0123456789abcdef"),
              "hyperparameters": {"seed": seed, "learning_rate": 2e-5, "num_epochs": 5.0}}
    if described:
        config.update(config_descriptions(summary, method=method))
    files = {
        "config.json": config, "summary.json": summary, "timing.json": {"unlearn_seconds": 3.5},
        "per_sample.json": {"unlearned": {"forget": rows, "retain": rows}, "target": {"forget": rows, "retain": rows},
                            "oracle": {"forget": [{**row, "truth_ratio": 0.5} for row in rows]}},
        "training_log.json": [{"step": 1, "loss": 2.0, "forget_loss": 1.5}, {"step": 2, "loss": 1.0, "forget_loss": 0.5}],
    }
    for name, content in files.items():
        (folder / name).write_text(json.dumps(content), encoding="utf-8")
    return folder


def test_report_shows_the_descriptions_its_folders_record(tmp_path: Path) -> None:
    folders = [_demo_folder(tmp_path, "npo", seed, described=True) for seed in (0, 1)]
    output = write_report(load_runs(folders), tmp_path / "report.html")
    text = " ".join(_parse(output).text)
    html = output.read_text(encoding="utf-8")
    npo = METHODS.get("npo")
    assert npo.paper in text and npo.summary in text  # the method's paper and loss, from method_info
    for name in ("forget_quality", "mia_min_k_auc", "unlearn_seconds"):  # each metric's definition, from metric_info
        assert escape(describe_metric(name).definition if name != "unlearn_seconds" else "Wall-clock seconds") in html
    assert "near 0.5 →½" in text and "higher ↑" in text and "lower ↓" in text
    # The method's defaults: learning_rate set away from the author's 1e-05 is shown (bold), num_epochs at its default is not.
    assert '<tr class="changed"><td><code>learning_rate</code></td><td>2e-05</td><td>1e-05</td></tr>' in html
    assert "<code>selected_step</code>" not in html  # bookkeeping, not a metric


def test_report_falls_back_on_folders_without_descriptions(tmp_path: Path) -> None:
    output = write_report(load_runs([_demo_folder(tmp_path, "npo", 0, described=False)]), tmp_path / "report.html")
    page = _parse(output)
    text = " ".join(page.text)
    assert page.sections == ["tradeoff", "metrics", "methods", "runs", "examples"] and len(page.images) == 3
    assert METHODS.get("npo").paper not in text and "records no description" in text
    assert "mia min k auc" in text and describe_metric("mia_min_k_auc").definition not in text  # its own name, no definition
    assert "forget quality ↑" in text and "higher ↑" in text  # the leaderboard's columns keep their labels and directions
    assert "A metric without a definition" in text


def _audit_folder(root: Path, described: bool) -> Path:
    folder = root / ("audit-described" if described else "audit-bare")
    folder.mkdir()
    rows = [{"attack": name, "family": ATTACKS.get(name).family, "measure": "forget recall", "unlearned": unlearned, "target": 0.9,
             "oracle": 0.2, "recovered_share": share, "verdict": verdict, "threshold": 0.05}
            for name, unlearned, share, verdict in (("direct", 0.2, 0.0, "at the oracle's level"),
                                                    ("relearning", 0.6, 0.571, "recovered above the oracle's level"))]
    config = {"command": "audit", "attacks": ["direct", "relearning"]}
    if described:
        config["attack_info"] = attack_descriptions(config["attacks"])
    summary = {"attacks": rows, "exposed_by": ["relearning"], "skipped": {"membership": "needs a holdout set"}, "details": {}}
    (folder / "config.json").write_text(json.dumps(config), encoding="utf-8")
    (folder / "summary.json").write_text(json.dumps(summary), encoding="utf-8")
    return folder


def test_audit_report_is_drawn_from_the_audit_folder(tmp_path: Path) -> None:
    folder = _audit_folder(tmp_path, described=True)
    output = write_audit_report(folder, tmp_path / "audit.html", title="audit <of> x")
    page = _parse(output)
    text = " ".join(page.text)
    assert len(page.images) == 1 and page.scripts == 0
    assert "Hidden knowledge exposed by:" in text and "relearning." in text and "membership: needs a holdout set" in text
    assert "0.571" in text and "threshold 0.05" in text and "audit <of> x" in text
    for name in ("direct", "relearning"):
        assert ATTACKS.get(name).paper in text and ATTACKS.get(name).summary in text
    bare = " ".join(_parse(write_audit_report(_audit_folder(tmp_path, described=False), tmp_path / "bare.html", "t")).text)
    assert "relearning" in bare and ATTACKS.get("relearning").paper not in bare  # a folder without attack_info: names alone
    with pytest.raises(Exception, match=r"no summary\.json"):
        write_audit_report(tmp_path / "missing", tmp_path / "x.html", "t")


def test_the_one_table_writer() -> None:
    from unlearnkit.report.tables import audit_table, format_table

    summary = {"target": {"forget_quality": 1.2e-5, "model_utility": 0.5}, "unlearned": {"forget_quality": 0.25}}
    assert format_table(summary, ["forget_quality", "model_utility"]).splitlines() == [
        "model      forget_quality  model_utility",
        "---------  --------------  -------------",
        "target     1.2e-05         0.5000       ",
        "unlearned  0.2500          -            ",
    ]
    rows = [{"name": "a|b", "n": 3, "x": None}, {"name": "c", "n": 12, "x": 0.5}]
    assert format_table(rows, ["name", "n", "x"], headers={"x": "value"}, style="markdown", right=("n", "x"),
                        number=lambda value: f"{value:g}", missing="–") == (
        "| name | n | value |\n|---|---:|---:|\n| a|b | 3 | – |\n| c | 12 | 0.5 |")
    assert format_table(rows, ["name", "n"], right=("n",), number=str).splitlines() == ["name   n", "----  --", "a|b    3", "c     12"]
    with pytest.raises(ValueError, match="style"):
        format_table(rows, ["name"], style="html")
    audit = [{"attack": "direct", "measure": "recall", "unlearned": 0.1, "target": 0.9, "oracle": None, "recovered_share": None,
              "verdict": "at the oracle's level", "threshold": 0.05, "recall_rule": "fact_span"},
             {"attack": "in_context", "measure": "recall", "unlearned": 0.0, "target": 0.0, "oracle": 0.0, "recovered_share": None,
              "verdict": "uninformative on this data", "verdict_reason": "the target scores 0.000, below 0.1", "threshold": 0.05,
              "recall_rule": None, "notes": ["no entity field: the facts given come from other rows"]}]
    assert audit_table(audit, []).splitlines() == [
        "| attack | measure | unlearned | target | oracle | recovered share | verdict | recall rule |",
        "|---|---|---:|---:|---:|---:|---|---|",
        "| direct | recall | 0.100 | 0.900 | – | – | at the oracle's level | fact_span |",
        "| in_context | recall | 0.000 | 0.000 | 0.000 | – | uninformative on this data | – |",
        "",
        "Verdict threshold: 0.05 (absolute difference from the retain oracle's recovery under the same attack).",
        "Hidden knowledge exposed by: none of the attacks.",
        "- in_context: uninformative on this data: the target scores 0.000, below 0.1.",
        "- in_context: no entity field: the facts given come from other rows",
    ]


# Appended to a copy of the report: once every image has loaded, the page records what the browser decoded.
_PROBE = """<pre id="probe"></pre><script>
window.addEventListener("load", () => {
  const images = Array.from(document.images).map(i => [i.complete, i.naturalWidth, i.naturalHeight, i.alt]);
  document.getElementById("probe").textContent = "PROBE" + JSON.stringify(images) + "END";
});
</script>"""


def _chromium(binary: str, profile: Path, *args: str) -> subprocess.CompletedProcess[str]:
    command = [binary, "--headless", "--disable-gpu", "--no-sandbox", "--disable-dev-shm-usage", "--no-first-run",
               "--hide-scrollbars", f"--user-data-dir={profile}", "--enable-logging=stderr", "--v=0", *args]
    return subprocess.run(command, check=False, capture_output=True, text=True, timeout=120)


def test_report_renders_in_headless_chromium(bench_run: Path, chromium: str, tmp_path: Path, monkeypatch) -> None:
    report = tmp_path / "report.html"
    assert _report([bench_run], report, monkeypatch) == 0

    screenshot = tmp_path / "report.png"
    shot = _chromium(chromium, tmp_path / "profile-shot", "--window-size=1280,4000", f"--screenshot={screenshot}", report.as_uri())
    assert screenshot.is_file(), shot.stderr[-2000:]
    console = [line for line in shot.stderr.splitlines() if "CONSOLE" in line or "Uncaught" in line]
    assert console == [], "the report logged errors in the browser:\n" + "\n".join(console)
    with Image.open(screenshot) as image:
        assert image.size == (1280, 4000)
        low, high = image.convert("L").getextrema()
        assert low < high, "the screenshot is blank"
    ARTIFACTS.mkdir(exist_ok=True)
    shutil.copy(screenshot, ARTIFACTS / "report-screenshot.png")

    probed = tmp_path / "probed.html"
    probed.write_text(report.read_text(encoding="utf-8").replace("</body>", _PROBE + "</body>"), encoding="utf-8")
    dump = _chromium(chromium, tmp_path / "profile-dom", "--virtual-time-budget=10000", "--dump-dom", probed.as_uri())
    match = re.search(r"<pre id=\"probe\">PROBE(.*?)END</pre>", dump.stdout, re.DOTALL)
    assert match, "the page did not finish loading: " + dump.stderr[-2000:]
    images = json.loads(match.group(1))
    assert len(images) == EXPECTED_IMAGES
    for complete, width, height, alt in images:
        assert complete and width > 0 and height > 0, f"the browser could not draw {alt!r}"


def _own_data_folder(root: Path, name: str, command: str, questions: list[str], model: str) -> Path:
    """An ``eval`` or ``unlearn`` results folder on a user's forget file, as those commands write it."""
    folder = root / name
    folder.mkdir()
    rows = [{"question": question, "answer": f"answer to {question}", "truth_ratio": 0.5, "generation": f"{name} says {question}"}
            for question in questions]
    config = {"command": command, "model": model, "forget": str(root / "forget.json"), "method": "npo" if command == "unlearn" else None}
    if command == "unlearn":  # unlearn records a digest of the full rows; eval records none
        config["sha256"] = {"forget_rows": "0" * 64}
    for file, content in (("config.json", config), ("summary.json", {"forget_quality": 0.1, "model_utility": 0.5}),
                          ("per_sample.json", {"forget": rows})):
        (folder / file).write_text(json.dumps(content), encoding="utf-8")
    return folder


def test_comparability_is_decided_by_the_forget_data_not_the_command(tmp_path: Path) -> None:
    questions = [f"Who is person {i}?" for i in range(5)]
    target = _own_data_folder(tmp_path, "target-eval", "eval", questions, str(tmp_path / "target"))
    oracle = _own_data_folder(tmp_path, "oracle-eval", "eval", questions[::-1], str(tmp_path / "oracle"))  # order does not matter
    # The model path lies in a built-in benchmark cache, but the forget data is the user's file: named by its data.
    unlearned = _own_data_folder(tmp_path, "npo", "unlearn", questions, str(tmp_path / ("builtin-" + "a" * 16) / "target"))
    runs = load_runs([target, oracle, unlearned])
    assert len({run.benchmark for run in runs}) == 1 and runs[0].benchmark.startswith("forget data ")
    other = _own_data_folder(tmp_path, "other-eval", "eval", [*questions[:4], "Who is someone else?"], str(tmp_path / "target"))
    with pytest.raises(UnlearnkitError, match="another benchmark"):
        load_runs([target, unlearned, other])


def test_unlearn_examples_show_the_target_from_its_eval_folder(tmp_path: Path) -> None:
    questions = [f"Who is person {i}?" for i in range(3)]
    unlearned = _own_data_folder(tmp_path, "npo", "unlearn", questions, str(tmp_path / "target"))
    alone = (write_report(load_runs([unlearned]), tmp_path / "alone.html")).read_text(encoding="utf-8")
    assert "(not recorded)" not in alone and "target (before)" not in alone and "add the results folder of an" in alone
    # The target's eval lists its rows in another order: they are matched by question.
    target = _own_data_folder(tmp_path, "target-eval", "eval", questions[::-1], str(tmp_path / "target"))
    html = write_report(load_runs([unlearned, target]), tmp_path / "both.html").read_text(encoding="utf-8")
    assert "target (before)" in html
    assert '<td class="generation">target-eval says Who is person 0?</td><td class="generation">npo says Who is person 0?</td>' in html
    # Results come before the metric definitions.
    assert html.index("<h3>forget</h3>") < html.index("Definitions of the")
