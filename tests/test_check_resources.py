"""`ggn check-resources`: jobs that no node of their partition can run are named before submission, with the
rule, the request and the fix; the requests come from a real `snakemake -n` of the workflow through the Slurm
profile, the partitions from `sinfo` output (written in `sinfo -h -N -o "%P|%c|%m|%l|%G|%N"`'s format for a
small cluster: two 16-core CPU nodes, one node with 4 A100s, and the CI's one-node cluster)."""
from __future__ import annotations

import subprocess

import pytest
import yaml

from ggn.check_resources import parse_gres_gpus, parse_sinfo, parse_time_limit
from test_workflow import BIN, REPO, _env, tiny_config

SMALL_CLUSTER = """\
cpu*|16|64000|2-00:00:00|(null)|c001
cpu*|16|64000|2-00:00:00|(null)|c002
gpu|32|128000|1-00:00:00|gpu:a100:4(S:0-1)|g001
"""
CI_CLUSTER = """\
cpu*|2|3900|infinite|gpu:2|ci
gpu|2|3900|infinite|gpu:2|ci
"""


def test_sinfo_fields_are_read():
    assert parse_time_limit("2-00:00:00") == 2880 and parse_time_limit("30:00") == 30
    assert parse_time_limit("1:30:00") == 90 and parse_time_limit("infinite") == float("inf")
    assert parse_gres_gpus("gpu:a100:4(S:0-1)") == 4 and parse_gres_gpus("(null)") == 0
    assert parse_gres_gpus("gpu:a100:4,gpu:v100:2") == 6
    partitions, default = parse_sinfo(SMALL_CLUSTER)
    assert default == "cpu" and len(partitions["cpu"].nodes) == 2
    assert partitions["gpu"].nodes[0].gpus == 4 and partitions["gpu"].time_limit_min == 1440


BIG_CLUSTER = """\
cpu*|64|512000|infinite|(null)|c001
gpu|64|512000|7-00:00:00|gpu:h100:8|g001
"""


def _write_config(tmp_path):
    cfg = tiny_config(tmp_path / "results")
    del cfg["experiments"]["tiny"]["resources"]  # the schema's defaults: paper scale (24 threads, 32 GB, days)
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(cfg))
    return tmp_path / "config.yaml"


@pytest.fixture(scope="module")
def plan(tmp_path_factory):
    """A saved dry run of the tiny experiment at paper-scale resources through the Slurm profile."""
    tmp = tmp_path_factory.mktemp("plan")
    proc = subprocess.run([str(BIN / "snakemake"), "-n", "--cores", "1000000", "--profile", "profiles/slurm",
                           "--configfile", str(_write_config(tmp))], cwd=REPO, env=_env(), capture_output=True,
                          text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    (tmp / "plan.txt").write_text(proc.stdout + proc.stderr)
    return tmp / "plan.txt"


def _check(tmp_path, sinfo, *args):
    (tmp_path / "sinfo.txt").write_text(sinfo)
    return subprocess.run([str(BIN / "ggn"), "check-resources", "--sinfo", str(tmp_path / "sinfo.txt"), *map(str, args)],
                          cwd=REPO, env=_env(), capture_output=True, text=True)


@pytest.mark.slow  # a second dry run (20 s on a busy 2-core machine); the others share the fixture's
def test_paper_scale_requests_on_a_small_cluster_are_named_with_the_fix(tmp_path):
    """As a user runs it: the real run's arguments after `--`."""
    proc = _check(tmp_path, CI_CLUSTER, "--", "--profile", "profiles/slurm", "--configfile", _write_config(tmp_path))
    out = proc.stdout + proc.stderr
    assert proc.returncode == 1, out
    # train_pa asks for 24 threads and 32 GB by default; the CI node has 2 CPUs and 3.9 GB
    line = next(l for l in out.splitlines() if l.startswith("rule train_pa "))
    assert "24 threads" in line and "mem_mb=32000" in line and "partition 'gpu'" in line
    assert "the most any of its nodes has: 2 CPUs, 3900 MB, 2 GPUs" in line
    assert "experiments: {tiny: {resources: {train_pa:" in line and "--configfile" in line
    assert "fit no node of their partition" in out and "rule all " not in out


def test_time_limit_and_gpu_count_are_checked(tmp_path, plan):
    proc = _check(tmp_path, SMALL_CLUSTER, "--plan", plan)
    assert proc.returncode == 1
    detector = next(l for l in proc.stdout.splitlines() if l.startswith("rule train_detector "))
    # the schema's train_detector asks for 3 days; the small cluster's gpu partition allows 1
    assert "runtime 4320 min is over the partition's time limit 1440 min" in detector


def test_every_job_fits_a_big_enough_cluster(tmp_path, plan):
    proc = _check(tmp_path, BIG_CLUSTER, "--plan", plan)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "every job fits a node of its partition" in proc.stdout and "cpu, gpu" in proc.stdout


def test_an_unknown_partition_is_named(tmp_path, plan):
    proc = _check(tmp_path, BIG_CLUSTER.replace("gpu|", "a100|"), "--plan", plan)
    assert proc.returncode == 1
    assert "partition 'gpu' does not exist (sinfo lists a100, cpu)" in proc.stdout
