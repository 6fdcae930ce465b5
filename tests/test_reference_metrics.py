"""Reference equivalence: every metric against an independent transcription of its reference's formula, to 1e-6.

Each ``reference_*`` helper below is written here from the cited code, not by
calling this package: TOFU (aggregate_eval_stat.py), OpenUnlearning at d3d7cf9
(src/evals/metrics/utils.py, memorization.py, mia/*.py, privacy.py), MUSE
(eval.py, metrics/privleak.py, metrics/logger.py), Jang et al.
(models/Neo_Model.py ``validation_el``) and bitsandbytes (backends/default/ops.py).
Where a reference has a bug this package fixes, both values are asserted.
"""

from __future__ import annotations

import contextlib
import zlib

import numpy as np
import pytest
import torch
from rouge_score import rouge_scorer
from scipy.stats import hmean, ks_2samp
from sklearn.metrics import auc as sklearn_auc
from sklearn.metrics import roc_auc_score, roc_curve

from unlearnkit.attacks.quantization import FP4_CODE, NF4_CODE, absmax_codebook_quantize, int8_rowwise_quantize
from unlearnkit.data.encoding import PromptFormat, encode_qa, pad_batch
from unlearnkit.evaluation import metrics
from unlearnkit.evaluation.memorization import exact_memorization, extraction_likelihood, extraction_strength, without_final_eos
from unlearnkit.evaluation.mia import (
    answer_token_scores,
    gradient_norms,
    lowercase_score,
    lowest_k_mean,
    membership_auc,
    min_k_plus_plus_z,
    privleak,
    reference_score,
    text_privleak_auc,
    token_log_probs,
    zlib_score,
)
from unlearnkit.evaluation.muse import cut_at_stop_strings
from unlearnkit.losses import token_nll
from unlearnkit.modeling import load_model, load_tokenizer

TOL = {"abs": 1e-6, "rel": 1e-6}
FMT = PromptFormat("plain")
EOS = 7

# Fixed inputs: seeded logits (B = 3, T = 7, V = 8); prompts of 2 and 3 tokens, answers ending in EOS (id 7), padding.
GENERATOR = torch.Generator().manual_seed(0)
LOGITS = torch.randn(3, 7, 8, generator=GENERATOR, dtype=torch.float64) * 2
LABELS = torch.tensor([
    [-100, -100, 3, 1, 4, 1, EOS],
    [-100, -100, -100, 5, 2, EOS, -100],
    [-100, -100, 6, 0, EOS, -100, -100],
])
# Row 0's argmax made to hit labels 4 and 1 and EOS but miss 1 at position 3: a matched suffix of 2 answer tokens.
LOGITS[0, 3, 4] = LOGITS[0, 4, 1] = LOGITS[0, 5, EOS] = 50.0
LOGITS[0, 2, 1] = -50.0
# Row 2: its last answer token (0) is missed, so no suffix of the EOS-less answer matches.
LOGITS[2, 2, 0] = -50.0


# ---------------------------------------------------------------------------------------------------------------------
# Transcriptions
# ---------------------------------------------------------------------------------------------------------------------


def ou_evaluate_probability(logits: torch.Tensor, labels: torch.Tensor) -> list[dict[str, float]]:
    """OpenUnlearning's evaluate_probability (src/evals/metrics/utils.py)."""
    shifted_labels = labels[..., 1:].contiguous()
    shifted_logits = logits[..., :-1, :].contiguous()
    losses = torch.nn.CrossEntropyLoss(ignore_index=-100, reduction="none")(shifted_logits.transpose(-1, -2), shifted_labels).sum(dim=-1)
    avg_losses = losses / (labels != -100).sum(-1)
    return [{"prob": float(torch.exp(-a)), "avg_loss": float(a)} for a in avg_losses]


def ou_tokenwise_vocab_logprobs(logits: torch.Tensor, labels: torch.Tensor) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """OpenUnlearning's tokenwise_vocab_logprobs: the last labelled token (EOS) is dropped."""
    log_probs = torch.nn.functional.log_softmax(logits, dim=-1)[:, :-1, :]
    out, out_labels = [], []
    for i in range(logits.shape[0]):
        actual = (labels[i] != -100).nonzero(as_tuple=True)[0][:-1]
        start, end = actual[0].item(), actual[-1].item()
        out.append(log_probs[i, start - 1:end])
        out_labels.append(labels[i][actual])
    return out, out_labels


def ou_tokenwise_logprobs(logits: torch.Tensor, input_ids: torch.Tensor, labels: torch.Tensor) -> list[torch.Tensor]:
    """OpenUnlearning's tokenwise_logprobs: log p of input_ids[t + 1], the labelled positions but the last."""
    log_probs = torch.nn.functional.log_softmax(logits, dim=-1)[:, :-1, :]
    target = torch.gather(log_probs, dim=2, index=input_ids[:, 1:].unsqueeze(-1)).squeeze(-1)
    out = []
    for i in range(logits.shape[0]):
        actual = (labels[i] != -100).nonzero(as_tuple=True)[0][:-1]
        start, end = actual[0].item(), actual[-1].item()
        out.append(target[i, start - 1:end])
    return out


def ou_exact_memorization(logits: torch.Tensor, labels: torch.Tensor) -> list[float]:
    log_probs, label_rows = ou_tokenwise_vocab_logprobs(logits, labels)
    return [float((torch.argmax(lp, dim=-1) == lab).sum() / len(lab)) for lp, lab in zip(log_probs, label_rows, strict=True)]


def ou_extraction_strength(logits: torch.Tensor, labels: torch.Tensor) -> list[float]:
    """OpenUnlearning's loop, its 1/|y| floor included (k stops at |y| - 1 when no suffix matches)."""
    log_probs, label_rows = ou_tokenwise_vocab_logprobs(logits, labels)
    scores = []
    for lp, lab in zip(log_probs, label_rows, strict=True):
        valid_len = len(lab)
        preds = torch.argmax(lp, dim=-1)
        for k in range(valid_len):
            if torch.equal(preds[k:], lab[k:]):
                break
        scores.append(1 - k / valid_len)
    return scores


def ou_min_k(token_log_probs_row: torch.Tensor, k: float) -> float:
    lp = token_log_probs_row.float().cpu().numpy()
    num_k = max(1, int(len(lp) * k))
    return float(-np.mean(np.sort(lp)[:num_k]))


def ou_min_k_plus_plus(vocab_log_probs: torch.Tensor, target_prob: torch.Tensor, k: float) -> float:
    mu = (torch.exp(vocab_log_probs) * vocab_log_probs).sum(-1)
    sigma = (torch.exp(vocab_log_probs) * torch.square(vocab_log_probs)).sum(-1) - torch.square(mu)
    sigma = torch.clamp(sigma, min=1e-6)
    scores = (target_prob.double().numpy() - mu.double().numpy()) / torch.sqrt(sigma).numpy()
    num_k = max(1, int(len(scores) * k))
    return float(-np.mean(sorted(scores)[:num_k]))


def ou_mia_auc(forget_scores: list[float], holdout_scores: list[float]) -> float:
    """OpenUnlearning's mia_auc: forget labelled 0, holdout 1, its attack scores (higher = non-member)."""
    labels = np.array([0] * len(forget_scores) + [1] * len(holdout_scores))
    return float(roc_auc_score(labels, np.array(forget_scores + holdout_scores)))


def muse_sweep_auc(nonmember_ppl: list[float], member_ppl: list[float]) -> float:
    """MUSE's sweep (metrics/privleak.py): roc_curve(y, -ppl), nonmember 0, member 1, then auc."""
    ppl = np.array(nonmember_ppl + member_ppl)
    y = np.array([0] * len(nonmember_ppl) + [1] * len(member_ppl))
    fpr, tpr, _ = roc_curve(y, -ppl)
    return float(sklearn_auc(fpr, tpr))


def jang_el(sequence: list[int], predictions: dict[int, list[int]], n: int) -> float:
    """Jang et al.'s validation_el for one example: prefixes i = 1 .. len - 1, a ZeroDivisionError skipped."""
    max_len = len(sequence)
    numerator = 0.0
    for i in reversed(range(1, max_len)):
        label, pred = sequence[i:max_len], predictions[i]
        p_ngram = [tuple(pred[j:j + n]) for j in range(len(pred) - n + 1)]
        l_ngram = [tuple(label[j:j + n]) for j in range(len(label) - n + 1)]
        l_unique = set(l_ngram)
        p_tp = [g for g in p_ngram if g in l_unique]
        with contextlib.suppress(ZeroDivisionError):  # the reference's try/except: n-gram undefined
            numerator += len(p_tp) / len(l_ngram)
    return numerator / (max_len - 1 - (n - 1))


def bnb_quantize_4bit(weight: torch.Tensor, code: list[float], blocksize: int) -> torch.Tensor:
    """bitsandbytes' default-backend quantize_4bit + dequantize_4bit (backends/default/ops.py), unpacked."""
    code_t = torch.tensor(code, dtype=torch.float32)
    order = torch.argsort(code_t)
    bounds = (code_t[order[:-1]] + code_t[order[1:]]) / 2
    flat = weight.reshape(-1).float()
    n = flat.numel()
    rem = n % blocksize
    full = n - rem
    blocks = flat[:full].reshape(full // blocksize, blocksize)
    absmax = blocks.abs().max(dim=-1)[0]
    scaled = torch.clamp(blocks * (1.0 / absmax.clamp(min=1e-38).view(-1, 1)), -1, 1).reshape(-1)
    if rem:
        am = flat[full:].abs().max().clamp(min=1e-38)
        absmax = torch.cat([absmax, am.unsqueeze(0)])
        scaled = torch.cat([scaled, torch.clamp(flat[full:] / am, -1, 1)])
    q = order[torch.bucketize(scaled, bounds)]
    values = code_t[q]
    out = torch.empty(n)
    out[:full] = (values[:full].view(-1, blocksize) * absmax[: full // blocksize].view(-1, 1)).reshape(full)
    if rem:
        out[full:] = values[full:] * absmax[-1]
    return out.reshape(weight.shape).to(weight.dtype)


BNB_FP4 = [v / 12 for v in (0, 0.0625, 8.0, 12.0, 4.0, 6.0, 2.0, 3.0, -0.0, -0.0625, -8.0, -12.0, -4.0, -6.0, -2.0, -3.0)]


# ---------------------------------------------------------------------------------------------------------------------
# TOFU metrics
# ---------------------------------------------------------------------------------------------------------------------

RNG = np.random.default_rng(0)
GT_NLL = RNG.uniform(0.2, 3.0, 12)
PARA_NLL = RNG.uniform(0.2, 3.0, 12)
PERT_NLL = RNG.uniform(0.2, 3.0, (12, 5))
ORACLE_PARA = RNG.uniform(0.2, 3.0, 12)
ORACLE_PERT = RNG.uniform(0.2, 3.0, (12, 5))


def test_probability_equals_tofu_and_openunlearning() -> None:
    assert metrics.probability(GT_NLL).mean() == pytest.approx(np.mean(np.exp(-1 * GT_NLL)), **TOL)
    # OpenUnlearning's evaluate_probability from logits and labels: exp(-sum NLL / labelled count).
    ours = metrics.probability((token_nll(LOGITS, LABELS)[0].sum(1) / (LABELS[:, 1:] != -100).sum(1)).numpy())
    assert ours.tolist() == pytest.approx([r["prob"] for r in ou_evaluate_probability(LOGITS, LABELS)], **TOL)


def test_normalized_probability_equals_tofu_and_openunlearning() -> None:
    true_p, false_p = np.exp(-GT_NLL), np.exp(-PERT_NLL)
    tofu = true_p / np.concatenate([true_p[:, None], false_p], axis=1).sum(-1)
    ours = metrics.normalized_probability(GT_NLL, PERT_NLL)
    assert ours == pytest.approx(tofu, **TOL)
    assert ours == pytest.approx(true_p / (true_p + false_p.sum(1) + 1e-10), **TOL)  # OpenUnlearning's 1e-10


def test_truth_ratio_and_its_aggregators_equal_tofu_and_openunlearning() -> None:
    curr_stat_1 = np.exp(PERT_NLL.mean(axis=-1) - PARA_NLL)  # TOFU
    ratios = metrics.truth_ratio(PARA_NLL, PERT_NLL)
    assert ratios == pytest.approx(curr_stat_1, **TOL)
    assert metrics.forget_truth_ratio_score(ratios) == pytest.approx(np.mean(np.minimum(curr_stat_1, 1 / curr_stat_1)), **TOL)
    assert metrics.retain_truth_ratio_score(ratios) == pytest.approx(np.mean(np.maximum(0, 1 - 1 / curr_stat_1)), **TOL)
    # OpenUnlearning: tr = wrong / (correct + 1e-10) from exp(-avg loss), its aggregators closer_to_1_better / true_better.
    tr = np.exp(-PERT_NLL.mean(axis=-1)) / (np.exp(-PARA_NLL) + 1e-10)
    assert metrics.forget_truth_ratio_score(ratios) == pytest.approx(np.mean(np.minimum(tr, 1 / (tr + 1e-10))), **TOL)
    assert metrics.retain_truth_ratio_score(ratios) == pytest.approx(np.mean(np.maximum(0, 1 - tr)), **TOL)


def test_forget_quality_equals_tofu_and_openunlearning() -> None:
    unlearn_tr = np.exp(PERT_NLL.mean(axis=-1) - PARA_NLL)
    retain_tr = np.exp(ORACLE_PERT.mean(axis=-1) - ORACLE_PARA)
    ours = metrics.forget_quality(metrics.truth_ratio(PARA_NLL, PERT_NLL), metrics.truth_ratio(ORACLE_PARA, ORACLE_PERT))
    assert ours == pytest.approx(ks_2samp(unlearn_tr, retain_tr).pvalue, **TOL)
    # OpenUnlearning's get_forget_quality on its tr = 1/R: the KS test is rank-based, the p-value the same.
    assert ours == pytest.approx(ks_2samp(1 / (1 / unlearn_tr + 1e-10), 1 / (1 / retain_tr + 1e-10)).pvalue, **TOL)


def test_model_utility_equals_tofu_s_harmonic_mean() -> None:
    components = dict(zip(metrics.MODEL_UTILITY_COMPONENTS, RNG.uniform(0.05, 1.0, 9), strict=True))
    assert metrics.model_utility(components) == pytest.approx(hmean(list(components.values())), **TOL)
    # By hand: the harmonic mean of 0.5, 1 and 0.25 (each three times) is 3 / (2 + 1 + 4).
    by_hand = dict(zip(metrics.MODEL_UTILITY_COMPONENTS, [0.5, 1.0, 0.25] * 3, strict=True))
    assert metrics.model_utility(by_hand) == pytest.approx(3 / 7, **TOL)


PREDICTIONS = ["The cat sat on a mat today.", "Paris is the capital", "", "running dogs ran quickly home"]
REFERENCES = ["the cat sat on the mat", "The capital of France is Paris.", "anything", "the dog runs quickly"]


def test_rouge_l_recall_equals_tofu_and_by_hand() -> None:
    scorer = rouge_scorer.RougeScorer(["rouge1", "rougeL"], use_stemmer=True)  # TOFU's eval_rouge_recall
    expected = [scorer.score(gt, gen)["rougeL"].recall for gen, gt in zip(PREDICTIONS, REFERENCES, strict=True)]
    assert metrics.rouge_l_recall(PREDICTIONS, REFERENCES).tolist() == pytest.approx(expected, **TOL)
    # By hand: LCS("the cat sat on a mat today", "the cat sat on the mat") = 5 of 6 reference words.
    assert metrics.rouge_l_recall(PREDICTIONS[:1], REFERENCES[:1])[0] == pytest.approx(5 / 6, **TOL)


def test_muse_rouge_l_f1_and_knowmem_cut_equal_muse() -> None:
    scorer = rouge_scorer.RougeScorer(rouge_types=["rouge1", "rouge2", "rougeL", "rougeLsum"], use_stemmer=False)  # RougeEvalLogger
    expected = [scorer.score(gt, out)["rougeL"].fmeasure for out, gt in zip(PREDICTIONS, REFERENCES, strict=True)]
    assert metrics.rouge_l_f1(PREDICTIONS, REFERENCES).tolist() == pytest.approx(expected, **TOL)
    # By hand: LCS 5, precision 5/7, recall 5/6, F1 = 2PR / (P + R) = 10/13.
    assert metrics.rouge_l_f1(PREDICTIONS[:1], REFERENCES[:1])[0] == pytest.approx(10 / 13, **TOL)
    # KnowMem's get_prefix_before_words_occur.
    raw = "Paris.\nQuestion: Who? Answer: x\n\nmore"
    expected_cut = raw
    for word in ["\n\n", "\nQuestion", "Question:"]:
        expected_cut = expected_cut.split(word)[0]
    assert cut_at_stop_strings(raw) == expected_cut == "Paris."


# ---------------------------------------------------------------------------------------------------------------------
# Memorization
# ---------------------------------------------------------------------------------------------------------------------


def test_exact_memorization_equals_openunlearning_without_eos() -> None:
    ours = exact_memorization(LOGITS, without_final_eos(LABELS, EOS))
    assert ours.tolist() == pytest.approx(ou_exact_memorization(LOGITS, LABELS), **TOL)


def test_extraction_strength_equals_openunlearning_but_for_its_floor() -> None:
    ours = extraction_strength(LOGITS, without_final_eos(LABELS, EOS)).tolist()
    reference = ou_extraction_strength(LOGITS, LABELS)
    assert ours[0] == pytest.approx(reference[0], **TOL) == pytest.approx(2 / 4)  # suffix (4, 1) of (3, 1, 4, 1)
    # Row 2 (answer 6, 0): the last token is missed, no suffix matches. OpenUnlearning's loop ends at k = |y| - 1: 1/|y|.
    assert reference[2] == pytest.approx(1 / 2, **TOL)
    assert ours[2] == 0.0


def test_extraction_likelihood_equals_jang_et_al() -> None:
    sequence = [5, 6, 7, 8, 6, 7, 9]
    n = 2
    # Greedy continuations of every prefix x[:i], each as long as the true suffix; prefix 1 loops on a true bigram.
    predictions = {1: [6, 7, 6, 7, 6, 7], 2: [7, 8, 1, 2, 3], 3: [8, 6, 7, 9], 4: [6, 7, 9], 5: [7, 1], 6: [9]}
    ours = extraction_likelihood(sequence, [predictions[i] for i in range(1, len(sequence) - n + 1)], n)
    assert ours == pytest.approx(jang_el(sequence, predictions, n), **TOL)
    # By hand: prefix 1: (6,7) x3 found of 5 suffix bigrams = 3/5; prefix 2: (7,8) of 4 = 1/4; prefix 3: all 3 of 3;
    # prefix 4: (6,7), (7,9) of 2 = 1; prefix 5: 0 of 1. Mean (0.6 + 0.25 + 1 + 1 + 0) / 5.
    assert ours == pytest.approx((0.6 + 0.25 + 1 + 1 + 0) / 5, **TOL)


# ---------------------------------------------------------------------------------------------------------------------
# Membership inference
# ---------------------------------------------------------------------------------------------------------------------


def test_min_k_and_min_k_plus_plus_statistics_equal_openunlearning() -> None:
    input_ids = LABELS.clamp_min(0)
    kept = without_final_eos(LABELS, EOS)
    log_p, mask = token_log_probs(LOGITS, kept)
    z, _ = min_k_plus_plus_z(LOGITS, kept)
    reference_lp = ou_tokenwise_logprobs(LOGITS, input_ids, LABELS)
    vocab_lp, _ = ou_tokenwise_vocab_logprobs(LOGITS, LABELS)
    for row in range(LOGITS.shape[0]):
        for k in (0.2, 0.4, 1.0):
            # OpenUnlearning's scores are "higher = non-member": the negated statistics.
            assert lowest_k_mean(log_p[row, mask[row]].numpy(), k) == pytest.approx(-ou_min_k(reference_lp[row], k), **TOL)
            expected = -ou_min_k_plus_plus(vocab_lp[row], reference_lp[row], k)
            assert lowest_k_mean(z[row, mask[row]].numpy(), k) == pytest.approx(expected, **TOL)


def test_min_k_by_hand() -> None:
    # log p = (-0.1, -2, -0.5, -3, -1): k = 0.4 keeps floor(2) lowest: (-3 - 2) / 2.
    assert lowest_k_mean([-0.1, -2.0, -0.5, -3.0, -1.0], 0.4) == pytest.approx(-2.5, **TOL)


def test_auc_orientation_equals_openunlearning_for_every_attack() -> None:
    forget = [0.5, 1.0, 1.0, 2.5, 0.7]  # e.g. mean NLLs, ties across the classes included
    holdout = [1.0, 3.0, 2.0, 0.9]
    # OpenUnlearning scores "higher = more likely a non-member": loss, zlib, reference, gradnorm as they are,
    # min_k and min_k++ negated (our statistics are the negated scores).
    for attack in ("loss", "zlib", "reference", "gradnorm"):
        assert membership_auc(attack, forget, holdout) == pytest.approx(ou_mia_auc(forget, holdout), **TOL)
    for attack in ("min_k", "min_k_pp"):
        negated = ou_mia_auc([-v for v in forget], [-v for v in holdout])
        assert membership_auc(attack, forget, holdout) == pytest.approx(negated, **TOL)
    # By hand: of 20 pairs, the forget value is below the holdout one in 13, tied in 2 (1.0 twice, each ½): 14 / 20.
    assert membership_auc("loss", forget, holdout) == pytest.approx(14 / 20, **TOL)


def test_lowercase_and_zlib_statistics_equal_muse() -> None:
    nll, nll_lower = np.array([1.2, 0.4, 2.0, 0.9]), np.array([1.5, 1.4, 2.1, 0.95])
    texts = ["Ana was born in Tovrask.", "zzz", "The capital of France is Paris.", "a b c"]
    members, nonmembers = [0, 1], [2, 3]
    # MUSE: PPL/lower = loss / loss_lower and PPL/zlib = loss / len(zlib.compress(bytes(text, 'utf-8'))), AUC by sweep.
    muse_lower = nll / nll_lower
    muse_zlib = nll / np.array([len(zlib.compress(bytes(t, "utf-8"))) for t in texts])
    ours_lower = np.array([lowercase_score(lo, n) for lo, n in zip(nll_lower, nll, strict=True)])
    ours_zlib = np.array([zlib_score(n, t) for n, t in zip(nll, texts, strict=True)])
    assert ours_zlib == pytest.approx(muse_zlib, **TOL)
    # MUSE's member/non-member AUC on its statistic vs ours (members = forget).
    assert membership_auc("lowercase", ours_lower[members], ours_lower[nonmembers]) == pytest.approx(
        muse_sweep_auc(list(muse_lower[nonmembers]), list(muse_lower[members])), **TOL)
    assert membership_auc("zlib", ours_zlib[members], ours_zlib[nonmembers]) == pytest.approx(
        muse_sweep_auc(list(muse_zlib[nonmembers]), list(muse_zlib[members])), **TOL)


def test_reference_statistic_equals_openunlearning() -> None:
    target, ref = np.array([1.2, 0.4, 2.0]), np.array([1.0, 0.9, 2.5])
    assert reference_score(target, ref) == pytest.approx([t - r for t, r in zip(target, ref, strict=True)], **TOL)


def test_privleak_equals_muse_s_eval_on_text_min_k() -> None:
    forget_min_k = [-1.2, -0.4, -2.0, -0.9, -1.0]  # mean of the lowest 40% log-probs of each text (higher = member)
    holdout_min_k = [-1.5, -1.4, -2.1, -0.95, -1.0]
    # MUSE: Min-40% = -mean, key forget_holdout: forget non-members, holdout members; PrivLeak against AUC_RETRAIN.
    auc = muse_sweep_auc([-v for v in forget_min_k], [-v for v in holdout_min_k])
    ours_auc = text_privleak_auc(forget_min_k, holdout_min_k)
    assert ours_auc == pytest.approx(auc, **TOL)
    muse_privleak = (auc - 0.47719999999999996) / 0.47719999999999996 * 100
    assert privleak(ours_auc, 0.47719999999999996) == pytest.approx(muse_privleak, **TOL)
    # The QA form takes MUSE's orientation from our member-oriented AUC: the same number.
    ours_qa = privleak(1 - membership_auc("min_k", forget_min_k, holdout_min_k), 0.47719999999999996)
    assert ours_qa == pytest.approx(muse_privleak, **TOL)
    # OpenUnlearning's privleak (src/evals/metrics/privacy.py): complement its AUCs, 1e-10 in the denominator.
    ou_forget_auc, ou_retain_auc = 1 - auc, 1 - 0.4772
    score, ref = 1 - ou_forget_auc, 1 - ou_retain_auc
    assert privleak(auc, 0.4772, "openunlearning") == pytest.approx((score - ref) / (ref + 1e-10) * 100, **TOL)


# ---------------------------------------------------------------------------------------------------------------------
# Model-level: the batched statistics against OpenUnlearning's pipeline on the same model and rows
# ---------------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def target(micro_bench):
    return load_model(micro_bench.target_dir), load_tokenizer(micro_bench.target_dir)


def test_answer_statistics_equal_openunlearning_s_pipeline(micro_bench, target) -> None:
    model, tokenizer = target
    rows = micro_bench.split("forget10")[:4]
    scores = answer_token_scores(model, tokenizer, FMT, rows, k=0.4, batch_size=4)
    features = [encode_qa(tokenizer, FMT, row["question"], row["answer"], 512) for row in rows]
    batch = pad_batch(features, tokenizer.pad_token_id)
    with torch.no_grad():
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits.double()
    labels = batch["labels"]
    losses = ou_evaluate_probability(logits, labels)
    texts = [tokenizer.decode(row[row != -100].tolist(), skip_special_tokens=True) for row in labels]  # extract_target_texts
    token_lp = ou_tokenwise_logprobs(logits, batch["input_ids"], labels)
    vocab_lp, _ = ou_tokenwise_vocab_logprobs(logits, labels)
    for i in range(len(rows)):
        assert scores["loss"][i] == pytest.approx(losses[i]["avg_loss"], rel=1e-5)
        assert scores["zlib"][i] == pytest.approx(losses[i]["avg_loss"] / len(zlib.compress(texts[i].encode("utf-8"))), rel=1e-5)
        assert scores["min_k"][i] == pytest.approx(-ou_min_k(token_lp[i], 0.4), rel=1e-5)
        assert scores["min_k_pp"][i] == pytest.approx(-ou_min_k_plus_plus(vocab_lp[i], token_lp[i], 0.4), rel=1e-4, abs=1e-5)
    assert scores["exact_memorization"].tolist() == pytest.approx(ou_exact_memorization(logits, labels), **TOL)


def test_gradient_norm_equals_openunlearning_s_gradnorm(micro_bench, target) -> None:
    model, tokenizer = target
    row = micro_bench.split("forget10")[1]
    batch = pad_batch([encode_qa(tokenizer, FMT, row["question"], row["answer"], 512)], tokenizer.pad_token_id)
    # GradNormAttack.compute_batch_values with p = 2 (its TOFU/MUSE configs); our model has no dropout, so train() is moot.
    model.zero_grad()
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    sample_loss = -torch.mean(ou_tokenwise_logprobs(logits, batch["input_ids"], batch["labels"])[0])
    sample_loss.backward()
    reference = float(torch.stack([p.grad.detach().norm(p=2) for p in model.parameters() if p.grad is not None]).mean())
    model.zero_grad()
    assert gradient_norms(model, tokenizer, FMT, [row])[0] == pytest.approx(reference, rel=1e-5)


# ---------------------------------------------------------------------------------------------------------------------
# Quantization (the attack's weight rounding)
# ---------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("name", "code"), [("fp4", BNB_FP4), ("nf4", list(NF4_CODE))])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_4bit_rounding_equals_bitsandbytes(name: str, code: list[float], dtype: torch.dtype) -> None:
    weight = (torch.randn(24, 37, generator=torch.Generator().manual_seed(1)) * 0.05).to(dtype)  # 888 values: a partial block
    ours = absmax_codebook_quantize(weight, FP4_CODE if name == "fp4" else NF4_CODE, blocksize=64)
    torch.testing.assert_close(ours, bnb_quantize_4bit(weight, code, 64), atol=1e-6, rtol=1e-6)


def test_int8_rounding_equals_bitsandbytes_int8_vectorwise_quant() -> None:
    weight = torch.randn(16, 40, generator=torch.Generator().manual_seed(2))
    row_stats = torch.max(weight.abs(), dim=1).values.float()
    quantized = torch.round(weight * (127.0 / row_stats.unsqueeze(-1))).to(torch.int8)
    dequantized = quantized.float() * row_stats.unsqueeze(-1) / 127.0
    torch.testing.assert_close(int8_rowwise_quantize(weight), dequantized, atol=1e-6, rtol=1e-6)
