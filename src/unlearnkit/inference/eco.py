"""ECO prompts: a prompt classifier flags forget queries, whose question embeddings are then corrupted.

Liu, Wang, Tang, Hong and Zhu (Chris Yuhao Liu et al.), "Large Language Model
Unlearning via Embedding-Corrupted Prompts", NeurIPS 2024. A classifier
trained on forget vs. other prompts flags a prompt when p(forget) > tau; a
flagged prompt's token embeddings are corrupted by a forward hook on the
embedding layer (``rand_noise_first_n``: N(0, sigma^2) added to the first d
dimensions; ``zero_out_top_k``: the k largest-|value| dimensions zeroed), with
the strength sigma tuned by zeroth-order search on a forget metric f:

    g = [f(sigma + eps) - f(max(sigma - eps, 1e-8))] / (2 eps),   sigma <- max(sigma - lr g, sigma_min),

stopping once f reaches a target. No weights of the model change.

Differences from the paper, all forced by what is available here: the
classifier is logistic regression on hashed character n-gram counts trained
locally (the paper fine-tunes RoBERTa-base, which cannot be downloaded here);
the corruption covers the whole question span (the paper's TOFU runs corrupt
only name tokens found by a BERT NER model); f is the forget answers' mean
per-token probability, with its default target the target model's per-token
probability of each forget answer asked after another forget question (an
answer its question does not support), the QA analogue of the paper's stop
at chance accuracy; tau defaults to 0.5, the class-balanced logistic
regression's decision boundary (the paper's 0.99-0.9999 suit RoBERTa's
confidence, and would let most held-out forget questions through here).
"""

from __future__ import annotations

import logging
import math
import zlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from unlearnkit.data.encoding import PromptFormat
from unlearnkit.errors import UnlearnkitError
from unlearnkit.inference.base import PromptLayout, WrapData, WrappedModel, causal_lm_logits, register_wrapper, strip_padding
from unlearnkit.inference.prompting import (
    char_ngram_features,
    check_qa_rows,
    format_from_record,
    format_record,
    question_ids_of,
    question_text,
)
from unlearnkit.settings import (
    check_choice,
    check_field_types,
    check_seed,
    require_at_least,
    require_fraction,
    require_non_negative,
    require_positive,
)

logger = logging.getLogger("unlearnkit")

CLASSIFIER_FILE = "eco_classifier.safetensors"
CORRUPTIONS = ("rand_noise_first_n", "zero_out_top_k")
# The lower clamp of sigma - eps in the gradient estimate (the authors' zoo.py).
ZO_FLOOR = 1e-8
# Question texts whose scores are remembered (decoding asks for the same question once per generated token).
SCORE_CACHE_SIZE = 65536


@dataclass
class ECOConfig:
    threshold: float = field(
        default=0.5,
        metadata={"help": "tau: a prompt is flagged when the classifier's p(forget) > tau (authors, for their RoBERTa classifier: "
                          "0.99 on TOFU 1%/5%, 0.9999 on TOFU 10%, 0.999 on WMDP; 0.5 here, the decision boundary of the "
                          "class-balanced logistic regression)."},
    )
    corruption: str = field(
        default="rand_noise_first_n",
        metadata={"help": "Embedding corruption of flagged prompts' question tokens: 'rand_noise_first_n' (N(0, strength^2) on "
                          "the first `dims` dimensions) or 'zero_out_top_k' (the round(strength) largest-|value| dims zeroed)."},
    )
    dims: int = field(default=1, metadata={"help": "rand_noise_first_n: dimensions that get noise (authors' WMDP config: 1)."})
    strength: float = field(
        default=0.1,
        metadata={"help": "sigma: the corruption strength, where the zeroth-order search starts (authors: 0.1); the strength "
                          "used when tune=false."},
    )
    tune: bool = field(default=True, metadata={"help": "Tune the strength by zeroth-order search on the forget set at build."})
    zo_learning_rate: float = field(default=100.0, metadata={"help": "Zeroth-order search: step size lr (authors: 1e2)."})
    zo_epsilon_ratio: float = field(
        default=0.999,
        metadata={"help": "Zeroth-order search: eps = this * the starting strength (authors: 0.999)."},
    )
    zo_steps: int = field(default=10, metadata={"help": "Zeroth-order search: most steps (authors: 10)."})
    min_strength: float = field(default=1e-8, metadata={"help": "Zeroth-order search: sigma_min, the lowest strength."})
    target: float | None = field(
        default=None,
        metadata={"help": "Zeroth-order search: stop once the forget answers' mean per-token probability under corruption is "
                          "at most this (None: chance, the target model's per-token probability of each forget answer "
                          "asked after another forget row's question)."},
    )
    hash_dims: int = field(default=16384, metadata={"help": "Classifier: hashed character n-gram buckets."})
    ngram_min: int = field(default=3, metadata={"help": "Classifier: shortest character n-gram."})
    ngram_max: int = field(default=5, metadata={"help": "Classifier: longest character n-gram."})
    classifier_steps: int = field(default=300, metadata={"help": "Classifier: full-batch Adam steps of the logistic regression."})
    classifier_learning_rate: float = field(default=0.1, metadata={"help": "Classifier: Adam learning rate."})
    weight_decay: float = field(default=1e-4, metadata={"help": "Classifier: L2 penalty on the weights."})
    heldout_fraction: float = field(
        default=0.2,
        metadata={"help": "Classifier: share of each class held out to measure accuracy before the final fit on all rows."},
    )
    seed: int = field(default=0, metadata={"help": "Seed of the held-out split and of the noise (combined with each question)."})
    batch_size: int = field(default=32, metadata={"help": "Rows per forward pass while tuning the strength."})

    def __post_init__(self) -> None:
        check_field_types(self)
        require_fraction("threshold", self.threshold, high_open=True)
        check_choice("corruption", self.corruption, CORRUPTIONS)
        require_at_least(1, dims=self.dims, hash_dims=self.hash_dims, ngram_min=self.ngram_min, classifier_steps=self.classifier_steps,
                         batch_size=self.batch_size)
        require_at_least(0, zo_steps=self.zo_steps)
        require_positive(strength=self.strength, zo_learning_rate=self.zo_learning_rate, min_strength=self.min_strength,
                         classifier_learning_rate=self.classifier_learning_rate)
        require_fraction("zo_epsilon_ratio", self.zo_epsilon_ratio, low_open=True, high_open=True)
        require_non_negative(weight_decay=self.weight_decay)
        require_fraction("target", self.target)
        require_fraction("heldout_fraction", self.heldout_fraction, high_open=True)
        if self.ngram_max < self.ngram_min:
            raise UnlearnkitError(f"ngram_max ({self.ngram_max}) must be >= ngram_min ({self.ngram_min}).")
        check_seed("seed", self.seed)


# --- The prompt classifier ---------------------------------------------------------------------------------------------


def flag(scores: torch.Tensor, threshold: float) -> torch.Tensor:
    """Which scores flag their prompt: p(forget) strictly above tau, as the authors' ``prob > threshold``."""
    return scores > threshold


def _fit_logistic(features: torch.Tensor, labels: torch.Tensor, settings: ECOConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """Weights (D,) and bias () of a logistic regression on ``features`` (N, D) and 0/1 ``labels`` (N,).

    Each class weighs half of the loss (forget sets are a few percent of the
    data: unweighted, the classifier would learn to flag nothing), plus
    ``weight_decay`` * ||w||^2. Full-batch Adam from zero: deterministic.
    """
    weight = torch.zeros(features.shape[1], requires_grad=True)
    bias = torch.zeros((), requires_grad=True)
    positive = labels == 1
    class_weight = torch.where(positive, 0.5 / positive.sum().clamp(min=1), 0.5 / (~positive).sum().clamp(min=1))  # (N,)
    optimizer = torch.optim.Adam([weight, bias], lr=settings.classifier_learning_rate)
    for _ in range(settings.classifier_steps):
        optimizer.zero_grad()
        margins = features @ weight + bias  # (N,) logits of p(forget)
        loss = (nn.functional.binary_cross_entropy_with_logits(margins, labels.float(), reduction="none") * class_weight).sum()
        loss = loss + settings.weight_decay * weight.pow(2).sum()
        loss.backward()
        optimizer.step()
    return weight.detach(), bias.detach()


def train_classifier(
    forget_texts: Sequence[str], retain_texts: Sequence[str], settings: ECOConfig
) -> tuple[torch.Tensor, torch.Tensor, dict[str, Any]]:
    """Fit the forget-vs-retain classifier; held-out accuracy first (a seeded stratified split), then the final fit on all.

    Returns the weights (D,), the bias () and a record: rows per class, the held-out
    rows and accuracy at tau (None when a class has too few rows to hold one out), and
    the training accuracy of the final fit.
    """
    texts = [*forget_texts, *retain_texts]
    labels = torch.tensor([1] * len(forget_texts) + [0] * len(retain_texts))
    features = char_ngram_features(texts, settings.hash_dims, (settings.ngram_min, settings.ngram_max))  # (N, D)
    record: dict[str, Any] = {"kind": "logistic regression on hashed character n-grams", "forget_rows": len(forget_texts),
                              "retain_rows": len(retain_texts), "threshold": settings.threshold}
    generator = np.random.default_rng(settings.seed)
    heldout: list[int] = []
    for members in (range(len(forget_texts)), range(len(forget_texts), len(texts))):
        count = round(settings.heldout_fraction * len(members))
        if 0 < count < len(members):
            heldout += generator.choice(list(members), size=count, replace=False).tolist()
    classes_held = {int(labels[i]) for i in heldout}
    if settings.heldout_fraction > 0 and classes_held == {0, 1}:
        chosen = torch.tensor(sorted(heldout))
        train = torch.tensor(sorted(set(range(len(texts))) - set(heldout)))
        weight, bias = _fit_logistic(features[train], labels[train], settings)
        predicted = flag(torch.sigmoid(features[chosen] @ weight + bias), settings.threshold)
        record.update(heldout_rows=len(heldout), heldout_accuracy=float((predicted == labels[chosen].bool()).float().mean()),
                      heldout_forget_recall=float(predicted[labels[chosen] == 1].float().mean()),
                      heldout_retain_false_positive=float(predicted[labels[chosen] == 0].float().mean()))
    else:
        record.update(heldout_rows=0, heldout_accuracy=None,
                      heldout_note="too few rows per class to hold any out (or heldout_fraction=0)")
    weight, bias = _fit_logistic(features, labels, settings)
    predicted = flag(torch.sigmoid(features @ weight + bias), settings.threshold)
    record["train_accuracy"] = float((predicted == labels.bool()).float().mean())
    return weight, bias, record


# --- The zeroth-order search -------------------------------------------------------------------------------------------


def zeroth_order_search(
    metric: Callable[[float], float],
    start: float,
    learning_rate: float,
    epsilon: float,
    steps: int,
    target: float,
    min_strength: float,
) -> tuple[float, list[dict[str, float]]]:
    """Tune a scalar strength sigma to bring ``metric`` (lower: more forgotten) down to ``target``.

    Each step: stop if metric(sigma) <= target; else the two-point estimate
    g = [metric(sigma + eps) - metric(max(sigma - eps, 1e-8))] / (2 eps) and
    sigma <- max(sigma - lr g, sigma_min). Returns the final sigma and one record
    per evaluated sigma (its metric, and the gradient and next sigma when a step
    was taken).
    """
    strength = start
    history: list[dict[str, float]] = []
    for step in range(steps + 1):
        value = metric(strength)
        entry = {"step": float(step), "strength": strength, "metric": value}
        history.append(entry)
        if value <= target or step == steps:
            break
        gradient = (metric(strength + epsilon) - metric(max(strength - epsilon, ZO_FLOOR))) / (2 * epsilon)
        strength = max(strength - learning_rate * gradient, min_strength)
        entry.update(gradient=gradient, next_strength=strength)
    return strength, history


# --- The corruption ----------------------------------------------------------------------------------------------------


def corrupt_embeddings(
    embeddings: torch.Tensor, corruption: str, strength: float, dims: int, noise: torch.Tensor | None = None
) -> torch.Tensor:
    """Corrupted copies of token embeddings (N, H).

    ``rand_noise_first_n``: ``strength * noise`` added to the first ``dims``
    dimensions, ``noise`` (N, dims) standard normal (drawn by the caller, so
    that the same prompt gets the same noise). ``zero_out_top_k``: the
    round(strength) dimensions of largest |value| of each row set to 0.
    """
    if corruption == "rand_noise_first_n":
        if noise is None:
            raise ValueError("rand_noise_first_n needs the noise drawn for the tokens.")
        width = min(dims, embeddings.shape[-1])
        shift = torch.zeros_like(embeddings)
        shift[:, :width] = strength * noise[:, :width].to(embeddings.dtype)
        return embeddings + shift
    count = min(max(round(strength), 0), embeddings.shape[-1])
    if count == 0:
        return embeddings.clone()
    top = embeddings.abs().topk(count, dim=-1).indices  # (N, k)
    keep = torch.ones_like(embeddings).scatter(-1, top, 0.0)
    return embeddings * keep


# --- The wrapper ---------------------------------------------------------------------------------------------------------


@register_wrapper(
    "eco",
    config=ECOConfig,
    paper='Liu et al., "Large Language Model Unlearning via Embedding-Corrupted Prompts", NeurIPS 2024',
    summary="A forget-prompt classifier (p > tau flags); flagged questions' embeddings corrupted, strength tuned by zeroth-order search.",
    family="input",
    needs_retain=True,
)
class ECO(WrappedModel):
    """Embedding-corrupted prompts (Liu et al., NeurIPS 2024) with a locally trained hashed n-gram classifier."""

    def __init__(self, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, settings: ECOConfig, fmt: PromptFormat,
                 weight: torch.Tensor, bias: torch.Tensor, strength: float) -> None:
        super().__init__(model, tokenizer, settings)
        self.fmt = fmt
        self.layout = PromptLayout.of(tokenizer, fmt)
        # Buffers, not parameters: an attack that fine-tunes or quantizes the wrapped model leaves the classifier alone.
        self.register_buffer("classifier_weight", weight.float().clone(), persistent=False)  # (hash_dims,)
        self.register_buffer("classifier_bias", bias.float().clone().reshape(()), persistent=False)  # ()
        self.strength = float(strength)
        self.forced = False  # the strength search corrupts every prompt, whatever the classifier says
        self.classifier_record: dict[str, Any] = {}
        self.search_record: dict[str, Any] = {}
        self._scores: dict[str, float] = {}

    # What the wrapper decides ---------------------------------------------------------------------------------------
    def scores(self, texts: Sequence[str]) -> torch.Tensor:
        """The classifier's p(forget) of each question text, (N,)."""
        settings = self.settings
        features = char_ngram_features(texts, settings.hash_dims, (settings.ngram_min, settings.ngram_max))
        return torch.sigmoid(features @ self.classifier_weight.cpu() + self.classifier_bias.cpu())

    def _plan(self, rows: Sequence[Sequence[int]]) -> list[dict[str, Any]]:
        """Per row (padding removed): the question span, its text, score and flag (rows that are not prompts: no span)."""
        plans: list[dict[str, Any]] = []
        for row in rows:
            span = self.layout.question_span(row)
            if span is None or span[1] == span[0]:
                plans.append({"span": None, "flagged": False, "score": None})
                continue
            text = question_text(self.tokenizer, row[span[0]:span[1]])
            if text not in self._scores:
                if len(self._scores) >= SCORE_CACHE_SIZE:
                    self._scores.clear()
                self._scores[text] = float(self.scores([text])[0])
            score = self._scores[text]
            flagged = self.forced or bool(flag(torch.tensor([score]), self.settings.threshold)[0])
            plans.append({"span": span, "flagged": flagged, "score": score, "question": tuple(row[span[0]:span[1]])})
        return plans

    def decisions(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> list[dict[str, Any]]:
        """Per row: flagged (p(forget) > tau) and the score (None for rows that are not prompts of the format)."""
        return [{"flagged": plan["flagged"], "score": plan["score"]} for plan in self._plan(strip_padding(input_ids, attention_mask))]

    def _noise(self, question: tuple[int, ...]) -> torch.Tensor:
        """Standard normal noise (question tokens, dims), the same for the same question in every call and process."""
        generator = torch.Generator().manual_seed(self.settings.seed * 2**32 + zlib.crc32(np.asarray(question, dtype=np.int64).tobytes()))
        return torch.randn((len(question), self.settings.dims), generator=generator)

    def _targets(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> list[tuple[int, torch.Tensor, torch.Tensor | None]]:
        """The flagged rows: (batch row, positions of its question in ``input_ids`` (S,), noise (S, dims) or None)."""
        targets = []
        for index, plan in enumerate(self._plan(strip_padding(input_ids, attention_mask))):
            if plan["flagged"]:
                places = attention_mask[index].bool().nonzero().squeeze(-1)[plan["span"][0]:plan["span"][1]]  # (S,)
                noise = self._noise(plan["question"]).to(input_ids.device) if self.settings.corruption == "rand_noise_first_n" else None
                targets.append((index, places, noise))
        return targets

    @contextmanager
    def _corrupting(self, targets: list[tuple[int, torch.Tensor, torch.Tensor | None]], width: int) -> Iterator[None]:
        """A forward hook on the embedding layer that corrupts the flagged questions in passes over all ``width`` positions
        (a decoding step's single new token is left alone)."""

        def hook(_module: nn.Module, _inputs: Any, output: torch.Tensor) -> torch.Tensor:
            if output.shape[1] != width:
                return output
            corrupted = output.clone()  # (B, T, H); flagged rows' question tokens replaced below, every other token untouched
            for row, places, noise in targets:
                corrupted[row, places] = corrupt_embeddings(output[row, places], self.settings.corruption, self.strength,
                                                            self.settings.dims, noise)
            return corrupted

        handle = self.model.get_input_embeddings().register_forward_hook(hook)
        try:
            yield
        finally:
            handle.remove()

    def wrapped_logits(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        targets = self._targets(input_ids, attention_mask)
        if not targets:
            return causal_lm_logits(self.model, input_ids, attention_mask)  # nothing flagged: exactly the target's logits
        with self._corrupting(targets, input_ids.shape[1]):
            return causal_lm_logits(self.model, input_ids, attention_mask)

    decodes_on_target = True  # the corruption acts on the prompt's embeddings only: the target decodes, the hook in force

    @property
    def latent_model(self) -> nn.Module:
        """The target: a white-box attacker reads its hidden states with prompts of their own (the change is to the prompt)."""
        return self.model

    @contextmanager
    def target_decoding(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> Iterator[None]:
        """The flagged questions corrupted in the prompt's pass; each decoding step's single new token is left alone."""
        with self._corrupting(self._targets(input_ids, attention_mask), input_ids.shape[1]):
            yield

    @contextmanager
    def forcing(self, strength: float | None = None) -> Iterator[ECO]:
        """Every prompt flagged (and the strength set) inside the block: the strength search's view of the forget set."""
        saved = self.forced, self.strength
        self.forced = True
        if strength is not None:
            self.strength = float(strength)
        try:
            yield self
        finally:
            self.forced, self.strength = saved

    # Building, saving, loading --------------------------------------------------------------------------------------
    @classmethod
    def build(cls, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, data: WrapData, settings: ECOConfig,
              progress: bool = False) -> ECO:
        from unlearnkit.evaluation.scoring import answer_nll

        if not data.forget:
            raise UnlearnkitError("ECO trains its prompt classifier on forget vs. retain questions; the forget set is empty.")
        if not data.retain:
            raise UnlearnkitError("ECO trains its prompt classifier on forget vs. retain questions; give a retain set.")
        check_qa_rows(data.forget, "forget set")
        check_qa_rows(data.retain, "retain set")
        layout = PromptLayout.of(tokenizer, data.fmt)

        def texts(rows: Sequence[dict]) -> list[str]:
            return [question_text(tokenizer, question_ids_of(tokenizer, data.fmt, layout, row["question"])) for row in rows]

        weight, bias, classifier_record = train_classifier(texts(data.forget), texts(data.retain), settings)
        wrapped = cls(model, tokenizer, settings, data.fmt, weight, bias, settings.strength)
        wrapped.classifier_record = classifier_record
        wrapped.build_record = {f"classifier_{key}": value for key, value in classifier_record.items()
                                if key in ("heldout_accuracy", "train_accuracy", "heldout_rows")}
        wrapped.eval()
        if not settings.tune:
            wrapped.search_record = {"tuned": False, "strength": settings.strength}
            return wrapped

        pairs = [(row["question"], row["answer"]) for row in data.forget]

        def probability(model_: nn.Module, scored: Sequence[tuple[str, str]]) -> float:
            nll, tokens = answer_nll(model_, tokenizer, data.fmt, scored, batch_size=settings.batch_size)
            return float(np.mean(np.exp(-nll / np.maximum(tokens, 1))))  # mean per-token probability

        target, target_source = settings.target, "setting"
        if target is None:
            # Chance level: the target model's probability of each forget answer asked after another forget question (the
            # next row's, cyclically; an empty question when there is one row), an answer its question does not support.
            mismatched = [(data.forget[(index + 1) % len(data.forget)]["question"] if len(data.forget) > 1 else "", answer)
                          for index, (_, answer) in enumerate(pairs)]
            target = probability(model, mismatched)
            target_source = "target model's per-token probability of each forget answer after another forget question"

        def metric(strength: float) -> float:
            with wrapped.forcing(strength):
                return probability(wrapped, pairs)

        epsilon = settings.zo_epsilon_ratio * settings.strength
        strength, history = zeroth_order_search(metric, settings.strength, settings.zo_learning_rate, epsilon, settings.zo_steps,
                                                target, settings.min_strength)
        reached = history[-1]["metric"] <= target
        if not reached:
            logger.warning("ECO's strength search stopped after %d steps at strength %.4g with forget probability %.4g, above its "
                           "target %.4g; raise zo_steps or zo_learning_rate.", settings.zo_steps, strength, history[-1]["metric"], target)
        wrapped.strength = strength
        wrapped.build_record.update(strength=strength, strength_search_reached_target=reached, forget_probability_target=target,
                                    forget_probability_tuned=history[-1]["metric"])
        wrapped.search_record = {"tuned": True, "strength": strength, "target": target, "target_source": target_source,
                                 "reached_target": reached, "epsilon": epsilon, "metric": "forget answers' mean per-token probability",
                                 "unflagged_metric": probability(model, pairs), "history": history}
        return wrapped

    def save_parts(self, folder: Path) -> dict[str, Any]:
        save_file({"weight": self.classifier_weight.detach().cpu().contiguous(),
                   "bias": self.classifier_bias.detach().cpu().reshape(1).contiguous()}, str(folder / CLASSIFIER_FILE))
        return {"format": format_record(self.fmt), "classifier": CLASSIFIER_FILE, "strength": self.strength,
                "classifier_record": self.classifier_record, "search": self.search_record}

    @classmethod
    def load_parts(cls, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, settings: ECOConfig, folder: Path,
                   parts: Mapping[str, Any]) -> ECO:
        path = folder / str(parts.get("classifier", CLASSIFIER_FILE))
        try:
            tensors = load_file(str(path))
            weight, bias = tensors["weight"], tensors["bias"]
            strength = float(parts["strength"])
            fmt = format_from_record(parts["format"])
        except (OSError, ValueError, KeyError, TypeError) as error:
            raise UnlearnkitError(f"{path} cannot be read as ECO's classifier ({error}); build the wrapped model again.") from None
        if weight.shape != (settings.hash_dims,) or bias.numel() != 1 or not math.isfinite(strength):
            raise UnlearnkitError(f"{path} does not match the settings (hash_dims={settings.hash_dims}); build the wrapped model again.")
        wrapped = cls(model, tokenizer, settings, fmt, weight, bias.reshape(()), strength)
        wrapped.classifier_record = dict(parts.get("classifier_record", {}))
        wrapped.search_record = dict(parts.get("search", {}))
        return wrapped


