"""OLN heads (Kim et al. 2022): objectness learned as localization quality instead of object-vs-background.

Follows the OLN-Box of Generic-Grouping (configs/oln_box/oln_box.py, mmdet/models/dense_heads/oln_rpn_head.py,
roi_heads/oln_roi_head.py, bbox_heads/convfc_bbox_score_head.py; docs/parity.md gives file and line):
- RPN: one square anchor per location; a 3x3 conv whose features are L2-normalised over channels, then box
  and objectness 1x1 convs (the classification branch has loss weight 0 and its score is unused: omitted).
  Only anchors entirely inside the image train. Boxes: TBLR coding (normaliser 1) and a linear IoU loss
  (weight 10) on the decoded boxes of anchors assigned at IoU 0.7/0.3 (low-quality matches from 0.3), 256
  sampled, half positive. Objectness: an L1 regression of sigmoid(logit) to the FCOS centerness of anchors
  assigned at IoU 0.3/0.1; 256 sampled with positive fraction 1.0, so images with fewer positives fill the
  sample with IoU < 0.1 anchors at target 0 (the config's "ratio 0 for negatives" comment notwithstanding).
  Both losses are divided by the number of anchors the box sampler drew. Proposals: sigmoid(objectness),
  the top 2000 anchors per level, decoded and clipped, no NMS (about 7.3k for 1333x800).
- Box head: predicted IoU of each sampled proposal (before regression) with its matched ground truth, L1 on
  positives averaged over all sampled RoIs; class-agnostic XYWH regression with L1; final score
  sqrt(rpn objectness x box IoU).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.models.detection.image_list import ImageList
from torchvision.models.detection.roi_heads import RoIHeads, maskrcnn_inference

from torchvision.ops import boxes as box_ops

RPN_BOX_LOSS_WEIGHT = 10.0


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


def tblr_encode(anchors: Tensor, boxes: Tensor, normalizer: float = 1.0) -> Tensor:
    """mmdet TBLRBBoxCoder.encode: distances (top, bottom, left, right) from the anchor centre to the box sides,
    divided by the anchor's height (top, bottom) and width (left, right) and by `normalizer`."""
    cx = (anchors[:, 0] + anchors[:, 2]) / 2
    cy = (anchors[:, 1] + anchors[:, 3]) / 2
    w = anchors[:, 2] - anchors[:, 0]
    h = anchors[:, 3] - anchors[:, 1]
    tblr = torch.stack([cy - boxes[:, 1], boxes[:, 3] - cy, cx - boxes[:, 0], boxes[:, 2] - cx], dim=1)
    return tblr / torch.stack([h, h, w, w], dim=1) / normalizer


def tblr_decode(anchors: Tensor, tblr: Tensor, normalizer: float = 1.0, image_size=None) -> Tensor:
    """Inverse of `tblr_encode` (linear, no exp); boxes clipped to `image_size` (h, w) when given."""
    cx = (anchors[:, 0] + anchors[:, 2]) / 2
    cy = (anchors[:, 1] + anchors[:, 3]) / 2
    w = anchors[:, 2] - anchors[:, 0]
    h = anchors[:, 3] - anchors[:, 1]
    t, b, l, r = (tblr * normalizer).unbind(dim=1)
    boxes = torch.stack([cx - l * w, cy - t * h, cx + r * w, cy + b * h], dim=1)
    if image_size is not None:
        boxes = box_ops.clip_boxes_to_image(boxes, image_size)
    return boxes


def max_iou_assign(ious: Tensor, pos_thr: float, neg_thr: float, min_pos_iou: float) -> Tensor:
    """mmdet MaxIoUAssigner with low-quality matching: per anchor (column of `ious` [G, A]) the index of its
    ground truth, -1 for negatives (IoU < neg_thr), -2 for ignored. Each ground truth also claims every
    anchor tied at its own highest IoU, when that IoU is at least min_pos_iou."""
    num_anchors = ious.shape[1]
    assigned = torch.full((num_anchors,), -2, dtype=torch.int64, device=ious.device)
    if ious.shape[0] == 0:
        assigned[:] = -1
        return assigned
    best, best_gt = ious.max(dim=0)
    assigned[(best >= 0) & (best < neg_thr)] = -1
    assigned[best >= pos_thr] = best_gt[best >= pos_thr]
    gt_best = ious.max(dim=1).values
    for g in range(ious.shape[0]):
        if gt_best[g] >= min_pos_iou:
            assigned[ious[g] == gt_best[g]] = g
    return assigned


def random_sample(assigned: Tensor, num: int, pos_fraction: float) -> tuple[Tensor, Tensor]:
    """mmdet RandomSampler: up to num x pos_fraction random positives, negatives filling the rest to num."""
    pos = torch.where(assigned >= 0)[0]
    neg = torch.where(assigned == -1)[0]
    pos = pos[torch.randperm(pos.numel(), device=pos.device)[:int(num * pos_fraction)]]
    neg = neg[torch.randperm(neg.numel(), device=neg.device)[:max(0, num - pos.numel())]]
    return pos, neg


def flatten_levels(objectness: list[Tensor], deltas: list[Tensor]) -> tuple[Tensor, Tensor]:
    """Per-level [B,1,H,W] and [B,4,H,W] maps (one anchor per location) -> [B, sum HW] and [B, sum HW, 4] in the
    anchor generator's order (level, then row, then column)."""
    return (torch.cat([o.permute(0, 2, 3, 1).flatten(1) for o in objectness], dim=1),
            torch.cat([d.permute(0, 2, 3, 1).reshape(d.shape[0], -1, 4) for d in deltas], dim=1))


class OlnRPNHead(nn.Module):
    """3x3 conv + ReLU, L2-normalised over channels, then 1x1 convs for TBLR box deltas and objectness."""

    def __init__(self, in_channels: int):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, in_channels, 3, padding=1)
        self.bbox_pred = nn.Conv2d(in_channels, 4, 1)
        self.objectness = nn.Conv2d(in_channels, 1, 1)
        for layer in (self.conv, self.bbox_pred, self.objectness):
            nn.init.normal_(layer.weight, std=0.01)
            nn.init.zeros_(layer.bias)

    def forward(self, features: list[Tensor]) -> tuple[list[Tensor], list[Tensor]]:
        objectness, deltas = [], []
        for x in features:
            x = F.normalize(F.relu(self.conv(x)), p=2, dim=1)
            objectness.append(self.objectness(x))
            deltas.append(self.bbox_pred(x))
        return objectness, deltas


class OlnRPN(nn.Module):
    """The OLN region proposal network; returns proposals as [N,5] (box, objectness) so that the box head
    can combine both scores."""

    BOX_ASSIGN = (0.7, 0.3, 0.3)  # pos, neg, min_pos IoU
    BOX_SAMPLES, BOX_POS_FRACTION = 256, 0.5
    OBJECTNESS_ASSIGN = (0.3, 0.1, 0.3)
    OBJECTNESS_SAMPLES, OBJECTNESS_POS_FRACTION = 256, 1.0

    def __init__(self, anchor_generator, head: OlnRPNHead, pre_nms_top_n: dict[str, int]):
        super().__init__()
        self.anchor_generator = anchor_generator
        self.head = head
        self._pre_nms_top_n = pre_nms_top_n  # proposals per level (top by objectness); no NMS follows

    def forward(self, images: ImageList, features: dict[str, Tensor], targets=None):
        features = list(features.values())
        objectness, deltas = self.head(features)
        anchors = self.anchor_generator(images, features)  # per image: all levels, level-major
        per_level = [o[0].numel() for o in objectness]
        objectness, deltas = flatten_levels(objectness, deltas)
        proposals = self.proposals(anchors, objectness.detach(), deltas.detach(), images.image_sizes, per_level)
        losses = {}
        if self.training:
            losses = self.losses(anchors, objectness, deltas, images.image_sizes, targets)
        return proposals, losses

    def proposals(self, anchors, objectness, deltas, image_sizes, per_level) -> list[Tensor]:
        top_n = self._pre_nms_top_n["training" if self.training else "testing"]
        out = []
        for i, (anchors_i, size) in enumerate(zip(anchors, image_sizes)):
            keep, offset = [], 0
            for n in per_level:
                scores = objectness[i, offset:offset + n]
                keep.append(offset + scores.topk(min(top_n, n)).indices)
                offset += n
            keep = torch.cat(keep)
            boxes = tblr_decode(anchors_i[keep], deltas[i, keep], image_size=size)
            out.append(torch.cat([boxes, objectness[i, keep].sigmoid()[:, None]], dim=1))
        return out

    def losses(self, anchors, objectness, deltas, image_sizes, targets) -> dict[str, Tensor]:
        box_terms, obj_terms, num_sampled = [], [], 0
        for i, (anchors_i, size, target) in enumerate(zip(anchors, image_sizes, targets)):
            h, w = size
            inside = torch.where((anchors_i[:, 0] >= 0) & (anchors_i[:, 1] >= 0) & (anchors_i[:, 2] < w)
                                 & (anchors_i[:, 3] < h))[0]  # mmdet allowed_border=0
            gt = target["boxes"]
            ious = box_ops.box_iou(gt, anchors_i[inside])
            assigned = max_iou_assign(ious, *self.BOX_ASSIGN)
            pos, neg = random_sample(assigned, self.BOX_SAMPLES, self.BOX_POS_FRACTION)
            num_sampled += max(pos.numel(), 1) + max(neg.numel(), 1)
            if pos.numel():
                a = inside[pos]
                pred = tblr_decode(anchors_i[a], deltas[i, a])  # not clipped, as the reference
                box_terms.append(1 - aligned_iou(pred, gt[assigned[pos]]).clamp(min=1e-6))
            assigned = max_iou_assign(ious, *self.OBJECTNESS_ASSIGN)
            pos, neg = random_sample(assigned, self.OBJECTNESS_SAMPLES, self.OBJECTNESS_POS_FRACTION)
            sampled = inside[torch.cat([pos, neg])]
            target_values = torch.cat([centerness(anchors_i[inside[pos]], gt[assigned[pos]]),
                                       torch.zeros(neg.numel(), device=gt.device)])
            obj_terms.append((objectness[i, sampled].sigmoid() - target_values).abs())
        box_loss = torch.cat(box_terms).sum() if box_terms else deltas.sum() * 0.0
        obj_loss = torch.cat(obj_terms).sum() if obj_terms else objectness.sum() * 0.0
        return {"loss_rpn_box_reg": RPN_BOX_LOSS_WEIGHT * box_loss / num_sampled,
                "loss_objectness": obj_loss / num_sampled}


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
            if self.mask_head is None:  # OLN-Box: boxes only
                return [], losses
            pos = [torch.where(lab > 0)[0] for lab in labels]
            mask_proposals = [p[i] for p, i in zip(proposals, pos)]
            mask_logits = self.mask_logits(features, mask_proposals, image_shapes)
            from ggn.detector.model import mask_loss

            losses["loss_mask"] = mask_loss(mask_logits, mask_proposals, [t["masks"] for t in targets],
                                            [m[i] for m, i in zip(matched_idxs, pos)],
                                            getattr(self, "mask_target_binary", False),
                                            getattr(self, "mask_target_aligned", False))
            return [], losses

        result = self.detections(iou_logits, box_deltas, proposals, rpn_scores, image_shapes)
        if self.mask_head is None:
            return result, {}
        mask_logits = self.mask_logits(features, [r["boxes"] for r in result], image_shapes)
        for probs, r in zip(maskrcnn_inference(mask_logits, [r["labels"] for r in result]), result):
            r["masks"] = probs
        return result, {}

    def mask_logits(self, features, boxes, image_shapes) -> Tensor:
        return self.mask_predictor(self.mask_head(self.mask_roi_pool(features, boxes, image_shapes)))

    def box_losses(self, iou_logits, box_deltas, proposals, matched_idxs, labels, regression_targets, targets):
        """L1 box regression and L1 IoU score on positives, both divided by the number of sampled RoIs (the
        reference's avg_factor); the IoU target is that of the proposal itself with its ground truth."""
        labels = torch.cat(labels)
        pos = torch.where(labels > 0)[0]
        regression_targets = torch.cat(regression_targets)
        box_loss = F.l1_loss(box_deltas[pos], regression_targets[pos], reduction="sum") / max(1, labels.numel())
        gt = torch.cat([t["boxes"][m.clamp(max=max(0, len(t["boxes"]) - 1))] if len(t["boxes"]) else
                        torch.zeros((len(m), 4), device=m.device) for t, m in zip(targets, matched_idxs)])
        iou_target = aligned_iou(torch.cat(proposals)[pos], gt[pos])
        score_loss = F.l1_loss(iou_logits[pos].sigmoid(), iou_target, reduction="sum") / max(1, labels.numel())
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
    """Swap a torchvision MaskRCNN's RPN and RoI heads for the OLN ones, keeping the anchors, the RoI pooling,
    the box MLP, the mask branch and the test settings."""
    rpn, roi = model.rpn, model.roi_heads
    model.rpn = OlnRPN(rpn.anchor_generator, OlnRPNHead(rpn.head.conv[0][0].in_channels), dict(rpn._pre_nms_top_n))
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
