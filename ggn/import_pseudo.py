"""`ggn import-pseudo`: the authors' released pseudo-GT -> one extraction shard, which `ggn merge` then filters.

The authors release pseudo-GT (README "Model zoo", the "Pseudo" links; CC-BY-NC 4.0) in the formats their tools
write:
- per-image mask lists, the output of tools/extract_pa_masks.py (`--out masks.json`): a JSON list with one list
  per image of candidates {segmentation (compressed RLE), area, bbox, image_id, category_id 1, rank, gt_iou,
  score, orig_shape} (extract_pa_masks.py `proposals2json`), at most 20 per image (topk=20);
- their merged COCO file, tools/merge_annotations.py: a COCO dict whose `annotations` are those candidates
  from all shards, renumbered `id`s, the image list of the reference annotation file.
- per-image files `{image_id}.json` in one folder, each that image's list of candidates, which the ImageNet
  rows' training reads one at a time (README "Training of GGN"; coco_split_online.py `get_ann_info`).
None applies the selection: the reference's training set does (det:212-217, coco_split_pseudo_masks.py:55-73):
candidates with gt_iou < 0.5, then the first `top_k` of the image in the file's order (extraction writes them best
first). So the import keeps every candidate, ranked by its position in the file, with its gt_iou, in our shard layout (ggn.extract.SHARD_SCHEMA), and the workflow's `ggn merge` applies the row's
`merge.top_k` and `merge.gt_iou_max` exactly as it does to our own extraction.

`image_id` may be an id or, in unconverted extraction output, the image's file name; names are matched to
`--annotations` by file name. Candidates of images outside `--annotations` are counted and left out.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
from collections import defaultdict
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from pycocotools import mask as mask_utils

from ggn.annotations import validate_coco
from ggn.io import InputError, atomic_open, atomic_write_json, file_sha256, read_json

log = logging.getLogger(__name__)

LICENCE_NOTE = "the authors' pseudo-GT is CC-BY-NC 4.0 (Generic-Grouping model zoo); do not commit it"


def released_candidates(released: object, path: str | os.PathLike) -> tuple[list[dict], str]:
    """(candidate dicts, format name) of a loaded released file."""
    if isinstance(released, dict):
        if not isinstance(released.get("annotations"), list):
            raise InputError(f"{path}: a JSON object without an `annotations` list; expected the authors' merged "
                             "COCO file (tools/merge_annotations.py) or their per-image mask lists")
        return released["annotations"], "merged COCO file"
    if isinstance(released, list):
        if released and not all(isinstance(x, list) for x in released):
            raise InputError(f"{path}: a JSON list whose items are not per-image lists; expected the output of "
                             "tools/extract_pa_masks.py (one list of candidates per image)")
        return [ann for image in released for ann in image], "per-image mask lists"
    raise InputError(f"{path}: a JSON {type(released).__name__}; expected a COCO dict or a list of per-image lists")


def _image_lookup(images: list[dict]) -> tuple[set[int], dict[str, int]]:
    ids = {int(im["id"]) for im in images}
    by_name = {}
    for im in images:
        by_name[str(im["file_name"])] = int(im["id"])
        by_name.setdefault(os.path.basename(str(im["file_name"])), int(im["id"]))
    return ids, by_name


def candidate_table(candidates: list[dict], images: list[dict], path: str | os.PathLike) -> tuple[pa.Table, dict]:
    """SHARD_SCHEMA rows of the candidates of known images, sorted by image then rank; and counts."""
    from ggn.extract import SHARD_SCHEMA

    ids, by_name = _image_lookup(images)
    per_image: dict[int, list[dict]] = defaultdict(list)
    outside = 0
    for n, ann in enumerate(candidates):
        try:
            raw_id, seg = ann["image_id"], ann["segmentation"]
        except (KeyError, TypeError):
            raise InputError(f"{path}: candidate {n} has no image_id/segmentation (keys: "
                             f"{sorted(ann) if isinstance(ann, dict) else type(ann).__name__}); not the authors' "
                             "pseudo-GT format") from None
        image_id = by_name.get(raw_id, by_name.get(os.path.basename(raw_id))) if isinstance(raw_id, str) else int(raw_id)
        if image_id is None or image_id not in ids:
            outside += 1
            continue
        if not isinstance(seg, dict) or "size" not in seg or "counts" not in seg:
            raise InputError(f"{path}: candidate {n} (image {raw_id}) has a segmentation that is not a compressed "
                             "RLE {size, counts}; the authors' files hold RLEs")
        per_image[image_id].append(ann)
    rows: dict[str, list] = {name: [] for name in SHARD_SCHEMA.names}
    disordered = 0
    for image_id in sorted(per_image):
        anns = per_image[image_id]
        # The reference's training takes an image's first top_k in the file's order (pycocotools' per-image list,
        # coco_split_pseudo_masks.py `get_ann_info`/`sample_targets`; the online dataset reads each file in order):
        # that order is the rank here. Extraction writes best first, so it agrees with a `rank` field when present.
        disordered += sum(int(a.get("rank", i)) != i for i, a in enumerate(anns))
        for new_rank, ann in enumerate(anns):
            seg = ann["segmentation"]
            rle = {"size": [int(s) for s in seg["size"]],
                   "counts": seg["counts"].encode("ascii") if isinstance(seg["counts"], str) else seg["counts"]}
            if isinstance(rle["counts"], list):  # uncompressed RLE
                rle = mask_utils.frPyObjects(rle, *rle["size"])
            h, w = rle["size"]
            gt_iou = ann.get("gt_iou")
            rows["image_id"].append(image_id)
            rows["rank"].append(new_rank)
            rows["score"].append(float(ann.get("score", 0.0)))
            rows["gt_iou"].append(None if gt_iou is None else float(gt_iou))
            rows["bbox"].append([float(v) for v in mask_utils.toBbox(rle)])
            rows["area"].append(float(mask_utils.area(rle)))
            rows["height"].append(int(h))
            rows["width"].append(int(w))
            rows["rle"].append(rle["counts"].decode("ascii") if isinstance(rle["counts"], bytes) else rle["counts"])
    counts = {"candidates": len(candidates), "imported": len(rows["image_id"]), "outside_annotations": outside,
              "images": len(per_image),
              "without_gt_iou": sum(v is None for v in rows["gt_iou"]), "rank_field_not_file_order": disordered}
    return pa.Table.from_pydict(rows, schema=SHARD_SCHEMA), counts


PER_IMAGE_CHUNK = 20000  # images of a per-image folder read and written at a time (memory flat in the image count)


def _per_image_folder(folder: Path, images: list[dict]):
    """(candidates of up to PER_IMAGE_CHUNK images) per chunk, from `{image_id}.json` files; counts files seen."""
    chunk: list[dict] = []
    in_chunk = 0
    for im in images:
        path = folder / f"{im['id']}.json"
        if not path.is_file():
            continue
        anns = read_json(path, "released per-image pseudo-GT file")
        if not isinstance(anns, list):
            raise InputError(f"{path}: a JSON {type(anns).__name__}; a per-image file holds that image's list of "
                             "candidates")
        for rank, ann in enumerate(anns):
            if isinstance(ann, dict):
                ann.setdefault("image_id", int(im["id"]))
                ann.setdefault("rank", rank)  # the file's order is the rank the online dataset reads
        chunk += anns
        in_chunk += 1
        if in_chunk == PER_IMAGE_CHUNK:
            yield chunk
            chunk, in_chunk = [], 0
    yield chunk


def released_tables(released: Path, images: list[dict]):
    """(format, SHA-256 or None, iterator of (table, counts)) of a released file or per-image folder."""
    if released.is_dir():
        return ("per-image files", None,  # a folder of a million files is named, not hashed
                (candidate_table(c, images, released) for c in _per_image_folder(released, images)))
    candidates, fmt = released_candidates(read_json(released, "released pseudo-GT file"), released)
    return fmt, file_sha256(released), iter([candidate_table(candidates, images, released)])


def import_pseudo(released: str | os.PathLike, annotations: str | os.PathLike, out: str | os.PathLike) -> dict:
    """Write the released candidates of `annotations`' images as shard 0 of 1 at `out`; returns the counts."""
    from ggn.extract import META_SHARD, SHARD_SCHEMA

    coco = read_json(annotations, "annotation file")
    images = validate_coco({k: v for k, v in coco.items() if k != "annotations"}, annotations, annotations=False,
                           categories=False)[0]["images"]
    released = Path(released)
    fmt, source_hash, chunks = released_tables(released, images)
    meta = {"shard": 0, "num_shards": 1, "annotations_sha256": file_sha256(annotations),
            "source": {"file": released.name, "sha256": source_hash, "format": fmt, "licence": LICENCE_NOTE}}
    schema = SHARD_SCHEMA.with_metadata({META_SHARD: json.dumps(meta).encode()})
    counts: dict = {}
    # chunk by chunk into the shard: each image's rows lie in one chunk, so they stay contiguous as merge needs
    with atomic_open(out, "wb") as f:
        with pq.ParquetWriter(f, schema) as writer:
            for table, chunk_counts in chunks:
                writer.write_table(table.replace_schema_metadata(schema.metadata))
                for key, value in chunk_counts.items():
                    counts[key] = counts.get(key, 0) + value
            if counts.get("imported", 0) == 0:  # leaves no file behind (atomic_open removes its temporary)
                raise InputError(f"none of the {counts.get('candidates', 0)} candidates of {released} belongs to an "
                                 f"image of {annotations}: the pseudo-GT of another dataset or split? (their "
                                 "image_ids must be the ids or file names of that file's images)")
    if counts["rank_field_not_file_order"]:
        log.warning("%d candidates' `rank` field differs from their position in the file; the file's order is used, "
                    "as the reference's training reads it", counts["rank_field_not_file_order"])
    if counts["without_gt_iou"]:
        log.warning("%d candidates carry no gt_iou (extraction without --use-gt-masks): merge keeps them whatever "
                    "their overlap with annotated objects", counts["without_gt_iou"])
    counts["format"] = fmt
    atomic_write_json(f"{out}.summary.json", counts | {"source": meta["source"]}, indent=2)
    log.info("%d of %d released candidates (%s) on %d images written to %s (%d outside %s)", counts["imported"],
             counts["candidates"], fmt, counts["images"], out, counts["outside_annotations"], annotations)
    return counts


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--released", required=True,
                   help="the authors' pseudo-GT: their merged COCO file, extract_pa_masks.py's per-image lists, or a "
                        "folder of {image_id}.json files")
    p.add_argument("--annotations", required=True, help="the training COCO file whose images the pseudo-GT joins")
    p.add_argument("--out", required=True, help="shard parquet (give it to `ggn merge --shards`)")


def run(args: argparse.Namespace) -> int:
    import_pseudo(args.released, args.annotations, args.out)
    return 0
