"""Re-ID losses (plain ``nn.Module``s taking ``(features, labels)``) and the combined training criterion."""

from reid.losses.center import CenterLoss
from reid.losses.circle import CircleLoss
from reid.losses.criterion import LossConfig, ReIDCriterion, build_criterion
from reid.losses.id_loss import CrossEntropyLabelSmooth
from reid.losses.multi_similarity import MultiSimilarityLoss
from reid.losses.triplet import TripletLoss

__all__ = [
    "CenterLoss",
    "CircleLoss",
    "CrossEntropyLabelSmooth",
    "LossConfig",
    "MultiSimilarityLoss",
    "ReIDCriterion",
    "TripletLoss",
    "build_criterion",
]
