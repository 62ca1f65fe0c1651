"""The training objective: a weighted sum of the metric-learning losses plus the class-adversarial term.

    L = w_id CE_ls(logits, y) + w_tri triplet(f, y) + w_c center(f, y) + w_ms MS(f, y)
        + w_circle circle(f, y) + w_adv L_adv

A term with weight 0 is neither built nor computed. The metric losses act on ``feat`` (f, before the BNNeck,
as in BoT); the ID loss on the classifier logits over f_bn.

L_adv is the mean over adversaries of CE(adv_logits, y) (the GRL in the model turns it into a reversed
gradient for the extractor). In confusion mode the model also returns ``adv_confusion_logits`` (adversary
weights frozen, input gradient pre-scaled by lambda) and L_adv adds their mean CE to the uniform
distribution.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from reid.losses.center import CenterLoss
from reid.losses.circle import CircleLoss
from reid.losses.id_loss import CrossEntropyLabelSmooth
from reid.losses.multi_similarity import MultiSimilarityLoss
from reid.losses.triplet import TripletLoss
from reid.models.config import dataclass_from_mapping


@dataclasses.dataclass(frozen=True)
class IDLossConfig:
    weight: float
    label_smoothing: float


@dataclasses.dataclass(frozen=True)
class TripletConfig:
    weight: float
    margin: float
    soft_margin: bool


@dataclasses.dataclass(frozen=True)
class CenterConfig:
    weight: float
    lr: float


@dataclasses.dataclass(frozen=True)
class MultiSimilarityConfig:
    weight: float
    alpha: float
    beta: float
    base: float
    epsilon: float


@dataclasses.dataclass(frozen=True)
class CircleConfig:
    weight: float
    margin: float
    gamma: float


@dataclasses.dataclass(frozen=True)
class AdversaryLossConfig:
    weight: float


@dataclasses.dataclass(frozen=True)
class LossConfig:
    id: IDLossConfig
    triplet: TripletConfig
    center: CenterConfig
    multi_similarity: MultiSimilarityConfig
    circle: CircleConfig
    adversary: AdversaryLossConfig

    def __post_init__(self) -> None:
        for field in dataclasses.fields(self):
            weight = getattr(self, field.name).weight
            if weight < 0:
                raise ValueError(f"loss.{field.name}.weight must be >= 0, got {weight}")


def _accuracy(logits: torch.Tensor, labels: torch.Tensor) -> float:
    return (logits.detach().argmax(dim=1) == labels).float().mean().item()


def _cross_entropy_to_uniform(logits: torch.Tensor) -> torch.Tensor:
    return -torch.log_softmax(logits.float(), dim=1).mean(dim=1).mean()


class ReIDCriterion(nn.Module):
    """``forward(outputs, labels) -> (total, logs)``; logs holds each term and the ID/adversary accuracies.

    Center-loss centres (if enabled) are ``self.center.parameters()`` (also all of ``self.parameters()``).
    """

    def __init__(self, cfg: LossConfig, num_classes: int, feat_dim: int) -> None:
        super().__init__()
        self.cfg = cfg
        self.id_loss = (
            CrossEntropyLabelSmooth(num_classes, cfg.id.label_smoothing) if cfg.id.weight > 0 else None
        )
        self.triplet = (
            TripletLoss(cfg.triplet.margin, cfg.triplet.soft_margin) if cfg.triplet.weight > 0 else None
        )
        self.center = (
            CenterLoss(num_classes, feat_dim, centre_grad_scale=1.0 / cfg.center.weight)
            if cfg.center.weight > 0
            else None
        )
        ms = cfg.multi_similarity
        self.multi_similarity = (
            MultiSimilarityLoss(ms.alpha, ms.beta, ms.base, ms.epsilon) if ms.weight > 0 else None
        )
        self.circle = CircleLoss(cfg.circle.margin, cfg.circle.gamma) if cfg.circle.weight > 0 else None
        if not any(getattr(cfg, f.name).weight > 0 for f in dataclasses.fields(cfg) if f.name != "adversary"):
            raise ValueError(
                "loss: every metric/ID loss weight is 0; enable at least one of id/triplet/center/"
                "multi_similarity/circle"
            )

    def forward(
        self, outputs: Mapping[str, Any], labels: torch.Tensor
    ) -> tuple[torch.Tensor, dict[str, float]]:
        feat = outputs["feat"]
        terms: dict[str, torch.Tensor] = {}
        logs: dict[str, float] = {}
        if "logits" in outputs:
            logs["acc_id"] = _accuracy(outputs["logits"], labels)
        if self.id_loss is not None:
            terms["id"] = self.cfg.id.weight * self.id_loss(outputs["logits"], labels)
        if self.triplet is not None:
            loss, stats = self.triplet.forward_with_stats(feat, labels)
            terms["triplet"] = self.cfg.triplet.weight * loss
            logs.update(stats)
        if self.center is not None:
            terms["center"] = self.cfg.center.weight * self.center(feat, labels)
        if self.multi_similarity is not None:
            terms["multi_similarity"] = self.cfg.multi_similarity.weight * self.multi_similarity(feat, labels)
        if self.circle is not None:
            terms["circle"] = self.cfg.circle.weight * self.circle(feat, labels)
        adv_logits = outputs.get("adv_logits") or []
        if adv_logits and self.cfg.adversary.weight > 0:
            weight = self.cfg.adversary.weight
            terms["adv"] = (
                weight * torch.stack([F.cross_entropy(z.float(), labels) for z in adv_logits]).mean()
            )
            logs["acc_adv"] = sum(_accuracy(z, labels) for z in adv_logits) / len(adv_logits)
            confusion = outputs.get("adv_confusion_logits") or []
            if confusion:
                terms["adv_confusion"] = (
                    weight * torch.stack([_cross_entropy_to_uniform(z) for z in confusion]).mean()
                )
        total = torch.stack(list(terms.values())).sum()
        logs.update({f"loss_{name}": value.item() for name, value in terms.items()})
        logs["loss_total"] = total.item()
        if "adv_lambda" in outputs:
            logs["adv_lambda"] = float(outputs["adv_lambda"])
        return total, logs


def build_criterion(
    loss_cfg: Mapping[str, Any] | LossConfig | None, num_classes: int, feat_dim: int
) -> ReIDCriterion:
    """Build the objective from the ``loss`` config section; ``feat_dim`` is the model's ``feature_dim``."""
    cfg = (
        loss_cfg if isinstance(loss_cfg, LossConfig) else dataclass_from_mapping(LossConfig, loss_cfg, "loss")
    )
    return ReIDCriterion(cfg, num_classes, feat_dim)
