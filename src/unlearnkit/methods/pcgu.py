"""PCGU: partitioned contrastive gradient unlearning, adapted from bias pairs to question answering.

Yu et al., "Unlearning Bias in Language Models by Partitioning Gradients",
Findings of ACL 2023. The authors contrast two sentences that differ in one
gendered word; the gradient of the "advantaged" sentence is applied only to the
parameter blocks where it disagrees most with the gradient of the other one.

Adaptation to QA unlearning. The advantaged sequence is a forget example
(question + answer), whose probability must drop. Its contrast is the same
question with one of its perturbed (wrong) answers, drawn anew each epoch from
``perturbed_answer``. The blocks where the two gradients point apart are those
that carry the specific answer rather than the question's form, so they are the
ones changed. Per step, with the causal-LM variant of the authors' code
(``−loss`` for the logit):

* ``g_adv = ∇θ log p(forget answer) = −∇θ ℓ̄_forget``;
* ``g_contrast = ∇θ log p(contrast answer)``;
* every trainable parameter is split into blocks (:mod:`unlearnkit.gradients`:
  rows ``W[i, :]`` by default, columns with ``partition="columns"``; a 1-D
  parameter is one block), the cosine similarity of ``g_adv`` and ``g_contrast``
  is computed per block, and the ``k`` blocks with the LOWEST similarity are kept;
* the update gradient is ``g_adv`` on the kept blocks and 0 elsewhere, so that the
  optimiser's descent step lowers ``log p(forget answer)``.

Choices where the paper and code are silent or do not fit QA:

* k: ``top_k`` (authors: 10,000) is capped at the number of blocks (a tiny model
  has fewer, so it keeps everything); ``top_fraction``, when set, replaces it with
  ``ceil(fraction × blocks)``. The built-in benchmark sets a fraction.
* A block whose ``g_adv`` is exactly zero ranks last (it could not change anyway);
  the authors' cosine gives it 0.
* Both log-probabilities are the per-token mean over answer tokens (as the authors'
  ``-outputs.loss``). Blocks are chosen per micro-batch; with gradient
  accumulation the masked gradients of the micro-batches are averaged.
* ``reselect_every_step=False`` keeps the blocks chosen on the first batch for the
  whole run (``--use-same-params``); a resumed run chooses them again on its
  first batch.
* No LoRA form: the blocks are rows (or columns) of the model's own weights, which
  LoRA's factors are not; ``target_modules`` and ``layers`` restrict the candidates.
* Optimiser: plain SGD (no momentum), constant learning rate, no weight decay, as
  the authors'. Weight decay is refused: it would move the blocks PCGU leaves out.
  Gradients are clipped at the shared ``max_grad_norm`` (1.0); the authors do not
  clip, which a large ``max_grad_norm`` reproduces.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from unlearnkit import losses
from unlearnkit.errors import UnlearnkitError
from unlearnkit.gradients import PARTITIONS, block_count, blocks_to_keep, partitioned_gradient_masks
from unlearnkit.methods.base import MethodConfig, UnlearnTrainer, register_method
from unlearnkit.settings import check_choice

logger = logging.getLogger("unlearnkit")


@dataclass
class PCGUConfig(MethodConfig):
    learning_rate: float = field(default=1e-5, metadata={"help": "SGD learning rate (authors: 1e-5)."})
    num_epochs: float = field(default=5.0, metadata={"help": "Passes over the forget set (authors: 5)."})
    batch_size: int = field(default=16, metadata={"help": "Forget examples per step, each with its contrast (authors: 16)."})
    optimizer: str = field(default="sgd", metadata={"help": "transformers optimiser name (authors: plain SGD, no momentum)."})
    weight_decay: float = field(default=0.0, metadata={"help": "Must stay 0: decay would move the blocks PCGU leaves out."})
    warmup_ratio: float = field(default=0.0, metadata={"help": "Fraction of steps for warm-up (authors: none)."})
    lr_scheduler: str = field(default="constant", metadata={"help": "Learning-rate schedule (authors: constant)."})
    top_k: int | None = field(
        default=10000,
        metadata={"help": "Blocks kept per step, those whose forget and contrast gradients are least similar "
                          "(authors: 10000; capped at the number of blocks; None: all)."},
    )
    top_fraction: float | None = field(
        default=None,
        metadata={"help": "Keep this fraction of all blocks instead of top_k (in (0, 1]; None: use top_k)."},
    )
    partition: str = field(
        default="rows",
        metadata={"help": "Blocks of a weight: 'rows' W[i, :] (authors' input aggregation) or 'columns' W[:, j] (--output-agg)."},
    )
    reselect_every_step: bool = field(
        default=True,
        metadata={"help": "Choose the blocks anew every step (authors' default); false: keep the first step's blocks (--use-same-params)."},
    )

    def __post_init__(self) -> None:
        if self.mixed_precision == "fp16":  # before the base class's checks, whose fp16 message (no GPU) would hide this one
            raise UnlearnkitError(
                "PCGU writes its masked gradients itself, past fp16's loss scaling (which would then unscale "
                "gradients that were never scaled). Use mixed_precision=bf16 or 'no'."
            )
        super().__post_init__()
        if self.top_k is not None and self.top_k < 1:
            raise UnlearnkitError(f"top_k must be >= 1 (or None for every block), got {self.top_k}.")
        if self.top_fraction is not None and not 0 < self.top_fraction <= 1:
            raise UnlearnkitError(f"top_fraction must be in (0, 1] (or None to use top_k), got {self.top_fraction}.")
        check_choice("partition", self.partition, PARTITIONS)
        if self.uses_lora:
            raise UnlearnkitError(
                "PCGU selects blocks of the model's own weights by their gradients and has no LoRA form; set lora_rank=0 "
                "(target_modules and layers restrict which weights it may select)."
            )
        if self.weight_decay != 0:
            raise UnlearnkitError(
                f"PCGU changes only the blocks it selects; weight_decay={self.weight_decay} would move every weight. "
                "Set weight_decay=0."
            )


def perturbed_answers(row: dict) -> list[str]:
    """A forget row's wrong answers as a list (a single string counts as one)."""
    value = row.get("perturbed_answer")
    answers = [value] if isinstance(value, str) else list(value or [])
    return [answer for answer in answers if isinstance(answer, str) and answer.strip()]


@register_method(
    "pcgu",
    config=PCGUConfig,
    paper='Yu et al., "Unlearning Bias in Language Models by Partitioning Gradients", Findings of ACL 2023',
    summary="update = grad log p(forget answer) on the top-k blocks where it is least cosine-similar to grad log p(perturbed answer); "
            "SGD descends it.",
    needs_retain=False,
    family="localization",
)
class PCGU(UnlearnTrainer):
    """PCGU (Yu et al., Findings of ACL 2023): contrast each forget answer with a perturbed one, update the most different blocks."""

    required_forget_fields = ("perturbed_answer",)
    # The blocks are rows or columns of the model's weights; adapter factors have no such meaning.
    supports_lora = False
    # The per-parameter entry masks in use; chosen on the first step, then every step unless reselect_every_step is off.
    _masks: list[torch.Tensor | None] | None = None

    @classmethod
    def pair_extras(
        cls, config: MethodConfig, rng: random.Random, forget_row: dict, retain_rows: Sequence[dict]
    ) -> dict[str, tuple[str, str]]:
        return {"contrast": (forget_row["question"], rng.choice(perturbed_answers(forget_row)))}

    def setup(self) -> None:
        empty = [row["question"] for row in self.train_dataset.forget_rows if not perturbed_answers(row)]
        if empty:
            raise UnlearnkitError(
                f"PCGU contrasts each forget answer with a perturbed one, but {len(empty)} forget row(s) have an empty "
                f"perturbed_answer (e.g. {empty[0]!r}). Give every row at least one wrong answer, or choose another method."
            )
        config = self.method_config
        trainable = [p for p in self.model.parameters() if p.requires_grad]
        blocks = sum(block_count(p.shape, config.partition) for p in trainable)
        self.kept_blocks = blocks_to_keep(blocks, config.top_k, config.top_fraction)
        logger.info("PCGU: %d of %d %s blocks updated per step", self.kept_blocks, blocks, config.partition)

    def gradient_step(self, model, inputs, num_items_in_batch=None):  # noqa: ANN001 - Trainer signature
        config = self.method_config
        model.train()
        inputs = self._prepare_inputs(inputs)
        forget, contrast = inputs["forget"], inputs["contrast"]
        parameters = [p for p in model.parameters() if p.requires_grad]
        with self.compute_loss_context_manager():
            forget_nll = losses.mean_nll(self.logits(model, forget), forget["labels"])
        # g_adv = ∇ log p(forget answer): the descent step along it lowers that log-probability.
        update = torch.autograd.grad(-forget_nll, parameters, allow_unused=True)
        if self._masks is None or config.reselect_every_step:
            with self.compute_loss_context_manager():
                contrast_nll = losses.mean_nll(self.logits(model, contrast), contrast["labels"])
            contrast_gradient = torch.autograd.grad(-contrast_nll, parameters, allow_unused=True)
            self._masks = partitioned_gradient_masks(update, contrast_gradient, config.top_k, config.top_fraction, config.partition)
        # Micro-batches of one optimiser step add up to their mean, as the Trainer's loss scaling does.
        scale = 1.0 / self.current_gradient_accumulation_steps
        for parameter, gradient, mask in zip(parameters, update, self._masks, strict=True):
            if gradient is None or mask is None:
                continue
            masked = gradient.masked_fill(~mask, 0.0) * scale
            if parameter.grad is None:
                parameter.grad = masked
            else:
                parameter.grad.add_(masked)
        self.record(forget_loss=-forget_nll)  # log p(forget answer): what the update lowers
        return forget_nll.detach() * scale
