"""The Slurm profile on a real cluster: the first stages of a tiny synthetic experiment go through sbatch."""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
UP_HINT = "run .ci/slurm-up.sh (as root) to start a one-node Slurm cluster on this machine"

pytestmark = [pytest.mark.slow, pytest.mark.slurm]


def _cluster_state() -> str | None:
    """Why the cluster cannot take jobs, or None when a node is ready for them."""
    for tool in ("sbatch", "squeue", "sinfo"):
        if shutil.which(tool) is None:
            return f"'{tool}' is not on PATH"
    try:
        proc = subprocess.run(["sinfo", "-h", "-o", "%P %T"], capture_output=True, text=True, timeout=15)
    except subprocess.TimeoutExpired:
        return "sinfo did not answer in 15 s (is slurmctld running?)"
    if proc.returncode != 0:
        return f"sinfo failed: {proc.stderr.strip()}"
    ready = {line.split()[0].rstrip("*") for line in proc.stdout.splitlines()
             if line.split()[1] in ("idle", "mixed", "allocated", "completing")}
    missing = {"cpu", "gpu"} - ready
    if missing:
        return f"no usable node in partition(s) {', '.join(sorted(missing))}; sinfo says: {proc.stdout.strip()!r}"
    return None


def _squeue(job_ids: list[str]) -> dict[str, tuple[str, str]]:
    """job id -> (partition, state); finished jobs stay listed for MinJobAge (900 s in slurm-up.sh)."""
    proc = subprocess.run(["squeue", "--states=all", "--noheader", "--format=%i|%P|%T", "--jobs", ",".join(job_ids)],
                          capture_output=True, text=True, timeout=15)
    assert proc.returncode == 0, proc.stderr
    rows = [line.split("|") for line in proc.stdout.split()]
    return {job: (partition, state) for job, partition, state in rows}


def test_first_stages_run_through_slurm(tmp_path):
    why = _cluster_state()
    if why:
        pytest.skip(f"no Slurm cluster: {why}; {UP_HINT}")

    work = (tmp_path / "work").resolve()
    work.mkdir()
    config = {
        "results": "results",
        "experiments": {
            "ci": {
                "synthetic": {"num_train": 4, "num_val": 2, "image_size": 64, "seed": 1},
                "seen": "synthetic_seen",
                "unseen": "synthetic_unseen",
            }
        },
    }
    cfg = tmp_path / "config.yaml"
    cfg.write_text(yaml.safe_dump(config))
    targets = ["results/ci/data/train.json", "results/ci/data/eval.json"]

    env = dict(os.environ)
    # Jobs inherit this environment (sbatch --export=ALL), so `ggn` resolves inside them too.
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    cmd = [
        str(BIN / "snakemake"), *targets,
        "--snakefile", str(REPO / "workflow" / "Snakefile"),
        "--profile", str(REPO / "profiles" / "slurm"),
        "--directory", str(work),
        "--configfile", str(cfg),
        # The CI cluster has no accounting database, so sacct cannot see jobs; squeue can.
        "--slurm-status-command", "squeue",
        "--slurm-init-seconds-before-status-checks", "2",
        "--slurm-keep-successful-logs",
    ]
    # Each job is a short command plus snakemake start-up on both sides (~15 s on 2 busy cores, and the
    # plugin polls at 2, 14, 36 s); a stuck queue must fail the test, not hang CI.
    try:
        proc = subprocess.run(cmd, cwd=work, env=env, capture_output=True, text=True, timeout=300)
    except subprocess.TimeoutExpired as err:
        partial = "".join(p.decode() if isinstance(p, bytes) else p for p in (err.stdout, err.stderr) if p)
        run_id = re.search(r"SLURM run ID: (\S+)", partial)
        if run_id:  # jobs are named after the run: leave no stray jobs in the CI queue
            subprocess.run(["scancel", "--name", run_id.group(1)], timeout=15)
        pytest.fail(f"snakemake --profile profiles/slurm still running after 300 s:\n{partial}")
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"snakemake --profile profiles/slurm failed:\n{out}"

    # Outputs of both stages (split's own tests check its rules; here: they were made from synth's data).
    synth = {name: json.loads((work / f"results/ci/synthetic/annotations/instances_{name}.json").read_text())
             for name in ("train", "val")}
    train = json.loads((work / "results/ci/data/train.json").read_text())
    evaluation = json.loads((work / "results/ci/data/eval.json").read_text())
    assert len(synth["train"]["images"]) == 4 and len(synth["val"]["images"]) == 2
    assert train["categories"] == [{"id": 1, "name": "object", "supercategory": "object"}]
    assert train["annotations"] and {a["category_id"] for a in train["annotations"]} == {1}
    assert {i["id"] for i in train["images"]} <= {i["id"] for i in synth["train"]["images"]}
    assert [i["id"] for i in evaluation["images"]] == [i["id"] for i in synth["val"]["images"]]
    assert {a["ignored_split"] for a in evaluation["annotations"]} == {0, 1}

    # Every job went through sbatch: one submission per rule, each with its Slurm log, run on the cpu
    # partition (the profile's default-resources) and finished COMPLETED.
    submitted = re.findall(r"has been submitted with SLURM jobid (\d+) \(log: (\S+?)\)\.", out)
    assert len(submitted) == 2, f"expected 2 sbatch submissions (synth, split):\n{out}"
    logs = {Path(log).relative_to(work / ".snakemake" / "slurm_logs").parts[0]: (Path(log), jid)
            for jid, log in submitted}
    assert set(logs) == {"rule_synth", "rule_split"}, logs
    for rule, (log, _) in logs.items():
        text = log.read_text()
        assert f"rule {rule.removeprefix('rule_')}:" in text and "Finished job" in text, f"{log}:\n{text}"
    states = _squeue([jid for _, jid in logs.values()])
    assert states == {jid: ("cpu", "COMPLETED") for _, jid in logs.values()}, states
