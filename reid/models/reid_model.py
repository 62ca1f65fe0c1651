"""The re-ID network: ResNet -> (GAP feature | GDFL fused feature) f -> BNNeck -> classifier (+ adversary).

Strong baseline (BoT, Luo et al., CVPRW 2019, arXiv 1903.07071): f feeds the metric losses,
f_bn = BN(f) (shift frozen at 0) feeds a bias-free ID classifier and is the retrieval feature.
``gdfl.enabled=false`` and ``adversary.enabled=false`` build exactly that model (same parameter names,
init order and outputs).

Train mode ``forward`` returns a dict (see ``ReIDModel.forward``); eval mode returns the retrieval feature
only, so the adversary (parameters under ``adversary.``) never enters the inference graph.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from reid.models.adversary import AdversarialHeads, dann_lambda
from reid.models.attention import GDFLHead
from reid.models.backbone import StagedBackbone, build_backbone
from reid.models.config import ModelConfig

logger = logging.getLogger(__name__)

RETRIEVAL_FEATS = ("after_bn", "before_bn")


class BNNeck(nn.BatchNorm1d):
    """BatchNorm1d whose bias is fixed at 0 (BoT): the ID loss sees a normalised, unshifted feature."""

    def __init__(self, dim: int) -> None:
        super().__init__(dim)
        nn.init.ones_(self.weight)
        nn.init.zeros_(self.bias)
        self.bias.requires_grad_(False)


class ReIDModel(nn.Module):
    """BoT baseline with optional GDFL feature and class-adversarial heads; built by ``build_model``."""

    def __init__(self, cfg: ModelConfig, num_classes: int) -> None:
        super().__init__()
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        self.cfg = cfg
        self.num_classes = num_classes
        self.retrieval_feat = "after_bn"
        self.adv_lambda = 0.0
        self.backbone: StagedBackbone = build_backbone(
            cfg.backbone, cfg.last_stride, cfg.pretrained, cfg.frozen_stages
        )
        global_dim = self.backbone.out_channels
        self.taps: tuple[str, ...] = ()
        self.gdfl: GDFLHead | None = None
        if cfg.gdfl.enabled:
            valid = self.backbone.capturable_names()
            bad = [t for t in cfg.gdfl.taps if t not in valid]
            if bad:
                raise ValueError(f"model.gdfl.taps: unknown stage(s) {bad}; valid names are {valid}")
            self.taps = cfg.gdfl.taps
            att = cfg.gdfl.attention
            self.gdfl = GDFLHead(
                [self.backbone.channels(t) for t in self.taps],
                global_dim,
                proj_dim=cfg.gdfl.proj_dim,
                fuse_dim=cfg.gdfl.fuse_dim,
                attention=att.enabled,
                compat=att.compat,
                shared=att.shared,
                include_global=cfg.gdfl.include_global,
                fuse_init=cfg.gdfl.fuse_init,
            )
        self.feature_dim = self.gdfl.fuse_dim if self.gdfl is not None else global_dim
        self.bnneck = BNNeck(self.feature_dim)
        self.classifier = nn.Linear(self.feature_dim, num_classes, bias=False)
        nn.init.normal_(self.classifier.weight, std=0.001)
        self.adversary: AdversarialHeads | None = None
        if cfg.adversary.enabled:
            adv = cfg.adversary
            self.adversary = AdversarialHeads(
                self._adversary_input_dims(global_dim), num_classes, adv.hidden, adv.dropout, adv.mode
            )
        self.uses_global_feat = (
            self.gdfl is None
            or self.gdfl.include_global
            or self.gdfl.uses_global_in_scores
            or (self.adversary is not None and self.adversary_attach == "global")
        )
        if not self.uses_global_feat:  # nothing reads the last stage's pooled map: do not compute it
            self.backbone.stop_after(self.backbone.deepest(self.taps))

    @property
    def adversary_attach(self) -> str:
        """Effective attach point: ``gdfl``/``taps`` fall back to ``global`` when GDFL is off."""
        attach = self.cfg.adversary.attach
        if self.gdfl is None and attach in ("gdfl", "taps"):
            return "global"
        return attach

    def _adversary_input_dims(self, global_dim: int) -> list[int]:
        if self.adversary_attach != self.cfg.adversary.attach:
            logger.info(
                "adversary.attach=%s needs gdfl.enabled; attaching to the global feature g instead",
                self.cfg.adversary.attach,
            )
        return {
            "gdfl": lambda: [self.gdfl.h_dim],
            "taps": lambda: [self.gdfl.proj_dim] * len(self.taps),
            "embedding": lambda: [self.feature_dim],
            "global": lambda: [global_dim],
        }[self.adversary_attach]()

    def modules_without_gradient(self, loss_weights: Mapping[str, float]) -> list[str]:
        """Trainable submodules that no loss reaches in a training step with these loss weights (``id``,
        ``adversary``): the classifier and the BNNeck scale feed only the ID loss, the adversary only its
        own. Parts the model never computes are not trainable (see ``StagedBackbone.stop_after``).
        DistributedDataParallel must search for unused parameters exactly when this is not empty."""
        unused = []
        if float(loss_weights.get("id", 1.0)) == 0.0:
            unused += ["classifier", "bnneck"]
        if self.adversary is not None and float(loss_weights.get("adversary", 1.0)) == 0.0:
            unused.append("adversary")
        return unused

    def set_training_progress(self, progress: float) -> None:
        """Set lambda_p of the gradient reversal from p = global_step / total_steps (DANN ramp)."""
        adv = self.cfg.adversary
        self.adv_lambda = dann_lambda(progress, adv.lambda_max, adv.gamma)

    def set_retrieval_feat(self, feat: str) -> None:
        """Choose the eval-mode output: ``after_bn`` (f_bn, BoT default) or ``before_bn`` (f)."""
        if feat not in RETRIEVAL_FEATS:
            raise ValueError(f"test.feat must be one of {list(RETRIEVAL_FEATS)}, got {feat!r}")
        self.retrieval_feat = feat

    def _features(self, images: torch.Tensor) -> dict[str, Any]:
        final, captured = self.backbone(images, self.taps)
        g = final.mean(dim=(2, 3)) if self.uses_global_feat else None
        out: dict[str, Any] = {"global_feat": g, "tap_feats": [], "attention": []}
        if self.gdfl is None:
            out["feat"], out["gdfl_feat"] = g, None
        else:
            f, h, pooled, weights = self.gdfl([captured[t] for t in self.taps], g)
            out.update(feat=f, gdfl_feat=h, tap_feats=pooled, attention=weights)
        out["feat_bn"] = self.bnneck(out["feat"])
        return out

    def forward(
        self, images: torch.Tensor, return_attention: bool = False
    ) -> torch.Tensor | tuple[torch.Tensor, list[torch.Tensor]] | dict[str, Any]:
        """Eval: retrieval feature B x D (with ``return_attention``: plus per-tap maps B x H_k x W_k).

        Train: dict with ``feat`` (f, pre-BN), ``feat_bn``, ``logits``, ``global_feat`` (g), ``gdfl_feat``
        (h, or None without GDFL), ``tap_feats`` (p_k), ``attention`` (per-tap weights), ``adv_logits`` (one
        per adversary, empty when disabled), ``adv_confusion_logits`` (confusion mode only, else empty) and
        ``adv_lambda``.
        """
        out = self._features(images)
        if not self.training:
            feat = out["feat_bn"] if self.retrieval_feat == "after_bn" else out["feat"]
            return (feat, out["attention"]) if return_attention else feat
        out["logits"] = self.classifier(out["feat_bn"])
        out["adv_lambda"] = self.adv_lambda
        out["adv_logits"], out["adv_confusion_logits"] = [], []
        if self.adversary is not None:
            inputs = {
                "gdfl": lambda: [out["gdfl_feat"]],
                "taps": lambda: out["tap_feats"],
                "embedding": lambda: [out["feat"]],
                "global": lambda: [out["global_feat"]],
            }[self.adversary_attach]()
            out["adv_logits"], out["adv_confusion_logits"] = self.adversary(inputs, self.adv_lambda)
        return out

    def describe(self) -> str:
        """Short architecture tag used in model names, e.g. ``resnet50-gdfl``."""
        return self.cfg.backbone + ("-gdfl" if self.gdfl is not None else "")


def build_model(model_cfg: Mapping[str, Any] | ModelConfig | None, num_classes: int) -> ReIDModel:
    """Build the re-ID model from the ``model`` config section (dict or ``ModelConfig``)."""
    cfg = model_cfg if isinstance(model_cfg, ModelConfig) else ModelConfig.from_dict(model_cfg)
    model = ReIDModel(cfg, num_classes)
    n_params = sum(p.numel() for p in model.parameters())
    logger.info(
        "built %s (%d classes, feature dim %d, %.2f M parameters)",
        model.describe(),
        num_classes,
        model.feature_dim,
        n_params / 1e6,
    )
    return model
