"""`ggn plot`: AR@k curves of every detector variant (box and mask) and histograms of candidate scores and gt_iou.

Curves read `ggn evaluate`'s metrics (AR@10 ... AR@1500, unseen classes); histograms read extraction shards
(every candidate, before merge's filters), one series per pseudo-GT source (the PA network, the control).
"""
from __future__ import annotations

import argparse
import logging
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from ggn.io import InputError, atomic_open, read_json

log = logging.getLogger(__name__)

COLOURS = {"baseline": "#4c72b0", "control": "#8c8c8c", "ggn": "#dd8452"}
DPI = 100
SIZE_INCHES = (10.0, 4.0)


def _named(items: list[str] | None, flag: str) -> list[tuple[str, list[Path]]]:
    """NAME=PATH [PATH ...] groups: `--metrics baseline=a.json ggn=b.json`, `--shards ggn=s0 s1 control=c0`."""
    groups: list[tuple[str, list[Path]]] = []
    for item in items or []:
        name, sep, path = item.partition("=")
        if sep:
            if not name or not path:
                raise InputError(f"{flag} {item!r}: use NAME=PATH")
            groups.append((name, [Path(path)]))
        elif groups:
            groups[-1][1].append(Path(item))
        else:
            raise InputError(f"{flag} {item!r}: the first item must be NAME=PATH (e.g. ggn=results/x/seed0/eval/ggn.json)")
    return groups


def _one_curve(name: str, path: Path) -> dict[str, tuple[list[int], list[float]]]:
    data = read_json(path, f"{name} metrics")
    out = {}
    for iou_type in ("bbox", "segm"):
        values = data.get(iou_type) if isinstance(data, dict) else None
        if not isinstance(values, dict):
            raise InputError(f"{path} has no '{iou_type}' metrics; it must be the output of `ggn evaluate`")
        ks = sorted(int(k[3:]) for k in values if k.startswith("AR@") and k[3:].isdigit())
        if not ks:
            raise InputError(f"{path} has no AR@k values under '{iou_type}'; it must be `ggn evaluate` output")
        out[iou_type] = (ks, [100.0 * float(values[f"AR@{k}"]) for k in ks])
    return out


def ar_curves(metrics: list[tuple[str, list[Path]]]) -> dict[str, dict[str, tuple[list[int], np.ndarray, np.ndarray | None, int]]]:
    """{variant: {"bbox"|"segm": (ks, mean AR in percent, 95% t half-width or None, n)}} from metrics files, one
    per seed for each variant (the band is the interval of the mean over seeds; none with one seed)."""
    from ggn.stats import t_quantile

    curves = {}
    for name, paths in metrics:
        runs = [_one_curve(name, Path(p)) for p in paths]
        curves[name] = {}
        for iou_type in ("bbox", "segm"):
            ks = runs[0][iou_type][0]
            for path, run in zip(paths, runs):
                if run[iou_type][0] != ks:
                    raise InputError(f"{path}: AR@k at k = {run[iou_type][0]}, but {paths[0]} has k = {ks}; "
                                     "evaluate every seed with the same settings")
            values = np.array([run[iou_type][1] for run in runs], dtype=float)
            mean = values.mean(axis=0)
            half = None
            if len(runs) > 1:
                half = t_quantile(len(runs) - 1) * values.std(axis=0, ddof=1) / np.sqrt(len(runs))
            curves[name][iou_type] = (ks, mean, half, len(runs))
    return curves


def plot_curves(metrics: list[tuple[str, list[Path]]], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    curves = ar_curves(metrics)
    fig, axes = plt.subplots(1, 2, figsize=SIZE_INCHES)
    for ax, (iou_type, label) in zip(axes, (("bbox", "box"), ("segm", "mask"))):
        for name, by_type in curves.items():
            ks, ar, half, n = by_type[iou_type]
            colour = COLOURS.get(name)
            ax.plot(ks, ar, marker="o", markersize=3, label=f"{name} (mean of {n})" if n > 1 else name,
                    color=colour)
            if half is not None:
                ax.fill_between(ks, ar - half, ar + half, color=colour, alpha=0.2, linewidth=0)
        ax.set_xscale("log")
        ax.set_xlabel("k (detections per image)")
        ax.set_ylabel(f"{label} AR@k on unseen classes (%)")
        ax.set_title(f"{label} AR@k" + (" (band: 95% interval of the mean over seeds)"
                                         if any(c[iou_type][3] > 1 for c in curves.values()) else ""),
                     fontsize=9)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    _save(fig, out)
    plt.close(fig)


def candidate_values(shards: list[Path]) -> tuple[np.ndarray, np.ndarray]:
    """(scores, gt_iou without nulls) of every candidate in the shards."""
    scores, ious = [], []
    for path in shards:
        if not Path(path).is_file():
            raise InputError(f"extraction shard {path} does not exist; run `ggn extract` first")
        table = pq.read_table(path, columns=["score", "gt_iou"])
        scores.append(table["score"].to_numpy(zero_copy_only=False))
        iou = table["gt_iou"].drop_null().to_numpy(zero_copy_only=False)
        ious.append(iou)
    return (np.concatenate(scores).astype(float) if scores else np.zeros(0),
            np.concatenate(ious).astype(float) if ious else np.zeros(0))


def plot_histograms(sources: list[tuple[str, list[Path]]], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    values = {name: candidate_values(paths) for name, paths in sources}
    fig, axes = plt.subplots(1, 2, figsize=SIZE_INCHES)
    all_scores = np.concatenate([v[0] for v in values.values()]) if values else np.zeros(0)
    lo, hi = (float(all_scores.min()), float(all_scores.max())) if all_scores.size else (0.0, 1.0)
    score_bins = np.linspace(lo, hi if hi > lo else lo + 1.0, 41)
    for name, (scores, ious) in values.items():
        colour = COLOURS.get(name)
        axes[0].hist(scores, bins=score_bins, alpha=0.55, label=f"{name} ({len(scores)})", color=colour)
        axes[1].hist(ious, bins=np.linspace(0, 1, 41), alpha=0.55, label=f"{name} ({len(ious)})", color=colour)
    axes[0].set_xlabel("candidate score (grouping's ranking score)")
    axes[1].set_xlabel("gt_iou (best IoU with a seen-class annotation)")
    axes[1].set_yscale("log")  # most candidates touch no annotated object (gt_iou 0)
    axes[1].axvline(0.5, color="k", linestyle="--", linewidth=1)
    axes[1].text(0.51, 0.95, "merge keeps < 0.5", transform=axes[1].get_xaxis_transform(), fontsize=8, va="top")
    for ax, title in zip(axes, ("candidate scores", "candidate gt_iou")):
        ax.set_ylabel("candidates")
        ax.set_title(title)
        ax.legend(fontsize=8)
        ax.grid(True, alpha=0.3)
    fig.tight_layout()
    _save(fig, out)
    plt.close(fig)


def _save(fig, path: Path) -> None:
    with atomic_open(path, "wb") as f:
        fig.savefig(f, format="png", dpi=DPI)
    log.info("wrote %s", path)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--metrics", nargs="+", metavar="NAME=PATH [PATH ...]",
                        help="`ggn evaluate` metrics per variant, one file per seed, e.g. baseline=seed0/eval/"
                             "baseline.json seed1/eval/baseline.json ggn=seed0/eval/ggn.json seed1/eval/ggn.json; "
                             "several seeds draw their mean with a band (95%% interval of the mean)")
    parser.add_argument("--curves", type=Path, help="AR@k curves PNG to write (needs --metrics)")
    parser.add_argument("--shards", nargs="+", metavar="NAME=SHARD [SHARD ...]",
                        help="extraction shards per pseudo-GT source, e.g. ggn=s/0-of-2.parquet s/1-of-2.parquet "
                             "control=c/0-of-2.parquet ...")
    parser.add_argument("--histograms", type=Path, help="score and gt_iou histograms PNG to write (needs --shards)")


def run(args: argparse.Namespace) -> int:
    if args.curves is None and args.histograms is None:
        raise InputError("nothing to plot: give --curves (with --metrics) and/or --histograms (with --shards)")
    if args.curves is not None:
        metrics = _named(args.metrics, "--metrics")  # NAME=SEED0.json SEED1.json ...: one file per seed
        if not metrics:
            raise InputError("--curves needs --metrics NAME=PATH ...")
        plot_curves(metrics, args.curves)
    if args.histograms is not None:
        sources = _named(args.shards, "--shards")
        if not sources:
            raise InputError("--histograms needs --shards NAME=SHARD ...")
        plot_histograms(sources, args.histograms)
    return 0
