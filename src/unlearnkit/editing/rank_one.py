"""ROME's rank-one edit: the key k*, the value v* found by optimisation, and the closed-form weight update.

Meng et al., "Locating and Editing Factual Associations in GPT", NeurIPS 2022.
For the MLP output projection ``W`` (out, in) of one layer:

* **key** k*: the projection's input at the subject's last token, averaged over the
  prompt preceded by a few short texts the model itself samples (ROME's context
  templates: 10 of 5 tokens and 10 of 10, plus the bare prompt), :func:`average_key`;
* **value** v* = v_init + delta: ``delta`` is added to the projection's output at
  the subject's last token of every prompt and optimised with Adam for an
  objective (:mod:`unlearnkit.editing.objectives`) plus ``kl_factor`` times the KL
  on the essence prompt "<subject> is a" and a norm penalty, ``||delta||`` kept
  within ``clamp_norm_factor * ||v_init||``, :func:`optimise_value`;
* **update** ``W' = W + (v* - W k) (C^-1 k*)^T / ((C^-1 k*)^T k)``, :func:`rank_one_update`,
  with ``C = E[k k^T]`` (:mod:`unlearnkit.editing.statistics`) and ``k`` the key of
  the bare prompt (ROME's code: ``W' k = v*`` holds exactly on the prompt as asked;
  its paper writes ``k = k*``). Any key ``x`` with ``(C^-1 k*)^T x = 0`` keeps ``W' x = W x``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from unlearnkit.data.encoding import IGNORE_INDEX
from unlearnkit.editing import objectives
from unlearnkit.editing.sites import (
    EditSite,
    added_to_output,
    last_token_of,
    last_tokens_of_each,
    layer_outputs,
    projection_bias,
    recorded_keys,
    set_weight_matrix,
    weight_matrix,
)
from unlearnkit.errors import NumericalFault, UnlearnkitError
from unlearnkit.parameters import final_norm

# Objectives scored by the answer's NLL or probability at the model's output, and those read through the logit lens.
OUTPUT_OBJECTIVES = ("dummy", "error_injection", "fact_erasure")
LENS_OBJECTIVES = ("head_projection", "max_entropy")
OBJECTIVES = OUTPUT_OBJECTIVES + LENS_OBJECTIVES
# ROME's context templates are seeded with these words (rome/rome_main.py get_context_templates).
PREFIX_SEEDS = ("The", "Therefore", "Because", "I", "You")
ESSENCE_TEMPLATE = "{} is a"


def rank_one_update(weight: torch.Tensor, key: torch.Tensor, value: torch.Tensor, direction: torch.Tensor) -> torch.Tensor:
    """``W + (value - W key) direction^T / (direction^T key)`` for ``W`` (out, in), ``key`` and ``direction`` (in,), ``value`` (out,).

    ``W' key = value`` exactly; a key ``x`` with ``direction^T x = 0`` keeps ``W' x = W x``.
    ROME's direction is ``C^-1 k*`` (:func:`key_direction`).
    """
    residual = value - weight @ key  # (out,)
    return weight + torch.outer(residual, direction) / (direction @ key)


def key_direction(second_moment: torch.Tensor, key: torch.Tensor, damping: float = 0.0) -> torch.Tensor:
    """``C^-1 k`` (in,), with ``damping * mean(diag C)`` added to C's diagonal (0: ROME's plain inverse)."""
    matrix = second_moment.double()
    if damping:
        matrix = matrix + damping * matrix.diagonal().mean() * torch.eye(matrix.shape[0], dtype=matrix.dtype, device=matrix.device)
    try:
        direction = torch.linalg.solve(matrix, key.double())
    except RuntimeError:  # torch raises its LinAlgError (a RuntimeError) on an exactly singular matrix
        direction = None
    if direction is None or not torch.isfinite(direction).all():
        raise UnlearnkitError(
            "The key statistics C are singular: the statistics text has too few distinct tokens for this layer's "
            f"{matrix.shape[0]} key dimensions. Sample more text (stats_source=model_samples, a larger stats_tokens), give a "
            "longer text with stats_text=PATH, or set stats_damping (e.g. 0.01)."
        )
    return direction.to(key.dtype)


@dataclass(frozen=True)
class EditRequest:
    """One fact to delete, tokenised: the prompt, its subject, and what the objective scores after it.

    ``target_ids``: the answer the output objectives score after the prompt (the replacement for
    ``dummy``/``error_injection``, the true answer for ``fact_erasure``). ``lens_prefix_ids``: the answer's
    tokens before its fact, appended to the prompt for the lens objectives, whose answer token is ``lens_target``.
    """

    subject: str
    prompt_ids: tuple[int, ...]
    target_ids: tuple[int, ...]
    lens_prefix_ids: tuple[int, ...]
    lens_target: int


@dataclass(frozen=True)
class EditSettings:
    """The value optimisation's settings (ROME's hparams names in brackets)."""

    objective: str
    steps: int  # v_num_grad_steps
    learning_rate: float  # v_lr
    weight_decay: float  # v_weight_decay
    clamp_norm_factor: float
    kl_factor: float
    lens_layers: tuple[int, ...]
    lens_k: int
    lens_margin_offset: int = 0  # head_projection: compare with the (k + offset)-th probability (0: Patil et al.)


@dataclass
class EditResult:
    """What one edit did: the loss before and after the optimisation and the sizes of the change."""

    objective_start: float
    objective_end: float
    loss_start: float
    loss_end: float
    delta_norm: float
    initial_value_norm: float
    weight_change_norm: float


def with_prefix(prompt_ids: Sequence[int], prefix_ids: Sequence[int], bos_token_id: int | None) -> list[int]:
    """``prefix_ids`` placed before the prompt, after its BOS token when it starts with one."""
    if bos_token_id is not None and prompt_ids and prompt_ids[0] == bos_token_id:
        return [prompt_ids[0], *prefix_ids, *prompt_ids[1:]]
    return [*prefix_ids, *prompt_ids]


@torch.no_grad()
def context_prefixes(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, lengths: Sequence[int], per_length: int, seed: int
) -> list[list[int]]:
    """ROME's context templates as token ids: the empty prefix, then ``per_length`` texts per length sampled from the model.

    Each text is sampled (top-k 5, as ROME) from one of :data:`PREFIX_SEEDS` and closed with ". ".
    """
    device = next(model.parameters()).device
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    prefixes: list[list[int]] = [[]]
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        for length in lengths:
            for index in range(per_length):
                seed_ids = tokenizer(PREFIX_SEEDS[index % len(PREFIX_SEEDS)], return_tensors="pt")["input_ids"].to(device)
                out = model.generate(seed_ids, attention_mask=torch.ones_like(seed_ids), do_sample=True, top_k=5, max_new_tokens=length,
                                     min_new_tokens=length, pad_token_id=pad)
                text = " ".join(tokenizer.decode(out[0], skip_special_tokens=True).split())
                prefixes.append(tokenizer(f"{text}. ", add_special_tokens=False)["input_ids"])
    return prefixes


def _padded(sequences: Sequence[Sequence[int]], pad: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded ids (B, T) and attention mask (B, T)."""
    width = max(len(ids) for ids in sequences)
    input_ids = torch.full((len(sequences), width), pad, dtype=torch.long, device=device)
    mask = torch.zeros_like(input_ids)
    for row, ids in enumerate(sequences):
        input_ids[row, :len(ids)] = torch.tensor(list(ids), dtype=torch.long, device=device)
        mask[row, :len(ids)] = 1
    return input_ids, mask


@torch.no_grad()
def average_key(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, site: EditSite, request: EditRequest, prefixes: Sequence[Sequence[int]]
) -> tuple[torch.Tensor, torch.Tensor]:
    """(k*, k): the key averaged over the prefixed prompts, and the bare prompt's key (the first prefix must be empty)."""
    device = next(model.parameters()).device
    subject_at = last_token_of(tokenizer, request.prompt_ids, request.subject, "the forget row's question")
    sequences, lookups = [], []
    for prefix in prefixes:
        sequences.append(with_prefix(request.prompt_ids, prefix, tokenizer.bos_token_id))
        lookups.append(subject_at + len(sequences[-1]) - len(request.prompt_ids))
    input_ids, mask = _padded(sequences, tokenizer.pad_token_id or 0, device)
    with recorded_keys(site.module) as keys:
        model(input_ids=input_ids, attention_mask=mask)
    at_subject = keys[0][torch.arange(len(sequences), device=device), torch.tensor(lookups, device=device)].float()  # (P, in)
    return at_subject.mean(dim=0), at_subject[0]


def _lens_probabilities(model: PreTrainedModel, hidden: dict[int, torch.Tensor], layers: Sequence[int], rows: torch.Tensor,
                        positions: torch.Tensor) -> torch.Tensor:
    """(L, B, V): softmax(W_U · LN(h_l)) at ``positions`` of ``rows`` for each of ``layers`` (the logit lens)."""
    norm, head = final_norm(model), model.get_output_embeddings()
    states = torch.stack([hidden[layer][rows, positions] for layer in layers])  # (L, B, H)
    return torch.softmax(head(norm(states)).float(), dim=-1)


def optimise_value(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    site: EditSite,
    request: EditRequest,
    prefixes: Sequence[Sequence[int]],
    settings: EditSettings,
) -> tuple[torch.Tensor, list[float], list[float]]:
    """v* (out,) for ``request``, and the objective's and total loss's values at each step (ROME's ``compute_v``).

    The batch holds the prompt after each prefix (the first prefix empty: v_init is read there)
    followed by the objective's continuation, and last the essence prompt "<subject> is a", whose
    next-token distribution at the subject's last token the KL term keeps.
    """
    if settings.objective not in OBJECTIVES:
        raise UnlearnkitError(f"objective must be one of {', '.join(OBJECTIVES)}; got {settings.objective!r}.")
    device = next(model.parameters()).device
    lens = settings.objective in LENS_OBJECTIVES
    subject_at = last_token_of(tokenizer, request.prompt_ids, request.subject, "the forget row's question")
    continuation = list(request.lens_prefix_ids) if lens else list(request.target_ids[:-1])
    sequences, lookups, occurrences = [], [], []
    for prefix in prefixes:
        prompt = with_prefix(request.prompt_ids, prefix, tokenizer.bos_token_id)
        lookups.append(subject_at + len(prompt) - len(request.prompt_ids))
        sequences.append(prompt + continuation)
        # The edited weight acts wherever the subject's key appears: in the question and again where the answer repeats
        # the subject (ROME's CounterFact prompts hold it once), so the shift is added at every occurrence.
        occurrences.append(sorted({lookups[-1], *(len(prompt) + index for index in
                                                  last_tokens_of_each(tokenizer, continuation, request.subject))}))
    essence = tokenizer(ESSENCE_TEMPLATE.format(request.subject))["input_ids"]
    sequences.append(essence)
    lookups.append(last_token_of(tokenizer, essence, request.subject, "the essence prompt"))
    occurrences.append([lookups[-1]])
    input_ids, mask = _padded(sequences, tokenizer.pad_token_id or 0, device)
    rows = torch.arange(len(sequences), device=device)
    at_subject = torch.zeros_like(input_ids)
    for row, positions in enumerate(occurrences):
        at_subject[row, positions] = 1
    rewriting = rows[:-1]
    answer_positions = mask[:-1].sum(dim=1) - 1  # (B-1,): the last real position of each rewriting prompt
    labels = torch.full_like(input_ids[:-1], IGNORE_INDEX)
    for row in range(len(prefixes) if not lens else 0):
        start = int(answer_positions[row]) - len(continuation)  # the position that predicts the first target token
        labels[row, start:start + len(request.target_ids)] = torch.tensor(request.target_ids, device=device)
    lens_targets = torch.full((len(prefixes),), request.lens_target, dtype=torch.long, device=device)

    delta = torch.zeros(site.value_size, device=device, dtype=torch.float32, requires_grad=True)
    optimiser = torch.optim.Adam([delta], lr=settings.learning_rate)
    initial_value, initial_kl = None, None
    objective_trace, loss_trace = [], []
    for _ in range(settings.steps + 1):  # the last pass only measures the final delta
        optimiser.zero_grad()
        read = settings.lens_layers if lens else ()
        with added_to_output(site.module, at_subject, delta) as unchanged, layer_outputs(model, read) as hidden:
            logits = model(input_ids=input_ids, attention_mask=mask).logits
        if initial_value is None:
            initial_value = unchanged[0][0, lookups[0]].float()
        kl_log_probs = torch.log_softmax(logits[-1, lookups[-1]].float(), dim=-1).unsqueeze(0)  # (1, V)
        if initial_kl is None:
            initial_kl = kl_log_probs.detach()
        if lens:
            probabilities = _lens_probabilities(model, hidden, read, rewriting, answer_positions)  # (L, B-1, V)
        if settings.objective == "max_entropy":
            objective = objectives.negative_lens_entropy(probabilities)
        elif settings.objective == "head_projection":
            objective = objectives.head_projection_margin(probabilities, lens_targets, settings.lens_k, settings.lens_margin_offset)
        elif settings.objective == "fact_erasure":
            objective = objectives.answer_probability(logits[:-1], labels)
        else:
            objective = objectives.target_nll(logits[:-1], labels)
        loss = (objective + settings.kl_factor * objectives.essence_kl(initial_kl, kl_log_probs)
                + settings.weight_decay * objectives.norm_penalty(delta, initial_value))
        objective_trace.append(float(objective.detach()))
        loss_trace.append(float(loss.detach()))
        if not torch.isfinite(loss):
            raise NumericalFault(f"The value optimisation of the edit of {request.subject!r} reached a loss of {float(loss)}; "
                                 "lower value_learning_rate. Nothing was saved.")
        if len(loss_trace) > settings.steps:
            break
        loss.backward()
        optimiser.step()
        objectives.clamp_norm(delta, settings.clamp_norm_factor * float(initial_value.norm()))
    return (initial_value + delta).detach(), objective_trace, loss_trace


def apply_edit(site: EditSite, value: torch.Tensor, average: torch.Tensor, bare: torch.Tensor, second_moment: torch.Tensor,
               damping: float = 0.0) -> float:
    """Write the rank-one update that maps the bare prompt's key to ``value`` into the site; returns ``||W' - W||``.

    ``value`` is the projection's whole output (bias included), as optimised; the bias stays as it is.
    """
    weight = weight_matrix(site.module).detach().float().clone()  # (out, in); a copy, as the module's is overwritten
    bias = projection_bias(site.module)
    target = value.to(weight.device) - (bias.detach().float() if bias is not None else 0.0)
    direction = key_direction(second_moment.to(weight.device), average.to(weight.device), damping)
    updated = rank_one_update(weight, bare.to(weight.device), target, direction)
    set_weight_matrix(site.module, updated)
    return float((updated - weight).norm())
