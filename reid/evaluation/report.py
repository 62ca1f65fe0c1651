"""Evaluate a feature set and write the report folder: results.json, results.md, cmc.png, ranked_list.png.

Every figure and table is rendered in memory before the first file is written; the files are written into a
fresh temporary folder that then replaces the report folder whole, so a report folder always holds the files
of one run, never a mix of two, and a killed run leaves the previous report as it was.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from reid.utils.io import atomic_save_figure, atomic_write_json, atomic_write_text, staged_folder

from .distance import compute_distance_matrix, l2_normalize
from .features_file import FeatureSet, save_features
from .plots import plot_cmc, plot_ranked_list, select_queries
from .rank import evaluate_rank
from .rerank import re_ranking

logger = logging.getLogger(__name__)

REPORTED_RANKS = (1, 5, 10)
# What a report folder may hold: an existing folder with anything else is not replaced.
REPORT_FILES = frozenset({"results.json", "results.md", "cmc.png", "ranked_list.png", "features.npz"})


@dataclass(frozen=True)
class RerankSettings:
    """k-reciprocal re-ranking parameters (Zhong et al., CVPR 2017 defaults)."""

    k1: int = 20
    k2: int = 6
    lambda_value: float = 0.3

    def label(self) -> str:
        return f"+ re-ranking (k1={self.k1}, k2={self.k2}, λ={self.lambda_value:g})"


@dataclass(frozen=True)
class EvaluationSettings:
    metric: str = "euclidean"
    max_rank: int = 50
    ap_mode: str = "noninterpolated"
    junk_pids: tuple[int, ...] = ()
    rerank: RerankSettings | None = None
    source: dict[str, Any] = field(default_factory=dict)  # where the features came from, for the record


@dataclass(frozen=True)
class EvaluationOutcome:
    """Results of ``evaluate_rank`` and the distance matrices they came from (plain, optionally re-ranked)."""

    settings: EvaluationSettings
    plain: dict[str, Any]
    plain_distmat: np.ndarray
    reranked: dict[str, Any] | None = None
    reranked_distmat: np.ndarray | None = None


def evaluate_features(
    features: FeatureSet, settings: EvaluationSettings, *, device: str | None = None
) -> EvaluationOutcome:
    """Distances, CMC/mAP/mINP and, when requested, the same after k-reciprocal re-ranking."""
    # CMC is computed to at least rank 10 so that Rank-10 is always reported.
    max_rank = max(settings.max_rank, max(REPORTED_RANKS))
    labels = (features.query_pids, features.gallery_pids, features.query_camids, features.gallery_camids)
    junk = list(settings.junk_pids) or None
    options = dict(max_rank=max_rank, ap_mode=settings.ap_mode, junk_pids=junk)
    distmat = compute_distance_matrix(
        features.query_features, features.gallery_features, settings.metric, device=device
    )
    plain = evaluate_rank(distmat, *labels, **options)
    if settings.rerank is None:
        return EvaluationOutcome(settings, plain, distmat)
    logger.info("re-ranking %s", settings.rerank)
    query, gallery = features.query_features, features.gallery_features
    if settings.metric == "cosine":
        # Re-ranking works on squared Euclidean distances; on unit vectors those are 2 - 2 cos, so both
        # report rows then rank by the same geometry.
        query, gallery = l2_normalize(query), l2_normalize(gallery)
    reranked_distmat = re_ranking(query, gallery, **asdict(settings.rerank), device=device)
    reranked = evaluate_rank(reranked_distmat, *labels, **options)
    return EvaluationOutcome(settings, plain, distmat, reranked, reranked_distmat)


def summarize(result: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """The headline figures of one ``evaluate_rank`` result (fractions), keys optionally prefixed."""
    cmc = np.asarray(result["cmc"])
    summary: dict[str, Any] = {f"{prefix}mAP": result["mAP"]}
    summary.update({f"{prefix}rank{k}": float(cmc[k - 1]) for k in REPORTED_RANKS})
    summary[f"{prefix}mINP"] = result["mINP"]
    summary[f"{prefix}num_valid_queries"] = result["num_valid_queries"]
    summary[f"{prefix}num_skipped_queries"] = result["num_skipped_queries"]
    return summary


def results_json(outcome: EvaluationOutcome) -> dict[str, Any]:
    """Flat headline keys (plain, then ``rerank_``-prefixed), the CMC curves and the settings used."""
    settings = outcome.settings
    data = summarize(outcome.plain)
    data["cmc"] = np.asarray(outcome.plain["cmc"])[: settings.max_rank].tolist()
    if outcome.reranked is not None:
        data.update(summarize(outcome.reranked, prefix="rerank_"))
        data["rerank_cmc"] = np.asarray(outcome.reranked["cmc"])[: settings.max_rank].tolist()
    data["settings"] = {
        "metric": settings.metric,
        "max_rank": settings.max_rank,
        "ap_mode": settings.ap_mode,
        "junk_pids": list(settings.junk_pids),
        "rerank": asdict(settings.rerank) if settings.rerank else None,
        "num_query": int(outcome.plain_distmat.shape[0]),
        "num_gallery": int(outcome.plain_distmat.shape[1]),
        **settings.source,
    }
    return data


def results_markdown(outcome: EvaluationOutcome) -> str:
    """A Markdown table in percent (Rank-1/5/10, mAP, mINP), ready to paste into a paper or README."""
    header = "| Method | Rank-1 | Rank-5 | Rank-10 | mAP | mINP |\n|---|---:|---:|---:|---:|---:|\n"
    rows = [_markdown_row("plain", outcome.plain)]
    if outcome.reranked is not None and outcome.settings.rerank is not None:
        rows.append(_markdown_row(outcome.settings.rerank.label(), outcome.reranked))
    settings = outcome.settings
    note = (
        f"\n{settings.metric} distance, {settings.ap_mode} AP; "
        f"{outcome.plain['num_valid_queries']} of {outcome.plain_distmat.shape[0]} queries scored, "
        f"{outcome.plain_distmat.shape[1]} gallery images.\n"
    )
    return header + "\n".join(rows) + "\n" + note


def _markdown_row(label: str, result: dict[str, Any]) -> str:
    summary = summarize(result)
    values = [summary[f"rank{k}"] for k in REPORTED_RANKS] + [summary["mAP"], summary["mINP"]]
    return f"| {label} | " + " | ".join(f"{value * 100:.1f}" for value in values) + " |"


def write_report(
    output_dir: str | os.PathLike,
    outcome: EvaluationOutcome,
    features: FeatureSet,
    *,
    worst_first: bool = False,
    num_queries: int = 10,
    topk: int = 10,
    include_features: bool = False,
) -> dict[str, Path]:
    """Render everything, then write results.json, results.md, cmc.png, ranked_list.png (and features.npz
    when ``include_features``) as the folder ``output_dir``, replacing an earlier report there whole.

    The ranked list uses the final distances (re-ranked when re-ranking was run). A folder holding files
    other than a report's is refused (ValueError) rather than replaced.
    """
    settings = outcome.settings
    curves = {"plain": outcome.plain["cmc"]}
    if outcome.reranked is not None and settings.rerank is not None:
        curves[settings.rerank.label()] = outcome.reranked["cmc"]
    final, final_distmat, stage = outcome.plain, outcome.plain_distmat, "plain"
    if outcome.reranked is not None and outcome.reranked_distmat is not None:
        final, final_distmat, stage = outcome.reranked, outcome.reranked_distmat, "re-ranked"
    queries = select_queries(final["AP"], num_queries, worst_first)
    order = "worst AP first" if worst_first else "in query order"
    ranked_list = plot_ranked_list(
        features,
        final_distmat,
        queries,
        final["AP"],
        topk=topk,
        junk_pids=settings.junk_pids or None,
        title=f"Top-{topk} gallery matches ({stage}, {order})",
    )
    rendered = {
        "results.json": results_json(outcome),
        "results.md": results_markdown(outcome),
        "cmc.png": plot_cmc(curves, settings.max_rank),
        "ranked_list.png": ranked_list,
    }
    folder = Path(output_dir)
    with staged_folder(folder, REPORT_FILES) as staging:
        atomic_write_text(staging / "results.md", rendered["results.md"])
        for name in ("cmc.png", "ranked_list.png"):
            atomic_save_figure(rendered[name], staging / name)
        atomic_write_json(staging / "results.json", rendered["results.json"])
        if include_features:
            save_features(staging / "features.npz", features)
    logger.info("report written to %s", folder)
    names = [*rendered, "features.npz"] if include_features else list(rendered)
    return {name: folder / name for name in names}


def describe(outcome: EvaluationOutcome) -> Sequence[str]:
    """Log-friendly lines with the headline figures in percent."""
    lines = []
    for label, result in (("plain", outcome.plain), ("re-ranked", outcome.reranked)):
        if result is None:
            continue
        summary = summarize(result)
        lines.append(
            f"{label}: mAP {summary['mAP'] * 100:.1f}% | Rank-1 {summary['rank1'] * 100:.1f}% | "
            f"Rank-5 {summary['rank5'] * 100:.1f}% | Rank-10 {summary['rank10'] * 100:.1f}% | "
            f"mINP {summary['mINP'] * 100:.1f}%"
        )
    return lines
