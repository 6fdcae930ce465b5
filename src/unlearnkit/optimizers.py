"""unlearnkit's own optimisers, beside the ``transformers`` ones (``optimizer=soul``).

SOUL (Jia et al., "SOUL: Unlocking the Power of Second-Order Optimization for LLM Unlearning", EMNLP 2024)
runs an unlearning loss with Sophia (Liu et al., "Sophia: A Scalable Stochastic Second-order Optimizer for
Language Model Pre-training", ICLR 2024), a clipped diagonal-Newton step. Per parameter tensor, at step t
with gradient g (already clipped by the Trainer's max_grad_norm):

    h <- beta2 * h + (1 - beta2) * g * g              (every ``hessian_interval`` steps: t = 1, 1 + k, 1 + 2k, ...)
    m <- beta1 * m + (1 - beta1) * g
    theta <- theta * (1 - lr * wd)                     (decoupled weight decay)
    theta <- theta - lr * sign(m) * min(|m| / (rho * bs * h + eps), 1)

h is the squared-gradient (Gauss-Newton-Bartlett-style) estimate of the Hessian diagonal that the SOUL code
uses (``OPTML-Group/SOUL``, ``src/optim/sophia.py``), and the code refreshes it at every step: hence the
default ``hessian_interval=1``; Sophia's own k (10 in its paper) is the option. Where curvature is small
the step is lr * sign(m), so no coordinate moves by more than lr (plus the decay) per step.

One difference from the released code, on purpose: its ``step`` updates the momentum twice (once in
``update_exp_avg`` and again in the per-tensor update), which is exactly an EMA with coefficient beta1**2.
This module follows the paper's single EMA; ``betas=(0.81, 0.95)`` reproduces the code's update exactly.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch

from unlearnkit.errors import UnlearnkitError

# The name ``--set optimizer=...`` takes for :class:`SoulSophia`.
SOUL = "soul"
# SOUL's settings (configs/TOFU/SO_*.json and src/optim/sophia.py of OPTML-Group/SOUL).
SOUL_RHO = 0.04
SOUL_BATCH_SIZE = 5120
SOUL_BETAS = (0.9, 0.95)
SOUL_EPS = 1e-15
SOUL_HESSIAN_INTERVAL = 1


def clipped_ratio(exp_avg: torch.Tensor, hessian: torch.Tensor, rho: float, batch_size: int, eps: float) -> torch.Tensor:
    """min(|m| / (rho * bs * h + eps), 1), element-wise (same shape as ``exp_avg``): the step's size in units of lr.

    h >= 0 always (a mean of squares), so the denominator is positive; an entry that never saw a
    gradient (m = h = 0) gets 0, not a division by zero.
    """
    return (exp_avg.abs() / (rho * batch_size * hessian + eps)).clamp_(max=1.0)


class SoulSophia(torch.optim.Optimizer):
    """Sophia with the squared-gradient Hessian estimate, as SOUL runs it (see the module docstring for the update).

    State per parameter p (each tensor shaped like p): ``exp_avg`` m, ``hessian`` h; ``step`` an int.
    Parameter groups may set ``lr`` and ``weight_decay`` each (the Trainer gives biases and norms no decay).
    """

    def __init__(
        self,
        params: Iterable[torch.Tensor] | Iterable[dict[str, Any]],
        lr: float = 1e-5,
        betas: tuple[float, float] = SOUL_BETAS,
        rho: float = SOUL_RHO,
        weight_decay: float = 0.1,
        batch_size: int = SOUL_BATCH_SIZE,
        eps: float = SOUL_EPS,
        hessian_interval: int = SOUL_HESSIAN_INTERVAL,
    ) -> None:
        if not lr >= 0:
            raise UnlearnkitError(f"SOUL: lr must be >= 0, got {lr}.")
        if not all(0 <= beta < 1 for beta in betas) or len(betas) != 2:
            raise UnlearnkitError(f"SOUL: betas must be two numbers in [0, 1), got {betas}.")
        if not rho > 0 or not eps > 0:
            raise UnlearnkitError(f"SOUL: rho and eps must be > 0, got rho={rho}, eps={eps}.")
        if not weight_decay >= 0:
            raise UnlearnkitError(f"SOUL: weight_decay must be >= 0, got {weight_decay}.")
        if batch_size < 1 or hessian_interval < 1:
            raise UnlearnkitError(f"SOUL: batch_size and hessian_interval must be >= 1, got {batch_size} and {hessian_interval}.")
        defaults = {"lr": lr, "betas": tuple(betas), "rho": rho, "weight_decay": weight_decay, "batch_size": batch_size,
                    "eps": eps, "hessian_interval": hessian_interval}
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            lr, rho, batch_size, eps = group["lr"], group["rho"], group["batch_size"], group["eps"]
            for param in group["params"]:
                if param.grad is None:  # not trained this step (frozen, or outside the loss): no state change at all, as in SOUL
                    continue
                grad = param.grad  # same shape as param
                if grad.is_sparse:
                    raise UnlearnkitError("SOUL does not support sparse gradients; use a dense embedding.")
                state = self.state[param]
                if not state:
                    state["step"] = 0
                    state["exp_avg"] = torch.zeros_like(param, memory_format=torch.preserve_format)
                    state["hessian"] = torch.zeros_like(param, memory_format=torch.preserve_format)
                state["step"] += 1
                exp_avg, hessian = state["exp_avg"], state["hessian"]
                # The first step refreshes h too: with h = 0 every coordinate would take a full sign step lr.
                if (state["step"] - 1) % group["hessian_interval"] == 0:
                    hessian.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
                exp_avg.mul_(beta1).add_(grad, alpha=1 - beta1)
                param.mul_(1 - lr * group["weight_decay"])
                param.addcmul_(exp_avg.sign(), clipped_ratio(exp_avg, hessian, rho, batch_size, eps), value=-lr)
        return loss
