import cv2
import numpy as np
import pytest
import torch

from reid.config import load_config
from reid.data.datasets import ImageRecord
from reid.data.image_io import CorruptImageError
from reid.data.loaders import build_train_loader
from reid.data.torch_dataset import ReIDImageDataset
from reid.data.transforms import build_transforms

H, W = 32, 16


def write_images(folder, num_ids=6, per_id=4, seed=0):
    """A tiny labelled image folder written with OpenCV; each identity has its own base colour."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    records = []
    for pid in range(num_ids):
        colour = rng.integers(0, 256, size=3)
        for n in range(per_id):
            noise = rng.integers(-20, 21, size=(40 + n, 20, 3))
            image = np.clip(colour + noise, 0, 255).astype(np.uint8)
            path = folder / f"{pid:04d}_c{n % 2}_{n}.jpg"
            assert cv2.imwrite(str(path), image)
            records.append(ImageRecord(str(path), pid, n % 2))
    return records


def corrupt(record):
    data = open(record.path, "rb").read()
    with open(record.path, "wb") as handle:
        handle.write(data[: len(data) // 2])  # truncated JPEG
    return record.path


def config(*overrides):
    return load_config(
        None,
        [
            f"data.height={H}",
            f"data.width={W}",
            "data.ids_per_batch=3",
            "data.num_instances=2",
            "data.num_workers=0",
            "test.batch_size=5",
            "seed=4",
            *overrides,
        ],
    )


def epoch_batches(loader, epoch):
    loader.batch_sampler.set_epoch(epoch)
    return list(loader)


def test_train_batches_have_the_documented_format(tmp_path):
    records = write_images(tmp_path / "imgs")
    loader = build_train_loader(config(), records)
    batches = epoch_batches(loader, 0)
    assert len(batches) == len(loader) > 0
    assert not loader.pin_memory or torch.cuda.is_available()
    for batch in batches:
        assert batch["images"].shape == (6, 3, H, W) and batch["images"].dtype == torch.float32
        assert batch["pids"].dtype == torch.long and batch["camids"].dtype == torch.long
        assert batch["indices"].dtype == torch.long and isinstance(batch["paths"], list)
        for i, index in enumerate(batch["indices"].tolist()):
            record = records[index]
            assert batch["paths"][i] == record.path
            assert batch["pids"][i].item() == record.pid and batch["camids"][i].item() == record.camid
        assert len(set(batch["pids"].tolist())) == 3


def test_augmentation_is_independent_of_worker_count_and_varies_by_epoch(tmp_path):
    records = write_images(tmp_path / "imgs")
    serial = build_train_loader(config("data.num_workers=0"), records)
    parallel = build_train_loader(config("data.num_workers=2"), records)
    for epoch in (0, 1):
        a, b = epoch_batches(serial, epoch), epoch_batches(parallel, epoch)
        assert len(a) == len(b)
        for x, y in zip(a, b, strict=True):
            assert torch.equal(x["indices"], y["indices"])
            assert torch.equal(x["images"], y["images"])
    first, second = epoch_batches(serial, 0), epoch_batches(serial, 1)
    assert not all(torch.equal(x["images"], y["images"]) for x, y in zip(first, second, strict=False))


def test_ranks_get_equal_disjoint_batch_shares(tmp_path):
    records = write_images(tmp_path / "imgs", num_ids=12)

    def plan(**ddp):
        return [b["indices"].tolist() for b in epoch_batches(build_train_loader(config(), records, **ddp), 3)]

    single = plan()
    shares = [plan(rank=r, world_size=2) for r in range(2)]
    assert len(shares[0]) == len(shares[1]) == len(single) // 2
    assert shares[0] == single[0 : 2 * len(shares[0]) : 2] and shares[1] == single[1 : 2 * len(shares[1]) : 2]


def test_corrupt_file_fails_naming_it_or_is_skipped_and_counted(tmp_path):
    records = write_images(tmp_path / "imgs", per_id=2)  # K = 2: every image is drawn each epoch
    bad_path = corrupt(records[5])
    with pytest.raises(CorruptImageError, match=records[5].path.split("/")[-1]):
        for _ in epoch_batches(build_train_loader(config(), records), 0):
            pass
    loader = build_train_loader(config("data.skip_corrupt=true"), records)
    assert loader.dataset.num_skipped == 1 and loader.dataset.skipped[0][0] == bad_path
    assert bad_path not in {r.path for r in loader.dataset.records}
    seen = {p for batch in epoch_batches(loader, 0) for p in batch["paths"]}
    assert bad_path not in seen and seen


def test_corrupt_file_error_survives_worker_processes(tmp_path):
    records = write_images(tmp_path / "imgs", num_ids=3, per_id=2)
    corrupt(records[1])
    loader = build_train_loader(config("data.num_workers=1"), records)
    loader.batch_sampler.set_epoch(0)
    batches = iter(loader)
    with pytest.raises(CorruptImageError, match=records[1].path.split("/")[-1]):
        for _ in batches:
            pass
    batches._shutdown_workers()  # torch's clean-up, at once (left to garbage collection it waits 5 s)


def test_all_unreadable_is_an_error(tmp_path):
    records = write_images(tmp_path / "imgs", num_ids=1, per_id=2)
    for record in records:
        corrupt(record)
    with pytest.raises(ValueError, match="none of the 2 images"):
        ReIDImageDataset(records, build_transforms(config(), False), skip_corrupt=True)
