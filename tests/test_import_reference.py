"""`ggn import-reference`: the authors' mmdetection 2.x checkpoints, converted and loaded.

The fixtures are state dicts with the reference's exact key names and shapes, written here from its module
definitions (Generic-Grouping mmdet/models: backbones/resnet.py, necks/fpn.py, dense_heads/rpn_head.py and
oln_rpn_head.py, bbox_heads/convfc_bbox_head.py and convfc_bbox_score_head.py, mask_heads/fcn_mask_head.py,
detectors/pa_predictor.py PairwiseAffinityHeadUperNet), with random values. No file of theirs is used.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torchvision

from ggn.cli import main
from ggn.io import InputError

# ---------------------------------------------------------------------------------------------------------
# Key/shape tables of the reference modules


def _norm(prefix: str, name: str, channels: int, norm: str) -> dict[str, tuple]:
    if norm == "gn":
        return {f"{prefix}{name}.weight": (channels,), f"{prefix}{name}.bias": (channels,)}
    return {f"{prefix}{name}.weight": (channels,), f"{prefix}{name}.bias": (channels,),
            f"{prefix}{name}.running_mean": (channels,), f"{prefix}{name}.running_var": (channels,),
            f"{prefix}{name}.num_batches_tracked": ()}


def mmdet_resnet50(prefix: str = "backbone.", norm: str = "bn") -> dict[str, tuple]:
    """mmdet ResNet(depth=50): stem conv1 + norm1 (`bn1`/`gn1`), Bottleneck stages (3, 4, 6, 3), norms named
    by build_norm_layer with postfix 1..3, downsample = (conv, norm)."""
    keys = {f"{prefix}conv1.weight": (64, 3, 7, 7), **_norm(prefix, f"{norm}1", 64, norm)}
    inplanes = 64
    for stage, (blocks, planes) in enumerate(zip((3, 4, 6, 3), (64, 128, 256, 512)), start=1):
        for b in range(blocks):
            p = f"{prefix}layer{stage}.{b}."
            keys[p + "conv1.weight"] = (planes, inplanes, 1, 1)
            keys.update(_norm(p, f"{norm}1", planes, norm))
            keys[p + "conv2.weight"] = (planes, planes, 3, 3)
            keys.update(_norm(p, f"{norm}2", planes, norm))
            keys[p + "conv3.weight"] = (planes * 4, planes, 1, 1)
            keys.update(_norm(p, f"{norm}3", planes * 4, norm))
            if b == 0:
                keys[p + "downsample.0.weight"] = (planes * 4, inplanes, 1, 1)
                keys.update(_norm(p, "downsample.1", planes * 4, norm))
            inplanes = planes * 4
    return keys


def pa_predictor_keys() -> dict[str, tuple]:
    """PairwiseAffinityPredictor with PairwiseAffinityHeadUperNet(channels=1) as `classifier` (pa_train.py)."""
    keys = mmdet_resnet50()
    c = "classifier."
    for i in range(4):
        keys[f"{c}ppm_conv.{i}.0.weight"] = (512, 2048, 1, 1)
        keys.update(_norm(f"{c}ppm_conv.{i}.", "1", 512, "bn"))
    keys[f"{c}ppm_last_conv.0.weight"] = (256, 2048 + 4 * 512, 3, 3)
    keys.update(_norm(f"{c}ppm_last_conv.", "1", 256, "bn"))
    for i, cin in enumerate((256, 512, 1024)):
        keys[f"{c}fpn_in.{i}.0.weight"] = (256, cin, 1, 1)
        keys.update(_norm(f"{c}fpn_in.{i}.", "1", 256, "bn"))
        keys[f"{c}fpn_out.{i}.0.0.weight"] = (256, 256, 3, 3)
        keys.update(_norm(f"{c}fpn_out.{i}.0.", "1", 256, "bn"))
    keys[f"{c}conv_last.0.0.weight"] = (256, 4 * 256, 3, 3)
    keys.update(_norm(f"{c}conv_last.0.", "1", 256, "bn"))
    keys[f"{c}conv_last.1.weight"] = (1, 256, 1, 1)
    keys[f"{c}conv_last.1.bias"] = (1,)
    return keys


def detector_keys(kind: str = "maskrcnn", norm: str = "bn", mask: bool = True) -> dict[str, tuple]:
    """MaskRCNN (class_agn_mask_rcnn_pa.py / _gn.py, num_classes=1) or OLN (oln_box.py), R50-FPN."""
    keys = mmdet_resnet50(norm=norm)
    for i, cin in enumerate((256, 512, 1024, 2048)):
        keys[f"neck.lateral_convs.{i}.conv.weight"] = (256, cin, 1, 1)
        keys[f"neck.lateral_convs.{i}.conv.bias"] = (256,)
        keys[f"neck.fpn_convs.{i}.conv.weight"] = (256, 256, 3, 3)
        keys[f"neck.fpn_convs.{i}.conv.bias"] = (256,)
    keys.update({"rpn_head.rpn_conv.weight": (256, 256, 3, 3), "rpn_head.rpn_conv.bias": (256,),
                 "rpn_head.rpn_cls.weight": (1, 256, 1, 1), "rpn_head.rpn_cls.bias": (1,),
                 "rpn_head.rpn_reg.weight": (4, 256, 1, 1), "rpn_head.rpn_reg.bias": (4,)})
    b = "roi_head.bbox_head."
    keys.update({f"{b}shared_fcs.0.weight": (1024, 256 * 7 * 7), f"{b}shared_fcs.0.bias": (1024,),
                 f"{b}shared_fcs.1.weight": (1024, 1024), f"{b}shared_fcs.1.bias": (1024,),
                 f"{b}fc_cls.weight": (2, 1024), f"{b}fc_cls.bias": (2,),
                 f"{b}fc_reg.weight": (4, 1024), f"{b}fc_reg.bias": (4,)})
    if kind == "oln":
        keys.update({"rpn_head.rpn_obj.weight": (1, 256, 1, 1), "rpn_head.rpn_obj.bias": (1,),
                     f"{b}fc_bbox_score.weight": (1, 1024), f"{b}fc_bbox_score.bias": (1,)})
    if mask:
        m = "roi_head.mask_head."
        for i in range(4):
            keys[f"{m}convs.{i}.conv.weight"] = (256, 256, 3, 3)
            if norm == "gn":  # ConvModule bias='auto': no conv bias before a norm
                keys.update(_norm(f"{m}convs.{i}.", "gn", 256, "gn"))
            else:
                keys[f"{m}convs.{i}.conv.bias"] = (256,)
        keys.update({f"{m}upsample.weight": (256, 256, 2, 2), f"{m}upsample.bias": (256,),
                     f"{m}conv_logits.weight": (1, 256, 1, 1), f"{m}conv_logits.bias": (1,)})
    return keys


def random_state(table: dict[str, tuple], seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    state = {}
    for key, shape in table.items():
        if key.endswith("num_batches_tracked"):
            state[key] = torch.tensor(1000)
        elif key.endswith("running_var"):
            state[key] = torch.rand(shape, generator=g) + 0.5
        else:
            state[key] = torch.randn(shape, generator=g) * 0.05
    return state


def save_mmcv(path, state, meta=None):
    """The layout mmcv 1.x's save_checkpoint writes."""
    meta = meta if meta is not None else {"mmcv_version": "1.2.5", "mmdet_version": "2.8.0", "epoch": 8,
                                          "iter": 58640, "CLASSES": ("object",), "config": "model = dict(...)"}
    torch.save({"meta": meta, "state_dict": state, "optimizer": {"state": {}, "param_groups": [{"lr": 0.0002}]}},
               path)
    return path


def convert(tmp_path, state, name="ref.pth", kind="auto", meta=None):
    src = save_mmcv(tmp_path / name, state, meta)
    out = tmp_path / (name + ".converted.pt")
    assert main(["import-reference", "--checkpoint", str(src), "--out", str(out), "--kind", kind]) == 0
    return out


# ---------------------------------------------------------------------------------------------------------


def test_pa_converts_loads_and_backbone_equals_torchvision(tmp_path):
    from ggn.pa.model import load_pa_model

    state = random_state(pa_predictor_keys())
    out = convert(tmp_path, state)
    ckpt = torch.load(out, weights_only=True)
    assert ckpt["source"]["kind"] == "pa" and "CC-BY-NC" in ckpt["source"]["licence"]
    assert ckpt["source"]["sha256"] and ckpt["source"]["mmcv_version"] == "1.2.5"
    model, config = load_pa_model(out)
    assert config["reduce"] == "mean" and config["norm"] == "bn"

    # The backbone computes what torchvision's ResNet-50 computes with the same tensors.
    tv = torchvision.models.resnet50(weights=None)
    tv_state = {k.removeprefix("backbone."): v for k, v in state.items() if k.startswith("backbone.")}
    tv_state["fc.weight"], tv_state["fc.bias"] = tv.fc.weight.detach(), tv.fc.bias.detach()
    tv.load_state_dict(tv_state)
    tv.eval()
    x = torch.randn(1, 3, 64, 96, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref = tv.layer4(tv.layer3(tv.layer2(tv.layer1(tv.maxpool(tv.relu(tv.bn1(tv.conv1(x))))))))
        ours = model.backbone(x)[-1]
        logits = model(x)
    assert torch.equal(ours, ref)
    assert logits.shape == (1, 1, 64, 96) and torch.isfinite(logits).all()
    # The head's last 1x1 conv is the reference's conv_last.1.
    assert torch.equal(model.head.classifier.weight, state["classifier.conv_last.1.weight"])
    assert torch.equal(model.head.ppm_fuse[0].weight, state["classifier.ppm_last_conv.0.weight"])


def test_pa_head_computes_the_reference_forward(tmp_path):
    """PairwiseAffinityHeadUperNet.forward (pa_pred:281-359), written out on the reference's tensors, against the
    converted head."""
    from ggn.pa.model import load_pa_model

    state = random_state(pa_predictor_keys(), seed=3)
    model, _ = load_pa_model(convert(tmp_path, state))
    g = torch.Generator().manual_seed(2)
    feats = [torch.randn(1, c, s, s, generator=g) for c, s in ((256, 16), (512, 8), (1024, 4), (2048, 2))]

    def cbr(x, p, pad):
        x = F.conv2d(x, state[p + "0.weight"], padding=pad)
        x = F.batch_norm(x, state[p + "1.running_mean"], state[p + "1.running_var"], state[p + "1.weight"],
                         state[p + "1.bias"], False, 0.0, 1e-5)
        return F.relu(x)

    c5 = feats[-1]
    ppm = [c5] + [cbr(F.interpolate(F.adaptive_avg_pool2d(c5, s), c5.shape[-2:], mode="bilinear",
                                    align_corners=False), f"classifier.ppm_conv.{i}.", 0)
                  for i, s in enumerate((1, 2, 3, 6))]
    f = cbr(torch.cat(ppm, 1), "classifier.ppm_last_conv.", 1)
    levels = [f]
    for i in reversed(range(3)):
        lat = cbr(feats[i], f"classifier.fpn_in.{i}.", 0)
        f = lat + F.interpolate(f, size=lat.shape[-2:], mode="bilinear", align_corners=False)
        levels.append(cbr(f, f"classifier.fpn_out.{i}.0.", 1))
    levels.reverse()
    fused = torch.cat([levels[0]] + [F.interpolate(x, levels[0].shape[-2:], mode="bilinear", align_corners=False)
                                     for x in levels[1:]], 1)
    ref = F.conv2d(cbr(fused, "classifier.conv_last.0.", 1), state["classifier.conv_last.1.weight"],
                   state["classifier.conv_last.1.bias"])
    with torch.no_grad():
        ours = model.head(feats)
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("norm", ["bn", "gn"])
def test_maskrcnn_converts_with_background_first_and_object_slots(tmp_path, norm):
    from ggn.detector.model import load_detector

    state = random_state(detector_keys("maskrcnn", norm), seed=4)
    out = convert(tmp_path, state)
    model, config = load_detector(out, overrides={"min_size": 64, "max_size": 96, "box_detections_per_img": 20,
                                                  "rpn_pre_nms_top_n_test": 50, "rpn_post_nms_top_n_test": 50})
    assert config["kind"] == "maskrcnn" and config["norm"] == ("gn" if norm == "gn" else "eval_bn")
    assert config["anchor_ratios"] == [1.0] and config["box_loss"] == "l1" and config["roi_aligned"] is True and config["roi_sampling_ratio"] == 0
    x = torch.randn(6, 1024, generator=torch.Generator().manual_seed(5))
    b = "roi_head.bbox_head."
    with torch.no_grad():
        cls, deltas = model.roi_heads.box_predictor(x)
        # mmdet: softmax over [object, background]; the object's probability is column 0 there, 1 here.
        ref_object = F.softmax(F.linear(x, state[b + "fc_cls.weight"], state[b + "fc_cls.bias"]), 1)[:, 0]
        torch.testing.assert_close(F.softmax(cls, 1)[:, 1], ref_object)
        torch.testing.assert_close(deltas[:, 4:], F.linear(x, state[b + "fc_reg.weight"], state[b + "fc_reg.bias"]))
        feat = torch.randn(2, 256, 14, 14, generator=torch.Generator().manual_seed(6))
        logits = model.roi_heads.mask_predictor(model.roi_heads.mask_head(feat))
        assert logits.shape == (2, 2, 28, 28)
        # the whole network runs on an image
        detections = model([torch.rand(3, 64, 80, generator=torch.Generator().manual_seed(7))])
    assert set(detections[0]) >= {"boxes", "scores", "masks"}


def test_oln_with_mask_head_converts_and_drops_unused_heads(tmp_path):
    from ggn.detector.model import load_detector

    state = random_state(detector_keys("oln", "bn", mask=True), seed=8)
    out = convert(tmp_path, state, kind="oln")
    ckpt = torch.load(out, weights_only=True)
    assert sorted(ckpt["source"]["dropped_unused"]) == sorted(
        ["rpn_head.rpn_cls.weight", "rpn_head.rpn_cls.bias", "roi_head.bbox_head.fc_cls.weight",
         "roi_head.bbox_head.fc_cls.bias"])
    model, config = load_detector(out)
    assert config["kind"] == "oln"
    assert torch.equal(model.rpn.head.objectness.weight, state["rpn_head.rpn_obj.weight"])
    assert torch.equal(model.roi_heads.box_predictor.iou_score.weight, state["roi_head.bbox_head.fc_bbox_score.weight"])


def test_oln_box_converts_to_a_box_only_detector(tmp_path):
    """The authors' OLN-Box (oln_box.py) has no mask head; our OLN takes that structure (`mask_head: false`) and
    `ggn predict` writes boxes without segmentation."""
    from ggn.detector.model import load_detector
    from ggn.detector.predict import to_results

    state = random_state(detector_keys("oln", "bn", mask=False), seed=12)
    model, config = load_detector(convert(tmp_path, state, kind="oln"),
                                  overrides={"min_size": 64, "max_size": 96, "box_detections_per_img": 10,
                                             "rpn_pre_nms_top_n_test": 50, "rpn_post_nms_top_n_test": 50})
    assert config["kind"] == "oln" and config["mask_head"] is False
    assert model.roi_heads.mask_head is None
    with torch.no_grad():
        detections = model([torch.rand(3, 64, 80, generator=torch.Generator().manual_seed(13))])
    assert set(detections[0]) == {"boxes", "scores", "labels"}  # (random weights may leave no box at all)
    boxes_only = {"boxes": torch.tensor([[1.0, 2.0, 30.0, 40.0], [5.0, 5.0, 9.0, 9.0]]),
                  "scores": torch.tensor([0.9, 0.4]), "labels": torch.ones(2, dtype=torch.int64)}
    results = to_results(7, boxes_only, 64, 80)
    assert [r["bbox"] for r in results] == [[1.0, 2.0, 29.0, 38.0], [5.0, 5.0, 4.0, 4.0]]
    assert all("segmentation" not in r for r in results)


def test_refusals(tmp_path):
    from ggn.import_reference import convert as convert_state

    maskrcnn = random_state(detector_keys("maskrcnn"), seed=9)
    # a checkpoint of another kind than asked (through the command: nothing written)
    src = save_mmcv(tmp_path / "det.pth", maskrcnn)
    with pytest.raises(InputError, match="holds a class-agnostic Mask R-CNN.*--kind maskrcnn"):
        main(["import-reference", "--checkpoint", str(src), "--out", str(tmp_path / "x.pt"), "--kind", "pa"])
    assert not (tmp_path / "x.pt").exists()
    # a missing key, named
    partial = dict(maskrcnn)
    del partial["neck.fpn_convs.2.conv.weight"]
    with pytest.raises(InputError, match=r"does not provide: backbone\.fpn\.layer_blocks\.2\.0\.weight"):
        convert_state(partial)
    # an unknown key, named
    extra = dict(maskrcnn, **{"roi_head.mask_iou_head.fc.weight": torch.zeros(2, 2)})
    with pytest.raises(InputError, match=r"no place in our network: roi_head\.mask_iou_head\.fc\.weight"):
        convert_state(extra)
    # a misshapen tensor (another FPN width)
    wide = dict(maskrcnn, **{"neck.fpn_convs.0.conv.bias": torch.zeros(512)})
    with pytest.raises(InputError, match=r"shape mismatch.*layer_blocks\.0\.0\.bias"):
        convert_state(wide)
    # a class-specific head (COCO's 80 classes)
    specific = dict(maskrcnn)
    specific["roi_head.bbox_head.fc_cls.weight"] = torch.zeros(81, 1024)
    specific["roi_head.bbox_head.fc_cls.bias"] = torch.zeros(81)
    with pytest.raises(InputError, match="class-specific"):
        convert_state(specific)
    # a Mask R-CNN without its mask head (GGN's detectors segment): the mask tensors are reported missing
    with pytest.raises(InputError, match=r"does not provide: roi_heads\.mask_head\.0\.0\.weight"):
        convert_state(random_state(detector_keys("maskrcnn", mask=False)))
    # a PA predictor asked as a detector; something that is none of the three
    with pytest.raises(InputError, match="holds a PA predictor"):
        convert_state({"backbone.conv1.weight": torch.zeros(1), "classifier.conv_last.1.weight": torch.zeros(1)},
                      "maskrcnn")
    with pytest.raises(InputError, match="none of the reference's"):
        convert_state({"encoder.weight": torch.zeros(1)})
    # one of our own checkpoints
    ours = tmp_path / "ours.pt"
    torch.save({"model": {}, "config": {"kind": "maskrcnn", "backbone": "resnet50"}}, ours)
    with pytest.raises(InputError, match="needs no import"):
        main(["import-reference", "--checkpoint", str(ours), "--out", str(tmp_path / "u.pt")])


def test_mmcv_meta_with_numpy_values_needs_the_allow_list(tmp_path):
    """mmcv's meta is plain values (read as is, above); numpy scalars in it go through a numpy-only allow-list;
    any other pickled object is refused, never executed."""
    from ggn.import_reference import read_mmcv_checkpoint

    state = {"backbone.conv1.weight": torch.zeros(1)}
    path = save_mmcv(tmp_path / "np.pth", state, meta={"hook_msgs": {"best_score": np.float64(0.287)}})
    with pytest.raises(Exception):
        torch.load(path, weights_only=True)  # the allow-list is needed
    read, meta = read_mmcv_checkpoint(path)
    assert float(meta["hook_msgs"]["best_score"]) == pytest.approx(0.287)
    path = save_mmcv(tmp_path / "obj.pth", state, meta={"when": __import__("datetime").date(2022, 1, 1)})
    with pytest.raises(InputError, match="weights_only=True"):
        read_mmcv_checkpoint(path)
