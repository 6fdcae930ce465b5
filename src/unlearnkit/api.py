"""The Python API: load data, unlearn, evaluate, audit and report from a script, as the command line does.

Each function takes keyword arguments named after the command's options (``--oracle-reference`` is
``oracle_reference=``), resolves them with the same resolvers, checks them the same way before
anything is written, and calls the same runner, so it writes the same results folder. Bad input
raises :class:`unlearnkit.errors.UnlearnkitError` (the command line's exit status 2) before anything
is written; its message names the command-line option, whose keyword is the same name with
underscores. ``import unlearnkit`` stays light: torch and the runners load on the first call.

    import unlearnkit

    rows = unlearnkit.load_data("my_forget.jsonl", role="forget")
    run = unlearnkit.unlearn(method="npo", model="models/target", forget="my_forget.jsonl",
                             retain="my_retain.jsonl", output="runs/npo", settings={"num_epochs": 5})
    print(run.summary["forget_truth_ratio"], run.folder / "model")
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from unlearnkit.errors import UnlearnkitError

PathLike = str | Path


@dataclass(frozen=True)
class Results:
    """What a run wrote: its results folder, and the summary it saved there as ``summary.json``."""

    folder: Path
    summary: dict[str, Any]


def load_data(
    source: PathLike,
    *,
    role: str = "data",
    required: Sequence[str] = ("question", "answer"),
    preset: str = "default",
    cache: PathLike | None = None,
    progress: bool = True,
) -> list[dict[str, Any]]:
    """QA rows from a ``.json``/``.jsonl``/``.csv``/``.parquet`` file, ``hf:NAME[:CONFIG][@SPLIT]``, a ``tofu:``/``muse-``
    name or a built-in split name (of ``preset``), validated row by row as every command validates its data.

    ``role`` (e.g. "forget") names the data in messages; ``required`` are the fields every row must hold.
    """
    from unlearnkit.runs.inputs import Builtin, resolve_data

    _check_text(role=role)
    if isinstance(required, str) or not all(isinstance(name, str) for name in required):
        raise UnlearnkitError(f"required must be a list of field names, e.g. ('question', 'answer'); got {required!r}.")
    source = _as_source(source, "source")
    builtin = Builtin(preset, _optional_path(cache), progress)
    return resolve_data(source, role, builtin, required=tuple(required)).rows


def unlearn(
    *,
    method: str,
    output: PathLike,
    model: PathLike | None = None,
    forget: PathLike = "forget10",
    retain: PathLike | None = None,
    settings: Mapping[str, Any] | None = None,
    evaluate_after: bool = True,
    oracle_reference: PathLike | None = None,
    real_authors: PathLike | None = None,
    world_facts: PathLike | None = None,
    holdout: PathLike | None = None,
    preset: str = "default",
    cache: PathLike | None = None,
    prompt_format: str = "auto",
    system_prompt: str | None = None,
    date_string: str | None = None,
    overwrite: bool = False,
    trust_remote_code: bool = False,
    eval_batch_size: int = 64,
    max_new_tokens: int | None = None,
    checkpoint_every: int = 50,
    resume: bool = False,
    on_overlap: str = "refuse",
    eval_every: int = 0,
    select_best: str | None = None,
    subject_to: str | None = None,
    patience: int = 0,
    eval_rows: int = 0,
    localize: PathLike | None = None,
    progress: bool = True,
) -> Results:
    """``unlearnkit unlearn``: unlearn ``forget`` from ``model`` with ``method`` and write the results folder ``output``.

    ``model``: a model folder, a pretrained model's name (``"smollm2-135m"``, converted on first use; ``unlearnkit models``),
    a hub name or "builtin" (the built-in target, the default with a built-in forget split;
    own forget data needs the model named). ``settings`` are the method's hyperparameters (``--set KEY=VALUE``), e.g.
    ``{"learning_rate": 1e-5, "num_epochs": 5}``; ``unlearnkit methods -v`` lists them. ``real_authors``, ``world_facts``
    and ``holdout`` are evaluated with the forget and retain data, as ``evaluate`` takes them. ``evaluate_after=False``
    is ``--no-eval``. ``localize``: a localization folder (:func:`localize`); only the weights it selects train
    (the same as ``settings={"localize": ...}``). The summary is empty without evaluation.
    """
    from unlearnkit.evaluation.evaluator import EvalConfig
    from unlearnkit.evaluation.tracking import TrackingConfig
    from unlearnkit.runs.inputs import BUILTIN_MODEL, Builtin, RunOptions, check_outputs, resolve_method
    from unlearnkit.runs.unlearn import resolve_unlearn, run_unlearn

    _check_text(method=method)
    _check_counts(checkpoint_every=checkpoint_every)
    model, forget = _optional_source(model, "model"), _as_source(forget, "forget")
    output, retain, oracle_reference = _path(output), _optional_source(retain, "retain"), _optional_path(oracle_reference)
    evaluation_data = {name: _optional_source(value, name)
                       for name, value in {"real_authors": real_authors, "world_facts": world_facts, "holdout": holdout}.items()}
    fmt = _prompt_format(prompt_format, system_prompt, date_string)
    builtin = Builtin(preset, _optional_path(cache), progress)
    settings = with_localize(_settings(settings), _optional_path(localize))
    check_outputs(output, overwrite, builtin=builtin, model=model, forget=forget, retain=retain, oracle_reference=oracle_reference,
                  localize=settings.get("localize"), **evaluation_data)
    tracking = TrackingConfig(every=eval_every, select_best=select_best, subject_to=subject_to, patience=patience, max_rows=eval_rows)
    if tracking.enabled and not evaluate_after:
        raise UnlearnkitError("--eval-every (eval_every) evaluates on the evaluation sets during training: drop --no-eval "
                              "(evaluate_after=False).")
    # The built-in target (named, or the default with a built-in split) gets the benchmark's settings for the tiny model.
    chosen = resolve_method(method, settings, builtin if model in (None, BUILTIN_MODEL) else None)
    inputs = resolve_unlearn(model=model, method=chosen, forget=forget, retain=retain, builtin=builtin, prompt_format=fmt,
                             evaluate_after=evaluate_after, oracle_reference=oracle_reference,
                             eval_config=EvalConfig(batch_size=eval_batch_size, max_new_tokens=max_new_tokens), tracking=tracking,
                             evaluation_data=evaluation_data)
    _log_into_results_folders()
    run_unlearn(inputs=inputs, options=RunOptions(output, overwrite, progress, checkpoint_every, resume, trust_remote_code),
                on_overlap=on_overlap, tracking=tracking)
    return _results(output)


def localize(
    *,
    model: PathLike,
    data: PathLike,
    localizer: str,
    output: PathLike,
    settings: Mapping[str, Any] | None = None,
    max_rows: int | None = None,
    preset: str = "default",
    cache: PathLike | None = None,
    prompt_format: str = "auto",
    system_prompt: str | None = None,
    date_string: str | None = None,
    overwrite: bool = False,
    trust_remote_code: bool = False,
    progress: bool = True,
) -> Results:
    """``unlearnkit localize``: find where ``data``'s facts live in ``model`` with ``localizer`` and write the folder ``output``.

    ``settings`` are the localizer's settings (``--set``, ``unlearnkit localizers -v``); ``max_rows`` keeps the first rows.
    The folder holds the localization (``localization.json``, ``scores.safetensors``), its heat maps, ``summary.json`` and
    ``report.md``; pass it to :func:`unlearn` as ``localize=`` to train only the located weights.
    """
    from unlearnkit.runs.inputs import Builtin, RunOptions, check_outputs
    from unlearnkit.runs.localize import resolve_localize, resolve_localizer, run_localize

    _check_text(localizer=localizer)
    model, data, output = _as_source(model, "model"), _as_source(data, "data"), _path(output)
    if max_rows is not None:
        _check_counts(max_rows=max_rows)
    fmt = _prompt_format(prompt_format, system_prompt, date_string)
    chosen = resolve_localizer(localizer, _settings(settings))
    builtin = Builtin(preset, _optional_path(cache), progress)
    check_outputs(output, overwrite, builtin=builtin, MODEL=model, data=data)
    inputs = resolve_localize(model=model, data=data, localizer=chosen, builtin=builtin, prompt_format=fmt, max_rows=max_rows)
    _log_into_results_folders()
    run_localize(inputs=inputs, options=RunOptions(output, overwrite, progress, trust_remote_code=trust_remote_code))
    return _results(output)


def wrap(
    *,
    model: PathLike,
    wrapper: str,
    forget: PathLike,
    output: PathLike,
    retain: PathLike | None = None,
    settings: Mapping[str, Any] | None = None,
    preset: str = "default",
    cache: PathLike | None = None,
    prompt_format: str = "auto",
    system_prompt: str | None = None,
    date_string: str | None = None,
    overwrite: bool = False,
    trust_remote_code: bool = False,
    progress: bool = True,
) -> Results:
    """``unlearnkit wrap``: build the inference-time unlearning ``wrapper`` around ``model`` for the ``forget`` rows.

    The weights stay untouched: the wrapper changes the prompt or the logits (``unlearnkit wrappers``). ``settings`` are
    its settings (``--set``). The folder ``output`` holds ``model/``, the wrapped model, which :func:`evaluate`,
    :func:`audit` and ``unlearnkit serve`` take as a model; its summary holds what building measured.
    """
    from unlearnkit.runs.inputs import Builtin, RunOptions, check_outputs
    from unlearnkit.runs.wrap import resolve_wrap, resolve_wrapper, run_wrap

    _check_text(wrapper=wrapper)
    model, forget, output = _as_source(model, "model"), _as_source(forget, "forget"), _path(output)
    retain = _optional_source(retain, "retain")
    fmt = _prompt_format(prompt_format, system_prompt, date_string)
    chosen = resolve_wrapper(wrapper, _settings(settings))
    builtin = Builtin(preset, _optional_path(cache), progress)
    check_outputs(output, overwrite, builtin=builtin, model=model, forget=forget, retain=retain)
    inputs = resolve_wrap(model=model, wrapper=chosen, forget=forget, retain=retain, builtin=builtin, prompt_format=fmt)
    _log_into_results_folders()
    run_wrap(inputs=inputs, options=RunOptions(output, overwrite, progress, trust_remote_code=trust_remote_code))
    return _results(output)


def with_localize(settings: dict[str, Any], localize: Path | None) -> dict[str, Any]:
    """``settings`` with ``localize`` (the ``--localize`` option) as its ``localize`` setting; a different one there is refused."""
    if localize is None:
        return settings
    given = settings.get("localize")
    if given is not None and str(given) != str(localize):
        raise UnlearnkitError(f"The localization is given twice, as {given!r} and {str(localize)!r}; keep one.")
    return {**settings, "localize": str(localize)}


def evaluate(
    *,
    model: PathLike,
    output: PathLike,
    benchmark: str | None = None,
    forget: PathLike | None = None,
    retain: PathLike | None = None,
    real_authors: PathLike | None = None,
    world_facts: PathLike | None = None,
    holdout: PathLike | None = None,
    oracle_reference: PathLike | None = None,
    save_reference: PathLike | None = None,
    preset: str = "default",
    cache: PathLike | None = None,
    prompt_format: str = "auto",
    system_prompt: str | None = None,
    date_string: str | None = None,
    overwrite: bool = False,
    trust_remote_code: bool = False,
    batch_size: int = 64,
    max_new_tokens: int | None = None,
    privleak_texts: tuple[str, str] | None = None,
    privleak_retain_auc: float | None = None,
    spv_mia: bool = False,
    spv_mia_settings: Mapping[str, Any] | None = None,
    progress: bool = True,
) -> Results:
    """``unlearnkit eval``: TOFU-style metrics, forget quality against a retain oracle's reference, model utility.

    Evaluates on the built-in sets of ``benchmark`` (a forget split, e.g. "forget10"), or on the given data:
    ``forget`` at least, with ``retain``, ``real_authors``, ``world_facts`` and ``holdout`` for the metrics that need them.
    ``save_reference`` also writes this model's per-sample forget truth ratios, as a retain oracle's reference file.
    ``spv_mia`` adds SPV-MIA's AUC (``mia_spv_auc``; needs retain and holdout; it costs a generation and a reference
    fine-tune), with ``spv_mia_settings`` its settings (e.g. ``{"reference_learning_rate": 1e-3}``).
    """
    from unlearnkit.evaluation.evaluator import EvalConfig
    from unlearnkit.runs.evaluate import resolve_eval, run_eval
    from unlearnkit.runs.inputs import Builtin, RunOptions, check_outputs

    model, output, save_reference = _as_source(model, "model"), _path(output), _optional_path(save_reference)
    if spv_mia_settings and not spv_mia:
        raise UnlearnkitError("SPV-MIA settings were given (--spv-set) but SPV-MIA is off: add --spv-mia (spv_mia=True).")
    data = {name: _optional_source(value, name) for name, value in
            {"forget": forget, "retain": retain, "real_authors": real_authors, "world_facts": world_facts, "holdout": holdout}.items()}
    oracle_reference = _optional_path(oracle_reference)
    texts = tuple(privleak_texts) if privleak_texts is not None else None
    fmt = _prompt_format(prompt_format, system_prompt, date_string)
    builtin = Builtin(preset, _optional_path(cache), progress)
    check_outputs(output, overwrite, builtin=builtin, files={"--save-reference": save_reference}, model=model,
                  oracle_reference=oracle_reference, privleak_texts=texts, **data)
    inputs = resolve_eval(model=model, builtin=builtin, benchmark=benchmark, data=data, oracle_reference=oracle_reference,
                          prompt_format=fmt, eval_config=EvalConfig(batch_size=batch_size, max_new_tokens=max_new_tokens,
                                                                    spv_mia=bool(spv_mia), spv_mia_settings=_settings(spv_mia_settings)),
                          privleak_texts=texts, privleak_retain_auc=privleak_retain_auc)
    _log_into_results_folders()
    run_eval(inputs=inputs, options=RunOptions(output, overwrite, progress, trust_remote_code=trust_remote_code),
             save_reference_to=save_reference)
    return _results(output)


def audit(
    *,
    model: PathLike,
    output: PathLike,
    benchmark: str | None = None,
    target: PathLike | None = None,
    oracle: PathLike | None = None,
    forget: PathLike | None = None,
    retain: PathLike | None = None,
    holdout: PathLike | None = None,
    attacks: str | Sequence[str] = "all",
    settings: Mapping[str, Any] | None = None,
    preset: str = "default",
    cache: PathLike | None = None,
    prompt_format: str = "auto",
    system_prompt: str | None = None,
    date_string: str | None = None,
    overwrite: bool = False,
    trust_remote_code: bool = False,
    progress: bool = True,
) -> Results:
    """``unlearnkit audit``: attack the unlearned ``model`` (a model folder, or an unlearn results folder) to bring the
    forgotten knowledge back, and compare with ``target`` (before unlearning) and ``oracle`` (the retain oracle).

    ``attacks``: "all", or attack names (``unlearnkit attacks``); ``settings``: the audit's settings (``--set``,
    ``unlearnkit attacks -v``). The summary holds ``attacks`` (one row per attack), ``exposed_by`` and ``skipped``.
    """
    from unlearnkit.runs.audit import resolve_audit, run_audit
    from unlearnkit.runs.inputs import Builtin, RunOptions, check_outputs

    if not isinstance(attacks, str):
        if not all(isinstance(name, str) for name in attacks):
            raise UnlearnkitError(f"attacks must be 'all' or a list of attack names (see `unlearnkit attacks`); got {attacks!r}.")
        attacks = ",".join(attacks)
    model, output = _as_source(model, "model"), _path(output)
    named = {name: _optional_source(value, name) for name, value in
             {"target": target, "oracle": oracle, "forget": forget, "retain": retain, "holdout": holdout}.items()}
    fmt = _prompt_format(prompt_format, system_prompt, date_string)
    builtin = Builtin(preset, _optional_path(cache), progress)
    check_outputs(output, overwrite, builtin=builtin, MODEL=model, **named)
    inputs = resolve_audit(model=model, builtin=builtin, benchmark=benchmark, attacks=attacks, overrides=_settings(settings),
                           prompt_format=fmt, **named)
    _log_into_results_folders()
    run_audit(inputs=inputs, options=RunOptions(output, overwrite, progress, trust_remote_code=trust_remote_code))
    return _results(output)


def forget(
    *,
    entity: str,
    output: PathLike,
    corpus: PathLike | None = None,
    model: PathLike | None = None,
    aliases: Sequence[str] = (),
    after: PathLike | None = None,
    method: str = "npo",
    settings: Mapping[str, Any] | None = None,
    holdout: PathLike | None = None,
    utility: PathLike | None = None,
    neighbours: int = 20,
    eval_rows: int = 50,
    max_share: float = 0.5,
    attacks: str | Sequence[str] = "all",
    audit_settings: Mapping[str, Any] | None = None,
    margin: float = 0.1,
    max_utility_drop: float = 0.1,
    request_id: str | None = None,
    dry_run: bool = False,
    preset: str = "default",
    cache: PathLike | None = None,
    prompt_format: str = "auto",
    system_prompt: str | None = None,
    date_string: str | None = None,
    eval_batch_size: int = 64,
    max_new_tokens: int | None = None,
    overwrite: bool = False,
    trust_remote_code: bool = False,
    progress: bool = True,
) -> Results:
    """``unlearnkit forget``: carry out a deletion request for ``entity`` and write its audit record into ``output``.

    Finds the ``corpus`` rows naming the entity (or an alias) as whole words, unlearns them from ``model`` with
    ``method`` (the other rows as the retain set), evaluates before and after, attacks the result, and writes
    ``record.json``, ``record.html``, ``ledger.json`` and the unlearned ``model/``. ``after``: the folder of the
    previous request, whose model this one unlearns and whose ledger it extends. The summary holds the verdict.

    ``dry_run=True`` writes nothing and loads no model: the summary is what the request would forget (the matched rows'
    numbers and questions) and keep, for checking the match before anything is unlearned.
    """
    from unlearnkit.deletion.verdict import Criteria
    from unlearnkit.evaluation.evaluator import EvalConfig
    from unlearnkit.runs.forget import resolve_forget, run_forget
    from unlearnkit.runs.inputs import Builtin, RunOptions, check_outputs

    _check_text(entity=entity, method=method)
    if isinstance(aliases, str) or not all(isinstance(alias, str) for alias in aliases):
        raise UnlearnkitError(f"aliases must be a list of names, e.g. ['A. Lee']; got {aliases!r}.")
    if request_id is not None:
        _check_text(request_id=request_id)
    _check_counts(neighbours=neighbours, eval_rows=eval_rows)
    if isinstance(max_share, bool) or not isinstance(max_share, (int, float)) or not 0 < max_share <= 1:
        raise UnlearnkitError(f"max_share must be a number in (0, 1], got {max_share!r}.")
    if not isinstance(attacks, str):
        if not all(isinstance(name, str) for name in attacks):
            raise UnlearnkitError(f"attacks must be 'all', 'none' or a list of attack names; got {attacks!r}.")
        attacks = ",".join(attacks)
    output, after = _path(output), _optional_path(after)
    corpus, model = _optional_source(corpus, "corpus"), _optional_source(model, "model")
    holdout, utility = _optional_source(holdout, "holdout"), _optional_source(utility, "utility")
    fmt = _prompt_format(prompt_format, system_prompt, date_string)
    criteria = Criteria(margin=margin, max_utility_drop=max_utility_drop)
    builtin = Builtin(preset, _optional_path(cache), progress)
    check_outputs(output, overwrite, builtin=builtin, corpus=corpus, model=model, after=after, holdout=holdout, utility=utility)
    inputs = resolve_forget(entity=entity, aliases=tuple(aliases), corpus=corpus, model=model, after=after, method=method,
                            settings=_settings(settings), holdout=holdout, utility=utility, neighbours=neighbours,
                            eval_rows=eval_rows, max_share=float(max_share), attacks=attacks,
                            audit_settings=_settings(audit_settings), criteria=criteria, builtin=builtin, prompt_format=fmt,
                            request_id=request_id, eval_config=EvalConfig(batch_size=eval_batch_size, max_new_tokens=max_new_tokens))
    if dry_run:
        from unlearnkit.runs.forget import preview

        return Results(output, preview(inputs))
    _log_into_results_folders()
    run_forget(inputs=inputs, options=RunOptions(output, overwrite, progress, trust_remote_code=trust_remote_code))
    return _results(output)


@dataclass(frozen=True)
class Report:
    """A report written: its HTML file and how many runs it compares."""

    path: Path
    runs: int


def write_report(
    folders: PathLike | Sequence[PathLike],
    *,
    output: PathLike = "report.html",
    title: str = "unlearnkit report",
    overwrite: bool = False,
) -> Report:
    """``unlearnkit report``: one self-contained HTML file comparing results folders (a bench folder stands for its runs)."""
    from unlearnkit.report.html import write_report as write_html
    from unlearnkit.report.results import load_runs
    from unlearnkit.runs.inputs import check_outputs

    paths = [_path(folders)] if isinstance(folders, (str, Path)) else [_path(folder) for folder in folders]
    if not paths:
        raise UnlearnkitError("write_report needs at least one results folder.")
    output = _path(output)
    _check_text(title=title)
    check_outputs(None, overwrite, files={"--output": output}, FOLDERS=paths)
    if output.exists() and (output.is_dir() or not overwrite):
        raise UnlearnkitError(f"{output} exists; choose another --output{'' if output.is_dir() else ', or pass --overwrite'}.")
    runs = load_runs(paths)
    try:
        write_html(runs, output, title=title)
    except OSError as error:
        raise UnlearnkitError(f"Cannot write {output}: {error.strerror or error}. Choose another --output.") from None
    return Report(output, len(runs))


def influence(
    *,
    model: PathLike,
    query: PathLike,
    train: PathLike,
    output: PathLike,
    estimator: str = "ekfac",
    top_k: int = 10,
    settings: Mapping[str, Any] | None = None,
    factors: PathLike | None = None,
    preset: str = "default",
    cache: PathLike | None = None,
    prompt_format: str = "auto",
    system_prompt: str | None = None,
    date_string: str | None = None,
    overwrite: bool = False,
    trust_remote_code: bool = False,
    progress: bool = True,
) -> Results:
    """``unlearnkit influence``: rank the ``train`` rows by their influence on each ``query`` row's answer, into ``output``.

    ``estimator`` is ``ekfac`` (Grosse et al. 2023), ``kfac``, ``diagonal`` or ``tracin`` (Pruthi et al. 2020);
    ``settings`` its settings (``--set``: damping, empirical_fisher, max_train_rows, group_field...); ``factors`` an
    earlier run's folder (or its ``factors/``) whose fitted curvature to reuse on the same model. The folder holds
    ``summary.json`` (top-k rows per query; top-k recall of the query's author when rows have one),
    ``per_sample.json``, ``scores.safetensors`` and ``factors/``.
    """
    from unlearnkit.runs.influence import resolve_influence, resolve_settings, run_influence
    from unlearnkit.runs.inputs import Builtin, RunOptions, check_outputs

    _check_text(estimator=estimator)
    model, query, train, output = _as_source(model, "model"), _as_source(query, "query"), _as_source(train, "train"), _path(output)
    if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1:
        raise UnlearnkitError(f"top_k must be a whole number, 1 or more; got {top_k!r}.")
    factors = _optional_path(factors)
    fmt = _prompt_format(prompt_format, system_prompt, date_string)
    config = resolve_settings(estimator, _settings(settings))
    builtin = Builtin(preset, _optional_path(cache), progress)
    check_outputs(output, overwrite, builtin=builtin, MODEL=model, query=query, train=train, factors=factors)
    inputs = resolve_influence(model=model, query=query, train=train, estimator=estimator, config=config, top_k=top_k,
                               factors=factors, builtin=builtin, prompt_format=fmt)
    _log_into_results_folders()
    run_influence(inputs=inputs, options=RunOptions(output, overwrite, progress, trust_remote_code=trust_remote_code))
    return _results(output)


# --------------------------------------------------------------------------------------------- argument checks
# The command line's option parser checks types; a script may pass anything, so the same refusals happen here.


def _path(value: Any) -> Path:
    if not isinstance(value, (str, Path)):
        raise UnlearnkitError(f"Expected a path (a str or pathlib.Path), got {type(value).__name__} {value!r}.")
    return Path(value)


def _optional_path(value: Any) -> Path | None:
    return None if value is None else _path(value)


def _as_source(value: Any, name: str) -> str:
    """A model or data source as the resolvers take it: a path, a hub or TOFU/MUSE name, or a built-in name."""
    if not isinstance(value, (str, Path)) or not str(value).strip():
        raise UnlearnkitError(f"{name} needs a path or a name (a str or pathlib.Path), got {value!r}.")
    return str(value)


def _optional_source(value: Any, name: str) -> str | None:
    return None if value is None else _as_source(value, name)


def _check_text(**values: Any) -> None:
    for name, value in values.items():
        if not isinstance(value, str) or not value.strip():
            raise UnlearnkitError(f"{name} needs a non-empty str, got {value!r}.")


def _check_counts(**values: Any) -> None:
    for name, value in values.items():
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise UnlearnkitError(f"{name} must be a whole number, 0 or more; got {value!r}.")


def _settings(settings: Mapping[str, Any] | None) -> dict[str, Any]:
    if settings is None:
        return {}
    if not isinstance(settings, Mapping) or not all(isinstance(key, str) for key in settings):
        raise UnlearnkitError(f"settings must be a dict of setting names to values, e.g. {{'learning_rate': 1e-5}}; got {settings!r}.")
    return dict(settings)


def _prompt_format(style: str, system_prompt: str | None, date_string: str | None) -> Any:
    from unlearnkit.data.encoding import PromptFormat

    return PromptFormat(style, system_prompt, date_string)


def _log_into_results_folders() -> None:
    """Each results folder's log.txt receives unlearnkit's info messages, as under the command line.

    Only a level left unset is raised to INFO: a script's own logging configuration stays as it is, and
    with no handler configured Python still prints warnings and errors alone.
    """
    logger = logging.getLogger("unlearnkit")
    if logger.level == logging.NOTSET:
        logger.setLevel(logging.INFO)


def _results(output: Path) -> Results:
    return Results(output, json.loads((output / "summary.json").read_text(encoding="utf-8")))


def tune(
    *,
    method: str,
    output: PathLike,
    benchmark: str = "builtin",
    preset: str = "default",
    split: str | None = None,
    holdout_split: str = "auto",
    trials: int = 20,
    jobs: int = 1,
    space: Sequence[str] | None = None,
    objective: str | None = None,
    subject_to: str | None = None,
    settings: Mapping[str, Any] | None = None,
    seeds: Sequence[int] = (0,),
    eval_every: int | None = None,
    eval_rows: int = 0,
    pruner: str | None = None,
    prune_after: int = 5,
    sampler_seed: int = 0,
    cache: PathLike | None = None,
    threads: int | None = None,
    keep_models: bool = False,
    progress: bool = True,
    model: str | None = None,
    probes: PathLike | None = None,
    forget_corpus: PathLike | None = None,
    retain_corpus: PathLike | None = None,
    general_text: PathLike | None = None,
) -> Results:
    """``unlearnkit tune``: search ``method``'s hyperparameters on a benchmark into the study folder ``output``.

    ``benchmark``: ``"builtin"`` (``preset``; ``split`` a forget split, default forget10) or ``"real-knowledge"``
    (``model`` and the data files, None for the shipped ones; ``split`` comma-separated forget entities, default the
    first half). None for ``split``, ``objective``, ``subject_to`` or ``pruner``: the benchmark's default.
    ``space``: ``--space`` entries, e.g. ``["learning_rate=log:1e-5:1e-3", "beta=float:0.05:1"]`` (None: the method's
    default space); ``settings``: fixed settings (``--set``). Rerunning on the same folder resumes the study (``trials``
    is its total). The result's ``summary`` is ``best.json``: the chosen trial, its settings, its metrics on the tuned
    split and on ``holdout_split`` (docs/tuning.md).
    """
    from unlearnkit.runs.tune import TuneOptions, resolve_tune, run_tune
    from unlearnkit.tuning.benchmarks import tuning_benchmark
    from unlearnkit.tuning.plan import check_counts

    _check_text(method=method, benchmark=benchmark, holdout_split=holdout_split)
    for name, value in (("split", split), ("objective", objective), ("pruner", pruner), ("model", model)):
        if value is not None:
            _check_text(**{name: value})
    if subject_to is not None and not isinstance(subject_to, str):
        raise UnlearnkitError(f"subject_to must be a string such as 'model_utility>=0.95*oracle'; got {subject_to!r}.")
    output = _path(output)
    check_counts(trials, jobs, prune_after, eval_every, eval_rows)
    if isinstance(space, str) or (space is not None and not all(isinstance(entry, str) for entry in space)):
        raise UnlearnkitError(f"space must be a list of 'NAME=KIND:ARGS' strings, e.g. ['learning_rate=log:1e-5:1e-3']; got {space!r}.")
    if isinstance(seeds, (str, int)) or not all(isinstance(seed, int) and not isinstance(seed, bool) for seed in seeds):
        raise UnlearnkitError(f"seeds must be a list of whole numbers, e.g. [0, 1, 2]; got {seeds!r}.")
    if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int) or threads < 1):
        raise UnlearnkitError(f"threads must be a whole number, 1 or more; got {threads!r}.")
    files = {"model": model, "probes": probes, "forget_corpus": forget_corpus, "retain_corpus": retain_corpus,
             "general_text": general_text}
    ground = tuning_benchmark(benchmark, preset=preset, cache=_optional_path(cache), show_progress=progress,
                              inputs={key: str(value) for key, value in files.items() if value is not None})
    plan, holdout = resolve_tune(benchmark=ground, method=method, split=split, holdout=holdout_split, space=space, objective=objective,
                                 subject_to=subject_to, fixed={key: str(value) for key, value in _settings(settings).items()},
                                 seeds=list(seeds), eval_every=eval_every, eval_rows=eval_rows, pruner=pruner,
                                 prune_after=prune_after, sampler_seed=sampler_seed)
    _log_into_results_folders()
    outcome = run_tune(plan=plan, holdout=holdout, benchmark=ground, output=output,
                       options=TuneOptions(trials, jobs, threads, progress, keep_models))
    return Results(outcome.output, outcome.best)
