"""The tracks' Python API (unlearnkit.api_tracks): the command line calls it, so both refuse the same inputs the same way."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import unlearnkit
from tests.helpers import run_cli
from unlearnkit import api_tracks
from unlearnkit.errors import UnlearnkitError


def test_the_package_exports_the_tracks() -> None:
    for name in ("private", "harmful", "hazard", "copyright", "side_effects"):
        assert getattr(unlearnkit, name) is getattr(api_tracks, name)
        assert name in dir(unlearnkit) and name in unlearnkit.__all__


def test_hazard_from_a_script_writes_the_commands_folder(tmp_path: Path) -> None:
    run = unlearnkit.hazard(output=tmp_path / "run", preset="micro", methods=["npo"], oracle=False, progress=False)
    assert run.folder == tmp_path / "run"
    assert run.summary == json.loads((run.folder / "summary.json").read_text())
    assert set(run.summary["models"]) == {"target", "npo"}
    assert (run.folder / "report.md").is_file() and (run.folder / "tradeoff.png").is_file()
    assert json.loads((run.folder / "config.json").read_text())["command"] == "hazard"


@pytest.mark.parametrize("call, message", [
    (lambda out: api_tracks.private(output=out, model="m"), "--model only apply to real e-mails"),
    (lambda out: api_tracks.private(output=out, forget_names=["Ann Lee"]), "--forget-names only apply to real e-mails"),
    (lambda out: api_tracks.private(output=out, enron=out.parent, preset="micro", model="m"), "--preset only apply to the built-in"),
    (lambda out: api_tracks.private(output=out, enron=out.parent), "--enron needs --model"),
    (lambda out: api_tracks.private(output=out, enron=out.parent, model="m", forget_people=2, forget_names=["A B"]), "not both"),
    (lambda out: api_tracks.private(output=out, forget_people=True, enron=out.parent, model="m"), "forget_people must be"),
    (lambda out: api_tracks.private(output=out, methods=[]), "methods is empty"),
    (lambda out: api_tracks.private(output=out, methods=5), "methods must be a list of names"),
    (lambda out: api_tracks.hazard(output=out, mcq="wmdp:bio@x"), "--mcq apply to a real model"),
    (lambda out: api_tracks.hazard(output=out, model="m"), "--model needs --mcq"),
    (lambda out: api_tracks.hazard(output=out, preset="micro", settings=["lr"]), "settings must be a dict"),
    (lambda out: api_tracks.copyright(output=out, oracle=False), "--oracle/--no-oracle applies to the built-in analogue"),
    (lambda out: api_tracks.harmful(output=out, preset="micro", methods=["npoo"]), "Unknown method"),
    (lambda out: api_tracks.side_effects(output=out, models=[3]), "models needs a path or a name"),
    (lambda out: api_tracks.hazard(output=out, preset=3), "preset needs a preset name"),
    (lambda out: api_tracks.harmful(output=out, preset="micro", oracle="no"), "oracle must be True or False"),
    (lambda out: api_tracks.copyright(output=out, preset="micro", overwrite=1), "overwrite must be True or False"),
])
def test_bad_calls_raise_before_anything_is_written(tmp_path: Path, call, message: str) -> None:
    output = tmp_path / "out"
    with pytest.raises(UnlearnkitError, match=message.replace("(", r"\(").replace(")", r"\)")):
        call(output)
    assert not output.exists()


@pytest.mark.parametrize("args, message", [
    (["copyright", "--no-oracle"], "--oracle/--no-oracle applies to the built-in analogue"),
    (["hazard", "--scoring", "letters"], "--scoring apply to a real model"),
    (["private", "--methods", ",", "--preset", "micro"], "methods is empty"),
])
def test_the_command_line_gives_the_apis_refusal(tmp_path: Path, monkeypatch, capsys, args: list[str], message: str) -> None:
    output = tmp_path / "out"
    assert run_cli([args[0], "--output", str(output), *args[1:]], monkeypatch) == 2
    error = capsys.readouterr().err
    assert message in error and "Traceback" not in error
    assert not output.exists()
