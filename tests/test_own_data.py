"""Your own data (README "Your own data"): a COCO export shaped like labelme's or CVAT's (ids from 0, a `_background_`
category 0, polygons, JPEG photos of different sizes, one EXIF-rotated, one image without objects) runs through the
workflow to a table row with tiny settings; then a pseudo-GT-only run reuses that PA checkpoint (`pa_checkpoint`),
trains nothing, and mines every image, also those without a seen-class object."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image, ImageDraw

from test_workflow import JOB_RULES, snakemake, tiny_config

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


@pytest.mark.slow
def test_labelme_export_to_a_table_row_then_pseudo_gt_with_that_pa_checkpoint(tmp_path):
    train = labelme_export(tmp_path / "train", 12, seed=1, empty_image=True)
    val = labelme_export(tmp_path / "val", 6, seed=2)
    results = tmp_path / "results"
    config = tiny_config(results)
    exp = config["experiments"].pop("tiny")
    del exp["synthetic"], exp["unseen"]  # unseen: every class not seen
    exp.update(seen="cat,dog", data={"train_annotations": str(train), "train_images": str(tmp_path / "train"),
                                     "eval_annotations": str(val), "eval_images": str(tmp_path / "val")})
    config["experiments"]["mine"] = exp
    cfg = tmp_path / "config.yaml"
    cfg.write_text(yaml.safe_dump(config))
    snakemake("--cores", "2", f"{results}/mine/row.json", "--configfile", str(cfg))
    row = json.loads((results / "mine" / "row.json").read_text())
    assert row["baseline_mask_AR@100"] is not None and row["ggn_mask_AR@100"] is not None
    split_log = (results / "mine" / "logs" / "split.log").read_text()
    assert "background class" in split_log  # the _background_ category was recognised and dropped
    train_json = json.loads((results / "mine" / "data" / "train.json").read_text())
    assert len(train_json["images"]) == 11  # the image without objects is not trained on
    assert all(a["id"] >= 1 for a in train_json["annotations"])  # ids from 0 renumbered

    # Pseudo-GT only, on the same photos, with that PA network: no PA training, every image mined.
    pseudo = {"seen": "cat,dog", "targets": "pseudo", "pa_checkpoint": str(results / "mine" / "seed0" / "pa" / "checkpoint.pt"),
              "data": {"train_annotations": str(train), "train_images": str(tmp_path / "train")},
              "extract": exp["extract"], "merge": exp["merge"],
              "resources": {rule: {"threads": 1, "mem_mb": 2000, "runtime": 15} for rule in JOB_RULES}}
    config["experiments"] = {"mine_pseudo": pseudo}
    cfg.write_text(yaml.safe_dump(config))
    plan = snakemake("-n", "--configfile", str(cfg), "--quiet", "rules")
    assert "train_pa" not in plan and "train_detector" not in plan and "extract" in plan
    snakemake("--cores", "2", "--configfile", str(cfg))
    pseudo_gt = json.loads((results / "mine_pseudo" / "pseudo" / "pseudo_gt.json").read_text())
    assert len(pseudo_gt["images"]) == 12  # also the image without a seen-class object
    assert 11 in {a["image_id"] for a in pseudo_gt["annotations"]}
    assert not (results / "mine_pseudo" / "seed0").exists()  # a given PA network: nothing per seed
