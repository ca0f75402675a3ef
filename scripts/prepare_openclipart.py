#!/usr/bin/env python
"""Builds the openclipart manifest and the low-resolution image cache used to train the demo model.

Reads the Debian packages openclipart-png (renders, in category folders) and openclipart-svg (same relative
paths; titles in dc:title, keywords in rdf:li). Writes, under --out (default demo_data/, gitignored):

- manifest.json: one record per PNG (rel path, png path, caption from title [+ keywords], category = top
  folder, subcategory, split), in sorted path order. The split is deterministic: the categories in
  crossgap_qdrant.datasets.HELDOUT_CATEGORIES are held out entirely, and a hash of the image content holds out
  10% of the images of every other category.
- images_<size>.npy: uint8 [N, 3, size, size], images composited on white and letterboxed, in manifest order.

    python scripts/prepare_openclipart.py [--out demo_data] [--size 72]
"""

from __future__ import annotations

import argparse
import collections
import json
import sys
import time
from pathlib import Path

import numpy as np
from tqdm import tqdm

from crossgap_qdrant.datasets import OPENCLIPART_PNG, OPENCLIPART_SVG, build_manifest, flatten_image


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="demo_data", help="output folder (default: demo_data/)")
    ap.add_argument("--size", type=int, default=72, help="side of the cached square images (default 72)")
    ap.add_argument("--png-root", default=str(OPENCLIPART_PNG))
    ap.add_argument("--svg-root", default=str(OPENCLIPART_SVG))
    ap.add_argument("--no-images", action="store_true", help="write the manifest only")
    args = ap.parse_args(argv)

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    rows = build_manifest(args.png_root, args.svg_root)
    (out / "manifest.json").write_text(json.dumps(rows, indent=1))
    splits = collections.Counter(r["split"] for r in rows)
    print(f"manifest: {len(rows)} images, {len({r['category'] for r in rows})} categories, {dict(splits)}, "
          f"{len({r['caption'] for r in rows})} distinct captions -> {out / 'manifest.json'}")

    if args.no_images:
        return 0
    cache = out / f"images_{args.size}.npy"
    arr = np.lib.format.open_memmap(cache.with_suffix(".tmp.npy"), mode="w+", dtype=np.uint8,
                                    shape=(len(rows), 3, args.size, args.size))
    it = tqdm(range(len(rows)), desc="decode", mininterval=5)
    for i in it:
        arr[i] = np.asarray(flatten_image(rows[i]["png"], args.size)).transpose(2, 0, 1)
    arr.flush()
    del arr
    cache.with_suffix(".tmp.npy").replace(cache)
    print(f"image cache: {cache} ({cache.stat().st_size / 1e6:.1f} MB) in {time.time() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
