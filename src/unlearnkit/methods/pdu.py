"""PDU: unlearning as constrained optimisation, solved by primal-dual descent-ascent.

Entesari et al., "Constrained Entropic Unlearning: A Primal-Dual Framework for Large
Language Models", arXiv:2506.05314, 2025.

The problem is ``min_θ L_f(θ)  subject to  L_r(θ) <= ε``: forget as much as possible
while the retain loss stays within a bound. Each optimiser step descends on the
Lagrangian and then ascends on the multiplier::

    L(θ, λ) = L_f(θ) + λ · (L_r(θ) − ε)                      (primal step on θ)
    λ ← max(0, λ + dual_lr · (L_r − ε))                       (after the step; L_r detached,
                                                                its mean over the step's micro-batches)

so the retain weight λ is not tuned but found: it rises while the retain loss is
above ε and falls back toward 0 while it is below. The forget loss ``L_f`` drives the
next-token distribution at every answer position of the forget batch toward
uniform, and is bounded below, unlike gradient ascent:

* ``forget_loss="logit_margin"`` (the paper's loss): ``mean_t (max_v z_t,v − mean_v z_t,v)²``,
  softmax-free, zero when the logits are flat;
* ``forget_loss="uniform"`` (an entropy-style alternative): ``mean_t −(1/V) Σ_v log p_θ(v)``,
  the cross-entropy from the uniform distribution, minimal (log V) at uniform; the
  paper prefers its own loss for needing no softmax and keeping its gradient near
  uniform.

Choices where the paper leaves room: the forget loss is averaged over the answer
positions (OpenUnlearning's port averages over every position, prompt and padding
included). ``retain_epsilon=None`` measures the bound: the retain loss of the
model before any update (on the first training micro-batch) times ``1 + retain_slack``
(default 0.1, i.e. allow 10% above the starting retain NLL); a retain loss of
``kl`` starts at 0, so that needs an explicit ``retain_epsilon``. ``dual_lr`` 1.0 and
``initial_lambda`` 1.0 are OpenUnlearning's defaults (its ``dual_step_size`` and the
starting retain weight). λ and ε live in a :class:`DualVariable` callback that is
saved in every checkpoint, so a resumed run continues with the same λ. The training
log gains ``dual_lambda`` (after the step's update), ``retain_epsilon`` and
``retain_loss`` (the mean of the latest step) at every logging step.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from transformers import PreTrainedModel, TrainerCallback
from transformers.trainer_callback import ExportableState

from unlearnkit import losses
from unlearnkit.errors import UnlearnkitError
from unlearnkit.methods.base import MethodConfig, UnlearnTrainer, check_retain_loss, register_method
from unlearnkit.settings import check_choice

FORGET_LOSSES = {
    "logit_margin": losses.logit_margin_flattening_loss,
    "uniform": losses.uniform_cross_entropy_loss,
}


@dataclass
class PDUConfig(MethodConfig):
    forget_loss: str = field(
        default="logit_margin",
        metadata={"help": "Forget objective: "
                          "'logit_margin' (the paper's (max z - mean z)^2) or 'uniform' (cross-entropy from the uniform distribution)."},
    )
    retain_loss: str = field(
        default="nll",
        metadata={"help": "Constrained retain loss: 'nll' (answer NLL) or 'kl' (KL to the reference model)."},
    )
    retain_epsilon: float | None = field(
        default=None,
        metadata={"help": "Bound epsilon on the retain loss. None: the retain loss of the model before unlearning on the first batch, "
                          "times 1 + retain_slack (needs retain_loss 'nll')."},
    )
    retain_slack: float = field(
        default=0.1,
        metadata={"help": "With retain_epsilon None: how far (as a fraction) the retain loss may rise above its starting value."},
    )
    initial_lambda: float = field(default=1.0, metadata={"help": "Starting value of the multiplier lambda (the retain weight), >= 0."})
    dual_lr: float = field(
        default=1.0,
        metadata={"help": "Step size of the dual ascent on lambda after each optimiser step (0 keeps lambda fixed)."},
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        check_choice("forget_loss", self.forget_loss, FORGET_LOSSES)
        check_retain_loss(self.retain_loss)
        for name in ("retain_slack", "initial_lambda", "dual_lr"):
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

    def needs_reference(self) -> bool:
        return self.retain_loss == "kl"


class DualVariable(TrainerCallback, ExportableState):
    """The multiplier λ and the bound ε, updated by dual ascent at the end of every optimiser step.

    ``ExportableState`` puts both in each checkpoint's trainer state, and the Trainer
    rebuilds this callback from them when a run resumes.
    """

    def __init__(self, multiplier: float, step_size: float, epsilon: float | None = None) -> None:
        self.multiplier = multiplier
        self.step_size = step_size
        self.epsilon = epsilon
        self.last_retain_loss: float | None = None
        # Detached retain losses of the micro-batches of the step in progress.
        self._step_retain_losses: list[float] = []

    def state(self) -> dict:
        return {
            "args": {"multiplier": self.multiplier, "step_size": self.step_size, "epsilon": self.epsilon},
            "attributes": {"last_retain_loss": self.last_retain_loss},
        }

    def record(self, retain_loss: float) -> None:
        self._step_retain_losses.append(retain_loss)

    def on_step_end(self, args, state, control, **kwargs):  # noqa: ANN001 - Trainer callback signature
        if self._step_retain_losses and self.epsilon is not None:
            self.last_retain_loss = sum(self._step_retain_losses) / len(self._step_retain_losses)
            self.multiplier = losses.dual_ascent_step(self.multiplier, self.last_retain_loss, self.epsilon, self.step_size)
        self._step_retain_losses = []
        return control


@register_method(
    "pdu",
    config=PDUConfig,
    paper='Entesari et al., "Constrained Entropic Unlearning: A Primal-Dual Framework for Large Language Models", arXiv:2506.05314, 2025',
    summary="min L_f s.t. L_r <= eps: descend on L_f + lambda (L_r - eps), then lambda <- max(0, lambda + dual_lr (L_r - eps)).",
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

    def compute_loss(self, model: PreTrainedModel, inputs: dict[str, Any], return_outputs: bool = False, num_items_in_batch: Any = None):
        config = self.method_config
        dual = self.dual
        forget = inputs["forget"]
        forget_term = FORGET_LOSSES[config.forget_loss](self.logits(model, forget), forget["labels"])
        self.record(forget_loss=forget_term)
        retain_term = self.retain_loss(model, inputs["retain"], config.retain_loss)
        retain_value = float(retain_term.detach())
        if dual.epsilon is None:
            # Nothing has been updated yet, so this is the retain loss of the model before unlearning.
            dual.epsilon = retain_value * (1.0 + config.retain_slack)
        dual.record(retain_value)
        loss = losses.primal_dual_lagrangian(forget_term, retain_term, dual.multiplier, dual.epsilon)
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
