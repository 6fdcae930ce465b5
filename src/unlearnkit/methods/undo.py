"""UNDO: unlearn, noise, distil on outputs.

Lee, Foote, Infanger, Shor, Kamath, Goldman-Wetzler, Woodworth, Cloud & Turner,
"Distillation Robustifies Unlearning", NeurIPS 2025 (arXiv 2506.06278).

Pipeline (one run of this method)
---------------------------------
1. **Unlearn.** ``setup()`` copies the model and unlearns the forget set from the copy
   with another registered method (``unlearn_method``, default ``graddiff``) through
   :func:`unlearnkit.unlearning.unlearn`, exactly as ``unlearnkit unlearn`` would. The
   result is the frozen *teacher* T. ``unlearn_method=none`` takes the input model
   itself as the teacher (it is already unlearned).
2. **Noise.** The trained model becomes the *student*: every trainable tensor is set
   to ``θ_S = (1 − α) θ_T + α β N`` (:func:`shrink_and_perturb`), ``N`` a Xavier-uniform
   draw for tensors of two or more dimensions and ``0`` for 1-D tensors (norm weights,
   biases), which are only shrunk. Tensors outside the run's selection are left as they
   were. The draw is seeded by ``seed``.
3. **Distil.** The Trainer's loop trains the student to match the teacher's next-token
   distributions: forward ``KL(p_T ‖ p_S)`` at every non-pad position of the full sequence
   (prompt and answer), temperature 1, full vocabulary
   (:func:`unlearnkit.losses.forward_kl_distillation_loss`), pooled over the forget and
   retain rows of each batch. After each epoch (or every ``check_every_steps`` steps)
   the student's retain cross-entropy is compared with the teacher's; the run stops once
   ``(CE_S − CE_T) / CE_T < retain_threshold`` (the authors' rule), or after ``num_epochs``.
   The CE is that of the retain answers by default (``check_tokens``): the paper's is on
   retain-domain text, whose every token is the capability; here the question tokens
   (names, unpredictable) would dominate a whole-text CE, and a student can match it while
   still answering retain questions badly (measured on micro: within 5% on the whole text
   after 2 steps, with an answer NLL 10 times the target's).

Distillation data
-----------------
The paper distils on the pretraining mixture with the forget domain included (the
language setting interleaves English and Korean 50/50). Our analogue is the QA rows
themselves: each item of an epoch is one forget row and one retain row drawn at random
(the :class:`~unlearnkit.methods.base.PairedDataset` pairing), every token of both
scored, so that an epoch is a 50/50 mixture of the forget and retain domains. The
teacher's outputs on the forget rows carry its unlearning; the student copies them.

Defaults and their sources
--------------------------
* Noise ``α = 0.25``, ``β = 0`` (pure shrinkage): the WMDP setting, the paper's only
  fixed setting on a pretrained LLM and on factual knowledge, the closest to the
  fictitious-author facts here. The language runs sweep ``α`` in 0.1-0.8 and ``β`` in
  {0.1, 0.05, 0.01}; the robustness and the cost both rise with ``α``.
* ``retain_threshold = 0.05``: the language run's ``RETAIN_THRESHOLD``.
* Distillation optimiser: AdamW, lr 2e-5 (WMDP), constant after a linear warm-up of
  50 of up to 3000 steps (the WMDP run's cosine schedule decays to ``min_lr = lr``,
  i.e. stays constant), no weight decay, gradient clipping 1.0 (both runs).
* ``unlearn_method = graddiff``: the first of the three methods the paper runs
  (GradDiff, MaxEnt, RMU) and its language and arithmetic runs' baseline; MaxEnt is not
  a method here, and RMU on arithmetic leaked the capability back through distillation
  (the paper's pitfall), so it makes a weaker default teacher.

LoRA
----
Refused (``lora_rank`` must be 0): the noise moves every weight of the student, and
low-rank adapters over noised base weights cannot bring back a full-rank perturbation;
the paper distils into the full weights. The inner unlearning may use LoRA
(``unlearn_settings=lora_rank=8``): its adapters are merged into the teacher.

Cost
----
The inner unlearning's run, then the distillation: per step one teacher forward
(no gradient) and one student forward and backward on twice the rows of the other
methods (forget and retain rows both distilled), plus the stopping checks (a forward
of the student over ``check_rows`` retain rows each). Memory: the teacher is a full
frozen copy of the model beside the student and its optimiser state; a step's rows are
distilled and back-propagated ``batch_size`` at a time (:meth:`UNDO.gradient_step`).
"""

from __future__ import annotations

import copy
import logging
import math
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from typing import Any

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase, TrainerCallback

from unlearnkit import distributed, losses
from unlearnkit.data.encoding import IGNORE_INDEX, PromptFormat, pad_batch
from unlearnkit.errors import UnlearnkitError
from unlearnkit.methods.base import METHODS, MethodConfig, UnlearnTrainer, register_method
from unlearnkit.settings import check_choice, require_at_least, require_fraction, require_non_negative

logger = logging.getLogger("unlearnkit")

NO_UNLEARNING = "none"
CHECK_TOKENS = ("answer", "all")
# Shared settings given to undo (by --set or a benchmark's overrides) that the inner unlearning takes too, where
# undo's value differs from undo's default: the benchmark's tiny-model learning rate must reach both stages.
INHERITED_SETTINGS = ("learning_rate", "batch_size", "gradient_accumulation_steps", "max_length", "seed", "mixed_precision",
                      "gradient_checkpointing", "target_modules", "layers")
SETTINGS_EXAMPLE = "unlearn_settings=learning_rate=1e-4;num_epochs=3"
# The authors' floor on the teacher's CE in the relative gap (a teacher CE of 0 would divide by zero).
TEACHER_CE_FLOOR = 1e-6


def parse_unlearn_settings(text: str | None) -> dict[str, str]:
    """``"KEY=VALUE;KEY=VALUE"`` -> a dict (values stay strings: the inner method's config types them)."""
    settings: dict[str, str] = {}
    for part in (text or "").split(";"):
        if not part.strip():
            continue
        key, sep, value = part.partition("=")
        key, value = key.strip(), value.strip()
        if not sep or not key:
            raise UnlearnkitError(f"unlearn_settings expects KEY=VALUE pairs separated by ';' (e.g. {SETTINGS_EXAMPLE}), got {part!r}.")
        if key in settings and settings[key] != value:
            raise UnlearnkitError(f"unlearn_settings gives {key} twice, as {settings[key]!r} and {value!r}; keep one.")
        settings[key] = value
    return settings


@dataclass
class UNDOConfig(MethodConfig):
    unlearn_method: str = field(
        default="graddiff",
        metadata={"help": "The registered method that unlearns first and gives the teacher (paper: GradDiff, MaxEnt or RMU); "
                          "'none': the input model is already the unlearned teacher."},
    )
    unlearn_settings: str | None = field(
        default=None,
        metadata={"help": "The inner method's settings, 'KEY=VALUE;KEY=VALUE' (e.g. 'num_epochs=3;alpha=0.5'). It starts from "
                          "its own defaults, plus undo's learning_rate, batch_size, gradient_accumulation_steps, max_length, seed, "
                          "mixed_precision, gradient_checkpointing, target_modules and layers where set to other than undo's defaults."},
    )
    noise_alpha: float = field(
        default=0.25,
        metadata={"help": "Shrink-and-perturb mix: student = (1 - alpha) * teacher + alpha * beta * Xavier noise "
                          "(paper: 0.25 on WMDP; 0.1-0.8 swept on language; 1 with beta > 0: a fresh random student)."},
    )
    noise_beta: float = field(
        default=0.0,
        metadata={"help": "Scale of the Xavier-uniform noise on 2-D+ tensors (paper: 0 on WMDP, i.e. pure shrinkage; "
                          "0.1, 0.05, 0.01 on language)."},
    )
    retain_threshold: float | None = field(
        default=0.05,
        metadata={"help": "Stop distilling once the student's retain CE is within this fraction of the teacher's, "
                          "(CE_S - CE_T) / CE_T < threshold (paper: 0.05). None: run num_epochs."},
    )
    check_every_steps: int = field(
        default=0,
        metadata={"help": "Check the stopping rule every this many optimiser steps; 0: at the end of each epoch "
                          "(paper: every 50 steps on language, 500 on WMDP)."},
    )
    check_rows: int = field(
        default=200,
        metadata={"help": "Retain rows (spread evenly over the retain set) whose CE the stopping rule compares."},
    )
    check_tokens: str = field(
        default="answer",
        metadata={"help": "Tokens of the check rows the stopping rule's CE averages over: 'answer' (the retain answers: what "
                          "retain performance means on QA data) or 'all' (the whole text, prompt included, as the paper's "
                          "CE on retain-domain text)."},
    )
    retain_per_forget: int | None = field(
        default=None,
        metadata={"help": "Retain rows (drawn at random) distilled with each forget row. None: the data's own proportion, "
                          "len(retain) // len(forget) (at least 1), so that an epoch is about one pass over forget and retain "
                          "alike, as the paper's pretraining mixture; 1: a 50/50 mixture (the paper's language setting)."},
    )
    num_epochs: float = field(
        default=10.0,
        metadata={"help": "Most passes of the distillation over the forget set (each forget row with retain_per_forget retain "
                          "rows); the stopping rule may end it earlier."},
    )
    learning_rate: float = field(default=2e-5, metadata={"help": "Peak learning rate of the distillation's AdamW (paper: 2e-5 on WMDP)."})
    weight_decay: float = field(default=0.0, metadata={"help": "AdamW weight decay of the distillation (paper: 0)."})
    lr_scheduler: str = field(
        default="constant_with_warmup",
        metadata={"help": "Distillation schedule (paper, WMDP: cosine to min_lr = lr, i.e. constant after the warm-up)."},
    )
    warmup_ratio: float = field(default=0.017, metadata={"help": "Fraction of steps for warm-up (paper, WMDP: 50 of up to 3000)."})

    def __post_init__(self) -> None:
        super().__post_init__()
        require_fraction("noise_alpha", self.noise_alpha)
        require_non_negative(noise_beta=self.noise_beta, retain_threshold=self.retain_threshold)
        require_at_least(0, check_every_steps=self.check_every_steps)
        require_at_least(1, check_rows=self.check_rows, retain_per_forget=self.retain_per_forget)
        check_choice("check_tokens", self.check_tokens, CHECK_TOKENS)
        if self.uses_lora:
            raise UnlearnkitError(
                "undo noises every weight of the student and distils into the full weights; LoRA adapters cannot undo that "
                "noise. Set lora_rank=0 (for a LoRA inner unlearning: unlearn_settings=lora_rank=8)."
            )
        if self.stop_forget_nll is not None:
            raise UnlearnkitError("stop_forget_nll guards the inner unlearning, not the distillation: "
                                  f"pass it there (unlearn_settings=stop_forget_nll={self.stop_forget_nll:g}).")
        self._inner = self._build_inner()
        self._retain_draws: int | None = None

    def resolve_mixture(self, forget_rows: int, retain_rows: int) -> int:
        """Retain rows per forget row for this data (``retain_per_forget``, or the data's proportion); read by ``pair_extras``."""
        self._retain_draws = self.retain_per_forget or max(1, retain_rows // max(1, forget_rows))
        return self._retain_draws

    def retain_draws(self) -> int:
        if self._retain_draws is None:
            raise RuntimeError("The distillation mixture is resolved in UNDO.setup(); call resolve_mixture(forget, retain) first.")
        return self._retain_draws

    def _build_inner(self) -> MethodConfig | None:
        """The inner method's config (None for ``unlearn_method=none``), checked now so that a bad setting fails first."""
        name = self.unlearn_method.strip()
        if name == NO_UNLEARNING:
            if self.unlearn_settings and self.unlearn_settings.strip():
                raise UnlearnkitError("unlearn_settings has no use with unlearn_method=none (no inner unlearning); drop it.")
            return None
        if name == "undo":
            raise UnlearnkitError("unlearn_method=undo would nest UNDO in itself; choose the method that unlearns first (e.g. graddiff).")
        METHODS.get(name)  # an unknown name fails here, with the closest ones
        from unlearnkit.unlearning import resolve_method  # here: that module imports every method, this one included

        defaults = {item.name: item.default for item in fields(self)}
        passed_on = {key: getattr(self, key) for key in INHERITED_SETTINGS if getattr(self, key) != defaults[key]}
        try:
            inner = resolve_method(name, parse_unlearn_settings(self.unlearn_settings), defaults=passed_on)
        except UnlearnkitError as error:
            raise UnlearnkitError(f"The inner unlearning ({name}): {error}") from None
        if inner.uses_lora and not inner.lora_merge:
            raise UnlearnkitError("The inner unlearning must hand back full weights to noise: drop lora_merge=false from unlearn_settings.")
        return inner

    @property
    def inner_method(self) -> str | None:
        """The inner method's name; None when the input model is the teacher."""
        return None if self._inner is None else self.unlearn_method.strip()

    @property
    def inner_config(self) -> MethodConfig | None:
        return self._inner

    def check_data(self, forget: Sequence[dict], retain: Sequence[dict]) -> None:
        """Everything the inner method can refuse about the data, before any training."""
        if self._inner is not None:
            from unlearnkit.unlearning import check_method_inputs

            check_method_inputs(self.inner_method, self._inner, forget, retain)

    def check_model(self, model: PreTrainedModel) -> None:
        if self._inner is not None:
            from unlearnkit.parameters import selected_parameter_names
            from unlearnkit.unlearning import method_localization

            self._inner.check_model(model)
            selected_parameter_names(model, self._inner.selection())
            method_localization(self.inner_method, self._inner, model)

    def check_encoded(self, tokenizer: PreTrainedTokenizerBase, fmt: PromptFormat, forget: Sequence[dict]) -> None:
        if self._inner is not None:
            self._inner.check_encoded(tokenizer, fmt, forget)


def xavier_uniform_bound(shape: Sequence[int]) -> float:
    """Glorot & Bengio's uniform bound ``sqrt(6 / (fan_in + fan_out))`` for a weight of ``shape`` (two or more dims)."""
    receptive = math.prod(shape[2:])
    return math.sqrt(6.0 / (shape[1] * receptive + shape[0] * receptive))


def shrink_and_perturb(weight: torch.Tensor, alpha: float, beta: float, generator: torch.Generator) -> torch.Tensor:
    """``(1 − α) θ + α β N`` for one tensor: ``N ~ U(−b, b)``, ``b`` the Xavier bound, for 2-D+ tensors; ``N = 0`` for 1-D ones.

    The noise is drawn on the CPU from ``generator`` (so a seed gives the same student on any
    device), in float32, and the result cast back to the weight's dtype. With ``α β = 0`` nothing
    is drawn; ``α = 0`` returns the weight unchanged.

    Reference: Lee, Foote et al., "Distillation Robustifies Unlearning", NeurIPS 2025 (the paper's
    shrink-and-perturb corruption; Ash & Adams, "On Warm-Starting Neural Network Training", NeurIPS 2020).
    """
    if not (0 <= alpha <= 1 and math.isfinite(beta) and beta >= 0):
        raise ValueError(f"alpha must be in [0, 1] and beta a finite number >= 0; got alpha={alpha}, beta={beta}.")
    if alpha == 0:
        return weight.detach().clone()
    mixed = (1 - alpha) * weight.detach().float()
    if weight.dim() >= 2 and alpha * beta != 0:
        bound = xavier_uniform_bound(tuple(weight.shape))
        noise = torch.empty(tuple(weight.shape), dtype=torch.float32).uniform_(-bound, bound, generator=generator)
        mixed = mixed + alpha * beta * noise.to(weight.device)
    return mixed.to(weight.dtype)


def retain_gap(student_ce: float, teacher_ce: float) -> float:
    """How far the student's retain CE is above the teacher's, relatively: ``(CE_S − CE_T) / CE_T``."""
    return (student_ce - teacher_ce) / max(teacher_ce, TEACHER_CE_FLOOR)


def recovered(student_ce: float, teacher_ce: float, threshold: float) -> bool:
    """The authors' stopping rule: the student's retain CE is within ``threshold`` of the teacher's, relatively."""
    return retain_gap(student_ce, teacher_ce) < threshold


def full_sequence(example: Mapping[str, list[int]]) -> dict[str, list[int]]:
    """An encoded QA example with every token as a label (prompt included): the CE of the whole text."""
    return {"input_ids": list(example["input_ids"]), "labels": list(example["input_ids"])}


def stack_batches(batches: Sequence[dict[str, torch.Tensor]], pad_token_id: int) -> dict[str, torch.Tensor]:
    """Right-padded batches (``input_ids``, ``labels``, ``attention_mask``; (B_i, T_i)) as one (ΣB_i, max T_i) batch."""
    if len(batches) == 1:
        return batches[0]
    width = max(batch["input_ids"].shape[1] for batch in batches)
    fill = {"input_ids": pad_token_id, "labels": IGNORE_INDEX, "attention_mask": 0}
    return {key: torch.cat([torch.nn.functional.pad(batch[key], (0, width - batch[key].shape[1]), value=value) for batch in batches])
            for key, value in fill.items()}


class RetainRecovery(TrainerCallback):
    """Checks the stopping rule after each epoch (or every ``check_every_steps`` steps) and ends training once it holds."""

    def __init__(self, trainer: UNDO) -> None:
        self.trainer = trainer
        self.every_steps = trainer.method_config.check_every_steps

    def on_step_end(self, args, state, control, **kwargs):  # noqa: ANN001 - Trainer callback signature
        if self.every_steps and state.global_step % self.every_steps == 0:
            self.trainer.check_recovery(control)

    def on_epoch_end(self, args, state, control, **kwargs):  # noqa: ANN001 - Trainer callback signature
        if not self.every_steps:
            self.trainer.check_recovery(control)


@register_method(
    "undo",
    config=UNDOConfig,
    paper='Lee, Foote et al., "Distillation Robustifies Unlearning", NeurIPS 2025',
    summary="Unlearn with another method (teacher T), shrink-and-perturb T into a student, distil KL(p_T || p_S) on forget "
            "and retain text until the student's retain CE is within 5% of T's.",
    family="robustness/distillation",
)
class UNDO(UnlearnTrainer):
    """UNDO (Lee, Foote et al., NeurIPS 2025): the Trainer's loop is the distillation; ``setup()`` builds teacher and student."""

    supports_lora = False
    teacher: PreTrainedModel | None = None

    @classmethod
    def pair_extras(
        cls, config: UNDOConfig, rng: random.Random, forget_row: dict, retain_rows: Sequence[dict]
    ) -> dict[str, tuple[str, str]]:
        """The retain rows beyond the dataset's own partner (``retain``), under ``retain_1`` .. ``retain_{k-1}``."""
        picks = (retain_rows[rng.randrange(len(retain_rows))] for _ in range(config.retain_draws() - 1))
        return {f"retain_{index}": (row["question"], row["answer"]) for index, row in enumerate(picks, start=1)}

    def setup(self) -> None:
        config = self.method_config
        data = self.train_dataset
        draws = config.resolve_mixture(len(data.forget_rows), len(data.retain_rows))
        logger.info("undo: distilling on %d forget row(s) with %d retain row(s) each", len(data.forget_rows), draws)
        self.inner_log: list[dict[str, Any]] = []
        self.teacher = distributed.place_frozen_model(self.accelerator, self._unlearned_teacher(), self.args.device)
        self._noise_student()
        rows = self.train_dataset.retain
        step = max(1, len(rows) // config.check_rows)
        chosen = rows[::step][: config.check_rows]
        self.check_examples = [full_sequence(example) for example in chosen] if config.check_tokens == "all" else list(chosen)
        self.teacher_retain_ce = self.retain_ce(self.teacher)
        logger.info("undo: teacher retain CE %.4g on %d retain rows", self.teacher_retain_ce, len(self.check_examples))
        if config.retain_threshold is not None:
            self.add_callback(RetainRecovery(self))

    def _unlearned_teacher(self) -> PreTrainedModel:
        """A copy of the model unlearned by the inner method (or the model as given, for ``unlearn_method=none``)."""
        config = self.method_config
        teacher = copy.deepcopy(self.model)
        if config.inner_method is None:
            return teacher
        from unlearnkit.unlearning import unlearn  # here: that module imports every method, this one included

        data = self.train_dataset
        logger.info("undo: unlearning with %s to make the teacher", config.inner_method)
        outcome = unlearn(teacher, data.tokenizer, config.inner_method, data.forget_rows, data.retain_rows, config.inner_config,
                          data.fmt, show_progress=not self.args.disable_tqdm)
        self.inner_log = [line for line in outcome.log_history if "loss" in line]
        return outcome.model

    @torch.no_grad()
    def _noise_student(self) -> None:
        """Set every trainable tensor of the model to the shrunk-and-perturbed teacher's (the others stay as they are)."""
        config = self.method_config
        generator = torch.Generator().manual_seed(config.seed)
        teacher = dict(self.teacher.named_parameters())
        noised = 0
        for name, parameter in self.model.named_parameters():
            if parameter.requires_grad:
                if name not in teacher:
                    raise UnlearnkitError(f"The teacher {config.inner_method} handed back has no parameter {name}: UNDO needs a "
                                          "teacher of the same architecture; choose another unlearn_method.")
                parameter.copy_(shrink_and_perturb(teacher[name], config.noise_alpha, config.noise_beta, generator))
                noised += 1
        logger.info("undo: student = shrink-and-perturb of the teacher (alpha %g, beta %g) on %d tensors",
                    config.noise_alpha, config.noise_beta, noised)

    @torch.no_grad()
    def retain_ce(self, model: PreTrainedModel) -> float:
        """Mean next-token NLL over the check rows' scored tokens (``check_tokens``), B rows at a time, in eval mode."""
        was_training = model.training
        model.eval()
        total, count = 0.0, 0
        size = self.method_config.batch_size
        try:
            for start in range(0, len(self.check_examples), size):
                batch = pad_batch(self.check_examples[start:start + size], self.train_dataset.tokenizer.pad_token_id)
                batch = {key: value.to(self.args.device) for key, value in batch.items()}
                nll, mask = losses.token_nll(self.logits(model, batch), batch["labels"])
                total += float((nll * mask).sum())
                count += int(mask.sum())
        finally:
            model.train(was_training)
        return total / max(count, 1)

    def check_recovery(self, control: Any) -> None:
        """Compare the student's retain CE with the teacher's; stop the Trainer once within ``retain_threshold``."""
        student_ce = self.retain_ce(self.model)
        gap = retain_gap(student_ce, self.teacher_retain_ce)
        self.log({"undo_student_retain_ce": student_ce, "undo_teacher_retain_ce": self.teacher_retain_ce, "undo_retain_gap": gap})
        if recovered(student_ce, self.teacher_retain_ce, self.method_config.retain_threshold):
            logger.info("undo: step %d, student retain CE %.4g within %.1f%% of the teacher's %.4g; distillation done",
                        self.state.global_step, student_ce, 100 * self.method_config.retain_threshold, self.teacher_retain_ce)
            control.should_training_stop = True

    def gradient_step(self, model, inputs, num_items_in_batch=None):  # noqa: ANN001 - Trainer signature
        """KL(p_T ‖ p_S) as one token mean over the step's forget and retain rows, its gradient accumulated chunk by chunk.

        A step holds ``batch_size × (1 + retain_per_forget)`` rows. Run at once, the student's activations and the
        full-vocabulary logits of all of them are held until the backward pass: at the defaults on the ``smollm2``
        preset (160 rows, 49,152-token vocabulary) that was 16-20 GiB, and the kernel killed the run. Each chunk of
        ``batch_size`` rows is distilled and back-propagated on its own, weighted by its share of the step's tokens:
        the same gradient as one pass, with one chunk's activations in memory at a time.
        """
        model.train()
        inputs = self._prepare_inputs(inputs)
        forget = inputs["forget"]
        retain = stack_batches([batch for key, batch in inputs.items() if key != "forget"], self.train_dataset.tokenizer.pad_token_id)
        forget_tokens, retain_tokens = int(forget["attention_mask"].sum()), int(retain["attention_mask"].sum())
        # Micro-batches of one optimiser step add up to their mean, as the Trainer's loss scaling does.
        scale = 1.0 / self.current_gradient_accumulation_steps
        weight = scale / (forget_tokens + retain_tokens)
        forget_sum = self.distil_backward(model, forget, weight)
        retain_sum = self.distil_backward(model, retain, weight)
        self.record(forget_loss=forget_sum / max(forget_tokens, 1), retain_loss=retain_sum / max(retain_tokens, 1))
        return (forget_sum + retain_sum) * weight

    def distil_backward(self, model: PreTrainedModel, batch: dict[str, torch.Tensor], weight: float) -> torch.Tensor:
        """Back-propagate ``weight × Σ_t m_t KL_t`` over ``batch``, ``batch_size`` rows at a time; return the detached sum."""
        chunk = max(1, self.method_config.batch_size)
        total = torch.zeros((), device=batch["attention_mask"].device)
        for start in range(0, batch["attention_mask"].shape[0], chunk):
            part = {key: value[start:start + chunk] for key, value in batch.items()}
            tokens = int(part["attention_mask"].sum())
            if tokens == 0:
                continue
            with torch.no_grad():
                teacher_logits = self.logits(self.teacher, part)
            with self.compute_loss_context_manager():
                kl = losses.forward_kl_distillation_loss(self.logits(model, part), teacher_logits, part["attention_mask"])
            del teacher_logits
            self.accelerator.backward(kl * (tokens * weight))
            total += kl.detach() * tokens
        return total

    def finalize(self, model: PreTrainedModel) -> PreTrainedModel:
        for line in self.inner_log:
            self.log({f"undo_unlearn_{key}": float(line[key]) for key in ("loss", "forget_loss", "retain_loss", "step") if key in line})
        self.teacher = None  # only the distillation needs it
        return model

