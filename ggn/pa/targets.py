"""Pairwise-affinity targets and loss: which neighbouring pixels belong to the same instance."""
from __future__ import annotations

from typing import Iterable, Sequence

import torch
import torch.nn.functional as F

# Order of the 8 neighbours at one distance, as (dy, dx): up, left, up-left, down-left, then their
# mirrors. Channel order follows the reference implementation (facebookresearch/Generic-Grouping).
_UNIT_NEIGHBOURS = ((-1, 0), (0, -1), (-1, -1), (1, -1), (1, 0), (0, 1), (1, 1), (-1, 1))


def neighbour_offsets(distances: Iterable[int] = (1,)) -> list[tuple[int, int]]:
    """The 8 neighbours at each distance (in pixels), as (dy, dx) pairs."""
    offsets = []
    for d in distances:
        d = int(d)
        if d < 1:
            raise ValueError(f"neighbour distance must be >= 1, got {d}")
        offsets.extend((dy * d, dx * d) for dy, dx in _UNIT_NEIGHBOURS)
    return offsets


def parse_offsets(tokens: Sequence[str | int] | None) -> list[tuple[int, int]]:
    """CLI/config offsets: an integer d means the 8 neighbours at distance d; "dy,dx" one offset."""
    if not tokens:
        return neighbour_offsets((1,))
    offsets: list[tuple[int, int]] = []
    for tok in tokens:
        if isinstance(tok, (list, tuple)):
            dy, dx = (int(v) for v in tok)
            offsets.append((dy, dx))
        elif isinstance(tok, int) or "," not in str(tok):
            offsets.extend(neighbour_offsets((int(tok),)))
        else:
            dy, dx = (int(v) for v in str(tok).split(","))
            offsets.append((dy, dx))
    for dy, dx in offsets:
        if dy == 0 and dx == 0:
            raise ValueError("offset (0, 0) pairs a pixel with itself; use non-zero offsets")
    return offsets


def _shift(x: torch.Tensor, dy: int, dx: int, margin: int, fill) -> torch.Tensor:
    """x[..., y + dy, x + dx] for every (y, x), with `fill` where the neighbour leaves the tensor."""
    h, w = x.shape[-2:]
    padded = F.pad(x, (margin, margin, margin, margin), value=fill)
    return padded[..., margin + dy: margin + dy + h, margin + dx: margin + dx + w]


TARGETS = ("reference", "objects")


def affinity_targets(instance_ids: torch.Tensor, valid: torch.Tensor | None = None,
                     offsets: Sequence[tuple[int, int]] | None = None, ignore: torch.Tensor | None = None,
                     reduce: str | None = None, target: str = "reference") -> tuple[torch.Tensor, torch.Tensor]:
    """Affinity of every pixel with its neighbour at each offset, and the pixels/pairs that count in the loss.

    instance_ids: int [B,H,W], 0 = background. valid: bool [B,H,W], False on padding (default all True).
    ignore: bool [B,H,W], True on crowd regions: those pixels never count (their neighbours see background).
    Returns (target float [B,C,H,W], counted bool [B,C,H,W]) with C = len(offsets), or C = 1 with
    reduce="mean" (the released GGN config, `affinity_reduction="mean"`).

    target="reference" follows Generic-Grouping's `palette2affinity` / `collapse_affinity` /
    `palette2weight` (mmdet/models/detectors/pa_predictor.py): a pair is 1 when both pixels carry the same
    id, background-background included, and 0 when the ids differ or the neighbour lies outside the image
    (padding counts as outside); "mean" averages over all C offsets, so the image edge reads as a weak
    boundary. A pair counts when either pixel is on an object (bg-bg pairs are excluded from the loss);
    after "mean", a pixel counts when any of its pairs does.

    target="objects": a pair is 1 only inside one object; pairs leaving the image are dropped and "mean"
    averages over the in-image pairs only. `ggn eval-pa` scores grouping with it; as a training target (this
    project's earlier default) it did worse on the demo (mask AR@100 21.5 against 21.9, candidate recall of
    unseen objects 17% against 21%), so training always uses the reference's.
    """
    if instance_ids.dim() != 3:
        raise ValueError(f"instance_ids must be [B,H,W], got shape {tuple(instance_ids.shape)}")
    if target not in TARGETS:
        raise ValueError(f"target must be one of {TARGETS}, got {target!r}")
    if reduce not in (None, "none", "mean"):
        raise ValueError(f"reduce must be 'mean' or 'none', got {reduce!r}")
    offsets = list(offsets) if offsets is not None else neighbour_offsets((1,))
    ids = instance_ids.long()
    inside = torch.ones_like(ids, dtype=torch.bool) if valid is None else valid.bool()
    usable = inside if ignore is None else inside & ~ignore.bool()
    margin = max(max(abs(dy), abs(dx)) for dy, dx in offsets)
    # Outside the image (and on padding) a neighbour's id is -1: it never equals a real id.
    ids = torch.where(inside, ids, torch.full_like(ids, -1))
    ids_n = torch.stack([_shift(ids, dy, dx, margin, -1) for dy, dx in offsets], dim=1)
    ids_c = ids.unsqueeze(1)
    on_object = (ids_c > 0) | (ids_n > 0)
    if target == "reference":
        pair_target = (ids_c == ids_n).float()
        counted = usable.unsqueeze(1) & on_object
        if reduce == "mean":
            return pair_target.mean(dim=1, keepdim=True), counted.any(dim=1, keepdim=True)
        return pair_target, counted
    usable_n = torch.stack([_shift(usable, dy, dx, margin, False) for dy, dx in offsets], dim=1)
    pair_usable = usable.unsqueeze(1) & usable_n
    pair_target = ((ids_c == ids_n) & (ids_c > 0)).float()
    counted = pair_usable & on_object
    if reduce == "mean":
        n_pairs = pair_usable.sum(dim=1, keepdim=True)
        mean_target = (pair_target * pair_usable).sum(dim=1, keepdim=True) / n_pairs.clamp(min=1)
        return mean_target, counted.any(dim=1, keepdim=True)
    return pair_target, counted


def affinity_loss(logits: torch.Tensor, target: torch.Tensor, counted: torch.Tensor,
                  pos_weight: float = 0.05) -> torch.Tensor:
    """Binary cross-entropy with positive-class weight, averaged over counted entries of each image, then
    over the images of the batch (as the reference: per image sum / (count + 1e-5), mean over the batch).

    The paper weights the positive (same-instance) class by 0.05 because most counted pairs are inside
    objects; entries that do not count (padding, background-background, crowd) contribute nothing.
    """
    if logits.shape != target.shape:
        raise ValueError(f"logits {tuple(logits.shape)} and target {tuple(target.shape)} differ in shape")
    weight = torch.tensor(pos_weight, dtype=torch.float32, device=logits.device)
    per_pair = F.binary_cross_entropy_with_logits(logits.float(), target.float(), pos_weight=weight,
                                                  reduction="none")
    counted_f = counted.float()
    per_image = (per_pair * counted_f).flatten(1).sum(1) / (counted_f.flatten(1).sum(1) + _LOSS_EPS)
    return per_image.mean()


_LOSS_EPS = 1e-5  # pa_predictor.py's EPS: an image with nothing counted adds 0


def masks_to_instance_ids(masks: torch.Tensor, iscrowd: torch.Tensor | None = None
                          ) -> tuple[torch.Tensor, torch.Tensor]:
    """bool [N,H,W] instance masks -> (int32 id map [H,W], 0 = background; bool crowd map [H,W]).

    Where masks overlap, the later one wins (COCO-style occlusion order); crowd masks become the
    ignore map instead of ids.
    """
    n, h, w = masks.shape
    ids = torch.zeros((h, w), dtype=torch.int32)
    crowd = torch.zeros((h, w), dtype=torch.bool)
    if n == 0:
        return ids, crowd
    is_crowd = iscrowd.bool() if iscrowd is not None else torch.zeros(n, dtype=torch.bool)
    things = masks[~is_crowd]
    if things.shape[0]:
        labels = torch.arange(1, things.shape[0] + 1, dtype=torch.int32).view(-1, 1, 1)
        # Max over "label where covered" picks the latest mask covering a pixel.
        ids = (things.to(torch.int32) * labels).amax(dim=0).to(torch.int32)
    if is_crowd.any():
        crowd = masks[is_crowd].any(dim=0)
    return ids, crowd
