"""Pseudo-OLN (`ggn rank-oln`): the reference's score of a candidate, the NMS after it, and the shard job."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image
from pycocotools import mask as mask_utils

from ggn.detector.model import build_detector, detector_config
from ggn.extract import SHARD_SCHEMA, candidate_rows, summary_path_for
from ggn.io import InputError
from ggn.rank_oln import combine, mask_nms, oln_box_scores, rank_shard

BIN = Path(sys.executable).parent
TINY = dict(kind="oln", backbone="resnet18", fpn_channels=16, representation_size=32, mask_channels=16,
            min_size=96, max_size=96, anchor_sizes=[8, 16, 32, 64, 128], norm="bn", frozen_stages=-1)
H, W = 60, 80  # images are resized to 72x96 by the detector's transform (min_size 96 caps the long side)


def _model(kind="oln", seed=0):
    torch.manual_seed(seed)
    config = detector_config(**{**TINY, "kind": kind})
    return build_detector(config).eval(), config


def _rect(y0, y1, x0, x1):
    m = np.zeros((H, W), bool)
    m[y0:y1, x0:x1] = True
    return m


def test_combined_score_and_mask_nms():
    assert combine(np.array([0.8]), np.array([0.5]), np.array([0.4])) == pytest.approx(0.4 + 0.5 + 0.2)
    masks = np.stack([_rect(0, 20, 0, 20), _rect(0, 20, 2, 22), _rect(30, 50, 30, 50), _rect(0, 20, 10, 30)])
    rles = mask_utils.encode(np.asfortranarray(masks.transpose(1, 2, 0).astype(np.uint8)))
    scores = np.array([0.9, 0.95, 0.1, 0.5])
    # IoU(0, 1) = 360/440 > 0.2: the better-scored 1 suppresses 0; 3 overlaps 1 by 240/560 > 0.2 as well
    assert mask_nms(rles, scores, 0.2, 20).tolist() == [1, 2]
    assert mask_nms(rles, scores, 0.5, 20).tolist() == [1, 3, 2]  # 0 vs 1 is 0.82; 3 vs 1 is 0.43
    assert mask_nms(rles, scores, 0.5, 2).tolist() == [1, 3]
    assert mask_nms(rles, scores, 0.0, 20).tolist() == [1, 0, 3, 2]  # 0: no suppression, order only


def test_box_score_is_the_detectors_score_of_a_proposal_of_objectness_one():
    """The box score equals what the OLN RoI head gives the box as a proposal with RPN score 1
    (sqrt(1 x sigmoid(IoU))), and centerness is the objectness at the anchor of highest IoU."""
    from torchvision.models.detection.transform import resize_boxes

    from ggn.detector.oln import flatten_levels

    model, _ = _model()
    rng = np.random.default_rng(0)
    image = rng.integers(0, 255, (H, W, 3), dtype=np.uint8)
    boxes = np.array([[5.0, 4.0, 30.0, 40.0], [40.0, 10.0, 79.0, 59.0], [0.0, 0.0, 12.0, 9.0]])
    box_score, centerness = oln_box_scores(model, image, boxes, torch.device("cpu"), resolution="detector")
    assert box_score.shape == centerness.shape == (3,)

    model.roi_heads.score_thresh, model.roi_heads.nms_thresh = 0.0, 1.0
    with torch.inference_mode():
        tensor = torch.from_numpy(image).permute(2, 0, 1).float() / 255
        batch, _ = model.transform([tensor])
        assert batch.image_sizes[0] == (72, 96)
        features = model.backbone(batch.tensors)
        scaled = resize_boxes(torch.tensor(boxes, dtype=torch.float32), (H, W), batch.image_sizes[0])
        for i in range(3):
            proposal = torch.cat([scaled[i:i + 1], torch.ones(1, 1)], dim=1)
            det = model.roi_heads.detections(*model.roi_heads.box_predictor(model.roi_heads.box_head(
                model.roi_heads.box_roi_pool(features, [proposal[:, :4]], batch.image_sizes))),
                [proposal[:, :4]], [proposal[:, 4]], batch.image_sizes)[0]
            assert det["scores"].item() == pytest.approx(float(box_score[i]), rel=1e-5)

        # centerness: brute-force IoU of each box with every anchor (level, row, column order)
        levels = list(features.values())
        objectness, deltas = model.rpn.head(levels)
        flat, _ = flatten_levels(objectness, deltas)
        anchors = model.rpn.anchor_generator(batch, levels)[0].numpy()
        for i, b in enumerate(scaled.numpy()):
            ix = np.clip(np.minimum(b[2], anchors[:, 2]) - np.maximum(b[0], anchors[:, 0]), 0, None)
            iy = np.clip(np.minimum(b[3], anchors[:, 3]) - np.maximum(b[1], anchors[:, 1]), 0, None)
            inter = ix * iy
            union = (b[2] - b[0]) * (b[3] - b[1]) + (anchors[:, 2] - anchors[:, 0]) * (anchors[:, 3] - anchors[:, 1]) - inter
            best = int(np.argmax(inter / union))
            assert centerness[i] == pytest.approx(float(torch.sigmoid(flat[0, best])), rel=1e-5)


def test_native_resolution_scores_the_unresized_image_with_boxes_as_given():
    """The reference ranks with the extraction pipeline's image: native size, scale factor 1. The native path
    equals the detector's own path when the detector's resize is the identity (min_size = the image's short
    side), and differs from the default resize (72x96 here) otherwise."""
    model, _ = _model()
    rng = np.random.default_rng(2)
    image = rng.integers(0, 255, (H, W, 3), dtype=np.uint8)
    boxes = np.array([[5.0, 4.0, 30.0, 40.0], [40.0, 10.0, 79.0, 59.0], [0.0, 0.0, 12.0, 9.0]])
    native = oln_box_scores(model, image, boxes, torch.device("cpu"))
    resized = oln_box_scores(model, image, boxes, torch.device("cpu"), resolution="detector")
    assert not np.allclose(native[0], resized[0], atol=1e-6)
    model.transform.min_size, model.transform.max_size = (min(H, W),), max(H, W)
    identity = oln_box_scores(model, image, boxes, torch.device("cpu"), resolution="detector")
    for a, b in zip(native, identity):
        assert np.allclose(a, b, rtol=1e-5, atol=1e-6)


def _write_inputs(tmp: Path, kind: str = "oln") -> dict:
    """Three images, a shard of unsuppressed candidates (overlapping rectangles), and a detector checkpoint."""
    rng = np.random.default_rng(1)
    (tmp / "images").mkdir()
    infos, tables = [], []
    for image_id in (3, 7, 11):
        name = f"{image_id}.png"
        Image.fromarray(rng.integers(0, 255, (H, W, 3), dtype=np.uint8)).save(tmp / "images" / name)
        infos.append({"id": image_id, "file_name": name, "height": H, "width": W})
        masks = [_rect(y, y + 20, x, x + 25) for y in (0, 5, 30) for x in (0, 4, 40)] + [_rect(0, H, 0, W // 2)]
        scores = np.linspace(0.9, 0.3, len(masks)).astype(np.float32)
        gt = ([mask_utils.encode(np.asfortranarray(_rect(0, 20, 0, 25).astype(np.uint8)))], [0])
        tables.append(candidate_rows(image_id, np.stack(masks), scores, H, W, gt))
    rows = {k: [v for t in tables for v in t[k]] for k in SHARD_SCHEMA.names}
    import pyarrow as pa

    shard = tmp / "0-of-1.parquet"
    pq.write_table(pa.Table.from_pydict(rows, schema=SHARD_SCHEMA), shard)
    coco = tmp / "train.json"
    coco.write_text(json.dumps({"images": infos, "annotations": [], "categories": []}))
    model, config = _model(kind)
    ckpt = tmp / f"{kind}.pt"
    torch.save({"model": model.state_dict(), "config": config}, ckpt)
    return {"shard": shard, "annotations": coco, "images": tmp / "images", "checkpoint": ckpt}


def _read(path: Path) -> dict:
    return pq.read_table(path).to_pydict()


def test_rank_shard_rescoring_nms_top_k_and_resume(tmp_path, monkeypatch):
    inp = _write_inputs(tmp_path)
    full = tmp_path / "ranked.parquet"
    summary = rank_shard(inp["shard"], inp["checkpoint"], inp["annotations"], inp["images"], full,
                         nms=0.2, top_k=4, device="cpu")
    out = _read(full)
    src = _read(inp["shard"])
    assert summary["images"] == 3 and summary["images_skipped"] == 0 and summary["candidates_in"] == 30
    for image_id in (3, 7, 11):
        idx = [i for i, v in enumerate(out["image_id"]) if v == image_id]
        assert 1 <= len(idx) <= 4
        assert [out["rank"][i] for i in idx] == list(range(len(idx)))
        scores = [out["score"][i] for i in idx]
        assert scores == sorted(scores, reverse=True)
        rles = [{"size": [H, W], "counts": out["rle"][i].encode()} for i in idx]
        ious = np.asarray(mask_utils.iou(rles, rles, [0] * len(rles)))
        assert (ious[~np.eye(len(idx), dtype=bool)] <= 0.2).all()
        # each kept row is a source candidate, its gt_iou carried over and its score the combined one
        src_idx = {src["rle"][i]: i for i, v in enumerate(src["image_id"]) if v == image_id}
        for i in idx:
            j = src_idx[out["rle"][i]]
            assert out["gt_iou"][i] == src["gt_iou"][j] and out["bbox"][i] == src["bbox"][j]
            assert out["score"][i] >= 0.5 * src["score"][j]  # combined = pa/2 + non-negative OLN terms
    meta = json.loads(pq.read_schema(full).metadata[b"ggn.shard"])
    assert meta["ranked_by"]["method"] == "oln" and meta["ranked_by"]["top_k"] == 4

    # A job killed after its first flushed part resumes there and writes the same shard.
    import ggn.rank_oln as rank_oln

    calls = {"n": 0}
    real = rank_oln.oln_box_scores

    def crash_on_second_part(*args):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt("simulated kill")
        return real(*args)

    resumed = tmp_path / "resumed.parquet"
    monkeypatch.setattr(rank_oln, "oln_box_scores", crash_on_second_part)
    with pytest.raises(KeyboardInterrupt):
        rank_shard(inp["shard"], inp["checkpoint"], inp["annotations"], inp["images"], resumed, nms=0.2,
                   top_k=4, device="cpu", flush_every=1)
    assert not resumed.exists() and len(list((tmp_path / "resumed.parquet.parts").glob("part-*"))) == 1
    counted = {"n": 0}

    def count(*args):
        counted["n"] += 1
        return real(*args)

    monkeypatch.setattr(rank_oln, "oln_box_scores", count)
    rank_shard(inp["shard"], inp["checkpoint"], inp["annotations"], inp["images"], resumed, nms=0.2, top_k=4,
               device="cpu", flush_every=1)
    assert counted["n"] == 2  # the first image is not scored again
    assert _read(resumed) == out


def test_rank_oln_cli_refuses_a_mask_rcnn_checkpoint_and_skips_unreadable_images(tmp_path):
    inp = _write_inputs(tmp_path, kind="maskrcnn")
    with pytest.raises(InputError, match="needs an OLN one"):
        rank_shard(inp["shard"], inp["checkpoint"], inp["annotations"], inp["images"], tmp_path / "x.parquet",
                   device="cpu")

    (tmp_path / "b").mkdir()
    oln = _write_inputs(tmp_path / "b", kind="oln")
    (oln["images"] / "7.png").write_bytes(b"not a png")
    out = tmp_path / "b" / "ranked.parquet"
    proc = subprocess.run([str(BIN / "ggn"), "rank-oln", "--shard", str(oln["shard"]), "--checkpoint",
                           str(oln["checkpoint"]), "--annotations", str(oln["annotations"]), "--images",
                           str(oln["images"]), "--out", str(out), "--device", "cpu"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert set(_read(out)["image_id"]) == {3, 11}
    summary = json.loads(summary_path_for(out).read_text())
    assert summary["images_skipped"] == 1 and "7" in summary["skipped"]
    assert "skipped image 7" in proc.stderr
