"""The LLM recommender: a causal LM that answers "Yes." or "No.", and reads p(yes) from exactly two logits.

E2URec's backbone (Wang et al., Frontiers of Computer Science, 2024) is T5-base, a sequence-to-sequence model
whose answer sits at decoder position 0. Here the model is decoder-only (a tiny Llama built from scratch by
:func:`unlearnkit.modeling.build_tiny_model`): the prompt is encoded as the package's other QA rows are
(:func:`unlearnkit.data.encoding.encode_qa`, prompt then answer then EOS), so the *answer position* is the
last prompt token, whose next-token logits (V,) predict the answer's first token. As in the reference's
``evaluate.py``, p(yes) = softmax([z_No, z_Yes])[1] over exactly those two logits, the first tokens of
"No." and "Yes.".

Batches are right-padded, and each carries an *answer window*: for row b, positions
``start_b .. start_b + A - 1`` where ``start_b`` is the answer position and A the longest answer (in tokens,
with its EOS) in the batch. The window is the decoder-only counterpart of T5's decoder positions, which the
reference's distillation losses average over, pads of shorter answers included.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from unlearnkit import losses
from unlearnkit.data.encoding import IGNORE_INDEX, PromptFormat, encode_qa
from unlearnkit.errors import UnlearnkitError
from unlearnkit.modeling import TinyModelConfig, build_tiny_model, train_tokenizer
from unlearnkit.recommendation.data import NO, YES
from unlearnkit.settings import check_field_types, check_seed, require_at_least, require_positive

logger = logging.getLogger("unlearnkit")

FORMAT = PromptFormat("plain")


@dataclass(frozen=True)
class AnswerTokens:
    """The ids of the first tokens of "No." and "Yes.": the two logits p(yes) is read from."""

    no: int
    yes: int

    def record(self, tokenizer: PreTrainedTokenizerBase) -> dict:
        return {"no": self.no, "yes": self.yes, "no_text": tokenizer.decode([self.no]), "yes_text": tokenizer.decode([self.yes])}


def answer_tokens(tokenizer: PreTrainedTokenizerBase, fmt: PromptFormat = FORMAT) -> AnswerTokens:
    """The first answer token of each answer; refused when the two share it (p(yes) would be undefined)."""
    no, yes = (fmt.answer_ids(tokenizer, answer)[0] for answer in (NO, YES))
    if no == yes:
        raise UnlearnkitError(f"The tokenizer starts {NO!r} and {YES!r} with the same token, so p(yes) cannot be read from "
                              "two logits; raise vocab_size so that each gets a token of its own.")
    return AnswerTokens(no=no, yes=yes)


def encode_rows(tokenizer: PreTrainedTokenizerBase, rows: Sequence[dict], max_length: int, fmt: PromptFormat = FORMAT) -> list[dict]:
    """Each row's ids and labels (answer only), and its answer position (the last prompt token's index)."""
    features = []
    for row in rows:
        encoded = encode_qa(tokenizer, fmt, row["question"], row["answer"], max_length)
        answer = sum(label != IGNORE_INDEX for label in encoded["labels"])
        if answer == len(encoded["input_ids"]):
            raise UnlearnkitError(f"max_length {max_length} leaves no room for the prompt; raise max_length.")
        features.append({**encoded, "answer_start": len(encoded["input_ids"]) - answer - 1, "answer_length": answer,
                         "label": int(row["label"])})
    return features


def collate(features: Sequence[dict], pad_token_id: int) -> dict[str, torch.Tensor]:
    """Right-pad a batch; shapes (B, T). T is widened so every row's answer window (the batch's longest answer) fits."""
    width_answer = max(feature["answer_length"] for feature in features)
    width = max(max(len(f["input_ids"]) for f in features), max(f["answer_start"] for f in features) + width_answer + 1)
    batch_size = len(features)
    input_ids = torch.full((batch_size, width), pad_token_id, dtype=torch.long)
    labels = torch.full((batch_size, width), IGNORE_INDEX, dtype=torch.long)
    attention_mask = torch.zeros((batch_size, width), dtype=torch.long)
    for row, feature in enumerate(features):
        length = len(feature["input_ids"])
        input_ids[row, :length] = torch.tensor(feature["input_ids"])
        labels[row, :length] = torch.tensor(feature["labels"])
        attention_mask[row, :length] = 1
    return {
        "input_ids": input_ids, "attention_mask": attention_mask, "labels": labels,
        "answer_start": torch.tensor([f["answer_start"] for f in features]),  # (B,)
        "answer_length": torch.tensor([f["answer_length"] for f in features]),  # (B,)
        "label": torch.tensor([f["label"] for f in features]),  # (B,)
    }


def answer_window(batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """(index, mask), both (B, A): the positions of each row's answer window, and 1 where the row's answer is real."""
    width = int(batch["answer_length"].max())
    offsets = torch.arange(width).unsqueeze(0)  # (1, A)
    index = batch["answer_start"].unsqueeze(1) + offsets  # (B, A)
    mask = (offsets < batch["answer_length"].unsqueeze(1)).float()  # (B, A)
    return index, mask


def gather_positions(logits: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """``logits`` (B, T, V) at ``index`` (B, A) -> (B, A, V)."""
    return logits.gather(1, index.unsqueeze(-1).expand(-1, -1, logits.shape[-1]))


def forward(model: PreTrainedModel, batch: dict[str, torch.Tensor], positions: torch.Tensor | None = None) -> torch.Tensor:
    """Logits (B, T, V) of a collated batch; with ``positions`` (P,), only those positions' logits (B, P, V).

    The output head is the costliest layer of a tiny model over a long prompt, and the losses need a
    handful of positions: ``logits_to_keep`` runs it there only.
    """
    keep = {} if positions is None else {"logits_to_keep": positions}
    return model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], **keep).logits


def window_logits(model: PreTrainedModel, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Logits (B, A, V) over each row's answer window (the head runs on the union of the windows' positions only)."""
    index, _ = answer_window(batch)
    index = index.to(batch["input_ids"].device)
    positions = torch.unique(index)  # (P,), sorted
    kept = forward(model, batch, positions)  # (B, P, V)
    return gather_positions(kept, torch.searchsorted(positions, index))


def window_targets(batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """(B, A): the answer token each window position predicts, IGNORE_INDEX past the row's answer."""
    index, mask = answer_window(batch)
    index = index.to(batch["labels"].device)
    targets = batch["labels"].gather(1, (index + 1).clamp(max=batch["labels"].shape[1] - 1))
    return torch.where(mask.to(targets.device).bool(), targets, torch.full_like(targets, IGNORE_INDEX))


def answer_nll(logits: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(nll, mask), both (B, A): −log p(answer token) at each window position (0 past the answer), and the real-token mask.

    Summed over a row this is ``losses.sequence_nll`` of the row; summed over the batch and divided by the mask's
    sum it is ``losses.mean_nll`` (the window holds every scored position, so nothing else differs).
    """
    nll = torch.nn.functional.cross_entropy(losses.at_least_float32(logits).transpose(1, 2), targets,
                                            ignore_index=IGNORE_INDEX, reduction="none")
    return nll, (targets != IGNORE_INDEX).float()


def mean_answer_nll(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean NLL over every answer token of the batch (the standard LM loss on the answers)."""
    nll, mask = answer_nll(logits, targets)
    return nll.sum() / mask.sum()


def sequence_answer_nll(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Per-row sum of the answer tokens' NLL, −log π(y | x); (B,)."""
    nll, _ = answer_nll(logits, targets)
    return nll.sum(dim=1)


def yes_probability(answer_logits: torch.Tensor, tokens: AnswerTokens) -> torch.Tensor:
    """p(yes) (N,) = softmax([z_No, z_Yes])[1] from the answer position's logits (N, V), as the reference reads it."""
    pair = losses.at_least_float32(answer_logits[:, [tokens.no, tokens.yes]])  # (N, 2)
    return torch.softmax(pair, dim=-1)[:, 1]


def batches(features: Sequence[dict], batch_size: int, generator: torch.Generator | None = None) -> Iterator[list[dict]]:
    """Consecutive batches of ``features``, in a shuffled order when ``generator`` is given (a fresh order per call)."""
    order = torch.randperm(len(features), generator=generator).tolist() if generator is not None else range(len(features))
    order = list(order)
    for start in range(0, len(order), batch_size):
        yield [features[i] for i in order[start:start + batch_size]]


@torch.no_grad()
def answer_log_probs(model: PreTrainedModel, features: Sequence[dict], pad_token_id: int, batch_size: int = 32) -> torch.Tensor:
    """Full-vocabulary log-probabilities (N, V) at each row's answer position, float32 on the CPU."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    out = []
    try:
        for chunk in batches(features, batch_size):
            batch = collate(chunk, pad_token_id)
            starts = batch["answer_start"].to(device)
            positions = torch.unique(starts)  # (P,)
            logits = forward(model, {key: value.to(device) for key, value in batch.items()}, positions)  # (B, P, V)
            at_answer = logits[torch.arange(len(chunk), device=device), torch.searchsorted(positions, starts)]  # (B, V)
            out.append(torch.log_softmax(losses.at_least_float32(at_answer), dim=-1).float().cpu())
    finally:
        model.train(was_training)
    return torch.cat(out)


def trainable_parameters(model: torch.nn.Module) -> list[torch.nn.Parameter]:
    return [parameter for parameter in model.parameters() if parameter.requires_grad]


def count_trainable(model: torch.nn.Module) -> int:
    return sum(parameter.numel() for parameter in trainable_parameters(model))


def train_loop(
    model: PreTrainedModel,
    steps: Sequence[Callable[[], torch.Tensor]] | Iterator[Callable[[], torch.Tensor]],
    total_steps: int,
    learning_rate: float,
    weight_decay: float,
    desc: str,
    show_progress: bool,
    max_grad_norm: float | None = None,
    schedule: str = "constant",
) -> dict:
    """AdamW over the trainable parameters; each element of ``steps`` returns one batch's loss. Returns seconds and losses.

    ``schedule``: "constant" (E2URec's unlearning, as its code: no scheduler) or "linear" (decay to 0).
    """
    from tqdm.auto import tqdm

    parameters = trainable_parameters(model)
    optimizer = torch.optim.AdamW(parameters, lr=learning_rate, weight_decay=weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, (lambda step: max(0.0, 1.0 - step / max(1, total_steps))) if schedule == "linear" else (lambda step: 1.0))
    model.train()
    history: list[float] = []
    started = time.perf_counter()
    bar = tqdm(total=total_steps, desc=desc, disable=not show_progress, leave=False)
    for step in steps:
        optimizer.zero_grad(set_to_none=True)
        loss = step()
        value = float(loss.detach())
        if not math.isfinite(value):
            raise UnlearnkitError(f"{desc}: the loss became {value} at step {len(history) + 1}; lower the learning rate.")
        loss.backward()
        if max_grad_norm is not None:
            torch.nn.utils.clip_grad_norm_(parameters, max_grad_norm)
        optimizer.step()
        scheduler.step()
        history.append(value)
        bar.update(1)
        bar.set_postfix(loss=f"{value:.4f}")
    bar.close()
    model.eval()
    seconds = time.perf_counter() - started
    logger.info("%s: %d steps in %.1f s, last loss %.4f", desc, len(history), seconds, history[-1] if history else float("nan"))
    return {"steps": len(history), "seconds": seconds, "first_loss": history[0] if history else None,
            "last_loss": history[-1] if history else None}


def train_nll(
    model: PreTrainedModel,
    features: Sequence[dict],
    pad_token_id: int,
    *,
    epochs: int,
    batch_size: int,
    learning_rate: float,
    weight_decay: float = 0.0,
    seed: int = 0,
    desc: str = "training",
    show_progress: bool = True,
    schedule: str = "linear",
) -> dict:
    """Train ``model`` in place with the mean answer-token NLL on ``features``: every trainable weight."""
    if not features:
        raise UnlearnkitError(f"{desc}: no rows to train on.")
    generator = torch.Generator().manual_seed(seed)
    device = next(model.parameters()).device

    def steps() -> Iterator[Callable[[], torch.Tensor]]:
        for _ in range(epochs):
            for chunk in batches(features, batch_size, generator):
                batch = {key: value.to(device) for key, value in collate(chunk, pad_token_id).items()}
                yield lambda batch=batch: mean_answer_nll(window_logits(model, batch), window_targets(batch))

    total = epochs * math.ceil(len(features) / batch_size)
    return train_loop(model, steps(), total, learning_rate, weight_decay, desc, show_progress, max_grad_norm=1.0, schedule=schedule)


@dataclass(frozen=True)
class RecModelConfig:
    """The recommender's size and how the original and the retrained model are trained (every weight, from scratch)."""

    vocab_size: int = field(default=512, metadata={"help": "Byte-level BPE vocabulary trained on the prompts."})
    hidden_size: int = field(default=32, metadata={"help": "Width of the tiny Llama."})
    intermediate_size: int = field(default=64, metadata={"help": "Width of its MLP."})
    num_layers: int = field(default=1, metadata={"help": "Decoder layers."})
    num_heads: int = field(default=2, metadata={"help": "Attention heads (must divide hidden_size)."})
    max_length: int = field(default=320, metadata={"help": "Maximum tokens per prompt and answer (the prompt is cut from the left)."})
    train_epochs: int = field(default=40, metadata={"help": "Epochs of the original model on all rows, and of the retrained one on D_r."})
    train_learning_rate: float = field(default=1e-2, metadata={"help": "Peak learning rate (linear decay) of those two trainings."})
    train_batch_size: int = field(default=8, metadata={"help": "Rows per step of those two trainings."})
    seed: int = field(default=0, metadata={"help": "Seed of the initial weights (shared by original and retrained) and batch order."})

    def __post_init__(self) -> None:
        check_field_types(self)
        require_at_least(8, vocab_size=self.vocab_size)
        require_at_least(1, hidden_size=self.hidden_size, intermediate_size=self.intermediate_size, num_layers=self.num_layers,
                         num_heads=self.num_heads, train_epochs=self.train_epochs, train_batch_size=self.train_batch_size)
        require_at_least(16, max_length=self.max_length)
        require_positive(train_learning_rate=self.train_learning_rate)
        if self.hidden_size % self.num_heads:
            raise UnlearnkitError(f"hidden_size {self.hidden_size} must be divisible by num_heads {self.num_heads}.")
        check_seed("seed", self.seed)

    def tiny(self) -> TinyModelConfig:
        return TinyModelConfig(vocab_size=self.vocab_size, hidden_size=self.hidden_size, intermediate_size=self.intermediate_size,
                               num_layers=self.num_layers, num_heads=self.num_heads, max_length=self.max_length)


def build_recommender(tokenizer: PreTrainedTokenizerBase, config: RecModelConfig) -> PreTrainedModel:
    """A freshly initialised tiny Llama (seeded: the original and the retrained model start from the same weights)."""
    return build_tiny_model(config.tiny(), tokenizer, config.seed)


def recommender_tokenizer(rows: Sequence[dict], config: RecModelConfig) -> PreTrainedTokenizerBase:
    """A byte-level BPE trained on every prompt and answer of ``rows`` (with the plain format's "Question:/Answer:" text).

    The two answers are added again, as often as the prompts' own words, so that " Yes" and " No" are merged into
    tokens of their own even in a small vocabulary (p(yes) is read from their two logits).
    """
    texts = [f"Question: {row['question']}\nAnswer: {row['answer']}" for row in rows]
    texts += [f" {YES} {NO}"] * (20 * len(rows))
    return train_tokenizer(texts, config.vocab_size)
