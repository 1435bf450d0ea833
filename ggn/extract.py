"""`ggn extract`: PA network + grouping + ranking on one shard of images -> candidate masks as parquet.

Sharding: the images of the annotation file are sorted by id; the image at position k of that list
belongs to shard k % num_shards. Every image therefore lives in exactly one shard, and the rows of one
image are contiguous in its shard (``ggn merge`` relies on both).

Resuming: work is flushed every ``--flush-every`` images as one parquet part file in ``{out}.parts/``,
written atomically (temporary file + rename). Each part carries, in its parquet key-value metadata,
the ids of every image it covers -- also images with zero candidates and images skipped as unreadable --
so the parts themselves are the record of what is done: a killed shard restarts after its last flushed
part and never repeats or loses an image. The parts also carry a fingerprint of the inputs and settings
(checkpoint and annotation file contents, shard, resolution, grouping parameters); parts made with other
inputs are refused rather than mixed in. When every image is done the parts are streamed into ``{out}``
(atomically), the summary is written to ``{out}.summary.json`` and the parts folder is removed.

Row layout (``SHARD_SCHEMA``): one row per candidate; ``rank`` counts from 0 (best) within its image;
``gt_iou`` is the candidate's best IoU with the image's non-crowd ground-truth masks in the annotation
file (crowd regions are left out, as the reference's ground truth for it: coco_split.py `_parse_ann_info`
puts crowd boxes aside and keeps no crowd mask), 0.0 for an image without such annotations in a file that
has them, and null when the file carries no "annotations" list at all
(image lists such as ImageNet) or with ``--no-gt``.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import shutil
import time
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image
from pycocotools import mask as mask_utils

from ggn.io import InputError, atomic_open, atomic_write_json, file_sha256
from ggn.masks import ann_to_rle
from ggn.precision import add_amp_argument

log = logging.getLogger(__name__)

SHARD_SCHEMA = pa.schema([
    pa.field("image_id", pa.int64(), nullable=False),
    pa.field("rank", pa.int32(), nullable=False),
    pa.field("score", pa.float32(), nullable=False),
    pa.field("gt_iou", pa.float32(), nullable=True),
    pa.field("bbox", pa.list_(pa.float32(), 4), nullable=False),
    pa.field("area", pa.float64(), nullable=False),
    pa.field("height", pa.int32(), nullable=False),
    pa.field("width", pa.int32(), nullable=False),
    pa.field("rle", pa.string(), nullable=False),
])

# Keys of the parquet key-value metadata of each part file (and of the finished shard).
# Network inputs above this many pixels are skipped (counted): the PA network's and the grouping's memory grows
# with the input (native resolution, as the paper rows run, of a 10000 x 10000 photo would need tens of GB).
MAX_INPUT_PIXELS = 4096 * 4096
META_DONE = b"ggn.done_image_ids"
META_SKIPPED = b"ggn.skipped"
META_SECONDS = b"ggn.seconds"
META_FINGERPRINT = b"ggn.fingerprint"
META_SHARD = b"ggn.shard"


def shard_image_ids(image_ids: Iterable[int], shard: int, num_shards: int) -> list[int]:
    """Ids of the images in `shard`: position k of the id-sorted list goes to shard k % num_shards."""
    if num_shards < 1 or not 0 <= shard < num_shards:
        raise InputError(f"--shard {shard} --num-shards {num_shards}: need 0 <= shard < num_shards")
    return sorted(int(i) for i in image_ids)[shard::num_shards]


def parts_dir_for(out: str | os.PathLike) -> Path:
    out = Path(out)
    return out.with_name(out.name + ".parts")


def summary_path_for(out: str | os.PathLike) -> Path:
    out = Path(out)
    return out.with_name(out.name + ".summary.json")


# ----------------------------------------------------------------------------------------------------
# Ground truth and candidate rows


class GroundTruth:
    """Seen-class non-crowd GT masks of the images of one shard as RLEs, for the `gt_iou` column. Crowd
    regions are not ground truth here, as in the reference (its `gt_masks` hold no crowd region), so a
    candidate inside a crowd keeps a low gt_iou and can become pseudo-GT."""

    def __init__(self, coco: dict, image_ids: Iterable[int], use_gt: bool = True):
        self.available = use_gt and isinstance(coco.get("annotations"), list)
        wanted = set(int(i) for i in image_ids)
        self.infos = {int(img["id"]): img for img in coco["images"] if int(img["id"]) in wanted}
        self._anns: dict[int, list[dict]] = {}
        if self.available:
            for ann in coco["annotations"]:
                iid = int(ann["image_id"])
                if iid in wanted and ann.get("segmentation") and not ann.get("iscrowd", 0):
                    self._anns.setdefault(iid, []).append(ann)

    def for_image(self, image_id: int) -> tuple[list[dict], list[int]] | None:
        """(RLEs, iscrowd flags) of the image's annotated masks, or None when the file has no GT."""
        if not self.available:
            return None
        info = self.infos[image_id]
        h, w = int(info["height"]), int(info["width"])
        anns = self._anns.get(image_id, [])
        return ([ann_to_rle(a["segmentation"], h, w) for a in anns],
                [int(bool(a.get("iscrowd", 0))) for a in anns])


def resize_masks(masks: np.ndarray, height: int, width: int) -> np.ndarray:
    """Boolean [N,h,w] -> [N,height,width]: bilinear resize of the 0/1 mask thresholded at 0.5,
    which keeps the outline smooth where nearest-neighbour would make a staircase."""
    if masks.shape[1:] == (height, width):
        return masks.astype(bool, copy=False)
    out = np.zeros((len(masks), height, width), dtype=bool)
    for i, m in enumerate(masks):
        img = Image.fromarray(m.astype(np.float32), mode="F")
        out[i] = np.asarray(img.resize((width, height), Image.BILINEAR)) >= 0.5
    return out


def candidate_rows(image_id: int, masks: np.ndarray, scores: np.ndarray, height: int, width: int,
                   gt: tuple[list[dict], list[int]] | None) -> dict[str, list]:
    """Columns of SHARD_SCHEMA for one image's ranked candidates (best first, any resolution).

    Candidates that vanish when resized to the original size are dropped; ranks stay consecutive.
    """
    # One mask at a time at the original size: on a 10000 x 10000 image each is 100 MB (400 MB while resized),
    # so the candidates of an image are never all there at once.
    masks = np.asarray(masks, dtype=bool)
    rles, area_list, keep = [], [], []
    for i in range(len(masks)):
        full = resize_masks(masks[i:i + 1], height, width)[0]
        area = int(np.count_nonzero(full))  # mask_utils.area overflows on >255 masks with numpy 2.5
        if area:
            keep.append(i)
            area_list.append(area)
            rles.append(mask_utils.encode(np.asfortranarray(full.astype(np.uint8))))
        del full
    scores = np.asarray(scores, dtype=np.float32)[keep]
    n = len(rles)
    rows: dict[str, list] = {name: [] for name in SHARD_SCHEMA.names}
    if n == 0:
        return rows
    boxes = mask_utils.toBbox(rles)
    areas = np.asarray(area_list, dtype=np.int64)
    if gt is None:
        gt_iou: list[float | None] = [None] * n
    elif len(gt[0]) == 0:
        gt_iou = [0.0] * n
    else:
        gt_iou = np.asarray(mask_utils.iou(rles, gt[0], gt[1])).max(axis=1).astype(float).tolist()
    rows["image_id"] = [int(image_id)] * n
    rows["rank"] = list(range(n))
    rows["score"] = scores.astype(float).tolist()
    rows["gt_iou"] = gt_iou
    rows["bbox"] = boxes.astype(float).tolist()
    rows["area"] = areas.astype(float).tolist()
    rows["height"] = [int(height)] * n
    rows["width"] = [int(width)] * n
    rows["rle"] = [r["counts"].decode("ascii") for r in rles]
    return rows


def propose_rows(image_id: int, affinity: np.ndarray, height: int, width: int,
                 gt: tuple[list[dict], list[int]] | None, top_k: int, params: dict) -> dict[str, list]:
    """Grouping and ranking (pa_lib.propose) of one affinity map, then rows at the original size.

    A plain top-level function so that a process pool can run it next to the GPU.
    """
    import pa_lib

    masks, scores = pa_lib.propose(affinity, top_k=top_k, **params)
    return candidate_rows(image_id, masks, scores, height, width, gt)


def _concat_rows(parts: list[dict[str, list]]) -> dict[str, list]:
    rows: dict[str, list] = {name: [] for name in SHARD_SCHEMA.names}
    for p in parts:
        for name in rows:
            rows[name].extend(p[name])
    return rows


# ----------------------------------------------------------------------------------------------------
# Parts folder: the resumable record of a shard in progress


class ShardParts:
    """Atomically written parquet parts in `{out}.parts/`; their metadata says which images are done."""

    def __init__(self, out: Path, fingerprint: str):
        self.out = Path(out)
        self.dir = parts_dir_for(out)
        self.fingerprint = fingerprint
        self.done: set[int] = set()
        self.skipped: dict[int, str] = {}
        self.seconds = 0.0
        self.candidates = 0
        self.paths: list[Path] = []
        if self.dir.is_dir():
            self._load()

    def _load(self) -> None:
        for tmp in self.dir.glob(".*.tmp"):  # a write torn by a kill
            tmp.unlink(missing_ok=True)
        for path in sorted(self.dir.glob("part-*.parquet")):
            try:
                meta = pq.read_metadata(path)
            except Exception as e:
                raise InputError(f"part file {path} is unreadable ({e}); delete {self.dir} to start the shard over")
            kv = meta.metadata or {}
            if kv.get(META_FINGERPRINT, b"").decode() != self.fingerprint:
                raise InputError(
                    f"{self.dir} holds work made with another checkpoint, annotation file or settings; "
                    f"delete {self.dir} to start this shard over")
            self.done.update(json.loads(kv[META_DONE]))
            self.skipped.update({int(k): v for k, v in json.loads(kv[META_SKIPPED]).items()})
            self.seconds += float(kv[META_SECONDS])
            self.candidates += meta.num_rows
            self.paths.append(path)

    def write(self, rows: dict[str, list], image_ids: list[int], skipped: dict[int, str], seconds: float) -> Path:
        self.dir.mkdir(parents=True, exist_ok=True)
        table = pa.Table.from_pydict(rows, schema=SHARD_SCHEMA)
        table = table.replace_schema_metadata({
            META_DONE: json.dumps([int(i) for i in image_ids]).encode(),
            META_SKIPPED: json.dumps({str(k): v for k, v in skipped.items()}).encode(),
            META_SECONDS: repr(float(seconds)).encode(),
            META_FINGERPRINT: self.fingerprint.encode(),
        })
        path = self.dir / f"part-{len(self.paths):06d}.parquet"
        with atomic_open(path, "wb") as f:
            pq.write_table(table, f)
        self.paths.append(path)
        self.done.update(int(i) for i in image_ids)
        self.skipped.update(skipped)
        self.seconds += seconds
        self.candidates += table.num_rows
        return path

    def finalize(self, shard_meta: dict) -> None:
        """Stream the parts, in order, into `out` (atomically); then remove the parts folder."""
        self.out.parent.mkdir(parents=True, exist_ok=True)
        schema = SHARD_SCHEMA.with_metadata({META_SHARD: json.dumps(shard_meta).encode()})
        with atomic_open(self.out, "wb") as f:
            with pq.ParquetWriter(f, schema) as writer:
                for path in self.paths:
                    table = pq.read_table(path, schema=SHARD_SCHEMA)
                    writer.write_table(table.replace_schema_metadata(schema.metadata))
        shutil.rmtree(self.dir, ignore_errors=True)


# ----------------------------------------------------------------------------------------------------
# The shard job


def _load_coco(path: Path) -> tuple[dict, str]:
    """The validated file (ggn.annotations: images required, annotations optional) and its content's hash."""
    from ggn.annotations import log_counts, refuse_evaluation_file, validate_coco

    if not path.is_file():
        raise InputError(f"annotation file {path} does not exist; check --annotations")
    data = path.read_bytes()
    try:
        coco = json.loads(data)
    except json.JSONDecodeError as e:
        raise InputError(f"annotation file {path} is not valid JSON ({e}); regenerate or fix it") from None
    coco, counts = validate_coco(coco, path, annotations=False, categories=False)
    log_counts(path, counts)
    refuse_evaluation_file(coco.get("annotations") or [], path, "extraction (gt_iou, which keeps annotated objects "
                           "out of the pseudo-GT)")
    return coco, hashlib.sha256(data).hexdigest()


def _read(image_root: Path, info: dict) -> np.ndarray | str:
    """The RGB image, or the reason it cannot be used (the caller skips and counts it)."""
    from ggn.images import ImageError, load_image

    try:
        return load_image(image_root, info)
    except ImageError as e:
        return str(e)


def extract_shard(checkpoint: str | os.PathLike | None, annotations: str | os.PathLike, images: str | os.PathLike,
                  shard: int, num_shards: int, out: str | os.PathLike, *, affinity: str = "network",
                  input_size: int | None = None,
                  batch_size: int = 8, batching: str = "padded", amp: str = "auto",
                  flush_every: int = 64, device: str = "auto", top_k: int = 20,
                  propose_params: dict | None = None, grouping: str = "paper", max_images: int | None = None,
                  no_gt: bool = False, workers: int = 0, after_flush: Callable[[Path], None] | None = None,
                  max_input_pixels: int = MAX_INPUT_PIXELS) -> dict:
    """Run one shard to completion (resuming if a parts folder exists) and return its summary.

    `after_flush(part_path)` is called after every flushed part (tests use it to simulate a kill).
    `affinity="gradient"` groups the image-gradient affinity of ggn.control instead of the PA network's (the
    no-learning control; no checkpoint).
    """
    from tqdm import tqdm

    from ggn.control import AFFINITIES

    if affinity not in AFFINITIES:
        raise InputError(f"--affinity {affinity!r}: choose one of {', '.join(AFFINITIES)}")
    if affinity == "network" and checkpoint is None:
        raise InputError("--checkpoint is required with --affinity network (the PA network's affinity); "
                         "--affinity gradient needs none")
    out, images = Path(out), Path(images)
    checkpoint = Path(checkpoint) if affinity == "network" else None
    propose_params = dict(propose_params or {})
    from ggn.pa.model import BATCHINGS
    from ggn.precision import AMP_MODES

    if batching not in BATCHINGS or amp not in AMP_MODES:
        raise InputError(f"--batching {batching!r} / --amp {amp!r}: choose from {BATCHINGS} / {AMP_MODES}")
    if batch_size < 1 or flush_every < 1 or top_k < 0:
        raise InputError("--batch-size and --flush-every must be >= 1, --top-k >= 0 (0: every candidate)")
    import pa_lib

    unknown = sorted(set(propose_params) - set(pa_lib.DEFAULTS))
    if unknown:
        raise InputError(f"--propose-params {unknown} are not parameters of pa_lib.propose; "
                         f"choose from {sorted(pa_lib.DEFAULTS)}")
    if grouping not in pa_lib.GROUPINGS:
        raise InputError(f"--grouping {grouping!r}: choose one of {sorted(pa_lib.GROUPINGS)}")
    # Every setting is spelled out, so the shard fingerprint changes when a default does.
    propose_params = {**pa_lib.GROUPINGS[grouping], **propose_params}
    if out.exists():
        shutil.rmtree(parts_dir_for(out), ignore_errors=True)  # left over from a kill after the rename
        log.info("%s already exists; nothing to do (delete it to extract again)", out)
        summary_path = summary_path_for(out)
        return json.loads(summary_path.read_text()) if summary_path.is_file() else {}
    if not images.is_dir():
        raise InputError(f"image folder {images} does not exist; check --images")
    if checkpoint is not None and not checkpoint.is_file():
        raise InputError(f"PA checkpoint {checkpoint} does not exist; run `ggn train-pa` or fix --checkpoint")

    coco, coco_sha = _load_coco(Path(annotations))
    ids = shard_image_ids((img["id"] for img in coco["images"]), shard, num_shards)
    if max_images is not None:
        ids = ids[:max_images]
    settings = {"checkpoint": file_sha256(checkpoint) if checkpoint is not None else affinity,
                "annotations": coco_sha, "shard": shard, "num_shards": num_shards, "input_size": input_size,
                "batching": batching, "amp": amp, "top_k": top_k, "propose_params": propose_params,
                "max_images": max_images, "no_gt": no_gt,
                **({"max_input_pixels": max_input_pixels} if max_input_pixels != MAX_INPUT_PIXELS else {})}
    fingerprint = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()
    parts = ShardParts(out, fingerprint)
    todo = [i for i in ids if i not in parts.done]
    gt = GroundTruth(coco, todo, use_gt=not no_gt)
    del coco
    if parts.done:
        log.info("resuming shard %d/%d: %d of %d images already done in %s",
                 shard, num_shards, len(ids) - len(todo), len(ids), parts.dir)

    if todo:
        _run_images(todo, gt, images, checkpoint, parts, input_size=input_size, batch_size=batch_size,
                    batching=batching, amp=amp,
                    flush_every=flush_every, device=device, top_k=top_k, params=propose_params,
                    workers=workers, after_flush=after_flush, max_input_pixels=max_input_pixels,
                    progress=tqdm(total=len(ids), initial=len(ids) - len(todo), unit="img",
                                  desc=f"extract {shard}-of-{num_shards}", dynamic_ncols=True))

    missing = set(ids) - parts.done
    if missing:  # cannot happen unless the parts folder was tampered with; never finish an incomplete shard
        raise RuntimeError(f"{len(missing)} images of shard {shard} are not recorded as done in {parts.dir}")
    processed = len(ids) - len(parts.skipped)
    summary = {
        "shard": shard, "num_shards": num_shards, "images_in_shard": len(ids),
        "images_processed": processed, "images_skipped": len(parts.skipped),
        "skipped": {str(k): v for k, v in sorted(parts.skipped.items())},
        "candidates_written": parts.candidates, "seconds": round(parts.seconds, 3),
        "seconds_per_image": round(parts.seconds / max(len(ids), 1), 4),
        "checkpoint": None if checkpoint is None else str(checkpoint), "affinity": affinity,
        "annotations": str(annotations), "input_size": input_size, "batch_size": batch_size,
        "batching": batching, "amp": amp, "top_k": top_k, "propose_params": propose_params,
        "gt_iou": "null" if not gt.available else "computed",
        "out": str(out),
    }
    # Summary before the rename: a kill in between only makes the next run finalize (and write it) again.
    atomic_write_json(summary_path_for(out), summary, indent=2)
    # What `ggn merge` checks a set of shards against: one run's complete set, from its annotation file.
    parts.finalize({**{k: summary[k] for k in ("shard", "num_shards", "images_in_shard", "images_skipped")},
                    "annotations_sha256": coco_sha, "max_images": max_images})
    log.info("shard %d/%d: %d images processed, %d skipped, %d candidates, %.3f s/image -> %s (summary %s)",
             shard, num_shards, processed, len(parts.skipped), parts.candidates, summary["seconds_per_image"],
             out, summary_path_for(out))
    for iid, reason in sorted(parts.skipped.items()):
        log.warning("skipped image %d: %s", iid, reason)
    return summary


def _run_images(todo: list[int], gt: GroundTruth, image_root: Path, checkpoint: Path | None, parts: ShardParts, *,
                input_size: int | None, batch_size: int, batching: str, amp: str, flush_every: int, device: str,
                top_k: int, params: dict, workers: int, after_flush, progress, max_input_pixels: int = 0) -> None:
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    from ggn.io import pick_device
    from ggn.pa.model import inference_size, load_pa_model, predict_affinity, resized_shape
    from ggn.precision import autocast_dtype

    if checkpoint is None:  # the no-learning control: affinity from the image gradient
        from ggn.control import gradient_affinity

        def affinities_of(batch: list[np.ndarray]) -> list[np.ndarray]:
            return [gradient_affinity(im, input_size) for im in batch]

        net_size = input_size or 0

        log.info("image-gradient affinity (no network), input size %s, %d grouping workers",
                 input_size or "native", workers)
    else:
        dev = pick_device(device)
        model, config = load_pa_model(checkpoint, dev)
        log.info("PA model from %s on %s, input size %s, batches of %d (%s), %s, %d grouping workers",
                 checkpoint, dev, inference_size(config, input_size) or "native", batch_size, batching,
                 "fp32" if autocast_dtype(amp, dev) is None else f"autocast {autocast_dtype(amp, dev)}", workers)

        def affinities_of(batch: list[np.ndarray]) -> list[np.ndarray]:
            return predict_affinity(model, batch, config, dev, input_size=input_size, batch_size=batch_size,
                                    amp=amp, batching=batching)

        net_size = inference_size(config, input_size)

    # Grouping is CPU work: a process pool lets it run beside the GPU's next batch.
    pool = (ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"))
            if workers > 0 else None)
    reader = ThreadPoolExecutor(1)  # decodes the next batch while this one is on the GPU

    def too_large(info: dict) -> str | None:
        """Why an image is too large for the network's input (memory grows with it), from its annotated size."""
        h, w = resized_shape(int(info["height"]), int(info["width"]), net_size)
        if max_input_pixels and h * w > max_input_pixels:
            return (f"image {info.get('file_name')} is {info['width']}x{info['height']}: its network input "
                    f"({w}x{h}{', native resolution' if not net_size else ''}) has more pixels than "
                    f"--max-input-pixels {max_input_pixels}; pass --input-size (long side) to shrink such images, or "
                    "raise --max-input-pixels where memory allows")
        return None

    def load(batch_ids: list[int]) -> list[tuple[int, np.ndarray | str]]:
        return [(i, too_large(gt.infos[i]) or _read(image_root, gt.infos[i])) for i in batch_ids]

    try:
        for c0 in range(0, len(todo), flush_every):
            chunk = todo[c0:c0 + flush_every]
            t0 = time.perf_counter()
            batches = [chunk[b:b + batch_size] for b in range(0, len(chunk), batch_size)]
            pending: Future = reader.submit(load, batches[0])
            results: list[Any] = []  # per image: rows dict or a Future of one
            skipped: dict[int, str] = {}
            for b in range(len(batches)):
                loaded = pending.result()
                if b + 1 < len(batches):
                    pending = reader.submit(load, batches[b + 1])
                good = [(i, im) for i, im in loaded if not isinstance(im, str)]
                for i, im in loaded:
                    if isinstance(im, str):
                        skipped[i] = im
                        log.warning("skipping image %d: %s", i, im)
                if not good:
                    continue
                affinities = affinities_of([im for _, im in good])
                for (i, im), aff in zip(good, affinities):
                    job = (i, np.ascontiguousarray(aff, dtype=np.float32), im.shape[0], im.shape[1],
                           gt.for_image(i), top_k or None, params)
                    results.append(pool.submit(propose_rows, *job) if pool else propose_rows(*job))
                progress.update(len(loaded) - len(good))
                if not pool:
                    progress.update(len(good))
            rows = []
            for r in results:
                rows.append(r.result() if isinstance(r, Future) else r)
                if pool:
                    progress.update(1)
            path = parts.write(_concat_rows(rows), chunk, skipped, time.perf_counter() - t0)
            progress.set_postfix(candidates=parts.candidates, skipped=len(parts.skipped))
            if after_flush is not None:
                after_flush(path)
    finally:
        progress.close()
        reader.shutdown(wait=True)
        if pool:
            pool.shutdown(wait=True, cancel_futures=True)


# ----------------------------------------------------------------------------------------------------
# CLI


def parse_propose_params(items: list[str] | None) -> dict:
    """`--propose-params` items: JSON objects and/or key=value pairs (values parsed as JSON when they can be)."""
    params: dict = {}
    for item in items or []:
        item = item.strip()
        if item.startswith("{"):
            try:
                obj = json.loads(item)
            except json.JSONDecodeError as e:
                raise InputError(f"--propose-params {item!r} is not a valid JSON object ({e})") from None
            if not isinstance(obj, dict):
                raise InputError(f"--propose-params {item!r} must be a JSON object")
            params.update(obj)
            continue
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise InputError(f"--propose-params {item!r}: use key=value or a JSON object")
        try:
            params[key.replace("-", "_")] = json.loads(value)
        except json.JSONDecodeError:
            params[key.replace("-", "_")] = value
    return params


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", help="PA checkpoint (from `ggn train-pa`); required with --affinity network")
    parser.add_argument("--affinity", choices=("network", "gradient"), default="network",
                        help="network: the PA checkpoint's predicted affinity; gradient: one minus the image's colour "
                             "gradient magnitude (no learning: the `control` variant's pseudo-GT)")
    parser.add_argument("--annotations", required=True,
                        help="COCO file listing the images (its seen-class annotations give gt_iou; "
                             "a file with 'images' only gives null gt_iou)")
    parser.add_argument("--images", required=True, help="image folder; images are found as DIR/file_name")
    parser.add_argument("--shard", type=int, default=0, help="this shard's index (0-based)")
    parser.add_argument("--num-shards", type=int, default=1,
                        help="number of shards; image k of the id-sorted list goes to shard k %% num-shards")
    parser.add_argument("--out", required=True, help="output parquet, e.g. results/x/seed0/pseudo/shards/0-of-4.parquet")
    parser.add_argument("--input-size", type=int, default=None,
                        help="long side of the network input (default: the checkpoint's input_size; 0: native "
                             "resolution, as the reference)")
    parser.add_argument("--batch-size", type=int, default=8, help="images per forward pass")
    parser.add_argument("--batching", choices=("padded", "same_size"), default="padded",
                        help="padded: consecutive images padded to a common size share a pass (the padding is seen "
                             "by the pyramid pooling); same_size: only images of identical size share a pass, "
                             "unpadded, so each image gets the output it gets alone (the reference runs one image "
                             "at a time at native size: the paper rows)")
    add_amp_argument(parser, "PA network's inference")
    parser.add_argument("--flush-every", type=int, default=64,
                        help="images per flushed part file (the unit of resuming; memory stays flat)")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, ...")
    parser.add_argument("--top-k", type=int, default=20,
                        help="candidates kept per image; 0: all of them (with --propose-params nms=0, the "
                             "un-suppressed candidates a re-ranking stage such as `ggn rank-oln` expects)")
    parser.add_argument("--grouping", choices=("paper", "extended"), default="paper",
                        help="grouping settings: paper (pa_extract.py's, PAPER_SETTINGS) or extended (plus this "
                             "project's four additions, see pa_lib/grouping.py); --propose-params override either")
    parser.add_argument("--propose-params", nargs="+", action="extend", default=[], metavar="PARAM",
                        help="extra keyword arguments of pa_lib.propose: key=value pairs and/or JSON objects")
    parser.add_argument("--max-images", type=int, default=None,
                        help="only the first N images of this shard (smoke tests)")
    parser.add_argument("--no-gt", action="store_true", help="do not compute gt_iou (column left null)")
    parser.add_argument("--workers", type=int, default=0,
                        help="processes for grouping beside the GPU (0: in this process)")
    parser.add_argument("--max-input-pixels", type=int, default=MAX_INPUT_PIXELS,
                        help="skip (and count) images whose network input has more pixels than this: memory grows "
                             "with them (0: no limit)")


def run(args: argparse.Namespace) -> int:
    extract_shard(args.checkpoint, args.annotations, args.images, args.shard, args.num_shards, args.out,
                  affinity=args.affinity, input_size=args.input_size, batch_size=args.batch_size,
                  batching=args.batching, amp=args.amp, flush_every=args.flush_every,
                  device=args.device, top_k=args.top_k, propose_params=parse_propose_params(args.propose_params),
                  grouping=args.grouping,
                  max_images=args.max_images, no_gt=args.no_gt, workers=args.workers,
                  max_input_pixels=args.max_input_pixels)
    return 0
