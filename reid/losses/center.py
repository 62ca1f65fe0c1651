"""Center loss (Wen et al., ECCV 2016): pull each feature towards a learned centre of its class.

loss = mean_b ||f_b - c_{y_b}||^2 / 2. The centres are ordinary parameters so the trainer can put them in
their own parameter group (``loss.center.lr``, no weight decay). ``centre_grad_scale`` multiplies only the
centres' gradient: the criterion sets it to 1 / weight (as BoT does) so the centres move at their own
learning rate whatever the loss weight, while the features still receive ``weight * dL/df``.
"""

from __future__ import annotations

import torch
from torch import nn

from reid.losses.pairwise import check_batch
from reid.models.adversary import scale_gradient


class CenterLoss(nn.Module):
    def __init__(self, num_classes: int, feat_dim: int, centre_grad_scale: float = 1.0) -> None:
        super().__init__()
        self.centers = nn.Parameter(torch.randn(num_classes, feat_dim))
        self.centre_grad_scale = centre_grad_scale

    def forward(self, features: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        check_batch(features, labels, "center loss")
        if features.shape[1] != self.centers.shape[1]:
            raise ValueError(
                f"center loss: feature dim {features.shape[1]} != centre dim {self.centers.shape[1]}"
            )
        centers = self.centers
        if self.centre_grad_scale != 1.0:
            centers = scale_gradient(centers, self.centre_grad_scale)
        return 0.5 * (features.float() - centers[labels]).pow(2).sum(dim=1).mean()
