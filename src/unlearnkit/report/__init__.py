"""Reports from results folders: the HTML report (``report.html``), the leaderboard and the text tables.

* :mod:`unlearnkit.report.results`: read and check results folders (demo, bench, unlearn, eval);
* :mod:`unlearnkit.report.glossary`: each metric's label, better direction and definition;
* :mod:`unlearnkit.report.leaderboard`: runs grouped by configuration, mean and std over seeds, the leaderboard files;
* :mod:`unlearnkit.report.tables`: the package's one plain-text / Markdown table writer;
* :mod:`unlearnkit.report.plots`: the figures (matplotlib, Agg renderer, PNG bytes);
* :mod:`unlearnkit.report.html`: the self-contained page (``write_report``);
* :mod:`unlearnkit.report.audit`: the audit's page, from an audit folder (``write_audit_report``).

The rule: a report reads results folders only. Everything it shows of a run's
metrics, method or attacks is in the folder (``metric_info``, ``method_info``,
``attack_info`` in ``config.json``, written by the runners with
:mod:`unlearnkit.descriptions`), so this package imports nothing above
:mod:`unlearnkit.errors` and :mod:`unlearnkit.io` besides itself: no torch, no
transformers, no method, attack, evaluation or runner module. The runners
(bench, jobs, audit) import the report, never the other way round;
``tests/test_report_imports.py`` checks it in a fresh interpreter.
"""
