"""Class-agnostic Mask R-CNN (or OLN) on a ResNet-FPN backbone: the one place a detector config becomes a model."""
from __future__ import annotations

from collections import OrderedDict
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models import resnet18, resnet34, resnet50, resnet101
from torchvision.models.detection import MaskRCNN
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.backbone_utils import BackboneWithFPN
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
from torchvision.models.detection.mask_rcnn import MaskRCNNHeads, MaskRCNNPredictor
from torchvision.models.detection.roi_heads import RoIHeads
from torchvision.models.detection.rpn import RegionProposalNetwork, RPNHead
from torchvision.ops import FrozenBatchNorm2d, MultiScaleRoIAlign, roi_align
from torchvision.ops.poolers import _convert_to_roi_format, _setup_scales
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool

from ggn.io import InputError, checkpoint_kind, load_checkpoint, load_state_into
from ggn.weights import load_pretrained_state

RESNETS = {"resnet18": resnet18, "resnet34": resnet34, "resnet50": resnet50, "resnet101": resnet101}

# Defaults follow the reference class-agnostic Mask R-CNN R50-FPN (Generic-Grouping
# configs/mask_rcnn/class_agn_mask_rcnn_pa.py: one square anchor of scale 8 at strides 4-64, L1 box losses)
# and the cross-category test protocol of OLN (score threshold 0, class-agnostic NMS 0.7, up to 1500
# detections, 2000 RPN proposals). docs/parity.md lists every element against the reference.
DEFAULT_CONFIG: dict[str, Any] = {
    "kind": "maskrcnn",            # "maskrcnn" or "oln"
    "backbone": "resnet50",
    "norm": "eval_bn",             # "eval_bn" (reference norm_eval), "frozen_bn" (also affine fixed), "bn" (scratch),
                                   # "gn" (GroupNorm 32 in backbone and mask head: the ImageNet rows' recipe)
    "frozen_stages": 1,            # stem and stages 1..N get no gradient (mmdet's frozen_stages; -1: none)
    "anchor_ratios": [1.0],        # height/width ratios per location (reference: one square anchor)
    "box_loss": "l1",              # "l1" (reference) or "smooth_l1" (torchvision, beta 1/9), RPN and box head
    "fpn_channels": 256,
    "representation_size": 1024,   # box-head MLP width
    "mask_channels": 256,          # mask-head conv width
    "mask_layers": 4,              # mask-head 3x3 convs (their cost x 1500 detections dominates CPU inference)
    "mask_head": True,             # False: no mask branch, boxes only (the authors' OLN-Box, `ggn import-reference`)
    "anchor_sizes": [32, 64, 128, 256, 512],
    "min_size": 800,
    "max_size": 1333,
    "image_mean": [0.485, 0.456, 0.406],
    "image_std": [0.229, 0.224, 0.225],
    "rpn_pre_nms_top_n_train": 2000,
    "rpn_post_nms_top_n_train": 2000,
    "rpn_pre_nms_top_n_test": 2000,
    "rpn_post_nms_top_n_test": 2000,
    "rpn_batch_size_per_image": 256,
    "box_batch_size_per_image": 512,
    "box_score_thresh": 0.0,
    "box_nms_thresh": 0.7,
    "box_detections_per_img": 1500,
    # RoIAlign of the box and mask branches and the mask targets: the reference's mmcv RoIAlign (aligned=True,
    # sampling_ratio=0: adaptive) and mmdet's binarised targets (crop_and_resize(..., binarize=True)).
    # torchvision's MaskRCNN: aligned=False, sampling_ratio=2, soft targets (the demo keeps these).
    "roi_aligned": True,
    "roi_sampling_ratio": 0,
    "mask_target": "binary",       # "binary" (reference, >= 0.5) or "soft" (torchvision)
    # RPN training: anchors at feature cells beyond the image's own size padded to 32 are neither positive nor
    # negative (mmdet's AnchorGenerator.valid_flags on the image's pad_shape); torchvision samples them all.
    "rpn_valid_anchors": True,
    # Initialisation of the layers ImageNet weights do not cover: "reference" (mmdet 2.x: FPN convs Xavier-uniform,
    # box-head FCs Xavier-uniform, classifier normal(0.01), box regressor normal(0.001), biases 0) or "torchvision"
    # (its own: FPN Kaiming-uniform(a=1), nn.Linear defaults). RPN and mask head are the same in both.
    "head_init": "reference",
}


# Checkpoints written before these keys existed were trained with trainable BN, three anchor ratios and
# torchvision's smooth-L1 losses; they load as they were trained.
LEGACY_CONFIG = {"norm": "bn", "frozen_stages": -1, "anchor_ratios": [0.5, 1.0, 2.0], "box_loss": "smooth_l1",
                 "roi_aligned": False, "roi_sampling_ratio": 2, "mask_target": "soft", "rpn_valid_anchors": False,
                 "head_init": "torchvision"}


def detector_config(**overrides: Any) -> dict[str, Any]:
    """DEFAULT_CONFIG with `overrides`; unknown keys are an error so that typos do not pass silently."""
    unknown = set(overrides) - set(DEFAULT_CONFIG)
    if unknown:
        raise ValueError(f"unknown detector config keys: {sorted(unknown)}")
    cfg = dict(DEFAULT_CONFIG)
    cfg.update(overrides)
    return cfg


class EvalModeBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm whose running statistics stay fixed (always evaluated in eval mode) while its affine weight
    and bias still train: mmdet's `norm_eval=True` with `requires_grad=True`, the reference detector's BN."""

    def train(self, mode: bool = True):
        return super().train(False)


def group_norm(channels: int) -> nn.GroupNorm:
    """mmdet's norm_cfg=dict(type="GN", num_groups=32, requires_grad=True)."""
    return nn.GroupNorm(32, channels)


NORMS = {"eval_bn": EvalModeBatchNorm2d, "frozen_bn": FrozenBatchNorm2d, "bn": nn.BatchNorm2d, "gn": group_norm}


def build_backbone(name: str, fpn_channels: int, norm: str = "eval_bn", frozen_stages: int = 1) -> BackboneWithFPN:
    """ResNet + FPN. `eval_bn` keeps BatchNorm statistics fixed and trains its affine parameters (the
    reference: norm_eval=True, requires_grad=True); `frozen_bn` fixes both (torchvision's FrozenBatchNorm2d,
    as torchvision's and Detectron2's recipes); from scratch it must be `bn` (fixed random statistics give
    NaN losses). `frozen_stages` N: the stem and stages 1..N are not trained (0: stem only, -1: nothing)."""
    if name not in RESNETS:
        raise InputError(f"unknown backbone {name!r}; choose one of {sorted(RESNETS)}")
    if norm not in NORMS:
        raise InputError(f"unknown detector norm {norm!r}; choose one of {sorted(NORMS)}")
    body = RESNETS[name](weights=None, norm_layer=NORMS[norm])
    frozen = ([body.conv1, body.bn1] if frozen_stages >= 0 else []) + \
        [getattr(body, f"layer{i}") for i in range(1, frozen_stages + 1)]
    for module in frozen:
        for param in module.parameters():
            param.requires_grad_(False)
    stage_channels = [64, 128, 256, 512] if name in ("resnet18", "resnet34") else [256, 512, 1024, 2048]
    return BackboneWithFPN(
        body,
        return_layers=OrderedDict((f"layer{i}", str(i - 1)) for i in range(1, 5)),
        in_channels_list=stage_channels,
        out_channels=fpn_channels,
        extra_blocks=LastLevelMaxPool(),
    )


def build_detector(config: dict[str, Any]) -> MaskRCNN:
    """Class-agnostic detector (background + object) from a plain config dict (see DEFAULT_CONFIG)."""
    cfg = detector_config(**{k: v for k, v in config.items() if k in DEFAULT_CONFIG})
    kind = cfg["kind"]
    if kind not in ("maskrcnn", "oln"):
        raise InputError(f"unknown detector kind {kind!r}; choose 'maskrcnn' or 'oln'")
    backbone = build_backbone(cfg["backbone"], cfg["fpn_channels"], cfg["norm"], int(cfg["frozen_stages"]))
    c, rep = cfg["fpn_channels"], cfg["representation_size"]
    # OLN uses a single square anchor per location (mcahny/object_localization_network, configs/oln_box).
    ratios = (1.0,) if kind == "oln" else tuple(float(r) for r in cfg["anchor_ratios"])
    anchors = AnchorGenerator(tuple((int(s),) for s in cfg["anchor_sizes"]), (ratios,) * len(cfg["anchor_sizes"]))
    rpn_head = RPNHead(c, anchors.num_anchors_per_location()[0])
    box_head = TwoMLPHead(c * 7 * 7, rep)
    mask_channels = cfg["mask_channels"]
    common = dict(
        min_size=cfg["min_size"], max_size=cfg["max_size"],
        image_mean=cfg["image_mean"], image_std=cfg["image_std"],
        rpn_anchor_generator=anchors, rpn_head=rpn_head,
        rpn_pre_nms_top_n_train=cfg["rpn_pre_nms_top_n_train"],
        rpn_post_nms_top_n_train=cfg["rpn_post_nms_top_n_train"],
        rpn_pre_nms_top_n_test=cfg["rpn_pre_nms_top_n_test"],
        rpn_post_nms_top_n_test=cfg["rpn_post_nms_top_n_test"],
        rpn_batch_size_per_image=cfg["rpn_batch_size_per_image"],
        box_head=box_head, box_predictor=FastRCNNPredictor(rep, 2),
        box_score_thresh=cfg["box_score_thresh"], box_nms_thresh=cfg["box_nms_thresh"],
        box_detections_per_img=cfg["box_detections_per_img"],
        box_batch_size_per_image=cfg["box_batch_size_per_image"],
        mask_head=MaskRCNNHeads(c, [mask_channels] * cfg["mask_layers"], 1,
                                norm_layer=group_norm if cfg["norm"] == "gn" else None),
        mask_predictor=MaskRCNNPredictor(mask_channels, mask_channels, 2),
    )
    if cfg["mask_target"] not in MASK_TARGETS:
        raise InputError(f"unknown mask_target {cfg['mask_target']!r}; choose one of {', '.join(MASK_TARGETS)}")
    names = ["0", "1", "2", "3"]
    pooler = AlignedMultiScaleRoIAlign if cfg["roi_aligned"] else MultiScaleRoIAlign
    common["box_roi_pool"] = pooler(names, 7, int(cfg["roi_sampling_ratio"]))
    common["mask_roi_pool"] = pooler(names, 14, int(cfg["roi_sampling_ratio"]))
    model = MaskRCNN(backbone, num_classes=None, **common)
    if cfg["box_loss"] not in ("l1", "smooth_l1"):
        raise InputError(f"unknown box_loss {cfg['box_loss']!r}; choose 'l1' or 'smooth_l1'")
    if kind == "maskrcnn" and cfg["box_loss"] == "l1":
        use_l1_box_losses(model)
    elif kind == "maskrcnn":
        model.rpn.__class__ = PaddingAwareRPN
    if kind == "maskrcnn":  # OLN's RPN trains only anchors inside the image (allowed_border=0) already
        model.rpn.exclude_padded_anchors = bool(cfg["rpn_valid_anchors"])
    if kind == "oln":
        from ggn.detector.oln import to_oln

        to_oln(model, representation_size=rep)
    if not cfg["mask_head"]:  # torchvision's RoIHeads (and ours) skip the mask branch when it is None
        model.roi_heads.mask_roi_pool = model.roi_heads.mask_head = model.roi_heads.mask_predictor = None
    binary, aligned = cfg["mask_target"] == "binary", bool(cfg["roi_aligned"])
    if kind == "oln":  # OlnRoIHeads computes its mask loss itself, with these settings
        model.roi_heads.mask_target_binary, model.roi_heads.mask_target_aligned = binary, aligned
    else:
        use_mask_targets(model.roi_heads, binary, aligned)
    if cfg["head_init"] not in HEAD_INITS:
        raise InputError(f"unknown head_init {cfg['head_init']!r}; choose one of {', '.join(HEAD_INITS)}")
    if cfg["head_init"] == "reference":
        reference_init(model)
    for module in (model.roi_heads.mask_head, model.roi_heads.mask_predictor):
        if module is not None:
            chunk_inference(module, MASK_CHUNK)
    return model


HEAD_INITS = ("reference", "torchvision")


def reference_init(model: MaskRCNN) -> None:
    """mmdet 2.x's initialisation of FPN and box head (fpn.py `init_weights`: xavier_init uniform; convfc_bbox_head.py:
    shared FCs xavier_uniform_; bbox_head.py: fc_cls normal(0, 0.01), fc_reg normal(0, 0.001); biases 0). The RPN
    head (normal 0.01) and the mask head (Kaiming-normal, fan_out) are initialised alike by torchvision already;
    OLN's own heads keep their initialisation (ggn/detector/oln.py)."""
    for m in model.backbone.fpn.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.xavier_uniform_(m.weight)
            nn.init.zeros_(m.bias)
    for m in model.roi_heads.box_head.modules():
        if isinstance(m, nn.Linear):
            nn.init.xavier_uniform_(m.weight)
            nn.init.zeros_(m.bias)
    predictor = model.roi_heads.box_predictor
    if isinstance(predictor, FastRCNNPredictor):
        nn.init.normal_(predictor.cls_score.weight, 0, 0.01)
        nn.init.normal_(predictor.bbox_pred.weight, 0, 0.001)
        nn.init.zeros_(predictor.cls_score.bias)
        nn.init.zeros_(predictor.bbox_pred.bias)


# RoIs per pass through the mask branch at inference. Over 1500 detections at once, CPU convolution's
# unfolded input and the 28x28 upsampling take ~3.4 GB for one image; in chunks, the same outputs in ~0.3 GB.
MASK_CHUNK = 128


def chunk_inference(module: nn.Module, chunk: int) -> None:
    """Outside training, run `module` on at most `chunk` RoIs at a time (same outputs, bounded memory)."""
    plain = module.forward

    def forward(x):
        if module.training or x.shape[0] <= chunk:
            return plain(x)
        return torch.cat([plain(part) for part in x.split(chunk)])

    module.forward = forward


MASK_TARGETS = ("binary", "soft")


class AlignedMultiScaleRoIAlign(MultiScaleRoIAlign):
    """MultiScaleRoIAlign with `aligned=True` (pixel centres at +0.5, no 1-pixel box inflation), mmcv's
    RoIAlign default that the reference's SingleRoIExtractor uses. The level of each RoI is torchvision's
    (floor(4 + log2(sqrt(area) / 224)) on levels 2-5), the same rule as mmdet's finest_scale 56 on strides
    4-32: floor(log2(sqrt(area) / 56)) clamped to 0-3."""

    def forward(self, x, boxes, image_shapes):
        features = [x[name] for name in self.featmap_names]
        if self.scales is None or self.map_levels is None:
            self.scales, self.map_levels = _setup_scales(features, image_shapes, self.canonical_scale,
                                                         self.canonical_level)
        rois = _convert_to_roi_format(boxes)
        levels = self.map_levels(boxes)
        result = features[0].new_zeros((len(rois), features[0].shape[1], *self.output_size))
        for level, (feature, scale) in enumerate(zip(features, self.scales)):
            idx = torch.where(levels == level)[0]
            pooled = roi_align(feature, rois[idx], self.output_size, spatial_scale=scale,
                               sampling_ratio=self.sampling_ratio, aligned=True)
            result[idx] = pooled.to(result.dtype)
        return result


def mask_targets(gt_masks: torch.Tensor, boxes: torch.Tensor, matched_idxs: torch.Tensor, size: int,
                 binary: bool, aligned: bool) -> torch.Tensor:
    """Mask-head targets: each matched ground-truth mask cropped to its proposal and resized to size x size.
    binary + aligned is mmdet's `BitmapMasks.crop_and_resize(..., binarize=True)` (RoIAlign aligned=True,
    sampling 0, then >= 0.5); soft + not aligned is torchvision's `project_masks_on_boxes`."""
    rois = torch.cat([matched_idxs.to(boxes)[:, None], boxes], dim=1)
    out = roi_align(gt_masks[:, None].to(rois), rois, (size, size), 1.0, sampling_ratio=0 if aligned else -1,
                    aligned=aligned)[:, 0]
    return (out >= 0.5).to(out.dtype) if binary else out


def mask_loss(mask_logits: torch.Tensor, proposals: list[torch.Tensor], gt_masks: list[torch.Tensor],
              matched_idxs: list[torch.Tensor], binary: bool, aligned: bool) -> torch.Tensor:
    """Binary cross-entropy of the (class-agnostic: foreground channel 1) mask logits of the positive RoIs
    against `mask_targets`, averaged over pixels, as torchvision's maskrcnn_loss and mmdet's FCNMaskHead."""
    size = mask_logits.shape[-1]
    targets = [mask_targets(m, p, i, size, binary, aligned) for m, p, i in zip(gt_masks, proposals, matched_idxs)]
    targets = torch.cat(targets) if targets else mask_logits.new_zeros((0, size, size))
    if targets.numel() == 0:
        return mask_logits.sum() * 0
    return F.binary_cross_entropy_with_logits(mask_logits[:, 1], targets)


def use_mask_targets(roi_heads: RoIHeads, binary: bool, aligned: bool) -> None:
    """Make torchvision's RoI heads train the mask branch on `mask_loss`'s targets. The parent's forward is
    kept (its loss_mask is replaced): the sampled proposals are taken from select_training_samples and the
    mask logits from the predictor, exactly the tensors torchvision's own maskrcnn_loss receives."""
    roi_heads.mask_target_binary, roi_heads.mask_target_aligned = bool(binary), bool(aligned)
    if not binary and not aligned:
        return  # torchvision's own targets
    select, forward = roi_heads.select_training_samples, roi_heads.forward

    def select_and_keep(proposals, targets):
        sampled = select(proposals, targets)
        roi_heads._mask_sampled = sampled
        return sampled

    def forward_with_targets(features, proposals, image_shapes, targets=None):
        if not roi_heads.training:
            return forward(features, proposals, image_shapes, targets)
        captured = {}
        hook = roi_heads.mask_predictor.register_forward_hook(lambda m, i, out: captured.setdefault("logits", out))
        try:
            result, losses = forward(features, proposals, image_shapes, targets)
        finally:
            hook.remove()
        sampled_proposals, matched_idxs, labels, _ = roi_heads.__dict__.pop("_mask_sampled")
        pos = [torch.where(lab > 0)[0] for lab in labels]
        losses["loss_mask"] = mask_loss(captured["logits"], [p[i] for p, i in zip(sampled_proposals, pos)],
                                        [t["masks"] for t in targets], [m[i] for m, i in zip(matched_idxs, pos)],
                                        binary, aligned)
        return result, losses

    roi_heads.select_training_samples = select_and_keep
    roi_heads.forward = forward_with_targets


def valid_anchor_flags(feature_sizes: list[tuple[int, int]], batch_size: tuple[int, int], image_size: tuple[int, int],
                       anchors_per_location: int, size_divisor: int = 32, device=None) -> torch.Tensor:
    """bool [anchors] in torchvision's order (level, row, column, anchor): True where the anchor's feature cell
    lies within the image's own size padded to `size_divisor`, as mmdet's AnchorGenerator.valid_flags on the
    image's pad_shape (cells up to ceil(pad / stride)); the rest sit in the padding that batching adds."""
    pad_h = -(-image_size[0] // size_divisor) * size_divisor
    pad_w = -(-image_size[1] // size_divisor) * size_divisor
    flags = []
    for fh, fw in feature_sizes:
        stride_h, stride_w = batch_size[0] // fh, batch_size[1] // fw  # torchvision's own stride rule
        valid_h, valid_w = min(-(-pad_h // stride_h), fh), min(-(-pad_w // stride_w), fw)
        grid = torch.zeros((fh, fw), dtype=torch.bool, device=device)
        grid[:valid_h, :valid_w] = True
        flags.append(grid.flatten().repeat_interleave(anchors_per_location))
    return torch.cat(flags)


class PaddingAwareRPN(RegionProposalNetwork):
    """torchvision's RPN whose training, with `exclude_padded_anchors`, assigns and samples only the anchors
    of `valid_anchor_flags` (the reference: invalid anchors take no part in assignment, anchor_head.py
    `_get_targets_single`); the others get label -1 (ignored). Proposals are unchanged."""

    exclude_padded_anchors = False

    def forward(self, images, features, targets=None):
        self._anchor_context = (images.image_sizes, tuple(images.tensors.shape[-2:]),
                                [tuple(f.shape[-2:]) for f in features.values()])
        try:
            return super().forward(images, features, targets)
        finally:
            del self._anchor_context

    def assign_targets_to_anchors(self, anchors, targets):
        if not self.exclude_padded_anchors:
            return super().assign_targets_to_anchors(anchors, targets)
        image_sizes, batch_size, feature_sizes = self._anchor_context
        per_location = self.anchor_generator.num_anchors_per_location()[0]
        labels, matched_gt_boxes = [], []
        for anchors_per_image, target, size in zip(anchors, targets, image_sizes):
            valid = valid_anchor_flags(feature_sizes, batch_size, tuple(size), per_location,
                                       device=anchors_per_image.device)
            sub_labels, sub_boxes = super().assign_targets_to_anchors([anchors_per_image[valid]], [target])
            label = torch.full((len(anchors_per_image),), -1.0, device=anchors_per_image.device)
            label[valid] = sub_labels[0]
            boxes = torch.zeros_like(anchors_per_image, dtype=sub_boxes[0].dtype)
            boxes[valid] = sub_boxes[0]
            labels.append(label)
            matched_gt_boxes.append(boxes)
        return labels, matched_gt_boxes


class L1RPN(PaddingAwareRPN):
    """torchvision's RPN with an L1 box loss (mmdet L1Loss, weight 1) instead of smooth L1 (beta 1/9); the
    normalisation is the same in both: the sum over positive anchors divided by the sampled anchors."""

    def compute_loss(self, objectness, pred_bbox_deltas, labels, regression_targets):
        sampled_pos, sampled_neg = self.fg_bg_sampler(labels)
        sampled_pos = torch.where(torch.cat(sampled_pos, dim=0))[0]
        sampled = torch.cat([sampled_pos, torch.where(torch.cat(sampled_neg, dim=0))[0]], dim=0)
        objectness = objectness.flatten()
        labels = torch.cat(labels, dim=0)
        regression_targets = torch.cat(regression_targets, dim=0)
        box_loss = F.l1_loss(pred_bbox_deltas[sampled_pos], regression_targets[sampled_pos],
                             reduction="sum") / max(1, sampled.numel())
        objectness_loss = F.binary_cross_entropy_with_logits(objectness[sampled], labels[sampled])
        return objectness_loss, box_loss


class L1RoIHeads(RoIHeads):
    """torchvision's RoI heads with an L1 box-regression loss, averaged over all sampled RoIs like the
    reference (mmdet bbox head: avg_factor = number of sampled RoIs). The sampled targets and the box
    predictor's output are kept from the parent's forward and the loss is recomputed from them."""

    def select_training_samples(self, proposals, targets):
        sampled = super().select_training_samples(proposals, targets)
        self._sampled = sampled
        return sampled

    def forward(self, features, proposals, image_shapes, targets=None):
        if not self.training:
            return super().forward(features, proposals, image_shapes, targets)
        captured = {}
        hook = self.box_predictor.register_forward_hook(lambda m, i, out: captured.setdefault("out", out))
        try:
            result, losses = super().forward(features, proposals, image_shapes, targets)
        finally:
            hook.remove()
        _, _, labels, regression_targets = self._sampled
        del self._sampled
        box_regression = captured["out"][1]
        labels = torch.cat(labels, dim=0)
        regression_targets = torch.cat(regression_targets, dim=0)
        pos = torch.where(labels > 0)[0]
        box_regression = box_regression.reshape(box_regression.shape[0], box_regression.size(-1) // 4, 4)
        losses["loss_box_reg"] = F.l1_loss(box_regression[pos, labels[pos]], regression_targets[pos],
                                           reduction="sum") / max(1, labels.numel())
        return result, losses


def use_l1_box_losses(model: MaskRCNN) -> None:
    """Swap the RPN and RoI heads for their L1-loss twins, keeping every submodule and setting (the twins
    add no state, so re-classing the built modules is exact and avoids repeating their 15 arguments)."""
    model.rpn.__class__ = L1RPN
    model.roi_heads.__class__ = L1RoIHeads


def load_pretrained(model: nn.Module, spec: str | Path, arch: str = "resnet50") -> tuple[int, int, str]:
    """Load `imagenet` (torchvision's ImageNet ResNet, through its cache) or a local weights file: a full
    detector state dict, a {"model": ...} checkpoint, or a bare ResNet state dict (keys like
    "layer1.0.conv1.weight", loaded into the backbone body). Shapes that do not fit (e.g. another number of
    classes) are skipped. Returns (loaded tensors, skipped tensors, the file they came from)."""
    state, path = load_pretrained_state(spec, arch)
    kind, words = checkpoint_kind(state)
    if kind in ("pa", None) and isinstance(state, dict) and "model" in state:
        raise InputError(f"pretrained file {path} holds {words}; --pretrained takes `imagenet`, a ResNet weights "
                         "file or a detector checkpoint")
    if isinstance(state, dict) and isinstance(state.get("model"), dict):
        state = state["model"]
    if not isinstance(state, dict) or not state:
        raise InputError(f"pretrained file {path} holds no state dict")
    own = model.state_dict()
    if not any(k in own for k in state):
        state = {f"backbone.body.{k}": v for k, v in state.items()}
    # FrozenBatchNorm2d keeps no batch counter: that statistic has nothing to load into.
    state = {k: v for k, v in state.items() if k in own or not k.endswith("num_batches_tracked")}
    fitting = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
    if not fitting:
        raise InputError(f"no tensor in {path} fits the {type(model).__name__} backbone; is it a ResNet of the "
                         "same depth as --backbone?")
    model.load_state_dict(fitting, strict=False)
    return len(fitting), len(state) - len(fitting), path


def trainable_summary(model: nn.Module) -> dict[str, int]:
    """Counts of trained and frozen parameters and of BatchNorm layers by kind (logged at training start)."""
    params = list(model.parameters())
    return {"trainable_params": sum(p.numel() for p in params if p.requires_grad),
            "frozen_params": sum(p.numel() for p in params if not p.requires_grad),
            "fixed_statistics_bn_layers": sum(isinstance(m, (FrozenBatchNorm2d, EvalModeBatchNorm2d))
                                              for m in model.modules()),
            "updating_bn_layers": sum(type(m) is nn.BatchNorm2d for m in model.modules())}


def load_detector(path: str | Path, device: torch.device | str = "cpu",
                  overrides: dict[str, Any] | None = None) -> tuple[MaskRCNN, dict[str, Any]]:
    """Detector checkpoint ({"model", "config"}) -> (model in eval mode on `device`, config).
    `overrides` replace config values that do not change the weights (test-time settings, input size)."""
    ckpt = load_checkpoint(path, expect="detector")
    config = LEGACY_CONFIG | dict(ckpt["config"]) | dict(overrides or {})
    model = build_detector(config)
    load_state_into(model, ckpt["model"], path, "detector")
    return model.to(device).eval(), config
