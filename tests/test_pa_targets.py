"""Affinity targets, loss masks and the weighted BCE on hand-made masks."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from ggn.pa.targets import (affinity_loss, affinity_targets, masks_to_instance_ids, neighbour_offsets,
                            parse_offsets)


def two_objects() -> torch.Tensor:
    """6x6: object 1 in columns 0-1 of rows 0-3, object 2 touching it in columns 2-3; rest background."""
    ids = torch.zeros((1, 6, 6), dtype=torch.int32)
    ids[0, 0:4, 0:2] = 1
    ids[0, 0:4, 2:4] = 2
    return ids


def test_offsets_order_and_distance():
    assert neighbour_offsets((1,))[:2] == [(-1, 0), (0, -1)]
    assert len(neighbour_offsets((1, 3))) == 16
    assert neighbour_offsets((3,))[4] == (3, 0)
    assert parse_offsets(["1", "0,2"]) == neighbour_offsets((1,)) + [(0, 2)]
    with pytest.raises(ValueError):
        parse_offsets(["0,0"])


def test_objects_targets_values_distance_one():
    ids = two_objects()
    offsets = [(0, 1), (1, 0)]  # right, down
    target, counted = affinity_targets(ids, offsets=offsets, target="objects")
    assert target.shape == (1, 2, 6, 6) and counted.shape == (1, 2, 6, 6)
    assert target.dtype == torch.float32 and counted.dtype == torch.bool
    right, down = target[0, 0], target[0, 1]
    assert right[0, 0] == 1  # 1-1
    assert right[0, 1] == 0  # 1-2: different objects
    assert right[0, 2] == 1  # 2-2
    assert right[0, 3] == 0 and counted[0, 0, 0, 3]  # object-background counts
    assert right[0, 4] == 0 and not counted[0, 0, 0, 4]  # background-background excluded
    assert not counted[0, 0, 0, 5]  # neighbour outside the image
    assert down[2, 0] == 1 and down[3, 0] == 0 and counted[0, 1, 3, 0]
    assert not counted[0, 1, 5, 0]
    # background pixel next to an object: target 0, counted
    assert right[4, 0] == 0 and not counted[0, 0, 4, 0]
    assert down[3, 1] == 0 and counted[0, 1, 3, 1]


def test_targets_distance_two_and_symmetry():
    ids = two_objects()
    target, counted = affinity_targets(ids, offsets=neighbour_offsets((2,)), target="objects")
    assert target.shape == (1, 8, 6, 6)
    up, right = 0, 5  # (-2,0) and (0,2)
    assert target[0, right, 0, 0] == 0  # column 0 vs column 2: object 1 vs object 2
    assert target[0, right, 0, 2] == 0 and counted[0, right, 0, 2]  # object 2 vs background (col 4)
    assert target[0, up, 3, 0] == 1  # row 3 vs row 1, same object
    assert not counted[0, up, 1, 0]  # row -1 is outside
    assert not counted[0, right, 0, 4]  # background with out-of-image neighbour
    # channel k and its mirror k+4 describe the same pairs seen from either pixel
    t1, c1 = affinity_targets(ids, offsets=neighbour_offsets((1,)), target="objects")
    assert torch.equal(t1[0, 0, 1:, :], t1[0, 4, :-1, :])
    assert torch.equal(c1[0, 1, :, 1:], c1[0, 5, :, :-1])


def test_padding_and_crowd_excluded():
    ids = two_objects()
    valid = torch.ones((1, 6, 6), dtype=torch.bool)
    valid[0, :, 3:] = False  # columns 3-5 are padding
    target, counted = affinity_targets(ids, valid, offsets=[(0, 1)], target="objects")
    assert counted[0, 0, 0, 1]
    assert not counted[0, 0, 0, 2]  # neighbour (col 3) is padding
    assert not counted[0, 0, :, 3:].any()
    crowd = torch.zeros((1, 6, 6), dtype=torch.bool)
    crowd[0, 0, 0] = True
    _, counted = affinity_targets(ids, offsets=[(0, 1)], ignore=crowd, target="objects")
    assert not counted[0, 0, 0, 0] and counted[0, 0, 1, 0]


def test_objects_mean_reduction():
    ids = two_objects()
    target, counted = affinity_targets(ids, offsets=neighbour_offsets((1,)), reduce="mean", target="objects")
    assert target.shape == (1, 1, 6, 6) and counted.shape == (1, 1, 6, 6)
    assert target[0, 0, 1, 0] == 1  # deep inside object 1 (left image edge is not a boundary)
    assert target[0, 0, 1, 1] == pytest.approx(5 / 8)  # 3 of 8 neighbours in object 2
    assert target[0, 0, 0, 1] == pytest.approx(3 / 5)  # top edge: 5 in-image neighbours, 3 in object 1
    assert target[0, 0, 4, 0] == 0 and counted[0, 0, 4, 0]  # background touching object 1
    assert not counted[0, 0, 5, 5]  # background far from objects
    with pytest.raises(ValueError):
        affinity_targets(ids, reduce="max")


def test_reference_targets_follow_palette2affinity():
    """pa_predictor.py: same id = 1 (background pairs too), different or outside the image = 0, mean over 8."""
    ids = two_objects()
    target, counted = affinity_targets(ids, offsets=[(0, 1), (1, 0)])
    right, down = target[0, 0], target[0, 1]
    assert right[0, 0] == 1 and right[0, 1] == 0 and right[0, 2] == 1
    assert right[0, 4] == 1 and not counted[0, 0, 0, 4]  # background-background: 1, but not in the loss
    assert right[0, 3] == 0 and counted[0, 0, 0, 3]  # object-background
    assert right[0, 5] == 0 and not counted[0, 0, 0, 5]  # background pixel, neighbour outside the image
    assert right[0, 5] == 0 and down[5, 0] == 0  # outside the image is "different"
    assert down[3, 1] == 0 and counted[0, 1, 3, 1]
    mean, counted = affinity_targets(ids, reduce="mean")
    assert mean.shape == (1, 1, 6, 6) and counted.shape == (1, 1, 6, 6)
    assert mean[0, 0, 1, 0] == pytest.approx(5 / 8)  # left image edge: 3 neighbours outside count as 0
    assert mean[0, 0, 0, 0] == pytest.approx(3 / 8)  # corner: 5 outside
    assert mean[0, 0, 1, 1] == pytest.approx(5 / 8)  # 3 of 8 neighbours in object 2
    assert mean[0, 0, 2, 5] == pytest.approx(5 / 8) and not counted[0, 0, 2, 5]  # background at the right edge
    assert mean[0, 0, 4, 4] == pytest.approx(7 / 8) and counted[0, 0, 4, 4]  # background touching object 2
    assert mean[0, 0, 5, 5] == pytest.approx(3 / 8) and not counted[0, 0, 5, 5]
    # padding is outside the image; crowd pixels never count and read as background to their neighbours
    valid = torch.ones((1, 6, 6), dtype=torch.bool)
    valid[0, :, 3:] = False
    padded, counted = affinity_targets(ids, valid, reduce="mean")
    assert padded[0, 0, 1, 2] == pytest.approx(2 / 8) and not counted[0, 0, :, 3:].any()
    crowd = torch.zeros((1, 6, 6), dtype=torch.bool)
    crowd[0, 5, 5] = True
    _, counted = affinity_targets(ids, ignore=crowd, reduce="mean")
    assert not counted[0, 0, 5, 5]


def test_batched_matches_single():
    ids = torch.cat([two_objects(), two_objects().flip(-1)])
    t, c = affinity_targets(ids)
    t1, c1 = affinity_targets(ids[1:])
    assert torch.equal(t[1:], t1) and torch.equal(c[1:], c1)


def test_loss_ignores_uncounted_pairs():
    torch.manual_seed(0)
    target = torch.tensor([[[[1.0, 0.0, 1.0, 0.0]]]])
    counted = torch.tensor([[[[True, True, False, False]]]])
    logits = torch.randn(1, 1, 1, 4)
    loss = affinity_loss(logits, target, counted, pos_weight=0.05)
    expected = (0.05 * -F.logsigmoid(logits[0, 0, 0, 0]) - F.logsigmoid(-logits[0, 0, 0, 1])) / 2
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
    changed = logits.clone()
    changed[..., 2:] = 100.0  # wrong and huge, but not counted
    assert affinity_loss(changed, target, counted).item() == pytest.approx(loss.item(), rel=1e-6)
    # padding: nothing counted gives zero loss, not NaN
    empty = affinity_loss(logits, target, torch.zeros_like(counted))
    assert empty.item() == 0.0 and not math.isnan(empty.item())


def test_masks_to_instance_ids_occlusion_and_crowd():
    masks = torch.zeros((3, 4, 4), dtype=torch.bool)
    masks[0, :2, :2] = True
    masks[1, 1:3, 1:3] = True
    masks[2, 3, :] = True
    ids, crowd = masks_to_instance_ids(masks, torch.tensor([False, False, True]))
    assert ids[0, 0] == 1 and ids[1, 1] == 2 and ids[2, 2] == 2 and ids[3, 0] == 0
    assert crowd[3].all() and not crowd[:3].any()
    empty_ids, empty_crowd = masks_to_instance_ids(torch.zeros((0, 5, 7), dtype=torch.bool))
    assert empty_ids.shape == (5, 7) and not empty_ids.any() and not empty_crowd.any()
