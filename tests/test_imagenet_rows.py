"""The ImageNet rows (config/imagenet_to_uvo.yaml) end to end on tiny fake trees of the real layouts: COCO 2017,
an ImageNet train/ folder of class subfolders, and a UVO-style class-agnostic JSON.

Only folders, data paths, schedules (epochs, GPUs, workers, shards), job resources, the detectors' input size and
the detections kept per image (TEST_SIZE, TEST_PREDICT: tests/test_more_paper_rows.py) are overridden; the
recipes run as configured: the COCO PA network of coco_to_uvo mines pseudo-GT on the ImageNet images, a
GroupNorm Mask R-CNN trains from random initialisation on that pseudo-GT alone (read per image from the parquet
store), and that detector initialises the COCO fine-tune row, which trains on COCO GT + coco_to_uvo's pseudo-GT.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image, ImageDraw
from pycocotools import mask as mask_utils

from test_more_paper_rows import fake_coco_with_weights, run_rows, shrink_sizes, unchanged_recipe  # noqa: F401
from test_paper_row import REPO, _jsonl

ROWS = REPO / "config" / "imagenet_to_uvo.yaml"


def make_fake_imagenet(root: Path, seed: int = 1) -> Path:
    """train/<wnid>/<wnid>_<n>.JPEG: two classes, three photos each, one to three blobs on texture."""
    rng = np.random.default_rng(seed)
    train = root / "train"
    for wnid in ("n01440764", "n02102040"):
        (train / wnid).mkdir(parents=True)
        for n in range(3):
            h, w = int(rng.integers(80, 110)), int(rng.integers(100, 140))
            base = rng.integers(30, 110, 3)
            yy, xx = np.mgrid[:h, :w]
            img = base + 25 * np.sin(xx / rng.uniform(3, 8))[..., None] + rng.normal(0, 10, (h, w, 3))
            canvas = Image.fromarray(np.clip(img, 0, 255).astype(np.uint8))
            draw = ImageDraw.Draw(canvas)
            for _ in range(int(rng.integers(1, 4))):
                cx, cy, r = rng.uniform(25, w - 25), rng.uniform(25, h - 25), rng.uniform(10, 20)
                draw.ellipse([cx - r, cy - r * 0.8, cx + r, cy + r * 0.8],
                             fill=tuple(int(v) for v in rng.integers(160, 256, 3)))
            canvas.save(train / wnid / f"{wnid}_{n + 1}.JPEG", quality=95)
    return root


def make_fake_uvo(root: Path, seed: int = 2) -> Path:
    """UVO's frame-level annotations: COCO format, one class-agnostic category, polygons."""
    rng = np.random.default_rng(seed)
    (root / "all_UVO_frames" / "vid1").mkdir(parents=True)
    images, anns = [], []
    for image_id in (1, 2):
        h, w = 90, 120
        canvas = Image.fromarray(rng.integers(40, 100, (h, w, 3)).astype(np.uint8))
        draw = ImageDraw.Draw(canvas)
        for k in range(2):
            x0, y0 = 10 + 55 * k, 20
            poly = [x0, y0, x0 + 40, y0, x0 + 40, y0 + 45, x0, y0 + 45]
            draw.polygon(poly, fill=(220, 200, 60))
            rle = mask_utils.merge(mask_utils.frPyObjects([poly], h, w))
            anns.append({"id": len(anns) + 1, "image_id": image_id, "category_id": 1, "iscrowd": 0,
                         "segmentation": [poly], "area": float(mask_utils.area(rle)),
                         "bbox": [float(v) for v in mask_utils.toBbox(rle)]})
        name = f"vid1/{image_id}.png"
        canvas.save(root / "all_UVO_frames" / name)
        images.append({"id": image_id, "file_name": name, "height": h, "width": w})
    (root / "annotations").mkdir()
    (root / "annotations" / "val_sparse.json").write_text(json.dumps(
        {"images": images, "annotations": anns, "categories": [{"id": 1, "name": "object"}]}))
    return root


def rows_config(results: Path, coco: Path, imagenet: Path, uvo: Path) -> dict:
    config = yaml.safe_load(ROWS.read_text())
    config["results"] = str(results)
    config["table"] = "table_imagenet_test"
    for exp in config["experiments"].values():
        exp["data"] = {
            "train_annotations": str(coco / "annotations" / "instances_train2017.json"),
            "train_images": str(coco / "train2017"),
            "eval_annotations": str(uvo / "annotations" / "val_sparse.json"),
            "eval_images": str(uvo / "all_UVO_frames"),
        }
        if "pseudo_data" in exp:
            exp["pseudo_data"]["images"] = str(imagenet / "train")
        if "pa" in exp:
            exp["pa"].update(epochs=1, lr_steps=[], warmup_iters=1, gpus=1, workers=0)
        if "extract" in exp:
            exp["extract"].update(num_shards=2)
        exp["detector"].update(epochs=1, warmup_iters=1, gpus=1, workers=0)
        shrink_sizes(exp)
        if exp["detector"].get("lr_schedule", "step") == "step":
            exp["detector"]["lr_steps"] = []
        exp["resources"] = {}  # the schema's paper-scale requests are only requests when run locally
    return config


@pytest.mark.slow
def test_imagenet_rows_end_to_end_on_fake_trees(tmp_path, fake_coco_with_weights):
    from ggn.io import load_checkpoint

    torch_home, coco = fake_coco_with_weights
    imagenet = make_fake_imagenet(tmp_path / "imagenet")
    uvo = make_fake_uvo(tmp_path / "uvo")
    results = tmp_path / "results"
    config = rows_config(results, coco, imagenet, uvo)
    unchanged_recipe(yaml.safe_load(ROWS.read_text()), config)
    proc = run_rows(tmp_path, config, torch_home)

    # One PA network (coco_to_uvo's) serves all three rows; the COCO pseudo-GT is mined once.
    assert (results / "coco_to_uvo" / "seed0" / "pa" / "checkpoint.pt").is_file()
    for name in ("imagenet_random_init", "imagenet_finetune_coco"):
        assert not (results / name / "seed0" / "pa").exists(), name
    assert not (results / "imagenet_finetune_coco" / "seed0" / "pseudo").exists()

    # The ImageNet folder was listed by the workflow; its pseudo-GT went into the per-image store.
    listed = json.loads((results / "imagenet_random_init" / "data" / "pseudo_images.json").read_text())
    assert len(listed["images"]) == 6 and all("/" in im["file_name"] for im in listed["images"])
    assert (results / "imagenet_random_init" / "seed0" / "pseudo" / "store" / "manifest.json").is_file()
    pseudo = json.loads((results / "imagenet_random_init" / "seed0" / "pseudo" / "pseudo_gt.json").read_text())
    with_pseudo = {a["image_id"] for a in pseudo["annotations"]}
    assert with_pseudo and all(a["gt_iou"] is None for a in pseudo["annotations"])  # no GT on ImageNet

    # Random init, GroupNorm, pseudo-GT alone, cosine schedule.
    det = results / "imagenet_random_init" / "seed0" / "detector" / "ggn"
    log = (results / "imagenet_random_init" / "logs" / "seed0" / "train_detector-ggn.log").read_text()
    assert f"training on pseudo-GT alone: {len(with_pseudo)} of 6 listed images have pseudo-GT" in log, log[-3000:]
    ckpt = load_checkpoint(det / "checkpoint.pt")
    assert ckpt["config"]["norm"] == "gn" and ckpt["config"]["frozen_stages"] == 1
    assert ckpt["config"]["training"]["pretrained"] is None
    state = ckpt["model"]
    assert "backbone.body.bn1.weight" in state and "backbone.body.bn1.running_mean" not in state  # GroupNorm
    assert "roi_heads.mask_head.0.1.weight" in state  # GN after the first mask-head conv
    summary = [r for r in _jsonl(det / "train_log.jsonl") if "images_per_rank" in r][0]
    assert sum(summary["images_per_rank"]) == len(with_pseudo) // 2 * 2  # batch 2, last partial batch dropped

    # The fine-tune row starts from that detector and trains on COCO GT + coco_to_uvo's pseudo-GT.
    log = (results / "imagenet_finetune_coco" / "logs" / "seed0" / "train_detector-ggn.log").read_text()
    assert str(results / "imagenet_random_init" / "seed0" / "detector" / "ggn" / "checkpoint.pt") in log
    commands = [line for line in (proc.stdout + proc.stderr).splitlines() if "ggn train-detector" in line]
    finetune = next(c for c in commands if "imagenet_finetune_coco/seed0/detector/ggn" in c)
    assert f"--pseudo-gt {results}/coco_to_uvo/seed0/pseudo/pseudo_gt.json" in finetune, finetune
    assert f"--pretrained {results}/imagenet_random_init/seed0/detector/ggn/checkpoint.pt" in finetune, finetune
    random_init = next(c for c in commands if "imagenet_random_init/seed0/detector/ggn" in c)
    assert "--no-ground-truth" in random_init and "--pseudo-store" in random_init, random_init
    ft = load_checkpoint(results / "imagenet_finetune_coco" / "seed0" / "detector" / "ggn" / "checkpoint.pt")
    assert ft["config"]["norm"] == "gn"

    # The table: three rows, the ImageNet ones with a GGN detector only.
    rows = {r["experiment"]: r for r in (json.loads((results / n / "row.json").read_text())
                                         for n in config["experiments"])}
    assert rows["coco_to_uvo"]["baseline_mask_AR@100"] is not None
    for name in ("imagenet_random_init", "imagenet_finetune_coco"):
        assert rows[name]["baseline_mask_AR@100"] is None and rows[name]["gain_mask_AR@100"] is None
        value = rows[name]["ggn_mask_AR@100"]
        assert isinstance(value, float) and math.isfinite(value) and 0 <= value <= 100
    assert rows["imagenet_finetune_coco"]["paper_ggn_mask_AR@100"] == 45.3
    md = (results / "table_imagenet_test.md").read_text()
    assert "| imagenet_finetune_coco |" in md and "→ 45.3 (mask AR@100)" in md
