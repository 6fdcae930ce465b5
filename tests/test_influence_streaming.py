"""The low-memory influence path: per-token rotations, the streamed score pass, float32 factor sums and the memory limit,
each checked against a value computed by hand or against a plain dense transcription of Grosse et al.'s formulas
(dense per-row gradients, dense preconditioning), the path the streamed one replaced."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from tests.helpers import micro, run_cli
from unlearnkit.attribution import curvature, memory
from unlearnkit.attribution import scores as attribution
from unlearnkit.attribution.scores import InfluenceConfig
from unlearnkit.errors import UnlearnkitError

# ------------------------------------------------------------------------------------------- by hand


def test_rotated_row_gradients_by_hand() -> None:
    """One row, two tokens, d_out = d_in = 2, Q_S = Q_A = the swap matrix [[0, 1], [1, 0]].

    dW = s_1 a_1ᵀ + s_2 a_2ᵀ with s_1 = (1, 2), a_1 = (3, 0), s_2 = (0, 1), a_2 = (1, 1): dW = [[3, 0], [7, 1]];
    Q_Sᵀ dW Q_A swaps both rows and columns: [[1, 7], [0, 3]].
    """
    a = torch.tensor([[[3.0, 0.0], [1.0, 1.0]]])
    s = torch.tensor([[[1.0, 2.0], [0.0, 1.0]]])
    swap = torch.tensor([[0.0, 1.0], [1.0, 0.0]])
    basis = curvature.Eigenbasis(swap, torch.ones(2), swap, torch.ones(2))
    expected = torch.tensor([[[1.0, 7.0], [0.0, 3.0]]])
    assert curvature.token_rotation_is_cheaper(2, 2, 2) is False  # 2 x (4 + 4) = 16, not < 2 x 2 x 4 = 16: the dense route
    assert torch.equal(curvature.rotated_row_gradients(a, s, basis), expected)
    u, v = curvature.rotated_token_factors(a, s, basis)  # the token route, forced
    assert torch.equal(curvature.row_gradients(v, u), expected)


def test_token_route_cost_rule_by_hand() -> None:
    # d_out = 1536, d_in = 576 (SmolLM2's gate_proj): tokens cost 1536² + 576² = 2,691,072 each, the dense rotation
    # 1536 x 576 x 2112 = 1,868,562,432: the token route wins up to 694 tokens.
    assert curvature.token_rotation_is_cheaper(694, 1536, 576)
    assert not curvature.token_rotation_is_cheaper(695, 1536, 576)


def test_memory_estimate_by_hand() -> None:
    """One layer (d_out, d_in') = (3, 2), EK-FAC, 2 queries of 5 padded tokens, 7 training rows, batches of 4 rows x 5 tokens.

    squares 9 + 4 = 13, weights 6, edges 5: kept 4 (13 + 5 + 6) = 96; refit 96 + 24 = 120 > 4 x 13 = 52: fitting 120;
    queries 4 x 10 x 5 = 200; layer gradients 24 x 4 x 6 = 576; score matrix 16 x 2 x 7 = 224; signals 4 x 20 x 5 = 400.
    total = max(120, 96 + 200 + 576 + 224) + 400 = 1496.
    """
    parts = memory.estimate_bytes("ekfac", {"layer": (3, 2)}, query_tokens=10, queries=2, train_rows=7, largest_batch_tokens=20,
                                  largest_batch_rows=4)
    assert parts == {"factors_fitting": 120, "factors_kept": 96, "query_factors": 200, "layer_gradients": 576, "score_matrix": 224,
                     "batch_signals": 400, "total": 1496}
    memory.check_memory(parts, 1496 / memory.GB, queries=2, train_rows=7)  # exactly at the limit: accepted
    with pytest.raises(UnlearnkitError, match="memory_limit_gb"):
        memory.check_memory(parts, 1495 / memory.GB, queries=2, train_rows=7)


def test_score_matrix_dominated_refusal_says_how_to_sample() -> None:
    parts = memory.estimate_bytes("tracin", {"layer": (3, 2)}, query_tokens=10, queries=100, train_rows=10_000_000,
                                  largest_batch_tokens=20, largest_batch_rows=4)
    with pytest.raises(UnlearnkitError, match="shuf -n"):
        memory.check_memory(parts, 1.0, queries=100, train_rows=10_000_000)


def test_single_threaded_restores_the_thread_count() -> None:
    before = torch.get_num_threads()
    with attribution.single_threaded():
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == before


# ------------------------------------------------------------------------------------------- against the dense transcription


def dense_signals(model, modules, batches, config: InfluenceConfig, own_labels: bool = False):
    """Per pass, per batch: the signals, drawn as the fit draws them (the same seeded generator per pass)."""
    generator = None if (own_labels or config.empirical_fisher) else torch.Generator().manual_seed(config.seed)
    with attribution.only_tracked_trainable(model, modules):
        return [signals for batch in batches
                for signals in attribution.batch_signals(model, modules, batch, generator, 1 if own_labels else config.fisher_samples)]


def transcribed_ekfac(model, modules, batches, config: InfluenceConfig) -> dict[str, tuple[torch.Tensor, float]]:
    """EK-FAC written out densely in float64 (Grosse et al. 2023; George et al. 2018): A = E_tokens[a aᵀ],
    S = (1/N) Σ_rows Σ_t s sᵀ, their eigenvectors, Λ = E_rows[(Q_Sᵀ dW Q_A)²] with dW = Σ_t s aᵀ formed densely, and the
    layer's damped curvature as one dense matrix over the row-major weight vector: ``(Q_S ⊗ Q_A) diag(Λ + λ) (Q_S ⊗ Q_A)ᵀ``."""
    signals = dense_signals(model, modules, batches, config)
    result = {}
    for name in modules:
        a = torch.cat([(s.activations[name].double() * s.mask.double()[..., None]).flatten(0, 1) for s in signals])  # (tokens, d_in')
        g = torch.cat([(s.gradients[name].double() * s.mask.double()[..., None]).flatten(0, 1) for s in signals])  # (tokens, d_out)
        rows = sum(int(s.mask.shape[0]) for s in signals)
        tokens = sum(int(s.mask.sum()) for s in signals)
        _, q_a = torch.linalg.eigh(a.T @ a / tokens)
        _, q_s = torch.linalg.eigh(g.T @ g / rows)
        dense = torch.cat([torch.einsum("bto,bti->boi", s.gradients[name].double(), s.activations[name].double()) for s in signals])
        lam = (q_s.T @ dense @ q_a).square().mean(dim=0)
        damping = 0.1 * float(lam.mean())
        kron = torch.kron(q_s, q_a)
        result[name] = (kron @ torch.diag((lam + damping).flatten()) @ kron.T, damping)
    return result


def dense_row_gradients(model, modules, batches) -> dict[str, torch.Tensor]:
    """Each row's dense gradient per layer, flattened row-major: ``(rows, d_out d_in')`` float64."""
    signals = dense_signals(model, modules, batches, InfluenceConfig(), own_labels=True)
    return {name: torch.cat([torch.einsum("bto,bti->boi", s.gradients[name].double(), s.activations[name].double()).flatten(1)
                             for s in signals]) for name in modules}


@pytest.fixture(scope="module")
def micro_model(micro_bench):
    from unlearnkit.builtin import PRESETS
    from unlearnkit.modeling import load_model, load_tokenizer

    model = load_model(str(micro_bench.target_dir))
    model.eval()
    tokenizer = load_tokenizer(str(micro_bench.target_dir))
    config = InfluenceConfig(batch_size=4)
    fmt = PRESETS["micro"].prompt_format
    train = attribution.encode_rows(tokenizer, fmt, micro_bench.split("full")[:12], config, torch.device("cpu"))
    queries = attribution.encode_rows(tokenizer, fmt, micro_bench.split("forget10")[:3], config, torch.device("cpu"))
    return model, attribution.tracked_linears(model, config), train, queries, config


def test_micro_rows_take_the_token_route(micro_model) -> None:
    """The equivalences below exercise the token route: every batch of the micro model is below the cost crossover."""
    _, modules, train, queries, _ = micro_model
    for module in modules.values():
        d_out, d_in = attribution.layer_shape(module)
        assert all(curvature.token_rotation_is_cheaper(batch["input_ids"].shape[1], d_out, d_in) for batch in [*train, *queries])


def test_ekfac_fit_equals_the_dense_transcription(micro_model) -> None:
    model, modules, train, _, config = micro_model
    factors = attribution.fit_factors(model, modules, train, "ekfac", config)
    reference = transcribed_ekfac(model, modules, train, config)
    for name in modules:
        dense_curvature, damping = reference[name]
        assert factors.damping[name] == pytest.approx(damping, rel=1e-4)
        vector = torch.randn(factors.tensors[name]["eigenvalues"].shape, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
        expected = torch.linalg.solve(dense_curvature, vector.flatten())
        got = factors.inverse_product(name, vector).flatten()
        # float32 sums and rotations: within 1e-5 of the largest entry (measured 0.6-1.3e-5; the float64 route 1e-7);
        # K-FAC's eigenvalues in place of EK-FAC's would be off by far more (the last test below).
        assert float((got - expected).abs().max()) <= 5e-5 * float(expected.abs().max()), name


@pytest.mark.parametrize("estimator", ["ekfac", "diagonal", "tracin"])
def test_streamed_scores_equal_dense_preconditioned_scores(micro_model, estimator: str) -> None:
    """score(q, z) = Σ_layers vec(dW_q)ᵀ (G + λI)⁻¹ vec(dW_z) with G densified from the fitted factors and solved directly."""
    model, modules, train, queries, config = micro_model
    factors = attribution.fit_factors(model, modules, train, estimator, config)
    streamed = attribution.influence_scores(model, modules, queries, train, factors)
    query_gradients, train_gradients = dense_row_gradients(model, modules, queries), dense_row_gradients(model, modules, train)
    expected = torch.zeros_like(streamed)
    for name in modules:
        if estimator == "ekfac":
            layer = {role: tensor.double() for role, tensor in factors.tensors[name].items()}
            kron = torch.kron(layer["q_gradient"], layer["q_activation"])
            dense_curvature = kron @ torch.diag(layer["eigenvalues"].flatten() + factors.damping[name]) @ kron.T
        elif estimator == "diagonal":
            dense_curvature = torch.diag(factors.tensors[name]["diagonal"].double().flatten() + factors.damping[name])
        else:
            dense_curvature = torch.eye(query_gradients[name].shape[1], dtype=torch.float64)
        expected += torch.linalg.solve(dense_curvature, query_gradients[name].T).T @ train_gradients[name].T
    assert torch.allclose(streamed, expected, rtol=1e-4, atol=1e-5 * float(expected.abs().max()))
    assert torch.equal(torch.argsort(streamed, dim=1, descending=True)[:, 0], torch.argsort(expected, dim=1, descending=True)[:, 0])


def test_scores_of_several_estimators_in_one_pass_equal_each_alone(micro_model) -> None:
    model, modules, train, queries, config = micro_model
    sets = {name: attribution.fit_factors(model, modules, train, name, config) for name in ("kfac", "diagonal", "tracin")}
    together = attribution.scores_by_estimator(model, modules, queries, train, sets)
    for name, factors in sets.items():
        assert torch.allclose(together[name], attribution.influence_scores(model, modules, queries, train, factors), rtol=1e-6, atol=0)


def test_kfac_and_ekfac_share_one_rotation_and_keep_their_own_scores(micro_model) -> None:
    """K-FAC read off EK-FAC's bases (the same tensors): scored together, each equals its score alone."""
    model, modules, train, queries, config = micro_model
    ekfac = attribution.fit_factors(model, modules, train, "ekfac", config)
    tensors = {name: {**layer, "eigenvalues": torch.outer(layer["eig_gradient"], layer["eig_activation"])}
               for name, layer in ekfac.tensors.items()}
    kfac = attribution.Factors("kfac", tensors, attribution.layer_damping("kfac", tensors, None), ekfac.rows, ekfac.tokens)
    together = attribution.scores_by_estimator(model, modules, queries, train, {"ekfac": ekfac, "kfac": kfac})
    assert torch.allclose(together["ekfac"], attribution.influence_scores(model, modules, queries, train, ekfac), rtol=1e-6, atol=0)
    assert torch.allclose(together["kfac"], attribution.influence_scores(model, modules, queries, train, kfac), rtol=1e-6, atol=0)
    assert not torch.allclose(together["ekfac"], together["kfac"], rtol=1e-3)


# ------------------------------------------------------------------------------------------- the command


def test_command_refuses_a_run_above_the_memory_limit(micro_cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                      capsys: pytest.CaptureFixture) -> None:
    output = tmp_path / "out"
    code = run_cli(["influence", "builtin", "--query", "forget10", "--train", "full", "--set", "memory_limit_gb=0.000001",
                    "--output", str(output), *micro(micro_cache)], monkeypatch)
    message = capsys.readouterr().err
    assert code == 2 and "memory_limit_gb" in message and "Traceback" not in message, message
    assert not output.exists()


def test_command_records_its_memory_estimate(micro_cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    output = tmp_path / "out"
    assert run_cli(["influence", "builtin", "--query", "forget10", "--train", "full", "--estimator", "diagonal",
                    "--output", str(output), *micro(micro_cache)], monkeypatch) == 0
    estimate = json.loads((output / "summary.json").read_text())["memory_estimate_gb"]
    assert 0 < estimate["total"] < 0.1 and estimate["factors_kept"] > 0
