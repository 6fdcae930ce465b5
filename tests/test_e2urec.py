"""E2URec (Wang et al., Frontiers of Computer Science 2024) on the built-in recommendation data: teachers, loss, metrics,
the user split's checks, and ``unlearnkit recommend`` end to end on a micro configuration."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from tests.helpers import run_cli
from unlearnkit import losses
from unlearnkit.errors import UnlearnkitError
from unlearnkit.recommendation import data, metrics
from unlearnkit.recommendation import model as rec
from unlearnkit.recommendation.e2urec import E2URecConfig, e2urec_objective, forgetting_teacher_logits, soft_cross_entropy
from unlearnkit.runs.recommend import build_settings

# A micro experiment: 10 users (2 forgotten), K = 2, a hidden-16 one-layer Llama; seconds on one thread.
MICRO = {
    "num_users": 10, "num_items": 12, "history_length": 2, "train_targets": 3, "test_targets": 2,
    "vocab_size": 300, "hidden_size": 16, "intermediate_size": 32, "num_layers": 1, "num_heads": 2,
    "train_epochs": 40, "train_batch_size": 8, "augment_epochs": 2, "unlearn_epochs": 3, "unlearn_batch_size": 4,
}


def micro_args(**extra: object) -> list[str]:
    args = []
    for key, value in {**MICRO, **extra}.items():
        args += ["--set", f"{key}={value}"]
    return args


# --------------------------------------------------------------------------------------------- teachers and loss


def test_forgetting_teacher_by_hand():
    original = torch.tensor([[1.0, 2.0, 0.0]])
    augmented = torch.tensor([[2.0, 1.0, 0.5]])
    # ReLU(aug - orig) = [1, 0, 0.5]; z_orig - 2 * that = [-1, 2, -1].
    assert torch.allclose(forgetting_teacher_logits(original, augmented, 2.0), torch.tensor([[-1.0, 2.0, -1.0]]))
    # Where the augmented model lowered every logit, the teacher is the original.
    assert torch.equal(forgetting_teacher_logits(original, original - 1.0, 2.0), original)


def test_soft_cross_entropy_by_hand():
    teacher = torch.tensor([[[0.0, 0.0], [5.0, 0.0]]])  # position 0: p = (1/2, 1/2)
    student = torch.tensor([[[0.0, math.log(3.0)], [0.0, 0.0]]])  # position 0: q = (1/4, 3/4)
    at_first = -(0.5 * math.log(0.25) + 0.5 * math.log(0.75))  # 0.836988
    masked = soft_cross_entropy(teacher, student, torch.tensor([[1.0, 0.0]]))
    assert masked.item() == pytest.approx(at_first, abs=1e-6)
    # Unmasked, both positions count: the second is CE((e^5, 1)/(e^5+1) || (1/2, 1/2)) = log 2.
    assert soft_cross_entropy(teacher, student).item() == pytest.approx((at_first + math.log(2.0)) / 2, abs=1e-6)


def test_objective_by_hand():
    forget, nll, ce = torch.tensor(1.0), torch.tensor(2.0), torch.tensor(0.5)
    assert e2urec_objective(forget, nll, ce, 0.6, forget_only=False).item() == pytest.approx(0.6 * 2.5 + 0.4 * 1.0)
    assert e2urec_objective(forget, None, None, 0.6, forget_only=True).item() == 1.0


def test_losses_match_a_transcription_of_the_reference():
    """The authors' compute_forced_kl / compute_kl and the combined loss, transcribed here (log(q + 1e-12), .sum(-1).mean())."""
    generator = torch.Generator().manual_seed(0)
    original, augmented, student, remembered = (torch.randn(3, 4, 11, generator=generator, dtype=torch.float64) for _ in range(4))
    alpha, weight, retain_nll = 2.0, 0.6, torch.tensor(0.7, dtype=torch.float64)
    forced = original - alpha * torch.clamp(augmented - original, min=0)
    prob_p = torch.exp(forced) / torch.exp(forced).sum(-1, keepdim=True)
    prob_q = torch.exp(student) / torch.exp(student).sum(-1, keepdim=True)
    forget_ref = -(prob_p * torch.log(prob_q + 1e-12)).sum(-1).mean()
    prob_r = torch.exp(remembered) / torch.exp(remembered).sum(-1, keepdim=True)
    retain_ref = -(prob_r * torch.log(prob_q + 1e-12)).sum(-1).mean()
    reference = (retain_nll + retain_ref) * weight + forget_ref * (1 - weight)

    forget_ce = soft_cross_entropy(forgetting_teacher_logits(original, augmented, alpha), student)
    retain_ce = soft_cross_entropy(remembered, student)
    assert forget_ce.item() == pytest.approx(forget_ref.item(), abs=1e-6)
    assert e2urec_objective(forget_ce, retain_nll, retain_ce, weight, forget_only=False).item() == pytest.approx(reference.item(), abs=1e-6)


def test_student_gradient_flows_only_through_the_student():
    original = torch.randn(2, 3, 5)
    student = torch.randn(2, 3, 5, requires_grad=True)
    augmented = torch.randn(2, 3, 5, requires_grad=True)
    soft_cross_entropy(forgetting_teacher_logits(original, augmented, 2.0), student).backward()
    assert student.grad is not None and augmented.grad is None


# --------------------------------------------------------------------------------------------- the recommender


@pytest.fixture(scope="module")
def tiny():
    settings = build_settings({key: value for key, value in MICRO.items()})
    dataset = data.build_dataset(settings.data)
    tokenizer = rec.recommender_tokenizer(dataset.train_rows, settings.model)
    features = rec.encode_rows(tokenizer, dataset.train_rows[:5], settings.model.max_length)
    return settings, dataset, tokenizer, features, rec.build_recommender(tokenizer, settings.model)


def test_yes_probability_reads_exactly_two_logits():
    tokens = rec.AnswerTokens(no=1, yes=3)
    logits = torch.tensor([[9.0, 0.0, 5.0, math.log(3.0)], [0.0, 2.0, -7.0, 2.0]])  # other logits must not matter
    assert rec.yes_probability(logits, tokens).tolist() == pytest.approx([0.75, 0.5])


def test_answer_window_matches_the_full_logits(tiny):
    _, _, tokenizer, features, network = tiny
    batch = rec.collate(features, tokenizer.pad_token_id)
    full = rec.forward(network, batch)  # (B, T, V)
    window, targets = rec.window_logits(network, batch), rec.window_targets(batch)
    index, _ = rec.answer_window(batch)
    assert torch.allclose(window, rec.gather_positions(full, index), atol=1e-5)
    # The window's NLLs are the package's answer NLLs: nothing outside it is scored.
    assert rec.mean_answer_nll(window, targets).item() == pytest.approx(losses.mean_nll(full, batch["labels"]).item(), abs=1e-5)
    assert torch.allclose(rec.sequence_answer_nll(window, targets), losses.sequence_nll(full, batch["labels"]), atol=1e-4)
    tokens = rec.answer_tokens(tokenizer)
    first = torch.tensor([tokens.yes if row["label"] else tokens.no for row in tiny[1].train_rows[:5]])
    assert torch.equal(targets[:, 0], first)  # the first answer token is "Yes"/"No"'s own


def test_e2urec_leaves_its_inputs_unchanged(tiny):
    from unlearnkit.recommendation.e2urec import unlearn_e2urec

    _, _, tokenizer, features, network = tiny
    before = {name: value.clone() for name, value in network.state_dict().items()}
    config = E2URecConfig(unlearn_epochs=2, unlearn_batch_size=2, lora_rank=2)
    _, record = unlearn_e2urec(network, network, features[:2], features[2:], tokenizer.pad_token_id, config, False)
    assert all(torch.equal(before[name], value) for name, value in network.state_dict().items())
    assert record["steps"] == 2 and 0 < record["trainable_parameters"] < sum(p.numel() for p in network.parameters())
    # With the augmented model equal to the original, the forgetting teacher is the original itself.
    assert record["mean_terms"]["forget_ce"] > 0


# --------------------------------------------------------------------------------------------- metrics


def test_metrics_by_hand():
    labels, scores = [0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8]
    assert metrics.roc_auc(labels, scores) == pytest.approx(0.75)  # 3 of the 4 (positive, negative) pairs are ordered
    assert metrics.roc_auc([0, 1], [0.5, 0.5]) == pytest.approx(0.5)  # a tie counts 1/2
    assert metrics.log_loss([1, 0], [0.8, 0.4]) == pytest.approx(-(math.log(0.8) + math.log(0.6)) / 2)
    assert metrics.accuracy([1, 0, 1], [0.8, 0.4, 0.5]) == pytest.approx(2 / 3)  # 0.5 is not above the threshold
    assert metrics.confidence([1, 0], [0.8, 0.4]) == pytest.approx(0.7)
    with pytest.raises(ValueError):
        metrics.roc_auc([1, 1], [0.2, 0.3])
    p, q = torch.log(torch.tensor([[0.5, 0.5]])), torch.log(torch.tensor([[0.25, 0.75]]))
    kl_pq = 0.5 * math.log(0.5 / 0.25) + 0.5 * math.log(0.5 / 0.75)
    kl_qp = 0.25 * math.log(0.25 / 0.5) + 0.75 * math.log(0.75 / 0.5)
    assert metrics.symmetrised_kl(p, q).item() == pytest.approx(0.5 * kl_pq + 0.5 * kl_qp, abs=1e-7)  # 0.137327
    assert metrics.l2_distance(p, q).item() == pytest.approx(math.sqrt(2 * 0.25**2), abs=1e-7)


def test_metrics_match_a_transcription_of_the_reference():
    """evaluate.py's JSD and L2 (with its 1e-12), AUC as a pairwise count, log-loss and accuracy as scikit-learn computes them."""
    from sklearn.metrics import accuracy_score
    from sklearn.metrics import log_loss as sk_log_loss

    generator = torch.Generator().manual_seed(1)
    prob_p = torch.softmax(torch.randn(6, 13, generator=generator, dtype=torch.float64) * 3, -1)
    prob_q = torch.softmax(torch.randn(6, 13, generator=generator, dtype=torch.float64) * 3, -1)
    jsd = 0.5 * (prob_p * torch.log((prob_p + 1e-12) / (prob_q + 1e-12))).sum(-1) \
        + 0.5 * (prob_q * torch.log((prob_q + 1e-12) / (prob_p + 1e-12))).sum(-1)
    l2 = torch.norm(prob_p - prob_q, p=2, dim=-1)
    assert torch.allclose(metrics.symmetrised_kl(prob_p.log(), prob_q.log()), jsd, atol=1e-6)
    assert torch.allclose(metrics.l2_distance(prob_p.log(), prob_q.log()), l2, atol=1e-9)

    rng = np.random.default_rng(2)
    labels = rng.integers(0, 2, 40)
    scores = np.round(rng.random(40), 1)  # rounded: ties occur
    pairs = [(s_pos > s_neg) + 0.5 * (s_pos == s_neg) for s_pos in scores[labels == 1] for s_neg in scores[labels == 0]]
    assert metrics.roc_auc(labels, scores) == pytest.approx(sum(pairs) / len(pairs))
    assert metrics.log_loss(labels, scores) == pytest.approx(sk_log_loss(labels, scores))
    assert metrics.accuracy(labels, scores) == pytest.approx(accuracy_score(labels, scores > 0.5))


# --------------------------------------------------------------------------------------------- data and bad input


def test_dataset_is_seeded_and_follows_the_template():
    config = data.RecDataConfig(num_users=4, num_items=20, history_length=10)
    first, again = data.build_dataset(config), data.build_dataset(config)
    assert first.train_rows == again.train_rows
    assert first.train_rows != data.build_dataset(data.RecDataConfig(num_users=4, num_items=20, data_seed=1)).train_rows
    row = first.train_rows[0]
    assert row["question"].count(" stars\n") == 10 and row["question"].endswith("You should ONLY tell me yes or no.")
    assert row["answer"] == ("Yes." if row["rating"] > 3 else "No.") and row["label"] == int(row["rating"] > 3)
    assert len(first.train_rows) == 4 * config.train_targets and len(first.heldout_rows) == 4 * config.test_targets


def test_user_split():
    dataset = data.build_dataset(data.RecDataConfig(num_users=10, num_items=20))
    split = data.split_users(dataset, forget_fraction=0.2, seed=0)
    assert len(split.forget) == 2 and set(split.forget) | set(split.retain) == set(range(10))
    rows = data.partition(dataset, data.split_users(dataset, users=[3, 7]))
    assert {row["user"] for row in rows["forget"]} == {3, 7} and all(row["user"] not in (3, 7) for row in rows["test"])
    with pytest.raises(UnlearnkitError, match=r"ids 0\.\.9"):
        data.split_users(dataset, users=[3, 10])
    for fraction in (0.0, 1.0, 1.5, -0.2):
        with pytest.raises(UnlearnkitError, match=r"fraction in \(0, 1\)"):
            data.split_users(dataset, forget_fraction=fraction)
    with pytest.raises(UnlearnkitError, match="forgets nobody"):
        data.split_users(dataset, forget_fraction=0.05)
    with pytest.raises(UnlearnkitError, match="leaves no retained user"):
        data.split_users(dataset, users=list(range(10)))
    with pytest.raises(UnlearnkitError, match="one way"):
        data.split_users(dataset, forget_fraction=0.2, users=[1])


@pytest.mark.parametrize(("args", "message"), [
    (["--users", "3,99"], "Unknown user id(s) 99"),
    (["--users", "3,x"], "whole-number user ids"),
    (["--forget-users", "1.5"], "fraction in (0, 1)"),
    (["--users", ",".join(map(str, range(10)))], "leaves no retained user"),
    (["--set", "alpah=2"], "alpha"),
    (["--set", "weight=1.5"], "weight must be in [0, 1]"),
])
def test_bad_input_exits_2_and_writes_nothing(tmp_path, monkeypatch, capsys, args, message):
    output = tmp_path / "out"
    assert run_cli(["recommend", "--output", str(output), *micro_args(), *args], monkeypatch) == 2
    assert message in capsys.readouterr().err
    assert not output.exists()


# --------------------------------------------------------------------------------------------- end to end


def test_recommend_end_to_end(tmp_path, monkeypatch):
    output = tmp_path / "rec"
    assert run_cli(["recommend", "--output", str(output), *micro_args()], monkeypatch) == 0
    summary = json.loads((output / "summary.json").read_text())
    config = json.loads((output / "config.json").read_text())
    predictions = json.loads((output / "predictions.json").read_text())
    assert summary["users"]["total"] == 10 and len(summary["users"]["forgotten"]) == 2  # the paper's 20%
    assert summary["rows"] == {"forget": 6, "retain": 24, "test": 16, "forget_heldout": 4}
    for name in ("original", "oracle", "augmented", "e2urec", "npo"):
        assert (output / "models" / name / "model.safetensors").is_file()
        assert summary["models"][name]["seconds"] > 0
        assert 0 <= summary["models"][name]["test"]["acc"] <= 1
    assert summary["models"]["oracle"]["forget"]["jsd_to_oracle"] == pytest.approx(0.0, abs=1e-9)
    # E2URec moves the forgotten users' answers toward the retrained model's.
    before, after = summary["forget_distance_to_oracle"]["before"], summary["forget_distance_to_oracle"]["e2urec"]
    assert after["jsd"] < before["jsd"] and summary["e2urec_moves_toward_oracle"]
    assert summary["parameters"]["e2urec_trainable"] == summary["parameters"]["npo_trainable"] < summary["parameters"]["total"]
    assert config["users"]["forget"] == summary["users"]["forgotten"] and config["settings"]["e2urec"]["alpha"] == 2.0
    assert len(predictions) == 16 + 6 and set(predictions[0]["models"]) == {"original", "oracle", "augmented", "e2urec", "npo"}
    assert len(json.loads((output / "data" / "forget.json").read_text())) == 6
    assert "E2URec" in (output / "report.md").read_text()
