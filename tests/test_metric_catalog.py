"""The metric catalog: each entry bound to its compute function, registration checks, and the evaluator's keys all registered."""

from __future__ import annotations

import numpy as np
import pytest

from unlearnkit.builtin import PROMPT_FORMAT
from unlearnkit.errors import UnlearnkitError
from unlearnkit.evaluation import catalog, memorization, metrics, mia, muse, real_knowledge, spv_mia
from unlearnkit.evaluation.catalog import AGGREGATIONS, AS_IS, MEAN, NANMEAN, TOFU, MetricSpec, describe_metric, metric, metric_catalog
from unlearnkit.evaluation.evaluator import EvalConfig, evaluate, load_reference
from unlearnkit.modeling import load_model, load_tokenizer
from unlearnkit.registry import Registry

# Each summary key and the function whose output gives it, as read from the evaluator (and unlearnkit.sequential for MUSE).
COMPUTED_BY = {
    "mia_spv_auc": spv_mia.spv_auc,
    "forget_quality": metrics.forget_quality,
    "model_utility": metrics.model_utility,
    "forget_truth_ratio": metrics.forget_truth_ratio_score,
    **{f"{split}_truth_ratio": metrics.retain_truth_ratio_score for split in ("retain", "real_authors", "world_facts")},
    **{f"{split}_probability": metrics.probability for split in ("forget", "retain")},
    **{f"{split}_probability": metrics.normalized_probability for split in ("real_authors", "world_facts")},
    **{f"{split}_rouge_l": metrics.rouge_l_recall for split in ("forget", "retain", "real_authors", "world_facts")},
    **{f"{split}_exact_memorization": memorization.exact_memorization for split in ("forget", "holdout")},
    **{f"{split}_extraction_strength": memorization.extraction_strength for split in ("forget", "holdout")},
    "memorization_accuracy": memorization.exact_memorization,  # MA on the answer tokens (JangStoppingCallback)
    "extraction_likelihood": memorization.extraction_likelihood,
    **{f"mia_{attack}_auc": mia.membership_auc for attack in mia.MEMBER_SIGN},
    "privleak": mia.privleak,
    "muse_privleak": mia.privleak,  # on the text AUC below (unlearnkit.evaluation.mia.evaluate_text_privleak)
    "muse_privleak_auc": mia.text_privleak_auc,
    "verbmem_forget": muse.verbmem,
    "verbmem_stage_forget": muse.verbmem,
    "knowmem_forget": muse.knowmem,
    "knowmem_retain": muse.knowmem,
    **{f"{role}_{form}_accuracy": real_knowledge.answers_found for role in ("forget", "neighbour") for form in ("qa", "cloze")},
    **{f"{role}_mcq_accuracy": real_knowledge.mcq_correct for role in ("forget", "neighbour")},
    **{f"{role}_accuracy": real_knowledge.form_mean_accuracy for role in ("forget", "neighbour")},
    "general_perplexity": real_knowledge.perplexity,
    "generation_distinct_2": real_knowledge.distinct_n,
}

# Registered tofu/memorization/privacy metrics evaluate() does not report, and why.
NOT_FROM_EVALUATE = {
    "mia_spv_auc": "on request only (EvalConfig spv_mia=true): it costs a generation and a reference fine-tune",
    "memorization_accuracy": "Jang et al.'s stopping rule (JangStoppingCallback) measures it during training",
    "extraction_likelihood": "Jang et al.'s stopping rule (JangStoppingCallback) measures it during training",
    "muse_privleak": "the eval command's --privleak-texts measures it on MUSE's raw texts (evaluate_text_privleak)",
    "muse_privleak_auc": "the eval command's --privleak-texts measures it on MUSE's raw texts (evaluate_text_privleak)",
}


def _fields(**changes) -> dict:
    return {"direction": "higher", "definition": "A test metric.", "paper": 'Doe et al., "A paper", ICLR 2024',
            "family": "tofu", "label": "", "compute": metrics.probability, "aggregation": MEAN, **changes}


def _spec(name: str = "x_metric", **changes) -> MetricSpec:
    return MetricSpec(name, **_fields(**changes))


def _decorate(name: str = "x_metric", **changes) -> None:
    """Register through the decorator, as a metric module does when it is imported."""
    fields = _fields(**changes)
    compute = fields.pop("compute")
    metric(name, fields.pop("direction"), fields.pop("definition"), fields.pop("paper"), fields.pop("family"), **fields)(compute)


@pytest.fixture
def empty_registry(monkeypatch):
    """A fresh registry in place of the catalog's, so that test registrations leave the real one as it is."""
    registry: Registry[MetricSpec] = Registry("metric")
    monkeypatch.setattr(catalog, "METRICS", registry)
    return registry


# --- Registration checks ------------------------------------------------------------------


def test_the_decorator_registers_the_function_it_decorates_and_returns_it(empty_registry) -> None:
    @metric("x_forget", "lower", "On the forget set.", TOFU, "tofu", aggregation=MEAN, label="x (forget)")
    @metric("x_retain", "higher", "On the retain set.", TOFU, "tofu", aggregation=MEAN)
    def decorated(values):
        return values

    assert decorated.__name__ == "decorated" and decorated([1]) == [1]
    assert empty_registry.names() == ["x_forget", "x_retain"]
    # the very function, returned unchanged by the decorators, is each entry's compute
    assert empty_registry.get("x_forget").compute is decorated and empty_registry.get("x_retain").compute is decorated
    assert empty_registry.get("x_forget").display_label == "x (forget)" and empty_registry.get("x_retain").display_label == "x retain"


def test_a_name_registered_twice_is_refused(empty_registry) -> None:
    _decorate("x_metric")
    with pytest.raises(ValueError, match=r"'x_metric' is already registered \(computed by unlearnkit\.evaluation\.metrics\.probability\)"):
        _decorate("x_metric", direction="lower", compute=metrics.forget_quality, aggregation=AS_IS)
    assert empty_registry.get("x_metric").compute is metrics.probability  # the first stays


def test_a_real_metric_name_cannot_be_taken_again() -> None:
    metric_catalog()
    with pytest.raises(ValueError, match="'forget_quality' is already registered"):
        catalog.register_metric(_spec("forget_quality"))
    assert describe_metric("forget_quality").compute is metrics.forget_quality


@pytest.mark.parametrize(("changes", "message"), [
    ({"direction": "sideways"}, "direction must be one of"),
    ({"family": "vibes"}, "family must be one of"),
    ({"definition": ""}, "non-empty one-line definition"),
    ({"definition": "   "}, "non-empty one-line definition"),
    ({"definition": "Two\nlines."}, "non-empty one-line definition"),
    ({"paper": ""}, "cited with its year"),
    ({"paper": "Doe et al., \"A paper\", ICLR"}, "cited with its year"),
    ({"paper": "Doe et al., arXiv:12345"}, "cited with its year"),
    ({"compute": None}, "compute must be the function"),
    ({"compute": "probability"}, "compute must be the function"),
    ({"aggregation": "median"}, "aggregation must be one of"),
    ({"label": "two\nlines"}, "label must be one line"),
])
def test_each_registration_check_refuses_its_bad_case(empty_registry, changes, message) -> None:
    with pytest.raises(ValueError, match=message):
        _spec(**changes)
    with pytest.raises(ValueError, match=message):  # the decorator refuses it at once, when its module is imported
        _decorate(**changes)
    assert empty_registry.names() == []
    _decorate()  # the same entry without the bad field is accepted
    assert empty_registry.names() == ["x_metric"]


def test_the_error_names_the_metric_and_its_function(empty_registry) -> None:
    with pytest.raises(ValueError, match=r"metric 'x_metric' \(on unlearnkit\.evaluation\.metrics\.probability\): direction"):
        _spec(direction="up")


def test_a_bad_name_is_refused(empty_registry) -> None:
    with pytest.raises(ValueError, match="lower-case letters"):
        catalog.register_metric(_spec("Forget Quality"))


def test_compute_is_required() -> None:
    with pytest.raises(TypeError, match="compute"):
        MetricSpec("x_metric", "higher", "A test metric.", TOFU, "tofu", aggregation=MEAN)  # type: ignore[call-arg]


def test_unknown_names_fail_with_suggestions() -> None:
    with pytest.raises(UnlearnkitError, match="Unknown metric"):
        describe_metric("forget_qualty")


# --- Every entry bound to the function that computes it -------------------------------------


def test_every_metric_module_is_imported_by_the_catalog() -> None:
    import importlib

    assert set(catalog.METRIC_MODULES) >= {"unlearnkit.evaluation.metrics", "unlearnkit.evaluation.memorization",
                                           "unlearnkit.evaluation.mia", "unlearnkit.evaluation.muse", "unlearnkit.evaluation.general"}
    registry = metric_catalog()
    modules = {registry.get(name).compute.__module__ for name in registry.names()}
    assert modules <= set(catalog.METRIC_MODULES)
    assert all(importlib.import_module(module) for module in catalog.METRIC_MODULES)


def test_every_registered_metric_is_computed_by_the_function_the_evaluator_uses() -> None:
    registry = metric_catalog()
    assert set(registry.names()) == set(COMPUTED_BY)
    for name, function in COMPUTED_BY.items():
        assert registry.get(name).compute is function, name
        assert registry.get(name).aggregation in AGGREGATIONS
    assert describe_metric("forget_quality").compute is metrics.forget_quality
    assert describe_metric("forget_probability").compute is describe_metric("retain_probability").compute is metrics.probability
    assert describe_metric("world_facts_probability").compute is metrics.normalized_probability
    assert describe_metric("mia_zlib_auc").compute is describe_metric("mia_min_k_auc").compute is mia.membership_auc
    assert describe_metric("forget_rouge_l").aggregation == MEAN and describe_metric("forget_quality").aggregation == AS_IS
    assert describe_metric("extraction_likelihood").aggregation == NANMEAN


# --- On the micro benchmark: what evaluate() reports is what the catalog says ---------------


@pytest.fixture(scope="module")
def evaluated(micro_bench):
    model, tokenizer = load_model(micro_bench.target_dir), load_tokenizer(micro_bench.target_dir)
    splits = micro_bench.eval_splits("forget10")
    reference = load_reference(micro_bench.reference_path("forget10"))
    result = evaluate(model, tokenizer, splits, PROMPT_FORMAT, EvalConfig(max_new_tokens=4, gradient_norm=True), reference)
    return splits, reference, result


def test_every_reported_key_is_registered_and_every_registered_key_reported(evaluated) -> None:
    splits, _, result = evaluated
    assert set(splits) == {"forget", "retain", "real_authors", "world_facts", "holdout"}
    registry = metric_catalog()
    assert [key for key in result.summary if key not in registry] == []
    expected = {name for name in registry.names() if registry.get(name).family in ("tofu", "memorization", "privacy")}
    assert expected - set(result.summary) == set(NOT_FROM_EVALUATE)
    assert not set(NOT_FROM_EVALUATE) & set(result.summary)
    assert describe_metric("mia_min_k_auc").direction == "near 0.5" and describe_metric("privleak").direction == "near 0"


def _aggregate(spec: MetricSpec, output) -> float:
    if spec.aggregation == MEAN:
        return float(np.mean(output))
    if spec.aggregation == NANMEAN:
        return float(np.nanmean(output))
    return float(output)


def test_each_reported_number_is_its_compute_function_s_output_aggregated(evaluated) -> None:
    splits, reference, result = evaluated
    summary, samples = result.summary, result.per_sample

    def column(split: str, key: str) -> np.ndarray:
        return np.array([sample[key] for sample in samples[split]])

    inputs = {
        "forget_quality": (result.forget_truth_ratios, reference["truth_ratio"]),
        "model_utility": (summary,),
        "forget_truth_ratio": (column("forget", "truth_ratio"),),
        **{f"{split}_truth_ratio": (column(split, "truth_ratio"),) for split in ("retain", "real_authors", "world_facts")},
        **{f"{split}_probability": (column(split, "answer_avg_nll"),) for split in ("forget", "retain")},
        **{f"{split}_rouge_l": (list(column(split, "generation")), [row["answer"] for row in splits[split]])
           for split in ("forget", "retain", "real_authors", "world_facts")},
        **{f"mia_{attack}_auc": (attack, column("forget", f"mia_{attack}"), column("holdout", f"mia_{attack}"))
           for attack in mia.MEMBER_SIGN},
        "privleak": (1.0 - summary["mia_min_k_auc"], 1.0 - reference["membership"]["auc"]["min_k"]),
    }
    for name, arguments in inputs.items():
        spec = describe_metric(name)
        assert _aggregate(spec, spec.compute(*arguments)) == pytest.approx(summary[name], rel=1e-12, abs=1e-12), name
    # The fact splits' normalised probability needs the perturbed answers' NLLs, which per_sample does not keep;
    # memorization's compute takes logits: check the aggregation of the per-sample values each function gave.
    for name in ("real_authors_probability", "world_facts_probability"):
        assert _aggregate(describe_metric(name), column(name.rsplit("_", 1)[0], "probability")) == summary[name]
    for split in ("forget", "holdout"):
        for statistic in ("exact_memorization", "extraction_strength"):
            name = f"{split}_{statistic}"
            assert _aggregate(describe_metric(name), column(split, statistic)) == pytest.approx(summary[name], rel=1e-12)
