"""Training-data attribution with influence functions: which training rows taught the model a query's answer.

* :mod:`unlearnkit.attribution.curvature`: the estimators' pure formulas (K-FAC, EK-FAC, diagonal Fisher);
* :mod:`unlearnkit.attribution.scores`: the settings, the tracked MLP layers, per-row gradients, fitting and scores;
* :mod:`unlearnkit.attribution.factors`: the factor cache (safetensors and a JSON manifest).

Grosse et al., "Studying Large Language Model Generalization with Influence Functions", arXiv 2023; Pruthi et al.,
"Estimating Training Data Influence by Tracing Gradient Descent", NeurIPS 2020 (``tracin``). The command is
``unlearnkit influence`` (:mod:`unlearnkit.runs.influence`), the Python API :func:`unlearnkit.influence`.
"""
