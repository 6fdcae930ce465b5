"""Random labels: fine-tune the forget questions towards uniformly random answer tokens.

Yao et al., "Machine Unlearning of Pre-trained Large Language Models", ACL 2024
(the ``completely_random`` labels of their code).

Every answer label of the forget batch that is not a special token is replaced
by an id drawn uniformly from the vocabulary without its special tokens, and
the model is trained with the usual answer NLL on those labels. No retain data.

Choices where the authors' setting does not carry over:

* The authors draw the labels once, when they tokenise the forget set (1 epoch,
  so each example is seen once). Here they are drawn afresh for every
  micro-batch, from a generator seeded by (seed, optimiser step, micro-batch
  within the step): a rerun, or a run resumed from a checkpoint, draws the same
  labels, and later epochs see new ones.
* The vocabulary is the tokenizer's (``len(tokenizer)``, at most the model's
  ``vocab_size``) without ``all_special_ids``; the authors draw from
  ``tokenizer.vocab_size`` and leave only pad/EOS/BOS/UNK out. Labels that are
  special tokens (the answer's closing EOS) are kept, as the authors do.
* Defaults follow their recipe (lr 2e-5, 1 epoch, cosine schedule, warm-up 0.03,
  no weight decay); their effective batch of 480-680 chunks of 4096 tokens has no
  counterpart for short QA pairs, so the shared batch size stays.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from unlearnkit import losses
from unlearnkit.errors import UnlearnkitError
from unlearnkit.methods.base import MethodConfig, UnlearnTrainer, register_method


@dataclass
class RandomLabelsConfig(MethodConfig):
    learning_rate: float = field(default=2e-5, metadata={"help": "Peak learning rate of AdamW (authors: 2e-5)."})
    num_epochs: float = field(default=1.0, metadata={"help": "Passes over the forget set (authors: 1)."})
    warmup_ratio: float = field(default=0.03, metadata={"help": "Fraction of steps for warm-up (authors: 0.03)."})
    weight_decay: float = field(default=0.0, metadata={"help": "AdamW weight decay (authors: 0)."})
    lr_scheduler: str = field(default="cosine", metadata={"help": "transformers scheduler name (authors: cosine)."})


def non_special_ids(tokenizer: PreTrainedTokenizerBase, model_vocab_size: int) -> torch.Tensor:
    """Ids ``0 .. min(len(tokenizer), model_vocab_size) - 1`` without the tokenizer's special ids; shape ``(N,)``."""
    special = set(tokenizer.all_special_ids)
    size = min(len(tokenizer), model_vocab_size)
    ids = [index for index in range(size) if index not in special]
    if not ids:
        raise UnlearnkitError("The tokenizer has no token that is not special; random labels need ordinary tokens to draw from.")
    return torch.tensor(ids, dtype=torch.long)


def label_generator(seed: int, step: int, micro_batch: int) -> torch.Generator:
    """A CPU generator that is a pure function of (seed, optimiser step, micro-batch within the step)."""
    # random.Random hashes a string seed with SHA-512: stable across processes, unlike hash().
    return torch.Generator().manual_seed(random.Random(f"{seed}:{step}:{micro_batch}").getrandbits(63))


@register_method(
    "random_labels",
    config=RandomLabelsConfig,
    paper='Yao et al., "Machine Unlearning of Pre-trained Large Language Models", ACL 2024',
    summary="L = mean NLL(D_f questions -> uniformly random non-special answer tokens), redrawn every step.",
    needs_retain=False,
)
class RandomLabels(UnlearnTrainer):
    """Train the forget answers' positions towards random tokens (Yao et al., ACL 2024)."""

    def setup(self) -> None:
        # The tokenizer that encoded the data (the trainer is built without processing_class, which would make
        # the Trainer rewrite the model config's special ids).
        tokenizer = self.processing_class if self.processing_class is not None else getattr(self.train_dataset, "tokenizer", None)
        if tokenizer is None:
            raise RuntimeError("random_labels needs the tokenizer's special ids: train on a PairedDataset or pass processing_class.")
        self.candidate_ids = non_special_ids(tokenizer, self.model.config.vocab_size)
        self.special_ids = torch.tensor(sorted(set(tokenizer.all_special_ids)), dtype=torch.long)
        self._draw_step, self._micro_batch = -1, 0

    def next_generator(self) -> torch.Generator:
        """The generator of this micro-batch: micro-batches of one optimiser step are counted from 0."""
        step = self.state.global_step
        if step != self._draw_step:
            self._draw_step, self._micro_batch = step, 0
        generator = label_generator(self.method_config.seed, step, self._micro_batch)
        self._micro_batch += 1
        return generator

    def compute_loss(self, model: PreTrainedModel, inputs: dict[str, Any], return_outputs: bool = False, num_items_in_batch: Any = None):
        forget = inputs["forget"]
        labels = losses.random_labels(forget["labels"], self.candidate_ids, self.next_generator(), keep_ids=self.special_ids)
        loss = losses.mean_nll(self.logits(model, forget), labels)
        self.record(forget_loss=loss)
        return (loss, None) if return_outputs else loss
