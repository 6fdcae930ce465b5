"""The checks of a deletion request's audit record, and its verdict.

A deletion request has no retain oracle (nobody retrained the model without the entity). In its place each measure
gets a *floor*: its score on the model before unlearning for entities that model never saw (the holdout questions,
asked and attacked the same way). A model that knows nothing of an entity can still guess a common city, complete
an answer's template or rank a plausible answer first; it cannot do better than it does on strangers. Where no
holdout questions are given (or an attack cannot run on them, such as membership inference, which needs them as
its non-members) the floor is the measure's chance level: stricter, since templates and guesses count as knowledge.

* **forgotten**: the direct questions' answer recall after unlearning is at most their floor (the *guess level*)
  plus ``margin``;
* **stays forgotten**: under no attack (rephrasing, relearning, in-context facts, ... ``unlearnkit attacks``) does the
  unlearned model score above its floor + ``margin`` (it *still shows the facts*, which may never have left what the
  attack measures or may have come back); an attack on which the model *before* unlearning was not
  above that limit either is uninformative (there was nothing to bring back);
* **utility kept**: on the neighbours (the closest other facts), the rest of the corpus and the utility set, answer
  ROUGE-L recall after unlearning has lost at most ``max_utility_drop`` of its value before.

The verdict is "forgotten" when all three hold; otherwise it names what failed.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from unlearnkit.settings import check_field_types, require_fraction

FORGOTTEN, NOT_FORGOTTEN = "forgotten", "not forgotten"
# An attack under which the unlearned model still scores above its floor shows the facts, whether they were never
# removed from what it measures or came back.
SHOWS_FACTS, AT_FLOOR, UNINFORMATIVE = "still shows the facts", "at the floor", "uninformative"


@dataclass(frozen=True)
class Criteria:
    """The thresholds of a deletion request's checks (``unlearnkit forget --margin / --max-utility-drop``)."""

    margin: float = field(default=0.1, metadata={
        "help": "Forgotten: recall after unlearning at most the guess level plus this; an attack brings the facts back when its "
                "score exceeds its floor by more than this."})
    max_utility_drop: float = field(default=0.1, metadata={
        "help": "Utility kept: answer ROUGE-L recall on the neighbours, the rest of the corpus and the utility set may fall by at "
                "most this share of its value before unlearning."})

    def __post_init__(self) -> None:
        check_field_types(self)
        require_fraction("--margin", self.margin, high_open=True)
        require_fraction("--max-utility-drop", self.max_utility_drop, high_open=True)


def forgotten_check(before: float, after: float, guess_level: float, criteria: Criteria) -> dict[str, Any]:
    """Whether the direct questions' recall ``after`` unlearning is at most ``guess_level`` + margin."""
    limit = guess_level + criteria.margin
    return {"check": "forgotten", "passed": after <= limit, "before": before, "after": after, "guess_level": guess_level,
            "limit": limit}


def attack_check(row: Mapping[str, Any], floor: float, floor_source: str, criteria: Criteria) -> dict[str, Any]:
    """One attack's summary row (``unlearned``/``target`` scores) against its ``floor``: see the module docstring."""
    limit = floor + criteria.margin
    before, after = row["target"], row["unlearned"]
    # The model before unlearning at or under the limit: there was nothing to bring back.
    informative = before is None or before > limit
    outcome = (SHOWS_FACTS if after > limit else AT_FLOOR) if informative else UNINFORMATIVE
    return {"attack": row["attack"], "measure": row["measure"], "before": before, "after": after, "floor": floor,
            "floor_source": floor_source, "limit": limit, "outcome": outcome}


def utility_check(name: str, before: float, after: float, criteria: Criteria) -> dict[str, Any]:
    """Whether answer ROUGE-L recall on the set ``name`` lost at most ``max_utility_drop`` of its value before."""
    limit = (1 - criteria.max_utility_drop) * before
    return {"check": f"{name} kept", "set": name, "passed": after >= limit, "before": before, "after": after, "limit": limit}


def verdict(forgotten: Mapping[str, Any], attacks: Sequence[Mapping[str, Any]] | None,
            utility: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """The request's verdict from its checks: passed when forgotten, no attack brings it back and every set is kept.

    ``attacks`` None: the robustness audit was not run (``--attacks none``); the verdict says so and does not pass.
    """
    back = [row["attack"] for row in attacks or () if row["outcome"] == SHOWS_FACTS]
    damaged = [row["set"] for row in utility if not row["passed"]]
    problems = []
    if not forgotten["passed"]:
        problems.append("the direct questions still recall the facts")
    if back:
        problems.append(f"the facts still show under {', '.join(back)}")
    if attacks is None:
        problems.append("not audited against attacks")
    if damaged:
        problems.append(f"utility damaged on {', '.join(damaged)}")
    passed = not problems
    if passed:
        text = FORGOTTEN
    elif forgotten["passed"]:
        text = f"{FORGOTTEN}, but {'; '.join(problems)}"
    else:
        text = f"{NOT_FORGOTTEN}: {'; '.join(problems)}"
    return {"passed": passed, "verdict": text, "brought_back_by": back, "utility_damaged_on": damaged}
