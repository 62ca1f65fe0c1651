"""Pairwise distances, similarities and label masks shared by the pair-based losses."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def euclidean_distances(features: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """B x B Euclidean (not squared) distances; clamped before the sqrt so the gradient stays finite at 0."""
    x = features.float()
    sq = x.pow(2).sum(dim=1)
    d2 = sq.unsqueeze(1) + sq.unsqueeze(0) - 2.0 * x @ x.t()
    return d2.clamp(min=eps).sqrt()


def cosine_similarities(features: torch.Tensor) -> torch.Tensor:
    """B x B cosine similarities of the L2-normalised features."""
    x = F.normalize(features.float(), dim=1)
    return x @ x.t()


def label_masks(labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(positive mask without the diagonal, negative mask), both B x B bool."""
    same = labels.view(-1, 1) == labels.view(1, -1)
    eye = torch.eye(len(labels), dtype=torch.bool, device=labels.device)
    return same & ~eye, ~same


def check_batch(features: torch.Tensor, labels: torch.Tensor, loss_name: str) -> None:
    if features.dim() != 2:
        raise ValueError(f"{loss_name}: features must be B x D, got shape {tuple(features.shape)}")
    if labels.shape != (features.shape[0],):
        raise ValueError(
            f"{loss_name}: labels must have shape ({features.shape[0]},), got {tuple(labels.shape)}"
        )
