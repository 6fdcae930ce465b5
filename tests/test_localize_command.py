"""`unlearnkit localize` end to end on the micro benchmark, `--localize` on unlearn, and every bad input refused (exit 2, nothing written).

A small localizer registered here ("test_planted") stands in for the real ones, so that the plumbing is
tested on a selection known in advance: the rows of the MLP output projection with the largest
hidden-state norm at each row's last subject token.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests.helpers import load_benchmark_script, micro, run_cli
from unlearnkit.localization import LOCALIZERS, Localization, LocalizerSpec, LocatedSelection, load_localization, model_signature
from unlearnkit.localization.base import config_settings
from unlearnkit.localization.subjects import subject_of, subject_token_span
from unlearnkit.modeling import load_model
from unlearnkit.runs.localize import top_entries
from unlearnkit.settings import check_field_types, require_at_least

PLANTED = "test_planted"
DOWN = "model.layers.0.mlp.down_proj.weight"


@dataclass
class PlantedConfig:
    neurons: int = field(default=3, metadata={"help": "Output rows of the MLP's down projection selected."})

    def __post_init__(self) -> None:
        check_field_types(self)
        require_at_least(1, neurons=self.neurons)


def planted(model, tokenizer, rows, fmt, config: PlantedConfig) -> Localization:
    """Score each hidden dimension by its mean |activation| at the last subject token; select the top rows of down_proj."""
    totals = torch.zeros(model.config.hidden_size)
    for index, row in enumerate(rows):
        subject = subject_of(row, index=index)
        prompt = row["question"]  # the question alone: enough for a planted score
        _, end = subject_token_span(tokenizer, prompt, subject)
        ids = tokenizer(prompt, add_special_tokens=False, return_tensors="pt")["input_ids"]
        with torch.no_grad():
            hidden = model(input_ids=ids, output_hidden_states=True).hidden_states[-1][0, end - 1]  # (d,)
        totals += hidden.abs().float()
    scores = totals / len(rows)
    chosen = tuple(sorted(torch.topk(scores, config.neurons).indices.tolist()))
    return Localization(PLANTED, config_settings(config), {"dimension_effect": scores}, LocatedSelection(layers=(0,), rows={DOWN: chosen}),
                        model_signature(model), {"rows": len(rows)})


@pytest.fixture(scope="module", autouse=True)
def planted_localizer() -> Iterator[None]:
    """Registered for this module's tests only: the registry is global, and other tests check every registered localizer."""
    spec = LocalizerSpec(PLANTED, planted, PlantedConfig, "A test localizer (no paper)", "Planted for tests.")
    with pytest.MonkeyPatch.context() as patch:
        patch.setitem(LOCALIZERS._entries, PLANTED, spec)
        yield


@pytest.fixture(scope="module")
def located(micro_cache: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    output = tmp_path_factory.mktemp("localize") / "located"
    with pytest.MonkeyPatch.context() as patch:
        status = run_cli(["localize", "builtin", "--data", "forget10", "--localizer", PLANTED, "--output", str(output),
                          "--set", "neurons=4", *micro(micro_cache)], patch)
    assert status == 0
    return output


def test_localize_writes_the_folder(located: Path, micro_bench) -> None:
    names = {path.name for path in located.iterdir()}
    assert {"localization.json", "scores.safetensors", "summary.json", "report.md", "config.json", "log.txt"} <= names
    localization = load_localization(located)
    assert localization.localizer == PLANTED and localization.settings == {"neurons": 4}
    assert len(localization.selection.rows[DOWN]) == 4
    summary = json.loads((located / "summary.json").read_text(encoding="utf-8"))
    assert summary["layers"] == [0] and summary["neurons"] == {"rows": 4, "columns": 0} and summary["rows"] == 8
    target = load_model(micro_bench.target_dir)
    assert summary["weights"] == 4 * target.config.intermediate_size
    assert summary["weights_total"] == sum(p.numel() for p in target.parameters())
    # The top scores are those of the saved array, largest first.
    scores = load_file(str(located / "scores.safetensors"))["dimension_effect"]
    assert [entry["value"] for entry in summary["top_scores"]["dimension_effect"]] == pytest.approx(
        sorted(scores.tolist(), reverse=True)[:5])
    config = json.loads((located / "config.json").read_text(encoding="utf-8"))
    assert config["command"] == "localize" and config["localizer"] == PLANTED and config["sha256"]["rows"]
    assert "test_planted" in (located / "report.md").read_text(encoding="utf-8")


def test_top_entries_by_hand() -> None:
    scores = torch.tensor([[0.5, float("nan"), 3.0], [-1.0, 2.0, float("inf")]])
    assert top_entries(scores, count=3) == [{"index": [0, 2], "value": 3.0}, {"index": [1, 1], "value": 2.0},
                                            {"index": [0, 0], "value": 0.5}]


def test_unlearn_with_localize_changes_only_the_located_rows(located: Path, micro_cache: Path, micro_bench, tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    output = tmp_path / "run"
    status = run_cli(["unlearn", "--method", "graddiff", "--forget", "forget10", "--output", str(output), "--localize", str(located),
                      "--set", "num_epochs=2", "--set", "warmup_ratio=0", "--checkpoint-every", "0", *micro(micro_cache)], monkeypatch)
    assert status == 0
    before = dict(load_model(micro_bench.target_dir).named_parameters())
    after = dict(load_model(output / "model").named_parameters())
    moved = {name for name in before if not torch.equal(before[name], after[name])}
    assert moved == {DOWN}
    rows = list(load_localization(located).selection.rows[DOWN])
    kept = torch.ones(before[DOWN].shape[0], dtype=torch.bool)
    kept[rows] = False
    assert torch.equal(after[DOWN][kept], before[DOWN][kept]) and not torch.equal(after[DOWN][rows], before[DOWN][rows])
    config = json.loads((output / "config.json").read_text(encoding="utf-8"))
    assert config["localization"]["localizer"] == PLANTED and config["localization"]["selection"]["rows"][DOWN] == rows
    assert len(config["localization"]["sha256"]) == 64 and config["hyperparameters"]["localize"] == str(located)
    assert (output / "localization" / "localization.json").is_file()
    report = tmp_path / "report.html"
    assert run_cli(["report", str(output), "--output", str(report)], monkeypatch) == 0
    assert "Trained only the weights located by test_planted" in report.read_text(encoding="utf-8")


def test_localizers_lists_them(capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    assert run_cli(["localizers", "-v"], monkeypatch) == 0
    text = capsys.readouterr().out
    assert "test_planted\n    Planted for tests.\n    Paper: A test localizer (no paper)" in text
    assert "neurons (int, default 3)" in text


def expect_refusal(args: list[str], message: str, output: Path, monkeypatch, capsys) -> None:
    assert run_cli(args, monkeypatch) == 2
    error = capsys.readouterr().err
    assert message in error, error
    assert not output.exists()
    assert not any(path.name.startswith(f".{output.name}") for path in output.parent.iterdir())


def test_unknown_localizer_gets_did_you_mean(micro_cache: Path, tmp_path: Path, monkeypatch, capsys) -> None:
    output = tmp_path / "out"
    expect_refusal(["localize", "builtin", "--data", "forget10", "--localizer", "test_plantd", "--output", str(output),
                    *micro(micro_cache)], "Unknown localizer 'test_plantd'. Did you mean: test_planted?", output, monkeypatch, capsys)


def test_unknown_setting_refused(micro_cache: Path, tmp_path: Path, monkeypatch, capsys) -> None:
    output = tmp_path / "out"
    expect_refusal(["localize", "builtin", "--data", "forget10", "--localizer", PLANTED, "--output", str(output), "--set",
                    "neuron=2", *micro(micro_cache)], "Unknown localizer setting 'neuron' for PlantedConfig. Did you mean: neurons?",
                   output, monkeypatch, capsys)


def test_rows_without_a_subject_refused(micro_cache: Path, tmp_path: Path, monkeypatch, capsys) -> None:
    data = tmp_path / "facts.jsonl"
    data.write_text(json.dumps({"question": "What is the capital of France?", "answer": "Paris"}) + "\n", encoding="utf-8")
    output = tmp_path / "out"
    expect_refusal(["localize", "builtin", "--data", str(data), "--localizer", PLANTED, "--output", str(output),
                    *micro(micro_cache)], "row 0 names no subject", output, monkeypatch, capsys)


def test_output_that_is_an_input_refused(micro_cache: Path, micro_bench, tmp_path: Path, monkeypatch, capsys) -> None:
    data = tmp_path / "data" / "facts.jsonl"
    data.parent.mkdir()
    data.write_text(json.dumps({"question": "Where was Ann Lee born?", "answer": "Oslo", "subject": "Ann Lee"}) + "\n",
                    encoding="utf-8")
    before = data.read_bytes()
    assert run_cli(["localize", "builtin", "--data", str(data), "--localizer", PLANTED, "--output", str(data.parent),
                    "--overwrite", *micro(micro_cache)], monkeypatch) == 2
    assert "contains --data" in capsys.readouterr().err and data.read_bytes() == before


def test_unlearn_output_inside_the_localization_refused(located: Path, micro_cache: Path, monkeypatch, capsys) -> None:
    output = located / "run"
    expect_refusal(["unlearn", "--method", "graddiff", "--forget", "forget10", "--output", str(output), "--localize", str(located),
                    *micro(micro_cache)], "lies inside --localize", output, monkeypatch, capsys)


def test_localization_from_another_model_refused(located: Path, micro_cache: Path, tmp_path: Path, monkeypatch, capsys) -> None:
    other = tmp_path / "other"
    other.mkdir()
    manifest = json.loads((located / "localization.json").read_text(encoding="utf-8"))
    manifest["model_signature"]["hidden_size"] = 999
    (other / "localization.json").write_text(json.dumps(manifest), encoding="utf-8")
    (other / "scores.safetensors").write_bytes((located / "scores.safetensors").read_bytes())
    output = tmp_path / "run"
    expect_refusal(["unlearn", "--method", "graddiff", "--forget", "forget10", "--output", str(output), "--localize", str(other),
                    *micro(micro_cache)], "was made on another model (hidden_size 999 vs 32)", output, monkeypatch, capsys)


@pytest.mark.parametrize("damage", ["no_scores", "bad_json", "not_a_folder"])
def test_damaged_or_partial_localization_refused(damage: str, located: Path, micro_cache: Path, tmp_path: Path, monkeypatch,
                                                 capsys) -> None:
    broken = tmp_path / "broken"
    broken.mkdir()
    if damage != "not_a_folder":
        (broken / "localization.json").write_bytes((located / "localization.json").read_bytes())
    if damage == "bad_json":
        (broken / "scores.safetensors").write_bytes((located / "scores.safetensors").read_bytes())
        (broken / "localization.json").write_text('{"localizer": ', encoding="utf-8")
    message = {"no_scores": "incomplete: scores.safetensors is missing", "bad_json": "is not readable JSON",
               "not_a_folder": "is not a localization folder"}[damage]
    output = tmp_path / "run"
    expect_refusal(["unlearn", "--method", "graddiff", "--forget", "forget10", "--output", str(output), "--localize", str(broken),
                    *micro(micro_cache)], message, output, monkeypatch, capsys)


def test_localize_twice_differently_refused(located: Path, micro_cache: Path, tmp_path: Path, monkeypatch, capsys) -> None:
    output = tmp_path / "run"
    expect_refusal(["unlearn", "--method", "graddiff", "--forget", "forget10", "--output", str(output), "--localize", str(located),
                    "--set", f"localize={tmp_path}", *micro(micro_cache)], "The localization is given twice", output, monkeypatch, capsys)


def test_method_that_cannot_use_it_refused(located: Path, micro_cache: Path, tmp_path: Path, monkeypatch, capsys) -> None:
    output = tmp_path / "run"
    expect_refusal(["unlearn", "--method", "eul", "--forget", "forget10", "--output", str(output), "--localize", str(located),
                    *micro(micro_cache)], "Method 'eul' chooses the weights it changes itself", output, monkeypatch, capsys)


def test_causal_trace_end_to_end(micro_cache: Path, tmp_path: Path, monkeypatch) -> None:
    """The real causal tracer through the command, when installed: its folder loads and its selection fits."""
    if "causal_trace" not in LOCALIZERS:
        pytest.skip("causal_trace is not installed")
    output = tmp_path / "traced"
    status = run_cli(["localize", "builtin", "--data", "forget10", "--localizer", "causal_trace", "--output", str(output),
                      "--max-rows", "2", "--set", "samples=2", *micro(micro_cache)], monkeypatch)
    assert status == 0
    summary = json.loads((output / "summary.json").read_text(encoding="utf-8"))
    assert summary["rows"] == 2 and summary["layers"] == [0] and summary["localizer"] == "causal_trace"
    assert load_localization(output).selection.layers == (0,)


# --------------------------------------------------------------------------------------------- benchmarks/localization_vs_random.py


def benchmark_module():
    return load_benchmark_script("localization_vs_random")


def test_random_layers_by_hand() -> None:
    module = benchmark_module()
    drawn = module.random_layers(2, 6, (2, 3), seed=0)
    assert len(drawn) == 2 and not set(drawn) & {2, 3}  # other layers first
    assert module.random_layers(2, 2, (1,), seed=0) == (0, 1)  # too shallow: the located layer joins
    assert module.random_layers(1, 1, (0,), seed=3) == (0,)


def test_answer_probability_against_its_formula(micro_bench) -> None:
    """exp(-mean answer-token NLL), averaged over rows, transcribed from its definition with explicit log-softmax sums."""
    from tests.helpers import FMT
    from unlearnkit.modeling import load_tokenizer

    module = benchmark_module()
    tokenizer = load_tokenizer(micro_bench.target_dir)
    model = load_model(micro_bench.target_dir)
    rows = micro_bench.split("forget10")[:2]
    expected = []
    for row in rows:
        prompt, answer = FMT.qa_ids(tokenizer, row["question"], row["answer"])
        with torch.no_grad():
            logits = model(input_ids=torch.tensor([prompt + answer])).logits[0].double()
        nlls = [-(logits[len(prompt) + i - 1, token] - torch.logsumexp(logits[len(prompt) + i - 1], dim=0)) for i, token in
                enumerate(answer)]
        expected.append(torch.exp(-torch.stack(nlls).mean()).item())
    assert module.answer_probability(model, tokenizer, FMT, rows) == pytest.approx(sum(expected) / 2, rel=1e-5)


def test_localization_vs_random_logic_on_micro(micro_cache: Path) -> None:
    """The conditions, the random neurons' draw, the stopping rule and its record (planted localizer: 3 rows of layer 0's down_proj)."""
    module = benchmark_module()
    outcome = module.run("micro", micro_cache, "graddiff", {PLANTED: {}}, [0, 1], forget_fraction=0.97, max_epochs=2, max_rows=None,
                         check_every=3)
    assert outcome["threshold"] == pytest.approx(0.97 * outcome["before"]["checked_forget_probability"])
    (block,) = outcome["localizations"]
    assert [row["condition"] for row in block["results"]] == ["located", "random (seed 0)", "random (seed 1)", "all layers"]
    located, first, second, every = block["results"]
    assert located["layers"] == first["layers"] == every["layers"] == [0] and located["neurons"] == first["neurons"] == 3
    # Random neurons: as many weights as the located ones, fewer than the whole matrix the all-layers run trains.
    assert located["weights"] == first["weights"] == second["weights"] < every["weights"] and every["neurons"] == 0
    for row in block["results"]:
        assert row["steps"] >= 1 and 0 < row["retain_probability"] <= 1 and "model_utility" in row
        # Stopped at the first check under the threshold, or ran to the cap without reaching it.
        assert row["reached"] == (row["stopped_forget_probability"] <= outcome["threshold"])
    table = module.markdown_table(outcome)
    assert f"| {PLANTED} | located | 0 | 3 |" in table and "| target (before) |" in table
    assert PLANTED in module.summary_table(outcome)
    report = module.markdown_report(outcome)
    assert "(a tiny-model result)" in report and f"**{PLANTED}** (located layer(s) [0], 3 neurons)" in report
    # The check schedule and the random neurons' draw, by hand.
    assert module.next_check_gap([(0, 0.9)], 0.45, 8) == 1
    # log p falls by log(0.8/0.9) per step from step 80 to 81: reaching 0.45 takes log(0.45/0.8)/log(0.8/0.9) = 4.9 steps; half: 2.
    assert module.next_check_gap([(80, 0.9), (81, 0.8)], 0.45, 8) == 2
    assert module.next_check_gap([(80, 0.8), (81, 0.9)], 0.45, 8) == 8  # rising: no prediction, every 8 steps at most
    assert module.next_check_gap([(40, 0.8), (41, 0.9)], 0.45, 8) == 5  # an eighth of the 41 steps done at most
    assert module.next_check_gap([(4, 0.9), (5, 0.8)], 0.45, 8) == 1
    selection = LocatedSelection(layers=(1,), target_modules=("mlp.down_proj",), columns={"model.layers.1.mlp.down_proj.weight": (3, 5)})

    class Tiny(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.config = type("Config", (), {"num_hidden_layers": 3})()
            self.model = torch.nn.Module()
            self.model.layers = torch.nn.ModuleList(torch.nn.Module() for _ in range(3))
            for layer in self.model.layers:
                layer.mlp = torch.nn.Module()
                layer.mlp.down_proj = torch.nn.Linear(7, 4, bias=False)

    drawn = module.random_selection(selection, Tiny(), seed=0)
    (name,) = drawn.columns
    assert drawn.layers != (1,) and name == f"model.layers.{drawn.layers[0]}.mlp.down_proj.weight" and len(drawn.columns[name]) == 2
    assert all(0 <= index < 7 for index in drawn.columns[name])
