"""`ggn visualize` and `ggn plot` on tiny real outputs (gradient extraction, merge): PNGs of the expected size, not blank."""
from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from ggn.cli import main

EVAL_NAMES = ["AR@10", "AR@20", "AR@30", "AR@50", "AR@100", "AR@300", "AR@500", "AR@1000", "AR@1500"]


def _assert_picture(path, width, height):
    image = np.asarray(Image.open(path).convert("RGB"))
    assert image.shape == (height, width, 3), (path, image.shape)
    assert image.std() > 20, f"{path} looks blank"
    assert len(np.unique(image.reshape(-1, 3), axis=0)) > 50, f"{path} has hardly any colours"


def _pipeline(tmp_path, tiny_coco):
    """Full file (box seen, disc unseen), seen-only mined file, gradient shards of both kinds, pseudo-GT."""
    ann, img_dir = tiny_coco
    full = json.loads(ann.read_text())
    mined = {**full, "annotations": [a for a in full["annotations"] if a["category_id"] == 1]}
    (tmp_path / "train.json").write_text(json.dumps(mined))
    evaluation = {**full, "annotations": [{**a, "ignored_split": int(a["category_id"] == 1)} for a in full["annotations"]]}
    (tmp_path / "eval.json").write_text(json.dumps(evaluation))
    shards = {}
    for name in ("pseudo", "pseudo_control"):
        shards[name] = tmp_path / name / "0-of-1.parquet"
        assert main(["extract", "--affinity", "gradient", "--annotations", str(tmp_path / "train.json"), "--images",
                     str(img_dir), "--out", str(shards[name]), "--top-k", "6"]) == 0
        assert main(["merge", "--shards", str(shards[name]), "--annotations", str(tmp_path / "train.json"),
                     "--out", str(tmp_path / name / "pseudo_gt.json"), "--top-k", "2"]) == 0
    # Detections: the evaluation objects themselves (one detector finds all, the other the first of each image).
    dets = [{"image_id": a["image_id"], "category_id": 1, "bbox": a["bbox"], "segmentation": a["segmentation"],
             "score": 0.9} for a in full["annotations"]]
    (tmp_path / "all.json").write_text(json.dumps(dets))
    first = {d["image_id"]: d for d in reversed(dets)}
    (tmp_path / "first.json").write_text(json.dumps(list(first.values())))
    return ann, img_dir, shards


@pytest.mark.slow
def test_visualize_writes_panels_of_the_expected_size(tmp_path, tiny_coco):
    ann, img_dir, shards = _pipeline(tmp_path, tiny_coco)
    out = tmp_path / "figures"
    assert main(["visualize", "--out-dir", str(out), "--images", str(img_dir), "--mined", str(tmp_path / "train.json"),
                 "--full-annotations", str(ann), "--seen", "box", "--shards", str(shards["pseudo"]),
                 "--pseudo-gt", str(tmp_path / "pseudo" / "pseudo_gt.json"),
                 "--control-shards", str(shards["pseudo_control"]),
                 "--control-pseudo-gt", str(tmp_path / "pseudo_control" / "pseudo_gt.json"),
                 "--eval", str(tmp_path / "eval.json"), "--eval-images", str(img_dir),
                 "--detections", f"baseline={tmp_path / 'first.json'}", f"ggn={tmp_path / 'all.json'}",
                 "--num-images", "2"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["eval-0.png", "eval-1.png", "mined-0.png", "mined-1.png"]
    for i in range(2):
        _assert_picture(out / f"mined-{i}.png", 1400, 560)  # 5 panels x 2 rows (PA, control) of 2.8 in at 100 dpi
        _assert_picture(out / f"eval-{i}.png", 1400, 280)  # image, GT, potential, 2 detectors


@pytest.mark.slow
def test_plot_curves_and_histograms(tmp_path, tiny_coco):
    _, _, shards = _pipeline(tmp_path, tiny_coco)
    metrics = []
    for name, scale in (("baseline", 0.2), ("control", 0.3), ("ggn", 0.4)):
        values = {k: scale * (i + 1) / len(EVAL_NAMES) for i, k in enumerate(EVAL_NAMES)}
        (tmp_path / f"{name}.json").write_text(json.dumps({"bbox": values, "segm": values}))
        metrics.append(f"{name}={tmp_path / f'{name}.json'}")
    assert main(["plot", "--metrics", *metrics, "--curves", str(tmp_path / "curves.png"),
                 "--shards", f"ggn={shards['pseudo']}", f"control={shards['pseudo_control']}",
                 "--histograms", str(tmp_path / "hist.png")]) == 0
    _assert_picture(tmp_path / "curves.png", 1000, 400)
    _assert_picture(tmp_path / "hist.png", 1000, 400)
