"""`ggn evaluate` at the paper's scale: COCO val is 5,000 images x 1,500 mask detections (7.5M).

Prints, per size, the wall time and peak memory (RSS of a fresh process) of
  - streaming: `ggn evaluate` as shipped (the results JSON parsed as a stream into columns, COCOeval on
    chunks of images, counts added up), and
  - one pass: the same evaluation with the whole JSON loaded as Python objects and one COCOeval over all
    detections (what `ggn evaluate` did before, and what a plain COCOeval script does),
and whether the two give identical numbers. The one-pass baseline is run only up to --baseline-max-images
(it needs ~4 GB per 1,000 images here); above that its memory is extrapolated linearly and marked so.

Data: COCO-sized images (640x480), 7 objects per image on average (COCO val: 7.3), half of them seen.
Detections per image: jittered copies of the objects and random boxes and ellipses, 1,500 per image,
encoded as compressed RLE as `ggn predict` writes them. To keep generation short, --scenes distinct scenes
are rendered and reused under new image ids; evaluation treats every image on its own, so its cost is
that of as many distinct images.

    python bench/bench_eval_scale.py --images 500 1000 5000
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from pycocotools import mask as mask_utils

HEIGHT, WIDTH = 480, 640


def _encode(masks: list[np.ndarray]) -> tuple[list[str], list[list[float]]]:
    """Compressed RLE strings and xywh boxes of boolean masks."""
    rles = mask_utils.encode(np.asfortranarray(np.stack(masks, axis=2).astype(np.uint8)))
    return [r["counts"].decode("ascii") for r in rles], mask_utils.toBbox(rles).tolist()


def make_scene(rng: np.random.Generator, dets_per_image: int):
    """(ground-truth objects, detection JSON fragments without image id) of one 640x480 image."""
    yy, xx = np.mgrid[:HEIGHT, :WIDTH]
    objects, masks = [], []
    for _ in range(int(rng.integers(2, 13))):
        cy, cx = rng.integers(0, HEIGHT), rng.integers(0, WIDTH)
        ry = float(np.exp(rng.uniform(np.log(4), np.log(160))))
        m = ((yy - cy) / ry) ** 2 + ((xx - cx) / (ry * rng.uniform(0.5, 2))) ** 2 <= 1
        if m.sum() < 16:
            continue
        masks.append(m)
        objects.append({"seen": int(rng.random() < 0.5), "crowd": int(rng.random() < 0.01)})
    pool = []
    for m in masks:
        for _ in range(4):
            dy, dx = rng.integers(-8, 9, 2)
            pool.append(np.roll(m, (int(dy), int(dx)), axis=(0, 1)))
    while len(pool) < 64:
        y, x = int(rng.integers(0, HEIGHT - 8)), int(rng.integers(0, WIDTH - 8))
        h, w = int(rng.integers(8, HEIGHT - y + 1)), int(rng.integers(8, WIDTH - x + 1))
        m = np.zeros((HEIGHT, WIDTH), bool)
        m[y:y + h, x:x + w] = True
        pool.append(m)
    counts, boxes = _encode(pool)
    gt = [{"counts": c, "bbox": b, "area": float(m.sum()), **o}
          for c, b, m, o in zip(*_encode(masks), masks, objects)] if masks else []
    picks = rng.integers(0, len(pool), dets_per_image)
    scores = rng.random(dets_per_image)
    fragments = [
        '"category_id":1,"bbox":%s,"segmentation":{"size":[%d,%d],"counts":%s},"score":%r}'
        % (json.dumps([round(v, 2) for v in boxes[p]]), HEIGHT, WIDTH, json.dumps(counts[p]), float(s))
        for p, s in zip(picks, scores)]
    return gt, fragments


def write_files(root: Path, num_images: int, scenes: list) -> tuple[Path, Path]:
    images, annotations = [], []
    det_path = root / f"detections_{num_images}.json"
    with open(det_path, "w") as out:
        out.write("[")
        first = True
        for image_id in range(1, num_images + 1):
            gt, fragments = scenes[(image_id - 1) % len(scenes)]
            images.append({"id": image_id, "file_name": f"{image_id:012d}.jpg", "height": HEIGHT, "width": WIDTH})
            for g in gt:
                annotations.append({"id": len(annotations) + 1, "image_id": image_id, "category_id": 2 - g["seen"],
                                    "segmentation": {"size": [HEIGHT, WIDTH], "counts": g["counts"]},
                                    "bbox": g["bbox"], "area": g["area"], "iscrowd": g["crowd"],
                                    "ignored_split": g["seen"]})
            head = '{"image_id":%d,' % image_id
            for f in fragments:
                out.write(("" if first else ",") + head + f)
                first = False
        out.write("]")
    gt_path = root / f"eval_{num_images}.json"
    gt_path.write_text(json.dumps({"images": images, "annotations": annotations, "categories": [
        {"id": 1, "name": "unseen"}, {"id": 2, "name": "seen"}]}))
    return gt_path, det_path


CHILD = """
import json, resource, sys
from ggn.evaluate import evaluate
gt, dets, mode, out = sys.argv[1:5]
if mode == "one-pass":
    with open(dets, "rb") as f:
        dets = json.load(f)
    metrics = evaluate(gt, dets, chunk_detections=10 ** 12)
else:
    metrics = evaluate(gt, dets)
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
json.dump({"metrics": metrics, "peak_kib": peak}, open(out, "w"))
"""


def measure(gt: Path, dets: Path, mode: str, out: Path) -> tuple[float, float, dict]:
    """Wall seconds, peak RSS (GiB) of a fresh process, metrics."""
    t = time.perf_counter()
    subprocess.run([sys.executable, "-c", CHILD, str(gt), str(dets), mode, str(out)], check=True)
    seconds = time.perf_counter() - t
    result = json.loads(out.read_text())
    return seconds, result["peak_kib"] / 2 ** 20, result["metrics"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, nargs="+", default=[500, 1000, 5000])
    parser.add_argument("--dets-per-image", type=int, default=1500)
    parser.add_argument("--scenes", type=int, default=200, help="distinct scenes rendered (reused under new ids)")
    parser.add_argument("--baseline-max-images", type=int, default=1000,
                        help="largest size the one-pass baseline runs at (it needs ~4 GB per 1,000 images)")
    parser.add_argument("--workdir", type=Path, help="keep the generated files here")
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    print(f"rendering {args.scenes} scenes of {args.dets_per_image} detections ...", flush=True)
    scenes = [make_scene(rng, args.dets_per_image) for _ in range(args.scenes)]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        root = args.workdir or Path(tmp)
        root.mkdir(parents=True, exist_ok=True)
        for n in sorted(args.images):
            gt, dets = write_files(root, n, scenes)
            size_mb = dets.stat().st_size / 1e6
            print(f"\n{n} images x {args.dets_per_image} detections: results JSON {size_mb:.0f} MB", flush=True)
            s_time, s_peak, s_metrics = measure(gt, dets, "streaming", root / "m_stream.json")
            print(f"  streaming  {s_time:7.1f} s  peak {s_peak:5.2f} GiB", flush=True)
            row = {"images": n, "json_mb": size_mb, "stream_s": s_time, "stream_gib": s_peak}
            if n <= args.baseline_max_images:
                b_time, b_peak, b_metrics = measure(gt, dets, "one-pass", root / "m_one.json")
                row.update(one_s=b_time, one_gib=b_peak, identical=b_metrics == s_metrics)
                print(f"  one pass   {b_time:7.1f} s  peak {b_peak:5.2f} GiB   identical numbers: "
                      f"{b_metrics == s_metrics}", flush=True)
            row["metrics"] = s_metrics
            rows.append(row)
            for p in (gt, dets):
                os.unlink(p)
    measured = [r for r in rows if "one_gib" in r]
    print(f"\n{'images':>7} {'JSON MB':>8} {'streaming s':>12} {'GiB':>6} {'one pass s':>11} {'GiB':>6}  identical"
          "  segm AR@100 / AR@1500")
    for r in rows:
        if "one_gib" in r:
            one = f"{r['one_s']:11.1f} {r['one_gib']:6.2f}  {str(r['identical']):9s}"
        elif len(measured) >= 2:
            (a, b) = measured[-2], measured[-1]
            slope = (b["one_gib"] - a["one_gib"]) / (b["images"] - a["images"])
            one = f"{'not run':>11} {b['one_gib'] + slope * (r['images'] - b['images']):5.1f}e  (e: extrapolated)"
        else:
            one = f"{'not run':>11}"
        segm = r["metrics"]["segm"]
        print(f"{r['images']:7d} {r['json_mb']:8.0f} {r['stream_s']:12.1f} {r['stream_gib']:6.2f} {one}"
              f"  {segm['AR@100']:.4f} / {segm['AR@1500']:.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
