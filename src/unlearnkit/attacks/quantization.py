"""Quantization attacks: does forgotten knowledge come back when the unlearned model is quantised?

Zhang et al., "Catastrophic Failure of LLM Unlearning via Quantization",
ICLR 2025. Unlearning with a small learning rate moves weights by less than
a quantisation step, so after 4-bit quantisation many weights round back to
the bins of the original model and the forgotten answers reappear (8-bit
quantisation, with finer bins, does so less).

The paper's code (zzwjames/FailureLLMUnlearning, ``load_model`` in utils.py)
loads the model with bitsandbytes' ``BitsAndBytesConfig(load_in_4bit=True)``,
whose default 4-bit data type is **FP4** (not NF4), in blocks of 64 weights
with absmax scaling, or ``load_in_8bit=True`` (LLM.int8()). Those kernels need
a GPU, so here the same weight rounding is computed in torch on any device,
following bitsandbytes' reference implementation (the ``default`` backend's
``quantize_4bit``/``dequantize_4bit`` and ``int8_vectorwise_quant`` in
bitsandbytes/backends/default/ops.py), and the layers then run with the
dequantised weights:

* 4-bit (:func:`absmax_codebook_quantize`): the weight, in the memory order of
  an ``nn.Linear`` weight ``(out_features, in_features)``, is cut into blocks
  of 64 consecutive values (the last may be shorter); each block is divided by
  its absolute maximum, every value is rounded to the nearest of the 16 code
  values of :data:`FP4_CODE` (``four_bit_type="nf4"``: :data:`NF4_CODE`; a
  value halfway between two codes takes the lower one, as ``torch.bucketize``
  there) and multiplied back by the absmax. Arithmetic in float32, the result
  cast to the weight's dtype.
* 8-bit (:func:`int8_rowwise_quantize`): LLM.int8()'s weight quantisation, one
  absmax scale per output row: ``round(w · 127 / absmax_row) · absmax_row / 127``.
  LLM.int8() also rounds the *activations* to int8 at run time (outlier
  columns above 6.0 kept in 16 bits); that is not simulated, only the weights.

As in bitsandbytes through transformers, every linear layer is quantised,
GPT-2-style ``Conv1D`` layers included, except the output head (and any layer
sharing its weight); embeddings and norms are left as they are. A ``Conv1D``
stores its weight transposed, ``(in_features, out_features)``; transformers
hands bitsandbytes that weight transposed to the ``nn.Linear`` layout, so its
blocks are taken here along the transposed weight too, the same blocks as for
the ``nn.Linear`` of the same function.
"""

from __future__ import annotations

import copy

import torch
from torch import nn
from transformers import PreTrainedModel, PreTrainedTokenizerBase
from transformers.pytorch_utils import Conv1D

from unlearnkit.attacks.base import AttackOutcome, AuditConfig, AuditData, register_attack
from unlearnkit.attacks.knowledge import recall_rate, recall_rows, recall_rule, rule_counts
from unlearnkit.errors import UnlearnkitError
from unlearnkit.parameters import is_lora_model

PAPER = 'Zhang et al., "Catastrophic Failure of LLM Unlearning via Quantization", ICLR 2025'

BITSANDBYTES_BLOCKSIZE = 64
"""Weights per absmax block of bitsandbytes' 4-bit quantisation (its default; ``BitsAndBytesConfig`` has no option for it)."""

FP4_CODE: tuple[float, ...] = tuple(
    value / 12 for value in (-12.0, -8.0, -6.0, -4.0, -3.0, -2.0, -0.0625, 0.0, 0.0625, 2.0, 3.0, 4.0, 6.0, 8.0, 12.0)
)
"""bitsandbytes' FP4 values (1 sign, 2 exponent, 1 mantissa bit; exponent bias 2) over their maximum 12, sorted.

bitsandbytes lists 16 codes, +0 and −0 among them; the two zeros are one value here.
"""

NF4_CODE: tuple[float, ...] = (
    -1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453, -0.28444138169288635, -0.18477343022823334,
    -0.09105003625154495, 0.0, 0.07958029955625534, 0.16093020141124725, 0.24611230194568634, 0.33791524171829224,
    0.44070982933044434, 0.5626170039176941, 0.7229568362236023, 1.0,
)
"""bitsandbytes' NF4 values (QLoRA's NormalFloat: quantiles of N(0, 1) scaled to [-1, 1]), sorted."""

FOUR_BIT_CODES = {"fp4": FP4_CODE, "nf4": NF4_CODE}


def _float_work(weight: torch.Tensor) -> torch.Tensor:
    if not weight.is_floating_point():
        raise UnlearnkitError(f"Only floating-point weights can be quantised, got dtype {weight.dtype}.")
    return weight.detach().to(torch.float32)


def absmax_codebook_quantize(
    weight: torch.Tensor, code: tuple[float, ...] = FP4_CODE, blocksize: int = BITSANDBYTES_BLOCKSIZE
) -> torch.Tensor:
    """bitsandbytes' 4-bit blockwise quantisation of ``weight`` (any shape, row-major order), returned dequantised in its dtype.

    Blocks of ``blocksize`` consecutive values of the flattened weight (the last
    may be shorter) are scaled by ``1 / absmax`` (absmax at least 1e-38),
    clamped to [-1, 1], rounded to the nearest value of the sorted ``code``
    (halfway: the lower one) and multiplied back by the absmax, in float32.
    """
    if blocksize < 1:
        raise UnlearnkitError(f"quantization_group_size (the 4-bit block size) must be at least 1, got {blocksize}.")
    work = _float_work(weight).reshape(-1)
    codebook = torch.tensor(code, dtype=torch.float32, device=work.device)
    bounds = (codebook[:-1] + codebook[1:]) / 2
    full = work.numel() - work.numel() % blocksize
    parts = []
    if full:
        blocks = work[:full].view(-1, blocksize)  # (n_blocks, blocksize)
        absmax = blocks.abs().amax(dim=1, keepdim=True).clamp_min(1e-38)
        scaled = torch.clamp(blocks * (1.0 / absmax), -1.0, 1.0)  # bitsandbytes multiplies by the reciprocal here
        parts.append((codebook[torch.bucketize(scaled, bounds)] * absmax).reshape(-1))
    if full < work.numel():
        tail = work[full:]
        absmax = tail.abs().amax().clamp_min(1e-38)
        scaled = torch.clamp(tail / absmax, -1.0, 1.0)  # ... and divides in the last, partial block
        parts.append(codebook[torch.bucketize(scaled, bounds)] * absmax)
    dequantised = torch.cat(parts)
    return dequantised.reshape(weight.shape).to(weight.dtype)


def int8_rowwise_quantize(weight: torch.Tensor) -> torch.Tensor:
    """LLM.int8()'s weight quantisation of ``weight (out_features, in_features)``, returned dequantised in its dtype.

    Each row ``w`` becomes ``round(w · 127 / absmax(w)) · absmax(w) / 127`` in
    float32; an all-zero row stays zero.
    """
    if weight.dim() != 2:
        raise UnlearnkitError(f"Row-wise int8 quantisation takes a 2-D (out_features, in_features) weight, got {tuple(weight.shape)}.")
    work = _float_work(weight)
    absmax = work.abs().amax(dim=1, keepdim=True)
    safe = torch.where(absmax == 0, torch.ones_like(absmax), absmax)
    return (torch.round(work * (127.0 / safe)) * (safe / 127.0)).to(weight.dtype)


def quantize_weight(weight: torch.Tensor, bits: int, blocksize: int = BITSANDBYTES_BLOCKSIZE, four_bit_type: str = "fp4") -> torch.Tensor:
    """An ``nn.Linear``-layout weight as bitsandbytes quantises it: 8-bit row-wise int8, 4-bit FP4/NF4 blocks."""
    if bits == 8:
        return int8_rowwise_quantize(weight)
    if bits == 4:
        if four_bit_type not in FOUR_BIT_CODES:
            raise UnlearnkitError(f"Unknown 4-bit type {four_bit_type!r}; use fp4 (bitsandbytes' default) or nf4.")
        return absmax_codebook_quantize(weight, FOUR_BIT_CODES[four_bit_type], blocksize)
    raise UnlearnkitError(f"Quantization bits must be 4 or 8 (bitsandbytes' load_in_4bit / load_in_8bit), got {bits}.")


def quantized_layers(model: nn.Module) -> list[tuple[str, nn.Linear | Conv1D]]:
    """The layers quantisation applies to: every ``nn.Linear`` and ``Conv1D`` but the output heads (and any layer sharing a
    head's weight). A wrapped model holds several causal LMs (a logit offset's small models, an assistant): each one's
    head is left alone, as bitsandbytes leaves a loaded model's head."""
    heads = [module.get_output_embeddings() for module in model.modules() if hasattr(module, "get_output_embeddings")]
    heads = [head for head in heads if head is not None]
    head_weights = [getattr(head, "weight", None) for head in heads]
    return [
        (name, module)
        for name, module in model.named_modules()
        if isinstance(module, (nn.Linear, Conv1D)) and not any(module is head for head in heads)
        and not any(module.weight is weight for weight in head_weights)
    ]


@torch.no_grad()
def quantize_model(model: nn.Module, bits: int, blocksize: int = BITSANDBYTES_BLOCKSIZE, four_bit_type: str = "fp4") -> nn.Module:
    """A deep copy of ``model`` with every layer of :func:`quantized_layers` quantised by :func:`quantize_weight`.

    A ``Conv1D`` weight is quantised in its transposed, ``nn.Linear`` layout. A
    model with unmerged LoRA adapters is merged first (in the copy), so the
    deployed weights are what gets quantised. ``model`` is not changed.
    """
    quantized = copy.deepcopy(model)
    if is_lora_model(quantized):
        quantized = quantized.merge_and_unload()
    for _, module in quantized_layers(quantized):
        if isinstance(module, Conv1D):
            module.weight.copy_(quantize_weight(module.weight.T, bits, blocksize, four_bit_type).T)
        else:
            module.weight.copy_(quantize_weight(module.weight, bits, blocksize, four_bit_type))
    return quantized


def quantized_share(model: nn.Module) -> float:
    """Share of the model's (distinct) parameters that :func:`quantize_model` quantises."""
    total = sum(parameter.numel() for parameter in model.parameters())
    return sum(module.weight.numel() for _, module in quantized_layers(model)) / total if total else 0.0


def _quantization_attack(
    bits: int, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, data: AuditData, config: AuditConfig
) -> AttackOutcome:
    # quantization_group_size is the 4-bit block size (bitsandbytes: 64); 8-bit scales whole rows.
    quantized = quantize_model(model, bits, config.quantization_group_size, config.quantization_4bit_type)
    quantized.eval()
    questions = [row["question"] for row in data.forget]
    recalled, generations = recall_rows(quantized, tokenizer, data.fmt, data.forget, questions, config.max_new_tokens, config.batch_size)
    samples = [{"question": row["question"], "generation": g, "recalled": r, "recall_rule": recall_rule(row)}
               for row, g, r in zip(data.forget, generations, recalled, strict=True)]
    details = {"bits": float(bits), "quantized_share": quantized_share(quantized)}
    if bits == 4:
        details["blocksize"] = float(config.quantization_group_size)
    return AttackOutcome(recovery=recall_rate(recalled), measure="answer recall", per_sample=samples, details=details,
                         recall_rules=rule_counts(data.forget))


@register_attack(
    "quantization_8bit",
    paper=PAPER,
    summary="Answer recall after 8-bit quantisation (LLM.int8()'s row-wise absmax int8 weights) of every linear layer but the head.",
    family="weights",
)
def quantization_8bit(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, data: AuditData, config: AuditConfig) -> AttackOutcome:
    return _quantization_attack(8, model, tokenizer, data, config)


@register_attack(
    "quantization_4bit",
    paper=PAPER,
    summary="Answer recall after 4-bit quantisation (bitsandbytes' FP4, absmax blocks) of every linear layer but the head.",
    family="weights",
)
def quantization_4bit(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, data: AuditData, config: AuditConfig) -> AttackOutcome:
    return _quantization_attack(4, model, tokenizer, data, config)
