"""SPV-MIA in the audit: forget (members) vs holdout (never trained on) AUC with a self-prompted reference model.

Fu et al., "Practical Membership Inference Attacks against Fine-tuned Large Language
Models via Self-prompt Calibration", NeurIPS 2024; the statistic, the
neighbours and the reference model are in :mod:`unlearnkit.evaluation.spv_mia`.
Each audited model (unlearned, target, oracle) is attacked with a reference
fine-tuned on its *own* self-prompted texts, prompted with retain rows, so the
attack needs a retain and a holdout set. Its recovery is the AUC (0.5: chance),
as the ``membership`` attack's; the seconds spent generating, fine-tuning the
reference and scoring are in the outcome's details.

The audit's settings give ``batch_size`` and ``seed``; an :class:`AuditConfig`
field ``spv_<name>`` (e.g. ``spv_reference_learning_rate``), where the audit
has one, sets the :class:`SpvMiaConfig` field ``<name>``; the others keep the
paper's values.
"""

from __future__ import annotations

from dataclasses import fields

from transformers import PreTrainedModel, PreTrainedTokenizerBase

from unlearnkit.attacks.base import AttackOutcome, AuditConfig, AuditData, register_attack
from unlearnkit.evaluation.catalog import SPV_MIA
from unlearnkit.evaluation.spv_mia import SpvMiaConfig, evaluate_spv_mia

# The prefix of an AuditConfig field that sets the SpvMiaConfig field of the same name without it.
AUDIT_PREFIX = "spv_"


def audit_settings(config: AuditConfig) -> SpvMiaConfig:
    """The SPV-MIA settings of an audit: its batch size and seed, and each ``spv_<name>`` field it has."""
    values = {"batch_size": config.batch_size, "seed": config.seed}
    for item in fields(SpvMiaConfig):
        if hasattr(config, AUDIT_PREFIX + item.name):
            values[item.name] = getattr(config, AUDIT_PREFIX + item.name)
    return SpvMiaConfig(**values)


def spv_mia_attack(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    data: AuditData,
    config: AuditConfig,
    settings: SpvMiaConfig | None = None,
) -> AttackOutcome:
    """SPV-MIA on ``model`` (``settings`` None: :func:`audit_settings`); the model is left unchanged."""
    settings = audit_settings(config) if settings is None else settings
    result = evaluate_spv_mia(model, tokenizer, data.fmt, data.forget, data.holdout, data.retain, settings)
    auc = result.summary["mia_spv_auc"]
    return AttackOutcome(auc, "SPV-MIA AUC (0.5: chance)", result.forget, {"mia_spv_auc": auc, **result.details},
                         notes=result.notes)


@register_attack(
    "spv_mia",
    paper=SPV_MIA,
    summary="Membership inference, forget vs holdout: ROC-AUC of SPV-MIA (probability drop under word-span perturbation, "
            "calibrated by a reference fine-tuned on the model's own texts prompted with retain rows); costs a generation "
            "and a fine-tune per model, seconds in the details.",
    family="membership",
    needs=("holdout", "retain"),
    chance=0.5,
    on_request="generates texts and fine-tunes a reference model for each audited model",
)
def spv_mia(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, data: AuditData, config: AuditConfig) -> AttackOutcome:
    return spv_mia_attack(model, tokenizer, data, config)
