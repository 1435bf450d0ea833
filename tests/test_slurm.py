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
   mid-epoch checkpoint, identical to the uninterrupted run of phase 1. The kill points are exact, not timed:
   one training image is replaced by a FIFO, on which both jobs block once they reach it.
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

from ggn.detector.train import epoch_order
from ggn.io import load_checkpoint
from test_workflow import tiny_config

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
UP_HINT = "run .ci/slurm-up.sh (as root) to start a one-node Slurm cluster on this machine"
EXP = "ci"
SHARDS = 3
GPU_RULES = {"train_pa", "eval_pa", "extract", "train_detector", "predict"}

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
    exp["detector"]["checkpoint_minutes"] = 1e-5  # a resumable state after every batch
    config["experiments"][EXP] = exp
    return config


def _env() -> dict:
    env = dict(os.environ)
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"  # jobs inherit it (sbatch --export=ALL)
    return env


def _snakemake_cmd(work: Path, cfg: Path, *args: str, limit_s: int) -> list[str]:
    # Snakemake ignores SIGTERM while it waits on Slurm: `timeout -k` makes sure it ends.
    return ["timeout", "-k", "20", str(limit_s), str(BIN / "snakemake"), *args,
            "--snakefile", str(REPO / "workflow" / "Snakefile"), "--profile", str(REPO / "profiles" / "slurm"),
            "--directory", str(work), "--configfile", str(cfg),
            # The CI cluster has no accounting database, so sacct cannot see jobs; squeue can.
            "--slurm-status-command", "squeue", "--slurm-init-seconds-before-status-checks", "2",
            "--slurm-keep-successful-logs"]


def _cancel_run(out: str) -> None:
    """Jobs are named after the run: leave no stray jobs in the queue."""
    for run_id in set(re.findall(r"SLURM run ID: (\S+)", out)):
        subprocess.run(["scancel", "--name", run_id], timeout=15)


def _finish(proc: subprocess.Popen | subprocess.CompletedProcess, out: str, what: str) -> str:
    if proc.returncode in (124, 137):
        _cancel_run(out)
        pytest.fail(f"{what} ran past its time limit:\n{out}")
    assert proc.returncode == 0, f"{what} failed:\n{out}"
    return out


def _slurm(work: Path, cfg: Path, *args: str, limit_s: int) -> str:
    proc = subprocess.run(_snakemake_cmd(work, cfg, *args, limit_s=limit_s), cwd=work, env=_env(),
                          capture_output=True, text=True)
    return _finish(proc, proc.stdout + proc.stderr, f"snakemake {' '.join(args)} --profile profiles/slurm")


def _submissions(out: str, work: Path) -> list[tuple[str, str, str]]:
    """(Slurm job id, rule, wildcards) of every sbatch submission, from Snakemake's log lines; the plugin files
    each job's log under .snakemake/slurm_logs/rule_RULE/WILDCARDS/."""
    found = []
    for job_id, log in re.findall(r"has been submitted with SLURM jobid (\d+) \(log: (\S+?)\)\.", out):
        parts = Path(log).relative_to(work / ".snakemake" / "slurm_logs").parts
        found.append((job_id, parts[0].removeprefix("rule_"), parts[1] if len(parts) > 2 else ""))
    return found


def _job_records(job_ids: list[str]) -> dict[str, dict[str, str]]:
    """Slurm's record of each job (finished ones stay for MinJobAge, 900 s in slurm-up.sh)."""
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

    # --- 1. the whole DAG, every rule one sbatch job; a local run of the same config alongside -------------
    local_run = subprocess.Popen(["timeout", "-k", "20", "900", str(BIN / "snakemake"), "--cores", "2",
                                  "--snakefile", str(REPO / "workflow" / "Snakefile"), "--directory", str(local),
                                  "--configfile", str(cfg)],
                                 cwd=local, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        out = _slurm(work, cfg, "all", limit_s=900)
    finally:
        local_out = local_run.communicate()[0]
    _finish(local_run, local_out, "the local run (snakemake --cores 2)")

    jobs = _submissions(out, work)
    assert Counter(rule for _, rule, _ in jobs) == {
        "synth": 1, "split": 1, "train_pa": 1, "eval_pa": 1, "extract": SHARDS, "merge": 1, "train_detector": 2,
        "predict": 2, "evaluate": 2, "row": 1, "table": 1}, out
    records = _job_records([job_id for job_id, _, _ in jobs])
    for job_id, rule, wildcards in jobs:
        rec, want = records[job_id], exp["resources"][rule]
        where = f"job {job_id} ({rule} {wildcards}): {rec}"
        assert rec["JobState"] == "COMPLETED", where
        assert rec["Partition"] == ("gpu" if rule in GPU_RULES else "cpu"), where
        gpus = exp["pa"]["gpus"] if rule == "train_pa" else 1
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
    pa_log = (work / f"results/{EXP}/logs/train_pa.log").read_text()
    assert "starting 2 processes" in pa_log and "2 process(es), device cpu" in pa_log, pa_log
    epochs = [r for r in map(json.loads, (work / f"results/{EXP}/pa/train_log.jsonl").read_text().splitlines())
              if "epoch_loss" in r]
    assert len(epochs[-1]["images_per_rank"]) == 2 and min(epochs[-1]["images_per_rank"]) > 0

    # --- 2. nothing to do ----------------------------------------------------------------------------------
    out = _slurm(work, cfg, "all", limit_s=300)
    assert _submissions(out, work) == [] and "Nothing to be done" in out, out

    # --- 3. a merge option changed: merge and what depends on it, nothing else ----------------------------
    exp["merge"]["top_k"] = 1
    cfg.write_text(yaml.safe_dump(config))
    out = _slurm(work, cfg, "all", limit_s=600)
    jobs = _submissions(out, work)
    assert Counter(rule for _, rule, _ in jobs) == {
        "merge": 1, "train_detector": 1, "predict": 1, "evaluate": 1, "row": 1, "table": 1}, out
    assert all("ggn" in wildcards for _, rule, wildcards in jobs if rule in ("train_detector", "predict", "evaluate"))
    assert all(rec["JobState"] == "COMPLETED" for rec in _job_records([j for j, _, _ in jobs]).values())
    assert json.loads((work / f"results/{EXP}/row.json").read_text())["top_k"] == 1

    # --- 4. preemption of an extraction shard and a detector training ------------------------------------
    shard = work / f"results/{EXP}/pseudo/shards/0-of-{SHARDS}.parquet"
    detector = work / f"results/{EXP}/detector/baseline/checkpoint.pt"
    reference_rows, reference_model = pq.read_table(shard), load_checkpoint(detector)["model"]
    ids, files = _train_images(work)
    shard_ids = ids[0::SHARDS]  # ggn extract: position k of the id-sorted list goes to shard k % num_shards
    batch = exp["detector"]["batch_size"]
    iters = len(ids) // batch
    order = epoch_order(len(ids), 0, 0)  # the detector's first epoch (seed 0), dataset index = id rank
    position = {ids[index]: p for p, index in enumerate(order[:iters * batch])}
    # an image both jobs reach after some work: not the shard's first, not in the detector's first batch
    blocked = next((i for i in shard_ids[1:] if position.get(i, -1) >= batch), None)
    assert blocked is not None, f"no image of shard 0 {shard_ids} lies past the first batch of {order}"
    parts_done, batches_done = shard_ids.index(blocked), position[blocked] // batch
    shutil.rmtree(detector.parent / "epochs")  # else the forced run would resume past the end
    image = files[blocked].read_bytes()
    files[blocked].unlink()
    os.mkfifo(files[blocked])

    log_file = tmp_path / "preempted.log"
    with open(log_file, "w") as sink:
        targets = [str(path.relative_to(work)) for path in (shard, detector)]  # as the config's results path
        run = subprocess.Popen(_snakemake_cmd(work, cfg, *targets, "--forcerun", "extract", "train_detector",
                                              limit_s=600),
                               cwd=work, env=_env(), stdout=sink, stderr=subprocess.STDOUT)
    parts = shard.with_name(shard.name + ".parts")
    mid_epoch = detector.parent / "epochs" / "mid_epoch.pt"
    try:
        # both jobs now run until they block on the FIFO: then the shard has flushed `parts_done` parts and
        # the detector saved its state after `batches_done` batches, and neither can go further
        while not (len(list(parts.glob("part-*.parquet"))) == parts_done and mid_epoch.is_file()
                   and load_checkpoint(mid_epoch)["batches_done"] == batches_done):
            assert run.poll() is None, f"snakemake ended before the jobs blocked:\n{log_file.read_text()}"
            time.sleep(0.5)
        running = {rule: job_id for job_id, rule, _ in _submissions(log_file.read_text(), work)}
        subprocess.run(["scancel", running["extract"], running["train_detector"]], check=True, timeout=15)
    finally:
        files[blocked].unlink()
        files[blocked].write_bytes(image)
    run.wait()
    out = _finish(run, log_file.read_text(), "the preempted run")

    for rule in ("extract", "train_detector"):  # reported, then resubmitted (the profile's `retries`)
        assert f"SLURM-job '{running[rule]}' failed, SLURM status is: 'CANCELLED'" in out, out
    jobs = _submissions(out, work)
    assert Counter(rule for _, rule, _ in jobs) == {"extract": 2, "train_detector": 2}, out
    records = _job_records([job_id for job_id, _, _ in jobs])
    assert sorted(rec["JobState"] for rec in records.values()) == ["CANCELLED"] * 2 + ["COMPLETED"] * 2

    extract_log = (work / f"results/{EXP}/logs/extract-0-of-{SHARDS}.log").read_text()
    assert f"resuming shard 0/{SHARDS}: {parts_done} of {len(shard_ids)} images already done" in extract_log
    rows = pq.read_table(shard)
    assert rows.equals(reference_rows), "the resumed shard differs from the uninterrupted one"
    pairs = list(zip(rows["image_id"].to_pylist(), rows["rank"].to_pylist()))
    assert len(pairs) == len(set(pairs))  # no image's candidates written twice
    detector_log = (work / f"results/{EXP}/logs/train_detector-baseline.log").read_text()
    assert f"in epoch 1 after its first {batches_done} of {iters} batches" in detector_log, detector_log
    model = load_checkpoint(detector)["model"]
    assert model.keys() == reference_model.keys()
    assert all(torch.equal(model[k], reference_model[k]) for k in model), "the resumed detector differs"
