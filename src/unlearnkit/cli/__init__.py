"""The ``unlearnkit`` command line: options (:mod:`.options`), the commands (:mod:`.commands`), exit statuses (:mod:`.app`).

A command only declares its options, resolves them into typed inputs
(:mod:`unlearnkit.runs.inputs`), calls a runner (:mod:`unlearnkit.runs`) and prints.
"""

from unlearnkit.cli import (
    commands,  # noqa: F401 - registers the commands with the app
    copyright,  # noqa: F401 - registers the copyright command
    datasets_command,  # noqa: F401 - registers the datasets command
    filter_command,  # noqa: F401 - registers the filter command
    harmful,  # noqa: F401 - registers the harmful command
    hazard,  # noqa: F401 - registers the hazard command
    private,  # noqa: F401 - registers the private command
    recommend,  # noqa: F401 - registers the recommend command
    serve,  # noqa: F401 - registers the serve command
    side_effects,  # noqa: F401 - registers the side-effects command
    tune,  # noqa: F401 - registers the tune command
)
from unlearnkit.cli.app import app, main

__all__ = ["app", "main"]
