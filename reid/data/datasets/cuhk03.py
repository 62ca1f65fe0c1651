"""CUHK03 (Li, Zhao, Xiao & Wang, "DeepReID: Deep Filter Pairing Neural Network for Person
Re-identification", CVPR 2014): 1,467 people, each seen by the two cameras of one of five camera pairs, with
hand-drawn (``labeled``) and detector (``detected``) boxes of the same shots.

Two layouts are read from ``data.root``. If it holds the official release (``cuhk-03.mat`` or a
``cuhk03_new_protocol_config_*.mat`` split file), :mod:`.cuhk03_mat` reads it with the 767/700 split.
Otherwise it is the folder layout: ``labeled/`` and/or ``detected/`` holding ``PPPP_II.jpg``,
person ``PPPP`` and shot ``II``; shots 00-04 are the first camera of the pair and 05-09 the second (the cell
layout of the official ``cuhk-03.mat``). The same ``PPPP`` is the same person in both folders.

Such a folder has no official test split, so the last ``num_val_ids`` identities (by number) are held out for
validation: per identity and camera view, the first shot (lowest ``II``) is a query and the other shots are
gallery images. Queries are scored against the other camera view only (the standard protocol removes same
identity + same camera), so each query has up to 5 true matches. The rest of the identities train.

``boxes`` chooses the box type for every split: ``labeled``, ``detected`` or ``both`` (train on both; query
and gallery then hold both box types of each shot, and the same-camera rule keeps a query from matching its
own shot's other box).
"""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path

from .base import (
    SKIP_BAD_NAMES_HINT,
    DatasetLayoutError,
    ImageRecord,
    ReIDDataset,
    describe_folder,
    list_images,
    relabel_train,
    require_existing_root,
)
from .cuhk03_mat import MAT_NAME, load_cuhk03_mat, split_file_name

BOX_TYPES = ("labeled", "detected", "both")
CUHK03_NAME = re.compile(r"(?P<pid>\d{4})_(?P<shot>\d{2})\.(?:jpg|png)")
SHOTS_PER_CAMERA = 5

logger = logging.getLogger(__name__)


def is_official_release(root: Path) -> bool:
    """Whether ``root`` holds the official ``cuhk-03.mat`` or one of its new-protocol split files."""
    names = [MAT_NAME] + [split_file_name(box) for box in ("labeled", "detected")]
    return any((root / name).is_file() for name in names)


def _box_folders(boxes: str, key: str = "data.cuhk03.boxes") -> tuple[str, ...]:
    if boxes not in BOX_TYPES:
        raise ValueError(f"{key} must be one of {list(BOX_TYPES)}, got {boxes!r}")
    return ("labeled", "detected") if boxes == "both" else (boxes,)


def _read_folder(folder: Path, strict: bool) -> list[tuple[int, int, str]]:
    """(pid, shot, path) of every image in one box folder."""
    entries, skipped = [], []
    for path in list_images(folder):
        match = CUHK03_NAME.fullmatch(path.name)
        problem = None if match else "does not follow the CUHK03 naming convention PPPP_II.jpg"
        if match and int(match.group("shot")) >= 2 * SHOTS_PER_CAMERA:
            problem = f"has shot {match.group('shot')}, expected 00-09"
        if problem is None:
            entries.append((int(match.group("pid")), int(match.group("shot")), str(path)))
        elif strict:
            raise DatasetLayoutError(f"File '{path}' {problem} ({SKIP_BAD_NAMES_HINT})")
        else:
            skipped.append(str(path))
    if skipped:
        logger.warning("cuhk03: skipped %d files with unexpected names, e.g. %s", len(skipped), skipped[0])
    return entries


def load_cuhk03(
    root: str | os.PathLike,
    *,
    boxes: str = "labeled",
    num_val_ids: int = 100,
    strict: bool = True,
    test_boxes: str | None = None,
) -> ReIDDataset:
    """Read CUHK03 from ``root``: the official release if it is there, else the folder layout above.

    ``num_val_ids`` only applies to the folder layout; the official release has its own test split.
    ``test_boxes`` (folder layout) gives query and gallery another box type than training, e.g. train on
    ``labeled`` and test on ``detected``: a shift from hand-drawn to detector crops. Default: ``boxes``.
    """
    root_path = require_existing_root(root)
    train_folders = _box_folders(boxes)
    test_folders = train_folders if test_boxes is None else _box_folders(test_boxes, "data.cuhk03.test_boxes")
    if is_official_release(root_path):
        if test_boxes not in (None, boxes):
            raise ValueError("data.cuhk03.test_boxes applies to the folder layout, not the official release")
        return load_cuhk03_mat(root_path, boxes=boxes)
    folders = sorted(set(train_folders) | set(test_folders))
    missing = [f for f in folders if not (root_path / f).is_dir()]
    if missing:
        raise DatasetLayoutError(
            f"cuhk03: expected folder(s) {', '.join(missing)}/ of PPPP_II.jpg images"
            f" (data.cuhk03.boxes={boxes}, test_boxes={test_boxes or boxes})"
            f" in '{root_path}'; found: {describe_folder(root_path)}"
        )
    entries = [(*entry, folder) for folder in folders for entry in _read_folder(root_path / folder, strict)]
    if not entries:
        raise DatasetLayoutError(f"cuhk03: no PPPP_II.jpg images in {[str(root_path / f) for f in folders]}")
    pids = sorted({pid for pid, _, _, _ in entries})
    if not 0 < num_val_ids < len(pids):
        raise ValueError(
            f"data.cuhk03.num_val_ids must be between 1 and {len(pids) - 1}"
            f" (the dataset has {len(pids)} ids),"
            f" got {num_val_ids}"
        )
    val_pids = set(pids[-num_val_ids:])
    test_entries = [e for e in entries if e[0] in val_pids and e[3] in test_folders]
    train, query, gallery = [], [], []
    first_shot: dict[tuple[int, int], int] = {}
    for pid, shot, _, _ in test_entries:
        key = (pid, shot // SHOTS_PER_CAMERA)
        first_shot[key] = min(first_shot.get(key, shot), shot)
    for pid, shot, path, folder in sorted(entries):
        camid = shot // SHOTS_PER_CAMERA
        record = ImageRecord(path, pid, camid)
        if pid not in val_pids:
            if folder in train_folders:
                train.append(record)
        elif folder not in test_folders:
            continue
        elif shot == first_shot[(pid, camid)]:
            query.append(record)
        else:
            gallery.append(record)
    return ReIDDataset("cuhk03", relabel_train(train), query, gallery)
