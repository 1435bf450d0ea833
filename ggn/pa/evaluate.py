"""Affinity BCE/L1 and boundary precision/recall of a PA network on held-out images, with a gradient baseline."""
from __future__ import annotations

import argparse
import logging
from pathlib import Path

import numpy as np
from scipy import ndimage
from tqdm import tqdm

from ggn.coco_data import CocoInstances
from ggn.io import InputError, atomic_write_json, pick_device
from ggn.pa.data import resize_ids
from ggn.pa.model import inference_size, load_pa_model, predict_affinity, resize_image
from ggn.pa.targets import affinity_targets, masks_to_instance_ids

log = logging.getLogger(__name__)

# Boundary matching tolerance in pixels at the network resolution.
TOLERANCE_PX = 2
THRESHOLDS = np.round(np.linspace(0.04, 0.96, 24), 3)
_EPS = 1e-6


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--checkpoint", required=True, type=Path, help="PA checkpoint from ggn train-pa")
    p.add_argument("--annotations", required=True, type=Path, help="COCO annotations of held-out images (eval.json)")
    p.add_argument("--images", required=True, type=Path, help="image folder (joined with each file_name)")
    p.add_argument("--out", required=True, type=Path, help="metrics JSON")
    p.add_argument("--max-images", type=int, default=None, help="evaluate the first N images only")
    p.add_argument("--input-size", type=int, default=None, help="long side at inference (default: the checkpoint's)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--tolerance", type=float, default=TOLERANCE_PX, help="boundary match distance in pixels")
    p.add_argument("--device", default="auto")


def instance_boundaries(ids: np.ndarray, ignore: np.ndarray | None = None) -> np.ndarray:
    """Pixels whose 4-neighbour inside the image carries another instance id (both sides of each edge)."""
    b = np.zeros(ids.shape, dtype=bool)
    dy = ids[1:, :] != ids[:-1, :]
    dx = ids[:, 1:] != ids[:, :-1]
    b[1:, :] |= dy
    b[:-1, :] |= dy
    b[:, 1:] |= dx
    b[:, :-1] |= dx
    if ignore is not None:
        b &= ~ignore
    return b


def region_contour(region: np.ndarray) -> np.ndarray:
    """Pixels of `region` with a 4-neighbour inside the image that is not in it (a one-pixel outline)."""
    return region & instance_boundaries(region.astype(np.int8))


def potential_boundaries(potential: np.ndarray, threshold: float = 0.5) -> np.ndarray:
    """Boundary of the low-potential set: potential < threshold, thinned to the outline of that set
    (background is low too, so the set itself is not a boundary)."""
    return region_contour(potential < threshold)


def gradient_strength(image: np.ndarray) -> np.ndarray:
    """Normalised colour gradient magnitude in [0,1] (Gaussian sigma 1, Sobel, max over channels)."""
    img = image.astype(np.float32)
    mags = []
    for c in range(img.shape[2]):
        smooth = ndimage.gaussian_filter(img[..., c], 1.0)
        gx = ndimage.sobel(smooth, axis=1)
        gy = ndimage.sobel(smooth, axis=0)
        mags.append(np.hypot(gx, gy))
    mag = np.max(mags, axis=0)
    scale = np.percentile(mag, 99.5)
    return np.clip(mag / max(scale, _EPS), 0.0, 1.0)


def gradient_edges_nms(strength: np.ndarray, threshold: float) -> np.ndarray:
    """Canny-style thinning without hysteresis: strength above threshold and a local maximum across the edge."""
    return (strength > threshold) & _nms_mask(strength)


def _nms_mask(strength: np.ndarray) -> np.ndarray:
    """Local maxima along the gradient-of-strength direction, quantised to 4 directions."""
    gy = ndimage.sobel(strength, axis=0)
    gx = ndimage.sobel(strength, axis=1)
    angle = (np.rad2deg(np.arctan2(gy, gx)) + 180.0) % 180.0
    p = np.pad(strength, 1, mode="edge")
    h, w = strength.shape

    def at(dy, dx):
        return p[1 + dy:1 + dy + h, 1 + dx:1 + dx + w]

    keep = np.zeros_like(strength, dtype=bool)
    for lo, hi, (dy, dx) in ((0, 22.5, (0, 1)), (157.5, 180.1, (0, 1)), (22.5, 67.5, (1, 1)),
                             (67.5, 112.5, (1, 0)), (112.5, 157.5, (1, -1))):
        sel = (angle >= lo) & (angle < hi)
        keep |= sel & (strength >= at(dy, dx)) & (strength >= at(-dy, -dx))
    return keep


class BoundaryCounts:
    """Tolerance-matched boundary counts summed over images (precision, recall, F from the totals)."""

    def __init__(self):
        self.pred_matched = 0
        self.pred_total = 0
        self.gt_matched = 0
        self.gt_total = 0

    def add(self, pred: np.ndarray, gt: np.ndarray, gt_dist: np.ndarray, tolerance: float) -> None:
        self.pred_total += int(pred.sum())
        self.pred_matched += int((pred & (gt_dist <= tolerance)).sum())
        self.gt_total += int(gt.sum())
        if pred.any():
            pred_dist = ndimage.distance_transform_edt(~pred)
            self.gt_matched += int((gt & (pred_dist <= tolerance)).sum())

    def result(self) -> dict:
        p = self.pred_matched / self.pred_total if self.pred_total else 0.0
        r = self.gt_matched / self.gt_total if self.gt_total else 0.0
        f = 2 * p * r / (p + r) if p + r > 0 else 0.0
        return {"precision": p, "recall": r, "f": f, "pred_pixels": self.pred_total, "gt_pixels": self.gt_total}


def evaluate_pa(checkpoint: Path, annotations: Path, images: Path, max_images: int | None = None,
                input_size: int | None = None, batch_size: int = 8, tolerance: float = TOLERANCE_PX,
                device: str = "auto") -> dict:
    device_t = pick_device(device)
    model, config = load_pa_model(checkpoint, device_t)
    size = inference_size(config, input_size)
    data = CocoInstances(annotations, images)
    if max_images:
        data.ids = data.ids[:max_images]
    if len(data) == 0:
        raise InputError(f"{annotations} has no images to evaluate")
    data.verify_images()
    offsets = [tuple(o) for o in config["offsets"]]
    sums = {k: 0.0 for k in ("bce_within", "bce_across", "l1_within", "l1_across")}
    n_within = n_across = 0
    pa_fixed = BoundaryCounts()
    pa_sweep = {float(t): BoundaryCounts() for t in THRESHOLDS}
    grad_sweep = {float(t): BoundaryCounts() for t in THRESHOLDS}
    n_images = 0
    for start in tqdm(range(0, len(data), batch_size), desc="eval-pa", unit="batch"):
        items = [data[i] for i in range(start, min(start + batch_size, len(data)))]
        arrays = [img.permute(1, 2, 0).numpy() for img, _ in items]
        probs = predict_affinity(model, arrays, config, device_t, input_size=size, batch_size=batch_size)
        for (img, target), prob in zip(items, probs):
            h, w = prob.shape[-2:]
            ids, crowd = masks_to_instance_ids(target["masks"], target["iscrowd"])
            ids = resize_ids(ids, (h, w))
            crowd = resize_ids(crowd, (h, w))
            pair_t, counted = affinity_targets(ids[None], None, offsets, ignore=crowd[None], reduce=None,
                                               target="objects")  # in-image pairs only: grouping, not edges
            pair_t, counted = pair_t[0].numpy(), counted[0].numpy()
            pred = np.broadcast_to(prob, pair_t.shape) if prob.shape[0] == 1 else prob
            pc = np.clip(pred, _EPS, 1 - _EPS)
            bce = -(pair_t * np.log(pc) + (1 - pair_t) * np.log(1 - pc))
            l1 = np.abs(pred - pair_t)
            within = counted & (pair_t == 1)
            across = counted & (pair_t == 0)
            sums["bce_within"] += float(bce[within].sum())
            sums["bce_across"] += float(bce[across].sum())
            sums["l1_within"] += float(l1[within].sum())
            sums["l1_across"] += float(l1[across].sum())
            n_within += int(within.sum())
            n_across += int(across.sum())

            ids_np, crowd_np = ids.numpy(), crowd.numpy()
            gt = instance_boundaries(ids_np, crowd_np)
            gt_dist = ndimage.distance_transform_edt(~gt) if gt.any() else np.full(gt.shape, np.inf)
            potential = prob.min(axis=0)
            keep = ~crowd_np
            pa_fixed.add(potential_boundaries(potential, 0.5) & keep, gt, gt_dist, tolerance)
            for t, counts in pa_sweep.items():
                counts.add(potential_boundaries(potential, t) & keep, gt, gt_dist, tolerance)
            resized = resize_image(img, (h, w)).permute(1, 2, 0).numpy()
            strength = gradient_strength(resized)
            nms = _nms_mask(strength)
            for t, counts in grad_sweep.items():
                counts.add((strength > t) & nms & keep, gt, gt_dist, tolerance)
            n_images += 1

    def best(sweep: dict) -> dict:
        t, counts = max(sweep.items(), key=lambda kv: kv[1].result()["f"])
        return {"threshold": t, **counts.result()}

    n_all = n_within + n_across
    return {
        "checkpoint": str(checkpoint), "annotations": str(annotations), "images": n_images,
        "input_size": size, "offsets": [list(o) for o in offsets], "reduce": config.get("reduce"),
        "affinity": {
            "bce": (sums["bce_within"] + sums["bce_across"]) / max(1, n_all),
            "bce_within": sums["bce_within"] / max(1, n_within), "bce_across": sums["bce_across"] / max(1, n_across),
            "l1": (sums["l1_within"] + sums["l1_across"]) / max(1, n_all),
            "l1_within": sums["l1_within"] / max(1, n_within), "l1_across": sums["l1_across"] / max(1, n_across),
            "pairs_within": n_within, "pairs_across": n_across,
            "note": ("unweighted BCE and L1 of the predicted probability per counted neighbour pair; within = "
                     "both pixels in the same instance, across = pairs straddling two objects or object and "
                     "background; a one-channel (reduce=mean) prediction is compared with every pair of its pixel"),
        },
        "boundary": {
            "tolerance_px": tolerance,
            "pa": {"threshold": 0.5, **pa_fixed.result()},
            "pa_best_threshold": best(pa_sweep),
            "gradient_baseline": best(grad_sweep),
            "note": ("boundaries at network resolution; PA boundary = outline of {potential < threshold}, "
                     "potential = min over affinity channels; gradient baseline = Gaussian(1)+Sobel colour "
                     "gradient, normalised per image, non-maximum suppressed, with an ORACLE threshold (best F "
                     "over these same images); pa_best_threshold is likewise an oracle; matches within "
                     "tolerance_px via distance transform; GT boundary = both sides of every instance edge"),
        },
    }


def run(args: argparse.Namespace) -> int:
    metrics = evaluate_pa(args.checkpoint, args.annotations, args.images, max_images=args.max_images,
                          input_size=args.input_size, batch_size=args.batch_size, tolerance=args.tolerance,
                          device=args.device)
    atomic_write_json(args.out, metrics, indent=2)
    b = metrics["boundary"]
    log.info("boundary F: PA %.3f (threshold 0.5), gradient baseline %.3f (oracle threshold %.2f); written to %s",
             b["pa"]["f"], b["gradient_baseline"]["f"], b["gradient_baseline"]["threshold"], args.out)
    return 0
