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
