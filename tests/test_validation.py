"""Everything is validated before any work: hostile settings, option values, metric names and data rows are refused
with one clear message, and through the command line nothing is written (neither the output nor its staging folder).
"""

from __future__ import annotations

import csv
import json
import logging
import re
from dataclasses import fields
from pathlib import Path

import pytest
from transformers import LlamaConfig, LlamaForCausalLM, Trainer
from transformers.trainer_utils import SchedulerType
from transformers.training_args import OptimizerNames

from tests.helpers import run_cli
from unlearnkit.attacks import AuditConfig
from unlearnkit.auditing import build_audit_config
from unlearnkit.data.qa import has_fields, load_qa, validate_rows
from unlearnkit.data.schemas import Subset, to_internal
from unlearnkit.errors import UnlearnkitError
from unlearnkit.evaluation.catalog import metric_catalog
from unlearnkit.evaluation.evaluator import EvalConfig, has_truth_fields, load_reference
from unlearnkit.evaluation.muse import MuseConfig
from unlearnkit.evaluation.tracking import EvalTracker, TrackingConfig, reportable_metrics, trackable_metrics
from unlearnkit.finetune import FinetuneConfig
from unlearnkit.io import partial_dir
from unlearnkit.methods import METHODS
from unlearnkit.settings import (
    OPTIMIZER_PACKAGES,
    OPTIMIZERS_NEEDING_TARGET_MODULES,
    SCHEDULER_NEEDS,
    SEED_MAX,
    TORCH_OPTIMIZERS,
    _hints,
    check_optimizer,
    split_optional,
)
from unlearnkit.training import training_arguments
from unlearnkit.unlearning import resolve_method

QA = {"question": "Who wrote it?", "answer": "Nobody."}
TRUTH = {"paraphrased_answer": "No one did.", "perturbed_answer": ["Somebody did.", "Everyone did."]}


def _refused(match: str | None = None):
    return pytest.raises(UnlearnkitError, match=match)


# --- --set values: types, finiteness, emptiness ------------------------------------------------------------------


@pytest.mark.parametrize("value", ["nan", "NaN", "-nan", "inf", "-inf", "Infinity", "1e400", "-1e400"])
def test_non_finite_floats_are_refused(value: str) -> None:
    with _refused(f"Hyperparameter 'learning_rate' must be a finite number, got '{value}'"):
        resolve_method("ga", {"learning_rate": value})


@pytest.mark.parametrize("value", ["1.5", "nan", "1e3", "eight", "true", "0x10", "1,000"])
def test_ints_refuse_anything_but_a_whole_number(value: str) -> None:
    with _refused("Hyperparameter 'batch_size' needs an int"):
        resolve_method("ga", {"batch_size": value})


@pytest.mark.parametrize("value", ["maybe", "2", "on", "truee", "none"])
def test_bools_are_strict(value: str) -> None:
    with _refused("Hyperparameter 'lora_merge' needs a bool"):
        resolve_method("ga", {"lora_merge": value})


@pytest.mark.parametrize(("key", "value"), [("beta", ""), ("beta", "   "), ("stop_forget_nll", ""), ("retain_loss", ""),
                                            ("cache_reference", ""), ("batch_size", "")])
def test_an_empty_value_names_the_setting_and_an_example(key: str, value: str) -> None:
    with _refused(rf"Hyperparameter '{key}' has an empty value: give .* \(e\.g\. {key}="):
        resolve_method("npo", {key: value})


@pytest.mark.parametrize(("key", "value", "message"), [
    ("batch_size", 2.0, "needs an int, got 2.0 (float)"),
    ("batch_size", True, "needs an int, got True (bool)"),
    ("learning_rate", True, "needs a float, got True (bool)"),
    ("learning_rate", float("nan"), "must be a finite number"),
    ("learning_rate", float("inf"), "must be a finite number"),
    ("learning_rate", None, "needs a float, got None"),
    ("learning_rate", [1e-3], "needs a float"),
    ("lora_merge", 1, "needs a bool"),
    ("target_modules", 5, "needs a string"),
    ("seed", 0.0, "needs an int"),
])
def test_typed_overrides_are_type_checked(key: str, value: object, message: str) -> None:
    with _refused(re.escape(message)):
        resolve_method("ga", {key: value})


def test_valid_values_still_parse() -> None:
    config = resolve_method("ga", {"learning_rate": " 1e-3 ", "batch_size": "4", "num_epochs": 2, "lora_merge": "False",
                                   "stop_forget_nll": "none", "target_modules": "None", "seed": str(SEED_MAX)})
    assert (config.learning_rate, config.batch_size, config.num_epochs, config.lora_merge) == (1e-3, 4, 2, False)
    assert config.stop_forget_nll is None and config.target_modules is None and config.seed == SEED_MAX


def test_direct_construction_is_held_to_the_same_types() -> None:
    config_cls = METHODS.get("ga").config
    with _refused("learning_rate must be a finite number"):
        config_cls(learning_rate=float("nan"))
    with _refused("batch_size needs an int"):
        config_cls(batch_size=True)


HOSTILE_BY_TYPE = {float: ["nan", "inf", "-inf", "1e400", "x"], int: ["1.5", "nan", "x"], bool: ["maybe", "2"]}


@pytest.mark.parametrize("method", METHODS.names())
def test_every_field_of_every_method_refuses_hostile_values(method: str) -> None:
    """Each numeric or boolean field, whatever method declares it, refuses the values no type can hold."""
    config_cls = METHODS.get(method).config
    config_cls()  # the defaults validate
    accepted = []
    for item in fields(config_cls):
        base, _ = split_optional(_hints(config_cls)[item.name])
        for value in HOSTILE_BY_TYPE.get(base, []):
            try:
                resolve_method(method, {item.name: value})
            except UnlearnkitError:
                continue
            accepted.append(f"{item.name}={value}")
    assert not accepted, f"{method} accepted {accepted}"


# --- ranges and combinations ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(("method", "overrides", "message"), [
    ("ga", {"seed": "-1"}, r"seed must be in \[0, 4294967295\]"),
    ("ga", {"seed": str(SEED_MAX + 1)}, "seed must be in"),
    ("ga", {"max_length": "1"}, "max_length must be >= 2"),
    ("ga", {"batch_size": "0"}, "batch_size must be >= 1"),
    ("ga", {"gradient_accumulation_steps": "-2"}, "gradient_accumulation_steps must be >= 1"),
    ("ga", {"warmup_ratio": "1"}, r"warmup_ratio must be in \[0, 1\)"),
    ("ga", {"lora_dropout": "-0.1"}, "lora_dropout must be in"),
    ("ga", {"max_grad_norm": "0"}, "max_grad_norm must be > 0"),
    ("ga", {"weight_decay": "-0.01"}, "weight_decay must be >= 0"),
    ("ga", {"mixed_precision": "fp32"}, "mixed_precision must be one of no, bf16, fp16"),
    ("ga", {"mixed_precision": "fp16"}, "fp16 needs a CUDA GPU"),  # the suite runs without a GPU
    ("graddiff", {"gamma": "-1"}, "gamma must be > 0"),
    ("graddiff", {"gamma": "0"}, "gamma must be > 0"),
    ("graddiff", {"alpha": "-1"}, "alpha must be >= 0"),
    ("idk", {"alpha": "-1"}, "alpha must be >= 0"),
    ("idk_dpo", {"alpha": "-0.5"}, "alpha must be >= 0"),
    ("npo", {"alpha": "-1"}, "alpha must be >= 0"),
    ("simnpo", {"npo_coeff": "0"}, "npo_coeff must be > 0"),
    ("simnpo", {"alpha": "-1"}, "alpha must be >= 0"),
    ("ga_mismatch", {"bad_weight": "0", "random_weight": "0"}, "nothing would be unlearned"),
    ("rmu", {"positions": "answers"}, "positions must be one of all, answer; got 'answers'. Did you mean: answer"),
    ("eul", {"schedule": "epoch"}, "Did you mean: epochs"),
    ("pdu", {"forget_loss": "uniforms"}, "Did you mean: uniform"),
    ("npo", {"retain_loss": "KL"}, "retain_loss must be one of nll, kl"),
])
def test_ranges_and_choices(method: str, overrides: dict, message: str) -> None:
    with _refused(message):
        resolve_method(method, overrides)


@pytest.mark.parametrize("schedule", [member.value for member in SchedulerType])
def test_every_transformers_schedule_is_accepted_only_if_the_trainer_can_build_it(schedule: str) -> None:
    if schedule in SCHEDULER_NEEDS:
        with _refused(f"lr_scheduler={schedule} needs"):
            resolve_method("ga", {"lr_scheduler": schedule})
        return
    config = resolve_method("ga", {"lr_scheduler": schedule})
    _trainer(lr_scheduler=config.lr_scheduler).create_optimizer_and_scheduler(10)


def test_a_misspelled_schedule_gets_a_suggestion() -> None:
    with _refused("lr_scheduler must be one of linear, .*got 'cosin'. Did you mean: cosine"):
        resolve_method("ga", {"lr_scheduler": "cosin"})


def test_every_transformers_optimizer_is_classified() -> None:
    """A new optimiser in transformers must be sorted into one of the tables, or it would pass unchecked."""
    known = {*TORCH_OPTIMIZERS, *OPTIMIZER_PACKAGES, *OPTIMIZERS_NEEDING_TARGET_MODULES}
    assert {member.value for member in OptimizerNames} == known


@pytest.mark.parametrize("optimizer", [member.value for member in OptimizerNames])
def test_every_accepted_optimizer_builds(optimizer: str) -> None:
    try:
        check_optimizer(optimizer)
    except UnlearnkitError as error:
        assert optimizer not in TORCH_OPTIMIZERS, error
        return
    _trainer(optimizer=optimizer).create_optimizer_and_scheduler(10)


@pytest.mark.parametrize(("optimizer", "message"), [
    ("adamw", "not an optimiser name transformers knows"),
    ("galore_adamw", "optim_target_modules"),
    ("AdamW_torch", "Did you mean: adamw_torch"),
])
def test_optimizer_refusals(optimizer: str, message: str) -> None:
    with _refused(message):
        resolve_method("ga", {"optimizer": optimizer})


def _trainer(**settings: object) -> Trainer:
    model = LlamaForCausalLM(LlamaConfig(vocab_size=32, hidden_size=8, intermediate_size=16, num_hidden_layers=1,
                                         num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=16))
    arguments = {"learning_rate": 1e-3, "num_epochs": 1, "batch_size": 2, "gradient_accumulation_steps": 1, "weight_decay": 0.0,
                 "warmup_ratio": 0.1, "lr_scheduler": "linear", "max_grad_norm": 1.0, "seed": 0, "show_progress": False, **settings}
    return Trainer(model=model, args=training_arguments(**arguments))


def test_method_data_checks_run_before_training() -> None:
    forget = [{**QA, "question": f"Q{i}?"} for i in range(3)]
    retain = [{"question": f"R{i}?", "answer": "Yes."} for i in range(2)]
    with _refused("num_mismatched=5 .* has 2 row"):
        resolve_method("ga_mismatch", {}).check_data(forget, retain)
    resolve_method("ga_mismatch", {"num_mismatched": "2"}).check_data(forget, retain)
    with _refused("anchored_terms='builtin' needs an 'author' field in every forget row"):
        resolve_method("whp", {"anchored_terms": "builtin"}).check_data([*forget, {**QA, "author": None}], retain)
    resolve_method("whp", {"anchored_terms": "builtin"}).check_data([{**row, "author": "Ada Stone"} for row in forget], retain)


# --- the other settings dataclasses ------------------------------------------------------------------------------


@pytest.mark.parametrize(("config_cls", "overrides", "message"), [
    (AuditConfig, {"threshold": float("nan")}, "must be a finite number"),
    (AuditConfig, {"threshold": 1.0}, r"threshold must be in \[0, 1\)"),
    (AuditConfig, {"heldout_fraction": 0.0}, r"heldout_fraction must be in \(0, 1\)"),
    (AuditConfig, {"relearn_learning_rate": float("inf")}, "must be a finite number"),
    (AuditConfig, {"relearn_learning_rate": 0.0}, "relearn_learning_rate must be > 0"),
    (AuditConfig, {"seed": -3}, "seed must be in"),
    (AuditConfig, {"lens_k": 0}, "lens_k must be >= 1"),
    (AuditConfig, {"batch_size": 2.5}, "batch_size needs an int"),
    (AuditConfig, {"probe_layer": -1}, "probe_layer must be >= 0"),
    (AuditConfig, {"lens_layers": "a-b"}, "lens_layers: layers must be indices"),
    (AuditConfig, {"lens_layers": "5-2"}, "lens_layers: layers range '5-2' runs backwards"),
    (EvalConfig, {"batch_size": 0}, "batch_size must be >= 1"),
    (EvalConfig, {"max_new_tokens": True}, "max_new_tokens needs an int"),
    (EvalConfig, {"min_k_fraction": float("nan")}, "must be a finite number"),
    (EvalConfig, {"min_k_fraction": 0.0}, "k must be in"),
    (EvalConfig, {"privleak_form": "muze"}, "privleak_form must be one of muse, openunlearning; got 'muze'. Did you mean: muse"),
    (EvalConfig, {"gradient_norm": "yes"}, "gradient_norm needs a bool"),
    (FinetuneConfig, {"learning_rate": float("nan")}, "must be a finite number"),
    (FinetuneConfig, {"learning_rate": -1.0}, "learning_rate must be > 0"),
    (FinetuneConfig, {"warmup_ratio": 1.5}, "warmup_ratio must be in"),
    (FinetuneConfig, {"target_accuracy": 0.0}, r"target_accuracy must be in \(0, 1\]"),
    (FinetuneConfig, {"lr_scheduler": "cosine_with_min_lr"}, "lr_scheduler=cosine_with_min_lr needs"),
    (FinetuneConfig, {"seed": -1}, "seed must be in"),
    (FinetuneConfig, {"max_epochs": 0}, "max_epochs must be >= 1"),
    (FinetuneConfig, {"weight_decay": -1.0}, "weight_decay must be >= 0"),
    (FinetuneConfig, {"max_length": 1}, "max_length must be >= 2"),
    (MuseConfig, {"batch_size": 0}, "batch_size must be >= 1"),
    (MuseConfig, {"num_shots": -1}, "num_shots must be >= 0"),
    (MuseConfig, {"use_stemmer": 1}, "use_stemmer needs a bool"),
    (TrackingConfig, {"every": 1.5}, "every needs an int"),
    (TrackingConfig, {"every": -1}, "must be 0 or more"),
])
def test_settings_dataclasses_refuse_hostile_values(config_cls: type, overrides: dict, message: str) -> None:
    config_cls()  # the defaults validate
    with _refused(message):
        config_cls(**overrides)


@pytest.mark.parametrize(("key", "value", "message"), [
    ("threshold", "nan", "Audit setting 'threshold' must be a finite number"),
    ("relearn_epochs", "1.5", "Audit setting 'relearn_epochs' needs an int"),
    ("lens_layers", "", "Audit setting 'lens_layers' has an empty value"),
    ("probe_layer", "middle", "Audit setting 'probe_layer' needs an int"),
])
def test_audit_settings_from_strings(key: str, value: str, message: str) -> None:
    with _refused(message):
        build_audit_config({key: value})
    assert build_audit_config({"probe_layer": "none", "lens_layers": "0-1"}).probe_layer is None


# --- metric names of --select-best and --subject-to -----------------------------------------------------------------


def test_trackable_metrics_come_from_the_catalog() -> None:
    trackable = trackable_metrics()
    assert set(trackable) <= set(metric_catalog().names())
    assert {"forget_quality", "model_utility", "forget_rouge_l", "mia_min_k_auc", "privleak"} <= set(trackable)
    assert not {"verbmem_forget", "knowmem_retain", "memorization_accuracy"} & set(trackable)


@pytest.mark.parametrize(("select_best", "subject_to", "message"), [
    ("forget_qualty", None, "--select-best: unknown metric 'forget_qualty'. Did you mean: forget_quality"),
    ("max:forget_qualty", None, "--select-best: unknown metric 'forget_qualty'. Did you mean: forget_quality"),
    ("min:verbmem_forget", None, "verbmem_forget is not among the metrics evaluated during training"),
    ("unlearn_seconds", None, "unknown metric 'unlearn_seconds'"),
    ("max:", None, "--select-best: cannot read"),
    ("forget_quality", "model_utilty>=0.5", "--subject-to model_utilty>=0.5: unknown metric 'model_utilty'. Did you mean: model_utility"),
    ("forget_quality", "model_utility>=0.9*orcale", "'orcale' is not a reference .*Did you mean: oracle"),
    ("forget_quality", "model_utility>=nan", "'nan' is not a number"),
    ("forget_quality", "model_utility>=inf", "'inf' is not a number"),
    ("forget_quality", "model_utility>=1e999", "1e999 is not a finite number"),
    ("forget_quality", "model_utility>=2e999*oracle", "2e999 is not a finite number"),
    ("forget_quality", "model_utility=0.5", "'=' is not an operator"),
    ("forget_quality", "model_utility=>0.5", "'=>' is not an operator"),
    ("forget_quality", "model_utility>=", "the value is missing"),
    ("forget_quality", "model_utility 0.5", "it has no operator"),
    ("forget_quality", "model_utility>=0.9*oracle,verbmem_forget<0.1", "verbmem_forget is not among"),
])
def test_criterion_metric_names_and_values_are_checked(select_best: str, subject_to: str | None, message: str) -> None:
    with _refused(message):
        TrackingConfig(every=5, select_best=select_best, subject_to=subject_to)


def test_a_metric_the_data_never_yields_is_refused_before_training() -> None:
    plain = [QA, {"question": "Who read it?", "answer": "Everyone."}]
    for select_best, subject_to in (("forget_quality", None), ("forget_probability", "model_utility>=0.5"),
                                    ("max:mia_loss_auc", None), ("min:forget_truth_ratio", None)):
        config = TrackingConfig(every=1, select_best=select_best, subject_to=subject_to)
        with _refused("the evaluation during training reports no"):
            EvalTracker(None, {"forget": plain, "retain": plain}, config)
    EvalTracker(None, {"forget": plain}, TrackingConfig(every=1, select_best="forget_rouge_l"))


@pytest.mark.parametrize("with_reference", [True, False])
def test_reportable_metrics_match_what_evaluate_reports(micro_bench, with_reference: bool) -> None:
    """The check above mirrors evaluate()'s rules: the two must name the same metrics."""
    from unlearnkit.builtin import evaluate_cached_model

    reference = load_reference(micro_bench.reference_path("forget10")) if with_reference else None
    config = EvalConfig(batch_size=64, max_new_tokens=4)
    result = evaluate_cached_model(micro_bench, micro_bench.target_dir, "forget10", reference, config)
    assert reportable_metrics(micro_bench.eval_splits("forget10"), config, reference) == set(result.summary)


# --- data rows: every field of every row ---------------------------------------------------------------------------

GOOD = {**QA, **TRUTH}


@pytest.mark.parametrize(("bad", "message"), [
    ({"answer": None}, "field 'answer' is null"),
    ({"question": None}, "field 'question' is null"),
    ({"answer": "   "}, "field 'answer' must be a non-empty string"),
    ({"answer": 5}, "field 'answer' must be a non-empty string, got int 5"),
    ({"question": ["Who?"]}, "field 'question' must be a non-empty string"),
    ({"paraphrased_answer": 3}, "field 'paraphrased_answer' must be a non-empty string"),
    ({"paraphrased_answer": ""}, "field 'paraphrased_answer' must be a non-empty string"),
    ({"perturbed_answer": "Somebody."}, "field 'perturbed_answer' must be a non-empty list of non-empty strings, got str"),
    ({"perturbed_answer": []}, "field 'perturbed_answer' must be a non-empty list"),
    ({"perturbed_answer": ["Somebody.", ""]}, "field 'perturbed_answer' must be a non-empty list of non-empty strings"),
    ({"perturbed_answer": ["Somebody.", 7]}, "field 'perturbed_answer' must be a non-empty list of non-empty strings"),
    ({"paraphrased_question": []}, "field 'paraphrased_question' must be a non-empty string or a non-empty list"),
    ({"translated_question": 3}, "field 'translated_question' must be"),
    ({"author": ["Ada"]}, "field 'author' must be a non-empty string"),
    ({"value": 1987}, "field 'value' must be a non-empty string, got int 1987"),
    ({"fact": {"name": "birth"}}, "field 'fact' must be a non-empty string"),
])
def test_every_row_is_checked_not_only_the_first(bad: dict, message: str) -> None:
    rows = [dict(GOOD, question=f"Q{i}?") for i in range(4)]
    rows[2] = {**rows[2], **bad}
    with _refused(rf"^Row 3 of the forget data \(rows.jsonl\): {message}"):
        validate_rows(rows, required=("question", "answer"), where="forget data (rows.jsonl)")


def test_a_missing_field_and_a_null_one_get_different_messages() -> None:
    with _refused(r"Row 2 of the forget data has no field 'answer' \(fields present: question\)"):
        validate_rows([QA, {"question": "Q2?"}], required=("question", "answer"), where="forget data")
    with _refused("Row 2 of the forget data: field 'answer' is null") as caught:
        validate_rows([QA, {"question": "Q2?", "answer": None}], required=("question", "answer"), where="forget data")
    assert "has no field" not in str(caught.value)
    with _refused(r"Row 1 of tofu:forget01: field 'answer' is null"):
        to_internal([{"question": "Q?", "answer": None}], Subset("qa", ("question", "answer")), {}, where="tofu:forget01")


@pytest.mark.parametrize("field_name", ["paraphrased_answer", "perturbed_answer"])
@pytest.mark.parametrize("absent", ["missing", None, ""])
def test_truth_ratio_fields_on_some_rows_only_are_refused(field_name: str, absent: object) -> None:
    rows = [dict(GOOD, question=f"Q{i}?") for i in range(5)]
    for index in (1, 3):
        if absent == "missing":
            del rows[index][field_name]
        else:
            rows[index][field_name] = absent
    if absent == "":
        rows[1][field_name] = rows[3][field_name] = None  # '' is a wrong type (above); here null stands for absent
    with _refused(rf"The retain data has '{field_name}' on some rows but not on row\(s\) 2, 4 \(2 of 5"):
        validate_rows(rows, required=("question", "answer"), where="retain data")
    with _refused("on some rows but not on row"):
        has_fields(rows, ("paraphrased_answer", "perturbed_answer"))


def test_has_fields_decides_from_all_rows() -> None:
    assert has_fields([GOOD, GOOD], ("paraphrased_answer", "perturbed_answer"))
    assert not has_fields([QA, QA], ("paraphrased_answer", "perturbed_answer"))
    assert not has_fields([{**QA, "perturbed_answer": ["x"]}] * 2, ("paraphrased_answer", "perturbed_answer"))
    # On the fact splits the answer is the correct option: perturbed answers alone give a truth ratio.
    assert has_truth_fields("real_authors", [{**QA, "perturbed_answer": ["x"]}])
    assert not has_truth_fields("retain", [{**QA, "perturbed_answer": ["x"]}])


def test_duplicate_questions_and_uneven_perturbed_lists_are_warned_about(caplog: pytest.LogCaptureFixture) -> None:
    rows = [GOOD, {**GOOD, "answer": "Someone."}, {**GOOD, "question": "Q3?", "perturbed_answer": ["x"]}]
    with caplog.at_level(logging.WARNING, logger="unlearnkit"):
        validate_rows(rows, required=("question", "answer"), where="forget data")
    assert "repeats 1 question(s), compared ignoring case and spacing (e.g. row 2 repeats row 1" in caplog.text
    assert "perturbed_answer lists of 1 to 2 answers; the truth ratio uses the first 1" in caplog.text


def test_load_qa_names_role_file_row_and_field(tmp_path: Path) -> None:
    path = tmp_path / "forget.jsonl"
    path.write_text("\n".join(json.dumps(row) for row in [QA, QA | {"question": "Q2?"}, {"question": "Q3?", "answer": None}]))
    with _refused(rf"Row 3 of the forget data \({path}\): field 'answer' is null"):
        load_qa(path, role="forget")


def test_csv_empty_cells_are_absent_and_lists_are_json(tmp_path: Path) -> None:
    def write(rows: list[dict]) -> Path:
        path = tmp_path / "rows.csv"
        with path.open("w", newline="", encoding="utf-8") as handle:
            writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
        return path

    rows = load_qa(write([{**QA, "author": "", "value": ""}, {**QA, "question": "Q2?", "author": "Ada", "value": "1987"}]), role="forget")
    assert rows[0]["author"] is None and rows[1]["author"] == "Ada"
    with _refused(r"Row 2 .*: field 'perturbed_answer' is null"):
        load_qa(write([{**QA, "perturbed_answer": '["No."]'}, {**QA, "question": "Q2?", "perturbed_answer": ""}]), role="forget",
                required=("question", "answer", "perturbed_answer"))
    with _refused(r"Row 1 .*'perturbed_answer' must be a non-empty list .* In a CSV file, write the list as JSON"):
        load_qa(write([{**QA, "perturbed_answer": "Somebody."}]), role="forget")


# --- end to end: the command line refuses before anything is written -----------------------------------------------


def _jsonl(path: Path, rows: list[dict]) -> str:
    path.write_text("\n".join(json.dumps(row) for row in rows) + "\n", encoding="utf-8")
    return str(path)


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    folder = tmp_path_factory.mktemp("validation")
    forget = [{"question": f"Who wrote book {i}?", "answer": f"Author {i}."} for i in range(4)]
    retain = [{"question": f"Who read book {i}?", "answer": f"Reader {i}."} for i in range(4)]
    partial = [{**row, **TRUTH} for row in forget[:2]] + forget[2:]
    return {
        "forget": _jsonl(folder / "forget.jsonl", forget),
        "retain": _jsonl(folder / "retain.jsonl", retain),
        "null": _jsonl(folder / "null.jsonl", [*forget[:2], {"question": "Q?", "answer": None}]),
        "partial": _jsonl(folder / "partial.jsonl", partial),
        "string_perturbed": _jsonl(folder / "string.jsonl", [{**row, **TRUTH, "perturbed_answer": "No."} for row in forget]),
    }


E2E = [
    ("nan learning rate", ["--method", "ga", "--set", "learning_rate=nan"], "Hyperparameter 'learning_rate' must be a finite number"),
    ("overflowing float", ["--method", "ga", "--set", "learning_rate=1e400"], "must be a finite number, got '1e400'"),
    ("empty value", ["--method", "npo", "--set", "beta="], "Hyperparameter 'beta' has an empty value"),
    ("fractional int", ["--method", "ga", "--set", "batch_size=1.5"], "Hyperparameter 'batch_size' needs an int"),
    ("negative seed", ["--method", "ga", "--set", "seed=-1"], "seed must be in [0, 4294967295]"),
    ("schedule the Trainer cannot build", ["--method", "ga", "--set", "lr_scheduler=warmup_stable_decay"],
     "lr_scheduler=warmup_stable_decay needs num_decay_steps"),
    ("optimizer needing settings", ["--method", "ga", "--set", "optimizer=galore_adamw"], "optim_target_modules"),
    ("fp16 without a GPU", ["--method", "ga", "--set", "mixed_precision=fp16"], "fp16 needs a CUDA GPU"),
    ("max_length too short", ["--method", "ga", "--set", "max_length=1"], "max_length must be >= 2"),
    ("metric from another command", ["--method", "ga", "--eval-every", "1", "--select-best", "min:verbmem_forget"],
     "verbmem_forget is not among the metrics evaluated during training"),
    ("misspelled metric", ["--method", "ga", "--eval-every", "1", "--select-best", "forget_qualty"], "Did you mean: forget_quality"),
    ("unknown reference", ["--method", "ga", "--eval-every", "1", "--select-best", "forget_rouge_l", "--subject-to",
                           "retain_rouge_l>=0.9*orcale"], "'orcale' is not a reference"),
    ("metric the data never yields", ["--method", "ga", "--eval-every", "1", "--select-best", "forget_quality"],
     "the evaluation during training reports no forget_quality"),
]


@pytest.mark.parametrize(("name", "extra", "message"), E2E, ids=[case[0] for case in E2E])
def test_unlearn_refuses_before_writing(name: str, extra: list[str], message: str, micro_bench, files: dict, tmp_path: Path,
                                        monkeypatch, capsys) -> None:
    out = tmp_path / "out"
    args = ["unlearn", "--model", str(micro_bench.target_dir), "--forget", files["forget"], "--retain", files["retain"],
            "--output", str(out), *extra]
    _assert_refused(args, message, out, monkeypatch, capsys)


DATA_E2E = [
    ("null answer", "null", "Row 3 of the forget data", "field 'answer' is null"),
    ("truth fields on some rows", "partial", "The forget data", "has 'paraphrased_answer' on some rows but not on row(s) 3, 4"),
    ("perturbed answer as a string", "string_perturbed", "Row 1 of the forget data", "must be a non-empty list of non-empty strings"),
]


@pytest.mark.parametrize("command", ["unlearn", "eval"])
@pytest.mark.parametrize(("name", "key", "where", "message"), DATA_E2E, ids=[case[0] for case in DATA_E2E])
def test_bad_rows_are_refused_before_writing(command: str, name: str, key: str, where: str, message: str, micro_bench,
                                             files: dict, tmp_path: Path, monkeypatch, capsys) -> None:
    out = tmp_path / "out"
    args = [command, "--model", str(micro_bench.target_dir), "--forget", files[key], "--output", str(out)]
    if command == "unlearn":
        args += ["--method", "ga"]
    # The message names the role and the file, then the row and the field.
    _assert_refused(args, f"{where} ({files[key]})", out, monkeypatch, capsys, also=message)


def test_audit_refuses_a_nan_threshold_before_writing(micro_bench, files: dict, tmp_path: Path, monkeypatch, capsys) -> None:
    out = tmp_path / "out"
    args = ["audit", str(micro_bench.target_dir), "--forget", files["forget"], "--output", str(out), "--set", "threshold=nan"]
    _assert_refused(args, "Audit setting 'threshold' must be a finite number", out, monkeypatch, capsys)


def _assert_refused(args: list[str], message: str, out: Path, monkeypatch, capsys, also: str = "") -> None:
    assert run_cli(args, monkeypatch) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "Traceback" not in err, err
    assert message in err and also in err, err
    assert not out.exists() and not partial_dir(out).exists(), "nothing may be written"
