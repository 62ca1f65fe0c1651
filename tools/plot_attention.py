#!/usr/bin/env python
"""Draw a GDFL model's attention maps over person crops: where each tapped stage looks.

    python tools/plot_attention.py runs/ablation/cuhk03_e3/E/seed0/best.pt \\
        --images ../shared/data/cuhk03/labeled/07[0-4]0_00.jpg --out attention.png

One row per image: the crop as the model sees it (its input size), then one panel per tapped stage with the
softmax attention weights (method.md 3.3) upsampled to the crop and overlaid. Uniform maps mean the attention
learned nothing beyond average pooling; maps on the body (head, torso, legs) rather than the background are
what the method intends. Needs a checkpoint of a model with GDFL attention.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

from reid.data.image_io import CorruptImageError
from reid.extraction import collect_images, test_transform, to_rgb
from reid.models.checkpoint import CheckpointError, load_retrieval_model


def attention_maps(
    checkpoint: Path, images: list
) -> tuple[list[np.ndarray], list[list[np.ndarray]], list[str]]:
    """(RGB crops at the model's input size, per image the per-tap maps as H x W arrays, tap names)."""
    model, info = load_retrieval_model(checkpoint)
    taps = list(getattr(model, "taps", ()))
    if getattr(model, "gdfl", None) is None or model.gdfl.attention is None:
        raise ValueError(f"{checkpoint}: the model has no GDFL attention (model.gdfl.attention.enabled)")
    transform = test_transform(info["input_size"], info["mean"], info["std"])
    batch = torch.stack([transform(to_rgb(item, "rgb")) for item in images])
    with torch.no_grad():
        _, maps = model(batch, return_attention=True)
    mean, std = np.asarray(info["mean"]), np.asarray(info["std"])
    crops = [np.clip((t.permute(1, 2, 0).numpy() * std + mean) * 255, 0, 255).astype(np.uint8) for t in batch]
    per_image = [[m[i].float().numpy() for m in maps] for i in range(len(images))]
    return crops, per_image, taps


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("checkpoint", type=Path, help="training checkpoint of a GDFL model")
    parser.add_argument("--images", nargs="+", required=True, help="image files or a folder")
    parser.add_argument("--max-images", type=int, default=8, help="at most this many rows (default 8)")
    parser.add_argument("--out", type=Path, required=True, help="PNG to write")
    args = parser.parse_args(argv)
    try:
        items = collect_images([Path(p) for p in args.images])[: args.max_images]
        if not items:
            raise ValueError(f"no image found in {args.images}")
        crops, maps, taps = attention_maps(args.checkpoint, items)
        import cv2
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        from reid.utils.io import atomic_save_figure

        rows, cols = len(crops), 1 + len(taps)
        figure, axes = plt.subplots(rows, cols, figsize=(1.3 * cols, 2.3 * rows), squeeze=False)
        for r, (crop, tap_maps) in enumerate(zip(crops, maps, strict=True)):
            axes[r][0].imshow(crop)
            for c, (name, weights) in enumerate(zip(taps, tap_maps, strict=True), start=1):
                upsampled = cv2.resize(weights / weights.max(), (crop.shape[1], crop.shape[0]))
                axes[r][c].imshow(crop)
                axes[r][c].imshow(upsampled, cmap="jet", alpha=0.5, vmin=0, vmax=1)
                if r == 0:
                    axes[r][c].set_title(f"{name}\n{weights.shape[0]}x{weights.shape[1]}", fontsize=8)
        for axis in axes.flat:
            axis.axis("off")
        figure.tight_layout()
        atomic_save_figure(figure, args.out, dpi=100)
        plt.close(figure)
    except (OSError, ValueError, CheckpointError, CorruptImageError) as err:
        print(f"plot_attention: error: {err}", file=sys.stderr)
        return 2
    print(f"wrote {args.out}: {len(crops)} images x {len(taps)} taps")
    return 0


if __name__ == "__main__":
    sys.exit(main())
