"""Model editing for deletion: ROME's rank-one edit of an MLP output projection (Meng et al., NeurIPS 2022).

* :mod:`~unlearnkit.editing.sites`: the edited module, found generically, and token positions;
* :mod:`~unlearnkit.editing.statistics`: the key second moments ``C = E[k k^T]`` and their cache;
* :mod:`~unlearnkit.editing.objectives`: the value objectives (Patil et al.'s deletion defences) as pure losses;
* :mod:`~unlearnkit.editing.rank_one`: the key, the value optimisation and the closed-form update.

The method that uses them is ``rome_delete`` (:mod:`unlearnkit.methods.rome_delete`).
"""
