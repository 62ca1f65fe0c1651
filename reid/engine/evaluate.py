"""Evaluation during and after training: query/gallery retrieval on unseen identities, and the same figures
on images of the *training* identities (``seen_ids_*``: classes and images trained on), whose gap
to the unseen figures shows over-fitting to seen classes (method.md 3.8 and 4.6).
"""

from __future__ import annotations

import logging
import random
from collections import defaultdict
from typing import Any

import numpy as np
import torch
from torch import nn

from reid.data import ImageRecord
from reid.evaluation.features_file import FeatureSet
from reid.evaluation.report import EvaluationSettings, RerankSettings, evaluate_features
from reid.extraction import extract_features

logger = logging.getLogger(__name__)

RANKS_REPORTED = (1, 5, 10)


def seen_identity_split(
    records: list[ImageRecord], *, max_ids: int = 100, max_images_per_id: int = 16, seed: int = 0
) -> tuple[list[ImageRecord], list[ImageRecord]]:
    """Query/gallery split over *training* images (identities the model has seen): per identity one query
    image, at most ``max_images_per_id`` others as gallery.

    Only identities seen by two or more cameras take part, and the gallery of each always keeps at least one
    image from a camera other than the query's, so every query has a valid match under the standard
    same-camera removal. At most ``max_ids`` identities (a seeded choice) keep it cheap on large datasets.
    """
    by_pid: dict[int, list[ImageRecord]] = defaultdict(list)
    for record in records:
        by_pid[record.pid].append(record)
    rng = random.Random(seed)
    eligible = sorted(pid for pid, items in by_pid.items() if len({r.camid for r in items}) >= 2)
    chosen = sorted(rng.sample(eligible, min(max_ids, len(eligible))))
    query, gallery = [], []
    for pid in chosen:
        items = sorted(by_pid[pid], key=lambda r: r.path)
        probe = items[rng.randrange(len(items))]
        cross_camera = [r for r in items if r.camid != probe.camid]
        match = cross_camera[rng.randrange(len(cross_camera))]
        others = [r for r in items if r is not probe and r is not match]
        rng.shuffle(others)
        query.append(probe)
        gallery.extend([match, *others[: max_images_per_id - 1]])
    if not query:
        logger.warning("No training identity has images in two cameras: seen-identity figures unavailable")
    return query, gallery


def _ids(records: list[ImageRecord]) -> tuple[np.ndarray, np.ndarray]:
    pids = np.array([r.pid for r in records], dtype=np.int64)
    camids = np.array([r.camid for r in records], dtype=np.int64)
    return pids, camids


def _summarise(ranking: dict[str, Any], prefix: str = "") -> dict[str, float]:
    cmc = np.asarray(ranking["cmc"])
    out = {f"{prefix}mAP": float(ranking["mAP"]), f"{prefix}mINP": float(ranking["mINP"])}
    for rank in RANKS_REPORTED:
        out[f"{prefix}rank{rank}"] = float(cmc[min(rank, len(cmc)) - 1])
    return out


def evaluate_model(
    model: nn.Module,
    query: list[ImageRecord],
    gallery: list[ImageRecord],
    cfg: dict[str, Any],
    *,
    device: str | torch.device = "cpu",
    rerank: bool | None = None,
) -> dict[str, float]:
    """mAP, mINP and CMC rank-1/5/10 (fractions) of ``model`` on ``query`` vs ``gallery``.

    With ``test.rerank.enabled`` (or ``rerank=True``) the k-reciprocal re-ranked figures are added with a
    ``rerank_`` prefix. Features, distance metric and flip averaging follow ``cfg.test``.
    """
    if not query or not gallery:
        return {
            "mAP": float("nan"),
            "mINP": float("nan"),
            **{f"rank{r}": float("nan") for r in RANKS_REPORTED},
        }
    test_cfg, data_cfg = cfg["test"], cfg["data"]
    common = dict(
        input_size=(int(data_cfg["height"]), int(data_cfg["width"])),
        mean=data_cfg["pixel_mean"],
        std=data_cfg["pixel_std"],
        batch_size=int(test_cfg["batch_size"]),
        flip=bool(test_cfg["flip"]),
        device=device,
        num_workers=int(data_cfg["num_workers"]),
        feat=test_cfg["feat"],
    )
    query_feats = extract_features(model, query, **common)
    gallery_feats = extract_features(model, gallery, **common)
    q_pids, q_camids = _ids(query)
    g_pids, g_camids = _ids(gallery)
    rerank_cfg = test_cfg["rerank"]
    use_rerank = bool(rerank_cfg["enabled"]) if rerank is None else rerank
    # The one evaluation path (reid.evaluation.report), so the trainer, --eval-only and tools/test_reid.py
    # rank, normalise and re-rank alike.
    features = FeatureSet(query_feats, q_pids, q_camids, tuple(r.path for r in query),
                          gallery_feats, g_pids, g_camids, tuple(r.path for r in gallery))
    settings = EvaluationSettings(
        metric=test_cfg["metric"],
        rerank=RerankSettings(k1=int(rerank_cfg["k1"]), k2=int(rerank_cfg["k2"]),
                              lambda_value=float(rerank_cfg["lambda_value"])) if use_rerank else None,
    )
    outcome = evaluate_features(features, settings)
    results = _summarise(outcome.plain)
    if outcome.reranked is not None:
        results.update(_summarise(outcome.reranked, prefix="rerank_"))
    return results


def evaluate_unseen_and_seen(
    model: nn.Module,
    query: list[ImageRecord],
    gallery: list[ImageRecord],
    train_records: list[ImageRecord],
    cfg: dict[str, Any],
    *,
    device: torch.device | str,
) -> dict[str, Any]:
    """Test figures on unseen identities plus ``seen_ids_mAP`` / ``seen_ids_rank1`` / ``seen_ids_mINP`` on
    training images (:func:`seen_identity_split`): the gap between the two is the over-fitting the framework
    is meant to reduce."""
    results = evaluate_model(model, query, gallery, cfg, device=device)
    seen_query, seen_gallery = seen_identity_split(train_records, seed=int(cfg["seed"]))
    if seen_query:
        seen = evaluate_model(model, seen_query, seen_gallery, cfg, device=device, rerank=False)
        results.update({f"seen_ids_{key}": seen[key] for key in ("mAP", "rank1", "mINP")})
    return results
