"""Identity (classification) loss with label smoothing (Szegedy et al. 2016; BoT uses epsilon = 0.1).

Target q = (1 - eps) onehot(y) + eps / C; loss = mean_b(-sum_c q_c log softmax(z_b)_c). Smoothing keeps
the classifier from becoming over-confident on the (few) training identities.
"""

from __future__ import annotations

import torch
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
        log_probs = torch.log_softmax(logits.float(), dim=1)
        targets = torch.full_like(log_probs, self.epsilon / self.num_classes)
        targets.scatter_add_(1, labels.view(-1, 1), torch.full_like(log_probs[:, :1], 1.0 - self.epsilon))
        return -(targets * log_probs).sum(dim=1).mean()
