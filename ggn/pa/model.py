"""Pairwise-affinity network: torchvision ResNet + UperNet-style head (pyramid pooling + FPN fusion)."""
from __future__ import annotations

import logging
import math
from functools import partial
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
import torchvision

from ggn.io import InputError, checkpoint_kind, load_checkpoint, load_state_into
from ggn.weights import load_pretrained_state

log = logging.getLogger(__name__)

# ImageNet statistics in 0-255 units (as in the reference config), applied outside the network.
IMAGENET_MEAN = (123.675, 116.28, 103.53)
IMAGENET_STD = (58.395, 57.12, 57.375)
# The network downsamples by 32; inputs are padded to a multiple of it.
SIZE_DIVISOR = 32

_BACKBONE_CHANNELS = {
    "resnet18": (64, 128, 256, 512),
    "resnet34": (64, 128, 256, 512),
    "resnet50": (256, 512, 1024, 2048),
    "resnet101": (256, 512, 1024, 2048),
}


def make_norm(norm: str, groups: int = 32) -> Callable[[int], nn.Module]:
    if norm == "bn":
        return nn.BatchNorm2d
    if norm == "gn":
        return partial(_group_norm, groups=groups)
    raise ValueError(f"norm must be 'bn' or 'gn', got {norm!r}")


def _group_norm(channels: int, groups: int = 32) -> nn.GroupNorm:
    return nn.GroupNorm(math.gcd(groups, channels), channels)


def _conv_norm_relu(cin: int, cout: int, kernel: int, norm_layer) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, kernel, padding=kernel // 2, bias=False), norm_layer(cout),
                         nn.ReLU(inplace=True))


class ResNetFeatures(nn.Module):
    """The four stages (strides 4, 8, 16, 32) of a torchvision ResNet, without the classifier."""

    def __init__(self, name: str = "resnet50", norm_layer=nn.BatchNorm2d):
        super().__init__()
        if name not in _BACKBONE_CHANNELS:
            raise ValueError(f"backbone must be one of {sorted(_BACKBONE_CHANNELS)}, got {name!r}")
        net = getattr(torchvision.models, name)(weights=None, norm_layer=norm_layer)
        self.stem = nn.Sequential(net.conv1, net.bn1, net.relu, net.maxpool)
        self.layer1, self.layer2, self.layer3, self.layer4 = net.layer1, net.layer2, net.layer3, net.layer4
        self.channels = _BACKBONE_CHANNELS[name]

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        c1 = self.layer1(self.stem(x))
        c2 = self.layer2(c1)
        c3 = self.layer3(c2)
        c4 = self.layer4(c3)
        return [c1, c2, c3, c4]


class UperNetHead(nn.Module):
    """Pyramid pooling on the last stage, top-down FPN over all four, fused at stride 4 to logits."""

    def __init__(self, in_channels: Sequence[int], out_channels: int = 1, fpn_dim: int = 256,
                 ppm_dim: int = 512, pool_scales: Sequence[int] = (1, 2, 3, 6), norm_layer=nn.BatchNorm2d):
        super().__init__()
        top = in_channels[-1]
        self.pool_scales = tuple(pool_scales)
        # The 1x1 conv runs after upsampling the pooled map (as UperNet does), so BatchNorm never sees a
        # 1x1 map with batch size 1.
        self.ppm = nn.ModuleList(_conv_norm_relu(top, ppm_dim, 1, norm_layer) for _ in self.pool_scales)
        self.ppm_fuse = _conv_norm_relu(top + len(self.pool_scales) * ppm_dim, fpn_dim, 3, norm_layer)
        self.lateral = nn.ModuleList(_conv_norm_relu(c, fpn_dim, 1, norm_layer) for c in in_channels[:-1])
        self.smooth = nn.ModuleList(_conv_norm_relu(fpn_dim, fpn_dim, 3, norm_layer) for _ in in_channels[:-1])
        self.fuse = _conv_norm_relu(len(in_channels) * fpn_dim, fpn_dim, 3, norm_layer)
        self.classifier = nn.Conv2d(fpn_dim, out_channels, 1)

    def forward(self, feats: list[torch.Tensor]) -> torch.Tensor:
        top = feats[-1]
        size = top.shape[-2:]
        pyramid = [top]
        for scale, conv in zip(self.pool_scales, self.ppm):
            pooled = F.adaptive_avg_pool2d(top, scale)
            pyramid.append(conv(F.interpolate(pooled, size=size, mode="bilinear", align_corners=False)))
        f = self.ppm_fuse(torch.cat(pyramid, dim=1))
        levels = [f]
        for i in reversed(range(len(feats) - 1)):
            lat = self.lateral[i](feats[i])
            f = lat + F.interpolate(f, size=lat.shape[-2:], mode="bilinear", align_corners=False)
            levels.append(self.smooth[i](f))
        levels.reverse()  # finest (stride 4) first
        out_size = levels[0].shape[-2:]
        fused = [levels[0]] + [F.interpolate(x, size=out_size, mode="bilinear", align_corners=False)
                               for x in levels[1:]]
        return self.classifier(self.fuse(torch.cat(fused, dim=1)))


class PairwiseAffinityNet(nn.Module):
    """Image (normalised, [B,3,H,W], H and W multiples of 32) -> affinity logits [B,C,H,W]."""

    def __init__(self, backbone: str = "resnet50", out_channels: int = 1, norm: str = "bn",
                 fpn_dim: int = 256, ppm_dim: int = 512, pool_scales: Sequence[int] = (1, 2, 3, 6)):
        super().__init__()
        norm_layer = make_norm(norm)
        self.backbone = ResNetFeatures(backbone, norm_layer=norm_layer)
        self.head = UperNetHead(self.backbone.channels, out_channels=out_channels, fpn_dim=fpn_dim,
                                ppm_dim=ppm_dim, pool_scales=pool_scales, norm_layer=norm_layer)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        logits = self.head(self.backbone(images))
        return F.interpolate(logits, size=images.shape[-2:], mode="bilinear", align_corners=False)


def default_pa_config(**overrides) -> dict:
    """Build kwargs plus preprocessing settings, as stored in the checkpoint's "config"."""
    from ggn.pa.targets import neighbour_offsets

    cfg = {
        "backbone": "resnet50", "norm": "bn", "fpn_dim": 256, "ppm_dim": 512, "pool_scales": [1, 2, 3, 6],
        "offsets": [list(o) for o in neighbour_offsets((1,))], "reduce": "mean", "target": "reference",
        "input_size": 0, "mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD),
    }
    cfg.update(overrides)
    return cfg


def output_channels(config: dict) -> int:
    return 1 if config.get("reduce", "mean") == "mean" else len(config["offsets"])


def build_pa_model(config: dict, pretrained: str | Path | None = None) -> PairwiseAffinityNet:
    """The network described by a PA config; `pretrained` is `imagenet` (torchvision's weights, through its
    cache) or a local torchvision ResNet state_dict file."""
    model = PairwiseAffinityNet(
        backbone=config.get("backbone", "resnet50"), out_channels=output_channels(config),
        norm=config.get("norm", "bn"), fpn_dim=int(config.get("fpn_dim", 256)),
        ppm_dim=int(config.get("ppm_dim", 512)), pool_scales=tuple(config.get("pool_scales", (1, 2, 3, 6))),
    )
    if pretrained:
        load_backbone_weights(model, pretrained, config.get("backbone", "resnet50"))
    return model


def load_backbone_weights(model: PairwiseAffinityNet, spec: str | Path, arch: str = "resnet50") -> None:
    """Copy ImageNet weights (`imagenet` or a local torchvision ResNet checkpoint) into the backbone."""
    state, path = load_pretrained_state(spec, arch)
    kind, words = checkpoint_kind(state)
    if kind in ("detector", "pa"):
        raise InputError(f"pretrained file {path} holds {words}; --pretrained takes `imagenet` or a torchvision "
                         "ResNet weights file")
    if isinstance(state, dict) and "state_dict" in state:
        state = state["state_dict"]
    if isinstance(state, dict) and "model" in state and isinstance(state["model"], dict):
        state = state["model"]
    # torchvision names (conv1, bn1, layer1..4) -> ours (stem.0, stem.1, layer1..4); the fc is dropped.
    renamed = {}
    for key, value in state.items():
        key = key.removeprefix("module.").removeprefix("backbone.")
        if key.startswith("conv1."):
            key = "stem.0." + key[len("conv1."):]
        elif key.startswith("bn1."):
            key = "stem.1." + key[len("bn1."):]
        elif not key.startswith("layer"):
            continue
        renamed[key] = value
    own = model.backbone.state_dict()
    mismatched = [k for k, v in renamed.items() if k in own and own[k].shape != v.shape]
    if mismatched:
        raise InputError(f"pretrained weights {path} do not fit the backbone (e.g. {mismatched[0]}); "
                         f"pass a torchvision {type(model.backbone).__name__} file of the same depth")
    missing, unexpected = model.backbone.load_state_dict(renamed, strict=False)
    loaded = len(renamed) - len(unexpected)
    if loaded == 0:
        raise InputError(f"pretrained weights {path} contain no ResNet backbone tensors")
    log.info("loaded %d backbone tensors from %s (%d missing, e.g. GroupNorm vs BatchNorm statistics)",
             loaded, path, len(missing))


def load_pa_model(path: str | Path, device: torch.device | str = "cpu") -> tuple[PairwiseAffinityNet, dict]:
    """A trained PA network in eval mode on `device`, with its config."""
    ckpt = load_checkpoint(path, expect="pa")
    config = dict(ckpt["config"])
    model = build_pa_model(config)
    load_state_into(model, ckpt["model"], path, "PA")
    return model.to(device).eval(), config


def normalize_images(images: torch.Tensor, config: dict) -> torch.Tensor:
    """uint8/float [B,3,H,W] in 0-255 -> normalised float32 on the same device."""
    mean = torch.tensor(config.get("mean", IMAGENET_MEAN), device=images.device, dtype=torch.float32)
    std = torch.tensor(config.get("std", IMAGENET_STD), device=images.device, dtype=torch.float32)
    return (images.float() - mean.view(1, 3, 1, 1)) / std.view(1, 3, 1, 1)


def resized_shape(height: int, width: int, input_size: int | None) -> tuple[int, int]:
    """Aspect-preserving size whose long side is input_size; the image's own size when input_size is 0/None
    (native resolution, as the reference trains and extracts)."""
    if not input_size:
        return int(height), int(width)
    scale = input_size / max(height, width)
    return max(1, round(height * scale)), max(1, round(width * scale))


LARGE_IMAGE_PIXELS = 16_000_000  # above this, images are resized a channel at a time (memory, not results)


def resize_image(image: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """uint8 [3,H,W] -> float32 [3,h,w] in 0-255 (antialiased bilinear when shrinking)."""
    if tuple(image.shape[-2:]) == tuple(size):
        return image.float()
    if image.shape[-1] * image.shape[-2] > LARGE_IMAGE_PIXELS:  # a channel at a time: 1.2 GB less at 100 Mpx
        return torch.cat([F.interpolate(image[c:c + 1].float().unsqueeze(0), size=size, mode="bilinear",
                                        align_corners=False, antialias=True).squeeze(0) for c in range(len(image))
                          ]).clamp_(0, 255)
    return F.interpolate(image.float().unsqueeze(0), size=size, mode="bilinear", align_corners=False,
                         antialias=True).squeeze(0).clamp_(0, 255)


def inference_size(config: dict, input_size: int | None) -> int:
    """Long side at inference: `input_size` when given, else the checkpoint's; 0 means native resolution."""
    return int(config.get("input_size") or 0) if input_size is None else int(input_size)


def padded_size(size: int) -> int:
    return int(math.ceil(size / SIZE_DIVISOR) * SIZE_DIVISOR)


BATCHINGS = ("padded", "same_size")


@torch.no_grad()
def predict_affinity(model: nn.Module, images: list[np.ndarray], config: dict, device: torch.device | str,
                     input_size: int | None = None, batch_size: int = 8, amp: str = "auto",
                     batching: str = "padded") -> list[np.ndarray]:
    """Affinity probabilities float32 [C,h,w] in [0,1] per image (uint8 HxWx3), at the network resolution:
    aspect kept, long side input_size (None: config["input_size"]; 0: native resolution), padding removed.

    batching "padded": consecutive images share a batch, padded at the bottom/right to a common size (a
    multiple of 32) that the pyramid pooling sees. "same_size": only images of identical network size share
    a batch, unpadded, so each image's output is the one it gets alone (the reference extracts one image at a
    time at its native size, tools/extract_pa_masks.py); outputs keep the input order either way.
    amp: see ggn.precision (auto: autocast on CUDA).
    """
    from ggn.precision import autocast_dtype

    if batching not in BATCHINGS:
        raise ValueError(f"batching {batching!r}: choose one of {', '.join(BATCHINGS)}")
    device = torch.device(device)
    size = inference_size(config, input_size)
    was_training = model.training
    model.eval()
    amp_dtype = autocast_dtype(amp, device)
    shapes = []
    for img in images:
        if img.ndim != 3 or img.shape[2] != 3:
            raise ValueError(f"images must be HxWx3 uint8 arrays, got shape {img.shape}")
        shapes.append(resized_shape(img.shape[0], img.shape[1], size))
    if batching == "padded":
        groups = [list(range(s, min(s + batch_size, len(images)))) for s in range(0, len(images), batch_size)]
    else:
        by_shape: dict[tuple[int, int], list[int]] = {}
        for i, hw in enumerate(shapes):
            by_shape.setdefault(hw, []).append(i)
        groups = [idx[s:s + batch_size] for idx in by_shape.values() for s in range(0, len(idx), batch_size)]
    outputs: list[np.ndarray | None] = [None] * len(images)
    for group in groups:
        # np.array copies: callers may pass read-only arrays, which torch.from_numpy warns about.
        tensors = [resize_image(torch.from_numpy(np.array(images[i], dtype=np.uint8)).permute(2, 0, 1).to(device),
                                shapes[i]) for i in group]
        if batching == "padded":
            ph = padded_size(max(shapes[i][0] for i in group))
            pw = padded_size(max(shapes[i][1] for i in group))
        else:
            ph, pw = shapes[group[0]]
        batch = torch.zeros((len(group), 3, ph, pw), dtype=torch.float32, device=device)
        for j, t in enumerate(tensors):
            batch[j, :, :t.shape[1], :t.shape[2]] = normalize_images(t.unsqueeze(0), config)[0]
        with torch.autocast(device_type=device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
            logits = model(batch)
        probs = torch.sigmoid(logits.float())
        for j, i in enumerate(group):
            h, w = shapes[i]
            outputs[i] = probs[j, :, :h, :w].cpu().numpy().astype(np.float32, copy=False)
    if was_training:
        model.train()
    return outputs
