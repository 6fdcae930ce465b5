"""Shared pieces for training with ``transformers.Trainer``: arguments, datasets, logging."""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import shutil
import tempfile
import weakref
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset
from transformers import PrinterCallback, ProgressCallback, Trainer, TrainerCallback, TrainingArguments
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from unlearnkit import distributed
from unlearnkit.errors import NO_SPACE_ERRNOS, UnlearnkitError
from unlearnkit.io import write_json
from unlearnkit.settings import UNLEARNKIT_OPTIMIZERS

logger = logging.getLogger("unlearnkit")

# Written into a checkpoint folder last, once everything else in it is saved: a folder without it, or whose
# files no longer match it, is never resumed from.
CHECKPOINT_SEAL = "unlearnkit-complete.json"
# Errors that mean the disk (or the user's quota) is full; what a failed write reports when it says anything.
NO_SPACE_WORDS = ("no space left on device", "os error 28", "disk quota exceeded", "os error 122")
# torch.save reports a full disk only as "file write failed": a failed checkpoint write that leaves less
# than this free on its disk is taken for a full disk.
LOW_SPACE_BYTES = 16 * 2**20


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
    checkpoints (model, optimiser, scheduler and RNG states) exist only to
    resume an interrupted run. A :class:`CheckpointedTrainer` seals each one and
    keeps the last sealed one only.
    """
    precision = precision_arguments(mixed_precision)
    # No save_total_limit: the Trainer would delete the previous checkpoint before the new one is sealed,
    # leaving nothing intact to resume from if the run dies then; CheckpointedTrainer deletes it after.
    checkpoints = (
        {"save_strategy": "steps", "save_steps": checkpoint_every}
        if checkpoint_every > 0 and checkpoint_dir is not None
        else {"save_strategy": "no"}
    )
    scratch = None if checkpoint_dir is not None else tempfile.mkdtemp(prefix="unlearnkit-trainer-")
    arguments = TrainingArguments(
        output_dir=str(checkpoint_dir) if scratch is None else scratch,
        learning_rate=learning_rate,
        # unlearnkit's own optimisers (optimizer=soul) are built by UnlearnTrainer.create_optimizer, which ignores optim;
        # TrainingArguments only knows transformers' names, so it gets a harmless one.
        optim="adamw_torch" if optimizer in UNLEARNKIT_OPTIMIZERS else optimizer,
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
    if scratch is not None:
        # The Trainer creates its output folder even when it saves nothing there: the scratch folder goes
        # when the arguments do (or at exit), so runs without checkpoints leave no empty folders behind.
        weakref.finalize(arguments, shutil.rmtree, scratch, ignore_errors=True)
    return arguments


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


class CheckpointedTrainer(Trainer):
    """A Trainer whose checkpoints can be trusted: each is sealed when complete, and a full disk is reported as such.

    After the Trainer has written checkpoint-N, every file in it is listed with
    its size and SHA-256 in ``unlearnkit-complete.json`` (written last,
    atomically), and only then are older checkpoints deleted: whatever
    interrupts a save (a kill, a full disk), the previous sealed checkpoint is
    still there. A save that fails for lack of space removes its incomplete
    folder (so the run's own files can still be written) and raises an
    ``OSError`` (``ENOSPC``) naming the folder, which the command line reports
    as a full disk instead of torch's "file write failed".
    """

    def _save_checkpoint(self, model: Any, trial: Any) -> None:
        folder = Path(self._get_output_dir(trial=trial)) / f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}"
        try:
            super()._save_checkpoint(model, trial)
            distributed.barrier()  # every process has written its share of the folder (FSDP shards, RNG states)
            if self.args.should_save:
                seal_checkpoint(folder, self.state.global_step)
                remove_other_checkpoints(folder)
        except Exception as error:
            full = disk_full_error(error, folder, writing=True)
            if full is None:
                raise
            if self.args.should_save:
                shutil.rmtree(folder, ignore_errors=True)  # never resumed from, and its space lets the run record the failure
            logger.error("the disk filled up while writing %s; the incomplete checkpoint was removed (resumable: %s)",
                         folder, newest_intact_checkpoint(folder.parent) or "none yet")
            raise full from error


def seal_checkpoint(folder: Path, step: int) -> None:
    """Write ``folder``'s completion marker: each file's size and SHA-256, so that any later damage is seen."""
    write_json(folder / CHECKPOINT_SEAL, {"step": step, "files": checkpoint_manifest(folder)})


def checkpoint_manifest(folder: Path) -> dict[str, dict[str, Any]]:
    """Every file under ``folder`` (its relative path) with its size and SHA-256, but the seal and its temporary file."""
    return {
        path.relative_to(folder).as_posix(): {"bytes": path.stat().st_size, "sha256": file_sha256(path)}
        for path in sorted(folder.rglob("*"))
        if path.is_file() and not path.name.lstrip(".").startswith(CHECKPOINT_SEAL)
    }


def file_sha256(path: Path) -> str:
    with path.open("rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def remove_other_checkpoints(keep: Path) -> None:
    """Delete every checkpoint folder beside ``keep``: older ones, and newer ones left damaged by an earlier attempt."""
    for folder in checkpoint_folders(keep.parent):
        if folder != keep:
            shutil.rmtree(folder, ignore_errors=True)


def checkpoint_folders(checkpoint_dir: Path | None) -> list[Path]:
    """The ``checkpoint-N`` folders in ``checkpoint_dir``, newest (highest N) first."""
    if checkpoint_dir is None or not Path(checkpoint_dir).is_dir():
        return []
    candidates = [path for path in Path(checkpoint_dir).glob(f"{PREFIX_CHECKPOINT_DIR}-*")
                  if path.is_dir() and path.name.rsplit("-", 1)[-1].isdigit()]
    return sorted(candidates, key=lambda path: int(path.name.rsplit("-", 1)[-1]), reverse=True)


def checkpoint_damage(folder: Path) -> str | None:
    """Why ``folder`` must not be resumed from, or None when every file is as it was when the checkpoint was sealed."""
    try:
        seal = json.loads((folder / CHECKPOINT_SEAL).read_text(encoding="utf-8"))
    except FileNotFoundError:
        return "it has no completion marker: its saving was interrupted"
    except (OSError, ValueError) as error:
        return f"its completion marker {CHECKPOINT_SEAL} is unreadable ({error})"
    files = seal.get("files") if isinstance(seal, dict) else None
    if not isinstance(files, dict) or not files:
        return f"its completion marker {CHECKPOINT_SEAL} lists no files"
    for name, expected in sorted(files.items()):
        problem = _file_damage(folder, name, expected)
        if problem is not None:
            return problem
    return None


def _file_damage(folder: Path, name: str, expected: Any) -> str | None:
    """What is wrong with one file a seal lists: a name outside the folder, missing, resized, altered or unreadable."""
    relative = Path(name)
    if relative.is_absolute() or ".." in relative.parts or not isinstance(expected, dict):
        return f"its completion marker lists an invalid entry {name!r}"
    path = folder / relative
    if not path.is_file():
        return f"file {name} is missing"
    try:
        size = path.stat().st_size
        if size != expected.get("bytes"):
            return f"file {name} holds {size} bytes where {expected.get('bytes')} were saved (truncated or overwritten)"
        if file_sha256(path) != expected.get("sha256"):
            return f"file {name} differs from the one saved (SHA-256 mismatch: corrupted)"
    except OSError as error:
        return f"file {name} cannot be read ({error.strerror or error})"
    return None


def newest_intact_checkpoint(checkpoint_dir: Path | None) -> str | None:
    """The newest checkpoint that passes :func:`checkpoint_damage`, if any (no logging, no error: a query)."""
    return next((str(folder) for folder in checkpoint_folders(checkpoint_dir) if checkpoint_damage(folder) is None), None)


def last_checkpoint(checkpoint_dir: Path | None) -> str | None:
    """The checkpoint a run resumes from: the newest intact one in ``checkpoint_dir``, None when there is none at all.

    A newer checkpoint that is damaged (its save was interrupted, a file was
    truncated or altered) is skipped with a warning and never loaded. When
    checkpoints exist but none is intact, resuming is impossible and starting
    over silently would hide that: the error says how to start over.
    """
    damaged = []
    for folder in checkpoint_folders(checkpoint_dir):
        problem = checkpoint_damage(folder)
        if problem is None:
            return str(folder)
        logger.warning("checkpoint %s is damaged (%s); skipping it", folder, problem)
        damaged.append(f"{folder.name}: {problem}")
    if damaged and checkpoint_dir is not None:
        staging = Path(checkpoint_dir).absolute().parent
        raise UnlearnkitError(
            f"The unfinished run's checkpoints in {checkpoint_dir} are all damaged ({'; '.join(damaged)}), so it cannot "
            f"resume. To start it over, rerun the command with --overwrite, which discards the unfinished run kept in "
            f"{staging} (or delete that folder)."
        )
    return None


def disk_full_error(error: BaseException, folder: Path | None = None, writing: bool = False) -> OSError | None:
    """``error`` as an ``OSError`` (ENOSPC or EDQUOT) naming ``folder`` when it means a full disk; None otherwise.

    Writers report a full disk differently: Python with ``errno``, safetensors in
    its message, torch.save only as "file write failed". The latter is recognised
    by the disk left (nearly) full under ``folder``, and only for an error raised
    while ``writing`` (or saying so), so that a bug elsewhere is never called a full disk.
    """
    chain: list[BaseException] = []
    current: BaseException | None = error
    while current is not None and current not in chain:
        chain.append(current)
        current = current.__cause__ or current.__context__
    code = next((item.errno for item in chain if isinstance(item, OSError) and item.errno in NO_SPACE_ERRNOS), None)
    if code is None and any(word in str(item).lower() for item in chain for word in NO_SPACE_WORDS):
        code = errno.EDQUOT if any("quota" in str(item).lower() for item in chain) else errno.ENOSPC
    writing = writing or any("write" in str(item).lower() for item in chain)
    if code is None and writing and folder is not None and _free_bytes(folder) < LOW_SPACE_BYTES:
        code = errno.ENOSPC
    if code is None:
        return None
    return OSError(code, os.strerror(code), str(folder) if folder is not None else getattr(error, "filename", None))


def _free_bytes(folder: Path) -> int:
    """Space left to this user on the disk holding ``folder`` (or its nearest existing parent)."""
    existing = Path(folder).absolute()
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    try:
        return shutil.disk_usage(existing).free
    except OSError:
        return LOW_SPACE_BYTES  # unknown: do not guess a full disk
