"""The model and loss code read the config through typed dataclass views; their defaults and allowed values
must stay the ones of the config schema (reid/config/defaults.py), or a run would silently differ from
what its saved config.yaml says."""

import dataclasses

from reid.config import CHOICES, get_defaults
from reid.losses.criterion import LossConfig
from reid.models import config as model_config


def _plain(value):
    if isinstance(value, dict):
        return {key: _plain(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(item) for item in value]
    return value


def test_model_view_defaults_equal_the_schema():
    assert _plain(dataclasses.asdict(model_config.ModelConfig())) == _plain(get_defaults()["model"])


def test_loss_view_defaults_equal_the_schema():
    assert _plain(dataclasses.asdict(LossConfig())) == _plain(get_defaults()["loss"])


def test_model_view_choices_equal_the_schema():
    assert set(CHOICES["model.backbone"]) == set(model_config.BACKBONES)
    assert set(CHOICES["model.adversary.attach"]) == set(model_config.ATTACH_POINTS)
    assert set(CHOICES["model.gdfl.attention.compat"]) == set(model_config.COMPATS)
    assert set(CHOICES["model.adversary.mode"]) == set(model_config.ADVERSARY_MODES)
