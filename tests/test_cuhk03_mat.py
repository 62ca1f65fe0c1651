"""The official-release CUHK03 reader, on a tiny ``cuhk-03.mat`` built with the structure of the real one."""

from __future__ import annotations

import re
from pathlib import Path

import cv2
import h5py
import numpy as np
import pytest
import scipy.io

from reid.data.datasets.base import DatasetLayoutError, ImageRecord
from reid.data.datasets.cuhk03_mat import load_cuhk03_mat

PAIRS, PERSONS, SHOTS = 2, 3, 10
#: (campair, person, shot), 0-based, left empty in the .mat file (missing shots).
EMPTY = {"labeled": {(0, 1, 7), (1, 2, 0)}, "detected": {(0, 0, 3), (1, 1, 9), (1, 1, 8)}}
#: Top-level cell shapes as h5py sees them: the real file is 5x1 in MATLAB; accept both orientations.
TOP_SHAPE = {"labeled": (1, PAIRS), "detected": (PAIRS, 1)}
TRAIN_PIDS = {1, 2, 3}


def _name(campair: int, person: int, shot: int) -> str:
    return f"{campair + 1}_{person + 1:03d}_{1 if shot < 5 else 2}_{shot + 1:02d}.png"


def _write_split(path: Path, split: dict) -> None:
    scipy.io.savemat(
        path,
        {
            "filelist": np.array(split["names"], dtype=object).reshape(-1, 1),
            "labels": np.array(split["labels"], dtype=np.float64).reshape(-1, 1),
            "camId": np.array(split["cams"], dtype=np.float64).reshape(-1, 1),
            **{key: np.array(split[key], dtype=np.float64).reshape(-1, 1) for key in ("train_idx",
                                                                                      "query_idx",
                                                                                      "gallery_idx")},
        },
    )


@pytest.fixture
def release(tmp_path: Path) -> dict:
    """Write cuhk-03.mat and both split files; return the source images and the split lists."""
    rng = np.random.default_rng(0)
    sources: dict[str, dict[tuple[int, int, int], np.ndarray]] = {"labeled": {}, "detected": {}}
    with h5py.File(tmp_path / "cuhk-03.mat", "w") as mat:
        refs = mat.create_group("#refs#")
        for box in ("labeled", "detected"):
            pair_refs = []
            for campair in range(PAIRS):
                cell = np.empty((SHOTS, PERSONS), dtype=object)
                for person in range(PERSONS):
                    for shot in range(SHOTS):
                        key = (campair, person, shot)
                        if key in EMPTY[box]:
                            data = np.zeros(2, dtype=np.uint64)  # how MATLAB v7.3 stores []
                        else:
                            data = rng.integers(0, 256, size=(3, 20, 40), dtype=np.uint8)
                            sources[box][key] = data
                        cell[shot, person] = refs.create_dataset(f"{box}_{campair}_{person}_{shot}",
                                                                 data=data).ref
                pair = refs.create_dataset(f"{box}_{campair}", data=cell, dtype=h5py.ref_dtype)
                pair_refs.append(pair.ref)
            top = np.empty(TOP_SHAPE[box], dtype=object)
            top.ravel()[:] = pair_refs
            mat.create_dataset(box, data=top, dtype=h5py.ref_dtype)

    splits = {}
    for box in ("labeled", "detected"):
        keys = sorted(sources[box])
        split = {
            "names": [_name(*key) for key in keys],
            "labels": [c * PERSONS + p + 1 for c, p, _ in keys],
            "cams": [1 if s < 5 else 2 for _, _, s in keys],
            "train_idx": [],
            "query_idx": [],
            "gallery_idx": [],
        }
        seen = set()
        for index, (label, cam) in enumerate(zip(split["labels"], split["cams"], strict=True), start=1):
            if label in TRAIN_PIDS:
                split["train_idx"].append(index)
            elif (label, cam) not in seen:
                seen.add((label, cam))
                split["query_idx"].append(index)
            else:
                split["gallery_idx"].append(index)
        _write_split(tmp_path / f"cuhk03_new_protocol_config_{box}.mat", split)
        splits[box] = split
    return {"root": tmp_path, "sources": sources, "splits": splits}


def _reference(root: Path, split: dict, box: str) -> dict[str, list[ImageRecord]]:
    """Records built one by one from the split lists, without the reader's code."""
    out = {}
    for part in ("train", "query", "gallery"):
        records = []
        for index in split[f"{part}_idx"]:
            name = split["names"][index - 1]
            path = str(root / f"images_{box}" / name)
            records.append(ImageRecord(path, split["labels"][index - 1], split["cams"][index - 1] - 1))
        out[part] = records
    return out


def _relabelled(records: list[ImageRecord]) -> list[ImageRecord]:
    order = sorted({r.pid for r in records})
    return [ImageRecord(r.path, order.index(r.pid), r.camid) for r in records]


def test_extracted_images_are_the_source_arrays_pixel_exact(release):
    root = release["root"]
    load_cuhk03_mat(root, boxes="labeled")
    folder = root / "images_labeled"
    sources = release["sources"]["labeled"]
    assert sorted(p.name for p in folder.iterdir()) == sorted(_name(*key) for key in sources)
    for key, source in sources.items():
        bgr = cv2.imread(str(folder / _name(*key)), cv2.IMREAD_COLOR)
        assert bgr.shape == (40, 20, 3)
        np.testing.assert_array_equal(bgr[..., ::-1], source.transpose(2, 1, 0))
    assert not (root / "images_detected").exists()


@pytest.mark.parametrize("box", ["labeled", "detected"])
def test_records_match_a_reference_built_from_the_filelist(release, box):
    root = release["root"]
    data = load_cuhk03_mat(root, boxes=box)
    expected = _reference(root, release["splits"][box], box)
    assert data.train == _relabelled(expected["train"])
    assert data.query == expected["query"]
    assert data.gallery == expected["gallery"]
    assert data.num_train_pids == len(TRAIN_PIDS)
    assert {r.camid for r in data.query + data.gallery} == {0, 1}
    assert all(Path(r.path).is_file() for r in data.train + data.query + data.gallery)


def test_both_is_the_union_of_the_two_box_types(release):
    root = release["root"]
    both = load_cuhk03_mat(root, boxes="both")
    labeled = _reference(root, release["splits"]["labeled"], "labeled")
    detected = _reference(root, release["splits"]["detected"], "detected")
    assert both.train == _relabelled(labeled["train"] + detected["train"])
    assert both.query == labeled["query"] + detected["query"]
    assert both.gallery == labeled["gallery"] + detected["gallery"]


def test_second_call_does_not_extract_again(release):
    root = release["root"]
    first = load_cuhk03_mat(root, boxes="labeled")
    folder = root / "images_labeled"
    mtimes = {p.name: p.stat().st_mtime_ns for p in folder.iterdir()}
    (root / "cuhk-03.mat").rename(root / "moved.mat")  # not even needed once extracted
    second = load_cuhk03_mat(root, boxes="labeled")
    assert second == first
    assert {p.name: p.stat().st_mtime_ns for p in folder.iterdir()} == mtimes


def test_interrupted_extraction_writes_only_the_missing_images(release):
    root = release["root"]
    load_cuhk03_mat(root, boxes="labeled")
    folder = root / "images_labeled"
    lost = folder / release["splits"]["labeled"]["names"][0]
    lost.unlink()
    mtimes = {p.name: p.stat().st_mtime_ns for p in folder.iterdir()}
    load_cuhk03_mat(root, boxes="labeled")
    assert lost.is_file()
    assert {p.name: p.stat().st_mtime_ns for p in folder.iterdir() if p != lost} == mtimes


def test_missing_split_file_says_what_to_download(release):
    root = release["root"]
    path = root / "cuhk03_new_protocol_config_detected.mat"
    path.unlink()
    with pytest.raises(DatasetLayoutError, match=re.escape(str(path)) + ".*CUHK03-NP"):
        load_cuhk03_mat(root, boxes="detected")
    load_cuhk03_mat(root, boxes="labeled")  # the other box type does not need it


def test_out_of_range_index_names_the_split_file(release):
    root = release["root"]
    split = dict(release["splits"]["labeled"])
    split["query_idx"] = split["query_idx"] + [len(split["names"]) + 1]
    path = root / "cuhk03_new_protocol_config_labeled.mat"
    _write_split(path, split)
    with pytest.raises(DatasetLayoutError, match=re.escape(str(path)) + ".*query_idx"):
        load_cuhk03_mat(root, boxes="labeled")


def test_filelist_name_missing_from_the_release_is_an_error(release):
    root = release["root"]
    split = dict(release["splits"]["labeled"])
    split["names"] = split["names"][:-1] + ["5_999_2_10.png"]
    path = root / "cuhk03_new_protocol_config_labeled.mat"
    _write_split(path, split)
    with pytest.raises(DatasetLayoutError, match=re.escape(str(path)) + ".*5_999_2_10.png"):
        load_cuhk03_mat(root, boxes="labeled")


def test_wrong_mat_structure_names_the_file(tmp_path, release):
    root = release["root"]
    mat_path = root / "cuhk-03.mat"
    mat_path.unlink()
    with h5py.File(mat_path, "w") as mat:
        mat.create_dataset("labeled", data=np.zeros((1, 5)))
    with pytest.raises(DatasetLayoutError, match=re.escape(str(mat_path)) + ".*cell array"):
        load_cuhk03_mat(root, boxes="labeled")
    mat_path.unlink()
    with pytest.raises(DatasetLayoutError, match=re.escape(str(mat_path))):
        load_cuhk03_mat(root, boxes="labeled")


def test_dataset_registry_reads_the_official_release_when_it_is_there(release):
    from reid.data.datasets import build_dataset

    root = release["root"]
    assert build_dataset("cuhk03", root, boxes="detected") == load_cuhk03_mat(root, boxes="detected")
