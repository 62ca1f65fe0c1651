"""Class-adversarial head: gradient reversal, DANN ramp, confusion mode, absence from the eval graph."""

import math

import pytest
import torch
import torch.nn.functional as F

from reid.models import build_model, dann_lambda, grad_reverse
from reid.models.checkpoint import retrieval_state_dict


def _model(lambda_max=0.1, mode="grl", attach="gdfl", gdfl=False, dropout=0.0, seed=0):
    torch.manual_seed(seed)
    cfg = {
        "backbone": "resnet18",
        "pretrained": "none",
        "gdfl": {"enabled": gdfl},
        "adversary": {
            "enabled": True,
            "lambda_max": lambda_max,
            "mode": mode,
            "attach": attach,
            "hidden": [16],
            "dropout": dropout,
        },
    }
    return build_model(cfg, 4)


def _batch():
    gen = torch.Generator().manual_seed(1)
    return torch.randn(4, 3, 64, 32, generator=gen), torch.tensor([0, 1, 2, 3])


def test_grl_forward_identity_and_backward_minus_lambda():
    x = torch.randn(5, 3, requires_grad=True)
    upstream = torch.randn(5, 3)
    y = grad_reverse(x, 0.37)
    torch.testing.assert_close(y, x)
    (y * upstream).sum().backward()
    torch.testing.assert_close(x.grad, -0.37 * upstream)


def test_dann_lambda_schedule():
    assert dann_lambda(0.0, 1.0) == 0.0
    assert dann_lambda(0.5, 1.0) == pytest.approx(2 / (1 + math.exp(-5)) - 1)
    assert dann_lambda(1.0, 0.3) == pytest.approx(0.3, rel=1e-3)
    values = [dann_lambda(p / 100, 0.3) for p in range(101)]
    assert all(b > a for a, b in zip(values, values[1:], strict=False))
    assert dann_lambda(0.4, 0.2) == pytest.approx(2 * dann_lambda(0.4, 0.1))
    with pytest.raises(ValueError, match="progress"):
        dann_lambda(1.5, 0.1)


def test_extractor_gradient_is_minus_lambda_times_adversary_gradient():
    model = _model(lambda_max=0.5)
    model.train()
    model.set_training_progress(0.6)
    x, y = _batch()
    out = model(x)
    assert out["adv_lambda"] == pytest.approx(dann_lambda(0.6, 0.5))
    (grad_g,) = torch.autograd.grad(F.cross_entropy(out["adv_logits"][0], y), out["global_feat"])
    g = out["global_feat"].detach().requires_grad_(True)
    (ref,) = torch.autograd.grad(F.cross_entropy(model.adversary.heads[0](g), y), g)
    torch.testing.assert_close(grad_g, -out["adv_lambda"] * ref)


@pytest.mark.parametrize("mode", ["grl", "confusion"])
def test_lambda_zero_gives_exactly_zero_backbone_gradient(mode):
    model = _model(lambda_max=0.0, mode=mode, gdfl=True, dropout=0.5)
    model.train()
    model.set_training_progress(0.8)
    x, y = _batch()
    out = model(x)
    loss = sum(F.cross_entropy(z, y) for z in out["adv_logits"])
    loss = loss + sum(-torch.log_softmax(z, 1).mean() for z in out["adv_confusion_logits"])
    loss.backward()
    for name, p in model.named_parameters():
        if name.startswith("adversary."):
            continue
        assert p.grad is None or torch.count_nonzero(p.grad) == 0, name
    assert model.adversary.heads[0].net[0].weight.grad.abs().sum() > 0


def test_confusion_mode_splits_the_gradients():
    model = _model(lambda_max=1.0, mode="confusion")
    model.train()
    model.set_training_progress(1.0)
    x, y = _batch()
    head = model.adversary.heads[0]
    out = model(x)
    stats_after_adv_pass = head.net[1].running_mean.clone()
    assert len(out["adv_confusion_logits"]) == 1
    # The confusion term moves only the extractor and leaves the adversary's BN statistics alone.
    confusion_loss = -torch.log_softmax(out["adv_confusion_logits"][0], 1).mean()
    confusion_loss.backward(retain_graph=True)
    assert all(p.grad is None for p in head.parameters())
    assert model.backbone.conv1.weight.grad.abs().sum() > 0
    torch.testing.assert_close(head.net[1].running_mean, stats_after_adv_pass)
    # The adversary's CE moves only the adversary.
    model.zero_grad()
    F.cross_entropy(out["adv_logits"][0], y).backward()
    assert model.backbone.conv1.weight.grad is None or model.backbone.conv1.weight.grad.abs().sum() == 0
    assert head.net[0].weight.grad.abs().sum() > 0


def test_attach_points_and_fallback():
    assert [h.net[0].in_features for h in _model(attach="taps", gdfl=True).adversary.heads] == [512] * 3
    assert _model(attach="gdfl", gdfl=True).adversary.heads[0].net[0].in_features == 3 * 512
    assert _model(attach="embedding", gdfl=True).adversary.heads[0].net[0].in_features == 512
    fallback = _model(attach="taps", gdfl=False)
    assert fallback.adversary_attach == "global" and len(fallback.adversary.heads) == 1
    model = _model(attach="taps", gdfl=True)
    model.train()
    assert len(model(_batch()[0])["adv_logits"]) == 3


def test_adversary_is_absent_from_the_eval_graph():
    with_adv = _model(gdfl=True)
    torch.manual_seed(0)
    without = build_model({"backbone": "resnet18", "pretrained": "none", "gdfl": {"enabled": True}}, 4)
    without.load_state_dict(
        {k: v for k, v in with_adv.state_dict().items() if not k.startswith("adversary.")}
    )
    with torch.no_grad():
        for p in with_adv.adversary.parameters():
            p.fill_(float("nan"))
    with_adv.eval()
    without.eval()
    x = _batch()[0]
    with torch.no_grad():
        features = with_adv(x)
    assert torch.isfinite(features).all()  # the NaN-filled adversary never touched the retrieval feature
    torch.testing.assert_close(features, without(x))
    assert not [key for key in retrieval_state_dict(with_adv) if key.startswith("adversary.")]
    assert any(key.startswith("adversary.") for key in with_adv.state_dict())  # it exists, for training
