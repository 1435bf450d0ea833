"""Instance-segmentation dataset over a COCO JSON file and an image folder, shared by PA and detector training."""
from __future__ import annotations

import logging
from collections import defaultdict
from pathlib import Path
from typing import Iterable

import numpy as np
import torch
from PIL import Image

from ggn.io import InputError, read_json
from ggn.masks import ann_to_mask

log = logging.getLogger(__name__)


def read_image(path: str | Path) -> np.ndarray:
    """RGB uint8 [H,W,3]; raises OSError/ValueError on unreadable files (callers decide skip vs fail)."""
    with Image.open(path) as im:
        return np.array(im.convert("RGB"))  # a writable copy: torch.from_numpy needs one


def index_annotations(annotations: Iterable[dict]) -> dict[int, list[dict]]:
    by_image: dict[int, list[dict]] = defaultdict(list)
    for ann in annotations:
        by_image[ann["image_id"]].append(ann)
    return by_image


class CocoInstances(torch.utils.data.Dataset):
    """Yields (image uint8 tensor [3,H,W], target) with target = masks bool [N,H,W], boxes xyxy float [N,4],
    labels int64 [N] (all 1: class-agnostic), iscrowd bool [N], image_id int.

    `extra_annotations` (e.g. pseudo-GT) are appended to the file's own per image; crowd regions are
    returned with iscrowd=True so that consumers can ignore them rather than learn them as background.
    """

    def __init__(self, ann_file: str | Path, image_root: str | Path,
                 extra_annotations: Iterable[dict] | None = None, image_ids: list[int] | None = None,
                 with_annotations: bool = True):
        """`with_annotations=False` uses the file's image list only (its annotations, if any, are ignored):
        training on pseudo-GT alone, e.g. ImageNet images listed by `ggn list-images`."""
        self.ann_file = Path(ann_file)
        self.image_root = Path(image_root)
        coco = read_json(self.ann_file, "annotation file")
        if not isinstance(coco, dict) or "images" not in coco or (with_annotations and "annotations" not in coco):
            raise InputError(f"{self.ann_file} lacks 'images' or 'annotations': it is not a COCO instances file")
        self.images = {img["id"]: img for img in coco["images"]}
        self.anns = index_annotations(coco["annotations"] if with_annotations else [])
        if extra_annotations is not None:
            for ann in extra_annotations:
                self.anns[ann["image_id"]].append(ann)
        self.ids = list(image_ids) if image_ids is not None else sorted(self.images)
        if not self.image_root.is_dir():
            raise InputError(f"image folder {self.image_root} does not exist (images of {self.ann_file})")

    def __len__(self) -> int:
        return len(self.ids)

    def image_path(self, image_id: int) -> Path:
        return self.image_root / self.images[image_id]["file_name"]

    def __getitem__(self, index: int):
        image_id = self.ids[index]
        info = self.images[image_id]
        image = read_image(self.image_path(image_id))
        h, w = image.shape[:2]
        masks, crowd = [], []
        for ann in self.anns.get(image_id, []):
            seg = ann.get("segmentation")
            if not seg:
                continue
            m = ann_to_mask(seg, info.get("height", h), info.get("width", w))
            if m.shape != (h, w) or not m.any():
                continue
            masks.append(m)
            crowd.append(bool(ann.get("iscrowd", 0)))
        masks_t = torch.from_numpy(np.stack(masks)) if masks else torch.zeros((0, h, w), dtype=torch.bool)
        target = {
            "masks": masks_t,
            "boxes": masks_to_boxes(masks_t),
            "labels": torch.ones(len(masks), dtype=torch.int64),
            "iscrowd": torch.tensor(crowd, dtype=torch.bool),
            "image_id": int(image_id),
        }
        return torch.from_numpy(image).permute(2, 0, 1).contiguous(), target


def masks_to_boxes(masks: torch.Tensor) -> torch.Tensor:
    """Tight xyxy boxes (pixel-edge convention: x2 = last column + 1)."""
    if masks.shape[0] == 0:
        return torch.zeros((0, 4), dtype=torch.float32)
    rows = masks.any(dim=2)
    cols = masks.any(dim=1)
    n, h = rows.shape
    w = cols.shape[1]
    ar_h = torch.arange(h).expand(n, h)
    ar_w = torch.arange(w).expand(n, w)
    y1 = torch.where(rows, ar_h, h).min(dim=1).values
    y2 = torch.where(rows, ar_h, -1).max(dim=1).values + 1
    x1 = torch.where(cols, ar_w, w).min(dim=1).values
    x2 = torch.where(cols, ar_w, -1).max(dim=1).values + 1
    return torch.stack([x1, y1, x2, y2], dim=1).float()


def collate(batch):
    return tuple(zip(*batch))
