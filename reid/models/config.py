"""Typed, validated views of the ``model`` config section.

The resolved YAML config is a nested dict; the model code reads it through frozen dataclasses so that a typo
(``model.gdfl.tap``) or a bad value (``compat: dott``) fails at construction time with a message naming the
dotted key, instead of silently falling back to a default deep inside ``forward``. Missing keys take the
defaults documented in the config schema, so ``build_model({"backbone": "resnet18"}, 10)`` also works.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any, TypeVar

T = TypeVar("T")

BACKBONES = ("resnet18", "resnet34", "resnet50", "resnet101", "mobilenetv2")
STAGES = ("layer1", "layer2", "layer3", "layer4")
COMPATS = ("additive", "dot")
ATTACH_POINTS = ("gdfl", "embedding", "global", "taps")
FUSE_INITS = ("default", "global")
ADVERSARY_MODES = ("grl", "confusion")


def dataclass_from_mapping(cls: type[T], mapping: Mapping[str, Any] | None, where: str) -> T:
    """Build dataclass ``cls`` from a config mapping; unknown keys raise ValueError naming ``where.key``.

    Nested dataclass fields (those whose default factory is a dataclass) are converted recursively and
    lists become tuples so the result is hashable and immutable.
    """
    if mapping is None:
        mapping = {}
    if not isinstance(mapping, Mapping):
        raise ValueError(f"config section '{where}' must be a mapping, got {type(mapping).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(mapping) - set(fields))
    if unknown:
        names = ", ".join(f"{where}.{k}" for k in unknown)
        raise ValueError(f"unknown config key(s) {names}; expected one of {sorted(fields)}")
    values: dict[str, Any] = {}
    for name, value in mapping.items():
        field = fields[name]
        nested = field.default_factory if field.default_factory is not dataclasses.MISSING else None
        if nested is not None and dataclasses.is_dataclass(nested):
            value = dataclass_from_mapping(nested, value, f"{where}.{name}")
        elif isinstance(value, list):
            value = tuple(value)
        values[name] = value
    return cls(**values)


def require_choice(value: Any, choices: tuple[str, ...], key: str) -> None:
    if value not in choices:
        raise ValueError(f"{key} must be one of {list(choices)}, got {value!r}")


def _require_positive_int_or_none(value: Any, key: str) -> None:
    if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value <= 0):
        raise ValueError(f"{key} must be a positive integer or null, got {value!r}")


@dataclasses.dataclass(frozen=True)
class AttentionConfig:
    enabled: bool = True
    compat: str = "additive"
    shared: bool = True

    def __post_init__(self) -> None:
        require_choice(self.compat, COMPATS, "model.gdfl.attention.compat")


@dataclasses.dataclass(frozen=True)
class GDFLConfig:
    enabled: bool = False
    taps: tuple[str, ...] = ("layer2", "layer3", "layer4")
    attention: AttentionConfig = dataclasses.field(default_factory=AttentionConfig)
    include_global: bool = False
    fuse_init: str = "default"
    proj_dim: int | None = None
    fuse_dim: int | None = None

    def __post_init__(self) -> None:
        require_choice(self.fuse_init, FUSE_INITS, "model.gdfl.fuse_init")
        if self.fuse_init == "global" and not self.include_global:
            raise ValueError("model.gdfl.fuse_init=global needs model.gdfl.include_global=true")
        if isinstance(self.taps, str) or not self.taps:
            raise ValueError(f"model.gdfl.taps must be a non-empty list of stage names, got {self.taps!r}")
        if len(set(self.taps)) != len(self.taps):
            raise ValueError(f"model.gdfl.taps has duplicates: {list(self.taps)}")
        _require_positive_int_or_none(self.proj_dim, "model.gdfl.proj_dim")
        _require_positive_int_or_none(self.fuse_dim, "model.gdfl.fuse_dim")


@dataclasses.dataclass(frozen=True)
class AdversaryConfig:
    enabled: bool = False
    attach: str = "gdfl"
    lambda_max: float = 0.1
    gamma: float = 10.0
    mode: str = "grl"
    hidden: tuple[int, ...] = (1024, 1024)
    dropout: float = 0.5

    def __post_init__(self) -> None:
        require_choice(self.attach, ATTACH_POINTS, "model.adversary.attach")
        require_choice(self.mode, ADVERSARY_MODES, "model.adversary.mode")
        if self.lambda_max < 0:
            raise ValueError(f"model.adversary.lambda_max must be >= 0, got {self.lambda_max}")
        if self.gamma <= 0:
            raise ValueError(f"model.adversary.gamma must be > 0, got {self.gamma}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"model.adversary.dropout must be in [0, 1), got {self.dropout}")
        for width in self.hidden:
            _require_positive_int_or_none(width, "model.adversary.hidden[]")


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    backbone: str = "resnet50"
    last_stride: int = 1
    pretrained: str | None = "imagenet"
    frozen_stages: int = 0
    gdfl: GDFLConfig = dataclasses.field(default_factory=GDFLConfig)
    adversary: AdversaryConfig = dataclasses.field(default_factory=AdversaryConfig)

    def __post_init__(self) -> None:
        require_choice(self.backbone, BACKBONES, "model.backbone")
        if self.last_stride not in (1, 2):
            raise ValueError(f"model.last_stride must be 1 or 2, got {self.last_stride!r}")

    @classmethod
    def from_dict(cls, model_cfg: Mapping[str, Any] | None) -> ModelConfig:
        return dataclass_from_mapping(cls, model_cfg, "model")
