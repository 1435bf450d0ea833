"""COCO mask conversions on top of pycocotools: polygons/RLE <-> boolean arrays."""
from __future__ import annotations

import numpy as np
from pycocotools import mask as mask_utils


def ann_to_rle(segmentation, height: int, width: int) -> dict:
    """Any COCO segmentation (polygon list, uncompressed or compressed RLE) -> compressed RLE."""
    if isinstance(segmentation, list):
        rles = mask_utils.frPyObjects(segmentation, height, width)
        return mask_utils.merge(rles)
    if isinstance(segmentation, dict) and isinstance(segmentation.get("counts"), list):
        return mask_utils.frPyObjects(segmentation, height, width)
    rle = dict(segmentation)
    if isinstance(rle["counts"], str):
        rle["counts"] = rle["counts"].encode("ascii")
    return rle


def ann_to_mask(segmentation, height: int, width: int) -> np.ndarray:
    return mask_utils.decode(ann_to_rle(segmentation, height, width)).astype(bool)


def encode_mask(mask: np.ndarray) -> dict:
    """Boolean [H,W] -> JSON-ready compressed RLE (counts as str)."""
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    rle["counts"] = rle["counts"].decode("ascii")
    return rle


def encode_masks(masks: np.ndarray) -> list[dict]:
    """Boolean [N,H,W] -> list of JSON-ready compressed RLEs."""
    if len(masks) == 0:
        return []
    rles = mask_utils.encode(np.asfortranarray(masks.transpose(1, 2, 0).astype(np.uint8)))
    for r in rles:
        r["counts"] = r["counts"].decode("ascii")
    return rles


def rle_to_json(rle: dict) -> dict:
    out = dict(rle)
    if isinstance(out["counts"], bytes):
        out["counts"] = out["counts"].decode("ascii")
    return out


def encode_crop(crop: np.ndarray, top: int, left: int, height: int, width: int) -> dict:
    """JSON-ready compressed RLE of a [height,width] mask that is empty outside `crop` (boolean [h,w], its top-left
    pixel at (top, left)): the same RLE as `encode_mask` of the full mask, made from the band of columns the crop
    spans, so that a mask on a huge image never exists at full size."""
    h, w = crop.shape
    if h == 0 or w == 0 or not crop.any():
        counts = [height * width]
    else:
        if not (0 <= top and top + h <= height and 0 <= left and left + w <= width):
            raise ValueError(f"crop {h}x{w} at ({top}, {left}) leaves the {height}x{width} mask")
        band = np.zeros((height, w), dtype=bool, order="F")
        band[top:top + h] = crop
        flat = band.ravel(order="F")  # COCO RLE runs down the columns
        change = np.flatnonzero(flat[1:] != flat[:-1]) + 1
        counts = np.diff(np.concatenate([[0], change, [flat.size]])).tolist()
        if flat[0]:
            counts.insert(0, 0)  # runs start with background
        counts[0] += left * height  # the empty columns before the band
        trailing = (width - left - w) * height
        if trailing:
            if len(counts) % 2:  # the band ends in background: one run with the empty columns after it
                counts[-1] += trailing
            else:
                counts.append(trailing)
    rle = mask_utils.frPyObjects({"size": [height, width], "counts": counts}, height, width)
    return rle_to_json(rle)
