"""Pictures of gallery search results: the query beside each ranked identity's evidence crops."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from reid.gallery.store import IdentityHit
from reid.utils.io import atomic_save_figure

_CELL_HW = (128, 64)


def _rgb_cell(bgr: np.ndarray | None) -> np.ndarray:
    """Resize to one grid cell; a missing crop becomes a grey placeholder instead of an error."""
    if bgr is None:
        return np.full((*_CELL_HW, 3), 160, dtype=np.uint8)
    return cv2.cvtColor(
        cv2.resize(bgr, (_CELL_HW[1], _CELL_HW[0]), interpolation=cv2.INTER_AREA), cv2.COLOR_BGR2RGB
    )


def format_time(seconds: float) -> str:
    minutes, secs = divmod(max(0.0, float(seconds)), 60.0)
    return f"{int(minutes):02d}:{secs:04.1f}"


def plot_search_results(
    query_bgr: np.ndarray, hits: list[IdentityHit], path: str | Path, *, crops_per_identity: int = 5
) -> None:
    """One row per ranked identity: its rank, id and distance, then its nearest crops with camera and time."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = max(1, len(hits))
    cols = 1 + crops_per_identity
    fig, axes = plt.subplots(rows, cols, figsize=(1.3 * cols, 2.3 * rows), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    axes[0, 0].imshow(_rgb_cell(query_bgr))
    axes[0, 0].set_title("query", fontsize=8, color="tab:blue")
    for row, hit in enumerate(hits):
        axes[row, 1].set_title(
            f"#{row + 1} id {hit.identity_id}  d={hit.distance:.3f}", fontsize=8, loc="left"
        )
        for col, item in enumerate(hit.evidence[:crops_per_identity], start=1):
            crop = cv2.imread(item["crop_path"]) if Path(item["crop_path"]).is_file() else None
            axes[row, col].imshow(_rgb_cell(crop))
            axes[row, col].text(
                0.5, -0.04, f"c{item['camera_id']} {format_time(item['timestamp_s'])}",
                transform=axes[row, col].transAxes, ha="center", va="top", fontsize=7,
            )  # fmt: skip
    if not hits:
        axes[0, 1].text(0.0, 0.5, "gallery is empty", fontsize=9)
    fig.tight_layout()
    atomic_save_figure(fig, path, dpi=110)
    plt.close(fig)
