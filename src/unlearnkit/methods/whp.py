"""Who's Harry Potter: fine-tune on generic labels that a reinforced model's extra knowledge is subtracted from.

Eldan & Russinovich, "Who's Harry Potter? Approximate Unlearning in LLMs",
arXiv 2310.02238, 2023.

Pipeline
--------
1. ``setup()`` builds the *reinforced* model: a copy of the model fine-tuned
   further on the forget answers (answer NLL) for ``reinforce_epochs`` epochs,
   with a plain AdamW loop (constant ``reinforce_lr``, weight decay, gradient
   clipping and batch size from the shared settings; batches drawn from the
   encoded forget examples in an order seeded by ``seed``). Every weight of the
   copy trains, whatever the run's parameter selection: the paper fine-tunes
   the full model for both the reinforced and the unlearned model.
2. Each training batch gets *generic labels*: with the frozen baseline's
   logits ``v_b`` (the pre-unlearning model) and the reinforced model's ``v_r``,
   ``v_g = v_b - alpha * ReLU(v_r - v_b)`` and the label of each answer
   position is ``argmax v_g`` (hard, detached;
   :func:`unlearnkit.losses.whp_generic_labels`).
3. The loss is the model's answer NLL on the *original* text with these labels.

Anchored terms
--------------
``anchored_terms`` names a JSON file ``{"term": "generic term", ...}`` (the
paper's GPT-4 dictionary; ``"builtin"``: one generated from the built-in
benchmark's forget authors by :func:`unlearnkit.data.anchors.builtin_anchored_terms`).
With a dictionary, each forget example is also encoded *translated*: question
and answer with every term replaced (the baseline must not see the
idiosyncratic term anywhere in its context; the paper translates whole text
blocks). The baseline's logits then come from the translated text, aligned to
the original tokens as follows (:func:`align_answer_tokens`):

* ``difflib.SequenceMatcher`` (no junk heuristic) aligns the original
  answer's token ids with the translated answer's token ids; prompts are not
  aligned, since only answer positions carry labels.
* An original token in an ``equal`` block, matched to translated token ``j``,
  takes ``v_b`` from the baseline's prediction of token ``j`` of the
  translated text (its logits at the position before ``j``), and its label
  is ``argmax v_g`` as usual.
* The first original token of a ``replace`` block gets the first token of
  the translated span as its label, directly: up to that point the two
  contexts agree (up to earlier translated terms), so this is where the
  generic term starts.
* The other original tokens of a ``replace`` block, and every token of a
  ``delete`` block, take ``v_b`` from the baseline's prediction on the
  original text, and ``argmax v_g`` as label. Their context already holds part
  of the idiosyncratic term, which the baseline completes and the reinforced
  model completes more eagerly, so the formula pushes that completion down.
  (Forcing the k-th translated token at the k-th original position instead
  would teach fragments such as "Yostia" -> "u" whenever the two spans
  tokenise to different lengths.)
* Translated tokens of an ``insert`` block have no original position and give
  no label.

Defaults and memory
-------------------
* ``alpha`` 5, 3 reinforcement epochs and 2 unlearning epochs are the community
  reimplementations' values; the paper's own alpha, learning rates and step
  counts are [unverified]. ``reinforce_lr`` defaults to the run's
  ``learning_rate`` (so a benchmark's learning-rate override reaches the
  reinforcement too); other optimiser settings are :class:`MethodConfig`'s.
* Training holds three models: the one being unlearned, the frozen reference
  (under LoRA: the same model with its adapters switched off, no copy) and the
  reinforced model (always a full copy; under LoRA a copy of the base weights
  without adapters, trained in full). While the reinforced model trains, its
  AdamW state (two more copies of its weights) exists too. ``finalize`` drops
  the reinforced model. The reinforcement follows ``gradient_checkpointing`` and
  ``mixed_precision`` as the Trainer's loop does (fp16 with loss scaling).
"""

from __future__ import annotations

import copy
import difflib
import logging
import math
import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import torch
from transformers import PreTrainedModel

from unlearnkit import losses
from unlearnkit.data.anchors import builtin_anchored_terms, load_anchored_terms, translate
from unlearnkit.data.encoding import IGNORE_INDEX, pad_batch
from unlearnkit.errors import NumericalFault, UnlearnkitError
from unlearnkit.methods.base import MethodConfig, UnlearnTrainer, register_method
from unlearnkit.parameters import is_lora_model
from unlearnkit.settings import require_positive

logger = logging.getLogger("unlearnkit")

BUILTIN_TERMS = "builtin"


@dataclass
class WHPConfig(MethodConfig):
    alpha: float = field(
        default=5.0,
        metadata={"help": "Weight of the reinforced model's gain in v_g = v_b - alpha * ReLU(v_r - v_b) "
                          "(community reimplementations: 5; paper's value unverified)."},
    )
    reinforce_epochs: int = field(
        default=3,
        metadata={"help": "Epochs of further fine-tuning on the forget set that make the reinforced model (community: 3)."},
    )
    reinforce_lr: float | None = field(
        default=None,
        metadata={"help": "Learning rate of the reinforcement fine-tuning (constant, AdamW). None: learning_rate."},
    )
    anchored_terms: str | None = field(
        default=None,
        metadata={"help": "JSON file {\"term\": \"generic term\", ...} whose translation of the forget text gives the baseline logits; "
                          "'builtin': generated from the built-in benchmark's forget authors; None: no dictionary."},
    )
    num_epochs: float = field(
        default=2.0,
        metadata={"help": "Passes over the forget set with generic labels (community reimplementations: 2)."},
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        require_positive(alpha=self.alpha, reinforce_epochs=self.reinforce_epochs)
        if self.reinforce_lr is not None:
            require_positive(reinforce_lr=self.reinforce_lr)
        # A file is read now, so a missing or malformed one fails before any model is loaded.
        self._terms = load_anchored_terms(self.anchored_terms) if self.anchored_terms not in (None, BUILTIN_TERMS) else None

    def needs_reference(self) -> bool:
        return True

    def check_data(self, forget: Sequence[dict], retain: Sequence[dict]) -> None:
        """The built-in dictionary is drawn from the forget rows' authors: build it now, so missing authors fail early."""
        if self.anchored_terms == BUILTIN_TERMS:
            if any(not row.get("author") for row in forget):
                raise UnlearnkitError(
                    "anchored_terms='builtin' needs an 'author' field in every forget row (the built-in splits have it); "
                    "for other data pass a JSON dictionary file as anchored_terms."
                )
            builtin_anchored_terms(forget)

    def resolve_terms(self, forget_rows: Sequence[dict]) -> dict[str, str] | None:
        """The dictionary for this forget set (the built-in one is built from ``forget_rows``); None without one.

        ``pair_extras`` reads it back through :meth:`terms`, so ``setup()`` resolves it before any batch is drawn.
        """
        if self.anchored_terms == BUILTIN_TERMS:
            self._terms = builtin_anchored_terms(forget_rows)
        return self._terms

    def terms(self) -> dict[str, str] | None:
        """The dictionary resolved for this run (None without one)."""
        if self.anchored_terms == BUILTIN_TERMS and self._terms is None:
            raise RuntimeError("The built-in anchored terms are built in WHP.setup(); call resolve_terms(forget_rows) first.")
        return self._terms


class TokenSource(NamedTuple):
    """Where an original answer token's generic label comes from (see the module docstring).

    ``kind`` is ``"translated"`` (``index``: the translated answer token whose
    baseline prediction serves as ``v_b``), ``"forced"`` (``index``: the
    translated answer token that is the label) or ``"original"`` (``index``:
    the original answer token itself; ``v_b`` from the original text).
    """

    kind: str
    index: int


def align_answer_tokens(original: Sequence[int], translated: Sequence[int]) -> list[TokenSource]:
    """One :class:`TokenSource` per token of ``original``, aligning it with ``translated`` (token ids)."""
    matcher = difflib.SequenceMatcher(None, list(original), list(translated), autojunk=False)
    sources: list[TokenSource] = []
    for tag, i1, i2, j1, _j2 in matcher.get_opcodes():
        if tag == "equal":
            sources.extend(TokenSource("translated", j1 + k) for k in range(i2 - i1))
        elif tag in ("replace", "delete"):
            sources.extend(
                TokenSource("forced", j1) if k == 0 and tag == "replace" else TokenSource("original", i1 + k)
                for k in range(i2 - i1)
            )
        # "insert": translated tokens without an original counterpart label nothing.
    return sources


def anchored_baseline(
    original_logits: torch.Tensor,
    translated_logits: torch.Tensor,
    original: dict[str, torch.Tensor],
    translated: dict[str, torch.Tensor],
) -> tuple[torch.Tensor, torch.Tensor]:
    """The baseline logits to use at each original position, and the forced labels.

    Args:
        original_logits: ``(B, T, V)`` baseline logits on the original batch.
        translated_logits: ``(B, T', V)`` baseline logits on the translated batch.
        original, translated: the padded batches (``input_ids``, ``labels``), row b of each the same example.

    Returns:
        ``(baseline (B, T, V), forced (B, T))``: ``baseline[b, t - 1]`` is ``v_b``
        for the original label at ``t`` (logits predict the next token), taken
        from the translated text where :func:`align_answer_tokens` says so and
        from ``original_logits`` otherwise; ``forced[b, t]`` is the label that
        replaces ``argmax v_g`` at ``t``, ``-100`` where none does.
    """
    baseline = original_logits.detach().clone()
    forced = torch.full_like(original["labels"], IGNORE_INDEX)
    for row in range(original["labels"].shape[0]):
        original_positions = (original["labels"][row] != IGNORE_INDEX).nonzero().flatten()
        translated_positions = (translated["labels"][row] != IGNORE_INDEX).nonzero().flatten()
        original_ids = original["input_ids"][row, original_positions].tolist()
        translated_ids = translated["input_ids"][row, translated_positions].tolist()
        targets, sources = [], []
        for position, source in zip(original_positions.tolist(), align_answer_tokens(original_ids, translated_ids), strict=False):
            translated_position = int(translated_positions[source.index]) if source.kind != "original" else -1
            if source.kind == "forced":
                forced[row, position] = translated_ids[source.index]
            elif source.kind == "translated" and position >= 1 and translated_position >= 1:
                targets.append(position - 1)
                sources.append(translated_position - 1)
        if targets:
            baseline[row, targets] = translated_logits[row, sources].to(baseline.dtype)
    return baseline, forced


@register_method(
    "whp",
    config=WHPConfig,
    paper='Eldan & Russinovich, "Who\'s Harry Potter? Approximate Unlearning in LLMs", arXiv 2310.02238, 2023',
    summary="Fine-tune on labels argmax(v_b - alpha * ReLU(v_r - v_b)), v_r from a model reinforced on D_f, "
            "v_b from the (anchor-translated) baseline.",
    needs_retain=False,
)
class WHP(UnlearnTrainer):
    """Who's Harry Potter (Eldan & Russinovich, 2023): generic-label fine-tuning with an optional anchored-term dictionary."""

    reinforced_model: PreTrainedModel | None = None

    @classmethod
    def pair_extras(
        cls, config: WHPConfig, rng: random.Random, forget_row: dict, retain_rows: Sequence[dict]
    ) -> dict[str, tuple[str, str]]:
        terms = config.terms()
        if terms is None:
            return {}
        return {"translated": (translate(forget_row["question"], terms), translate(forget_row["answer"], terms))}

    def setup(self) -> None:
        config = self.method_config
        terms = config.resolve_terms(self.train_dataset.forget_rows)
        if terms is not None:
            logger.info("whp: %d anchored terms, e.g. %s", len(terms), next(iter(terms.items()), None))
        self.reinforce_log: list[dict[str, float]] = []
        self.reinforced_model = self._reinforce()

    def _reinforce(self) -> PreTrainedModel:
        """A copy of the model fine-tuned further on the forget answers (eval mode, frozen)."""
        config = self.method_config
        # Under LoRA the copy drops its (still zero) adapters: the reinforced model is the base, trained in full.
        reinforced = copy.deepcopy(self.model).unload() if is_lora_model(self.model) else copy.deepcopy(self.model)
        reinforced.requires_grad_(True).train()
        if config.gradient_checkpointing:
            reinforced.activation_checkpointing_enable({"use_reentrant": False})
        device = next(reinforced.parameters()).device
        precision = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(config.mixed_precision)
        scaler = torch.amp.GradScaler(device.type, enabled=config.mixed_precision == "fp16")
        learning_rate = config.reinforce_lr if config.reinforce_lr is not None else config.learning_rate
        optimizer = torch.optim.AdamW(reinforced.parameters(), lr=learning_rate, weight_decay=config.weight_decay)
        examples = self.train_dataset.forget
        pad_token_id = self.train_dataset.tokenizer.pad_token_id
        order = list(range(len(examples)))
        rng = random.Random(f"whp-reinforce:{config.seed}")
        for epoch in range(1, config.reinforce_epochs + 1):
            rng.shuffle(order)
            epoch_losses = []
            for start in range(0, len(order), config.batch_size):
                batch = pad_batch([examples[index] for index in order[start:start + config.batch_size]], pad_token_id)
                batch = {key: value.to(device) for key, value in batch.items()}
                with torch.autocast(device.type, dtype=precision, enabled=precision is not None):
                    logits = self.logits(reinforced, batch)
                loss = losses.mean_nll(logits, batch["labels"])
                if not math.isfinite(float(loss.detach())):
                    raise NumericalFault(f"whp: the reinforcement loss became {float(loss.detach())} in epoch {epoch}; lower reinforce_lr.")
                optimizer.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()
                scaler.unscale_(optimizer)
                torch.nn.utils.clip_grad_norm_(reinforced.parameters(), config.max_grad_norm)
                scaler.step(optimizer)
                scaler.update()
                epoch_losses.append(float(loss.detach()))
            self.reinforce_log.append({"whp_reinforce_epoch": float(epoch), "whp_reinforce_loss": sum(epoch_losses) / len(epoch_losses)})
            logger.info("whp: reinforcement epoch %d, forget NLL %.4g", epoch, self.reinforce_log[-1]["whp_reinforce_loss"])
        del optimizer
        if config.gradient_checkpointing:
            reinforced.activation_checkpointing_disable()
        return reinforced.eval().requires_grad_(False)

    def compute_loss(self, model: PreTrainedModel, inputs: dict[str, Any], return_outputs: bool = False, num_items_in_batch: Any = None):
        forget = inputs["forget"]
        with torch.no_grad():
            reinforced = self.logits(self.reinforced_model, forget)
            baseline = self.reference_logits(forget)
            forced = None
            if "translated" in inputs:
                baseline, forced = anchored_baseline(baseline, self.reference_logits(inputs["translated"]), forget, inputs["translated"])
            generic_labels = losses.whp_generic_labels(baseline, reinforced, forget["labels"], self.method_config.alpha)
            if forced is not None:
                generic_labels = torch.where(forced != IGNORE_INDEX, forced, generic_labels)
        loss = losses.mean_nll(self.logits(model, forget), generic_labels)
        self.record(forget_loss=loss)
        return (loss, None) if return_outputs else loss

    def finalize(self, model: PreTrainedModel) -> PreTrainedModel:
        for entry in self.reinforce_log:
            self.log(dict(entry))
        self.reinforced_model = None  # the reinforced copy is only needed for the labels
        return model
