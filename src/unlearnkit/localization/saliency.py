"""Gradient saliency: the weights and neurons where the forget loss's gradient is largest.

Fan et al., "SalUn: Empowering Machine Unlearning via Gradient-based Weight
Saliency in Both Image Classification and Generation", ICLR 2024: the saliency
of a weight is the magnitude of the forget loss's gradient at the original
model, ``|∇θ ℓ_f(θ)|``, and the salient weights are those above a hard
threshold, SalUn's default the median (``percentile=50``: the top half). Here
``ℓ_f`` is the answer NLL of the rows, the per-token mean over every answer token.

Candidates are the weight matrices of the decoder layers (``target_modules`` and
``layers`` restrict them, in peft's vocabulary); embeddings, the output head and
1-D parameters (norms, biases) are never selected. Scores:

* ``granularity=weight``: one score per weight, ``|g|`` (``score=gradient``, SalUn)
  or ``|g ⊙ w|`` (``score=gradient_x_weight``, the first-order estimate of the
  loss change were the weight removed); the selection's ``weight_masks``.
* ``granularity=neuron``: one score per output neuron, the L2 norm of that
  neuron's row of the gradient (of ``g ⊙ w`` with ``gradient_x_weight``), and the
  selection's ``rows`` (GPT-2's Conv1D stores outputs along dimension 1: its
  ``columns``). ``score=pcgu`` ranks the rows as PCGU does (Yu et al.,
  "Unlearning Bias in Language Models by Partitioning Gradients", Findings of ACL
  2023; :mod:`unlearnkit.gradients`): by the lowest cosine similarity between
  ``∇ log p(answer)`` and ``∇ log p(perturbed answer)`` (every row's perturbed
  answers pooled, where PCGU draws one per epoch).

The threshold is one ``percentile`` over every candidate score of the whole
model, as SalUn's (a global ranking of all weights): it keeps the
``ceil(n × (100 − percentile) / 100)`` highest of the ``n`` scores (at least one).
Scores kept: each neuron's (``neuron/<parameter>``), the weight masks
(``mask/<parameter>``) and a layers × module-types summary (``map/score``: the mean
score; ``map/selected``: the fraction selected), whose module names are in the notes.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from unlearnkit import losses
from unlearnkit.data.encoding import PromptFormat, encode_qa, pad_batch
from unlearnkit.errors import UnlearnkitError
from unlearnkit.gradients import block_cosine_similarity, lowest_similarity_masks
from unlearnkit.localization.base import Localization, LocatedSelection, config_settings, model_signature, register_localizer
from unlearnkit.parameters import Selection, decoder_layers, parse_layers, parse_modules, selected_parameter_names
from unlearnkit.settings import check_choice, check_field_types, require_at_least

SCORES = ("gradient", "gradient_x_weight", "pcgu")
GRANULARITIES = ("neuron", "weight")


@dataclass
class SaliencyConfig:
    score: str = field(
        default="gradient",
        metadata={"help": "'gradient' (|g|, SalUn), 'gradient_x_weight' (|g * w|) or 'pcgu' (rows whose gradient agrees least "
                          "with the perturbed answers'; neuron granularity, needs perturbed_answer)."})
    granularity: str = field(default="neuron", metadata={"help": "'neuron' (rows of weight matrices) or 'weight' (single weights)."})
    percentile: float = field(
        default=50.0,
        metadata={"help": "Keep the scores above this percentile of all candidates', in [0, 100) (SalUn: the median, 50)."})
    target_modules: str | None = field(
        default=None, metadata={"help": "Candidate modules, e.g. 'mlp.down_proj' or 'q_proj,v_proj' (None: every weight matrix "
                                        "of the decoder layers)."})
    layers: str | None = field(default=None, metadata={"help": "Candidate decoder layers, e.g. '3-5' (None: all)."})
    batch_size: int = field(default=8, metadata={"help": "Rows per forward/backward pass."})
    max_length: int = field(default=512, metadata={"help": "Tokens per row at most; a longer prompt is cut from the left."})

    def __post_init__(self) -> None:
        check_field_types(self)
        check_choice("score", self.score, SCORES)
        check_choice("granularity", self.granularity, GRANULARITIES)
        if not 0 <= self.percentile < 100:
            raise UnlearnkitError(f"percentile must be in [0, 100) (50 keeps the top half, 99 the top 1%), got {self.percentile}.")
        require_at_least(1, batch_size=self.batch_size)
        require_at_least(2, max_length=self.max_length)
        if self.score == "pcgu" and self.granularity != "neuron":
            raise UnlearnkitError("score=pcgu ranks rows of weight matrices (PCGU's blocks); use granularity=neuron with it.")
        parse_modules(self.target_modules)
        parse_layers(self.layers)


# ------------------------------------------------------------------------------------------- pure scores


def weight_scores(gradient: Tensor, weight: Tensor, score: str) -> Tensor:
    """Per-weight saliency, the weight's shape: ``|g|`` or ``|g ⊙ w|``."""
    return (gradient * weight if score == "gradient_x_weight" else gradient).float().abs()


def neuron_scores(weight_saliency: Tensor, output_dim: int = 0) -> Tensor:
    """Per-output-neuron saliency: the L2 norm of each neuron's slice along ``output_dim``; ``(out,)``."""
    return weight_saliency.float().movedim(output_dim, 0).flatten(1).norm(dim=1)


def kept_count(total: int, percentile: float) -> int:
    """How many of ``total`` scores lie above ``percentile``: ``ceil(total × (100 − percentile) / 100)``, at least 1.

    The product is rounded to 9 decimals first, so that a percentile written as ``100 × (1 − k / total)`` keeps k
    (its float error would otherwise round up to k + 1).
    """
    return min(total, max(1, math.ceil(round(total * (100 - percentile) / 100, 9))))


def top_percentile_masks(scores: Sequence[Tensor], percentile: float) -> list[Tensor]:
    """Boolean masks (each score's shape) of the scores above ``percentile`` over ALL of them (ties: ``torch.topk``'s order)."""
    flat = torch.cat([score.reshape(-1).float() for score in scores])
    keep = torch.zeros(flat.numel(), dtype=torch.bool)
    keep[torch.topk(flat, kept_count(flat.numel(), percentile)).indices] = True
    return [mask.view(score.shape) for mask, score in zip(keep.split([score.numel() for score in scores]), scores, strict=True)]


# ------------------------------------------------------------------------------------------- gradients


def _output_dim(module: nn.Module) -> int:
    """The dimension of a weight that indexes output neurons: 0 for ``nn.Linear``, 1 for GPT-2's ``Conv1D`` (stored transposed)."""
    return 1 if type(module).__name__ == "Conv1D" else 0


def candidate_parameters(model: nn.Module, config: SaliencyConfig) -> dict[str, nn.Parameter]:
    """The weight matrices of the decoder layers that the restriction selects, by name."""
    prefix, _ = decoder_layers(model)
    selection = Selection(parse_modules(config.target_modules), parse_layers(config.layers))
    allowed = set(selected_parameter_names(model, selection))
    chosen = {name: parameter for name, parameter in model.named_parameters()
              if name in allowed and name.startswith(prefix + ".") and parameter.dim() == 2}
    if not chosen:
        raise UnlearnkitError("No weight matrix of the decoder layers matches target_modules/layers; widen them.")
    return chosen


def answer_gradients(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, pairs: Sequence[tuple[str, str]],
                     fmt: PromptFormat, parameters: Sequence[nn.Parameter], config: SaliencyConfig) -> list[Tensor]:
    """``∇θ ℓ̄``: the gradient of the mean NLL over every answer token of ``pairs`` (question, answer) w.r.t. ``parameters``."""
    device = next(model.parameters()).device
    features = [encode_qa(tokenizer, fmt, question, answer, config.max_length) for question, answer in pairs]
    total_tokens = sum(sum(label != losses.IGNORE_INDEX for label in feature["labels"][1:]) for feature in features)
    gradients = [torch.zeros_like(parameter, dtype=torch.float32) for parameter in parameters]
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    for start in range(0, len(features), config.batch_size):
        batch = {key: value.to(device) for key, value in pad_batch(features[start:start + config.batch_size], pad).items()}
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        # The batch's share of the pooled token mean, so the sum over batches is the mean over all answer tokens.
        loss = losses.sequence_nll(logits, batch["labels"]).sum() / total_tokens
        for gradient, part in zip(gradients, torch.autograd.grad(loss, list(parameters), allow_unused=True), strict=True):
            if part is not None:
                gradient += part.float()
    return gradients


def perturbed_pairs(rows: Sequence[dict]) -> list[tuple[str, str]]:
    """(question, wrong answer) for every perturbed answer of every row; a row without one is refused (PCGU contrasts with it)."""
    pairs = []
    for index, row in enumerate(rows, start=1):
        value = row.get("perturbed_answer")
        answers = [value] if isinstance(value, str) else list(value) if isinstance(value, list) else []
        answers = [answer for answer in answers if isinstance(answer, str) and answer.strip()]
        if not answers:
            raise UnlearnkitError(f"row {index} has no perturbed_answer: score=pcgu contrasts every answer with a wrong one. "
                                  "Add perturbed_answer to every row, or use score=gradient.")
        pairs += [(row["question"], answer) for answer in answers]
    return pairs


# ------------------------------------------------------------------------------------------- the localizer


def _module_key(name: str, prefix: str) -> tuple[int, str]:
    """``model.layers.3.mlp.down_proj.weight`` -> ``(3, "mlp.down_proj")``."""
    layer, _, rest = name[len(prefix) + 1:].partition(".")
    return int(layer), rest.rsplit(".", 1)[0]


@register_localizer(
    "saliency",
    config=SaliencyConfig,
    citation='Fan et al., "SalUn: Empowering Machine Unlearning via Gradient-based Weight Saliency in Both Image Classification '
             'and Generation", ICLR 2024 (score=pcgu: Yu et al., "Unlearning Bias in Language Models by Partitioning Gradients", '
             'Findings of ACL 2023)',
    summary="Score every weight (or neuron: row norm) by the forget loss's gradient magnitude; keep those above a percentile.",
)
def localize(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, rows: Sequence[dict], fmt: PromptFormat,
             config: SaliencyConfig) -> Localization:
    if not rows:
        raise UnlearnkitError("Saliency got no rows; give it the forget rows whose answers to locate.")
    for index, row in enumerate(rows, start=1):
        if not all(isinstance(row.get(key), str) and row[key].strip() for key in ("question", "answer")):
            raise UnlearnkitError(f"row {index} needs a non-empty 'question' and 'answer'.")
    contrast_pairs = perturbed_pairs(rows) if config.score == "pcgu" else None
    candidates = candidate_parameters(model, config)
    names, parameters = list(candidates), list(candidates.values())
    modules = dict(model.named_modules())
    output_dims = [_output_dim(modules[name.rsplit(".", 1)[0]]) for name in names]
    pairs = [(row["question"], row["answer"]) for row in rows]

    was_training, requires = model.training, [parameter.requires_grad for parameter in parameters]
    model.eval()  # no dropout: the gradient of the model as it is
    try:
        for parameter in parameters:
            parameter.requires_grad_(True)
        gradients = answer_gradients(model, tokenizer, pairs, fmt, parameters, config)
        contrast = answer_gradients(model, tokenizer, contrast_pairs, fmt, parameters, config) if contrast_pairs else None
    finally:
        model.train(was_training)
        for parameter, flag in zip(parameters, requires, strict=True):
            parameter.requires_grad_(flag)

    scores: dict[str, Tensor] = {}
    if config.score == "pcgu":
        # PCGU's g_adv = ∇ log p(answer) = −∇ℓ̄; blocks are output neurons (rows of nn.Linear, columns of Conv1D).
        partitions = ["rows" if dim == 0 else "columns" for dim in output_dims]
        similarities = [block_cosine_similarity(-g, -c, partition) for g, c, partition in zip(gradients, contrast, partitions, strict=True)]
        per_parameter = [-similarity for similarity in similarities]  # higher: more salient
        total = sum(similarity.numel() for similarity in similarities)
        masks = lowest_similarity_masks(similarities, kept_count(total, config.percentile))
    else:
        saliency = [weight_scores(g, p.detach().float(), config.score) for g, p in zip(gradients, parameters, strict=True)]
        per_parameter = [neuron_scores(s, dim) for s, dim in zip(saliency, output_dims, strict=True)] \
            if config.granularity == "neuron" else saliency
        masks = top_percentile_masks(per_parameter, config.percentile)

    prefix, _ = decoder_layers(model)
    keys = [_module_key(name, prefix) for name in names]
    module_types = sorted({module for _, module in keys})
    layer_count = max(layer for layer, _ in keys) + 1
    score_sum, selected, counts = (torch.zeros(layer_count, len(module_types)) for _ in range(3))
    rows_selected: dict[str, tuple[int, ...]] = {}
    columns_selected: dict[str, tuple[int, ...]] = {}
    weight_masks: list[str] = []
    for name, (layer, module), score, mask, dim in zip(names, keys, per_parameter, masks, output_dims, strict=True):
        column = module_types.index(module)
        finite = score[torch.isfinite(score)]  # PCGU's never-moving rows score -inf
        score_sum[layer, column] += finite.sum()
        selected[layer, column] += mask.sum()
        counts[layer, column] += score.numel()
        if not mask.any():
            continue
        if config.granularity == "weight":
            scores[f"mask/{name}"] = mask.float()
            weight_masks.append(name)
        else:
            (rows_selected if dim == 0 else columns_selected)[name] = tuple(mask.nonzero().flatten().tolist())
    if config.granularity == "neuron":
        scores.update({f"neuron/{name}": score for name, score in zip(names, per_parameter, strict=True)})
    scores["map/score"] = score_sum / counts.clamp(min=1)
    scores["map/selected"] = selected / counts.clamp(min=1)
    chosen = [key for key, mask in zip(keys, masks, strict=True) if mask.any()]
    selection = LocatedSelection(
        layers=tuple(sorted({layer for layer, _ in chosen})),
        target_modules=tuple(sorted({module for _, module in chosen})),
        rows=rows_selected,
        columns=columns_selected,
        weight_masks=tuple(weight_masks),
    )
    kept = int(sum(mask.sum() for mask in masks))
    total = sum(mask.numel() for mask in masks)
    notes = {
        "modules": module_types,
        "map": "layers x modules: map/score the mean score, map/selected the fraction selected",
        "selected": kept,
        "candidates": total,
        "unit": "weights" if config.granularity == "weight" else "neurons",
        "gradient_norm": math.sqrt(sum(float(g.square().sum()) for g in gradients)),
    }
    return Localization("saliency", config_settings(config), scores, selection, model_signature(model), notes)
