"""Task-vector negation: learn the forget set, then subtract what was learned.

Ilharco et al., "Editing Models with Task Arithmetic", ICLR 2023; and, for the
adapter form, Zhang et al., "Composing Parameter-Efficient Modules with
Arithmetic Operations", NeurIPS 2023.

Two phases:

1. Training fine-tunes the model on the forget answers with the plain answer
   NLL, so the training loss goes *down*: the model learns the forget set
   further, and ``tau = theta_ft - theta_pre`` points towards it.
2. :meth:`TaskVector.finalize` negates that direction:
   ``theta = theta_pre - lambda * tau`` over the trainable (selected) tensors.
   ``theta_pre`` is a copy of the trainable tensors alone, taken in ``setup()``
   (no full model copy; the method needs no reference model). While ``lambda``
   is chosen, ``tau`` is held next to it: at most two extra copies of the
   trainable tensors, both released when ``finalize`` returns.

Under LoRA the base weights stay frozen and the adapter ``delta W = B A`` is
the task vector (its B starts at zero). The negation is the PEM one of Zhang et
al.: every ``lora_B`` is scaled by ``-lambda``, so ``delta W`` becomes
``-lambda B A``; ``lora_A`` is left as trained. ``unlearn`` then merges the
adapter when ``lora_merge`` is set.

Choosing lambda
---------------
``scale`` fixes ``lambda``. With ``scale=None`` (the default) it is chosen on
the retain set, after Ilharco et al., who keep the largest coefficient whose
control-task accuracy stays within 95% of the pre-trained model's. Here the
control metric is the mean retain answer NLL (per example: the mean NLL of its
answer tokens; then the mean over examples), on up to ``retain_eval_size``
retain examples taken evenly spaced over the retain set. The pre-unlearning
value is measured in ``setup()``, before any update. The method keeps the
LARGEST candidate of ``scale_grid`` whose retain NLL is
``<= (1 + retain_tolerance) * `` the pre-unlearning one; when none passes, the
smallest candidate, with a warning. Every candidate's retain NLL and the chosen
``lambda`` go into the training log (keys ``task_vector_*``).

Defaults and choices
--------------------
* ``scale_grid`` "0.5,1,2,4,8": Ilharco et al. search ``lambda`` in [0, 1]
  after fine-tuning to convergence; a short unlearning run moves the weights
  less, so the grid goes past 1. [the paper's own lambda for each task is
  tuned; the PEM paper's value is unverified]
* ``retain_tolerance`` 0.1: a 10% rise of the retain NLL is tolerated, the NLL
  analogue of Ilharco et al.'s 95%-of-control-accuracy rule.
* Optimiser settings are :class:`MethodConfig`'s (the TOFU full fine-tuning
  recipe). The PEM authors' (IA)3 recipe (lr 5e-3, 10 epochs, warm-up 0.06)
  is for adapters on GPT-2 large; set it with ``--set`` for adapter runs.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from transformers import PreTrainedModel

from unlearnkit import losses
from unlearnkit.data.encoding import pad_batch
from unlearnkit.errors import UnlearnkitError
from unlearnkit.methods.base import MethodConfig, UnlearnTrainer, register_method
from unlearnkit.parameters import is_lora_model
from unlearnkit.settings import require_positive

logger = logging.getLogger("unlearnkit")

# peft names the second LoRA factor lora_B (linear layers) or lora_embedding_B (embeddings).
_LORA_B = re.compile(r"(^|\.)lora_(embedding_)?B(\.|$)")


@dataclass
class TaskVectorConfig(MethodConfig):
    scale: float | None = field(
        default=None,
        metadata={"help": "Negation coefficient lambda in theta_pre - lambda * tau (LoRA: lora_B -> -lambda * lora_B). "
                          "None: choose it on the retain set."},
    )
    scale_grid: str = field(
        default="0.5,1,2,4,8",
        metadata={"help": "Candidates for lambda when scale is None, comma-separated; "
                          "the largest that keeps the retain NLL within retain_tolerance wins."},
    )
    retain_tolerance: float = field(
        default=0.1,
        metadata={"help": "Allowed relative rise of the mean retain answer NLL over the pre-unlearning model's when choosing lambda "
                          "(0.1: 10%)."},
    )
    retain_eval_size: int = field(
        default=64, metadata={"help": "Retain examples (evenly spaced over the retain set) on which lambda is chosen."}
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.scale is not None:
            require_positive(scale=self.scale)
        self.scale_candidates()  # a malformed grid fails now, before any loading
        if not (math.isfinite(self.retain_tolerance) and self.retain_tolerance >= 0):
            raise UnlearnkitError(f"retain_tolerance must be a finite number >= 0 (e.g. 0.1), got {self.retain_tolerance}.")
        require_positive(retain_eval_size=self.retain_eval_size)

    def scale_candidates(self) -> list[float]:
        """``scale_grid`` as sorted, distinct positive floats."""
        try:
            values = [float(part) for part in self.scale_grid.split(",") if part.strip()]
        except ValueError:
            raise UnlearnkitError(f"scale_grid must be comma-separated numbers such as '0.5,1,2,4,8', got {self.scale_grid!r}.") from None
        if not values or not all(math.isfinite(value) and value > 0 for value in values):
            raise UnlearnkitError(f"scale_grid must list at least one finite number > 0 (e.g. '0.5,1,2,4,8'), got {self.scale_grid!r}.")
        return sorted(set(values))


def choose_scale(retain_nll: dict[float, float], baseline_nll: float, tolerance: float) -> tuple[float, bool]:
    """The largest candidate whose retain NLL is ``<= (1 + tolerance) * baseline_nll``, and whether any passed.

    ``retain_nll`` maps each candidate lambda to the mean retain NLL of the
    model negated with it. When no candidate passes, the smallest is returned
    with ``False``: the weakest negation is the one that harms the retain set least.
    """
    if not retain_nll:
        raise ValueError("choose_scale needs at least one candidate.")
    bound = (1.0 + tolerance) * baseline_nll
    passing = [scale for scale, nll in retain_nll.items() if nll <= bound]
    if passing:
        return max(passing), True
    return min(retain_nll), False


def evenly_spaced(items: Sequence, count: int) -> list:
    """Up to ``count`` items spread evenly over ``items`` (all of them when there are fewer)."""
    if len(items) <= count:
        return list(items)
    return [items[index * len(items) // count] for index in range(count)]


@torch.no_grad()
def mean_answer_nll(model: nn.Module, examples: Sequence[dict[str, list[int]]], pad_token_id: int, batch_size: int) -> float:
    """Mean over ``examples`` of each one's mean answer-token NLL, in eval mode (the mode is restored)."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    per_example: list[torch.Tensor] = []
    try:
        for start in range(0, len(examples), batch_size):
            batch = {key: value.to(device) for key, value in pad_batch(examples[start:start + batch_size], pad_token_id).items()}
            logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
            per_example.append(losses.sequence_nll(logits, batch["labels"]) / losses.sequence_token_count(batch["labels"]))
    finally:
        model.train(was_training)
    return float(torch.cat(per_example).mean())


def negate_task_vector(
    parameters: dict[str, nn.Parameter], pretrained: dict[str, torch.Tensor], task_vector: dict[str, torch.Tensor], scale: float
) -> None:
    """Set each parameter to ``pretrained - scale * task_vector`` (in place)."""
    with torch.no_grad():
        for name, parameter in parameters.items():
            parameter.copy_(pretrained[name] - scale * task_vector[name])


def negate_lora_b(factors: dict[str, nn.Parameter], trained: dict[str, torch.Tensor], scale: float) -> None:
    """Set each ``lora_B`` to ``-scale * B_ft`` (in place), so the adapter's ``delta W = B A`` becomes ``-scale B A``.

    This is the full form's ``theta_pre - scale * tau`` for the adapter, whose
    ``theta_pre`` is its initial ``B = 0``.
    """
    with torch.no_grad():
        for name, parameter in factors.items():
            parameter.copy_(-scale * trained[name])


def lora_b_parameters(model: nn.Module) -> dict[str, nn.Parameter]:
    """The ``lora_B`` factors of a peft model, by name."""
    return {name: parameter for name, parameter in model.named_parameters() if _LORA_B.search(name)}


@register_method(
    "task_vector",
    config=TaskVectorConfig,
    paper='Ilharco et al., "Editing Models with Task Arithmetic", ICLR 2023; '
          'Zhang et al., "Composing Parameter-Efficient Modules with Arithmetic Operations", NeurIPS 2023',
    summary="Fine-tune on D_f (NLL), then theta = theta_pre - lambda * (theta_ft - theta_pre) (LoRA: B -> -lambda B); "
            "lambda chosen on D_r.",
    family="task-arithmetic",
)
class TaskVector(UnlearnTrainer):
    """Task-vector negation (Ilharco et al., ICLR 2023); PEM negation of ``lora_B`` under LoRA (Zhang et al., NeurIPS 2023)."""

    def setup(self) -> None:
        config = self.method_config
        self.lora = is_lora_model(self.model)
        # theta_pre: the trainable tensors only. Under LoRA the adapter starts at B = 0, so delta W = 0 is theta_pre.
        self.pretrained = {} if self.lora else {
            name: parameter.detach().clone() for name, parameter in self.model.named_parameters() if parameter.requires_grad
        }
        self.retain_examples = evenly_spaced(self.train_dataset.retain, config.retain_eval_size)
        self.retain_nll_before: float | None = None
        if config.scale is None:
            if not self.retain_examples:
                raise UnlearnkitError("task_vector with scale=None chooses lambda on retain data; pass retain data, or set scale.")
            self.retain_nll_before = self._retain_nll(self.model)

    def compute_loss(self, model: PreTrainedModel, inputs: dict[str, Any], return_outputs: bool = False, num_items_in_batch: Any = None):
        forget = inputs["forget"]
        # Descend on the forget answers: tau = theta_ft - theta_pre must point towards the forget set.
        loss = losses.mean_nll(self.logits(model, forget), forget["labels"])
        self.record(forget_loss=loss)
        return (loss, None) if return_outputs else loss

    def finalize(self, model: PreTrainedModel) -> PreTrainedModel:
        apply = self._lora_negation(model) if self.lora else self._full_negation(model)
        try:
            self._negate(model, apply)
        finally:
            self.pretrained = {}  # theta_pre (and tau, held by ``apply``) are not needed past this point
        return model

    def _negate(self, model: PreTrainedModel, apply: Callable[[float], None]) -> None:
        """Apply the fixed ``scale``, or try every candidate on the retain set and apply the one chosen."""
        config = self.method_config
        if config.scale is not None:
            apply(config.scale)
            self.log({"task_vector_scale": config.scale})
            return
        retain_nll: dict[float, float] = {}
        for scale in config.scale_candidates():
            apply(scale)
            retain_nll[scale] = self._retain_nll(model)
            self.log({"task_vector_candidate_scale": scale, "task_vector_retain_nll": retain_nll[scale]})
        scale, passed = choose_scale(retain_nll, self.retain_nll_before, config.retain_tolerance)
        if not passed:
            logger.warning(
                "task_vector: every lambda in scale_grid raises the retain NLL above %.4g (%.4g before unlearning, "
                "retain_tolerance %g); using the smallest, %g. Lower the grid or raise retain_tolerance.",
                (1 + config.retain_tolerance) * self.retain_nll_before, self.retain_nll_before, config.retain_tolerance, scale,
            )
        apply(scale)
        self.log({
            "task_vector_scale": scale,
            "task_vector_retain_nll_before": self.retain_nll_before,
            "task_vector_retain_nll_after": retain_nll[scale],
            "task_vector_scale_passed": float(passed),
        })
        logger.info("task_vector: lambda = %g (retain NLL %.4g, %.4g before unlearning)", scale, retain_nll[scale], self.retain_nll_before)

    def _full_negation(self, model: nn.Module) -> Callable[[float], None]:
        parameters = {name: parameter for name, parameter in model.named_parameters() if name in self.pretrained}
        with torch.no_grad():
            task_vector = {name: parameter.detach() - self.pretrained[name] for name, parameter in parameters.items()}
        return lambda scale: negate_task_vector(parameters, self.pretrained, task_vector, scale)

    def _lora_negation(self, model: nn.Module) -> Callable[[float], None]:
        factors = lora_b_parameters(model)
        if not factors:
            raise RuntimeError("task_vector under LoRA found no lora_B parameter to negate.")
        trained = {name: parameter.detach().clone() for name, parameter in factors.items()}
        return lambda scale: negate_lora_b(factors, trained, scale)

    def _retain_nll(self, model: nn.Module) -> float:
        pad_token_id = self.train_dataset.tokenizer.pad_token_id
        return mean_answer_nll(model, self.retain_examples, pad_token_id, self.method_config.batch_size)
