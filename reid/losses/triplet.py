"""Batch-hard triplet loss (Hermans, Beyer & Leibe, "In Defense of the Triplet Loss", arXiv 1703.07737).

For every anchor: hardest positive = farthest same-id sample, hardest negative = closest other-id sample, on
Euclidean (not squared) distances. Hinge: relu(d_ap - d_an + margin); soft margin: softplus(d_ap - d_an).
Anchors without any positive or negative in the batch are skipped (PK sampling normally guarantees both).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from reid.losses.pairwise import check_batch, euclidean_distances, label_masks


class TripletLoss(nn.Module):
    def __init__(self, margin: float = 0.3, soft_margin: bool = False) -> None:
        super().__init__()
        if not soft_margin and margin < 0:
            raise ValueError(f"loss.triplet.margin must be >= 0, got {margin}")
        self.margin = margin
        self.soft_margin = soft_margin

    def forward_with_stats(
        self, features: torch.Tensor, labels: torch.Tensor
    ) -> tuple[torch.Tensor, dict[str, float]]:
        """Return (loss, {"triplet_active": fraction of valid anchors whose triplet still violates}).

        For the hinge, "violates" means a positive loss; for the soft margin, d_ap > d_an.
        """
        check_batch(features, labels, "triplet loss")
        dist = euclidean_distances(features)
        pos, neg = label_masks(labels)
        valid = pos.any(dim=1) & neg.any(dim=1)
        if not valid.any():
            return features.sum() * 0.0, {"triplet_active": 0.0}
        hardest_pos = dist.masked_fill(~pos, float("-inf")).amax(dim=1)[valid]
        hardest_neg = dist.masked_fill(~neg, float("inf")).amin(dim=1)[valid]
        gap = hardest_pos - hardest_neg
        if self.soft_margin:
            losses, active = F.softplus(gap), gap > 0
        else:
            losses = F.relu(gap + self.margin)
            active = losses > 0
        return losses.mean(), {"triplet_active": active.float().mean().item()}

    def forward(self, features: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return self.forward_with_stats(features, labels)[0]
