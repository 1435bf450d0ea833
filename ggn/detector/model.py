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
from torchvision.ops import FrozenBatchNorm2d
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
}


# Checkpoints written before these keys existed were trained with trainable BN, three anchor ratios and
# torchvision's smooth-L1 losses; they load as they were trained.
LEGACY_CONFIG = {"norm": "bn", "frozen_stages": -1, "anchor_ratios": [0.5, 1.0, 2.0], "box_loss": "smooth_l1"}


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
    model = MaskRCNN(backbone, num_classes=None, **common)
    if cfg["box_loss"] not in ("l1", "smooth_l1"):
        raise InputError(f"unknown box_loss {cfg['box_loss']!r}; choose 'l1' or 'smooth_l1'")
    if kind == "maskrcnn" and cfg["box_loss"] == "l1":
        use_l1_box_losses(model)
    if kind == "oln":
        from ggn.detector.oln import to_oln

        to_oln(model, representation_size=rep)
    if not cfg["mask_head"]:  # torchvision's RoIHeads (and ours) skip the mask branch when it is None
        model.roi_heads.mask_roi_pool = model.roi_heads.mask_head = model.roi_heads.mask_predictor = None
    for module in (model.roi_heads.mask_head, model.roi_heads.mask_predictor):
        if module is not None:
            chunk_inference(module, MASK_CHUNK)
    return model


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


class L1RPN(RegionProposalNetwork):
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
