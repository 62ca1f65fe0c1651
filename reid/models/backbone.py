"""Backbone trunks for re-ID: torchvision ResNet or MobileNetV2 without pooling/classifier, configurable
last stride.

Why a custom wrapper: the GDFL head needs intermediate stage outputs, so ``forward`` runs the stages itself
and returns the requested ones (no hooks, so it works unchanged under DDP, autocast and ``torch.compile``).
Both trunks expose the same four stages ``layer1..layer4`` at output strides 4/8/16/32 (16 with last stride
1), so GDFL taps and every config written for ResNet work on MobileNetV2 too.
Parameter names are torchvision's (``conv1.weight``, ``layer4.0.conv2.weight``, ``features.7.conv.0.0.weight``
...), so a torchvision state dict loads directly; a file with other key names but the same tensors in the same
order (e.g. the original MobileNetV2 port) is mapped by position, with every shape checked.

Pretrained weights are never downloaded: ``"imagenet"`` uses the torchvision file only if it is already in
the torch hub cache (``torch.hub.get_dir()/checkpoints``), else it logs a warning and keeps the random init.
"""

from __future__ import annotations

import abc
import logging
import os
import pickle
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
import torchvision
from torch import nn
from torchvision.models.mobilenetv2 import InvertedResidual
from torchvision.models.resnet import BasicBlock, Bottleneck

from reid.models.config import STAGES

logger = logging.getLogger(__name__)

_IMAGENET_WEIGHTS = {
    "resnet18": torchvision.models.ResNet18_Weights.IMAGENET1K_V1,
    "resnet34": torchvision.models.ResNet34_Weights.IMAGENET1K_V1,
    "resnet50": torchvision.models.ResNet50_Weights.IMAGENET1K_V1,
    "resnet101": torchvision.models.ResNet101_Weights.IMAGENET1K_V1,
    "mobilenetv2": torchvision.models.MobileNet_V2_Weights.IMAGENET1K_V1,
}


class StagedBackbone(nn.Module, abc.ABC):
    """A stem followed by stages ``layer1..layer4``; ``forward(x, capture)`` also returns the named
    intermediate maps.

    Capturable names: a stage (``"layer3"``) or one block of a stage (``"layer4.1"``). Subclasses provide
    ``stem``, ``stem_modules``, ``stage`` and ``block_channels``.
    """

    frozen_stages = 0
    last_block: int | None = None
    """Index (in stem-to-head order) of the last block ``forward`` runs; None runs all of them."""

    @abc.abstractmethod
    def stem_modules(self) -> list[nn.Module]:
        """The modules of the stem that hold parameters or batch-norm statistics."""

    @abc.abstractmethod
    def stem(self, x: torch.Tensor) -> torch.Tensor:
        """See the class docstring."""

    @abc.abstractmethod
    def stage(self, name: str) -> nn.Sequential:
        """See the class docstring."""

    @abc.abstractmethod
    def block_channels(self, block: nn.Module) -> int:
        """See the class docstring."""

    def freeze(self, num_stages: int) -> None:
        """Keep the first ``num_stages`` of (stem, layer1, ..., layer4) at their current weights and
        batch-norm statistics: no gradient, BN in eval mode even under ``train()``.

        Why: on a CPU the high-resolution early stages cost most of the backward pass, and their ImageNet
        filters (edges, colours) are what re-ID keeps anyway.
        """
        if not 0 <= num_stages <= 1 + len(STAGES):
            raise ValueError(f"model.frozen_stages must be in 0..{1 + len(STAGES)}, got {num_stages}")
        self.frozen_stages = num_stages
        for module in self._frozen_modules():
            module.requires_grad_(False)
        self.train(self.training)

    def _frozen_modules(self) -> list[nn.Module]:
        leading = [*self.stem_modules(), *(self.stage(name) for name in STAGES)]
        count = len(self.stem_modules()) + self.frozen_stages - 1 if self.frozen_stages else 0
        return leading[:count]

    def train(self, mode: bool = True) -> StagedBackbone:
        super().train(mode)
        for module in self._frozen_modules():
            module.eval()
        return self

    def capturable_names(self) -> list[str]:
        names = []
        for stage in STAGES:
            names.append(stage)
            names.extend(f"{stage}.{i}" for i in range(len(self.stage(stage))))
        return names

    def channels(self, name: str) -> int:
        """Output channel count of a stage or block."""
        stage, _, index = name.partition(".")
        return self.block_channels(self.stage(stage)[int(index) if index else -1])

    @property
    def out_channels(self) -> int:
        return self.channels("layer4")

    def _blocks(self) -> list[tuple[str, int]]:
        return [(stage, i) for stage in STAGES for i in range(len(self.stage(stage)))]

    def _block_of(self, name: str) -> tuple[str, int]:
        stage, _, index = name.partition(".")
        return stage, int(index) if index else len(self.stage(stage)) - 1

    def stop_after(self, name: str) -> None:
        """Run no block after ``name`` (a capturable name): for a model that uses nothing deeper, e.g. GDFL
        taps without the global feature. The deeper blocks stay in the module, so pretrained weights and
        checkpoints keep one layout, but they get no gradient (``requires_grad`` off), which is also what
        lets DistributedDataParallel run without searching for unused parameters."""
        blocks = self._blocks()
        self.last_block = blocks.index(self._block_of(name))
        for stage, i in blocks[self.last_block + 1 :]:
            self.stage(stage)[i].requires_grad_(False)

    def deepest(self, names: Sequence[str]) -> str:
        """The capturable name among ``names`` that is computed last."""
        blocks = self._blocks()
        return max(names, key=lambda name: blocks.index(self._block_of(name)))

    def forward(
        self, x: torch.Tensor, capture: Sequence[str] = ()
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Return (the output of the last block run, the maps named in ``capture``)."""
        wanted = set(capture)
        captured: dict[str, torch.Tensor] = {}
        x = self.stem(x)
        for position, (stage, i) in enumerate(self._blocks()):
            blocks = self.stage(stage)
            x = blocks[i](x)
            if f"{stage}.{i}" in wanted:
                captured[f"{stage}.{i}"] = x
            if stage in wanted and i == len(blocks) - 1:
                captured[stage] = x
            if position == self.last_block:
                break
        return x, captured


class ResNetBackbone(StagedBackbone):
    """ResNet stem (conv1, bn1, relu, maxpool) + layer1..layer4."""

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

    def stem(self, x: torch.Tensor) -> torch.Tensor:
        return self.maxpool(self.relu(self.bn1(self.conv1(x))))

    def stem_modules(self) -> list[nn.Module]:
        return [self.conv1, self.bn1]

    def stage(self, name: str) -> nn.Sequential:
        return getattr(self, name)

    def block_channels(self, block: nn.Module) -> int:
        return (block.bn3 if isinstance(block, Bottleneck) else block.bn2).num_features


class MobileNetV2Backbone(StagedBackbone):
    """torchvision MobileNetV2 ``features`` (blocks 0-18, width 1.0), grouped into stages by output stride.

    stem = blocks 0-1 (stride 2), layer1 = 2-3 (stride 4, 24 ch), layer2 = 4-6 (stride 8, 32 ch),
    layer3 = 7-13 (stride 16, 96 ch), layer4 = 14-18 (stride 32, ending in the 1x1 conv to 1280 ch).
    """

    STAGE_BLOCKS = {"layer1": (2, 4), "layer2": (4, 7), "layer3": (7, 14), "layer4": (14, 19)}

    def __init__(self, mobilenet: torchvision.models.MobileNetV2) -> None:
        super().__init__()
        self.features = mobilenet.features
        self._stages = {name: self.features[a:b] for name, (a, b) in self.STAGE_BLOCKS.items()}

    def stem(self, x: torch.Tensor) -> torch.Tensor:
        return self.features[1](self.features[0](x))

    def stem_modules(self) -> list[nn.Module]:
        return [self.features[0], self.features[1]]

    def stage(self, name: str) -> nn.Sequential:
        return self._stages[name]

    def block_channels(self, block: nn.Module) -> int:
        return block.out_channels


def _set_last_stride(backbone: StagedBackbone, stride: int) -> None:
    """Change layer4's down-sampling stride (BoT uses 1 for a 2x larger final map: 16x8 at 256x128)."""
    first = backbone.stage("layer4")[0]
    if isinstance(first, InvertedResidual):
        # the only strided conv of an inverted residual is its depthwise 3x3; no shortcut when it strides
        depthwise = next(m for m in first.modules() if isinstance(m, nn.Conv2d) and m.groups > 1)
        depthwise.stride = (stride, stride)
        return
    if isinstance(first, Bottleneck):
        first.conv2.stride = (stride, stride)
    elif isinstance(first, BasicBlock):
        first.conv1.stride = (stride, stride)
    else:
        raise TypeError(f"unsupported backbone block type {type(first).__name__}")
    if first.downsample is not None:
        first.downsample[0].stride = (stride, stride)


def _strip_prefixes(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Accept torchvision files, DDP (``module.``) and our own checkpoints (``backbone.``); drop the
    ImageNet classifier (``fc.`` / ``classifier.``)."""
    if "model" in state_dict and isinstance(state_dict["model"], Mapping):
        state_dict = state_dict["model"]
        state_dict = {k[len("backbone.") :]: v for k, v in state_dict.items() if k.startswith("backbone.")}
    cleaned = {}
    for key, value in state_dict.items():
        key = key.removeprefix("module.")
        if not key.startswith(("fc.", "classifier.")):
            cleaned[key] = value
    return cleaned


def _map_by_position(
    state: Mapping[str, torch.Tensor], own: Mapping[str, torch.Tensor], path: Path
) -> Mapping[str, torch.Tensor]:
    """Rename a file's tensors to ours by position when the key names differ but count and shapes agree.

    Ports of the same network often store the same tensors in the same order under other names. Returns the
    file unchanged when count or any shape differs, so the caller's key-by-key error explains the mismatch.
    """
    if len(state) != len(own):
        return state
    pairs = list(zip(state.items(), own.items(), strict=True))
    if any(tuple(theirs.shape) != tuple(ours.shape) for (_, theirs), (_, ours) in pairs):
        return state
    logger.info("%s: key names differ from this backbone's; mapped %d tensors by position", path, len(pairs))
    return {our_key: tensor for (_, tensor), (our_key, _) in pairs}


def _load_backbone_file(backbone: StagedBackbone, path: str | os.PathLike) -> None:
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
    if set(state) != set(own):
        state = _map_by_position(state, own, path)
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


def build_backbone(
    name: str, last_stride: int = 1, pretrained: str | None = "none", frozen_stages: int = 0
) -> StagedBackbone:
    """Build a ResNet or MobileNetV2 trunk; ``pretrained`` is ``"imagenet"``, ``"none"``/None or a path to
    a state dict; ``frozen_stages`` leading stages are frozen after loading (see ``freeze``)."""
    backbone = _load_pretrained(_build_trunk(name, last_stride), name, pretrained)
    backbone.freeze(frozen_stages)
    return backbone


def _build_trunk(name: str, last_stride: int) -> StagedBackbone:
    if name not in _IMAGENET_WEIGHTS:
        raise ValueError(f"model.backbone must be one of {sorted(_IMAGENET_WEIGHTS)}, got {name!r}")
    if name == "mobilenetv2":
        backbone: StagedBackbone = MobileNetV2Backbone(torchvision.models.mobilenet_v2(weights=None))
    else:
        backbone = ResNetBackbone(getattr(torchvision.models, name)(weights=None))
    _set_last_stride(backbone, last_stride)
    return backbone


def _load_pretrained(backbone: StagedBackbone, name: str, pretrained: str | None) -> StagedBackbone:
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
