"""`ggn compare-pseudo`: which share of the authors' kept pseudo-GT masks our grouping reproduces (ladder rung c).

Run our extraction with the authors' PA network (converted by `ggn import-reference`) on the images of their
released pseudo-GT, then compare candidate by candidate: for every mask the reference's training set keeps
(gt_iou below `--gt-iou-max`, the best `--top-k` per image by rank, as `ggn merge` does), the best mask IoU with
(a) our masks kept by the same rule and (b) any of our candidates of that image. Printed and written (`--out`):
the fractions at IoU >= 0.5 and >= 0.8, and the mean best IoU. Only images present in both sets count; images
only one side extracted are reported.
"""
from __future__ import annotations

import argparse
import json
import logging
from collections import defaultdict
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from pycocotools import mask as mask_utils

from ggn.io import InputError, atomic_write_json, file_sha256, read_json

log = logging.getLogger(__name__)

THRESHOLDS = (0.5, 0.8)


def _per_image(table: pa.Table) -> dict[int, list[tuple[int, float | None, dict]]]:
    out: dict[int, list] = defaultdict(list)
    cols = table.select(["image_id", "rank", "gt_iou", "height", "width", "rle"]).to_pydict()
    for image_id, rank, gt_iou, h, w, rle in zip(*cols.values()):
        out[int(image_id)].append((int(rank), gt_iou, {"size": [int(h), int(w)], "counts": rle.encode("ascii")}))
    for rows in out.values():
        rows.sort(key=lambda r: r[0])
    return out


def _shard_images(path: Path, all_ids: list[int], table: pa.Table, annotations_sha256: str) -> set[int]:
    """The images an extraction shard covered, candidates or not: from its `ggn.shard` metadata (shard index, count,
    --max-images) over the annotation file's ids; a shard without it covers the images it has rows for."""
    from ggn.extract import META_SHARD, shard_image_ids

    raw = (table.schema.metadata or {}).get(META_SHARD)
    try:
        meta = json.loads(raw) if raw else None
    except json.JSONDecodeError:
        meta = None
    if not isinstance(meta, dict) or "shard" not in meta:
        return set(table["image_id"].to_pylist())
    if meta.get("annotations_sha256") not in (None, annotations_sha256):
        raise InputError(f"shard {path} was extracted from another annotation file than --annotations (its content "
                         "differs); pass the file the shard was made from")
    ids = shard_image_ids(all_ids, int(meta["shard"]), int(meta["num_shards"]))
    if meta.get("max_images") is not None:
        ids = ids[: int(meta["max_images"])]
    return set(ids)


def kept(rows: list[tuple[int, float | None, dict]], top_k: int, gt_iou_max: float | None) -> list[dict]:
    """`ggn merge`'s rule: gt_iou below gt_iou_max (a missing gt_iou passes), then the best top_k by rank."""
    passing = [r for r in rows if gt_iou_max is None or r[1] is None or r[1] < gt_iou_max]
    return [r[2] for r in passing[:top_k]]


def best_ious(theirs: list[dict], ours: list[dict]) -> np.ndarray:
    if not theirs:
        return np.zeros(0)
    if not ours:
        return np.zeros(len(theirs))
    return np.asarray(mask_utils.iou(theirs, ours, [0] * len(ours))).reshape(len(theirs), len(ours)).max(axis=1)


def compare(our_shards: list[str], released: str, annotations: str, top_k: int, gt_iou_max: float | None,
            max_images: int | None = None) -> dict:
    from ggn.annotations import validate_coco
    from ggn.import_pseudo import released_tables

    coco = read_json(annotations, "annotation file")
    images = validate_coco({k: v for k, v in coco.items() if k != "annotations"}, annotations, annotations=False,
                           categories=False)[0]["images"]
    fmt, _, chunks = released_tables(Path(released), images)
    theirs_table = pa.concat_tables([table for table, _ in chunks])
    tables, covered = [], set()
    sha = file_sha256(annotations)
    all_ids = [int(im["id"]) for im in images]
    for shard in our_shards:
        if not Path(shard).is_file():
            raise InputError(f"shard {shard} does not exist; run `ggn extract` with the converted PA network first")
        tables.append(pq.read_table(shard))
        covered |= _shard_images(Path(shard), all_ids, tables[-1], sha)
    ours = _per_image(pa.concat_tables(tables)) if tables else {}
    theirs = _per_image(theirs_table)
    # an image our extraction covered without keeping a candidate counts, with nothing reproduced
    common = sorted(covered & set(theirs))[:max_images]
    if not common:
        raise InputError(f"no image is in both our shards and {released}: extract the images of their pseudo-GT "
                         f"(the same --annotations {annotations})")
    vs_kept, vs_all = [], []
    for image_id in common:
        their_kept = kept(theirs[image_id], top_k, gt_iou_max)
        our_rows = ours.get(image_id, [])
        vs_kept.append(best_ious(their_kept, kept(our_rows, top_k, gt_iou_max)))
        vs_all.append(best_ious(their_kept, [r[2] for r in our_rows]))
    vs_kept, vs_all = np.concatenate(vs_kept), np.concatenate(vs_all)

    def summary(ious: np.ndarray) -> dict:
        return {**{f"iou>={t}": float((ious >= t).mean()) if len(ious) else None for t in THRESHOLDS},
                "mean_best_iou": float(ious.mean()) if len(ious) else None}

    return {"their_kept_masks": int(len(vs_kept)), "images_compared": len(common),
            "images_only_theirs": len(set(theirs) - covered), "images_only_ours": len(covered - set(theirs)),
            "images_without_our_candidates": len([i for i in common if i not in ours]),
            "top_k": top_k, "gt_iou_max": gt_iou_max, "released_format": fmt,
            "reproduced_by_our_kept": summary(vs_kept), "reproduced_by_any_our_candidate": summary(vs_all)}


def report_lines(result: dict) -> list[str]:
    def pct(v):
        return "n/a" if v is None else f"{100 * v:.1f}%"

    lines = [f"their kept masks (top {result['top_k']}, gt_iou < {result['gt_iou_max']}): "
             f"{result['their_kept_masks']} on {result['images_compared']} images "
             f"({result['images_without_our_candidates']} without any candidate of ours; "
             f"{result['images_only_theirs']} images only theirs, {result['images_only_ours']} only ours)"]
    for key, words in (("reproduced_by_our_kept", "by our kept masks (same rule)"),
                       ("reproduced_by_any_our_candidate", "by any of our candidates")):
        s = result[key]
        lines.append(f"reproduced {words}: IoU>=0.5 {pct(s['iou>=0.5'])}, IoU>=0.8 {pct(s['iou>=0.8'])}, "
                     f"mean best IoU {s['mean_best_iou'] if s['mean_best_iou'] is None else round(s['mean_best_iou'], 3)}")
    return lines


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--ours", nargs="+", required=True, help="our extraction shards (parquet) of the same images")
    p.add_argument("--theirs", required=True, help="the authors' released pseudo-GT (merged COCO file, mask lists or per-image folder)")
    p.add_argument("--annotations", required=True, help="the COCO file both were extracted from (image ids, names)")
    p.add_argument("--top-k", type=int, default=3, help="their kept masks per image (the row's merge.top_k)")
    p.add_argument("--gt-iou-max", type=float, default=0.5, help="the row's merge.gt_iou_max")
    p.add_argument("--max-images", type=int, help="compare the first N common images only")
    p.add_argument("--out", help="also write the result as JSON here")


def run(args: argparse.Namespace) -> int:
    result = compare(args.ours, args.theirs, args.annotations, args.top_k, args.gt_iou_max, args.max_images)
    for line in report_lines(result):
        print(line)
    if args.out:
        atomic_write_json(args.out, result, indent=2)
    return 0
