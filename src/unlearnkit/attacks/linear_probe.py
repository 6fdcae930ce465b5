"""Latent-knowledge probing: do the model's activations still tell a true fact from false ones?

Lynch et al., "Eight Methods to Evaluate Robust Unlearning in LLMs", arXiv
2024 (their latent-knowledge test: linear probes on activations for true and
false statements about the forgotten topic). Each row gives one true
statement (its ``paraphrased_answer``) and false ones (its
``perturbed_answer`` list). A statement's features are one decoder layer's
output, averaged over the statement's tokens. An L2-regularised logistic
regression learns "true vs. false" on the *retain* rows' statements, then
scores the forget rows' statements: per row, the share of its false
statements scored below the true one (pairwise ranking accuracy, ties
half). The recovery is the mean over forget rows.

Chance is 0.5, not 0: a model that knows nothing of the forget facts still
scores about 0.5 (and style cues may push it a little either way), so the
audit judges this attack against the retain oracle's score, not against 0.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from unlearnkit.attacks.base import AttackOutcome, AuditConfig, AuditData, hidden_state_model, register_attack
from unlearnkit.attacks.logit_lens import recorded_layers
from unlearnkit.errors import UnlearnkitError
from unlearnkit.parameters import check_layers_exist, decoder_layers

# Retain rows the probe trains on at most (evenly spaced): enough for a linear probe, and fast.
MAX_TRAIN_ROWS = 2000
# L2 penalty on the weights of standardised features (added to the mean class-balanced log loss).
PROBE_L2 = 1e-2


def fit_logistic_probe(
    features: torch.Tensor, labels: torch.Tensor, l2: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Logistic regression of ``labels`` (N,) in {0, 1} on ``features`` (N, D): returns ``(w, b, mean, std)``.

    Features are standardised (``(x - mean) / std``, std floored at 1e-6 for
    constant features); the loss is the class-balanced mean log loss
    (each class weighs half) plus ``l2 / 2 * |w|^2``, minimised full-batch
    by L-BFGS. Score new features with :func:`probe_scores`.
    """
    if features.ndim != 2 or labels.shape != (features.shape[0],):
        raise UnlearnkitError(
            f"fit_logistic_probe needs features (N, D) and labels (N,), got {tuple(features.shape)} and {tuple(labels.shape)}."
        )
    labels = labels.to(torch.float32)
    positives = int(labels.sum())
    if positives in (0, len(labels)):
        raise UnlearnkitError("The probe needs both true and false statements to train on.")
    features = features.to(torch.float32)
    mean, std = features.mean(dim=0), features.std(dim=0, unbiased=False).clamp(min=1e-6)
    standard = (features - mean) / std
    # Class-balanced weights: every sample of a class weighs 1 / (2 * class size), so the weights sum to 1.
    weights = torch.where(labels > 0, 0.5 / positives, 0.5 / (len(labels) - positives))
    w = torch.zeros(features.shape[1], requires_grad=True)
    b = torch.zeros((), requires_grad=True)
    optimizer = torch.optim.LBFGS([w, b], lr=1.0, max_iter=500, tolerance_grad=1e-7, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        logits = standard @ w + b
        loss = (weights * torch.nn.functional.binary_cross_entropy_with_logits(logits, labels, reduction="none")).sum()
        loss = loss + 0.5 * l2 * w.pow(2).sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        optimizer.step(closure)
    return w.detach(), b.detach(), mean, std


def probe_scores(features: torch.Tensor, probe: tuple[torch.Tensor, ...]) -> torch.Tensor:
    """Logits (N,) of the probe ``(w, b, mean, std)`` on ``features`` (N, D); higher means "true"."""
    w, b, mean, std = probe
    return ((features.to(torch.float32) - mean) / std) @ w + b


def pairwise_accuracy(true_scores: torch.Tensor, false_scores: torch.Tensor) -> torch.Tensor:
    """Per row, the share of its false statements scored below its true one (ties count half): (N,) from (N,) and (N, K).

    NaN entries of ``false_scores`` mark missing statements (rows with fewer
    than K); a row with none gets NaN.
    """
    present = ~torch.isnan(false_scores)
    below = (false_scores < true_scores[:, None]).float() + 0.5 * (false_scores == true_scores[:, None]).float()
    return (below * present).sum(dim=1) / present.sum(dim=1)


def _statements(rows: Sequence[dict], where: str) -> tuple[list[str], list[list[str]]]:
    """Each row's true statement and its false ones; a clear error when a row lacks them."""
    for index, row in enumerate(rows, start=1):
        missing = [name for name in ("paraphrased_answer", "perturbed_answer") if not row.get(name)]
        if missing:
            raise UnlearnkitError(
                f"Row {index} of the {where} set lacks {' and '.join(missing)}: the linear probe needs a true statement "
                "(paraphrased_answer) and false ones (perturbed_answer, a list) for every row."
            )
    falses = [[row["perturbed_answer"]] if isinstance(row["perturbed_answer"], str) else list(row["perturbed_answer"]) for row in rows]
    return [row["paraphrased_answer"] for row in rows], falses


@torch.no_grad()
def statement_features(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, texts: Sequence[str], layer: int, batch_size: int
) -> torch.Tensor:
    """(N, H) float32: decoder layer ``layer``'s output averaged over each text's own tokens (special tokens left out)."""
    model = hidden_state_model(model)
    device = next(model.parameters()).device
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    features = []
    for start in range(0, len(texts), batch_size):
        encoded = tokenizer(list(texts[start:start + batch_size]), return_special_tokens_mask=True)
        width = max(len(ids) for ids in encoded["input_ids"])
        # Right padding whatever the tokenizer's side, so every statement starts at position 0.
        input_ids = torch.full((len(encoded["input_ids"]), width), pad, dtype=torch.long)
        attention_mask = torch.zeros_like(input_ids)
        keep = torch.zeros_like(input_ids, dtype=torch.bool)  # (B, T): the statement's own tokens
        for row, (ids, special) in enumerate(zip(encoded["input_ids"], encoded["special_tokens_mask"], strict=True)):
            input_ids[row, :len(ids)] = torch.tensor(ids)
            attention_mask[row, :len(ids)] = 1
            keep[row, :len(ids)] = torch.tensor(special) == 0
        keep = keep.to(device)

        def pooled(hidden: torch.Tensor) -> torch.Tensor:  # (B, T, H) -> (B, H)
            mask = keep.unsqueeze(-1).to(hidden.dtype)  # noqa: B023 - called only by the forward pass of this iteration, below
            return ((hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1)).float()

        with recorded_layers(model, [layer], pooled) as (outputs, _):
            model(input_ids=input_ids.to(device), attention_mask=attention_mask.to(device))
        features.append(outputs[layer].cpu())
    return torch.cat(features)


def _row_features(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, rows: Sequence[dict], layer: int, batch_size: int, where: str
) -> tuple[torch.Tensor, torch.Tensor]:
    """Features of each row's true statement (N, H) and of its false ones (N, K, H), NaN where a row has fewer than K."""
    trues, falses = _statements(rows, where)
    flat = trues + [text for texts in falses for text in texts]
    features = statement_features(model, tokenizer, flat, layer, batch_size)
    true_features = features[: len(trues)]
    width = max(len(texts) for texts in falses)
    false_features = torch.full((len(rows), width, features.shape[1]), float("nan"))
    cursor = len(trues)
    for row, texts in enumerate(falses):
        false_features[row, : len(texts)] = features[cursor: cursor + len(texts)]
        cursor += len(texts)
    return true_features, false_features


def _scores(true_features: torch.Tensor, false_features: torch.Tensor, probe: tuple) -> tuple[torch.Tensor, torch.Tensor]:
    """Probe logits of the true statements (N,) and of the false ones (N, K), NaN kept where a statement is missing."""
    rows, width, size = false_features.shape
    false_scores = probe_scores(torch.nan_to_num(false_features.reshape(-1, size)), probe).reshape(rows, width)
    return probe_scores(true_features, probe), torch.where(torch.isnan(false_features[..., 0]), float("nan"), false_scores)


@register_attack(
    "linear_probe",
    paper='Lynch et al., "Eight Methods to Evaluate Robust Unlearning in LLMs", arXiv 2024',
    summary="A logistic probe trained on retain statements ranks each forget fact's true statement above its false ones (chance 0.5).",
    family="latent",
    needs=("retain",),
    chance=0.5,
)
def linear_probe(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, data: AuditData, config: AuditConfig) -> AttackOutcome:
    depth = len(decoder_layers(model)[1])
    layer = depth // 2 if config.probe_layer is None else config.probe_layer
    check_layers_exist(model, [layer], "probe_layer")
    retain = list(data.retain)
    if len(retain) > MAX_TRAIN_ROWS:
        retain = [retain[i] for i in np.unique(np.linspace(0, len(retain) - 1, MAX_TRAIN_ROWS).round().astype(int))]
    train_true, train_false = _row_features(model, tokenizer, retain, layer, config.batch_size, "retain")
    present = ~torch.isnan(train_false[..., 0])  # (N, K)
    features = torch.cat([train_true, train_false[present]])
    labels = torch.cat([torch.ones(len(train_true)), torch.zeros(int(present.sum()))])
    probe = fit_logistic_probe(features, labels, PROBE_L2)
    correct = ((probe_scores(features, probe) > 0).float() == labels).float()
    # Balanced, as the probe is trained: with K false statements per true one, "always false" would score K / (K + 1).
    train_accuracy = float((correct[labels == 1].mean() + correct[labels == 0].mean()) / 2)
    retain_pairwise = float(pairwise_accuracy(*_scores(train_true, train_false, probe)).mean())

    forget_true, forget_false = _row_features(model, tokenizer, data.forget, layer, config.batch_size, "forget")
    true_scores, false_scores = _scores(forget_true, forget_false, probe)
    accuracy = pairwise_accuracy(true_scores, false_scores)
    samples = [
        {"question": row["question"], "pairwise_accuracy": float(value), "true_score": float(true),
         "false_scores": [float(s) for s in scores if not np.isnan(float(s))]}
        for row, value, true, scores in zip(data.forget, accuracy, true_scores, false_scores, strict=True)
    ]
    details = {"layer": float(layer), "train_balanced_accuracy": train_accuracy, "retain_pairwise_accuracy": retain_pairwise,
               "train_statements": float(len(labels)), "chance": 0.5}
    measure = "pairwise ranking accuracy of a truth probe"
    return AttackOutcome(recovery=float(accuracy.mean()), measure=measure, per_sample=samples, details=details)
