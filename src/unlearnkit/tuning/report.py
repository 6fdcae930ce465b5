"""The study's summary files: ``trials.json``, ``best.json``, ``tradeoff.png``, ``report.md`` and ``report.html``.

All are functions of the study database, the plan and the held-out run, rewritten at the end of every
run of the command, so that they describe every trial run so far.
"""

from __future__ import annotations

import shlex
from collections.abc import Callable, Mapping, Sequence
from html import escape
from pathlib import Path
from typing import Any

from unlearnkit.io import write_bytes, write_json, write_text
from unlearnkit.report.tables import HEADLINE_METRICS, compact_number, format_table
from unlearnkit.tuning.objective import Objective, choose_best, pareto_front
from unlearnkit.tuning.plan import TunePlan
from unlearnkit.tuning.plot import Axes, TrialPoint, tradeoff_plot
from unlearnkit.tuning.study import RERUN_OF, TRIALS, rerun_numbers, trial_folder

TRIALS_FILE = "trials.json"
BEST_FILE = "best.json"
PLOT_FILE = "tradeoff.png"
STATES = {"COMPLETE": "complete", "PRUNED": "pruned", "FAIL": "failed", "RUNNING": "running", "WAITING": "waiting"}


def trial_records(trials: Sequence[Any], plan: TunePlan, references: Mapping[str, Mapping[str, float]]) -> list[dict[str, Any]]:
    """One row per Optuna trial (``study.get_trials()``): state, settings, metrics, feasibility, why it stopped."""
    objective = plan.goal
    replaced = rerun_numbers(trials)
    records = []
    for trial in trials:
        state = STATES.get(trial.state.name, trial.state.name.lower())
        last = trial.user_attrs.get("last_evaluation")
        metrics = trial.user_attrs.get("metrics") or (last or {}).get("metrics") or {}
        record = {
            "number": trial.number, "state": state, "settings": dict(trial.params),
            "value": trial.value if state == "complete" else None,
            "feasible": objective.feasible(metrics, references) if metrics and state in ("complete", "pruned") else None,
            "constraints": dict(trial.constraints), "metrics": metrics,
            "seconds": round(trial.duration.total_seconds(), 2) if trial.duration is not None else None,
            "folders": [str(Path(TRIALS) / trial_folder(Path(), trial.number, seed).name) for seed in plan.seeds]
            if state == "complete" else [],
        }
        if state == "pruned":
            record["pruned_at_step"] = (last or {}).get("step")
        if "error" in trial.user_attrs:
            record["error"] = trial.user_attrs["error"]
        if trial.number in replaced:
            record["interrupted"] = True
        if RERUN_OF in trial.user_attrs:
            record[RERUN_OF] = trial.user_attrs[RERUN_OF]
        if "seed_metrics" in trial.user_attrs:
            record["seed_metrics"] = trial.user_attrs["seed_metrics"]
        records.append(record)
    return records


def front_numbers(records: Sequence[Mapping[str, Any]], objective: Objective) -> list[int]:
    """The trial numbers on the Pareto front of the complete trials (x metric against the objective)."""
    x_name, x_up = objective.trade_off()
    complete = [record for record in records if record["state"] == "complete"
                and _finite(record["metrics"].get(x_name)) and _finite(record["metrics"].get(objective.metric))]
    points = [(record["metrics"][x_name], record["metrics"][objective.metric]) for record in complete]
    return [complete[index]["number"] for index in pareto_front(points, (x_up, objective.maximise))]


def best_summary(records: Sequence[Mapping[str, Any]], plan: TunePlan, references: Mapping[str, Mapping[str, float]],
                 holdout: Mapping[str, Any] | None, rerun_command: Callable[[TunePlan, Mapping[str, Any]], str] | None = None,
                 ) -> dict[str, Any]:
    """``best.json``: the chosen trial (best feasible), its settings and metrics, and the held-out re-evaluation.

    ``rerun_command(plan, settings)``: the command line that reruns the chosen setting (default: ``unlearnkit demo``).
    """
    objective = plan.goal
    best = choose_best(records, objective)
    counts = {state: sum(record["state"] == state for record in records) for state in ("complete", "pruned", "failed")}
    counts["feasible"] = sum(record["state"] == "complete" and bool(record["feasible"]) for record in records)
    summary: dict[str, Any] = {
        "objective": str(objective.criterion), "split": plan.split, "trials": counts,
        "pareto_front": front_numbers(records, objective), "chosen": best["number"] if best else None,
    }
    if best is None:
        summary["note"] = ("no complete trial met the constraints: nothing is chosen. Widen the space, run more trials, "
                           "or loosen --subject-to.")
        return summary
    settings = {**plan.fixed, **best["settings"]}
    summary["settings"] = settings
    summary["command"] = (rerun_command or demo_command)(plan, settings)
    summary["tuned"] = split_result(plan.split, best["metrics"], references, objective)
    summary["holdout"] = dict(holdout) if holdout is not None else None
    return summary


def split_result(split: str, metrics: Mapping[str, float], references: Mapping[str, Mapping[str, float]],
                 objective: Objective) -> dict[str, Any]:
    """A setting's metrics on one split, beside the oracle's and the target's, with the constraints' bounds there."""
    shown = list(dict.fromkeys([*objective.metrics(), *headline_metrics(objective)]))
    return {
        "split": split, "metrics": {name: metrics.get(name) for name in shown},
        "oracle": {name: references.get("oracle", {}).get(name) for name in shown},
        "target": {name: references.get("target", {}).get(name) for name in shown},
        "bounds": {str(constraint): constraint.bound(references) for constraint in objective.constraints},
        "meets_constraints": objective.feasible(metrics, references),
    }


def headline_metrics(objective: Objective) -> tuple[str, ...]:
    """The metrics a study's tables show beside its objective's: the built-in benchmark's, or the real-knowledge ones."""
    if objective.utility == "model_utility":
        return HEADLINE_METRICS
    from unlearnkit.evaluation.real_knowledge import HEADLINE_KEYS

    return HEADLINE_KEYS


def demo_command(plan: TunePlan, settings: Mapping[str, Any]) -> str:
    """The ``unlearnkit demo`` command that reruns the chosen setting (first seed) on the tuned split."""
    from unlearnkit.tuning.benchmarks import set_options

    return shlex.join(["unlearnkit", "demo", "--preset", plan.preset, "--method", plan.method, "--split", plan.split,
                       *set_options({**settings, "seed": plan.seeds[0]})])


def write_summary(output: Path, plan: TunePlan, references: Mapping[str, Mapping[str, float]], records: Sequence[Mapping[str, Any]],
                  best: Mapping[str, Any], benchmark: str | None = None) -> None:
    """Write every summary file of the study folder ``output``; ``benchmark`` says in words what the study tuned on."""
    output = Path(output)
    write_json(output / TRIALS_FILE, {"objective": str(plan.goal.criterion), "split": plan.split, "trials": list(records)})
    write_json(output / BEST_FILE, dict(best))
    png = tradeoff_png(plan, references, records, best)
    write_bytes(output / PLOT_FILE, png)
    write_text(output / "report.md", report_markdown(plan, records, best, benchmark))
    write_text(output / "report.html", report_html(plan, records, best, png, benchmark))


def tradeoff_png(plan: TunePlan, references: Mapping[str, Mapping[str, float]], records: Sequence[Mapping[str, Any]],
                 best: Mapping[str, Any]) -> bytes:
    objective = plan.goal
    x_name, x_up = objective.trade_off()
    points = [TrialPoint(record["number"], record["state"], record["metrics"][x_name], record["metrics"][objective.metric],
                         bool(record["feasible"]))
              for record in records if record["state"] in ("complete", "pruned")
              and _finite(record["metrics"].get(x_name)) and _finite(record["metrics"].get(objective.metric))]
    first = objective.constraints[0] if objective.constraints else None
    where = {role: (values.get(x_name), values.get(objective.metric)) for role, values in references.items()}
    bound = None
    if first is not None:
        relative = f" ({first.factor:g}*{first.reference})" if first.reference else ""
        bound = (f"{first.metric} {first.op} {first.bound(references):.4g}{relative}", first.bound(references))
    axes = Axes(x_name, objective.metric, x_up, objective.maximise, bound, where)
    failed = sum(record["state"] == "failed" for record in records)
    title = f"{plan.method} on {plan.split} ({plan.preset}): {len(records)} trials, {objective.criterion}"
    return tradeoff_plot(points, axes, best.get("pareto_front", []), best.get("chosen"), failed, title)


def _comparison_rows(best: Mapping[str, Any]) -> tuple[list[dict[str, Any]], list[str]]:
    """The chosen setting beside the oracle and the target, on the tuned split and on the held-out one."""
    rows, columns = [], []
    for part in ("tuned", "holdout"):
        result = best.get(part)
        if not isinstance(result, Mapping) or "metrics" not in result:
            continue
        columns = list(result["metrics"])
        label = f"{result['split']} ({'tuned on' if part == 'tuned' else 'held out'})"
        rows.append({"model": f"chosen, {label}", **result["metrics"]})
        if any(value is not None for value in result["oracle"].values()):
            rows.append({"model": f"retain oracle, {result['split']}", **result["oracle"]})
        rows.append({"model": f"target, {result['split']}", **result["target"]})
    return rows, columns


def _trial_rows(records: Sequence[Mapping[str, Any]], plan: TunePlan) -> tuple[list[dict[str, Any]], list[str]]:
    objective = plan.goal
    x_name, _ = objective.trade_off()
    names = [dimension.name for dimension in plan.space]
    rows = []
    for record in records:
        note = record.get("error") or (f"pruned at step {record.get('pruned_at_step')}" if record["state"] == "pruned" else "")
        if record.get("interrupted"):
            note = "interrupted; run again"
        feasible = {True: "yes", False: "no", None: "-"}[record["feasible"]]
        rows.append({"trial": str(record["number"]), "state": record["state"],
                     **{name: _setting_text(record["settings"].get(name)) for name in names},
                     objective.metric: record["metrics"].get(objective.metric), x_name: record["metrics"].get(x_name),
                     "feasible": feasible, "note": note})
    return rows, [name for name in ["state", *names, objective.metric, x_name, "feasible", "note"]]


def _headline(plan: TunePlan, best: Mapping[str, Any], benchmark: str | None) -> list[str]:
    counts = best["trials"]
    lines = [f"Method {plan.method} on {benchmark or f'the built-in benchmark (preset {plan.preset})'}, tuned on {plan.split}: "
             f"{best['objective']}. Trials: {counts['complete']} complete ({counts['feasible']} meeting the constraints), "
             f"{counts['pruned']} pruned, {counts['failed']} failed. Seeds per trial: {', '.join(map(str, plan.seeds))}.",
             "Search space: " + "; ".join(str(dimension) for dimension in plan.space)
             + (f". Fixed: {', '.join(f'{k}={v}' for k, v in plan.fixed.items())}." if plan.fixed else ".")]
    if best.get("chosen") is None:
        lines.append(best.get("note", "Nothing chosen."))
        return lines
    lines.append(f"Chosen: trial {best['chosen']}, settings {', '.join(f'{k}={v}' for k, v in best['settings'].items())}. "
                 f"Rerun it with: {best['command']}")
    holdout = best.get("holdout")
    if isinstance(holdout, Mapping) and "metrics" in holdout:
        met = "meets" if holdout["meets_constraints"] else "does not meet"
        lines.append(f"Held out: the chosen setting on {holdout['split']} (not tuned on) {met} the constraints there"
                     + (f"; {holdout['forget_overlap']:.0%} of its forget questions are in {plan.split} (the built-in splits are "
                        "nested, as TOFU's)." if holdout.get("forget_overlap") else "."))
    elif isinstance(holdout, Mapping):
        lines.append(f"Held out: {holdout.get('note')}")
    return lines


def report_markdown(plan: TunePlan, records: Sequence[Mapping[str, Any]], best: Mapping[str, Any], benchmark: str | None = None) -> str:
    comparison, columns = _comparison_rows(best)
    trials, trial_columns = _trial_rows(records, plan)
    parts = [f"# Tuning {plan.method} on {plan.split}", "", *(f"{line}\n" for line in _headline(plan, best, benchmark)),
             f"![trade-off]({PLOT_FILE})", ""]
    if comparison:
        parts += ["## Chosen setting", "", format_table(comparison, ["model", *columns], style="markdown", right=columns), ""]
    parts += ["## Trials", "", format_table(trials, ["trial", *trial_columns], style="markdown"), ""]
    return "\n".join(parts)


def report_html(plan: TunePlan, records: Sequence[Mapping[str, Any]], best: Mapping[str, Any], png: bytes,
                benchmark: str | None = None) -> str:
    from unlearnkit.report.html import STYLE, figure_html

    comparison, columns = _comparison_rows(best)
    trials, trial_columns = _trial_rows(records, plan)
    caption = ("Every trial: the objective against the constrained metric. Filled: meets the constraints; hollow: breaks one; "
               "crosses: pruned, at their last evaluation during training. Green: the Pareto front of the complete trials; "
               "ringed: the chosen trial; dashed: the constraint's bound.")
    body = "".join(f"<p>{escape(line)}</p>" for line in _headline(plan, best, benchmark)) + figure_html(png, "trade-off plot", caption)
    if comparison:
        body += "<h2>Chosen setting</h2>" + _html_table(comparison, ["model", *columns])
    body += "<h2>Trials</h2>" + _html_table(trials, ["trial", *trial_columns])
    title = f"unlearnkit tune: {plan.method} on {plan.split}"
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{escape(title)}</title><style>{STYLE}</style>'
            f"</head>\n<body><h1>{escape(title)}</h1>{body}</body></html>\n")


def _html_table(rows: Sequence[Mapping[str, Any]], columns: Sequence[str]) -> str:
    head = "".join(f"<th>{escape(column)}</th>" for column in columns)
    body = "".join("<tr>" + "".join(_html_cell(row.get(column)) for column in columns) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _html_cell(value: Any) -> str:
    if isinstance(value, float):
        return f'<td class="num">{compact_number(value)}</td>'
    return f"<td>{escape('-' if value is None else str(value))}</td>"


def _setting_text(value: Any) -> str | None:
    """A drawn setting as the tables show it: a float to four significant digits, anything else as written."""
    if value is None:
        return None
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and value == value and value not in (float("inf"), float("-inf"))
