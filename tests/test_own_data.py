"""Your own data (docs/own_data.md): the example config (config/examples/own_data.yaml: ImageNet-initialised
ResNet-50s, small jobs, its own table file) with only its data paths and schedule shrunk runs a labelme-shaped
export (ids from 0, a `_background_` category 0, polygons, JPEG photos of different sizes, one EXIF-rotated, one
image without objects) and, in the same run with the tests' small networks, a CVAT-shaped one ("COCO 1.0": ids
from 1, no background class, brush masks as uncompressed RLE marked `iscrowd: 1`) to table rows; the trained detector then runs on a folder of
new images (`ggn list-images` + `ggn predict`); a pseudo-GT-only run reuses the PA checkpoint (`pa_checkpoint`),
trains nothing, and mines every image, also those without a seen-class object. One workflow run serves every
check (the slow tier's time)."""
from __future__ import annotations

import json
import subprocess
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image, ImageDraw

from test_paper_row import place_imagenet_weights
from test_workflow import BIN, JOB_RULES, REPO, _env, snakemake, tiny_config

EXAMPLE = REPO / "config" / "examples" / "own_data.yaml"

CLASSES = ["_background_", "cat", "dog", "bird", "fish"]  # labelme's labels.txt order: _background_ is id 0
SIZES = [(96, 72), (72, 96), (80, 80), (96, 64), (64, 88)]  # (width, height) of the photos


def _polygon(rng, width, height):
    cx, cy = rng.uniform(0.25, 0.75) * width, rng.uniform(0.25, 0.75) * height
    r = rng.uniform(0.12, 0.22) * min(width, height)
    angles = np.sort(rng.uniform(0, 2 * np.pi, int(rng.integers(4, 8))))
    return [round(float(v), 1) for a in angles for v in (cx + r * np.cos(a), cy + r * np.sin(a))]


def labelme_export(root: Path, num_images: int, seed: int, empty_image: bool = False) -> Path:
    """JPEGImages/ + annotations.json as labelme2coco writes them; returns the annotation file."""
    rng = np.random.default_rng(seed)
    (root / "JPEGImages").mkdir(parents=True)
    images, anns = [], []
    for i in range(num_images):
        width, height = SIZES[i % len(SIZES)]
        canvas = Image.fromarray(rng.integers(0, 50, (height, width, 3), dtype=np.uint8))
        draw = ImageDraw.Draw(canvas)
        objects = [] if (empty_image and i == num_images - 1) else [
            (1 + i % 2, _polygon(rng, width, height)),           # a seen class (cat or dog)
            (3 + (i // 2) % 2, _polygon(rng, width, height))]    # an unseen one (bird or fish)
        for category, poly in objects:
            draw.polygon(poly, fill=tuple(int(c) for c in rng.integers(120, 255, 3)))
            xs, ys = poly[0::2], poly[1::2]
            anns.append({"id": len(anns), "image_id": i, "category_id": category, "segmentation": [poly],
                         "area": float(0.5 * abs(np.dot(xs, np.roll(ys, 1)) - np.dot(ys, np.roll(xs, 1)))),
                         "bbox": [min(xs), min(ys), max(xs) - min(xs), max(ys) - min(ys)], "iscrowd": 0})
        name = f"JPEGImages/photo_{i:03d}.jpg"
        if i == 1:  # a phone photo: stored sideways with an EXIF "rotate 90" tag, annotated as displayed
            exif = Image.Exif()
            exif[0x0112] = 6
            canvas.transpose(Image.Transpose.ROTATE_90).save(root / name, quality=95, exif=exif.tobytes())
        else:
            canvas.save(root / name, quality=95)
        images.append({"id": i, "file_name": name, "height": height, "width": width, "license": 0, "url": None,
                       "date_captured": None})
    coco = {"info": {"description": "labelme export"}, "licenses": [{"id": 0, "name": None, "url": None}],
            "images": images, "annotations": anns,
            "categories": [{"supercategory": None, "id": i, "name": n} for i, n in enumerate(CLASSES)]}
    out = root / "annotations.json"
    out.write_text(json.dumps(coco))
    return out


def _uncompressed_rle(mask: np.ndarray) -> dict:
    """A mask as CVAT writes brush masks: COCO's uncompressed RLE (column-major run lengths, zeros first)."""
    flat = mask.flatten(order="F").astype(np.uint8)
    changes = np.flatnonzero(np.diff(np.concatenate([[0], flat, [1 - flat[-1]]])))
    counts = np.diff(np.concatenate([[0], changes])).tolist()
    return {"counts": [int(c) for c in counts], "size": [int(mask.shape[0]), int(mask.shape[1])]}


def cvat_export(root: Path, num_images: int, seed: int) -> Path:
    """images/ + annotations/instances_default.json as CVAT's "COCO 1.0" export writes them."""
    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True)
    images, anns = [], []
    yy, xx = np.mgrid[:80, :96]
    for i in range(1, num_images + 1):
        canvas = Image.fromarray(rng.integers(0, 50, (80, 96, 3), dtype=np.uint8))
        draw = ImageDraw.Draw(canvas)
        for category in (1 + i % 2, 3):  # a seen class (cat or dog) as a polygon, an unseen one (bird)
            poly = _polygon(rng, 96, 80)
            draw.polygon(poly, fill=tuple(int(c) for c in rng.integers(120, 255, 3)))
            xs, ys = poly[0::2], poly[1::2]
            anns.append({"id": len(anns) + 1, "image_id": i, "category_id": category, "segmentation": [poly],
                         "area": float(0.5 * abs(np.dot(xs, np.roll(ys, 1)) - np.dot(ys, np.roll(xs, 1)))),
                         "bbox": [min(xs), min(ys), max(xs) - min(xs), max(ys) - min(ys)], "iscrowd": 0,
                         "attributes": {"occluded": False}})
        # a brush-tool mask of a seen class: CVAT exports it as uncompressed RLE with iscrowd 1
        cx, cy = rng.integers(20, 76), rng.integers(20, 60)
        brush = (xx - cx) ** 2 + (yy - cy) ** 2 <= 100
        pixels = np.asarray(canvas).copy()
        pixels[brush] = rng.integers(120, 255, 3)
        canvas = Image.fromarray(pixels)
        ys, xs = np.nonzero(brush)
        anns.append({"id": len(anns) + 1, "image_id": i, "category_id": 1, "segmentation": _uncompressed_rle(brush),
                     "area": float(brush.sum()), "bbox": [float(xs.min()), float(ys.min()), float(np.ptp(xs) + 1),
                                                          float(np.ptp(ys) + 1)],
                     "iscrowd": 1, "attributes": {"occluded": False}})
        name = f"frame_{i:06d}.jpg"
        canvas.save(root / "images" / name, quality=95)
        images.append({"id": i, "width": 96, "height": 80, "file_name": name, "license": 0, "flickr_url": "",
                       "coco_url": "", "date_captured": 0})
    coco = {"licenses": [{"name": "", "id": 0, "url": ""}],
            "info": {"contributor": "", "date_created": "", "description": "", "url": "", "version": "", "year": ""},
            "categories": [{"id": i, "name": n, "supercategory": ""} for i, n in enumerate(["cat", "dog", "bird"], 1)],
            "images": images, "annotations": anns}
    (root / "annotations").mkdir()
    out = root / "annotations" / "instances_default.json"
    out.write_text(json.dumps(coco))
    return out


def _shrunk(exp: dict, data: dict) -> dict:
    """The example's experiment with its data paths and its schedule and image sizes shrunk to seconds; the
    networks (ImageNet ResNet-50s) and everything else as the example has them."""
    exp = json.loads(json.dumps(exp))
    exp["data"] = data
    exp["pa"].update(epochs=1, lr_steps=[1], warmup_iters=1, input_size=64, workers=0)
    exp["extract"].update(input_size=64, num_shards=1)
    exp["detector"].update(epochs=1, lr_steps=[1], warmup_iters=1, min_size=96, max_size=96, workers=0)
    exp["predict"] = {"max_detections": 50, "rpn_proposals": 200}
    exp["resources"] = {rule: {"threads": 1, "mem_mb": 2000, "runtime": 15} for rule in JOB_RULES}
    return exp


def _tiny(tmp: Path, data: dict) -> dict:
    """The tests' small networks (ResNet-18 from scratch) for the CVAT export, which tests the export's shape,
    not the example's networks (two ImageNet ResNet-50s cost minutes more)."""
    exp = tiny_config(tmp / "unused")["experiments"]["tiny"]
    del exp["synthetic"], exp["unseen"]
    exp.update(seen="cat,dog", data=data)
    exp["extract"]["num_shards"] = 1
    return exp


@pytest.fixture(scope="module")
def own_data_run(tmp_path_factory):
    """One workflow run: the example config on a labelme-shaped export, the tests' small networks on a
CVAT-shaped one."""
    tmp = tmp_path_factory.mktemp("own")
    monkeypatch = pytest.MonkeyPatch()
    monkeypatch.setenv("TORCH_HOME", str(tmp / "torch"))
    place_imagenet_weights(tmp / "torch")  # a seeded stand-in at the path of torchvision's ImageNet file
    train = labelme_export(tmp / "train", 12, seed=1, empty_image=True)
    val = labelme_export(tmp / "val", 6, seed=2)
    cvat_train = cvat_export(tmp / "cvat_train", 8, seed=3)
    cvat_val = cvat_export(tmp / "cvat_val", 4, seed=4)
    example = yaml.safe_load(EXAMPLE.read_text())
    exp = example["experiments"]["my_data"]
    config = {"results": str(tmp / "results"), "table": example["table"], "experiments": {
        "mine": _shrunk(exp, {"train_annotations": str(train), "train_images": str(tmp / "train"),
                              "eval_annotations": str(val), "eval_images": str(tmp / "val")}),
        "cvat": _tiny(tmp, {"train_annotations": str(cvat_train), "train_images": str(tmp / "cvat_train" / "images"),
                            "eval_annotations": str(cvat_val), "eval_images": str(tmp / "cvat_val" / "images")})}}
    cfg = tmp / "config.yaml"
    cfg.write_text(yaml.safe_dump(config))
    snakemake("--cores", "2", "--configfile", str(cfg))
    yield tmp, config
    monkeypatch.undo()


def test_the_example_config_is_what_the_docs_promise():
    example = yaml.safe_load(EXAMPLE.read_text())
    exp = example["experiments"]["my_data"]
    assert example["table"] != "table" and exp["pa"]["pretrained"] == exp["detector"]["pretrained"] == "imagenet"
    assert max(r["threads"] for r in exp["resources"].values()) <= 4
    assert max(r["mem_mb"] for r in exp["resources"].values()) <= 16000


@pytest.mark.slow
def test_example_config_on_a_labelme_export_to_its_own_table(own_data_run):
    tmp, config = own_data_run
    results = tmp / "results"
    row = json.loads((results / "mine" / "row.json").read_text())
    assert row["baseline_mask_AR@100"] is not None and row["ggn_mask_AR@100"] is not None
    # its own table file, with both rows; the default table name is not written
    table = (results / "table_my_data.csv").read_text()
    assert "\nmine," in table and "\ncvat," in table and not (results / "table.csv").exists()
    split_log = (results / "mine" / "logs" / "split.log").read_text()
    assert "background class" in split_log  # the _background_ category was recognised and dropped
    train_json = json.loads((results / "mine" / "data" / "train.json").read_text())
    assert len(train_json["images"]) == 11  # the image without objects is not trained on
    assert all(a["id"] >= 1 for a in train_json["annotations"])  # ids from 0 renumbered
    # the PA network started from the ImageNet file (the example's point), not from random initialisation
    pa_log = (results / "mine" / "logs" / "seed0" / "train_pa.log").read_text()
    assert pa_log.strip() and "random initialisation" not in pa_log


@pytest.mark.slow
def test_cvat_export_with_crowd_brush_masks_to_a_table_row(own_data_run):
    tmp, _ = own_data_run
    results = tmp / "results"
    row = json.loads((results / "cvat" / "row.json").read_text())
    assert row["baseline_mask_AR@100"] is not None and row["ggn_mask_AR@100"] is not None
    train_json = json.loads((results / "cvat" / "data" / "train.json").read_text())
    crowd = [a for a in train_json["annotations"] if a["iscrowd"]]
    # every brush mask kept as an ignore region (not learned as background, not as an object), compressed
    assert len(crowd) == 8 and all(isinstance(a["segmentation"]["counts"], str) for a in crowd)
    assert len(train_json["images"]) == 8
    eval_json = json.loads((results / "cvat" / "data" / "eval.json").read_text())
    assert sum(a["ignored_split"] == 0 for a in eval_json["annotations"]) == 4  # one bird per image: unseen


@pytest.mark.slow
def test_trained_detector_on_a_folder_of_new_images(own_data_run):
    """docs/own_data.md "New images": `ggn list-images` lists a folder, `ggn predict` detects in every image."""
    tmp, _ = own_data_run
    folder = tmp / "new_photos"
    (folder / "day2").mkdir(parents=True)
    rng = np.random.default_rng(9)
    for i, (w, h) in enumerate(SIZES[:3]):
        Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(folder / ("day2" if i else "") / f"n{i}.jpg")
    env = _env()
    listing, dets = tmp / "new_photos.json", tmp / "new_detections.json"
    checkpoint = tmp / "results" / "mine" / "seed0" / "detector" / "ggn" / "checkpoint.pt"
    for args in (["list-images", "--root", folder, "--out", listing],
                 ["predict", "--checkpoint", checkpoint, "--annotations", listing, "--images", folder, "--out", dets,
                  "--max-detections", "20"]):
        proc = subprocess.run([str(BIN / "ggn"), *map(str, args)], env=env, capture_output=True, text=True)
        assert proc.returncode == 0, proc.stdout + proc.stderr
    images = json.loads(listing.read_text())["images"]
    assert sorted(i["file_name"] for i in images) == ["day2/n1.jpg", "day2/n2.jpg", "n0.jpg"]
    detections = json.loads(dets.read_text())
    assert {d["image_id"] for d in detections} <= {i["id"] for i in images}
    assert all(d["category_id"] == 1 and "counts" in d["segmentation"] for d in detections)  # class-agnostic masks
    assert 0 < len(detections) <= 20 * len(images)


@pytest.mark.slow
def test_pseudo_gt_for_new_images_with_the_trained_pa_network(own_data_run, tmp_path):
    tmp, config = own_data_run
    results = tmp / "results"
    exp = config["experiments"]["mine"]
    # Pseudo-GT only, on the same photos, with that PA network: no PA training, every image mined.
    pseudo = {"seen": "cat,dog", "targets": "pseudo", "pa_checkpoint": str(results / "mine" / "seed0" / "pa" / "checkpoint.pt"),
              "data": {"train_annotations": exp["data"]["train_annotations"],
                       "train_images": exp["data"]["train_images"]},
              "extract": exp["extract"], "merge": exp["merge"],
              "resources": {rule: {"threads": 1, "mem_mb": 2000, "runtime": 15} for rule in JOB_RULES}}
    cfg = tmp_path / "config.yaml"
    cfg.write_text(yaml.safe_dump({"results": str(results), "table": "table_pseudo", "experiments": {"mine_pseudo": pseudo}}))
    plan = snakemake("-n", "--configfile", str(cfg), "--quiet", "rules")
    assert "train_pa" not in plan and "train_detector" not in plan and "extract" in plan
    snakemake("--cores", "2", "--configfile", str(cfg))
    pseudo_gt = json.loads((results / "mine_pseudo" / "pseudo" / "pseudo_gt.json").read_text())
    assert len(pseudo_gt["images"]) == 12  # also the image without a seen-class object
    summary = json.loads((results / "mine_pseudo" / "pseudo" / "shards" / "0-of-1.parquet.summary.json").read_text())
    table_run = json.loads((results / "mine" / "seed0" / "pseudo" / "shards" / "0-of-1.parquet.summary.json").read_text())
    assert summary["images_processed"] == 12 and table_run["images_processed"] == 11  # every image mined here
    assert summary["checkpoint"] == pseudo["pa_checkpoint"]
    assert not (results / "mine_pseudo" / "seed0").exists()  # a given PA network: nothing per seed
