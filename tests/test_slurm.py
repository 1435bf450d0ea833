"""The Slurm profile on a real one-node cluster (.ci/slurm-up.sh: partitions cpu and gpu, 2 fake GPU GRES).

One test, in four phases on the tiny synthetic config of test_workflow.py (3 extraction shards, 2-process PA
training, a detector checkpoint after every batch):
1. `all` through profiles/slurm: every rule one sbatch job, GPU rules on `gpu` with their GPU request in the
   job record, CPU rules on `cpu`, the experiment's threads, memory and runtime requested, all COMPLETED; the
   table equals the one a local `snakemake --cores 2` run makes from the same config (run alongside).
2. `all` again submits nothing.
3. After `merge.top_k` changes, only merge, the ggn detector, its predictions, evaluation, row and table run.
4. Preemption: an extraction shard and a detector training are cancelled with scancel mid-way; Snakemake
   reports them and resubmits them (the profile's retries), and they finish from their flushed parts and
   mid-epoch checkpoint, identical to the uninterrupted run of phase 1. The shard's kill point is exact: its
   second image is a FIFO, on which the job blocks after flushing the first. The detector (which checks every
   image before training) is cancelled when its first mid-epoch state appears (batch size 1: a dozen batches
   an epoch).
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import torch
import yaml

from ggn.io import load_checkpoint
from test_workflow import tiny_config

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
UP_HINT = "run .ci/slurm-up.sh (as root) to start a one-node Slurm cluster on this machine"
EXP = "ci"
SHARDS = 3
PROFILE = REPO / "profiles" / "slurm"
# The rules the profile sends to the GPU partition (the rules that ask for GPUs).
GPU_RULES = {rule for rule, values in yaml.safe_load((PROFILE / "config.yaml").read_text())["set-resources"].items()
             if values.get("slurm_partition") == "gpu"}
# The table's DAG: jobs per rule (the workflow may hold more rules, e.g. quality reports; the test takes
# Snakemake's own plan as the list of jobs that must each be one sbatch job)
CORE = {"synth": 1, "split": 1, "train_pa": 1, "eval_pa": 1, "extract": SHARDS, "merge": 1, "train_detector": 2,
        "predict": 2, "evaluate": 2, "row": 1, "table": 1}
# after a change of merge.top_k
RERUN = {"merge": 1, "train_detector": 1, "predict": 1, "evaluate": 1, "row": 1, "table": 1}

pytestmark = [pytest.mark.slow, pytest.mark.slurm]


def _cluster_state() -> str | None:
    """Why the cluster cannot take this test's jobs, or None when it can."""
    for tool in ("sbatch", "squeue", "sinfo", "scontrol", "scancel"):
        if shutil.which(tool) is None:
            return f"'{tool}' is not on PATH"
    try:
        proc = subprocess.run(["sinfo", "-h", "-o", "%P %T %G"], capture_output=True, text=True, timeout=15)
    except subprocess.TimeoutExpired:
        return "sinfo did not answer in 15 s (is slurmctld running?)"
    if proc.returncode != 0:
        return f"sinfo failed: {proc.stderr.strip()}"
    rows = [line.split() for line in proc.stdout.splitlines()]
    ready = {row[0].rstrip("*") for row in rows if row[1] in ("idle", "mixed", "allocated", "completing")}
    missing = {"cpu", "gpu"} - ready
    if missing:
        return f"no usable node in partition(s) {', '.join(sorted(missing))}; sinfo says: {proc.stdout.strip()!r}"
    if not any(row[0].rstrip("*") == "gpu" and "gpu:2" in row[2] for row in rows):
        return f"the gpu partition's node has no 2 GPU GRES; sinfo says: {proc.stdout.strip()!r}"
    return None


def slurm_config() -> dict:
    config = tiny_config(Path("results"))  # relative: each run has its own working directory
    exp = config["experiments"].pop("tiny")
    exp["synthetic"]["num_train"] = 15  # 5 images per shard, so that a shard can be stopped mid-way
    exp["extract"] |= {"num_shards": SHARDS, "flush_every": 1}
    exp["pa"]["gpus"] = 2  # one job asking Slurm for 2 GPUs, training as 2 (gloo) processes
    exp["detector"] |= {"batch_size": 1, "checkpoint_minutes": 1e-5}  # a resumable state after every batch
    config["experiments"][EXP] = exp
    return config


def _env() -> dict:
    env = dict(os.environ)
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"  # jobs inherit it (sbatch --export=ALL)
    return env


def _snakefile(work: Path) -> str:
    """The snapshot of the workflow taken at the start of the test (a run spans minutes; edits made to the
    checkout meanwhile must not change its rules halfway)."""
    return str(work.parent / "workflow" / "Snakefile")


def _snakemake_cmd(work: Path, cfg: Path, *args: str, limit_s: int) -> list[str]:
    # Snakemake ignores SIGTERM while it waits on Slurm: `timeout -k` makes sure it ends. The limits are hang
    # guards, far above the run times on an idle 2-core machine (phase 1 takes about 3 minutes).
    return ["timeout", "-k", "20", str(limit_s), str(BIN / "snakemake"), *args,
            "--snakefile", _snakefile(work), "--profile", str(PROFILE),
            "--directory", str(work), "--configfile", str(cfg),
            # The CI cluster has no accounting database, so sacct cannot see jobs; squeue can.
            "--slurm-status-command", "squeue", "--slurm-init-seconds-before-status-checks", "2",
            "--slurm-keep-successful-logs"]


def _cancel_run(out: str) -> None:
    """Jobs are named after the run: leave no stray jobs in the queue."""
    for run_id in set(re.findall(r"SLURM run ID: (\S+)", out)):
        subprocess.run(["scancel", "--name", run_id], timeout=15)


def _finish(proc: subprocess.Popen | subprocess.CompletedProcess, out: str, what: str) -> str:
    if proc.returncode in (124, 137, -9):  # `timeout` ends with the KILL it sends after -k
        _cancel_run(out)
        pytest.fail(f"{what} ran past its time limit:\n{out}")
    assert proc.returncode == 0, f"{what} failed:\n{out}"
    return out


def _slurm(work: Path, cfg: Path, *args: str, limit_s: int) -> str:
    proc = subprocess.run(_snakemake_cmd(work, cfg, *args, limit_s=limit_s), cwd=work, env=_env(),
                          capture_output=True, text=True)
    return _finish(proc, proc.stdout + proc.stderr, f"snakemake {' '.join(args)} --profile profiles/slurm")


def _plan(work: Path, cfg: Path) -> Counter:
    """Jobs per rule that `all` needs now (a dry run's job stats, without `all` itself)."""
    proc = subprocess.run([str(BIN / "snakemake"), "-n", "all", "--snakefile", _snakefile(work),
                           "--directory", str(work), "--configfile", str(cfg)],
                          cwd=work, env=_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    stats = proc.stdout.split("Job stats:", 1)[1].split("total", 1)[0] if "Job stats:" in proc.stdout else ""
    rows = [line.split() for line in stats.splitlines()[3:] if line.strip()]
    return Counter({rule: int(count) for rule, count in rows if rule != "all"})


def _submissions(out: str, work: Path) -> list[tuple[str, str, str]]:
    """(Slurm job id, rule, wildcards) of every sbatch submission, from Snakemake's log lines; the plugin files
    each job's log under .snakemake/slurm_logs/rule_RULE/WILDCARDS/."""
    found = []
    for job_id, log in re.findall(r"has been submitted with SLURM jobid (\d+) \(log: (\S+?)\)\.", out):
        parts = Path(log).relative_to(work / ".snakemake" / "slurm_logs").parts
        found.append((job_id, parts[0].removeprefix("rule_"), parts[1] if len(parts) > 2 else ""))
    return found


def _job_records(job_ids: list[str]) -> dict[str, dict[str, str]]:
    """Slurm's record of each job (finished ones stay for MinJobAge, 3600 s in slurm-up.sh)."""
    records = {}
    for job_id in job_ids:
        proc = subprocess.run(["scontrol", "-o", "show", "job", job_id], capture_output=True, text=True, timeout=15)
        assert proc.returncode == 0, f"scontrol show job {job_id}: {proc.stderr}"
        records[job_id] = dict(re.findall(r"(\w+)=(\S*)", proc.stdout))
    return records


def _train_images(work: Path) -> tuple[list[int], dict[int, Path]]:
    train = json.loads((work / f"results/{EXP}/data/train.json").read_text())
    folder = work / f"results/{EXP}/synthetic/train"
    return sorted(i["id"] for i in train["images"]), {i["id"]: folder / i["file_name"] for i in train["images"]}


def test_whole_dag_reruns_and_preemption_through_slurm(tmp_path):
    why = _cluster_state()
    if why:
        pytest.skip(f"no Slurm cluster: {why}; {UP_HINT}")
    config = slurm_config()
    exp = config["experiments"][EXP]
    cfg = tmp_path / "config.yaml"
    cfg.write_text(yaml.safe_dump(config))
    work, local = tmp_path / "slurm", tmp_path / "local"
    work.mkdir()
    local.mkdir()
    shutil.copytree(REPO / "workflow", tmp_path / "workflow")

    # --- 1. the whole DAG, every rule one sbatch job; a local run of the same config alongside -------------
    plan = _plan(work, cfg)
    assert {rule: plan[rule] for rule in CORE} == CORE, plan
    local_run = subprocess.Popen(["timeout", "-k", "20", "1800", str(BIN / "snakemake"), "--cores", "2",
                                  "--snakefile", _snakefile(work), "--directory", str(local),
                                  "--configfile", str(cfg)],
                                 cwd=local, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        out = _slurm(work, cfg, "all", limit_s=1800)
    finally:
        local_out = local_run.communicate()[0]
    _finish(local_run, local_out, "the local run (snakemake --cores 2)")

    jobs = _submissions(out, work)
    assert Counter(rule for _, rule, _ in jobs) == plan, out
    records = _job_records([job_id for job_id, _, _ in jobs])
    for job_id, rule, wildcards in jobs:
        rec, want = records[job_id], exp["resources"][rule]
        where = f"job {job_id} ({rule} {wildcards}): {rec}"
        assert rec["JobState"] == "COMPLETED", where
        assert rec["Partition"] == ("gpu" if rule in GPU_RULES else "cpu"), where
        gpus = {"train_pa": exp["pa"]["gpus"], "train_detector": exp["detector"].get("gpus", 1)}.get(rule, 1)
        assert rec.get("TresPerJob") == (f"gres:gpu:{gpus}" if rule in GPU_RULES else None), where
        # what the experiment's `resources` block asks for, as Slurm recorded it
        assert (rec["NumCPUs"], rec["MinMemoryNode"], rec["TimeLimit"]) == (
            str(want["threads"]), f"{want['mem_mb']}M", f"00:{want['runtime']:02d}:00"), where
    assert len({wildcards for _, rule, wildcards in jobs if rule == "extract"}) == SHARDS

    table = (work / "results" / "table.csv").read_text()
    assert f"\n{EXP}," in table
    assert table == (local / "results" / "table.csv").read_text(), "the Slurm run's table differs from the local one"
    # 2 GPUs asked for, 2 processes trained together; no CUDA on the CI node: gloo on CPU despite
    # the CUDA_VISIBLE_DEVICES that Slurm sets for the GRES
    pa_log = (work / f"results/{EXP}/logs/seed0/train_pa.log").read_text()
    assert "starting 2 processes" in pa_log and "2 process(es), device cpu" in pa_log, pa_log
    epochs = [r for r in map(json.loads, (work / f"results/{EXP}/seed0/pa/train_log.jsonl").read_text().splitlines())
              if "epoch_loss" in r]
    assert len(epochs[-1]["images_per_rank"]) == 2 and min(epochs[-1]["images_per_rank"]) > 0

    # --- 2. nothing to do ----------------------------------------------------------------------------------
    out = _slurm(work, cfg, "all", limit_s=300)
    assert _submissions(out, work) == [] and "Nothing to be done" in out, out

    # --- 3. a merge option changed: merge and what depends on it, nothing else ----------------------------
    exp["merge"]["top_k"] = 1
    cfg.write_text(yaml.safe_dump(config))
    plan = _plan(work, cfg)
    assert {rule: plan[rule] for rule in CORE} == {rule: RERUN.get(rule, 0) for rule in CORE}, plan
    out = _slurm(work, cfg, "all", limit_s=1200)
    jobs = _submissions(out, work)
    assert Counter(rule for _, rule, _ in jobs) == plan, out
    assert all("ggn" in wildcards for _, rule, wildcards in jobs if rule in ("train_detector", "predict", "evaluate"))
    assert all(rec["JobState"] == "COMPLETED" for rec in _job_records([j for j, _, _ in jobs]).values())
    assert json.loads((work / f"results/{EXP}/row.json").read_text())["top_k"] == 1

    # --- 4. preemption: an extraction shard, then a detector training, cancelled mid-way -------------------
    shard = work / f"results/{EXP}/seed0/pseudo/shards/0-of-{SHARDS}.parquet"
    detector = work / f"results/{EXP}/seed0/detector/baseline/checkpoint.pt"
    reference_rows, reference_model = pq.read_table(shard), load_checkpoint(detector)["model"]

    # 4a. The shard's second image is a FIFO: the job flushes its first image as a part, then blocks for good.
    ids, files = _train_images(work)
    shard_ids = ids[0::SHARDS]  # ggn extract: position k of the id-sorted list goes to shard k % num_shards
    blocked = files[shard_ids[1]]
    image = blocked.read_bytes()
    blocked.unlink()
    os.mkfifo(blocked)
    parts = shard.with_name(shard.name + ".parts")
    try:
        out = _preempt(work, cfg, shard, "extract", tmp_path / "extract.log",
                       stopped=lambda: len(list(parts.glob("part-*.parquet"))) == 1,
                       resume=lambda: (blocked.unlink(), blocked.write_bytes(image)))
    finally:
        if not blocked.is_file():
            blocked.unlink(missing_ok=True)
            blocked.write_bytes(image)
    extract_log = (work / f"results/{EXP}/logs/seed0/pseudo/extract-0-of-{SHARDS}.log").read_text()
    assert f"resuming shard 0/{SHARDS}: 1 of {len(shard_ids)} images already done" in extract_log, extract_log
    rows = pq.read_table(shard)
    assert rows.equals(reference_rows), "the resumed shard differs from the uninterrupted one"
    pairs = list(zip(rows["image_id"].to_pylist(), rows["rank"].to_pylist()))
    assert len(pairs) == len(set(pairs))  # no image's candidates written twice

    # 4b. The detector is cancelled as soon as it has saved its first mid-epoch state (one batch in: the epoch
    # has len(ids) of them), so that the resubmitted job continues mid-epoch.
    epochs = detector.parent / "epochs"
    shutil.rmtree(epochs)  # else the forced run would resume past the end
    out = _preempt(work, cfg, detector, "train_detector", tmp_path / "detector.log",
                   stopped=lambda: (epochs / "mid_epoch.pt").is_file(), resume=lambda: None)
    detector_log = (work / f"results/{EXP}/logs/seed0/train_detector-baseline.log").read_text()
    resumed = re.search(r"resuming from \S+mid_epoch.pt in epoch 1 after its first (\d+) of (\d+) batches",
                        detector_log)
    assert resumed and int(resumed[2]) == len(ids) // exp["detector"]["batch_size"], detector_log
    model = load_checkpoint(detector)["model"]
    assert model.keys() == reference_model.keys()
    assert all(torch.equal(model[k], reference_model[k]) for k in model), "the resumed detector differs"


def _preempt(work: Path, cfg: Path, target: Path, rule: str, log_file: Path, stopped, resume) -> str:
    """Run `rule` for `target` afresh through Slurm; once `stopped()`, scancel its job and call `resume()`.
    Snakemake must report the cancelled job and resubmit it (the profile's `retries`), and the new job must
    finish; returns Snakemake's output."""
    with open(log_file, "w") as sink:
        run = subprocess.Popen(_snakemake_cmd(work, cfg, str(target.relative_to(work)), "--forcerun", rule,
                                              limit_s=1200),
                               cwd=work, env=_env(), stdout=sink, stderr=subprocess.STDOUT)
    while not stopped():
        assert run.poll() is None, f"snakemake ended before the {rule} job was stopped:\n{log_file.read_text()}"
        time.sleep(0.05)
    (job_id, _, _), = _submissions(log_file.read_text(), work)
    subprocess.run(["scancel", job_id], check=True, timeout=15)
    resume()
    run.wait()
    out = _finish(run, log_file.read_text(), f"the preempted {rule} run")
    assert f"SLURM-job '{job_id}' failed, SLURM status is: 'CANCELLED'" in out, out
    jobs = _submissions(out, work)
    assert [rule_ for _, rule_, _ in jobs] == [rule, rule], out
    records = _job_records([j for j, _, _ in jobs])
    assert [records[j]["JobState"] for j, _, _ in jobs] == ["CANCELLED", "COMPLETED"], records
    return out
