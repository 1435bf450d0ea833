"""PA training data: COCO images resized (aspect kept) and flipped with their instance-id maps, padded into batches."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ggn.coco_data import CocoInstances
from ggn.pa.model import IMAGENET_MEAN, resize_image, resized_shape
from ggn.pa.targets import masks_to_instance_ids


def resize_ids(ids: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Nearest-neighbour resize of an integer/bool map [H,W] (labels must not be blended)."""
    if tuple(ids.shape) == tuple(size):
        return ids
    out = F.interpolate(ids[None, None].float(), size=size, mode="nearest-exact")[0, 0]
    return out.to(ids.dtype)


class PATrainingSet(torch.utils.data.Dataset):
    """Yields dicts: image uint8 [3,h,w] (long side input_size), ids int32 [h,w] (0 = background),
    crowd bool [h,w], image_id. Flips are drawn from (seed, epoch, index), so a resumed run and any
    number of workers see the same augmentation."""

    def __init__(self, ann_file: str | Path, image_root: str | Path, input_size: int = 512, flip: bool = True,
                 seed: int = 0, max_images: int | None = None):
        self.coco = CocoInstances(ann_file, image_root)
        if max_images:
            self.coco.ids = self.coco.ids[:max_images]
        self.input_size = int(input_size)
        self.flip = flip
        self.seed = int(seed)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.coco)

    def __getitem__(self, index: int) -> dict:
        image, target = self.coco[index]
        ids, crowd = masks_to_instance_ids(target["masks"], target["iscrowd"])
        size = resized_shape(image.shape[1], image.shape[2], self.input_size)
        image = resize_image(image, size).round_().to(torch.uint8)
        ids = resize_ids(ids, size)
        crowd = resize_ids(crowd, size)
        if self.flip:
            rng = np.random.default_rng([self.seed, self.epoch, index])
            if rng.random() < 0.5:
                image, ids, crowd = image.flip(-1), ids.flip(-1), crowd.flip(-1)
        return {"image": image.contiguous(), "ids": ids.contiguous(), "crowd": crowd.contiguous(),
                "image_id": target["image_id"]}


def collate_padded(samples: list[dict], size: int | None = None) -> dict:
    """Pad to the batch's largest image (at least `size` if given) at the bottom/right.

    A batch of one image (the paper rows: 1 per GPU) is not padded at all, as the reference (pa_train.py's
    pipeline has no Pad; the network takes any size). Images are padded with the mean colour (zero after
    normalisation); `valid` marks real pixels so that padding never counts in the loss.
    """
    h = max(s["image"].shape[1] for s in samples)
    w = max(s["image"].shape[2] for s in samples)
    if size is not None:
        h, w = max(h, size), max(w, size)
    b = len(samples)
    fill = torch.tensor([round(m) for m in IMAGENET_MEAN], dtype=torch.uint8).view(3, 1, 1)
    images = fill.expand(3, h, w).repeat(b, 1, 1, 1)
    ids = torch.zeros((b, h, w), dtype=torch.int32)
    crowd = torch.zeros((b, h, w), dtype=torch.bool)
    valid = torch.zeros((b, h, w), dtype=torch.bool)
    for i, s in enumerate(samples):
        sh, sw = s["image"].shape[1:]
        images[i, :, :sh, :sw] = s["image"]
        ids[i, :sh, :sw] = s["ids"]
        crowd[i, :sh, :sw] = s["crowd"]
        valid[i, :sh, :sw] = True
    return {"images": images, "ids": ids, "crowd": crowd, "valid": valid,
            "image_ids": [s["image_id"] for s in samples]}
