"""General discriminative feature learning (GDFL, method notes 3.3-3.4 / 4.2).

For each tapped map M_k: L_k = P_k(M_k) (bias-free 1x1 conv to ``proj_dim``, identity if the width already
matches), scores s_k(i) = compat(L_k(i), g), weights a_k = softmax over all H*W positions and
p_k = sum_i a_k(i) L_k(i). h = concat(p_1..p_K) [+ g if include_global]; f = Linear(h) with ``fuse_dim``
outputs is the re-ID feature the BNNeck receives (it replaces the baseline's GAP feature).

Compatibilities (Jetley et al., "Learn To Pay Attention", ICLR 2018):

* ``additive``: s(i) = w^T (L(i) + g). With a linear scorer the w^T g term is the same at every position
  and cancels in the softmax, so the weights do not depend on g: s(i) = w^T L(i) is computed, and no
  projection of g is built (tested against the formula with g).
* ``dot``: s(i) = <L(i), g> / sqrt(D); here global context steers the attention.

``attention.enabled = false`` uses uniform weights (plain GAP per tap): the no-attention control.
``fuse_init = "global"`` (with ``include_global``) starts the fusion as f = g, the baseline's feature.

Extra parameters for ResNet-50, taps layer2/3/4, proj_dim = fuse_dim = 2048: projections 1.05 M (layer2) +
2.10 M (layer3), shared additive attention 2 k, fuse Linear(6144 -> 2048) 12.6 M: about 15.7 M in total.
Knobs: ``proj_dim`` (e.g. 1024) shrinks the projections and the fuse input; ``fuse_dim`` (e.g. 1024) shrinks
the fuse output and with it the BNNeck, the classifier and the retrieval feature.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from reid.models.config import COMPATS, require_choice


class AttentionPooling(nn.Module):
    """Softmax-weighted spatial pooling of a map L (B x D x H x W) guided by a global vector g (B x D)."""

    def __init__(self, dim: int, compat: str = "additive") -> None:
        super().__init__()
        require_choice(compat, COMPATS, "model.gdfl.attention.compat")
        self.compat = compat
        self.dim = dim
        self.score = nn.Conv2d(dim, 1, kernel_size=1, bias=False) if compat == "additive" else None

    def forward(
        self, local: torch.Tensor, global_feat: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Return (pooled B x D, attention weights B x H x W that are >= 0 and sum to 1 per image).
        ``global_feat`` (B x D) is needed by ``dot`` only."""
        b, d, h, w = local.shape
        if self.score is not None:
            # w^T (L(i) + g) = w^T L(i) + w^T g, and the second term, equal at every position, cancels in the
            # softmax: adding g would only allocate a B x D x H x W tensor.
            scores = self.score(local)
        elif global_feat is None:
            raise ValueError("dot attention needs the global feature g")
        else:
            scores = (local * global_feat.view(b, d, 1, 1)).sum(dim=1, keepdim=True) / math.sqrt(d)
        weights = torch.softmax(scores.flatten(1).float(), dim=1).to(local.dtype)
        pooled = torch.bmm(local.flatten(2), weights.unsqueeze(2)).squeeze(2)
        return pooled, weights.view(b, h, w)


def uniform_pooling(local: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """GAP expressed like attention pooling (uniform weights), for the no-attention control."""
    b, _, h, w = local.shape
    weights = local.new_full((b, h, w), 1.0 / (h * w))
    return local.mean(dim=(2, 3)), weights


class GDFLHead(nn.Module):
    """Projections, attention pooling and fusion over the tapped maps; outputs f (B x fuse_dim)."""

    def __init__(
        self,
        tap_channels: Sequence[int],
        global_dim: int,
        *,
        proj_dim: int | None = None,
        fuse_dim: int | None = None,
        attention: bool = True,
        compat: str = "additive",
        shared: bool = True,
        include_global: bool = False,
        fuse_init: str = "default",
    ) -> None:
        super().__init__()
        self.proj_dim = proj_dim or global_dim
        self.fuse_dim = fuse_dim or global_dim
        self.include_global = include_global
        self.projections = nn.ModuleList(
            nn.Identity() if c == self.proj_dim else nn.Conv2d(c, self.proj_dim, kernel_size=1, bias=False)
            for c in tap_channels
        )
        # g steers the scores only with dot attention (it cancels in additive scores), so only then is it
        # mapped to proj_dim, and only when the widths differ.
        self.uses_global_in_scores = attention and compat == "dot"
        self.global_projection = (
            nn.Linear(global_dim, self.proj_dim, bias=False)
            if self.uses_global_in_scores and global_dim != self.proj_dim
            else nn.Identity()
        )
        if not attention:
            self.attention = None
        elif shared:
            self.attention = nn.ModuleList([AttentionPooling(self.proj_dim, compat)])
        else:
            self.attention = nn.ModuleList(AttentionPooling(self.proj_dim, compat) for _ in tap_channels)
        self.h_dim = self.proj_dim * len(tap_channels) + (global_dim if include_global else 0)
        self.fuse = nn.Linear(self.h_dim, self.fuse_dim)
        if fuse_init == "global":
            self._start_from_global(global_dim)

    @torch.no_grad()
    def _start_from_global(self, global_dim: int) -> None:
        """f = g at initialisation: the fusion is the identity on g (the last ``global_dim`` inputs of h) and
        zero on the tapped features, so training starts from the baseline's (ImageNet) feature and the taps
        enter as the fusion learns to use them. Why: a random fusion of an ImageNet trunk's features discards
        what the pretrained trunk knows, which a short schedule on a small dataset does not win back."""
        if not self.include_global or self.fuse_dim != global_dim:
            raise ValueError(
                "model.gdfl.fuse_init=global needs include_global=true and fuse_dim equal to the backbone's "
                f"width ({global_dim}), got include_global={self.include_global}, fuse_dim={self.fuse_dim}"
            )
        self.fuse.weight.zero_()
        self.fuse.weight[:, -global_dim:] = torch.eye(global_dim)
        self.fuse.bias.zero_()

    def forward(
        self, taps: Sequence[torch.Tensor], global_feat: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor], list[torch.Tensor]]:
        """Return (f, h, per-tap pooled features p_k, per-tap attention weights B x H_k x W_k)."""
        if len(taps) != len(self.projections):
            raise ValueError(f"GDFL head expects {len(self.projections)} tapped maps, got {len(taps)}")
        g = self.global_projection(global_feat) if self.uses_global_in_scores else None
        pooled, weights = [], []
        for k, (projection, tap) in enumerate(zip(self.projections, taps, strict=True)):
            local = projection(tap)
            if self.attention is None:
                p, a = uniform_pooling(local)
            else:
                p, a = self.attention[k if len(self.attention) > 1 else 0](local, g)
            pooled.append(p)
            weights.append(a)
        h = torch.cat(pooled + ([global_feat] if self.include_global else []), dim=1)
        return self.fuse(h), h, pooled, weights
