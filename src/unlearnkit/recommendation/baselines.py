"""NPO on the recommendation task, with E2URec's LoRA budget: the baseline E2URec is compared with.

Zhang, Ruiqi; Lin, Licong; Bai, Yu; Mei, Song, "Negative Preference Optimization: From Catastrophic Collapse to
Effective Unlearning", COLM 2024. L = −(2/β)·mean log σ(β·(ℓ_θ − ℓ_ref)) on D_f, ℓ the sequence-sum NLL of the
"Yes."/"No." answer (``losses.npo_loss``), plus γ·NLL_θ(D_r) (NPO+RT); π_ref is the original model. It trains the
same LoRA adapters, for the same steps, batches and learning rate as E2URec (forget and retain batches zipped from
the first epoch: NPO has no forget-only phase).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor
from transformers import PreTrainedModel

from unlearnkit import losses
from unlearnkit.errors import UnlearnkitError
from unlearnkit.recommendation.e2urec import E2URecConfig, paired_steps, steps_per_run, with_lora
from unlearnkit.recommendation.model import (
    count_trainable,
    mean_answer_nll,
    sequence_answer_nll,
    train_loop,
    window_logits,
    window_targets,
)
from unlearnkit.settings import check_field_types, require_non_negative, require_positive


@dataclass(frozen=True)
class NPOBaselineConfig:
    npo_beta: float = field(default=0.1, metadata={"help": "NPO's inverse temperature beta (the NPO authors: 0.1)."})
    npo_retain_weight: float = field(default=1.0, metadata={"help": "gamma, the weight of the retain NLL (NPO+RT: 1)."})

    def __post_init__(self) -> None:
        check_field_types(self)
        require_positive(npo_beta=self.npo_beta)
        require_non_negative(npo_retain_weight=self.npo_retain_weight)


def unlearn_npo(
    original: PreTrainedModel,
    forget: Sequence[dict],
    retain: Sequence[dict],
    pad_token_id: int,
    budget: E2URecConfig,
    config: NPOBaselineConfig,
    show_progress: bool = True,
) -> tuple[PreTrainedModel, dict]:
    """Train LoRA adapters on a copy of ``original`` with NPO+RT; returns the peft model and its training record."""
    if not forget or not retain:
        raise UnlearnkitError("The NPO baseline needs forget rows and retain rows.")
    # Every epoch zips forget and retain batches: NPO's objective has its retain term from the start.
    schedule = dataclasses.replace(budget, forget_epochs=0)
    student = with_lora(original, schedule)
    original.eval()
    device = next(student.parameters()).device

    def step_of(epoch: int, forget_batch: dict[str, Tensor], retain_batch: dict[str, Tensor] | None) -> Callable[[], Tensor]:
        def step() -> Tensor:
            forget_targets = window_targets(forget_batch)  # (B, A)
            with torch.no_grad():
                reference = sequence_answer_nll(window_logits(original, forget_batch), forget_targets)  # (B,)
            nll = sequence_answer_nll(window_logits(student, forget_batch), forget_targets)  # (B,)
            loss = losses.npo_loss(nll, reference, config.npo_beta)
            retain_nll = mean_answer_nll(window_logits(student, retain_batch), window_targets(retain_batch))
            return loss + config.npo_retain_weight * retain_nll

        return step

    steps = (step_of(*item) for item in paired_steps(forget, retain, schedule, pad_token_id, device))
    record = train_loop(student, steps, steps_per_run(len(forget), len(retain), schedule), budget.unlearn_learning_rate,
                        budget.unlearn_weight_decay, "NPO student", show_progress)
    record["trainable_parameters"] = count_trainable(student)
    return student, record
