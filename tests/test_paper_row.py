"""A paper row (config/coco_voc_to_nonvoc.yaml) end to end on a tiny fake COCO 2017 tree.

Only the schedule, the output folders and the data paths are overridden; the recipe itself runs as
configured: ImageNet weights through torchvision's cache (a small stand-in file placed in a temporary
TORCH_HOME under torchvision's own file name), native-resolution PA training with per-GPU BN, the
detector with BN statistics fixed and stem + stage 1 frozen, one square anchor and L1 box losses,
2-process (gloo) training of both networks, and the paper's grouping for extraction.
"""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image, ImageDraw, ImageFilter
from pycocotools import mask as mask_utils

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
SNAKEMAKE = [str(BIN / "snakemake"), "--snakefile", str(REPO / "workflow" / "Snakefile")]
ROW_CONFIG = REPO / "config" / "coco_voc_to_nonvoc.yaml"
EXP = "coco_voc_to_nonvoc"

# COCO 2017 category ids (1..90 with gaps), in the order of ggn.classes.COCO_CLASSES.
COCO_IDS = (1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23, 24, 25, 27, 28,
            31, 32, 33, 34, 35, 36, 37, 38, 39, 40, 41, 42, 43, 44, 46, 47, 48, 49, 50, 51, 52, 53, 54, 55,
            56, 57, 58, 59, 60, 61, 62, 63, 64, 65, 67, 70, 72, 73, 74, 75, 76, 77, 78, 79, 80, 81, 82, 84,
            85, 86, 87, 88, 89, 90)

WIDTH, HEIGHT = 128, 96
# Per image: the classes of its objects (one per cell of a 2x2 grid, so that objects never overlap).
# Every training image holds at least one VOC object (images without one are dropped by the split).
TRAIN_IMAGES = {
    1: ("person", "giraffe", "car"),
    2: ("dog", "umbrella"),
    3: ("car", "elephant", "bottle", "kite"),
    4: ("cat", "cup", "chair"),
}
VAL_IMAGES = {
    139: ("person", "giraffe", "umbrella"),
    285: ("dog", "zebra", "laptop", "bus"),
}


def coco_categories() -> list[dict]:
    from ggn.classes import COCO_CLASSES

    assert len(COCO_CLASSES) == len(COCO_IDS) == 80
    return [{"id": i, "name": n, "supercategory": "thing"} for i, n in zip(COCO_IDS, COCO_CLASSES)]


def _polygon(rng: np.random.Generator, cx: float, cy: float, rx: float, ry: float) -> list[float]:
    """A random star-shaped polygon around (cx, cy), flattened [x1, y1, x2, y2, ...]."""
    k = int(rng.integers(5, 11))
    angles = np.sort(rng.uniform(0, 2 * math.pi, k))
    radii = rng.uniform(0.6, 1.0, k)
    xs = np.clip(cx + rx * radii * np.cos(angles), 0, WIDTH - 1)
    ys = np.clip(cy + ry * radii * np.sin(angles), 0, HEIGHT - 1)
    return [round(float(v), 2) for xy in zip(xs, ys) for v in xy]


def write_split(root: Path, split: str, images: dict[int, tuple[str, ...]], first_ann_id: int,
                rng: np.random.Generator) -> int:
    """Draw the split's images and write its instances file; returns the next free annotation id."""
    categories = coco_categories()
    cat_id = {c["name"]: c["id"] for c in categories}
    img_dir = root / f"{split}2017"
    img_dir.mkdir(parents=True, exist_ok=True)
    cells = [(WIDTH * (0.25 + 0.5 * (c % 2)), HEIGHT * (0.25 + 0.5 * (c // 2))) for c in range(4)]
    image_infos, anns, ann_id = [], [], first_ann_id
    yy, xx = np.mgrid[:HEIGHT, :WIDTH]
    for image_id, classes in images.items():
        base = rng.integers(40, 120, 3)
        background = (base + 30 * np.sin(xx / rng.uniform(4, 9))[..., None]
                      + 30 * np.cos(yy / rng.uniform(4, 9))[..., None]
                      + rng.normal(0, 12, (HEIGHT, WIDTH, 3)))
        canvas = Image.fromarray(np.clip(background, 0, 255).astype(np.uint8))
        draw = ImageDraw.Draw(canvas)
        for cell, name in zip(rng.permutation(4), classes):
            cx, cy = cells[cell]
            cx += rng.uniform(-6, 6)
            cy += rng.uniform(-4, 4)
            poly = _polygon(rng, cx, cy, rx=rng.uniform(16, 27), ry=rng.uniform(12, 20))
            draw.polygon(poly, fill=tuple(int(v) for v in rng.integers(150, 256, 3)),
                         outline=tuple(int(v) for v in rng.integers(0, 60, 3)))
            rle = mask_utils.merge(mask_utils.frPyObjects([poly], HEIGHT, WIDTH))
            anns.append({"id": ann_id, "image_id": image_id, "category_id": cat_id[name], "iscrowd": 0,
                         "segmentation": [poly], "area": float(mask_utils.area(rle)),
                         "bbox": [round(float(v), 2) for v in mask_utils.toBbox(rle)]})
            ann_id += 1
        file_name = f"{image_id:012d}.jpg"
        canvas.filter(ImageFilter.SMOOTH).save(img_dir / file_name, quality=95)
        image_infos.append({"id": image_id, "file_name": file_name, "height": HEIGHT, "width": WIDTH,
                            "license": 1, "coco_url": "", "flickr_url": "", "date_captured": ""})
    coco = {"info": {"description": "tiny fake COCO 2017 (tests)"}, "licenses": [{"id": 1, "name": "test"}],
            "images": image_infos, "annotations": anns, "categories": categories}
    (root / "annotations").mkdir(parents=True, exist_ok=True)
    (root / "annotations" / f"instances_{split}2017.json").write_text(json.dumps(coco))
    return ann_id


def make_fake_coco(root: Path, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    next_id = write_split(root, "train", TRAIN_IMAGES, 1, rng)
    write_split(root, "val", VAL_IMAGES, next_id, rng)
    return root


def place_imagenet_weights(torch_home: Path) -> Path:
    """A seeded random ResNet-50 state dict at the path where torchvision's cache keeps the ImageNet file."""
    import torch
    import torchvision

    from ggn.weights import imagenet_weights_file

    assert os.environ.get("TORCH_HOME") == str(torch_home)
    path, url = imagenet_weights_file("resnet50")
    assert path.is_relative_to(torch_home) and path.name == os.path.basename(url), (path, url)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    # zero-initialised last BN of each block: a random ResNet-50 whose activations do not grow with depth
    torch.save(torchvision.models.resnet50(weights=None, zero_init_residual=True).state_dict(), path)
    return path


def paper_row_config(results: Path, coco: Path) -> dict:
    """config/coco_voc_to_nonvoc.yaml with only its folders, data paths and schedule shrunk."""
    config = yaml.safe_load(ROW_CONFIG.read_text())
    config["results"] = str(results)
    config["table"] = "table_paper_row_test"
    exp = config["experiments"][EXP]
    exp["data"] = {
        "train_annotations": str(coco / "annotations" / "instances_train2017.json"),
        "train_images": str(coco / "train2017"),
        "eval_annotations": str(coco / "annotations" / "instances_val2017.json"),
        "eval_images": str(coco / "val2017"),
    }
    exp["pa"].update(epochs=1, lr_steps=[], warmup_iters=1, gpus=2, workers=0)
    exp["detector"].update(epochs=1, lr_steps=[], warmup_iters=1, gpus=2, workers=0)
    exp["extract"].update(num_shards=2)
    return config


def _logs(results: Path) -> str:
    parts = []
    for log in sorted((results / EXP / "logs").glob("**/*.log")) + sorted((results / "logs").glob("*.log")):
        text = log.read_text(errors="replace")
        parts.append(f"===== {log} =====\n{text[-6000:]}")
    return "\n".join(parts)


def _jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


@pytest.mark.slow
def test_paper_row_end_to_end_on_fake_coco(tmp_path, monkeypatch):
    import torch

    from ggn.io import load_checkpoint

    torch_home = tmp_path / "torch"
    monkeypatch.setenv("TORCH_HOME", str(torch_home))
    weights = place_imagenet_weights(torch_home)
    coco = make_fake_coco(tmp_path / "coco")
    results = tmp_path / "results"
    config = paper_row_config(results, coco)
    cfg = tmp_path / "config.yaml"
    cfg.write_text(yaml.safe_dump(config, sort_keys=False))

    # Nothing of the recipe differs from the shipped row but the folders, data and schedule.
    shipped = yaml.safe_load(ROW_CONFIG.read_text())["experiments"][EXP]
    ours = config["experiments"][EXP]
    schedule = {"epochs", "lr_steps", "warmup_iters", "gpus", "workers", "num_shards"}
    for stage in ("pa", "extract", "merge", "detector"):
        for key, value in shipped[stage].items():
            if key not in schedule:
                assert ours[stage][key] == value, (stage, key)
    assert ours["pa"]["pretrained"] == ours["detector"]["pretrained"] == "imagenet"
    assert ours["detector"]["norm"] == "eval_bn" and ours["extract"]["grouping"] == "paper"

    env = dict(os.environ)
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    env["TORCH_HOME"] = str(torch_home)
    proc = subprocess.run([*SNAKEMAKE, "--cores", "2", "--configfile", str(cfg)], cwd=REPO, env=env,
                          capture_output=True, text=True)
    if proc.returncode != 0:
        pytest.fail(f"snakemake failed ({proc.returncode}):\n{proc.stdout[-4000:]}\n{proc.stderr[-8000:]}\n"
                    f"{_logs(results)}")
    exp_dir = results / EXP

    # The table: files written, and the row has numeric AR values for both detectors.
    for suffix in ("csv", "md"):
        assert (results / f"table_paper_row_test.{suffix}").is_file()
    assert f"\n{EXP}," in (results / "table_paper_row_test.csv").read_text()
    row = json.loads((exp_dir / "row.json").read_text())
    for variant in ("baseline", "ggn"):
        for column in ("box_AR@10", "box_AR@100", "mask_AR@10", "mask_AR@100"):
            value = row[f"{variant}_{column}"]
            assert isinstance(value, (int, float)) and math.isfinite(value) and 0 <= value <= 100, (column, value)
    assert row["paper_baseline_mask_AR@100"] == 19.9 and row["paper_ggn_mask_AR@100"] == 28.7

    # PA training: 2 processes of 1 image each, lr scaled from 0.02 for 8 images.
    pa_epochs = [r for r in _jsonl(exp_dir / "seed0" / "pa" / "train_log.jsonl") if "epoch_loss" in r]
    assert len(pa_epochs) == 1, pa_epochs
    pa_epoch = pa_epochs[0]
    assert len(pa_epoch["images_per_rank"]) == 2 and min(pa_epoch["images_per_rank"]) > 0, pa_epoch
    assert sum(pa_epoch["images_per_rank"]) == len(TRAIN_IMAGES)
    assert pa_epoch["total_batch"] == 2
    assert pa_epoch["effective_lr"] == pytest.approx(0.02 * 2 / 8)
    assert math.isfinite(pa_epoch["epoch_loss"])
    pa_ckpt = load_checkpoint(exp_dir / "seed0" / "pa" / "checkpoint.pt")
    assert pa_ckpt["config"]["backbone"] == "resnet50" and pa_ckpt["config"]["norm"] == "bn"
    assert pa_ckpt["config"]["input_size"] == 0 and pa_ckpt["config"]["target"] == "reference"

    # The ImageNet weights came from the file in TORCH_HOME (no download was attempted).
    pa_log = (exp_dir / "logs" / "seed0" / "train_pa.log").read_text()
    assert f"backbone tensors from {weights}" in pa_log, pa_log[-3000:]
    assert "starting 2 processes" in pa_log and "downloading" not in pa_log

    imagenet = torch.load(weights, map_location="cpu", weights_only=True)
    for variant in ("baseline", "ggn"):
        det_dir = exp_dir / "seed0" / "detector" / variant
        # Detector training: 2 processes of 2 images each, lr scaled from 0.02 for 16 images.
        summaries = [r for r in _jsonl(det_dir / "train_log.jsonl") if "images_per_rank" in r]
        assert len(summaries) == 1, summaries
        summary = summaries[0]
        assert len(summary["images_per_rank"]) == 2 and min(summary["images_per_rank"]) > 0, summary
        assert summary["total_batch"] == 4
        assert summary["effective_lr"] == pytest.approx(0.02 * 4 / 16)
        assert math.isfinite(summary["mean"]["loss"])

        ckpt = load_checkpoint(det_dir / "checkpoint.pt")
        cfg_saved = ckpt["config"]
        assert cfg_saved["norm"] == "eval_bn" and cfg_saved["frozen_stages"] == 1, cfg_saved
        assert cfg_saved["anchor_ratios"] == [1.0] and cfg_saved["box_loss"] == "l1", cfg_saved
        assert cfg_saved["kind"] == "maskrcnn" and cfg_saved["backbone"] == "resnet50"
        assert cfg_saved["training"]["world_size"] == 2 and cfg_saved["training"]["pretrained"] == "imagenet"

        # The frozen stem and stage 1 are the TORCH_HOME file's tensors, untouched by training; and with
        # BN statistics fixed, so are the running statistics of every backbone BN layer.
        model = ckpt["model"]
        for key in ("conv1.weight", "bn1.weight", "layer1.0.conv1.weight", "layer1.2.bn3.bias"):
            assert torch.equal(model[f"backbone.body.{key}"], imagenet[key]), key
        for key in ("layer2.0.bn1.running_mean", "layer4.2.bn3.running_var", "bn1.running_var"):
            assert torch.equal(model[f"backbone.body.{key}"], imagenet[key]), key
        # Later stages did train, BN affine parameters included (norm_eval fixes only the statistics). The
        # stand-in weights zero each block's last BN scale (updates of one warm-up step show there first).
        for key in ("layer4.2.bn3.weight", "layer2.0.bn3.weight"):
            assert not torch.equal(model[f"backbone.body.{key}"], imagenet[key]), key

        det_log = (exp_dir / "logs" / "seed0" / f"train_detector-{variant}.log").read_text()
        assert "starting 2 processes" in det_log and "from imagenet" in det_log, det_log[-3000:]
        assert "downloading" not in det_log

    # Extraction: two shards, each run with the paper's grouping (none of the project's additions).
    import pa_lib
    from ggn.extract import summary_path_for

    images_seen = 0
    for shard in range(2):
        out = exp_dir / "seed0" / "pseudo" / "shards" / f"{shard}-of-2.parquet"
        assert out.is_file()
        shard_summary = json.loads(summary_path_for(out).read_text())
        params = shard_summary["propose_params"]
        assert params == json.loads(json.dumps(pa_lib.PAPER_SETTINGS)), params
        assert params["seed_threshold"] is None and params["edge_in_ring"] is False
        assert shard_summary["input_size"] is None and shard_summary["images_skipped"] == 0
        images_seen += shard_summary["images_processed"]
    assert images_seen == len(TRAIN_IMAGES)
    pseudo = json.loads((exp_dir / "seed0" / "pseudo" / "pseudo_gt.json").read_text())
    assert all(a["id"] >= 1 for a in pseudo["annotations"])
