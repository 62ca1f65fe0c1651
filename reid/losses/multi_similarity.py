"""Multi-similarity loss (Wang et al., CVPR 2019, arXiv 1904.06627) on cosine similarities S.

Mining per anchor i (positives P_i exclude i itself): keep negative j if S_ij + eps > min_{k in P_i} S_ik
and positive j if S_ij - eps < max_{k in N_i} S_ik. Then

    L_i = 1/alpha log(1 + sum_{kept P} exp(-alpha (S_ij - base)))
          + 1/beta log(1 + sum_{kept N} exp(beta (S_ij - base)))

Anchors whose kept positive or negative set is empty contribute 0; the sum is divided by the batch size
(as in the authors' implementation).
"""

from __future__ import annotations

import torch
from torch import nn

from reid.losses.pairwise import check_batch, cosine_similarities, label_masks


def _log1p_sum_exp(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Row-wise log(1 + sum_{mask} exp(values)), computed stably via logsumexp with an extra 0 term."""
    masked = values.masked_fill(~mask, float("-inf"))
    zeros = torch.zeros_like(masked[:, :1])
    return torch.logsumexp(torch.cat([zeros, masked], dim=1), dim=1)


class MultiSimilarityLoss(nn.Module):
    def __init__(
        self, alpha: float = 2.0, beta: float = 50.0, base: float = 0.5, epsilon: float = 0.1
    ) -> None:
        super().__init__()
        self.alpha, self.beta, self.base, self.epsilon = alpha, beta, base, epsilon

    def forward(self, features: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        check_batch(features, labels, "multi-similarity loss")
        sim = cosine_similarities(features)
        pos, neg = label_masks(labels)
        hardest_pos = sim.masked_fill(~pos, float("inf")).amin(dim=1, keepdim=True)
        hardest_neg = sim.masked_fill(~neg, float("-inf")).amax(dim=1, keepdim=True)
        keep_neg = neg & (sim + self.epsilon > hardest_pos)
        keep_pos = pos & (sim - self.epsilon < hardest_neg)
        valid = keep_pos.any(dim=1) & keep_neg.any(dim=1)
        pos_term = _log1p_sum_exp(-self.alpha * (sim - self.base), keep_pos) / self.alpha
        neg_term = _log1p_sum_exp(self.beta * (sim - self.base), keep_neg) / self.beta
        return torch.where(valid, pos_term + neg_term, torch.zeros_like(pos_term)).sum() / len(labels)
