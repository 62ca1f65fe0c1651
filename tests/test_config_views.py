"""The model and loss code read the config through typed dataclass views whose defaults and allowed values
are the config schema's (reid/config/defaults.py): one schema, so a run cannot differ from what its saved
config.yaml says."""

import dataclasses

import pytest

from reid.config import get_defaults
from reid.losses.criterion import LossConfig
from reid.models import config as model_config
from reid.models.config import dataclass_from_mapping


def _plain(value):
    if isinstance(value, dict):
        return {key: _plain(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(item) for item in value]
    return value


def test_an_empty_section_is_the_schemas_defaults():
    model = model_config.ModelConfig.from_dict({})
    assert _plain(dataclasses.asdict(model)) == _plain(get_defaults()["model"])
    loss = dataclass_from_mapping(LossConfig, None, "loss")
    assert _plain(dataclasses.asdict(loss)) == _plain(get_defaults()["loss"])


def test_given_keys_override_and_the_rest_keep_the_schemas_defaults():
    model = model_config.ModelConfig.from_dict(
        {"backbone": "resnet18", "gdfl": {"attention": {"compat": "dot"}}}
    )
    defaults = get_defaults()["model"]
    assert model.backbone == "resnet18" and model.gdfl.attention.compat == "dot"
    assert model.gdfl.attention.shared == defaults["gdfl"]["attention"]["shared"]
    assert model.gdfl.taps == tuple(defaults["gdfl"]["taps"]) and model.adversary.hidden == (1024, 1024)
    with pytest.raises(ValueError, match=r"model.gdfl.tap\b"):
        model_config.ModelConfig.from_dict({"gdfl": {"tap": ["layer2"]}})
    with pytest.raises(ValueError, match="model.gdfl.attention.compat must be one of"):
        model_config.ModelConfig.from_dict({"gdfl": {"attention": {"compat": "dott"}}})


def test_the_views_choices_are_the_schemas():
    from reid.config import CHOICES

    assert model_config.BACKBONES is CHOICES["model.backbone"]
    assert model_config.ATTACH_POINTS is CHOICES["model.adversary.attach"]
    assert model_config.COMPATS is CHOICES["model.gdfl.attention.compat"]
    assert model_config.FUSE_INITS is CHOICES["model.gdfl.fuse_init"]
    assert model_config.ADVERSARY_MODES is CHOICES["model.adversary.mode"]
