"""Class-adversarial network (method notes 3.5 / 4.3): gradient reversal, DANN ramp, adversary MLP.

The adversary predicts the training identity from a feature; the feature extractor is pushed to make that
prediction hard, i.e. to keep class-invariant ("general") information. Two ways to train the saddle point:

* ``grl`` (Ganin & Lempitsky, ICML 2015): the adversary sees ``GRL(h)``; one backward pass trains it to
  minimise CE(A(h), y) while the extractor receives ``-lambda * dCE/dh`` (it maximises the CE).
* ``confusion`` (Tzeng et al., ICCV 2015): the adversary is trained on ``h.detach()``; separately the
  extractor minimises CE(A'(h), uniform), where A' is the adversary called through
  ``torch.func.functional_call`` with detached parameters and cloned BN buffers, so this term moves only the
  extractor, its gradient scaled by ``lambda``. It is bounded below by log C, unlike the GRL objective.

``lambda_p = lambda_max * (2 / (1 + exp(-gamma p)) - 1)``, p = fraction of training done. With
lambda_max = 0 the adversary still trains but its gradient into the extractor is exactly zero (control C0).

Size: on h = 6144 (R50, three taps) the default MLP [1024, 1024] over 751 ids adds ~8.1 M parameters
(6.3 M + 1.05 M + 0.77 M); it exists only in training and is dropped from retrieval checkpoints.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn
from torch.func import functional_call


class GradientReversal(torch.autograd.Function):
    """Identity forward; backward multiplies the upstream gradient by ``-lambd``."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, lambd: float) -> torch.Tensor:  # noqa: D102
        ctx.lambd = float(lambd)
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad_output: torch.Tensor) -> tuple[torch.Tensor, None]:  # noqa: D102
        return grad_output * -ctx.lambd, None


def grad_reverse(x: torch.Tensor, lambd: float) -> torch.Tensor:
    return GradientReversal.apply(x, lambd)


def scale_gradient(x: torch.Tensor, factor: float) -> torch.Tensor:
    """Identity forward; backward multiplies the gradient by ``factor`` (a reversal with ``-factor``)."""
    return GradientReversal.apply(x, -factor)


def dann_lambda(progress: float, lambda_max: float, gamma: float = 10.0) -> float:
    """DANN ramp: 0 at progress 0, rising monotonically towards ``lambda_max`` as progress -> 1."""
    if not 0.0 <= progress <= 1.0:
        raise ValueError(f"training progress must be in [0, 1], got {progress}")
    return lambda_max * (2.0 / (1.0 + math.exp(-gamma * progress)) - 1.0)


class ClassAdversary(nn.Module):
    """Identity classifier: (Linear -> BN -> ReLU -> Dropout) per hidden width, then Linear to C classes."""

    def __init__(
        self, in_dim: int, num_classes: int, hidden: Sequence[int] = (1024, 1024), dropout: float = 0.5
    ):
        super().__init__()
        layers: list[nn.Module] = []
        width = in_dim
        for out in hidden:
            layers += [nn.Linear(width, out), nn.BatchNorm1d(out), nn.ReLU(inplace=True), nn.Dropout(dropout)]
            width = out
        layers.append(nn.Linear(width, num_classes))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def confusion_logits(self, x: torch.Tensor) -> torch.Tensor:
        """Logits whose gradient reaches ``x`` only: weights detached, BN running stats left untouched."""
        frozen = {name: p.detach() for name, p in self.named_parameters()}
        frozen.update({name: b.clone() for name, b in self.named_buffers()})
        return functional_call(self, frozen, (x,))


class AdversarialHeads(nn.Module):
    """One adversary per attached feature; applies GRL or the confusion split according to ``mode``."""

    def __init__(
        self,
        in_dims: Sequence[int],
        num_classes: int,
        hidden: Sequence[int],
        dropout: float,
        mode: str,
    ) -> None:
        super().__init__()
        self.mode = mode
        self.heads = nn.ModuleList(ClassAdversary(d, num_classes, hidden, dropout) for d in in_dims)

    def forward(
        self, features: Sequence[torch.Tensor], lambd: float
    ) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Return (adversary logits, confusion logits); the second list is empty in ``grl`` mode."""
        if len(features) != len(self.heads):
            raise ValueError(f"expected {len(self.heads)} adversary inputs, got {len(features)}")
        if self.mode == "grl":
            return [head(grad_reverse(f, lambd)) for head, f in zip(self.heads, features, strict=True)], []
        adv = [head(f.detach()) for head, f in zip(self.heads, features, strict=True)]
        confusion = [
            head.confusion_logits(scale_gradient(f, lambd))
            for head, f in zip(self.heads, features, strict=True)
        ]
        return adv, confusion
