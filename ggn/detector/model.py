"""Class-agnostic Mask R-CNN (or OLN) on a ResNet-FPN backbone: the one place a detector config becomes a model."""
from __future__ import annotations

from collections import OrderedDict
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torchvision.models import resnet18, resnet34, resnet50, resnet101
from torchvision.models.detection import MaskRCNN
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.backbone_utils import BackboneWithFPN
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
from torchvision.models.detection.mask_rcnn import MaskRCNNHeads, MaskRCNNPredictor
from torchvision.models.detection.rpn import RPNHead
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool

from ggn.io import InputError, load_checkpoint

RESNETS = {"resnet18": resnet18, "resnet34": resnet34, "resnet50": resnet50, "resnet101": resnet101}

# Defaults follow the paper's Mask R-CNN R50-FPN and the cross-category test protocol of OLN
# (score threshold 0, class-agnostic NMS 0.7, up to 1500 detections, 2000 RPN proposals).
DEFAULT_CONFIG: dict[str, Any] = {
    "kind": "maskrcnn",            # "maskrcnn" or "oln"
    "backbone": "resnet50",
    "fpn_channels": 256,
    "representation_size": 1024,   # box-head MLP width
    "mask_channels": 256,          # mask-head conv width
    "mask_layers": 4,              # mask-head 3x3 convs (their cost x 1500 detections dominates CPU inference)
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


def detector_config(**overrides: Any) -> dict[str, Any]:
    """DEFAULT_CONFIG with `overrides`; unknown keys are an error so that typos do not pass silently."""
    unknown = set(overrides) - set(DEFAULT_CONFIG)
    if unknown:
        raise ValueError(f"unknown detector config keys: {sorted(unknown)}")
    cfg = dict(DEFAULT_CONFIG)
    cfg.update(overrides)
    return cfg


def build_backbone(name: str, fpn_channels: int) -> BackboneWithFPN:
    """ResNet + FPN with trainable BatchNorm everywhere: frozen BN statistics make from-scratch training NaN."""
    if name not in RESNETS:
        raise InputError(f"unknown backbone {name!r}; choose one of {sorted(RESNETS)}")
    body = RESNETS[name](weights=None, norm_layer=nn.BatchNorm2d)
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
    backbone = build_backbone(cfg["backbone"], cfg["fpn_channels"])
    c, rep = cfg["fpn_channels"], cfg["representation_size"]
    # OLN uses a single square anchor per location (mcahny/object_localization_network, configs/oln_box).
    ratios = (1.0,) if kind == "oln" else (0.5, 1.0, 2.0)
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
        mask_head=MaskRCNNHeads(c, [mask_channels] * cfg["mask_layers"], 1, norm_layer=None),
        mask_predictor=MaskRCNNPredictor(mask_channels, mask_channels, 2),
    )
    model = MaskRCNN(backbone, num_classes=None, **common)
    if kind == "oln":
        from ggn.detector.oln import to_oln

        to_oln(model, representation_size=rep)
    return model


def load_pretrained(model: nn.Module, path: str | Path) -> tuple[int, int]:
    """Load a local weights file: a full detector state dict, a {"model": ...} checkpoint, or a bare ResNet
    state dict (keys like "layer1.0.conv1.weight", loaded into the backbone body). Shapes that do not fit
    (e.g. another number of classes) are skipped. Returns (loaded tensors, skipped tensors)."""
    state = load_checkpoint(path)
    if isinstance(state, dict) and isinstance(state.get("model"), dict):
        state = state["model"]
    if not isinstance(state, dict) or not state:
        raise InputError(f"pretrained file {path} holds no state dict")
    own = model.state_dict()
    if not any(k in own for k in state):
        state = {f"backbone.body.{k}": v for k, v in state.items()}
    fitting = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
    if not fitting:
        raise InputError(f"no tensor in {path} fits the {type(model).__name__} backbone; is it a ResNet of the "
                         "same depth as --backbone?")
    model.load_state_dict(fitting, strict=False)
    return len(fitting), len(state) - len(fitting)


def load_detector(path: str | Path, device: torch.device | str = "cpu",
                  overrides: dict[str, Any] | None = None) -> tuple[MaskRCNN, dict[str, Any]]:
    """Detector checkpoint ({"model", "config"}) -> (model in eval mode on `device`, config).
    `overrides` replace config values that do not change the weights (test-time settings, input size)."""
    ckpt = load_checkpoint(path)
    if not isinstance(ckpt, dict) or "model" not in ckpt or "config" not in ckpt:
        raise InputError(f"{path} is not a detector checkpoint (needs 'model' and 'config'); "
                         "use the --out file of `ggn train-detector`")
    config = dict(ckpt["config"]) | dict(overrides or {})
    model = build_detector(config)
    model.load_state_dict(ckpt["model"])
    return model.to(device).eval(), config
