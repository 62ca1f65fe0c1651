"""Engine pieces: LR schedule, RNG capture, checkpoint safety and config checks, metrics log, feature
extraction against a hand-written preprocessing, the train-identity split, and exact resume of a real run."""

from __future__ import annotations

import logging
import math
import random
from collections import defaultdict
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from reid.config import load_config
from reid.data import ImageRecord
from reid.engine import (
    ResumeConfigError,
    Trainer,
    WarmupLRSchedule,
    capture_rng_state,
    config_differences,
    extract_features,
    load_checkpoint,
    read_metrics,
    restore_rng_state,
    save_checkpoint,
    seed_everything,
    seen_identity_split,
)
from reid.engine.metrics_log import MetricsLog
from reid.engine.resume import check_resume_config
from reid.engine.trainer import resolve_amp_dtype
from reid.models import CheckpointError, build_model
from reid.models.checkpoint import read_checkpoint


def _solver(**overrides):
    solver = load_config(None)["solver"]
    solver.update(overrides)
    return solver


def _lrs(schedule: WarmupLRSchedule, steps: int) -> list[float]:
    values = []
    for _ in range(steps):
        values.append(schedule.get_last_lr()[0])
        schedule.optimizer.step()  # the order training uses (torch warns about the other one)
        schedule.step()
    return values


def test_step_schedule_matches_per_epoch_reference_after_warmup():
    iters, base = 7, 3.5e-4
    solver = _solver(
        base_lr=base, epochs=12, warmup_epochs=3, warmup_factor=0.1, milestones=[5, 9], gamma=0.1
    )
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=base)
    lrs = _lrs(WarmupLRSchedule(optimizer, solver, iters), 12 * iters)
    for step, lr in enumerate(lrs):
        epoch = step // iters
        fractional = step / iters
        expected = base * (0.1 ** sum(epoch >= m for m in (5, 9)))
        if fractional < 3:
            expected *= 0.1 + 0.9 * fractional / 3
        assert lr == pytest.approx(expected, rel=1e-12), step
    assert lrs[0] == pytest.approx(0.1 * base)
    warmup = lrs[: 3 * iters + 1]
    assert all(b > a for a, b in zip(warmup, warmup[1:], strict=False))  # the warm-up rises every step


def test_cosine_schedule_decays_to_zero_and_resumes_from_state():
    solver = _solver(scheduler="cosine", epochs=10, warmup_epochs=2, warmup_factor=0.5, base_lr=1.0)
    optimizer = torch.optim.Adam([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    schedule = WarmupLRSchedule(optimizer, solver, 4)
    lrs = _lrs(schedule, 40)
    after_warmup = lrs[8:]
    assert after_warmup[0] == pytest.approx(1.0)
    assert all(b <= a for a, b in zip(after_warmup, after_warmup[1:], strict=False))
    assert schedule.get_last_lr()[0] == pytest.approx(0.0, abs=1e-12)
    assert lrs[20] == pytest.approx(0.5 * (1 + math.cos(math.pi * 3 / 8)))
    other = torch.optim.Adam([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    resumed = WarmupLRSchedule(other, solver, 4)
    reference = WarmupLRSchedule(torch.optim.Adam([torch.nn.Parameter(torch.zeros(1))], lr=1.0), solver, 4)
    for _ in range(13):
        reference.optimizer.step()
        reference.step()
    resumed.load_state_dict(reference.state_dict())
    assert resumed.get_last_lr() == reference.get_last_lr() == [lrs[13]]


def test_schedule_rejects_unknown_kind():
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    with pytest.raises(ValueError, match="solver.scheduler"):
        WarmupLRSchedule(optimizer, _solver(scheduler="linear"), 3)


def _draw() -> tuple:
    return random.random(), float(np.random.rand()), float(np.random.randn()), torch.rand(3).tolist()


def test_rng_state_roundtrips_through_weights_only_checkpoint(tmp_path):
    seed_everything(123)
    _draw()
    np.random.randn()  # leaves a cached gaussian in numpy's state
    save_checkpoint({"rng": capture_rng_state()}, tmp_path / "rng.pt")
    expected = _draw()
    seed_everything(999)
    state = torch.load(tmp_path / "rng.pt", weights_only=True)
    restore_rng_state(state["rng"])
    assert _draw() == expected


def test_load_checkpoint_refuses_pickled_objects_and_incomplete_files(tmp_path):
    evil = tmp_path / "evil.pt"
    torch.save({"model": {}, "config": {}, "payload": logging.getLogger("x")}, evil)
    with pytest.raises(CheckpointError, match="evil.pt"):
        load_checkpoint(evil)
    retrieval_only = tmp_path / "retrieval.pt"
    torch.save({"model": {}, "config": {"model": {}}}, retrieval_only)
    with pytest.raises(CheckpointError, match=r"retrieval\.pt cannot resume.*optimizer"):
        load_checkpoint(retrieval_only)
    with pytest.raises(FileNotFoundError, match="missing.pt"):
        load_checkpoint(tmp_path / "missing.pt")


@pytest.mark.parametrize(("content", "fragment"), [
    (b"", r"empty\.pt is empty \(0 bytes\)"),
    (b"version https://git-lfs.github.com/spec/v1\n", r"not a PyTorch checkpoint"),
])
def test_read_checkpoint_names_empty_and_foreign_files(tmp_path, content, fragment):
    path = tmp_path / "empty.pt"
    path.write_bytes(content)
    with pytest.raises(CheckpointError, match=fragment):
        read_checkpoint(path)


def test_damaged_weights_inside_an_intact_archive_are_refused(tmp_path):
    path = tmp_path / "ckpt.pt"
    weights = torch.arange(4096, dtype=torch.float32)
    save_checkpoint({"model": {"w": weights}, "config": {}}, path)
    assert torch.equal(read_checkpoint(path)["model"]["w"], weights)
    data = bytearray(path.read_bytes())
    start = bytes(data).find(weights.numpy().tobytes()[:64])
    assert start > 0  # torch stores tensors uncompressed: the zip stays valid when their bytes change
    data[start + 1024 : start + 1024 + 64] = bytes(64)
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="do not match the sha256"):
        read_checkpoint(path)


def test_read_checkpoint_reports_a_truncated_archive_in_one_line(tmp_path):
    whole = tmp_path / "whole.pt"
    save_checkpoint({"model": {"w": torch.zeros(1000)}, "config": {}}, whole)
    cut = tmp_path / "cut.pt"
    cut.write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])
    with pytest.raises(CheckpointError, match="cut.pt.*corrupt") as info:
        read_checkpoint(cut)
    assert "\n" not in str(info.value)


def test_resume_config_check_lists_differences_and_ignores_bookkeeping_keys(caplog):
    saved = load_config(None)
    current = load_config(None, ["solver.base_lr=0.01", "model.gdfl.enabled=true", "output_dir=elsewhere"])
    current["data"]["num_workers"] = 0
    differences = config_differences(saved, current)
    assert differences == ["model.gdfl.enabled: False -> True", "solver.base_lr: 0.00035 -> 0.01"]
    with pytest.raises(ResumeConfigError) as info:
        check_resume_config(saved, current, "run/last.pt", force=False)
    assert "model.gdfl.enabled" in str(info.value) and "solver.base_lr" in str(info.value)
    with caplog.at_level(logging.WARNING):
        check_resume_config(saved, current, "run/last.pt", force=True)
    assert "solver.base_lr" in caplog.text
    check_resume_config(saved, load_config(None, ["test.flip=true"]), "run/last.pt", force=False)


def test_metrics_log_truncates_redone_epochs(tmp_path):
    log = MetricsLog(tmp_path, tensorboard=False)
    for epoch in (1, 2, 3):
        log.log({"epoch": epoch, "loss": 1.0 / epoch, "bad": float("nan")}, step=epoch)
    log.truncate_after(2)
    log.log({"epoch": 3, "loss": 0.25}, step=3)
    records = read_metrics(tmp_path / "metrics.jsonl")
    assert [r["epoch"] for r in records] == [1, 2, 3]
    assert records[-1]["loss"] == 0.25 and records[0]["bad"] is None
    MetricsLog(tmp_path / "rank1", enabled=False).log({"epoch": 1}, step=1)
    assert not (tmp_path / "rank1").exists()


def test_amp_setting_maps_to_the_autocast_dtype():
    # The mapping needs no GPU: a CUDA device object is enough for every value but "auto".
    cuda = torch.device("cuda")
    assert resolve_amp_dtype("bf16", cuda) is torch.bfloat16
    assert resolve_amp_dtype("fp16", cuda) is torch.float16
    assert resolve_amp_dtype("off", cuda) is None
    with pytest.raises(ValueError, match="solver.amp must be one of"):
        resolve_amp_dtype("fp8", cuda)
    for amp in ("auto", "bf16", "fp16", "off"):
        assert resolve_amp_dtype(amp, torch.device("cpu")) is None  # the CPU always trains in fp32


def _write_images(folder: Path, count: int, seed: int = 0) -> list[ImageRecord]:
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    records = []
    for index in range(count):
        path = folder / f"{index:04d}.png"
        cv2.imwrite(str(path), rng.integers(0, 256, size=(40 + index, 20 + index, 3), dtype=np.uint8))
        records.append(ImageRecord(str(path), index % 3, index % 2))
    return records


def test_extract_features_matches_hand_preprocessing_and_flip_average(tmp_path):
    records = _write_images(tmp_path / "imgs", 5)
    torch.manual_seed(0)
    model = build_model({"backbone": "resnet18", "pretrained": "none"}, num_classes=3)
    model.bnneck.running_mean.uniform_(-1, 1)  # so the features before and after the BNNeck differ
    model.train()
    mean, std = [0.5, 0.4, 0.3], [0.2, 0.25, 0.3]
    batch = []
    for record in records:
        rgb = cv2.cvtColor(cv2.imread(record.path), cv2.COLOR_BGR2RGB)
        resized = cv2.resize(rgb, (16, 32), interpolation=cv2.INTER_LINEAR).astype(np.float32) / 255.0
        batch.append(torch.from_numpy(((resized - mean) / std).transpose(2, 0, 1).astype(np.float32)))
    images = torch.stack(batch)
    common = dict(input_size=(32, 16), mean=mean, std=std, batch_size=2)
    plain = extract_features(model, records, **common)
    flipped = extract_features(model, records, flip=True, **common)
    before_bn = extract_features(model, records, feat="before_bn", **common)
    assert model.training and model.retrieval_feat == "after_bn"  # state restored
    model.eval()
    with torch.no_grad():
        expected = model(images).numpy()
        expected_flip = (expected + model(images.flip(3)).numpy()) / 2
        model.set_retrieval_feat("before_bn")
        expected_before = model(images).numpy()
    assert plain.dtype == np.float32 and plain.shape == (5, model.feature_dim)
    np.testing.assert_allclose(plain, expected, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(flipped, expected_flip, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(before_bn, expected_before, rtol=1e-4, atol=1e-5)
    assert not np.allclose(plain, before_bn)


def test_seen_identity_split_gives_every_query_a_cross_camera_match_in_its_gallery():
    # Most identities have many images in one camera and a single one in another: truncating a shuffled
    # gallery would often drop that single cross-camera image and leave the query without a valid match.
    rng = np.random.default_rng(1)
    records = []
    for pid in range(30):
        main_camera = int(rng.integers(0, 3))
        records += [ImageRecord(f"/x/{pid}_{i}.jpg", pid, main_camera) for i in range(12)]
        records.append(ImageRecord(f"/x/{pid}_other.jpg", pid, (main_camera + 1) % 3))
    records += [ImageRecord(f"/x/single_cam_{i}.jpg", 99, 0) for i in range(4)]
    for seed in range(10):
        query, gallery = seen_identity_split(records, max_ids=20, max_images_per_id=3, seed=seed)
        assert len(query) == len({r.pid for r in query}) == 20
        assert 99 not in {r.pid for r in query}
        by_pid = defaultdict(list)
        for record in gallery:
            by_pid[record.pid].append(record)
        for probe in query:
            assert probe not in by_pid[probe.pid]
            assert len(by_pid[probe.pid]) <= 3
            assert {r.camid for r in by_pid[probe.pid]} - {probe.camid}, (seed, probe)
        assert seen_identity_split(records, max_ids=20, max_images_per_id=3, seed=seed) == (query, gallery)


# ---- exact resume of a real (tiny) training run ----------------------------------------------------------


def _tiny_config(root: Path, out: Path, **extra) -> dict:
    overrides = [
        "data.name=synthetic",
        f"data.root={root}",
        "data.synthetic.num_train_ids=8",
        "data.synthetic.num_test_ids=6",
        "data.synthetic.num_cameras=2",
        "data.synthetic.images_per_id_per_camera=2",
        "data.height=32",
        "data.width=16",
        "data.ids_per_batch=4",
        "data.num_instances=2",
        "data.num_workers=0",
        "data.pin_memory=false",
        "model.backbone=resnet18",
        "model.pretrained=none",
        "model.gdfl.enabled=true",
        "model.gdfl.proj_dim=32",
        "model.gdfl.fuse_dim=32",
        "model.adversary.enabled=true",
        "model.adversary.hidden=[16]",
        "solver.epochs=3",
        "solver.warmup_epochs=1",
        "solver.milestones=[2]",
        "solver.max_iters_per_epoch=1",
        "test.eval_period=0",
        "test.batch_size=32",
        f"output_dir={out}",
    ]
    overrides += [f"{k}={v}" for k, v in extra.items()]
    return load_config(None, overrides)


@pytest.fixture(scope="module")
def resumed_runs(tmp_path_factory):
    """An uninterrupted 3-epoch run, and the same run stopped after epoch 1 then resumed from last.pt."""
    tmp = tmp_path_factory.mktemp("resume")
    data = tmp / "data"
    every_step = {"solver.log_period": 1}
    full = Trainer(_tiny_config(data, tmp / "full", **every_step), tmp / "full").fit()
    part_cfg = _tiny_config(data, tmp / "part", **every_step)
    first = Trainer(part_cfg, tmp / "part")
    first.epochs = 1  # stop after one epoch, as if interrupted (schedule and DANN ramp still span 3 epochs)
    first.fit()
    seed_everything(777)  # a fresh process would start from other RNG states
    resumed = Trainer(part_cfg, tmp / "part", resume=tmp / "part" / "last.pt").fit()
    return tmp, full, resumed


def test_resume_after_an_epoch_is_bit_identical(resumed_runs):
    tmp, full, resumed = resumed_runs
    full_state = torch.load(tmp / "full" / "last.pt", weights_only=True)
    resumed_state = torch.load(tmp / "part" / "last.pt", weights_only=True)
    assert full_state["global_step"] == resumed_state["global_step"] == 3
    for key, tensor in full_state["model"].items():
        assert torch.equal(tensor, resumed_state["model"][key]), key
    for key in ("mAP", "rank1", "seen_ids_mAP"):
        assert resumed[key] == full[key]
    full_log = read_metrics(tmp / "full" / "metrics.jsonl")
    part_log = read_metrics(tmp / "part" / "metrics.jsonl")
    assert [(r["epoch"], r.get("partial", False)) for r in part_log] == [
        (1, True), (1, False), (2, True), (2, False), (3, True), (3, False)]  # fmt: skip
    for a, b in zip(full_log, part_log, strict=True):
        assert a["loss_total"] == b["loss_total"]
    # solver.log_period=1 with one step per epoch: each step record is that epoch's mean
    partial = [r for r in full_log if r.get("partial")]
    assert [r["step"] for r in partial] == [1, 2, 3]
    assert [r["acc_adv"] for r in partial] == [r["acc_adv"] for r in full_log if not r.get("partial")]
    full_log = [r for r in full_log if not r.get("partial")]
    assert full_log[0]["adv_lambda"] == 0.0 < full_log[1]["adv_lambda"] < full_log[2]["adv_lambda"] < 0.1
    assert "acc_adv" in full_log[0] and "acc_id" in full_log[0]
    assert (tmp / "part" / "best.pt").exists() and (tmp / "part" / "results.json").exists()


def test_resume_with_a_different_config_is_refused(resumed_runs):
    tmp = resumed_runs[0]
    changed = _tiny_config(tmp / "data", tmp / "part", **{"solver.base_lr": 0.1})
    with pytest.raises(ResumeConfigError, match=r"solver.base_lr: 0.00035 -> 0.1"):
        Trainer(changed, tmp / "other", resume=tmp / "part" / "last.pt")


def test_center_loss_weight_does_not_change_the_centres_gradient(tmp_path):
    """BoT convention: the centres move at loss.center.lr whatever loss.center.weight is (the weight only
    scales the centre term's pull on the features), so their gradient must not depend on the weight."""
    grads = []
    for weight in (5e-4, 1e-2):
        cfg = _tiny_config(tmp_path / "data", tmp_path / f"w{weight}", **{"loss.center.weight": weight})
        trainer = Trainer(cfg, tmp_path / f"w{weight}")
        images = torch.randn(8, 3, 32, 16, generator=torch.Generator().manual_seed(0))
        trainer.train_step(images, torch.arange(4).repeat_interleave(2))
        grads.append(trainer.criterion.center.centers.grad.clone())
    assert grads[0].abs().sum() > 0
    torch.testing.assert_close(grads[0], grads[1])


class _ScaledFeatures(torch.nn.Module):
    """A feature extractor whose feature norm varies from image to image, directions unchanged."""

    def __init__(self, scale: bool):
        super().__init__()
        self.scale = scale

    def forward(self, images):
        features = images.mean(dim=2).flatten(1)  # B x (3 * W): per-column colour profiles
        if self.scale:
            features = features * (1.0 + 20.0 * images.std(dim=(1, 2, 3), keepdim=False)[:, None])
        return features


def test_cosine_evaluation_and_its_reranking_ignore_the_feature_norm(tmp_path):
    # Cosine distance ignores the norm, so re-ranking under the cosine metric must too (it once re-ranked
    # unnormalised features in the trainer but normalised ones in the report tool).
    from reid.engine.evaluate import evaluate_model

    records = _write_images(tmp_path / "imgs", 18)
    query, gallery = records[:6], records[6:]
    cfg = load_config(None, ["test.metric=cosine", "test.rerank.enabled=true", "test.rerank.k1=4",
                             "test.rerank.k2=2", "data.height=32", "data.width=16", "test.batch_size=8",
                             "data.num_workers=0"])
    plain = evaluate_model(_ScaledFeatures(False), query, gallery, cfg)
    scaled = evaluate_model(_ScaledFeatures(True), query, gallery, cfg)
    assert set(plain) >= {"mAP", "rerank_mAP", "rerank_rank1"}
    for key in plain:
        assert scaled[key] == pytest.approx(plain[key], abs=1e-6), key
