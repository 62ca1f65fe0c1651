"""DistributedDataParallel on CPU: ``torchrun`` starts 2 gloo processes running tools/train_reid.py.

What is provable: without SyncBN, DDP over 2 ranks (each with its own P x K batch) takes the optimizer step on
the average of the two per-rank gradients. The reference below runs both ranks' batches through ONE model in
this process, averages the gradients by hand and steps; the DDP checkpoint must match it to float tolerance,
and must not match the wrong reference that uses only rank 0's half. Ranks staying in sync is checked by the
trainer itself (all-gathered parameter checksums, ``ranks_in_sync`` in results.json).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import torch

from reid.config import load_config
from reid.data import build_dataset
from reid.data.loaders import build_train_loader
from reid.engine import WarmupLRSchedule, build_loss_optimizer, build_optimizer, read_metrics, seed_everything
from reid.losses import build_criterion
from reid.models import build_model

REPO = Path(__file__).resolve().parent.parent


def _overrides(data_root: Path) -> list[str]:
    return [
        f"data.root={data_root}",
        "data.synthetic.num_train_ids=8",
        "data.synthetic.num_test_ids=4",
        "data.synthetic.num_cameras=2",
        "data.synthetic.images_per_id_per_camera=2",
        "data.height=32",
        "data.width=16",
        "data.ids_per_batch=2",
        "data.num_instances=2",
        "model.gdfl.enabled=true",
        # layer4 untapped, attention off: g feeds nothing, the case that crashed DDP when layer4 still ran
        "model.gdfl.taps=[layer2,layer3]",
        "model.gdfl.attention.enabled=false",
        "model.gdfl.proj_dim=32",
        "model.gdfl.fuse_dim=32",
        "model.adversary.enabled=true",
        "model.adversary.hidden=[16]",
        "model.adversary.dropout=0.0",  # dropout draws per-rank random numbers the reference cannot replay
        "loss.center.weight=0.0005",  # centres: outside the DDP wrapper, averaged by hand
        "solver.optimizer=sgd",  # SGD keeps tiny float differences tiny (Adam would rescale them)
        "solver.base_lr=0.05",
        "solver.epochs=2",
        "solver.warmup_epochs=1",
        "solver.max_iters_per_epoch=2",
        "test.eval_period=0",
        "test.batch_size=64",
    ]


def _reference_parameters(cfg: dict, *, use_both_halves: bool) -> dict[str, torch.Tensor]:
    """Replay the 2-rank training in one process: same init, same per-rank batches, gradients averaged."""
    seed_everything(int(cfg["seed"]))  # rank 0's seed: DDP broadcasts rank 0's initial weights
    dataset = build_dataset("synthetic", cfg["data"]["root"], **cfg["data"]["synthetic"])
    seed = int(cfg["seed"])
    loaders = [build_train_loader(cfg, dataset.train, rank=r, world_size=2, seed=seed) for r in (0, 1)]
    model = build_model(cfg["model"], dataset.num_train_pids)
    criterion = build_criterion(cfg["loss"], dataset.num_train_pids, model.feature_dim)
    optimizer = build_optimizer(model, cfg["solver"])
    loss_optimizer = build_loss_optimizer(criterion, cfg["loss"])
    centres = [p for p in criterion.parameters() if p.requires_grad]
    iters = min(len(loaders[0]), int(cfg["solver"]["max_iters_per_epoch"]))
    schedule = WarmupLRSchedule(optimizer, cfg["solver"], iters)
    epochs = int(cfg["solver"]["epochs"])
    params = [p for p in model.parameters() if p.requires_grad]
    model.train()
    step = 0
    for epoch in range(epochs):
        for loader in loaders:
            loader.batch_sampler.set_epoch(epoch)
        for index, batches in enumerate(zip(*loaders, strict=True)):
            if index >= iters:
                break
            model.set_training_progress(step / (epochs * iters))
            grads = []
            for batch in batches if use_both_halves else batches[:1]:
                model.zero_grad(set_to_none=True)
                criterion.zero_grad(set_to_none=True)
                loss, _ = criterion(model(batch["images"]), batch["pids"])
                loss.backward()
                grads.append([p.grad.clone() for p in params + centres])
            for param, *per_rank in zip(params + centres, *grads, strict=True):
                param.grad = torch.stack(per_rank).mean(0)
            torch.nn.utils.clip_grad_norm_(params, float(cfg["solver"]["grad_clip"]))
            optimizer.step()
            loss_optimizer.step()
            schedule.step()
            step += 1
    state = {name: p.detach() for name, p in model.named_parameters()}
    state.update({f"criterion.{name}": p.detach() for name, p in criterion.named_parameters()})
    return state


def test_torchrun_two_gloo_ranks_equal_gradient_averaged_reference(tmp_path):
    data_root, run_dir = tmp_path / "data", tmp_path / "run"
    overrides = _overrides(data_root)
    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
        str(REPO / "tools" / "train_reid.py"), "--config", str(REPO / "configs" / "synthetic.yml"),
        "--output", str(run_dir), *overrides,
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    completed = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=240)
    assert completed.returncode == 0, completed.stderr[-4000:]

    results = json.loads((run_dir / "results.json").read_text())
    assert results["world_size"] == 2 and results["ranks_in_sync"] is True
    assert [r["epoch"] for r in read_metrics(run_dir / "metrics.jsonl")] == [1, 2]  # rank 0 logs only
    checkpoint = torch.load(run_dir / "last.pt", weights_only=True)
    assert checkpoint["global_step"] == 4 and checkpoint["world_size"] == 2
    assert len(checkpoint["rng_states"]) == 2

    cfg = load_config(REPO / "configs" / "synthetic.yml", overrides)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the ranks ran with OMP_NUM_THREADS=1: same summation order
    try:
        reference = _reference_parameters(cfg, use_both_halves=True)
        rank0_only = _reference_parameters(cfg, use_both_halves=False)
    finally:
        torch.set_num_threads(threads)  # every later test in this process would run on one thread
    saved = {**checkpoint["model"], **{f"criterion.{k}": v for k, v in checkpoint["criterion"].items()}}
    assert any(k.startswith("criterion.") for k in reference)  # the center-loss centres are compared too
    worst_right = max((saved[k] - v).abs().max().item() for k, v in reference.items())
    worst_wrong = max((saved[k] - v).abs().max().item() for k, v in rank0_only.items())
    print(f"max |DDP - reference| = {worst_right:.3g}, max |DDP - rank-0-only| = {worst_wrong:.3g}")
    assert worst_right < 1e-4, worst_right
    assert worst_wrong > 100 * max(worst_right, 1e-7), (worst_wrong, worst_right)


def _unused_by_backward(model_cfg: dict, loss_weights: dict) -> set[str]:
    """Reference: the top-level modules holding trainable parameters that one real backward leaves without
    a gradient."""
    torch.manual_seed(0)
    model = build_model(model_cfg, 4).train()
    loss_cfg = {name: {"weight": weight} for name, weight in loss_weights.items()}
    criterion = build_criterion(loss_cfg, 4, model.feature_dim)
    pids = torch.tensor([0, 0, 1, 1, 2, 2, 3, 3])
    loss, _ = criterion(model(torch.randn(8, 3, 64, 32)), pids)
    loss.backward()
    return {name.split(".")[0] for name, p in model.named_parameters() if p.requires_grad and p.grad is None}


def test_find_unused_parameters_rule_matches_a_real_backward_pass():
    base = {"backbone": "resnet18", "pretrained": "none", "adversary": {"enabled": True, "hidden": [8]}}
    two_taps = {"enabled": True, "taps": ["layer2", "layer3"], "proj_dim": 16, "fuse_dim": 16}
    cases = [
        (base, {"id": 1.0, "triplet": 1.0, "adversary": 1.0}),
        (base, {"id": 0.0, "triplet": 1.0, "adversary": 1.0}),
        (base, {"id": 1.0, "triplet": 1.0, "adversary": 0.0}),
        # layer4 is not tapped and g feeds nothing: layer4 must be neither computed nor trainable
        ({**base, "gdfl": {**two_taps, "attention": {"enabled": False}}}, {"id": 1.0, "adversary": 1.0}),
        ({**base, "gdfl": {**two_taps, "attention": {"compat": "additive"}}}, {"id": 1.0, "adversary": 1.0}),
        # here g is used (dot scores, or the adversary on g), so layer4 runs and trains
        ({**base, "gdfl": {**two_taps, "attention": {"compat": "dot"}}}, {"id": 1.0, "adversary": 1.0}),
        ({**base, "gdfl": two_taps, "adversary": {"enabled": True, "attach": "global", "hidden": [8]}},
         {"id": 1.0, "adversary": 1.0}),
    ]  # fmt: skip
    for model_cfg, weights in cases:
        model = build_model(model_cfg, 4)
        assert set(model.modules_without_gradient(weights)) == _unused_by_backward(model_cfg, weights), (
            model_cfg, weights)  # fmt: skip
        layer4_trains = any(p.requires_grad for p in model.backbone.layer4.parameters())
        assert layer4_trains == model.uses_global_feat


def test_stopping_after_the_deepest_tap_gives_the_features_of_the_full_pass():
    torch.manual_seed(0)
    gdfl = {"enabled": True, "taps": ["layer3.0", "layer2"], "attention": {"enabled": False}}
    cfg = {"backbone": "resnet18", "pretrained": "none", "gdfl": gdfl}
    model = build_model(cfg, 4).eval()
    assert model.backbone.last_block is not None
    images = torch.randn(2, 3, 64, 32)
    with torch.no_grad():
        stopped = model(images)
        model.backbone.last_block = None  # run every block, as before
        full = model(images)
    torch.testing.assert_close(stopped, full, rtol=0, atol=0)
    assert not any(p.requires_grad for p in model.backbone.layer3[1].parameters())
    assert all(p.requires_grad for p in model.backbone.layer3[0].parameters())
