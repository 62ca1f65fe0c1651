"""Circle loss, pair-based form (Sun et al., CVPR 2020, arXiv 2002.10857), on cosine similarities.

Over all positive pairs s_p and negative pairs s_n of the batch (each unordered pair once, as in the
authors' reference code): alpha_p = relu(1 + m - s_p) and alpha_n = relu(s_n + m) (constants in the
gradient, per the paper), delta_p = 1 - m, delta_n = m, and

    L = softplus(logsumexp(gamma alpha_n (s_n - delta_n)) + logsumexp(-gamma alpha_p (s_p - delta_p)))

A batch without positive or negative pairs gives 0.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from reid.losses.pairwise import check_batch, cosine_similarities, label_masks


class CircleLoss(nn.Module):
    def __init__(self, margin: float = 0.25, gamma: float = 64.0) -> None:
        super().__init__()
        self.margin, self.gamma = margin, gamma

    def forward(self, features: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        check_batch(features, labels, "circle loss")
        sim = cosine_similarities(features)
        pos, neg = label_masks(labels)
        upper = torch.ones_like(pos).triu(diagonal=1)
        s_p, s_n = sim[pos & upper], sim[neg & upper]
        if s_p.numel() == 0 or s_n.numel() == 0:
            return features.sum() * 0.0
        alpha_p = F.relu(1.0 + self.margin - s_p.detach())
        alpha_n = F.relu(s_n.detach() + self.margin)
        logit_p = -self.gamma * alpha_p * (s_p - (1.0 - self.margin))
        logit_n = self.gamma * alpha_n * (s_n - self.margin)
        return F.softplus(torch.logsumexp(logit_n, dim=0) + torch.logsumexp(logit_p, dim=0))
