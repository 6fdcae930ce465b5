"""EUL: train small unlearning layers on a frozen model, fold them into its weights, fuse several by least squares.

Chen & Yang, "Unlearn What You Want to Forget: Efficient Unlearning for LLMs",
EMNLP 2023. An "unlearning layer" ``f`` follows the feed-forward block of
selected decoder layers; only ``f`` trains, so that the model with ``f``
switched off is the original one, the reference of the KL terms. Several
unlearning layers trained on different forget sets fuse in closed form.

Our unlearning layer is linear, a residual low-rank map on the output of the
layer's MLP output projection (``down_proj``)::

    f(h) = h + B A h          A: (r, d), B: (d, r) = 0 at the start, so f = identity

The paper uses an adapter (a small MLP, about 0.5% of the parameters). A linear
layer keeps two properties exact: ``f ∘ down_proj`` is again a linear layer, so
``finalize`` folds ``f`` into ``down_proj`` (weight ``← (I + BA) W``, bias
``← (I + BA) b``) and the result is a standard checkpoint with unchanged parameter
names; and the paper's least-squares fusion of several layers is exact for
linear maps. GPT-2 style models, whose projections are ``Conv1D``, are refused.

Loss, adapted to causal LMs (answer tokens only; ``p_base`` is the model with the
unlearning layers bypassed):

    L_retain = α · KL(p_base ‖ p_θ)(D_r) + λ · ℓ̄(D_r)
    L_forget = −min(KL(p_base ‖ p_θ)(D_f), max_forget_kl) − γ · ℓ̄(D_f)

with the authors' α = 0.8, λ = 1, γ = 0.2. The paper's L_LM is T5's masked-span
loss on the forget text, negated; here it is the forget answers' NLL, negated.
``−KL`` is unbounded below, so it is clamped at ``max_forget_kl`` (an answer
token whose KL reaches about 5 nats is already about as unlikely as under a model
that never saw it; past the bound the term stops pushing).

Schedule: the paper alternates one epoch on the retain data with one on the
forget data (SCRUB-style). ``schedule="epochs"`` does so, starting with a forget
epoch (as SCRUB starts with its max-steps), so epochs 0, 2, 4 minimise
``L_forget`` and 1, 3 ``L_retain``; ``schedule="joint"`` minimises their sum at
every step. An epoch is one pass over the forget set; a retain epoch pairs each
forget example with one retain example, as every method here does.

After training, ``finalize`` computes, on the forget set and with the trained
model, ``G = Σ X^T X`` of the hidden states entering each unlearning layer (every
real token, prompt and answer: the layer acts on all of them), folds the layers,
and hands back ``unlearning_layers.safetensors`` with, per module ``NAME``,
``NAME.unlearning_weight`` (``M = I + BA``, ``(d, d)``, applied as ``h ↦ M h``,
nn.Linear's convention) and ``NAME.forget_gram`` (``G``, ``(d, d)``). Each costs
``d²`` floats per layer. :func:`unlearnkit.runs.fuse.fuse_unlearning_files` (``unlearnkit fuse``)
combines the files of several runs from the same base model.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from transformers import PreTrainedModel

from unlearnkit import losses
from unlearnkit.errors import UnlearnkitError
from unlearnkit.methods.base import MethodConfig, UnlearnTrainer, register_method
from unlearnkit.parameters import selected_parameter_names
from unlearnkit.settings import check_choice, require_positive

ARTIFACT_FILE = "unlearning_layers.safetensors"
WEIGHT_SUFFIX = "unlearning_weight"
GRAM_SUFFIX = "forget_gram"
LAYER_ATTRIBUTE = "unlearning_layer"
SCHEDULES = ("epochs", "joint")
DEFAULT_RIDGE = 1e-6


@dataclass
class EULConfig(MethodConfig):
    learning_rate: float = field(default=5e-5, metadata={"help": "Peak AdamW learning rate of the unlearning layers (authors: 5e-5)."})
    num_epochs: float = field(default=4.0, metadata={"help": "Epochs, alternating forget and retain (authors: 3-5; 4 = two rounds)."})
    warmup_ratio: float = field(default=0.06, metadata={"help": "Fraction of steps for linear warm-up (authors: 0.06, then linear decay)."})
    target_modules: str | None = field(
        default="down_proj",
        metadata={"help": "Linear layer(s) an unlearning layer follows and folds into: the MLP output projection by default."},
    )
    alpha: float = field(default=0.8, metadata={"help": "Weight of KL(p_base || p_theta) on the retain answers (authors: 0.8)."})
    lambda_task: float = field(default=1.0, metadata={"help": "Weight of the retain answers' NLL, the task loss (authors: 1.0)."})
    gamma: float = field(default=0.2, metadata={"help": "Weight of the negated forget-answer NLL (authors: 0.2)."})
    max_forget_kl: float = field(
        default=5.0,
        metadata={"help": "Clamp of the forget KL, whose negation is unbounded (nats per answer token)."},
    )
    adapter_rank: int = field(default=16, metadata={"help": "Rank r of each unlearning layer h + B A h (A: r x d, B: d x r)."})
    schedule: str = field(
        default="epochs",
        metadata={"help": "'epochs': alternate forget and retain epochs, forget first (the paper's); 'joint': both halves every step."},
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.target_modules is None or not self.target_modules.strip():
            raise UnlearnkitError("EUL needs target_modules: the linear layer(s) its unlearning layers follow (default 'down_proj').")
        if self.uses_lora:
            raise UnlearnkitError("EUL trains its own unlearning layers and has no LoRA form; set lora_rank=0.")
        require_positive(max_forget_kl=self.max_forget_kl, adapter_rank=self.adapter_rank)
        for name in ("alpha", "lambda_task", "gamma"):
            value = getattr(self, name)
            if not math.isfinite(value) or value < 0:
                raise UnlearnkitError(f"{name} must be a finite number >= 0, got {value}.")
        check_choice("schedule", self.schedule, SCHEDULES)

    def check_model(self, model: PreTrainedModel) -> None:
        target_linear_modules(model, self)


class UnlearningLayer(nn.Module):
    """``h ↦ h + B A h`` on the last dimension; the identity at initialisation (B = 0) or when ``enabled`` is off."""

    def __init__(self, width: int, rank: int, generator: torch.Generator | None = None) -> None:
        super().__init__()
        self.down = nn.Parameter(torch.empty(rank, width))  # A: (r, d)
        self.up = nn.Parameter(torch.zeros(width, rank))  # B: (d, r)
        # LoRA's initialisation of A; B = 0 makes the layer start as the identity.
        nn.init.kaiming_uniform_(self.down, a=math.sqrt(5), generator=generator)
        self.enabled = True

    def forward(self, hidden: Tensor) -> Tensor:  # (..., d) -> (..., d)
        if not self.enabled:
            return hidden
        return hidden + nn.functional.linear(nn.functional.linear(hidden, self.down), self.up)

    def merged_weight(self) -> Tensor:
        """``M = I + B A`` (d, d) in float32: the layer as a matrix acting as ``h ↦ M h`` (nn.Linear's convention)."""
        up, down = self.up.detach().float(), self.down.detach().float()
        return torch.eye(up.shape[0], device=up.device) + up @ down


def _apply_unlearning_layer(module: nn.Module, args: Any, output: Tensor) -> Tensor:
    return getattr(module, LAYER_ATTRIBUTE)(output)


def target_linear_modules(model: nn.Module, config: EULConfig) -> list[str]:
    """Names of the linear modules that get an unlearning layer; refuses non-linear targets (GPT-2's Conv1D)."""
    names = sorted({name.rsplit(".", 1)[0] for name in selected_parameter_names(model, config.selection()) if "." in name})
    for name in names:
        module = model.get_submodule(name)
        if not isinstance(module, nn.Linear):
            raise UnlearnkitError(
                f"EUL folds its unlearning layers into linear layers, but {name} is a {type(module).__name__} "
                "(GPT-2 style models use Conv1D). Set target_modules to nn.Linear modules, or choose another method."
            )
    return names


@torch.no_grad()
def fold_into_linear(linear: nn.Linear, merged_weight: Tensor) -> None:
    """Make ``linear`` compute ``M (W x + b)``: weight ``← M W``, bias ``← M b`` (``M``: (out, out))."""
    if merged_weight.shape != (linear.out_features, linear.out_features):
        raise UnlearnkitError(
            f"An unlearning layer of size {tuple(merged_weight.shape)} cannot follow a linear layer with "
            f"{linear.out_features} outputs (hidden size); it was trained on another model."
        )
    matrix = merged_weight.to(device=linear.weight.device, dtype=torch.float32)
    linear.weight.copy_((matrix @ linear.weight.float()).to(linear.weight.dtype))
    if linear.bias is not None:
        linear.bias.copy_((matrix @ linear.bias.float()).to(linear.bias.dtype))


def fuse_unlearning_layers(layers: Sequence[tuple[Tensor, Tensor]], ridge: float = DEFAULT_RIDGE) -> Tensor:
    """Chen & Yang's closed-form fusion of unlearning layers at one position; returns ``M_m`` (d, d).

    Each layer is ``(M_i, G_i)``: ``M_i`` acts as ``h ↦ M_i h`` and ``G_i = X_iᵀ X_i``
    is the Gram matrix of the hidden states (rows of ``X_i``) it saw on its forget
    set. The fused ``M_m`` minimises ``Σ_i ‖X_i M_mᵀ − X_i M_iᵀ‖²``, that is

        M_mᵀ = (Σ_i G_i)⁻¹ Σ_i G_i M_iᵀ

    (the paper's ``W_m = (Σ X_iᵀX_i)⁻¹ Σ X_iᵀX_i W_i`` with ``W = Mᵀ``, the map
    acting on row vectors). ``ridge`` > 0 adds ``λ ‖M_m − I‖²`` with
    ``λ = ridge · trace(Σ G_i) / d``: directions that no forget set reaches keep
    the identity, and a singular Gram sum stays solvable. Computed in float64.
    """
    if not layers:
        raise UnlearnkitError("Fusion needs at least one unlearning layer.")
    if not (math.isfinite(ridge) and ridge >= 0):
        raise UnlearnkitError(f"ridge must be a finite number >= 0, got {ridge}.")
    width = layers[0][0].shape[0]
    for weight, gram in layers:
        if weight.shape != (width, width) or gram.shape != (width, width):
            raise UnlearnkitError(
                f"Unlearning layers of different hidden sizes cannot be fused: got {tuple(weight.shape)} and {tuple(gram.shape)} "
                f"where ({width}, {width}) was expected."
            )
    gram_sum = sum(gram.double() for _, gram in layers)
    target = sum(gram.double() @ weight.double().T for weight, gram in layers)
    if ridge > 0:
        identity = torch.eye(width, dtype=torch.float64, device=gram_sum.device)
        strength = ridge * gram_sum.diagonal().sum() / width
        gram_sum = gram_sum + strength * identity
        target = target + strength * identity
    try:
        fused_transposed = torch.linalg.solve(gram_sum, target)
    except torch.linalg.LinAlgError:
        raise UnlearnkitError(
            "The forget sets' Gram matrices sum to a singular matrix (they span too few directions); "
            "fuse with a ridge > 0 (e.g. --ridge 1e-4)."
        ) from None
    return fused_transposed.T.float()


def read_unlearning_layers(path: str | Path) -> dict[str, tuple[Tensor, Tensor]]:
    """Read an EUL run's ``unlearning_layers.safetensors``: module name -> ``(M, G)``."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(path)
    if path.suffix != ".safetensors":
        raise UnlearnkitError(f"{path}: unlearning layers are read from .safetensors files only (an EUL run writes model/{ARTIFACT_FILE}).")
    if not path.is_file():
        raise UnlearnkitError(f"Unlearning-layer file {path} does not exist; an EUL run writes it as model/{ARTIFACT_FILE}.")
    try:
        tensors = load_file(str(path))
    except (SafetensorError, OSError) as error:
        raise UnlearnkitError(f"Could not read {path} as safetensors: {error}") from None
    parts: dict[str, dict[str, Tensor]] = {}
    for key, tensor in tensors.items():
        module, _, kind = key.rpartition(".")
        if kind not in (WEIGHT_SUFFIX, GRAM_SUFFIX) or not module:
            raise UnlearnkitError(f"{path} holds {key!r}, "
                                  f"which is not an EUL unlearning layer (NAME.{WEIGHT_SUFFIX} / NAME.{GRAM_SUFFIX}).")
        parts.setdefault(module, {})[kind] = tensor
    if not parts:
        raise UnlearnkitError(f"{path} holds no unlearning layer.")
    layers = {}
    for module, pair in sorted(parts.items()):
        if set(pair) != {WEIGHT_SUFFIX, GRAM_SUFFIX}:
            raise UnlearnkitError(f"{path} holds only {', '.join(pair)} for {module}; each layer needs its weight and its Gram matrix.")
        weight, gram = pair[WEIGHT_SUFFIX], pair[GRAM_SUFFIX]
        if weight.dim() != 2 or weight.shape[0] != weight.shape[1] or gram.shape != weight.shape:
            raise UnlearnkitError(f"{path}: {module} has a weight {tuple(weight.shape)} and a Gram {tuple(gram.shape)}; "
                                  "both must be (d, d).")
        layers[module] = (weight, gram)
    return layers


@register_method(
    "eul",
    config=EULConfig,
    paper='Chen & Yang, "Unlearn What You Want to Forget: Efficient Unlearning for LLMs", EMNLP 2023',
    summary="Train h + BAh after each MLP on L = a KL(D_r) - min(KL(D_f), c) + l NLL(D_r) - g NLL(D_f), KL to the layer-free model; "
            "fold into down_proj.",
    family="adapter",
)
class EUL(UnlearnTrainer):
    """EUL (Chen & Yang, EMNLP 2023) with linear unlearning layers folded into the MLP output projections."""

    supports_lora = False
    # Module name -> (the linear layer, its unlearning layer, the hook that applies it); filled by setup().
    _layers: dict[str, tuple[nn.Linear, UnlearningLayer, Any]]

    def setup(self) -> None:
        config = self.method_config
        model = self.model
        # Only the unlearning layers train; the model stays as it was until finalize() folds them in.
        model.requires_grad_(False)
        self._layers = {}
        generator = torch.Generator().manual_seed(config.seed)
        for name in target_linear_modules(model, config):
            linear = model.get_submodule(name)
            layer = UnlearningLayer(linear.out_features, config.adapter_rank, generator)
            layer.to(device=linear.weight.device, dtype=linear.weight.dtype)
            # A child of the linear layer: the optimiser and the checkpoints see its parameters.
            linear.add_module(LAYER_ATTRIBUTE, layer)
            self._layers[name] = (linear, layer, linear.register_forward_hook(_apply_unlearning_layer))

    @contextlib.contextmanager
    def layers_bypassed(self) -> Iterator[None]:
        """The original model: every unlearning layer switched off (and no dropout) inside the block."""
        was_training = self.model.training
        self.model.eval()
        for _, layer, _ in self._layers.values():
            layer.enabled = False
        try:
            yield
        finally:
            for _, layer, _ in self._layers.values():
                layer.enabled = True
            self.model.train(was_training)

    @torch.no_grad()
    def reference_outputs(self, batch: dict[str, Tensor], **kwargs: Any) -> Any:
        with self.layers_bypassed():
            return self.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], **kwargs)

    def phase(self) -> str:
        """``"forget"``, ``"retain"`` or ``"joint"``: which half of the loss this step minimises."""
        if self.method_config.schedule == "joint":
            return "joint"
        epoch = int(self.state.epoch + 1e-9)  # epochs done so far: fractional inside an epoch
        return "forget" if epoch % 2 == 0 else "retain"

    def compute_loss(self, model: PreTrainedModel, inputs: dict[str, Any], return_outputs: bool = False, num_items_in_batch: Any = None):
        config = self.method_config
        phase = self.phase()
        terms = []
        if phase in ("forget", "joint"):
            forget = inputs["forget"]
            logits = self.logits(model, forget)
            forget_kl = losses.kl_to_reference(logits, self.reference_logits(forget), forget["labels"], positions="answer")
            forget_nll = losses.mean_nll(logits, forget["labels"])
            terms.append(losses.eul_forget_loss(forget_kl, forget_nll, config.gamma, config.max_forget_kl))
            self.record(forget_loss=terms[-1])
        if phase in ("retain", "joint"):
            retain = inputs["retain"]
            logits = self.logits(model, retain)
            retain_kl = losses.kl_to_reference(logits, self.reference_logits(retain), retain["labels"], positions="answer")
            retain_nll = losses.mean_nll(logits, retain["labels"])
            terms.append(losses.eul_retain_loss(retain_kl, retain_nll, config.alpha, config.lambda_task))
            self.record(retain_loss=terms[-1])
        loss = sum(terms)
        return (loss, None) if return_outputs else loss

    @torch.no_grad()
    def forget_grams(self, model: nn.Module) -> dict[str, Tensor]:
        """``G = Σ X^T X`` (float32, (d, d)) of the hidden states entering each unlearning layer, over the forget set's real tokens."""
        grams = {name: torch.zeros(linear.out_features, linear.out_features, device=linear.weight.device)
                 for name, (linear, _, _) in self._layers.items()}
        real_tokens: dict[str, Tensor] = {}

        def recorder(name: str):
            def record(module: nn.Module, args: tuple[Tensor, ...]) -> None:
                hidden = args[0][real_tokens["mask"]].float()  # (n, d): padding left out
                grams[name] += hidden.T @ hidden

            return record

        handles = [layer.register_forward_pre_hook(recorder(name)) for name, (_, layer, _) in self._layers.items()]
        was_training = model.training
        model.eval()
        try:
            forget_items = self.train_dataset.forget
            size = self.method_config.batch_size
            for start in range(0, len(forget_items), size):
                batch = self.data_collator([{"forget": item} for item in forget_items[start:start + size]])["forget"]
                batch = self._prepare_inputs(batch)
                real_tokens["mask"] = batch["attention_mask"].bool()
                model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
        finally:
            for handle in handles:
                handle.remove()
            model.train(was_training)
        return grams

    def finalize(self, model: PreTrainedModel) -> PreTrainedModel:
        """Record the forget Gram matrices, fold every unlearning layer into its linear layer, remove the layers."""
        grams = self.forget_grams(model)
        tensors: dict[str, Tensor] = {}
        for name, (linear, layer, hook) in self._layers.items():
            weight = layer.merged_weight()
            tensors[f"{name}.{WEIGHT_SUFFIX}"] = weight.cpu()
            tensors[f"{name}.{GRAM_SUFFIX}"] = grams[name].cpu()
            hook.remove()
            delattr(linear, LAYER_ATTRIBUTE)
            fold_into_linear(linear, weight)
        self._layers = {}
        self.artifacts[ARTIFACT_FILE] = tensors
        return model
