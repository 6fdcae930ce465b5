"""PDU: unlearning as constrained optimisation, solved by primal-dual descent-ascent.

Entesari et al., "Constrained Entropic Unlearning: A Primal-Dual Framework for Large
Language Models", arXiv:2506.05314, 2025; the authors' code is OpenUnlearning's
src/trainer/unlearn/pdu.py (at d3d7cf9) with the recipes of its community/methods/PDU/run.sh.

The problem is ``min_θ L_f(θ)  subject to  L_r(θ) <= ε``: forget as much as possible
while the retain loss stays within a bound. Each micro-batch descends on the Lagrangian
and then ascends on the multiplier, as the authors' code does (``dual_update_upon="step"``)::

    L(θ, λ) = L_f(θ) + λ · (L_r(θ) − ε)                      (primal: the loss of this micro-batch)
    λ ← max(0, λ + dual_lr · (L_r − ε))                       (dual: L_r of the same micro-batch, detached)

so the retain weight λ is not tuned but found: it rises while the retain loss is above ε
and falls back toward 0 while it is below. During the first ``dual_warmup_epochs`` epochs
λ stays at ``initial_lambda`` (the primal step still descends on the full Lagrangian); the
authors enable the update at the end of the epoch that completes the warm-up, here once
the Trainer's ``state.epoch`` (epochs done) reaches it, the same point for whole numbers.

The forget loss ``L_f`` drives the next-token distribution at the forget answer's
positions toward uniform, and is bounded below, unlike gradient ascent:

* ``forget_loss="logit_margin"`` (the paper's loss): ``mean_t (max_v z_t,v − mean_v z_t,v)²``,
  softmax-free, zero when the logits are flat;
* ``forget_loss="uniform"`` (an entropy-style alternative): ``mean_t −(1/V) Σ_v log p_θ(v)``,
  the cross-entropy from the uniform distribution, minimal (log V) at uniform.

Defaults are the authors' TOFU recipe (run.sh): ``initial_lambda`` 100, ``dual_lr`` 5,
``retain_epsilon`` 0.3, ``dual_warmup_epochs`` 5, 10 epochs, lr 1e-5. Their MUSE recipe is
``initial_lambda=50 dual_lr=1 dual_warmup_epochs=3`` with ``retain_epsilon`` 1.5 (News) or
0.1 (Books) for Llama-2-7B. ``retain_epsilon=None`` measures the bound instead: the retain
loss of the model before any update (on the first micro-batch) times ``1 + retain_slack``.

Where this differs from the authors' code, and how to get theirs:

* The logit-margin loss averages over the positions that predict the answer tokens
  (``logits[t−1]`` for each answer label ``t``). The authors' code masks the logits with
  the unshifted labels, one position later: the first answer token's prediction is left
  out and the position after the answer's last token is included.
  ``forget_alignment="unshifted"`` restores that.
* λ is updated with the retain loss averaged over the processes, so every process holds
  the same λ; the authors' code updates each process's λ from its own micro-batch.

λ and ε live in a :class:`DualVariable` callback that is saved in every checkpoint, so a
resumed run continues with the same λ. The training log gains ``dual_lambda`` (after the
latest update), ``retain_epsilon`` and ``retain_loss`` (the latest micro-batch's) at every
logging step.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import Any

from transformers import PreTrainedModel, TrainerCallback
from transformers.trainer_callback import ExportableState

from unlearnkit import distributed, losses
from unlearnkit.errors import UnlearnkitError
from unlearnkit.methods.base import (
    MethodConfig,
    UnlearnTrainer,
    check_retain_kl_positions,
    check_retain_loss,
    register_method,
    retain_kl_positions_field,
)
from unlearnkit.settings import check_choice

logger = logging.getLogger("unlearnkit")

FORGET_LOSSES = {
    "logit_margin": losses.logit_margin_flattening_loss,
    "uniform": losses.uniform_cross_entropy_loss,
}
FORGET_ALIGNMENTS = ("shifted", "unshifted")


@dataclass
class PDUConfig(MethodConfig):
    forget_loss: str = field(
        default="logit_margin",
        metadata={"help": "Forget objective: "
                          "'logit_margin' (the paper's (max z - mean z)^2) or 'uniform' (cross-entropy from the uniform distribution)."},
    )
    forget_alignment: str = field(
        default="shifted",
        metadata={"help": "Logit positions of the forget loss: 'shifted' (those predicting the answer tokens) or 'unshifted' "
                          "(the answer tokens' own positions, one later: the authors' code; logit_margin only)."},
    )
    retain_loss: str = field(
        default="nll",
        metadata={"help": "Constrained retain loss: 'nll' (answer NLL) or 'kl' (KL to the reference model)."},
    )
    retain_kl_positions: str = retain_kl_positions_field()
    retain_epsilon: float | None = field(
        default=0.3,
        metadata={"help": "Bound epsilon on the retain loss (authors: 0.3 on TOFU; MUSE News 1.5, Books 0.1). None: the retain loss "
                          "of the model before unlearning on the first micro-batch, times 1 + retain_slack (needs retain_loss 'nll')."},
    )
    retain_slack: float = field(
        default=0.1,
        metadata={"help": "With retain_epsilon None: how far (as a fraction) the retain loss may rise above its starting value."},
    )
    initial_lambda: float = field(
        default=100.0,
        metadata={"help": "Starting value of the multiplier lambda (the retain weight), >= 0 (authors: 100 on TOFU, 50 on MUSE)."},
    )
    dual_lr: float = field(
        default=5.0,
        metadata={"help": "Step size of the dual ascent on lambda after each micro-batch (authors: 5 on TOFU, 1 on MUSE; "
                          "0 keeps lambda fixed)."},
    )
    dual_warmup_epochs: float = field(
        default=5.0,
        metadata={"help": "Epochs during which lambda stays at initial_lambda before the dual updates start "
                          "(authors: 5 on TOFU, 3 on MUSE; 0: from the first micro-batch)."},
    )
    num_epochs: float = field(default=10.0, metadata={"help": "Passes over the forget set (authors: 10 on TOFU and MUSE)."})
    warmup_ratio: float = field(default=0.1, metadata={"help": "Fraction of steps for learning-rate warm-up (one epoch of ten)."})

    def __post_init__(self) -> None:
        super().__post_init__()
        check_choice("forget_loss", self.forget_loss, FORGET_LOSSES)
        check_choice("forget_alignment", self.forget_alignment, FORGET_ALIGNMENTS)
        if self.forget_alignment == "unshifted" and self.forget_loss != "logit_margin":
            raise UnlearnkitError("forget_alignment 'unshifted' (the authors' mask) applies to forget_loss 'logit_margin' only; "
                                  "set forget_alignment=shifted or forget_loss=logit_margin.")
        check_retain_loss(self.retain_loss)
        check_retain_kl_positions(self.retain_kl_positions)
        for name in ("retain_slack", "initial_lambda", "dual_lr", "dual_warmup_epochs"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0):
                raise UnlearnkitError(f"{name} must be a finite number >= 0, got {value}.")
        if self.retain_epsilon is not None and not (math.isfinite(self.retain_epsilon) and self.retain_epsilon >= 0):
            raise UnlearnkitError(f"retain_epsilon must be a finite number >= 0 (or None to measure it), got {self.retain_epsilon}.")
        if self.retain_epsilon is None and self.retain_loss == "kl":
            raise UnlearnkitError(
                "retain_epsilon must be set when retain_loss is 'kl': the model before unlearning has KL 0 to itself, "
                "so a bound measured from it could never be met. Set retain_epsilon (e.g. 0.05) or use retain_loss 'nll'."
            )
        if self.dual_lr > 0 and self.dual_warmup_epochs >= self.num_epochs:
            logger.warning("pdu: dual_warmup_epochs=%g >= num_epochs=%g, so lambda stays at initial_lambda=%g for the whole run.",
                           self.dual_warmup_epochs, self.num_epochs, self.initial_lambda)

    def needs_reference(self) -> bool:
        return self.retain_loss == "kl"


class DualVariable(TrainerCallback, ExportableState):
    """The multiplier λ and the bound ε, with the latest retain loss; a callback so that checkpoints carry them.

    ``ExportableState`` puts all three in each checkpoint's trainer state, and the Trainer
    rebuilds this callback from them when a run resumes.
    """

    def __init__(self, multiplier: float, step_size: float, epsilon: float | None = None) -> None:
        self.multiplier = multiplier
        self.step_size = step_size
        self.epsilon = epsilon
        self.last_retain_loss: float | None = None

    def state(self) -> dict:
        return {
            "args": {"multiplier": self.multiplier, "step_size": self.step_size, "epsilon": self.epsilon},
            "attributes": {"last_retain_loss": self.last_retain_loss},
        }

    def update(self, retain_loss: float) -> None:
        """One projected dual-ascent step from a micro-batch's retain loss."""
        self.multiplier = losses.dual_ascent_step(self.multiplier, retain_loss, self.epsilon, self.step_size)


@register_method(
    "pdu",
    config=PDUConfig,
    paper='Entesari et al., "Constrained Entropic Unlearning: A Primal-Dual Framework for Large Language Models", arXiv:2506.05314, 2025',
    summary="min L_f s.t. L_r <= eps: descend on L_f + lambda (L_r - eps), then lambda <- max(0, lambda + dual_lr (L_r - eps)) "
            "after dual_warmup_epochs; defaults: the authors' TOFU recipe.",
)
class PDU(UnlearnTrainer):
    """Primal-dual unlearning (Entesari et al., 2025): a flattening forget loss under a retain-loss bound."""

    def setup(self) -> None:
        config = self.method_config
        # Restoring the callback's saved state on resume is off by default in transformers.
        self.args.restore_callback_states_from_checkpoint = True
        self.add_callback(DualVariable(config.initial_lambda, config.dual_lr, config.retain_epsilon))

    @property
    def dual(self) -> DualVariable:
        # Looked up each time: resuming from a checkpoint replaces the callback with a restored copy.
        return next(cb for cb in self.callback_handler.callbacks if isinstance(cb, DualVariable))

    def dual_updates_started(self) -> bool:
        """Whether the warm-up is over: ``state.epoch`` counts the epochs done (fractional inside an epoch)."""
        return (self.state.epoch or 0.0) >= self.method_config.dual_warmup_epochs - 1e-9

    def forget_loss(self, model: PreTrainedModel, forget: dict[str, Any]) -> Any:
        config = self.method_config
        logits = self.logits(model, forget)
        if config.forget_loss == "logit_margin":
            return losses.logit_margin_flattening_loss(logits, forget["labels"], shift=config.forget_alignment == "shifted")
        return FORGET_LOSSES[config.forget_loss](logits, forget["labels"])

    def compute_loss(self, model: PreTrainedModel, inputs: dict[str, Any], return_outputs: bool = False, num_items_in_batch: Any = None):
        config = self.method_config
        dual = self.dual
        forget_term = self.forget_loss(model, inputs["forget"])
        self.record(forget_loss=forget_term)
        retain_term = self.retain_loss(model, inputs["retain"], config.retain_loss)
        # The processes' mean, so that every process moves lambda (and measures epsilon) alike.
        shares = distributed.gather([float(retain_term.detach())])
        retain_value = sum(shares) / len(shares)
        if dual.epsilon is None:
            # Nothing has been updated yet, so this is the retain loss of the model before unlearning.
            dual.epsilon = retain_value * (1.0 + config.retain_slack)
        loss = losses.primal_dual_lagrangian(forget_term, retain_term, dual.multiplier, dual.epsilon)
        dual.last_retain_loss = retain_value
        if self.dual_updates_started():
            dual.update(retain_value)
        return (loss, None) if return_outputs else loss

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        """Add the dual state to each training-loss line, so the log shows how lambda moved."""
        if "loss" in logs:
            dual = self.dual
            extra: dict[str, Any] = {"dual_lambda": dual.multiplier, "retain_epsilon": dual.epsilon}
            if dual.last_retain_loss is not None:
                extra["retain_loss"] = dual.last_retain_loss
            logs = {**logs, **extra}
        super().log(logs, start_time)
