"""CUHK03 read from the official release, split by the 767/700 "new protocol".

CUHK03 (Li, Zhao, Xiao & Wang, "DeepReID: Deep Filter Pairing Neural Network for Person Re-identification",
CVPR 2014) ships as one MATLAB v7.3 file, ``cuhk-03.mat``, not as image files. It is HDF5, so it is read with
h5py (scipy cannot read v7.3). Its ``labeled`` (hand-drawn boxes) and ``detected`` (detector boxes) entries
are each a 5x1 cell array, one cell per camera pair; each cell is an N x 10 cell array (persons x shots) of
H x W x 3 uint8 RGB images. Shots 1-5 come from the pair's first camera and 6-10 from the second; a missing
shot is an empty cell. h5py sees everything transposed (MATLAB is column-major): the pair cell is (10, N) and
an image is (3, W, H).

The original 20 random 1,367/100 splits are not used any more: this reader follows the new protocol of Zhong,
Zheng, Cao & Li ("Re-ranking Person Re-identification with k-reciprocal Encoding", CVPR 2017; the "CUHK03-NP"
release), 767 identities to train and 700 to test. Its split files ``cuhk03_new_protocol_config_labeled.mat``
and ``cuhk03_new_protocol_config_detected.mat`` (MATLAB v5, read with scipy) list image names such as
``1_001_1_01.png`` (camera pair, person, camera, shot; all 1-based) in ``filelist``, the identity of each in
``labels``, its camera (1/2) in ``camId``, and 1-based indices into ``filelist`` in ``train_idx``,
``query_idx`` and ``gallery_idx``.

Expected under ``root``: ``cuhk-03.mat`` and the split file(s) for the chosen box type. The images are
extracted once to ``root/images_labeled/`` and ``root/images_detected/`` under the names the split files use
(torchreid's convention), so later runs read PNGs and need neither the ``.mat`` file nor h5py.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from tqdm import tqdm

from .base import DatasetLayoutError, ImageRecord, ReIDDataset, relabel_train

logger = logging.getLogger(__name__)

MAT_NAME = "cuhk-03.mat"
BOX_TYPES = ("labeled", "detected", "both")
SHOTS = 10
SHOTS_PER_CAMERA = 5
SPLIT_KEYS = ("train_idx", "query_idx", "gallery_idx")


def split_file_name(box: str) -> str:
    return f"cuhk03_new_protocol_config_{box}.mat"


def image_name(campair: int, person: int, shot: int) -> str:
    """File name of 0-based (campair, person, shot), e.g. ``1_001_1_01.png`` for (0, 0, 0)."""
    camera = 1 if shot < SHOTS_PER_CAMERA else 2
    return f"{campair + 1}_{person + 1:03d}_{camera}_{shot + 1:02d}.png"


def _import_h5py() -> Any:
    try:
        import h5py
    except ImportError as error:
        raise DatasetLayoutError(
            f"cuhk03: reading the official {MAT_NAME} (MATLAB v7.3 / HDF5) needs h5py: pip install h5py"
            " (or pip install 'reid-gdfl[cuhk03]')"
        ) from error
    return h5py


def _reference_array(h5py: Any, node: Any, mat_path: Path, what: str) -> np.ndarray:
    if not isinstance(node, h5py.Dataset) or h5py.check_dtype(ref=node.dtype) is not h5py.Reference:
        raise DatasetLayoutError(
            f"cuhk03: '{mat_path}': expected {what} to be a MATLAB cell array (HDF5 object references),"
            f" found {node!r}"
        )
    return np.asarray(node[()])


def extract_images(mat_path: Path, box: str, out_dir: Path) -> int:
    """Write every non-empty shot of ``box`` in ``mat_path`` to ``out_dir``; return how many images it holds.

    Images already in ``out_dir`` are kept (each is written to a temporary name and renamed, so a present
    file is complete), which makes an interrupted extraction resumable.
    """
    h5py = _import_h5py()
    if not mat_path.is_file():
        raise DatasetLayoutError(
            f"cuhk03: expected the official CUHK03 release file '{mat_path}' to extract '{out_dir}' from"
        )
    try:
        mat = h5py.File(mat_path, "r")
    except OSError as error:
        raise DatasetLayoutError(
            f"cuhk03: '{mat_path}' is not an HDF5 (MATLAB v7.3) file as in the official release: {error}"
        ) from error
    out_dir.mkdir(parents=True, exist_ok=True)
    count = 0
    with mat:
        if box not in mat:
            raise DatasetLayoutError(
                f"cuhk03: '{mat_path}' has no '{box}' entry; found {sorted(mat.keys())}"
            )
        pairs = _reference_array(h5py, mat[box], mat_path, f"'{box}'")
        if pairs.ndim != 2 or 1 not in pairs.shape:
            raise DatasetLayoutError(
                f"cuhk03: '{mat_path}': expected '{box}' to be a 5x1 cell array, found shape {pairs.shape}"
            )
        cells = []
        for campair, ref in enumerate(pairs.ravel()):
            cell = _reference_array(h5py, mat[ref], mat_path, f"'{box}' cell {campair + 1}")
            if cell.ndim != 2 or cell.shape[0] != SHOTS:
                raise DatasetLayoutError(
                    f"cuhk03: '{mat_path}': expected '{box}' cell {campair + 1} to be an N x {SHOTS} cell"
                    f" array (persons x shots; h5py shape ({SHOTS}, N)), found h5py shape {cell.shape}"
                )
            cells.append(cell)
        progress = tqdm(total=sum(c.size for c in cells), desc=f"cuhk03: extracting {box}", unit="shot")
        with progress:
            for campair, cell in enumerate(cells):
                for person in range(cell.shape[1]):
                    for shot in range(SHOTS):
                        progress.update()
                        image_node = mat[cell[shot, person]]
                        if len(image_node.shape) < 3 or image_node.size < 3:
                            continue  # an empty cell: this shot is missing
                        count += 1
                        name = image_name(campair, person, shot)
                        target = out_dir / name
                        if target.exists():
                            continue
                        image = np.asarray(image_node[()])
                        if image.ndim != 3 or image.shape[0] != 3 or image.dtype != np.uint8:
                            raise DatasetLayoutError(
                                f"cuhk03: '{mat_path}': expected {box} image {name} to be uint8 of h5py"
                                f" shape (3, W, H), found {image.dtype} {image.shape}"
                            )
                        rgb = image.transpose(2, 1, 0)  # (3, W, H) -> (H, W, 3)
                        tmp = out_dir / f".{name}.tmp.png"  # hidden, so folder listings never see it
                        if not cv2.imwrite(str(tmp), np.ascontiguousarray(rgb[..., ::-1])):
                            raise OSError(f"cuhk03: could not write '{tmp}'")
                        os.replace(tmp, target)
    logger.info("cuhk03: %d %s images in '%s'", count, box, out_dir)
    return count


def _column(mat: dict[str, Any], key: str, path: Path) -> np.ndarray:
    if key not in mat:
        fields = sorted(k for k in mat if not k.startswith("__"))
        raise DatasetLayoutError(f"cuhk03: split file '{path}' has no field '{key}'; found {fields}")
    return np.asarray(mat[key]).ravel()


def _integers(values: np.ndarray, key: str, path: Path) -> np.ndarray:
    try:
        numbers = values.astype(np.float64)
    except (TypeError, ValueError) as error:
        raise DatasetLayoutError(f"cuhk03: split file '{path}': '{key}' must be numeric") from error
    if not np.all(np.isfinite(numbers)) or not np.array_equal(numbers, np.round(numbers)):
        raise DatasetLayoutError(f"cuhk03: split file '{path}': '{key}' must hold whole numbers")
    return numbers.astype(np.int64)


def _file_name(entry: Any, index: int, path: Path) -> str:
    value = entry
    while isinstance(value, np.ndarray):
        if value.size != 1:
            raise DatasetLayoutError(
                f"cuhk03: split file '{path}': filelist entry {index + 1} is not one file name: {entry!r}"
            )
        value = value.ravel()[0]
    if not isinstance(value, str):
        raise DatasetLayoutError(
            f"cuhk03: split file '{path}': filelist entry {index + 1} is not a file name: {entry!r}"
        )
    return value


def read_split_file(path: Path) -> tuple[list[str], np.ndarray, np.ndarray, dict[str, np.ndarray]]:
    """(file names, labels, 1-based camera ids, 0-based indices per split key) of one new-protocol file."""
    from scipy.io import loadmat

    if not path.is_file():
        raise DatasetLayoutError(
            f"cuhk03: expected the new-protocol split file '{path}':"
            f" download {path.name} from the CUHK03-NP release (Zhong et al., CVPR 2017)"
        )
    try:
        mat = loadmat(path)
    except Exception as error:  # scipy raises several types for files it cannot parse
        raise DatasetLayoutError(
            f"cuhk03: could not read split file '{path}' as a MATLAB (v5) file: {error}"
        ) from error
    names = [_file_name(entry, i, path) for i, entry in enumerate(_column(mat, "filelist", path))]
    labels = _integers(_column(mat, "labels", path), "labels", path)
    cams = _integers(_column(mat, "camId", path), "camId", path)
    if not len(names) == len(labels) == len(cams):
        raise DatasetLayoutError(
            f"cuhk03: split file '{path}': filelist, labels and camId must have one entry per file,"
            f" found {len(names)}, {len(labels)} and {len(cams)}"
        )
    bad_cams = sorted(set(cams.tolist()) - {1, 2})
    if bad_cams:
        raise DatasetLayoutError(f"cuhk03: split file '{path}': camId must be 1 or 2, found {bad_cams}")
    splits = {}
    for key in SPLIT_KEYS:
        indices = _integers(_column(mat, key, path), key, path)
        outside = indices[(indices < 1) | (indices > len(names))]
        if outside.size:
            raise DatasetLayoutError(
                f"cuhk03: split file '{path}': {key} must be 1-based indices into filelist"
                f" (1..{len(names)}), found {outside[:5].tolist()}"
            )
        splits[key] = indices - 1
    return names, labels, cams, splits


def _load_box(root: Path, box: str) -> tuple[list[ImageRecord], list[ImageRecord], list[ImageRecord]]:
    split_path = root / split_file_name(box)
    names, labels, cams, splits = read_split_file(split_path)
    image_dir = root / f"images_{box}"
    if not all((image_dir / name).is_file() for name in names):
        extract_images(root / MAT_NAME, box, image_dir)
        missing = [name for name in names if not (image_dir / name).is_file()]
        if missing:
            raise DatasetLayoutError(
                f"cuhk03: split file '{split_path}' lists {len(missing)} images that '{root / MAT_NAME}'"
                f" does not hold (looked in '{image_dir}'), e.g. {missing[:3]}"
            )
    train, query, gallery = (
        [
            ImageRecord(str(image_dir / names[i]), int(labels[i]), int(cams[i]) - 1)
            for i in splits[key].tolist()
        ]
        for key in SPLIT_KEYS
    )
    return train, query, gallery


def load_cuhk03_mat(root: Path, *, boxes: str = "labeled") -> ReIDDataset:
    """Read CUHK03 from the official ``cuhk-03.mat`` with the new-protocol split (see the module docstring).

    ``boxes`` is ``labeled``, ``detected`` or ``both`` (every split is then the union of the two box types;
    the identity labels of the two split files are the same people).
    """
    if boxes not in BOX_TYPES:
        raise ValueError(f"data.cuhk03.boxes must be one of {list(BOX_TYPES)}, got {boxes!r}")
    root = Path(root).expanduser()
    train: list[ImageRecord] = []
    query: list[ImageRecord] = []
    gallery: list[ImageRecord] = []
    for box in ("labeled", "detected") if boxes == "both" else (boxes,):
        box_train, box_query, box_gallery = _load_box(root, box)
        train += box_train
        query += box_query
        gallery += box_gallery
    return ReIDDataset("cuhk03", relabel_train(train), query, gallery)
