"""Training-data attribution: which training rows taught the model a query's answer.

Grosse et al., "Studying Large Language Model Generalization with Influence Functions", arXiv 2023: the influence of
a training row z on a query q is

    score(z, q) = grad_qᵀ (G + λI)⁻¹ grad_z,

over the weights of the MLP's linear layers of the decoder layers (attention frozen, as in the paper), with G the
Gauss-Newton Hessian approximated per layer (:mod:`unlearnkit.attribution.curvature`). A positive score means that
training more on z lowers q's loss (z helps q); the ranking is by the score, highest first.

Choices (the paper leaves them open for QA rows):

* the loss of a row is the SUM of the negative log-likelihood over its answer tokens (prompt tokens masked), so that a
  row's gradient is one sequence's, whatever its length; ``grad_q`` and ``grad_z`` are both gradients of that loss;
* G is the true Fisher (labels sampled from the model at the answer positions, ``fisher_samples`` draws per row, the
  Gauss-Newton Hessian in expectation), fitted on the training rows; ``empirical_fisher=true`` uses the rows' own
  labels instead;
* ``tracin`` is TracIn with one checkpoint (Pruthi et al., "Estimating Training Data Influence by Tracing Gradient
  Descent", NeurIPS 2020): ``grad_qᵀ grad_z`` (no curvature), or their cosine with ``normalize=true``.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from unlearnkit import losses
from unlearnkit.attribution import curvature
from unlearnkit.data.encoding import PromptFormat, encode_qa, pad_batch
from unlearnkit.errors import UnlearnkitError, did_you_mean
from unlearnkit.parameters import check_layers_exist, decoder_layers, parse_layers
from unlearnkit.settings import check_field_types, check_seed, require_at_least, require_non_negative, require_positive

logger = logging.getLogger("unlearnkit")

ESTIMATORS = ("ekfac", "kfac", "diagonal", "tracin")
ESTIMATOR_HELP = {
    "ekfac": "EK-FAC: Kronecker eigenbasis of the MLP layers' Fisher with refitted eigenvalues (Grosse et al. 2023)",
    "kfac": "K-FAC: the Fisher of each MLP layer as A ⊗ S (Martens & Grosse 2015)",
    "diagonal": "the diagonal of the Fisher",
    "tracin": "gradient dot product, no curvature (TracIn, Pruthi et al. 2020, one checkpoint)",
}
# A training set larger than this needs --set max_train_rows=N: every row costs a forward and backward pass per pass
# over the data (three for EK-FAC), and the score matrix grows with it.
DEFAULT_MAX_TRAIN_ROWS = 5000
# The aim for EK-FAC on SmolLM2-135M's MLPs (80M weights): its factors and score pass fit in about 3 GB.
DEFAULT_MEMORY_LIMIT_GB = 4.0


@dataclass
class InfluenceConfig:
    damping: float | None = field(
        default=None, metadata={"help": "λ added to the curvature (None: 0.1 x the mean eigenvalue of each layer's block, as Grosse "
                                        "et al.; ignored by tracin)."})
    empirical_fisher: bool = field(
        default=False, metadata={"help": "Fit the curvature with the rows' own answers (empirical Fisher) instead of answers "
                                         "sampled from the model (true Fisher, the Gauss-Newton Hessian in expectation)."})
    fisher_samples: int = field(default=1, metadata={"help": "Sampled answers per training row when fitting the true Fisher."})
    normalize: bool = field(default=False, metadata={"help": "tracin only: the cosine of the two gradients instead of their dot product."})
    modules: str = field(
        default="mlp", metadata={"help": "Linear layers of each decoder layer to attribute through, by name part, comma-separated "
                                         "(default: the MLP's, attention frozen as in Grosse et al.), e.g. 'mlp.down_proj'."})
    layers: str | None = field(default=None, metadata={"help": "Decoder layers to use, e.g. '0-3' (None: all)."})
    batch_size: int = field(default=8, metadata={"help": "Rows per forward/backward pass."})
    max_length: int = field(default=512, metadata={"help": "Tokens per row at most; a longer prompt is cut from the left."})
    max_train_rows: int = field(
        default=DEFAULT_MAX_TRAIN_ROWS, metadata={"help": "Refuse a larger training set (time and the score matrix grow with it); "
                                                          "raise it, or sample the training rows."})
    memory_limit_gb: float = field(
        default=DEFAULT_MEMORY_LIMIT_GB, metadata={"help": "Refuse a run whose attribution tensors (factors while fitted and kept, "
                                                           "the queries' gradient factors, one batch's signals, the score matrix; "
                                                           "not the model itself) are estimated above this many GB."})
    group_field: str | None = field(
        default=None, metadata={"help": "Row field naming the entity a row is about, for top-k recall (None: 'author' when every "
                                        "query and training row has it)."})
    seed: int = field(default=0, metadata={"help": "Seed of the sampled answers of the true Fisher."})

    def __post_init__(self) -> None:
        check_field_types(self)
        require_non_negative(damping=self.damping)
        require_positive(memory_limit_gb=self.memory_limit_gb)
        require_at_least(1, fisher_samples=self.fisher_samples, batch_size=self.batch_size, max_train_rows=self.max_train_rows)
        require_at_least(2, max_length=self.max_length)
        check_seed("seed", self.seed)
        if not self.modules.strip() or not module_patterns(self.modules):
            raise UnlearnkitError("modules is empty; name the linear layers to attribute through, e.g. modules=mlp.")
        if self.group_field is not None and not self.group_field.strip():
            raise UnlearnkitError("group_field is empty; name a row field such as author, or leave it out.")
        parse_layers(self.layers)


def check_estimator(name: str) -> None:
    """Refuse an unknown estimator with a did-you-mean."""
    if name not in ESTIMATORS:
        raise UnlearnkitError(f"Unknown estimator {name!r}.{did_you_mean(str(name), ESTIMATORS)} Use one of {', '.join(ESTIMATORS)}.")


def check_settings_fit(estimator: str, config: InfluenceConfig) -> None:
    """Refuse settings that the estimator would silently ignore."""
    if config.normalize and estimator != "tracin":
        raise UnlearnkitError(f"normalize (the cosine) applies to --estimator tracin only, not {estimator}; drop it.")


def module_patterns(spec: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in spec.split(",") if part.strip())


# ------------------------------------------------------------------------------------------- the tracked layers


def tracked_linears(model: nn.Module, config: InfluenceConfig) -> dict[str, nn.Linear]:
    """The ``nn.Linear`` modules of the decoder layers whose name (within the layer) matches ``modules``, by full name."""
    prefix, blocks = decoder_layers(model)
    layers = parse_layers(config.layers)
    if layers is not None:
        check_layers_exist(model, layers)
    patterns = module_patterns(config.modules)
    chosen: dict[str, nn.Linear] = {}
    for index, block in enumerate(blocks):
        if layers is not None and index not in layers:
            continue
        for name, module in block.named_modules():
            parts = name.split(".")
            if isinstance(module, nn.Linear) and any(
                    pattern in parts or name == pattern or name.endswith("." + pattern) or name.startswith(pattern + ".")
                    for pattern in patterns):
                chosen[f"{prefix}.{index}.{name}"] = module
    if not chosen:
        raise UnlearnkitError(
            f"No nn.Linear layer of the decoder layers matches modules={config.modules!r}"
            f"{' and layers=' + config.layers if config.layers else ''}; influence attributes through linear layers "
            "(a GPT-2 Conv1D is not one). Name others with --set modules=..., e.g. modules=mlp.down_proj.")
    return chosen


def layer_shape(module: nn.Linear) -> tuple[int, int]:
    """``(d_out, d_in')`` of the layer's gradient matrix (the bias as an extra input column)."""
    return module.out_features, module.in_features + (module.bias is not None)


def flat_gradient(module: nn.Linear, gradient: Tensor) -> dict[str, Tensor]:
    """A ``(d_out, d_in')`` gradient matrix as the layer's parameters: weight (and bias)."""
    if module.bias is None:
        return {"weight": gradient}
    return {"weight": gradient[..., :-1], "bias": gradient[..., -1]}


# ------------------------------------------------------------------------------------------- capturing a and s


@dataclass
class Signals:
    """One forward and backward pass: per layer, the inputs ``a`` ``(B, T, d_in')`` and pseudo-gradients ``s`` ``(B, T, d_out)``,
    and the token mask ``(B, T)`` (1 on real tokens)."""

    activations: dict[str, Tensor]
    gradients: dict[str, Tensor]
    mask: Tensor

    def row_gradients(self, name: str) -> Tensor:
        """The per-row gradient of the summed answer loss for one layer: ``(B, d_out, d_in')``."""
        return curvature.row_gradients(self.activations[name], self.gradients[name])


@contextlib.contextmanager
def _capture(modules: Mapping[str, nn.Linear]) -> Iterator[tuple[dict[str, list[Tensor]], dict[str, list[Tensor]]]]:
    """Forward hooks that record each layer's input and output (the output kept in the graph, to differentiate against)."""
    inputs: dict[str, list[Tensor]] = {name: [] for name in modules}
    outputs: dict[str, list[Tensor]] = {name: [] for name in modules}

    def hook(name: str, module: nn.Linear):
        def record(_module: nn.Module, args: tuple[Tensor, ...], output: Tensor) -> None:
            inputs[name].append(args[0].detach())
            outputs[name].append(output)
        return record

    handles = [module.register_forward_hook(hook(name, module)) for name, module in modules.items()]
    try:
        yield inputs, outputs
    finally:
        for handle in handles:
            handle.remove()


def sampled_labels(logits: Tensor, labels: Tensor, generator: torch.Generator) -> Tensor:
    """Labels drawn from the model's own next-token distribution at the scored positions (the true Fisher's pseudo-labels).

    logits ``(B, T, V)``, labels ``(B, T)`` with ``-100`` where unscored -> ``(B, T)``; position t's label is predicted by
    the logits at t - 1 (the causal shift of :func:`unlearnkit.losses.token_nll`).
    """
    probabilities = torch.softmax(logits[:, :-1].detach().float(), dim=-1)
    drawn = torch.multinomial(probabilities.reshape(-1, probabilities.shape[-1]).cpu(), 1, generator=generator)
    drawn = drawn.view(probabilities.shape[:-1]).to(labels.device)
    sampled = labels.clone()
    scored = labels[:, 1:] != losses.IGNORE_INDEX
    sampled[:, 1:] = torch.where(scored, drawn, labels[:, 1:])
    return sampled


def batch_signals(model: nn.Module, modules: Mapping[str, nn.Linear], batch: Mapping[str, Tensor],
                  generator: torch.Generator | None = None, samples: int = 1) -> Iterator[Signals]:
    """Run one batch forward and backward: one :class:`Signals` per label draw.

    With ``generator`` None the labels are the batch's own (the rows' answers); otherwise ``samples`` draws from the model.
    The loss is the sum over rows of each row's summed answer NLL, so that ``s`` of row b is that row's own gradient
    (rows do not interact in a causal LM with an attention mask). A layer fed one vector per row (no token axis) counts
    as one token per row.
    """
    with _capture(modules) as (inputs, outputs):
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    names = list(modules)
    for name in names:
        if len(inputs[name]) != 1:
            raise UnlearnkitError(f"The layer {name} ran {len(inputs[name])} times in one forward pass; influence needs each "
                                  "tracked layer to run once (no shared weights). Exclude it with --set modules=...")
    activations = {name: inputs[name][0] for name in names}
    tokens = next(iter(activations.values())).dim() == 3
    mask = batch["attention_mask"].float() if tokens else torch.ones(batch["input_ids"].shape[0], 1)

    def as_tokens(tensor: Tensor) -> Tensor:
        return tensor.float() if tensor.dim() == 3 else tensor.float().unsqueeze(1)

    activations = {name: as_tokens(curvature.with_bias_column(a) if modules[name].bias is not None else a)
                   for name, a in activations.items()}
    graph = [outputs[name][0] for name in names]
    for draw in range(samples if generator is not None else 1):
        labels = batch["labels"] if generator is None else sampled_labels(logits, batch["labels"], generator)
        loss = losses.sequence_nll(logits, labels).sum()
        parts = torch.autograd.grad(loss, graph, retain_graph=draw + 1 < samples, allow_unused=True)
        gradients = {name: as_tokens(torch.zeros_like(out) if part is None else part.detach())
                     for name, out, part in zip(names, graph, parts, strict=True)}
        yield Signals(activations, gradients, mask.to(logits.device))


@contextlib.contextmanager
def only_tracked_trainable(model: nn.Module, modules: Mapping[str, nn.Linear]) -> Iterator[None]:
    """Gradients flow to the tracked layers only (attention and the rest frozen, as in Grosse et al.); eval mode (no dropout)."""
    was_training = model.training
    flags = {parameter: parameter.requires_grad for parameter in model.parameters()}
    tracked = {id(parameter) for module in modules.values() for parameter in module.parameters(recurse=False)}
    model.eval()
    try:
        for parameter in model.parameters():
            parameter.requires_grad_(id(parameter) in tracked)
        yield
    finally:
        model.train(was_training)
        for parameter, flag in flags.items():
            parameter.requires_grad_(flag)


def encode_rows(tokenizer: Any, fmt: PromptFormat, rows: Sequence[Mapping[str, Any]], config: InfluenceConfig,
                device: torch.device) -> list[dict[str, Tensor]]:
    """The rows as padded batches of ``config.batch_size``: prompt + answer, labels on the answer only."""
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    features = [encode_qa(tokenizer, fmt, row["question"], row["answer"], config.max_length) for row in rows]
    return [{key: value.to(device) for key, value in pad_batch(features[start:start + config.batch_size], pad).items()}
            for start in range(0, len(features), config.batch_size)]


# ------------------------------------------------------------------------------------------- fitting the curvature


@dataclass
class Factors:
    """The fitted curvature of every tracked layer: tensors by layer name, then by role.

    * ``ekfac``/``kfac``: ``q_activation`` (Q_A), ``eig_activation`` (e_A), ``q_gradient`` (Q_S), ``eig_gradient`` (e_S), the
      eigendecompositions of A and S (each covariance is ``Q diag(e) Qᵀ``), and ``eigenvalues`` (Λ, ``(d_out, d_in')``);
    * ``diagonal``: ``diagonal`` (``E[dW ⊙ dW]``, ``(d_out, d_in')``);
    * ``tracin``: nothing.

    ``damping`` is the λ of each layer (resolved: the setting, else 0.1 x the mean of Λ or of the diagonal).
    """

    estimator: str
    tensors: dict[str, dict[str, Tensor]]
    damping: dict[str, float]
    rows: int
    tokens: int

    def basis(self, name: str) -> curvature.Eigenbasis | None:
        """The layer's Kronecker eigenbasis (``ekfac``, ``kfac``), None where the estimator works in the weights' own basis."""
        if self.estimator not in ("ekfac", "kfac"):
            return None
        layer = self.tensors[name]
        return curvature.Eigenbasis(layer["q_activation"], layer.get("eig_activation", torch.zeros(0)), layer["q_gradient"],
                                    layer.get("eig_gradient", torch.zeros(0)))

    def divide(self, name: str, matrices: Tensor) -> Tensor:
        """``V ⊘ (Λ + λ)`` in the layer's :meth:`basis` (``V ⊘ (diag + λ)`` for ``diagonal``, V for tracin); V ``(..., d_out, d_in')``,
        the result in V's dtype. Rotated back, this is :meth:`inverse_product`."""
        layer = self.tensors.get(name, {})
        if self.estimator in ("ekfac", "kfac"):
            return matrices / (layer["eigenvalues"].to(matrices.dtype) + self.damping[name])
        if self.estimator == "diagonal":
            return matrices / (layer["diagonal"].to(matrices.dtype) + self.damping[name])
        return matrices

    def inverse_product(self, name: str, matrices: Tensor) -> Tensor:
        """``(G + λI)⁻¹ V`` for the layer ``name``; V ``(..., d_out, d_in')``. The identity for tracin."""
        layer = self.tensors.get(name, {})
        if self.estimator in ("ekfac", "kfac"):
            return curvature.eigen_inverse_product(matrices, self.basis(name), layer["eigenvalues"], self.damping[name])
        if self.estimator == "diagonal":
            return curvature.diagonal_inverse_product(matrices, layer["diagonal"], self.damping[name])
        return matrices


def fit_factors(model: nn.Module, modules: Mapping[str, nn.Linear], batches: Sequence[Mapping[str, Tensor]], estimator: str,
                config: InfluenceConfig) -> Factors:
    """Fit the estimator's curvature on ``batches`` (the training rows): one pass over them (two for EK-FAC).

    The true Fisher's labels are drawn with a generator seeded by ``config.seed`` at the start of each pass, so EK-FAC's
    second pass sees the same pseudo-gradients as the first (its eigenvalues are fitted on the data its basis came from).
    """
    if estimator == "tracin":
        return Factors(estimator, {}, {}, 0, 0)

    def passes() -> Iterator[Signals]:
        generator = None if config.empirical_fisher else torch.Generator().manual_seed(config.seed)
        for batch in batches:
            yield from batch_signals(model, modules, batch, generator, config.fisher_samples)

    with only_tracked_trainable(model, modules):
        if estimator == "diagonal":
            tensors, rows, tokens = _fit_diagonal(modules, passes())
        else:
            tensors, rows, tokens = _fit_kronecker_bases(modules, passes(), kfac=estimator == "kfac")
            if estimator == "ekfac":
                _fit_ekfac_eigenvalues(modules, passes(), tensors, rows)
    return Factors(estimator, tensors, layer_damping(estimator, tensors, config.damping), rows, tokens)


def _fit_diagonal(modules: Mapping[str, nn.Linear], signals_pass: Iterator[Signals]) -> tuple[dict[str, dict[str, Tensor]], int, int]:
    """``diag(F) = E_rows[dW ⊙ dW]`` per layer, one pass."""
    squares = {name: torch.zeros(layer_shape(module), dtype=torch.float64) for name, module in modules.items()}
    rows = tokens = 0
    for signals in signals_pass:
        for name in modules:
            squares[name] += signals.row_gradients(name).to("cpu", torch.float64).square().sum(dim=0)
        rows += int(signals.mask.shape[0])
        tokens += int(signals.mask.sum())
    return {name: {"diagonal": (squares[name] / max(rows, 1)).float()} for name in modules}, rows, tokens


@contextlib.contextmanager
def single_threaded() -> Iterator[None]:
    """One torch thread for a while. LAPACK's threaded eigendecomposition spins when the cores are busy: on a shared 2-core
    machine one 1536 x 1536 ``eigh`` took 25 s with two threads and 0.8 s with one."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _fit_kronecker_bases(modules: Mapping[str, nn.Linear], signals_pass: Iterator[Signals],
                         kfac: bool) -> tuple[dict[str, dict[str, Tensor]], int, int]:
    """A and S of every layer (one pass), then their eigendecompositions, kept in float32; with ``kfac``, Λ = e_S e_Aᵀ too.

    Each layer's sums are released as soon as its eigendecomposition is done, so memory holds the sums of the
    layers not yet decomposed and the float32 bases of those that are, never both for every layer.
    """
    started = time.perf_counter()
    sums = {name: curvature.CovarianceSums.zeros(*layer_shape(module), dtype=torch.float32) for name, module in modules.items()}
    for signals in signals_pass:
        for name in modules:
            sums[name].add(signals.activations[name], signals.gradients[name], signals.mask)
    logger.info("influence factors: A and S of %d layer(s) in %.1f s", len(modules), time.perf_counter() - started)
    started = time.perf_counter()
    first = next(iter(modules))
    rows, tokens = sums[first].rows, sums[first].tokens
    tensors: dict[str, dict[str, Tensor]] = {}
    for name in modules:
        with single_threaded():
            basis = curvature.eigenbasis(*sums.pop(name).factors())
        tensors[name] = {"q_activation": basis.q_activation.float(), "eig_activation": basis.eig_activation.float(),
                         "q_gradient": basis.q_gradient.float(), "eig_gradient": basis.eig_gradient.float()}
        if kfac:
            tensors[name]["eigenvalues"] = curvature.kfac_eigenvalues(basis).float()
    logger.info("influence factors: eigendecompositions in %.1f s", time.perf_counter() - started)
    return tensors, rows, tokens


def _fit_ekfac_eigenvalues(modules: Mapping[str, nn.Linear], signals_pass: Iterator[Signals], tensors: dict[str, dict[str, Tensor]],
                           rows: int) -> None:
    """EK-FAC's Λ = E_rows[(Q_Sᵀ dW Q_A)²] per layer (George et al., NeurIPS 2018), a second pass, into ``tensors``.

    Each row's rotated gradient comes from its tokens' rotated factors (:func:`curvature.rotated_row_gradients`), in float32
    with the float32 bases the scores use; the squares are summed in float32 (1e-7 relative per batch, half the memory).
    """
    bases = {name: curvature.Eigenbasis(layer["q_activation"], layer["eig_activation"], layer["q_gradient"], layer["eig_gradient"])
             for name, layer in tensors.items()}
    started = time.perf_counter()
    squares = {name: torch.zeros(layer_shape(module), dtype=torch.float32) for name, module in modules.items()}
    for signals in signals_pass:
        for name in modules:
            rotated = curvature.rotated_row_gradients(signals.activations[name].cpu(), signals.gradients[name].cpu(), bases[name])
            squares[name] += rotated.square_().sum(dim=0)  # in place: no second (B, d_out, d_in') buffer per layer
    for name in modules:
        tensors[name]["eigenvalues"] = (squares.pop(name) / max(rows, 1)).float()
    logger.info("influence factors: EK-FAC eigenvalues in %.1f s", time.perf_counter() - started)


def layer_damping(estimator: str, tensors: Mapping[str, Mapping[str, Tensor]], damping: float | None) -> dict[str, float]:
    """Each layer's λ: ``damping`` when given, else 0.1 x the mean of its Λ (or of its diagonal Fisher), Grosse et al. 2023."""
    if estimator == "tracin":
        return {}
    key = "diagonal" if estimator == "diagonal" else "eigenvalues"
    return {name: float(damping) if damping is not None else curvature.default_damping(layer[key]) for name, layer in tensors.items()}


# ------------------------------------------------------------------------------------------- scores


def data_gradients(model: nn.Module, modules: Mapping[str, nn.Linear],
                   batches: Sequence[Mapping[str, Tensor]]) -> Iterator[dict[str, Tensor]]:
    """Per batch, per layer: each row's gradient of its summed answer NLL, ``(B, d_out, d_in')`` in float32."""
    with only_tracked_trainable(model, modules):
        for batch in batches:
            for signals in batch_signals(model, modules, batch):
                yield {name: signals.row_gradients(name).cpu() for name in modules}


@dataclass
class QueryFactors:
    """Every query row's gradient, per layer, as its tokens' factors in the estimator's basis: ``u`` ``(B, T, d_out)`` and
    ``v`` ``(B, T, d_in')`` per query batch (``Q_Sᵀ dW Q_A = Σ_t u_t v_tᵀ``; ``u = s``, ``v = a`` without a basis), float32.

    A row's gradient has rank at most its token count T, so its factors hold ``T (d_out + d_in')`` numbers per layer where
    the dense preconditioned gradient holds ``d_out d_in'`` (SmolLM2-135M's MLPs, 60 tokens: 0.05 GB per query against 0.32).
    """

    parts: dict[str, list[tuple[Tensor, Tensor]]]
    norms: Tensor  # (Q,): each query gradient's norm over every tracked layer (the basis is orthonormal: the same in it)

    def preconditioned(self, name: str, factors: Factors) -> Iterator[Tensor]:
        """Per query batch, ``(Q_Sᵀ dW_q Q_A) ⊘ (Λ + λ)`` of the layer: ``(B_q, d_out, d_in')`` float32."""
        for u, v in self.parts[name]:
            yield factors.divide(name, curvature.row_gradients(v, u))


def query_factors(model: nn.Module, modules: Mapping[str, nn.Linear], batches: Sequence[Mapping[str, Tensor]],
                  factors: Factors) -> QueryFactors:
    """The queries' :class:`QueryFactors`: one forward and backward pass over them, rotations in float64 (few rows)."""
    parts: dict[str, list[tuple[Tensor, Tensor]]] = {name: [] for name in modules}
    squares = []
    with only_tracked_trainable(model, modules):
        for batch in batches:
            for signals in batch_signals(model, modules, batch):
                square = torch.zeros(signals.mask.shape[0], dtype=torch.float64)
                for name in modules:
                    a, s, basis = signals.activations[name].cpu(), signals.gradients[name].cpu(), factors.basis(name)
                    u, v = (s, a) if basis is None else curvature.rotated_token_factors(a.double(), s.double(), basis)
                    parts[name].append((u.float(), v.float()))
                    square += signals.row_gradients(name).cpu().double().square().flatten(1).sum(1)
                squares.append(square)
    return QueryFactors(parts, torch.sqrt(torch.cat(squares)) if squares else torch.zeros(0, dtype=torch.float64))


def influence_scores(model: nn.Module, modules: Mapping[str, nn.Linear], query_batches: Sequence[Mapping[str, Tensor]],
                     train_batches: Sequence[Mapping[str, Tensor]], factors: Factors, normalize: bool = False) -> Tensor:
    """``scores[q, z] = Σ_layers ⟨(G + λI)⁻¹ grad_q, grad_z⟩``: ``(queries, training rows)``, float64.

    Streamed, layer by layer within each training batch: a layer's preconditioned query gradients are rebuilt from the
    queries' token factors (:class:`QueryFactors`), scored against the batch's rotated gradients of that layer, and
    dropped, since ``⟨Q_S (R_q ⊘ (Λ + λ)) Q_Aᵀ, dW_z⟩ = ⟨R_q ⊘ (Λ + λ), Q_Sᵀ dW_z Q_A⟩`` with ``R_q = Q_Sᵀ dW_q Q_A``. Memory
    holds the queries' factors and one layer's dense gradients, never every layer's, nor the training set's. With
    ``normalize`` (tracin), the cosine: each score divided by both gradients' norms over every tracked layer.
    """
    return scores_by_estimator(model, modules, query_batches, train_batches, {factors.estimator: factors}, normalize)[factors.estimator]


def scores_by_estimator(model: nn.Module, modules: Mapping[str, nn.Linear], query_batches: Sequence[Mapping[str, Tensor]],
                        train_batches: Sequence[Mapping[str, Tensor]], factor_sets: Mapping[str, Factors], normalize: bool = False,
                        seconds: dict[str, float] | None = None) -> dict[str, Tensor]:
    """:func:`influence_scores` for several fitted factors at once, sharing each training batch's forward and backward pass.

    ``seconds`` (when given) receives each estimator's own compute time (its query factors and its scoring), apart from
    the shared passes.
    """
    timing = seconds if seconds is not None else {}
    queries = {}
    for key, factors in factor_sets.items():
        started = time.perf_counter()
        queries[key] = query_factors(model, modules, query_batches, factors)
        timing[key] = timing.get(key, 0.0) + time.perf_counter() - started
    columns: dict[str, list[Tensor]] = {key: [] for key in factor_sets}
    started = time.perf_counter()
    with only_tracked_trainable(model, modules):
        for batch in train_batches:
            for signals in batch_signals(model, modules, batch):
                for key, block in _score_batch(signals, modules, queries, factor_sets, normalize, timing).items():
                    columns[key].append(block)
    logger.info("influence scores: %d training batch(es) in %.1f s (%s)", len(train_batches), time.perf_counter() - started,
                ", ".join(f"{key} {value:.1f} s with its queries" for key, value in timing.items()))
    return {key: torch.cat(parts, dim=1) if parts else torch.zeros(int(queries[key].norms.shape[0]), 0, dtype=torch.float64)
            for key, parts in columns.items()}


def _score_batch(signals: Signals, modules: Mapping[str, nn.Linear], queries: Mapping[str, QueryFactors],
                 factor_sets: Mapping[str, Factors], normalize: bool, timing: dict[str, float]) -> dict[str, Tensor]:
    """One training batch's columns of each estimator's score matrix: ``(Q, B)`` float64 each.

    Layer by layer; the batch's gradient of a layer is rotated once per distinct eigenbasis (K-FAC and EK-FAC fitted
    together share theirs) and dropped before the next layer.
    """
    rows = int(signals.mask.shape[0])
    blocks = {key: torch.zeros(int(queries[key].norms.shape[0]), rows, dtype=torch.float64) for key in factor_sets}
    squares = torch.zeros(rows, dtype=torch.float64)
    for name in modules:
        a, s = signals.activations[name].cpu(), signals.gradients[name].cpu()
        rotated: dict[int | None, Tensor] = {}
        for key, factors in factor_sets.items():
            started = time.perf_counter()
            basis = factors.basis(name)
            shared = None if basis is None else id(basis.q_gradient)
            if shared not in rotated:
                rotated[shared] = curvature.row_gradients(a, s) if basis is None else curvature.rotated_row_gradients(a, s, basis)
            start = 0
            for preconditioned in queries[key].preconditioned(name, factors):
                # Float32 within a layer (no float64 copies of the dense gradients: memory traffic dominates here), float64
                # across layers.
                part = torch.einsum("qoi,boi->qb", preconditioned, rotated[shared]).double()
                blocks[key][start:start + preconditioned.shape[0]] += part
                start += preconditioned.shape[0]
            timing[key] += time.perf_counter() - started
        if normalize:
            # The basis is orthonormal: a gradient's norm is the same in it.
            squares += next(iter(rotated.values())).double().square().flatten(1).sum(1)
    if normalize:
        norms = torch.sqrt(squares)[None, :]
        blocks = {key: block / (queries[key].norms[:, None] * norms).clamp(min=1e-30) for key, block in blocks.items()}
    return blocks


# ------------------------------------------------------------------------------------------- ranking and recall


def top_rows(scores: Tensor, k: int) -> list[list[dict[str, Any]]]:
    """Per query, its ``k`` highest-scoring training rows (index, score), highest first; ties by row order."""
    order = torch.argsort(scores, dim=1, descending=True, stable=True)[:, :k]
    return [[{"index": int(index), "score": float(scores[row, index])} for index in order[row]] for row in range(scores.shape[0])]


def resolve_group_field(query_rows: Sequence[Mapping[str, Any]], train_rows: Sequence[Mapping[str, Any]],
                        field_name: str | None) -> str | None:
    """The field that names a row's entity: ``field_name`` (refused when a row lacks it), else ``author`` when every row has it."""
    def everywhere(name: str) -> bool:
        return all(row.get(name) not in (None, "") for row in [*query_rows, *train_rows])

    if field_name is None:
        return "author" if everywhere("author") else None
    if not everywhere(field_name):
        raise UnlearnkitError(f"group_field={field_name!r}: not every query and training row has that field; name a field "
                              "they all carry (e.g. author), or leave group_field out.")
    return field_name


def group_recall(scores: Tensor, query_rows: Sequence[Mapping[str, Any]], train_rows: Sequence[Mapping[str, Any]],
                 field_name: str) -> dict[str, Any]:
    """Top-k recall of each query's own entity: with k the number of training rows sharing the query's ``field_name``,
    the fraction of them among the query's k highest-scoring training rows.

    Also without the query's own copy (a training row with the same question and answer), which any estimator finds
    first: ``recall_excluding_self`` asks whether the *other* facts of the entity rank high.
    """
    per_query, with_self, without_self = [], [], []
    for index, query in enumerate(query_rows):
        own = {n for n, row in enumerate(train_rows) if row.get(field_name) == query.get(field_name)}
        copies = {n for n in own if train_rows[n].get("question") == query.get("question")
                  and train_rows[n].get("answer") == query.get("answer")}
        entry: dict[str, Any] = {"query": index, "group": query.get(field_name), "k": len(own)}
        if own:
            ranked = torch.argsort(scores[index], descending=True, stable=True).tolist()
            entry["recall"] = len(own & set(ranked[:len(own)])) / len(own)
            with_self.append(entry["recall"])
            others = own - copies
            if others:
                rest = [n for n in ranked if n not in copies]
                entry["recall_excluding_self"] = len(others & set(rest[:len(others)])) / len(others)
                without_self.append(entry["recall_excluding_self"])
        per_query.append(entry)
    groups = {row.get(field_name) for row in train_rows}
    # What a random ranking scores on average: k / N per query.
    chance = [entry["k"] / len(train_rows) for entry in per_query if entry["k"]] if train_rows else []
    return {
        "field": field_name,
        "recall_at_k": sum(with_self) / len(with_self) if with_self else None,
        "recall_at_k_excluding_self": sum(without_self) / len(without_self) if without_self else None,
        "chance": sum(chance) / len(chance) if chance else None,
        "queries_scored": len(with_self),
        "groups_in_train": len(groups),
        "per_query": per_query,
    }


def copy_retrieval(scores: Tensor, query_rows: Sequence[Mapping[str, Any]],
                   train_rows: Sequence[Mapping[str, Any]]) -> dict[str, Any] | None:
    """Where each query's own copy in the training rows (same question and answer) ranks: the one row known to have taught
    that exact answer. ``top1``: the fraction of queries whose copy ranks first; ``mean_rank``: its mean rank (1 = first).
    None when no query has a copy among the training rows."""
    ranks = []
    for index, query in enumerate(query_rows):
        copies = [n for n, row in enumerate(train_rows)
                  if row.get("question") == query.get("question") and row.get("answer") == query.get("answer")]
        if copies:
            best = max(float(scores[index, n]) for n in copies)
            ranks.append(1 + int((scores[index] > best).sum()))
    if not ranks:
        return None
    return {"queries_with_copy": len(ranks), "top1": sum(rank == 1 for rank in ranks) / len(ranks), "mean_rank": sum(ranks) / len(ranks)}
