"""Logit-lens attacks: is a forgotten answer still readable from the model's intermediate layers?

Patil, Hase & Bansal, "Can Sensitive Information Be Deleted From LLMs?
Objectives for Defending Against Extraction Attacks", ICLR 2024. At the
position that predicts the answer's fact (:func:`lens_inputs`), each decoder layer's output
``h_l`` is read through the model's own final norm and output head,
``D_l = softmax(W_U · LN(h_l))`` (the logit lens). The attacker takes a
candidate set ``C`` of at most ``B = 2k·L`` tokens and succeeds when the
deleted answer's first token is in it (Attack-Success@B):

* **Head Projection** (``logit_lens_head``): C is the union over layers of
  the top-k and bottom-k tokens of ``D_l``. Bottom-k counts because a defence
  that pushes the answer's probability down can leave it conspicuously low.
* **Probability Delta** (``logit_lens_delta``): the same over
  ``D_{l+1} − D_l`` of consecutive selected layers, which exposes a token
  whose probability a layer raises (or lowers) sharply. With a single
  selected layer ``l``, its input (the output of layer ``l − 1``; the
  embeddings for ``l = 0``) is paired with it, so a one-layer model still
  has one difference.

The recovery is the share of forget rows on which the attack succeeds.
Without a ``value`` field or fact words to locate the fact, the target is the
answer's first token, often a name the question already gives, which a
model that never saw the facts predicts too: the audit then finds the attack
uninformative on that data through the retain oracle's score.
"""

from __future__ import annotations

import inspect
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from unlearnkit.attacks.base import AttackOutcome, AuditConfig, AuditData, hidden_state_model, register_attack
from unlearnkit.attacks.knowledge import fact_location, recall_rule
from unlearnkit.data.encoding import PromptFormat
from unlearnkit.errors import UnlearnkitError
from unlearnkit.parameters import check_layers_exist, decoder_layers, final_norm, parse_layers

PAPER = ('Patil, Hase & Bansal, "Can Sensitive Information Be Deleted From LLMs? '
         'Objectives for Defending Against Extraction Attacks", ICLR 2024')
# How a row's target token was found when neither its value nor a fact word is in its answer.
FIRST_ANSWER_TOKEN = "first_answer_token"


def layer_candidates(distributions: torch.Tensor, k: int) -> torch.Tensor:
    """(L, V) mask of each row's k largest and k smallest entries (all V when 2k >= V)."""
    k = min(k, distributions.shape[-1])
    mask = torch.zeros_like(distributions, dtype=torch.bool)
    mask.scatter_(-1, distributions.topk(k, dim=-1).indices, True)
    mask.scatter_(-1, distributions.topk(k, dim=-1, largest=False).indices, True)
    return mask


def candidate_tokens(distributions: torch.Tensor, k: int) -> torch.Tensor:
    """(V,) mask of the candidate set C: the union over the L rows of ``distributions`` (L, V) of their top-k and bottom-k."""
    return layer_candidates(distributions, k).any(dim=0)


def probability_deltas(distributions: torch.Tensor) -> torch.Tensor:
    """(L - 1, V): ``D_{l+1} - D_l`` for consecutive rows of ``distributions`` (L, V)."""
    return torch.diff(distributions, dim=0)


def value_token_index(offsets: Sequence[tuple[int, int]], start: int, end: int) -> int:
    """Index of the first token whose character span ``offsets[i]`` overlaps ``[start, end)``."""
    for index, (token_start, token_end) in enumerate(offsets):
        if token_start < end and token_end > start:
            return index
    raise UnlearnkitError(f"No token covers characters {start}..{end} of the answer.")


def lens_inputs(tokenizer: PreTrainedTokenizerBase, fmt: PromptFormat, row: dict) -> tuple[list[int], int]:
    """Prompt ids plus the answer's tokens before its fact, and the fact's first token id (the target).

    The answer is tokenised as in training (:meth:`PromptFormat.answer_ids`),
    and the fact's first token is found with the tokenizer's character
    offsets. The fact is the row's ``value``, else its first fact word
    (:func:`unlearnkit.attacks.knowledge.fact_location`); a row with neither
    in its answer targets the answer's first token (:func:`lens_target_rule`).
    """
    if not getattr(tokenizer, "is_fast", False):
        raise UnlearnkitError("The logit-lens attacks need a fast tokenizer (character offsets); load one with use_fast=True.")
    answer = row["answer"]
    text = answer if fmt.uses_chat(tokenizer) else f" {answer}"  # as PromptFormat.answer_ids_many tokenises it
    encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids = encoded["input_ids"]
    if not ids:
        raise UnlearnkitError(f"The answer to {row['question']!r} is empty; the logit-lens attacks need an answer.")
    location = fact_location(text, row)
    index = 0 if location is None else value_token_index(encoded["offset_mapping"], *location)
    return fmt.prompt_ids(tokenizer, row["question"]) + ids[:index], ids[index]


def lens_target_rule(row: Mapping) -> str:
    """How :func:`lens_inputs` finds ``row``'s target: 'value', 'fact_span' (its first fact word) or 'first_answer_token'."""
    return FIRST_ANSWER_TOKEN if fact_location(row["answer"], row) is None else recall_rule(row)


def _hidden(output: torch.Tensor | tuple) -> torch.Tensor:
    """A decoder layer's hidden states, whether it returns a tensor or a tuple starting with them."""
    return output[0] if isinstance(output, tuple) else output


@contextmanager
def recorded_layers(
    model: nn.Module, outputs_of: Sequence[int], reduce: Callable[[torch.Tensor], torch.Tensor], inputs_of: Sequence[int] = ()
) -> Iterator[tuple[dict[int, torch.Tensor], dict[int, torch.Tensor]]]:
    """Within the block, forward passes record ``reduce(hidden states)`` (B, T, H) -> anything.

    Yields two dicts filled by each forward: layer index -> reduced output of
    that decoder layer (``outputs_of``) and -> reduced input (``inputs_of``).
    """
    _, blocks = decoder_layers(model)
    outputs: dict[int, torch.Tensor] = {}
    inputs: dict[int, torch.Tensor] = {}
    handles = []
    for index in outputs_of:
        def after(module: nn.Module, args: tuple[Any, ...], output: Any, index: int = index) -> None:
            outputs[index] = reduce(_hidden(output))
        handles.append(blocks[index].register_forward_hook(after))
    for index in inputs_of:
        def before(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], index: int = index) -> None:
            inputs[index] = reduce(args[0] if args else kwargs["hidden_states"])
        handles.append(blocks[index].register_forward_pre_hook(before, with_kwargs=True))
    try:
        yield outputs, inputs
    finally:
        for handle in handles:
            handle.remove()


@dataclass
class LensRow:
    """One forget row read through the logit lens: its distributions (L, V), the target token and the labels of the L rows."""

    distributions: torch.Tensor
    target: int
    labels: list[int]


@torch.no_grad()
def lens_distributions(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, data: AuditData, config: AuditConfig, with_input: bool = False
) -> Iterator[LensRow]:
    """``D_l`` of the selected layers at each forget row's value position (:func:`lens_inputs`), one row at a time.

    ``with_input`` and a single selected layer ``l``: the layer's input comes
    first, labelled ``l - 1``. Rows are right-padded and each row's last real
    position is read. Yielded lazily: the (L, V) distributions of all rows
    at once would not fit in memory for a large vocabulary and many layers.
    """
    model = hidden_state_model(model)
    layers = parse_layers(config.lens_layers) or tuple(range(len(decoder_layers(model)[1])))
    check_layers_exist(model, layers, "lens_layers")
    inputs_of = layers[:1] if with_input and len(layers) == 1 else ()
    labels = [layers[0] - 1] * len(inputs_of) + list(layers)
    norm, head = final_norm(model), model.get_output_embeddings()
    if head is None:
        raise UnlearnkitError(f"{type(model).__name__} has no output head (get_output_embeddings); the logit lens needs one.")
    device = next(model.parameters()).device
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0  # masked out: any id does
    encoded = [lens_inputs(tokenizer, data.fmt, dict(row)) for row in data.forget]
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    # Only hidden states are read: skip the output layer on all but the last position where the model allows it.
    extra = {"logits_to_keep": 1} if "logits_to_keep" in inspect.signature(base.forward).parameters else {}
    for start in range(0, len(encoded), config.batch_size):
        chunk = encoded[start:start + config.batch_size]
        lengths = torch.tensor([len(ids) for ids, _ in chunk], device=device)
        input_ids = torch.full((len(chunk), int(lengths.max())), pad, dtype=torch.long, device=device)
        for row, (ids, _) in enumerate(chunk):
            input_ids[row, :len(ids)] = torch.tensor(ids, device=device)
        attention_mask = (torch.arange(input_ids.shape[1], device=device) < lengths[:, None]).long()
        rows = torch.arange(len(chunk), device=device)

        def last(hidden: torch.Tensor) -> torch.Tensor:  # (B, T, H) -> (B, H) at each row's last real position
            return hidden[rows, lengths - 1]  # noqa: B023 - called only by the forward pass of this iteration, below

        with recorded_layers(model, layers, last, inputs_of) as (outputs, layer_inputs):
            model(input_ids=input_ids, attention_mask=attention_mask, **extra)
        hidden = torch.stack([layer_inputs[i] for i in inputs_of] + [outputs[i] for i in layers], dim=1)  # (B, L, H)
        for row, (_, target) in enumerate(chunk):
            distributions = torch.softmax(head(norm(hidden[row])).float(), dim=-1)  # (L, V)
            yield LensRow(distributions, target, labels)


def _lens_attack(
    rows: Iterator[LensRow], data: AuditData, tokenizer: PreTrainedTokenizerBase, k: int, delta: bool, measure: str
) -> AttackOutcome:
    samples, sizes, readings = [], [], 0
    for lens, row in zip(rows, data.forget, strict=True):
        scores, labels = (probability_deltas(lens.distributions), lens.labels[1:]) if delta else (lens.distributions, lens.labels)
        readings = len(labels)
        per_layer = layer_candidates(scores, k)  # (L', V)
        candidates = per_layer.any(dim=0)
        sizes.append(int(candidates.sum()))
        hits = [label for label, hit in zip(labels, per_layer[:, lens.target].tolist(), strict=True) if hit]
        samples.append({"question": row["question"], "target": tokenizer.decode([lens.target]), "recall_rule": lens_target_rule(row),
                        "success": bool(candidates[lens.target]), "hit_layers": hits})
    details = {"k": float(k), "readings": float(readings), "budget": float(2 * k * readings),
               "mean_candidates": sum(sizes) / len(sizes) if sizes else 0.0}
    recovery = sum(sample["success"] for sample in samples) / len(samples) if samples else 0.0
    rules = dict(Counter(sample["recall_rule"] for sample in samples))
    return AttackOutcome(recovery=recovery, measure=measure, per_sample=samples, details=details, recall_rules=rules)


@register_attack(
    "logit_lens_head",
    paper=PAPER,
    summary="Head Projection: the first token of the answer's fact among the top-k/bottom-k of any layer's logit-lens distribution.",
    family="latent",
)
def logit_lens_head(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, data: AuditData, config: AuditConfig) -> AttackOutcome:
    rows = lens_distributions(model, tokenizer, data, config)
    return _lens_attack(rows, data, tokenizer, config.lens_k, delta=False, measure="Attack-Success@B (head projection)")


@register_attack(
    "logit_lens_delta",
    paper=PAPER,
    summary="Probability Delta: the first token of the answer's fact among the top-k/bottom-k of a change of the logit lens "
            "between layers.",
    family="latent",
)
def logit_lens_delta(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, data: AuditData, config: AuditConfig) -> AttackOutcome:
    rows = lens_distributions(model, tokenizer, data, config, with_input=True)
    return _lens_attack(rows, data, tokenizer, config.lens_k, delta=True, measure="Attack-Success@B (probability delta)")
