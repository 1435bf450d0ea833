"""The results table: one row per experiment (baseline vs GGN recall on unseen classes, the no-learning control
beside them when the row has one, and the pseudo-GT quality of `ggn eval-pseudo`), as CSV and Markdown."""
from __future__ import annotations

import csv
import io
import logging
import re
from pathlib import Path

from ggn.io import InputError, atomic_write_json, atomic_write_text, read_json

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
    row = sub.add_parser("row", help="one experiment's row from its two metrics files")
    row.add_argument("--experiment", required=True)
    row.add_argument("--baseline", type=Path, help="metrics JSON of the baseline detector (a row may lack it: the "
                                                    "ImageNet rows have a GGN detector only)")
    row.add_argument("--ggn", type=Path, help="metrics JSON of the detector trained with pseudo-GT")
    row.add_argument("--control", type=Path, help="metrics JSON of the control detector (pseudo-GT grouped from the "
                                                   "image gradient, no learned affinity)")
    row.add_argument("--ggn-quality", type=Path, help="`ggn eval-pseudo` JSON of the PA network's pseudo-GT")
    row.add_argument("--control-quality", type=Path, help="`ggn eval-pseudo` JSON of the control's pseudo-GT")
    row.add_argument("--pa", type=Path, default=None, help="metrics JSON of `ggn eval-pa` (optional)")
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


def make_row(experiment: str, baseline: Path | None, ggn: Path | None, pa: Path | None = None, training: str = "",
             evaluation: str = "", top_k: int | None = None, paper_baseline: float | None = None,
             paper_ggn: float | None = None, paper_metric: str = "mask_AR@100", detector: str = "",
             ranking: str = "", control: Path | None = None, ggn_quality: Path | None = None,
             control_quality: Path | None = None) -> dict:
    if paper_metric not in [c for c, _, _ in METRICS]:
        raise InputError(f"paper metric {paper_metric!r} is not one of {[c for c, _, _ in METRICS]}")
    row = {"experiment": experiment, "training": training, "evaluation": evaluation, "detector": detector,
           "ranking": ranking, "top_k": top_k}
    if baseline is None and ggn is None:
        raise InputError(f"row {experiment}: give --baseline and/or --ggn metrics")
    for variant, path in (("baseline", baseline), ("ggn", ggn), ("control", control)):
        if variant == "control" and path is None:
            continue  # rows without a control keep the columns they always had
        metrics = read_json(path, "metrics file") if path is not None else None
        for column, iou_type, name in METRICS:
            row[f"{variant}_{column}"] = None if path is None else _metric(metrics, path, iou_type, name)
            if path is not None and row[f"{variant}_{column}"] is None:
                row.setdefault("undefined", []).append(f"{variant}_{column}")
    row["gain_mask_AR@100"] = (None if row["baseline_mask_AR@100"] is None or row["ggn_mask_AR@100"] is None
                               else round(row["ggn_mask_AR@100"] - row["baseline_mask_AR@100"], 2))
    if row.get("undefined"):
        log.warning("row %s: %s undefined (the evaluation set has no unseen object of that kind)", experiment,
                    ", ".join(row["undefined"]))
    row["paper_metric"] = paper_metric
    row[f"paper_baseline_{paper_metric}"] = paper_baseline
    row[f"paper_ggn_{paper_metric}"] = paper_ggn
    for variant, path in (("control", control_quality), ("ggn", ggn_quality)):
        if path is not None:
            row.update(quality_columns(variant, path))
    if pa is not None:
        pa_metrics = read_json(pa, "PA metrics file")
        boundary = pa_metrics.get("boundary", {})
        for column, key in (("pa_boundary_F", "pa"), ("gradient_boundary_F", "gradient_baseline")):
            f_score = boundary.get(key, {}).get("f")
            row[column] = round(100.0 * f_score, 2) if f_score is not None else None
    return row


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


def render_markdown(rows: list[dict]) -> str:
    def fmt(v):
        return "" if v is None else (f"{v:.1f}" if isinstance(v, float) else str(v))

    def text(v):  # a `|` in a name would end the cell
        return str(v).replace("|", "\\|")

    with_control = any("control_mask_AR@100" in r for r in rows)
    header = ["experiment", "training", "evaluation", "detector", "top-k",
              "box AR@10", "box AR@100", "mask AR@10", "mask AR@100", "gain (mask AR@100)", "paper (its metric)"]
    if with_control:  # baseline → control → GGN: what grouping the image adds, then what learning the affinity adds
        header[5:9] = [f"{h} (baseline → control → GGN)" for h in header[5:9]]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in rows:
        def pair(c):
            variants = ("baseline", "control", "ggn") if with_control else ("baseline", "ggn")
            return " → ".join(("undef." if f"{v}_{c}" in r.get("undefined", ()) else fmt(r.get(f"{v}_{c}")) or "–")
                              for v in variants)

        metric = r.get("paper_metric", "mask_AR@100")
        base, ggn = r.get(f"paper_baseline_{metric}"), r.get(f"paper_ggn_{metric}")
        paper = ""
        if base is not None or ggn is not None:
            paper = f"{fmt(base) or '–'} → {fmt(ggn) or '–'} ({metric.replace('_', ' ')})"
        detector = {"maskrcnn": "Mask R-CNN", "oln": "OLN"}.get(r.get("detector", ""), r.get("detector", ""))
        if r.get("ranking") == "oln":
            detector += ", Pseudo-OLN pseudo-GT"
        gain = r["gain_mask_AR@100"]
        cells = [text(r["experiment"]), text(r["training"]), text(r["evaluation"]), text(detector), fmt(r["top_k"]),
                 pair("box_AR@10"), pair("box_AR@100"), pair("mask_AR@10"), pair("mask_AR@100"),
                 ("undef." if {"baseline_mask_AR@100", "ggn_mask_AR@100"} & set(r.get("undefined", ())) else "") if gain is None else f"{gain:+.1f}", paper]
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    lines.append("AR in percent on unseen classes only (seen-class ground truth ignored), baseline → GGN "
                 "(detector trained on seen GT → seen GT + pseudo-GT). The paper's numbers are those of the "
                 "metric named beside them: mask AR@100 for the Mask R-CNN rows, box AR@100 for OLN, a box "
                 "detector there (ours keeps a mask head so that both are reported)."
                 + (" undef.: undefined, the evaluation set has no unseen object of that kind (COCOeval's -1)."
                    if any(r.get("undefined") for r in rows) else ""))
    if with_control:
        lines.append("")
        lines.append("Control: the same grouping, merge and detector, with the affinity read off the image's colour "
                     "gradient instead of predicted by the PA network (no learning); gain is GGN minus baseline.")
    lines += render_quality(rows)
    return "\n".join(lines) + "\n"


def render_quality(rows: list[dict]) -> list[str]:
    """The pseudo-GT quality table (one line per experiment and pseudo-GT source), empty without quality columns."""
    sources = [(r, v) for r in rows for v in ("control", "ggn") if f"{v}_pseudo_recall@1" in r]
    if not sources:
        return []
    lines = ["", "Pseudo-GT quality on the mined training images (`ggn eval-pseudo`, unseen classes, percent):", "",
             "| experiment | affinity | recall top-1 | top-3 | top-20 | candidate AR box | candidate AR mask "
             "| pseudo-GT precision |", "|" + "---|" * 8]
    for r, v in sources:
        cells = [str(r["experiment"]).replace("|", "\\|"),
                 {"control": "image gradient (control)", "ggn": "PA network (GGN)"}[v]]
        cells += ["" if r[f"{v}_{c}"] is None else f"{r[f'{v}_{c}']:.1f}" for c, _ in QUALITY]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "Recall: unseen objects covered at mask IoU 0.5 by an image's top-k candidates; candidate AR: AR "
              "(IoU 0.50:0.95) of the whole candidate list; precision: kept pseudo-GT masks matching an unseen object "
              "at IoU 0.5."]
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


def gather(rows: list[Path], csv_path: Path, md_path: Path, html_path: Path | None = None) -> list[dict]:
    table = [read_json(p, "table row") for p in rows]
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
                       args.ranking, args.control, args.ggn_quality, args.control_quality)
        atomic_write_json(args.out, row, indent=2)
        log.info("row %s: mask AR@100 %s -> %s (%s)", args.experiment, row["baseline_mask_AR@100"],
                 row["ggn_mask_AR@100"], args.out)
    else:
        gather(args.rows, args.csv, args.md, args.html)
