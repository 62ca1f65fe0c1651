"""Market-1501 (Zheng et al., "Scalable Person Re-identification: A Benchmark", ICCV 2015).

Layout: ``bounding_box_train/``, ``query/`` and ``bounding_box_test/`` (the gallery) of images named
``PPPP_cCsS_FFFFFF_NN.jpg``: person id (4 digits, or ``-1``), camera C (1..6), sequence S, frame, box index.
``root`` may be that folder or its parent holding ``Market-1501-v15.09.15``.

Identity -1 marks junk boxes (badly cropped people) and is dropped everywhere; identity 0000 marks
distractors (no person of interest), kept in the gallery only, where they make retrieval harder.
"""

from __future__ import annotations

import os
from pathlib import Path

from .base import (
    DatasetLayoutError,
    ImageRecord,
    NameParser,
    ReIDDataset,
    find_dataset_folder,
    list_images,
    relabel_train,
    require_existing_root,
)

MARKET_STYLE_SPLITS = {"train": "bounding_box_train", "query": "query", "gallery": "bounding_box_test"}
JUNK_PID = -1
DISTRACTOR_PID = 0

MARKET_NAME_PATTERN = r"(?P<pid>-1|\d{4})_c(?P<camera>\d)s\d+_\d{6}_\d{2}\.jpg"


def read_split_folder(folder: Path, parser: NameParser, keep_distractors: bool) -> list[ImageRecord]:
    """Records of one split folder, without junk boxes and (unless ``keep_distractors``) distractors."""
    images = list_images(folder)
    if not images:
        nested = sorted(p.name for p in folder.iterdir() if p.is_dir() and list_images(p))
        hint = (f"; the images are one level deeper, in {nested[:3]}: move them into '{folder.name}' itself"
                if nested else "")
        raise DatasetLayoutError(f"Split folder '{folder}' contains no images{hint}")
    records = []
    for path in images:
        parsed = parser.parse(path)
        if parsed is None:
            continue
        pid, camid = parsed
        if pid == JUNK_PID or (pid == DISTRACTOR_PID and not keep_distractors):
            continue
        records.append(ImageRecord(str(path), pid, camid))
    return records


def read_market_style(folder: Path, name: str, parser: NameParser) -> ReIDDataset:
    """Read the three Market-style split folders under ``folder`` into a dataset."""
    train = read_split_folder(folder / MARKET_STYLE_SPLITS["train"], parser, keep_distractors=False)
    query = read_split_folder(folder / MARKET_STYLE_SPLITS["query"], parser, keep_distractors=False)
    gallery = read_split_folder(folder / MARKET_STYLE_SPLITS["gallery"], parser, keep_distractors=True)
    parser.log_skipped(name)
    for split_name, records in (("train", train), ("query", query), ("gallery", gallery)):
        if not records:
            raise DatasetLayoutError(
                f"{name}: split '{split_name}' in '{folder}' has no usable images (only junk/distractors)"
            )
    return ReIDDataset(name, relabel_train(train), query, gallery)


def load_market1501(root: str | os.PathLike, *, strict: bool = True) -> ReIDDataset:
    """Read Market-1501 from ``root`` (see the module docstring for the layout)."""
    folder = find_dataset_folder(
        require_existing_root(root),
        required=list(MARKET_STYLE_SPLITS.values()),
        candidates=["Market-1501-v15.09.15"],
        dataset="Market-1501",
    )
    parser = NameParser(MARKET_NAME_PATTERN, "PPPP_cCsS_FFFFFF_NN.jpg", num_cameras=6, strict=strict)
    return read_market_style(folder, "market1501", parser)
