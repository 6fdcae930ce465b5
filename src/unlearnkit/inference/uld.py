"""ULD: an assistant that *remembers* the forget set, its logits subtracted from the target's at inference.

Ji et al., "Reversing the Forget-Retain Objectives: An Efficient LLM Unlearning
Framework from Logit Difference", NeurIPS 2024 (code ``UCSB-NLP-Chang/ULD``:
``uld/model/contrastllm.py``, ``uld/model/forget_losses.py``, ``configs/model_mode/uld.yaml``,
``configs/unlearn_loss/remember+uniform.yaml``, ``bashes/tofu/uld_train.sh``).

* The assistant is the target's first K decoder layers (K = 8) with its final
  norm and output head, weights copied, trained through LoRA adapters
  (r 16, α 32, dropout 0.05) with the *reversed* objectives

      L = ℓ̄(D_f⁺) + 5 · KL(U ‖ p_asst) on D_r⁺,

  the mean answer NLL on the forget set augmented with paraphrased answers, and
  the KL from the uniform distribution U over the vocabulary to the assistant's
  prediction on the retain set: up to 400 retain rows plus the forget questions
  with perturbed (wrong) answers. The assistant learns the forget answers and
  knows nothing else.
* Inference: ``l = l_target + w · l̃_asst`` with w = −0.8 (the TOFU evaluation's
  value; the config's default is −1), where the assistant's logits are zeroed
  at every token the target finds implausible: ``l̃_asst(v) = 0`` where
  ``log p_target(v) < max_u log p_target(u) + log f``, f = 0.01 (the TOFU
  evaluation's value; default 0.1). Plausible tokens (probability at least f
  times the top token's) are pushed down by what the assistant remembers; the
  others keep the target's logits.
* Training: learning rate 1e-3, batch 8 × gradient accumulation 2.

When the target has K layers or fewer (the tiny built-in benchmark's target
has one), the assistant is all of them: a copy of the whole target with LoRA.
The LoRA adapters are merged into the assistant when training ends (the same
function; a plain model for the quantisation and relearning audits) and the
assistant is saved as a model folder in the wrapper's folder.
"""

from __future__ import annotations

import copy
import math
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from unlearnkit import losses
from unlearnkit.errors import UnlearnkitError
from unlearnkit.inference.base import WrapData, WrappedModel, causal_lm_logits, register_wrapper
from unlearnkit.inference.offsets import (
    CachedDecodingMixin,
    IncrementalLogits,
    Optimisation,
    batch_of,
    check_same_tokenizer,
    encode_rows,
    optimise,
    paired_batches,
    training_summary,
)
from unlearnkit.modeling import load_model
from unlearnkit.parameters import Selection, apply_lora, decoder_layers
from unlearnkit.settings import check_field_types, check_seed, require_at_least, require_fraction, require_non_negative, require_positive

ASSISTANT_FOLDER = "assistant"


def uld_logits(target: torch.Tensor, assistant: torch.Tensor, weight: float, threshold: float) -> torch.Tensor:
    """ULD's combination ``l_target + w · l̃_asst`` over the last dimension (vocabulary), any leading shape.

    ``l̃_asst`` is the assistant's logits where the target's log-probability is at
    least ``max log-prob + log(threshold)`` and 0 elsewhere (a token exactly at
    the threshold keeps the assistant's logit). Computed in at least float32.
    """
    if target.shape != assistant.shape:
        raise ValueError(f"target logits {tuple(target.shape)} and assistant logits {tuple(assistant.shape)} must have one shape.")
    if not 0 < threshold <= 1:
        raise ValueError(f"threshold must be in (0, 1]; got {threshold}.")
    target = losses.at_least_float32(target)
    log_probs = torch.log_softmax(target, dim=-1)
    plausible = log_probs >= log_probs.amax(dim=-1, keepdim=True) + math.log(threshold)  # (..., V) bool
    masked = torch.where(plausible, losses.at_least_float32(assistant), torch.zeros_like(target))
    return target + weight * masked


@dataclass
class ULDConfig:
    """Settings of ULD (Ji et al., NeurIPS 2024); defaults are the authors' TOFU settings."""

    assistant_layers: int = field(
        default=8,
        metadata={"help": "K: the assistant is the target's first K decoder layers plus its final norm and head (authors: 8; "
                          "all layers when the target has fewer)."},
    )
    weight: float = field(
        default=-0.8,
        metadata={"help": "w in l_target + w l_assistant (authors' TOFU evaluation: -0.8; their config's default: -1)."},
    )
    mask_threshold: float = field(
        default=0.01,
        metadata={"help": "f: the assistant's logits count only where the target's probability is >= f x its top probability "
                          "(authors' TOFU evaluation: 0.01; their default: 0.1)."},
    )
    uniform_weight: float = field(default=5.0, metadata={"help": "Weight of KL(uniform || assistant) on the retain set (authors: 5)."})
    retain_rows: int = field(default=400, metadata={"help": "Retain rows sampled into the retain set D_r+ (authors: 400)."})
    paraphrases: bool = field(
        default=True,
        metadata={"help": "Add each forget row's paraphrased_answer (when it has one) to the forget set D_f+ (authors: paraphrases)."},
    )
    perturbed: bool = field(
        default=True,
        metadata={"help": "Add each forget question with its perturbed (wrong) answers (when it has them) to the retain set D_r+."},
    )
    lora_rank: int = field(default=16, metadata={"help": "LoRA rank of the assistant's adapters (authors: 16)."})
    lora_alpha: float = field(default=32.0, metadata={"help": "LoRA alpha (authors: 32)."})
    lora_dropout: float = field(default=0.05, metadata={"help": "LoRA dropout (authors: 0.05)."})
    learning_rate: float = field(default=1e-3, metadata={"help": "AdamW learning rate of the adapters (authors: 1e-3)."})
    num_epochs: int = field(default=5, metadata={"help": "Passes over the forget set D_f+ (TOFU's unlearning recipes: 5)."})
    batch_size: int = field(default=8, metadata={"help": "Forget rows per micro-batch, each paired with a retain row (authors: 8)."})
    gradient_accumulation_steps: int = field(default=2, metadata={"help": "Micro-batches per optimiser step (authors: 2)."})
    weight_decay: float = field(default=0.01, metadata={"help": "AdamW weight decay (TOFU: 0.01)."})
    warmup_ratio: float = field(default=0.2, metadata={"help": "Share of steps of linear warm-up, then linear decay (TOFU: 1 epoch of 5)."})
    max_grad_norm: float = field(default=1.0, metadata={"help": "Gradient clipping norm."})
    max_length: int = field(default=256, metadata={"help": "Maximum tokens per training example."})
    seed: int = field(default=0, metadata={"help": "Seed of the retain sample, the data order and the LoRA initialisation."})

    def __post_init__(self) -> None:
        check_field_types(self)
        require_at_least(1, assistant_layers=self.assistant_layers, retain_rows=self.retain_rows, lora_rank=self.lora_rank,
                         num_epochs=self.num_epochs, batch_size=self.batch_size,
                         gradient_accumulation_steps=self.gradient_accumulation_steps)
        require_at_least(2, max_length=self.max_length)
        require_fraction("mask_threshold", self.mask_threshold, low_open=True)
        require_fraction("lora_dropout", self.lora_dropout, high_open=True)
        require_positive(learning_rate=self.learning_rate, lora_alpha=self.lora_alpha, max_grad_norm=self.max_grad_norm)
        require_non_negative(uniform_weight=self.uniform_weight, weight_decay=self.weight_decay)
        require_fraction("warmup_ratio", self.warmup_ratio, high_open=True)
        check_seed("seed", self.seed)

    def optimisation(self) -> Optimisation:
        return Optimisation(self.learning_rate, self.weight_decay, self.warmup_ratio, self.gradient_accumulation_steps,
                            self.max_grad_norm)


@register_wrapper(
    "uld",
    config=ULDConfig,
    paper='Ji et al., "Reversing the Forget-Retain Objectives: An Efficient LLM Unlearning Framework from Logit Difference", '
          "NeurIPS 2024",
    summary="logits = target + w assistant (w -0.8) on the target's plausible tokens; the assistant (first K layers + LoRA) "
            "learns the forget set and is uniform on the retain set.",
    family="logits",
    needs_retain=True,
)
class ULD(CachedDecodingMixin, WrappedModel):
    """ULD (Ji et al., NeurIPS 2024): the target's logits minus a forget-set assistant's, on the target's plausible tokens."""

    def __init__(self, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, settings: ULDConfig,
                 assistant: PreTrainedModel) -> None:
        super().__init__(model, tokenizer, settings)
        self.assistant = assistant  # registered after the target: layer-based attacks find the target's layers first
        self.decoder = IncrementalLogits()

    def wrapped_logits(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        target = causal_lm_logits(self.model, input_ids, attention_mask)  # (B, T, V)
        assistant = causal_lm_logits(self.assistant, input_ids, attention_mask)  # (B, T, V)
        return uld_logits(target, assistant, self.settings.weight, self.settings.mask_threshold)

    def next_token_logits(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        target, assistant = self.decoder([self.model, self.assistant], input_ids, attention_mask)  # (B, V) each
        return uld_logits(target, assistant, self.settings.weight, self.settings.mask_threshold)

    # Saving and loading ---------------------------------------------------------------------------------------------
    def save_parts(self, folder: Path) -> dict[str, Any]:
        self.assistant.save_pretrained(folder / ASSISTANT_FOLDER, safe_serialization=True)
        return {"assistant": ASSISTANT_FOLDER, "assistant_layers": int(self.assistant.config.num_hidden_layers)}

    @classmethod
    def load_parts(cls, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, settings: ULDConfig, folder: Path,
                   parts: Mapping[str, Any]) -> ULD:
        name = parts.get("assistant")
        if not isinstance(name, str):
            raise UnlearnkitError(f"{folder}/wrapper.json lacks the assistant's folder (parts.assistant); build the wrapped model again.")
        assistant = load_model(folder / name, dtype=model.dtype).to(model.device)
        check_same_tokenizer(tokenizer, tokenizer, model, assistant, f"the assistant in {folder / name}")
        assistant.requires_grad_(False)
        return cls(model, tokenizer, settings, assistant.eval())

    # Building -------------------------------------------------------------------------------------------------------
    @classmethod
    def build(cls, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, data: WrapData, settings: ULDConfig,
              progress: bool = False) -> ULD:
        forget, retain = training_sets(data, settings)
        torch.manual_seed(settings.seed)  # the LoRA B matrices start at 0, the A matrices at random
        assistant = apply_lora(assistant_from(model, settings.assistant_layers), Selection(), rank=settings.lora_rank,
                               alpha=settings.lora_alpha, dropout=settings.lora_dropout)
        steps = train_assistant(assistant, tokenizer, data, forget, retain, settings, progress)
        merged = assistant.merge_and_unload()  # the same function as a plain model
        merged.requires_grad_(False)
        wrapped = cls(model, tokenizer, settings, merged.eval())
        wrapped.build_record = {**training_summary(steps), "assistant_layers": len(decoder_layers(merged)[1]),
                                "forget_plus_rows": len(forget), "retain_plus_rows": len(retain)}
        return wrapped


def assistant_from(model: PreTrainedModel, layers: int) -> PreTrainedModel:
    """A new model of the target's class: its first ``layers`` decoder layers (all, when it has fewer), embeddings, final
    norm and head, the weights copied (the target is not changed, and shares no tensor with it)."""
    prefix, blocks = decoder_layers(model)
    keep = min(layers, len(blocks))
    config = copy.deepcopy(model.config)
    config.num_hidden_layers = keep
    if isinstance(getattr(config, "layer_types", None), list):  # per-layer attention kinds (sliding / full), where present
        config.layer_types = config.layer_types[:keep]
    dropped = tuple(f"{prefix}.{index}." for index in range(keep, len(blocks)))
    state = {key: value for key, value in model.state_dict().items() if not key.startswith(dropped)}
    assistant = type(model)(config)
    assistant.load_state_dict(state, strict=True)  # copies into the new model's own tensors (its head stays tied as configured)
    return assistant.to(device=model.device, dtype=model.dtype)


def training_sets(data: WrapData, settings: ULDConfig) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """(D_f⁺, D_r⁺) as (question, answer) pairs: the forget rows (+ paraphrased answers) and a retain sample (+ perturbed answers)."""
    if not data.forget:
        raise UnlearnkitError("ULD needs forget rows: the assistant learns them.")
    if not data.retain and not (settings.perturbed and any(_perturbed(row) for row in data.forget)):
        raise UnlearnkitError("ULD needs retain rows (or forget rows with perturbed_answer), on which the assistant is made uniform: "
                              "give retain data.")
    forget = [(row["question"], row["answer"]) for row in data.forget]
    if settings.paraphrases:
        forget += [(row["question"], row["paraphrased_answer"]) for row in data.forget
                   if isinstance(row.get("paraphrased_answer"), str) and row["paraphrased_answer"].strip()]
    chosen = list(range(len(data.retain)))
    if len(chosen) > settings.retain_rows:
        chosen = sorted(random.Random(settings.seed).sample(chosen, settings.retain_rows))
    retain = [(data.retain[i]["question"], data.retain[i]["answer"]) for i in chosen]
    if settings.perturbed:
        retain += [(row["question"], answer) for row in data.forget for answer in _perturbed(row)]
    return forget, retain


def _perturbed(row: Mapping[str, Any]) -> list[str]:
    value = row.get("perturbed_answer")
    answers = [value] if isinstance(value, str) else list(value) if isinstance(value, Sequence) else []
    return [answer for answer in answers if isinstance(answer, str) and answer.strip()]


def train_assistant(
    assistant: torch.nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    data: WrapData,
    forget_pairs: Sequence[tuple[str, str]],
    retain_pairs: Sequence[tuple[str, str]],
    settings: ULDConfig,
    progress: bool,
) -> list[float]:
    """Train the assistant's adapters on ``ℓ̄(D_f⁺) + uniform_weight · KL(U ‖ p_asst)`` over paired batches; the step losses."""
    forget = encode_rows(tokenizer, data.fmt, forget_pairs, settings.max_length)
    retain = encode_rows(tokenizer, data.fmt, retain_pairs, settings.max_length)
    batches = paired_batches(len(forget), len(retain), settings.batch_size, settings.num_epochs, settings.seed)
    device = next(assistant.parameters()).device
    pad = tokenizer.pad_token_id
    assistant.train()  # LoRA dropout on

    def loss_of(pair: tuple[list[int], list[int]]) -> torch.Tensor:
        forget_batch = batch_of(forget, pair[0], pad, device)
        retain_batch = batch_of(retain, pair[1], pad, device)
        remember = losses.mean_nll(causal_lm_logits(assistant, forget_batch["input_ids"], forget_batch["attention_mask"]),
                                   forget_batch["labels"])
        flat = losses.uniform_kl_loss(causal_lm_logits(assistant, retain_batch["input_ids"], retain_batch["attention_mask"]),
                          retain_batch["labels"])
        return remember + settings.uniform_weight * flat

    try:
        return optimise([p for p in assistant.parameters() if p.requires_grad], batches, loss_of, settings.optimisation(),
                        progress, "ULD assistant")
    finally:
        assistant.eval()
