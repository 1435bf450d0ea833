"""The demo as a user runs it: wall time of a fresh `snakemake --cores N` of a config (default: the bundled demo,
`config/config.yaml`) in an empty folder, and the numbers its table must show, each beside its target:

- GGN − baseline, unseen mask AR@100: mean over seeds with its 95% interval (target: mean >= +3.0, lower bound > 0);
- PA network − control, pseudo-GT precision and top-20 candidate recall of unseen objects (lower bounds > 0);
- wall time (target: 20 minutes on 2 cores, the environment already installed).

    .venv/bin/python bench/bench_demo.py --work /tmp/demo_bench          # a fresh run, then the report
    .venv/bin/python bench/bench_demo.py --work /tmp/demo_bench --report-only   # the report of a finished run

Anything that trains varies by seed and machine: the intervals, not one seed, are what to read.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from ggn.table import gain_text

REPO = Path(__file__).resolve().parents[1]
TARGET_MINUTES = 20.0
TARGET_GAIN = 3.0


def run(work: Path, config: Path, cores: int) -> float:
    work.mkdir(parents=True, exist_ok=True)
    if any(work.iterdir()):
        sys.exit(f"{work} is not empty: a fresh run needs an empty folder (or --report-only)")
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}")
    t0 = time.perf_counter()
    with open(work.parent / f"{work.name}.log", "w") as log:
        proc = subprocess.run([str(Path(sys.executable).parent / "snakemake"), "--cores", str(cores),
                               "--snakefile", str(REPO / "workflow" / "Snakefile"), "--directory", str(work),
                               "--configfile", str(config)], stdout=log, stderr=subprocess.STDOUT, env=env)
    seconds = time.perf_counter() - t0
    if proc.returncode != 0:
        sys.exit(f"snakemake failed (exit {proc.returncode}); its log: {work.parent / f'{work.name}.log'}")
    return seconds


def report(work: Path, seconds: float | None, cores: int) -> int:
    rows = sorted((work / "results").glob("*/row.json"))
    if not rows:
        sys.exit(f"no results/*/row.json under {work}: run the demo first")
    failed = 0
    for path in rows:
        row = json.loads(path.read_text())
        print(f"{row['experiment']}: n = {row['n']} seeds ({row['seeds']}), {row.get('versions', '')} on "
              f"{row.get('machine', '?')}")
        print(f"  mask AR@100 baseline {row['baseline_mask_AR@100']} (sd {row.get('baseline_mask_AR@100_sd')}) -> "
              f"GGN {row['ggn_mask_AR@100']} (sd {row.get('ggn_mask_AR@100_sd')})")
        checks = [("GGN - baseline, mask AR@100", "gain_mask_AR@100", TARGET_GAIN),
                  ("GGN - baseline, box AR@100", "gain_box_AR@100", None),
                  ("PA - control, pseudo-GT precision", "quality_gain_pseudo_precision", 0.0),
                  ("PA - control, top-20 recall", "quality_gain_pseudo_recall@20", 0.0)]
        for label, key, target in checks:
            if key not in row:
                continue
            ok = ""
            if target is not None:
                low, mean = row.get(f"{key}_ci_low"), row.get(key)
                met = low is not None and low > 0 and mean is not None and mean >= target
                failed += not met
                ok = f"  target: mean >= {target:+.1f} and lower bound > 0: {'met' if met else 'NOT met'}"
            print(f"  {label:38s} {gain_text(row, key) or 'undefined'}{ok}")
    if seconds is not None:
        met = seconds <= TARGET_MINUTES * 60
        failed += not met
        print(f"wall time {seconds / 60:.1f} min on {cores} cores; target {TARGET_MINUTES:.0f} min: "
              f"{'met' if met else 'NOT met'}")
    return 1 if failed else 0


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--work", type=Path, required=True, help="empty folder for the run (results/ and .snakemake/)")
    p.add_argument("--config", type=Path, default=REPO / "config" / "config.yaml")
    p.add_argument("--cores", type=int, default=2)
    p.add_argument("--report-only", action="store_true", help="report a finished run in --work")
    args = p.parse_args()
    seconds = None if args.report_only else run(args.work, args.config.resolve(), args.cores)
    return report(args.work, seconds, args.cores)


if __name__ == "__main__":
    sys.exit(main())
