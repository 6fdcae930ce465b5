"""DEPN privacy neurons: integrated gradients over the FFN intermediate neurons, thresholded per example, voted across examples.

Wu et al., "DEPN: Detecting and Editing Privacy Neurons in Pretrained Language
Models", EMNLP 2023 (code: flamewei123/DEPN).

Attribution. The FFN intermediate neurons of decoder layer l are the input of
its MLP down projection (``mlp.down_proj`` in Llama/Qwen/SmolLM2, ``mlp.c_proj``
in GPT-2). With beta the neuron's actual activation, the authors' Riemann
approximation of integrated gradients from the zero baseline is::

    Att(w_l^k) = (beta / m) * sum_{j=1..m} dP(y | x, w_l = j beta / m) / dw_l^k        (m = 20)

where the whole activation vector of layer l (at one position) is scaled
together, every other layer keeping its actual activations, as in the authors'
code. The authors mask each private token of a BERT input in turn and sum the
attributions over those tokens. The causal-LM reading here: each answer token
y_t of a question/answer row is one "masked token"; its probability
P(y_t | x, y_<t) is read at the position before it, and only that position's
activations are scaled (``token_paths="each"``). The row's attribution is the
sum over its answer tokens (the closing EOS included, as the project scores it).
The m interpolation steps of one (layer, token) are one batch of one forward
and one backward pass (``interpolation_batch`` sequences per pass). On
Llama-style models (:mod:`unlearnkit.localization.partial_runs`) one pass
carries every answer token's path of a row at once, kept apart by the
attention mask, and starts at the attributed layer
(:func:`stacked_layer_attributions`): the same numbers, about three times faster.

Filtering and aggregation (the authors' ``2_pn_aggregator.py``):

* per example (row), a neuron is selected when its attribution is at least
  ``threshold_ratio`` times the example's largest attribution (over every
  searched layer and neuron); authors: 0.1 (the constant of their aggregator
  script and the value in their filter script's comments);
* a neuron is a privacy neuron when at least ``vote_share`` of the examples
  select it (authors' ``mode_ratio_bag``: 0.5);
* at most ``max_neurons`` are kept, the most voted first (ties: the larger
  summed attribution); authors' editing script erases ``erase_kn_num`` = 20.

Named differences from the reference:

* ``token_paths="together"`` (not the default) scales every answer position
  at once along one path and attributes the sum of the answer tokens'
  probabilities: one set of m steps per (row, layer) instead of one per answer
  token, about answer-length times cheaper. The authors' per-token paths are
  ``"each"``.
* Only neurons with a positive attribution can be selected (the authors'
  threshold ``ratio * max`` lets every neuron through when an example's
  largest attribution is not positive; here such an example selects none).
* The authors' bag level (a neuron must recur in every prompt of one private
  text, with the cross-text ratio nudged until a bag holds 2-10 neurons) has
  no counterpart: a row has one prompt, and ``vote_share`` stays as set.
* The authors' model is a masked LM (BERT); the causal reading above is this
  project's.
"""

from __future__ import annotations

import copy
import logging
import math
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from unlearnkit.data.encoding import IGNORE_INDEX, PromptFormat, encode_qa
from unlearnkit.errors import UnlearnkitError
from unlearnkit.localization.base import Localization, LocatedSelection, config_settings, model_signature, register_localizer
from unlearnkit.localization.partial_runs import (
    additive_mask,
    recording_layer_inputs,
    repeated_cache,
    starting_at_layer,
    supports_layer_skipping,
    takes_custom_masks,
)
from unlearnkit.parameters import check_layers_exist, decoder_layers, parse_layers
from unlearnkit.settings import check_choice, check_field_types, require_at_least, require_fraction

logger = logging.getLogger("unlearnkit")

CITATION = 'Wu et al., "DEPN: Detecting and Editing Privacy Neurons in Pretrained Language Models", EMNLP 2023'
TOKEN_PATHS = ("each", "together")
# Most logits (sequences x tokens x vocabulary) one pass of the one-pass path computes: about 256 MB in float32.
LOGIT_BUDGET = 2**26
# Where a decoder block keeps the linear layer whose input is the FFN's intermediate activation.
DOWN_PROJECTIONS = ("mlp.down_proj", "mlp.c_proj", "mlp.dense_4h_to_h", "mlp.fc2")


@dataclass
class DEPNSettings:
    """The DEPN options shared by the localizer and the method (names distinct from :class:`MethodConfig`'s)."""

    steps: int = field(default=20, metadata={"help": "Riemann steps m of the integrated gradients (authors: 20)."})
    threshold_ratio: float = field(
        default=0.1,
        metadata={"help": "Per example, keep neurons whose attribution is >= this times the example's largest (authors: 0.1)."},
    )
    vote_share: float = field(
        default=0.5,
        metadata={"help": "A privacy neuron is selected by at least this share of the examples (authors' mode_ratio_bag: 0.5)."},
    )
    max_neurons: int | None = field(
        default=20,
        metadata={"help": "Keep at most this many privacy neurons, the most voted first (authors' erase_kn_num: 20). None: no cap."},
    )
    token_paths: str = field(
        default="each",
        metadata={"help": "'each': one integrated-gradients path per answer token, scaling the position that predicts it (authors); "
                          "'together': one path scaling every answer position at once (answer-length times cheaper)."},
    )
    interpolation_batch: int = field(
        default=20,
        metadata={"help": "Interpolated sequences per forward/backward pass (20: all m steps in one pass; on Llama-style "
                          "models each sequence carries every answer token's path, see reuse_prefix)."},
    )
    reuse_prefix: bool = field(
        default=True,
        metadata={"help": "Run only the scaled positions on top of the example's cached keys/values, on Llama-style models "
                          "from the attributed layer up with all answer tokens in one pass (same result, far fewer tokens; "
                          "false: whole sequences, one token per pass)."},
    )

    def check_depn_settings(self) -> None:
        require_at_least(1, steps=self.steps, interpolation_batch=self.interpolation_batch, max_neurons=self.max_neurons)
        require_fraction("threshold_ratio", self.threshold_ratio)
        require_fraction("vote_share", self.vote_share)
        check_choice("token_paths", self.token_paths, TOKEN_PATHS)


@dataclass
class DEPNLocalizerConfig(DEPNSettings):
    layers: str | None = field(
        default=None, metadata={"help": "Search only these decoder layers: '5,6,7' or '5-7'. None: every layer (authors)."}
    )
    max_length: int = field(default=256, metadata={"help": "Maximum tokens per example (prompt cut from the left)."})

    def __post_init__(self) -> None:
        check_field_types(self)
        self.check_depn_settings()
        require_at_least(2, max_length=self.max_length)
        parse_layers(self.layers)


# --------------------------------------------------------------------------------------------- the FFN neurons


@dataclass(frozen=True)
class FeedForwardProjection:
    """One decoder layer's down projection: its input holds the layer's FFN intermediate neurons."""

    layer: int
    module_name: str
    module: nn.Module
    # The weight dimension indexed by intermediate neuron: 1 for nn.Linear (out, in), 0 for GPT-2's Conv1D (in, out).
    neuron_dim: int

    @property
    def weight_name(self) -> str:
        return f"{self.module_name}.weight"

    @property
    def width(self) -> int:
        return int(self.module.weight.shape[self.neuron_dim])

    @property
    def peft_name(self) -> str:
        """The module as peft's target_modules names it (``mlp.down_proj``: GPT-2's attention has a ``c_proj`` too)."""
        return ".".join(self.module_name.split(".")[-2:])


def feed_forward_projections(model: nn.Module, layers: Sequence[int] | None = None) -> list[FeedForwardProjection]:
    """The down projection of every decoder layer (of ``layers`` when given), found by the names of :data:`DOWN_PROJECTIONS`."""
    prefix, blocks = decoder_layers(model)
    if layers is not None:
        check_layers_exist(model, layers)
    found = []
    for index in range(len(blocks)) if layers is None else sorted(set(layers)):
        modules = dict(blocks[index].named_modules())
        path = next((path for path in DOWN_PROJECTIONS if _neuron_dim(modules.get(path)) is not None), None)
        if path is None:
            raise UnlearnkitError(
                f"DEPN attributes the FFN neurons at the input of each MLP's down projection, and decoder layer {index} of "
                f"{type(model).__name__} has no linear layer named {' or '.join(DOWN_PROJECTIONS)}. "
                "Use a Llama/Qwen/SmolLM2 or GPT-2 style model."
            )
        found.append(FeedForwardProjection(index, f"{prefix}.{index}.{path}", modules[path], _neuron_dim(modules[path])))
    return found


def _neuron_dim(module: nn.Module | None) -> int | None:
    if isinstance(module, nn.Linear):
        return 1
    if type(module).__name__ == "Conv1D" and getattr(module, "weight", None) is not None and module.weight.dim() == 2:
        return 0
    return None


# --------------------------------------------------------------------------------------------- integrated gradients


def interpolation_scales(steps: int) -> torch.Tensor:
    """The Riemann points alpha_j = j / m, j = 1..m (m,): the authors' right sum, which never evaluates the baseline itself."""
    return torch.arange(1, steps + 1, dtype=torch.float64) / steps


def riemann_attribution(activation: torch.Tensor, gradient_sum: torch.Tensor, steps: int) -> torch.Tensor:
    """``(beta / m) * sum_j g_j``: the activation ``beta`` times the summed gradients at ``alpha_j beta`` over the m steps."""
    return activation * gradient_sum / steps


def integrated_gradients(function: Callable[[torch.Tensor], torch.Tensor], point: torch.Tensor, steps: int) -> torch.Tensor:
    """Riemann integrated gradients of a scalar ``function`` of a vector from 0 to ``point`` (d,), all m steps in one batch.

    ``function`` maps a batch (m, d) to m values. What the localizer computes per
    layer and token, for any differentiable function (the tests check it against closed forms).
    """
    scaled = (interpolation_scales(steps).to(point.dtype)[:, None] * point.detach()[None, :]).requires_grad_(True)
    (gradient,) = torch.autograd.grad(function(scaled).sum(), scaled)  # (m, d): row j is grad f(alpha_j point)
    return riemann_attribution(point.detach(), gradient.sum(dim=0), steps)


class _ScaledActivation:
    """Forward pre-hook on a down projection: multiplies its input by per-(sequence, position) scales.

    The scaled input is kept as a graph leaf: its gradient is the attribution's
    ``dP / dw`` at ``w = alpha beta``, and nothing before this layer is differentiated.
    """

    def __init__(self, scales: torch.Tensor) -> None:
        self.scales = scales  # (n, T)
        self.actual: torch.Tensor | None = None
        self.scaled: torch.Tensor | None = None

    def __call__(self, module: nn.Module, args: tuple) -> tuple:
        actual = args[0].detach()  # (n, T, d_ff); the layers below are not scaled, so this is beta
        self.actual = actual
        self.scaled = (actual * self.scales[..., None].to(actual.dtype)).requires_grad_(True)
        return (self.scaled, *args[1:])


def answer_targets(labels: Sequence[int]) -> list[tuple[int, int]]:
    """(position whose logits predict it, token id) of each answer token of an encoded example."""
    return [(index - 1, int(label)) for index, label in enumerate(labels) if label != IGNORE_INDEX and index > 0]


def layer_attribution(
    model: nn.Module, projection: FeedForwardProjection, input_ids: torch.Tensor, targets: Sequence[tuple[int, int]],
    settings: DEPNSettings, prefix_cache: Any = None, keeps_logits: bool = False,
) -> tuple[torch.Tensor, int]:
    """One example's attribution of one layer's FFN neurons (d_ff,), summed over its answer tokens; and the passes run.

    ``input_ids`` (T,) is one encoded example, ``targets`` its :func:`answer_targets`.
    Each interpolated sequence scales the positions of one path (one answer
    token's, or all of them) by one alpha_j; its objective is the summed
    probability of the tokens those positions predict.

    Causal attention makes this cheap: positions before a path's first scaled
    position never change, so with ``prefix_cache`` (the model's key/value
    cache of the whole example, see :func:`example_cache`) only the positions
    from there to the last scaled one are run, on top of the cached prefix;
    positions after the last scaled one never matter. The result is the same.
    """
    device = input_ids.device
    token_at = dict(targets)
    positions = sorted(token_at)
    paths = [(position,) for position in positions] if settings.token_paths == "each" else [tuple(positions)]
    plan = [(path, float(alpha)) for path in paths for alpha in interpolation_scales(settings.steps)]
    activation = torch.zeros(len(input_ids), projection.width, dtype=torch.float32, device=device)  # beta per position
    gradient_sum = torch.zeros_like(activation)  # (T, d_ff): sum over the steps of dP / dw at each scaled position
    passes = 0
    for chunk in _chunks(plan, settings.interpolation_batch):
        start = min(min(path) for path, _ in chunk) if prefix_cache is not None else 0
        end = max(max(path) for path, _ in chunk) + 1
        scales = torch.ones(len(chunk), end - start, device=device)
        scaled = torch.zeros(len(chunk), end - start, dtype=torch.bool, device=device)
        for row, (path, alpha) in enumerate(chunk):
            scales[row, [position - start for position in path]] = alpha
            scaled[row, [position - start for position in path]] = True
        kept = sorted({position for path, _ in chunk for position in path})
        kept_offsets = torch.tensor([position - start for position in kept], device=device)
        hook = _ScaledActivation(scales)
        handle = projection.module.register_forward_pre_hook(hook)
        try:
            logits = _forward(model, input_ids[start:end], len(chunk), start, prefix_cache, kept_offsets if keeps_logits else None)
        finally:
            handle.remove()
        if not keeps_logits:
            logits = logits[:, kept_offsets]
        # (n, K): the probability of the token each kept position predicts, counted where that position is scaled.
        wanted = torch.tensor([token_at[position] for position in kept], device=device).expand(len(chunk), -1)
        probability = torch.log_softmax(logits.float(), dim=-1).gather(-1, wanted.unsqueeze(-1)).squeeze(-1).exp()
        objective = (probability * scaled[:, kept_offsets]).sum()
        (gradient,) = torch.autograd.grad(objective, hook.scaled)
        gradient_sum[start:end] += (gradient.float() * scaled.unsqueeze(-1)).sum(dim=0)
        activation[start:end] = hook.actual[0].float()
        passes += 1
    return riemann_attribution(activation, gradient_sum, settings.steps).sum(dim=0), passes


def _forward(
    model: nn.Module, ids: torch.Tensor, copies: int, start: int, prefix_cache: Any, logits_to_keep: torch.Tensor | None
) -> torch.Tensor:
    """Logits (copies, len(ids) or K, V) of ``copies`` copies of ``ids`` continuing the example's first ``start`` tokens."""
    batch = ids.unsqueeze(0).expand(copies, -1)
    extra: dict[str, Any] = {} if logits_to_keep is None else {"logits_to_keep": logits_to_keep}
    if start > 0:
        past = copy.deepcopy(prefix_cache)
        past.crop(start - past.get_seq_length())  # a negative count: drop the positions from ``start`` on
        past.batch_repeat_interleave(copies)
        extra.update(past_key_values=past, use_cache=True)
    else:
        extra["attention_mask"] = torch.ones_like(batch)
    return model(input_ids=batch, **extra).logits


def stacked_layer_attributions(
    model: nn.Module, projections: Sequence[FeedForwardProjection], input_ids: torch.Tensor, targets: Sequence[tuple[int, int]],
    settings: DEPNSettings,
) -> tuple[torch.Tensor, int]:
    """One example's per-token-path attributions of every layer in ``projections`` (L, d_ff), as :func:`layer_attribution`.

    The same numbers, computed faster (``token_paths="each"`` on a model of
    :data:`~unlearnkit.localization.partial_runs.LAYER_SKIPPING_MODELS`):

    * the paths of every answer token ride in one sequence: position ``p_i``
      holds path i, and a custom attention mask lets it see only the clean
      keys/values of positions ``< p_i`` and itself, never another path's
      scaled position, so the K paths stay independent (their objectives add,
      their gradients do not mix); one pass per ``interpolation_batch`` steps
      and layer instead of one per answer token;
    * the pass starts at the attributed layer, from its input states recorded
      in one clean run: the layers below never see a scaled activation;
    * an answer whose logits would pass :data:`LOGIT_BUDGET` is split into
      several passes (the paths being independent, the result is the same).
    """
    device = input_ids.device
    positions = [position for position, _ in targets]  # (K,) positions predicting each answer token
    tokens = torch.tensor([token for _, token in targets], device=device)
    length, count = len(input_ids), len(positions)
    layer_inputs: dict[int, torch.Tensor] = {}
    with torch.no_grad(), recording_layer_inputs(model, layer_inputs):
        clean = model(input_ids=input_ids.unsqueeze(0), use_cache=True, logits_to_keep=1)
    dtype = layer_inputs[0].dtype
    vocabulary = model.get_output_embeddings().weight.shape[0]
    scales_all = interpolation_scales(settings.steps).float().to(device)
    attribution = torch.zeros(len(projections), projections[0].width, dtype=torch.float32)
    passes = 0
    for slot, projection in enumerate(projections):
        gradient_sum = torch.zeros(count, projection.width, dtype=torch.float32, device=device)  # (K, d_ff)
        activation = torch.zeros_like(gradient_sum)
        for scales in torch.split(scales_all, settings.interpolation_batch):
            copies = len(scales)
            # Paths are independent, so a long answer's tokens may go in several passes: the logits stay within the budget.
            group_size = max(1, LOGIT_BUDGET // (copies * vocabulary))
            for group in torch.split(torch.arange(count, device=device), group_size):
                index = torch.tensor(positions, device=device)[group]  # (k,)
                # Query i (at position p_i) sees cached keys k < p_i and its own new key (cache slot length + i).
                allowed = torch.cat([torch.arange(length, device=device)[None, :] < index[:, None],
                                     torch.eye(len(group), dtype=torch.bool, device=device)], dim=1)
                hook = _ScaledActivation(scales[:, None].expand(copies, len(group)))
                handle = projection.module.register_forward_pre_hook(hook)
                try:
                    with starting_at_layer(model, projection.layer):
                        logits = model(inputs_embeds=layer_inputs[projection.layer][:, index].expand(copies, -1, -1),
                                       position_ids=index[None].expand(copies, -1),
                                       attention_mask=additive_mask(allowed[None, None].expand(copies, 1, -1, -1), dtype),
                                       past_key_values=repeated_cache(clean.past_key_values, copies, None, model.config),
                                       use_cache=True).logits  # (n, k, V)
                finally:
                    handle.remove()
                wanted = tokens[group].expand(copies, -1).unsqueeze(-1)
                probability = torch.log_softmax(logits.float(), dim=-1).gather(-1, wanted).exp()
                (gradient,) = torch.autograd.grad(probability.sum(), hook.scaled)  # (n, k, d_ff)
                gradient_sum[group] += gradient.float().sum(dim=0)
                activation[group] = hook.actual[0].float()
                passes += 1
        attribution[slot] = riemann_attribution(activation, gradient_sum, settings.steps).sum(dim=0).cpu()
    return attribution, passes


@torch.no_grad()
def example_cache(model: nn.Module, input_ids: torch.Tensor) -> Any:
    """The key/value cache of one whole example (batch 1), or None when the model keeps no croppable cache."""
    try:
        cache = getattr(model(input_ids=input_ids.unsqueeze(0), use_cache=True), "past_key_values", None)
    except (TypeError, ValueError):  # a forward that takes no use_cache
        return None
    if cache is None or not callable(getattr(cache, "crop", None)) or not callable(getattr(cache, "batch_repeat_interleave", None)):
        return None
    return cache


def _chunks(items: Sequence, size: int) -> Iterator[Sequence]:
    for start in range(0, len(items), size):
        yield items[start:start + size]


# --------------------------------------------------------------------------------------------- filtering and voting


def threshold_neurons(attribution: torch.Tensor, threshold_ratio: float) -> torch.Tensor:
    """Per example, the neurons with a positive attribution >= ``threshold_ratio`` x the example's largest.

    ``attribution`` (N, L, d_ff) -> bool (N, L, d_ff). An example whose largest attribution is not positive selects none.
    """
    flat = attribution.flatten(start_dim=1)
    largest = flat.max(dim=1).values.clamp(min=0)  # (N,)
    selected = (flat >= threshold_ratio * largest[:, None]) & (flat > 0)
    return selected.view_as(attribution)


def vote_neurons(
    selected: torch.Tensor, attribution: torch.Tensor, vote_share: float, max_neurons: int | None
) -> list[tuple[int, int]]:
    """(layer slot, neuron) selected by at least ``vote_share`` of the examples (and by one at least), most voted first.

    ``selected``/``attribution`` (N, L, d_ff). Ties go to the larger summed attribution; ``max_neurons`` caps the list.
    """
    votes = selected.sum(dim=0)  # (L, d_ff)
    needed = max(1.0, vote_share * selected.shape[0])
    total = attribution.sum(dim=0)
    candidates = [tuple(index) for index in (votes >= needed - 1e-9).nonzero().tolist()]
    candidates.sort(key=lambda slot: (-int(votes[slot]), -float(total[slot]), slot))
    return [(int(layer), int(neuron)) for layer, neuron in candidates[:max_neurons]]


# --------------------------------------------------------------------------------------------- detection


@dataclass
class PrivacyNeurons:
    """What :func:`detect_privacy_neurons` found: per-example attributions, votes and the chosen (layer, neuron) pairs."""

    projections: list[FeedForwardProjection]
    attribution: torch.Tensor  # (N, L_searched, d_ff)
    votes: torch.Tensor  # (L_searched, d_ff)
    neurons: list[tuple[int, int]]  # (decoder layer index, neuron index)
    forward_passes: int
    seconds: float

    def by_layer(self) -> dict[int, list[int]]:
        chosen: dict[int, list[int]] = {}
        for layer, neuron in self.neurons:
            chosen.setdefault(layer, []).append(neuron)
        return {layer: sorted(indices) for layer, indices in sorted(chosen.items())}

    def counts(self) -> dict[str, int]:
        """Privacy neurons per searched layer (zeros included), keyed by the layer index as text (JSON keys)."""
        chosen = self.by_layer()
        return {str(projection.layer): len(chosen.get(projection.layer, ())) for projection in self.projections}

    def shares(self) -> dict[str, float]:
        """The share of each searched layer's FFN neurons that are privacy neurons."""
        return {str(p.layer): len(self.by_layer().get(p.layer, ())) / p.width for p in self.projections}


def detect_privacy_neurons(
    model: PreTrainedModel, examples: Sequence[dict[str, list[int]]], settings: DEPNSettings, layers: Sequence[int] | None = None
) -> PrivacyNeurons:
    """Attribute, threshold and vote over encoded examples (``input_ids``/``labels``, labels on the answer); the model is unchanged.

    Runs in eval mode with every weight frozen (both restored): only the scaled activations are differentiated.
    """
    projections = feed_forward_projections(model, layers)
    if not examples:
        raise UnlearnkitError("DEPN needs at least one forget example to attribute.")
    widths = {projection.width for projection in projections}
    if len(widths) != 1:
        raise UnlearnkitError(f"DEPN expects one FFN width across layers; this model's down projections take {sorted(widths)}.")
    started = time.perf_counter()
    keeps_logits = "logits_to_keep" in _forward_parameters(model)
    stacked = settings.token_paths == "each" and settings.reuse_prefix and supports_layer_skipping(model) and takes_custom_masks(model)
    device = next(model.parameters()).device
    attribution = torch.zeros(len(examples), len(projections), widths.pop())
    passes = 0
    was_training = model.training
    trainable = {name: parameter.requires_grad for name, parameter in model.named_parameters()}
    model.eval()
    model.requires_grad_(False)
    try:
        for row, example in enumerate(examples):
            targets = answer_targets(example["labels"])
            if not targets:
                raise UnlearnkitError(f"Forget example {row + 1} has no answer token to attribute; give it a non-empty answer.")
            input_ids = torch.tensor(example["input_ids"], device=device)
            if stacked:
                attribution[row], count = stacked_layer_attributions(model, projections, input_ids, targets, settings)
                passes += count
                continue
            cache = example_cache(model, input_ids) if settings.reuse_prefix else None
            for slot, projection in enumerate(projections):
                scores, count = layer_attribution(model, projection, input_ids, targets, settings, cache, keeps_logits)
                attribution[row, slot] = scores.cpu()
                passes += count
    finally:
        for name, parameter in model.named_parameters():
            parameter.requires_grad_(trainable[name])
        model.train(was_training)
    if not math.isfinite(float(attribution.abs().sum())):
        raise UnlearnkitError("DEPN's attributions are not finite: the model's outputs overflow. Load the model in float32.")
    selected = threshold_neurons(attribution, settings.threshold_ratio)
    chosen = vote_neurons(selected, attribution, settings.vote_share, settings.max_neurons)
    neurons = [(projections[slot].layer, neuron) for slot, neuron in chosen]
    return PrivacyNeurons(projections, attribution, selected.sum(dim=0), neurons, passes, time.perf_counter() - started)


def _forward_parameters(model: nn.Module) -> set[str]:
    import inspect

    try:
        return set(inspect.signature(model.forward).parameters)
    except (TypeError, ValueError):
        return set()


def privacy_selection(found: PrivacyNeurons) -> LocatedSelection:
    """The privacy neurons as a located selection: columns of each down projection (rows of GPT-2's Conv1D)."""
    chosen = found.by_layer()
    columns: dict[str, tuple[int, ...]] = {}
    rows: dict[str, tuple[int, ...]] = {}
    for projection in found.projections:
        if projection.layer in chosen:
            (columns if projection.neuron_dim == 1 else rows)[projection.weight_name] = tuple(chosen[projection.layer])
    return LocatedSelection(
        layers=tuple(chosen),
        target_modules=tuple(sorted({projection.peft_name for projection in found.projections})),
        rows=rows,
        columns=columns,
    )


def full_depth(found: PrivacyNeurons, values: torch.Tensor, num_layers: int) -> torch.Tensor:
    """A (L_searched, d_ff) array placed in a (num_layers, d_ff) one, zeros for the layers not searched."""
    out = torch.zeros(num_layers, values.shape[-1], dtype=torch.float32)
    for slot, projection in enumerate(found.projections):
        out[projection.layer] = values[slot].float()
    return out


def privacy_notes(found: PrivacyNeurons, examples: Sequence[dict[str, list[int]]], settings: DEPNSettings) -> dict:
    return {
        "privacy_neurons": len(found.neurons),
        "neurons": [list(pair) for pair in found.neurons],
        "neurons_per_layer": found.counts(),
        "share_per_layer": found.shares(),
        "searched_layers": [projection.layer for projection in found.projections],
        "examples": len(examples),
        "answer_tokens": sum(len(answer_targets(example["labels"])) for example in examples),
        "forward_passes": found.forward_passes,
        "seconds": round(found.seconds, 3),
        "token_paths": settings.token_paths,
    }


@register_localizer(
    "depn",
    config=DEPNLocalizerConfig,
    citation=CITATION,
    summary="Integrated gradients (m=20) of the answer tokens' probability over the FFN intermediate neurons; "
            "threshold 0.1 x max per example, kept by >= 50% of examples, at most 20 (columns of mlp.down_proj).",
)
def localize_privacy_neurons(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, rows: Sequence[dict], fmt: PromptFormat, config: DEPNLocalizerConfig
) -> Localization:
    """DEPN's privacy neurons of ``rows`` (question/answer pairs): the selection is columns of the down projections."""
    layers = parse_layers(config.layers)
    feed_forward_projections(model, layers)  # an unfit model fails before any tokenising
    examples = [encode_qa(tokenizer, fmt, row["question"], row["answer"], config.max_length) for row in rows]
    found = detect_privacy_neurons(model, examples, config, layers)
    if not found.neurons:
        raise UnlearnkitError(
            f"DEPN found no privacy neuron: none passed threshold_ratio={config.threshold_ratio:g} in at least "
            f"vote_share={config.vote_share:g} of the {len(examples)} examples. Lower vote_share or threshold_ratio."
        )
    num_layers = len(decoder_layers(model)[1])
    logger.info("depn: %d privacy neuron(s) in %.1fs (%d forward passes)", len(found.neurons), found.seconds, found.forward_passes)
    return Localization(
        localizer="depn",
        settings=config_settings(config),
        scores={
            "attribution": full_depth(found, found.attribution.mean(dim=0), num_layers),  # mean over the examples
            "votes": full_depth(found, found.votes, num_layers),
        },
        selection=privacy_selection(found),
        model_signature=model_signature(model),
        notes=privacy_notes(found, examples, config),
    )
