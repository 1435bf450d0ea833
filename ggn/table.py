"""The results table: one row per experiment (baseline vs GGN recall on unseen classes, the no-learning control
beside them when the row has one, and the pseudo-GT quality of `ggn eval-pseudo`), as CSV and Markdown."""
from __future__ import annotations

import csv
import io
import logging
import re
from pathlib import Path

from ggn.io import InputError, atomic_write_json, atomic_write_text, read_json
from ggn.stats import paired_difference, summarize

log = logging.getLogger(__name__)

# (column suffix, iou type, metric name); AR values are reported in percent as in the paper.
METRICS = [
    ("box_AR@10", "bbox", "AR@10"),
    ("box_AR@100", "bbox", "AR@100"),
    ("mask_AR@10", "segm", "AR@10"),
    ("mask_AR@100", "segm", "AR@100"),
]
VARIANTS = ("baseline", "control", "ggn")
# (column suffix, path in `ggn eval-pseudo`'s JSON) of the pseudo-GT quality columns, in percent.
QUALITY = [
    ("pseudo_recall@1", ("recall", "top-1")),
    ("pseudo_recall@3", ("recall", "top-3")),
    ("pseudo_recall@20", ("recall", "top-20")),
    ("candidate_box_AR", ("candidate_AR", "bbox")),
    ("candidate_mask_AR", ("candidate_AR", "segm")),
    ("pseudo_precision", ("pseudo_gt", "precision")),
]


def add_arguments(parser) -> None:
    sub = parser.add_subparsers(dest="mode", required=True, metavar="MODE")
    row = sub.add_parser("row", help="one experiment's row from its metrics files (one per seed and variant)")
    row.add_argument("--experiment", required=True)
    row.add_argument("--seeds", type=int, nargs="+", default=None,
                     help="the replicate seeds, in the order of every per-seed list below (default 0 .. n-1)")
    row.add_argument("--baseline", type=Path, nargs="+", help="metrics JSON of the baseline detector, one per seed "
                                                               "(a row may lack it: the ImageNet rows have a GGN "
                                                               "detector only)")
    row.add_argument("--ggn", type=Path, nargs="+", help="metrics JSON of the detector trained with pseudo-GT, one "
                                                          "per seed")
    row.add_argument("--control", type=Path, nargs="+", help="metrics JSON of the control detector (pseudo-GT "
                                                              "grouped from the image gradient, no learned "
                                                              "affinity), one per seed")
    row.add_argument("--authors", type=Path, nargs="+", help="metrics JSON of the authors' released detector "
                     "(evaluation only, `reference.detector`): one file, shown beside ours")
    row.add_argument("--ggn-quality", type=Path, nargs="+", help="`ggn eval-pseudo` JSON of the PA network's "
                                                                  "pseudo-GT, one per seed")
    row.add_argument("--control-quality", type=Path, nargs="+",
                     help="`ggn eval-pseudo` JSON of the control's pseudo-GT: one per seed, or one for all (the "
                          "image gradient depends on no seed)")
    row.add_argument("--pa", type=Path, nargs="+", default=None,
                     help="metrics JSON of `ggn eval-pa`, one per seed or one for all (optional)")
    row.add_argument("--checkpoints", type=Path, nargs="+", default=None,
                     help="final checkpoints whose recorded versions and machine the row names (optional)")
    row.add_argument("--training", default="", help="what the detector was trained on")
    row.add_argument("--evaluation", default="", help="what it was evaluated on")
    row.add_argument("--top-k", type=int, default=None, help="pseudo-GT masks kept per image")
    row.add_argument("--paper-baseline", type=float, default=None, help="the paper's baseline AR (--paper-metric)")
    row.add_argument("--paper-ggn", type=float, default=None, help="the paper's GGN AR (--paper-metric)")
    row.add_argument("--paper-metric", choices=[c for c, _, _ in METRICS], default="mask_AR@100",
                     help="which of our columns the paper's numbers compare with: mask_AR@100 for the Mask R-CNN "
                          "rows, box_AR@100 for the OLN row (OLN is a box detector in the paper)")
    row.add_argument("--detector", default="", help="detector kind shown in the table (maskrcnn, oln)")
    row.add_argument("--ranking", default="", help="how pseudo-GT candidates were ranked (grouping, oln)")
    row.add_argument("--out", required=True, type=Path)
    gather = sub.add_parser("gather", help="gather rows into the table")
    gather.add_argument("--rows", nargs="+", required=True, type=Path)
    gather.add_argument("--csv", required=True, type=Path)
    gather.add_argument("--md", required=True, type=Path)
    gather.add_argument("--html", type=Path, help="also the Markdown tables as one HTML page (for `snakemake --report`)")


def _metric(metrics: dict, path: Path, iou_type: str, name: str) -> float | None:
    """The metric in percent; None when `ggn evaluate` wrote -1 (undefined: no unseen ground truth to recall)."""
    try:
        value = float(metrics[iou_type][name])
    except (KeyError, TypeError, ValueError):
        raise InputError(f"{path} has no {iou_type} {name}; it must be the output of `ggn evaluate`") from None
    return None if value < 0 or value != value else round(100.0 * value, 2)


def _paths(value, n: int | None, flag: str, shared_ok: bool = False) -> list[Path] | None:
    """A per-seed list of files (a single path is a list of one); one file for all seeds where `shared_ok`."""
    if value is None:
        return None
    paths = [Path(value)] if isinstance(value, (str, Path)) else [Path(p) for p in value]
    if n is not None and len(paths) != n and not (shared_ok and len(paths) == 1):
        raise InputError(f"{flag}: {len(paths)} files for {n} seeds; give one per seed, in the order of --seeds"
                         + (" (or one for all)" if shared_ok else ""))
    return paths


def _r(value: float | None) -> float | None:
    return None if value is None else round(value, 2)


def _put_stats(row: dict, column: str, values: list[float | None], seeds: list[int]) -> None:
    """`column` = mean, `column_sd`, and one `column_seed{s}` per seed (n is the row's `n`); a single value (one
    seed, or a file shared by every seed) has no per-seed columns."""
    summary = summarize(values)
    row[column] = _r(summary.mean)
    row[f"{column}_sd"] = _r(summary.sd)
    if len(values) > 1:
        for seed, value in zip(seeds, values):
            row[f"{column}_seed{seed}"] = value


def _put_difference(row: dict, column: str, a: list[float | None], b: list[float | None]) -> None:
    """`column` = mean paired difference a - b, `column_ci_low` / `column_ci_high` its 95% t interval (None for
    n = 1: no interval is made up)."""
    d = paired_difference(a, b)
    row[column] = _r(d.mean)
    row[f"{column}_ci_low"] = _r(d.low)
    row[f"{column}_ci_high"] = _r(d.high)


def make_row(experiment: str, baseline, ggn, pa=None, training: str = "", evaluation: str = "",
             top_k: int | None = None, paper_baseline: float | None = None, paper_ggn: float | None = None,
             paper_metric: str = "mask_AR@100", detector: str = "", ranking: str = "", control=None,
             ggn_quality=None, control_quality=None, seeds: list[int] | None = None, checkpoints=None,
             authors=None) -> dict:
    """One experiment's row. Every metrics argument is a file or a list of files, one per seed (paired by
    position across variants); each metric becomes its mean over seeds, its standard deviation and the per-seed
    values, and each gain the mean paired difference with its 95% interval."""
    if paper_metric not in [c for c, _, _ in METRICS]:
        raise InputError(f"paper metric {paper_metric!r} is not one of {[c for c, _, _ in METRICS]}")
    if baseline is None and ggn is None:
        raise InputError(f"row {experiment}: give --baseline and/or --ggn metrics")
    n = len(seeds) if seeds else len(_paths(baseline if baseline is not None else ggn, None, ""))
    seeds = list(seeds) if seeds else list(range(n))
    if len(set(seeds)) != len(seeds):
        raise InputError(f"row {experiment}: --seeds {seeds} names a seed twice")
    files = {"baseline": _paths(baseline, n, "--baseline"), "ggn": _paths(ggn, n, "--ggn"),
             "control": _paths(control, n, "--control")}
    row = {"experiment": experiment, "training": training, "evaluation": evaluation, "detector": detector,
           "ranking": ranking, "top_k": top_k, "n": n, "seeds": " ".join(map(str, seeds))}
    values: dict[str, list[float | None]] = {}
    for variant in ("baseline", "ggn", "control"):
        paths = files[variant]
        if variant == "control" and paths is None:
            continue  # rows without a control keep the columns they always had
        per_seed = [read_json(p, "metrics file") for p in paths] if paths is not None else None
        for column, iou_type, name in METRICS:
            key = f"{variant}_{column}"
            if per_seed is None:
                row[key] = None
                continue
            values[key] = [_metric(m, p, iou_type, name) for m, p in zip(per_seed, paths)]
            _put_stats(row, key, values[key], seeds)
            if row[key] is None:
                row.setdefault("undefined", []).append(key)
    for column, _, _ in METRICS:
        if f"baseline_{column}" in values and f"ggn_{column}" in values:
            _put_difference(row, f"gain_{column}", values[f"ggn_{column}"], values[f"baseline_{column}"])
        else:
            row[f"gain_{column}"] = None
        if f"control_{column}" in values and f"ggn_{column}" in values:
            _put_difference(row, f"gain_vs_control_{column}", values[f"ggn_{column}"], values[f"control_{column}"])
    authors_paths = _paths(authors, 1, "--authors")  # evaluated once: no seed changes a released network
    if authors_paths is not None:
        metrics = read_json(authors_paths[0], "metrics file")
        for column, iou_type, name in METRICS:  # a box-only detector (OLN-Box) has no segm metrics
            row[f"authors_{column}"] = (_metric(metrics, authors_paths[0], iou_type, name)
                                        if iou_type in metrics else None)
    if row.get("undefined"):
        log.warning("row %s: %s undefined (the evaluation set has no unseen object of that kind)", experiment,
                    ", ".join(row["undefined"]))
    row["paper_metric"] = paper_metric
    row[f"paper_baseline_{paper_metric}"] = paper_baseline
    row[f"paper_ggn_{paper_metric}"] = paper_ggn
    quality: dict[str, list[dict]] = {}
    for variant, given in (("control", control_quality), ("ggn", ggn_quality)):
        paths = _paths(given, n, f"--{variant}-quality", shared_ok=(variant == "control"))
        if paths is None:
            continue
        quality[variant] = [quality_columns(variant, p) for p in paths]
        for column in quality[variant][0]:
            series = [q[column] for q in quality[variant]]
            _put_stats(row, column, series, seeds)
    if "control" in quality and "ggn" in quality:  # PA network minus image gradient, paired by seed
        for column, _ in QUALITY:
            _put_difference(row, f"quality_gain_{column}", [q[f"ggn_{column}"] for q in quality["ggn"]],
                            [q[f"control_{column}"] for q in quality["control"]])
    pa_paths = _paths(pa, n, "--pa", shared_ok=True)
    if pa_paths is not None:
        boundary = [read_json(p, "PA metrics file").get("boundary", {}) for p in pa_paths]
        for column, key in (("pa_boundary_F", "pa"), ("gradient_boundary_F", "gradient_baseline")):
            scores = [b.get(key, {}).get("f") for b in boundary]
            scores = [None if f is None else round(100.0 * f, 2) for f in scores]
            _put_stats(row, column, scores, seeds)
    row.update(_provenance(checkpoints))
    return row


def _provenance(checkpoints) -> dict:
    """`versions` and `machine` columns: torch / torchvision / numpy, and the CPU or GPU model, as recorded by the
    trainings that produced the row (their final checkpoints); each distinct value once."""
    if not checkpoints:
        return {}
    from ggn.io import load_checkpoint

    versions, machines = [], []
    for path in checkpoints:
        record = load_checkpoint(path, mmap=True).get("provenance")  # the tensors are never read
        if not isinstance(record, dict):
            text, machine = "not recorded", f"not recorded ({Path(path).name})"
        else:
            text = (f"torch {record.get('torch')}, torchvision {record.get('torchvision')}, "
                    f"numpy {record.get('numpy')}")
            machine = record.get("gpu") or f"CPU: {record.get('cpu')} ({record.get('cpu_count')} cores)"
        versions += [text] if text not in versions else []
        machines += [machine] if machine not in machines else []
    return {"versions": "; ".join(versions), "machine": "; ".join(machines)}


def quality_columns(variant: str, path: Path) -> dict:
    """`{variant}_pseudo_recall@1` ... `{variant}_pseudo_precision`, in percent, from an eval-pseudo JSON."""
    quality = read_json(path, "pseudo-GT quality file")
    columns = {}
    for column, (group, key) in QUALITY:
        if not isinstance(quality, dict) or key not in (quality.get(group) or {}):
            if group == "pseudo_gt":
                columns[f"{variant}_{column}"] = None
                continue
            raise InputError(f"{path} has no {group} {key}; it must be the output of `ggn eval-pseudo`")
        value = quality[group][key]
        columns[f"{variant}_{column}"] = None if value is None else round(100.0 * float(value), 2)
    return columns


def _fmt(v) -> str:
    return "" if v is None else (f"{v:.1f}" if isinstance(v, float) else str(v))


def _with_sd(r: dict, key: str, missing: str = "–") -> str:
    """`mean ± sd` of a metric over seeds (the mean alone with one seed); `missing` when there is none."""
    if key in r.get("undefined", ()):
        return "undef."
    mean, sd = r.get(key), r.get(f"{key}_sd")
    if mean is None:
        return missing
    return f"{mean:.1f} ± {sd:.1f}" if sd is not None else f"{mean:.1f}"


def gain_text(r: dict, column: str) -> str:
    """A gain as a reader needs it: the mean paired difference with its 95% interval, and whether the interval
    excludes 0; with one seed, the single difference and n = 1 (no interval)."""
    mean = r.get(column)
    if mean is None:
        return ""
    low, high = r.get(f"{column}_ci_low"), r.get(f"{column}_ci_high")
    if low is None or high is None:
        return f"{mean:+.1f} (n = 1, no interval)" if r.get("n", 1) == 1 else f"{mean:+.1f} (no interval)"
    text = f"{mean:+.1f} (95% CI {low:+.1f} to {high:+.1f})"
    if low <= 0 <= high:
        text += ", not distinguishable from 0"
    return text


def render_markdown(rows: list[dict]) -> str:
    def text(v):  # a `|` in a name would end the cell
        return str(v).replace("|", "\\|")

    with_control = any("control_mask_AR@100" in r for r in rows)
    header = ["experiment", "training", "evaluation", "detector", "top-k", "seeds (n)",
              "box AR@10", "box AR@100", "mask AR@10", "mask AR@100", "gain (mask AR@100), GGN − baseline",
              "paper (its metric)"]
    if with_control:  # baseline → control → GGN: what grouping the image adds, then what learning the affinity adds
        header[6:10] = [f"{h} (baseline → control → GGN)" for h in header[6:10]]
        header.insert(11, "gain (mask AR@100), GGN − control")
    with_authors = any(r.get("authors_box_AR@100") is not None for r in rows)
    if with_authors:
        header.insert(len(header) - 1, "authors' model, our evaluation (box / mask AR@100)")
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in rows:
        def pair(c):
            variants = ("baseline", "control", "ggn") if with_control else ("baseline", "ggn")
            return " → ".join(_with_sd(r, f"{v}_{c}") for v in variants)

        metric = r.get("paper_metric", "mask_AR@100")
        base, ggn = r.get(f"paper_baseline_{metric}"), r.get(f"paper_ggn_{metric}")
        paper = ""
        if base is not None or ggn is not None:
            paper = f"{_fmt(base) or '–'} → {_fmt(ggn) or '–'} ({metric.replace('_', ' ')})"
        detector = {"maskrcnn": "Mask R-CNN", "oln": "OLN"}.get(r.get("detector", ""), r.get("detector", ""))
        if r.get("ranking") == "oln":
            detector += ", Pseudo-OLN pseudo-GT"
        gain = gain_text(r, "gain_mask_AR@100")
        if not gain and {"baseline_mask_AR@100", "ggn_mask_AR@100"} & set(r.get("undefined", ())):
            gain = "undef."
        seeds = f"{r.get('seeds', '0')} ({r.get('n', 1)})"
        cells = [text(r["experiment"]), text(r["training"]), text(r["evaluation"]), text(detector),
                 _fmt(r["top_k"]), seeds, pair("box_AR@10"), pair("box_AR@100"), pair("mask_AR@10"),
                 pair("mask_AR@100"), gain, paper]
        if with_control:
            cells.insert(11, gain_text(r, "gain_vs_control_mask_AR@100"))
        if with_authors:
            cells.insert(len(cells) - 1, f"{_fmt(r.get('authors_box_AR@100')) or '–'} / "
                                         f"{_fmt(r.get('authors_mask_AR@100')) or '–'}")
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    lines.append("AR in percent on unseen classes only (seen-class ground truth ignored), baseline → GGN "
                 "(detector trained on seen GT → seen GT + pseudo-GT), as the mean ± standard deviation over the "
                 "seeds (each seed trains every network of the row again; GGN's seed s uses the PA network of "
                 "seed s). A gain is the mean over seeds of the paired difference GGN − baseline with its 95% "
                 "confidence interval (Student t, n − 1 degrees of freedom); where the interval contains 0, the "
                 "seeds do not show that the two differ. The paper's numbers are those of the "
                 "metric named beside them: mask AR@100 for the Mask R-CNN rows, box AR@100 for OLN, a box "
                 "detector there (ours keeps a mask head so that both are reported)."
                 + (" undef.: undefined, the evaluation set has no unseen object of that kind (COCOeval's -1)."
                    if any(r.get("undefined") for r in rows) else ""))
    if with_authors:
        lines.append("")
        lines.append("Authors' model: the GGN detector the authors released (Generic-Grouping model zoo, CC-BY-NC 4.0), "
                     "converted by `ggn import-reference` and evaluated once by this pipeline's `ggn predict` and "
                     "`ggn evaluate` (docs/parity_ladder.md, rung a).")
    if with_control:
        lines.append("")
        lines.append("Control: the same grouping, merge and detector, with the affinity read off the image's colour "
                     "gradient instead of predicted by the PA network (no learning).")
    machines = sorted({f"{r['experiment']}: {r['versions']} on {r['machine']}" for r in rows if r.get("machine")})
    if machines:
        lines += ["", "Produced with " + "; ".join(machines) + "."]
    lines += render_quality(rows)
    return "\n".join(lines) + "\n"


def render_quality(rows: list[dict]) -> list[str]:
    """The pseudo-GT quality table (one line per experiment and pseudo-GT source, then the PA network's lead over
    the control with its interval), empty without quality columns."""
    sources = [(r, v) for r in rows for v in ("control", "ggn") if f"{v}_pseudo_recall@1" in r]
    if not sources:
        return []
    names = ["recall top-1", "top-3", "top-20", "candidate AR box", "candidate AR mask", "pseudo-GT precision"]
    lines = ["", "Pseudo-GT quality on the mined training images (`ggn eval-pseudo`, unseen classes, percent, mean "
             "± standard deviation over seeds):", "",
             "| experiment | affinity | " + " | ".join(names) + " |", "|" + "---|" * 8]
    for r, v in sources:
        cells = [str(r["experiment"]).replace("|", "\\|"),
                 {"control": "image gradient (control)", "ggn": "PA network (GGN)"}[v]]
        cells += [_with_sd(r, f"{v}_{c}", missing="") for c, _ in QUALITY]
        lines.append("| " + " | ".join(cells) + " |")
        if v == "ggn" and f"quality_gain_{QUALITY[0][0]}" in r:
            cells = [str(r["experiment"]).replace("|", "\\|"), "PA network − control"]
            cells += [gain_text(r, f"quality_gain_{c}") for c, _ in QUALITY]
            lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "Recall: unseen objects covered at mask IoU 0.5 by an image's top-k candidates; candidate AR: AR "
              "(IoU 0.50:0.95) of the whole candidate list; precision: kept pseudo-GT masks matching an unseen object "
              "at IoU 0.5. The image gradient depends on no seed: its pseudo-GT is made once, and the PA network's "
              "lead is the mean of its per-seed differences from it, with a 95% t interval."]
    return lines


def render_html(markdown: str) -> str:
    """The Markdown of `render_markdown` (pipe tables and paragraphs) as a small standalone HTML page."""
    import html

    def cells(line: str) -> list[str]:
        return [html.escape(c.strip().replace("\\|", "|")).replace("`", "")
                for c in re.split(r"(?<!\\)\|", line.strip().strip("|"))]

    out = ["<!DOCTYPE html>", "<html><head><meta charset='utf-8'><title>GGN results</title><style>",
           "body{font-family:sans-serif;font-size:14px;margin:1em} table{border-collapse:collapse;margin:1em 0}",
           "td,th{border:1px solid #bbb;padding:3px 8px;text-align:left} th{background:#eee}</style></head><body>"]
    lines = markdown.splitlines()
    i = 0
    while i < len(lines):
        line = lines[i]
        if line.startswith("|") and i + 1 < len(lines) and lines[i + 1].startswith("|---"):
            out.append("<table><tr>" + "".join(f"<th>{c}</th>" for c in cells(line)) + "</tr>")
            i += 2
            while i < len(lines) and lines[i].startswith("|"):
                out.append("<tr>" + "".join(f"<td>{c}</td>" for c in cells(lines[i])) + "</tr>")
                i += 1
            out.append("</table>")
            continue
        if line.strip():
            out.append(f"<p>{html.escape(line).replace('`', '')}</p>")
        i += 1
    out.append("</body></html>")
    return "\n".join(out) + "\n"


def read_row(path: Path) -> dict:
    """A row JSON of `ggn table row`; another file in its place (a metrics file of `ggn evaluate`, a quality file
    of `ggn eval-pseudo`) is refused, saying what it is."""
    row = read_json(path, "table row")
    needed = ["experiment", "n"] + [f"gain_{c}" for c, _, _ in METRICS]
    missing = [k for k in needed if not isinstance(row, dict) or k not in row]
    if missing:
        keys = list(row)[:6] if isinstance(row, dict) else []
        what = ("a metrics file of `ggn evaluate`" if {"bbox", "segm"} & set(keys) else
                "a pseudo-GT quality file of `ggn eval-pseudo`" if "recall" in keys else
                f"not a table row (its keys: {', '.join(map(str, keys)) or type(row).__name__})")
        raise InputError(f"--rows {path} is {what}, not a row of `ggn table row` (it lacks {', '.join(missing[:3])}"
                         f"{', ...' if len(missing) > 3 else ''}); pass the row JSON that `ggn table row --out` "
                         "wrote, or make one from the metrics files with `ggn table row`")
    return row


def gather(rows: list[Path], csv_path: Path, md_path: Path, html_path: Path | None = None) -> list[dict]:
    table = [read_row(p) for p in rows]
    columns: list[str] = []
    for r in table:
        columns += [c for c in r if c not in columns]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows(table)
    atomic_write_text(csv_path, buf.getvalue())
    markdown = render_markdown(table)
    atomic_write_text(md_path, markdown)
    if html_path is not None:
        atomic_write_text(html_path, render_html(markdown))
    log.info("wrote %d rows to %s and %s", len(table), csv_path, md_path)
    return table


def run(args) -> None:
    if args.mode == "row":
        row = make_row(args.experiment, args.baseline, args.ggn, args.pa, args.training, args.evaluation,
                       args.top_k, args.paper_baseline, args.paper_ggn, args.paper_metric, args.detector,
                       args.ranking, args.control, args.ggn_quality, args.control_quality, args.seeds,
                       args.checkpoints, authors=args.authors)
        atomic_write_json(args.out, row, indent=2)
        log.info("row %s (n = %d): mask AR@100 %s -> %s, gain %s (%s)", args.experiment, row["n"],
                 row["baseline_mask_AR@100"], row["ggn_mask_AR@100"], gain_text(row, "gain_mask_AR@100") or "-",
                 args.out)
    else:
        gather(args.rows, args.csv, args.md, args.html)
