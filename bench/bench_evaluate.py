"""Benchmark `ggn evaluate` against plain class-agnostic faster-coco-eval and pycocotools on the same files.

Data: `ggn synth` validation images (seen/unseen marked by the synthetic class split) and, per image,
jittered copies of the ground-truth masks plus random masks up to --dets-per-image detections.
Prints seconds and ratios side by side, and the AR values of each so they can be compared.
"""
from __future__ import annotations

import argparse
import contextlib
import io
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from pycocotools import mask as mask_utils

from ggn.classes import SYNTHETIC_SEEN
from ggn.evaluate import MAX_DETS, evaluate, set_agnostic_params
from ggn.masks import ann_to_mask
from ggn.synth import generate_dataset


def make_detections(gt: dict, per_image: int, seed: int) -> list[dict]:
    """Jittered ground-truth masks (shifted, cut) with noisy scores, then random boxes and discs."""
    rng = np.random.default_rng(seed)
    anns_by_image: dict[int, list[dict]] = {}
    for a in gt["annotations"]:
        anns_by_image.setdefault(a["image_id"], []).append(a)
    dets = []
    for img in gt["images"]:
        h, w = img["height"], img["width"]
        masks = []
        for a in anns_by_image.get(img["id"], []):
            m = ann_to_mask(a["segmentation"], h, w)
            for _ in range(4):
                dy, dx = rng.integers(-6, 7, 2)
                j = np.roll(m, (int(dy), int(dx)), axis=(0, 1))
                if rng.random() < 0.3:
                    j = j.copy()
                    j[: int(rng.integers(0, h)), :] = False
                if j.any():
                    masks.append(j)
        yy, xx = np.mgrid[:h, :w]
        while len(masks) < per_image:
            cy, cx = rng.integers(0, h), rng.integers(0, w)
            r = int(rng.integers(3, max(4, h // 3)))
            if rng.random() < 0.5:
                m = (abs(yy - cy) <= r) & (abs(xx - cx) <= int(rng.integers(3, max(4, w // 3))))
            else:
                m = (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r
            masks.append(m)
        masks = masks[:per_image]
        rles = mask_utils.encode(np.asfortranarray(np.stack(masks, axis=2).astype(np.uint8)))
        scores = rng.random(len(rles))
        for rle, box, score in zip(rles, mask_utils.toBbox(rles), scores):
            dets.append({"image_id": img["id"], "category_id": 1, "bbox": [float(v) for v in box],
                         "segmentation": {"size": rle["size"], "counts": rle["counts"].decode("ascii")},
                         "score": float(score)})
    return dets


def plain_eval(library: str, gt_path: Path, dets_path: Path, iou_types) -> dict:
    """Class-agnostic COCOeval (useCats=0, same maxDets and IoUs) without the seen-class handling."""
    if library == "faster-coco-eval":
        from faster_coco_eval import COCO
        from faster_coco_eval import COCOeval_faster as Eval
    else:
        from pycocotools.coco import COCO
        from pycocotools.cocoeval import COCOeval as Eval
    out = {}
    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO(str(gt_path))
        # Parse the results once; loadRes writes id/area into the dicts, so each IoU type gets copies.
        results = json.loads(Path(dets_path).read_text())
        for iou_type in iou_types:
            coco_dt = coco_gt.loadRes([dict(d) for d in results])
            ev = Eval(coco_gt, coco_dt, iou_type)
            set_agnostic_params(ev)
            ev.evaluate()
            ev.accumulate()
            r = np.asarray(ev.eval["recall"])
            out[iou_type] = {f"AR@{k}": float(r[:, :, 0, m][r[:, :, 0, m] > -1].mean())
                             for m, k in enumerate(MAX_DETS)}
    return out


def timed(fn, *args):
    t = time.perf_counter()
    result = fn(*args)
    return time.perf_counter() - t, result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=300)
    parser.add_argument("--dets-per-image", type=int, default=300)
    parser.add_argument("--image-size", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=1, help="best of N timings")
    parser.add_argument("--skip-pycocotools", action="store_true", help="it is ~6x slower")
    parser.add_argument("--workdir", type=Path, default=None, help="keep the generated files here")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        root = args.workdir or Path(tmp)
        print(f"generating {args.images} synthetic images and {args.dets_per_image} detections each ...",
              flush=True)
        paths = generate_dataset(root / "synth", 0, args.images, args.image_size, seed=0, workers=2)
        gt = json.loads(paths["val"].read_text())
        seen = {c["id"] for c in gt["categories"] if c["name"] in SYNTHETIC_SEEN}
        for a in gt["annotations"]:
            a["ignored_split"] = int(a["category_id"] in seen)
        gt_path = root / "eval.json"
        gt_path.write_text(json.dumps(gt))
        plain_gt = {**gt, "annotations": [{k: v for k, v in a.items() if k != "ignored_split"}
                                          for a in gt["annotations"]]}
        plain_gt_path = root / "eval_no_split.json"
        plain_gt_path.write_text(json.dumps(plain_gt))
        dets = make_detections(gt, args.dets_per_image, seed=1)
        dets_path = root / "detections.json"
        dets_path.write_text(json.dumps(dets))
        print(f"{len(gt['images'])} images, {len(gt['annotations'])} objects "
              f"({sum(a['ignored_split'] for a in gt['annotations'])} seen), {len(dets)} detections")

        iou_types = ("bbox", "segm")
        runs = {
            "ggn evaluate (seen ignored)": lambda: evaluate(gt_path, dets_path, iou_types),
            "ggn evaluate (no split info)": lambda: evaluate(plain_gt_path, dets_path, iou_types),
            "plain faster-coco-eval": lambda: plain_eval("faster-coco-eval", gt_path, dets_path, iou_types),
        }
        if not args.skip_pycocotools:
            runs["plain pycocotools"] = lambda: plain_eval("pycocotools", gt_path, dets_path, iou_types)
        seconds, results = {}, {}
        for name, fn in runs.items():
            best = float("inf")
            for _ in range(args.repeats if name != "plain pycocotools" else 1):
                dt, results[name] = timed(fn)
                best = min(best, dt)
            seconds[name] = best
        base = seconds["plain faster-coco-eval"]
        print("\nwall-clock seconds (bbox + segm, includes reading the JSON files):")
        for name, s in seconds.items():
            print(f"  {name:32s} {s:8.2f} s   {s / base:5.2f}x plain faster-coco-eval")
        print("\nAR values (segm):")
        keys = ["AR@10", "AR@100", "AR@1000"]
        print(f"  {'':32s} " + "  ".join(f"{k:>8s}" for k in keys))
        for name, res in results.items():
            print(f"  {name:32s} " + "  ".join(f"{res['segm'][k]:8.4f}" for k in keys))
        same = all(abs(results["ggn evaluate (no split info)"][t][k] - results["plain faster-coco-eval"][t][k])
                   < 1e-12 for t in iou_types for k in results["plain faster-coco-eval"][t])
        print(f"\nggn without split info == plain faster-coco-eval: {same}")
        if "plain pycocotools" in results:
            same_pc = all(abs(results["plain pycocotools"][t][k] - results["plain faster-coco-eval"][t][k])
                          < 1e-12 for t in iou_types for k in results["plain pycocotools"][t])
            print(f"plain pycocotools == plain faster-coco-eval: {same_pc}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
