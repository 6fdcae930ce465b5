"""Influence attribution: each curvature estimator against the exact Fisher of a model small enough to build it, the
scores, the factor cache, and the command's refusals."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from tests.helpers import micro, run_cli
from unlearnkit.attribution import curvature
from unlearnkit.attribution import scores as attribution
from unlearnkit.attribution.scores import InfluenceConfig

# ------------------------------------------------------------------------------------------- a model to check exactly


class TwoLayerLM(nn.Module):
    """A plain two-layer MLP classifier dressed as a causal LM: the logits at position 0 (predicting the label at position 1)
    come from ``mlp(embedding(input_ids[:, 0]))``; one token per row reaches each linear layer."""

    def __init__(self, vocab: int = 5, features: int = 4, hidden: int = 3) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.embedding = nn.Embedding(vocab, features)
        self.first = nn.Linear(features, hidden)
        self.second = nn.Linear(hidden, vocab, bias=False)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> SimpleNamespace:
        head = self.second(torch.tanh(self.first(self.embedding(input_ids[:, 0]))))
        return SimpleNamespace(logits=torch.stack([head, torch.zeros_like(head)], dim=1))


def lm_batch(inputs: list[int], labels: list[int]) -> dict[str, torch.Tensor]:
    ids = torch.tensor([[token, label] for token, label in zip(inputs, labels, strict=True)])
    labels = torch.stack([torch.full_like(ids[:, 0], -100), ids[:, 1]], dim=1)
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels}


def tracked(model: TwoLayerLM) -> dict[str, nn.Linear]:
    return {"first": model.first, "second": model.second}


def row_gradient(model: TwoLayerLM, module: nn.Linear, token: int, label: int) -> torch.Tensor:
    """The layer's gradient of one row's loss, by plain autograd, flattened as ``(d_out, d_in')`` row-major."""
    logits = model(**{k: v for k, v in lm_batch([token], [label]).items() if k != "labels"}).logits[0, 0]
    loss = nn.functional.cross_entropy(logits[None], torch.tensor([label]))
    parts = torch.autograd.grad(loss, [module.weight] + ([module.bias] if module.bias is not None else []))
    matrix = parts[0] if len(parts) == 1 else torch.cat([parts[0], parts[1][:, None]], dim=1)
    return matrix.flatten().double()


def exact_fisher(model: TwoLayerLM, module: nn.Linear, tokens: list[int], labels: list[int] | None) -> torch.Tensor:
    """The layer's Fisher block, exactly: the empirical one (``labels`` given) or the true one, ``E_{y ~ p}[g gᵀ]`` summed over
    every label y weighted by its probability (the Gauss-Newton Hessian of the cross-entropy)."""
    blocks = []
    for index, token in enumerate(tokens):
        if labels is not None:
            g = row_gradient(model, module, token, labels[index])
            blocks.append(torch.outer(g, g))
        else:
            with torch.no_grad():
                probabilities = torch.softmax(model(**{k: v for k, v in lm_batch([token], [0]).items() if k != "labels"}).logits[0, 0], -1)
            blocks.append(sum(float(p) * torch.outer(g, g) for p, g in
                              ((probabilities[y], row_gradient(model, module, token, y)) for y in range(len(probabilities)))))
    return sum(blocks) / len(blocks)


def dense(factors: attribution.Factors, name: str) -> torch.Tensor:
    """The estimator's G for one layer as a dense matrix over the row-major ``(d_out, d_in')`` vector."""
    layer = factors.tensors[name]
    if "diagonal" in layer:
        return torch.diag(layer["diagonal"].flatten().double())
    q = torch.kron(layer["q_gradient"].double(), layer["q_activation"].double())  # Q_S ⊗ Q_A on the row-major vector
    return q @ torch.diag(layer["eigenvalues"].flatten().double()) @ q.T


EMPIRICAL = InfluenceConfig(empirical_fisher=True)


@pytest.mark.parametrize("estimator", ["kfac", "ekfac"])
def test_kronecker_estimators_equal_the_exact_fisher_on_one_example(estimator: str) -> None:
    model = TwoLayerLM()
    factors = attribution.fit_factors(model, tracked(model), [lm_batch([2], [4])], estimator, EMPIRICAL)
    for name, module in tracked(model).items():
        exact = exact_fisher(model, module, [2], [4])
        assert torch.allclose(dense(factors, name), exact, atol=1e-6, rtol=1e-4), name
        layer = {role: tensor.double() for role, tensor in factors.tensors[name].items()}
        A = layer["q_activation"] @ torch.diag(layer["eig_activation"]) @ layer["q_activation"].T  # A = Q_A diag(e_A) Q_Aᵀ
        S = layer["q_gradient"] @ torch.diag(layer["eig_gradient"]) @ layer["q_gradient"].T
        assert torch.allclose(torch.kron(S, A), exact, atol=1e-6, rtol=1e-4)  # S ⊗ A itself is the Fisher: Kronecker structure exact


def test_ekfac_inverse_product_matches_a_linear_solve_where_it_is_exact() -> None:
    model = TwoLayerLM()
    factors = attribution.fit_factors(model, tracked(model), [lm_batch([1], [3])], "ekfac", InfluenceConfig(empirical_fisher=True,
                                                                                                               damping=0.05))
    vector = torch.randn(5, 3, generator=torch.Generator().manual_seed(1))
    exact = exact_fisher(model, model.second, [1], [3])
    expected = torch.linalg.solve(exact + 0.05 * torch.eye(15, dtype=torch.float64), vector.flatten().double())
    assert torch.allclose(factors.inverse_product("second", vector).flatten().double(), expected, atol=1e-5, rtol=1e-4)


def test_ekfac_is_exact_where_kfac_is_not() -> None:
    """Two rows with orthogonal inputs and orthogonal output gradients: the Fisher is diagonal in the Kronecker eigenbasis, so
    EK-FAC's refitted eigenvalues are exact, while K-FAC's products of eigenvalues add cross terms (George et al. 2018)."""
    a = torch.tensor([[[2.0, 0, 0]], [[0, 1.0, 0]]])  # (rows, tokens, d_in)
    s = torch.tensor([[[0, 3.0]], [[0.5, 0]]])  # (rows, tokens, d_out)
    g = curvature.row_gradients(a, s).flatten(1).double()  # (rows, d_out * d_in)
    fisher = g.T @ g / 2
    sums = curvature.CovarianceSums.zeros(2, 3)
    sums.add(a, s, torch.ones(2, 1))
    basis = curvature.eigenbasis(*sums.factors())
    ekfac = curvature.ekfac_square_sums(curvature.row_gradients(a, s), basis) / 2
    vector = torch.randn(2, 3, generator=torch.Generator().manual_seed(0)).double()
    expected = torch.linalg.solve(fisher + 0.1 * torch.eye(6, dtype=torch.float64), vector.flatten())
    assert torch.allclose(curvature.eigen_inverse_product(vector, basis, ekfac, 0.1).flatten(), expected, atol=1e-10)
    kfac = curvature.eigen_inverse_product(vector, basis, curvature.kfac_eigenvalues(basis), 0.1).flatten()
    assert not torch.allclose(kfac, expected, atol=1e-3)


def test_diagonal_estimator_is_the_diagonal_of_the_exact_fisher() -> None:
    model = TwoLayerLM()
    tokens, labels = [0, 1, 2, 3], [4, 0, 2, 1]
    factors = attribution.fit_factors(model, tracked(model), [lm_batch(tokens[:3], labels[:3]), lm_batch(tokens[3:], labels[3:])],
                                      "diagonal", EMPIRICAL)
    for name, module in tracked(model).items():
        exact = exact_fisher(model, module, tokens, labels)
        assert torch.allclose(factors.tensors[name]["diagonal"].flatten().double(), torch.diagonal(exact), atol=1e-6, rtol=1e-4)


def test_true_fisher_samples_converge_to_the_gauss_newton_hessian() -> None:
    """Labels drawn from the model: the diagonal estimate approaches the exact Gauss-Newton diagonal as draws grow."""
    model = TwoLayerLM()
    factors = attribution.fit_factors(model, tracked(model), [lm_batch([2], [0])], "diagonal", InfluenceConfig(fisher_samples=3000))
    exact = torch.diagonal(exact_fisher(model, model.second, [2], None))
    estimate = factors.tensors["second"]["diagonal"].flatten().double()
    assert (estimate - exact).norm() / exact.norm() < 0.1


def test_default_damping_is_a_tenth_of_the_mean_eigenvalue() -> None:
    model = TwoLayerLM()
    factors = attribution.fit_factors(model, tracked(model), [lm_batch([0, 1, 2], [1, 2, 3])], "ekfac", EMPIRICAL)
    for name in tracked(model):
        assert factors.damping[name] == pytest.approx(0.1 * float(factors.tensors[name]["eigenvalues"].mean()))


def test_tracin_is_the_gradient_dot_product_and_its_cosine() -> None:
    model = TwoLayerLM()
    query, train = lm_batch([1], [2]), lm_batch([1, 3, 4], [2, 0, 1])
    none = attribution.Factors("tracin", {}, {}, 0, 0)
    scores = attribution.influence_scores(model, tracked(model), [query], [train], none)
    flat = [torch.cat([row_gradient(model, module, token, label) for module in tracked(model).values()])
            for token, label in [(1, 2), (1, 2), (3, 0), (4, 1)]]
    expected = torch.stack([flat[0] @ g for g in flat[1:]])
    assert torch.allclose(scores[0], expected, rtol=1e-5, atol=1e-8)
    cosine = attribution.influence_scores(model, tracked(model), [query], [train], none, normalize=True)
    assert torch.allclose(cosine[0], expected / (flat[0].norm() * torch.stack([g.norm() for g in flat[1:]])), rtol=1e-5)
    assert cosine[0, 0] == pytest.approx(1.0)


@pytest.mark.parametrize("estimator", ["ekfac", "kfac", "diagonal", "tracin"])
def test_a_duplicated_row_ranks_first_on_its_own_copy(estimator: str) -> None:
    model = TwoLayerLM()
    train = lm_batch([0, 1, 2, 3, 4, 2], [1, 2, 3, 4, 0, 3])
    factors = attribution.fit_factors(model, tracked(model), [train], estimator, InfluenceConfig())
    scores = attribution.influence_scores(model, tracked(model), [lm_batch([2], [3])], [train], factors)
    assert set(torch.argsort(scores[0], descending=True)[:2].tolist()) == {2, 5}


def test_group_recall_and_copy_retrieval() -> None:
    queries = [{"question": "q0", "answer": "a0", "author": "x"}]
    train = [{"question": "q0", "answer": "a0", "author": "x"}, {"question": "q1", "answer": "a1", "author": "x"},
             {"question": "q2", "answer": "a2", "author": "y"}]
    scores = torch.tensor([[5.0, 1.0, 2.0]])
    recall = attribution.group_recall(scores, queries, train, "author")
    assert recall["recall_at_k"] == 0.5 and recall["recall_at_k_excluding_self"] == 0.0
    assert attribution.copy_retrieval(scores, queries, train) == {"queries_with_copy": 1, "top1": 1.0, "mean_rank": 1.0}


def test_the_api_function_is_not_shadowed_by_a_package() -> None:
    import types

    import unlearnkit
    import unlearnkit.attribution.curvature  # a subpackage becomes an attribute of its parent: it must not be named influence
    from unlearnkit.errors import UnlearnkitError

    assert not isinstance(unlearnkit.influence, types.ModuleType)
    with pytest.raises(UnlearnkitError, match="top_k"):
        unlearnkit.influence(model="m", query="q", train="t", output="o", top_k=0)


# ------------------------------------------------------------------------------------------- the command


def write_rows(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


def test_command_writes_the_folder_and_reuses_its_factors(micro_cache: Path, micro_bench, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                         capsys: pytest.CaptureFixture) -> None:
    first = tmp_path / "first"
    base = ["influence", "builtin", "--query", "forget10", "--train", "full", "--top-k", "3", *micro(micro_cache)]
    assert run_cli([*base, "--output", str(first)], monkeypatch) == 0
    summary = json.loads((first / "summary.json").read_text())
    assert summary["estimator"] == "ekfac" and summary["train_rows"] == 80 and len(summary["top"]) == 8
    assert summary["recall"]["ekfac"]["field"] == "author" and summary["copy_retrieval"]["ekfac"]["top1"] == 1.0
    written = {path.name for path in first.iterdir()}
    assert {"config.json", "summary.json", "per_sample.json", "scores.safetensors", "log.txt", "factors"} <= written
    assert len(json.loads((first / "per_sample.json").read_text())[0]["scores"]) == 80
    assert not list(first.rglob("*.pt")) and not list(first.rglob("*.pkl"))  # safetensors only

    calls = []
    monkeypatch.setattr(attribution, "fit_factors", lambda *args, **kwargs: calls.append(1))
    second = tmp_path / "second"
    assert run_cli([*base, "--output", str(second), "--factors", str(first)], monkeypatch) == 0
    reused = json.loads((second / "summary.json").read_text())
    assert not calls and reused["factors_reused"]
    assert reused["top"] == summary["top"]

    # Factors of another model (the retain oracle, same shapes, other weights) are refused, and nothing is written.
    oracle = micro_bench.oracle_dir("forget10")
    capsys.readouterr()
    third = tmp_path / "third"
    assert run_cli(["influence", str(oracle), "--query", "forget10", "--train", "full", "--factors", str(first),
                    "--output", str(third), *micro(micro_cache)], monkeypatch) == 2
    assert "another model" in capsys.readouterr().err and not third.exists()


@pytest.mark.parametrize("case", ["no_answer", "estimator", "too_many", "overwrites_input", "normalize"])
def test_command_refuses_bad_input(case: str, micro_cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                   capsys: pytest.CaptureFixture) -> None:
    rows = [{"question": f"q{i}", "answer": f"a{i}"} for i in range(4)]
    train = write_rows(tmp_path / "train.jsonl", rows)
    query = write_rows(tmp_path / "query.jsonl", rows[:1])
    output = tmp_path / "out"
    extra: list[str] = []
    expected = {
        "no_answer": "answer", "estimator": "Did you mean: ekfac", "too_many": "max_train_rows",
        "overwrites_input": "which this command reads", "normalize": "tracin",
    }[case]
    if case == "no_answer":
        query = write_rows(tmp_path / "query.jsonl", [{"question": "q0"}])
    elif case == "estimator":
        extra = ["--estimator", "ekfc"]
    elif case == "too_many":
        extra = ["--set", "max_train_rows=3"]
    elif case == "overwrites_input":
        output = tmp_path
    elif case == "normalize":
        extra = ["--set", "normalize=true"]
    code = run_cli(["influence", "builtin", "--query", str(query), "--train", str(train), "--output", str(output), *extra,
                    *micro(micro_cache)], monkeypatch)
    message = capsys.readouterr().err
    assert code == 2 and expected in message, message
    assert not (tmp_path / "out").exists()
