"""Adversarial labels: fine-tune each forget answer position towards the frozen model's best wrong token.

Yao et al., "Machine Unlearning of Pre-trained Large Language Models", ACL 2024
(the "adversarial samples" of the paper, ``top_k 1 rm_groundtruth`` in their code).

At every answer position of the forget batch the label becomes the top-1 token
of the frozen pre-unlearning model with the ground-truth token masked out; the
model is trained with the answer NLL on those labels. No retain data.

Choices where the authors' code differs or is silent:

* Alignment: here the label of answer token t is the frozen model's best guess
  for token t other than token t (the prediction made at position t - 1). The
  authors' code masks the token at position j in the logits of position j and
  stores that prediction (of token j + 1) as the label of token j, so after the
  model's internal shift each label is one token ahead of the position it trains;
  the paper describes the aligned form implemented here.
* Special tokens (the tokenizer's ``all_special_ids``) are never chosen, so the
  model is not taught to stop or pad mid-answer; the authors leave out only the
  padding token they append to the vocabulary.
* The labels are computed from the frozen model on each batch (under LoRA: the
  model with its adapters off), which gives the same labels as precomputing them.
* Defaults follow their recipe (lr 2e-5, 1 epoch, cosine schedule, warm-up 0.03,
  no weight decay); the shared batch size stays (theirs is 480-680 chunks of 4096 tokens).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from transformers import PreTrainedModel

from unlearnkit import losses
from unlearnkit.methods.base import MethodConfig, UnlearnTrainer, register_method


@dataclass
class AdversarialLabelsConfig(MethodConfig):
    learning_rate: float = field(default=2e-5, metadata={"help": "Peak learning rate of AdamW (authors: 2e-5)."})
    num_epochs: float = field(default=1.0, metadata={"help": "Passes over the forget set (authors: 1)."})
    warmup_ratio: float = field(default=0.03, metadata={"help": "Fraction of steps for warm-up (authors: 0.03)."})
    weight_decay: float = field(default=0.0, metadata={"help": "AdamW weight decay (authors: 0)."})
    lr_scheduler: str = field(default="cosine", metadata={"help": "transformers scheduler name (authors: cosine)."})

    def needs_reference(self) -> bool:
        return True


@register_method(
    "adversarial_labels",
    config=AdversarialLabelsConfig,
    paper='Yao et al., "Machine Unlearning of Pre-trained Large Language Models", ACL 2024',
    summary="L = mean NLL(D_f questions -> argmax_{v != y_t} p_ref(v | x, y_<t)), the frozen model's best wrong token.",
    needs_retain=False,
)
class AdversarialLabels(UnlearnTrainer):
    """Train each forget answer position towards the frozen model's top-1 token other than the true one."""

    def setup(self) -> None:
        # The tokenizer that encoded the data (the trainer is built without processing_class, which would make
        # the Trainer rewrite the model config's special ids).
        tokenizer = self.processing_class if self.processing_class is not None else getattr(self.train_dataset, "tokenizer", None)
        if tokenizer is None:
            raise RuntimeError("adversarial_labels needs the tokenizer's special ids: train on a PairedDataset or pass processing_class.")
        self.special_ids = torch.tensor(sorted(set(tokenizer.all_special_ids)), dtype=torch.long)

    def compute_loss(self, model: PreTrainedModel, inputs: dict[str, Any], return_outputs: bool = False, num_items_in_batch: Any = None):
        forget = inputs["forget"]
        with torch.no_grad():
            labels = losses.adversarial_labels(self.reference_logits(forget), forget["labels"], self.special_ids)
        loss = losses.mean_nll(self.logits(model, forget), labels)
        self.record(forget_loss=loss)
        return (loss, None) if return_outputs else loss
