"""Secret-sharer exposure and PII extraction rate: pure functions, and the model scoring that feeds them.

* **Exposure** (Carlini et al., "The Secret Sharer: Evaluating and Testing Unintended Memorization in Neural
  Networks", USENIX Security 2019, arXiv 1802.08232). A canary s[r] holds a secret r drawn from a randomness
  space R; every r' in R is ranked by the log-perplexity of s[r'] under the model (rank 1 = the most likely), and
  ``exposure(r) = log2 |R| - log2 rank(r)``, from 0 (the least likely) to log2 |R| (the most likely of all).
  Ties: ``rank = 1 + #{r' : logppl(r') < logppl(r)}`` (the candidates strictly more likely, plus one), so a
  canary tied with others gets the best rank among them; the canary itself belongs to the candidate set.
  When R is too large to enumerate, :func:`skew_normal_exposure` is the paper's estimate: fit a skew-normal to
  the log-perplexities of sampled candidates and take ``exposure ~ -log2 CDF(logppl(r))``.
* **Extraction rate** (Huang et al., "Are Large Pre-Trained Language Models Leaking Your Personal Information?",
  Findings of EMNLP 2022): the fraction of secrets whose exact text appears in the model's greedy output.

Log-perplexity here is the summed negative log-likelihood (nats) of the secret's tokens given the shared
prefix: the prefix is the same for every candidate and the base of the logarithm does not change ranks.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence

import numpy as np
import torch
from transformers import PreTrainedModel

from unlearnkit.errors import UnlearnkitError

# Candidates scored per forward pass: a tiny model's logits over the secret's positions stay small at this size.
SCORING_BATCH = 1024


def exposure_rank(canary_log_perplexity: float, candidate_log_perplexities: Sequence[float] | np.ndarray) -> int:
    """The canary's rank among the candidates: 1 + the number of candidates strictly more likely (lower log-perplexity)."""
    candidates = np.asarray(candidate_log_perplexities, dtype=np.float64)
    if candidates.ndim != 1 or candidates.size == 0:
        raise UnlearnkitError("Exposure needs a non-empty list of candidate log-perplexities (the canary's among them).")
    return int(np.count_nonzero(candidates < canary_log_perplexity)) + 1


def exposure(canary_log_perplexity: float, candidate_log_perplexities: Sequence[float] | np.ndarray) -> float:
    """``log2 |R| - log2 rank``: |R| is the number of candidates, which must include the canary itself."""
    size = len(candidate_log_perplexities)
    rank = exposure_rank(canary_log_perplexity, candidate_log_perplexities)
    if rank > size:
        raise UnlearnkitError("The canary's log-perplexity is above every candidate's: the candidate set must include the canary.")
    return math.log2(size) - math.log2(rank)


def skew_normal_exposure(canary_log_perplexity: float, sampled_log_perplexities: Sequence[float] | np.ndarray) -> float:
    """The paper's estimate for a space too large to enumerate: ``-log2 Pr[logppl(r') <= logppl(r)]`` under a fitted skew-normal.

    ``sampled_log_perplexities``: candidates drawn uniformly from R (a few thousand). The CDF is floored at the
    smallest positive double, so a canary far below every sample gets a large finite exposure, not infinity.
    """
    from scipy.stats import skewnorm

    samples = np.asarray(sampled_log_perplexities, dtype=np.float64)
    if samples.ndim != 1 or samples.size < 3 or not np.isfinite(samples).all():
        raise UnlearnkitError("The skew-normal exposure needs at least 3 finite sampled log-perplexities.")
    shape, location, scale = skewnorm.fit(samples)
    probability = float(skewnorm.cdf(canary_log_perplexity, shape, loc=location, scale=scale))
    return -math.log2(max(probability, np.finfo(np.float64).tiny))


def extraction_rate(generations: Sequence[str], secrets: Sequence[str]) -> float:
    """The fraction of secrets whose exact text appears in the generation made for it (Huang et al.'s extraction rate)."""
    return float(np.mean(extracted(generations, secrets)))


def extracted(generations: Sequence[str], secrets: Sequence[str]) -> list[bool]:
    """Per secret: whether its exact text appears in its generation."""
    if len(generations) != len(secrets) or not secrets:
        raise UnlearnkitError(f"Extraction needs one generation per secret, got {len(generations)} for {len(secrets)} secret(s).")
    return [secret in generation for generation, secret in zip(generations, secrets, strict=True)]


@torch.no_grad()
def candidate_log_perplexities(
    model: PreTrainedModel, prefix_ids: Sequence[int], candidate_ids: torch.Tensor, lengths: torch.Tensor,
    batch_size: int = SCORING_BATCH,
) -> torch.Tensor:
    """Summed NLL (nats) of each candidate's tokens after ``prefix_ids``: ``candidate_ids`` (N, L) -> (N,).

    ``lengths`` (N,): candidate i is ``candidate_ids[i, :lengths[i]]``; the rest is padding (any valid token id),
    which a causal model reads only after the candidate's own tokens, so it is simply not counted.

    Only the secret differs between candidates: the prefix is run once and its key/value cache is repeated
    over each batch, so a batch costs L positions per candidate, not the whole prompt.
    """
    device = next(model.parameters()).device
    prefix = torch.tensor([list(prefix_ids)], device=device)  # (1, P)
    shared = model(input_ids=prefix, use_cache=True)
    first_log_probs = shared.logits[0, -1].float().log_softmax(-1)  # (V,): the distribution of the secret's first token
    scores = []
    for start in range(0, candidate_ids.shape[0], batch_size):
        batch = candidate_ids[start:start + batch_size].to(device)  # (B, L)
        counted = torch.arange(batch.shape[1], device=device) < lengths[start:start + batch_size, None].to(device)  # (B, L)
        nll = -first_log_probs[batch[:, 0]]
        if batch.shape[1] > 1:
            # A copy per batch: a forward pass extends its cache in place.
            cache = copy.deepcopy(shared.past_key_values)
            cache.batch_repeat_interleave(batch.shape[0])
            positions = torch.arange(prefix.shape[1], prefix.shape[1] + batch.shape[1] - 1, device=device).expand(batch.shape[0], -1)
            # Tokens 0..L-2 of the secret, after the cached prefix, predict tokens 1..L-1.
            logits = model(input_ids=batch[:, :-1], past_key_values=cache, position_ids=positions, use_cache=True).logits
            log_probs = logits.float().log_softmax(-1)  # (B, L-1, V)
            token_log_probs = log_probs.gather(-1, batch[:, 1:, None]).squeeze(-1)  # (B, L-1)
            nll = nll - (token_log_probs * counted[:, 1:]).sum(-1)
        scores.append(nll.cpu())
    return torch.cat(scores)
