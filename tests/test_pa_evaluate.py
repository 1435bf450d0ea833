"""Boundary extraction and tolerance matching used by ggn eval-pa."""
from __future__ import annotations

import numpy as np
from scipy import ndimage

from ggn.pa.evaluate import (BoundaryCounts, gradient_edges_nms, gradient_strength, instance_boundaries,
                             potential_boundaries, region_contour)


def square_ids(shift: int = 0) -> np.ndarray:
    ids = np.zeros((40, 40), dtype=np.int32)
    ids[10 + shift:30 + shift, 10:30] = 1
    ids[10 + shift:30 + shift, 30:35] = 2
    return ids


def test_instance_boundaries_both_sides():
    ids = square_ids()
    b = instance_boundaries(ids)
    assert b[10, 15] and b[9, 15]  # object row 10 and background row 9
    assert b[15, 29] and b[15, 30]  # between the two objects
    assert not b[20, 20] and not b[0, 0]
    ignore = np.zeros_like(b)
    ignore[:, :20] = True
    assert not instance_boundaries(ids, ignore)[:, :20].any()


def test_region_contour_is_one_pixel_outline():
    region = np.zeros((10, 10), dtype=bool)
    region[2:8, 2:8] = True
    c = region_contour(region)
    assert c.sum() == 20 and c[2, 2] and not c[4, 4] and not c[1, 1]


def boundary_prf(pred: np.ndarray, gt: np.ndarray, tol: float = 2) -> dict:
    counts = BoundaryCounts()
    counts.add(pred, gt, ndimage.distance_transform_edt(~gt), tol)
    return counts.result()


def test_perfect_potential_scores_one_and_shift_is_penalised():
    ids = square_ids()
    gt = instance_boundaries(ids)
    # potential: 1 inside objects, 0 on background and on the 1-px band at each instance edge
    potential = ((ids > 0) & ~instance_boundaries(ids)).astype(np.float32)
    r = boundary_prf(potential_boundaries(potential), gt)
    assert r["precision"] == 1.0 and r["recall"] == 1.0 and r["f"] == 1.0
    shifted = ((square_ids(5) > 0)).astype(np.float32)
    r2 = boundary_prf(potential_boundaries(shifted), gt)
    assert r2["f"] < 0.7
    empty = boundary_prf(np.zeros_like(gt), gt)
    assert empty["recall"] == 0.0 and empty["f"] == 0.0


def test_gradient_baseline_on_flat_shapes():
    ids = square_ids()
    rng = np.random.default_rng(0)
    image = rng.integers(0, 20, (40, 40, 3)).astype(np.uint8)
    image[ids == 1] = (200, 50, 50)
    image[ids == 2] = (50, 200, 50)
    strength = gradient_strength(image)
    assert strength.min() >= 0 and strength.max() <= 1
    edges = gradient_edges_nms(strength, 0.3)
    r = boundary_prf(edges, instance_boundaries(ids))
    assert r["f"] > 0.8
