"""Optimizers and the learning-rate schedule of the strong baseline (Luo et al. 2019, arXiv 1903.07071).

Schedule granularity: the factor is updated **every iteration** from the fractional epoch
``e = global_step / iters_per_epoch``. The warm-up is linear in ``e`` (``warmup_factor`` -> 1 over
``warmup_epochs``), so it is smooth even with few epochs; step milestones are given in epochs and take effect
at the first iteration of that epoch, which makes the step schedule identical to the usual per-epoch one after
warm-up. Cosine decays from 1 to 0 between the end of warm-up and ``epochs``.

Center-loss centres get their own plain SGD optimizer (lr ``loss.center.lr``, no weight decay); as in BoT
their update speed does not depend on the center-loss weight (``CenterLoss`` divides their gradient by it).
"""

from __future__ import annotations

import bisect
import math
from typing import Any

import torch
from torch import nn

SUPPORTED_OPTIMIZERS = ("adam", "sgd")
SUPPORTED_SCHEDULERS = ("step", "cosine")


def build_optimizer(model: nn.Module, solver_cfg: dict[str, Any]) -> torch.optim.Optimizer:
    """Adam or SGD (momentum) over the trainable model parameters with L2 weight decay."""
    params = [p for p in model.parameters() if p.requires_grad]
    name = str(solver_cfg["optimizer"]).lower()
    lr = float(solver_cfg["base_lr"])
    weight_decay = float(solver_cfg["weight_decay"])
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
    if name == "sgd":
        return torch.optim.SGD(
            params, lr=lr, momentum=float(solver_cfg["momentum"]), weight_decay=weight_decay
        )
    raise ValueError(
        f"solver.optimizer must be one of {SUPPORTED_OPTIMIZERS}, got {solver_cfg['optimizer']!r}"
    )


def build_loss_optimizer(criterion: nn.Module, loss_cfg: dict[str, Any]) -> torch.optim.Optimizer | None:
    """SGD for the criterion's own parameters (center-loss centres), or None when there are none in use."""
    params = [p for p in criterion.parameters() if p.requires_grad]
    if not params or float(loss_cfg["center"]["weight"]) == 0.0:
        return None
    return torch.optim.SGD(params, lr=float(loss_cfg["center"]["lr"]), weight_decay=0.0)


class WarmupLRSchedule(torch.optim.lr_scheduler.LambdaLR):
    """Per-iteration linear warm-up followed by a step or cosine schedule (see module docstring): torch's
    ``LambdaLR`` driven by :meth:`factor`, stepped once per iteration.

    The factor is a pure function of the global step, so resuming needs only the scheduler's step count,
    which ``LambdaLR``'s own ``state_dict`` carries.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, solver_cfg: dict[str, Any], iters_per_epoch: int):
        if iters_per_epoch < 1:
            raise ValueError(f"iters_per_epoch must be >= 1, got {iters_per_epoch}")
        self.kind = str(solver_cfg["scheduler"]).lower()
        if self.kind not in SUPPORTED_SCHEDULERS:
            raise ValueError(
                f"solver.scheduler must be one of {SUPPORTED_SCHEDULERS}, got {solver_cfg['scheduler']!r}"
            )
        self.iters_per_epoch = int(iters_per_epoch)
        self.epochs = int(solver_cfg["epochs"])
        self.warmup_epochs = float(solver_cfg["warmup_epochs"])
        self.warmup_factor = float(solver_cfg["warmup_factor"])
        self.milestones = sorted(int(m) for m in solver_cfg["milestones"])
        self.gamma = float(solver_cfg["gamma"])
        super().__init__(optimizer, lr_lambda=self.factor)

    @property
    def last_step(self) -> int:
        """Iterations taken so far (``LambdaLR``'s ``last_epoch`` counts calls to ``step``)."""
        return self.last_epoch

    def factor(self, step: int) -> float:
        """Multiplier of the base learning rate at global iteration ``step``."""
        epoch = step / self.iters_per_epoch
        warmup = 1.0
        if epoch < self.warmup_epochs:
            warmup = self.warmup_factor + (1.0 - self.warmup_factor) * epoch / self.warmup_epochs
        if self.kind == "step":
            return warmup * self.gamma ** bisect.bisect_right(self.milestones, epoch)
        decay_span = max(self.epochs - self.warmup_epochs, 1e-12)
        progress = min(max(epoch - self.warmup_epochs, 0.0) / decay_span, 1.0)
        return warmup * 0.5 * (1.0 + math.cos(math.pi * progress))
