"""Quantization attacks: does forgotten knowledge come back when the unlearned model is quantised?

Zhang et al., "Catastrophic Failure of LLM Unlearning via Quantization",
ICLR 2025. Unlearning with a small learning rate moves weights by less than
a quantisation step, so after 4-bit quantisation many weights round back to
the bins of the original model and the forgotten answers reappear (8-bit
quantisation, with finer bins, does so less).

The paper quantises with bitsandbytes (``load_in_8bit``: LLM.int8(), and
``load_in_4bit``: NF4 blocks with absmax scaling). Those kernels need a GPU and
store other codebooks, so here quantisation is *round-to-nearest* (RTN),
group-wise along each weight's input dimension with an asymmetric min-max
scale and zero point per group: the standard torch-only stand-in (the
baseline of GPTQ/AWQ), which runs on any device and any float dtype. What the
attack tests is the same: whether unlearning's weight changes survive
rounding to a coarse grid. Like bitsandbytes, every linear layer is quantised
except the output head, and the embeddings are left as they are.
"""

from __future__ import annotations

import copy

import torch
from torch import nn
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from unlearnkit.attacks.base import AttackOutcome, AuditConfig, AuditData, register_attack
from unlearnkit.attacks.knowledge import recall_rate, recall_rows
from unlearnkit.errors import UnlearnkitError
from unlearnkit.parameters import is_lora_model

PAPER = 'Zhang et al., "Catastrophic Failure of LLM Unlearning via Quantization", ICLR 2025'


def rtn_quantize(weight: torch.Tensor, bits: int, group_size: int) -> torch.Tensor:
    """Round-to-nearest quantisation of ``weight`` (..., in_features), returned dequantised in its dtype.

    Each run of ``group_size`` consecutive weights along the last dimension
    (the last run may be shorter) gets ``scale = (max - min) / (2**bits - 1)``
    and ``zero = round(-min / scale)``; each weight becomes
    ``q = clamp(round(w / scale) + zero, 0, 2**bits - 1)`` and is returned as
    ``(q - zero) * scale``. A constant group (scale 0) is kept as it is. The
    arithmetic runs in float32 (float64 for float64 weights).
    """
    if not 1 <= bits <= 16:
        raise UnlearnkitError(f"Quantization bits must be between 1 and 16, got {bits}.")
    if group_size < 1:
        raise UnlearnkitError(f"quantization_group_size must be at least 1, got {group_size}.")
    if not weight.is_floating_point():
        raise UnlearnkitError(f"Only floating-point weights can be quantised, got dtype {weight.dtype}.")
    work = weight.detach().to(torch.float64 if weight.dtype == torch.float64 else torch.float32)
    in_features = work.shape[-1]
    full = in_features - in_features % group_size
    parts = [work[..., :full].unflatten(-1, (-1, group_size))] if full else []
    if full < in_features:
        parts.append(work[..., full:].unsqueeze(-2))  # the last, partial group
    levels = 2**bits - 1
    dequantised = []
    for groups in parts:  # (..., n_groups, size)
        low = groups.amin(dim=-1, keepdim=True)
        scale = (groups.amax(dim=-1, keepdim=True) - low) / levels
        constant = scale == 0
        safe = torch.where(constant, torch.ones_like(scale), scale)
        zero = torch.round(-low / safe)
        q = torch.clamp(torch.round(groups / safe) + zero, 0, levels)
        dequantised.append(torch.where(constant, groups, (q - zero) * safe).flatten(-2))
    return torch.cat(dequantised, dim=-1).to(weight.dtype)


def quantized_linears(model: nn.Module) -> list[tuple[str, nn.Linear]]:
    """The linear layers quantisation applies to: all but the output head (and any layer sharing its weight)."""
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    head_weight = getattr(head, "weight", None)
    return [
        (name, module)
        for name, module in model.named_modules()
        if isinstance(module, nn.Linear) and module is not head and module.weight is not head_weight
    ]


@torch.no_grad()
def quantize_model(model: nn.Module, bits: int, group_size: int) -> nn.Module:
    """A deep copy of ``model`` with every linear weight but the head's RTN-quantised (:func:`rtn_quantize`).

    A model with unmerged LoRA adapters is merged first (in the copy), so the
    deployed weights are what gets quantised. ``model`` is not changed.
    """
    quantized = copy.deepcopy(model)
    if is_lora_model(quantized):
        quantized = quantized.merge_and_unload()
    for _, module in quantized_linears(quantized):
        module.weight.copy_(rtn_quantize(module.weight, bits, group_size))
    return quantized


def quantized_share(model: nn.Module) -> float:
    """Share of the model's (distinct) parameters that :func:`quantize_model` quantises."""
    total = sum(parameter.numel() for parameter in model.parameters())
    return sum(module.weight.numel() for _, module in quantized_linears(model)) / total if total else 0.0


def _quantization_attack(
    bits: int, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, data: AuditData, config: AuditConfig
) -> AttackOutcome:
    quantized = quantize_model(model, bits, config.quantization_group_size)
    quantized.eval()
    questions = [row["question"] for row in data.forget]
    recalled, generations = recall_rows(quantized, tokenizer, data.fmt, data.forget, questions, config.max_new_tokens, config.batch_size)
    samples = [{"question": q, "generation": g, "recalled": r} for q, g, r in zip(questions, generations, recalled, strict=True)]
    details = {"bits": float(bits), "group_size": float(config.quantization_group_size), "quantized_share": quantized_share(quantized)}
    return AttackOutcome(recovery=recall_rate(recalled), measure="answer recall", per_sample=samples, details=details)


@register_attack(
    "quantization_8bit",
    paper=PAPER,
    summary="Answer recall after 8-bit round-to-nearest quantisation of every linear weight but the head.",
    family="weights",
)
def quantization_8bit(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, data: AuditData, config: AuditConfig) -> AttackOutcome:
    return _quantization_attack(8, model, tokenizer, data, config)


@register_attack(
    "quantization_4bit",
    paper=PAPER,
    summary="Answer recall after 4-bit round-to-nearest quantisation of every linear weight but the head.",
    family="weights",
)
def quantization_4bit(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, data: AuditData, config: AuditConfig) -> AttackOutcome:
    return _quantization_attack(4, model, tokenizer, data, config)
