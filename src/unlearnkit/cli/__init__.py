"""The ``unlearnkit`` command line: options (:mod:`.options`), the commands (:mod:`.commands`), exit statuses (:mod:`.app`).

A command only declares its options, resolves them into typed inputs
(:mod:`unlearnkit.runs.inputs`), calls a runner (:mod:`unlearnkit.runs`) and prints.
"""

from unlearnkit.cli import commands  # noqa: F401 - registers the commands with the app
from unlearnkit.cli.app import app, main

__all__ = ["app", "main"]
