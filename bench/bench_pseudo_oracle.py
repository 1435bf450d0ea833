"""The detector stage alone: what the GGN detector of a finished synthetic run gains from pseudo-GT of known
quality. It separates the two halves of the method's effect: whether the detector, at this size and schedule,
gains from pseudo-GT at all, and how much of that the PA network's pseudo-GT delivers.

For each seed of the run, the GGN detector is trained again (the run's config and seed, one thread) on:
- `one`: one unseen object per training image, drawn at random from the full annotations (which the pipeline
  never reads): a top-1 selection that is always right;
- `all`: every unseen object of every training image;
- `pa_correct`: the run's own PA pseudo-GT of that seed, its best-scored mask per image, kept only where it
  matches an unseen object (mask IoU >= 0.5): the right part of what the PA network delivered;
then predicted and evaluated as the workflow does. Each is printed beside the run's own baseline and GGN
detectors, with the mean paired gain over seeds and its 95% Student-t interval.

    .venv/bin/python bench/bench_demo.py --work /tmp/demo_bench              # a finished demo run first
    .venv/bin/python bench/bench_pseudo_oracle.py --work /tmp/demo_bench    # ~12 min on 2 cores for 3 seeds

Only synthetic experiments (their full annotations are known). Nothing here is part of the pipeline.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import shlex
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from pycocotools import mask as mask_utils

from ggn.eval_pseudo import MinedObjects, best_iou
from ggn.io import read_json
from ggn.masks import ann_to_rle, rle_to_json
from ggn.recipe import to_flags, validated_config
from ggn.stats import paired_difference

REPO = Path(__file__).resolve().parents[1]
KINDS = ("one", "all", "pa_correct")
METRICS = (("segm", "AR@100", "mask AR@100"), ("segm", "AR@10", "mask AR@10"), ("bbox", "AR@100", "box AR@100"))


def _annotation(i: int, image_id: int, rle: dict) -> dict:
    return {"id": i, "image_id": image_id, "category_id": 1, "segmentation": rle_to_json(rle),
            "bbox": [float(v) for v in mask_utils.toBbox(rle)], "area": float(mask_utils.area(rle)),
            "iscrowd": 0, "score": 1.0, "gt_iou": 0.0}


def make_pseudo(exp_dir: Path, exp: dict, seeds: list[int], out: Path) -> dict[str, Path]:
    """Write the oracle pseudo-GT files; returns {name: path} (pa_correct per seed as pa_correct-s{seed})."""
    full_path = exp_dir / "synthetic" / "annotations" / "instances_train.json"
    split = read_json(exp_dir / "data" / "train.json")
    # the unseen objects of each mined image, as `ggn eval-pseudo` finds them
    objects = MinedObjects(read_json(full_path), split, exp["seen"], exp["unseen"], str(full_path))
    rng = random.Random(0)
    chosen: dict[str, list] = {"one": [], "all": []}
    for image_id in objects.images:
        rles = objects.unseen.get(image_id, [])
        chosen["all"] += [(image_id, r) for r in rles]
        if rles:
            chosen["one"].append((image_id, rng.choice(rles)))
    for seed in seeds:
        pseudo = read_json(exp_dir / f"seed{seed}" / "pseudo" / "pseudo_gt.json")
        best: dict[int, dict] = {}
        for a in pseudo["annotations"]:
            if a["image_id"] not in best or a["score"] > best[a["image_id"]]["score"]:
                best[a["image_id"]] = a
        kept = []
        for image_id, a in best.items():
            info = objects.images[image_id]
            rle = ann_to_rle(a["segmentation"], info["height"], info["width"])
            if best_iou([rle], objects.unseen.get(image_id, [])).max(initial=0.0) >= 0.5:
                kept.append((image_id, rle))
        chosen[f"pa_correct-s{seed}"] = kept
        print(f"seed {seed}: the PA's best-scored mask is right on {len(kept)} of {len(best)} images")
    out.mkdir(parents=True, exist_ok=True)
    paths = {}
    for name, items in chosen.items():
        path = out / f"{name}.json"
        path.write_text(json.dumps({"images": split["images"], "categories": [{"id": 1, "name": "object"}],
                                    "annotations": [_annotation(i + 1, im, r) for i, (im, r) in enumerate(items)]}))
        paths[name] = path
    print(f"unseen objects on the {len(split['images'])} training images: {len(chosen['all'])}; "
          f"images with one: {len(chosen['one'])}")
    return paths


def train_and_evaluate(exp_dir: Path, exp: dict, seed: int, pseudo: Path, out: Path) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    if (out / "eval.json").is_file():
        return read_json(out / "eval.json")
    bin_dir = Path(sys.executable).parent
    detector = dict(exp["detector"], seed=seed, pseudo_gt=str(pseudo))
    images, train, evaluation = exp_dir / "synthetic", exp_dir / "data" / "train.json", exp_dir / "data" / "eval.json"
    steps = [  # argument lists, as the workflow's rules give them (no shell)
        [str(bin_dir / "ggn"), "train-detector", "--variant", "ggn", "--train-json", str(train), "--images",
         str(images / "train"), "--out", str(out / "checkpoint.pt"), "--threads", "1", *shlex.split(to_flags(detector))],
        [str(bin_dir / "ggn"), "predict", "--checkpoint", str(out / "checkpoint.pt"), "--annotations", str(evaluation),
         "--images", str(images / "val"), "--out", str(out / "detections.json"), "--threads", "1",
         *shlex.split(to_flags(exp.get("predict") or {}))],
        [str(bin_dir / "ggn"), "evaluate", "--gt", str(evaluation), "--detections", str(out / "detections.json"),
         "--out", str(out / "eval.json")],
    ]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    with open(out / "log.txt", "w") as log:
        for step in steps:
            if subprocess.run(step, stdout=log, stderr=subprocess.STDOUT, env=env).returncode:
                sys.exit(f"failed: {shlex.join(step)}\n(log: {out / 'log.txt'})")
    return read_json(out / "eval.json")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--work", type=Path, required=True, help="a finished run's folder (bench_demo.py --work)")
    p.add_argument("--config", type=Path, default=REPO / "config" / "config.yaml", help="the run's config")
    p.add_argument("--experiment", default="synthetic")
    p.add_argument("--jobs", type=int, default=2, help="trainings at once (one thread each)")
    args = p.parse_args()
    config = validated_config(args.config)
    exp = config["experiments"][args.experiment]
    seeds = list(exp.get("seeds") or [0])
    exp_dir = (args.work / config.get("results", "results") / args.experiment).resolve()
    out = args.work / "pseudo_oracle"
    paths = make_pseudo(exp_dir, exp, seeds, out / "pseudo")
    jobs = {(kind, seed): paths[kind if kind != "pa_correct" else f"pa_correct-s{seed}"]
            for kind in KINDS for seed in seeds}
    with ThreadPoolExecutor(args.jobs) as pool:
        futures = {key: pool.submit(train_and_evaluate, exp_dir, exp, key[1], path, out / f"{key[0]}-s{key[1]}")
                   for key, path in jobs.items()}
        results = {key: f.result() for key, f in futures.items()}
    runs = {"baseline (the run's)": [read_json(exp_dir / f"seed{s}" / "eval" / "baseline.json") for s in seeds],
            "GGN, PA pseudo-GT (the run's)": [read_json(exp_dir / f"seed{s}" / "eval" / "ggn.json") for s in seeds]}
    runs.update({f"GGN, {kind} pseudo-GT": [results[(kind, s)] for s in seeds] for kind in KINDS})
    for iou_type, metric, label in METRICS:
        base = [100 * r[iou_type][metric] for r in runs["baseline (the run's)"]]
        print(f"\n{label} (seeds {seeds})")
        for name, evals in runs.items():
            values = [100 * r[iou_type][metric] for r in evals]
            text = "  ".join(f"{v:5.1f}" for v in values)
            gain = ""
            if not name.startswith("baseline"):
                d = paired_difference(values, base)
                gain = (f"gain {d.mean:+.1f}" + (f" (95% CI {d.low:+.1f} to {d.high:+.1f})" if d.low is not None else
                                                 " (n = 1)"))
            print(f"  {name:32s} {text}   {gain}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
