"""The method core: typed configs, the registry decorator, the paired dataset and the trainer base.

A method is one file holding a config dataclass (hyperparameters with help
text, checked in ``__post_init__``) and an :class:`UnlearnTrainer` subclass that
overrides ``compute_loss`` alone, composing the pure functions of
:mod:`unlearnkit.losses`. ``@register_method`` is the only registration.
"""

from __future__ import annotations

import contextlib
import logging
import math
import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch.utils.data import Dataset
from transformers import PreTrainedModel, PreTrainedTokenizerBase, TrainerCallback

from unlearnkit import distributed, losses
from unlearnkit.data.encoding import PromptFormat, encode_qa
from unlearnkit.errors import NumericalFault, UnlearnkitError
from unlearnkit.optimizers import SOUL, SOUL_BATCH_SIZE, SOUL_BETAS, SOUL_HESSIAN_INTERVAL, SOUL_RHO, SoulSophia
from unlearnkit.parameters import Selection, is_lora_model, parse_layers, parse_modules
from unlearnkit.registry import Registry
from unlearnkit.settings import (
    check_choice,
    check_field_types,
    check_lr_scheduler,
    check_optimizer,
    check_seed,
    require_at_least,
    require_fraction,
    require_non_negative,
    require_positive,
)
from unlearnkit.training import CheckpointedTrainer, newest_intact_checkpoint, precision_arguments

logger = logging.getLogger("unlearnkit")

RETAIN_LOSSES = ("nll", "kl")
MIXED_PRECISIONS = ("no", "bf16", "fp16")


@dataclass
class MethodConfig:
    """Optimisation settings every method shares.

    Defaults are those of the TOFU recipes for 7B models (Maini et al., 2024):
    lr 1e-5, 5 epochs, weight decay 0.01, one warm-up epoch, effective batch 32.
    The built-in tiny benchmark overrides the learning rate (see :mod:`unlearnkit.builtin`).
    """

    # Named starting settings for a model size: name -> {field: value}. A config that has some declares a
    # ``preset`` field (:func:`preset_field`); :func:`preset_settings` expands it under the values set alongside.
    presets: ClassVar[Mapping[str, Mapping[str, Any]]] = {}

    learning_rate: float = field(default=1e-5, metadata={"help": "Peak learning rate of AdamW."})
    num_epochs: float = field(default=5.0, metadata={"help": "Passes over the forget set."})
    batch_size: int = field(
        default=32,
        metadata={"help": "Forget examples per micro-batch, over all processes (each paired with a retain example); "
                          "an optimiser step sees batch_size x gradient_accumulation_steps."},
    )
    gradient_accumulation_steps: int = field(default=1, metadata={"help": "Micro-batches accumulated per optimiser step."})
    weight_decay: float = field(default=0.01, metadata={"help": "AdamW weight decay."})
    warmup_ratio: float = field(default=0.2, metadata={"help": "Fraction of steps for linear warm-up (TOFU: one epoch of five)."})
    lr_scheduler: str = field(default="linear", metadata={"help": "transformers scheduler name (linear, cosine, constant, ...)."})
    max_grad_norm: float = field(default=1.0, metadata={"help": "Gradient clipping norm."})
    max_length: int = field(default=256, metadata={"help": "Maximum tokens per example."})
    seed: int = field(default=0, metadata={"help": "Seed for data order, pairing and dropout."})
    stop_forget_nll: float | None = field(
        default=None,
        metadata={"help": "Stop once a batch's mean forget-answer NLL exceeds this "
                          "(a guard for gradient-ascent-style methods; None: off)."},
    )
    optimizer: str = field(
        default="adamw_torch",
        metadata={"help": "transformers optimiser name (adamw_torch, sgd, adafactor, ...), or 'soul': Sophia with a clipped "
                          "diagonal-Hessian step (Jia et al., EMNLP 2024; settings soul_*)."},
    )
    soul_rho: float = field(
        default=SOUL_RHO,
        metadata={"help": "optimizer=soul: Sophia's rho; a coordinate's step is lr * min(|m| / (rho * bs * h), 1) (SOUL: 0.04)."},
    )
    soul_batch_size: int = field(
        default=SOUL_BATCH_SIZE,
        metadata={"help": "optimizer=soul: the bs scaling the Hessian estimate in the step's denominator (SOUL's code: 5120)."},
    )
    soul_beta1: float = field(default=SOUL_BETAS[0], metadata={"help": "optimizer=soul: momentum EMA coefficient (SOUL: 0.9)."})
    soul_beta2: float = field(
        default=SOUL_BETAS[1], metadata={"help": "optimizer=soul: EMA coefficient of the squared-gradient Hessian estimate (SOUL: 0.95)."},
    )
    soul_hessian_interval: int = field(
        default=SOUL_HESSIAN_INTERVAL,
        metadata={"help": "optimizer=soul: refresh the Hessian estimate every this many steps (SOUL's code: 1, every step; "
                          "Sophia's paper: 10)."},
    )
    target_modules: str | None = field(
        default=None,
        metadata={"help": "Train only these modules: comma-separated names as peft writes them ('down_proj', 'q_proj,v_proj'). "
                          "None: all weights (LoRA: all linear layers)."},
    )
    layers: str | None = field(
        default=None,
        metadata={"help": "Train only these decoder layers: '5,6,7' or '5-7' (peft's layers_to_transform). None: all layers."},
    )
    localize: str | None = field(
        default=None,
        metadata={"help": "A localization folder (written by `unlearnkit localize`): train only the weights it selects "
                          "(its layers and modules; with neurons or single weights, only those: every other weight stays "
                          "bit-identical). Not with target_modules / layers; with LoRA, only a layer/module selection. None: off."},
    )
    localizer: str | None = field(
        default=None,
        metadata={"help": "Localize inline: run this localizer (`unlearnkit localizers`, its default settings) on the forget set "
                          "before training and train only what it selects, as localize does with a saved localization (the run "
                          "keeps it in its localization/ folder). Not with localize, target_modules or layers. None: off."},
    )
    lora_rank: int = field(
        default=0,
        metadata={"help": "LoRA rank: > 0 trains low-rank adapters on the selected modules instead of the weights (0: full fine-tuning)."},
    )
    lora_alpha: float = field(default=16.0, metadata={"help": "LoRA scaling numerator (the update is alpha/rank * B A)."})
    lora_dropout: float = field(default=0.0, metadata={"help": "Dropout on the LoRA input."})
    lora_merge: bool = field(
        default=True,
        metadata={"help": "Merge the trained adapter into the weights when saving "
                          "(false: save the adapter alone, with a pointer to its base model)."},
    )
    gradient_checkpointing: bool = field(
        default=False,
        metadata={"help": "Recompute each decoder layer's activations in the backward pass instead of storing them "
                          "(less memory, about one more forward per step; works with LoRA)."},
    )
    mixed_precision: str = field(
        default="no",
        metadata={"help": "'no', 'bf16' or 'fp16': autocast the forward passes (weights stay in their dtype; losses in float32). "
                          "fp16 needs a CUDA GPU; bf16 also runs on CPU."},
    )

    def __post_init__(self) -> None:
        # Types first (a float field must hold a finite number), so the range checks below compare real numbers.
        check_field_types(self)
        require_positive(learning_rate=self.learning_rate, num_epochs=self.num_epochs, max_grad_norm=self.max_grad_norm,
                         stop_forget_nll=self.stop_forget_nll, lora_alpha=self.lora_alpha)
        require_at_least(1, batch_size=self.batch_size, gradient_accumulation_steps=self.gradient_accumulation_steps)
        require_at_least(2, max_length=self.max_length)  # a prompt token and an answer token: the least a loss can score
        require_non_negative(weight_decay=self.weight_decay)
        require_fraction("warmup_ratio", self.warmup_ratio, high_open=True)
        require_fraction("lora_dropout", self.lora_dropout, high_open=True)
        if self.lora_rank < 0:
            raise UnlearnkitError(f"lora_rank must be >= 0 (0: no LoRA, full fine-tuning), got {self.lora_rank}.")
        check_seed("seed", self.seed)
        check_lr_scheduler(self.lr_scheduler)
        if self.lr_scheduler == "constant" and self.warmup_ratio > 0:
            logger.warning("lr_scheduler=constant has no warm-up: warmup_ratio=%g is ignored (constant_with_warmup warms up).",
                           self.warmup_ratio)
        check_optimizer(self.optimizer)
        self._check_soul()
        check_choice("mixed_precision", self.mixed_precision, MIXED_PRECISIONS)
        if getattr(self, "preset", None) is not None:
            check_choice("preset", self.preset, self.presets)
        precision_arguments(self.mixed_precision)  # fp16 without a CUDA GPU fails now, not once training starts
        self.selection()  # parse target_modules and layers now, so a malformed value fails before any loading
        self._check_localize()

    def _check_soul(self) -> None:
        """SOUL's settings in range, and given only with optimizer=soul (elsewhere they would be silently ignored)."""
        require_positive(soul_rho=self.soul_rho)
        require_at_least(1, soul_batch_size=self.soul_batch_size, soul_hessian_interval=self.soul_hessian_interval)
        require_fraction("soul_beta1", self.soul_beta1, high_open=True)
        require_fraction("soul_beta2", self.soul_beta2, high_open=True)
        if self.optimizer == SOUL:
            return
        defaults = {item.name: item.default for item in fields(self)}
        given = [name for name in defaults if name.startswith("soul_") and getattr(self, name) != defaults[name]]
        if given:
            raise UnlearnkitError(f"{', '.join(given)} {'is a setting' if len(given) == 1 else 'are settings'} of optimizer=soul, "
                                  f"but optimizer is {self.optimizer}: add --set optimizer=soul, or drop {' and '.join(given)}.")

    def soul_arguments(self) -> dict[str, Any]:
        """The keyword arguments of :class:`unlearnkit.optimizers.SoulSophia` these settings give (lr and decay: the Trainer's)."""
        return {"betas": (self.soul_beta1, self.soul_beta2), "rho": self.soul_rho, "batch_size": self.soul_batch_size,
                "hessian_interval": self.soul_hessian_interval}

    def _check_localize(self) -> None:
        """A localization names the weights to train itself: refuse it alongside a hand-made selection rather than guess."""
        if self.localizer is not None:
            from unlearnkit.localization import LOCALIZERS

            if self.localize is not None:
                raise UnlearnkitError(f"localize={self.localize} and localizer={self.localizer} both choose what to train; keep one "
                                      "(a saved localization, or a localizer run on the forget set).")
            LOCALIZERS.get(self.localizer)  # an unknown name fails now, with the closest ones
        chosen_by = f"localize={self.localize}" if self.localize is not None else f"localizer={self.localizer}"
        if self.localize is None and self.localizer is None:
            return
        if self.localize is not None and not self.localize.strip():
            raise UnlearnkitError("localize is empty: give a localization folder (written by `unlearnkit localize`), or none.")
        defaults = {item.name: item.default for item in fields(self)}
        chosen = [name for name in ("target_modules", "layers") if getattr(self, name) != defaults[name]]
        if chosen:
            raise UnlearnkitError(
                f"{chosen_by} already chooses the layers and modules to train; drop {' and '.join(chosen)} "
                "(or run `unlearnkit localize` again with the selection you want)."
            )

    @property
    def uses_lora(self) -> bool:
        return self.lora_rank > 0

    def selection(self) -> Selection:
        """The modules and layers this run trains (methods with their own default, like RMU, override this)."""
        return Selection(parse_modules(self.target_modules), parse_layers(self.layers))

    def check_model(self, model: PreTrainedModel) -> None:
        """Refuse a model these settings cannot work with (e.g. a layer it lacks), before training; default: accept."""

    def check_data(self, forget: Sequence[dict], retain: Sequence[dict]) -> None:
        """Refuse data these settings cannot train on (e.g. fewer retain rows than a method draws per example); default: accept.

        The rows are already validated (:func:`unlearnkit.data.qa.validate_rows`); this is for what only the
        settings make wrong, which would otherwise surface in ``setup()``, after the results folder exists.
        """

    def check_encoded(self, tokenizer: PreTrainedTokenizerBase, fmt: PromptFormat, forget: Sequence[dict]) -> None:
        """Refuse forget rows these settings cannot train on once tokenised (e.g. answers too short); default: accept."""

    def needs_reference(self) -> bool:
        """Whether the method (with these settings) needs the frozen pre-unlearning model."""
        return False


def preset_field(presets: Mapping[str, Mapping[str, Any]]) -> Any:
    """The ``preset`` option of a config with named starting settings; its help lists each preset's values.

    The field records the choice; :func:`preset_settings` (called by ``unlearnkit.unlearning.resolve_method``,
    which ``--set`` goes through) supplies the values, so that a value set alongside the preset can win.
    """
    listing = "; ".join(f"{name}: {', '.join(f'{key}={value}' for key, value in values.items())}" for name, values in presets.items())
    return field(
        default=None,
        metadata={"help": f"Named starting settings, each measured on a model size; a value set alongside wins ({listing}). "
                          "None: the defaults above."},
    )


def preset_settings(config_cls: type[MethodConfig], name: Any) -> dict[str, Any]:
    """The settings that preset ``name`` of ``config_cls`` stands for; ``{}`` for None or 'none'.

    A config without presets returns ``{}`` too: building it with a ``preset`` then fails as an unknown setting.
    """
    if name is None or not config_cls.presets or (isinstance(name, str) and name.strip().lower() == "none"):
        return {}
    name = str(name).strip()
    check_choice("preset", name, config_cls.presets)
    return dict(config_cls.presets[name])


def cache_reference_field() -> Any:
    """The ``cache_reference`` option of methods whose reference terms are per-sequence log-probabilities (NPO, IDK-DPO).

    Default on: the reference is frozen, so a sequence's reference log-probability is the
    same number at every step; computing it once before training gives the loss of the
    uncached run up to float rounding (batch composition and padding change the order of
    the sums, nothing else), costs at most one forward per distinct sequence (the uncached
    run pays one per sequence per epoch) and frees the reference copy (or, under LoRA, the
    adapter-free forward of every step).
    """
    return field(
        default=True,
        metadata={"help": "Compute the frozen reference's sequence log-probabilities once before training and keep no reference model "
                          "(same loss up to float rounding; less memory and time). false: a reference forward every step."},
    )


def retain_kl_positions_field() -> Any:
    """The ``retain_kl_positions`` option of methods with a KL retain term (``retain_loss="kl"``).

    Default ``"all"``: the mean of ``KL(p_ref || p_theta)`` over every position of the padded
    retain batch, TOFU's and OpenUnlearning's form (see :func:`unlearnkit.losses.kl_to_reference`).
    """
    return field(
        default="all",
        metadata={"help": "Positions the KL retain term averages over: 'all' (every position of the padded batch, prompt and "
                          "padding included: TOFU, OpenUnlearning) or 'answer' (only those predicting answer tokens)."},
    )


def check_retain_loss(value: str) -> None:
    check_choice("retain_loss", value, RETAIN_LOSSES)


def check_retain_kl_positions(value: str) -> None:
    check_choice("retain_kl_positions", value, losses.KL_POSITIONS)


class UnlearnTrainer(CheckpointedTrainer):
    """A ``transformers.Trainer`` whose batches are ``{"forget": ..., "retain": ..., "idk": ..., <extras>}``.

    Most subclasses override ``compute_loss`` only. ``self.method_config`` holds
    the method's hyperparameters; ``reference_logits``/``reference_outputs`` give
    the frozen model before unlearning (when the config's ``needs_reference()``
    is true: a frozen copy, or under LoRA the base model with adapters disabled).
    ``reference_sequence_nll`` gives the reference's per-sequence NLLs: methods that
    only need those list their batch keys in ``cached_reference_keys`` and, with
    their config's ``cache_reference`` on, hold no reference at all.

    Methods that need more than a loss use the hooks, in the order ``unlearn`` calls them:

    * ``required_forget_fields``: forget-row fields the method reads (checked before training);
    * ``pair_extras``: more (question, answer) pairs per forget example, batched under their own keys;
    * ``setup()``: after the trainer is built, before the optimiser exists (train helper models, add layers);
    * ``finalize(model)``: after training (negate a task vector, fold adapters into weights);
    * ``gradient_step``: replaces loss-and-backward when a method edits gradients itself (PCGU);
    * ``artifacts``: tensors to save next to the model.
    """

    required_forget_fields: ClassVar[tuple[str, ...]] = ()
    supports_lora: ClassVar[bool] = True
    # False for a method that changes the weights without the optimiser loop (an editor, a neuron switch-off):
    # the warnings about few optimiser steps or a forget loss that barely moved do not apply to it.
    uses_optimizer: ClassVar[bool] = True
    # Batch keys whose reference sequence NLLs the method reads through ``reference_sequence_nll``; with the
    # config's ``cache_reference`` on, they are computed once before training (see ``ReferenceCache``).
    cached_reference_keys: ClassVar[tuple[str, ...]] = ()
    # compute_loss returns each micro-batch's mean, never a sum normalised by the accumulated batch's item count:
    # the Trainer must divide it by the accumulation steps (it guesses otherwise from the model's forward signature).
    loss_is_scaled_for_ga = False
    _reference_cache: ReferenceCache | None = None
    # Tensors a method hands back besides the model (e.g. EUL's unlearning layers): file name -> {name: tensor},
    # saved with safetensors next to the model.
    artifacts: dict[str, dict[str, torch.Tensor]]

    @classmethod
    def pair_extras(
        cls, config: MethodConfig, rng: random.Random, forget_row: dict, retain_rows: Sequence[dict]
    ) -> dict[str, tuple[str, str]]:
        """Extra (question, answer) pairs for one forget example, keyed by batch name; drawn only from ``rng``."""
        return {}

    def setup(self) -> None:
        """Prepare what the method needs before the optimiser is created (default: nothing)."""

    def finalize(self, model: PreTrainedModel) -> PreTrainedModel:
        """Turn the trained model into the unlearned one (default: as trained)."""
        return model

    def __init__(self, *args: Any, method_config: MethodConfig, reference_model: PreTrainedModel | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.method_config = method_config
        self.reference_model = reference_model
        self.artifacts = {}
        self._recorded: dict[str, list[float]] = {}
        if reference_model is not None:
            self.reference_model = distributed.place_frozen_model(self.accelerator, reference_model, self.args.device)

    @staticmethod
    def logits(model: PreTrainedModel, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Logits (B, T, V) for a padded batch."""
        return model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits

    def training_step(self, model, inputs, num_items_in_batch=None):  # noqa: ANN001 - Trainer signature
        """One optimiser micro-step, refusing to go on from a non-finite loss (nothing is saved then)."""
        loss = self.gradient_step(model, inputs, num_items_in_batch)
        value = float(loss.detach())
        step = self.state.global_step + 1
        if not math.isfinite(value):
            checkpoint = newest_intact_checkpoint(Path(self.args.output_dir)) if self.args.save_strategy != "no" else None
            raise NumericalFault(
                f"The training loss became {value} at step {step}; the run stopped and no model was saved "
                f"(last good checkpoint: {checkpoint or 'none'}). Lower learning_rate, or set stop_forget_nll "
                "to end gradient-ascent-style runs earlier."
            )
        bound = self.method_config.stop_forget_nll
        if bound is not None:
            with torch.no_grad():
                forget = inputs["forget"]
                forget_nll = float(losses.mean_nll(self.logits(model, forget), forget["labels"]))
            if forget_nll > bound:
                logger.warning("step %d: forget NLL %.3f exceeds stop_forget_nll %.3f; stopping", step, forget_nll, bound)
                self.control.should_training_stop = True
        return loss

    def record(self, **terms: torch.Tensor | float) -> None:
        """Note a loss term's value (e.g. ``forget_loss=...``); its mean since the last log line joins the training log."""
        for name, value in terms.items():
            self._recorded.setdefault(name, []).append(float(value.detach()) if isinstance(value, torch.Tensor) else float(value))

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        """The Trainer's log line plus the mean of every recorded term: the training curves of the report."""
        if "loss" in logs:  # training log lines only; the final summary line carries no terms
            names = sorted(self._recorded)
            means = [sum(self._recorded[name]) / len(self._recorded[name]) for name in names]
            # Each process recorded the terms of its own share of the batch: log their mean over processes, as the Trainer does the loss.
            shares = distributed.gather([means])
            logs.update({name: sum(share[index] for share in shares) / len(shares) for index, name in enumerate(names)})
            self._recorded.clear()
        super().log(logs, start_time)

    def gradient_step(self, model, inputs, num_items_in_batch=None):  # noqa: ANN001 - Trainer signature
        """Compute the loss and accumulate gradients into ``.grad`` (the Trainer's step); returns the detached loss.

        Methods that edit gradients themselves (PCGU) override this instead of ``compute_loss``.
        """
        return super().training_step(model, inputs, num_items_in_batch)

    def retain_loss(self, model: PreTrainedModel, batch: dict[str, torch.Tensor], kind: str) -> torch.Tensor:
        """The retain term, recorded as ``retain_loss``: answer NLL (``"nll"``) or KL(p_ref || p_theta) (``"kl"``).

        The KL is averaged over the positions the config's ``retain_kl_positions`` names
        (a config offering ``"kl"`` declares that field with :func:`retain_kl_positions_field`).
        """
        logits = self.logits(model, batch)
        if kind == "kl":
            term = losses.kl_to_reference(logits, self.reference_logits(batch), batch["labels"],
                                          positions=self.method_config.retain_kl_positions)
        else:
            term = losses.mean_nll(logits, batch["labels"])
        self.record(retain_loss=term)
        return term

    @torch.no_grad()
    def reference_logits(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.reference_outputs(batch).logits

    @torch.no_grad()
    def reference_outputs(self, batch: dict[str, torch.Tensor], **kwargs: Any) -> Any:
        """The frozen pre-unlearning model's outputs on ``batch`` (``kwargs``: e.g. ``output_hidden_states=True``)."""
        if self.reference_model is not None or (self.method_config.needs_reference() and is_lora_model(self.model)):
            return self._frozen_outputs(batch, **kwargs)
        raise RuntimeError("This method needs a reference model: its config's needs_reference() must return True.")

    @torch.no_grad()
    def _frozen_outputs(self, batch: dict[str, torch.Tensor], **kwargs: Any) -> Any:
        """The reference copy's outputs, else this model's in eval mode with any adapters off.

        Without a copy, the latter is the pre-unlearning model under LoRA (the base weights never
        change) or, in full fine-tuning, only before the first update (``ReferenceCache`` runs then).
        """
        inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"], **kwargs}
        if self.reference_model is not None:
            return self.reference_model(**inputs)
        was_training = self.model.training
        self.model.eval()
        try:
            with self.model.disable_adapter() if is_lora_model(self.model) else contextlib.nullcontext():
                return self.model(**inputs)
        finally:
            self.model.train(was_training)

    def reference_sequence_nll(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """The frozen reference's sequence-sum NLL ``-log π_ref(y | x)`` (B,): cached when ``cache_reference`` is on."""
        if self._reference_cache is not None:
            return self._reference_cache.lookup(batch)
        with torch.no_grad():
            return losses.sequence_nll(self.reference_logits(batch), batch["labels"])

    def create_optimizer(self, model: Any = None) -> torch.optim.Optimizer:
        """The Trainer's optimiser; with optimizer=soul, SOUL's Sophia (:mod:`unlearnkit.optimizers`) in its place.

        The Trainer still builds it: the same parameter groups (trainable parameters only, so LoRA trains its
        adapters alone; no weight decay on biases and norms), the run's lr, decoupled weight decay from weight_decay,
        and its lr scheduler on top. Checkpoints save and resume its state like any optimiser's.
        """
        if self.optimizer is None and self.method_config.optimizer == SOUL:
            self.optimizer_cls_and_kwargs = (SoulSophia, {"lr": self.args.learning_rate, "weight_decay": self.args.weight_decay,
                                                          **self.method_config.soul_arguments()})
        return super().create_optimizer(model)

    def train(self, *args: Any, **kwargs: Any) -> Any:
        """The Trainer's loop, after caching the reference terms (from the model as given, before any update or resume)."""
        if self.cached_reference_keys and getattr(self.method_config, "cache_reference", False) and self._reference_cache is None:
            self._reference_cache = ReferenceCache.build(self)
        return super().train(*args, **kwargs)


def _sequence_key(input_ids: Sequence[int], labels: Sequence[int]) -> tuple[tuple[int, ...], tuple[int, ...]]:
    return tuple(input_ids), tuple(labels)


class ReferenceCache:
    """Reference sequence NLLs of every sequence training will see, keyed by its (unpadded) tokens and labels.

    Keying by content rather than by dataset index makes a lookup independent of the batch
    order and of which refusal answer an epoch drew (IDK-DPO): every (epoch, index) item the
    :class:`PairedDataset` will yield is enumerated up front, as its draws are a pure function
    of (seed, epoch, index), and each distinct sequence is scored once.
    """

    def __init__(self, values: dict[tuple[tuple[int, ...], tuple[int, ...]], float]) -> None:
        self.values = values

    @classmethod
    @torch.no_grad()
    def build(cls, trainer: UnlearnTrainer) -> ReferenceCache:
        dataset = trainer.train_dataset
        unique: dict[tuple[tuple[int, ...], tuple[int, ...]], dict[str, list[int]]] = {}
        saved_epoch = getattr(dataset, "epoch", None)
        try:
            for epoch in range(_epochs_to_cache(trainer) if saved_epoch is not None else 1):
                if saved_epoch is not None:
                    dataset.epoch = epoch
                for index in range(len(dataset)):
                    item = dataset[index]
                    for key in trainer.cached_reference_keys:
                        unique.setdefault(_sequence_key(item[key]["input_ids"], item[key]["labels"]), item[key])
        finally:
            if saved_epoch is not None:
                dataset.epoch = saved_epoch
        # Similar lengths batched together: less padding to run through the model.
        ordered = sorted(unique.items(), key=lambda entry: len(entry[0][0]))
        size = trainer.args.per_device_train_batch_size
        values: dict[tuple[tuple[int, ...], tuple[int, ...]], float] = {}
        for start in range(0, len(ordered), size):
            chunk = ordered[start:start + size]
            batch = trainer._prepare_inputs(trainer.data_collator([{"sequence": item} for _, item in chunk])["sequence"])
            nll = losses.sequence_nll(trainer._frozen_outputs(batch).logits, batch["labels"])
            values.update(zip((key for key, _ in chunk), nll.float().cpu().tolist(), strict=True))
        logger.info("cached the reference NLL of %d sequences; no reference forward during training", len(values))
        return cls(values)

    def lookup(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """The cached NLLs (B,) of a padded batch's rows."""
        real = batch["attention_mask"].bool().cpu()
        ids, labels = batch["input_ids"].cpu(), batch["labels"].cpu()
        try:
            found = [self.values[_sequence_key(ids[i][real[i]].tolist(), labels[i][real[i]].tolist())] for i in range(len(ids))]
        except KeyError:
            raise RuntimeError(
                "A batch holds a sequence the reference cache was not built for (the cache covers the training "
                "dataset's items for every epoch). Set cache_reference=false to compute reference terms per step."
            ) from None
        return torch.tensor(found, dtype=torch.float32, device=batch["input_ids"].device)


def _epochs_to_cache(trainer: UnlearnTrainer) -> int:
    """How many epochs (pairings) training will draw: ``num_train_epochs``, or enough for ``max_steps``."""
    args = trainer.args
    if args.max_steps and args.max_steps > 0:
        per_step = args.per_device_train_batch_size * args.gradient_accumulation_steps
        return max(1, math.ceil(args.max_steps * per_step / max(1, len(trainer.train_dataset))))
    return max(1, math.ceil(args.num_train_epochs))


@dataclass(frozen=True)
class MethodSpec:
    """What the registry knows of a method (``family`` groups methods in listings and the comparison table)."""

    name: str
    trainer: type[UnlearnTrainer]
    config: type[MethodConfig]
    paper: str
    summary: str
    needs_retain: bool
    needs_idk: bool
    family: str


METHODS: Registry[MethodSpec] = Registry("method")


def register_method(
    name: str,
    *,
    config: type[MethodConfig],
    paper: str,
    summary: str,
    needs_retain: bool = True,
    needs_idk: bool = False,
    family: str = "objective",
) -> Callable[[type[UnlearnTrainer]], type[UnlearnTrainer]]:
    """Class decorator that registers an :class:`UnlearnTrainer` subclass under ``name``."""

    def decorate(trainer: type[UnlearnTrainer]) -> type[UnlearnTrainer]:
        spec = MethodSpec(name, trainer, config, paper, summary, needs_retain, needs_idk, family)
        METHODS.register(name)(spec)
        return trainer

    return decorate


class PairedDataset(Dataset):
    """Item i = forget example i, a randomly drawn retain example and, optionally, an IDK answer.

    The retain partner and the refusal answer are a pure function of (seed,
    epoch, index): every epoch pairs a forget example with new retain examples
    (as TOFU does), a rerun with the same seed draws the same ones, and a run
    resumed from a checkpoint draws what the uninterrupted run would have.
    ``epoch`` is kept current by :class:`EpochToDataset`.
    """

    def __init__(
        self,
        tokenizer: PreTrainedTokenizerBase,
        fmt: PromptFormat,
        forget: Sequence[dict],
        retain: Sequence[dict],
        idk_answers: Sequence[str],
        max_length: int,
        seed: int,
        extras: Callable[[random.Random, dict, Sequence[dict]], dict[str, tuple[str, str]]] | None = None,
    ) -> None:
        if not forget:
            raise UnlearnkitError("The forget set is empty: unlearning needs at least one example to forget.")
        self.tokenizer, self.fmt, self.max_length = tokenizer, fmt, max_length
        self.forget = [self._encode(row["question"], row["answer"]) for row in forget]
        self.retain = [self._encode(row["question"], row["answer"]) for row in retain]
        self.forget_rows = list(forget)
        self.retain_rows = list(retain)
        self.extras = extras
        self.forget_questions = [row["question"] for row in forget]
        self.idk_answers = list(idk_answers)
        self.seed = seed
        self.epoch = 0

    def _encode(self, question: str, answer: str) -> dict[str, list[int]]:
        return encode_qa(self.tokenizer, self.fmt, question, answer, self.max_length)

    def __len__(self) -> int:
        return len(self.forget)

    def __getitem__(self, index: int) -> dict[str, dict[str, list[int]]]:
        rng = random.Random(f"{self.seed}:{self.epoch}:{index}")
        item = {"forget": self.forget[index]}
        if self.retain:
            item["retain"] = self.retain[rng.randrange(len(self.retain))]
        if self.idk_answers:
            item["idk"] = self._encode(self.forget_questions[index], rng.choice(self.idk_answers))
        if self.extras is not None:
            for key, (question, answer) in self.extras(rng, self.forget_rows[index], self.retain_rows).items():
                item[key] = self._encode(question, answer)
        return item


class EpochToDataset(TrainerCallback):
    """Tells a :class:`PairedDataset` which epoch is starting (also the right one after a resume)."""

    def __init__(self, dataset: PairedDataset) -> None:
        self.dataset = dataset

    def on_epoch_begin(self, args, state, control, **kwargs):  # noqa: ANN001 - Trainer callback signature
        # state.epoch is the number of epochs done: whole at an epoch's start, fractional when resuming mid-epoch.
        self.dataset.epoch = int(state.epoch + 1e-9) if state.epoch else 0
