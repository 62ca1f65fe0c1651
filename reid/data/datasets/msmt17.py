"""MSMT17 (Wei et al., "Person Transfer GAN to Bridge Domain Gap for Person Re-Identification", CVPR 2018).

Layout (V1 or V2; ``root`` may be that folder or its parent holding ``MSMT17_V1``/``MSMT17_V2``/``MSMT17``):
image folders ``train/`` and ``test/`` (V2 releases may call them ``mask_train_v2/`` and ``mask_test_v2/``)
and list files ``list_train.txt``, ``list_val.txt`` (paths under the train folder), ``list_query.txt`` and
``list_gallery.txt`` (under the test folder). Each line is ``relative/path label``; file names look like
``PPPP_NNN_CC_...jpg`` where the third underscore field is the camera (1..15).

The official validation list is a subset of the training identities, so by default train = train + val
(the common protocol); pass ``include_val=False`` to hold it out.
"""

from __future__ import annotations

import os
from pathlib import Path

from .base import (
    DatasetLayoutError,
    ImageRecord,
    ReIDDataset,
    describe_folder,
    relabel_train,
    require_existing_root,
)

NUM_CAMERAS = 15
LIST_FILES = ("list_train.txt", "list_val.txt", "list_query.txt", "list_gallery.txt")
IMAGE_FOLDERS = {"train": ("train", "mask_train_v2"), "test": ("test", "mask_test_v2")}
VERSION_FOLDERS = ("MSMT17_V2", "MSMT17_V1", "MSMT17")


def _find_msmt_folder(root: Path) -> Path:
    for folder in [root, *(root / name for name in VERSION_FOLDERS)]:
        if all((folder / name).is_file() for name in LIST_FILES):
            return folder
    raise DatasetLayoutError(
        f"MSMT17: expected {', '.join(LIST_FILES)} in '{root}' (or in one of its sub-folders "
        f"{', '.join(VERSION_FOLDERS)}); found: {describe_folder(root)}"
    )


def _image_folder(folder: Path, kind: str) -> Path:
    for name in IMAGE_FOLDERS[kind]:
        if (folder / name).is_dir():
            return folder / name
    raise DatasetLayoutError(
        f"MSMT17: expected an image folder named {' or '.join(IMAGE_FOLDERS[kind])} in '{folder}'; "
        f"found: {describe_folder(folder)}"
    )


def _camera_of(relative_path: str, list_file: Path, line_number: int) -> int:
    fields = Path(relative_path).name.split("_")
    if len(fields) < 3 or not fields[2].isdigit() or not 1 <= int(fields[2]) <= NUM_CAMERAS:
        raise DatasetLayoutError(
            f"{list_file}:{line_number}: image name '{relative_path}' does not follow PPPP_NNN_CC_...jpg "
            f"with camera CC in 1..{NUM_CAMERAS}"
        )
    return int(fields[2]) - 1


def read_list_file(list_file: Path, image_folder: Path) -> list[ImageRecord]:
    """Records from one ``relative/path label`` list file; paths are resolved under ``image_folder``."""
    records = []
    for line_number, line in enumerate(list_file.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        parts = line.split()
        if len(parts) != 2 or not parts[1].isdigit():
            raise DatasetLayoutError(
                f"{list_file}:{line_number}: expected 'relative/path label', got {line.strip()!r}"
            )
        relative_path, label = parts
        camid = _camera_of(relative_path, list_file, line_number)
        records.append(ImageRecord(str(image_folder / relative_path), int(label), camid))
    if not records:
        raise DatasetLayoutError(f"MSMT17: list file '{list_file}' lists no images")
    # Checking every file would cost seconds on 126k images; the first one catches a wrong image folder.
    if not Path(records[0].path).is_file():
        raise DatasetLayoutError(
            f"MSMT17: '{list_file}' lists '{records[0].path}', which does not exist; expected images under "
            f"'{image_folder}' (found there: {describe_folder(image_folder)})"
        )
    return records


def load_msmt17(root: str | os.PathLike, *, include_val: bool = True) -> ReIDDataset:
    """Read MSMT17 from ``root`` (see the module docstring for the layout and the train/val choice)."""
    folder = _find_msmt_folder(require_existing_root(root))
    train_images, test_images = _image_folder(folder, "train"), _image_folder(folder, "test")
    train = read_list_file(folder / "list_train.txt", train_images)
    if include_val:
        train += read_list_file(folder / "list_val.txt", train_images)
    query = read_list_file(folder / "list_query.txt", test_images)
    gallery = read_list_file(folder / "list_gallery.txt", test_images)
    return ReIDDataset("msmt17", relabel_train(train), query, gallery)
