"""Unlearning in an LLM recommender: E2URec (Wang et al., Frontiers of Computer Science, 2024) on built-in synthetic data.

* :mod:`~unlearnkit.recommendation.data`: synthetic users, items and ratings rendered as Yes/No prompts; the user split;
* :mod:`~unlearnkit.recommendation.model`: the causal-LM recommender, p(yes) from two logits, its training;
* :mod:`~unlearnkit.recommendation.e2urec`: the forgetting and remembering teachers, the loss, the LoRA student;
* :mod:`~unlearnkit.recommendation.baselines`: NPO on the same task with the same LoRA budget;
* :mod:`~unlearnkit.recommendation.metrics`: AUC, ACC, log-loss, confidence, and the distances to the retrained model.

``unlearnkit recommend`` (:mod:`unlearnkit.runs.recommend`) runs the whole experiment.
"""
