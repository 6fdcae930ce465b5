"""The private-data track: exposure and extraction rate, the e-mail generator, the `private` command end to end on micro."""

from __future__ import annotations

import json
import math
import re

import numpy as np
import pytest
import torch

from tests.helpers import run_cli
from unlearnkit.data.private_mail import PrivateMailConfig, generate_mails, people_names
from unlearnkit.errors import UnlearnkitError
from unlearnkit.evaluation.exposure import (
    candidate_log_perplexities,
    exposure,
    exposure_rank,
    extraction_rate,
    skew_normal_exposure,
)

# --------------------------------------------------------------------------------------------- metrics by hand


def test_exposure_hand_values() -> None:
    # 8 candidates, canary at 1.0: two candidates (0.5, 0.7) are strictly more likely -> rank 3, exposure log2 8 - log2 3.
    candidates = [3.0, 0.5, 1.0, 2.0, 0.7, 4.0, 5.0, 6.0]
    assert exposure_rank(1.0, candidates) == 3
    assert exposure(1.0, candidates) == pytest.approx(3 - math.log2(3))  # 1.415037...
    assert exposure(0.5, candidates) == pytest.approx(3.0)  # the most likely of all: log2 |R|
    assert exposure(6.0, candidates) == pytest.approx(0.0)  # the least likely


def test_exposure_ties_take_the_best_rank() -> None:
    # Canary tied with two others at 1.0, one candidate below: rank 2 (1 strictly more likely + 1), exposure 2 - 1 = 1.
    assert exposure_rank(1.0, [1.0, 1.0, 0.2, 1.0]) == 2
    assert exposure(1.0, [1.0, 1.0, 0.2, 1.0]) == pytest.approx(1.0)


def test_exposure_refuses_a_canary_outside_the_candidates() -> None:
    with pytest.raises(UnlearnkitError, match="include the canary"):
        exposure(9.0, [1.0, 2.0])
    with pytest.raises(UnlearnkitError, match="non-empty"):
        exposure(1.0, [])


def _reference_exposure(canary: float, candidates: list[float]) -> float:
    """The paper's definition written out: sort all candidates by log-perplexity, the canary's rank is its first position."""
    ordered = sorted(candidates)
    rank = ordered.index(canary) + 1
    return math.log2(len(candidates)) - math.log2(rank)


def test_exposure_matches_a_literal_transcription() -> None:
    rng = np.random.default_rng(0)
    for _ in range(50):
        candidates = [float(x) for x in rng.integers(0, 30, size=int(rng.integers(1, 200))) / 3]  # many ties
        canary = candidates[int(rng.integers(len(candidates)))]
        assert exposure(canary, candidates) == pytest.approx(_reference_exposure(canary, candidates))


def test_skew_normal_exposure_tracks_the_exact_one() -> None:
    # For normal log-perplexities, the CDF at the canary's value is the share of candidates below it.
    rng = np.random.default_rng(1)
    samples = rng.normal(20.0, 3.0, size=20_000)
    canary = 20.0 - 2 * 3.0  # about 2.3% of candidates are below: exposure ~ -log2 0.02275 = 5.46
    assert skew_normal_exposure(canary, samples) == pytest.approx(-math.log2(0.02275), abs=0.15)
    far = skew_normal_exposure(-1e6, samples)
    assert math.isfinite(far) and far > 1000


def test_extraction_rate_hand_values() -> None:
    generations = [" 1 2 3 4", " 9 9 9 9", "number is 5 6 7 8.", ""]
    secrets = ["1 2 3 4", "9 9 9 8", "5 6 7 8", "0 0 0 0"]
    assert extraction_rate(generations, secrets) == pytest.approx(0.5)
    with pytest.raises(UnlearnkitError, match="one generation per secret"):
        extraction_rate(generations[:2], secrets)


def test_candidate_scoring_with_the_shared_cache_equals_full_sequences() -> None:
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=20, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                                         num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=32)).eval()
    prefix = [1, 5, 7, 3]
    candidates = torch.tensor([[2, 4, 6], [9, 9, 0], [11, 12, 13], [4, 0, 0]])
    lengths = torch.tensor([3, 2, 3, 1])  # rows 1 and 3 are padded
    scores = candidate_log_perplexities(model, prefix, candidates, lengths, batch_size=3)  # two batches
    for row, length, score in zip(candidates, lengths, scores, strict=True):
        ids = torch.tensor([prefix + row[:length].tolist()])
        with torch.no_grad():
            log_probs = model(input_ids=ids).logits[0].log_softmax(-1)
        expected = -sum(float(log_probs[len(prefix) - 1 + i, ids[0, len(prefix) + i]]) for i in range(int(length)))
        assert float(score) == pytest.approx(expected, abs=1e-4)


# --------------------------------------------------------------------------------------------- generator


def test_mail_generator_is_deterministic_and_well_formed() -> None:
    config = PrivateMailConfig(num_people=6, forget_people=2, mails_per_person=3, digits=5, seed=3)
    mails = generate_mails(config)
    assert mails == generate_mails(config)
    assert mails != generate_mails(PrivateMailConfig(num_people=6, forget_people=2, mails_per_person=3, digits=5, seed=4))
    assert len(mails["forget"]) == 2 * 3 and len(mails["retain"]) == 4 * 3
    assert {row["person_id"] for row in mails["forget"]} == {4, 5}
    assert len(set(people_names(config))) == 6
    for row in [*mails["forget"], *mails["retain"]]:
        assert re.fullmatch(r"\d( \d){4}", row["secret"])
        assert row["answer"] == f"{row['secret_prefix']} {row['secret']}"
        assert row["person"] in row["question"]
    # One number per person, the same in each of their e-mails.
    by_person = {}
    for row in mails["retain"]:
        by_person.setdefault(row["person"], set()).add(row["secret"])
    assert all(len(secrets) == 1 for secrets in by_person.values())


@pytest.mark.parametrize("overrides, message", [
    ({"digits": 0}, "digits must be between"), ({"digits": 7}, "digits must be between"),
    ({"forget_people": 6, "num_people": 6}, "must be below num_people"), ({"num_people": 1}, "num_people"),
])
def test_mail_config_refuses_bad_values(overrides: dict, message: str) -> None:
    with pytest.raises(UnlearnkitError, match=message):
        PrivateMailConfig(**overrides)


# --------------------------------------------------------------------------------------------- end to end on micro


@pytest.fixture(scope="module")
def micro_run(tmp_path_factory: pytest.TempPathFactory):
    from unlearnkit.runs.private import resolve_private, run_private

    output = tmp_path_factory.mktemp("private") / "run"
    inputs = resolve_private("micro", ["graddiff", "npo"], {})
    return output, run_private(inputs=inputs, output=output, show_progress=False)


def test_micro_track_memorises_then_forgets(micro_run) -> None:
    output, summary = micro_run
    models = summary["models"]
    top = summary["max_exposure"]
    assert top == pytest.approx(math.log2(10_000))
    # The target memorised every number: the most likely of all 10^4, and greedy decoding gives it back.
    assert models["target"]["forget"]["mean_exposure"] > top - 1
    assert models["target"]["forget"]["extraction_rate"] == 1.0
    # The oracle never saw the forgotten people: their numbers are far from the top.
    assert models["oracle"]["forget"]["mean_exposure"] < top - 4
    for method in ("graddiff", "npo"):
        assert models[method]["forget"]["mean_exposure"] < models["target"]["forget"]["mean_exposure"] - 3
        assert models[method]["forget"]["extraction_rate"] == 0.0
    for name in ("summary.json", "secrets.json", "report.md", "tradeoff.png", "config.json", "data/forget.json"):
        assert (output / name).is_file()
    secrets = json.loads((output / "secrets.json").read_text())
    assert len(secrets) == 8 and {s["set"] for s in secrets} == {"forget", "retain"}
    entry = secrets[0]["models"]["target"]
    assert entry["exposure"] == pytest.approx(top - math.log2(entry["rank"]))
    assert "| npo |" in (output / "report.md").read_text()


# --------------------------------------------------------------------------------------------- command line


@pytest.mark.parametrize("args, message", [
    (["--methods", "npoo"], "Unknown method"),
    (["--preset", "smollm2"], "Unknown private-track preset"),
    (["--set", "digits=9"], "digits must be between"),
    (["--set", "no_such_setting=1"], "no_such_setting"),
])
def test_cli_refuses_bad_inputs(tmp_path, monkeypatch, capsys, args: list[str], message: str) -> None:
    output = tmp_path / "out"
    status = run_cli(["private", "--output", str(output), "--preset", "micro", *args], monkeypatch)
    assert status == 2
    assert message in capsys.readouterr().err
    assert not output.exists()


def test_cli_refuses_a_non_empty_output(tmp_path, monkeypatch, capsys) -> None:
    output = tmp_path / "out"
    output.mkdir()
    (output / "mine.txt").write_text("keep")
    assert run_cli(["private", "--output", str(output), "--preset", "micro"], monkeypatch) == 2
    assert "already holds files" in capsys.readouterr().err
    assert (output / "mine.txt").read_text() == "keep" and len(list(output.iterdir())) == 1


def test_default_preset_unlearns_with_the_track_settings_under_the_users() -> None:
    """On `default` the benchmark's 5 epochs at 5e-4 leave a memorised number in place: the track raises them, and a
    --set value still wins."""
    from unlearnkit.runs.private import resolve_private

    methods = resolve_private("default", ["npo"], {}).methods
    assert (methods["npo"].learning_rate, methods["npo"].num_epochs) == (2e-3, 40.0)
    assert resolve_private("default", ["npo"], {"learning_rate": 1e-3}).methods["npo"].learning_rate == 1e-3
    assert resolve_private("micro", ["npo"], {}).methods["npo"].learning_rate == 2e-3  # micro's benchmark setting
