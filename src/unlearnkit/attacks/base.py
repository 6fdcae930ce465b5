"""What every attack shares: its settings, the data it attacks, its outcome and the registry.

An attack is a function ``attack(model, tokenizer, data, config) -> AttackOutcome``
registered with :func:`register_attack`. It never changes the model it is given
(attacks that modify weights work on a copy). Its outcome is one *recovery*
score in [0, 1], higher meaning more of the forgotten knowledge is back, with
the per-sample values behind it. The audit (:mod:`unlearnkit.auditing`) runs each
attack on the unlearned model, the target and the retain oracle and compares
the three on the same questions.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from transformers import PreTrainedModel, PreTrainedTokenizerBase

from unlearnkit.data.encoding import PromptFormat
from unlearnkit.errors import UnlearnkitError
from unlearnkit.parameters import parse_layers
from unlearnkit.registry import Registry
from unlearnkit.settings import check_choice, check_field_types, check_seed, require_at_least, require_fraction, require_positive

# The row field that names a fact's entity unless entity_field says otherwise (the built-in benchmark's rows have it).
DEFAULT_ENTITY_FIELD = "author"


@dataclass(frozen=True)
class AuditConfig:
    """Settings of the robustness audit (defaults suit billion-parameter models; the built-in benchmark overrides a few)."""

    threshold: float = field(
        default=0.05,
        metadata={"help": "Verdict margin: recovery above the oracle's by more than this counts as recovered."},
    )
    max_new_tokens: int = field(default=32, metadata={"help": "Greedy tokens generated per question."})
    batch_size: int = field(default=32, metadata={"help": "Sequences per forward pass."})
    seed: int = field(default=0, metadata={"help": "Seed for the relearning attack's data order."})
    heldout_fraction: float = field(
        default=0.5,
        metadata={"help": "Share of each entity's forget rows held out for measuring relearning and in-context attacks; "
                          "the rest is given to the attacker."},
    )
    entity_field: str = field(
        default=DEFAULT_ENTITY_FIELD,
        metadata={"help": "Row field naming the entity a fact is about: relearning and in-context split each entity's rows, "
                          "and in-context puts facts of the same entity in the prompt. When no row has it (plain TOFU rows), "
                          "the forget rows are one pool of unrelated facts, and the attacks' notes say so."},
    )
    uninformative_target_below: float = field(
        default=0.1,
        metadata={"help": "An attack on which the target scores below this (as a share of the way from the attack's chance level "
                          "to 1) is 'uninformative on this data': the target itself does not show the facts under it, so there "
                          "is nothing to recover (0: never)."},
    )
    uninformative_oracle_above: float = field(
        default=0.9,
        metadata={"help": "An attack on which the retain oracle, never trained on the forget facts, scores above this (as a "
                          "share of the way from chance to 1) is 'uninformative on this data': the measure does not separate "
                          "knowing the facts from not (1: never)."},
    )
    relearn_learning_rate: float = field(default=1e-5, metadata={"help": "Relearning attack: learning rate of the fine-tuning."})
    relearn_epochs: int = field(default=1, metadata={"help": "Relearning attack: epochs over the attacker's part of the forget set."})
    relearn_batch_size: int = field(default=8, metadata={"help": "Relearning attack: examples per optimiser step."})
    in_context_facts: int = field(
        default=2,
        metadata={"help": "In-context attack: forget-set facts of the same entity placed before each question."},
    )
    quantization_group_size: int = field(
        default=64,
        metadata={"help": "4-bit quantization attack: weights per absmax block (bitsandbytes: 64); 8-bit scales whole rows."},
    )
    quantization_4bit_type: str = field(
        default="fp4",
        metadata={"help": "4-bit quantization attack: code values, 'fp4' (bitsandbytes' default, as Zhang et al. load) or 'nf4'."},
    )
    lens_k: int = field(default=4, metadata={"help": "Logit-lens attacks: top-k and bottom-k tokens taken per layer (Patil et al.: 4)."})
    lens_layers: str | None = field(
        default=None,
        metadata={"help": "Logit-lens attacks: decoder layers read, '0,3,5' or '2-5' (None: all)."},
    )
    probe_layer: int | None = field(
        default=None,
        metadata={"help": "Linear probe: decoder layer whose output is probed (None: the middle layer)."},
    )
    spv_num_texts: int = field(default=1000, metadata={"help": "SPV-MIA: self-prompted texts the reference model is fine-tuned on."})
    spv_reference_learning_rate: float = field(
        default=5e-5, metadata={"help": "SPV-MIA: learning rate of the reference model's fine-tuning (paper: 5e-5)."})
    spv_num_neighbours: int = field(default=10, metadata={"help": "SPV-MIA: perturbed neighbours per record (paper: 10)."})
    spv_reference_base: str | None = field(
        default=None, metadata={"help": "SPV-MIA: the model the reference starts from (the target's pre-fine-tuning base; "
                                        "None: a copy of the attacked model)."})

    def __post_init__(self) -> None:
        check_field_types(self)  # a float must be finite: nan passes every comparison below
        require_fraction("threshold", self.threshold, high_open=True)
        require_fraction("heldout_fraction", self.heldout_fraction, low_open=True, high_open=True)
        require_fraction("uninformative_target_below", self.uninformative_target_below, high_open=True)
        require_fraction("uninformative_oracle_above", self.uninformative_oracle_above, low_open=True)
        if not self.entity_field.strip():
            raise UnlearnkitError("entity_field must name a row field (e.g. entity_field=author).")
        require_at_least(1, max_new_tokens=self.max_new_tokens, batch_size=self.batch_size, relearn_epochs=self.relearn_epochs,
                         relearn_batch_size=self.relearn_batch_size, in_context_facts=self.in_context_facts,
                         quantization_group_size=self.quantization_group_size, lens_k=self.lens_k)
        require_positive(relearn_learning_rate=self.relearn_learning_rate, spv_reference_learning_rate=self.spv_reference_learning_rate)
        require_at_least(2, spv_num_texts=self.spv_num_texts)
        require_at_least(1, spv_num_neighbours=self.spv_num_neighbours)
        require_at_least(0, probe_layer=self.probe_layer)
        check_seed("seed", self.seed)
        check_choice("quantization_4bit_type", self.quantization_4bit_type, ("fp4", "nf4"))
        try:
            parse_layers(self.lens_layers)  # a malformed list fails now; a layer past the model's depth once it is loaded
        except UnlearnkitError as error:
            raise UnlearnkitError(f"lens_layers: {error}") from None


@dataclass(frozen=True)
class AuditData:
    """The questions an audit attacks: the forget set, and the retain and holdout sets some attacks need.

    Rows are QA rows (``question``, ``answer``). Answer recall is exact with a
    ``value`` field (the fact's value, as in the built-in benchmark) and
    derived from ``perturbed_answer`` without one (:mod:`unlearnkit.attacks.knowledge`);
    the field named by ``AuditConfig.entity_field`` (``author``) groups the
    facts of one entity.
    """

    forget: Sequence[dict]
    retain: Sequence[dict] = ()
    holdout: Sequence[dict] = ()
    fmt: PromptFormat = PromptFormat()


@dataclass
class AttackOutcome:
    """One attack on one model.

    ``recovery``: the aggregate in [0, 1] (higher: more forgotten knowledge
    back). ``measure`` says what it is (e.g. "answer recall"). ``per_sample``:
    one dict per attacked row. ``details``: further numbers (e.g. the recall
    of the same rows before the attack). ``recall_rules``: for attacks that
    judge answers, how many rows each recall rule judged (``value``,
    ``fact_span``, ``rouge``; the logit lens: how its target token was found).
    ``notes``: what a reader must know to read the number (e.g. that the rows
    could not be grouped by entity).
    """

    recovery: float
    measure: str
    per_sample: list[dict[str, Any]]
    details: dict[str, float] = field(default_factory=dict)
    recall_rules: dict[str, int] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


AttackFunction = Callable[[PreTrainedModel, PreTrainedTokenizerBase, AuditData, AuditConfig], AttackOutcome]
DataCheck = Callable[[AuditData, AuditConfig], str | None]


@dataclass(frozen=True)
class AttackSpec:
    """What the registry knows of an attack (``family`` groups attacks in listings and the audit table).

    ``chance``: the recovery of a model that knows nothing of the facts (0 for
    answer recall, 0.5 for an AUC or a pairwise ranking accuracy); the
    audit's 'uninformative' thresholds count from it.
    """

    name: str
    run: AttackFunction
    paper: str
    summary: str
    family: str
    needs: tuple[str, ...] = ()
    requires: DataCheck | None = None
    chance: float = 0.0
    on_request: str | None = None  # why it runs only when named (its cost); None: it is part of every audit

    def missing(self, data: AuditData, config: AuditConfig) -> str | None:
        """Why this attack cannot run on ``data`` with ``config`` (None when it can)."""
        for split in self.needs:
            if not getattr(data, split):
                return f"needs a {split} set"
        return self.requires(data, config) if self.requires is not None else None


ATTACKS: Registry[AttackSpec] = Registry("attack")
# Listing and audit order of the families.
FAMILIES = ("baseline", "prompt", "weights", "latent", "membership")


def register_attack(
    name: str,
    *,
    paper: str,
    summary: str,
    family: str,
    needs: tuple[str, ...] = (),
    requires: DataCheck | None = None,
    chance: float = 0.0,
    on_request: str | None = None,
) -> Callable[[AttackFunction], AttackFunction]:
    """Function decorator that registers an attack under ``name``.

    ``needs`` names the AuditData sets it requires besides forget; ``requires``
    returns why the data (with the audit's settings) does not suit it (e.g. a
    missing field), or None; ``chance`` is its recovery without knowledge;
    ``on_request`` (its cost, e.g. "fine-tunes a reference model per audited model") makes it run only when named.
    """
    if family not in FAMILIES:
        raise ValueError(f"attack family {family!r} must be one of {FAMILIES}.")

    def decorate(run: AttackFunction) -> AttackFunction:
        ATTACKS.register(name)(AttackSpec(name, run, paper, summary, family, needs, requires, chance, on_request))
        return run

    return decorate


def hidden_state_model(model: PreTrainedModel) -> PreTrainedModel:
    """The model whose hidden states the latent attacks read. An inference-time wrapper that changes only the prompt
    names its target (``latent_model``): a white-box attacker reads the weights with prompts of their own, and the
    wrapper's own forward runs on rebuilt, re-padded sequences whose positions the attacks cannot index. Any other
    model is read as it is."""
    return getattr(model, "latent_model", model)


def entity_key(row: dict, entity_field: str) -> str | None:
    """The entity ``row`` is about, as a grouping key (its ``entity_field`` as JSON); None when that field is missing or empty."""
    value = row.get(entity_field)
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    return json.dumps(value, sort_keys=True)


def entity_field_problem(rows: Sequence[dict], entity_field: str) -> str | None:
    """Why ``rows`` cannot be grouped by ``entity_field``: only some of them have it (None when all or none do)."""
    lacking = sum(1 for row in rows if entity_key(row, entity_field) is None)
    if 0 < lacking < len(rows):
        return (f"needs the entity field '{entity_field}' on every forget row or on none ({lacking} of {len(rows)} lack it): "
                "give it on every row, or name another field with --set entity_field=NAME")
    return None


def entity_groups(rows: Sequence[dict], entity_field: str) -> list[list[int]] | None:
    """The indices of each entity's rows, entities in order of first appearance; None when no row names its entity.

    Rows are never grouped by guesswork (position, shared names in the text):
    without the field, there are no groups. Only some rows naming their
    entity is refused (:func:`entity_field_problem`).
    """
    problem = entity_field_problem(rows, entity_field)
    if problem is not None:
        raise UnlearnkitError(f"The forget set {problem}.")
    if not rows or entity_key(rows[0], entity_field) is None:
        return None
    groups: dict[str, list[int]] = {}
    for index, row in enumerate(rows):
        groups.setdefault(str(entity_key(row, entity_field)), []).append(index)
    return list(groups.values())


def split_heldout(rows: Sequence[dict], heldout_fraction: float, entity_field: str = DEFAULT_ENTITY_FIELD) -> tuple[list[int], list[int]]:
    """Indices of the rows given to the attacker and of the held-out rows recovery is measured on.

    Rows are grouped by entity (:func:`entity_groups`); without an entity
    field they form one pool. Within each group, the last
    ``round(n * heldout_fraction)`` rows, at least one and at most n - 1 when
    the group has two or more, are held out. With entities, facts of one
    entity are thus on both sides, as in relearning attacks on entity
    knowledge; a pool is split in its own order, whatever entities its rows share.
    """
    groups = entity_groups(rows, entity_field) or [list(range(len(rows)))]
    given: list[int] = []
    heldout: list[int] = []
    for members in groups:
        if len(members) < 2:
            heldout.extend(members)
            continue
        count = min(max(round(len(members) * heldout_fraction), 1), len(members) - 1)
        given.extend(members[: len(members) - count])
        heldout.extend(members[len(members) - count:])
    return sorted(given), sorted(heldout)


def heldout_problem(data: AuditData, config: AuditConfig) -> str | None:
    """Why the forget rows cannot be split into facts given to the attacker and facts asked about (None when they can)."""
    problem = entity_field_problem(data.forget, config.entity_field)
    if problem is not None:
        return problem
    given, _ = split_heldout(data.forget, config.heldout_fraction, config.entity_field)
    if given:
        return None
    if entity_groups(data.forget, config.entity_field) is None:
        return "needs at least two forget rows (facts to give and facts to ask about)"
    return f"needs an entity ('{config.entity_field}') with at least two forget rows (facts to give and facts to ask about)"


def attacker_split(data: AuditData, config: AuditConfig, attack: str) -> tuple[list[dict], list[dict]]:
    """The forget rows given to the attacker and the held-out rows (:func:`split_heldout`), refusing a split with nothing to give."""
    problem = heldout_problem(data, config)
    if problem is not None:
        raise UnlearnkitError(f"The {attack} attack {problem}.")
    given, heldout = split_heldout(data.forget, config.heldout_fraction, config.entity_field)
    return [data.forget[i] for i in given], [data.forget[i] for i in heldout]


def ungrouped_note(rows: Sequence[dict], config: AuditConfig, consequence: str) -> list[str]:
    """The note an entity-based attack adds when no row names its entity (``consequence``: what that means for it); else none."""
    if entity_groups(rows, config.entity_field) is not None:
        return []
    return [f"No forget row has the entity field '{config.entity_field}', so {consequence}. "
            "--set entity_field=NAME names a row field that groups the facts by entity."]


def rows_lacking(rows: Sequence[dict], *names: str) -> str | None:
    """Why ``rows`` do not suit an attack that reads the fields ``names`` (None when every row has them all)."""
    for name in names:
        lacking = sum(1 for row in rows if not row.get(name))
        if lacking:
            return f"needs a '{name}' field on every row ({lacking} of {len(rows)} lack it)"
    return None
