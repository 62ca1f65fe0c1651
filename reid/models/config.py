"""Typed, validated views of the ``model`` config section.

The resolved YAML config is a nested dict; the model code reads it through frozen dataclasses so that a typo
(``model.gdfl.tap``) or a bad value (``compat: dott``) fails at construction time with a message naming the
dotted key, instead of silently falling back to a default deep inside ``forward``. The views hold types and
checks only: defaults and allowed values come from the one config schema (``reid/config/defaults.py``), so a
missing key takes the schema's default and ``build_model({"backbone": "resnet18"}, 10)`` also works.
"""

from __future__ import annotations

import copy
import dataclasses
import typing
from collections.abc import Mapping
from typing import Any, TypeVar

from reid.config.defaults import CHOICES, DEFAULTS

T = TypeVar("T")

BACKBONES = CHOICES["model.backbone"]
STAGES = ("layer1", "layer2", "layer3", "layer4")
COMPATS = CHOICES["model.gdfl.attention.compat"]
ATTACH_POINTS = CHOICES["model.adversary.attach"]
FUSE_INITS = CHOICES["model.gdfl.fuse_init"]
ADVERSARY_MODES = CHOICES["model.adversary.mode"]


def _schema_section(where: str) -> Mapping[str, Any]:
    section: Any = DEFAULTS
    for part in where.split("."):
        section = section[part]
    return section


def dataclass_from_mapping(cls: type[T], mapping: Mapping[str, Any] | None, where: str) -> T:
    """Build dataclass ``cls`` from the config section ``where`` (e.g. ``"model.gdfl"``): keys missing from
    ``mapping`` take the schema's defaults; unknown keys raise ValueError naming ``where.key``.

    Nested dataclass fields are converted recursively and lists become tuples, so the result is hashable and
    immutable.
    """
    if mapping is None:
        mapping = {}
    if not isinstance(mapping, Mapping):
        raise ValueError(f"config section '{where}' must be a mapping, got {type(mapping).__name__}")
    types = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(mapping) - set(names))
    if unknown:
        listed = ", ".join(f"{where}.{k}" for k in unknown)
        raise ValueError(f"unknown config key(s) {listed}; expected one of {sorted(names)}")
    defaults = _schema_section(where)
    values: dict[str, Any] = {}
    for name in names:
        if dataclasses.is_dataclass(types[name]):
            values[name] = dataclass_from_mapping(types[name], mapping.get(name), f"{where}.{name}")
            continue
        value = mapping[name] if name in mapping else copy.deepcopy(defaults[name])
        values[name] = tuple(value) if isinstance(value, list) else value
    return cls(**values)


def require_choice(value: Any, choices: tuple[str, ...], key: str) -> None:
    if value not in choices:
        raise ValueError(f"{key} must be one of {list(choices)}, got {value!r}")


def _require_positive_int_or_none(value: Any, key: str) -> None:
    if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value <= 0):
        raise ValueError(f"{key} must be a positive integer or null, got {value!r}")


@dataclasses.dataclass(frozen=True)
class AttentionConfig:
    enabled: bool
    compat: str
    shared: bool

    def __post_init__(self) -> None:
        require_choice(self.compat, COMPATS, "model.gdfl.attention.compat")


@dataclasses.dataclass(frozen=True)
class GDFLConfig:
    enabled: bool
    taps: tuple[str, ...]
    attention: AttentionConfig
    include_global: bool
    fuse_init: str
    proj_dim: int | None
    fuse_dim: int | None

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
    enabled: bool
    attach: str
    lambda_max: float
    gamma: float
    mode: str
    hidden: tuple[int, ...]
    dropout: float

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
    backbone: str
    last_stride: int
    pretrained: str | None
    frozen_stages: int
    gdfl: GDFLConfig
    adversary: AdversaryConfig

    def __post_init__(self) -> None:
        require_choice(self.backbone, BACKBONES, "model.backbone")
        if self.last_stride not in (1, 2):
            raise ValueError(f"model.last_stride must be 1 or 2, got {self.last_stride!r}")

    @classmethod
    def from_dict(cls, model_cfg: Mapping[str, Any] | None) -> ModelConfig:
        return dataclass_from_mapping(cls, model_cfg, "model")
