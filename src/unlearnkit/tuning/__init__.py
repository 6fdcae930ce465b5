"""Hyperparameter search for unlearning methods on the built-in benchmark (``unlearnkit tune``, on Optuna).

* :mod:`.space`: the search space (``--space NAME=KIND:ARGS``) and the default one per method;
* :mod:`.objective`: the objective subject to constraints, feasibility, the Pareto front;
* :mod:`.plan`: the study's settings, compared when a study resumes;
* :mod:`.study`: the study folder, its SQLite storage, interrupted trials;
* :mod:`.trial` and :mod:`.worker`: running trials, with pruning, in one or several processes;
* :mod:`.plot` and :mod:`.report`: the trade-off plot and the summary files.

The runner is :func:`unlearnkit.runs.tune.run_tune`.
"""
