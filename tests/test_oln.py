"""OLN as the reference: TBLR coding, MaxIoU assignment with low-quality matches, the objectness sampler that
fills with negatives, inside-anchor training, proposals without NMS, and the box head's loss averaging."""
from __future__ import annotations

import pytest
import torch
from torchvision.models.detection.image_list import ImageList

from ggn.detector.model import build_detector, detector_config
from torchvision.ops import box_iou

from ggn.detector.oln import (OlnRPN, aligned_iou, centerness, flatten_levels, max_iou_assign, random_sample,
                              tblr_decode, tblr_encode)

TINY = dict(kind="oln", backbone="resnet18", fpn_channels=16, representation_size=32, mask_channels=16,
            min_size=64, max_size=64, anchor_sizes=[8, 16, 32, 64, 128], norm="bn", frozen_stages=-1)


def test_tblr_coding_matches_mmdet():
    anchors = torch.tensor([[0.0, 0.0, 10.0, 20.0]])  # centre (5, 10), w 10, h 20
    boxes = torch.tensor([[2.0, 4.0, 9.0, 16.0]])
    tblr = tblr_encode(anchors, boxes)
    assert torch.allclose(tblr, torch.tensor([[0.3, 0.3, 0.3, 0.4]]))  # (10-4)/20, (16-10)/20, (5-2)/10, (9-5)/10
    assert torch.allclose(tblr_decode(anchors, tblr), boxes)
    assert torch.allclose(tblr_decode(anchors, torch.tensor([[1.0, 1.0, 1.0, 1.0]]), image_size=(25, 12)),
                          torch.tensor([[0.0, 0.0, 12.0, 25.0]]))  # linear, clipped to (h, w)


def test_max_iou_assign_with_low_quality_matches():
    ious = torch.tensor([[0.8, 0.5, 0.2, 0.05, 0.0],
                         [0.1, 0.1, 0.35, 0.05, 0.0],
                         [0.0, 0.0, 0.0, 0.25, 0.25]])
    got = max_iou_assign(ious, 0.7, 0.3, 0.3)
    # anchor 0 >= 0.7 -> gt 0; anchor 1 in the ignore band; anchor 2 is gt 1's best (0.35 >= 0.3); gt 2's best
    # (0.25) is below min_pos_iou, so anchors 3 and 4 stay negative
    assert got.tolist() == [0, -2, 1, -1, -1]
    got = max_iou_assign(ious, 0.3, 0.1, 0.3)  # the objectness assigner
    assert got.tolist() == [0, 0, 1, -2, -2]
    assert max_iou_assign(torch.zeros((0, 3)), 0.7, 0.3, 0.3).tolist() == [-1, -1, -1]


def test_objectness_sampler_fills_with_negatives():
    torch.manual_seed(0)
    assigned = torch.tensor([0, 1, 2] + [-1] * 300 + [-2] * 10)
    pos, neg = random_sample(assigned, 256, 1.0)
    assert pos.numel() == 3 and neg.numel() == 253 and (assigned[neg] == -1).all()
    pos, neg = random_sample(torch.tensor([0] * 300 + [-1] * 300), 256, 0.5)
    assert pos.numel() == 128 and neg.numel() == 128


def _rpn_inputs(model, size=64):
    images = ImageList(torch.zeros(1, 3, size, size), [(size, size)])
    features = model.backbone(torch.rand(1, 3, size, size))
    return images, features


def test_proposals_are_the_top_anchors_per_level_without_nms():
    torch.manual_seed(0)
    model = build_detector(detector_config(**TINY, rpn_pre_nms_top_n_test=20)).eval()
    assert isinstance(model.rpn, OlnRPN)
    images, features = _rpn_inputs(model)
    with torch.no_grad():
        proposals, losses = model.rpn(images, features)
    per_level = [f.shape[-2] * f.shape[-1] for f in features.values()]  # one anchor per location
    assert proposals[0].shape == (sum(min(20, n) for n in per_level), 5) and losses == {}
    assert ((proposals[0][:, 4] > 0) & (proposals[0][:, 4] < 1)).all()  # sigmoid(objectness)
    assert (proposals[0][:, :4] >= 0).all() and (proposals[0][:, :4] <= 64).all()  # clipped


def test_level_flattening_follows_the_anchor_order():
    from torchvision.models.detection.rpn import concat_box_prediction_layers

    torch.manual_seed(0)
    objectness = [torch.randn(2, 1, 4, 6), torch.randn(2, 1, 2, 3)]
    deltas = [torch.randn(2, 4, 4, 6), torch.randn(2, 4, 2, 3)]
    flat_obj, flat_deltas = flatten_levels(objectness, deltas)
    ref_obj, ref_deltas = concat_box_prediction_layers(objectness, deltas)  # torchvision's RPN, same anchors
    assert torch.equal(flat_obj.reshape(-1), ref_obj.reshape(-1))
    assert torch.equal(flat_deltas.reshape(-1, 4), ref_deltas)


def test_rpn_losses_by_hand():
    torch.manual_seed(0)
    model = build_detector(detector_config(**TINY)).train()
    images, features = _rpn_inputs(model)
    gt = torch.tensor([[8.0, 8.0, 40.0, 40.0]])
    torch.manual_seed(1)
    _, losses = model.rpn(images, features, [{"boxes": gt}])
    assert set(losses) == {"loss_rpn_box_reg", "loss_objectness"}

    torch.manual_seed(1)  # the same draws, in the same order: box sampler, then objectness sampler
    objectness, deltas = flatten_levels(*model.rpn.head(list(features.values())))
    anchors = model.rpn.anchor_generator(images, list(features.values()))[0]
    inside = torch.where((anchors[:, 0] >= 0) & (anchors[:, 1] >= 0) & (anchors[:, 2] < 64) & (anchors[:, 3] < 64))[0]
    assert 0 < inside.numel() < anchors.shape[0]  # large anchors reach outside the image and do not train
    ious = box_iou(gt, anchors[inside])
    assigned = max_iou_assign(ious, 0.7, 0.3, 0.3)
    pos, neg = random_sample(assigned, 256, 0.5)
    n = max(pos.numel(), 1) + max(neg.numel(), 1)
    pred = tblr_decode(anchors[inside[pos]], deltas[0, inside[pos]])
    box = 10 * (1 - aligned_iou(pred, gt[assigned[pos]]).clamp(min=1e-6)).sum() / n
    assigned = max_iou_assign(ious, 0.3, 0.1, 0.3)
    opos, oneg = random_sample(assigned, 256, 1.0)
    # few positives: negatives (IoU < 0.1) fill the sample up to 256, as many as there are
    assert 0 < oneg.numel() == min(int((assigned == -1).sum()), 256 - opos.numel())
    target = torch.cat([centerness(anchors[inside[opos]], gt[assigned[opos]]), torch.zeros(oneg.numel())])
    obj = (objectness[0, inside[torch.cat([opos, oneg])]].sigmoid() - target).abs().sum() / n
    assert losses["loss_rpn_box_reg"].item() == pytest.approx(box.item(), rel=1e-5)
    assert losses["loss_objectness"].item() == pytest.approx(obj.item(), rel=1e-5)
    losses["loss_rpn_box_reg"].backward()
    assert model.rpn.head.bbox_pred.weight.grad.abs().sum() > 0


def test_box_head_losses_average_over_all_sampled_rois(tiny_coco):
    from ggn.coco_data import collate
    from ggn.detector.data import build_training_dataset

    torch.manual_seed(0)
    model = build_detector(detector_config(**TINY, box_batch_size_per_image=64)).train()
    images, targets = collate([build_training_dataset(*tiny_coco, flip=0)[0]])
    captured = {}
    original = model.roi_heads.box_losses

    def spy(iou_logits, box_deltas, proposals, matched_idxs, labels, *rest):
        captured["labels"] = torch.cat(labels)
        out = original(iou_logits, box_deltas, proposals, matched_idxs, labels, *rest)
        captured["out"] = out
        return out

    model.roi_heads.box_losses = spy
    losses = model(list(images), targets)
    labels = captured["labels"]
    assert labels.numel() == 64 and 0 < (labels > 0).sum() < 64  # 512 RoIs per image in the paper; 64 here
    assert losses["loss_box_iou"] == captured["out"]["loss_box_iou"]
    assert torch.isfinite(sum(losses.values()))
