"""Before submitting to Slurm: does every job of the plan fit some node of the partition it is sent to?

A job that asks for more CPUs, memory, GPUs or time than any node (or the time limit) of its partition has is
accepted by sbatch and then pends for ever (reason `PartitionConfig` or `Resources`) while Snakemake waits
without a word. This step reads what each job asks for from Snakemake's own dry run (`snakemake -n`, which
prints each job's threads and resources after the profile's set-resources and the experiment's `resources`
block are applied) and what each partition offers from `sinfo`, and names every rule that cannot run, with its
request, the partition's largest node and the fix. Usage, with the same arguments as the real run:

    ggn check-resources -- --profile slurm --configfile config/my_data.yaml

(or `--plan FILE` with a saved `snakemake -n --cores 1000000 ...` output: without a large --cores a dry run
scales every job's threads down to 1; `--sinfo FILE` with saved `sinfo` output).
"""
from __future__ import annotations

import argparse
import logging
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from ggn.io import InputError

log = logging.getLogger(__name__)

# One line per node and partition: partition (default marked *), CPUs, memory (MB), time limit, GRES.
SINFO_FORMAT = "%P|%c|%m|%l|%G|%N"
SINFO_CMD = ["sinfo", "-h", "-N", "-o", SINFO_FORMAT]
UNCAPPED_CORES = 1_000_000  # a dry run's --cores large enough that no job's threads are scaled down


@dataclass
class Node:
    name: str
    cpus: int
    mem_mb: int
    gpus: int


@dataclass
class Partition:
    name: str
    time_limit_min: float  # inf for "infinite"
    nodes: list[Node] = field(default_factory=list)


@dataclass
class Request:
    rule: str
    threads: int
    mem_mb: int
    runtime: int | None
    gpus: int
    partition: str | None
    experiments: set[str] = field(default_factory=set)
    jobs: int = 0

    def describe(self) -> str:
        parts = [f"{self.threads} thread{'s' if self.threads != 1 else ''}", f"mem_mb={self.mem_mb}"]
        if self.runtime is not None:
            parts.append(f"runtime={self.runtime} min")
        if self.gpus:
            parts.append(f"{self.gpus} GPU{'s' if self.gpus != 1 else ''} on one node")
        return ", ".join(parts)


def parse_time_limit(text: str) -> float:
    """Slurm's time limit ("infinite", "UNLIMITED", "1-00:00:00", "2:00:00", "30:00", "45") in minutes."""
    text = text.strip()
    if text.lower() in ("infinite", "unlimited", "n/a", ""):
        return float("inf")
    days = 0
    if "-" in text:
        d, text = text.split("-", 1)
        days = int(d)
    fields = [int(v) for v in text.split(":")]
    if len(fields) == 3:
        hours, minutes, seconds = fields
    elif len(fields) == 2:
        hours, (minutes, seconds) = 0, fields
    else:
        hours, minutes, seconds = 0, fields[0], 0
    return days * 1440 + hours * 60 + minutes + seconds / 60


def parse_gres_gpus(text: str) -> int:
    """GPUs in a node's GRES ("gpu:2", "gpu:a100:8(S:0-1)", "gpu:a100:4,gpu:v100:2", "(null)")."""
    total = 0
    for item in re.split(r",(?![^(]*\))", text.strip()):
        item = re.sub(r"\(.*?\)", "", item).strip()
        if not item.startswith("gpu"):
            continue
        count = item.split(":")[-1]
        total += int(count) if count.isdigit() else 0
    return total


def parse_sinfo(text: str) -> tuple[dict[str, Partition], str | None]:
    """`sinfo -h -N -o "%P|%c|%m|%l|%G|%N"` -> partitions by name, and the default partition's name."""
    partitions: dict[str, Partition] = {}
    default = None
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        fields = line.split("|")
        if len(fields) != 6:
            raise InputError(f"sinfo output line {number} is not '{SINFO_FORMAT}': {line!r}; make it with: "
                             f"{' '.join(SINFO_CMD[:-1])} '{SINFO_FORMAT}'")
        name, cpus, mem, limit, gres, node = (f.strip() for f in fields)
        if name.endswith("*"):
            name = name[:-1]
            default = name
        part = partitions.setdefault(name, Partition(name, parse_time_limit(limit)))
        part.nodes.append(Node(node, int(cpus.rstrip("+")), int(mem.rstrip("+")), parse_gres_gpus(gres)))
    return partitions, default


def _resources(line: str) -> dict[str, str]:
    return dict(item.split("=", 1) for item in re.split(r",\s*", line) if "=" in item)


def parse_plan(text: str) -> list[Request]:
    """The jobs of a `snakemake -n` output, grouped by rule and request (local rules left out)."""
    requests: dict[tuple, Request] = {}
    blocks = re.split(r"\n(?=rule \S+:\n)", "\n" + text)
    for block in blocks:
        head = re.match(r"rule (\S+):\n", block)
        if not head:
            continue
        rule = head.group(1)
        if not re.search(r"^\s+output: ", block, re.M):
            continue  # a target rule such as `all`: no job is submitted for it
        threads = re.search(r"^\s+threads: (\d+)", block, re.M)
        res_line = re.search(r"^\s+resources: (.*)$", block, re.M)
        res = _resources(res_line.group(1)) if res_line else {}
        exp = re.search(r"^\s+wildcards: .*?\bexp=([^,\s]+)", block, re.M)

        def number(key, default=None):
            value = res.get(key)
            return int(float(value)) if value not in (None, "<TBD>") and re.fullmatch(r"[\d.]+", value) else default

        key = (rule, int(threads.group(1)) if threads else 1, number("mem_mb", 0), number("runtime"),
               number("gpu", 0) or number("gpus", 0), res.get("slurm_partition"))
        request = requests.setdefault(key, Request(*key))
        request.jobs += 1
        if exp:
            request.experiments.add(exp.group(1))
    return list(requests.values())


def misfit(request: Request, partitions: dict[str, Partition], default: str | None) -> str | None:
    """Why no node of the request's partition can run it, or None when one can."""
    name = request.partition or default
    if name is None:
        return "it names no slurm_partition and sinfo marks no default partition (set default-resources: " \
               "slurm_partition in the profile)"
    part = partitions.get(name)
    if part is None:
        return (f"partition {name!r} does not exist (sinfo lists {', '.join(sorted(partitions))}); set that rule's "
                "slurm_partition in the profile to one of them")
    reasons = []
    if request.runtime is not None and request.runtime > part.time_limit_min:
        reasons.append(f"runtime {request.runtime} min is over the partition's time limit "
                       f"{part.time_limit_min:g} min")
    fits = [n for n in part.nodes if n.cpus >= request.threads and n.mem_mb >= request.mem_mb and n.gpus >= request.gpus]
    if not fits:
        largest = (f"{max(n.cpus for n in part.nodes)} CPUs, {max(n.mem_mb for n in part.nodes)} MB, "
                   f"{max(n.gpus for n in part.nodes)} GPUs" if part.nodes else "no nodes")
        reasons.append(f"no node of partition {name!r} has {request.threads} CPUs, {request.mem_mb} MB and "
                       f"{request.gpus} GPUs at once (the most any of its nodes has: {largest})")
    return "; ".join(reasons) or None


def fix_text(request: Request) -> str:
    exps = ", ".join(sorted(request.experiments)) or "EXP"
    keys = "threads, mem_mb, runtime"
    text = (f"lower it in the experiment's resources block, e.g. a file passed as one more --configfile: "
            f"`experiments: {{{exps.split(', ')[0]}: {{resources: {{{request.rule}: {{...}}}}}}}}` ({keys}; "
            "docs/cluster.md), or send the rule to a partition that has such nodes (set-resources: "
            f"{request.rule}: slurm_partition in your profile)")
    if request.gpus > 1:
        text += f"; for GPUs, lower the stage's `gpus` (the learning rate follows the total batch)"
    return text


def check(requests: list[Request], partitions: dict[str, Partition], default: str | None) -> list[str]:
    problems = []
    for request in sorted(requests, key=lambda r: r.rule):
        why = misfit(request, partitions, default)
        if why:
            exps = f", experiment {', '.join(sorted(request.experiments))}" if request.experiments else ""
            problems.append(f"rule {request.rule} ({request.jobs} job{'s' if request.jobs != 1 else ''}{exps}) asks "
                            f"for {request.describe()} in partition {request.partition or default!r}: {why}. "
                            f"Such a job would pend for ever. Fix: {fix_text(request)}")
    return problems


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--plan", type=Path, help="saved output of `snakemake -n --cores 1000000 ...` (instead of running it)")
    p.add_argument("--sinfo", type=Path,
                   help=f"saved output of `{' '.join(SINFO_CMD[:-1])} '{SINFO_FORMAT}'` (default: run sinfo)")
    p.add_argument("snakemake_args", nargs=argparse.REMAINDER,
                   help="after `--`: the arguments of the real run (--profile, --configfile, targets)")


def _run(cmd: list[str], what: str) -> str:
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise InputError(f"{what} failed ({' '.join(cmd)}):\n{(proc.stdout + proc.stderr)[-3000:]}")
    return proc.stdout + proc.stderr


def run(args: argparse.Namespace) -> int:
    extra = [a for a in args.snakemake_args if a != "--"] if args.snakemake_args else []
    if args.plan:
        plan = args.plan.read_text()
    elif extra:
        snakemake = shutil.which("snakemake") or str(Path(sys.executable).parent / "snakemake")
        # A dry run caps each job's threads at its --cores (1 by default); the cluster does not.
        plan = _run([snakemake, "-n", *extra, "--cores", str(UNCAPPED_CORES)], "the dry run")
    else:
        raise InputError("give the real run's snakemake arguments after `--` (e.g. `ggn check-resources -- "
                         "--profile slurm --configfile config/my_data.yaml`) or --plan with a saved dry run")
    if args.sinfo:
        sinfo = args.sinfo.read_text()
    elif shutil.which("sinfo"):
        sinfo = _run(SINFO_CMD, "sinfo")
    else:
        raise InputError("sinfo is not on PATH: run this on the cluster's login node, or pass --sinfo with the "
                         f"output of `{' '.join(SINFO_CMD[:-1])} '{SINFO_FORMAT}'` saved there")
    requests = parse_plan(plan)
    if not requests:
        raise InputError("the dry run lists no job (nothing to do, or not a `snakemake -n` output); nothing checked")
    partitions, default = parse_sinfo(sinfo)
    problems = check(requests, partitions, default)
    for line in problems:
        print(line)
    jobs = sum(r.jobs for r in requests)
    if problems:
        print(f"{len(problems)} of {len(requests)} kinds of request ({jobs} jobs) fit no node of their partition")
        return 1
    print(f"every job fits a node of its partition: {jobs} jobs, {len(requests)} kinds of request, partitions "
          f"{', '.join(sorted({r.partition or default for r in requests}))}")
    return 0
