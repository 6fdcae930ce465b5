"""The harmful-behaviour track's built-in data: :mod:`unlearnkit.data.safety_mix` regrouped by role.

Yao, Xu & Liu, "Large Language Model Unlearning" (NeurIPS 2024, arXiv 2310.10683) unlearn harmful prompt -> response
pairs (PKU-SafeRLHF's unsafe responses) and keep the model's answers to normal prompts. On the built-in fictitious
Vellmarch data (harmful in style only, see :mod:`unlearnkit.data.safety_mix`) the roles are:

* ``forget``: the unsafe rows of ``downstream``, harmful-style prompts with their compliant harmful answers;
* ``normal``: the task QA rows of ``downstream`` (facts about Vellmarch towns), the normal prompts of the utility;
* ``safe``: the safe rows of ``downstream`` (refusals, benign help, kind words), trained on and kept like ``normal``;
* ``heldout``: ``heldout_unsafe``, harmful-style prompts about entities no other split names (the held-out harmful rate);
* ``judge_train`` / ``judge_test``: the labelled responses the harmfulness judge trains and is tested on.
"""

from __future__ import annotations

from typing import Any

from unlearnkit.data.safety_mix import SafetyMixConfig, build_safety_mix

ROLES = ("forget", "normal", "safe", "heldout", "judge_train", "judge_test")
# By kind of downstream row: the role it plays in the track.
_DOWNSTREAM_ROLES = {"unsafe": "forget", "task": "normal", "safe": "safe"}


def harmful_track_data(config: SafetyMixConfig | None = None) -> dict[str, list[dict[str, Any]]]:
    """The safety mix of ``config`` split into the track's roles (:data:`ROLES`); every row keeps its ``kind`` and ``category``."""
    mix = build_safety_mix(config or SafetyMixConfig())
    roles: dict[str, list[dict[str, Any]]] = {role: [] for role in ROLES}
    for row in mix.split("downstream"):
        roles[_DOWNSTREAM_ROLES[row["kind"]]].append(row)
    roles["heldout"] = mix.split("heldout_unsafe")
    roles["judge_train"], roles["judge_test"] = mix.split("judge_train"), mix.split("judge_test")
    return roles
