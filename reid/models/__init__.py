"""Re-ID models: BoT baseline, GDFL attention-pooled intermediate features, class-adversarial heads."""

from reid.models.adversary import ClassAdversary, GradientReversal, dann_lambda, grad_reverse, scale_gradient
from reid.models.attention import AttentionPooling, GDFLHead
from reid.models.backbone import MobileNetV2Backbone, ResNetBackbone, StagedBackbone, build_backbone
from reid.models.checkpoint import (
    CheckpointError,
    load_model_weights,
    load_retrieval_model,
    read_checkpoint,
    retrieval_state_dict,
)
from reid.models.config import ModelConfig
from reid.models.reid_model import BNNeck, ReIDModel, build_model

__all__ = [
    "AttentionPooling",
    "BNNeck",
    "CheckpointError",
    "ClassAdversary",
    "GDFLHead",
    "GradientReversal",
    "MobileNetV2Backbone",
    "ModelConfig",
    "ReIDModel",
    "ResNetBackbone",
    "StagedBackbone",
    "build_backbone",
    "build_model",
    "dann_lambda",
    "grad_reverse",
    "load_model_weights",
    "load_retrieval_model",
    "read_checkpoint",
    "retrieval_state_dict",
    "scale_gradient",
]
