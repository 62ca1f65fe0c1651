"""Synthetic pedestrians in Market-1501 layout, so tests, CI and smoke runs need no downloaded data.

Each identity is a fixed set of "genes" (clothing colours from a shared palette, shirt pattern, shorts or
trousers, body proportions, hair, bag). Each camera adds its own nuisance: background scene, illumination
gain, colour cast, resolution, blur and sensor noise; each image adds pose jitter (position, scale, facing
front or back, stride) and sometimes an occluder. Identity is therefore carried by the person, while most
pixels belong to the camera: raw-pixel matching prefers a different person in the same camera, as in real
re-ID, whereas a learned model can pick out clothing cues (checked in tests/test_synthetic.py).

Train and test identities are disjoint; every identity appears in at least two cameras. For test
identities, one image per camera goes to ``query`` and the rest to ``bounding_box_test``, together with a
few distractors (pid 0000). Output is a pure function of the parameters (same seed, byte-identical files).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

logger = logging.getLogger(__name__)

STAMP_NAME = "synthetic.json"
GENERATOR_VERSION = 1
JPEG_QUALITY = 92

CLOTHING_PALETTE = np.array(
    [
        (30, 30, 32),
        (228, 228, 225),
        (128, 128, 130),
        (32, 42, 98),
        (45, 95, 200),
        (190, 35, 45),
        (40, 130, 60),
        (228, 198, 45),
        (110, 70, 40),
        (200, 180, 140),
        (228, 130, 170),
        (110, 50, 140),
        (228, 120, 30),
        (150, 140, 90),
        (140, 180, 228),
        (25, 70, 45),
    ],
    dtype=np.float32,
)
SKIN_TONES = np.array(
    [(250, 218, 188), (228, 185, 150), (190, 140, 100), (140, 96, 62), (92, 62, 42)], np.float32
)
HAIR_COLOURS = np.array(
    [(20, 18, 18), (70, 45, 30), (120, 80, 45), (215, 185, 110), (170, 170, 170)], np.float32
)
SHIRT_PATTERNS = ("plain", "horizontal_stripes", "vertical_stripes", "checks", "logo")
BAGS = ("none", "none", "backpack", "handbag")
BACKGROUND_TEXTURES = ("plain", "tiles", "stripes", "blobs")


@dataclass(frozen=True)
class SyntheticParams:
    """Everything the generated files depend on; stored as a JSON stamp next to the images."""

    num_train_ids: int = 64
    num_test_ids: int = 64
    num_cameras: int = 4
    images_per_id_per_camera: int = 3
    image_size: tuple[int, int] = (128, 64)
    seed: int = 0
    num_distractors: int = 32

    def __post_init__(self) -> None:
        object.__setattr__(self, "image_size", tuple(int(v) for v in self.image_size))
        checks = [
            (self.num_train_ids >= 1, "num_train_ids must be >= 1"),
            (self.num_test_ids >= 1, "num_test_ids must be >= 1"),
            (self.num_train_ids + self.num_test_ids <= 9999, "at most 9999 identities fit the 4-digit pid"),
            (2 <= self.num_cameras <= 6, "num_cameras must be in 2..6 (Market-1501 naming, >= 2 for re-ID)"),
            (self.images_per_id_per_camera >= 2, "images_per_id_per_camera must be >= 2 (1 query + gallery)"),
            (len(self.image_size) == 2 and min(self.image_size) >= 32, "image_size must be (h, w) >= 32"),
            (self.num_distractors >= 0, "num_distractors must be >= 0"),
            (self.seed >= 0, "seed must be >= 0"),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(f"generate_synthetic_dataset: {message} (got {self})")

    def to_json(self) -> dict:
        return {**asdict(self), "image_size": list(self.image_size)}


@dataclass(frozen=True)
class Identity:
    """What stays the same in every image of one person (colours are float RGB triples)."""

    skin: np.ndarray
    hair: np.ndarray
    long_hair: bool
    shirt: np.ndarray
    shirt_pattern: str
    pattern_colour: np.ndarray
    short_sleeves: bool
    trousers: np.ndarray
    shorts: bool
    shoes: np.ndarray
    height: float  # fraction of the image height at scale 1
    width: float  # torso width relative to an average build
    head: float  # head size relative to average
    bag: str
    bag_colour: np.ndarray


@dataclass(frozen=True)
class Camera:
    """What one camera does to every image it takes: its scene, optics and typical viewing direction."""

    wall: np.ndarray
    floor: np.ndarray
    texture: str
    texture_colour: np.ndarray
    horizon: float  # fraction of the height where the floor starts
    gain: float
    colour_cast: np.ndarray
    resolution: float  # < 1 means the camera is low-resolution (down- then up-sampled)
    blur_sigma: float
    noise_sigma: float
    facing_front_p: float  # share of people walking towards this camera


def _palette_colour(rng: np.random.Generator, palette: np.ndarray, jitter: float = 14.0) -> np.ndarray:
    colour = palette[rng.integers(len(palette))] + rng.uniform(-jitter, jitter, 3)
    return np.clip(colour, 0, 255).astype(np.float32)


def sample_identity(rng: np.random.Generator) -> Identity:
    return Identity(
        skin=_palette_colour(rng, SKIN_TONES, 8),
        hair=_palette_colour(rng, HAIR_COLOURS, 8),
        long_hair=bool(rng.random() < 0.35),
        shirt=_palette_colour(rng, CLOTHING_PALETTE),
        shirt_pattern=str(rng.choice(SHIRT_PATTERNS)),
        pattern_colour=_palette_colour(rng, CLOTHING_PALETTE),
        short_sleeves=bool(rng.random() < 0.4),
        trousers=_palette_colour(rng, CLOTHING_PALETTE),
        shorts=bool(rng.random() < 0.25),
        shoes=_palette_colour(rng, CLOTHING_PALETTE[[0, 1, 2, 8]], 10),
        height=float(rng.uniform(0.78, 0.92)),
        width=float(rng.uniform(0.8, 1.25)),
        head=float(rng.uniform(0.85, 1.2)),
        bag=str(rng.choice(BAGS)),
        bag_colour=_palette_colour(rng, CLOTHING_PALETTE),
    )


def sample_camera(rng: np.random.Generator) -> Camera:
    return Camera(
        wall=rng.uniform(40, 220, 3).astype(np.float32),
        floor=rng.uniform(40, 200, 3).astype(np.float32),
        texture=str(rng.choice(BACKGROUND_TEXTURES)),
        texture_colour=rng.uniform(0, 255, 3).astype(np.float32),
        horizon=float(rng.uniform(0.55, 0.8)),
        gain=float(rng.uniform(0.6, 1.3)),
        colour_cast=rng.uniform(0.75, 1.25, 3).astype(np.float32),
        resolution=float(rng.uniform(0.45, 1.0)),
        blur_sigma=float(rng.uniform(0.0, 1.2)),
        noise_sigma=float(rng.uniform(2.0, 9.0)),
        facing_front_p=float(rng.uniform(0.2, 0.8)),
    )


def draw_background(camera: Camera, rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """Wall (shaded towards the texture colour) above the horizon, floor below, and the camera's texture
    shifted a little per image."""
    canvas = np.empty((height, width, 3), np.float32)
    horizon = int(height * (camera.horizon + rng.uniform(-0.04, 0.04)))
    rows = np.linspace(0.0, 1.0, horizon, dtype=np.float32)[:, None, None]
    canvas[:horizon] = camera.wall * (1.0 - 0.35 * rows) + camera.texture_colour * 0.35 * rows
    canvas[horizon:] = camera.floor
    offset = int(rng.integers(0, 16))
    texture = camera.texture_colour.tolist()
    if camera.texture == "tiles":
        for y in range(horizon + offset % 8, height, 10):
            cv2.line(canvas, (0, y), (width - 1, y), texture, 1)
        for x in range(offset % 12, width, 14):
            cv2.line(canvas, (x, horizon), (x, height - 1), texture, 1)
    elif camera.texture == "stripes":
        for x in range(offset, width, 16):
            cv2.rectangle(canvas, (x, 0), (x + 5, horizon), texture, -1)
    elif camera.texture == "blobs":
        for _ in range(4):
            centre = (int(rng.integers(0, width)), int(rng.integers(0, horizon)))
            cv2.circle(canvas, centre, int(rng.integers(4, width // 4)), texture, -1)
    return canvas


@dataclass(frozen=True)
class BodyLayout:
    """Pixel geometry of one rendered person (depends on the identity's build and the image's pose)."""

    centre_x: float
    top: float
    feet_y: float
    body: float
    head_r: float
    torso_w: float
    torso_top: float
    torso_bottom: float
    stride: float
    front: bool

    @property
    def arm_w(self) -> float:
        return 0.2 * self.torso_w

    @property
    def arm_len(self) -> float:
        return 0.95 * (self.torso_bottom - self.torso_top)


def sample_layout(
    person: Identity, camera: Camera, rng: np.random.Generator, height: int, width: int
) -> BodyLayout:
    """Random position, scale, stride and facing direction for one image of ``person``."""
    body = person.height * height * rng.uniform(0.88, 1.04)
    top = height - 2 - rng.uniform(0, 0.04) * height - body
    head_r = 0.075 * body * person.head
    return BodyLayout(
        centre_x=width / 2 + rng.uniform(-0.08, 0.08) * width,
        top=top,
        feet_y=top + body,
        body=body,
        head_r=head_r,
        torso_w=min(0.24 * body * person.width, 0.7 * width),
        torso_top=top + 2 * head_r,
        torso_bottom=top + 2 * head_r + 0.33 * body,
        stride=rng.uniform(0, 0.12) * body,
        front=bool(rng.random() < camera.facing_front_p),
    )


def _fill(canvas: np.ndarray, x0: float, y0: float, x1: float, y1: float, colour: np.ndarray) -> None:
    cv2.rectangle(canvas, (round(x0), round(y0)), (round(x1), round(y1)), colour.tolist(), -1)


def _draw_legs(canvas: np.ndarray, person: Identity, at: BodyLayout) -> None:
    shoe_h, leg_w = 0.04 * at.body, 0.42 * at.torso_w
    knee = at.torso_bottom + 0.45 * (at.feet_y - shoe_h - at.torso_bottom)
    for side in (-1, 1):
        left = at.centre_x + side * (0.03 * at.torso_w + at.stride / 2) - (leg_w if side < 0 else 0)
        right = left + leg_w
        _fill(
            canvas,
            left,
            at.torso_bottom,
            right,
            at.feet_y - shoe_h,
            person.skin if person.shorts else person.trousers,
        )
        if person.shorts:
            _fill(canvas, left, at.torso_bottom, right, knee, person.trousers)
        _fill(canvas, left - 1, at.feet_y - shoe_h, right + 1, at.feet_y, person.shoes)


def _draw_torso(canvas: np.ndarray, person: Identity, at: BodyLayout) -> None:
    x0, x1 = round(at.centre_x - at.torso_w / 2), round(at.centre_x + at.torso_w / 2)
    y0, y1 = round(at.torso_top), round(at.torso_bottom)
    _fill(canvas, x0, y0, x1, y1, person.shirt)
    torso = canvas[max(0, y0) : y1 + 1, max(0, x0) : x1 + 1]  # a view: drawing on it is clipped to the torso
    colour = person.pattern_colour.tolist()
    step = max(3, (y1 - y0) // 5)
    if person.shirt_pattern in ("horizontal_stripes", "checks"):
        for y in range(0, y1 - y0, step):
            cv2.rectangle(torso, (0, y), (x1 - x0, y + step // 2 - 1), colour, -1)
    if person.shirt_pattern in ("vertical_stripes", "checks"):
        for x in range(0, x1 - x0, step):
            cv2.rectangle(torso, (x, 0), (x + step // 2 - 1, y1 - y0), colour, -1)
    if person.shirt_pattern == "logo" and at.front:
        cv2.circle(torso, ((x1 - x0) // 2, (y1 - y0) // 3), max(2, (x1 - x0) // 5), colour, -1)


def _draw_bag(canvas: np.ndarray, person: Identity, at: BodyLayout) -> None:
    """A backpack covers the back (only straps show from the front); a handbag hangs from one hand."""
    if person.bag == "backpack" and not at.front:
        _fill(
            canvas,
            at.centre_x - 0.4 * at.torso_w,
            at.torso_top + 2,
            at.centre_x + 0.4 * at.torso_w,
            at.torso_bottom - 2,
            person.bag_colour,
        )
    elif person.bag == "backpack":
        for strap_x in (at.centre_x - 0.3 * at.torso_w, at.centre_x + 0.3 * at.torso_w):
            cv2.line(
                canvas,
                (round(strap_x), round(at.torso_top)),
                (round(strap_x), round(at.torso_bottom) - 4),
                person.bag_colour.tolist(),
                2,
            )
    elif person.bag == "handbag":
        bag_x = at.centre_x + (1 if at.front else -1) * (at.torso_w / 2 + at.arm_w / 2)
        bag_top = at.torso_top + at.arm_len
        _fill(
            canvas,
            bag_x - 0.18 * at.torso_w,
            bag_top,
            bag_x + 0.18 * at.torso_w,
            bag_top + 0.3 * at.torso_w,
            person.bag_colour,
        )


def _draw_arms(canvas: np.ndarray, person: Identity, at: BodyLayout) -> None:
    for side in (-1, 1):
        x0 = at.centre_x + side * at.torso_w / 2 - (at.arm_w if side < 0 else 0)
        _fill(canvas, x0, at.torso_top, x0 + at.arm_w, at.torso_top + at.arm_len, person.shirt)
        if person.short_sleeves:
            _fill(
                canvas,
                x0,
                at.torso_top + 0.45 * at.arm_len,
                x0 + at.arm_w,
                at.torso_top + at.arm_len,
                person.skin,
            )


def _draw_head(canvas: np.ndarray, person: Identity, at: BodyLayout) -> None:
    """Face from the front, hair from the back; long hair falls onto the shoulders."""
    if person.long_hair:
        _fill(
            canvas,
            at.centre_x - 0.95 * at.head_r,
            at.top + at.head_r,
            at.centre_x + 0.95 * at.head_r,
            at.torso_top + 0.12 * at.body,
            person.hair,
        )
    centre = (round(at.centre_x), round(at.top + at.head_r))
    axes = (max(2, round(0.85 * at.head_r)), max(2, round(at.head_r)))
    cv2.ellipse(canvas, centre, axes, 0, 0, 360, (person.skin if at.front else person.hair).tolist(), -1)
    cv2.ellipse(canvas, centre, axes, 0, 180, 360, person.hair.tolist(), -1)


def draw_person(canvas: np.ndarray, person: Identity, camera: Camera, rng: np.random.Generator) -> None:
    """Paint ``person`` onto ``canvas`` in a random pose, back to front so nearer parts cover farther ones."""
    at = sample_layout(person, camera, rng, *canvas.shape[:2])
    _draw_legs(canvas, person, at)
    _draw_torso(canvas, person, at)
    _draw_bag(canvas, person, at)
    _draw_arms(canvas, person, at)
    _draw_head(canvas, person, at)


def occlude(canvas: np.ndarray, rng: np.random.Generator) -> None:
    """Sometimes hide part of the person behind a pole or a low object (a car, a bench)."""
    height, width = canvas.shape[:2]
    roll = rng.random()
    colour = rng.uniform(0, 255, 3).tolist()
    if roll < 0.12:
        x = int(rng.integers(0, width))
        cv2.rectangle(canvas, (x, 0), (x + int(rng.integers(3, max(4, width // 6))), height), colour, -1)
    elif roll < 0.24:
        y = int(height * rng.uniform(0.6, 0.85))
        cv2.rectangle(canvas, (0, y), (width, height), colour, -1)


def apply_camera(canvas: np.ndarray, camera: Camera, rng: np.random.Generator) -> np.ndarray:
    """Camera response: colour cast and gain, low resolution, blur and noise. Returns uint8 RGB."""
    height, width = canvas.shape[:2]
    image = canvas * (camera.colour_cast * camera.gain * rng.uniform(0.9, 1.1))
    if camera.resolution < 0.95:
        small = (max(8, int(width * camera.resolution)), max(16, int(height * camera.resolution)))
        image = cv2.resize(
            cv2.resize(image, small, interpolation=cv2.INTER_AREA),
            (width, height),
            interpolation=cv2.INTER_LINEAR,
        )
    if camera.blur_sigma > 0.3:
        image = cv2.GaussianBlur(image, (0, 0), camera.blur_sigma)
    image = image + rng.normal(0.0, camera.noise_sigma, image.shape).astype(np.float32)
    return np.clip(image + 0.5, 0, 255).astype(np.uint8)


def render_image(
    person: Identity, camera: Camera, rng: np.random.Generator, size: tuple[int, int]
) -> np.ndarray:
    canvas = draw_background(camera, rng, *size)
    draw_person(canvas, person, camera, rng)
    occlude(canvas, rng)
    return apply_camera(canvas, camera, rng)


def _write_jpeg(path: Path, rgb: np.ndarray) -> None:
    # imencode + a plain write (rather than imwrite) also works for non-ASCII paths on Windows.
    ok, encoded = cv2.imencode(
        ".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY]
    )
    if not ok:
        raise RuntimeError(f"OpenCV failed to encode {path}")
    path.write_bytes(encoded.tobytes())


def _write_images(folder: Path, params: SyntheticParams) -> None:
    cameras = [
        sample_camera(np.random.default_rng([params.seed, 1, cam])) for cam in range(params.num_cameras)
    ]
    splits = {name: folder / name for name in ("bounding_box_train", "query", "bounding_box_test")}
    for split_folder in splits.values():
        split_folder.mkdir()
    frame = 0
    first_test_pid = params.num_train_ids + 1
    pids = range(1, params.num_train_ids + params.num_test_ids + 1)
    for pid in tqdm(pids, desc="synthetic identities", leave=False, disable=None):
        id_rng = np.random.default_rng([params.seed, 0, pid])
        person = sample_identity(id_rng)
        num_views = int(id_rng.integers(2, params.num_cameras + 1))
        for cam in sorted(id_rng.choice(params.num_cameras, size=num_views, replace=False).tolist()):
            for shot in range(params.images_per_id_per_camera):
                image = render_image(
                    person,
                    cameras[cam],
                    np.random.default_rng([params.seed, 2, pid, cam, shot]),
                    params.image_size,
                )
                if pid < first_test_pid:
                    split = "bounding_box_train"
                else:
                    split = "query" if shot == 0 else "bounding_box_test"
                frame += 1
                _write_jpeg(splits[split] / f"{pid:04d}_c{cam + 1}s1_{frame:06d}_01.jpg", image)
    for index in range(params.num_distractors):
        rng = np.random.default_rng([params.seed, 3, index])
        cam = int(rng.integers(params.num_cameras))
        frame += 1
        image = render_image(sample_identity(rng), cameras[cam], rng, params.image_size)
        _write_jpeg(splits["bounding_box_test"] / f"0000_c{cam + 1}s1_{frame:06d}_01.jpg", image)


def read_synthetic_stamp(root: str | os.PathLike) -> dict | None:
    """The parameters a synthetic dataset at ``root`` was generated with, or None if there is none."""
    stamp = Path(root) / STAMP_NAME
    if not stamp.is_file():
        return None
    try:
        content = json.loads(stamp.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None
    if not isinstance(content, dict) or content.get("version") != GENERATOR_VERSION:
        return None
    return content.get("params")


def _check_replaceable(root: Path) -> None:
    """Only a new or empty folder, or an earlier synthetic dataset, may be (re)written: never user data."""
    if root.exists() and (not root.is_dir() or (any(root.iterdir()) and not (root / STAMP_NAME).is_file())):
        raise FileExistsError(
            f"Refusing to write a synthetic dataset into '{root}': it exists and was not made by "
            f"generate_synthetic_dataset (no {STAMP_NAME}); choose an empty or new folder"
        )


def _stamp_bytes(folder: Path) -> bytes | None:
    stamp = folder / STAMP_NAME
    return stamp.read_bytes() if stamp.is_file() else None


def _move_into_place(staging: Path, root: Path) -> None:
    """Replace ``root`` by the finished ``staging`` folder so readers never see a half-written dataset.

    If ``root`` already holds the same dataset (identical stamp; typically another DDP rank generated it at
    the same time), it is left alone so that process can keep reading it.
    """
    if _stamp_bytes(root) == _stamp_bytes(staging):
        shutil.rmtree(staging, ignore_errors=True)
        return
    retired = None
    try:
        if root.exists():
            retired = Path(tempfile.mkdtemp(prefix=f".{root.name}.old.", dir=root.parent))
            os.replace(root, retired / root.name)
        os.replace(staging, root)
    except OSError:
        # Another process (say a second DDP rank) may have moved the very same dataset there first.
        if _stamp_bytes(root) is None or _stamp_bytes(root) != _stamp_bytes(staging):
            raise
        shutil.rmtree(staging, ignore_errors=True)
    finally:
        if retired is not None:
            shutil.rmtree(retired, ignore_errors=True)


def generate_synthetic_dataset(
    root: str | os.PathLike,
    *,
    num_train_ids: int = 64,
    num_test_ids: int = 64,
    num_cameras: int = 4,
    images_per_id_per_camera: int = 3,
    image_size: tuple[int, int] = (128, 64),
    seed: int = 0,
    num_distractors: int = 32,
) -> Path:
    """Write a synthetic Market-1501-layout dataset to ``root`` and return ``root`` as a Path.

    ``root`` must be new, empty or an earlier synthetic dataset (replaced unless it was made with the same
    parameters; delete it to force a rewrite). The files are built in a temporary sibling folder and moved
    into place at the end, so a crash leaves no partial dataset and concurrent callers do not collide.
    """
    params = SyntheticParams(
        num_train_ids,
        num_test_ids,
        num_cameras,
        images_per_id_per_camera,
        tuple(image_size),
        seed,
        num_distractors,
    )
    root = Path(root).expanduser()
    _check_replaceable(root)
    root.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{root.name}.", suffix=".tmp", dir=root.parent))
    try:
        os.chmod(staging, 0o755)
        _write_images(staging, params)
        stamp = {"generator": __name__, "version": GENERATOR_VERSION, "params": params.to_json()}
        (staging / STAMP_NAME).write_text(json.dumps(stamp, indent=2) + "\n", encoding="utf-8")
        _move_into_place(staging, root)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    logger.info("Generated synthetic dataset in %s (%s)", root, params)
    return root
