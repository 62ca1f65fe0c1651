"""Losses against slow, loop-based reference implementations of the published formulas."""

import math

import pytest
import torch
import torch.nn.functional as F

from reid.losses import (
    CenterLoss,
    CircleLoss,
    CrossEntropyLabelSmooth,
    MultiSimilarityLoss,
    TripletLoss,
    build_criterion,
)


def _batch(seed=0, ids=4, per_id=3, dim=8):
    gen = torch.Generator().manual_seed(seed)
    feats = torch.randn(ids * per_id, dim, generator=gen, dtype=torch.float64).float()
    labels = torch.arange(ids).repeat_interleave(per_id)
    return feats, labels


def _cos(a, b):
    return float(
        sum(x * y for x, y in zip(a, b, strict=True))
        / math.sqrt(sum(x * x for x in a) * sum(y * y for y in b))
    )


def _dist(a, b):
    return math.sqrt(sum((x - y) ** 2 for x, y in zip(a, b, strict=True)))


def test_label_smoothing_ce_matches_formula_and_torch():
    gen = torch.Generator().manual_seed(1)
    logits = torch.randn(5, 7, generator=gen)
    labels = torch.tensor([0, 3, 6, 2, 3])
    eps = 0.1
    expected = 0.0
    for b in range(5):
        log_p = torch.log_softmax(logits[b].double(), dim=0)
        for c in range(7):
            q = (1 - eps) * (c == labels[b].item()) + eps / 7
            expected -= q * log_p[c].item()
    expected /= 5
    got = CrossEntropyLabelSmooth(7, eps)(logits, labels)
    assert got.item() == pytest.approx(expected, rel=1e-5)
    assert got.item() == pytest.approx(F.cross_entropy(logits, labels, label_smoothing=eps).item(), rel=1e-5)


def test_label_smoothing_rejects_wrong_logit_width():
    with pytest.raises(ValueError, match="B x 7"):
        CrossEntropyLabelSmooth(7)(torch.zeros(2, 5), torch.zeros(2, dtype=torch.long))


def _triplet_reference(feats, labels, margin, soft):
    x, y = feats.tolist(), labels.tolist()
    losses, active = [], 0
    for a in range(len(x)):
        pos = [_dist(x[a], x[j]) for j in range(len(x)) if y[j] == y[a] and j != a]
        neg = [_dist(x[a], x[j]) for j in range(len(x)) if y[j] != y[a]]
        if not pos or not neg:
            continue
        gap = max(pos) - min(neg)
        loss = math.log1p(math.exp(gap)) if soft else max(0.0, gap + margin)
        losses.append(loss)
        active += (gap > 0) if soft else (loss > 0)
    return sum(losses) / len(losses), active / len(losses)


@pytest.mark.parametrize("soft", [False, True])
def test_batch_hard_triplet_matches_loop_reference(soft):
    feats, labels = _batch(seed=2)
    labels = torch.cat([labels, torch.tensor([99])])  # an anchor with no positive is skipped
    feats = torch.cat([feats, torch.randn(1, feats.shape[1])])
    loss, stats = TripletLoss(margin=1.5, soft_margin=soft).forward_with_stats(feats, labels)
    ref_loss, ref_active = _triplet_reference(feats, labels, 1.5, soft)
    assert loss.item() == pytest.approx(ref_loss, rel=1e-4)
    assert stats["triplet_active"] == pytest.approx(ref_active)


def test_triplet_gradient_is_finite_for_identical_features():
    feats = torch.ones(4, 3, requires_grad=True)
    labels = torch.tensor([0, 0, 1, 1])
    TripletLoss(0.3)(feats, labels).backward()
    assert torch.isfinite(feats.grad).all()


def test_triplet_without_valid_anchor_is_zero_with_graph():
    feats = torch.randn(3, 4, requires_grad=True)
    loss = TripletLoss()(feats, torch.tensor([0, 1, 2]))
    loss.backward()
    assert loss.item() == 0.0 and feats.grad is not None


def _ms_reference(feats, labels, alpha, beta, base, eps):
    x, y = feats.tolist(), labels.tolist()
    n = len(x)
    total = 0.0
    for i in range(n):
        pos = [_cos(x[i], x[j]) for j in range(n) if y[j] == y[i] and j != i]
        neg = [_cos(x[i], x[j]) for j in range(n) if y[j] != y[i]]
        if not pos or not neg:
            continue
        kept_neg = [s for s in neg if s + eps > min(pos)]
        kept_pos = [s for s in pos if s - eps < max(neg)]
        if not kept_neg or not kept_pos:
            continue
        total += math.log(1 + sum(math.exp(-alpha * (s - base)) for s in kept_pos)) / alpha
        total += math.log(1 + sum(math.exp(beta * (s - base)) for s in kept_neg)) / beta
    return total / n


@pytest.mark.parametrize("eps", [0.1, 0.5])
def test_multi_similarity_matches_loop_reference(eps):
    feats, labels = _batch(seed=3, ids=5, per_id=3, dim=4)
    got = MultiSimilarityLoss(2.0, 50.0, 0.5, eps)(feats, labels)
    assert got.item() == pytest.approx(_ms_reference(feats, labels, 2.0, 50.0, 0.5, eps), rel=1e-4)


def _circle_reference(feats, labels, m, gamma):
    x, y = feats.tolist(), labels.tolist()
    sp, sn = [], []
    for i in range(len(x)):
        for j in range(i + 1, len(x)):
            (sp if y[i] == y[j] else sn).append(_cos(x[i], x[j]))
    lp = [-gamma * max(0.0, 1 + m - s) * (s - (1 - m)) for s in sp]
    ln = [gamma * max(0.0, s + m) * (s - m) for s in sn]
    lse = lambda v: max(v) + math.log(sum(math.exp(t - max(v)) for t in v))  # noqa: E731
    z = lse(ln) + lse(lp)
    return math.log1p(math.exp(z)) if z < 30 else z


def test_circle_matches_loop_reference():
    feats, labels = _batch(seed=4, ids=3, per_id=3, dim=5)
    for gamma in (1.0, 64.0):
        got = CircleLoss(0.25, gamma)(feats, labels)
        assert got.item() == pytest.approx(_circle_reference(feats, labels, 0.25, gamma), rel=1e-4)


def test_circle_treats_weights_as_constants_in_the_gradient():
    feats, labels = _batch(seed=5, ids=2, per_id=2, dim=3)
    feats.requires_grad_(True)
    CircleLoss(0.25, 2.0)(feats, labels).backward()
    # Reference: same formula, alphas computed from detached similarities (the paper's convention).
    x = feats.detach().clone().requires_grad_(True)
    sim = F.normalize(x, dim=1) @ F.normalize(x, dim=1).t()
    terms_p, terms_n = [], []
    for i in range(4):
        for j in range(i + 1, 4):
            s = sim[i, j]
            if labels[i] == labels[j]:
                terms_p.append(-2.0 * max(0.0, 1.25 - s.item()) * (s - 0.75))
            else:
                terms_n.append(2.0 * max(0.0, s.item() + 0.25) * (s - 0.25))
    F.softplus(torch.logsumexp(torch.stack(terms_n), 0) + torch.logsumexp(torch.stack(terms_p), 0)).backward()
    torch.testing.assert_close(feats.grad, x.grad, rtol=1e-4, atol=1e-6)


def test_center_loss_matches_loop_and_scales_only_centre_gradient():
    feats, labels = _batch(seed=6, ids=3, per_id=2, dim=4)
    plain = CenterLoss(3, 4)
    scaled = CenterLoss(3, 4, centre_grad_scale=1 / 5e-4)
    scaled.load_state_dict(plain.state_dict())
    c = plain.centers.detach()
    expected = sum(0.5 * ((feats[b] - c[labels[b]]) ** 2).sum().item() for b in range(6)) / 6
    f1, f2 = feats.clone().requires_grad_(True), feats.clone().requires_grad_(True)
    loss1, loss2 = plain(f1, labels), scaled(f2, labels)
    assert loss1.item() == pytest.approx(expected, rel=1e-5)
    assert loss2.item() == pytest.approx(expected, rel=1e-5)
    (5e-4 * loss1).backward()
    (5e-4 * loss2).backward()
    torch.testing.assert_close(f1.grad, f2.grad)
    torch.testing.assert_close(scaled.centers.grad, plain.centers.grad / 5e-4)


def _outputs(feats, labels, num_classes, n_adv=0, confusion=False, seed=7):
    gen = torch.Generator().manual_seed(seed)
    adv = [torch.randn(len(labels), num_classes, generator=gen) for _ in range(n_adv)]
    conf = [torch.randn(len(labels), num_classes, generator=gen) for _ in adv] if confusion else []
    return {
        "feat": feats,
        "logits": torch.randn(len(labels), num_classes, generator=gen),
        "adv_logits": adv,
        "adv_confusion_logits": conf,
        "adv_lambda": 0.05,
    }


def test_criterion_total_is_the_weighted_sum_of_enabled_terms():
    feats, labels = _batch(seed=8)
    cfg = {
        "id": {"weight": 0.5, "label_smoothing": 0.1},
        "triplet": {"weight": 2.0, "margin": 0.3},
        "center": {"weight": 5e-4},
        "multi_similarity": {"weight": 0.7},
        "circle": {"weight": 0.0},
        "adversary": {"weight": 0.3},
    }
    crit = build_criterion(cfg, 4, 8)
    out = _outputs(feats, labels, 4, n_adv=2, confusion=True)
    total, logs = crit(out, labels)
    assert crit.circle is None and "loss_circle" not in logs
    uniform_ce = [-torch.log_softmax(z, 1).mean().item() for z in out["adv_confusion_logits"]]
    expected = {
        "loss_id": 0.5 * F.cross_entropy(out["logits"], labels, label_smoothing=0.1).item(),
        "loss_triplet": 2.0 * TripletLoss(0.3)(feats, labels).item(),
        "loss_center": 5e-4 * crit.center(feats, labels).item(),
        "loss_multi_similarity": 0.7 * MultiSimilarityLoss()(feats, labels).item(),
        "loss_adv": 0.3 * sum(F.cross_entropy(z, labels).item() for z in out["adv_logits"]) / 2,
        "loss_adv_confusion": 0.3 * sum(uniform_ce) / 2,
    }
    for key, value in expected.items():
        assert logs[key] == pytest.approx(value, rel=1e-5), key
    assert total.item() == pytest.approx(sum(expected.values()), rel=1e-5)
    assert logs["acc_id"] == pytest.approx((out["logits"].argmax(1) == labels).float().mean().item())
    assert 0.0 <= logs["acc_adv"] <= 1.0 and logs["adv_lambda"] == 0.05


def test_criterion_weight_zero_means_not_computed():
    feats, labels = _batch(seed=9)
    crit = build_criterion({"triplet": {"weight": 0.0}, "adversary": {"weight": 0.0}}, 4, 8)
    assert crit.triplet is None
    # Features that would make the triplet loss NaN are never touched when it is off.
    out = _outputs(torch.full_like(feats, float("nan")), labels, 4, n_adv=1)
    total, logs = crit(out, labels)
    assert torch.isfinite(total) and set(logs) >= {"loss_id", "loss_total"} and "loss_adv" not in logs


def test_criterion_config_errors_name_the_key():
    with pytest.raises(ValueError, match="loss.triplet.margn"):
        build_criterion({"triplet": {"margn": 0.3}}, 4, 8)
    with pytest.raises(ValueError, match="loss.center.weight"):
        build_criterion({"center": {"weight": -1.0}}, 4, 8)
    with pytest.raises(ValueError, match="at least one"):
        build_criterion({"id": {"weight": 0}, "triplet": {"weight": 0}}, 4, 8)


def test_losses_reject_mismatched_labels():
    with pytest.raises(ValueError, match="labels must have shape"):
        TripletLoss()(torch.zeros(4, 3), torch.zeros(5, dtype=torch.long))
