"""ResNet trunk for re-ID: torchvision ResNet without pooling/fc, configurable last stride.

Why a custom wrapper: the GDFL head needs intermediate stage outputs, so ``forward`` runs the stages itself
and returns the requested ones (no hooks, so it works unchanged under DDP, autocast and ``torch.compile``).
Parameter names are torchvision's (``conv1.weight``, ``layer4.0.conv2.weight`` ...), so a torchvision
state dict loads directly.

Pretrained weights are never downloaded: ``"imagenet"`` uses the torchvision file only if it is already in
the torch hub cache (``torch.hub.get_dir()/checkpoints``), else it logs a warning and keeps the random init.
"""

from __future__ import annotations

import logging
import os
import pickle
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
import torchvision
from torch import nn
from torchvision.models.resnet import BasicBlock, Bottleneck

from reid.models.config import STAGES

logger = logging.getLogger(__name__)

_IMAGENET_WEIGHTS = {
    "resnet18": torchvision.models.ResNet18_Weights.IMAGENET1K_V1,
    "resnet34": torchvision.models.ResNet34_Weights.IMAGENET1K_V1,
    "resnet50": torchvision.models.ResNet50_Weights.IMAGENET1K_V1,
    "resnet101": torchvision.models.ResNet101_Weights.IMAGENET1K_V1,
}


class ResNetBackbone(nn.Module):
    """ResNet stem + layer1..layer4; ``forward(x, capture)`` also returns the named intermediate maps.

    Capturable names: a stage (``"layer3"``) or one block of a stage (``"layer4.1"``).
    """

    def __init__(self, resnet: torchvision.models.ResNet) -> None:
        super().__init__()
        self.conv1 = resnet.conv1
        self.bn1 = resnet.bn1
        self.relu = resnet.relu
        self.maxpool = resnet.maxpool
        self.layer1 = resnet.layer1
        self.layer2 = resnet.layer2
        self.layer3 = resnet.layer3
        self.layer4 = resnet.layer4

    def stage(self, name: str) -> nn.Sequential:
        return getattr(self, name)

    def capturable_names(self) -> list[str]:
        names = []
        for stage in STAGES:
            names.append(stage)
            names.extend(f"{stage}.{i}" for i in range(len(self.stage(stage))))
        return names

    def channels(self, name: str) -> int:
        """Output channel count of a stage or block (last conv's BN width)."""
        stage, _, index = name.partition(".")
        block = self.stage(stage)[int(index) if index else -1]
        return (block.bn3 if isinstance(block, Bottleneck) else block.bn2).num_features

    @property
    def out_channels(self) -> int:
        return self.channels("layer4")

    def forward(
        self, x: torch.Tensor, capture: Sequence[str] = ()
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        wanted = set(capture)
        captured: dict[str, torch.Tensor] = {}
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        for stage in STAGES:
            for i, block in enumerate(self.stage(stage)):
                x = block(x)
                if f"{stage}.{i}" in wanted:
                    captured[f"{stage}.{i}"] = x
            if stage in wanted:
                captured[stage] = x
        return x, captured


def _set_last_stride(resnet: torchvision.models.ResNet, stride: int) -> None:
    """Change layer4's down-sampling stride (BoT uses 1 for a 2x larger final map: 16x8 at 256x128)."""
    first = resnet.layer4[0]
    if isinstance(first, Bottleneck):
        first.conv2.stride = (stride, stride)
    elif isinstance(first, BasicBlock):
        first.conv1.stride = (stride, stride)
    else:
        raise TypeError(f"unsupported ResNet block type {type(first).__name__}")
    if first.downsample is not None:
        first.downsample[0].stride = (stride, stride)


def _strip_prefixes(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Accept torchvision files, DDP (``module.``) and our own checkpoints (``backbone.``); drop the fc
    head."""
    if "model" in state_dict and isinstance(state_dict["model"], Mapping):
        state_dict = state_dict["model"]
        state_dict = {k[len("backbone.") :]: v for k, v in state_dict.items() if k.startswith("backbone.")}
    cleaned = {}
    for key, value in state_dict.items():
        key = key.removeprefix("module.")
        if not key.startswith("fc."):
            cleaned[key] = value
    return cleaned


def _load_backbone_file(backbone: ResNetBackbone, path: str | os.PathLike) -> None:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"model.pretrained: backbone weight file {path} does not exist")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError) as err:
        raise ValueError(f"model.pretrained: cannot load {path} as a weights-only state dict: {err}") from err
    if not isinstance(state, Mapping):
        raise ValueError(f"model.pretrained: {path} holds a {type(state).__name__}, expected a state dict")
    state = _strip_prefixes(state)
    own = backbone.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    mismatched = [
        f"{k}: file {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
        for k in sorted(set(own) & set(state))
        if tuple(state[k].shape) != tuple(own[k].shape)
    ]
    if missing or unexpected or mismatched:
        raise ValueError(
            f"model.pretrained: {path} does not match this backbone; missing keys {missing[:10]}"
            f" ({len(missing)} total), unexpected keys {unexpected[:10]} ({len(unexpected)} total),"
            f" shape mismatches {mismatched[:10]} ({len(mismatched)} total)"
        )
    backbone.load_state_dict(state, strict=True)
    logger.info("loaded backbone weights from %s", path)


def _cached_imagenet_file(name: str) -> Path:
    filename = _IMAGENET_WEIGHTS[name].url.rsplit("/", 1)[-1]
    return Path(torch.hub.get_dir()) / "checkpoints" / filename


def build_backbone(name: str, last_stride: int = 1, pretrained: str | None = "none") -> ResNetBackbone:
    """Build a ResNet trunk; ``pretrained`` is ``"imagenet"``, ``"none"``/None or a path to a state dict."""
    if name not in _IMAGENET_WEIGHTS:
        raise ValueError(f"model.backbone must be one of {sorted(_IMAGENET_WEIGHTS)}, got {name!r}")
    resnet = getattr(torchvision.models, name)(weights=None)
    _set_last_stride(resnet, last_stride)
    backbone = ResNetBackbone(resnet)
    if pretrained is None or str(pretrained).lower() == "none":
        return backbone
    if pretrained == "imagenet":
        cached = _cached_imagenet_file(name)
        if cached.is_file():
            _load_backbone_file(backbone, cached)
        else:
            logger.warning(
                "ImageNet weights for %s not found at %s (downloads are disabled); using random init",
                name,
                cached,
            )
        return backbone
    _load_backbone_file(backbone, pretrained)
    return backbone
