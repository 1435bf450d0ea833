"""The Snakemake DAG: lint, dry runs (whole table, one row, parameter change), and a real run on tiny data."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
SNAKEMAKE = [str(BIN / "snakemake"), "--snakefile", str(REPO / "workflow" / "Snakefile")]


def _env():
    env = dict(os.environ)
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    return env


def snakemake(*args, cwd=REPO, check=True):
    proc = subprocess.run([*SNAKEMAKE, *args], cwd=cwd, env=_env(), capture_output=True, text=True)
    if check and proc.returncode != 0:
        raise AssertionError(f"snakemake {' '.join(args)} failed:\n{proc.stdout}\n{proc.stderr}")
    return proc.stdout + proc.stderr


# Every rule that runs as a job (all but `all`), each with an entry in an experiment's `resources` block.
JOB_RULES = ("synth", "list_images", "split", "train_pa", "eval_pa", "extract", "rank_oln", "merge", "eval_pseudo",
             "train_detector", "predict", "evaluate", "row", "table", "plots", "visualize")


def tiny_config(results: Path) -> dict:
    """The synthetic experiment shrunk to seconds per stage."""
    return {
        "results": str(results),
        "experiments": {
            "tiny": {
                "synthetic": {"num_train": 12, "num_val": 6, "image_size": 96, "seed": 3},
                "seen": "synthetic_seen",
                "unseen": "synthetic_unseen",
                "pa": {"backbone": "resnet18", "epochs": 1, "batch_size": 4, "input_size": 64, "fpn_dim": 16,
                       "ppm_dim": 16, "warmup_iters": 1, "lr_steps": [1], "workers": 0},
                "extract": {"num_shards": 2, "input_size": 64, "batch_size": 4},
                "merge": {"top_k": 2},
                "detector": {"backbone": "resnet18", "epochs": 1, "batch_size": 2, "lr_steps": [1], "min_size": 96,
                             "max_size": 96, "fpn_channels": 32, "representation_size": 64, "mask_channels": 16,
                             "rpn_pre_nms_top_n_train": 200, "rpn_post_nms_top_n_train": 100,
                             "box_batch_size_per_image": 32, "workers": 0},
                "predict": {"max_detections": 50, "rpn_proposals": 200},
                # Small jobs (the schema's defaults are paper scale: 32 GB would not fit a small CI node).
                "resources": {rule: {"threads": 2 if rule in ("synth", "train_pa") else 1, "mem_mb": 2000,
                                     "runtime": 15} for rule in JOB_RULES},
            }
        },
    }


def test_lint_is_clean():
    out = snakemake("--lint")
    assert "Congratulations, your workflow is in a good condition" in out, out


def test_dry_run_builds_whole_table():
    out = snakemake("-n", "--forceall", "--quiet", "rules")
    for rule in ("synth", "split", "train_pa", "eval_pa", "extract", "merge", "eval_pseudo", "train_detector",
                 "predict", "evaluate", "row", "table", "plots", "visualize"):
        assert rule in out, f"rule {rule} missing from the default DAG:\n{out}"


def test_dry_run_makes_what_the_report_embeds(tmp_path):
    """`snakemake --report report.html` embeds the outputs marked report(): the table as HTML, the curves, the
    histograms and the panels; `all` makes them, the control's pseudo-GT and its quality included."""
    results = tmp_path / "results"
    config = tiny_config(results)
    config["experiments"]["tiny"]["variants"] = ["baseline", "control", "ggn"]
    cfg = tmp_path / "config.yaml"
    cfg.write_text(yaml.safe_dump(config))
    out = snakemake("-n", "--forceall", "--configfile", str(cfg))
    for target in ("table.html", "tiny/figures/ar_curves.png", "tiny/figures/candidate_histograms.png",
                   "tiny/figures/panels", "tiny/seed0/pseudo/quality.json", "tiny/pseudo_control/quality.json",
                   "tiny/pseudo_control/pseudo_gt.json", "tiny/seed0/detector/control/checkpoint.pt"):
        assert f"{results}/{target}" in out, f"{target} not made by `all`:\n{out}"


def test_one_row_runs_only_that_row(tmp_path):
    config = tiny_config(tmp_path / "results")
    config["experiments"]["other"] = dict(config["experiments"]["tiny"])
    cfg = tmp_path / "config.yaml"
    cfg.write_text(yaml.safe_dump(config))
    out = snakemake("-n", f"{tmp_path}/results/tiny/row.json", "--configfile", str(cfg))
    assert "results/tiny/" in out and "results/other/" not in out, out


def test_shard_count_override_from_command_line(tmp_path):
    cfg = tmp_path / "config.yaml"
    cfg.write_text(yaml.safe_dump(tiny_config(tmp_path / "results")))
    out = snakemake("-n", "-p", "--configfile", str(cfg), "--config", "num_shards=5")
    assert "4-of-5.parquet" in out and "of-2.parquet" not in out, out


def _dry_run_fields(out: str) -> list[dict[str, str]]:
    """The fields (output, threads, resources, ...) of each job a dry run lists, rule `all` left out."""
    blocks = (dict(line.strip().split(": ", 1) for line in block.splitlines()[1:] if ": " in line)
              for block in out.split("\nrule ")[1:])
    return [fields for fields in blocks if "output" in fields]


def job_counts(out: str) -> dict[str, int]:
    """rule -> job count from the job-stats table of a dry run."""
    counts, table = {}, False
    for line in out.splitlines():
        parts = line.split()
        if parts[:2] == ["job", "count"]:
            table = True
            continue
        if table and len(parts) == 2 and parts[1].isdigit():
            if parts[0] == "total":
                break
            counts[parts[0]] = int(parts[1])
    return counts


def _dry_run_jobs(out: str, results: Path) -> dict[str, dict[str, str]]:
    """{first output relative to `results`: {"threads": .., "runtime": .., "mem_mb": .., ...}} of a dry run's jobs."""
    jobs = {}
    for fields in _dry_run_fields(out):
        values = {"threads": fields.get("threads", "1")}
        values |= dict(item.split("=", 1) for item in fields["resources"].split(", "))
        jobs[str(Path(fields["output"].split(",")[0]).relative_to(results))] = values
    return jobs


def test_job_resources_follow_the_experiment(tmp_path):
    """Each job asks for the threads, memory and runtime of its experiment's `resources` block; a rule the
    block leaves out gets the schema's paper-scale default; a profile's (or the command line's) set-resources
    wins over both."""
    results = tmp_path / "results"
    config = tiny_config(results)
    resources = config["experiments"]["tiny"]["resources"]
    del resources["train_detector"]
    resources["extract"] = {"threads": 3, "mem_mb": 1234, "runtime": 7}
    cfg = tmp_path / "config.yaml"
    cfg.write_text(yaml.safe_dump(config))
    out = snakemake("-n", "--forceall", "--cores", "8", "--configfile", str(cfg), "--set-resources", "merge:mem_mb=4321")
    jobs = {path: {k: v for k, v in values.items() if k in ("threads", "mem_mb", "runtime", "gpu", "nodes")}
            for path, values in _dry_run_jobs(out, results).items()}
    assert jobs["tiny/seed0/pseudo/shards/0-of-2.parquet"] == jobs["tiny/seed0/pseudo/shards/1-of-2.parquet"] == {
        "threads": "3", "mem_mb": "1234", "runtime": "7", "gpu": "1"}
    assert jobs["tiny/seed0/pa/checkpoint.pt"] == {"threads": "2", "mem_mb": "2000", "runtime": "15", "gpu": "1",
                                                   "nodes": "1"}
    for variant in ("baseline", "ggn"):  # the schema's default (40 threads, capped at --cores 8 here)
        assert jobs[f"tiny/seed0/detector/{variant}/checkpoint.pt"] == {
            "threads": "8", "mem_mb": "32000", "runtime": "4320", "gpu": "1", "nodes": "1"}
    assert jobs["tiny/seed0/pseudo/pseudo_gt.json"] == {"threads": "1", "mem_mb": "4321", "runtime": "15"}
    assert jobs["table.csv"] == {"threads": "1", "mem_mb": "2000", "runtime": "15"}


def _refused(config: dict, tmp_path: Path) -> str:
    cfg = tmp_path / "config.yaml"
    cfg.write_text(yaml.safe_dump(config))
    proc = subprocess.run([*SNAKEMAKE, "-n", "--configfile", str(cfg)], cwd=REPO, env=_env(), capture_output=True,
                          text=True)
    assert proc.returncode != 0 and "Job stats" not in proc.stdout, proc.stdout
    return proc.stdout + proc.stderr


def _outputs(out: str) -> list[str]:
    """Every output path of a dry run's jobs."""
    return [p.strip() for fields in _dry_run_fields(out) for p in fields["output"].split(",")]


def test_seeds_pair_and_adding_one_runs_only_its_jobs(tmp_path):
    """3 seeds: 3 PA trainings and 3 x 3 detectors under seed{s}/, GGN's seed s extracting with the PA network of
    seed s; the control's pseudo-GT (the image gradient) is made once. With those outputs in place, adding a
    fourth seed schedules only that seed's jobs and the row, table and curves that gather every seed; removing
    one reruns no training."""
    results = tmp_path / "results"
    config = tiny_config(results)
    exp = config["experiments"]["tiny"]
    exp["variants"] = ["baseline", "control", "ggn"]
    exp["seeds"] = [0, 1, 2]
    cfg = tmp_path / "config.yaml"
    cfg.write_text(yaml.safe_dump(config))
    out = snakemake("-n", "-p", "--configfile", str(cfg), cwd=tmp_path)
    stats = job_counts(out)
    assert stats["train_pa"] == 3 and stats["train_detector"] == 9 and stats["predict"] == 9, stats
    assert stats["merge"] == 4 and stats["eval_pa"] == 3, stats  # 3 seeds of the PA network's + 1 control
    for seed in (0, 1, 2):
        extract = [c for c in out.splitlines() if "ggn extract" in c and f"tiny/seed{seed}/pseudo/shards" in c]
        assert extract and all(f"--checkpoint {results}/tiny/seed{seed}/pa/checkpoint.pt" in c for c in extract)
        train = next(c for c in out.splitlines() if f"tiny/seed{seed}/detector/ggn/checkpoint.pt" in c
                     and "ggn train-detector" in c)
        assert f"--pseudo-gt {results}/tiny/seed{seed}/pseudo/pseudo_gt.json" in train and f"--seed {seed}" in train
    assert sum("ggn extract --affinity gradient" in c for c in out.splitlines()) == 2  # 2 shards, once for all seeds
    row = next(c for c in out.splitlines() if "ggn table row" in c)
    assert "--seeds 0 1 2" in row and row.count("/eval/ggn.json") == 3

    # Put every output in place (as a finished run leaves them), then add seed 3.
    for path in _outputs(out):
        target = Path(path)
        if target.suffix:
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text("")
        else:
            target.mkdir(parents=True, exist_ok=True)
    # --touch --forceall records each job's provenance as a real run does (its input files among them)
    snakemake("--touch", "--forceall", "--cores", "1", "--configfile", str(cfg), cwd=tmp_path)
    exp["seeds"] = [0, 1, 2, 3]
    cfg.write_text(yaml.safe_dump(config))
    planned = _outputs(snakemake("-n", "--configfile", str(cfg), cwd=tmp_path))
    seeded = [p for p in planned if "/seed" in p]
    assert seeded and all("/seed3/" in p for p in seeded), planned
    assert {Path(p).name for p in planned if "/seed" not in p} <= {
        "row.json", "table.csv", "table.md", "table.html", "ar_curves.png", "candidate_histograms.png"}, planned
    exp["seeds"] = [0, 2]
    cfg.write_text(yaml.safe_dump(config))
    planned = _outputs(snakemake("-n", "--configfile", str(cfg), cwd=tmp_path))
    assert not [p for p in planned if "/seed" in p], planned


def test_a_seed_in_a_stage_block_is_refused(tmp_path):
    config = tiny_config(tmp_path / "results")
    config["experiments"]["tiny"]["detector"]["seed"] = 1
    assert "detector.seed is set per replicate by the experiment's `seeds` list" in _refused(config, tmp_path)


def test_typo_in_a_stage_key_is_refused_before_any_job(tmp_path):
    config = tiny_config(tmp_path / "results")
    config["experiments"]["tiny"]["pa"]["epochz"] = 1
    assert "pa.epochz is not an option of `ggn train-pa`; did you mean 'epochs'?" in _refused(config, tmp_path)


def test_wrong_type_of_a_stage_option_is_refused_before_any_job(tmp_path):
    config = tiny_config(tmp_path / "results")
    config["experiments"]["tiny"]["pa"]["fpn_dim"] = "wide"  # not in the schema: the step's parser says no
    assert "argument --fpn-dim: invalid int value: 'wide'" in _refused(config, tmp_path)
    config = tiny_config(tmp_path / "results")
    config["experiments"]["tiny"]["merge"]["top_k"] = "three"  # in the schema
    assert "top_k" in _refused(config, tmp_path)


def test_missing_data_path_is_refused_naming_the_key(tmp_path):
    config = tiny_config(tmp_path / "results")
    exp = config["experiments"]["tiny"]
    del exp["synthetic"]
    (tmp_path / "train.json").write_text("{}")
    exp["data"] = {"train_annotations": str(tmp_path / "train.json"), "train_images": str(tmp_path / "no_images"),
                   "eval_annotations": str(tmp_path / "train.json"), "eval_images": str(tmp_path)}
    assert f"data.train_images {tmp_path / 'no_images'} does not exist" in _refused(config, tmp_path)


def test_unwritable_results_folder_is_refused_before_any_job(tmp_path):
    (tmp_path / "a_file").write_text("x")
    config = tiny_config(tmp_path / "a_file" / "results")
    assert "is a file, not a folder" in _refused(config, tmp_path)


def test_bad_config_is_rejected_with_the_field(tmp_path):
    config = tiny_config(tmp_path / "results")
    config["experiments"]["tiny"]["merge"]["top_k"] = 0
    cfg = tmp_path / "config.yaml"
    cfg.write_text(yaml.safe_dump(config))
    proc = subprocess.run([*SNAKEMAKE, "-n", "--configfile", str(cfg)], cwd=REPO, env=_env(),
                          capture_output=True, text=True)
    assert proc.returncode != 0
    assert "top_k" in proc.stdout + proc.stderr


def screenshot_report(report: Path, png: Path) -> None:
    """Render the report in headless Chromium (Debian's `chromium`), when installed, and check the picture: the
    report is a JavaScript page, so a broken one renders blank. Without Chromium this check is left out."""
    import shutil

    import numpy as np
    from PIL import Image

    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        return  # apt-get install chromium to include this check (README: "Seeing the results")
    # On a loaded machine a first screenshot can be taken before the page's scripts have drawn it: take it again
    # with a longer virtual-time budget before failing.
    for budget in (15000, 40000, 90000):
        subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                        "--window-size=1280,900", f"--virtual-time-budget={budget}", f"--screenshot={png}",
                        report.resolve().as_uri()], check=True, capture_output=True, timeout=300)
        pixels = np.asarray(Image.open(png).convert("RGB")).astype(float)
        assert pixels.shape == (900, 1280, 3)
        # The app rendered: its navigation sidebar stands out from the workflow description beside it (a dark
        # sidebar, or a light grey one: the report's colour scheme differs between Chromium runs) and the page
        # is not one colour. A blank page is uniform white.
        sidebar, text = pixels[:, :200].mean(), pixels[:, 300:700].mean()
        if abs(sidebar - text) > 15 and pixels.std() > 10:
            return
    raise AssertionError(f"the report rendered blank (see {png}): mean brightness of the sidebar {sidebar:.0f} and "
                         f"of the text column {text:.0f} (a drawn report: they differ by > 15), standard deviation "
                         f"over the page {pixels.std():.0f} (> 10), after three virtual-time budgets")


@pytest.mark.slow
@pytest.mark.smoke  # `make test` runs it beside the fast tier
def test_tiny_pipeline_end_to_end_and_incremental(tmp_path):
    results = tmp_path / "results"
    cfg = tmp_path / "config.yaml"
    config = tiny_config(results)
    config["experiments"]["tiny"]["variants"] = ["baseline", "control", "ggn"]
    cfg.write_text(yaml.safe_dump(config))
    snakemake("--cores", "2", "--configfile", str(cfg))
    table = (results / "table.csv").read_text()
    assert table.startswith("experiment,") and "\ntiny," in table
    for variant in ("baseline", "control", "ggn"):
        metrics = json.loads((results / "tiny" / "seed0" / "eval" / f"{variant}.json").read_text())
        assert set(metrics) == {"bbox", "segm"} and "AR@100" in metrics["segm"]
    assert (results / "tiny" / "seed0" / "pseudo" / "shards" / "1-of-2.parquet").is_file()
    # The control's pseudo-GT: the same grouping on the image gradient, no PA network.
    summary = json.loads((results / "tiny" / "pseudo_control" / "shards" / "1-of-2.parquet.summary.json").read_text())
    assert summary["affinity"] == "gradient" and summary["checkpoint"] is None
    for folder in ("seed0/pseudo", "pseudo_control"):
        quality = json.loads((results / "tiny" / folder / "quality.json").read_text())
        assert quality["unseen_objects"] > 0 and set(quality["recall"]) == {"top-1", "top-3", "top-20"}
    row = json.loads((results / "tiny" / "row.json").read_text())
    assert row["control_mask_AR@100"] is not None and row["control_pseudo_recall@20"] is not None
    assert row["n"] == 1 and row["gain_mask_AR@100_ci_low"] is None  # one seed: no interval
    assert row["versions"].startswith("torch ") and row["machine"]
    assert "baseline → control → GGN" in (results / "table.md").read_text()
    figures = results / "tiny" / "figures"
    assert sorted(p.name for p in (figures / "panels").glob("*.png")) == [f"{kind}-{i}.png" for kind in ("eval", "mined")
                                                                          for i in range(3)]
    assert (figures / "ar_curves.png").is_file() and (figures / "candidate_histograms.png").is_file()
    # Snakemake's own report embeds the table, the curves and the panels.
    snakemake("--report", str(tmp_path / "report.html"), "--configfile", str(cfg))
    report = (tmp_path / "report.html").read_text()
    for name in ("table.html", "ar_curves.png", "candidate_histograms.png", "mined-0.png", "eval-2.png"):
        assert name in report, f"{name} missing from the report"
    screenshot_report(tmp_path / "report.html", tmp_path / "report.png")

    # Changing a merge parameter reruns merge and what depends on it, not the PA network nor the baseline.
    config["experiments"]["tiny"]["merge"]["top_k"] = 1
    cfg.write_text(yaml.safe_dump(config))
    out = snakemake("-n", "--configfile", str(cfg), "--quiet", "rules")
    assert "merge" in out and "train_detector" in out
    assert "train_pa" not in out and "extract" not in out
    plan = snakemake("-n", "-p", "--configfile", str(cfg))
    assert "tiny/seed0/detector/ggn/checkpoint.pt" in plan and "tiny/seed0/detector/control/checkpoint.pt" in plan
    assert "train-detector --variant baseline" not in plan


@pytest.mark.parametrize("row_config", sorted(p.name for p in (REPO / "config").glob("*.yaml") if p.name != "config.yaml"))
def test_paper_row_configs_validate_and_wait_only_for_their_datasets(row_config):
    """Each paper row is a valid config whose DAG is complete except for the datasets the user points it at: refused
    before any job, naming the key and the path."""
    proc = subprocess.run([*SNAKEMAKE, "-n", "--forceall", "--configfile", str(REPO / "config" / row_config)],
                          cwd=REPO, env=_env(), capture_output=True, text=True)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert "data.train_annotations datasets/" in out and "does not exist" in out, out


def test_profile_by_name_after_the_set_up_step(tmp_path):
    """`snakemake --profile slurm all` as users type it: `make slurm-profile` installs the profile where
    Snakemake looks for profiles by name ($XDG_CONFIG_HOME/snakemake), and the dry run uses it."""
    env = {**_env(), "XDG_CONFIG_HOME": str(tmp_path / "config")}
    subprocess.run(["make", "-s", "slurm-profile"], cwd=REPO, env=env, check=True, capture_output=True)
    installed = tmp_path / "config" / "snakemake" / "slurm" / "config.yaml"
    assert installed.read_text() == (REPO / "profiles" / "slurm" / "config.yaml").read_text()
    proc = subprocess.run([*SNAKEMAKE, "--profile", "slurm", "-n", "all", "--config", f"results={tmp_path / 'r'}"],
                          cwd=REPO, env=env, capture_output=True, text=True)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    assert "Using profile slurm" in out and "This was a dry-run" in out
    if Path("/etc/xdg/snakemake/slurm").exists():
        return  # a site profile of that name: Snakemake would use it without the set-up step
    # without the set-up step the name is unknown
    proc = subprocess.run([*SNAKEMAKE, "--profile", "slurm", "-n", "all", "--config", f"results={tmp_path / 'r'}"],
                          cwd=REPO, env={**env, "XDG_CONFIG_HOME": str(tmp_path / "empty")}, capture_output=True,
                          text=True)
    assert proc.returncode != 0
