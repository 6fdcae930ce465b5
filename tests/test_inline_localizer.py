"""`--set localizer=NAME`: the localizer runs on the forget set inside the run, and the run trains only its selection,
exactly as a saved localization (`unlearnkit localize` then `--localize DIR`) with the same settings would."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from safetensors.torch import load_file

import unlearnkit
from tests.helpers import micro, run_cli
from unlearnkit.localization import load_localization

SETTINGS = {"num_epochs": 2, "warmup_ratio": 0.0}


def test_inline_equals_a_saved_localization_of_the_forget_set(micro_cache: Path, micro_bench, tmp_path: Path) -> None:
    common = {"model": "builtin", "forget": "forget10", "preset": "micro", "cache": micro_cache, "progress": False}
    inline = unlearnkit.unlearn(method="graddiff", output=tmp_path / "inline", settings={**SETTINGS, "localizer": "saliency"},
                                evaluate_after=False, **common)
    saved = unlearnkit.localize(model="builtin", data="forget10", localizer="saliency", output=tmp_path / "located", preset="micro",
                                cache=micro_cache, progress=False)
    localized = unlearnkit.unlearn(method="graddiff", output=tmp_path / "saved", settings=SETTINGS, localize=saved.folder,
                                   evaluate_after=False, **common)
    kept = load_localization(inline.folder / "localization")
    assert kept.localizer == "saliency" and kept.selection == load_localization(saved.folder).selection
    after_inline = load_file(inline.folder / "model" / "model.safetensors")
    after_saved = load_file(localized.folder / "model" / "model.safetensors")
    before = load_file(micro_bench.target_dir / "model.safetensors")
    assert after_inline.keys() == after_saved.keys()
    assert all(after_inline[name].equal(after_saved[name]) for name in after_inline)  # the same run, bit for bit
    assert any(not after_inline[name].equal(before[name]) for name in before)
    config = json.loads((inline.folder / "config.json").read_text(encoding="utf-8"))
    assert config["localization"]["inline"] is True and config["localization"]["localizer"] == "saliency"
    assert config["localization"]["selection"] == kept.selection.to_json()
    assert sorted(path.name for path in (inline.folder / "localization").glob("*.png"))  # the report's heat maps


@pytest.mark.parametrize(("sets", "message"), [
    (["localizer=saliency", "localize=somewhere"], "both choose what to train"),
    (["localizer=saliency", "layers=0"], "localizer=saliency already chooses the layers"),
    (["localizer=salency"], "Unknown localizer 'salency'.*saliency"),
])
def test_contradictions_and_unknown_names_are_refused(sets: list[str], message: str, micro_cache: Path, tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    output = tmp_path / "out"
    args = ["unlearn", "--method", "graddiff", "--forget", "forget10", "--output", str(output), *micro(micro_cache)]
    for item in sets:
        args += ["--set", item]
    assert run_cli(args, monkeypatch) == 2
    assert re.search(message, capsys.readouterr().err)
    assert not output.exists()


@pytest.mark.parametrize(("method", "message"), [("rmu", "chooses the weights it changes itself"),
                                                 ("rome_delete", "reads where to edit from a saved localization")])
def test_methods_that_choose_their_own_weights_refuse_it(method: str, message: str, micro_cache: Path, tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    output = tmp_path / "out"
    assert run_cli(["unlearn", "--method", method, "--forget", "forget10", "--set", "localizer=saliency", "--output", str(output),
                    *micro(micro_cache)], monkeypatch) == 2
    assert message in capsys.readouterr().err and not output.exists()
