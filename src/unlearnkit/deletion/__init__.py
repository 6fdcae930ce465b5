"""Deletion requests (``unlearnkit forget``): from an entity's name to an audit record and a ledger.

* :mod:`.matching`: which training rows are about the entity (its name and aliases as whole words), and the
  neighbour rows closest to them in wording (what unlearning is likeliest to damage);
* :mod:`.verdict`: the record's three checks (forgotten, stays forgotten under attack, utility kept) and its verdict;
* :mod:`.ledger`: the requests over time, each new one re-evaluating every earlier one.

The runner is :mod:`unlearnkit.runs.forget`; the one-page report :mod:`unlearnkit.report.deletion`.
"""
