#!/usr/bin/env python
"""Search a gallery built by tools/demo_video.py with a picture of a person.

    python tools/search_gallery.py person.jpg --gallery runs/demo/gallery --topk 10 [--rerank]

The query is embedded with the same embedder the gallery was built with (the shipped re-ID model unless
--checkpoint names another file or --embedder handcrafted); a gallery built with another model or dimension is
refused. Prints the ranked identities with their evidence (video, camera, time, crop) and writes
``search.png`` and ``search.json`` into --output.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import cv2

from reid.data.image_io import read_image
from reid.gallery import GalleryError, GalleryStore, IdentityHit
from reid.gallery.visualize import format_time, plot_search_results
from reid.utils.io import atomic_write_json
from reid.video.embedder import add_embedder_arguments, build_embedder, embedder_choice

logger = logging.getLogger("search_gallery")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("image", help="query image of one person (a tight crop works best)")
    parser.add_argument("--gallery", required=True, help="gallery folder written by tools/demo_video.py")
    parser.add_argument("--topk", type=int, default=10, help="number of identities to list (default 10)")
    parser.add_argument(
        "--rerank", action="store_true", help="k-reciprocal re-ranking over the gallery entries"
    )
    add_embedder_arguments(parser, purpose="the gallery was built with")
    parser.add_argument("--output", default="runs/search", help="folder for search.png and search.json")
    parser.add_argument("--evidence", type=int, default=5, help="crops shown per identity (default 5)")
    args = parser.parse_args(argv)
    if args.topk <= 0 or args.evidence <= 0:
        parser.error("--topk and --evidence must be positive")
    return args


def describe(hits: list[IdentityHit]) -> str:
    """The ranked list as text: one line per identity, then its evidence lines."""
    if not hits:
        return "the gallery has no entries yet"
    lines = []
    for rank, hit in enumerate(hits, start=1):
        cameras = sorted({item["camera_id"] for item in hit.evidence})
        lines.append(
            f"#{rank:<3d} identity {hit.identity_id:<5d} distance {hit.distance:.4f}  cameras {cameras}"
        )
        for item in hit.evidence:
            lines.append(
                f"      {item['video']}  cam {item['camera_id']}  t={format_time(item['timestamp_s'])} "
                f"frame {item['frame_index']}  d={item['distance']:.4f}  {item['crop_path']}"
            )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    query_bgr = cv2.cvtColor(read_image(args.image), cv2.COLOR_RGB2BGR)
    embedder = build_embedder(embedder_choice(args), device=args.device)
    store = GalleryStore.open(
        args.gallery, model_name=embedder.model_name, feature_dim=embedder.feature_dim, create=False,
        read_only=True,
    )  # fmt: skip
    with store:
        feature = embedder([query_bgr])[0]
        hits = store.search(feature, topk=args.topk, rerank=args.rerank, evidence_per_identity=args.evidence)
        summary = (
            f"gallery {args.gallery}: {store.num_identities} identities, {store.num_tracks} tracks, "
            f"{store.num_entries} entries ({store.model_name}, {store.metric})"
        )
    print(summary)
    print(describe(hits))
    output = Path(args.output)
    plot_search_results(query_bgr, hits, output / "search.png", crops_per_identity=args.evidence)
    atomic_write_json(
        output / "search.json",
        {
            "query": str(args.image),
            "gallery": str(args.gallery),
            "rerank": args.rerank,
            "hits": [
                {"identity_id": h.identity_id, "distance": h.distance, "evidence": h.evidence} for h in hits
            ],
        },
    )
    print(f"wrote {output / 'search.png'} and {output / 'search.json'}")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except (GalleryError, OSError, ValueError) as exc:  # bad input: one clear line, not a traceback
        sys.exit(f"error: {exc}")
