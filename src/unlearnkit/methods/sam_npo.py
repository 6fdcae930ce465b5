"""SAM-NPO: NPO whose forget loss is minimised sharpness-aware, so that relearning has to climb further.

Fan et al., "Towards LLM Unlearning Resilient to Relearning Attacks: A Sharpness-Aware
Minimization Perspective and Beyond", ICML 2025 (arXiv:2502.05374). A relearning attack
fine-tunes the unlearned model on a few forget samples; the authors relate its success to
the sharpness of the forget loss around the unlearned weights, and smooth only that loss.
One optimiser micro-step with ``smoothing="sam"`` (three forward/backward passes):

1. ``g = ∇θ L_f(θ)`` on the forget batch, ``L_f`` NPO's loss (reference NLLs fixed);
2. ``ε = rho · g / ‖g‖₂``, one norm over every trainable tensor (under LoRA: the adapters alone);
3. ``g_f = ∇θ L_f(θ + ε)``, the gradient at the worst nearby point (to first order);
4. the weights are put back exactly: copied from before step 2, not ``θ + ε − ε``, which rounds;
5. ``g_r = ∇θ`` of the retain term at ``θ``;
6. the Trainer's optimiser steps on ``g_f + α · g_r`` (clipping, schedule and decay as for any method).

``smoothing="rs"`` (randomized smoothing, the paper's other smoothing with a code path):
``g_f`` is the mean of ``∇θ L_f(θ + δ)`` over ``rs_samples`` draws of ``δ ~ N(0, rs_sigma² I)``,
then steps 4-6. The draws are a pure function of (seed, optimiser step, micro-batch).

Choices where this differs from the authors' code (``OPTML-Group/Unlearn-Smooth``):

* NPO's NLL: by default the sequence-sum NLL, one margin per sequence, as the ``npo`` method
  (the baseline SAM-NPO is compared with: with ``rho=0`` the two give the same gradient).
  ``forget_nll="pooled"`` is the authors' WMDP code: one margin for the batch, between the
  models' mean NLLs over all its answer tokens (``outputs.loss``).
* Gradient accumulation: every micro-batch perturbs with its own gradient and adds
  ``(g_f + α g_r) / steps``. The authors' trainer zeroes the gradients inside each micro-step,
  so only the last micro-batch of a step counts; their recipes accumulate nothing, where the two agree.
* ``g = 0``: ``ε = 0`` (the authors' code divides by zero).
* Several processes (DDP): ``g`` is averaged over processes before its norm, as the authors'
  all-reducing backward does; FSDP and DeepSpeed shard the weights and are refused.
* fp16 is refused (step 1's gradient would bypass the loss scaler); bf16 and full precision work.
"""

from __future__ import annotations

import functools
import random
from collections.abc import Sequence
from dataclasses import dataclass, field, fields

import torch
from torch import Tensor
from transformers import PreTrainedModel

from unlearnkit import distributed, losses
from unlearnkit.errors import UnlearnkitError
from unlearnkit.methods.base import UnlearnTrainer, register_method
from unlearnkit.methods.npo import NPOConfig
from unlearnkit.settings import check_choice, require_at_least, require_non_negative, require_positive

SMOOTHINGS = ("sam", "rs")
FORGET_NLLS = ("sequence", "pooled")
# The settings that only one smoothing reads: given with the other, they would be silently ignored.
SMOOTHING_SETTINGS = {"sam": ("rho",), "rs": ("rs_samples", "rs_sigma")}


@dataclass
class SAMNPOConfig(NPOConfig):
    """NPO's settings (the NPO authors' TOFU recipe) plus the smoothing; Fan et al.'s MUSE News recipe agrees on beta, alpha, lr, epochs."""

    num_epochs: float = field(
        default=10.0, metadata={"help": "Passes over the forget set (the NPO authors on TOFU and Fan et al.'s MUSE recipe: 10)."},
    )
    beta: float = field(default=0.1, metadata={"help": "Inverse temperature of the NPO forget loss (Fan et al.'s MUSE recipe: 0.1)."})
    alpha: float = field(
        default=1.0,
        metadata={"help": "Weight (the paper's gamma) of the retain term, taken at the unperturbed weights "
                          "(Fan et al.'s MUSE News recipe: 1.0; Books: 2.5)."},
    )
    smoothing: str = field(
        default="sam",
        metadata={"help": "'sam': gradient of the forget loss at theta + rho g/||g|| (3 forward/backward passes per step); "
                          "'rs': mean gradient over rs_samples Gaussian perturbations (rs_samples + 1 passes)."},
    )
    rho: float = field(
        default=0.01,
        metadata={"help": "smoothing=sam: radius of the ascent step eps = rho g/||g||, one L2 norm over all trainable tensors "
                          "(Fan et al.: 0.01). 0: no perturbation, plain NPO's gradient."},
    )
    rs_samples: int = field(default=3, metadata={"help": "smoothing=rs: Gaussian perturbations averaged per step (Fan et al.'s code: 3)."})
    rs_sigma: float = field(
        default=1e-4, metadata={"help": "smoothing=rs: standard deviation of each weight's perturbation (Fan et al.'s WMDP recipe: 1e-4)."},
    )
    forget_nll: str = field(
        default="sequence",
        metadata={"help": "NPO's NLL: 'sequence' (sequence-sum, one margin per sequence, as the npo method) or 'pooled' "
                          "(the batch's mean NLL over all answer tokens, one margin per batch: Fan et al.'s code)."},
    )

    def __post_init__(self) -> None:
        if self.mixed_precision == "fp16":  # before the base class's checks, whose fp16 message (no GPU) would hide this one
            raise UnlearnkitError(
                "sam_npo takes its first forget gradient outside fp16's loss scaler (it would underflow unscaled). "
                "Use mixed_precision=bf16 or 'no'."
            )
        super().__post_init__()
        check_choice("smoothing", self.smoothing, SMOOTHINGS)
        check_choice("forget_nll", self.forget_nll, FORGET_NLLS)
        require_non_negative(rho=self.rho)
        require_positive(rs_sigma=self.rs_sigma)
        require_at_least(1, rs_samples=self.rs_samples)
        defaults = {item.name: item.default for item in fields(self)}
        unread = [name for other, names in SMOOTHING_SETTINGS.items() if other != self.smoothing for name in names
                  if getattr(self, name) != defaults[name]]
        if unread:
            owner = "sam" if unread[0] in SMOOTHING_SETTINGS["sam"] else "rs"
            raise UnlearnkitError(f"{', '.join(unread)} {'is a setting' if len(unread) == 1 else 'are settings'} of smoothing={owner}, "
                                  f"but smoothing is {self.smoothing}: add --set smoothing={owner}, or drop {' and '.join(unread)}.")


def sam_perturbation(gradients: Sequence[Tensor | None], rho: float) -> list[Tensor | None]:
    """SAM's ascent step ``ε = rho · g / ‖g‖₂``, the norm taken over all tensors together; ``None`` stays ``None``.

    A zero gradient gives ``ε = 0`` (no direction to climb). Each ``ε`` has its gradient's dtype and device.
    """
    present = [gradient for gradient in gradients if gradient is not None]
    if not present or rho == 0:
        return [None] * len(gradients)
    device = present[0].device
    # Half-precision gradients are summed in float32 (their squares overflow fp16); float64 stays float64.
    dtype = functools.reduce(torch.promote_types, (gradient.dtype for gradient in present), torch.float32)
    norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g.to(dtype)).to(device) for g in present]))
    if norm == 0:
        return [None] * len(gradients)
    return [None if gradient is None else (gradient.to(dtype) * (rho / norm.to(gradient.device))).to(gradient.dtype)
            for gradient in gradients]


def noise_generator(seed: int, step: int, micro_batch: int) -> torch.Generator:
    """A CPU generator that is a pure function of (seed, optimiser step, micro-batch within the step)."""
    # random.Random hashes a string seed with SHA-512: stable across processes and runs, unlike hash().
    return torch.Generator().manual_seed(random.Random(f"rs:{seed}:{step}:{micro_batch}").getrandbits(63))


def _average_over_processes(gradients: Sequence[Tensor | None]) -> Sequence[Tensor | None]:
    """Each gradient's mean over the processes of a DDP run (as its backward would all-reduce it); one process: as given."""
    processes = distributed.world_size()
    if processes == 1:
        return gradients
    averaged = []
    for gradient in gradients:
        if gradient is not None:
            gradient = gradient.contiguous()
            torch.distributed.all_reduce(gradient)
            gradient = gradient / processes
        averaged.append(gradient)
    return averaged


@register_method(
    "sam_npo",
    config=SAMNPOConfig,
    paper='Fan et al., "Towards LLM Unlearning Resilient to Relearning Attacks: A Sharpness-Aware Minimization Perspective '
          'and Beyond", ICML 2025',
    summary="update = grad L_NPO(theta + eps) on D_f with eps = rho g/||g||, g = grad L_NPO(theta) (or Gaussian eps, smoothing=rs), "
            "+ alpha * grad retain term at theta.",
    family="robustness",
)
class SAMNPO(UnlearnTrainer):
    """NPO+RT with a smoothed forget gradient (Fan et al., ICML 2025): SAM by default, randomized smoothing as an option."""

    cached_reference_keys = ("forget",)
    _noise_step = -1
    _micro_batch = 0

    def setup(self) -> None:
        if self.is_fsdp_enabled or self.is_deepspeed_enabled:
            raise UnlearnkitError(
                "sam_npo perturbs every trainable weight in place between passes, which FSDP and DeepSpeed shard; "
                "run it in one process or under DDP (an accelerate config without FSDP or DeepSpeed)."
            )

    def forget_loss(self, model: PreTrainedModel, forget: dict[str, Tensor], reference_nll: Tensor) -> Tensor:
        """NPO's loss on the forget batch at the model's current weights (the reference NLLs are fixed)."""
        config = self.method_config
        with self.compute_loss_context_manager():
            nll = losses.sequence_nll(self.logits(model, forget), forget["labels"])
        if config.forget_nll == "pooled":
            return losses.pooled_npo_loss(nll, reference_nll, losses.sequence_token_count(forget["labels"]), config.beta)
        return losses.npo_loss(nll, reference_nll, config.beta)

    def gradient_step(self, model, inputs, num_items_in_batch=None):  # noqa: ANN001 - Trainer signature
        config = self.method_config
        model.train()
        inputs = self._prepare_inputs(inputs)
        forget = inputs["forget"]
        # Micro-batches of one optimiser step add up to their mean, as the Trainer's loss scaling does.
        scale = 1.0 / self.current_gradient_accumulation_steps
        parameters = [p for p in model.parameters() if p.requires_grad]
        reference_nll = self.reference_sequence_nll(forget)  # a constant: computed once for every pass
        perturbs = config.smoothing == "rs" or config.rho > 0
        theta = [p.detach().clone() for p in parameters] if perturbs else []
        try:
            if config.smoothing == "rs":
                forget_loss = self._randomized_smoothing(model, forget, reference_nll, parameters, theta, scale)
            else:
                forget_loss = self._sharpness_aware(model, forget, reference_nll, parameters, scale)
        finally:
            # Restored by copy, even if a pass failed: the retain pass and the optimiser see exactly theta
            # (theta is empty when nothing was perturbed: rho=0).
            with torch.no_grad():
                for parameter, value in zip(parameters, theta, strict=False):
                    parameter.copy_(value)
        self.record(forget_loss=forget_loss)
        with self.compute_loss_context_manager():
            retain_loss = self.retain_loss(model, inputs["retain"], config.retain_loss)
        self.accelerator.backward(config.alpha * retain_loss * scale)
        return (forget_loss.detach() + config.alpha * retain_loss.detach()) * scale

    def _sharpness_aware(self, model, forget, reference_nll, parameters, scale) -> Tensor:  # noqa: ANN001 - tensors and a batch
        """Steps 1-3: ``g`` at theta (without touching ``.grad``), then ``∇ L_f(θ + ε)`` accumulated into ``.grad``."""
        config = self.method_config
        if config.rho > 0:
            # The unwrapped model: a DDP wrapper would expect this pass's gradients to be all-reduced by its hooks.
            plain = self.accelerator.unwrap_model(model)
            unperturbed = self.forget_loss(plain, forget, reference_nll)
            gradients = torch.autograd.grad(unperturbed, parameters, allow_unused=True)
            epsilon = sam_perturbation(_average_over_processes(gradients), config.rho)
            with torch.no_grad():
                for parameter, step in zip(parameters, epsilon, strict=True):
                    if step is not None:
                        parameter.add_(step)
        perturbed = self.forget_loss(model, forget, reference_nll)
        self.accelerator.backward(perturbed * scale)
        if config.rho > 0:
            # SAM's sharpness term L_f(theta + eps) - L_f(theta): how much the forget loss rises within the radius.
            self.record(sharpness=perturbed.detach() - unperturbed.detach())
        return perturbed.detach()

    def _randomized_smoothing(self, model, forget, reference_nll, parameters, theta, scale) -> Tensor:  # noqa: ANN001
        """``mean_k ∇ L_f(θ + δ_k)``, ``δ_k ~ N(0, σ² I)``, accumulated into ``.grad``; returns the mean perturbed loss."""
        config = self.method_config
        generator = self._next_generator()
        total = torch.zeros((), device=reference_nll.device)
        for _ in range(config.rs_samples):
            with torch.no_grad():
                for parameter, value in zip(parameters, theta, strict=True):
                    noise = torch.randn(parameter.shape, generator=generator, dtype=torch.float32)
                    parameter.copy_(value + config.rs_sigma * noise.to(device=value.device, dtype=value.dtype))
            loss = self.forget_loss(model, forget, reference_nll)
            self.accelerator.backward(loss * (scale / config.rs_samples))
            total = total + loss.detach()
        return total / config.rs_samples

    def _next_generator(self) -> torch.Generator:
        step = self.state.global_step
        if step != self._noise_step:
            self._noise_step, self._micro_batch = step, 0
        generator = noise_generator(self.method_config.seed, step, self._micro_batch)
        self._micro_batch += 1
        return generator
