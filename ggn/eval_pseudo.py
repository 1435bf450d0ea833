"""`ggn eval-pseudo`: how well a run's candidates and pseudo-GT find the unseen objects of the images they were mined from.

Needs the full annotations of the mined images (every class, as `ggn synth` writes them or COCO train2017
has them), while the run itself saw only the seen classes (train.json). Unseen objects are the non-crowd
annotations of every class that is not seen (or of `--unseen` when given). Reported:
- recall of unseen objects among each image's top-1, top-3 and top-20 candidates (by rank) at mask IoU 0.5:
  an object counts as found when any of those candidates covers it, whatever else they cover;
- the AR of the whole candidate list (box and mask, IoU 0.50:0.05:0.95), as `ggn evaluate` computes it for a
  detector: one-to-one matching in rank order, candidates matching a seen object at IoU 0.5 left out;
- the precision of the kept pseudo-GT: the fraction of pseudo_gt.json's masks that match an unseen object at
  IoU 0.5 (the rest cover background, parts or unions of objects);
- the hit rate by rank: the fraction of the rank-r candidates that match an unseen object at IoU 0.5.

Shards are read one at a time, so memory follows the largest shard, not the dataset.
"""
from __future__ import annotations

import argparse
import logging
from collections import defaultdict
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
from pycocotools import mask as mask_utils

from ggn.classes import class_names
from ggn.io import InputError, atomic_write_json, read_json
from ggn.masks import ann_to_rle

log = logging.getLogger(__name__)

IOU = 0.5
TOP_KS = (1, 3, 20)


class MinedObjects:
    """The annotations of the full file on the images of the mined (seen-only) file, keyed by the mined ids."""

    def __init__(self, full: dict, mined: dict, seen: str, unseen: str | None = None,
                 full_path: str = "full annotations", mined_path: str = "mined images"):
        for key in ("images", "annotations", "categories"):
            if not isinstance(full.get(key), list):
                raise InputError(f"{full_path} has no '{key}' list; --full-annotations must be the COCO file with "
                                 "every class annotated (e.g. instances_train2017.json, or the synthetic "
                                 "annotations/instances_train.json)")
        if not isinstance(mined.get("images"), list):
            raise InputError(f"{mined_path} has no 'images' list; --mined must be the file the run mined (train.json)")
        categories = full["categories"]
        seen_names = set(class_names(seen, categories))
        unseen_names = (set(class_names(unseen, categories)) if unseen
                        else {c["name"] for c in categories} - seen_names)
        overlap = seen_names & unseen_names
        if overlap:
            raise InputError(f"classes {', '.join(sorted(overlap))} are both seen and unseen; fix --seen/--unseen")
        self.seen_ids = {int(c["id"]) for c in categories if c["name"] in seen_names}
        self.unseen_ids = {int(c["id"]) for c in categories if c["name"] in unseen_names}
        self.unseen_names = sorted(unseen_names)
        if not self.unseen_ids:
            log.warning("no unseen class in %s (seen: %s): recall and precision are undefined", full_path, seen)

        from ggn.images import with_file_name

        full_images = [with_file_name(img) for img in full["images"]]  # LVIS v1: named by coco_url, as split names them
        by_id = {int(img["id"]): img for img in full_images}
        by_file = {img.get("file_name"): img for img in full_images}
        self.images: dict[int, dict] = {}  # mined id -> {"id", "height", "width", "file_name"}
        source_of: dict[int, int] = {}  # full-file id -> mined id
        for img in mined["images"]:
            iid = int(img["id"])
            src = by_id.get(iid)
            if src is None or src.get("file_name") != img.get("file_name"):
                src = by_file.get(img.get("file_name"))
            if src is None:
                raise InputError(f"image {iid} ({img.get('file_name')}) of {mined_path} is not in {full_path}; "
                                 "--full-annotations must annotate the images the pseudo-GT was mined from")
            self.images[iid] = {"id": iid, "height": int(src["height"]), "width": int(src["width"]),
                                "file_name": src.get("file_name")}
            source_of[int(src["id"])] = iid

        self.unseen: dict[int, list[dict]] = defaultdict(list)  # mined id -> RLEs of non-crowd unseen objects
        self.seen: dict[int, list[dict]] = defaultdict(list)
        self.annotations: dict[int, list[dict]] = defaultdict(list)  # for ggn.evaluate, ignored_split marked
        for a in full["annotations"]:
            iid = source_of.get(int(a["image_id"]))
            cat = int(a["category_id"])
            if iid is None or (cat not in self.seen_ids and cat not in self.unseen_ids) or not a.get("segmentation"):
                continue
            info = self.images[iid]
            rle = ann_to_rle(a["segmentation"], info["height"], info["width"])
            crowd = int(bool(a.get("iscrowd", 0)))
            if not crowd:
                (self.unseen if cat in self.unseen_ids else self.seen)[iid].append(rle)
            self.annotations[iid].append({
                "id": len(self.annotations[iid]) + 1, "image_id": iid, "category_id": 1, "iscrowd": crowd,
                "segmentation": rle, "area": float(mask_utils.area(rle)), "bbox": mask_utils.toBbox(rle).tolist(),
                "ignored_split": 0 if cat in self.unseen_ids else 1})

    def num_unseen(self, image_ids=None) -> int:
        ids = self.images if image_ids is None else image_ids
        return sum(len(self.unseen.get(i, ())) for i in ids)

    def ground_truth(self, image_ids) -> dict:
        """A COCO dict of these images for `ggn.evaluate` (seen objects marked ignored_split 1), ids unique."""
        anns, next_id = [], 1
        for i in image_ids:
            for a in self.annotations.get(i, ()):
                anns.append({**a, "id": next_id, "segmentation": _json_rle(a["segmentation"])})
                next_id += 1
        return {"images": [self.images[i] for i in image_ids], "annotations": anns,
                "categories": [{"id": 1, "name": "object"}]}


def _json_rle(rle: dict) -> dict:
    counts = rle["counts"]
    return {"size": list(rle["size"]), "counts": counts.decode("ascii") if isinstance(counts, bytes) else counts}


def best_iou(candidates: list[dict], objects: list[dict]) -> np.ndarray:
    """float [len(candidates), len(objects)] mask IoU (objects as non-crowd)."""
    if not candidates or not objects:
        return np.zeros((len(candidates), len(objects)))
    return np.asarray(mask_utils.iou(candidates, objects, [0] * len(objects))).reshape(len(candidates), len(objects))


def _read_shard(path: Path) -> dict[int, list[dict]]:
    """image id -> its candidates (rank, score, bbox, rle dict), best rank first."""
    if not path.is_file():
        raise InputError(f"extraction shard {path} does not exist; run `ggn extract` (or the extract rule) first")
    try:
        rows = pq.read_table(path, columns=["image_id", "rank", "score", "bbox", "height", "width", "rle"]).to_pylist()
    except Exception as e:
        raise InputError(f"extraction shard {path} is unreadable ({e}); delete it and extract it again") from None
    per_image: dict[int, list[dict]] = defaultdict(list)
    for r in rows:
        per_image[int(r["image_id"])].append({
            "rank": int(r["rank"]), "score": float(r["score"]), "bbox": list(r["bbox"]),
            "rle": {"size": [int(r["height"]), int(r["width"])], "counts": r["rle"].encode("ascii")}})
    for cands in per_image.values():
        cands.sort(key=lambda c: c["rank"])
    return per_image


def evaluate_pseudo(shards: list[Path], pseudo_gt: Path | None, mined: Path, full: Path, seen: str,
                    unseen: str | None = None, top_ks=TOP_KS) -> dict:
    from tqdm import tqdm

    from ggn.evaluate import evaluate

    objects = MinedObjects(read_json(full, "full annotations"), read_json(mined, "mined image list"), seen, unseen,
                           str(full), str(mined))
    total = objects.num_unseen()
    log.info("%d mined images, %d unseen objects (%d classes), %d seen objects", len(objects.images), total,
             len(objects.unseen_names), sum(len(v) for v in objects.seen.values()))
    top_ks = sorted(set(int(k) for k in top_ks))
    found = {k: 0 for k in top_ks}
    hits_by_rank: list[int] = []
    count_by_rank: list[int] = []
    ar_weighted = {"bbox": 0.0, "segm": 0.0}
    covered: set[int] = set()
    n_candidates = 0
    for path in tqdm(shards, desc="eval-pseudo", unit="shard", dynamic_ncols=True):
        per_image = _read_shard(Path(path))
        unknown = set(per_image) - set(objects.images)
        if unknown:
            raise InputError(f"shard {path} has images {sorted(unknown)[:5]} that {mined} does not list; "
                             "--mined must be the image list the shards were extracted from")
        repeated = covered & set(per_image)
        if repeated:
            raise InputError(f"images {sorted(repeated)[:5]} appear in more than one shard (shard {path}); "
                             "pass each shard of one extraction once")
        covered |= set(per_image)
        dets = []
        for iid, cands in per_image.items():
            n_candidates += len(cands)
            ious = best_iou([c["rle"] for c in cands], objects.unseen.get(iid, []))
            for k in top_ks:
                found[k] += int((ious[:k] >= IOU).any(axis=0).sum())
            hit = (ious >= IOU).any(axis=1) if ious.shape[1] else np.zeros(len(cands), bool)
            for r, h in enumerate(hit):
                if r == len(count_by_rank):
                    count_by_rank.append(0)
                    hits_by_rank.append(0)
                count_by_rank[r] += 1
                hits_by_rank[r] += int(h)
            dets += [{"image_id": iid, "category_id": 1, "bbox": c["bbox"], "segmentation": _json_rle(c["rle"]),
                      "score": 1.0 / (1 + r)} for r, c in enumerate(cands)]  # rank order, whatever the scores
        shard_unseen = objects.num_unseen(per_image)
        if shard_unseen:
            metrics = evaluate(objects.ground_truth(sorted(per_image)), dets)
            for iou_type in ar_weighted:
                ar_weighted[iou_type] += metrics[iou_type]["AR@1500"] * shard_unseen

    result = {
        "images": len(objects.images), "images_with_candidates": len(covered), "candidates": n_candidates,
        "unseen_classes": objects.unseen_names, "unseen_objects": total,
        "seen_objects": sum(len(v) for v in objects.seen.values()), "iou": IOU,
        "found": {f"top-{k}": found[k] for k in top_ks},
        "recall": {f"top-{k}": (found[k] / total if total else None) for k in top_ks},
        "candidate_AR": {t: (v / total if total else None) for t, v in ar_weighted.items()},
        "hit_rate_by_rank": [h / c for h, c in zip(hits_by_rank, count_by_rank)],
        "candidates_by_rank": count_by_rank,
    }
    if pseudo_gt is not None:
        pseudo = read_json(pseudo_gt, "pseudo-GT")
        if not isinstance(pseudo, dict) or not isinstance(pseudo.get("annotations"), list):
            raise InputError(f"{pseudo_gt} has no 'annotations' list; pass the pseudo_gt.json of `ggn merge`")
        unseen_hits = seen_hits = 0
        for a in pseudo["annotations"]:
            iid = int(a["image_id"])
            if iid not in objects.images:
                raise InputError(f"{pseudo_gt}: annotation {a.get('id')} is on image {iid}, which {mined} does not "
                                 "list; pass the pseudo-GT merged from these shards")
            rle = {"size": list(a["segmentation"]["size"]), "counts": a["segmentation"]["counts"]}
            unseen_hits += int((best_iou([rle], objects.unseen.get(iid, [])) >= IOU).any())
            seen_hits += int((best_iou([rle], objects.seen.get(iid, [])) >= IOU).any())
        kept = len(pseudo["annotations"])
        result["pseudo_gt"] = {"kept": kept, "unseen_matches": unseen_hits, "seen_matches": seen_hits,
                               "precision": unseen_hits / kept if kept else None}
    result["note"] = ("recall: unseen non-crowd objects covered at mask IoU >= 0.5 by any of an image's top-k "
                      "candidates; candidate_AR: AR@1500 of `ggn evaluate` over the whole candidate list in rank "
                      "order (seen objects ignored); pseudo_gt.precision: kept masks matching an unseen object at "
                      "IoU 0.5")
    return result


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--shards", nargs="+", required=True, type=Path,
                        help="the extraction shards (parquet) the pseudo-GT was merged from")
    parser.add_argument("--pseudo-gt", type=Path, help="pseudo_gt.json of `ggn merge` (its precision is reported)")
    parser.add_argument("--mined", required=True, type=Path,
                        help="the COCO file listing the images the shards were extracted from (train.json)")
    parser.add_argument("--full-annotations", required=True, type=Path,
                        help="the same images with every class annotated (instances_train2017.json; the synthetic "
                             "set's annotations/instances_train.json)")
    parser.add_argument("--seen", required=True, help="seen classes, as `ggn split --seen` (synthetic_seen, voc, ...)")
    parser.add_argument("--unseen", default=None, help="unseen classes, as `ggn split --unseen`; default every other")
    parser.add_argument("--top-k", nargs="+", type=int, default=list(TOP_KS), help="candidate budgets of the recall")
    parser.add_argument("--out", required=True, type=Path, help="quality JSON to write")


def run(args: argparse.Namespace) -> int:
    if any(k < 1 for k in args.top_k):
        raise InputError(f"--top-k {args.top_k}: every budget must be >= 1")
    result = evaluate_pseudo(args.shards, args.pseudo_gt, args.mined, args.full_annotations, args.seen,
                             args.unseen, args.top_k)
    atomic_write_json(args.out, result, indent=2)
    recall = ", ".join(f"{k} {'n/a' if v is None else f'{v:.3f}'}" for k, v in result["recall"].items())
    ar = result["candidate_AR"]["segm"]
    log.info("unseen-object recall @IoU0.5: %s; candidate mask AR %s", recall, "n/a" if ar is None else f"{ar:.3f}")
    if "pseudo_gt" in result:
        p = result["pseudo_gt"]
        log.info("pseudo-GT precision: %d/%d = %s", p["unseen_matches"], p["kept"],
                 "n/a" if p["precision"] is None else f"{p['precision']:.3f}")
    log.info("wrote %s", args.out)
    return 0
