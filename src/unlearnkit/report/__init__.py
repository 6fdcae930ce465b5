"""Reports from results folders: the HTML report (``report.html``) and what it reads.

* :mod:`unlearnkit.report.results`: read and check results folders (demo, bench, unlearn, eval);
* :mod:`unlearnkit.report.glossary`: each metric's label, better direction and definition;
* :mod:`unlearnkit.report.plots`: the figures (matplotlib, Agg renderer, PNG bytes);
* :mod:`unlearnkit.report.html`: the self-contained page (``write_report``).

Submodules are imported where used: the package itself imports nothing, so that
:mod:`unlearnkit.bench` and the report can use each other's pure parts.
"""
