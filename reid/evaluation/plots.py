"""Evaluation figures: CMC curves and ranked lists (query + top-k gallery; green = correct, red = wrong).

Figures are built with ``matplotlib.figure.Figure`` directly (no pyplot global state), so they work headless
and from threads; saving is left to the caller (atomically, see ``reid.utils.io.atomic_save_figure``).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from pathlib import Path

import cv2
import numpy as np
from matplotlib.figure import Figure

from reid.data.image_io import CorruptImageError, read_image

from .features_file import FeatureSet
from .rank import ranked_gallery

logger = logging.getLogger(__name__)

THUMBNAIL_SIZE = (128, 64)  # (height, width): the usual person-crop aspect ratio
BORDER = 6
CORRECT_RGB = (40, 170, 40)
WRONG_RGB = (210, 40, 40)
QUERY_RGB = (60, 60, 60)
PLACEHOLDER_GREY = 160


def plot_cmc(curves: Mapping[str, np.ndarray], max_rank: int) -> Figure:
    """CMC curves (fractions) as percentages over ranks 1..max_rank, one line per labelled curve."""
    figure = Figure(figsize=(6, 4.5), dpi=100)
    axes = figure.add_subplot()
    for label, cmc in curves.items():
        values = np.asarray(cmc)[:max_rank] * 100
        ranks = np.arange(1, values.size + 1)
        axes.plot(ranks, values, marker="o" if values.size <= 20 else None, markersize=3, label=label)
    axes.set_xlabel("Rank")
    axes.set_ylabel("Matching rate (%)")
    axes.set_xlim(1, max(max_rank, 2))
    axes.set_title("CMC curve")
    axes.grid(True, alpha=0.3)
    axes.legend(loc="lower right")
    figure.tight_layout()
    return figure


def select_queries(average_precision: np.ndarray, num_queries: int, worst_first: bool) -> np.ndarray:
    """Indices of the queries to show: valid ones (AP not NaN), in order, or by ascending AP (stable)."""
    valid = np.flatnonzero(~np.isnan(average_precision))
    if worst_first:
        valid = valid[np.argsort(average_precision[valid], kind="stable")]
    return valid[:num_queries]


def plot_ranked_list(
    features: FeatureSet,
    distmat: np.ndarray,
    query_indices: Iterable[int],
    average_precision: np.ndarray,
    *,
    topk: int = 10,
    junk_pids: Iterable[int] | None = None,
    title: str = "",
) -> Figure:
    """One row per query: the query image then its top-k gallery images as ranked by ``evaluate_rank``.

    Images are read from the stored paths when they exist; otherwise a grey placeholder shows the pid.
    """
    query_indices = list(query_indices)
    num_rows = max(1, len(query_indices))
    figure = Figure(figsize=(1.1 * (topk + 1), 2.3 * num_rows), dpi=100)
    grid = figure.subplots(num_rows, topk + 1, squeeze=False)
    for axes in grid.flat:
        axes.set_axis_off()
    junk = list(junk_pids) if junk_pids is not None else None
    for row, q in enumerate(query_indices):
        q_pid = int(features.query_pids[q])
        _show(grid[row, 0], features.query_paths[q], q_pid, QUERY_RGB)
        grid[row, 0].set_title(f"query {q}\npid {q_pid}\nAP {average_precision[q] * 100:.1f}%", fontsize=7)
        top = ranked_gallery(
            distmat[q],
            q_pid,
            int(features.query_camids[q]),
            features.gallery_pids,
            features.gallery_camids,
            topk,
            junk_pids=junk,
        )
        for column, g in enumerate(top, start=1):
            g_pid = int(features.gallery_pids[g])
            colour = CORRECT_RGB if g_pid == q_pid else WRONG_RGB
            _show(grid[row, column], features.gallery_paths[g], g_pid, colour)
            grid[row, column].set_title(f"#{column}\n{distmat[q, g]:.3g}", fontsize=7)
    if title:
        figure.suptitle(title, fontsize=9)
    figure.tight_layout()
    return figure


def _show(axes, path: str, pid: int, border_rgb: tuple[int, int, int]) -> None:
    image = _load_thumbnail(path)
    bordered = np.empty((THUMBNAIL_SIZE[0] + 2 * BORDER, THUMBNAIL_SIZE[1] + 2 * BORDER, 3), dtype=np.uint8)
    bordered[:] = border_rgb
    bordered[BORDER:-BORDER, BORDER:-BORDER] = PLACEHOLDER_GREY if image is None else image
    axes.imshow(bordered)
    if image is None:
        centre_x, centre_y = bordered.shape[1] / 2, bordered.shape[0] / 2
        axes.text(centre_x, centre_y, f"pid\n{pid}", ha="center", va="center", fontsize=8)


def _load_thumbnail(path: str) -> np.ndarray | None:
    """The image resized to THUMBNAIL_SIZE, or None when the path is unknown, missing or unreadable."""
    if not path or not Path(path).is_file():
        return None
    try:
        image = read_image(path)
    except (CorruptImageError, OSError) as error:
        logger.warning("ranked list: %s; showing a placeholder", error)
        return None
    height, width = THUMBNAIL_SIZE
    return cv2.resize(image, (width, height), interpolation=cv2.INTER_AREA)
