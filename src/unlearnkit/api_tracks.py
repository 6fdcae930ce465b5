"""The Python API of the unlearning tracks (docs/tracks.md): private data, harmful behaviour, hazardous knowledge,
copyrighted text, and the bias/toxicity side effects.

Each function is its command (``unlearnkit private`` is :func:`private`) with the options as keywords; the command
line calls these functions, so a script and the command refuse the same inputs with the same message
(:class:`unlearnkit.errors.UnlearnkitError`, the command line's exit status 2) before anything is written, and write the
same results folder. ``methods`` is a list of method names; ``settings`` the ``--set`` values as a dict.

    import unlearnkit

    run = unlearnkit.hazard(output="runs/hazard", preset="micro", methods=["rmu"])
    print(run.summary["models"]["rmu"]["hazard_acc"])
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from unlearnkit.api import PathLike, Results, _as_source, _log_into_results_folders, _optional_path, _path, _results, _settings
from unlearnkit.errors import UnlearnkitError


def private(
    *,
    output: PathLike,
    preset: str | None = None,
    methods: Sequence[str] = ("graddiff", "npo"),
    oracle: bool | None = None,
    enron: PathLike | None = None,
    model: PathLike | None = None,
    forget_people: int | None = None,
    forget_names: Sequence[str] = (),
    settings: Mapping[str, Any] | None = None,
    overwrite: bool = False,
    progress: bool = True,
) -> Results:
    """``unlearnkit private``: memorised phone numbers and addresses in e-mails, exposure and extraction before and after.

    Built-in fictitious e-mails on a tiny model (``preset`` ``micro`` or ``default``, the default; ``oracle`` on by
    default), or real ones: ``enron`` an Enron corpus (maildir folder, emails.csv or JSON Lines) probed on ``model`` for
    the senders' addresses (``forget_people`` senders with the most e-mails, or ``forget_names``).
    """
    _check_choices(preset=preset, oracle=oracle, overwrite=overwrite, progress=progress)
    chosen = _names(methods, "methods")
    overrides = _settings(settings)
    names = _names(forget_names, "forget_names", allow_empty=True)
    if forget_people is not None and (isinstance(forget_people, bool) or not isinstance(forget_people, int)):
        raise UnlearnkitError(f"forget_people must be a whole number; got {forget_people!r}.")
    if enron is None:
        given = [option for option, value in (("--model", model), ("--forget-people", forget_people), ("--forget-names", names or None))
                 if value is not None]
        if given:
            raise UnlearnkitError(f"{', '.join(given)} only apply to real e-mails: add --enron PATH, or drop them.")
        from unlearnkit.runs.private import resolve_private, run_private

        inputs = resolve_private(preset or "default", chosen, overrides, True if oracle is None else oracle)
        _log_into_results_folders()
        run_private(inputs=inputs, output=_path(output), overwrite=overwrite, show_progress=progress)
        return _results(_path(output))
    builtin_only = [option for option, value in (("--preset", preset), ("--oracle/--no-oracle", oracle)) if value is not None]
    if builtin_only:
        raise UnlearnkitError(f"{', '.join(builtin_only)} only apply to the built-in e-mails: drop them with --enron "
                              "(real e-mails have no retain oracle; the original model is the before level).")
    if model is None:
        raise UnlearnkitError("--enron needs --model: the model to probe and unlearn (a folder, or a pretrained name, "
                              "e.g. smollm2-135m).")
    if forget_people is not None and names:
        raise UnlearnkitError("Give --forget-people or --forget-names, not both.")
    if forget_people is not None:
        overrides = {**overrides, "forget_people": forget_people}
    from unlearnkit.runs.private_enron import resolve_enron, run_enron

    inputs = resolve_enron(_as_source(enron, "enron"), _as_source(model, "model"), chosen, overrides, names)
    _log_into_results_folders()
    run_enron(inputs=inputs, output=_path(output), overwrite=overwrite, show_progress=progress)
    return _results(_path(output))


def harmful(
    *,
    output: PathLike,
    preset: str = "default",
    methods: Sequence[str] = ("ga_mismatch", "npo", "graddiff"),
    oracle: bool = True,
    model: PathLike | None = None,
    data: str | None = None,
    eval_data: str | None = None,
    normal: PathLike | None = None,
    judge: PathLike | None = None,
    judge_labels: PathLike | None = None,
    prompt_format: str = "auto",
    settings: Mapping[str, Any] | None = None,
    overwrite: bool = False,
    progress: bool = True,
) -> Results:
    """``unlearnkit harmful``: unlearn harmful prompt -> response pairs (Yao et al., "Large Language Model Unlearning",
    NeurIPS 2024); held-out harmful-response rate, judged by a classifier, against normal-prompt utility.

    Built-in pairs on a tiny model (``preset``), or ``model`` with ``data`` (a catalog source of harmful pairs),
    ``normal`` (question/answer rows to keep) and ``judge`` (a local sequence-classification folder).
    """
    _check_choices(preset=preset, oracle=oracle, overwrite=overwrite, progress=progress)
    from unlearnkit.data.encoding import PromptFormat
    from unlearnkit.runs.harmful import resolve_harmful, run_harmful

    inputs = resolve_harmful(preset, _names(methods, "methods"), _settings(settings), oracle=oracle,
                             model=None if model is None else _as_source(model, "model"),
                             data=None if data is None else _as_source(data, "data"),
                             eval_data=None if eval_data is None else _as_source(eval_data, "eval_data"),
                             normal=None if normal is None else _as_source(normal, "normal"),
                             judge=_optional_path(judge), judge_labels=_optional_path(judge_labels),
                             prompt_format=PromptFormat(prompt_format))
    _log_into_results_folders()
    run_harmful(inputs=inputs, output=_path(output), overwrite=overwrite, show_progress=progress)
    return _results(_path(output))


def hazard(
    *,
    output: PathLike,
    preset: str = "default",
    methods: Sequence[str] | None = None,
    oracle: bool = True,
    model: PathLike | None = None,
    mcq: str | None = None,
    general_mcq: str | None = None,
    forget_corpus: str | None = None,
    retain_corpus: str | None = None,
    scoring: str | None = None,
    prompt_format: str = "auto",
    trust_remote_code: bool = False,
    settings: Mapping[str, Any] | None = None,
    overwrite: bool = False,
    progress: bool = True,
) -> Results:
    """``unlearnkit hazard``: hazard vs general multiple-choice accuracy before and after unlearning (the WMDP setting;
    Li et al., "The WMDP Benchmark", ICML 2024); the goal is the hazard set at chance (0.25).

    Built-in fictitious domains on a tiny model (``preset``; ``methods`` default rmu, npo, graddiff), or ``model``
    measured on ``mcq`` (``wmdp:bio@DIR`` or a {question, choices, answer} file) and unlearned on ``forget_corpus``.
    """
    _check_choices(preset=preset, oracle=oracle, overwrite=overwrite, progress=progress, trust_remote_code=trust_remote_code)
    from unlearnkit.runs.hazard import DEFAULT_METHODS, resolve_hazard, resolve_real_hazard, run_hazard, run_real_hazard

    chosen = None if methods is None else _names(methods, "methods", allow_empty=True)
    overrides = _settings(settings)
    if model is None:
        given = [flag for flag, value in (("--mcq", mcq), ("--general-mcq", general_mcq), ("--forget-corpus", forget_corpus),
                                          ("--retain-corpus", retain_corpus), ("--scoring", scoring)) if value is not None]
        given += ["--prompt-format"] if prompt_format != "auto" else []
        if given:
            raise UnlearnkitError(f"{', '.join(given)} apply to a real model: add --model, or drop them "
                                  "(the built-in analogue takes --set scoring=letters).")
        inputs = resolve_hazard(preset, list(DEFAULT_METHODS) if chosen is None else chosen, overrides, oracle)
        _log_into_results_folders()
        run_hazard(inputs=inputs, output=_path(output), overwrite=overwrite, show_progress=progress)
        return _results(_path(output))
    if mcq is None:
        raise UnlearnkitError("--model needs --mcq, the hazard questions (e.g. --mcq wmdp:bio@DIR).")
    from unlearnkit.data.encoding import PromptFormat

    real = resolve_real_hazard(model=_as_source(model, "model"), mcq=_as_source(mcq, "mcq"), general_mcq=general_mcq,
                               forget_corpus=forget_corpus, retain_corpus=retain_corpus, methods=chosen or [], overrides=overrides,
                               scoring=scoring or "letters", fmt=PromptFormat(prompt_format), trust_remote_code=trust_remote_code)
    _log_into_results_folders()
    run_real_hazard(inputs=real, output=_path(output), overwrite=overwrite, show_progress=progress)
    return _results(_path(output))


def copyright(
    *,
    output: PathLike,
    model: PathLike | None = None,
    preset: str | None = None,
    methods: Sequence[str] = ("whp", "npo", "ga"),
    text: PathLike | None = None,
    anchors: PathLike | None = None,
    oracle: bool | None = None,
    settings: Mapping[str, Any] | None = None,
    overwrite: bool = False,
    progress: bool = True,
) -> Results:
    """``unlearnkit copyright``: verbatim recall (VerbMem, Shi et al., "MUSE", 2024) of a text the pretrained model has
    memorised, before and after unlearning (WHP, Eldan & Russinovich, "Who's Harry Potter?", 2023, among the methods),
    against recall of texts to keep.

    ``model`` (default smollm2-135m) with the shipped public-domain passages or ``text`` (your own .txt file or folder);
    or ``preset`` for the built-in analogue on a tiny model (``oracle`` on by default there).
    """
    _check_choices(preset=preset, oracle=oracle, overwrite=overwrite, progress=progress)
    from unlearnkit.runs.copyright import resolve_copyright, run_copyright

    if oracle is not None and preset is None:
        raise UnlearnkitError("--oracle/--no-oracle applies to the built-in analogue (--preset): a pretrained model has no "
                              "oracle that never read the text. Drop it, or add --preset.")
    inputs = resolve_copyright(model=None if model is None else _as_source(model, "model"), preset=preset,
                               methods=_names(methods, "methods"), overrides=_settings(settings), text=_optional_path(text),
                               anchors=_optional_path(anchors), oracle=True if oracle is None else oracle)
    _log_into_results_folders()
    run_copyright(inputs=inputs, output=_path(output), overwrite=overwrite, show_progress=progress)
    return _results(_path(output))


def side_effects(
    *,
    output: PathLike,
    models: Sequence[PathLike],
    bbq: str | None = None,
    prompts: str | None = None,
    judge: PathLike | None = None,
    settings: Mapping[str, Any] | None = None,
    overwrite: bool = False,
) -> Results:
    """``unlearnkit side-effects``: BBQ accuracy and bias scores (Parrish et al., Findings of ACL 2022) and toxicity of
    continuations of RealToxicityPrompts-style prompts (Gehman et al., Findings of EMNLP 2020) for each model.

    ``models``: model folders, pretrained names or unlearn results folders, the first the reference; ``LABEL=MODEL``
    names one in the report.
    """
    _check_choices(overwrite=overwrite)
    from unlearnkit.runs.side_effects import resolve_side_effects, run_side_effects

    if isinstance(models, (str, Path)):
        models = [models]
    inputs = resolve_side_effects([_as_source(entry, "models") for entry in models], bbq, prompts, _optional_path(judge),
                                  _settings(settings))
    _log_into_results_folders()
    run_side_effects(inputs=inputs, output=_path(output), overwrite=overwrite)
    return _results(_path(output))


def _check_choices(**values: Any) -> None:
    """Flags must be True/False (None: the default) and presets names: a script may pass anything."""
    for name, value in values.items():
        if name == "preset":
            if value is not None and (not isinstance(value, str) or not value.strip()):
                raise UnlearnkitError(f"preset needs a preset name (a str, e.g. 'micro' or 'default'), got {value!r}.")
        elif value is not None and not isinstance(value, bool):
            raise UnlearnkitError(f"{name} must be True or False, got {value!r}.")


def _names(values: Any, name: str, allow_empty: bool = False) -> list[str]:
    """A list of names from a list (or one comma-separated str, as the command line gives it)."""
    if isinstance(values, str):
        values = values.split(",")
    if not isinstance(values, Sequence) or not all(isinstance(value, str) for value in values):
        raise UnlearnkitError(f"{name} must be a list of names, e.g. ['npo', 'graddiff']; got {values!r}.")
    chosen = [value.strip() for value in values if value.strip()]
    if not chosen and not allow_empty:
        raise UnlearnkitError(f"{name} is empty; name at least one (see `unlearnkit methods`).")
    return chosen
