"""``audit``: attack an unlearned model, the target and the retain oracle; one results folder with verdicts and a report."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from transformers import PreTrainedModel

from unlearnkit.attacks import AuditConfig, AuditData
from unlearnkit.auditing import AuditResult, attack_order, build_audit_config, builtin_audit_settings, merged, plan_attacks, run_attacks
from unlearnkit.data.encoding import PromptFormat
from unlearnkit.descriptions import attack_descriptions
from unlearnkit.errors import UnlearnkitError
from unlearnkit.inference.loading import load_any_model
from unlearnkit.io import write_json, write_text
from unlearnkit.modeling import load_tokenizer
from unlearnkit.provenance import environment
from unlearnkit.report.audit import write_audit_report
from unlearnkit.report.tables import audit_table
from unlearnkit.runs.folder import check_output_dir, results_folder
from unlearnkit.runs.inputs import Builtin, RunOptions, check_builtin_format, resolve_data
from unlearnkit.runs.lock import locks_output


@dataclass(frozen=True)
class AuditInputs:
    """The models (unlearned, target, oracle), the data, the attacks and their settings, resolved."""

    model: str
    data: AuditData = field(repr=False)
    target: str | None
    oracle: str | None
    attacks: list[str] | None
    config: AuditConfig
    cached: dict[str, Path] | None = None
    description: dict[str, Any] = field(default_factory=dict)


def parse_attacks(text: str) -> list[str] | None:
    """``all`` (None) or comma-separated attack names, checked and put in the audit's order."""
    from unlearnkit.runs.bench import parse_list

    return None if text.strip() == "all" else attack_order(parse_list(text, "--attacks"))


def resolve_audit(
    *,
    model: str,
    builtin: Builtin,
    benchmark: str | None = None,
    target: str | None = None,
    oracle: str | None = None,
    forget: str | None = None,
    retain: str | None = None,
    holdout: str | None = None,
    attacks: str = "all",
    overrides: Mapping[str, Any] | None = None,
    prompt_format: PromptFormat = PromptFormat(),
) -> AuditInputs:
    """``--benchmark SPLIT`` (its data, target and oracle, whose outcomes are cached) or the user's data and models.

    Answers are generated up to the forget data's cap (the built-in splits' 48, TOFU's 200, ...) unless
    ``--set max_new_tokens=N`` says otherwise.
    """
    names = parse_attacks(attacks)
    overrides = dict(overrides or {})
    build_audit_config(overrides)  # a bad attack name or setting fails before any model is loaded or trained
    if benchmark is not None:
        if forget or retain or holdout:
            raise UnlearnkitError("--benchmark brings its own forget, retain and holdout sets: drop --forget/--retain/--holdout.")
        check_builtin_format(prompt_format, builtin)
        bench = builtin.prepared(benchmark)
        config = build_audit_config({**builtin_audit_settings(bench.config), **overrides})
        data = AuditData(forget=bench.split(benchmark), retain=bench.split(bench.retain_split(benchmark)),
                         holdout=bench.split("holdout" + benchmark[-2:]), fmt=builtin.prompt_format)
        own = {"target": bench.target_dir, "oracle": bench.oracle_dir(benchmark)}
        target, oracle = target or str(own["target"]), oracle or str(own["oracle"])
        # The built-in target's and oracle's outcomes are the same for every audited method: computed once, then reused.
        cached = {role: bench.root / "audits" / f"{role}-{benchmark}" for role, chosen in (("target", target), ("oracle", oracle))
                  if Path(chosen) == own[role]}
        return AuditInputs(model, data, target, oracle, names, config, cached, {"benchmark": benchmark, "preset": builtin.preset})
    if not forget:
        raise UnlearnkitError("Give the data to attack: --benchmark SPLIT for the built-in benchmark, "
                              "or --forget FILE (with --target and --oracle).")
    forget_data = resolve_data(forget, "forget")
    data = AuditData(forget=forget_data.rows, retain=resolve_data(retain, "retain").rows if retain else [],
                     holdout=resolve_data(holdout, "holdout").rows if holdout else [], fmt=prompt_format)
    config = build_audit_config({"max_new_tokens": forget_data.max_new_tokens, **overrides})
    return AuditInputs(model, data, target, oracle, names, config, None, {"forget": forget, "retain": retain, "holdout": holdout})


def resolve_model_dir(path: str) -> str:
    """A results folder of `unlearn`/`demo` (which holds no weights itself) stands for the model saved in its ``model/``."""
    folder = Path(path)
    weights = ("model.safetensors", "model.safetensors.index.json", "adapter_config.json")
    if (folder / "model").is_dir() and not any((folder / name).is_file() for name in weights):
        return str(folder / "model")
    return path


def check_audit_layers(config: AuditConfig, networks: Sequence[PreTrainedModel]) -> None:
    """The layers the latent attacks read must exist in every audited model: checked before any output exists."""
    from unlearnkit.parameters import check_layers_exist, parse_layers

    for network in networks:
        if config.lens_layers:
            check_layers_exist(network, parse_layers(config.lens_layers), "lens_layers")
        if config.probe_layer is not None:
            check_layers_exist(network, [config.probe_layer], "probe_layer")


@locks_output
def run_audit(*, inputs: AuditInputs, options: RunOptions) -> AuditResult:
    """Audit the model and write a results folder: config.json, summary.json, per_sample.json, audit.md and report.html."""
    model, data, attacks, config, cached = inputs.model, inputs.data, inputs.attacks, inputs.config, inputs.cached
    output, overwrite, trust_remote_code = options.output, options.overwrite, options.trust_remote_code
    names, _ = plan_attacks(attacks, data, config)  # unsuitable data fails here, before any model is loaded
    sources = {"unlearned": model, "target": inputs.target, "oracle": inputs.oracle}
    check_output_dir(output, overwrite, {f"the {role} model": source for role, source in sources.items()})
    models = {}
    for role, source in sources.items():
        if source is not None:
            path = resolve_model_dir(source)
            # A wrapped model (``wrap``) is attacked as any model: its weights are the target's, its outputs the wrapper's.
            models[role] = (merged(load_any_model(path, trust_remote_code)), load_tokenizer(path, trust_remote_code))
    data.fmt.check(models["unlearned"][1])  # an impossible prompt format fails before any output exists
    check_audit_layers(config, [network for network, _ in models.values()])
    with results_folder(output, overwrite) as folder:
        write_json(folder / "config.json", {
            "command": "audit", **{role: str(source) for role, source in sources.items() if source is not None},
            **inputs.description, "attacks": names, "audit": asdict(config), **data.fmt.record(),
            "rows": {"forget": len(data.forget), "retain": len(data.retain), "holdout": len(data.holdout)},
            "attack_info": attack_descriptions(names), "environment": environment(),
        })
        result = run_attacks(models, data, attacks, config, cached)
        write_json(folder / "summary.json", {"attacks": result.rows, "exposed_by": result.exposed_by, "skipped": result.skipped,
                                             "details": {name: {role: outcome.details for role, outcome in by_model.items()}
                                                         for name, by_model in result.outcomes.items()}})
        write_json(folder / "per_sample.json", {name: {role: outcome.per_sample for role, outcome in by_model.items()}
                                                for name, by_model in result.outcomes.items()})
        write_text(folder / "audit.md", audit_table(result.rows, result.exposed_by))
        write_audit_report(folder, folder / "report.html", title=f"unlearnkit audit: {model}")
    return result
