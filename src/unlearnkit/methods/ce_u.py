"""CE-U: cross-entropy unlearning toward the model's own prediction without the forget token.

Bo Yang, "CE-U: Cross Entropy Unlearning", arXiv:2503.01224, 2025.

At every answer position of the forget batch the target is the model's own
prediction with the label removed::

    q_t = softmax(z'_t),  z'_t = z_t with z_t[y_t] = −∞    (detached)
    L_f = mean_t  −Σ_v q_t,v · log p_θ(v | x, y_<t)

and ``L = L_f + alpha · L_r``. The gradient with respect to the logits is ``p − q``:
bounded, it does not vanish while the forget token is likely and does not explode
once it is unlikely (gradient ascent does both), and it keeps the relative
probabilities of all other tokens.

Choices: the mean is over the answer positions of the batch. The first answer
token of each sequence is left out by default (``ignore_first_answer_tokens=1``), as
OpenUnlearning's port does citing a footnote of the paper's training settings
[not checked against the paper]. The paper trains without a retain set;
``alpha=0`` gives that form, and the default adds the retain NLL with alpha 1.0.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from transformers import PreTrainedModel, PreTrainedTokenizerBase

from unlearnkit import losses
from unlearnkit.data.encoding import PromptFormat
from unlearnkit.errors import UnlearnkitError
from unlearnkit.methods.base import (
    MethodConfig,
    UnlearnTrainer,
    check_retain_kl_positions,
    check_retain_loss,
    register_method,
    retain_kl_positions_field,
)


@dataclass
class CEUConfig(MethodConfig):
    alpha: float = field(default=1.0, metadata={"help": "Weight of the retain term (0: the paper's forget-only form)."})
    retain_loss: str = field(default="nll", metadata={"help": "Retain term: 'nll' (answer NLL) or 'kl' (KL to the reference model)."})
    retain_kl_positions: str = retain_kl_positions_field()
    ignore_first_answer_tokens: int = field(
        default=1,
        metadata={"help": "Leave the first this many answer tokens of each forget answer out of the loss (0: score all)."},
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.alpha < 0:
            raise UnlearnkitError(f"alpha must be >= 0 (0 is the paper's forget-only form), got {self.alpha}.")
        if self.ignore_first_answer_tokens < 0:
            raise UnlearnkitError(f"ignore_first_answer_tokens must be >= 0, got {self.ignore_first_answer_tokens}.")
        check_retain_loss(self.retain_loss)
        check_retain_kl_positions(self.retain_kl_positions)

    def needs_reference(self) -> bool:
        return self.retain_loss == "kl"

    def check_encoded(self, tokenizer: PreTrainedTokenizerBase, fmt: PromptFormat, forget: Sequence[dict]) -> None:
        """Every forget answer must keep a scored token after the first ``ignore_first_answer_tokens`` are left out."""
        if self.ignore_first_answer_tokens == 0:
            return
        # Answer tokens with EOS, as encode_qa scores them (cut to max_length - 1 like it).
        lengths = [len(fmt.answer_ids(tokenizer, row["answer"], row["question"])[: self.max_length - 1]) for row in forget]
        short = [(index, length) for index, length in enumerate(lengths, start=1) if length <= self.ignore_first_answer_tokens]
        if short:
            listing = ", ".join(f"row {index} ({length} tokens)" for index, length in short[:5])
            raise UnlearnkitError(
                f"ignore_first_answer_tokens={self.ignore_first_answer_tokens} leaves nothing to unlearn in "
                f"{len(short)} forget answer(s): {listing}{', ...' if len(short) > 5 else ''}. Lower "
                "ignore_first_answer_tokens or use longer answers."
            )


@register_method(
    "ce_u",
    config=CEUConfig,
    paper='Bo Yang, "CE-U: Cross Entropy Unlearning", arXiv:2503.01224, 2025',
    summary="L = mean_t CE(softmax(sg(z) with z[y_t] = -inf), p_theta) on D_f + alpha * retain term.",
)
class CEU(UnlearnTrainer):
    """Cross-entropy unlearning (Yang, 2025) with a retain term."""

    def compute_loss(self, model: PreTrainedModel, inputs: dict[str, Any], return_outputs: bool = False, num_items_in_batch: Any = None):
        config = self.method_config
        forget = inputs["forget"]
        loss = losses.ce_u_loss(self.logits(model, forget), forget["labels"], config.ignore_first_answer_tokens)
        self.record(forget_loss=loss)
        if config.alpha:
            loss = loss + config.alpha * self.retain_loss(model, inputs["retain"], config.retain_loss)
        return (loss, None) if return_outputs else loss
