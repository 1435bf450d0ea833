"""Pseudo-OLN in the DAG: its own rule per shard between extraction and merge, reusing the row's baseline OLN
detector, so that a ranking change reruns only what depends on it."""
from __future__ import annotations

import json
import subprocess

import pyarrow.parquet as pq
import pytest
import yaml

from test_workflow import REPO, SNAKEMAKE, _env, job_counts, snakemake, tiny_config


def oln_config(results):
    config = tiny_config(results)
    exp = config["experiments"]["tiny"]
    exp["detector"]["kind"] = "oln"
    exp["rank"] = {"by": "oln"}
    exp["extract"]["top_k"] = 5
    return config


def test_rank_oln_needs_an_oln_detector(tmp_path):
    config = oln_config(tmp_path / "results")
    config["experiments"]["tiny"]["detector"]["kind"] = "maskrcnn"
    cfg = tmp_path / "config.yaml"
    cfg.write_text(yaml.safe_dump(config))
    proc = subprocess.run([*SNAKEMAKE, "-n", "--configfile", str(cfg)], cwd=REPO, env=_env(),
                          capture_output=True, text=True)
    assert proc.returncode != 0 and "set detector.kind: oln" in proc.stdout + proc.stderr


def test_dry_run_places_rank_oln_between_extraction_and_merge(tmp_path):
    cfg = tmp_path / "config.yaml"
    cfg.write_text(yaml.safe_dump(oln_config(tmp_path / "results")))
    out = snakemake("-n", "-p", "--configfile", str(cfg))
    jobs = job_counts(out)
    assert jobs["extract"] == jobs["rank_oln"] == 2 and jobs["merge"] == 1, jobs
    # extraction keeps every candidate unsuppressed; the ranker applies the grouping's NMS and top-k
    assert "--top-k 0 --propose-params nms=0" in out
    assert "ggn rank-oln" in out and "--nms 0.2 --top-k 5 --pa-weight 0.5" in out
    assert "/seed0/detector/baseline/checkpoint.pt" in out.split("ggn rank-oln")[1].split("\n")[0]
    assert "seed0/pseudo/ranked/0-of-2.parquet" in out.split("ggn merge")[1].split("\n")[0]


@pytest.mark.slow
def test_pseudo_oln_end_to_end_and_a_ranking_change_reruns_only_what_depends_on_it(tmp_path):
    results = tmp_path / "results"
    cfg = tmp_path / "config.yaml"
    config = oln_config(results)
    cfg.write_text(yaml.safe_dump(config))
    snakemake("--cores", "2", "--configfile", str(cfg))
    exp = results / "tiny"
    row = json.loads((exp / "row.json").read_text())
    assert row["detector"] == "oln" and row["ranking"] == "oln"
    for i in range(2):
        extracted = pq.read_table(exp / "seed0" / "pseudo" / "shards" / f"{i}-of-2.parquet").to_pydict()
        ranked = pq.read_table(exp / "seed0" / "pseudo" / "ranked" / f"{i}-of-2.parquet").to_pydict()
        per_image = {}
        for image_id in ranked["image_id"]:
            per_image[image_id] = per_image.get(image_id, 0) + 1
        assert per_image and max(per_image.values()) <= 5
        assert len(extracted["image_id"]) > len(ranked["image_id"])  # unsuppressed in, top-5 after NMS out
        assert set(ranked["rle"]) <= set(extracted["rle"])
    pseudo = json.loads((exp / "seed0" / "pseudo" / "pseudo_gt.json").read_text())
    kept = {a["segmentation"]["counts"] for a in pseudo["annotations"]}
    ranked_all = {r for i in range(2) for r in pq.read_table(exp / "seed0" / "pseudo" / "ranked" / f"{i}-of-2.parquet")["rle"].to_pylist()}
    assert kept and kept <= ranked_all

    config["experiments"]["tiny"]["rank"]["pa_weight"] = 2.0
    cfg.write_text(yaml.safe_dump(config))
    jobs = job_counts(snakemake("-n", "--configfile", str(cfg)))
    # everything downstream of the ranked shards reruns (the pseudo-GT's quality, the GGN detector, its
    # predictions, panels and curves, the row); extraction, the PA network and both baselines do not
    expected = {"rank_oln": 2, "merge": 1, "eval_pseudo": 1, "train_detector": 1, "predict": 1, "evaluate": 1,
                "visualize": 1, "plots": 1, "row": 1, "table": 1}
    assert {k: v for k, v in jobs.items() if k != "all"} == expected, jobs
    out = snakemake("-n", "-p", "--configfile", str(cfg))
    assert "--variant baseline" not in out and "ggn extract" not in out
