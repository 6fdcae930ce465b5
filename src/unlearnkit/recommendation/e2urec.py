"""E2URec: a LoRA student distilled from a forgetting teacher and a remembering teacher.

Wang, Hangyu; Lin, Jianghao; Chen, Bo; et al., "Towards Efficient and Effective Unlearning of Large Language
Models for Recommendation", Frontiers of Computer Science, 2024 (arXiv 2403.03536); authors' code
``justarter/E2URec`` (``unlearning_e2urec.py``, ``utils.py``).

* Augmented model z_aug: the original model trained further on D_f with the plain NLL; it exaggerates what
  the original learned from the forgotten users.
* Forgetting teacher: z_FGT = z_orig − α·ReLU(z_aug − z_orig), per vocabulary entry at every answer-window
  position, α = 2: every logit D_f pushed up is pushed down instead, twice as far.
* Remembering teacher: the original model, p_orig.
* Student: the original plus LoRA adapters (r 16, α_lora 32, dropout 0.05, on the attention query and value
  projections, T5's ``q`` and ``v``), the base frozen, trained with
  L_FGT = mean CE(p_FGT ‖ p_θ) on D_f, L_REM = NLL_θ(D_r) + mean CE(p_orig ‖ p_θ) on D_r and
  L = w·L_REM + (1 − w)·L_FGT, w = 0.6; the first ``forget_epochs`` epochs train L_FGT alone, later ones zip
  forget and retain batches (as many steps as D_f has batches). AdamW, lr 1e-3, no schedule, no clipping.

The functions up to :func:`e2urec_objective` are pure (tensors in, tensor out); :func:`unlearn_e2urec` runs them.
"""

from __future__ import annotations

import copy
import logging
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor
from transformers import PreTrainedModel

from unlearnkit import losses
from unlearnkit.errors import UnlearnkitError
from unlearnkit.recommendation.model import answer_window, batches, collate, mean_answer_nll, window_logits, window_targets
from unlearnkit.settings import check_choice, check_field_types, check_seed, require_at_least, require_fraction, require_positive

logger = logging.getLogger("unlearnkit")

# Which answer-window positions the distillation CE averages over.
KD_POSITIONS = ("padded", "answer")


@dataclass(frozen=True)
class E2URecConfig:
    """E2URec's settings; also the unlearning budget (epochs, lr, batch, LoRA) its NPO baseline gets."""

    alpha: float = field(default=2.0, metadata={"help": "Forgetting teacher: z_orig - alpha * ReLU(z_aug - z_orig) (authors: 2)."})
    weight: float = field(default=0.6, metadata={"help": "w in L = w * L_REM + (1 - w) * L_FGT (authors' --weight 0.6)."})
    forget_epochs: int = field(default=1, metadata={"help": "Leading epochs that train L_FGT alone (authors' forget_epoch 1)."})
    unlearn_epochs: int = field(
        default=20, metadata={"help": "Unlearning epochs (authors: 20 epochs, checkpoint at step 1000 of ML-1M)."})
    unlearn_learning_rate: float = field(default=1e-3, metadata={"help": "AdamW learning rate of the LoRA student (authors: 1e-3)."})
    unlearn_batch_size: int = field(default=16, metadata={"help": "Rows per forget (and per retain) batch (authors: 16)."})
    unlearn_weight_decay: float = field(default=0.01, metadata={"help": "AdamW weight decay (torch's default, as the authors' code)."})
    lora_rank: int = field(default=16, metadata={"help": "LoRA rank r (authors: 16)."})
    lora_alpha: float = field(default=32.0, metadata={"help": "LoRA scaling numerator (authors: 32)."})
    lora_dropout: float = field(default=0.05, metadata={"help": "Dropout on the LoRA input (authors: 0.05)."})
    lora_modules: str = field(default="q_proj,v_proj", metadata={"help": "Modules given adapters (T5's q,v are Llama's q_proj,v_proj)."})
    kd_positions: str = field(
        default="padded",
        metadata={"help": "Positions the distillation CE averages over: 'padded' (the reference: every answer-window position "
                          "of the batch, pads of shorter answers included) or 'answer' (real answer tokens only)."},
    )
    augment_epochs: int = field(
        default=5, metadata={"help": "Epochs on D_f that make the augmented model (authors: 1200 steps at batch 16; scaled)."})
    augment_learning_rate: float = field(
        default=1e-3, metadata={"help": "Learning rate of the augmented model's NLL training (authors: 5e-5 on T5-base)."})
    unlearn_seed: int = field(default=0, metadata={"help": "Seed of the batch order and LoRA initialisation."})

    def __post_init__(self) -> None:
        check_field_types(self)
        require_positive(alpha=self.alpha, unlearn_learning_rate=self.unlearn_learning_rate, lora_alpha=self.lora_alpha,
                         augment_learning_rate=self.augment_learning_rate)
        require_fraction("weight", self.weight)
        require_fraction("lora_dropout", self.lora_dropout, high_open=True)
        require_fraction("unlearn_weight_decay", self.unlearn_weight_decay)
        require_at_least(0, forget_epochs=self.forget_epochs)
        require_at_least(1, unlearn_epochs=self.unlearn_epochs, unlearn_batch_size=self.unlearn_batch_size,
                         lora_rank=self.lora_rank, augment_epochs=self.augment_epochs)
        if self.forget_epochs > self.unlearn_epochs:
            raise UnlearnkitError(f"forget_epochs ({self.forget_epochs}) must be at most unlearn_epochs ({self.unlearn_epochs}).")
        check_choice("kd_positions", self.kd_positions, KD_POSITIONS)
        if not self.modules():
            raise UnlearnkitError("lora_modules is empty; name the modules to adapt, e.g. q_proj,v_proj.")
        check_seed("unlearn_seed", self.unlearn_seed)

    def modules(self) -> list[str]:
        return [name.strip() for name in self.lora_modules.split(",") if name.strip()]


# ---------------------------------------------------------------------------------------------- pure functions


def forgetting_teacher_logits(original_logits: Tensor, augmented_logits: Tensor, alpha: float) -> Tensor:
    """z_FGT = z_orig − α·ReLU(z_aug − z_orig), elementwise on raw logits; any shape (…, V). Detached: a teacher is a constant."""
    if original_logits.shape != augmented_logits.shape:
        raise ValueError(f"original and augmented logits must have one shape; got {tuple(original_logits.shape)} and "
                         f"{tuple(augmented_logits.shape)}.")
    original = losses.at_least_float32(original_logits.detach())
    return original - alpha * F.relu(losses.at_least_float32(augmented_logits.detach()) - original)


def soft_cross_entropy(teacher_logits: Tensor, student_logits: Tensor, mask: Tensor | None = None) -> Tensor:
    """Mean over positions of CE(p_teacher ‖ p_student) = −Σ_v p_t(v) log p_s(v); logits (B, A, V), ``mask`` (B, A).

    ``mask`` None averages over every position (the reference's ``.sum(-1).mean()``); otherwise over the
    positions where it is 1. The teacher is detached.
    """
    if teacher_logits.shape != student_logits.shape:
        raise ValueError(f"teacher and student logits must have one shape; got {tuple(teacher_logits.shape)} and "
                         f"{tuple(student_logits.shape)}.")
    teacher = torch.softmax(losses.at_least_float32(teacher_logits.detach()), dim=-1)
    per_position = -(teacher * torch.log_softmax(losses.at_least_float32(student_logits), dim=-1)).sum(dim=-1)  # (B, A)
    if mask is None:
        return per_position.mean()
    if float(mask.sum()) == 0:
        raise ValueError("mask selects no position to average the cross-entropy over.")
    return (per_position * mask).sum() / mask.sum()


def e2urec_objective(forget_ce: Tensor, retain_nll: Tensor | None, retain_ce: Tensor | None, weight: float, forget_only: bool) -> Tensor:
    """L = L_FGT while ``forget_only`` (the leading epochs), else w·(NLL_r + CE_r) + (1 − w)·L_FGT."""
    if forget_only:
        return forget_ce
    if retain_nll is None or retain_ce is None:
        raise ValueError("the combined E2URec loss needs the retain NLL and the retain cross-entropy.")
    return weight * (retain_nll + retain_ce) + (1.0 - weight) * forget_ce


# ---------------------------------------------------------------------------------------------- training


def with_lora(model: PreTrainedModel, config: E2URecConfig) -> PreTrainedModel:
    """A copy of ``model`` (the input stays as it is) with LoRA adapters; only the adapters train."""
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(config.unlearn_seed)  # the adapters' A matrices are drawn now
    adapter = LoraConfig(r=config.lora_rank, lora_alpha=config.lora_alpha, lora_dropout=config.lora_dropout,
                         target_modules=config.modules(), bias="none", task_type="CAUSAL_LM")
    try:
        return get_peft_model(copy.deepcopy(model), adapter)
    except ValueError as error:  # a module name the model lacks
        raise UnlearnkitError(f"lora_modules {config.lora_modules!r} does not fit the model: {error}") from None


def distillation_mask(batch: dict[str, Tensor], kd_positions: str) -> Tensor | None:
    """None (every window position, the reference) or the window's real-answer mask (B, A)."""
    return None if kd_positions == "padded" else answer_window(batch)[1].to(batch["input_ids"].device)


def paired_steps(
    forget: Sequence[dict], retain: Sequence[dict], config: E2URecConfig, pad_token_id: int, device: torch.device,
) -> Iterator[tuple[int, dict[str, Tensor], dict[str, Tensor] | None]]:
    """(epoch, forget batch, retain batch or None) for every step: forget batches alone in the leading epochs, then
    forget and retain batches zipped (as many steps as D_f has batches), each epoch in a fresh order."""
    generator = torch.Generator().manual_seed(config.unlearn_seed)

    def moved(chunk: Sequence[dict]) -> dict[str, Tensor]:
        return {key: value.to(device) for key, value in collate(chunk, pad_token_id).items()}

    for epoch in range(1, config.unlearn_epochs + 1):
        forget_batches = batches(forget, config.unlearn_batch_size, generator)
        if epoch <= config.forget_epochs:
            for chunk in forget_batches:
                yield epoch, moved(chunk), None
        else:
            for chunk, retain_chunk in zip(forget_batches, batches(retain, config.unlearn_batch_size, generator), strict=False):
                yield epoch, moved(chunk), moved(retain_chunk)


def steps_per_run(forget: int, retain: int, config: E2URecConfig) -> int:
    per_forget_epoch = math.ceil(forget / config.unlearn_batch_size)
    per_joint_epoch = min(per_forget_epoch, math.ceil(retain / config.unlearn_batch_size))
    return config.forget_epochs * per_forget_epoch + (config.unlearn_epochs - config.forget_epochs) * per_joint_epoch


def unlearn_e2urec(
    original: PreTrainedModel,
    augmented: PreTrainedModel,
    forget: Sequence[dict],
    retain: Sequence[dict],
    pad_token_id: int,
    config: E2URecConfig,
    show_progress: bool = True,
) -> tuple[PreTrainedModel, dict]:
    """Train the LoRA student; returns it (a peft model over a copy of ``original``) and its training record.

    ``original`` and ``augmented`` are only read (eval mode, no gradients); the features are those of
    :func:`unlearnkit.recommendation.model.encode_rows`.
    """
    from unlearnkit.recommendation.model import count_trainable, train_loop

    if not forget:
        raise UnlearnkitError("E2URec needs at least one forget row.")
    if config.unlearn_epochs > config.forget_epochs and not retain:
        raise UnlearnkitError("E2URec's combined epochs need retain rows; none were given.")
    student = with_lora(original, config)
    original.eval()
    augmented.eval()
    device = next(student.parameters()).device
    terms: dict[str, list[float]] = {"forget_ce": [], "retain_nll": [], "retain_ce": []}

    def step_of(epoch: int, forget_batch: dict[str, Tensor], retain_batch: dict[str, Tensor] | None) -> Callable[[], Tensor]:
        def step() -> Tensor:
            with torch.no_grad():
                # Teachers on the forget batch's answer window: (B, A, V) each.
                z_orig = window_logits(original, forget_batch)
                z_aug = window_logits(augmented, forget_batch)
            student_forget = window_logits(student, forget_batch)  # (B, A, V)
            forget_ce = soft_cross_entropy(forgetting_teacher_logits(z_orig, z_aug, config.alpha), student_forget,
                                           distillation_mask(forget_batch, config.kd_positions))
            terms["forget_ce"].append(float(forget_ce.detach()))
            if retain_batch is None:
                return e2urec_objective(forget_ce, None, None, config.weight, forget_only=True)
            student_retain = window_logits(student, retain_batch)  # (B, A, V)
            retain_nll = mean_answer_nll(student_retain, window_targets(retain_batch))
            with torch.no_grad():
                remembered = window_logits(original, retain_batch)  # (B, A, V)
            retain_ce = soft_cross_entropy(remembered, student_retain, distillation_mask(retain_batch, config.kd_positions))
            terms["retain_nll"].append(float(retain_nll.detach()))
            terms["retain_ce"].append(float(retain_ce.detach()))
            return e2urec_objective(forget_ce, retain_nll, retain_ce, config.weight, forget_only=False)

        return step

    steps = (step_of(*item) for item in paired_steps(forget, retain, config, pad_token_id, device))
    record = train_loop(student, steps, steps_per_run(len(forget), len(retain), config), config.unlearn_learning_rate,
                        config.unlearn_weight_decay, "E2URec student", show_progress)
    record["trainable_parameters"] = count_trainable(student)
    record["mean_terms"] = {name: (sum(values) / len(values) if values else None) for name, values in terms.items()}
    return student, record
