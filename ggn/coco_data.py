"""Instance-segmentation dataset over a COCO JSON file and an image folder, shared by PA and detector training."""
from __future__ import annotations

import logging
from collections import defaultdict
from pathlib import Path
from typing import Iterable

import numpy as np
import torch
from ggn.annotations import load_coco
from ggn.images import ImageError, check_image, image_path, load_image, read_image  # noqa: F401 (read_image: re-export)
from ggn.io import InputError
from ggn.masks import ann_to_mask

log = logging.getLogger(__name__)


def index_annotations(annotations: Iterable[dict]) -> dict[int, list[dict]]:
    by_image: dict[int, list[dict]] = defaultdict(list)
    for ann in annotations:
        by_image[ann["image_id"]].append(ann)
    return by_image


class CocoInstances(torch.utils.data.Dataset):
    """Yields (image uint8 tensor [3,H,W], target) with target = masks bool [N,H,W], boxes xyxy float [N,4],
    labels int64 [N] (all 1: class-agnostic), iscrowd bool [N], image_id int.

    `add_annotations` appends others (e.g. pseudo-GT) to the file's own per image; crowd regions are
    returned with iscrowd=True so that consumers can ignore them rather than learn them as background.
    `box_source` "annotation": each box is the annotation's own `bbox` (the reference: mmdet's CocoDataset
    reads `gt_bboxes` from `bbox`), the tight box of the rasterised mask where the annotation has no usable
    bbox (missing, or under 1 px wide or high); "mask": always the rasterised mask's tight box.
    """

    box_source = "mask"

    def __init__(self, ann_file: str | Path, image_root: str | Path, image_ids: list[int] | None = None,
                 with_annotations: bool = True):
        """`with_annotations=False` uses the file's image list only (its annotations, if any, are ignored):
        training on pseudo-GT alone, e.g. ImageNet images listed by `ggn list-images`."""
        self.ann_file = Path(ann_file)
        self.image_root = Path(image_root)
        coco, _ = load_coco(self.ann_file, "annotation file", annotations=with_annotations, categories=False)
        self.images = {img["id"]: img for img in coco["images"]}
        self.categories = [c for c in coco.get("categories") or [] if isinstance(c, dict)]
        self.anns = index_annotations(coco["annotations"] if with_annotations else [])
        self.ids = list(image_ids) if image_ids is not None else sorted(self.images)
        if not self.image_root.is_dir():
            raise InputError(f"image folder {self.image_root} does not exist (images of {self.ann_file})")

    def add_annotations(self, annotations: Iterable[dict]) -> None:
        """Append `annotations` (e.g. pseudo-GT) to the file's own, per image."""
        for ann in annotations:
            self.anns[ann["image_id"]].append(ann)

    def __len__(self) -> int:
        return len(self.ids)

    def objects_per_image(self) -> dict[int, int]:
        """Non-crowd annotations with a segmentation on each used image (crowd regions teach nothing: ignored)."""
        return {i: sum(1 for a in self.anns.get(i, []) if a.get("segmentation") and not a.get("iscrowd", 0))
                for i in self.ids}

    def check_training_file(self, step: str, warn: bool = True) -> None:
        """A training file is the train.json of `ggn split`: one category, `object`. Its eval.json (unseen
        objects marked) is refused; a file with several categories (the source COCO file itself) makes the
        network learn every class, unseen ones included: said, with the count, since the training goes on
        (training on every class is what `seen: all` asks for)."""
        from ggn.annotations import refuse_evaluation_file

        refuse_evaluation_file((a for i in self.ids for a in self.anns.get(i, [])), self.ann_file, step)
        names = [str(c.get("name")) for c in self.categories]
        if warn and len(names) > 1:
            shown = ", ".join(names[:8]) + (f", ... ({len(names) - 8} more)" if len(names) > 8 else "")
            log.warning("%s: %s has %d categories (%s): it is not a training file of `ggn split`, so every one of "
                        "them is learned, unseen classes included; to hold classes out, train on the train.json "
                        "of `ggn split --seen ...`", step, self.ann_file, len(names), shown)

    def image_path(self, image_id: int) -> Path:
        return image_path(self.image_root, self.images[image_id]["file_name"])

    def verify_images(self, workers: int = 8) -> None:
        """Check every used image's header (exists, decodes to its end, has the annotation's size) before any
        training step; refuse with the list of those that fail. A training run does not skip images: which
        ones it learns from would then depend on when a file broke (see docs/bad_inputs.md)."""
        from concurrent.futures import ThreadPoolExecutor

        from tqdm import tqdm

        infos = [self.images[i] for i in self.ids]
        for info in infos:
            image_path(self.image_root, info["file_name"])  # names leaving the folder: refused at once
        with ThreadPoolExecutor(max(1, workers)) as pool:
            problems = [p for p in tqdm(pool.map(lambda info: check_image(self.image_root, info), infos),
                                        total=len(infos), desc="check images", unit="img", dynamic_ncols=True,
                                        mininterval=2) if p]
        if problems:
            for p in problems:
                log.error("unusable image: %s", p)
            shown = "; ".join(problems[:5]) + (f"; ... ({len(problems) - 5} more in the log)" if len(problems) > 5 else "")
            raise InputError(f"{len(problems)} of the {len(infos)} images of {self.ann_file} cannot be trained on: "
                             f"{shown}. Fix the files or their width/height, or remove those images from "
                             f"{self.ann_file}")
        log.info("checked %d images of %s: all readable and of their annotated size", len(infos), self.ann_file)

    def __getitem__(self, index: int):
        image_id = self.ids[index]
        info = self.images[image_id]
        image = load_image(self.image_root, info)
        h, w = image.shape[:2]
        masks, crowd, boxes = [], [], []
        for ann in self.anns.get(image_id, []):
            seg = ann.get("segmentation")
            if not seg:
                continue
            m = ann_to_mask(seg, info.get("height", h), info.get("width", w))
            if m.shape != (h, w) or not m.any():
                continue
            masks.append(m)
            crowd.append(bool(ann.get("iscrowd", 0)))
            boxes.append(annotation_box(ann) if self.box_source == "annotation" else None)
        masks_t = torch.from_numpy(np.stack(masks)) if masks else torch.zeros((0, h, w), dtype=torch.bool)
        boxes_t = masks_to_boxes(masks_t)
        for i, box in enumerate(boxes):
            if box is not None:
                boxes_t[i] = torch.tensor(box, dtype=torch.float32)
        target = {
            "masks": masks_t,
            "boxes": boxes_t,
            "labels": torch.ones(len(masks), dtype=torch.int64),
            "iscrowd": torch.tensor(crowd, dtype=torch.bool),
            "image_id": int(image_id),
        }
        return torch.from_numpy(image).permute(2, 0, 1).contiguous(), target


def annotation_box(ann: dict) -> list[float] | None:
    """The annotation's `bbox` [x, y, w, h] as xyxy, or None when it is missing or under 1 px wide or high
    (mmdet's CocoDataset skips such boxes; here the mask's own box stands in)."""
    box = ann.get("bbox")
    if not isinstance(box, (list, tuple)) or len(box) != 4:
        return None
    try:
        x, y, w, h = (float(v) for v in box)
    except (TypeError, ValueError):
        return None
    if not all(np.isfinite([x, y, w, h])) or w < 1 or h < 1:
        return None
    return [x, y, x + w, y + h]


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
