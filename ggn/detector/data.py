"""Detector training data: seen-class ground truth plus (for the `ggn` variant) pseudo-GT, with flip augmentation."""
from __future__ import annotations

import logging
import random
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from ggn.coco_data import CocoInstances, annotation_box, masks_to_boxes
from ggn.io import InputError, read_json
from ggn.masks import ann_to_mask

log = logging.getLogger(__name__)

Target = dict[str, Any]


class RandomHorizontalFlip:
    """Flip image, masks and boxes together with probability `p`."""

    def __init__(self, p: float = 0.5):
        self.p = p

    def __call__(self, image: torch.Tensor, target: Target) -> tuple[torch.Tensor, Target]:
        if random.random() >= self.p:
            return image, target
        width = image.shape[-1]
        target = dict(target)
        target["masks"] = target["masks"].flip(-1)
        boxes = target["boxes"].clone()
        boxes[:, [0, 2]] = width - target["boxes"][:, [2, 0]]
        target["boxes"] = boxes
        return image.flip(-1), target


def drop_crowd(target: Target) -> Target:
    """Crowd regions are neither positives nor background for torchvision's samplers; dropping them keeps
    them from being learned as objects (their pixels may then be sampled as background, as in torchvision's
    own COCO recipe)."""
    keep = ~target["iscrowd"]
    out = dict(target)
    for key in ("masks", "boxes", "labels", "iscrowd"):
        out[key] = target[key][keep]
    return out


class DetectorDataset(torch.utils.data.Dataset):
    """(float image [3,H,W] in [0,1], target) for torchvision detection models.

    `pseudo_store` (an object with `annotations_for(image_id) -> list[dict]`, e.g. ggn.merge.PseudoStore)
    adds pseudo-GT masks per image lazily, so huge pseudo-GT sets never sit in memory whole.
    """

    def __init__(self, base: CocoInstances, pseudo_store: Any | None = None,
                 transform: Callable[[torch.Tensor, Target], tuple[torch.Tensor, Target]] | None = None):
        self.base = base
        self.pseudo_store = pseudo_store
        self.transform = transform

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, index: int):
        image, target = self.base[index]
        if self.pseudo_store is not None:
            target = self._add_pseudo(target, image.shape[1], image.shape[2])
        target = drop_crowd(target)
        image = image.float().div_(255)
        if self.transform is not None:
            image, target = self.transform(image, target)
        return image, target

    def _add_pseudo(self, target: Target, height: int, width: int) -> Target:
        masks, kept = [], []
        for ann in self.pseudo_store.annotations_for(target["image_id"]):
            m = ann_to_mask(ann["segmentation"], int(ann.get("height", height)), int(ann.get("width", width)))
            if m.shape == (height, width) and m.any():
                masks.append(m)
                kept.append(ann)
        if not masks:
            return target
        extra = torch.from_numpy(np.stack(masks))
        extra_boxes = masks_to_boxes(extra)
        if self.base.box_source == "annotation":
            for i, ann in enumerate(kept):
                box = annotation_box(ann)
                if box is not None:
                    extra_boxes[i] = torch.tensor(box, dtype=torch.float32)
        out = dict(target)
        out["masks"] = torch.cat([target["masks"], extra])
        out["boxes"] = torch.cat([target["boxes"], extra_boxes])
        out["labels"] = torch.ones(len(out["masks"]), dtype=torch.int64)
        out["iscrowd"] = torch.cat([target["iscrowd"], torch.zeros(len(masks), dtype=torch.bool)])
        return out


def read_pseudo_gt(path: str | Path, train_image_ids: set[int]) -> list[dict]:
    """Annotations of a pseudo_gt.json, keeping those on training images (others are counted and logged)."""
    coco = read_json(path, "pseudo-GT file")
    anns = coco.get("annotations") if isinstance(coco, dict) else None
    if not isinstance(anns, list):
        raise InputError(f"{path} has no 'annotations' list; it should be the pseudo_gt.json of `ggn merge`")
    unscored = sum(1 for a in anns if not isinstance(a, dict) or "score" not in a)
    if unscored:  # `ggn merge` gives every pseudo-GT object its candidate score; an annotation file has none
        raise InputError(f"{path} is not a pseudo-GT file: {unscored} of its {len(anns)} annotations have no "
                         "'score', as in an annotation file (training on it would add its objects again, as "
                         "pseudo-GT); pass the pseudo_gt.json that `ggn merge` wrote")
    kept = [a for a in anns if a.get("image_id") in train_image_ids]
    if len(kept) < len(anns):
        log.warning("%d of %d pseudo-GT annotations in %s are on images not in the training set; skipped",
                    len(anns) - len(kept), len(anns), path)
    for a in kept:
        if "segmentation" not in a:
            raise InputError(f"pseudo-GT annotation {a.get('id')} in {path} has no 'segmentation'")
        a["iscrowd"] = 0  # pseudo-GT is never crowd, whatever the file says
    return kept


def build_training_dataset(train_json: str | Path, images: str | Path, variant: str = "baseline",
                           pseudo_gt: str | Path | None = None, pseudo_store: str | Path | Any | None = None,
                           flip: float = 0.5, max_images: int | None = None,
                           ground_truth: bool = True, boxes: str = "mask") -> DetectorDataset:
    """Seen-class GT for `baseline`; GT + pseudo-GT (from pseudo_gt.json or a per-image store) for `ggn`.

    `ground_truth=False` (the ImageNet row: a detector trained on pseudo-GT alone) ignores the file's
    annotations and keeps only the images that have pseudo-GT, as mmdet's filter_empty_gt drops images
    without annotations from training. `boxes`: "annotation" (each annotation's own bbox, the reference)
    or "mask" (the rasterised mask's tight box); see CocoInstances.
    """
    if boxes not in BOX_SOURCES:
        raise InputError(f"--boxes {boxes!r}: choose one of {', '.join(BOX_SOURCES)}")
    dataset = _build(train_json, images, variant, pseudo_gt, pseudo_store, flip, max_images, ground_truth)
    dataset.base.box_source = boxes
    return dataset


BOX_SOURCES = ("annotation", "mask")


def _build(train_json, images, variant, pseudo_gt, pseudo_store, flip, max_images, ground_truth) -> DetectorDataset:
    if variant not in ("baseline", "ggn"):
        raise InputError(f"unknown --variant {variant!r}; choose 'baseline' or 'ggn'")
    if not ground_truth:
        return _pseudo_only_dataset(train_json, images, variant, pseudo_gt, pseudo_store, flip, max_images)
    if variant == "ggn" and pseudo_gt is None and pseudo_store is None:
        raise InputError("--variant ggn needs pseudo-GT: pass --pseudo-gt pseudo_gt.json or --pseudo-store DIR "
                         "(outputs of `ggn merge`)")
    if variant == "baseline" and (pseudo_gt is not None or pseudo_store is not None):
        log.warning("--variant baseline ignores the pseudo-GT given")
        pseudo_gt = pseudo_store = None
    base = CocoInstances(train_json, images)
    if max_images is not None:
        base.ids = base.ids[:max_images]
    store = None
    if pseudo_gt is not None:
        if Path(pseudo_gt).resolve() == Path(train_json).resolve():
            raise InputError(f"--pseudo-gt {pseudo_gt} is the training file itself: its objects would be learned "
                             "twice, once as pseudo-GT; pass the pseudo_gt.json that `ggn merge` wrote")
        pseudo = read_pseudo_gt(pseudo_gt, set(base.images))
        base.add_annotations(pseudo)
        used = set(base.ids)
        pseudo = [a for a in pseudo if a["image_id"] in used]
        log.info("pseudo-GT: %d objects from %s on %d of the %d training images", len(pseudo), pseudo_gt,
                 len({a["image_id"] for a in pseudo}), len(used))
    elif pseudo_store is not None:
        store = _open_store(pseudo_store)
    transform = RandomHorizontalFlip(flip) if flip > 0 else None
    return DetectorDataset(base, pseudo_store=store, transform=transform)


def _open_store(pseudo_store: str | Path | Any):
    """A PseudoStore for a path; anything else is taken as a store already (tests pass their own)."""
    if isinstance(pseudo_store, (str, Path)):
        from ggn.merge import PseudoStore

        return PseudoStore(pseudo_store)
    return pseudo_store


def _pseudo_only_dataset(train_json, images, variant, pseudo_gt, pseudo_store, flip, max_images) -> DetectorDataset:
    if variant != "ggn" or (pseudo_gt is None and pseudo_store is None):
        raise InputError("--no-ground-truth trains on pseudo-GT alone: use --variant ggn with --pseudo-gt or "
                         "--pseudo-store")
    transform = RandomHorizontalFlip(flip) if flip > 0 else None
    base = CocoInstances(train_json, images, with_annotations=False)
    listed = set(base.images)
    if pseudo_gt is not None:
        anns = read_pseudo_gt(pseudo_gt, listed)
        base.add_annotations(anns)
        with_pseudo = sorted({a["image_id"] for a in anns})
        store = None
    else:
        store = _open_store(pseudo_store)
        stored = store.image_ids()
        with_pseudo = [i for i in stored if i in listed]
        if len(with_pseudo) < len(stored):
            log.warning("%d images of the pseudo-GT store are not in %s; skipped", len(stored) - len(with_pseudo),
                        train_json)
    base.ids = with_pseudo
    log.info("training on pseudo-GT alone: %d of %d listed images have pseudo-GT (the rest are left out)",
             len(with_pseudo), len(listed))
    if max_images is not None:
        base.ids = base.ids[:max_images]
    return DetectorDataset(base, pseudo_store=store, transform=transform)
