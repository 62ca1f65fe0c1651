"""How useful a crop is as gallery evidence: big, sharp, confidently detected, unoccluded, inside the frame,
shaped like one standing person.

Each factor is in [0, 1] and the quality is their product, so one bad property (a person half hidden behind
another, a box cut by the frame edge, motion blur) is enough to rank a crop low however good the rest is.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from reid.video.boxes import intersection_over_area


@dataclass(frozen=True)
class QualityConfig:
    """``full_height``: box height (px) from which size stops mattering; ``sharpness_scale``: Laplacian
    variance at which sharpness counts half; ``border_margin``: px from the edge that count as truncated;
    ``max_person_aspect``: width / height beyond which a box likely holds more than one person (a walking
    person's widest stride is about half their height; the Caltech Pedestrian benchmark standardises boxes
    at 0.41), its quality falling in proportion."""

    full_height: float = 120.0
    sharpness_scale: float = 60.0
    border_margin: float = 2.0
    truncated_factor: float = 0.3
    max_person_aspect: float = 0.5


def laplacian_sharpness(crop: np.ndarray) -> float:
    """Variance of the Laplacian of the grey crop: high for crisp edges, low for blur (Pech-Pacheco 2000)."""
    gray = cv2.cvtColor(crop, cv2.COLOR_BGR2GRAY) if crop.ndim == 3 else crop
    return float(cv2.Laplacian(gray, cv2.CV_32F).var())


def occlusion_fractions(boxes: np.ndarray) -> np.ndarray:
    """For each box, the largest fraction of it covered by another box of the same frame."""
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    if len(boxes) < 2:
        return np.zeros(len(boxes))
    cover = intersection_over_area(boxes, boxes)
    np.fill_diagonal(cover, 0.0)
    # Only a box in front (lower bottom edge = closer to a ground-level camera) hides another.
    bottoms = boxes[:, 1] + boxes[:, 3]
    in_front = bottoms[None, :] >= bottoms[:, None]
    return (cover * in_front).max(axis=1)


def crop_quality(crops: list[np.ndarray], boxes: np.ndarray, scores: np.ndarray, frame_shape: tuple[int, ...],
                 config: QualityConfig | None = None) -> np.ndarray:
    """Quality in [0, 1] of each crop of one frame (its box and detector score alongside)."""
    config = config or QualityConfig()
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    if len(boxes) == 0:
        return np.zeros(0)
    height, width = frame_shape[:2]
    size = np.clip(boxes[:, 3] / config.full_height, 0.0, 1.0)
    sharp_raw = np.array([laplacian_sharpness(c) for c in crops])
    sharp = sharp_raw / (sharp_raw + config.sharpness_scale)
    det = np.clip(np.asarray(scores, dtype=np.float64), 0.0, 1.0)
    visible = 1.0 - occlusion_fractions(boxes)
    m = config.border_margin
    truncated = (boxes[:, 0] <= m) | (boxes[:, 1] <= m) | (boxes[:, 0] + boxes[:, 2] >= width - m) | (
        boxes[:, 1] + boxes[:, 3] >= height - m
    )
    inside = np.where(truncated, config.truncated_factor, 1.0)
    aspect = boxes[:, 2] / np.maximum(boxes[:, 3], 1e-6)
    one_person = np.clip(config.max_person_aspect / np.maximum(aspect, 1e-6), 0.0, 1.0)
    return size * sharp * det * visible * inside * one_person
