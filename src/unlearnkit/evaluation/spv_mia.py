"""SPV-MIA: membership inference with a self-prompted reference model and probabilistic variation.

Fu et al., "Practical Membership Inference Attacks against Fine-tuned Large Language
Models via Self-prompt Calibration", NeurIPS 2024. Two ideas:

* **Self-prompt calibration.** A reference-based attack needs a reference model
  trained on data of the target's domain but not on its training records. The
  attacker has none, so it asks the target for it: short prefixes (16 tokens in
  the paper) of same-domain text are continued by sampling from the *target* to
  a block length (128), and a copy of the pre-fine-tuning base model is
  fine-tuned on those texts (2 epochs, lr 5e-5). The reference then knows the
  domain as the target does, without the records' own memorisation.
* **Probabilistic variation.** Memorised records sit at local maxima of the
  model's probability: perturbing them lowers p much more than perturbing an
  unseen record. Each record x gets N neighbours x̃_n (the paper: T5-base
  mask-filling, spans of 2 words, 30% masked, N = 10) and the variation
  ``mean_n p(x̃_n) − p(x)`` with ``p(·) = exp(−mean token NLL)``.

The statistic of a record is the target's variation calibrated by the reference's:

    score(x) = [mean_n p_tgt(x̃_n) − p_tgt(x)] − [mean_n p_ref(x̃_n) − p_ref(x)]

A member has a *lower* score (its target variation is strongly negative);
the membership feature is ``−score``, and the AUC forget (members) vs holdout
(non-members) is taken on it: 1 = the forget set still looks trained on, 0.5 =
chance, as every ``mia_*_auc`` of :mod:`unlearnkit.evaluation.mia`.

What differs from the paper (each choice named where it is made):

* For QA rows the scored text is the answer given the question's prompt (as
  the other membership attacks here), and the neighbours perturb the answer only.
* **Neighbours without T5.** Nothing can be downloaded, so the neighbours are
  made by a local word-span substitution: ``mask_fraction`` of the answer's
  words, in spans of ``span_length`` words, are replaced by words drawn at
  random from the same-domain vocabulary (the words of the self-prompt rows).
  T5 fills a span with fluent words given both sides; these replacements are
  in-domain but not fitted to their context, so every neighbour loses more
  probability than T5's would, for members and non-members alike.
* **Reference base.** With ``reference_base`` (the model the target was
  fine-tuned from) the reference starts from it, as in the paper. Without one
  (a model trained from scratch, as the built-in tiny benchmark, or a user
  who does not have the base) it starts from a copy of the attacked model:
  the only model of the same architecture and tokenizer at hand. Fine-tuning
  it on the model's own generations keeps the domain and lets the records'
  own memorisation fade; it also starts the reference closer to the target
  than the paper's, so its calibration can remove some real signal.
* The self-prompts come from rows that are *not* tested (the retain set):
  prompting with the tested questions would make the target write the
  memorised answers into the reference's training data.
* The block length is cut to the model's context window when that is shorter.
"""

from __future__ import annotations

import copy
import logging
import math
import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from unlearnkit.data.encoding import IGNORE_INDEX, PromptFormat, left_pad_prompts, pad_batch
from unlearnkit.errors import UnlearnkitError
from unlearnkit.evaluation.catalog import AS_IS, SPV_MIA, metric
from unlearnkit.evaluation.mia import roc_auc
from unlearnkit.evaluation.scoring import answer_avg_nll
from unlearnkit.settings import check_field_types, check_seed, require_at_least, require_fraction, require_positive

logger = logging.getLogger("unlearnkit")

MIN_ROWS = 2
"""Rows each tested split (forget, holdout) needs: an AUC over one row per class says nothing."""

_WORD = re.compile(r"\S+")


@dataclass(frozen=True)
class SpvMiaConfig:
    """Settings of SPV-MIA (defaults: the paper's, Fu et al. NeurIPS 2024, configs/config.yaml)."""

    prefix_tokens: int = field(
        default=16, metadata={"help": "Tokens of same-domain text given to the target as a self-prompt (paper: 16)."}
    )
    block_length: int = field(
        default=128,
        metadata={"help": "Tokens of each self-prompted text, prefix included (paper: 128; cut to the model's context)."},
    )
    num_texts: int = field(
        default=1000,
        metadata={"help": "Self-prompted texts generated for the reference (the prompt rows are cycled when fewer)."},
    )
    temperature: float = field(default=1.0, metadata={"help": "Sampling temperature of the self-prompted continuations."})
    reference_epochs: int = field(default=2, metadata={"help": "Epochs of the reference model's fine-tuning (paper: 2)."})
    reference_learning_rate: float = field(
        default=5e-5,
        metadata={"help": "Learning rate of the reference model's fine-tuning (paper: 5e-5; a tiny model needs ~1e-3)."},
    )
    reference_batch_size: int = field(default=8, metadata={"help": "Texts per optimiser step of the reference fine-tuning."})
    reference_base: str | None = field(
        default=None,
        metadata={"help": "The model the target was fine-tuned from (folder or hub name): the reference starts from it, as in "
                          "the paper. None: from a copy of the attacked model."},
    )
    num_neighbours: int = field(default=10, metadata={"help": "Perturbed neighbours per record (paper: 10)."})
    mask_fraction: float = field(default=0.3, metadata={"help": "Share of a record's words replaced in each neighbour (paper: 0.3)."})
    span_length: int = field(default=2, metadata={"help": "Words per replaced span (paper: 2)."})
    batch_size: int = field(default=32, metadata={"help": "Sequences per forward pass when generating and scoring."})
    max_length: int = field(default=512, metadata={"help": "Tokens per scored question + answer (longer prompts are cut from the left)."})
    seed: int = field(default=0, metadata={"help": "Seed of the sampling, the neighbours and the reference's data order."})

    def __post_init__(self) -> None:
        check_field_types(self)  # a float must be finite: nan passes every comparison below
        require_at_least(1, prefix_tokens=self.prefix_tokens, num_texts=self.num_texts, reference_epochs=self.reference_epochs,
                         reference_batch_size=self.reference_batch_size, num_neighbours=self.num_neighbours,
                         span_length=self.span_length, batch_size=self.batch_size)
        require_at_least(2, max_length=self.max_length)
        if self.block_length <= self.prefix_tokens:
            raise UnlearnkitError(f"block_length ({self.block_length}) must exceed prefix_tokens ({self.prefix_tokens}): "
                                  "the target has to write something after the prompt (paper: 128 and 16).")
        require_positive(temperature=self.temperature, reference_learning_rate=self.reference_learning_rate)
        require_fraction("mask_fraction", self.mask_fraction, low_open=True)
        if self.reference_base is not None and not self.reference_base.strip():
            raise UnlearnkitError("reference_base is empty: name the model the target was fine-tuned from, or leave it out.")
        check_seed("seed", self.seed)


# ---------------------------------------------------------------------------
# Pure functions: the statistic
# ---------------------------------------------------------------------------


def probability(mean_nll: np.ndarray | Sequence[float]) -> np.ndarray:
    """p(x) = exp(−mean token NLL), elementwise."""
    return np.exp(-np.asarray(mean_nll, dtype=float))


def spv_score(
    target_p: np.ndarray | Sequence[float],
    target_neighbour_p: np.ndarray | Sequence[Sequence[float]],
    reference_p: np.ndarray | Sequence[float],
    reference_neighbour_p: np.ndarray | Sequence[Sequence[float]],
) -> np.ndarray:
    """SPV-MIA's statistic per record, ``(N,)``; lower = more likely a member.

    ``[mean_n p_tgt(x̃_n) − p_tgt(x)] − [mean_n p_ref(x̃_n) − p_ref(x)]`` with
    ``target_p``, ``reference_p`` of shape ``(N,)`` and the neighbours' ``(N, M)``.
    """
    target_p, reference_p = np.asarray(target_p, float), np.asarray(reference_p, float)
    target_neighbour_p, reference_neighbour_p = np.asarray(target_neighbour_p, float), np.asarray(reference_neighbour_p, float)
    if target_p.ndim != 1 or target_p.shape != reference_p.shape:
        raise UnlearnkitError(f"SPV-MIA needs one target and one reference probability per record; got shapes "
                              f"{target_p.shape} and {reference_p.shape}.")
    expected = (target_p.shape[0],)
    for name, values in (("target", target_neighbour_p), ("reference", reference_neighbour_p)):
        if values.ndim != 2 or values.shape[:1] != expected or values.shape[1] == 0:
            raise UnlearnkitError(f"SPV-MIA needs (records, neighbours) {name} neighbour probabilities with at least one "
                                  f"neighbour per record; got shape {values.shape} for {expected[0]} records.")
    return (target_neighbour_p.mean(axis=1) - target_p) - (reference_neighbour_p.mean(axis=1) - reference_p)


@metric("mia_spv_auc", "near 0.5",
        "ROC-AUC, forget (members) vs holdout (non-members), of SPV-MIA's -([mean p_model(neighbours) - p_model(x)] - "
        "[mean p_ref(neighbours) - p_ref(x)]), p = exp(-mean answer NLL), the reference fine-tuned on the model's own "
        "self-prompted texts (on request: spv_mia=true); 1 = forget still recognised, 0.5 = chance (a retain model).",
        SPV_MIA, "privacy", label="MIA SPV AUC", aggregation=AS_IS)
def spv_auc(forget_scores: Sequence[float] | np.ndarray, holdout_scores: Sequence[float] | np.ndarray) -> float:
    """AUC of the membership feature ``−score``: forget (members) vs holdout (non-members), ties ½."""
    return roc_auc(-np.asarray(forget_scores, float), -np.asarray(holdout_scores, float))


# ---------------------------------------------------------------------------
# Neighbours: word-span substitution (the local stand-in for T5 mask-filling)
# ---------------------------------------------------------------------------


def domain_vocabulary(texts: Sequence[str]) -> list[str]:
    """The distinct whitespace-separated words of ``texts``, in order of first appearance."""
    return list(dict.fromkeys(word for text in texts for word in _WORD.findall(text)))


def perturb_words(text: str, vocabulary: Sequence[str], rng: np.random.Generator, mask_fraction: float = 0.3,
                  span_length: int = 2) -> str:
    """``text`` with ``round(mask_fraction · words / span_length)`` spans (at least one) of ``span_length`` words replaced.

    The spans do not overlap (they are blocks of ``span_length`` words from a
    random offset); each replaced word is drawn uniformly from ``vocabulary``
    other than itself. The whitespace between words is kept.
    """
    matches = list(_WORD.finditer(text))
    if not matches:
        raise UnlearnkitError("SPV-MIA cannot perturb an empty answer; every scored row needs a non-empty answer.")
    if len(set(vocabulary)) < 2:
        raise UnlearnkitError("SPV-MIA's neighbours need at least two distinct words in the prompt rows to draw replacements from.")
    count = len(matches)
    # Blocks of span_length words from a random offset (the first block shorter when the offset is not 0): [start, end).
    offset = int(rng.integers(span_length)) if count > span_length else 0
    first = offset - span_length if offset else 0
    blocks = [(max(start, 0), min(start + span_length, count)) for start in range(first, count, span_length)]
    spans = max(1, round(mask_fraction * count / span_length))
    chosen = rng.choice(len(blocks), size=min(spans, len(blocks)), replace=False)
    replaced: dict[int, str] = {}
    pool = list(vocabulary)
    for block in sorted(int(i) for i in chosen):
        for position in range(*blocks[block]):
            original = matches[position].group()
            word = original
            while word == original:
                word = pool[int(rng.integers(len(pool)))]
            replaced[position] = word
    pieces, last = [], 0
    for position, match in enumerate(matches):
        pieces.append(text[last:match.start()])
        pieces.append(replaced.get(position, match.group()))
        last = match.end()
    pieces.append(text[last:])
    return "".join(pieces)


def neighbours(texts: Sequence[str], vocabulary: Sequence[str], count: int, mask_fraction: float, span_length: int,
               seed: int) -> list[list[str]]:
    """``count`` perturbed versions of each text (:func:`perturb_words`), reproducible from ``seed``."""
    rng = np.random.default_rng(seed)
    return [[perturb_words(text, vocabulary, rng, mask_fraction, span_length) for _ in range(count)] for text in texts]


# ---------------------------------------------------------------------------
# Self-prompting and the reference model
# ---------------------------------------------------------------------------


def check_can_generate(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> None:
    """Refuse a model or tokenizer that cannot write the self-prompted texts."""
    if tokenizer.eos_token_id is None:
        raise UnlearnkitError("SPV-MIA samples texts from the model and needs the tokenizer's EOS token to end them; this "
                              "tokenizer has none. Give a tokenizer with an EOS token (tokenizer.eos_token).")
    if not callable(getattr(model, "generate", None)) or not getattr(model, "can_generate", lambda: False)():
        raise UnlearnkitError(f"SPV-MIA needs a model that can generate text (a causal LM); {type(model).__name__} cannot.")


def self_prompts(tokenizer: PreTrainedTokenizerBase, fmt: PromptFormat, rows: Sequence[Mapping[str, Any]], prefix_tokens: int,
                 count: int) -> list[list[int]]:
    """``count`` prefixes of ``prefix_tokens`` tokens of the rows' prompt + answer sequences, the rows cycled in order."""
    sequences = [prompt + answer for prompt, answer in fmt.qa_ids_many(tokenizer, [(row["question"], row["answer"]) for row in rows])]
    prefixes = [sequence[:prefix_tokens] for sequence in sequences if sequence]
    if not prefixes:
        raise UnlearnkitError("SPV-MIA found no text in the prompt rows to prompt the model with.")
    return [prefixes[i % len(prefixes)] for i in range(count)]


@torch.no_grad()
def sample_continuations(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, prompts: Sequence[Sequence[int]],
                         block_length: int, temperature: float, batch_size: int, seed: int) -> list[list[int]]:
    """Prompt + sampled continuation of each prompt, up to ``block_length`` tokens, cut before the first EOS.

    Sampling is from the model's full distribution (top-k and top-p off) at
    ``temperature``, under a private random state: the caller's is left as it was.
    """
    check_can_generate(model, tokenizer)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    devices = [model.device.index or 0] if model.device.type == "cuda" else []
    texts: list[list[int]] = [[] for _ in prompts]
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    was_training = model.training
    model.eval()
    try:
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(seed)
            for start in range(0, len(order), batch_size):
                chosen = order[start:start + batch_size]
                batch = {k: v.to(model.device) for k, v in left_pad_prompts([list(prompts[i]) for i in chosen], pad).items()}
                width = batch["input_ids"].shape[1]
                generated = model.generate(
                    **batch, do_sample=True, temperature=temperature, top_k=0, top_p=1.0,
                    max_new_tokens=block_length - width, pad_token_id=pad, eos_token_id=tokenizer.eos_token_id, use_cache=True,
                )
                # generated: (B, width + new); the new tokens start after the left-padded prompts.
                for row, index in enumerate(chosen):
                    new = generated[row, width:].tolist()
                    if tokenizer.eos_token_id in new:
                        new = new[: new.index(tokenizer.eos_token_id)]
                    texts[index] = [*prompts[index], *new]
    finally:
        model.train(was_training)
    return texts


def train_reference(reference: PreTrainedModel, texts: Sequence[Sequence[int]], eos_token_id: int, pad_token_id: int,
                    config: SpvMiaConfig) -> list[float]:
    """Fine-tune ``reference`` in place on token sequences (causal-LM loss on every token but the first, EOS appended).

    AdamW (weight decay 0) with the learning rate decaying linearly to 0 over
    the steps and no warm-up (the Trainer's defaults, which the authors'
    fine-tuning scripts keep); ``config.reference_epochs`` epochs in a seeded
    order. Returns the mean loss of each epoch.
    """
    features = [{"input_ids": [*ids, eos_token_id], "labels": [IGNORE_INDEX, *ids[1:], eos_token_id]} for ids in texts if ids]
    if not features:
        raise UnlearnkitError("SPV-MIA's self-prompted texts are all empty: the model wrote nothing to train the reference on.")
    reference.requires_grad_(True)
    reference.train()
    optimizer = torch.optim.AdamW(reference.parameters(), lr=config.reference_learning_rate, weight_decay=0.0)
    steps = config.reference_epochs * math.ceil(len(features) / config.reference_batch_size)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: max(0.0, 1.0 - step / steps))
    rng = np.random.default_rng(config.seed)
    losses = []
    for _ in range(config.reference_epochs):
        total, batches = 0.0, 0
        order = rng.permutation(len(features))
        for start in range(0, len(order), config.reference_batch_size):
            batch = pad_batch([features[int(i)] for i in order[start:start + config.reference_batch_size]], pad_token_id)
            batch = {k: v.to(reference.device) for k, v in batch.items()}
            logits = reference(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits  # (B, T, V)
            # Position t predicts token t+1: (B, V, T-1) against (B, T-1), padding ignored.
            loss = torch.nn.functional.cross_entropy(logits[:, :-1].float().transpose(1, 2), batch["labels"][:, 1:],
                                                     ignore_index=IGNORE_INDEX)
            if not torch.isfinite(loss):
                raise UnlearnkitError("SPV-MIA's reference fine-tuning reached a non-finite loss; lower reference_learning_rate.")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(reference.parameters(), 1.0)
            optimizer.step()
            schedule.step()
            total, batches = total + loss.item(), batches + 1
        losses.append(total / batches)
        logger.info("SPV-MIA reference: epoch %d/%d, loss %.4f", len(losses), config.reference_epochs, losses[-1])
    reference.eval()
    reference.requires_grad_(False)
    return losses


# ---------------------------------------------------------------------------
# Forget vs holdout
# ---------------------------------------------------------------------------


@dataclass
class SpvMiaResult:
    """The AUC, each tested row's statistic and its parts, the cost in seconds and what a reader must know."""

    summary: dict[str, float]
    forget: list[dict[str, Any]]
    holdout: list[dict[str, Any]]
    details: dict[str, float]
    notes: list[str] = field(default_factory=list)


def check_rows(forget: Sequence[Mapping[str, Any]], holdout: Sequence[Mapping[str, Any]],
               prompt_rows: Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """The prompt rows that are not tested; refuse too few rows or rows without a question and answer."""
    for name, rows in (("forget", forget), ("holdout", holdout)):
        if len(rows) < MIN_ROWS:
            raise UnlearnkitError(f"SPV-MIA needs at least {MIN_ROWS} {name} rows for its forget-vs-holdout AUC; got {len(rows)}.")
    for name, rows in (("forget", forget), ("holdout", holdout), ("prompt (retain)", prompt_rows)):
        lacking = sum(1 for row in rows if not str(row.get("question", "")).strip() or not str(row.get("answer", "")).strip())
        if lacking:
            raise UnlearnkitError(f"SPV-MIA needs a non-empty 'question' and 'answer' on every {name} row ({lacking} lack one).")
    tested = {(row["question"], row["answer"]) for row in (*forget, *holdout)}
    usable = [row for row in prompt_rows if (row["question"], row["answer"]) not in tested]
    if not usable:
        raise UnlearnkitError("SPV-MIA needs prompt rows (the retain set) other than the rows it tests, to prompt the model "
                              "with same-domain text; give a retain set.")
    return usable


def evaluate_spv_mia(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    fmt: PromptFormat,
    forget: Sequence[Mapping[str, Any]],
    holdout: Sequence[Mapping[str, Any]],
    prompt_rows: Sequence[Mapping[str, Any]],
    config: SpvMiaConfig = SpvMiaConfig(),
    reference_base: PreTrainedModel | None = None,
) -> SpvMiaResult:
    """SPV-MIA on ``model``: AUC forget vs holdout of ``−score`` (see the module docstring); ``model`` is never changed.

    ``prompt_rows`` give the same-domain prefixes (the retain set; rows also
    tested are left out). ``reference_base``: the model the reference starts
    from (a copy is trained); None loads ``config.reference_base`` when set,
    else copies ``model``.
    """
    usable = check_rows(forget, holdout, prompt_rows)
    check_can_generate(model, tokenizer)
    context = getattr(model.config, "max_position_embeddings", None)
    block_length = min(config.block_length, context) if context else config.block_length
    if block_length <= config.prefix_tokens:
        raise UnlearnkitError(f"The model's context ({context} tokens) leaves no room after the {config.prefix_tokens}-token "
                              "self-prompt; lower prefix_tokens.")
    notes = []
    if block_length < config.block_length:
        notes.append(f"Self-prompted texts were cut to the model's context of {block_length} tokens (block_length {config.block_length}).")
    if reference_base is None and config.reference_base is not None:
        from unlearnkit.modeling import load_model

        reference_base = load_model(config.reference_base)
    if reference_base is not None and reference_base.get_input_embeddings().num_embeddings < len(tokenizer):
        raise UnlearnkitError("The reference base model's vocabulary is smaller than the tokenizer's: it must be the model "
                              "the target was fine-tuned from, with the same tokenizer.")
    started = time.perf_counter()
    prompts = self_prompts(tokenizer, fmt, usable, config.prefix_tokens, config.num_texts)
    logger.info("SPV-MIA: sampling %d self-prompted texts of up to %d tokens", len(prompts), block_length)
    texts = sample_continuations(model, tokenizer, prompts, block_length, config.temperature, config.batch_size, config.seed)
    generated = [len(text) - len(prompt) for text, prompt in zip(texts, prompts, strict=True)]
    if not any(generated):
        raise UnlearnkitError("The model generated nothing after any self-prompt (EOS at once every time), so SPV-MIA has no "
                              "text to train its reference on.")
    generation_seconds = time.perf_counter() - started

    started = time.perf_counter()
    reference = copy.deepcopy(reference_base if reference_base is not None else model)
    reference.to(model.device)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    losses = train_reference(reference, texts, tokenizer.eos_token_id, pad, config)
    reference_seconds = time.perf_counter() - started
    if reference_base is None:
        notes.append("The reference model started from a copy of the attacked model (no reference_base given), not from the "
                     "pre-fine-tuning base as in the paper.")

    started = time.perf_counter()
    vocabulary = domain_vocabulary([row["answer"] for row in usable])
    tested = [*forget, *holdout]
    variants = neighbours([row["answer"] for row in tested], vocabulary, config.num_neighbours, config.mask_fraction,
                          config.span_length, config.seed)
    pairs = [(row["question"], answer) for row, versions in zip(tested, variants, strict=True)
             for answer in (row["answer"], *versions)]
    width = config.num_neighbours + 1
    parts = {}
    for name, scorer in (("target", model), ("reference", reference)):
        # (records, 1 + neighbours): column 0 is the record itself.
        parts[name] = probability(answer_avg_nll(scorer, tokenizer, fmt, pairs, config.batch_size)).reshape(len(tested), width)
    scores = spv_score(parts["target"][:, 0], parts["target"][:, 1:], parts["reference"][:, 0], parts["reference"][:, 1:])
    scoring_seconds = time.perf_counter() - started
    del reference

    split = len(forget)
    auc = spv_auc(scores[:split], scores[split:])
    samples = [
        {"question": row["question"], "mia_spv": float(scores[i]), "spv_target_p": float(parts["target"][i, 0]),
         "spv_target_neighbour_p": float(parts["target"][i, 1:].mean()), "spv_reference_p": float(parts["reference"][i, 0]),
         "spv_reference_neighbour_p": float(parts["reference"][i, 1:].mean()), "spv_neighbour_example": variants[i][0]}
        for i, row in enumerate(tested)
    ]
    details = {
        "generation_seconds": generation_seconds, "reference_seconds": reference_seconds, "scoring_seconds": scoring_seconds,
        "self_prompted_texts": float(len(texts)), "mean_generated_tokens": float(np.mean(generated)),
        "block_length": float(block_length), "reference_final_loss": losses[-1],
        "reference_from_base": float(reference_base is not None),
    }
    logger.info("SPV-MIA: AUC %.3f (generation %.1f s, reference %.1f s, scoring %.1f s)", auc, generation_seconds,
                reference_seconds, scoring_seconds)
    return SpvMiaResult({"mia_spv_auc": auc}, samples[:split], samples[split:], details, notes)
