"""Shared pieces for training with ``transformers.Trainer``: arguments, datasets, logging."""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset
from transformers import PrinterCallback, ProgressCallback, Trainer, TrainerCallback, TrainingArguments

from unlearnkit.errors import UnlearnkitError

logger = logging.getLogger("unlearnkit")


class ListDataset(Dataset):
    """A map-style dataset over a list of ready-made items (already tokenised)."""

    def __init__(self, items: Sequence[Any]) -> None:
        self.items = list(items)

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> Any:
        return self.items[index]


def training_arguments(
    *,
    learning_rate: float,
    num_epochs: float,
    batch_size: int,
    gradient_accumulation_steps: int,
    weight_decay: float,
    warmup_ratio: float,
    lr_scheduler: str,
    max_grad_norm: float,
    seed: int,
    show_progress: bool,
    logging_steps: int = 10,
    checkpoint_dir: Path | None = None,
    checkpoint_every: int = 0,
    optimizer: str = "adamw_torch",
    gradient_checkpointing: bool = False,
    mixed_precision: str = "no",
) -> TrainingArguments:
    """TrainingArguments without external loggers; checkpoints every ``checkpoint_every`` steps into ``checkpoint_dir``.

    ``gradient_checkpointing`` recomputes layer activations in the backward pass
    (non-reentrant checkpointing: it needs no input that requires grad, so LoRA and
    frozen-base methods get their gradients, and ``torch.autograd.grad`` works);
    ``mixed_precision`` ("no", "bf16", "fp16") autocasts the forward passes.

    unlearnkit saves the final model itself (atomically); the Trainer's
    checkpoints (model, optimiser, scheduler and RNG states, the last one kept)
    exist only to resume an interrupted run.
    """
    precision = precision_arguments(mixed_precision)
    checkpoints = (
        {"save_strategy": "steps", "save_steps": checkpoint_every, "save_total_limit": 1}
        if checkpoint_every > 0 and checkpoint_dir is not None
        else {"save_strategy": "no"}
    )
    return TrainingArguments(
        output_dir=str(checkpoint_dir) if checkpoint_dir is not None else tempfile.mkdtemp(prefix="unlearnkit-trainer-"),
        learning_rate=learning_rate,
        optim=optimizer,
        num_train_epochs=num_epochs,
        per_device_train_batch_size=batch_size,
        gradient_accumulation_steps=gradient_accumulation_steps,
        weight_decay=weight_decay,
        lr_scheduler_type=lr_scheduler,
        max_grad_norm=max_grad_norm,
        seed=seed,
        data_seed=seed,
        eval_strategy="no",
        report_to=[],
        logging_strategy="steps",
        logging_steps=logging_steps,
        disable_tqdm=not show_progress,
        remove_unused_columns=False,
        dataloader_num_workers=0,
        use_cpu=not torch.cuda.is_available(),
        # transformers 5 reads a warmup_steps value below 1 as a fraction of all steps.
        warmup_steps=warmup_ratio,
        activation_checkpointing=gradient_checkpointing,
        activation_checkpointing_kwargs={"use_reentrant": False} if gradient_checkpointing else None,
        **precision,
        **checkpoints,
    )


def precision_arguments(mixed_precision: str) -> dict[str, bool]:
    """TrainingArguments' ``bf16``/``fp16`` flags, refusing a precision this machine cannot train in."""
    if mixed_precision == "no":
        return {}
    if mixed_precision == "fp16":
        if not torch.cuda.is_available():
            raise UnlearnkitError(
                "mixed_precision=fp16 needs a CUDA GPU (its loss scaling is GPU-only) and none is visible. "
                "Use mixed_precision=bf16 (runs on CPU) or 'no'."
            )
        return {"fp16": True}
    if mixed_precision == "bf16":
        if torch.cuda.is_available() and not torch.cuda.is_bf16_supported():
            raise UnlearnkitError("mixed_precision=bf16 needs a GPU with bfloat16 support (Ampere or newer); use fp16 or 'no'.")
        return {"bf16": True}
    raise UnlearnkitError(f"mixed_precision must be 'no', 'bf16' or 'fp16', got {mixed_precision!r}.")


class LogHistoryCallback(TrainerCallback):
    """Copies the Trainer's log lines (loss, learning rate, ...) to the unlearnkit logger, at debug level.

    The full history is saved as ``training_log.json``; the console keeps the progress bar only.
    """

    def on_log(self, args, state, control, logs=None, **kwargs):  # noqa: ANN001 - Trainer callback signature
        if logs:
            values = ", ".join(f"{key}={value:.4g}" if isinstance(value, float) else f"{key}={value}" for key, value in logs.items())
            logger.debug("step %d: %s", state.global_step, values)


class _ProgressBarOnly(ProgressCallback):
    """The Trainer's progress bar without the dict it prints under the bar at every log step."""

    def on_log(self, args, state, control, logs=None, **kwargs):  # noqa: ANN001 - Trainer callback signature
        return None


def quiet_trainer(trainer: Trainer) -> Trainer:
    """Keep the progress bar, drop the Trainer's printed log dicts: our logger records them."""
    trainer.remove_callback(PrinterCallback)
    if trainer.pop_callback(ProgressCallback) is not None:
        trainer.add_callback(_ProgressBarOnly)
    return trainer


def last_checkpoint(checkpoint_dir: Path | None) -> str | None:
    """The newest complete ``checkpoint-N`` folder in ``checkpoint_dir``, if any.

    The Trainer writes ``trainer_state.json`` last, so a folder without it is a
    checkpoint that a crash interrupted; the one before it is used instead.
    """
    if checkpoint_dir is None or not Path(checkpoint_dir).is_dir():
        return None
    candidates = [path for path in Path(checkpoint_dir).glob("checkpoint-*") if path.name.split("-")[-1].isdigit()]
    for path in sorted(candidates, key=lambda p: int(p.name.split("-")[-1]), reverse=True):
        if (path / "trainer_state.json").is_file():
            return str(path)
    return None
