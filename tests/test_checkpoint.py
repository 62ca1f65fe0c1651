"""Retrieval export/import of checkpoints and readable errors for checkpoints that do not fit."""

import pytest
import torch

from reid.models import (
    CheckpointError,
    build_model,
    load_model_weights,
    load_retrieval_model,
    retrieval_state_dict,
)
from reid.utils.io import atomic_torch_save


def _config(backbone="resnet18", adversary=True, feat="after_bn"):
    return {
        "data": {"height": 64, "width": 32, "pixel_mean": [0.5, 0.4, 0.3], "pixel_std": [0.2, 0.2, 0.2]},
        "model": {
            "backbone": backbone,
            "pretrained": "imagenet",
            "gdfl": {"enabled": True, "proj_dim": 64},
            "adversary": {"enabled": adversary, "hidden": [8]},
        },
        "test": {"feat": feat},
    }


def _trained_model(config, num_classes=10, seed=0):
    torch.manual_seed(seed)
    model = build_model({**config["model"], "pretrained": "none"}, num_classes)
    model.train()
    model(torch.randn(4, 3, 64, 32))  # non-trivial BN running statistics
    return model.eval()


def _save(path, model, config, num_classes=10):
    atomic_torch_save(
        {"model": model.state_dict(), "config": config, "num_classes": num_classes, "epoch": 3}, path
    )
    return path


def test_retrieval_state_dict_drops_training_heads():
    model = _trained_model(_config())
    keys = set(retrieval_state_dict(model))
    assert not any(k.startswith(("classifier.", "adversary.")) for k in keys)
    assert keys == {k for k in model.state_dict() if not k.startswith(("classifier.", "adversary."))}


def test_load_retrieval_model_round_trip(tmp_path):
    config = _config()
    model = _trained_model(config)
    path = _save(tmp_path / "best.pt", model, config)
    loaded, info = load_retrieval_model(path)
    assert not loaded.training and loaded.adversary is not None
    x = torch.randn(3, 3, 64, 32)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x))
    assert info["input_size"] == (64, 32) and info["mean"] == [0.5, 0.4, 0.3] and info["std"] == [0.2] * 3
    assert info["feature_dim"] == 512 and info["epoch"] == 3 and info["config"] == config
    assert info["model_name"].startswith("resnet18-gdfl-")
    # Same retrieval weights -> same name (heads do not count); other weights -> other name.
    with torch.no_grad():
        model.classifier.weight.add_(1.0)
    same = load_retrieval_model(_save(tmp_path / "heads.pt", model, config))[1]["model_name"]
    with torch.no_grad():
        model.bnneck.weight.add_(1.0)
    other = load_retrieval_model(_save(tmp_path / "other.pt", model, config))[1]["model_name"]
    assert same == info["model_name"] and other != info["model_name"]


def test_retrieval_load_honours_before_bn(tmp_path):
    config = _config(feat="before_bn")
    model = _trained_model(config)
    loaded, _ = load_retrieval_model(_save(tmp_path / "c.pt", model, config))
    model.set_retrieval_feat("before_bn")
    x = torch.randn(2, 3, 64, 32)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x))


def test_other_architecture_is_a_clear_error(tmp_path):
    config18 = _config("resnet18")
    model18 = _trained_model(config18)
    model50 = build_model({**_config("resnet50")["model"], "pretrained": "none"}, 10)
    with pytest.raises(CheckpointError, match=r"missing keys.*backbone\.layer1\.0\.conv3\.weight"):
        load_model_weights(model50, model18.state_dict())
    with pytest.raises(CheckpointError, match=r"shape mismatches.*backbone\.layer1\.0\.conv1\.weight"):
        load_model_weights(model50, model18.state_dict())


def test_number_of_classes_only_matters_when_resuming():
    config = _config(adversary=False)
    ten = _trained_model(config, num_classes=10)
    five = build_model({**config["model"], "pretrained": "none"}, 5)
    load_model_weights(five, {f"module.{k}": v for k, v in ten.state_dict().items()})
    torch.testing.assert_close(five.bnneck.running_mean, ten.bnneck.running_mean)
    with pytest.raises(CheckpointError, match="num_classes differs: checkpoint classifier has 10 classes"):
        load_model_weights(five, ten.state_dict(), strict_retrieval=False)


class _Arbitrary:
    def __reduce__(self):
        return (print, ("this must never run",))


def test_pickled_objects_are_refused_naming_the_file(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"model": {}, "config": {}, "payload": _Arbitrary()}, path)
    with pytest.raises(CheckpointError, match="evil.pt"):
        load_retrieval_model(path)
    with pytest.raises(FileNotFoundError, match="nothing.pt"):
        load_retrieval_model(tmp_path / "nothing.pt")
    torch.save({"config": _config()}, tmp_path / "nomodel.pt")
    with pytest.raises(CheckpointError, match="no 'model' entry"):
        load_retrieval_model(tmp_path / "nomodel.pt")
