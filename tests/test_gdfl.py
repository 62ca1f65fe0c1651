"""GDFL: attention pooling invariants, shapes of the ResNet-50 taps, and the configuration knobs."""

import math

import pytest
import torch

from reid.models import AttentionPooling, GDFLHead, build_model


def _maps(seed=0, b=2, d=6, h=4, w=3):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(b, d, h, w, generator=gen), torch.randn(b, d, generator=gen)


@pytest.mark.parametrize("compat", ["additive", "dot"])
def test_attention_weights_are_a_distribution_and_pool_matches_loop(compat):
    torch.manual_seed(0)
    pool = AttentionPooling(6, compat)
    local, g = _maps()
    pooled, weights = pool(local, g)
    assert weights.shape == (2, 4, 3)
    assert (weights >= 0).all()
    torch.testing.assert_close(weights.sum(dim=(1, 2)), torch.ones(2))
    for b in range(2):
        scores = []
        for i in range(4):
            for j in range(3):
                vec = local[b, :, i, j]
                if compat == "additive":
                    scores.append(float((pool.score.weight.detach().view(-1) * (vec + g[b])).sum()))
                else:
                    scores.append(float((vec * g[b]).sum()) / math.sqrt(6))
        top = max(scores)
        exps = [math.exp(s - top) for s in scores]
        ref_w = [e / sum(exps) for e in exps]
        ref_p = sum(ref_w[k] * local[b, :, k // 3, k % 3] for k in range(12))
        torch.testing.assert_close(weights[b].flatten(), torch.tensor(ref_w), rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(pooled[b], ref_p, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("compat", ["additive", "dot"])
def test_constant_map_pools_to_the_constant(compat):
    torch.manual_seed(0)
    vec = torch.randn(2, 6)
    local = vec.view(2, 6, 1, 1).expand(2, 6, 5, 4).contiguous()
    pooled, _ = AttentionPooling(6, compat)(local, torch.randn(2, 6))
    torch.testing.assert_close(pooled, vec)


def test_additive_weights_do_not_depend_on_g_but_dot_weights_do():
    torch.manual_seed(0)
    local, g = _maps(seed=1)
    other_g = torch.randn_like(g) * 10
    additive = AttentionPooling(6, "additive")
    torch.testing.assert_close(additive(local, g)[1], additive(local, other_g)[1], rtol=1e-5, atol=1e-6)
    dot = AttentionPooling(6, "dot")
    assert (dot(local, g)[1] - dot(local, other_g)[1]).abs().max() > 1e-3


def test_no_attention_control_is_gap_of_projected_maps():
    torch.manual_seed(0)
    head = GDFLHead([4, 6], 6, attention=False)
    maps = [torch.randn(2, 4, 5, 3), torch.randn(2, 6, 2, 2)]
    f, h, pooled, weights = head(maps, torch.randn(2, 6))
    torch.testing.assert_close(pooled[0], head.projections[0](maps[0]).mean(dim=(2, 3)))
    torch.testing.assert_close(pooled[1], maps[1].mean(dim=(2, 3)))  # width matches: identity projection
    torch.testing.assert_close(h, torch.cat(pooled, 1))
    torch.testing.assert_close(f, head.fuse(h))
    assert all(torch.allclose(w, torch.full_like(w, 1 / w[0].numel())) for w in weights)


def test_shared_versus_per_tap_attention_and_dims():
    shared = GDFLHead([4, 8, 6], 6, compat="additive", shared=True, include_global=True, fuse_dim=5)
    per_tap = GDFLHead([4, 8, 6], 6, compat="additive", shared=False, proj_dim=3)
    assert len(shared.attention) == 1 and len(per_tap.attention) == 3
    assert shared.h_dim == 3 * 6 + 6 and shared.fuse.out_features == 5
    assert per_tap.h_dim == 9 and per_tap.fuse.out_features == 6
    # proj_dim != global width: every tap (even width 6) is projected; g is projected for dot scores only,
    # since it cancels in additive ones (a projection there would never train).
    assert all(isinstance(p, torch.nn.Conv2d) for p in per_tap.projections)
    assert isinstance(per_tap.global_projection, torch.nn.Identity) and not per_tap.uses_global_in_scores
    dot = GDFLHead([4, 8, 6], 6, compat="dot", proj_dim=3)
    assert isinstance(dot.global_projection, torch.nn.Linear)
    f, *_ = dot([torch.randn(2, c, 3, 2) for c in (4, 8, 6)], torch.randn(2, 6))
    f.sum().backward()
    assert dot.global_projection.weight.grad.abs().max() > 1e-4  # it steers the scores, so it learns


def test_resnet50_shapes_at_256x128():
    torch.manual_seed(0)
    model = build_model({"backbone": "resnet50", "pretrained": "none", "gdfl": {"enabled": True}}, 751)
    x = torch.randn(2, 3, 256, 128)
    with torch.no_grad():
        _, taps = model.backbone(x, model.taps)
        assert [tuple(taps[t].shape[1:]) for t in ("layer2", "layer3", "layer4")] == [
            (512, 32, 16),
            (1024, 16, 8),
            (2048, 16, 8),
        ]
        f, h, pooled, weights = model.gdfl([taps[t] for t in model.taps], taps["layer4"].mean(dim=(2, 3)))
    assert h.shape == (2, 6144) and f.shape == (2, 2048) and model.feature_dim == 2048
    assert [tuple(w.shape[1:]) for w in weights] == [(32, 16), (16, 8), (16, 8)]
    extra = sum(p.numel() for p in model.gdfl.parameters())
    assert extra == 512 * 2048 + 1024 * 2048 + 2048 + 6144 * 2048 + 2048  # documented ~15.7 M


def test_model_gdfl_forward_knobs_and_attention_output():
    torch.manual_seed(0)
    cfg = {
        "backbone": "resnet18",
        "pretrained": "none",
        "gdfl": {"enabled": True, "taps": ["layer3", "layer4.0"], "proj_dim": 64, "fuse_dim": 32},
    }
    model = build_model(cfg, 5)
    assert model.feature_dim == 32 and model.gdfl.h_dim == 128
    model.train()
    out = model(torch.randn(4, 3, 64, 32))
    assert out["feat"].shape == (4, 32) and out["gdfl_feat"].shape == (4, 128)
    assert [tuple(p.shape) for p in out["tap_feats"]] == [(4, 64), (4, 64)]
    out["feat"].sum().backward()
    assert model.gdfl.projections[0].weight.grad.abs().sum() > 0
    assert model.backbone.layer2[0].conv1.weight.grad.abs().sum() > 0
    model.eval()
    feat, maps = model(torch.randn(3, 3, 64, 32), return_attention=True)
    assert feat.shape == (3, 32) and [tuple(m.shape) for m in maps] == [(3, 4, 2), (3, 4, 2)]
    torch.testing.assert_close(maps[0].sum(dim=(1, 2)), torch.ones(3))


def test_unknown_tap_is_a_clear_error():
    with pytest.raises(ValueError, match="layer5"):
        build_model(
            {"backbone": "resnet18", "pretrained": "none", "gdfl": {"enabled": True, "taps": ["layer5"]}}, 3
        )


def test_fuse_init_global_starts_as_the_baseline_feature_and_the_taps_then_learn():
    torch.manual_seed(0)
    cfg = {
        "backbone": "resnet18",
        "pretrained": "none",
        "gdfl": {
            "enabled": True,
            "taps": ["layer3", "layer4"],
            "include_global": True,
            "fuse_init": "global",
        },
    }
    model = build_model(cfg, 4).train()
    out = model(torch.randn(4, 3, 64, 32))
    torch.testing.assert_close(out["feat"], out["global_feat"], rtol=0, atol=0)  # f = g exactly at step 0
    out["logits"].logsumexp(1).sum().backward()
    head = model.gdfl
    tap_columns = head.fuse.weight.grad[:, : head.h_dim - model.backbone.out_channels]
    assert tap_columns.abs().sum() > 0  # the fusion's weights on the tapped features receive gradient
    with pytest.raises(ValueError, match="fuse_init=global needs model.gdfl.include_global=true"):
        build_model({**cfg, "gdfl": {**cfg["gdfl"], "include_global": False}}, 4)
    with pytest.raises(ValueError, match="fuse_dim equal to the backbone's width"):
        build_model({**cfg, "gdfl": {**cfg["gdfl"], "fuse_dim": 64}}, 4)
