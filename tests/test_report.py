"""`unlearnkit report`: one self-contained HTML page from results folders, checked by parsing it and in headless Chromium."""

from __future__ import annotations

import base64
import io
import json
import os
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import pytest
from PIL import Image

from tests.test_bench import bench_folder
from tests.test_cli import run_cli
from unlearnkit.methods import METHODS

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
