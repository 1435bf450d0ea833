"""Quality of extracted candidates and pseudo-GT against the unseen objects of the mined images.

Needs the images' full annotations (every class, as `ggn synth` writes them or COCO train has them):
- candidate recall of unseen objects at IoU 0.5 among each image's top-1, top-3 and top-20 candidates
  (the extraction shards, before any gt_iou filtering);
- precision of the kept pseudo-GT (pseudo_gt.json): the fraction that matches an unseen object at IoU 0.5.
The ratio against a second run (e.g. `grouping: paper` against `extended`) is what to read; run it on both.

    .venv/bin/python bench/pseudo_quality.py --results /tmp/demo/results/synthetic \\
        --source /tmp/demo/results/synthetic/synthetic/annotations/instances_train.json \\
        --unseen star,ring,hexagon,ellipse
"""
from __future__ import annotations

import argparse
import json
from collections import defaultdict
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
from pycocotools import mask as mask_utils

from ggn.masks import ann_to_rle

IOU = 0.5


def unseen_objects(source: dict, train: dict, unseen: set[str]) -> dict[int, list[dict]]:
    """train.json image id -> RLEs of the unseen-class objects on that image (matched by file_name)."""
    names = {c["id"]: c["name"] for c in source["categories"]}
    by_file = {img["file_name"]: img for img in source["images"]}
    anns = defaultdict(list)
    for a in source["annotations"]:
        if names[a["category_id"]] in unseen and not a.get("iscrowd", 0):
            anns[a["image_id"]].append(a)
    out = {}
    for img in train["images"]:
        src = by_file[img["file_name"]]
        out[img["id"]] = [ann_to_rle(a["segmentation"], src["height"], src["width"]) for a in anns[src["id"]]]
    return out


def matched(candidates: list[dict], objects: list[dict]) -> np.ndarray:
    """bool [len(objects)]: which objects some candidate covers at IoU >= 0.5."""
    if not candidates or not objects:
        return np.zeros(len(objects), bool)
    ious = np.asarray(mask_utils.iou(candidates, objects, [0] * len(objects))).reshape(len(candidates), len(objects))
    return (ious >= IOU).any(axis=0)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--results", required=True, type=Path, help="results/{exp} of a finished run")
    p.add_argument("--pseudo", default="seed0/pseudo",
                   help="pseudo-GT folder under --results: seed{s}/pseudo (a seed's PA network) or pseudo_control")
    p.add_argument("--source", required=True, type=Path, help="full annotations of the mined images")
    p.add_argument("--unseen", required=True, help="comma-separated unseen class names")
    args = p.parse_args()
    source = json.loads(args.source.read_text())
    train = json.loads((args.results / "data" / "train.json").read_text())
    objects = unseen_objects(source, train, set(args.unseen.split(",")))

    ranked = defaultdict(list)
    for shard in sorted((args.results / args.pseudo / "shards").glob("*.parquet")):
        table = pq.read_table(shard, columns=["image_id", "rank", "rle", "height", "width"]).to_pylist()
        for row in table:
            ranked[row["image_id"]].append((row["rank"], {"size": [row["height"], row["width"]], "counts": row["rle"]}))
    found = {1: 0, 3: 0, 20: 0}
    total = sum(len(v) for v in objects.values())
    for image_id, objs in objects.items():
        cands = [rle for _, rle in sorted(ranked.get(image_id, []), key=lambda t: t[0])]
        for k in found:
            found[k] += int(matched(cands[:k], objs).sum())

    pseudo = json.loads((args.results / args.pseudo / "pseudo_gt.json").read_text())
    hits = 0
    for a in pseudo["annotations"]:
        rle = a["segmentation"]
        hits += int(matched([{"size": list(rle["size"]), "counts": rle["counts"]}], objects[a["image_id"]]).any())
    kept = len(pseudo["annotations"])
    print(f"{args.results}: {len(objects)} images, {total} unseen objects")
    print("candidate recall of unseen objects @IoU0.5: " +
          ", ".join(f"top-{k} {found[k] / max(1, total):.3f}" for k in found))
    print(f"pseudo-GT precision (matches an unseen object @IoU0.5): {hits}/{kept} = {hits / max(1, kept):.3f}")


if __name__ == "__main__":
    main()
