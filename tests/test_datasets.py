"""Dataset readers on tiny fake folders (readers only look at names and list files, so images are empty)."""

import logging
from pathlib import Path

import pytest

from reid.data import ImageRecord, ReIDDataset, build_dataset
from reid.data.datasets import DatasetLayoutError

MARKET_FILES = {
    "bounding_box_train": [
        "0007_c1s1_000101_01.jpg",
        "0002_c2s1_000050_02.jpg",
        "0005_c6s2_001234_01.jpg",
        "0002_c1s1_000051_01.jpg",
        "-1_c3s1_000001_00.jpg",
        "0000_c2s1_000002_00.jpg",
    ],
    "query": [
        "0010_c1s1_000200_01.jpg",
        "0011_c4s3_000300_01.jpg",
        "-1_c1s1_000002_00.jpg",
        "0000_c2s1_000003_00.jpg",
    ],
    "bounding_box_test": [
        "0010_c2s1_000201_01.jpg",
        "0011_c5s3_000301_01.jpg",
        "0000_c3s1_000004_00.jpg",
        "-1_c1s1_000005_00.jpg",
    ],
}


def _touch_all(folder: Path, files_by_split: dict[str, list[str]]) -> None:
    for split, names in files_by_split.items():
        (folder / split).mkdir(parents=True, exist_ok=True)
        for name in names:
            (folder / split / name).write_bytes(b"")


def _reference_market_records(folder: Path, split: str, names: list[str], keep_distractors: bool):
    """Obvious reading of the convention: first field is the pid, the digit after 'c' the 1-based camera."""
    records = []
    for name in names:
        pid, camera = int(name.split("_")[0]), int(name.split("_")[1][1])
        if pid == -1 or (pid == 0 and not keep_distractors):
            continue
        records.append(ImageRecord(str(folder / split / name), pid, camera - 1))
    return sorted(records, key=lambda r: r.path)


def _relabelled(records):
    ordered = sorted({r.pid for r in records})
    return [ImageRecord(r.path, ordered.index(r.pid), r.camid) for r in records]


@pytest.mark.parametrize("use_parent", [False, True])
def test_market1501_splits_junk_distractors_and_relabelling(tmp_path, use_parent):
    folder = tmp_path / "Market-1501-v15.09.15" if use_parent else tmp_path / "market"
    _touch_all(folder, MARKET_FILES)
    (folder / "bounding_box_test" / "Thumbs.db").write_bytes(b"junk")
    dataset = build_dataset("market1501", tmp_path if use_parent else folder)

    expected_train = _relabelled(
        _reference_market_records(folder, "bounding_box_train", MARKET_FILES["bounding_box_train"], False)
    )
    assert sorted(dataset.train, key=lambda r: r.path) == sorted(expected_train, key=lambda r: r.path)
    assert sorted(dataset.query, key=lambda r: r.path) == _reference_market_records(
        folder, "query", MARKET_FILES["query"], False
    )
    assert sorted(dataset.gallery, key=lambda r: r.path) == _reference_market_records(
        folder, "bounding_box_test", MARKET_FILES["bounding_box_test"], True
    )
    assert dataset.num_train_pids == 3  # 2, 5, 7 -> 0, 1, 2
    assert {r.pid for r in dataset.gallery} == {0, 10, 11}


def test_summary_table_counts_each_split(tmp_path):
    _touch_all(tmp_path, MARKET_FILES)
    lines = build_dataset("market1501", tmp_path).summary().splitlines()
    rows = {line.split("|")[0].strip(): [cell.strip() for cell in line.split("|")[1:]] for line in lines[1:]}
    assert rows["split"] == ["ids", "images", "cameras"]
    assert rows["train"] == ["3", "4", "3"]
    assert rows["query"] == ["2", "2", "2"]
    assert rows["gallery"] == ["3", "3", "3"]


def test_market_missing_root_and_wrong_layout_are_explained(tmp_path):
    with pytest.raises(FileNotFoundError, match="does_not_exist"):
        build_dataset("market1501", tmp_path / "does_not_exist")
    (tmp_path / "images").mkdir()
    (tmp_path / "readme.txt").write_text("x")
    with pytest.raises(DatasetLayoutError) as info:
        build_dataset("market1501", tmp_path)
    message = str(info.value)
    assert "bounding_box_train" in message and "Market-1501-v15.09.15" in message
    assert "images/" in message and "readme.txt" in message  # lists what it found


def test_market_empty_split_folder(tmp_path):
    _touch_all(tmp_path, {**MARKET_FILES, "query": []})
    with pytest.raises(DatasetLayoutError, match=r"query.*contains no images"):
        build_dataset("market1501", tmp_path)


def test_images_one_level_too_deep_are_pointed_at(tmp_path):
    nested = {**MARKET_FILES, "query": []}
    _touch_all(tmp_path, nested)
    _touch_all(tmp_path / "query", {"extracted": MARKET_FILES["query"]})
    with pytest.raises(DatasetLayoutError, match=r"deeper, in \['extracted'\]: move them into 'query'"):
        build_dataset("market1501", tmp_path)


def test_market_bad_name_errors_or_is_skipped_with_a_count(tmp_path, caplog):
    _touch_all(tmp_path, {**MARKET_FILES, "query": MARKET_FILES["query"] + ["holiday_photo.jpg"]})
    with pytest.raises(DatasetLayoutError, match=r"holiday_photo\.jpg.*PPPP_cCsS_FFFFFF_NN\.jpg"):
        build_dataset("market1501", tmp_path)
    (tmp_path / "query" / "0012_c9s1_000001_01.jpg").write_bytes(b"")
    with caplog.at_level(logging.WARNING):
        dataset = build_dataset("market1501", tmp_path, strict=False)
    assert len(dataset.query) == 2
    assert "skipped 2 files" in caplog.text


def test_bad_names_are_skipped_with_data_strict_false_from_the_command_line(tmp_path):
    from reid.config import load_config
    from reid.engine.trainer import load_dataset

    _touch_all(tmp_path, {**MARKET_FILES, "query": MARKET_FILES["query"] + ["holiday_photo.jpg"]})
    overrides = ["data.name=market1501", f"data.root={tmp_path}"]
    with pytest.raises(DatasetLayoutError, match=r"set data\.strict=false"):
        load_dataset(load_config(None, overrides))
    assert len(load_dataset(load_config(None, [*overrides, "data.strict=false"])).query) == len(
        build_dataset("market1501", tmp_path, strict=False).query
    )


def test_market_camera_out_of_range_is_rejected(tmp_path):
    _touch_all(tmp_path, {**MARKET_FILES, "query": ["0010_c7s1_000200_01.jpg"]})
    with pytest.raises(DatasetLayoutError, match=r"camera 7, expected 1\.\.6"):
        build_dataset("market1501", tmp_path)


def test_dukemtmc_naming_and_parent_folder(tmp_path):
    folder = tmp_path / "DukeMTMC-reID"
    _touch_all(
        folder,
        {
            "bounding_box_train": ["0005_c8_f0000001.jpg", "0001_c1_f0000002.jpg"],
            "query": ["0100_c2_f0000003.jpg"],
            "bounding_box_test": ["0100_c3_f0000004.jpg", "0200_c2_f0000005.jpg"],
        },
    )
    dataset = build_dataset("dukemtmc", tmp_path)
    assert sorted((Path(r.path).name, r.pid, r.camid) for r in dataset.train) == [
        ("0001_c1_f0000002.jpg", 0, 0),
        ("0005_c8_f0000001.jpg", 1, 7),
    ]
    assert [(r.pid, r.camid) for r in dataset.query] == [(100, 1)]
    assert sorted((r.pid, r.camid) for r in dataset.gallery) == [(100, 2), (200, 1)]
    # A Market name is not a Duke name.
    (folder / "query" / "0100_c2s1_000001_01.jpg").write_bytes(b"")
    with pytest.raises(DatasetLayoutError, match="PPPP_cC_fFFFFFFF.jpg"):
        build_dataset("dukemtmc", folder)


def _make_msmt(root: Path, train_folder="train", test_folder="test"):
    lists = {
        "list_train.txt": (
            train_folder,
            [
                ("0000/0000_000_01_0303morning_0015_0.jpg", 0),
                ("0000/0000_001_05_0303morning_0016_0.jpg", 0),
                ("0002/0002_000_15_0303noon_0001_1.jpg", 2),
            ],
        ),
        "list_val.txt": (train_folder, [("0001/0001_000_03_0303noon_0002_0.jpg", 1)]),
        "list_query.txt": (test_folder, [("0000/0000_000_02_0303morning_0100_0.jpg", 0)]),
        "list_gallery.txt": (
            test_folder,
            [("0000/0000_001_07_0303morning_0101_0.jpg", 0), ("0004/0004_000_02_0303noon_0102_0.jpg", 4)],
        ),
    }
    for list_name, (image_folder, entries) in lists.items():
        for relative, _ in entries:
            (root / image_folder / relative).parent.mkdir(parents=True, exist_ok=True)
            (root / image_folder / relative).write_bytes(b"")
        (root / list_name).write_text("".join(f"{rel} {label}\n" for rel, label in entries))
    return lists


def test_msmt17_lists_cameras_and_train_plus_val(tmp_path):
    root = tmp_path / "MSMT17_V1"
    lists = _make_msmt(root)
    dataset = build_dataset("msmt17", tmp_path)
    expected_train = [
        (str(root / "train" / rel), label, int(Path(rel).name.split("_")[2]) - 1)
        for list_name in ("list_train.txt", "list_val.txt")
        for rel, label in lists[list_name][1]
    ]
    assert sorted((r.path, r.pid, r.camid) for r in dataset.train) == sorted(expected_train)
    assert dataset.num_train_pids == 3
    assert [(r.pid, r.camid) for r in dataset.query] == [(0, 1)]
    assert sorted((r.pid, r.camid) for r in dataset.gallery) == [(0, 6), (4, 1)]
    assert all(Path(r.path).is_file() for r in dataset.train + dataset.query + dataset.gallery)

    without_val = build_dataset("msmt17", root, include_val=False)
    assert sorted({r.pid for r in without_val.train}) == [0, 1]  # original labels 0 and 2, relabelled
    assert len(without_val.train) == 3


def test_msmt17_v2_folder_names_and_errors(tmp_path):
    root = tmp_path / "MSMT17_V2"
    _make_msmt(root, "mask_train_v2", "mask_test_v2")
    assert len(build_dataset("msmt17", tmp_path).gallery) == 2

    (root / "list_query.txt").write_text("0000/0000_000_02_0303morning_0100_0.jpg\n")
    with pytest.raises(DatasetLayoutError, match=r"list_query\.txt:1: expected 'relative/path label'"):
        build_dataset("msmt17", root)
    (root / "list_query.txt").write_text("0000/badname.jpg 0\n")
    with pytest.raises(DatasetLayoutError, match=r"list_query\.txt:1.*badname\.jpg.*PPPP_NNN_CC"):
        build_dataset("msmt17", root)
    (root / "list_query.txt").write_text("0009/0009_000_02_0303morning_0100_0.jpg 9\n")
    with pytest.raises(DatasetLayoutError, match="does not exist"):
        build_dataset("msmt17", root)
    (root / "list_val.txt").unlink()
    with pytest.raises(DatasetLayoutError, match="list_val.txt"):
        build_dataset("msmt17", root)


def _make_custom_folders(root: Path, files: dict[str, dict[str, list[str]]]) -> None:
    for split, identities in files.items():
        for identity, names in identities.items():
            (root / split / identity).mkdir(parents=True, exist_ok=True)
            for name in names:
                (root / split / identity / name).write_bytes(b"")


def test_custom_folders_with_cameras_from_names_and_csv(tmp_path):
    _make_custom_folders(
        tmp_path,
        {
            "train": {"bob": ["c3_001.jpg", "c5_002.png"], "alice": ["c3_003.jpg"]},
            "query": {"carol": ["c3_010.jpg"], "dave": ["frame_11.jpg"]},
            "gallery": {"carol": ["c5_012.jpg"], "dave": ["c9_013.jpg"], "erin": ["c3_014.jpeg"]},
            "gallery/erin": {"day2": ["c5_015.jpg"]},  # deeper folders belong to the identity above
        },
    )
    (tmp_path / "query" / "dave" / "notes.txt").write_text("ignored")
    (tmp_path / "train" / "bob" / "._c3_001.jpg").write_bytes(b"macOS metadata, not an image")
    (tmp_path / "cameras.csv").write_text("relative_path,camid\nquery/dave/frame_11.jpg,5\n")
    dataset = build_dataset("custom", tmp_path)
    camera_index = {3: 0, 5: 1, 9: 2}  # raw labels 3, 5, 9 renumbered in sorted order
    assert sorted((Path(r.path).name, r.pid, r.camid) for r in dataset.train) == [
        ("c3_001.jpg", 1, camera_index[3]),
        ("c3_003.jpg", 0, camera_index[3]),
        ("c5_002.png", 1, camera_index[5]),
    ]
    test_pids = {"carol": 0, "dave": 1, "erin": 2}  # non-numeric names: sorted order
    assert sorted((Path(r.path).parent.name, r.pid, r.camid) for r in dataset.query) == [
        ("carol", test_pids["carol"], camera_index[3]),
        ("dave", test_pids["dave"], camera_index[5]),
    ]
    assert sorted((Path(r.path).name, r.pid, r.camid) for r in dataset.gallery) == [
        ("c3_014.jpeg", test_pids["erin"], camera_index[3]),
        ("c5_012.jpg", test_pids["carol"], camera_index[5]),
        ("c5_015.jpg", test_pids["erin"], camera_index[5]),
        ("c9_013.jpg", test_pids["dave"], camera_index[9]),
    ]


def test_custom_numeric_identities_keep_their_numbers_and_train_is_optional(tmp_path, caplog):
    _make_custom_folders(
        tmp_path,
        {
            "query": {"17": ["cam2_a.jpg"]},
            "gallery": {"17": ["cam1_b.jpg"], "4": ["cam2_c.jpg"]},
        },
    )
    with caplog.at_level(logging.INFO):
        dataset = build_dataset("custom", tmp_path, camera_regex=r"cam(\d+)")
    assert dataset.train == [] and dataset.num_train_pids == 0
    assert "evaluation only" in caplog.text
    assert sorted((r.pid, r.camid) for r in dataset.gallery) == [(4, 1), (17, 0)]


def test_custom_missing_cameras_require_per_split_mode(tmp_path):
    _make_custom_folders(
        tmp_path,
        {
            "train": {"a": ["1.jpg", "2.jpg"], "b": ["3.jpg"]},
            "query": {"x": ["4.jpg"]},
            "gallery": {"x": ["5.jpg"], "y": ["6.jpg"]},
        },
    )
    with pytest.raises(DatasetLayoutError, match=r"3 query/gallery images have no camera id.*per_split"):
        build_dataset("custom", tmp_path)
    dataset = build_dataset("custom", tmp_path, camera_mode="per_split")
    assert {r.camid for r in dataset.query} == {0}
    assert {r.camid for r in dataset.gallery} == {1}
    assert {r.camid for r in dataset.train} == {0}
    assert dataset.num_train_pids == 2


def test_custom_folder_layout_errors(tmp_path):
    with pytest.raises(DatasetLayoutError, match=r"query/ and gallery/.*found: \(empty folder\)"):
        build_dataset("custom", tmp_path)
    _make_custom_folders(tmp_path, {"query": {"x": ["c1_a.jpg"]}, "gallery": {"x": ["c2_b.jpg"]}})
    (tmp_path / "gallery" / "c1_loose.jpg").write_bytes(b"")
    with pytest.raises(
        DatasetLayoutError, match=r"images directly in .*gallery.*one sub-folder per identity"
    ):
        build_dataset("custom", tmp_path)
    (tmp_path / "gallery" / "c1_loose.jpg").unlink()
    _make_custom_folders(tmp_path, {"train": {"t": ["c1_x.jpg", "y.jpg"]}})
    with pytest.raises(DatasetLayoutError, match="some train images have a camera id and others do not"):
        build_dataset("custom", tmp_path)
    with pytest.raises(ValueError, match="camera_mode"):
        build_dataset("custom", tmp_path, camera_mode="guess")
    with pytest.raises(ValueError, match="camera_regex"):
        build_dataset("custom", tmp_path, camera_regex=r"c\d+")


def test_custom_csv_layout(tmp_path):
    for name in ("a1.jpg", "a2.jpg", "b1.jpg", "q1.jpg", "g1.jpg", "g2_c4.jpg"):
        (tmp_path / "img").mkdir(exist_ok=True)
        (tmp_path / "img" / name).write_bytes(b"")
    csv_path = tmp_path / "data.csv"
    csv_path.write_text(
        "path,pid,camid,split\n"
        "img/a1.jpg,ann,0,train\nimg/a2.jpg,ann,1,train\nimg/b1.jpg,ben,1,Train\n"
        "img/q1.jpg,5,0,query\nimg/g1.jpg,5,1,gallery\nimg/g2_c4.jpg,8,,gallery\n"
    )
    dataset = build_dataset("custom", csv_path)
    # Camera labels 0, 1, 4 (the last from the file name) -> 0, 1, 2.
    assert sorted((Path(r.path).name, r.pid, r.camid) for r in dataset.train) == [
        ("a1.jpg", 0, 0),
        ("a2.jpg", 0, 1),
        ("b1.jpg", 1, 1),
    ]
    assert [(r.pid, r.camid) for r in dataset.query] == [(5, 0)]
    assert sorted((r.pid, r.camid) for r in dataset.gallery) == [(5, 1), (8, 2)]
    assert dataset.query[0].path == str(tmp_path / "img" / "q1.jpg")


@pytest.mark.parametrize(
    ("content", "error", "pattern"),
    [
        ("path,pid,split\nimg/a.jpg,1,query\n", DatasetLayoutError, "missing camid"),
        (
            "path,pid,camid,split\nimg/a.jpg,1,0,test\n",
            DatasetLayoutError,
            r"data\.csv:2: split must be one of",
        ),
        (
            "path,pid,camid,split\nimg/nope.jpg,1,0,query\n",
            FileNotFoundError,
            r"data\.csv:2: image .*nope\.jpg",
        ),
        ("path,pid,camid,split\nimg/a.jpg,1,zero,query\n", DatasetLayoutError, r"camid must be an integer"),
        (
            "path,pid,camid,split\nimg/a.jpg,1,0,query\n../outside.jpg,1,1,gallery\n",
            DatasetLayoutError,
            r"data\.csv:3: path '\.\./outside\.jpg' leads outside",
        ),
        (
            "path,pid,camid,split\nimg/a.jpg,1,0,query\n",
            DatasetLayoutError,
            "at least one 'query' row and one",
        ),
    ],
)
def test_custom_csv_errors_name_the_line(tmp_path, content, error, pattern):
    tmp_path = tmp_path / "data"
    (tmp_path / "img").mkdir(parents=True)
    (tmp_path.parent / "outside.jpg").write_bytes(b"")  # exists, but is not the dataset's
    (tmp_path / "img" / "a.jpg").write_bytes(b"")
    (tmp_path / "data.csv").write_text(content)
    with pytest.raises(error, match=pattern):
        build_dataset("custom", tmp_path / "data.csv")


def test_registry_rejects_unknown_names_and_bad_train_labels(tmp_path):
    with pytest.raises(ValueError, match=r"Unknown dataset 'market'.*market1501"):
        build_dataset("market", tmp_path)
    with pytest.raises(ValueError, match="relabelled"):
        ReIDDataset("x", [ImageRecord("a.jpg", 3, 0)], [], [])


def test_custom_reader_options_come_from_the_config(tmp_path):
    from reid.config import load_config
    from reid.engine.trainer import load_dataset

    _make_custom_folders(
        tmp_path,
        {"query": {"x": ["cam7_1.jpg"]}, "gallery": {"x": ["cam2_2.jpg"], "y": ["cam7_3.jpg"]}},
    )
    overrides = ["data.name=custom", f"data.root={tmp_path}", r"data.custom.camera_regex=cam(\d+)"]
    dataset = load_dataset(load_config(None, overrides))
    assert [r.camid for r in dataset.query] == [1]
    assert sorted(r.camid for r in dataset.gallery) == [0, 1]
    split_mode = load_dataset(load_config(None, [*overrides[:2], "data.custom.camera_mode=per_split"]))
    assert {r.camid for r in split_mode.gallery} == {1}


def test_custom_folders_spelling_the_same_number_stay_different_people(tmp_path):
    _make_custom_folders(
        tmp_path,
        {
            "query": {"01": ["c1_a.jpg"], "1": ["c1_b.jpg"]},
            "gallery": {"01": ["c2_c.jpg"], "1": ["c2_d.jpg"]},
        },
    )
    dataset = build_dataset("custom", tmp_path)
    query = {Path(r.path).name: r.pid for r in dataset.query}
    gallery = {Path(r.path).name: r.pid for r in dataset.gallery}
    assert query["c1_a.jpg"] != query["c1_b.jpg"]
    assert query["c1_a.jpg"] == gallery["c2_c.jpg"] and query["c1_b.jpg"] == gallery["c2_d.jpg"]


def _make_cuhk03_folder(root: Path, shots_by_pid: dict[int, list[int]], folders=("labeled", "detected")):
    for folder in folders:
        (root / folder).mkdir(parents=True, exist_ok=True)
        for pid, shots in shots_by_pid.items():
            for shot in shots:
                (root / folder / f"{pid:04d}_{shot:02d}.jpg").write_bytes(b"")


def test_cuhk03_folder_layout_holds_out_the_last_identities(tmp_path):
    shots = {0: [0, 1, 5, 6], 1: [0, 2, 3, 7, 9], 2: [1, 2, 4, 5, 8], 3: [3, 4, 6]}
    _make_cuhk03_folder(tmp_path, shots)
    data = build_dataset("cuhk03", tmp_path, boxes="labeled", num_val_ids=2)
    assert {r.pid for r in data.train} == {0, 1}
    assert len(data.train) == 9 and all("labeled" in r.path for r in data.train)
    # reference: per validation id and camera view (shots 0-4 / 5-9) the lowest shot is the query
    expected_query, expected_gallery = [], []
    for pid in (2, 3):
        for camid in (0, 1):
            view = sorted(s for s in shots[pid] if s // 5 == camid)
            for i, shot in enumerate(view):
                record = ImageRecord(str(tmp_path / "labeled" / f"{pid:04d}_{shot:02d}.jpg"), pid, camid)
                (expected_query if i == 0 else expected_gallery).append(record)
    assert sorted(data.query, key=str) == sorted(expected_query, key=str)
    assert sorted(data.gallery, key=str) == sorted(expected_gallery, key=str)
    both = build_dataset("cuhk03", tmp_path, boxes="both", num_val_ids=2)
    assert len(both.train) == 18 and len(both.query) == 2 * len(data.query)
    assert {Path(r.path).parent.name for r in both.gallery} == {"labeled", "detected"}
    # train on hand-drawn boxes, test on detector boxes: the same split, the box folders swapped per side
    shift = build_dataset("cuhk03", tmp_path, boxes="labeled", num_val_ids=2, test_boxes="detected")
    assert shift.train == data.train
    as_detected = [ImageRecord(r.path.replace("/labeled/", "/detected/"), r.pid, r.camid) for r in data.query]
    assert shift.query == as_detected and len(shift.gallery) == len(data.gallery)
    assert {Path(r.path).parent.name for r in shift.query + shift.gallery} == {"detected"}
    with pytest.raises(ValueError, match="data.cuhk03.test_boxes"):
        build_dataset("cuhk03", tmp_path, test_boxes="drawn")


def test_cuhk03_folder_errors_name_the_problem(tmp_path):
    _make_cuhk03_folder(tmp_path, {0: [0, 5], 1: [0, 5]}, folders=("labeled",))
    with pytest.raises(DatasetLayoutError, match="detected"):
        build_dataset("cuhk03", tmp_path, boxes="detected")
    with pytest.raises(ValueError, match="data.cuhk03.boxes"):
        build_dataset("cuhk03", tmp_path, boxes="drawn")
    with pytest.raises(ValueError, match="num_val_ids"):
        build_dataset("cuhk03", tmp_path, num_val_ids=2)
    (tmp_path / "labeled" / "0001_12.jpg").write_bytes(b"")
    with pytest.raises(DatasetLayoutError, match="0001_12.jpg.*00-09"):
        build_dataset("cuhk03", tmp_path, num_val_ids=1)
    assert len(build_dataset("cuhk03", tmp_path, num_val_ids=1, strict=False).train) == 2
