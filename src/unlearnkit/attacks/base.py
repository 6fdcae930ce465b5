"""What every attack shares: its settings, the data it attacks, its outcome and the registry.

An attack is a function ``attack(model, tokenizer, data, config) -> AttackOutcome``
registered with :func:`register_attack`. It never changes the model it is given
(attacks that modify weights work on a copy). Its outcome is one *recovery*
score in [0, 1], higher meaning more of the forgotten knowledge is back, with
the per-sample values behind it. The audit (:mod:`unlearnkit.audit`) runs each
attack on the unlearned model, the target and the retain oracle and compares
the three on the same questions.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from transformers import PreTrainedModel, PreTrainedTokenizerBase

from unlearnkit.data.encoding import PromptFormat
from unlearnkit.errors import UnlearnkitError
from unlearnkit.parameters import parse_layers
from unlearnkit.registry import Registry
from unlearnkit.settings import check_choice, check_field_types, check_seed, require_at_least, require_fraction, require_positive


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

    def __post_init__(self) -> None:
        check_field_types(self)  # a float must be finite: nan passes every comparison below
        require_fraction("threshold", self.threshold, high_open=True)
        require_fraction("heldout_fraction", self.heldout_fraction, low_open=True, high_open=True)
        require_at_least(1, max_new_tokens=self.max_new_tokens, batch_size=self.batch_size, relearn_epochs=self.relearn_epochs,
                         relearn_batch_size=self.relearn_batch_size, in_context_facts=self.in_context_facts,
                         quantization_group_size=self.quantization_group_size, lens_k=self.lens_k)
        require_positive(relearn_learning_rate=self.relearn_learning_rate)
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

    Rows are QA rows (``question``, ``answer``); a ``value`` field (the fact's
    value, as in the built-in benchmark) makes answer recall exact, and
    ``author`` groups the facts of one entity.
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
    of the same rows before the attack).
    """

    recovery: float
    measure: str
    per_sample: list[dict[str, Any]]
    details: dict[str, float] = field(default_factory=dict)


AttackFunction = Callable[[PreTrainedModel, PreTrainedTokenizerBase, AuditData, AuditConfig], AttackOutcome]


@dataclass(frozen=True)
class AttackSpec:
    """What the registry knows of an attack (``family`` groups attacks in listings and the audit table)."""

    name: str
    run: AttackFunction
    paper: str
    summary: str
    family: str
    needs: tuple[str, ...] = ()
    requires: Callable[[AuditData], str | None] | None = None

    def missing(self, data: AuditData) -> str | None:
        """Why this attack cannot run on ``data`` (None when it can)."""
        for split in self.needs:
            if not getattr(data, split):
                return f"needs a {split} set"
        return self.requires(data) if self.requires is not None else None


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
    requires: Callable[[AuditData], str | None] | None = None,
) -> Callable[[AttackFunction], AttackFunction]:
    """Function decorator that registers an attack under ``name``.

    ``needs`` names the AuditData sets it requires besides forget; ``requires``
    returns why the data does not suit it (e.g. a missing field), or None.
    """
    if family not in FAMILIES:
        raise ValueError(f"attack family {family!r} must be one of {FAMILIES}.")

    def decorate(run: AttackFunction) -> AttackFunction:
        ATTACKS.register(name)(AttackSpec(name, run, paper, summary, family, needs, requires))
        return run

    return decorate


def split_heldout(rows: Sequence[dict], heldout_fraction: float) -> tuple[list[int], list[int]]:
    """Indices of the rows given to the attacker and of the held-out rows recovery is measured on.

    Rows are grouped by ``author`` (rows without one form a single group):
    within each group, the
    last ``round(n * heldout_fraction)`` rows, at least one and at most n - 1
    when the group has two or more, are held out. Facts of one entity are thus
    on both sides, as in relearning attacks on entity knowledge.
    """
    groups: dict[Any, list[int]] = {}
    for index, row in enumerate(rows):
        groups.setdefault(row.get("author", ""), []).append(index)
    given: list[int] = []
    heldout: list[int] = []
    for members in groups.values():
        if len(members) < 2:
            heldout.extend(members)
            continue
        count = min(max(round(len(members) * heldout_fraction), 1), len(members) - 1)
        given.extend(members[: len(members) - count])
        heldout.extend(members[len(members) - count:])
    return sorted(given), sorted(heldout)


def attacker_split(rows: Sequence[dict], heldout_fraction: float, attack: str) -> tuple[list[dict], list[dict]]:
    """The rows given to the attacker and the held-out rows (:func:`split_heldout`), refusing a split with nothing to give."""
    given, heldout = split_heldout(rows, heldout_fraction)
    if not given:
        raise UnlearnkitError(f"The {attack} attack needs at least two forget rows of one entity (facts to give and facts to ask about).")
    return [rows[i] for i in given], [rows[i] for i in heldout]


def rows_lacking(rows: Sequence[dict], *names: str) -> str | None:
    """Why ``rows`` do not suit an attack that reads the fields ``names`` (None when every row has them all)."""
    for name in names:
        lacking = sum(1 for row in rows if not row.get(name))
        if lacking:
            return f"needs a '{name}' field on every row ({lacking} of {len(rows)} lack it)"
    return None
