"""Identity (classification) loss with label smoothing (Szegedy et al. 2016; BoT uses epsilon = 0.1).

Target q = (1 - eps) onehot(y) + eps / C; loss = mean_b(-sum_c q_c log softmax(z_b)_c). Smoothing keeps
the classifier from becoming over-confident on the (few) training identities. This is exactly PyTorch's
``cross_entropy(label_smoothing=eps)``, which computes it (tested against a per-class loop); the module adds
the check that the logits have one column per training identity.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class CrossEntropyLabelSmooth(nn.Module):
    def __init__(self, num_classes: int, epsilon: float = 0.1) -> None:
        super().__init__()
        if not 0.0 <= epsilon < 1.0:
            raise ValueError(f"loss.id.label_smoothing must be in [0, 1), got {epsilon}")
        self.num_classes = num_classes
        self.epsilon = epsilon

    def forward(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        if logits.dim() != 2 or logits.shape[1] != self.num_classes:
            raise ValueError(
                f"id loss: logits must be B x {self.num_classes}, got shape {tuple(logits.shape)}"
            )
        return F.cross_entropy(logits.float(), labels, label_smoothing=self.epsilon)
