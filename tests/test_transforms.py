import cv2
import numpy as np
import pytest
import torch

from reid.config import load_config
from reid.data.transforms import ERASING_AREA, build_transforms

H, W = 32, 16


def config(*overrides):
    return load_config(None, [f"data.height={H}", f"data.width={W}", *overrides])


def random_image(seed=0, shape=(50, 23, 3)):
    return np.random.default_rng(seed).integers(0, 256, size=shape, dtype=np.uint8)


def reference_test_transform(image, cfg):
    """Resize with bilinear interpolation, scale to [0, 1], standardise per channel, HWC -> CHW."""
    resized = cv2.resize(image, (W, H), interpolation=cv2.INTER_LINEAR).astype(np.float64) / 255.0
    mean, std = np.array(cfg["data"]["pixel_mean"]), np.array(cfg["data"]["pixel_std"])
    return ((resized - mean) / std).transpose(2, 0, 1)


@pytest.mark.parametrize("is_train", [True, False])
@pytest.mark.parametrize("shape", [(50, 23, 3), (16, 8, 3), (300, 120, 3)])
def test_output_is_chw_float32(is_train, shape):
    out = build_transforms(config(), is_train, seed=0)(random_image(shape=shape))
    assert isinstance(out, torch.Tensor) and out.dtype == torch.float32
    assert tuple(out.shape) == (3, H, W) and out.is_contiguous()


def test_test_transform_matches_reference_normalisation():
    cfg = config()
    image = random_image()
    out = build_transforms(cfg, is_train=False)(image).numpy()
    np.testing.assert_allclose(out, reference_test_transform(image, cfg), atol=1e-5)


def test_flip_with_probability_one_mirrors_the_test_output():
    cfg = config("data.aug.flip_p=1.0", "data.aug.pad=0", "data.aug.random_erasing_p=0.0")
    image = random_image(1)
    out = build_transforms(cfg, is_train=True, seed=0)(image).numpy()
    np.testing.assert_allclose(out, reference_test_transform(image, cfg)[:, :, ::-1], atol=1e-5)


def test_pad_and_crop_is_a_translation_with_zero_fill():
    pad = 4
    cfg = config("data.aug.flip_p=0.0", f"data.aug.pad={pad}", "data.aug.random_erasing_p=0.0")
    image = random_image(2)
    resized = cv2.resize(image, (W, H), interpolation=cv2.INTER_LINEAR)
    padded = np.pad(resized, ((pad, pad), (pad, pad), (0, 0)))
    mean, std = np.array(cfg["data"]["pixel_mean"]), np.array(cfg["data"]["pixel_std"])
    transform = build_transforms(cfg, is_train=True, seed=0)
    offsets = set()
    for _ in range(30):
        out = transform(image).numpy().transpose(1, 2, 0)
        matches = [
            (dy, dx)
            for dy in range(2 * pad + 1)
            for dx in range(2 * pad + 1)
            if np.allclose(out, (padded[dy : dy + H, dx : dx + W] / 255.0 - mean) / std, atol=1e-5)
        ]
        assert matches, "output is not a crop of the zero-padded image"
        offsets.add(matches[0])
    assert len(offsets) > 1  # the crop position really varies


def test_random_erasing_replaces_one_rectangle_of_plausible_area():
    base = ("data.aug.flip_p=0.0", "data.aug.pad=0")
    image = random_image(3, shape=(H, W, 3))
    plain = build_transforms(config(*base, "data.aug.random_erasing_p=0.0"), True, seed=0)(image).numpy()
    eraser = build_transforms(config(*base, "data.aug.random_erasing_p=1.0"), True, seed=0)
    for _ in range(20):
        changed = np.any(np.abs(eraser(image).numpy() - plain) > 1e-6, axis=0)
        rows, cols = np.flatnonzero(changed.any(axis=1)), np.flatnonzero(changed.any(axis=0))
        assert rows.size and cols.size
        box = changed[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]
        assert box.mean() > 0.9  # changed pixels form a filled rectangle
        area = box.size / (H * W)
        # rounding of the rectangle side lengths on a tiny image allows a little slack
        assert ERASING_AREA[0] * 0.5 <= area <= ERASING_AREA[1] * 1.3


def test_same_seed_same_augmentations_and_reseed_restarts():
    cfg = config("data.aug.color_jitter=true")
    image = random_image(4)
    first = build_transforms(cfg, True, seed=11)
    second = build_transforms(cfg, True, seed=11)
    run_a = [first(image) for _ in range(5)]
    run_b = [second(image) for _ in range(5)]
    assert all(torch.equal(a, b) for a, b in zip(run_a, run_b, strict=True))
    assert not all(torch.equal(run_a[0], other) for other in run_a[1:])
    other_seed = build_transforms(cfg, True, seed=12)
    assert not all(torch.equal(a, other_seed(image)) for a in run_a)
    first.reseed([1, 2, 3])
    again = first(image)
    first.reseed([1, 2, 3])
    assert torch.equal(again, first(image))


@pytest.mark.parametrize(
    "bad",
    [
        np.zeros((10, 10), dtype=np.uint8),
        np.zeros((10, 10, 4), dtype=np.uint8),
        np.zeros((10, 10, 3), dtype=np.float32),
        [[0, 0, 0]],
    ],
)
def test_rejects_non_rgb_uint8_input(bad):
    with pytest.raises(ValueError, match="RGB uint8"):
        build_transforms(config(), is_train=False)(bad)
