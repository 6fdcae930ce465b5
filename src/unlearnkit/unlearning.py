"""Run one unlearning method on a model: the library entry point behind ``unlearnkit unlearn``."""

from __future__ import annotations

import copy
import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase, TrainerCallback, set_seed

from unlearnkit import distributed
from unlearnkit.data.checks import forget_retain_overlap
from unlearnkit.data.encoding import PairedCollator, PromptFormat
from unlearnkit.data.shipped import load_idk_answers
from unlearnkit.errors import UnlearnkitError
from unlearnkit.localization import Localization, check_fits, load_localization, neuron_masks, selected_parameters
from unlearnkit.localization.base import LOCALIZATION_FILE, SCORES_FILE
from unlearnkit.methods import METHODS, MethodConfig
from unlearnkit.methods.base import EpochToDataset, PairedDataset, UnlearnTrainer, preset_settings
from unlearnkit.parameters import apply_lora, is_lora_model, restrict_trainable, selected_parameter_names
from unlearnkit.settings import build_config
from unlearnkit.training import LogHistoryCallback, last_checkpoint, quiet_trainer, training_arguments

logger = logging.getLogger("unlearnkit")

# A run whose forget loss moved by less than this fraction of its starting value barely changed the model. Measured on
# the micro benchmark's target (a tiny-model conclusion): with the authors' lr 1e-5 every method's forget loss moved by
# 3.6% or less; with the benchmark's tiny-model settings by 14-290%, except EUL's and WHP's (under 1%, flagged; on the
# default benchmark their forget probability hardly moves either, docs/methods.md).
STALLED_FORGET_LOSS = 0.05
# Fewer optimiser steps than this leave warm-up and the learning-rate schedule almost no room.
FEW_STEPS = 10
# Where the README lists learning rates and epochs per model size.
STARTING_POINTS = "README, 'Starting points per model size'"


@dataclass
class UnlearnOutcome:
    model: PreTrainedModel
    config: MethodConfig
    log_history: list[dict[str, Any]]
    # Extra tensors the method produced (file name -> tensors), saved with safetensors next to the model.
    artifacts: dict[str, dict[str, Any]] = field(default_factory=dict)
    # When training sharded the weights (FSDP, DeepSpeed ZeRO-3): the full weights to save, on the main process
    # (``model`` then holds a shard only). None when each process holds the whole model.
    state_dict: dict[str, Any] | None = None
    # Why the run may have done little (see :func:`training_warnings`); also in the summary line of ``log_history``.
    warnings: list[str] = field(default_factory=list)


def resolve_method(method: str, overrides: Mapping[str, Any], defaults: Mapping[str, Any] | None = None) -> MethodConfig:
    """Look the method up and build its config: every naming or value error surfaces before any loading.

    ``defaults`` (e.g. a benchmark's settings for the method) go under ``overrides``. A ``preset`` in
    either stands for its settings, placed just under the values given with it: ``--set preset=tiny``
    on the built-in model replaces the benchmark's values by the preset's, and any other ``--set`` wins.
    """
    config_cls = METHODS.get(method).config
    layered: dict[str, Any] = {}
    for layer in (defaults or {}, overrides):
        layered.update(preset_settings(config_cls, layer.get("preset")))
        layered.update(layer)
    return build_config(config_cls, layered)


def check_retain_given(method: str, retain: Sequence[dict]) -> None:
    if METHODS.get(method).needs_retain and not retain:
        raise UnlearnkitError(f"Method {method!r} needs retain data; pass --retain (a split name or a file).")


def check_overlap(forget: Sequence[dict], retain: Sequence[dict], policy: str) -> None:
    """Forget questions that also appear in the retain data pull the model both ways: refuse or warn."""
    if policy not in ("refuse", "warn"):
        raise UnlearnkitError(f"--on-overlap must be 'refuse' or 'warn', got {policy!r}.")
    findings = forget_retain_overlap(forget, retain)
    if not findings:
        return
    shared = findings[0].rows
    message = (f"{len(shared)} forget question(s) also appear in the retain data, compared ignoring case and spacing "
               f"(e.g. forget row {shared[0]}: {forget[shared[0] - 1]['question']!r}).")
    if policy == "refuse":
        raise UnlearnkitError(f"{message} Remove them from one side, or pass --on-overlap warn to go on.")
    logger.warning("%s Going on as --on-overlap warn asks.", message)


def check_method_inputs(
    method: str,
    config: MethodConfig,
    forget: Sequence[dict],
    retain: Sequence[dict],
    model: PreTrainedModel | None = None,
    tokenizer: PreTrainedTokenizerBase | None = None,
    fmt: PromptFormat | None = None,
) -> None:
    """Everything about the data, options and model a method can refuse before any training (and any output).

    Called with what is known so far (data, then the model and its tokenizer); each call checks all it can.
    """
    spec = METHODS.get(method)
    check_retain_given(method, retain)
    config.check_data(forget, retain)
    per_device_batch_size(config.batch_size, distributed.world_size())  # an uneven split over processes
    missing = [name for name in spec.trainer.required_forget_fields if forget and name not in forget[0]]
    if missing:
        raise UnlearnkitError(
            f"Method {method!r} needs the field(s) {', '.join(missing)} in every forget row, and the forget data has "
            f"{', '.join(sorted(forget[0]))}. Use a forget set with {', '.join(missing)} (the built-in splits have them) "
            "or choose another method."
        )
    if config.uses_lora and not spec.trainer.supports_lora:
        raise UnlearnkitError(f"Method {method!r} changes the model's own weights in its own way and has no LoRA form; "
                              "set lora_rank=0.")
    method_localization(method, config)  # a missing or damaged localization folder, or a method that cannot use one
    if model is not None:
        config.check_model(model)  # first: a method's own option (RMU's layer) names what to change more precisely
        selected_parameter_names(model, config.selection())  # a layer past the model's depth or an unknown module
        method_localization(method, config, model)  # made on this model, and something in it to train
    if tokenizer is not None and fmt is not None:
        config.check_encoded(tokenizer, fmt, forget)


def method_localization(method: str, config: MethodConfig, model: PreTrainedModel | None = None) -> Localization | None:
    """The localization ``config.localize`` names, read and checked; None without one.

    Refused: a method that chooses or adds the weights it trains itself (it has no LoRA form, or its own
    layer selection, like RMU's ``layer``) unless it reads the localization itself (:func:`reads_localization`);
    a neuron- or weight-level selection under LoRA (LoRA's factors have no rows of the original weight);
    given ``model``, a localization made on another model or one selecting nothing this run can train.
    """
    if config.localizer is not None:
        check_localization_use(method, config)
    if config.localize is None:
        return None
    check_localization_use(method, config)
    localization = load_checked_localization(config.localize)
    check_usable(method, config, localization, model, f"The localization {config.localize}")
    return localization


def check_localization_use(method: str, config: MethodConfig) -> None:
    """Refuse a localization (saved or inline) for a method that chooses the weights it changes itself."""
    spec = METHODS.get(method)
    if config.localizer is not None and reads_localization(method):
        raise UnlearnkitError(f"Method {method!r} reads where to edit from a saved localization: run `unlearnkit localize "
                              f"MODEL --data FORGET --localizer {config.localizer} --output DIR` and pass --localize DIR.")
    if not reads_localization(method) and (not spec.trainer.supports_lora or type(config).selection is not MethodConfig.selection):
        option = "localize (--localize)" if config.localize is not None else "localizer"
        raise UnlearnkitError(
            f"Method {method!r} chooses the weights it changes itself (its own layers or its own selection), so a "
            f"localization has no use there; drop {option}, or choose a method that trains the model's weights."
        )


def check_usable(method: str, config: MethodConfig, localization: Localization, model: PreTrainedModel | None, named: str) -> None:
    """A localization this run can train: no neurons under LoRA; given ``model``, made on it and selecting something."""
    if config.uses_lora and localization.selection.has_neurons:
        raise UnlearnkitError(
            f"{named} selects single neurons or weights, and LoRA's low-rank factors have no rows "
            "or columns of the original weights to restrict. Set lora_rank=0 (full fine-tuning of the located weights), or "
            "localize with a layer/module-level selection."
        )
    if model is not None:
        check_fits(localization, model, named)
        if not config.uses_lora and not reads_localization(method):
            localized_parameters(model, localization)


def inline_localization(method: str, config: MethodConfig, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase,
                        forget: Sequence[dict], fmt: PromptFormat) -> Localization | None:
    """The ``localizer`` setting's localization: that localizer (default settings) run on the forget set; None without one.

    Runners call it before their results folder exists, so that rows the localizer refuses (no subject, say) or a
    selection the run cannot train write nothing; the model is left as it was (in eval mode).
    """
    if config.localizer is None:
        return None
    from unlearnkit.localization import LOCALIZERS
    from unlearnkit.settings import build_config

    check_localization_use(method, config)
    spec = LOCALIZERS.get(config.localizer)
    model.eval()
    logger.info("localizing inline with %s on the %d forget row(s)", config.localizer, len(forget))
    localization = spec.function(model, tokenizer, list(forget), fmt, build_config(spec.config, {}, what="localizer setting"))
    model.zero_grad(set_to_none=True)  # a gradient-based localizer's gradients must not reach the first training step
    check_usable(method, config, localization, model, f"The {config.localizer} localization of the forget set")
    return localization


def reads_localization(method: str) -> bool:
    """Whether the method reads ``localize`` itself (an editor editing the located layer) rather than training only the selection.

    Such a method's trainer class says so with ``reads_localization = True``; ``unlearn`` then leaves the choice of
    weights to the method's own ``selection()``.
    """
    return bool(getattr(METHODS.get(method).trainer, "reads_localization", False))


def load_checked_localization(folder: str | Path) -> Localization:
    """:func:`load_localization`, also refusing a folder whose score file is missing or lacks a score its manifest lists."""
    folder = Path(folder)
    listed: list[str] = []
    if folder.is_dir() and (folder / LOCALIZATION_FILE).is_file():
        try:
            listed = json.loads((folder / LOCALIZATION_FILE).read_text(encoding="utf-8")).get("scores") or []
        except (OSError, UnicodeDecodeError, ValueError, AttributeError):
            listed = []  # load_localization names what is wrong with the manifest
        if listed and not (folder / SCORES_FILE).is_file():
            raise UnlearnkitError(f"The localization {folder} is incomplete: {SCORES_FILE} is missing. Run `unlearnkit localize` again.")
    elif not folder.exists():
        raise UnlearnkitError(f"The localization folder {folder} does not exist. Create it with `unlearnkit localize MODEL --data SRC "
                              "--localizer NAME --output DIR`.")
    localization = load_localization(folder)
    missing = [name for name in listed if name not in localization.scores]
    if missing:
        raise UnlearnkitError(f"The localization {folder} is incomplete: {SCORES_FILE} lacks {', '.join(missing[:3])}. "
                              "Run `unlearnkit localize` again.")
    return localization


def localized_parameters(model: PreTrainedModel, localization: Localization) -> list[str]:
    """The parameters a localized full fine-tuning trains; refused when the selection holds none."""
    names = selected_parameters(model, localization.selection)
    if not names:
        raise UnlearnkitError("The localization selects no parameter of this model (its neurons lie outside its layers and "
                              "modules); run `unlearnkit localize` again.")
    return names


class MaskedTraining(TrainerCallback):
    """Train only the located entries of the masked parameters; every other entry keeps its value bit for bit.

    Two mechanisms, as each alone leaves a gap. A gradient hook zeroes the gradient outside the mask, so that
    the clipping norm counts only the trained entries and Adam's moments stay zero there. But an optimiser
    moves weights that have a zero gradient: AdamW's decoupled weight decay (``w -= lr * wd * w``), SGD's
    coupled decay and momentum. So after each optimiser step the entries outside the mask are written back
    from a copy taken before training.
    """

    def __init__(self, model: torch.nn.Module, masks: Mapping[str, torch.Tensor]) -> None:
        parameters = dict(model.named_parameters())
        self.entries = [(parameters[name], mask, parameters[name].detach()[~mask].clone()) for name, mask in masks.items()]
        self.handles = [parameter.register_hook(partial(_zero_outside, mask)) for parameter, mask, _ in self.entries]
        self.trained = sum(int(mask.sum()) for _, mask, _ in self.entries)
        self.total = sum(mask.numel() for _, mask, _ in self.entries)

    @torch.no_grad()
    def restore(self) -> None:
        for parameter, mask, frozen in self.entries:
            parameter[~mask] = frozen

    def on_optimizer_step(self, args, state, control, **kwargs):  # noqa: ANN001 - Trainer callback signature
        self.restore()

    def remove(self) -> None:
        """Hand the model back without hooks (and with the frozen entries as they were)."""
        self.restore()
        for handle in self.handles:
            handle.remove()
        self.handles = []


def _zero_outside(mask: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
    # masked_fill, not a product: a non-finite gradient entry outside the mask must not leak in as NaN (NaN * 0 = NaN).
    return grad.masked_fill(~mask, 0)


def per_device_batch_size(batch_size: int, processes: int) -> int:
    """Forget examples per process and micro-batch, so that ``processes`` processes together see ``batch_size``.

    ``batch_size`` counts the forget examples of one micro-batch summed over all
    processes; an optimiser step sees ``batch_size * gradient_accumulation_steps``
    of them whatever the number of processes, so a run on 8 GPUs follows the
    same schedule (steps, learning rate, data order) as on one.
    """
    if batch_size % processes:
        lower = batch_size // processes * processes
        options = sorted({value for value in (lower, lower + processes) if value > 0})
        raise UnlearnkitError(
            f"batch_size {batch_size} does not split evenly over {processes} processes: each must get the same number "
            f"of forget examples. Set batch_size to a multiple of {processes} (e.g. {' or '.join(map(str, options))}), "
            "or run with another number of processes."
        )
    return batch_size // processes


def unlearn(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    method: str,
    forget: Sequence[dict],
    retain: Sequence[dict],
    config: MethodConfig,
    fmt: PromptFormat = PromptFormat(),
    show_progress: bool = True,
    checkpoint_dir: Path | None = None,
    checkpoint_every: int = 0,
    callbacks: Sequence[TrainerCallback] = (),
    localization: Localization | None = None,
) -> UnlearnOutcome:
    """Unlearn ``forget`` from ``model`` (in place) with ``method``; returns the model and the training log.

    ``localization``: the ``localizer`` setting's localization when the caller computed it already
    (:func:`inline_localization`); otherwise it is computed here, and ``localize`` is read from its folder.

    With ``checkpoint_every`` > 0, a checkpoint is written to ``checkpoint_dir``
    every that many steps, and a run that finds one there resumes from it.
    ``callbacks`` are added to the Trainer's (e.g. :class:`unlearnkit.evaluation.tracking.EvalTracker`).
    """
    spec = METHODS.get(method)
    if not isinstance(config, spec.config):
        raise TypeError(f"method {method!r} takes a {spec.config.__name__}, got {type(config).__name__}.")
    check_method_inputs(method, config, forget, retain, model, tokenizer, fmt)
    batch_size = per_device_batch_size(config.batch_size, distributed.world_size())
    if localization is None:
        localization = method_localization(method, config, model) or inline_localization(method, config, model, tokenizer, forget, fmt)
    if reads_localization(method):
        localization = None  # the method edits where the localization points itself; its selection() says what changes
    selection = localization.selection.module_selection if localization is not None else config.selection()
    masks: dict[str, torch.Tensor] = {}
    if config.uses_lora:
        # The base weights stay frozen under LoRA, so the model with adapters off serves as the reference.
        reference = None
        # LoRA draws its initial A factors from the global generator: seed it, so that a seed gives the same run.
        set_seed(config.seed)
        model = apply_lora(model, selection, config.lora_rank, config.lora_alpha, config.lora_dropout)
    else:
        # Validate the selection before copying the model (a bad layer index fails here, before any training).
        trainable = localized_parameters(model, localization) if localization is not None else selected_parameter_names(model, selection)
        if localization is not None:
            masks = {name: mask for name, mask in neuron_masks(model, localization).items() if name in trainable}
        # The frozen reference is the model as it is before any update.
        reference = copy.deepcopy(model) if config.needs_reference() else None
        restrict_trainable(model, trainable)
    dataset = PairedDataset(
        tokenizer,
        fmt,
        forget,
        retain if spec.needs_retain else [],
        load_idk_answers() if spec.needs_idk else [],
        config.max_length,
        config.seed,
        extras=partial(spec.trainer.pair_extras, config) if _overrides_pair_extras(spec.trainer) else None,
    )
    args = training_arguments(
        learning_rate=config.learning_rate,
        num_epochs=config.num_epochs,
        batch_size=batch_size,
        gradient_accumulation_steps=config.gradient_accumulation_steps,
        weight_decay=config.weight_decay,
        warmup_ratio=config.warmup_ratio,
        lr_scheduler=config.lr_scheduler,
        max_grad_norm=config.max_grad_norm,
        seed=config.seed,
        show_progress=show_progress,
        logging_steps=1,  # unlearning runs are short; every step's losses feed the training curves
        checkpoint_dir=checkpoint_dir,
        checkpoint_every=checkpoint_every,
        optimizer=config.optimizer,
        gradient_checkpointing=config.gradient_checkpointing,
        mixed_precision=config.mixed_precision,
    )
    model.train()
    trainer = spec.trainer(
        model=model,
        args=args,
        train_dataset=dataset,
        data_collator=PairedCollator(tokenizer.pad_token_id),
        callbacks=[LogHistoryCallback(), EpochToDataset(dataset), *callbacks],
        method_config=config,
        reference_model=reference,
    )
    quiet_trainer(trainer)
    trainer.setup()
    # After setup: a method's helper copies of the model (WHP's reinforced model) train in full, as the method says.
    masked = MaskedTraining(model, masks) if masks else None
    if masked is not None:
        trainer.add_callback(masked)
        logger.info("training only the located weights: %d of %d entries of %d parameter(s)", masked.trained, masked.total, len(masks))
    logger.info("unlearning with %s on %d forget examples (%d retain)", method, len(forget), len(retain))
    resume_from = last_checkpoint(checkpoint_dir)
    if resume_from:
        logger.info("resuming from %s", resume_from)
    try:
        trainer.train(resume_from_checkpoint=resume_from)
    finally:
        if masked is not None:
            masked.remove()
    model = trainer.finalize(trainer.model)
    state_dict = None
    if trainer.is_fsdp_enabled or trainer.is_deepspeed_enabled:
        # Every process must join in: the full weights are gathered from the shards onto the main process.
        state_dict = trainer.accelerator.get_state_dict(trainer.model_wrapped if trainer.is_deepspeed_enabled else model)
        model = trainer.accelerator.unwrap_model(model)
    if config.uses_lora and config.lora_merge:
        model = model.merge_and_unload()
    if not is_lora_model(model):
        model.requires_grad_(True)  # hand the model back as it came: every weight trainable
    model.eval()
    log_history = list(trainer.state.log_history)
    warnings = training_warnings(log_history, trainer.state.global_step, config, len(forget)) if spec.trainer.uses_optimizer else []
    if distributed.is_main_process():  # every process holds the same log: one warning each
        for warning in warnings:
            logger.warning("%s", warning)
    # The Trainer's closing summary line (runtime, mean loss) records them with the run.
    summary_line = next((index for index in reversed(range(len(log_history))) if "train_runtime" in log_history[index]), None)
    if summary_line is not None:
        log_history[summary_line] = {**log_history[summary_line], "warnings": warnings}
    return UnlearnOutcome(model=model, config=config, log_history=log_history, artifacts=trainer.artifacts,
                          state_dict=state_dict, warnings=warnings)


def training_warnings(log_history: Sequence[Mapping[str, Any]], steps: int, config: MethodConfig, forget_rows: int) -> list[str]:
    """What says a finished run may have left the model nearly as it was: few optimiser steps, a forget loss that hardly moved.

    The forget loss is the method's recorded ``forget_loss`` term. With more than one
    pass over the forget set, the mean over the first pass is compared with the mean
    over the last (each sees every forget example, so batch-to-batch differences
    cancel); with one pass or less, the first logged step with the last.
    """
    schedule = (f"batch_size={config.batch_size} x gradient_accumulation_steps={config.gradient_accumulation_steps}, "
                f"num_epochs={config.num_epochs:g}")
    guide = f"See {STARTING_POINTS}"
    presets = getattr(type(config), "presets", {})
    if presets and getattr(config, "preset", None) is None:
        guide += f", and this method's presets (--set preset={' or '.join(presets)}; `unlearnkit methods -v`)"
    warnings = []
    if steps < FEW_STEPS:
        warnings.append(f"The run took {steps} optimiser step(s) ({forget_rows} forget examples, {schedule}), fewer than {FEW_STEPS}: "
                        f"warm-up and the learning-rate schedule have almost no room. Lower batch_size or raise num_epochs. {guide}.")
    movement = forget_loss_movement(log_history)
    if movement is not None:
        start, end = movement
        change = abs(end - start) / max(abs(start), 1e-12)
        if change < STALLED_FORGET_LOSS:
            warnings.append(
                f"The forget loss barely moved: {start:.4g} -> {end:.4g} ({change:.1%}, under {STALLED_FORGET_LOSS:.0%}) with "
                f"learning_rate={config.learning_rate:g}, {schedule}: the model is likely nearly unchanged. The defaults are the "
                "authors' settings for 1B-7B models; on a smaller model raise learning_rate (the built-in tiny benchmark uses 5e-4 "
                f"with batch_size 32) or num_epochs. {guide}."
            )
    return warnings


def forget_loss_movement(log_history: Sequence[Mapping[str, Any]]) -> tuple[float, float] | None:
    """The logged forget loss at the start and at the end of a run (see :func:`training_warnings`); None below two logged steps."""
    logged = [line for line in log_history if "forget_loss" in line and "epoch" in line]
    if len(logged) < 2:
        return None
    last_epoch = logged[-1]["epoch"]
    if last_epoch <= 1 + 1e-9:
        return float(logged[0]["forget_loss"]), float(logged[-1]["forget_loss"])
    first_pass = [float(line["forget_loss"]) for line in logged if line["epoch"] <= 1 + 1e-9]
    last_pass = [float(line["forget_loss"]) for line in logged if line["epoch"] > last_epoch - 1 + 1e-9]
    return sum(first_pass) / len(first_pass), sum(last_pass) / len(last_pass)


def _overrides_pair_extras(trainer: type[UnlearnTrainer]) -> bool:
    return trainer.pair_extras.__func__ is not UnlearnTrainer.pair_extras.__func__
