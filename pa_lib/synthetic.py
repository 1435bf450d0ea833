"""Synthetic instance label maps, near-perfect potentials made from them, and recall of candidates against them."""
from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi


def random_label_map(
    height: int, width: int, num_objects: int, seed: int = 0, min_area: int = 60
) -> np.ndarray:
    """int32 [H,W]: 0 background, 1..N instances (random rotated ellipses, rectangles and blobs).

    Shapes are painted in order, so later ones occlude earlier ones and many instances touch.
    Fragments left by occlusion are dropped (only the largest connected piece of an instance is
    kept) and instances smaller than ``min_area`` are removed; labels are renumbered 1..N.
    """
    rng = np.random.default_rng(seed)
    labels = np.zeros((height, width), np.int32)
    yy, xx = np.mgrid[:height, :width].astype(np.float32)
    short = min(height, width)
    for k in range(1, num_objects + 1):
        # Radii scale with the image and shrink with the object count so that objects stay visible.
        r_max = max(4.0, short / (1.6 * np.sqrt(num_objects) + 1.0))
        ry, rx = rng.uniform(0.45 * r_max, r_max, 2)
        cy = rng.uniform(ry * 0.6, height - ry * 0.6)
        cx = rng.uniform(rx * 0.6, width - rx * 0.6)
        angle = rng.uniform(0, np.pi)
        ca, sa = np.cos(angle), np.sin(angle)
        u = ((xx - cx) * ca + (yy - cy) * sa) / rx
        v = (-(xx - cx) * sa + (yy - cy) * ca) / ry
        kind = rng.integers(0, 3)
        if kind == 0:
            shape = u * u + v * v <= 1.0
        elif kind == 1:
            shape = (np.abs(u) <= 0.85) & (np.abs(v) <= 0.85)
        else:
            # Blob: an ellipse whose radius wobbles with the polar angle.
            phi = np.arctan2(v, u)
            wobble = 1.0 + 0.25 * np.sin(3 * phi + rng.uniform(0, 2 * np.pi)) + 0.15 * np.cos(5 * phi)
            shape = np.sqrt(u * u + v * v) <= wobble * 0.9
        labels[shape] = k
    out = np.zeros_like(labels)
    next_id = 1
    for k in range(1, num_objects + 1):
        pieces, n = ndi.label(labels == k)
        if n == 0:
            continue
        sizes = np.bincount(pieces.ravel())[1:]
        biggest = int(np.argmax(sizes)) + 1
        if sizes[biggest - 1] >= min_area:
            out[pieces == biggest] = next_id
            next_id += 1
    return out


def instance_boundaries(labels: np.ndarray) -> np.ndarray:
    """bool [H,W]: pixels with a 4-neighbour of another label (both sides of every contour)."""
    b = np.zeros(labels.shape, bool)
    dv = labels[1:, :] != labels[:-1, :]
    dh = labels[:, 1:] != labels[:, :-1]
    b[1:, :] |= dv
    b[:-1, :] |= dv
    b[:, 1:] |= dh
    b[:, :-1] |= dh
    return b


def potential_from_labels(
    labels: np.ndarray, blur: float = 1.0, noise: float = 0.1, seed: int = 0, noise_scale: float = 12.0
) -> np.ndarray:
    """float32 [H,W] in [0,1]: 1 inside regions, 0 on instance boundaries, Gaussian-blurred, plus smooth noise.

    ``noise`` is the peak amplitude of low-frequency noise (white noise smoothed with a Gaussian of
    ``noise_scale`` pixels, rescaled to [-noise, noise]); it is what a trained affinity network's
    soft, uneven output looks like to the grouping, without changing where the boundaries are.
    """
    rng = np.random.default_rng(seed)
    potential = 1.0 - instance_boundaries(labels).astype(np.float32)
    if blur > 0:
        potential = ndi.gaussian_filter(potential, blur)
        lo, hi = potential.min(), potential.max()
        if hi > lo:
            potential = (potential - lo) / (hi - lo)
    if noise > 0:
        field = ndi.gaussian_filter(rng.standard_normal(labels.shape).astype(np.float32), noise_scale)
        peak = np.abs(field).max()
        if peak > 0:
            potential = potential + noise * field / peak
    return np.clip(potential, 0.0, 1.0).astype(np.float32)


def _intersections(masks: np.ndarray, others: np.ndarray) -> np.ndarray:
    """int64 [len(masks), len(others)] pixel counts of pairwise intersections (bool masks).

    Plain boolean counting: float matrix products on huge, thin mask matrices are slow in some
    BLAS builds when many threads compete for few cores.
    """
    a = masks.reshape(len(masks), -1)
    b = others.reshape(len(others), -1)
    return np.array([np.count_nonzero(b & row, axis=1) for row in a], np.int64).reshape(len(a), len(b))


def best_ious(masks: np.ndarray, gt_masks: np.ndarray) -> np.ndarray:
    """float [G]: for each ground-truth mask, its best IoU with any of ``masks`` (0 when there are none)."""
    if len(gt_masks) == 0:
        return np.zeros(0)
    if len(masks) == 0:
        return np.zeros(len(gt_masks))
    masks, gt_masks = np.asarray(masks, bool), np.asarray(gt_masks, bool)
    inter = _intersections(gt_masks, masks)
    area_g = gt_masks.reshape(len(gt_masks), -1).sum(1)
    area_m = masks.reshape(len(masks), -1).sum(1)
    union = area_g[:, None] + area_m[None, :] - inter
    return (inter / np.maximum(union, 1)).max(1)


def recall(masks: np.ndarray, labels: np.ndarray, iou: float = 0.5) -> tuple[int, int]:
    """(instances recovered at IoU >= ``iou`` by some mask, number of instances) for a label map."""
    ids = np.unique(labels)
    ids = ids[ids > 0]
    if len(ids) == 0:
        return 0, 0
    flat = labels.ravel()
    area = np.bincount(flat, minlength=ids.max() + 1)
    best = np.zeros(ids.max() + 1)
    for m in np.asarray(masks, bool).reshape(len(masks), labels.size):
        inter = np.bincount(flat[m], minlength=ids.max() + 1)
        best = np.maximum(best, inter / np.maximum(area + m.sum() - inter, 1))
    return int((best[ids] >= iou).sum()), len(ids)
