"""Backbone and BoT assembly: last stride, offline pretrained loading, exact baseline equivalence."""

import logging
from collections import OrderedDict

import pytest
import torch
import torchvision
from torch import nn

from reid.models import build_backbone, build_model

TINY = {"backbone": "resnet18", "pretrained": "none"}


@pytest.mark.parametrize("name", ["resnet18", "resnet50"])
def test_last_stride_sets_final_map_size(name):
    x = torch.randn(1, 3, 64, 32)
    with torch.no_grad():
        for stride, size in ((1, (4, 2)), (2, (2, 1))):
            backbone = build_backbone(name, last_stride=stride).eval()
            final, _ = backbone(x)
            assert tuple(final.shape[2:]) == size
    assert backbone.out_channels == (512 if name == "resnet18" else 2048)


def _direct_bot(num_classes):
    """BoT written out by hand: torchvision ResNet-18 (last stride 1) -> GAP -> BN (bias frozen) -> linear."""
    resnet = torchvision.models.resnet18(weights=None)
    resnet.layer4[0].conv1.stride = (1, 1)
    resnet.layer4[0].downsample[0].stride = (1, 1)
    trunk = nn.Sequential(
        OrderedDict(
            (n, getattr(resnet, n))
            for n in ("conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4")
        )
    )
    neck = nn.BatchNorm1d(512)
    neck.bias.requires_grad_(False)
    classifier = nn.Linear(512, num_classes, bias=False)
    nn.init.normal_(classifier.weight, std=0.001)
    model = nn.Module()
    model.backbone, model.bnneck, model.classifier = trunk, neck, classifier
    return model


def test_baseline_is_exactly_bot():
    torch.manual_seed(3)
    ours = build_model({**TINY, "gdfl": {"enabled": False}, "adversary": {"enabled": False}}, 6)
    torch.manual_seed(3)
    ref = _direct_bot(6)
    ours_sd, ref_sd = ours.state_dict(), ref.state_dict()
    assert list(ours_sd) == list(ref_sd)
    for key in ref_sd:
        assert torch.equal(ours_sd[key], ref_sd[key]), key
    assert [n for n, p in ours.named_parameters() if not p.requires_grad] == ["bnneck.bias"]
    x = torch.randn(4, 3, 64, 32)
    ours.train()
    ref.train()
    out = ours(x)
    f = ref.backbone(x).mean(dim=(2, 3))
    f_bn = ref.bnneck(f)
    torch.testing.assert_close(out["feat"], f)
    torch.testing.assert_close(out["feat_bn"], f_bn)
    torch.testing.assert_close(out["logits"], ref.classifier(f_bn))
    assert out["adv_logits"] == [] and out["gdfl_feat"] is None
    ours.eval()
    ref.eval()
    with torch.no_grad():
        torch.testing.assert_close(ours(x), ref.bnneck(ref.backbone(x).mean(dim=(2, 3))))
        ours.set_retrieval_feat("before_bn")
        torch.testing.assert_close(ours(x), ref.backbone(x).mean(dim=(2, 3)))


def test_bnneck_and_classifier_init_follow_bot():
    torch.manual_seed(0)
    model = build_model({**TINY}, 500)
    assert torch.equal(model.bnneck.weight, torch.ones(512)) and torch.equal(
        model.bnneck.bias, torch.zeros(512)
    )
    assert model.classifier.bias is None
    assert model.classifier.weight.std().item() == pytest.approx(0.001, rel=0.05)


def test_pretrained_imagenet_uses_only_the_local_cache(tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    assert torch.hub.get_dir().startswith(str(tmp_path))
    with caplog.at_level(logging.WARNING, logger="reid.models.backbone"):
        build_backbone("resnet18", pretrained="imagenet")
    assert "random init" in caplog.text
    torch.manual_seed(5)
    source = torchvision.models.resnet18(weights=None)
    filename = torchvision.models.ResNet18_Weights.IMAGENET1K_V1.url.rsplit("/", 1)[-1]
    (tmp_path / "hub" / "checkpoints").mkdir(parents=True)
    torch.save(source.state_dict(), tmp_path / "hub" / "checkpoints" / filename)
    loaded = build_backbone("resnet18", pretrained="imagenet")
    torch.testing.assert_close(loaded.layer3[1].conv2.weight, source.layer3[1].conv2.weight)


def test_pretrained_path_loads_and_mismatch_lists_keys(tmp_path):
    torch.manual_seed(6)
    source = torchvision.models.resnet18(weights=None)
    path = tmp_path / "r18.pth"
    torch.save({f"module.{k}": v for k, v in source.state_dict().items()}, path)
    loaded = build_backbone("resnet18", pretrained=str(path))
    torch.testing.assert_close(loaded.conv1.weight, source.conv1.weight)
    with pytest.raises(ValueError, match=r"r18.pth.*layer1.0.conv3.weight"):
        build_backbone("resnet50", pretrained=str(path))
    with pytest.raises(FileNotFoundError, match="missing.pth"):
        build_backbone("resnet18", pretrained=str(tmp_path / "missing.pth"))


def test_model_config_errors_name_the_key():
    with pytest.raises(ValueError, match="model.gdfl.tap"):
        build_model({**TINY, "gdfl": {"tap": ["layer2"]}}, 3)
    with pytest.raises(ValueError, match="model.gdfl.attention.compat"):
        build_model({**TINY, "gdfl": {"attention": {"compat": "dott"}}}, 3)
    with pytest.raises(ValueError, match="model.backbone"):
        build_model({"backbone": "vgg16"}, 3)
    with pytest.raises(ValueError, match="model.adversary.mode"):
        build_model({**TINY, "adversary": {"mode": "minimax"}}, 3)


def test_mobilenetv2_stages_last_stride_and_torchvision_parity():
    torch.manual_seed(7)
    reference = torchvision.models.mobilenet_v2(weights=None).eval()
    path_free = build_backbone("mobilenetv2", last_stride=2)
    path_free.load_state_dict({f"features.{k}": v for k, v in reference.features.state_dict().items()})
    path_free.eval()
    x = torch.randn(2, 3, 128, 64)
    final, captured = path_free(x, ["layer1", "layer2", "layer3", "layer4.0"])
    torch.testing.assert_close(final, reference.features(x))
    assert [captured[n].shape[1:] for n in ("layer1", "layer2", "layer3")] == [
        (24, 32, 16),
        (32, 16, 8),
        (96, 8, 4),
    ]
    assert path_free.out_channels == 1280 and path_free.channels("layer4.0") == 160
    stride1 = build_backbone("mobilenetv2", last_stride=1).eval()
    assert stride1(x)[0].shape == (2, 1280, 8, 4)


def test_mobilenetv2_runs_the_whole_framework():
    cfg = {
        "backbone": "mobilenetv2",
        "pretrained": "none",
        "gdfl": {"enabled": True, "taps": ["layer2", "layer3", "layer4"], "fuse_dim": 256},
        "adversary": {"enabled": True, "attach": "gdfl", "hidden": [64]},
    }
    model = build_model(cfg, 5).train()
    out = model(torch.randn(4, 3, 64, 32))
    assert out["feat"].shape == (4, 256) and out["adv_logits"][0].shape == (4, 5)
    (out["logits"].sum() + out["adv_logits"][0].sum()).backward()
    assert model.backbone.features[5].conv[0][0].weight.grad is not None
    assert model.eval()(torch.randn(2, 3, 64, 32)).shape == (2, 256)


def test_weights_under_other_key_names_map_by_position_with_a_shape_check(tmp_path):
    torch.manual_seed(8)
    source = torchvision.models.mobilenet_v2(weights=None).features.state_dict()
    renamed = {f"features.{i}.port_name": v for i, v in enumerate(source.values())}
    path = tmp_path / "port.pt"
    torch.save(renamed, path)
    loaded = build_backbone("mobilenetv2", pretrained=str(path))
    torch.testing.assert_close(loaded.features[7].conv[0][0].weight, source["7.conv.0.0.weight"])
    wrong = dict(renamed)
    first = next(iter(wrong))
    wrong[first] = torch.zeros(16, 3, 3, 3)
    torch.save(wrong, tmp_path / "wrong.pt")
    with pytest.raises(ValueError, match=r"wrong.pt does not match this backbone"):
        build_backbone("mobilenetv2", pretrained=str(tmp_path / "wrong.pt"))


def test_frozen_stages_keep_weights_and_batch_norm_statistics():
    torch.manual_seed(9)
    backbone = build_backbone("mobilenetv2", frozen_stages=2).train()
    frozen_bn = backbone.features[3].conv[0][1]
    live_bn = backbone.features[4].conv[0][1]
    before_frozen, before_live = frozen_bn.running_mean.clone(), live_bn.running_mean.clone()
    backbone(torch.randn(4, 3, 64, 32))[0].sum().backward()
    assert backbone.features[3].conv[0][0].weight.grad is None
    assert backbone.features[4].conv[0][0].weight.grad is not None
    assert torch.equal(frozen_bn.running_mean, before_frozen)
    assert not torch.equal(live_bn.running_mean, before_live)
    with pytest.raises(ValueError, match="model.frozen_stages"):
        build_backbone("resnet18", frozen_stages=9)
