"""The robustness audit: every attack on the unlearned model, the target and the retain oracle, with a verdict per attack.

An unlearned model that gives an answer back after a few fine-tuning steps, after
4-bit quantization or when the question is rephrased has hidden the knowledge,
not removed it (Lynch et al. 2024; Patil, Hase & Bansal, ICLR 2024; Zhang et al.,
ICLR 2025). The retain oracle, trained without the forget set, gets the same
attacks: what it "recovers" (lucky guesses, facts learnable from the attack's
own data) is the level exact unlearning would show. Verdict per attack, with
``u``, ``o`` the unlearned model's and the oracle's recovery and ``τ`` the threshold:

* ``recovered above the oracle's level`` when u − o > τ (the knowledge comes back);
* ``at the oracle's level`` when |u − o| ≤ τ;
* ``below the oracle's level`` when o − u > τ (over-unlearning: itself a tell-tale sign).

Before that comparison, an attack that cannot tell anything on this data is
``uninformative on this data``, with the reason: when the target itself scores
below ``uninformative_target_below`` (it never showed the facts under this
attack, so there is nothing to recover and "at the oracle's level" would
only mean that nobody knows them), or when the oracle, never trained on the
facts, scores above ``uninformative_oracle_above`` (the measure does not
separate knowing the facts from not). Both count from the attack's chance
level: a score ``s`` is taken as ``(s − c) / (1 − c)`` for chance ``c`` (0 for
answer recall, 0.5 for an AUC or a ranking accuracy).

An attack *exposes hidden knowledge* when it recovers above the oracle's level
while the direct questions do not.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from transformers import PreTrainedModel, PreTrainedTokenizerBase

from unlearnkit.attacks import ATTACKS, AttackOutcome, AuditConfig, AuditData
from unlearnkit.attacks.base import DEFAULT_ENTITY_FIELD, FAMILIES, entity_key
from unlearnkit.builtin import MAX_NEW_TOKENS, BuiltinBenchmark
from unlearnkit.errors import UnlearnkitError
from unlearnkit.io import write_json
from unlearnkit.methods.base import MethodConfig
from unlearnkit.settings import build_config

logger = logging.getLogger("unlearnkit")

AUDITED_MODELS = ("unlearned", "target", "oracle")
RECOVERED = "recovered above the oracle's level"
AT_ORACLE = "at the oracle's level"
BELOW_ORACLE = "below the oracle's level"
NO_ORACLE = "no oracle to compare with"
UNINFORMATIVE = "uninformative on this data"


def builtin_audit_settings(benchmark: BuiltinBenchmark) -> dict[str, Any]:
    """Audit settings for a built-in benchmark's models.

    The relearning attack fine-tunes at the benchmark's own unlearning learning rate (on the tiny models the shared
    override, as the authors' 1e-5 hardly moves them; on a pretrained preset, which keeps the methods' own rates, the
    methods' default), two epochs over the attacker's half of the forget set; answers are generated as in evaluation
    (the built-in splits' cap). SPV-MIA's reference fine-tunes at 1e-3 on the tiny models (at the paper's 5e-5 a copy
    of a tiny model hardly moves from the model it calibrates) and at the paper's rate on a pretrained one.
    """
    learning_rate = dict(benchmark.unlearn_overrides).get("learning_rate", MethodConfig.learning_rate)
    settings: dict[str, Any] = {"relearn_learning_rate": learning_rate, "relearn_epochs": 2, "max_new_tokens": MAX_NEW_TOKENS}
    if benchmark.base_model is None:
        settings["spv_reference_learning_rate"] = 1e-3
    return settings


def attack_order(names: Sequence[str] | None = None) -> list[str]:
    """``names`` (default: every registered attack) in listing order: by family, then registration order."""
    chosen = list(ATTACKS.names()) if names is None else [ATTACKS.get(name).name for name in names]
    return sorted(dict.fromkeys(chosen), key=lambda name: FAMILIES.index(ATTACKS.get(name).family))


def plan_attacks(names: Sequence[str] | None, data: AuditData, config: AuditConfig) -> tuple[list[str], dict[str, str]]:
    """The attacks to run on ``data`` with ``config`` and those skipped, with why.

    With ``names`` None (every attack), one that does not suit the data (no
    holdout set, a missing field) is skipped; one the user named is refused.
    An ``entity_field`` the user named that no forget row has is refused.
    """
    if not data.forget:
        raise UnlearnkitError("The forget set is empty: the audit has nothing to attack.")
    if config.entity_field != DEFAULT_ENTITY_FIELD and all(entity_key(row, config.entity_field) is None for row in data.forget):
        fields = ", ".join(sorted({key for row in data.forget for key in row}))
        raise UnlearnkitError(f"entity_field={config.entity_field}: no forget row has that field (the rows have: {fields}). "
                              "Name a field that says which entity each fact is about, or leave entity_field out.")
    runnable, skipped = [], {}
    for name in attack_order(names):
        if names is None and ATTACKS.get(name).on_request:
            skipped[name] = f"runs on request only (--attacks {name}): it {ATTACKS.get(name).on_request}"
            continue
        reason = ATTACKS.get(name).missing(data, config)
        if reason is None:
            runnable.append(name)
        elif names is None:
            skipped[name] = reason
        else:
            raise UnlearnkitError(f"The {name} attack {reason}. Give that data, or leave the attack out of --attacks.")
    return runnable, skipped


def build_audit_config(overrides: Mapping[str, Any]) -> AuditConfig:
    """An AuditConfig from KEY=VALUE strings or values, refusing unknown keys with the closest and the known ones."""
    return build_config(AuditConfig, dict(overrides), what="audit setting")


def uninformative_reason(target: float | None, oracle: float | None, config: AuditConfig, chance: float = 0.0) -> str | None:
    """Why an attack with chance level ``chance`` says nothing on this data, given the target's and oracle's scores (None when it does)."""

    def above_chance(score: float) -> float:
        return (score - chance) / (1 - chance)

    scale = "" if chance == 0 else f" of the way from chance ({chance:g}) to 1"
    if target is not None and above_chance(target) < config.uninformative_target_below:
        return (f"the target scores {target:.3f}, below {config.uninformative_target_below:g}{scale} (uninformative_target_below): "
                "it does not show these facts under this attack, so there is nothing to recover")
    if oracle is not None and above_chance(oracle) > config.uninformative_oracle_above:
        return (f"the retain oracle, never trained on these facts, scores {oracle:.3f}, above {config.uninformative_oracle_above:g}"
                f"{scale} (uninformative_oracle_above): the measure does not separate knowing the facts from not")
    return None


def verdict(
    unlearned: float, target: float | None, oracle: float | None, config: AuditConfig, chance: float = 0.0
) -> tuple[str, str | None]:
    """An attack's verdict from each model's recovery, and the reason when it is :data:`UNINFORMATIVE` (see the module docstring)."""
    reason = uninformative_reason(target, oracle, config, chance)
    if reason is not None:
        return UNINFORMATIVE, reason
    if oracle is None:
        return NO_ORACLE, None
    if unlearned - oracle > config.threshold:
        return RECOVERED, None
    if oracle - unlearned > config.threshold:
        return BELOW_ORACLE, None
    return AT_ORACLE, None


def describe_rules(counts: Mapping[str, int]) -> str | None:
    """The recall rules of an outcome in words: 'fact_span', or 'fact_span (28 rows), rouge (2 rows)'; None for none."""
    if len(counts) <= 1:
        return next(iter(counts), None)
    return ", ".join(f"{rule} ({count} rows)" for rule, count in sorted(counts.items(), key=lambda item: -item[1]))


def recovered_share(unlearned: float, target: float | None, oracle: float | None, threshold: float) -> float | None:
    """(u − o) / (t − o): the share of the target's knowledge above the oracle's level that the attack brings back.

    None unless the target is above the oracle by more than ``threshold``: a share of a gap
    within the verdict's margin would only magnify noise.
    """
    if target is None or oracle is None or target - oracle <= threshold:
        return None
    return (unlearned - oracle) / (target - oracle)


@dataclass
class AuditResult:
    """Per attack: each model's outcome; the summary rows; the attacks that expose hidden knowledge."""

    outcomes: dict[str, dict[str, AttackOutcome]]
    rows: list[dict[str, Any]]
    exposed_by: list[str]
    skipped: dict[str, str]


def summarize(outcomes: Mapping[str, Mapping[str, AttackOutcome]], config: AuditConfig) -> tuple[list[dict[str, Any]], list[str]]:
    """One summary row per attack (recoveries, share, verdict and its reason, recall rule, notes) and the attacks that expose hidden knowledge."""  # noqa: E501 - a docstring's summary line, kept whole
    rows = []
    for name, by_model in outcomes.items():
        spec, measured = ATTACKS.get(name), by_model["unlearned"]  # measure, recall rules and notes: the same for every model
        unlearned = measured.recovery
        target = by_model["target"].recovery if "target" in by_model else None
        oracle = by_model["oracle"].recovery if "oracle" in by_model else None
        judged, reason = verdict(unlearned, target, oracle, config, spec.chance)
        share = None if judged == UNINFORMATIVE else recovered_share(unlearned, target, oracle, config.threshold)
        rows.append({
            "attack": name, "family": spec.family, "measure": measured.measure,
            "unlearned": unlearned, "target": target, "oracle": oracle, "recovered_share": share,
            "verdict": judged, "verdict_reason": reason, "threshold": config.threshold,
            "recall_rule": describe_rules(measured.recall_rules), "notes": list(measured.notes),
        })
    direct = next((row for row in rows if row["attack"] == "direct"), None)
    direct_holds = direct is None or direct["verdict"] != RECOVERED
    exposed = [row["attack"] for row in rows if row["attack"] != "direct" and row["verdict"] == RECOVERED and direct_holds]
    return rows, exposed


def run_attacks(
    models: Mapping[str, tuple[PreTrainedModel, PreTrainedTokenizerBase]],
    data: AuditData,
    attacks: Sequence[str],
    config: AuditConfig,
    cached: Mapping[str, Path] | None = None,
) -> AuditResult:
    """Run ``attacks`` (None: every attack that suits the data) on each model of ``models`` (keys from :data:`AUDITED_MODELS`; "unlearned" required).

    ``cached`` maps a model name to a folder where its outcomes are stored and
    reused by later audits with the same data and settings (the built-in
    target's and oracles' outcomes do not change between methods).
    """  # noqa: E501 - a docstring's summary line, kept whole
    if "unlearned" not in models:
        raise ValueError("run_attacks needs the 'unlearned' model.")
    names, skipped = plan_attacks(attacks, data, config)
    for name, reason in skipped.items():
        logger.warning("skipping the %s attack: it %s", name, reason)
    outcomes: dict[str, dict[str, AttackOutcome]] = {}
    for name in names:
        spec = ATTACKS.get(name)
        outcomes[name] = {}
        for role, (model, tokenizer) in models.items():
            store = _cache_path(cached, role, name, data, config)
            if store is not None and store.exists():
                outcomes[name][role] = AttackOutcome(**json.loads(store.read_text(encoding="utf-8")))
                continue
            started = time.perf_counter()
            model.eval()
            outcome = spec.run(model, tokenizer, data, config)
            logger.info("%-18s %-9s recovery %.3f (%s) in %.1f s", name, role, outcome.recovery, outcome.measure,
                        time.perf_counter() - started)
            outcomes[name][role] = outcome
            if store is not None:
                write_json(store, asdict(outcome))
    rows, exposed = summarize(outcomes, config)
    return AuditResult(outcomes=outcomes, rows=rows, exposed_by=exposed, skipped=skipped)


def _cache_path(cached: Mapping[str, Path] | None, role: str, attack: str, data: AuditData, config: AuditConfig) -> Path | None:
    if not cached or role not in cached:
        return None
    # Whole rows: how answers are judged depends on their value, paraphrased and perturbed answers and entity field too.
    payload = json.dumps({"config": asdict(config), "fmt": data.fmt.record(),
                          "rows": [list(split) for split in (data.forget, data.retain, data.holdout)]},
                         sort_keys=True, default=str)
    key = hashlib.sha256(payload.encode()).hexdigest()[:12]
    return Path(cached[role]) / f"{attack}-{key}.json"


def merged(model: PreTrainedModel) -> PreTrainedModel:
    """A plain model: an adapter model (saved with lora_merge false) is merged into a copy of its base, so attacks see the weights it runs with."""  # noqa: E501 - a docstring's summary line, kept whole
    if hasattr(model, "merge_and_unload"):
        return copy.deepcopy(model).merge_and_unload()
    return model
