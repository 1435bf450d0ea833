"""`ggn import-reference`: the authors' released mmdetection 2.x checkpoints -> this project's checkpoints.

The Generic-Grouping model zoo (README "Model zoo") releases, per table row, the PA predictor, the GGN detector
(class-agnostic Mask R-CNN R50-FPN; GroupNorm for the ImageNet rows) and, through OLN
(mcahny/object_localization_network), OLN detectors. This step renames their tensors into our modules' names,
adapts the two places where the layouts differ (below), checks that every tensor of the file is used and every
tensor of our network is filled, and writes a checkpoint that `ggn extract` / `ggn predict` load like one of
ours. Nothing is loaded partially: an unmapped, missing or misshapen tensor stops the command with the list.

Where the layouts differ, and how the converted network still computes what the authors' did:
- mmdet 2.x puts the background logit last (`fc_cls` rows [object, background]; bbox_head.py, BG id =
  num_classes); torchvision puts it first. The rows are swapped; the softmax is the same.
- mmdet's class-agnostic GGN head has num_classes=1 (det:54, 75) and reg_class_agnostic=False (det:60): `fc_reg`
  has 4 x 1 rows and the mask head's `conv_logits` one channel; torchvision's predictors hold one slot per class including background (8 rows, 2 channels) and read
  only the slot of the predicted class (1). The reference rows go to slot 1; slot 0 (never read) is zero.
- Box-delta weights need no change: mmdet's target_stds (1,1,1,1) for the RPN and (0.1,0.1,0.2,0.2) for the box
  head (det:33-37, 55-59; gn:34-37, 56-60) are torchvision's BoxCoder weights (1,1,1,1) and (10,10,5,5), the
  inverse stds.
- OLN-Box (oln_box.py) has no mask head; our OLN takes that structure with the detector option `mask_head: false`
  (boxes only), set when the file has no mask tensors. A Mask R-CNN without them is refused (missing keys).
- Tensors the reference computes but never uses at test time are dropped by name (recorded in the checkpoint):
  OLN's `rpn_cls` and `fc_cls` (loss weight 0: docs/parity.md's OLN table, oln:45, oln:53-78; `get_bboxes` of
  convfc_bbox_score_head.py scores boxes by sqrt(rpn objectness x box IoU) and leaves cls_score unused).
- RoIAlign: mmdet uses aligned=True, sampling_ratio=0 (det:45, 66; mmcv's RoIAlign default aligned=True); torchvision's MultiScaleRoIAlign uses
  aligned=False, sampling_ratio=2. The converted config says `roi_aligned: true, roi_sampling_ratio: 0`, the
  detector options issue 17 adds; a detector build without those options pools as torchvision does (RoI
  features half a pixel off the authors').

Released files are CC-BY-NC 4.0 (Generic-Grouping README, "License"): the converted checkpoint records the
source file, its SHA-256 and that licence; none of them belongs in this repository.
"""
from __future__ import annotations

import argparse
import logging
import re
from pathlib import Path
from typing import Callable

import torch

from ggn.io import InputError, atomic_torch_save, checkpoint_kind, file_sha256, machine_provenance

log = logging.getLogger(__name__)

LICENCE = ("CC-BY-NC 4.0 (facebookresearch/Generic-Grouping model zoo): non-commercial use, attribution; "
           "do not commit or redistribute the file")

# Types mmcv 1.x may pickle inside a checkpoint's `meta` beyond plain Python values: numpy scalars and dtypes
# (e.g. a hook's best score). weights_only=True refuses them unless allow-listed; they build data, never code.
def _numpy_meta_globals() -> list:
    import numpy as np

    allowed: list = [np.dtype]
    scalar = getattr(getattr(np, "_core", np.core), "multiarray").scalar
    allowed += [scalar, (scalar, "numpy.core.multiarray.scalar")]
    dtypes = getattr(np, "dtypes", None)
    if dtypes is not None:
        allowed += [getattr(dtypes, n) for n in dir(dtypes) if n.endswith("DType")]
    return allowed


def read_mmcv_checkpoint(path: str | Path) -> tuple[dict[str, torch.Tensor], dict]:
    """(state_dict, meta) of an mmcv checkpoint ({"meta", "state_dict", "optimizer"}), read with
    torch.load(weights_only=True). Plain `meta` (strings, numbers, the config text, CLASSES) needs nothing more;
    numpy scalars in it are admitted by a fixed allow-list of numpy data types, anything else is refused."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"checkpoint {path} does not exist; download it from the authors' model zoo "
                         "(docs/parity_ladder.md lists the files) and pass its path")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as first:  # noqa: BLE001 - torch raises several types for unsafe or damaged files
        try:
            with torch.serialization.safe_globals(_numpy_meta_globals()):
                ckpt = torch.load(path, map_location="cpu", weights_only=True)
            log.info("%s: its meta holds numpy values, read through the numpy allow-list", path)
        except Exception:  # noqa: BLE001
            line = (str(first).strip().splitlines() or [type(first).__name__])[0]
            raise InputError(f"checkpoint {path} cannot be read with torch.load(weights_only=True) ({line:.300}); "
                             "it is damaged, not a PyTorch file, or pickles objects other than tensors, plain "
                             "values and numpy scalars") from None
    if not isinstance(ckpt, dict):
        raise InputError(f"checkpoint {path} holds a {type(ckpt).__name__}, not an mmcv checkpoint dict")
    kind, words = checkpoint_kind(ckpt)
    if kind in ("pa", "detector", "state"):
        raise InputError(f"checkpoint {path} holds {words}, written by this pipeline: it needs no import")
    state = ckpt.get("state_dict", ckpt)
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise InputError(f"checkpoint {path} has no state_dict of tensors (keys: {', '.join(map(str, list(ckpt)[:6]))})")
    meta = ckpt.get("meta") if isinstance(ckpt.get("meta"), dict) else {}
    return {k.removeprefix("module."): v for k, v in state.items()}, meta


# ----------------------------------------------------------------------------------------------------
# Key mapping. Each rule: regex on the reference key -> our key (a format string over the match groups), and
# optionally a transform of the tensor. Sources (Generic-Grouping; `det` = configs/mask_rcnn/class_agn_mask_rcnn_pa.py
# and `gn` = class_agn_mask_rcnn_gn.py at deed147, `pa_pred` = mmdet/models/detectors/pa_predictor.py and `score`
# = roi_heads/bbox_heads/convfc_bbox_score_head.py at 170fa63; the mmdet module files by class and method):
#   Which modules: det:13-22 (ResNet-50, BN) / gn:14-23 (GN, norm_cfg gn:9), det:23-25 (FPN 256, 5 outputs),
#     det:26-40 (RPNHead), det:49-63 (Shared2FCBBoxHead), det:70-77 (FCNMaskHead, 4 convs; GN: gn:72-80).
#   ResNet: mmdet/models/backbones/resnet.py (Bottleneck conv1-3 with build_norm_layer postfix 1-3, so `bn1`..`bn3`
#     for BN and `gn1`..`gn3` for GN; stem `conv1` + `bn1`/`gn1`; `downsample` = Sequential(conv, norm)); the
#     same names as torchvision's ResNet apart from the GN prefix.
#   FPN: mmdet/models/necks/fpn.py (`lateral_convs.i.conv`, `fpn_convs.i.conv`, ConvModule without norm;
#     num_outs 5 without extra convs = max-pool of the last level, torchvision's LastLevelMaxPool).
#   RPN: mmdet/models/dense_heads/rpn_head.py `_init_layers` (`rpn_conv`, `rpn_cls`, `rpn_reg`);
#     OLN: dense_heads/oln_rpn_head.py `_init_layers` (adds `rpn_obj`).
#   Box head: roi_heads/bbox_heads/convfc_bbox_head.py Shared2FCBBoxHead (`shared_fcs.0/1`, `fc_cls`, `fc_reg`);
#     OLN: ConvFCBBoxScoreHead (adds `fc_bbox_score`, score:51-54).
#   Mask head: roi_heads/mask_heads/fcn_mask_head.py (`convs.i.conv` [+ `convs.i.gn`], `upsample` deconv,
#     `conv_logits`).
#   PA head: mmdet/models/detectors/pa_predictor.py PairwiseAffinityHeadUperNet (pa_pred:281-359):
#     `ppm_conv.i`, `ppm_last_conv`, `fpn_in.i`, `fpn_out.i.0`, `conv_last.0` (3x3 conv-norm-relu) and
#     `conv_last.1` (1x1 to the affinity channels); the same order of operations as our UperNetHead.

Rule = tuple[str, str, Callable[[torch.Tensor], torch.Tensor] | None]

_NORM = r"(?:bn|gn)"


def _resnet_rules(src: str, dst: str, stem_conv: str, stem_norm: str) -> list[Rule]:
    # gn1..gn3 -> bn1..bn3: torchvision names every norm of a block bn1..bn3, whatever its type
    return [
        (rf"{src}conv1\.weight", f"{dst}{stem_conv}.weight", None),
        (rf"{src}{_NORM}1\.(weight|bias|running_mean|running_var|num_batches_tracked)", f"{dst}{stem_norm}.{{0}}", None),
        (rf"{src}layer(\d)\.(\d+)\.(conv[123])\.weight", f"{dst}layer{{0}}.{{1}}.{{2}}.weight", None),
        (rf"{src}layer(\d)\.(\d+)\.{_NORM}([123])\.(weight|bias|running_mean|running_var|num_batches_tracked)",
         f"{dst}layer{{0}}.{{1}}.bn{{2}}.{{3}}", None),
        (rf"{src}layer(\d)\.(\d+)\.downsample\.([01])\.(weight|bias|running_mean|running_var|num_batches_tracked)",
         f"{dst}layer{{0}}.{{1}}.downsample.{{2}}.{{3}}", None),
    ]


def _background_first(t: torch.Tensor) -> torch.Tensor:
    """mmdet's [object, background] classifier rows -> torchvision's [background, object]."""
    return t.flip(0)


def _object_slot(rows: int) -> Callable[[torch.Tensor], torch.Tensor]:
    """The reference's single-class rows into torchvision's slot of class 1 (slot 0, background, is never read)."""
    def place(t: torch.Tensor) -> torch.Tensor:
        if t.shape[0] != rows:
            raise ValueError(f"{t.shape[0]} rows where a class-agnostic head has {rows}")
        return torch.cat([torch.zeros_like(t), t], dim=0)
    return place


PA_RULES: list[Rule] = _resnet_rules(r"backbone\.", "backbone.", "stem.0", "stem.1") + [
    (r"classifier\.ppm_conv\.(\d+)\.([01])\.(.+)", "head.ppm.{0}.{1}.{2}", None),
    (r"classifier\.ppm_last_conv\.([01])\.(.+)", "head.ppm_fuse.{0}.{1}", None),
    (r"classifier\.fpn_in\.(\d+)\.([01])\.(.+)", "head.lateral.{0}.{1}.{2}", None),
    (r"classifier\.fpn_out\.(\d+)\.0\.([01])\.(.+)", "head.smooth.{0}.{1}.{2}", None),
    (r"classifier\.conv_last\.0\.([01])\.(.+)", "head.fuse.{0}.{1}", None),
    (r"classifier\.conv_last\.1\.(weight|bias)", "head.classifier.{0}", None),
]

_DETECTOR_COMMON: list[Rule] = _resnet_rules(r"backbone\.", "backbone.body.", "conv1", "bn1") + [
    (r"neck\.lateral_convs\.(\d)\.conv\.(weight|bias)", "backbone.fpn.inner_blocks.{0}.0.{1}", None),
    (r"neck\.fpn_convs\.(\d)\.conv\.(weight|bias)", "backbone.fpn.layer_blocks.{0}.0.{1}", None),
    (r"roi_head\.bbox_head\.shared_fcs\.0\.(weight|bias)", "roi_heads.box_head.fc6.{0}", None),
    (r"roi_head\.bbox_head\.shared_fcs\.1\.(weight|bias)", "roi_heads.box_head.fc7.{0}", None),
    (r"roi_head\.mask_head\.convs\.(\d)\.conv\.(weight|bias)", "roi_heads.mask_head.{0}.0.{1}", None),
    (r"roi_head\.mask_head\.convs\.(\d)\.gn\.(weight|bias)", "roi_heads.mask_head.{0}.1.{1}", None),
    (r"roi_head\.mask_head\.upsample\.(weight|bias)", "roi_heads.mask_predictor.conv5_mask.{0}", None),
    (r"roi_head\.mask_head\.conv_logits\.(weight|bias)", "roi_heads.mask_predictor.mask_fcn_logits.{0}",
     _object_slot(1)),
]

MASKRCNN_RULES: list[Rule] = _DETECTOR_COMMON + [
    (r"rpn_head\.rpn_conv\.(weight|bias)", "rpn.head.conv.0.0.{0}", None),
    (r"rpn_head\.rpn_cls\.(weight|bias)", "rpn.head.cls_logits.{0}", None),
    (r"rpn_head\.rpn_reg\.(weight|bias)", "rpn.head.bbox_pred.{0}", None),
    (r"roi_head\.bbox_head\.fc_cls\.(weight|bias)", "roi_heads.box_predictor.cls_score.{0}", _background_first),
    (r"roi_head\.bbox_head\.fc_reg\.(weight|bias)", "roi_heads.box_predictor.bbox_pred.{0}", _object_slot(4)),
]

OLN_RULES: list[Rule] = _DETECTOR_COMMON + [
    (r"rpn_head\.rpn_conv\.(weight|bias)", "rpn.head.conv.{0}", None),
    (r"rpn_head\.rpn_reg\.(weight|bias)", "rpn.head.bbox_pred.{0}", None),
    (r"rpn_head\.rpn_obj\.(weight|bias)", "rpn.head.objectness.{0}", None),
    (r"roi_head\.bbox_head\.fc_reg\.(weight|bias)", "roi_heads.box_predictor.bbox_pred.{0}", None),
    (r"roi_head\.bbox_head\.fc_bbox_score\.(weight|bias)", "roi_heads.box_predictor.iou_score.{0}", None),
]
# Computed by the reference but never used at test time (loss weight 0): dropped by name, recorded.
OLN_UNUSED = (r"rpn_head\.rpn_cls\.(weight|bias)", r"roi_head\.bbox_head\.fc_cls\.(weight|bias)")


REFERENCE_ROI_ALIGN = {"roi_aligned": True, "roi_sampling_ratio": 0}


def detect_kind(state: dict[str, torch.Tensor]) -> str:
    """pa, maskrcnn or oln, from the reference's module names."""
    keys = set(state)
    if any(k.startswith("classifier.") for k in keys) and "backbone.conv1.weight" in keys:
        return "pa"
    if any(k.startswith("rpn_head.rpn_obj.") for k in keys):
        return "oln"
    if any(k.startswith("rpn_head.") for k in keys) and any(k.startswith("roi_head.") for k in keys):
        return "maskrcnn"
    raise InputError("the checkpoint is none of the reference's PA predictor, GGN Mask R-CNN or OLN detector "
                     f"(its keys start: {', '.join(sorted(keys)[:5])})")


KIND_WORDS = {"pa": "a PA predictor (PairwiseAffinityPredictor)", "maskrcnn": "a class-agnostic Mask R-CNN",
              "oln": "an OLN detector"}


def map_keys(state: dict[str, torch.Tensor], rules: list[Rule], unused: tuple[str, ...] = ()
             ) -> tuple[dict[str, torch.Tensor], list[str], list[str]]:
    """(converted tensors, unmapped reference keys, dropped-by-name reference keys)."""
    compiled = [(re.compile(pattern + r"\Z"), target, fn) for pattern, target, fn in rules]
    unused_re = [re.compile(p + r"\Z") for p in unused]
    out: dict[str, torch.Tensor] = {}
    unmapped, dropped = [], []
    for key, value in state.items():
        for pattern, target, fn in compiled:
            m = pattern.match(key)
            if m:
                new = target.format(*m.groups())
                if new in out:
                    raise InputError(f"two reference tensors map to {new} (the second is {key}): not a checkpoint "
                                     "of the reference's layout")
                try:
                    out[new] = fn(value) if fn is not None else value
                except ValueError as e:
                    raise InputError(f"reference tensor {key} {tuple(value.shape)}: {e}; this is a class-specific "
                                     "head, and GGN's detectors are class-agnostic (num_classes=1): convert a "
                                     "class-agnostic checkpoint") from None
                break
        else:
            if any(p.match(key) for p in unused_re):
                dropped.append(key)
            else:
                unmapped.append(key)
    return out, unmapped, dropped


def _check_class_agnostic(state: dict[str, torch.Tensor], kind: str) -> None:
    cls = state.get("roi_head.bbox_head.fc_cls.weight")
    if kind == "maskrcnn" and cls is not None and cls.shape[0] != 2:
        raise InputError(f"the box head classifies {cls.shape[0] - 1} classes (fc_cls {tuple(cls.shape)}): a "
                         "class-specific detector; GGN's detectors are class-agnostic (one class, `object`)")
    logits = state.get("roi_head.mask_head.conv_logits.weight")
    if logits is not None and logits.shape[0] != 1:
        raise InputError(f"the mask head predicts {logits.shape[0]} class masks (conv_logits "
                         f"{tuple(logits.shape)}): a class-specific detector; convert a class-agnostic one")


def _pa_target(state: dict[str, torch.Tensor]):
    from ggn.pa.model import build_pa_model, default_pa_config

    out_channels = state["classifier.conv_last.1.weight"].shape[0] if "classifier.conv_last.1.weight" in state else 1
    if out_channels != 1:
        raise InputError(f"the PA head predicts {out_channels} affinity channels; the released networks predict one "
                         "(affinity_reduction='mean', pa_train:37), the only layout whose channel order is known")
    norm = "gn" if any(".gn1." in k or k.startswith("backbone.gn1") for k in state) else "bn"
    config = default_pa_config(norm=norm)
    return build_pa_model(config), config


def _detector_target(state: dict[str, torch.Tensor], kind: str):
    from ggn.detector.model import build_detector, detector_config

    norm = "gn" if "backbone.gn1.weight" in state else "eval_bn"
    # OLN-Box (oln_box.py; mcahny/object_localization_network's release) has no mask head: our OLN takes that
    # structure with `mask_head: false` (boxes only). A Mask R-CNN must have one (a missing mask key is an error).
    masks = kind != "oln" or any(k.startswith("roi_head.mask_head.") for k in state)
    # The reference's recipe (det:11-77, gn:14-77, oln_box.py): one square anchor, L1 losses, frozen stage 1.
    config = detector_config(kind=kind, norm=norm, frozen_stages=1, anchor_ratios=[1.0], box_loss="l1",
                             mask_head=masks)
    return build_detector(config), config


def convert(state: dict[str, torch.Tensor], kind: str | None = None) -> tuple[dict, dict, dict]:
    """(our state_dict, our config, a report {kind, dropped, filled}) of a reference state dict; an InputError
    listing every unmapped, missing and misshapen key when the file does not fit."""
    found = detect_kind(state)
    if kind not in (None, "auto") and kind != found:
        raise InputError(f"--kind {kind}, but the checkpoint holds {KIND_WORDS[found]} (its module names say so); "
                         f"pass --kind {found} or the right file")
    kind = found
    _check_class_agnostic(state, kind)
    if kind == "pa":
        model, config = _pa_target(state)
        mapped, unmapped, dropped = map_keys(state, PA_RULES)
    else:
        model, config = _detector_target(state, kind)
        rules, unused = (OLN_RULES, OLN_UNUSED) if kind == "oln" else (MASKRCNN_RULES, ())
        mapped, unmapped, dropped = map_keys(state, rules, unused)
    own = model.state_dict()
    # BatchNorm's batch counter does not change what the network computes; files saved without it get 0.
    filled = [k for k in own if k not in mapped and k.endswith("num_batches_tracked")]
    for k in filled:
        mapped[k] = torch.zeros_like(own[k])
    missing = [k for k in own if k not in mapped]
    extra = [k for k in mapped if k not in own]
    misshapen = [f"{k}: reference {tuple(mapped[k].shape)}, ours {tuple(own[k].shape)}"
                 for k in own if k in mapped and mapped[k].shape != own[k].shape]
    problems = []
    if unmapped:
        problems.append(f"{len(unmapped)} reference tensor(s) with no place in our network: " + ", ".join(unmapped[:20])
                        + (" ..." if len(unmapped) > 20 else ""))
    if missing:
        problems.append(f"{len(missing)} tensor(s) of our network the file does not provide: " + ", ".join(missing[:20])
                        + (" ..." if len(missing) > 20 else ""))
    if extra:
        problems.append(f"{len(extra)} mapped name(s) our network lacks: " + ", ".join(extra[:20]))
    if misshapen:
        problems.append(f"{len(misshapen)} shape mismatch(es): " + "; ".join(misshapen[:10]))
    if problems:
        raise InputError(f"cannot convert this {KIND_WORDS[kind]} checkpoint completely (nothing was written):\n  "
                         + "\n  ".join(problems))
    model.load_state_dict(mapped, strict=True)
    if kind != "pa":
        # mmcv's RoIAlign as the reference's detectors pool (aligned=True, sampling_ratio=0; det roi_layer), in the
        # names of the detector option that issue 17 adds; a detector build without that option ignores them.
        config.update(REFERENCE_ROI_ALIGN)
    return model.state_dict(), config, {"kind": kind, "dropped": dropped, "filled": filled}


def import_reference(checkpoint: str | Path, out: str | Path, kind: str | None = None) -> dict:
    """Convert `checkpoint` and write `out` ({"model", "config", "provenance", "source"}); returns `source`."""
    state, meta = read_mmcv_checkpoint(checkpoint)
    model_state, config, report = convert(state, kind)
    source = {
        "file": Path(checkpoint).name, "sha256": file_sha256(checkpoint), "kind": report["kind"],
        "dropped_unused": report["dropped"], "filled_batch_counters": len(report["filled"]),
        "mmcv_version": str(meta.get("mmcv_version", "")), "mmdet_version": str(meta.get("mmdet_version", "")),
        "licence": LICENCE, "converted_by": "ggn import-reference",
    }
    atomic_torch_save({"model": model_state, "config": config, "provenance": machine_provenance(), "source": source},
                      out)
    log.info("converted %s (%s, %d tensors) to %s", checkpoint, KIND_WORDS[report["kind"]], len(model_state), out)
    return source


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--checkpoint", required=True, help="a released mmdetection 2.x checkpoint (.pth) of the authors")
    p.add_argument("--out", required=True, help="converted checkpoint: a PA checkpoint (for `pa_checkpoint` / "
                                                "`ggn extract`) or a detector checkpoint (for `ggn predict`)")
    p.add_argument("--kind", choices=["auto", "pa", "maskrcnn", "oln"], default="auto",
                   help="what the file holds; `auto` reads it from the module names, a given kind is checked")


def run(args: argparse.Namespace) -> int:
    import_reference(args.checkpoint, args.out, args.kind)
    return 0
