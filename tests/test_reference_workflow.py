"""The authors' released artifacts in the workflow: `reference.pseudo_gt` as the ggn variant's pseudo-GT (imported,
merged with the row's top-k; no PA training, no extraction) and `reference.detector` as the evaluation-only
`authors` variant (predict + evaluate, printed beside ours)."""
from __future__ import annotations

import json

import pytest
import torch
import yaml

from ggn.cli import main
from ggn.table import make_row, render_markdown
from tests.test_import_reference import detector_keys, random_state, save_mmcv
from tests.test_workflow import job_counts, snakemake, tiny_config


def _released_pseudo(path):
    """A released file in extract_pa_masks.py's per-image list format; its image ids need not exist (the dry run
    reads nothing)."""
    path.write_text(json.dumps([]))
    return path


def _converted_detector(tmp_path):
    src = save_mmcv(tmp_path / "ggn_voc.pth", random_state(detector_keys("maskrcnn"), seed=11))
    out = tmp_path / "ggn_voc_converted.pt"
    assert main(["import-reference", "--checkpoint", str(src), "--out", str(out)]) == 0
    return out


def _config(tmp_path, reference):
    cfg = tiny_config(tmp_path / "results")
    cfg["experiments"]["tiny"]["reference"] = reference
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_dry_run_with_released_pseudo_gt_and_detector(tmp_path):
    detector = tmp_path / "converted.pt"  # the dry run reads only its config (box-only or not)
    torch.save({"model": {}, "config": {"kind": "maskrcnn", "backbone": "resnet50", "mask_head": True}}, detector)
    cfg = _config(tmp_path, {"pseudo_gt": str(_released_pseudo(tmp_path / "pseudo.json")),
                             "detector": str(detector)})
    out = snakemake("-n", "-p", "--forceall", "--configfile", str(cfg))
    counts = job_counts(out)
    assert counts.get("import_pseudo") == 1 and counts.get("merge") == 1
    assert "train_pa" not in counts and "extract" not in counts and "eval_pa" not in counts
    assert counts["train_detector"] == 2  # baseline and ggn; the authors' detector is never trained
    assert counts["predict"] == 3 and counts["evaluate"] == 3  # baseline, ggn, authors
    assert f"--checkpoint {detector}" in out and "--authors" in out and " --pa " not in out
    assert "pseudo_reference/shards/0-of-1.parquet" in out
    assert "--iou-types" not in out
    # a box-only detector of the authors (OLN-Box) is evaluated on boxes alone
    torch.save({"model": {}, "config": {"kind": "oln", "backbone": "resnet50", "mask_head": False}}, detector)
    out = snakemake("-n", "-p", "--forceall", "--configfile", str(cfg))
    assert out.count("--iou-types bbox") == 1


def test_rung_c_is_one_target(tmp_path):
    """Their PA network (pa_checkpoint) + their pseudo-GT: one target extracts the first shard and compares."""
    pa = tmp_path / "pa_voc.pt"
    torch.save({"model": {}, "config": {"offsets": [[0, 1]], "backbone": "resnet50"}}, pa)
    cfg = tiny_config(tmp_path / "results")
    cfg["experiments"]["tiny"]["pa_checkpoint"] = str(pa)
    cfg["experiments"]["tiny"]["reference"] = {"pseudo_gt": str(_released_pseudo(tmp_path / "pseudo.json"))}
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(cfg))
    target = tmp_path / "results" / "tiny" / "pseudo" / "compare_reference.json"
    out = snakemake(str(target), "-n", "-p", "--configfile", str(path))
    counts = job_counts(out)
    assert counts.get("extract") == 1 and counts.get("compare_reference") == 1
    assert "train_pa" not in counts and "train_detector" not in counts
    assert "--top-k 2 --gt-iou-max 0.5" in out and f"--checkpoint {pa}" in out


def test_missing_reference_file_is_refused(tmp_path):
    cfg = _config(tmp_path, {"detector": str(tmp_path / "nowhere.pt")})
    out = snakemake("-n", "--configfile", str(cfg), check=False)
    assert "reference.detector" in out and "ggn import-reference" in out


@pytest.mark.slow
def test_released_pseudo_gt_becomes_the_rows_pseudo_gt(tmp_path):
    """Real run of split -> import_pseudo -> merge: the authors' per-image lists, filtered by the row's top-k (2)
    and gt_iou < 0.5, as the ggn detector's pseudo_gt.json; no PA network is trained."""
    import numpy as np

    from ggn.masks import encode_mask

    cfg = _config(tmp_path, {})
    results = tmp_path / "results"
    train = results / "tiny" / "data" / "train.json"
    snakemake(str(train), "--cores", "1", "--configfile", str(cfg))
    images = json.loads(train.read_text())["images"]
    released = []
    for im in images:  # four candidates per image, best first; the second covers an annotated object
        masks = []
        for k in range(4):
            m = np.zeros((im["height"], im["width"]), bool)
            m[4 * k:4 * k + 10, 4 * k:4 * k + 12] = True
            masks.append(m)
        released.append([{"segmentation": encode_mask(m), "image_id": im["id"], "category_id": 1, "rank": k,
                          "gt_iou": 0.9 if k == 1 else 0.1, "score": 1.0 - k / 10} for k, m in enumerate(masks)])
    path = tmp_path / "pseudo_voc.json"
    path.write_text(json.dumps(released))
    cfg = _config(tmp_path, {"pseudo_gt": str(path)})
    pseudo = results / "tiny" / "pseudo_reference" / "pseudo_gt.json"
    snakemake(str(pseudo), "--cores", "1", "--configfile", str(cfg))
    anns = json.loads(pseudo.read_text())["annotations"]
    per_image = {}
    for a in anns:
        per_image.setdefault(a["image_id"], []).append(a["gt_iou"])
    assert set(per_image) == {im["id"] for im in images}
    assert all(sorted(v) == pytest.approx([0.1, 0.1]) for v in per_image.values())  # top 2, the 0.9 one left out
    assert not (results / "tiny" / "seed0" / "pa").exists()


@pytest.mark.slow
def test_evaluation_only_variant_runs_on_tiny_data(tmp_path):
    """A converted reference-layout detector, predicted and evaluated by the workflow (synth, split, predict,
    evaluate only)."""
    cfg = _config(tmp_path, {"detector": str(_converted_detector(tmp_path))})
    metrics_path = tmp_path / "results" / "tiny" / "seed0" / "eval" / "authors.json"
    snakemake(str(metrics_path), "--cores", "2", "--configfile", str(cfg))
    metrics = json.loads(metrics_path.read_text())
    assert set(metrics) >= {"bbox", "segm"} and "AR@100" in metrics["segm"]
    assert not (tmp_path / "results" / "tiny" / "seed0" / "pa").exists()
    assert not (tmp_path / "results" / "tiny" / "seed0" / "detector" / "baseline").exists()


def test_table_prints_the_authors_model_beside_ours(tmp_path):
    def metrics(value, name):
        path = tmp_path / name
        keys = ["AR@10", "AR@100"]
        path.write_text(json.dumps({t: {k: value for k in keys} for t in ("bbox", "segm")}))
        return path

    row = make_row("coco_voc_to_nonvoc", metrics(0.2, "b.json"), metrics(0.28, "g.json"),
                   authors=metrics(0.287, "a.json"))
    assert row["authors_mask_AR@100"] == pytest.approx(28.7)
    md = render_markdown([row])
    assert "authors' model, our evaluation" in md and "28.7 / 28.7" in md
    assert "CC-BY-NC 4.0" in md
    box_only = tmp_path / "box.json"
    box_only.write_text(json.dumps({"bbox": {"AR@10": 0.3, "AR@100": 0.4}}))
    row = make_row("x", metrics(0.2, "b.json"), metrics(0.28, "g.json"), authors=box_only)
    assert row["authors_box_AR@100"] == pytest.approx(40.0) and row["authors_mask_AR@100"] is None
    assert "40.0 / –" in render_markdown([row])
