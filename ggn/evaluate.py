"""Cross-category average recall (AR@k) on unseen classes, class-agnostic as in OLN."""
from __future__ import annotations

import argparse
import logging
import math
import os
from collections import defaultdict
from pathlib import Path

import numpy as np
from pycocotools import mask as mask_utils

from ggn.annotations import log_counts, validate_coco
from ggn.io import InputError, atomic_write_json, read_json
from ggn.masks import ann_to_rle
from ggn.split import count_unusable_ids

log = logging.getLogger("ggn.evaluate")

# Budgets and thresholds of the cross-category protocol (OLN, mmdet/datasets/coco_split.py):
# proposal_nums (10, ..., 1500), IoU 0.50:0.05:0.95, COCO area ranges, class-agnostic matching.
MAX_DETS = (10, 20, 30, 50, 100, 300, 500, 1000, 1500)
IOU_THRESHOLDS = np.linspace(0.5, 0.95, 10)
AREA_LABELS = ("all", "small", "medium", "large")
SIZE_BUDGET = 100
# A detection matched to a seen-class object at this IoU leaves the budget (OLN matches at the
# first IoU threshold of the sweep).
SEEN_MATCH_IOU = 0.5
IOU_TYPES = ("bbox", "segm")


def metric_names() -> list[str]:
    return [f"AR@{k}" for k in MAX_DETS] + [f"AR_{a[0]}@{SIZE_BUDGET}" for a in AREA_LABELS[1:]]


def _load_gt(gt: dict | str | os.PathLike) -> dict:
    if isinstance(gt, dict):
        return gt
    return read_json(gt, "ground-truth annotations")


def _load_detections(detections: list | str | os.PathLike) -> list:
    """The detections as a list of dicts this module may modify (copies if the caller passed them)."""
    if isinstance(detections, (str, os.PathLike)):
        detections = read_json(detections, "detections")
        owned = True
    else:
        owned = False
    if not isinstance(detections, list):
        raise InputError("detections must be a JSON list of COCO results (image_id, bbox, segmentation, score)")
    if not owned:
        detections = [dict(d) if isinstance(d, dict) else d for d in detections]
    return detections


def _prepare_gt(data: dict, source: str,
                need_segm: bool) -> tuple[list[dict], dict[int, list[dict]], dict[int, dict]]:
    """Class-agnostic copies of the ground truth, per image in pycocotools' useCats=0 order."""
    for key in ("images", "annotations"):
        if not isinstance(data, dict) or key not in data:
            raise InputError(f"{source} has no '{key}' list; is it a COCO annotation file?")
    if need_segm:  # masks: the annotation validator (polygons, RLE, boxes taken from masks); a box-only file
        data, counts = validate_coco(data, source, categories=False, renumber=False)  # is fine for bbox alone
        log_counts(source, counts)
    images = {}
    for img in data["images"]:
        try:
            images[int(img["id"])] = {"id": int(img["id"]), "height": int(img["height"]), "width": int(img["width"])}
        except (KeyError, TypeError, ValueError):
            raise InputError(f"{source}: every image needs integer 'id', 'height' and 'width' "
                             f"(got {img!r:.200})") from None
    anns = data["annotations"]
    bad = count_unusable_ids(anns)
    if bad:
        log.warning("%s: %d annotation ids are 0, missing or duplicated; renumbering all from 1", source, bad)
    # COCOeval with useCats=0 visits ground truth category by category; keep that order so that
    # ties between equally good matches break the same way.
    cat_order = {c["id"]: i for i, c in enumerate(sorted(data.get("categories", []), key=lambda c: c["id"]))}
    order = sorted(range(len(anns)), key=lambda i: cat_order.get(anns[i].get("category_id"), len(cat_order)))
    per_image: dict[int, list[dict]] = defaultdict(list)
    copies = []
    for i in order:
        a = anns[i]
        for key in ("image_id", "area", "bbox") + (("segmentation",) if need_segm else ()):
            if key not in a:
                raise InputError(f"{source}: annotation {a.get('id')} has no '{key}'; fix or regenerate the file")
        if a["image_id"] not in images:
            raise InputError(f"{source}: annotation {a.get('id')} refers to image {a['image_id']}, "
                             "which is not in 'images'")
        c = {
            "id": (i + 1) if bad else a["id"],
            "image_id": a["image_id"],
            "category_id": 1,
            "iscrowd": int(a.get("iscrowd", 0)),
            "area": float(a["area"]),
            "bbox": a["bbox"],
            "segmentation": a.get("segmentation"),
            # Ground truth without the flag counts as unseen (plain class-agnostic AR).
            "seen": int(a.get("ignored_split", 0)) == 1,
        }
        per_image[c["image_id"]].append(c)
        copies.append(c)
    return copies, per_image, images


def _prepare_detections(dets: list, images: dict[int, dict], iou_types) -> dict[int, list[dict]]:
    """Detections grouped per image in file order, made class-agnostic (category 1) in place."""
    per_image: dict[int, list[dict]] = defaultdict(list)
    need_segm = "segm" in iou_types
    missing_images = non_finite = 0
    for d in dets:
        try:
            image_id = d["image_id"]
            score = float(d["score"])
        except (KeyError, TypeError, ValueError):
            raise InputError(f"detection {d!r:.200} needs 'image_id' and a numeric 'score' (COCO results "
                             "format)") from None
        if not math.isfinite(score):
            non_finite += 1
            continue
        if image_id not in images:
            missing_images += 1
            continue
        if "bbox" not in d and "segmentation" not in d:
            raise InputError(f"detection {d!r:.200} has neither 'bbox' nor 'segmentation'")
        if need_segm and "segmentation" not in d:
            raise InputError("detections have no 'segmentation' but segm evaluation was asked for; "
                             "pass --iou-types bbox or write masks")
        if "bbox" not in d:
            img = images[image_id]
            d["bbox"] = mask_utils.toBbox(ann_to_rle(d["segmentation"], img["height"], img["width"])).tolist()
        d["category_id"] = 1
        per_image[image_id].append(d)
    if non_finite:
        raise InputError(f"{non_finite} of {len(dets)} detections have a NaN or infinite score: the detector "
                         "diverged or the file is damaged; retrain (or predict again) rather than rank them")
    if missing_images:
        raise InputError(f"{missing_images} of {len(dets)} detections refer to images that are not in the ground "
                         "truth: the detections were made for another evaluation set; predict on --gt's images")
    return per_image


def _regions(anns: list[dict], iou_type: str, img: dict) -> list:
    if iou_type == "bbox":
        return [a["bbox"] for a in anns]
    h, w = img["height"], img["width"]
    out = []
    for a in anns:
        seg = a["segmentation"]
        # Compressed RLE goes to pycocotools as it is; polygons and uncompressed RLE are converted.
        if isinstance(seg, dict) and isinstance(seg.get("counts"), (str, bytes)):
            out.append(seg)
        else:
            out.append(ann_to_rle(seg, h, w))
    return out


def _seen_matches(dets: list[dict], gts: list[dict], iou_type: str, img: dict) -> list[int]:
    """Indices (into `dets`, already score-sorted and cut) of detections matched to seen-class GT.

    COCOeval's greedy matching at IoU 0.5 over all ground truth, with seen-class objects and crowd
    regions as ignore regions (sorted last), decides what each detection is matched to, exactly as
    the per-image evaluation of the OLN protocol does.
    """
    # Stable sort puts regular (unseen, non-crowd) objects first, as COCOeval does.
    gts = sorted(gts, key=lambda g: int(g["seen"] or g["iscrowd"]))
    crowd = [g["iscrowd"] for g in gts]
    ious = np.asarray(mask_utils.iou(_regions(dets, iou_type, img), _regions(gts, iou_type, img), crowd))
    ious = ious.reshape(len(dets), len(gts))
    seen = np.array([g["seen"] for g in gts], bool)
    if not (ious[:, seen] >= SEEN_MATCH_IOU).any():
        return []  # nothing can match a seen object: the common case
    ignore = [int(g["seen"] or g["iscrowd"]) for g in gts]
    matched = np.zeros(len(gts), bool)
    removed = []
    # Detections with no IoU >= 0.5 anywhere never match; skipping them changes nothing.
    for d in np.flatnonzero((ious >= SEEN_MATCH_IOU).any(axis=1)):
        row = ious[d]
        best, m = SEEN_MATCH_IOU, -1
        for g in range(len(gts)):
            if matched[g] and not crowd[g]:
                continue
            if m > -1 and not ignore[m] and ignore[g]:
                break
            if row[g] < best:
                continue
            best, m = row[g], g
        if m == -1:
            continue
        matched[m] = True
        if gts[m]["seen"]:
            removed.append(int(d))
    return removed


def _budget_detections(gt_per_image, det_per_image, images, iou_type: str) -> tuple[list[dict], int]:
    """Each image's top max(k) detections minus those matched to seen-class objects.

    The dicts are shared between IoU types: loadRes rewrites the same id/area/iscrowd into them.
    """
    kept, dropped = [], 0
    max_det = MAX_DETS[-1]
    for image_id, dets in det_per_image.items():
        if len(dets) > 1:
            order = np.argsort([-d["score"] for d in dets], kind="mergesort")[:max_det]
            dets = [dets[i] for i in order]
        gts = gt_per_image.get(image_id)
        if gts and any(g["seen"] for g in gts):
            removed = _seen_matches(dets, gts, iou_type, images[image_id])
            if removed:
                dropped += len(removed)
                gone = set(removed)
                dets = [d for i, d in enumerate(dets) if i not in gone]
        kept.extend(dets)
    return kept, dropped


def set_agnostic_params(ev) -> None:
    """Class-agnostic COCOeval settings of the protocol: useCats=0, the AR budgets and IoU 0.50:0.05:0.95."""
    ev.params.useCats = 0
    ev.params.maxDets = list(MAX_DETS)
    ev.params.iouThrs = IOU_THRESHOLDS.copy()


def _ar_from_recall(recall: np.ndarray, max_dets: list[int], area_labels: list[str]) -> dict[str, float]:
    """recall [T, K=1, A, M] -> AR metrics, averaging defined entries as COCOeval.summarize does."""
    def mean(values: np.ndarray) -> float:
        values = values[values > -1]
        return float(values.mean()) if values.size else -1.0

    out = {}
    for k in MAX_DETS:
        out[f"AR@{k}"] = mean(recall[:, :, area_labels.index("all"), max_dets.index(k)])
    for label in AREA_LABELS[1:]:
        out[f"AR_{label[0]}@{SIZE_BUDGET}"] = mean(recall[:, :, area_labels.index(label),
                                                          max_dets.index(SIZE_BUDGET)])
    return out


def _silent(*_args, **_kwargs) -> None:
    pass


def evaluate(gt: dict | str | os.PathLike, detections: list | str | os.PathLike,
             iou_types=IOU_TYPES) -> dict:
    """Cross-category AR@k: {"bbox": {"AR@10": .., .., "AR_l@100": ..}, "segm": {..}}.

    Seen-class ground truth (`ignored_split` 1) is ignored, and detections matched to it at IoU 0.5
    are removed before each image's top-k cut, so they do not use up the budget k. A metric whose
    ground truth is empty (e.g. no large unseen objects) is -1, as in COCOeval.

    AR@k equals OLN's COCOEvalXclassWrapper (checked against a pycocotools re-statement in
    tests). One simplification: which detections match seen objects is decided once, over all
    object sizes; OLN re-matches per size range (objects outside the range turn into ignore
    regions), which in rare cases changes AR_s/m/l@100 slightly.
    """
    from faster_coco_eval import COCO, COCOeval_faster

    iou_types = tuple(iou_types)
    for t in iou_types:
        if t not in IOU_TYPES:
            raise InputError(f"unknown IoU type {t!r}; choose from {', '.join(IOU_TYPES)}")
    source = str(gt) if not isinstance(gt, dict) else "ground truth"
    gt_anns, gt_per_image, images = _prepare_gt(_load_gt(gt), source, "segm" in iou_types)
    det_per_image = _prepare_detections(_load_detections(detections), images, iou_types)
    num_seen = sum(g["seen"] for g in gt_anns)
    unseen = [{k: v for k, v in g.items() if k != "seen"} for g in gt_anns if not g["seen"]]
    log.info("ground truth: %d images, %d unseen-class objects (%d crowd), %d seen-class objects ignored",
             len(images), len(unseen), sum(g["iscrowd"] for g in unseen), num_seen)
    gt_dataset = {"images": list(images.values()), "annotations": unseen,
                  "categories": [{"id": 1, "name": "object"}]}

    results = {}
    for iou_type in iou_types:
        dets, dropped = _budget_detections(gt_per_image, det_per_image, images, iou_type)
        log.info("%s: %d detections evaluated, %d matched to seen-class objects left out of the budget",
                 iou_type, len(dets), dropped)
        coco_gt = COCO(gt_dataset, print_function=_silent)
        coco_dt = coco_gt.loadRes(dets)
        ev = COCOeval_faster(coco_gt, coco_dt, iou_type, print_function=_silent)
        set_agnostic_params(ev)
        ev.evaluate()
        ev.accumulate()
        recall = np.asarray(ev.eval["recall"])
        results[iou_type] = _ar_from_recall(recall, list(ev.params.maxDets), list(ev.params.areaRngLbl))
        if not unseen:
            log.warning("no unseen-class ground truth: every AR is undefined (-1)")
    return results


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--gt", required=True, type=Path,
                        help="evaluation annotations (eval.json; `ignored_split` 1 marks seen classes)")
    parser.add_argument("--detections", required=True, type=Path, help="COCO results JSON")
    parser.add_argument("--out", required=True, type=Path, help="metrics JSON to write")
    parser.add_argument("--iou-types", nargs="+", default=list(IOU_TYPES), choices=IOU_TYPES,
                        help="box and/or mask IoU")


def run(args: argparse.Namespace) -> int:
    metrics = evaluate(args.gt, args.detections, args.iou_types)
    atomic_write_json(args.out, metrics, indent=2)
    for iou_type, values in metrics.items():
        log.info("%s: %s", iou_type, "  ".join(f"{k} {v:.4f}" for k, v in values.items()))
    log.info("metrics written to %s", args.out)
    return 0
