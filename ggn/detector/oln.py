"""OLN heads (Kim et al. 2022): objectness learned as localization quality instead of object-vs-background.

Facts from mcahny/object_localization_network (configs/oln_box/oln_box.py): one square anchor per location;
the RPN's classification loss has weight 0, its box loss is a linear IoU loss (weight 10) on decoded boxes of
anchors matched at IoU 0.7/0.3 (256 sampled, half positive), and its objectness is an L1 regression of the
centerness of up to 256 anchors with IoU > 0.3 (no background samples). Proposals are not NMS-ed (threshold
1.0). The box head drops classification for a predicted IoU with the matched ground truth (L1, positives only,
512 RoIs at 1/4 positive), keeps class-agnostic box regression, and the final score is the geometric mean of
RPN centerness and box IoU. Here the box deltas keep torchvision's XYWH coder (the reference uses TBLR).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.models.detection import _utils as det_utils
from torchvision.models.detection.image_list import ImageList
from torchvision.models.detection.roi_heads import RoIHeads, maskrcnn_inference, maskrcnn_loss
from torchvision.models.detection.rpn import RegionProposalNetwork, concat_box_prediction_layers
from torchvision.ops import boxes as box_ops

RPN_BOX_LOSS_WEIGHT = 10.0
OBJECTNESS_IOU_THRESH = 0.3
OBJECTNESS_SAMPLES = 256


def centerness(anchors: Tensor, gt_boxes: Tensor) -> Tensor:
    """FCOS centerness of each anchor's centre inside its matched box: sqrt(min(l,r)/max(l,r) * min(t,b)/max(t,b)),
    0 for centres outside the box."""
    cx = (anchors[:, 0] + anchors[:, 2]) / 2
    cy = (anchors[:, 1] + anchors[:, 3]) / 2
    lr = torch.stack([cx - gt_boxes[:, 0], gt_boxes[:, 2] - cx], 1).clamp(min=0)
    tb = torch.stack([cy - gt_boxes[:, 1], gt_boxes[:, 3] - cy], 1).clamp(min=0)
    ratio = (lr.min(1).values / lr.max(1).values.clamp(min=1e-6)) * (tb.min(1).values / tb.max(1).values.clamp(min=1e-6))
    return ratio.sqrt()


def aligned_iou(a: Tensor, b: Tensor) -> Tensor:
    """IoU of a[i] with b[i] (xyxy)."""
    lt = torch.max(a[:, :2], b[:, :2])
    rb = torch.min(a[:, 2:], b[:, 2:])
    inter = (rb - lt).clamp(min=0).prod(1)
    area_a = (a[:, 2:] - a[:, :2]).clamp(min=0).prod(1)
    area_b = (b[:, 2:] - b[:, :2]).clamp(min=0).prod(1)
    return inter / (area_a + area_b - inter).clamp(min=1e-6)


class OlnRPN(RegionProposalNetwork):
    """RPN whose objectness logit regresses centerness; returns proposals as [N,5] (box, score) so that the
    OLN box head can combine both scores."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.objectness_matcher = det_utils.Matcher(OBJECTNESS_IOU_THRESH, OBJECTNESS_IOU_THRESH,
                                                    allow_low_quality_matches=False)

    def forward(self, images: ImageList, features: dict[str, Tensor], targets=None):
        features = list(features.values())
        objectness, deltas = self.head(features)
        anchors = self.anchor_generator(images, features)
        num_per_level = [o[0].numel() for o in objectness]
        objectness, deltas = concat_box_prediction_layers(objectness, deltas)
        proposals = self.box_coder.decode(deltas.detach(), anchors).view(len(anchors), -1, 4)
        boxes, scores = self.filter_proposals(proposals, objectness, images.image_sizes, num_per_level)
        boxes = [torch.cat([b, s[:, None]], 1) for b, s in zip(boxes, scores)]
        losses = {}
        if self.training:
            losses = self.oln_losses(anchors, objectness.flatten(), deltas, targets)
        return boxes, losses

    def oln_losses(self, anchors: list[Tensor], objectness: Tensor, deltas: Tensor, targets) -> dict[str, Tensor]:
        labels, matched = self.assign_targets_to_anchors(anchors, targets)
        pos, neg = self.fg_bg_sampler(labels)
        num_sampled = max(1, int(torch.cat(pos).sum() + torch.cat(neg).sum()))
        pos = torch.where(torch.cat(pos))[0]
        all_anchors, all_matched = torch.cat(anchors), torch.cat(matched)
        pred = self.box_coder.decode_single(deltas[pos], all_anchors[pos])
        box_loss = RPN_BOX_LOSS_WEIGHT * (1 - aligned_iou(pred, all_matched[pos])).sum() / num_sampled

        # Objectness: centerness of a random subset of anchors overlapping a box at IoU > 0.3, positives only.
        obj_inds, obj_targets, offset = [], [], 0
        for anchors_i, target in zip(anchors, targets):
            gt = target["boxes"]
            if gt.numel():
                match = self.objectness_matcher(self.box_similarity(gt, anchors_i))
                inds = torch.where(match >= 0)[0]
                inds = inds[torch.randperm(inds.numel(), device=inds.device)[:OBJECTNESS_SAMPLES]]
                obj_inds.append(inds + offset)
                obj_targets.append(centerness(anchors_i[inds], gt[match[inds]]))
            offset += anchors_i.shape[0]
        if obj_inds:
            inds = torch.cat(obj_inds)
            obj_loss = F.l1_loss(objectness[inds].sigmoid(), torch.cat(obj_targets), reduction="sum") / max(1, inds.numel())
        else:
            obj_loss = objectness.sum() * 0.0
        return {"loss_objectness": obj_loss, "loss_rpn_box_reg": box_loss}


class BoxIoUPredictor(nn.Module):
    """Box-head output: one IoU logit and class-agnostic box deltas per RoI."""

    def __init__(self, in_channels: int):
        super().__init__()
        self.iou_score = nn.Linear(in_channels, 1)
        self.bbox_pred = nn.Linear(in_channels, 4)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        x = x.flatten(1)
        return self.iou_score(x).squeeze(1), self.bbox_pred(x)


class OlnRoIHeads(RoIHeads):
    """RoI heads scoring boxes by predicted IoU; the mask branch is Mask R-CNN's."""

    def forward(self, features, proposals, image_shapes, targets=None):
        rpn_scores = [p[:, 4] for p in proposals]
        proposals = [p[:, :4] for p in proposals]
        if self.training:
            proposals, matched_idxs, labels, regression_targets = self.select_training_samples(proposals, targets)
        box_features = self.box_head(self.box_roi_pool(features, proposals, image_shapes))
        iou_logits, box_deltas = self.box_predictor(box_features)

        if self.training:
            losses = self.box_losses(iou_logits, box_deltas, proposals, matched_idxs, labels,
                                     regression_targets, targets)
            pos = [torch.where(lab > 0)[0] for lab in labels]
            mask_proposals = [p[i] for p, i in zip(proposals, pos)]
            mask_logits = self.mask_logits(features, mask_proposals, image_shapes)
            losses["loss_mask"] = maskrcnn_loss(mask_logits, mask_proposals, [t["masks"] for t in targets],
                                                [t["labels"] for t in targets], [m[i] for m, i in zip(matched_idxs, pos)])
            return [], losses

        result = self.detections(iou_logits, box_deltas, proposals, rpn_scores, image_shapes)
        mask_logits = self.mask_logits(features, [r["boxes"] for r in result], image_shapes)
        for probs, r in zip(maskrcnn_inference(mask_logits, [r["labels"] for r in result]), result):
            r["masks"] = probs
        return result, {}

    def mask_logits(self, features, boxes, image_shapes) -> Tensor:
        return self.mask_predictor(self.mask_head(self.mask_roi_pool(features, boxes, image_shapes)))

    def box_losses(self, iou_logits, box_deltas, proposals, matched_idxs, labels, regression_targets, targets):
        labels = torch.cat(labels)
        pos = torch.where(labels > 0)[0]
        regression_targets = torch.cat(regression_targets)
        box_loss = F.smooth_l1_loss(box_deltas[pos], regression_targets[pos], beta=1 / 9,
                                    reduction="sum") / max(1, labels.numel())
        gt = torch.cat([t["boxes"][m.clamp(max=max(0, len(t["boxes"]) - 1))] if len(t["boxes"]) else
                        torch.zeros((len(m), 4), device=m.device) for t, m in zip(targets, matched_idxs)])
        iou_target = aligned_iou(torch.cat(proposals)[pos], gt[pos])
        score_loss = F.l1_loss(iou_logits[pos].sigmoid(), iou_target, reduction="sum") / max(1, pos.numel())
        return {"loss_box_iou": score_loss, "loss_box_reg": box_loss}

    def detections(self, iou_logits, box_deltas, proposals, rpn_scores, image_shapes) -> list[dict[str, Tensor]]:
        counts = [len(p) for p in proposals]
        boxes_all = self.box_coder.decode(box_deltas, proposals).reshape(-1, 4).split(counts)
        iou_all = iou_logits.sigmoid().split(counts)
        result = []
        for boxes, iou, rpn_score, shape in zip(boxes_all, iou_all, rpn_scores, image_shapes):
            boxes = box_ops.clip_boxes_to_image(boxes, shape)
            scores = (iou * rpn_score).clamp(min=0).sqrt()
            keep = torch.where(scores >= self.score_thresh)[0]
            keep = keep[box_ops.remove_small_boxes(boxes[keep], min_size=1e-2)]
            boxes, scores = boxes[keep], scores[keep]
            keep = box_ops.nms(boxes, scores, self.nms_thresh)[: self.detections_per_img]
            result.append({"boxes": boxes[keep], "scores": scores[keep],
                           "labels": torch.ones(len(keep), dtype=torch.int64, device=boxes.device)})
        return result


def to_oln(model: nn.Module, representation_size: int) -> nn.Module:
    """Swap a torchvision MaskRCNN's RPN and RoI heads for the OLN ones, keeping every submodule and setting."""
    rpn, roi = model.rpn, model.roi_heads
    model.rpn = OlnRPN(
        rpn.anchor_generator, rpn.head,
        fg_iou_thresh=0.7, bg_iou_thresh=0.3,
        batch_size_per_image=rpn.fg_bg_sampler.batch_size_per_image,
        positive_fraction=rpn.fg_bg_sampler.positive_fraction,
        pre_nms_top_n=rpn._pre_nms_top_n, post_nms_top_n=rpn._post_nms_top_n,
        nms_thresh=1.0,  # the reference keeps every proposal (nms_thr=1.0)
    )
    model.roi_heads = OlnRoIHeads(
        roi.box_roi_pool, roi.box_head, BoxIoUPredictor(representation_size),
        fg_iou_thresh=0.5, bg_iou_thresh=0.5,
        batch_size_per_image=roi.fg_bg_sampler.batch_size_per_image,
        positive_fraction=roi.fg_bg_sampler.positive_fraction,
        bbox_reg_weights=None,
        score_thresh=roi.score_thresh, nms_thresh=roi.nms_thresh, detections_per_img=roi.detections_per_img,
        mask_roi_pool=roi.mask_roi_pool, mask_head=roi.mask_head, mask_predictor=roi.mask_predictor,
    )
    return model
