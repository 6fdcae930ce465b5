"""Membership-inference statistics, AUC and PrivLeak against hand-computed values; the evaluator's holdout block; the catalog."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from tests.helpers import run_cli
from unlearnkit.data.encoding import PromptFormat, encode_qa
from unlearnkit.errors import UnlearnkitError
from unlearnkit.evaluation.catalog import describe_metric, metric_catalog
from unlearnkit.evaluation.evaluator import EvalConfig, evaluate, load_reference, oracle_reference
from unlearnkit.evaluation.mia import (
    MUSE_RETAIN_PRIVLEAK_AUC,
    answer_token_scores,
    combined_gradient_norm,
    evaluate_text_privleak,
    gradient_norms,
    lowercase_score,
    lowest_k_mean,
    membership_auc,
    min_k_plus_plus_z,
    privleak,
    reference_score,
    roc_auc,
    text_min_k_scores,
    text_privleak_auc,
    token_log_probs,
    zlib_length,
    zlib_score,
)
from unlearnkit.modeling import load_model, load_tokenizer
from unlearnkit.report.glossary import describe

FMT = PromptFormat("plain")
LN2 = math.log(2)

# V = 3, T = 4: every position predicts p = (0.5, 0.25, 0.25), except position 1, which is uniform.
PROBS = torch.tensor([[0.5, 0.25, 0.25], [1 / 3, 1 / 3, 1 / 3], [0.5, 0.25, 0.25], [0.5, 0.25, 0.25]])
LOGITS = PROBS.log().unsqueeze(0)
LABELS = torch.tensor([[-100, 0, 2, 1]])  # scored: label 0 at p 0.5, label 2 uniform, label 1 at p 0.25


def test_token_log_probs_with_the_causal_shift() -> None:
    log_p, mask = token_log_probs(LOGITS, LABELS)
    assert mask.tolist() == [[True, True, True]]
    assert log_p[0].tolist() == pytest.approx([-LN2, -math.log(3), -2 * LN2])


def test_min_k_plus_plus_z_standardises_under_the_models_own_distribution() -> None:
    # p = (1/2, 1/4, 1/4): mu = -1.5 ln2, E[(log p)^2] = 2.5 ln2^2, sigma = 0.5 ln2.
    # Label 0: (-ln2 + 1.5 ln2) / (0.5 ln2) = 1; label 1: (-2 ln2 + 1.5 ln2) / (0.5 ln2) = -1.
    # Uniform: log p = mu, variance 0 (floored): z = 0.
    z, _ = min_k_plus_plus_z(LOGITS, LABELS)
    assert z[0].tolist() == pytest.approx([1.0, 0.0, -1.0], abs=1e-5)
    unscored = torch.tensor([[-100, -100, 2, 1]])
    assert min_k_plus_plus_z(LOGITS, unscored)[0][0, 0].item() == 0.0


def test_lowest_k_mean_keeps_floor_k_n_but_at_least_one() -> None:
    values = [-1.0, -3.0, -2.0, -4.0, 0.0]
    assert lowest_k_mean(values, 0.4) == pytest.approx(-3.5)  # floor(0.4 * 5) = 2: -4, -3
    assert lowest_k_mean(values, 0.1) == pytest.approx(-4.0)  # floor(0.5) = 0 -> 1
    assert lowest_k_mean(values, 1.0) == pytest.approx(-2.0)
    with pytest.raises(UnlearnkitError, match="k must be"):
        lowest_k_mean(values, 0.0)


def test_zlib_lowercase_and_reference_statistics() -> None:
    assert zlib_length("") == 8 and zlib_length("a") == 9  # 2-byte header, deflate block, 4-byte Adler-32
    assert zlib_score(1.8, "a") == pytest.approx(0.2)
    assert zlib_length("ab" * 100) < 200  # repetitive text compresses
    assert lowercase_score(3.0, 2.0) == pytest.approx(1.5)
    assert reference_score(np.array([2.0, 1.0]), np.array([0.5, 1.5])).tolist() == pytest.approx([1.5, -0.5])
    with pytest.raises(UnlearnkitError, match="pair up"):
        reference_score(np.array([2.0, 1.0]), np.array([0.5]))


def test_roc_auc_counts_ties_as_half() -> None:
    # Pairs (pos, neg): (3,2) 1, (3,1) 1, (2,2) 1/2, (2,1) 1, (2,2) 1/2, (2,1) 1 -> 5/6.
    assert roc_auc([3, 2, 2], [2, 1]) == pytest.approx(5 / 6)
    assert roc_auc([1, 1], [1, 1, 1]) == pytest.approx(0.5)
    assert roc_auc([0.0], [5.0]) == 0.0
    with pytest.raises(UnlearnkitError, match="each class"):
        roc_auc([], [1.0])


def test_membership_auc_orients_every_attack_towards_members() -> None:
    # A memorised forget set: lower NLL and higher Min-K% than the holdout set -> AUC 1.
    assert membership_auc("loss", [0.1, 0.2], [1.0, 2.0]) == 1.0
    assert membership_auc("min_k", [-0.1, -0.2], [-5.0, -4.0]) == 1.0
    assert membership_auc("lowercase", [3.0], [1.0]) == 1.0
    assert membership_auc("reference", [-1.0], [0.5]) == 1.0
    assert membership_auc("gradnorm", [0.1, 3.0], [1.0]) == pytest.approx(0.5)
    with pytest.raises(UnlearnkitError, match="Unknown membership attack"):
        membership_auc("ppl", [1.0], [2.0])


def test_privleak_both_forms() -> None:
    # MUSE: (AUC - AUC_retain) / AUC_retain * 100.
    assert privleak(0.0, 0.5) == pytest.approx(-100.0)
    assert privleak(0.6, 0.5) == pytest.approx(20.0)
    assert privleak(0.4772, 0.4772) == 0.0
    assert privleak(0.5, 0.99, "muse") == pytest.approx(-49.4949, abs=1e-3)
    # OpenUnlearning's form is MUSE's with 1e-10 in the denominator: the same numbers, finite at AUC_retain = 0.
    assert privleak(0.6, 0.5, "openunlearning") == pytest.approx(20.0)
    assert privleak(0.3, 0.0, "muse") == math.inf and privleak(0.3, 0.0, "openunlearning") == pytest.approx(0.3e12)
    with pytest.raises(UnlearnkitError, match="PrivLeak form"):
        privleak(0.5, 0.5, "tofu")
    with pytest.raises(UnlearnkitError, match="in \\[0, 1\\]"):
        privleak(1.5, 0.5)


@pytest.fixture(scope="module")
def target(micro_bench):
    return load_model(micro_bench.target_dir), load_tokenizer(micro_bench.target_dir)


def direct_token_log_probs(model, tokenizer, question: str, answer: str) -> np.ndarray:
    features = encode_qa(tokenizer, FMT, question, answer, 512)
    with torch.no_grad():
        log_probs = torch.log_softmax(model(input_ids=torch.tensor([features["input_ids"]])).logits[0].double(), dim=-1)
    return np.array([log_probs[t - 1, token].item() for t, token in enumerate(features["labels"]) if token != -100])


def test_batched_scores_match_an_unpadded_computation(micro_bench, target) -> None:
    model, tokenizer = target
    rows = micro_bench.split("forget10")[:5]
    scores = answer_token_scores(model, tokenizer, FMT, rows, k=0.2, batch_size=3)
    with_eos = answer_token_scores(model, tokenizer, FMT, rows, k=0.2, batch_size=3, score_eos=True)
    lowered = answer_token_scores(model, tokenizer, FMT, rows, k=0.2, batch_size=3, lowercase=True)
    for i, row in enumerate(rows):
        log_p = direct_token_log_probs(model, tokenizer, row["question"], row["answer"])  # the last one is EOS's
        assert scores["loss"][i] == pytest.approx(-log_p.mean(), rel=1e-4)  # the loss attack scores EOS (OpenUnlearning)
        assert scores["min_k"][i] == pytest.approx(lowest_k_mean(log_p[:-1], 0.2), rel=1e-4)  # Min-K% does not
        assert with_eos["min_k"][i] == pytest.approx(lowest_k_mean(log_p, 0.2), rel=1e-4)
        # zlib divides by the compressed answer as decoded from its labels (the leading space kept, EOS skipped).
        assert scores["zlib"][i] == pytest.approx(-log_p.mean() / zlib_length(f" {row['answer']}"), rel=1e-4)
        lower = direct_token_log_probs(model, tokenizer, row["question"].lower(), row["answer"].lower())
        assert lowered["loss"][i] == pytest.approx(-lower.mean(), rel=1e-4)


def test_gradient_norm_is_the_mean_per_tensor_norm_of_the_answer_loss_gradient(micro_bench, target) -> None:
    model, tokenizer = target
    row = micro_bench.split("forget10")[0]
    features = encode_qa(tokenizer, FMT, row["question"], row["answer"], 512)
    assert features["labels"][-1] == tokenizer.eos_token_id
    model.zero_grad()
    logits = model(input_ids=torch.tensor([features["input_ids"]])).logits[0]
    labels = torch.tensor([*features["labels"][:-1], -100])  # OpenUnlearning's mean leaves out EOS
    torch.nn.functional.cross_entropy(logits[:-1], labels[1:], ignore_index=-100).backward()
    norms = [float(p.grad.double().norm()) for p in model.parameters() if p.grad is not None]
    model.zero_grad()
    assert gradient_norms(model, tokenizer, FMT, [row])[0] == pytest.approx(sum(norms) / len(norms), rel=1e-4)
    global_norm = math.sqrt(sum(n * n for n in norms))
    assert gradient_norms(model, tokenizer, FMT, [row], form="global")[0] == pytest.approx(global_norm, rel=1e-4)
    with pytest.raises(UnlearnkitError, match="gradient-norm form"):
        gradient_norms(model, tokenizer, FMT, [row], form="sum")


def test_combined_gradient_norm_by_hand() -> None:
    # Norms 5 (3, 4) and 2 (0, 2); a parameter without a gradient is skipped.
    grads = [torch.tensor([3.0, 4.0]), None, torch.tensor([[0.0], [2.0]])]
    assert combined_gradient_norm(grads) == pytest.approx(3.5)
    assert combined_gradient_norm(grads, "global") == pytest.approx(math.sqrt(29))
    with pytest.raises(UnlearnkitError, match="reached no parameter"):
        combined_gradient_norm([None])


def test_evaluate_with_holdout_adds_privacy_and_memorization(micro_bench, target) -> None:
    model, tokenizer = target
    splits = micro_bench.eval_splits("forget10")
    assert len(splits["holdout"]) == len(splits["forget"])
    config = EvalConfig(max_new_tokens=8)
    without = evaluate(model, tokenizer, {k: v for k, v in splits.items() if k != "holdout"}, FMT, config)
    reference = load_reference(micro_bench.reference_path("forget10"))
    assert {"forget_nll", "holdout_nll", "auc"} <= set(reference["membership"])
    result = evaluate(model, tokenizer, splits, FMT, config, reference)
    for key, value in without.summary.items():  # the TOFU numbers do not change
        assert result.summary[key] == value
    for name in ("loss", "zlib", "lowercase", "min_k", "min_k_pp", "reference"):
        assert 0.0 <= result.summary[f"mia_{name}_auc"] <= 1.0
    # The target was trained on the forget set: its answers are recognised and memorised better than unseen ones.
    assert result.summary["mia_loss_auc"] > 0.5
    assert result.summary["forget_exact_memorization"] > result.summary["holdout_exact_memorization"]
    for split in ("forget", "holdout"):
        assert 0.0 <= result.summary[f"{split}_extraction_strength"] <= 1.0
    expected = privleak(1 - result.summary["mia_min_k_auc"], 1 - reference["membership"]["auc"]["min_k"])
    assert result.summary["privleak"] == pytest.approx(expected)
    assert {"mia_loss", "mia_min_k_pp", "exact_memorization"} <= set(result.per_sample["forget"][0])
    assert len(result.per_sample["holdout"]) == len(splits["holdout"])
    assert "mia_gradnorm_auc" not in result.summary  # slow: only on request
    # The reference attack reads the oracle's stored NLLs: target NLL - oracle NLL.
    first = result.per_sample["forget"][0]
    assert first["mia_reference"] == pytest.approx(first["mia_loss"] - reference["membership"]["forget_nll"][0])


def openunlearning_privleak(forget_auc: float, retain_auc: float) -> float:
    """OpenUnlearning's privleak as its code computes it, transcribed here: conventional AUCs (forget = members), complemented."""
    score, ref = 1 - forget_auc, 1 - retain_auc
    return (score - ref) / (ref + 1e-10) * 100


@pytest.mark.parametrize(("forget_auc", "retain_auc"), [(0.99, 0.5), (0.4, 0.6), (0.9, 0.99), (0.5, 0.5228), (0.05, 0.01)])
def test_privleak_equals_openunlearning_s_code(forget_auc: float, retain_auc: float) -> None:
    """Both forms equal OpenUnlearning's code on the same conventionally oriented AUCs (ours take 1 - AUC)."""
    expected = openunlearning_privleak(forget_auc, retain_auc)
    assert privleak(1 - forget_auc, 1 - retain_auc, "openunlearning") == pytest.approx(expected, abs=1e-6)
    assert privleak(1 - forget_auc, 1 - retain_auc, "muse") == pytest.approx(expected, rel=1e-6)


def test_gradient_norm_attack_on_request_and_openunlearning_privleak(micro_bench, target) -> None:
    model, tokenizer = target
    splits = {name: micro_bench.eval_splits("forget10")[name][:4] for name in ("forget", "holdout")}
    config = EvalConfig(max_new_tokens=4, gradient_norm=True, privleak_form="openunlearning")
    reference = oracle_reference(splits["forget"], [1.0] * 4, "forget10", {"auc": {"min_k": 0.5}, "min_k_fraction": 0.4})
    result = evaluate(model, tokenizer, splits, FMT, config, reference)
    assert 0.0 <= result.summary["mia_gradnorm_auc"] <= 1.0
    assert result.summary["privleak"] == pytest.approx(privleak(1 - result.summary["mia_min_k_auc"], 0.5, "openunlearning"))


def test_a_reference_with_another_k_is_refused(micro_bench, target) -> None:
    model, tokenizer = target
    splits = {name: micro_bench.eval_splits("forget10")[name][:2] for name in ("forget", "holdout")}
    with pytest.raises(UnlearnkitError, match="same k"):
        evaluate(model, tokenizer, splits, FMT, EvalConfig(max_new_tokens=4, min_k_fraction=0.2),
                 oracle_reference(splits["forget"], [1.0] * 2, "forget10", {"auc": {"min_k": 0.5}, "min_k_fraction": 0.4}))
    with pytest.raises(UnlearnkitError, match="privleak_form"):
        EvalConfig(privleak_form="tofu")


def test_results_folders_carry_the_catalog_s_definitions() -> None:
    from unlearnkit.descriptions import metric_descriptions

    assert (metric_descriptions(["forget_truth_ratio"])["forget_truth_ratio"]["definition"]
            == describe_metric("forget_truth_ratio").definition)
    assert describe("forget_quality").arrow == "↑" and describe("forget_truth_ratio").arrow == "→1"
    assert describe("unlearn_seconds").better == "lower"


def test_metrics_command_lists_every_metric(monkeypatch, capsys) -> None:
    assert run_cli(["metrics"], monkeypatch) == 0
    out = capsys.readouterr().out
    catalog = metric_catalog()
    for name in catalog.names():
        spec = catalog.get(name)
        assert f"{name} ({spec.direction} is better" in out and spec.definition in out
    assert out.count("Paper: ") == len(catalog.names())
    assert out.index("[tofu]") < out.index("[memorization]") < out.index("[privacy]")


def test_eval_command_takes_a_holdout_file(micro_bench, tmp_path, monkeypatch) -> None:
    import json

    out = tmp_path / "eval"
    args = ["eval", "--model", str(micro_bench.target_dir), "--output", str(out), "--prompt-format", "plain",
            "--forget", str(micro_bench.data_dir / "forget10.jsonl"), "--holdout", str(micro_bench.data_dir / "holdout10.jsonl"),
            "--max-new-tokens", "4"]
    assert run_cli(args, monkeypatch) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert 0.0 <= summary["mia_min_k_auc"] <= 1.0 and "forget_extraction_strength" in summary
    assert len(json.loads((out / "per_sample.json").read_text())["holdout"]) == len(micro_bench.split("holdout10"))


def test_text_privleak_by_hand() -> None:
    # MUSE's orientation: P(holdout Min-K > forget Min-K). Holdout -1, -3 vs forget -2, -2: pairs win 2, lose 2 -> 0.5.
    assert text_privleak_auc([-2.0, -2.0], [-1.0, -3.0]) == pytest.approx(0.5)
    assert privleak(0.5, 0.4) == pytest.approx((0.5 - 0.4) / 0.4 * 100)
    # Forget texts far more familiar (higher Min-K) than holdout: AUC 0, PrivLeak -100.
    assert text_privleak_auc([-0.1], [-5.0]) == 0.0
    assert MUSE_RETAIN_PRIVLEAK_AUC == {"muse-news": 0.4772, "muse-books": 0.5393}


def test_text_min_k_scores_every_token_after_the_first_and_no_eos(target) -> None:
    model, tokenizer = target
    text = "Ana was born in Tovrask and wrote three novels."
    ids = tokenizer(text, add_special_tokens=True)["input_ids"]  # MUSE's compute_ppl: tokenizer.encode(text), no EOS
    with torch.no_grad():
        log_probs = torch.log_softmax(model(input_ids=torch.tensor([ids])).logits[0].double(), dim=-1)
    all_prob = [log_probs[i, token].item() for i, token in enumerate(ids[1:])]
    k_length = int(len(all_prob) * 0.4)
    expected = float(np.mean(np.sort(all_prob)[:k_length]))  # MUSE's Min-40% is -this; its AUC scores -Min-40% = this
    assert text_min_k_scores(model, tokenizer, [text, text + " More."])[0] == pytest.approx(expected, rel=1e-5)


def test_evaluate_text_privleak_and_the_eval_command(micro_bench, target, tmp_path, monkeypatch) -> None:
    import json

    model, tokenizer = target
    forget = [row["answer"] for row in micro_bench.split("forget10")[:4]]
    holdout = [row["answer"] for row in micro_bench.split("holdout10")[:4]]
    result = evaluate_text_privleak(model, tokenizer, forget, holdout, retain_auc=0.5)
    forget_scores = text_min_k_scores(model, tokenizer, forget)
    holdout_scores = text_min_k_scores(model, tokenizer, holdout)
    auc = text_privleak_auc(forget_scores, holdout_scores)
    assert result.summary == pytest.approx({"muse_privleak_auc": auc, "muse_privleak": privleak(auc, 0.5)})
    assert [sample["mia_min_k"] for sample in result.forget] == pytest.approx(list(forget_scores))
    folder = tmp_path / "muse"
    (folder / "privleak").mkdir(parents=True)
    (folder / "privleak" / "forget.json").write_text(json.dumps(forget))
    (folder / "privleak" / "holdout.json").write_text(json.dumps(holdout))
    out = tmp_path / "eval"
    sources = [f"muse-news:privleak/forget@{folder}", f"muse-news:privleak/holdout@{folder}"]
    args = ["eval", "--model", str(micro_bench.target_dir), "--output", str(out), "--privleak-texts", *sources]
    assert run_cli(args, monkeypatch) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["muse_privleak_auc"] == pytest.approx(result.summary["muse_privleak_auc"])
    expected = (summary["muse_privleak_auc"] - 0.4772) / 0.4772 * 100  # MUSE's News constant by default
    assert summary["muse_privleak"] == pytest.approx(expected)
    assert "muse_privleak" in json.loads((out / "config.json").read_text())["metric_info"]


@pytest.mark.parametrize(("extra", "message"), [
    (["--privleak-texts", "a.json", "b.json"], "two MUSE text sources"),
    (["--privleak-texts", "muse-news:privleak/forget@X", "muse-books:privleak/holdout@X"], "--privleak-retain-auc is needed"),
    (["--privleak-texts", "muse-news:knowmem/forget_qa@X", "muse-news:privleak/holdout@X", "--privleak-retain-auc", "0.5"],
     "not texts"),
    (["--privleak-retain-auc", "0.5", "--forget", "x.json"], "goes with --privleak-texts"),
    (["--privleak-texts", "muse-news:privleak/forget@X", "muse-news:privleak/holdout@X", "--privleak-retain-auc", "0"],
     "AUC in"),
])
def test_eval_privleak_texts_bad_input_exits_2_before_any_write(extra, message, tmp_path, monkeypatch, capsys) -> None:
    out = tmp_path / "eval"
    assert run_cli(["eval", "--model", "builtin-target", "--output", str(out), *extra], monkeypatch) == 2
    assert message in capsys.readouterr().err
    assert not out.exists()
