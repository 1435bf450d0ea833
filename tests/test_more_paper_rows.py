"""The GGN-OLN row (config/coco_voc_to_nonvoc_oln.yaml) and the ADE20K row (config/coco_to_ade20k.yaml) end to
end, in one shared workflow run, on tiny fake trees of the real layouts (COCO 2017; ADE20K_2021_17_01 converted
with `ggn convert-ade20k`).
As in tests/test_paper_row.py, only folders, data paths and schedules (epochs, GPUs, workers, shards) are
overridden, and the detectors' input size and detections kept per image (TEST_SIZE, TEST_PREDICT: the tiny
images near their own size, not scaled up to 800 px, and 100 detections, not 1500, each of which costs a mask;
tests/test_paper_row.py runs a row at its configured size): the recipes run as configured."""
from __future__ import annotations

import json
import math
import os
import subprocess
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml

from test_convert_ade20k import fake_ade20k
from test_paper_row import BIN, REPO, SNAKEMAKE, make_fake_coco, place_imagenet_weights

SCHEDULE = {"epochs", "lr_steps", "warmup_iters", "gpus", "workers", "num_shards"}
# The detectors' input size in the row tests that share tests/test_paper_row.py's recipe check: the fake images
# (128 x 96) near their own size instead of 800 x 1067, which made each prediction 34 s an image on 2 cores.
TEST_SIZE = {"min_size": 128, "max_size": 192}
# and 100 detections an image, not 1500: the mask head ran on 1500 boxes an image (11 s an image at 128 px)
TEST_PREDICT = {"max_detections": 100}
TEST_OVERRIDES = {"detector": TEST_SIZE, "predict": TEST_PREDICT}  # stage -> the keys these tests set


def shrink_sizes(exp: dict) -> None:
    """TEST_SIZE and TEST_PREDICT set in one experiment of a row config."""
    if "detector" in exp:
        exp["detector"].update(TEST_SIZE)
    exp["predict"] = {**(exp.get("predict") or {}), **TEST_PREDICT}


def _shrink(config: dict, results: Path, coco: Path, table: str) -> dict:
    config["results"], config["table"] = str(results), table
    for exp in config["experiments"].values():
        data = exp["data"]
        data["train_annotations"] = str(coco / "annotations" / "instances_train2017.json")
        data["train_images"] = str(coco / "train2017")
        if "coco" in data["eval_annotations"]:
            data["eval_annotations"] = str(coco / "annotations" / "instances_val2017.json")
            data["eval_images"] = str(coco / "val2017")
        if "pa" in exp:
            exp["pa"].update(epochs=1, lr_steps=[], warmup_iters=1, gpus=1, workers=0)
        if "extract" in exp:
            exp["extract"].update(num_shards=2)
        if "detector" in exp:
            exp["detector"].update(epochs=1, lr_steps=[], warmup_iters=1, gpus=1, workers=0)
        shrink_sizes(exp)
        exp["resources"] = {}
    return config


def run_rows(tmp_path: Path, config: dict, torch_home: Path) -> subprocess.CompletedProcess:
    cfg = tmp_path / "config.yaml"
    cfg.write_text(yaml.safe_dump(config, sort_keys=False))
    env = dict(os.environ, PATH=f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}", TORCH_HOME=str(torch_home))
    proc = subprocess.run([*SNAKEMAKE, "--cores", "2", "-p", "--configfile", str(cfg), "-d", str(tmp_path)],
                          cwd=REPO, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        results = Path(config["results"])
        logs = "\n".join(f"== {p}\n{p.read_text(errors='replace')[-3000:]}"
                         for p in sorted(results.glob("*/logs/**/*.log")))
        pytest.fail(f"snakemake failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}\n{logs}")
    return proc


def unchanged_recipe(shipped: dict, ours: dict) -> None:
    for name, exp in ours["experiments"].items():
        for stage in ("pa", "extract", "merge", "rank", "detector", "predict"):
            for key, value in (shipped["experiments"][name].get(stage) or {}).items():
                if key not in SCHEDULE and key not in TEST_OVERRIDES.get(stage, {}):
                    assert exp[stage][key] == value, (name, stage, key)


@pytest.fixture
def fake_coco_with_weights(tmp_path, monkeypatch) -> tuple[Path, Path]:
    """(TORCH_HOME holding the ImageNet ResNet-50 stand-in, a fake COCO 2017 tree): what every paper row needs
    (tests/test_imagenet_rows.py)."""
    torch_home = tmp_path / "torch"
    monkeypatch.setenv("TORCH_HOME", str(torch_home))
    place_imagenet_weights(torch_home)
    return torch_home, make_fake_coco(tmp_path / "coco")


def module_coco_with_weights(tmp: Path) -> tuple[pytest.MonkeyPatch, Path, Path]:
    """For a module-scoped run: (the MonkeyPatch that set TORCH_HOME, to undo after the run; TORCH_HOME holding the
    ImageNet ResNet-50 stand-in; a fake COCO 2017 tree), all under `tmp`."""
    torch_home = tmp / "torch"
    monkeypatch = pytest.MonkeyPatch()
    monkeypatch.setenv("TORCH_HOME", str(torch_home))
    place_imagenet_weights(torch_home)
    return monkeypatch, torch_home, make_fake_coco(tmp / "coco")


@pytest.fixture(scope="module")
def rows_run(tmp_path_factory):
    """The GGN-OLN row and the ADE20K row in one workflow run (the slow tier's time: one Snakemake start, and the
    two rows' jobs fill both cores together), on one fake COCO tree and one ImageNet stand-in; each shipped
    recipe as configured, only folders, data paths and schedules shrunk. One table, two rows."""
    tmp = tmp_path_factory.mktemp("rows")
    monkeypatch, torch_home, coco = module_coco_with_weights(tmp)
    ade_root = tmp / "ADE20K_2021_17_01"
    fake_ade20k(ade_root)
    ade_json = tmp / "ade" / "validation_instances.json"
    env = dict(os.environ, PATH=f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}")
    conv = subprocess.run([str(BIN / "ggn"), "convert-ade20k", "--root", str(ade_root), "--split", "validation",
                           "--out", str(ade_json)], env=env, capture_output=True, text=True)
    assert conv.returncode == 0, conv.stderr[-3000:]

    shipped = {name: yaml.safe_load((REPO / "config" / f"{name}.yaml").read_text())
               for name in ("coco_voc_to_nonvoc_oln", "coco_to_ade20k")}
    oln = _shrink(yaml.safe_load((REPO / "config" / "coco_voc_to_nonvoc_oln.yaml").read_text()), tmp / "results",
                  coco, "table_rows_test")
    ade_config = _shrink(yaml.safe_load((REPO / "config" / "coco_to_ade20k.yaml").read_text()), tmp / "results",
                         coco, "table_rows_test")
    ade = ade_config["experiments"]["coco_to_ade20k"]["data"]
    ade["eval_annotations"] = str(ade_json)
    ade["eval_images"] = str(ade_root / "images" / "ADE" / "validation")
    unchanged_recipe(shipped["coco_voc_to_nonvoc_oln"], oln)
    unchanged_recipe(shipped["coco_to_ade20k"], ade_config)
    config = {**ade_config, "run": [*ade_config["run"], *oln["experiments"]],
              "experiments": {**ade_config["experiments"], **oln["experiments"]}}
    proc = run_rows(tmp, config, torch_home)
    yield tmp, proc.stdout + proc.stderr
    monkeypatch.undo()


@pytest.mark.slow
def test_oln_row_with_pseudo_oln_on_fake_coco(rows_run):
    from ggn.io import load_checkpoint

    tmp, out = rows_run
    exp = tmp / "results" / "coco_voc_to_nonvoc_oln"

    # Pseudo-OLN: every candidate extracted unsuppressed, re-ranked per shard by the baseline OLN detector.
    extract_cmds = [line for line in out.splitlines() if "ggn extract" in line and "coco_voc_to_nonvoc_oln" in line]
    assert len(extract_cmds) == 2 and all("--top-k 0 --propose-params nms=0" in c for c in extract_cmds)
    rank_cmds = [line for line in out.splitlines() if "ggn rank-oln" in line]
    assert len(rank_cmds) == 2 and all("/seed0/detector/baseline/checkpoint.pt" in c for c in rank_cmds), rank_cmds
    assert all("coco_voc_to_nonvoc_oln" in c for c in rank_cmds)  # the ADE20K row ranks nothing
    assert all("--nms 0.2 --top-k 20 --pa-weight 0.5" in c for c in rank_cmds)
    for i in range(2):
        meta = json.loads(pq.read_schema(exp / "seed0" / "pseudo" / "ranked" / f"{i}-of-2.parquet").metadata[b"ggn.shard"])
        assert meta["ranked_by"]["method"] == "oln"
    for variant in ("baseline", "ggn"):
        ckpt = load_checkpoint(exp / "seed0" / "detector" / variant / "checkpoint.pt")
        assert ckpt["config"]["kind"] == "oln" and ckpt["config"]["norm"] == "eval_bn"
    row = json.loads((exp / "row.json").read_text())
    assert row["detector"] == "oln" and row["ranking"] == "oln" and row["paper_metric"] == "box_AR@100"
    assert row["paper_ggn_box_AR@100"] == 33.7
    for variant in ("baseline", "ggn"):
        for column in ("box_AR@100", "mask_AR@100"):
            assert math.isfinite(row[f"{variant}_{column}"])
    md = (tmp / "results" / "table_rows_test.md").read_text()
    assert "OLN, Pseudo-OLN pseudo-GT" in md and "– → 33.7 (box AR@100)" in md


@pytest.mark.slow
def test_ade20k_row_evaluates_the_coco_models_on_converted_ade20k(rows_run):
    tmp, out = rows_run
    results = tmp / "results"

    # The row trains nothing: it predicts with coco_all's detectors on ADE20K.
    assert not (results / "coco_to_ade20k" / "seed0" / "pa").exists()
    assert not (results / "coco_to_ade20k" / "seed0" / "pseudo").exists()
    predicts = [line for line in out.splitlines() if "ggn predict" in line and "coco_to_ade20k" in line]
    assert len(predicts) == 2 and all(f"{results}/coco_all/seed0/detector/" in c for c in predicts), predicts
    ev = json.loads((results / "coco_to_ade20k" / "data" / "eval.json").read_text())
    assert len(ev["annotations"]) == 5 and all(a["ignored_split"] == 0 for a in ev["annotations"])
    rows = sorted(p.parent.name for p in results.glob("*/row.json"))
    assert rows == ["coco_to_ade20k", "coco_voc_to_nonvoc_oln"]  # `run` builds these rows, not coco_all's
    row = json.loads((results / "coco_to_ade20k" / "row.json").read_text())
    for variant in ("baseline", "ggn"):
        assert math.isfinite(row[f"{variant}_mask_AR@100"])
    assert "| coco_to_ade20k |" in (results / "table_rows_test.md").read_text()
