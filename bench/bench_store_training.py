"""Pseudo-GT reads as the ImageNet row's training does them: the detector dataset in pseudo-GT-alone mode
(`ggn train-detector --no-ground-truth --pseudo-store`), visiting images in a random order and decoding each
image's masks, against the baseline of the same dataset built from pseudo_gt.json (every annotation in memory).

Prints, for two store sizes measured in the same run (each in a fresh process, so peak RSS is its own):
reads per second (image's annotations fetched and decoded) and peak resident memory, store vs JSON. The store's
memory should stay flat as images are added; the JSON baseline grows with them.

Usage: .venv/bin/python bench/bench_store_training.py [--images 2000 8000] [--reads 300]
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_merge import make_shards, measure, streaming  # noqa: E402


def _reads(source: str, path: str, ann: str, ids: list[int]) -> tuple[int, float, float]:
    """Build the training dataset's pseudo-GT side and read `ids` as training would; (masks, set-up seconds,
    read seconds)."""
    from ggn.detector.data import read_pseudo_gt
    from ggn.masks import ann_to_mask
    from ggn.merge import PseudoStore

    t0 = time.perf_counter()
    if source == "store":
        store = PseudoStore(path)
        listed = set(store.image_ids())
        fetch = store.annotations_for
    else:
        import json

        listed = {im["id"] for im in json.loads(Path(ann).read_text())["images"]}
        by_image: dict[int, list] = {}
        for a in read_pseudo_gt(path, listed):
            by_image.setdefault(a["image_id"], []).append(a)
        fetch = lambda i: by_image.get(i, [])  # noqa: E731
    t1 = time.perf_counter()
    masks = 0
    for i in ids:
        for a in fetch(i):
            masks += int(ann_to_mask(a["segmentation"], 375, 500).any())
    return masks, t1 - t0, time.perf_counter() - t1


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--images", type=int, nargs="+", default=[2000, 8000])
    p.add_argument("--reads", type=int, default=300, help="images read per measurement (random order)")
    args = p.parse_args()
    print(f"{'images':>7} | {'store reads/s':>13} {'set-up s':>8} {'MiB':>6} | "
          f"{'json reads/s':>12} {'set-up s':>8} {'MiB':>6}")
    with tempfile.TemporaryDirectory() as tmp:
        for n in args.images:
            d = Path(tmp) / f"n{n}"
            d.mkdir()
            paths, ann = make_shards(d, 4, n // 4, 20)
            measure(streaming, paths, ann, d / "pseudo_gt.json", d / "store")
            ids = np.random.default_rng(0).permutation(np.arange(1, n + 1))[: args.reads].tolist()
            (m_s, s_s, t_s), _, rss_s = measure(_reads, "store", str(d / "store"), str(ann), ids)
            (m_j, s_j, t_j), _, rss_j = measure(_reads, "json", str(d / "pseudo_gt.json"), str(ann), ids)
            assert m_s == m_j, (m_s, m_j)
            print(f"{n:>7} | {len(ids) / t_s:>13.1f} {s_s:>8.2f} {rss_s:>6.0f} | "
                  f"{len(ids) / t_j:>12.1f} {s_j:>8.2f} {rss_j:>6.0f}")


if __name__ == "__main__":
    main()
