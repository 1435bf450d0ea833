"""`ggn rank-oln`: Pseudo-OLN, re-ranking a shard's pseudo-GT candidates with an OLN detector.

The GGN-OLN row of the paper ranks the grouping's candidates with the OLN detector trained on the seen
classes (Generic-Grouping ``pa_lib/oln_ranker.py``, ``generate_pa_proposals_with_oln``): every candidate that
passed the grouping's size and edge filters, before its NMS, gets

    combined = pa_score / 2 + box_score + box_score * centerness

where ``pa_score`` is the grouping's score (1 - rank_method 3's boundary-minus-interior potential),
``box_score`` is the OLN box head's score of the candidate's tight box taken as a proposal of objectness 1,
i.e. sqrt(1 x sigmoid(predicted IoU)) (``compute_roi_score_oln``, with the RoI head's test_cfg None: no NMS,
one score per box), and ``centerness`` is sigmoid of the RPN objectness (learned as centerness) at the anchor
of highest IoU with that box over all levels (``compute_rpn_score_oln``). Candidates are then sorted by the
combined score and suppressed greedily when their mask IoU with a better kept one exceeds ``--nms`` (the
grouping's 0.2), and the best ``--top-k`` (20) are written.

Input: a shard of ``ggn extract`` made with ``--top-k 0 --propose-params nms=0`` (every candidate, none
suppressed: the workflow asks for that when an experiment has ``rank.by: oln``). Output: a shard of the same
schema (``score`` is the combined score, ``rank`` its order; ``gt_iou`` is kept), which ``ggn merge`` reads
like any other. Resumable: parts are flushed every ``--flush-every`` images, as in ``ggn extract``.

Resolution: the reference scores with the extraction pipeline's image, i.e. at the native resolution with
scale factor 1 (pa_extract.py's test pipeline has no Resize; oln_ranker.py runs `extract_feat` on that image
and passes boxes in its coordinates). `--resolution native` (the default) does the same: the OLN network sees
the unresized image, padded at the bottom/right to a multiple of 32 (torchvision derives anchor strides from
the padded size), and the boxes stay in image coordinates. `--resolution detector` resizes image and boxes
to the detector's training scale (min_size/max_size) instead. The NMS compares masks at the original
resolution, which for a native-resolution potential is the reference's.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import logging
import time
from pathlib import Path
from typing import Iterator

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from pycocotools import mask as mask_utils
from torchvision.models.detection.transform import resize_boxes
from torchvision.ops import box_iou

from ggn.extract import META_SHARD, SHARD_SCHEMA, ShardParts, _load_coco, _read, summary_path_for
from ggn.io import InputError, atomic_write_json, file_sha256
from ggn.merge import _open_shard

log = logging.getLogger(__name__)

PA_WEIGHT = 0.5  # oln_ranker.py: pa_scores / 2
NMS = 0.2        # pa_extract.py's pa_to_masks nms, which the OLN ranker applies after re-scoring
TOP_K = 20       # candidates kept per image, as the grouping keeps
RESOLUTIONS = ("native", "detector")
IOU_CHUNK = 64   # candidate boxes per anchor-IoU block (memory: chunk x anchors floats)


@torch.inference_mode()
def oln_box_scores(model, image: np.ndarray, boxes: np.ndarray, device: torch.device,
                   resolution: str = "native") -> tuple[np.ndarray, np.ndarray]:
    """(box_score, centerness) of xyxy `boxes` (original image coordinates) under an OLN detector, with the
    image at its native size (scale factor 1, the reference) or resized as the detector was trained."""
    from torchvision.models.detection.image_list import ImageList

    from ggn.detector.oln import flatten_levels
    from ggn.detector.predict import image_tensor

    if resolution not in RESOLUTIONS:
        raise ValueError(f"resolution {resolution!r}: choose one of {', '.join(RESOLUTIONS)}")
    if resolution == "native":  # the reference's scale factor 1: the image as it is (no shrinking, however large)
        tensor = torch.from_numpy(image).to(device).permute(2, 0, 1).float().div_(255)
        normalized = model.transform.normalize(tensor)
        batch = ImageList(model.transform.batch_images([normalized], size_divisible=32),
                          [tuple(image.shape[:2])])
    else:
        tensor = image_tensor(model, image, device)  # a huge image shrunk a channel at a time, as predict does
        batch, _ = model.transform([tensor])
    features = model.backbone(batch.tensors)
    resized = batch.image_sizes[0]
    scaled = resize_boxes(torch.as_tensor(boxes, dtype=torch.float32, device=device), image.shape[:2], resized)

    roi = model.roi_heads
    iou_logits, _ = roi.box_predictor(roi.box_head(roi.box_roi_pool(features, [scaled], batch.image_sizes)))
    box_score = (iou_logits.float().sigmoid() * 1.0).sqrt()  # sqrt(rpn score x IoU score), rpn score 1

    levels = list(features.values())
    objectness, deltas = model.rpn.head(levels)
    anchors = model.rpn.anchor_generator(batch, levels)[0]
    objectness, _ = flatten_levels(objectness, deltas)
    best = torch.cat([box_iou(scaled[i:i + IOU_CHUNK], anchors).argmax(dim=1)
                      for i in range(0, len(scaled), IOU_CHUNK)])
    centerness = objectness[0, best].float().sigmoid()
    return box_score.cpu().numpy(), centerness.cpu().numpy()


def combine(pa_score: np.ndarray, box_score: np.ndarray, centerness: np.ndarray,
            pa_weight: float = PA_WEIGHT) -> np.ndarray:
    return pa_weight * pa_score + box_score + box_score * centerness


def mask_nms(rles: list[dict], scores: np.ndarray, iou_threshold: float, top_k: int) -> np.ndarray:
    """Indices kept by greedy NMS on mask IoU (suppressed when IoU > threshold), best first, at most top_k."""
    order = np.argsort(-scores, kind="stable")
    if not iou_threshold or iou_threshold <= 0 or len(order) == 0:
        return order[:top_k]
    ious = np.asarray(mask_utils.iou(rles, rles, [0] * len(rles)), dtype=np.float64).reshape(len(rles), len(rles))
    kept: list[int] = []
    for i in order:
        if all(ious[i, j] <= iou_threshold for j in kept):
            kept.append(int(i))
            if len(kept) >= top_k:
                break
    return np.asarray(kept, dtype=np.int64)


def iter_images(pf: pq.ParquetFile, path: Path, batch_rows: int = 8192) -> Iterator[tuple[int, pa.Table]]:
    """(image_id, its rows) of a shard, streaming; an image's rows are contiguous (the extraction contract)."""
    carry: pa.Table | None = None
    seen: set[int] = set()
    for batch in pf.iter_batches(batch_size=batch_rows, columns=SHARD_SCHEMA.names):
        table = pa.Table.from_batches([batch]).cast(SHARD_SCHEMA)
        if carry is not None:
            table = pa.concat_tables([carry, table])
        ids = table["image_id"].to_numpy()
        if len(ids) == 0:
            continue
        starts = np.flatnonzero(np.r_[True, ids[1:] != ids[:-1]])
        ends = np.r_[starts[1:], len(ids)]
        for s, e in zip(starts[:-1], ends[:-1]):
            yield _once(int(ids[s]), seen, path), table.slice(s, e - s)
        carry = table.slice(starts[-1])
    if carry is not None and carry.num_rows:
        yield _once(int(carry["image_id"][0].as_py()), seen, path), carry


def _once(image_id: int, seen: set[int], path: Path) -> int:
    if image_id in seen:
        raise InputError(f"image {image_id} appears in two places of shard {path}; it was not written by "
                         "`ggn extract` (extract it again)")
    seen.add(image_id)
    return image_id


def rerank_rows(rows: pa.Table, box_score: np.ndarray, centerness: np.ndarray, nms: float, top_k: int,
                pa_weight: float) -> dict[str, list]:
    """One image's candidates, re-scored, suppressed and cut to top_k, as SHARD_SCHEMA columns."""
    combined = combine(rows["score"].to_numpy().astype(np.float64), box_score, centerness, pa_weight)
    height, width = int(rows["height"][0].as_py()), int(rows["width"][0].as_py())
    rles = [{"size": [height, width], "counts": c.encode("ascii")} for c in rows["rle"].to_pylist()]
    kept = mask_nms(rles, combined, nms, top_k)
    out = rows.take(pa.array(kept)).to_pydict()
    out["rank"] = list(range(len(kept)))
    out["score"] = combined[kept].astype(np.float32).astype(float).tolist()
    return out


def rank_shard(shard: str | Path, checkpoint: str | Path, annotations: str | Path, images: str | Path,
               out: str | Path, *, nms: float = NMS, top_k: int = TOP_K, pa_weight: float = PA_WEIGHT,
               resolution: str = "native", device: str = "auto", flush_every: int = 64, threads: int = 0) -> dict:
    from tqdm import tqdm

    from ggn.detector.model import load_detector
    from ggn.io import pick_device

    shard, checkpoint, images, out = Path(shard), Path(checkpoint), Path(images), Path(out)
    if out.exists():
        log.info("%s already exists; nothing to do (delete it to rank again)", out)
        summary = summary_path_for(out)
        return json.loads(summary.read_text()) if summary.is_file() else {}
    if top_k < 1 or flush_every < 1:
        raise InputError("--top-k and --flush-every must be >= 1")
    if resolution not in RESOLUTIONS:
        raise InputError(f"--resolution {resolution!r}: choose one of {', '.join(RESOLUTIONS)}")
    shard_file = _open_shard(shard)  # exists, readable, extract's columns
    shard_meta_raw = (shard_file.schema_arrow.metadata or {}).get(META_SHARD)
    if not checkpoint.is_file():
        raise InputError(f"OLN checkpoint {checkpoint} does not exist; train the row's baseline with "
                         "`ggn train-detector --kind oln` first")
    if not images.is_dir():
        raise InputError(f"image folder {images} does not exist; check --images")
    coco, coco_sha = _load_coco(Path(annotations))
    infos = {int(im["id"]): im for im in coco["images"]}
    del coco

    settings = {"shard": file_sha256(shard), "checkpoint": file_sha256(checkpoint), "annotations": coco_sha,
                "nms": nms, "top_k": top_k, "pa_weight": pa_weight, "resolution": resolution}
    parts = ShardParts(out, hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest())
    if threads:
        torch.set_num_threads(threads)
    dev = pick_device(device)
    model, config = load_detector(checkpoint, dev)
    if config.get("kind") != "oln":
        raise InputError(f"{checkpoint} is a {config.get('kind', 'maskrcnn')!r} detector; Pseudo-OLN ranking needs "
                         "an OLN one (the row's baseline trained with detector.kind: oln)")

    bar = tqdm(total=shard_file.metadata.num_rows, unit="cand", desc=f"rank-oln {shard.name}", dynamic_ncols=True)
    pending: list[dict[str, list]] = []
    pending_ids: list[int] = []
    pending_skipped: dict[int, str] = {}
    started = time.perf_counter()
    candidates_in = 0

    def flush() -> None:
        nonlocal started, pending, pending_ids, pending_skipped
        if not pending_ids:
            return
        rows = {name: [v for part in pending for v in part[name]] for name in SHARD_SCHEMA.names}
        parts.write(rows, pending_ids, pending_skipped, time.perf_counter() - started)
        pending, pending_ids, pending_skipped, started = [], [], {}, time.perf_counter()

    for image_id, rows in iter_images(shard_file, shard):
        bar.update(rows.num_rows)
        candidates_in += rows.num_rows
        if image_id in parts.done:
            continue
        info = infos.get(image_id)
        image = _read(images, info) if info is not None else f"image {image_id} is not in {annotations}"
        if isinstance(image, str):
            pending_skipped[image_id] = image
        else:
            boxes = np.asarray(rows["bbox"].to_pylist(), dtype=np.float64)
            boxes[:, 2:] += boxes[:, :2]
            box_score, centerness = oln_box_scores(model, image, boxes, dev, resolution)
            pending.append(rerank_rows(rows, box_score, centerness, nms, top_k, pa_weight))
        pending_ids.append(image_id)
        if len(pending_ids) >= flush_every:
            flush()
    flush()
    bar.close()

    meta = json.loads(shard_meta_raw) if shard_meta_raw else {}
    summary = {
        "shard": str(shard), "checkpoint": str(checkpoint), "images": len(parts.done),
        "images_skipped": len(parts.skipped), "skipped": {str(k): v for k, v in sorted(parts.skipped.items())},
        "candidates_in": candidates_in, "candidates_out": parts.candidates,
        "seconds": round(parts.seconds, 3), "seconds_per_image": round(parts.seconds / max(len(parts.done), 1), 4),
        "nms": nms, "top_k": top_k, "pa_weight": pa_weight, "resolution": resolution, "out": str(out),
    }
    atomic_write_json(summary_path_for(out), summary, indent=2)
    meta["images_skipped"] = int(meta.get("images_skipped", 0)) + len(parts.skipped)
    meta["ranked_by"] = {"method": "oln", "checkpoint": str(checkpoint), "nms": nms, "top_k": top_k,
                         "pa_weight": pa_weight}
    parts.finalize(meta)
    log.info("ranked %d images (%d skipped): %d candidates -> %d, %.3f s/image -> %s", len(parts.done),
             len(parts.skipped), candidates_in, parts.candidates, summary["seconds_per_image"], out)
    for iid, reason in sorted(parts.skipped.items()):
        log.warning("skipped image %d: %s", iid, reason)
    return summary


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--shard", required=True,
                        help="shard of `ggn extract --top-k 0 --propose-params nms=0` (every candidate, unsuppressed)")
    parser.add_argument("--checkpoint", required=True,
                        help="OLN detector trained on the seen classes (`ggn train-detector --kind oln`)")
    parser.add_argument("--annotations", required=True, help="the COCO file the shard was extracted from")
    parser.add_argument("--images", required=True, help="image folder; images are found as DIR/file_name")
    parser.add_argument("--out", required=True, help="output shard (same schema; score = combined score)")
    parser.add_argument("--nms", type=float, default=NMS,
                        help="mask IoU above which a lower-ranked candidate is suppressed (0: none)")
    parser.add_argument("--top-k", type=int, default=TOP_K, help="candidates kept per image after the NMS")
    parser.add_argument("--pa-weight", type=float, default=PA_WEIGHT,
                        help="weight of the grouping score in pa_weight*pa + box + box*centerness")
    parser.add_argument("--resolution", choices=RESOLUTIONS, default="native",
                        help="native: the OLN network sees the image at its own size, scale factor 1 (the reference: "
                             "the extraction pipeline's image); detector: resized to the detector's min/max size")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, ...")
    parser.add_argument("--flush-every", type=int, default=64, help="images per flushed part (the unit of resuming)")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")


def run(args: argparse.Namespace) -> int:
    rank_shard(args.shard, args.checkpoint, args.annotations, args.images, args.out, nms=args.nms,
               top_k=args.top_k, pa_weight=args.pa_weight, device=args.device, flush_every=args.flush_every,
               resolution=args.resolution, threads=args.threads)
    return 0
