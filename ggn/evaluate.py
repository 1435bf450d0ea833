"""Cross-category average recall (AR@k) on unseen classes, class-agnostic as in OLN."""
from __future__ import annotations

import argparse
import logging
import math
import os
import re
from array import array
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
# Detections evaluated together. Recall at every budget is a sum over images of matched objects over a sum of
# objects, so evaluating images in chunks and adding the counts gives the numbers of one pass over all images,
# while only one chunk exists as COCO dicts (the rest stays columnar: about the size of the RLE strings).
CHUNK_DETECTIONS = 200_000
CHUNK_IMAGES = 2_000


def metric_names() -> list[str]:
    return [f"AR@{k}" for k in MAX_DETS] + [f"AR_{a[0]}@{SIZE_BUDGET}" for a in AREA_LABELS[1:]]


def _load_gt(gt: dict | str | os.PathLike) -> dict:
    if isinstance(gt, dict):
        return gt
    return read_json(gt, "ground-truth annotations")


def _iter_detections(detections: list | str | os.PathLike):
    """The detections one dict at a time; a file is parsed as a stream, never held whole in memory."""
    if not isinstance(detections, (str, os.PathLike)):
        if not isinstance(detections, list):
            raise InputError("detections must be a JSON list of COCO results (image_id, bbox, segmentation, score)")
        yield from detections
        return
    import ijson

    path = Path(detections)
    if not path.is_file():
        raise InputError(f"detections {path} does not exist; check the path (or run `ggn predict`)")
    with open(path, "rb") as f:
        head = f.read(4096).lstrip()
        if not head.startswith(b"["):
            raise InputError(f"detections {path} must be a JSON list of COCO results (image_id, bbox, "
                             "segmentation, score); it does not start with '['")
        f.seek(0)
        try:
            yield from ijson.items(f, "item", use_float=True)
        except ijson.JSONError as e:
            raise InputError(_json_error_hint(path, e)) from None


def _json_error_hint(path: Path, error: Exception) -> str:
    """What a JSON error in a detections file means: non-finite numbers (Python's json writes NaN and Infinity,
    which JSON has not), a cut file, or another fault."""
    text = " ".join(str(error).split())
    if re.search(r'(?<![\w"])(NaN|-?Infinity)(?![\w"])', text):
        return (f"detections {path} is not valid JSON: it holds NaN or Infinity, which JSON has not (Python's json "
                "writes them for non-finite numbers): the detector's scores or boxes are not finite, so it diverged; "
                f"retrain it (lower --lr), then predict again ({text:.200})")
    if "premature EOF" in text or "Incomplete JSON" in text:
        return (f"detections {path} is not valid JSON: it ends in the middle, so the file is truncated (a copy or "
                f"a write cut short); predict again ({text:.200})")
    return f"detections {path} is not valid JSON ({text:.200}); regenerate it with `ggn predict`"


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
        box = a["bbox"]
        if not (isinstance(box, list) and len(box) == 4) or min(box[2], box[3]) < 0:
            raise InputError(f"{source}: annotation {a.get('id')} has bbox {box!r:.80}; it must be [x, y, width, "
                             "height] with width and height >= 0 (corners [x1, y1, x2, y2] convert as [x1, y1, "
                             "x2 - x1, y2 - y1])")
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


class _Detections:
    """Validated detections in file order, held as columns: ids, scores and boxes in typed arrays, masks as
    their RLE strings. Per detection this is ~50 bytes plus the RLE, against ~1 kB as a parsed JSON dict."""

    def __init__(self, keep_masks: bool):
        self.image_ids = array("q")
        self.scores = array("d")
        self.boxes = array("d")
        self.counts: list | None = [] if keep_masks else None

    def __len__(self) -> int:
        return len(self.scores)

    def dicts(self, indices, image: dict) -> list[dict]:
        """COCO result dicts (category 1) for the given rows, all of one image."""
        size = [image["height"], image["width"]]
        boxes, out = self.boxes, []
        for i in indices:
            i = int(i)
            d = {"image_id": image["id"], "category_id": 1, "bbox": list(boxes[4 * i:4 * i + 4]),
                 "score": self.scores[i]}
            if self.counts is not None:
                d["segmentation"] = {"size": size, "counts": self.counts[i]}
            out.append(d)
        return out


def _read_detections(detections, images: dict[int, dict], iou_types) -> _Detections:
    """Every detection checked (image known, finite score, a box or mask of the image's size) and stored
    columnar. Polygons and uncompressed RLE are compressed; a missing box is taken from the mask."""
    need_segm = "segm" in iou_types
    store = _Detections(keep_masks=need_segm)
    total = missing_images = non_finite = string_ids = negative_boxes = 0
    for d in _iter_detections(detections):
        total += 1
        try:
            image_id = d["image_id"]
            score = float(d["score"])
        except (KeyError, TypeError, ValueError):
            raise InputError(f"detection {d!r:.200} needs 'image_id' and a numeric 'score' (COCO results "
                             "format)") from None
        if not math.isfinite(score):
            non_finite += 1
            continue
        img = images.get(image_id)
        if img is None:
            if isinstance(image_id, str) and image_id.strip().lstrip("-").isdigit() and int(image_id) in images:
                string_ids += 1  # "12" for 12: the writer quoted the ids
            else:
                missing_images += 1
            continue
        if "bbox" not in d and "segmentation" not in d:
            raise InputError(f"detection {d!r:.200} has neither 'bbox' nor 'segmentation'")
        if need_segm and "segmentation" not in d:
            raise InputError("detections have no 'segmentation' but segm evaluation was asked for; "
                             "pass --iou-types bbox or write masks")
        rle = None
        if "segmentation" in d and (need_segm or "bbox" not in d):
            seg = d["segmentation"]
            try:
                if isinstance(seg, dict) and isinstance(seg.get("counts"), (str, bytes)):
                    rle = seg
                else:
                    rle = ann_to_rle(seg, img["height"], img["width"])
                size = [int(v) for v in rle["size"]]
            except (KeyError, TypeError, ValueError, IndexError):
                raise InputError(f"detection {d!r:.200} has a segmentation that is neither polygons nor RLE") from None
            if size != [img["height"], img["width"]]:
                raise InputError(f"a detection on image {image_id} has a mask of size {size}, but the image is "
                                 f"{[img['height'], img['width']]} (height, width): masks must be at the "
                                 "image's resolution")
        if "bbox" in d:
            box = d["bbox"]
            if not (isinstance(box, list) and len(box) == 4):
                raise InputError(f"detection {d!r:.200}: 'bbox' must be [x, y, width, height]")
            if min(box[2], box[3]) < 0:
                negative_boxes += 1
        else:
            box = mask_utils.toBbox(ann_to_rle(rle, img["height"], img["width"])).tolist()
        store.image_ids.append(image_id)
        store.scores.append(score)
        store.boxes.extend(float(v) for v in box)
        if need_segm:
            counts = rle["counts"]
            store.counts.append(counts.decode("ascii") if isinstance(counts, bytes) else counts)
    if non_finite:
        raise InputError(f"{non_finite} of {total} detections have a NaN or infinite score: the detector "
                         "diverged or the file is damaged; retrain (or predict again) rather than rank them")
    if string_ids:
        raise InputError(f"{string_ids} of {total} detections give their image_id as a string (e.g. \"12\") where "
                         "the ground truth has the number 12: COCO results use integer ids; write them as numbers")
    if negative_boxes:
        raise InputError(f"{negative_boxes} of {total} detections have a box of negative width or height: 'bbox' "
                         "must be [x, y, width, height] with width and height >= 0 (corners [x1, y1, x2, y2] "
                         "convert as [x1, y1, x2 - x1, y2 - y1], with x1 <= x2)")
    if missing_images:
        raise InputError(f"{missing_images} of {total} detections refer to images that are not in the ground "
                         "truth: the detections were made for another evaluation set; predict on --gt's images")
    return store


def _ranked_rows(store: _Detections) -> dict[int, np.ndarray]:
    """image id -> its rows, best score first (stable: file order among ties), cut to the largest budget."""
    if not len(store):
        return {}
    ids = np.frombuffer(store.image_ids, dtype=np.int64)
    scores = np.frombuffer(store.scores, dtype=np.float64)
    by_image = np.argsort(ids, kind="stable")
    unique, starts = np.unique(ids[by_image], return_index=True)
    out = {}
    for image_id, rows in zip(unique.tolist(), np.split(by_image, starts[1:])):
        if len(rows) > 1:
            rows = rows[np.argsort(-scores[rows], kind="mergesort")[:MAX_DETS[-1]]]
        out[image_id] = rows
    return out


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


def _budget_detections(gt_per_image, ranked: dict[int, np.ndarray], store: _Detections, images,
                       image_ids, iou_type: str) -> tuple[list[dict], int]:
    """For the given images, each one's top max(k) detections minus those matched to seen-class objects."""
    kept, dropped = [], 0
    for image_id in image_ids:
        rows = ranked.get(image_id)
        if rows is None:
            continue
        dets = store.dicts(rows, images[image_id])
        gts = gt_per_image.get(image_id)
        if gts and any(g["seen"] for g in gts):
            removed = _seen_matches(dets, gts, iou_type, images[image_id])
            if removed:
                dropped += len(removed)
                gone = set(removed)
                dets = [d for i, d in enumerate(dets) if i not in gone]
        kept.extend(dets)
    return kept, dropped


def _chunks(image_ids: list[int], ranked: dict[int, np.ndarray], max_dets: int, max_images: int):
    chunk, count = [], 0
    for image_id in image_ids:
        chunk.append(image_id)
        count += len(ranked.get(image_id, ()))
        if count >= max_dets or len(chunk) >= max_images:
            yield chunk
            chunk, count = [], 0
    if chunk:
        yield chunk


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


def _unignored_counts(gts: list[dict], area_ranges) -> np.ndarray:
    """Per area range, the ground truth COCOeval does not ignore (not crowd, area inside the range)."""
    areas = np.array([g["area"] for g in gts if not g["iscrowd"]], dtype=np.float64)
    return np.array([int(((areas >= lo) & (areas <= hi)).sum()) for lo, hi in area_ranges], dtype=np.int64)


def evaluate(gt: dict | str | os.PathLike, detections: list | str | os.PathLike,
             iou_types=IOU_TYPES, chunk_detections: int = CHUNK_DETECTIONS) -> dict:
    """Cross-category AR@k: {"bbox": {"AR@10": .., .., "AR_l@100": ..}, "segm": {..}}.

    Seen-class ground truth (`ignored_split` 1) is ignored, and detections matched to it at IoU 0.5
    are removed before each image's top-k cut, so they do not use up the budget k. A metric whose
    ground truth is empty (e.g. no large unseen objects) is -1, as in COCOeval.

    AR@k equals OLN's COCOEvalXclassWrapper (checked against a pycocotools re-statement in
    tests). One simplification: which detections match seen objects is decided once, over all
    object sizes; OLN re-matches per size range (objects outside the range turn into ignore
    regions), which in rare cases changes AR_s/m/l@100 slightly.

    Memory: a detections file is parsed as a stream into columns, and COCOeval runs on chunks of about
    `chunk_detections` detections. Recall is (matched objects) / (objects), both sums over images, so the
    chunks' counts add up to exactly the numbers of one COCOeval over everything.
    """
    from faster_coco_eval import COCO, COCOeval_faster

    iou_types = tuple(iou_types)
    for t in iou_types:
        if t not in IOU_TYPES:
            raise InputError(f"unknown IoU type {t!r}; choose from {', '.join(IOU_TYPES)}")
    source = str(gt) if not isinstance(gt, dict) else "ground truth"
    gt_anns, gt_per_image, images = _prepare_gt(_load_gt(gt), source, "segm" in iou_types)
    store = _read_detections(detections, images, iou_types)
    ranked = _ranked_rows(store)
    num_seen = sum(g["seen"] for g in gt_anns)
    unseen_per_image: dict[int, list[dict]] = defaultdict(list)
    for g in gt_anns:
        if not g["seen"]:
            unseen_per_image[g["image_id"]].append({k: v for k, v in g.items() if k != "seen"})
    num_unseen = sum(len(v) for v in unseen_per_image.values())
    log.info("ground truth: %d images, %d unseen-class objects (%d crowd), %d seen-class objects ignored; "
             "%d detections", len(images), num_unseen,
             sum(g["iscrowd"] for v in unseen_per_image.values() for g in v), num_seen, len(store))
    image_ids = sorted(images)
    chunks = list(_chunks(image_ids, ranked, chunk_detections, CHUNK_IMAGES)) or [[]]

    matched = {t: 0 for t in iou_types}  # per IoU type, [T, A, M] matched objects summed over chunks
    npig = 0  # [A] objects COCOeval counts (not crowd, area in range), summed over chunks
    evaluated = {t: 0 for t in iou_types}
    dropped = {t: 0 for t in iou_types}
    for chunk in chunks:
        # Each image's ground truth in the protocol's order (category by category, as useCats=0 visits it).
        unseen = [g for image_id in chunk for g in unseen_per_image.get(image_id, ())]
        gt_dataset = {"images": [images[i] for i in chunk], "annotations": unseen,
                      "categories": [{"id": 1, "name": "object"}]}
        counts = None
        for iou_type in iou_types:
            dets, chunk_dropped = _budget_detections(gt_per_image, ranked, store, images, chunk, iou_type)
            evaluated[iou_type] += len(dets)
            dropped[iou_type] += chunk_dropped
            coco_gt = COCO(gt_dataset, print_function=_silent)
            coco_dt = coco_gt.loadRes(dets)
            ev = COCOeval_faster(coco_gt, coco_dt, iou_type, print_function=_silent)
            set_agnostic_params(ev)
            ev.evaluate()
            ev.accumulate()
            if counts is None:
                counts = _unignored_counts(unseen, ev.params.areaRng)
                npig = npig + counts
            recall = np.asarray(ev.eval["recall"])[:, 0]  # [T, A, M]
            hits = np.where(recall > -1, recall, 0.0) * counts[None, :, None]
            if np.abs(hits - np.rint(hits)).max(initial=0.0) > 1e-6:
                raise RuntimeError("COCOeval's recall is not matched/objects with the objects counted here; "
                                   "chunked evaluation would differ from one pass (report this)")
            matched[iou_type] = matched[iou_type] + np.rint(hits).astype(np.int64)
            max_dets, area_labels = list(ev.params.maxDets), list(ev.params.areaRngLbl)

    results = {}
    for iou_type in iou_types:
        log.info("%s: %d detections evaluated in %d chunk(s), %d matched to seen-class objects left out of the "
                 "budget", iou_type, evaluated[iou_type], len(chunks), dropped[iou_type])
        with np.errstate(invalid="ignore", divide="ignore"):
            recall = np.where(npig[None, :, None] > 0, matched[iou_type] / np.maximum(npig, 1)[None, :, None], -1.0)
        results[iou_type] = _ar_from_recall(recall[:, None], max_dets, area_labels)
    if not num_unseen:
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
