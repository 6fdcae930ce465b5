"""``recommend``: E2URec's whole experiment on the built-in synthetic recommendation data, into one results folder.

Wang et al., "Towards Efficient and Effective Unlearning of Large Language Models for Recommendation", Frontiers of
Computer Science, 2024. Five models are made and compared (docs/e2urec.md):

* ``original``: a tiny Llama trained (every weight, from scratch) on every user's training rows;
* ``oracle``: the same initial weights trained the same way on the retained users' rows only (retraining, the gold
  standard; its time is the cost unlearning avoids);
* ``augmented``: the original trained further on D_f (E2URec's forgetting teacher is built from it);
* ``e2urec``: the LoRA student of :mod:`unlearnkit.recommendation.e2urec`;
* ``npo``: NPO+RT with the same LoRA budget (:mod:`unlearnkit.recommendation.baselines`).

Results folder: ``summary.json`` (per model: AUC, ACC, log-loss, confidence on the test set and on D_f, the
distance to the oracle on both, seconds; the forget distance before and after unlearning), ``config.json``
(settings, the user split, versions, digests), ``predictions.json`` (per row and model: p(yes), symmetrised KL
and L2 to the oracle), ``data/`` (the rows of D_f, D_r and the test set, in the package's QA schema, so other
commands can read them), ``models/<name>/`` (each model, safetensors; the students with their adapters merged),
``report.md`` and ``log.txt``.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import torch

from unlearnkit.errors import UnlearnkitError, did_you_mean
from unlearnkit.io import write_text
from unlearnkit.recommendation.baselines import NPOBaselineConfig, unlearn_npo
from unlearnkit.recommendation.data import RecDataConfig, RecDataset, UserSplit, build_dataset, partition, split_users
from unlearnkit.recommendation.e2urec import E2URecConfig, unlearn_e2urec
from unlearnkit.recommendation.model import RecModelConfig
from unlearnkit.runs.folder import check_output_dir, results_folder, write
from unlearnkit.runs.lock import locks_output
from unlearnkit.settings import build_config

logger = logging.getLogger("unlearnkit")

SUMMARY_FILE = "summary.json"
PREDICTIONS_FILE = "predictions.json"
REPORT_FILE = "report.md"
MODELS = ("original", "oracle", "augmented", "e2urec", "npo")
# The paper's default: forget the first 20% of the shuffled users.
DEFAULT_FORGET_FRACTION = 0.2
# Settings classes whose fields --set KEY=VALUE may name (their field names are distinct).
SETTING_CLASSES = (RecDataConfig, RecModelConfig, E2URecConfig, NPOBaselineConfig)


@dataclass(frozen=True)
class RecommendSettings:
    """Every setting of the experiment, checked."""

    data: RecDataConfig
    model: RecModelConfig
    e2urec: E2URecConfig
    npo: NPOBaselineConfig

    def record(self) -> dict[str, Any]:
        return {"data": asdict(self.data), "model": asdict(self.model), "e2urec": asdict(self.e2urec), "npo": asdict(self.npo)}


@dataclass(frozen=True)
class RecommendInputs:
    settings: RecommendSettings
    dataset: RecDataset
    split: UserSplit


def build_settings(overrides: Mapping[str, Any]) -> RecommendSettings:
    """Route each ``--set KEY=VALUE`` to the settings class that owns KEY (an unknown key fails with did-you-mean)."""
    owners = {item.name: cls for cls in SETTING_CLASSES for item in fields(cls)}
    routed: dict[type, dict[str, Any]] = {cls: {} for cls in SETTING_CLASSES}
    for key, value in overrides.items():
        if key not in owners:
            raise UnlearnkitError(f"Unknown recommend setting {key!r}.{did_you_mean(str(key), owners)} "
                                  f"Known: {', '.join(sorted(owners))}.")
        routed[owners[key]][key] = value
    built = {cls: build_config(cls, routed[cls], what="recommend setting") for cls in SETTING_CLASSES}
    return RecommendSettings(*(built[cls] for cls in SETTING_CLASSES))


def resolve_recommend(
    overrides: Mapping[str, Any], forget_fraction: float | None = None, users: Sequence[int] | None = None,
) -> RecommendInputs:
    """Check the settings and choose the users to forget (the paper's 20% when neither is given); nothing is trained yet."""
    settings = build_settings(overrides)
    if forget_fraction is None and users is None:
        forget_fraction = DEFAULT_FORGET_FRACTION
    dataset = build_dataset(settings.data)
    split = split_users(dataset, forget_fraction, users, seed=settings.data.data_seed)
    return RecommendInputs(settings, dataset, split)


@locks_output
def run_recommend(*, inputs: RecommendInputs, output: Path, overwrite: bool = False, show_progress: bool = True) -> dict[str, Any]:
    """Train the five models, evaluate them, and write the results folder; returns the summary."""
    from unlearnkit.provenance import environment, rows_sha256, tokenizer_sha256, weights_sha256

    check_output_dir(output, overwrite)
    rows = partition(inputs.dataset, inputs.split)
    with results_folder(output, overwrite) as folder:
        experiment = run_experiment(inputs, rows, show_progress)
        for role in ("forget", "retain", "test"):
            write(folder / "data" / f"{role}.json", rows[role])
        for name, network in experiment.pop("networks").items():
            _save(network, experiment["tokenizer"], folder / "models" / name)
        tokenizer = experiment.pop("tokenizer")
        summary = experiment["summary"]
        run_config = {
            "command": "recommend",
            "citation": 'Wang et al., "Towards Efficient and Effective Unlearning of Large Language Models for Recommendation", '
                        "Frontiers of Computer Science, 2024",
            "settings": inputs.settings.record(), "users": inputs.split.record(), "prompt_format": "plain",
            "environment": environment(),
            "sha256": {"rows": {role: rows_sha256(rows[role]) for role in ("forget", "retain", "test")},
                       "tokenizer": tokenizer_sha256(tokenizer),
                       "models": {name: weights_sha256(folder / "models" / name) for name in MODELS}},
        }
        write(folder / "config.json", run_config)
        write(folder / PREDICTIONS_FILE, experiment["predictions"])
        write(folder / SUMMARY_FILE, summary)
        write_text(folder / REPORT_FILE, render_report(summary))
    return summary


def _save(network: Any, tokenizer: Any, folder: Path) -> None:
    from unlearnkit.modeling import save_model

    if hasattr(network, "merge_and_unload"):  # a LoRA student: the adapters merged into a copy of the base
        network = copy.deepcopy(network).merge_and_unload()
    folder.mkdir(parents=True, exist_ok=True)
    save_model(network, tokenizer, folder)


def run_experiment(inputs: RecommendInputs, rows: Mapping[str, list[dict]], show_progress: bool = True) -> dict[str, Any]:
    """The experiment without the results folder: the networks, the tokenizer, the summary and the per-row predictions."""
    from unlearnkit.recommendation import model as rec

    settings = inputs.settings
    torch.manual_seed(settings.model.seed)
    every_row = [*inputs.dataset.train_rows, *inputs.dataset.heldout_rows]
    tokenizer = rec.recommender_tokenizer(every_row, settings.model)
    tokens = rec.answer_tokens(tokenizer)
    pad = tokenizer.pad_token_id
    features = {role: rec.encode_rows(tokenizer, role_rows, settings.model.max_length) for role, role_rows in rows.items()}
    train = [*features["forget"], *features["retain"]]
    logger.info("recommend: %d users (%d forgotten), %d forget rows, %d retain rows, %d test rows",
                len(inputs.dataset.users), len(inputs.split.forget), len(rows["forget"]), len(rows["retain"]), len(rows["test"]))
    seconds: dict[str, float] = {}
    training: dict[str, dict] = {}

    def trained(name: str, start: Any, role_features: list[dict], epochs: int, learning_rate: float) -> Any:
        network = start
        training[name] = rec.train_nll(network, role_features, pad, epochs=epochs, batch_size=settings.model.train_batch_size,
                                       learning_rate=learning_rate, seed=settings.model.seed, desc=f"{name} model",
                                       show_progress=show_progress)
        seconds[name] = training[name]["seconds"]
        return network

    model_config = settings.model
    original = trained("original", rec.build_recommender(tokenizer, model_config), train, model_config.train_epochs,
                       model_config.train_learning_rate)
    oracle = trained("oracle", rec.build_recommender(tokenizer, model_config), features["retain"], model_config.train_epochs,
                     model_config.train_learning_rate)
    augmented = trained("augmented", copy.deepcopy(original), features["forget"], settings.e2urec.augment_epochs,
                        settings.e2urec.augment_learning_rate)
    e2urec, training["e2urec"] = unlearn_e2urec(original, augmented, features["forget"], features["retain"], pad, settings.e2urec,
                                                show_progress)
    seconds["e2urec"] = training["e2urec"]["seconds"]
    npo, training["npo"] = unlearn_npo(original, features["forget"], features["retain"], pad, settings.e2urec, settings.npo,
                                       show_progress)
    seconds["npo"] = training["npo"]["seconds"]
    networks = {"original": original, "oracle": oracle, "augmented": augmented, "e2urec": e2urec, "npo": npo}
    summary, predictions = evaluate_models(networks, features, rows, tokens, pad)
    for name in MODELS:
        summary["models"][name]["seconds"] = seconds[name]
        summary["models"][name]["training"] = training[name]
    summary["models"]["e2urec"]["seconds_with_augmented"] = seconds["e2urec"] + seconds["augmented"]
    summary.update(_headline(summary, inputs, rows, tokens.record(tokenizer), rec.count_trainable(original)))
    return {"networks": networks, "tokenizer": tokenizer, "summary": summary, "predictions": predictions}


def evaluate_models(
    networks: Mapping[str, Any], features: Mapping[str, list[dict]], rows: Mapping[str, list[dict]], tokens: Any, pad: int,
) -> tuple[dict[str, Any], list[dict]]:
    """Every model on the test set and on D_f: recommendation metrics and the distance to the oracle (row by row too)."""
    from unlearnkit.recommendation import metrics
    from unlearnkit.recommendation.model import answer_log_probs, yes_probability

    sets = ("test", "forget")
    log_probs = {name: {s: answer_log_probs(network, features[s], pad) for s in sets} for name, network in networks.items()}
    summary: dict[str, Any] = {"models": {}}
    per_row: dict[str, dict[str, dict[str, list[float]]]] = {s: {} for s in sets}
    for name in networks:
        entry: dict[str, Any] = {}
        for s in sets:
            labels = [row["label"] for row in rows[s]]
            p_yes = yes_probability(log_probs[name][s], tokens)
            jsd = metrics.symmetrised_kl(log_probs["oracle"][s], log_probs[name][s])
            l2 = metrics.l2_distance(log_probs["oracle"][s], log_probs[name][s])
            entry[s] = {**metrics.recommendation_metrics(labels, p_yes.numpy()),
                        "jsd_to_oracle": float(jsd.mean()), "l2_to_oracle": float(l2.mean())}
            per_row[s][name] = {"p_yes": p_yes.tolist(), "jsd_to_oracle": jsd.tolist(), "l2_to_oracle": l2.tolist()}
        summary["models"][name] = entry
    predictions = []
    for s in sets:
        for index, row in enumerate(rows[s]):
            predictions.append({
                "set": s, "user": row["user"], "item": row["item"], "rating": row["rating"], "label": row["label"],
                "models": {name: {key: values[index] for key, values in per_row[s][name].items()} for name in networks},
            })
    return summary, predictions


def _headline(summary: Mapping[str, Any], inputs: RecommendInputs, rows: Mapping[str, list[dict]], tokens: dict,
              total_parameters: int) -> dict[str, Any]:
    """The forget distance to the oracle before (the original) and after each unlearning, the split and the costs."""
    models = summary["models"]
    distance = {name: {"jsd": models[name]["forget"]["jsd_to_oracle"], "l2": models[name]["forget"]["l2_to_oracle"]}
                for name in ("original", "e2urec", "npo")}
    return {
        "forget_distance_to_oracle": {"before": distance["original"], "e2urec": distance["e2urec"], "npo": distance["npo"]},
        "e2urec_moves_toward_oracle": distance["e2urec"]["jsd"] < distance["original"]["jsd"],
        "users": {"total": len(inputs.dataset.users), "forgotten": list(inputs.split.forget), "retained": len(inputs.split.retain),
                  "how": inputs.split.how},
        "rows": {role: len(role_rows) for role, role_rows in rows.items()},
        "answer_tokens": tokens,
        "parameters": {"total": total_parameters, "e2urec_trainable": models["e2urec"]["training"]["trainable_parameters"],
                       "npo_trainable": models["npo"]["training"]["trainable_parameters"]},
        "seconds": {"retraining": models["oracle"]["seconds"], "e2urec": models["e2urec"]["seconds"],
                    "e2urec_with_augmented": models["e2urec"]["seconds_with_augmented"], "npo": models["npo"]["seconds"]},
    }


def _number(value: float | None, digits: int = 4) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def render_report(summary: Mapping[str, Any]) -> str:
    """``report.md``: the comparison table and the forget distance before and after, in words."""
    lines = [
        "# E2URec on the built-in recommendation data",
        "",
        f"{summary['users']['total']} users, {len(summary['users']['forgotten'])} forgotten ({summary['users']['how']}); "
        f"{summary['rows']['forget']} forget rows, {summary['rows']['retain']} retain rows, {summary['rows']['test']} test rows.",
        "",
        "| model | test AUC | test ACC | test log-loss | D_f AUC | D_f ACC | D_f JSD to oracle | D_f L2 to oracle | seconds |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name in MODELS:
        entry = summary["models"][name]
        test, forget = entry["test"], entry["forget"]
        lines.append(f"| {name} | {_number(test['auc'])} | {_number(test['acc'])} | {_number(test['log_loss'])} | "
                     f"{_number(forget['auc'])} | {_number(forget['acc'])} | {_number(forget['jsd_to_oracle'])} | "
                     f"{_number(forget['l2_to_oracle'])} | {entry['seconds']:.1f} |")
    before, after = summary["forget_distance_to_oracle"]["before"], summary["forget_distance_to_oracle"]["e2urec"]
    lines += [
        "",
        f"On D_f, E2URec {'moved' if summary['e2urec_moves_toward_oracle'] else 'did not move'} the answers toward the retrained "
        f"model: symmetrised KL {before['jsd']:.4f} before, {after['jsd']:.4f} after (L2 {before['l2']:.4f} -> {after['l2']:.4f}).",
        f"E2URec trained {summary['parameters']['e2urec_trainable']:,} of {summary['parameters']['total']:,} weights in "
        f"{summary['seconds']['e2urec']:.1f} s ({summary['seconds']['e2urec_with_augmented']:.1f} s with the augmented model); "
        f"retraining took {summary['seconds']['retraining']:.1f} s.",
        "",
    ]
    return "\n".join(lines)
