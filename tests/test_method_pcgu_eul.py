"""PCGU's gradient partitioning and EUL's unlearning layers, losses and fusion, checked against hand-computed values."""

from __future__ import annotations

import math
import random
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from unlearnkit.data.encoding import PromptFormat
from unlearnkit.errors import UnlearnkitError
from unlearnkit.evaluation.scoring import answer_avg_nll
from unlearnkit.gradients import (
    block_cosine_similarity,
    blocks_to_keep,
    expand_block_mask,
    lowest_similarity_masks,
    partitioned_gradient_masks,
)
from unlearnkit.losses import eul_forget_loss, eul_retain_loss, kl_to_reference
from unlearnkit.methods.eul import (
    ARTIFACT_FILE,
    EUL,
    EULConfig,
    UnlearningLayer,
    fold_into_linear,
    fuse_unlearning_layers,
    read_unlearning_layers,
)
from unlearnkit.methods.pcgu import PCGU, PCGUConfig
from unlearnkit.modeling import load_model, load_tokenizer, save_model
from unlearnkit.parameters import changed_parameter_names
from unlearnkit.unlearning import resolve_method, unlearn

FMT = PromptFormat("plain")

# ---------------------------------------------------------------------------
# PCGU: blocks, cosines, top-k
# ---------------------------------------------------------------------------

# A (3, 2) weight and a (2,) bias. Rows of the weight gradients, and their cosines by hand:
#   row 0: (1, 0) vs (1, 0)   -> 1
#   row 1: (0, 2) vs (0, -1)  -> -2 / (2 * 1) = -1
#   row 2: (1, 1) vs (1, -1)  -> 0 / (√2 · √2) = 0
# bias: (3, 4) vs (4, 3) -> 24 / (5 · 5) = 0.96
# Columns: col 0: (1, 0, 1) vs (1, 0, 1) -> 1; col 1: (0, 2, 1) vs (0, -1, -1) -> -3 / (√5 · √2).
WEIGHT_UPDATE = torch.tensor([[1.0, 0.0], [0.0, 2.0], [1.0, 1.0]])
WEIGHT_CONTRAST = torch.tensor([[1.0, 0.0], [0.0, -1.0], [1.0, -1.0]])
BIAS_UPDATE = torch.tensor([3.0, 4.0])
BIAS_CONTRAST = torch.tensor([4.0, 3.0])


def test_block_cosines_by_rows_and_columns() -> None:
    rows = block_cosine_similarity(WEIGHT_UPDATE, WEIGHT_CONTRAST, "rows")
    assert torch.allclose(rows, torch.tensor([1.0, -1.0, 0.0]), atol=1e-6)
    columns = block_cosine_similarity(WEIGHT_UPDATE, WEIGHT_CONTRAST, "columns")
    assert torch.allclose(columns, torch.tensor([1.0, -3.0 / math.sqrt(10.0)]), atol=1e-6)
    bias = block_cosine_similarity(BIAS_UPDATE, BIAS_CONTRAST, "rows")
    assert bias.shape == (1,) and bias.item() == pytest.approx(0.96, abs=1e-6)


def test_lowest_similarities_are_kept_over_all_parameters() -> None:
    similarities = [torch.tensor([1.0, -1.0, 0.0]), torch.tensor([0.96])]
    weight_keep, bias_keep = lowest_similarity_masks(similarities, 2)
    assert weight_keep.tolist() == [False, True, True] and bias_keep.tolist() == [False]
    weight_keep, bias_keep = lowest_similarity_masks(similarities, 3)  # -1 < 0 < 0.96 < 1
    assert weight_keep.tolist() == [False, True, True] and bias_keep.tolist() == [True]
    # k beyond the number of blocks keeps them all.
    assert all(mask.all() for mask in lowest_similarity_masks(similarities, 10_000))


def test_entry_masks_cover_whole_rows_or_columns() -> None:
    masks = partitioned_gradient_masks([WEIGHT_UPDATE, BIAS_UPDATE], [WEIGHT_CONTRAST, BIAS_CONTRAST], top_k=2, partition="rows")
    assert masks[0].tolist() == [[False, False], [True, True], [True, True]]
    assert masks[1].tolist() == [False, False]
    # Columns: the lowest two of (1, -0.949) and the bias's 0.96 are column 1 and the bias.
    masks = partitioned_gradient_masks([WEIGHT_UPDATE, BIAS_UPDATE], [WEIGHT_CONTRAST, BIAS_CONTRAST], top_k=2, partition="columns")
    assert masks[0].tolist() == [[False, True], [False, True], [False, True]]
    assert masks[1].tolist() == [True, True]
    # A parameter the loss does not reach has no mask and takes no part in the count.
    masks = partitioned_gradient_masks([None, BIAS_UPDATE], [WEIGHT_CONTRAST, BIAS_CONTRAST], top_k=1)
    assert masks[0] is None and masks[1].all()
    # Higher-dimensional parameters: rows along the last dimension, over every leading index.
    block_mask = torch.tensor([True, False, False, True])
    assert expand_block_mask(block_mask, (2, 2, 3), "rows")[1, 1].all() and not expand_block_mask(block_mask, (2, 2, 3), "rows")[0, 1].any()
    assert (expand_block_mask(block_mask, (2, 3, 2), "columns")[1, :, 1].all()
            and not expand_block_mask(block_mask, (2, 3, 2), "columns")[1, :, 0].any())


def test_a_block_the_update_leaves_alone_ranks_last() -> None:
    update = torch.tensor([[0.0, 0.0], [1.0, 0.0]])
    contrast = torch.tensor([[-1.0, 0.0], [1.0, 0.0]])  # row 0 would score -1, the lowest, were its update not zero
    similarity = block_cosine_similarity(update, contrast)
    assert math.isinf(similarity[0].item()) and similarity[1].item() == pytest.approx(1.0)
    assert lowest_similarity_masks([similarity], 1)[0].tolist() == [False, True]


def test_number_of_blocks_kept() -> None:
    assert blocks_to_keep(803, 10_000) == 803  # the authors' k exceeds a tiny model's blocks: keep all
    assert blocks_to_keep(803, 100) == 100
    assert blocks_to_keep(803, 10_000, top_fraction=0.1) == 81  # ceil(80.3)
    assert blocks_to_keep(803, None) == 803
    with pytest.raises(ValueError, match="top_fraction"):
        blocks_to_keep(803, None, top_fraction=1.5)


def test_pcgu_config_refusals() -> None:
    with pytest.raises(UnlearnkitError, match="weight_decay"):
        resolve_method("pcgu", {"weight_decay": "0.01"})
    with pytest.raises(UnlearnkitError, match="partition must be one of rows, columns"):
        resolve_method("pcgu", {"partition": "diagonal"})
    with pytest.raises(UnlearnkitError, match="top_fraction must be in"):
        resolve_method("pcgu", {"top_fraction": "0"})
    with pytest.raises(UnlearnkitError, match="top_k must be >= 1"):
        resolve_method("pcgu", {"top_k": "0"})
    with pytest.raises(UnlearnkitError, match="no LoRA form"):
        resolve_method("pcgu", {"lora_rank": "4"})
    config = resolve_method("pcgu", {"top_k": "none"})
    assert config.top_k is None and config.optimizer == "sgd" and config.learning_rate == 1e-5


def test_pcgu_contrast_is_a_perturbed_answer_to_the_same_question() -> None:
    row = {"question": "Q?", "answer": "right", "perturbed_answer": ["wrong a", "wrong b", "wrong c"]}
    drawn = {PCGU.pair_extras(PCGUConfig(), random.Random(seed), row, [])["contrast"] for seed in range(20)}
    assert {question for question, _ in drawn} == {"Q?"}
    assert {answer for _, answer in drawn} == set(row["perturbed_answer"])
    assert PCGU.pair_extras(PCGUConfig(), random.Random(3), row, []) == PCGU.pair_extras(PCGUConfig(), random.Random(3), row, [])


def test_pcgu_updates_only_the_chosen_rows(micro_bench) -> None:
    tokenizer = load_tokenizer(micro_bench.target_dir)
    model = load_model(micro_bench.target_dir)
    forget = micro_bench.split("forget10")
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    # Blocks chosen once, on the first step; plain SGD without momentum then moves those rows only.
    config = resolve_method("pcgu", {"top_k": "7", "reselect_every_step": "false", "learning_rate": "0.5", "num_epochs": "2",
                                     "batch_size": "4"})
    unlearn(model, tokenizer, "pcgu", forget, [], config, FMT, show_progress=False)
    changed_blocks = 0
    for name, parameter in model.named_parameters():
        moved = parameter.detach() != before[name]
        changed_blocks += int(moved.any()) if moved.dim() == 1 else int(moved.any(dim=-1).sum())
    assert 0 < changed_blocks <= 7


def test_pcgu_refuses_rows_without_wrong_answers(micro_bench) -> None:
    tokenizer = load_tokenizer(micro_bench.target_dir)
    model = load_model(micro_bench.target_dir)
    forget = [{**row, "perturbed_answer": []} for row in micro_bench.split("forget10")]
    with pytest.raises(UnlearnkitError, match="empty perturbed_answer"):
        unlearn(model, tokenizer, "pcgu", forget, [], resolve_method("pcgu", {}), FMT, show_progress=False)


# ---------------------------------------------------------------------------
# EUL: losses
# ---------------------------------------------------------------------------


def test_eul_loss_halves_by_hand() -> None:
    kl, nll = torch.tensor(2.0, requires_grad=True), torch.tensor(3.0, requires_grad=True)
    forget = eul_forget_loss(kl, nll, gamma=0.2, max_forget_kl=5.0)
    assert forget.item() == pytest.approx(-2.0 - 0.2 * 3.0)
    forget.backward()
    assert kl.grad.item() == -1.0 and nll.grad.item() == pytest.approx(-0.2)
    # Past the bound the KL term is the constant -5 and pushes no further.
    kl = torch.tensor(7.0, requires_grad=True)
    clamped = eul_forget_loss(kl, torch.tensor(3.0), gamma=0.2, max_forget_kl=5.0)
    assert clamped.item() == pytest.approx(-5.0 - 0.6)
    clamped.backward()
    assert kl.grad.item() == 0.0
    assert eul_retain_loss(torch.tensor(0.5), torch.tensor(2.0), alpha=0.8, lambda_task=1.0).item() == pytest.approx(0.8 * 0.5 + 2.0)
    with pytest.raises(ValueError, match="max_forget_kl"):
        eul_forget_loss(torch.tensor(1.0), torch.tensor(1.0), gamma=0.2, max_forget_kl=0.0)


def test_eul_kl_to_the_layer_free_model_by_hand() -> None:
    # One sequence, 3 positions, vocab 3; only position 2 is scored, predicted by logits[1].
    # p_base = softmax(0, 0, 0) = 1/3 each; p_θ = softmax(ln 2, 0, 0) = (1/2, 1/4, 1/4).
    base = torch.zeros(1, 3, 3, dtype=torch.float64)
    logits = torch.zeros(1, 3, 3, dtype=torch.float64)
    logits[0, 1, 0] = math.log(2.0)
    logits[0, 0] = torch.tensor([5.0, -5.0, 0.0])  # predicts an unscored label: must not count
    labels = torch.tensor([[-100, -100, 1]])
    by_hand = (math.log((1 / 3) / (1 / 2)) + 2 * math.log((1 / 3) / (1 / 4))) / 3
    assert kl_to_reference(logits, base, labels, positions="answer").item() == pytest.approx(by_hand, abs=1e-12)


# ---------------------------------------------------------------------------
# EUL: fusion and folding
# ---------------------------------------------------------------------------


def test_fusion_of_diagonal_grams_takes_each_layer_where_its_data_lies() -> None:
    # Run 1 saw only direction e0, run 2 only e1: M_mᵀ = diag(1/2, 1/3) (G1 M1ᵀ + G2 M2ᵀ) takes
    # row 0 of M1ᵀ and row 1 of M2ᵀ, i.e. column 0 of M1 and column 1 of M2.
    m1 = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    m2 = torch.tensor([[5.0, 6.0], [7.0, 8.0]])
    fused = fuse_unlearning_layers([(m1, torch.diag(torch.tensor([2.0, 0.0]))), (m2, torch.diag(torch.tensor([0.0, 3.0])))], ridge=0.0)
    assert torch.allclose(fused, torch.tensor([[1.0, 6.0], [3.0, 8.0]]))


def test_fusion_equals_the_closed_form_and_least_squares() -> None:
    m1 = torch.tensor([[1.0, 0.5], [0.0, 2.0]], dtype=torch.float64)
    m2 = torch.tensor([[0.0, 1.0], [1.0, 1.0]], dtype=torch.float64)
    x1 = torch.tensor([[1.0, 1.0], [1.0, 0.0]], dtype=torch.float64)  # G1 = [[2, 1], [1, 1]]
    x2 = torch.tensor([[0.0, 1.0], [0.0, 1.0], [1.0, 0.0]], dtype=torch.float64)  # G2 = [[1, 0], [0, 2]]
    g1, g2 = x1.T @ x1, x2.T @ x2
    assert g1.tolist() == [[2.0, 1.0], [1.0, 1.0]] and g2.tolist() == [[1.0, 0.0], [0.0, 2.0]]
    # By hand: G = G1 + G2 = [[3, 1], [1, 3]], G⁻¹ = [[3, -1], [-1, 3]] / 8.
    # G1 M1ᵀ = [[2, 1], [1, 1]] @ [[1, 0], [0.5, 2]] = [[2.5, 2], [1.5, 2]];
    # G2 M2ᵀ = [[1, 0], [0, 2]] @ [[0, 1], [1, 1]] = [[0, 1], [2, 2]]; their sum S = [[2.5, 3], [3.5, 4]].
    # M_mᵀ = G⁻¹ S = [[3·2.5 − 3.5, 3·3 − 4], [−2.5 + 3·3.5, −3 + 3·4]] / 8 = [[4, 5], [8, 9]] / 8.
    expected = torch.tensor([[4.0, 5.0], [8.0, 9.0]], dtype=torch.float64).T / 8
    fused = fuse_unlearning_layers([(m1, g1), (m2, g2)], ridge=0.0).double()
    assert torch.allclose(fused, expected, atol=1e-6)
    # The same M_m solves min Σ ‖X_i M_mᵀ − X_i M_iᵀ‖² directly.
    stacked = torch.linalg.lstsq(torch.cat([x1, x2]), torch.cat([x1 @ m1.T, x2 @ m2.T])).solution
    assert torch.allclose(fused, stacked.T, atol=1e-6)


def test_fusing_one_layer_returns_it_and_a_ridge_keeps_unseen_directions() -> None:
    weight = torch.tensor([[2.0, 5.0], [3.0, 7.0]])
    gram = torch.tensor([[2.0, 1.0], [1.0, 1.0]])
    assert torch.allclose(fuse_unlearning_layers([(weight, gram)], ridge=0.0), weight, atol=1e-6)
    assert torch.allclose(fuse_unlearning_layers([(weight, gram)]), weight, atol=1e-4)
    # G = diag(1, 0) has never seen e1: without a ridge there is no answer, with one e1 maps to itself.
    singular = torch.diag(torch.tensor([1.0, 0.0]))
    with pytest.raises(UnlearnkitError, match="ridge > 0"):
        fuse_unlearning_layers([(weight, singular)], ridge=0.0)
    ridge = 0.1
    strength = ridge * 1.0 / 2  # ridge · trace(G) / d
    # By hand: M_mᵀ = diag(1 + s, s)⁻¹ ([[2, 3], [0, 0]] + s I) = [[(2 + s)/(1 + s), 3/(1 + s)], [0, 1]].
    expected = torch.tensor([[(2 + strength) / (1 + strength), 3 / (1 + strength)], [0.0, 1.0]]).T
    assert torch.allclose(fuse_unlearning_layers([(weight, singular)], ridge=ridge), expected, atol=1e-6)
    with pytest.raises(UnlearnkitError, match="different hidden sizes"):
        fuse_unlearning_layers([(weight, gram), (torch.eye(3), torch.eye(3))])


def test_folding_a_layer_into_a_linear_with_bias_is_exact() -> None:
    torch.manual_seed(0)
    linear = nn.Linear(4, 3)
    layer = UnlearningLayer(3, 2)
    nn.init.normal_(layer.up)
    inputs = torch.randn(5, 4)
    with torch.no_grad():
        expected = layer(linear(inputs))
        fold_into_linear(linear, layer.merged_weight())
        assert torch.allclose(linear(inputs), expected, atol=1e-5)
    with pytest.raises(UnlearnkitError, match="hidden size"):
        fold_into_linear(linear, torch.eye(4))


def test_eul_refuses_conv1d_projections() -> None:
    from transformers import GPT2Config, GPT2LMHeadModel

    gpt2 = GPT2LMHeadModel(GPT2Config(vocab_size=16, n_embd=8, n_layer=1, n_head=2, n_positions=16))
    with pytest.raises(UnlearnkitError, match="Conv1D"):
        EULConfig(target_modules="c_proj").check_model(gpt2)
    with pytest.raises(UnlearnkitError, match="no LoRA form"):
        resolve_method("eul", {"lora_rank": "4"})
    with pytest.raises(UnlearnkitError, match="schedule must be one of epochs, joint"):
        resolve_method("eul", {"schedule": "steps"})


# ---------------------------------------------------------------------------
# EUL: training runs on the micro model
# ---------------------------------------------------------------------------


def run_eul(micro_bench, forget: list[dict], **overrides: str):
    tokenizer = load_tokenizer(micro_bench.target_dir)
    model = load_model(micro_bench.target_dir)
    settings = {"learning_rate": "0.03", "num_epochs": "2", "batch_size": "8", "warmup_ratio": "0", **overrides}
    outcome = unlearn(model, tokenizer, "eul", forget, micro_bench.split("retain90"), resolve_method("eul", settings), FMT,
                      show_progress=False)
    return outcome, tokenizer


def test_eul_changes_only_down_proj_and_records_forget_grams(micro_bench) -> None:
    forget = micro_bench.split("forget10")
    base = load_model(micro_bench.target_dir)
    before = {name: p.detach().clone() for name, p in base.named_parameters()}
    outcome, tokenizer = run_eul(micro_bench, forget)
    assert [name for name, _ in outcome.model.named_parameters()] == list(before)
    assert changed_parameter_names(outcome.model, before) == ["model.layers.0.mlp.down_proj.weight"]
    # Forget epoch first (a loss of −KL − γ NLL ≤ 0), then a retain epoch (α KL + λ NLL > 0): one step each.
    steps = [entry["loss"] for entry in outcome.log_history if "loss" in entry]
    assert len(steps) == 2 and steps[0] < 0 < steps[1]
    tensors = outcome.artifacts[ARTIFACT_FILE]
    weight, gram = tensors["model.layers.0.mlp.down_proj.unlearning_weight"], tensors["model.layers.0.mlp.down_proj.forget_gram"]
    # The folded weight is M @ W of the source model.
    assert torch.allclose(outcome.model.model.layers[0].mlp.down_proj.weight, weight @ before["model.layers.0.mlp.down_proj.weight"],
                          atol=1e-5)
    # One decoder layer: what enters its unlearning layer is the source model's down_proj output, so G is
    # Σ XᵀX of those outputs over the forget set's real tokens, recomputed here with a hook.
    captured = []
    hook = base.model.layers[0].mlp.down_proj.register_forward_hook(lambda module, args, output: captured.append(output))
    expected = torch.zeros_like(gram)
    with torch.no_grad():
        for row in forget:
            ids = FMT.prompt_ids(tokenizer, row["question"]) + FMT.answer_ids(tokenizer, row["answer"])
            base(input_ids=torch.tensor([ids]))
            hidden = captured.pop()[0]
            expected += hidden.T @ hidden
    hook.remove()
    assert torch.allclose(gram, expected, rtol=1e-4, atol=1e-4)


def test_eul_folding_leaves_the_outputs_unchanged(micro_bench, monkeypatch) -> None:
    inputs = torch.randint(0, 100, (2, 9), generator=torch.Generator().manual_seed(0))
    seen = {}
    original = EUL.finalize

    def finalize_and_compare(self, model):
        model.eval()
        with torch.no_grad():
            seen["with_layers"] = model(input_ids=inputs).logits
            with self.layers_bypassed():
                seen["bypassed"] = model(input_ids=inputs).logits
        folded = original(self, model)
        with torch.no_grad():
            seen["folded"] = folded(input_ids=inputs).logits
        return folded

    monkeypatch.setattr(EUL, "finalize", finalize_and_compare)
    run_eul(micro_bench, micro_bench.split("forget10"))
    assert not torch.allclose(seen["with_layers"], seen["bypassed"], atol=1e-4), "the trained layers should matter"
    assert torch.allclose(seen["folded"], seen["with_layers"], atol=1e-5)


def test_eul_raises_the_forget_nll(micro_bench) -> None:
    tokenizer = load_tokenizer(micro_bench.target_dir)
    forget = micro_bench.split("forget10")
    pairs = [(row["question"], row["answer"]) for row in forget]
    before = answer_avg_nll(load_model(micro_bench.target_dir), tokenizer, FMT, pairs).mean()
    outcome, _ = run_eul(micro_bench, forget, num_epochs="3", batch_size="4", schedule="joint")
    assert answer_avg_nll(outcome.model, tokenizer, FMT, pairs).mean() > before


def run_fuse_cli(args: list[str], monkeypatch: pytest.MonkeyPatch) -> int:
    from unlearnkit.cli import main

    monkeypatch.setattr(sys, "argv", ["unlearnkit", "--quiet", "fuse", *args])
    try:
        main()
    except SystemExit as exit_:
        return int(exit_.code or 0)
    return 0


def test_fuse_command_end_to_end(micro_bench, tmp_path: Path, monkeypatch, capsys) -> None:
    forget = micro_bench.split("forget10")
    files = []
    for index, part in enumerate((forget[:4], forget[4:])):
        outcome, tokenizer = run_eul(micro_bench, part, num_epochs="1", batch_size="4", seed=str(index))
        save_model(outcome.model, tokenizer, tmp_path / f"run{index}", outcome.artifacts)
        files.append(tmp_path / f"run{index}" / ARTIFACT_FILE)
    out = tmp_path / "fused"
    args = ["--base", str(micro_bench.target_dir), "--layers", str(files[0]), "--layers", str(files[1]), "--output", str(out)]
    assert run_fuse_cli(args, monkeypatch) == 0
    assert "fused 2 run(s) at 1 module(s)" in capsys.readouterr().out

    name = "model.layers.0.mlp.down_proj"
    runs = [read_unlearning_layers(path)[name] for path in files]
    base = load_model(micro_bench.target_dir)
    fused_model = load_model(out)
    expected = fuse_unlearning_layers(runs) @ base.get_submodule(name).weight
    assert torch.allclose(fused_model.get_submodule(name).weight, expected, atol=1e-5)
    base_weights = dict(base.named_parameters())
    assert changed_parameter_names(fused_model, {key: value.detach() for key, value in base_weights.items()}) == [f"{name}.weight"]
    # The output carries the fused layer and the summed Gram matrix, so it can be fused again.
    stored = load_file(str(out / ARTIFACT_FILE))
    assert torch.allclose(stored[f"{name}.forget_gram"], runs[0][1] + runs[1][1])

    # A layer from a model of another hidden size is refused before anything is written.
    foreign = tmp_path / "foreign.safetensors"
    save_file({f"{name}.unlearning_weight": torch.eye(16), f"{name}.forget_gram": torch.eye(16)}, str(foreign))
    args = ["--base", str(micro_bench.target_dir), "--layers", str(files[0]), "--layers", str(foreign), "--output", str(tmp_path / "bad")]
    assert run_fuse_cli(args, monkeypatch) == 2
    assert "different hidden size" in capsys.readouterr().err
    args = ["--base", str(micro_bench.target_dir), "--layers", str(foreign), "--output", str(tmp_path / "bad")]
    assert run_fuse_cli(args, monkeypatch) == 2
    assert "hidden size 16" in capsys.readouterr().err
    args = ["--base", str(micro_bench.target_dir), "--layers", str(tmp_path / "run0" / "model.safetensors.bin"),
            "--output", str(tmp_path / "bad")]
    assert run_fuse_cli(args, monkeypatch) == 2
    assert "safetensors files only" in capsys.readouterr().err
    assert not (tmp_path / "bad").exists()
