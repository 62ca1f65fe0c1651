"""Your own data (``data.name: custom``), in either of two layouts.

**Folders** (``data.root`` is a folder)::

    root/
      train/<identity>/<image>      optional: without it the dataset is for evaluation only
      query/<identity>/<image>
      gallery/<identity>/<image>
      cameras.csv                   optional: header ``relative_path,camid``, paths relative to root

Each sub-folder name is one identity (images may also sit in deeper folders below it); the same name in
``query/`` and ``gallery/`` is the same person. Images are .jpg/.jpeg/.png/.bmp/.webp; other files and
hidden files are ignored.

**One CSV file** (``data.root`` is the .csv file) with header ``path,pid,camid,split``: ``path`` relative to
the CSV's folder (or absolute), ``pid`` any identity label, ``camid`` an integer or empty, ``split`` one of
train/query/gallery.

Identities: train identities are renumbered 0..C-1. Query/gallery identities keep their number when every
label is a non-negative integer, otherwise they are numbered in sorted order of their labels.

Cameras: an image's camera comes from ``cameras.csv`` / the ``camid`` column, otherwise from its file name
through ``camera_regex`` (default ``c(\\d+)``, e.g. ``0001_c3_17.jpg`` -> camera 3; use ``cam(\\d+)`` for
``cam3_...``). Camera labels can be any integers; they are renumbered 0..K-1 in sorted order.
Evaluation ignores gallery images of the query's identity taken by the query's camera (the standard protocol,
since those are near-duplicates). Without camera ids every image would share one camera and that rule would
delete every true match, so every query and gallery image must have a camera, or you pass
``camera_mode="per_split"``: query images get camera 0 and gallery images camera 1, nothing is ignored, and
near-duplicate matches (same person, same camera, consecutive frames) count as correct, which inflates
Rank-1/mAP. Use it only when query and gallery were recorded at different places or times. Train images
without cameras all get camera 0 (cameras do not matter for training).
"""

from __future__ import annotations

import csv
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path

from .base import (
    DatasetLayoutError,
    ImageRecord,
    ReIDDataset,
    describe_folder,
    is_image_file,
    relabel_train,
    require_existing_root,
)

logger = logging.getLogger(__name__)

SPLITS = ("train", "query", "gallery")
CAMERA_MODES = ("auto", "per_split")
CAMERAS_FILE = "cameras.csv"
CSV_COLUMNS = ("path", "pid", "camid", "split")


@dataclass(frozen=True)
class _Entry:
    """One image before identities and cameras are numbered; ``camera`` is the user's raw label or None."""

    path: Path
    identity: str
    split: str
    camera: int | None
    source: str  # where the entry came from, for error messages


def _parse_int(value: str, where: str, field: str) -> int:
    try:
        return int(value.strip())
    except ValueError:
        raise DatasetLayoutError(f"{where}: {field} must be an integer, got {value!r}") from None


def _read_csv_rows(csv_path: Path, columns: tuple[str, ...]) -> list[tuple[int, dict[str, str]]]:
    """(line number, row) pairs of a CSV file whose header must contain ``columns``."""
    with open(csv_path, newline="", encoding="utf-8-sig") as handle:
        reader = csv.DictReader(handle)
        header = [name.strip() for name in reader.fieldnames or []]
        missing = [name for name in columns if name not in header]
        if missing:
            raise DatasetLayoutError(
                f"{csv_path}: header must contain {', '.join(columns)}; missing {', '.join(missing)} "
                f"(found header: {', '.join(header) or 'none'})"
            )
        reader.fieldnames = header
        return [(reader.line_num, row) for row in reader]


def _read_camera_table(root: Path) -> dict[str, int]:
    """``cameras.csv`` as {relative posix path: raw camera label}; empty if the file does not exist."""
    table_path = root / CAMERAS_FILE
    if not table_path.is_file():
        return {}
    table = {}
    for line, row in _read_csv_rows(table_path, ("relative_path", "camid")):
        table[Path(row["relative_path"].strip()).as_posix()] = _parse_int(
            row["camid"], f"{table_path}:{line}", "camid"
        )
    return table


def _entries_from_folders(root: Path, camera_regex: re.Pattern) -> list[_Entry]:
    present = [split for split in SPLITS if (root / split).is_dir()]
    if "query" not in present or "gallery" not in present:
        raise DatasetLayoutError(
            f"custom dataset: expected folders train/ (optional), query/ and gallery/ in '{root}', each with "
            f"one sub-folder per identity, or data.root pointing at a CSV file with columns "
            f"{','.join(CSV_COLUMNS)}; found: {describe_folder(root)}"
        )
    camera_table = _read_camera_table(root)
    entries = []
    for split in present:
        split_folder = root / split
        stray = [p.name for p in split_folder.iterdir() if is_image_file(p)]
        if stray:
            raise DatasetLayoutError(
                f"custom dataset: images directly in '{split_folder}' (e.g. {stray[0]}); expected one "
                f"sub-folder per identity, e.g. {split}/person_001/{stray[0]}"
            )
        images = sorted(p for p in split_folder.rglob("*") if is_image_file(p))
        if not images:
            raise DatasetLayoutError(
                f"custom dataset: no images in the identity sub-folders of '{split_folder}'; "
                f"found: {describe_folder(split_folder)}"
            )
        for path in images:
            relative = path.relative_to(root).as_posix()
            camera = camera_table.get(relative, _camera_from_name(path.name, camera_regex))
            identity = path.relative_to(split_folder).parts[0]
            entries.append(_Entry(path, identity, split, camera, str(path)))
    return entries


def _entries_from_csv(csv_path: Path, camera_regex: re.Pattern) -> list[_Entry]:
    entries = []
    for line, row in _read_csv_rows(csv_path, CSV_COLUMNS):
        where = f"{csv_path}:{line}"
        split = (row["split"] or "").strip().lower()
        if split not in SPLITS:
            raise DatasetLayoutError(
                f"{where}: split must be one of {', '.join(SPLITS)}, got {row['split']!r}"
            )
        path = csv_path.parent / (row["path"] or "").strip()
        base = csv_path.parent.resolve()
        if not path.resolve().is_relative_to(base):
            raise DatasetLayoutError(
                f"{where}: path '{row['path']}' leads outside the CSV's folder {base}; image paths must be "
                "relative to it, without '..' or absolute paths that escape it"
            )
        if not path.is_file():
            raise FileNotFoundError(f"{where}: image '{path}' does not exist")
        identity = (row["pid"] or "").strip()
        if not identity:
            raise DatasetLayoutError(f"{where}: pid is empty")
        camid_text = (row["camid"] or "").strip()
        camera = (
            _parse_int(camid_text, where, "camid")
            if camid_text
            else _camera_from_name(path.name, camera_regex)
        )
        entries.append(_Entry(path, identity, split, camera, where))
    if not any(entry.split == "query" for entry in entries) or not any(e.split == "gallery" for e in entries):
        raise DatasetLayoutError(f"{csv_path}: needs at least one 'query' row and one 'gallery' row")
    return entries


def _camera_from_name(file_name: str, camera_regex: re.Pattern) -> int | None:
    match = camera_regex.search(file_name)
    return int(match.group(1)) if match else None


def _number_identities(labels: set[str]) -> dict[str, int]:
    """Keep integer labels as they are (results stay traceable); otherwise number them in sorted order.

    Labels that spell the same integer (``01`` and ``1``) are different folders, so they are not merged: the
    labels are then numbered in sorted order too."""
    if all(label.isascii() and label.isdigit() for label in labels):
        numbers = {label: int(label) for label in labels}
        if len(set(numbers.values())) == len(numbers):
            return numbers
    return {label: index for index, label in enumerate(sorted(labels))}


def _assign_cameras(entries: list[_Entry], camera_mode: str) -> list[int]:
    """0-based camera id per entry, following the rules in the module docstring."""
    if camera_mode == "per_split":
        return [1 if entry.split == "gallery" else 0 for entry in entries]
    unknown = [entry.source for entry in entries if entry.camera is None and entry.split != "train"]
    if unknown:
        raise DatasetLayoutError(
            f"custom dataset: {len(unknown)} query/gallery images have no camera id (e.g. {unknown[0]}). "
            f"Evaluation needs cameras to skip same-camera matches: add them to {CAMERAS_FILE} or the camid "
            "column, name files so camera_regex finds them, or pass camera_mode='per_split' (see the docs)"
        )
    train_cameras = [entry.camera for entry in entries if entry.split == "train"]
    if any(camera is None for camera in train_cameras) and any(
        camera is not None for camera in train_cameras
    ):
        example = next(entry.source for entry in entries if entry.split == "train" and entry.camera is None)
        raise DatasetLayoutError(
            f"custom dataset: some train images have a camera id and others do not (e.g. {example}); "
            "give all of them one or none"
        )
    labels = sorted({entry.camera for entry in entries if entry.camera is not None})
    index = {label: position for position, label in enumerate(labels)}
    return [0 if entry.camera is None else index[entry.camera] for entry in entries]


def load_custom(
    root: str | os.PathLike, *, camera_regex: str = r"c(\d+)", camera_mode: str = "auto"
) -> ReIDDataset:
    """Read a custom dataset from a folder or a CSV file (see the module docstring for both layouts)."""
    if camera_mode not in CAMERA_MODES:
        raise ValueError(f"camera_mode must be one of {CAMERA_MODES}, got {camera_mode!r}")
    pattern = re.compile(camera_regex)
    if pattern.groups < 1:
        raise ValueError(
            f"camera_regex must capture the camera number in a group, e.g. r'c(\\d+)'; got {camera_regex!r}"
        )
    root_path = require_existing_root(root)
    if root_path.is_file():
        if root_path.suffix.lower() != ".csv":
            raise DatasetLayoutError(f"custom dataset: '{root_path}' is a file but not a .csv file")
        entries = _entries_from_csv(root_path, pattern)
    else:
        entries = _entries_from_folders(root_path, pattern)
    camids = _assign_cameras(entries, camera_mode)
    test_pids = _number_identities({entry.identity for entry in entries if entry.split != "train"})
    train_pids = _number_identities({entry.identity for entry in entries if entry.split == "train"})
    splits: dict[str, list[ImageRecord]] = {split: [] for split in SPLITS}
    for entry, camid in zip(entries, camids, strict=True):
        pids = train_pids if entry.split == "train" else test_pids
        splits[entry.split].append(ImageRecord(str(entry.path), pids[entry.identity], camid))
    if not splits["train"]:
        logger.info("custom dataset at %s has no train split: usable for evaluation only", root_path)
    return ReIDDataset("custom", relabel_train(splits["train"]), splits["query"], splits["gallery"])
