"""`ggn table`: rows from metrics files, the gathered CSV/Markdown, and errors on wrong inputs."""
from __future__ import annotations

import csv
import json

import pytest

from ggn.cli import main
from ggn.io import InputError
from ggn.table import make_row


def _metrics(path, ar10, ar100):
    names = ["AR@10", "AR@20", "AR@30", "AR@50", "AR@100", "AR@300", "AR@500", "AR@1000", "AR@1500"]
    values = {n: ar100 for n in names} | {"AR@10": ar10}
    path.write_text(json.dumps({"bbox": values, "segm": {k: v / 2 for k, v in values.items()}}))
    return path


def test_row_and_table(tmp_path):
    base = _metrics(tmp_path / "b.json", 0.1, 0.2)
    ggn = _metrics(tmp_path / "g.json", 0.3, 0.5)
    pa = tmp_path / "pa.json"
    pa.write_text(json.dumps({"boundary": {"pa": {"f": 0.7}, "gradient_baseline": {"f": 0.6}}}))
    assert main(["table", "row", "--experiment", "x", "--baseline", str(base), "--ggn", str(ggn), "--pa", str(pa),
                 "--top-k", "3", "--paper-baseline", "19.9", "--paper-ggn", "28.7", "--out", str(tmp_path / "row.json")]) == 0
    row = json.loads((tmp_path / "row.json").read_text())
    assert row["baseline_box_AR@100"] == 20.0 and row["ggn_box_AR@10"] == 30.0
    assert row["baseline_mask_AR@100"] == 10.0 and row["ggn_mask_AR@100"] == 25.0
    assert row["gain_mask_AR@100"] == 15.0 and row["pa_boundary_F"] == 70.0 and row["gradient_boundary_F"] == 60.0
    assert main(["table", "gather", "--rows", str(tmp_path / "row.json"), "--csv", str(tmp_path / "t.csv"),
                 "--md", str(tmp_path / "t.md")]) == 0
    rows = list(csv.DictReader((tmp_path / "t.csv").open()))
    assert len(rows) == 1 and rows[0]["experiment"] == "x" and float(rows[0]["ggn_mask_AR@100"]) == 25.0
    md = (tmp_path / "t.md").read_text()
    assert "| x |" in md and "10.0 → 25.0" in md and "+15.0" in md and "19.9 → 28.7" in md


def test_row_rejects_a_file_that_is_not_metrics(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"bbox": {}}))
    good = _metrics(tmp_path / "g.json", 0.3, 0.5)
    with pytest.raises(InputError, match="bad.json has no bbox AR@10"):
        make_row("x", bad, good)


def test_the_papers_number_is_labelled_with_its_metric(tmp_path):
    """The OLN row's paper number is box AR (OLN is a box detector in the paper); Mask R-CNN rows' are mask AR."""
    base = _metrics(tmp_path / "b.json", 0.1, 0.2)
    ggn = _metrics(tmp_path / "g.json", 0.3, 0.5)
    assert main(["table", "row", "--experiment", "oln", "--baseline", str(base), "--ggn", str(ggn), "--paper-ggn",
                 "33.7", "--paper-metric", "box_AR@100", "--detector", "oln", "--ranking", "oln",
                 "--out", str(tmp_path / "oln.json")]) == 0
    assert main(["table", "row", "--experiment", "mrcnn", "--baseline", str(base), "--ggn", str(ggn),
                 "--paper-baseline", "19.9", "--paper-ggn", "28.7", "--detector", "maskrcnn",
                 "--out", str(tmp_path / "mrcnn.json")]) == 0
    row = json.loads((tmp_path / "oln.json").read_text())
    assert row["paper_metric"] == "box_AR@100" and row["paper_ggn_box_AR@100"] == 33.7
    assert "paper_ggn_mask_AR@100" not in row
    main(["table", "gather", "--rows", str(tmp_path / "oln.json"), str(tmp_path / "mrcnn.json"),
          "--csv", str(tmp_path / "t.csv"), "--md", str(tmp_path / "t.md")])
    lines = (tmp_path / "t.md").read_text().splitlines()
    oln_line = next(line for line in lines if line.startswith("| oln |"))
    mrcnn_line = next(line for line in lines if line.startswith("| mrcnn |"))
    assert "OLN, Pseudo-OLN pseudo-GT" in oln_line and "– → 33.7 (box AR@100)" in oln_line
    assert "Mask R-CNN" in mrcnn_line and "19.9 → 28.7 (mask AR@100)" in mrcnn_line
    with pytest.raises(SystemExit):
        main(["table", "row", "--experiment", "x", "--baseline", str(base), "--ggn", str(ggn),
              "--paper-metric", "AR@7", "--out", str(tmp_path / "x.json")])


def test_control_and_pseudo_quality_columns(tmp_path):
    """A row with the control variant shows baseline → control → GGN; eval-pseudo's numbers become columns."""
    base = _metrics(tmp_path / "b.json", 0.1, 0.2)
    control = _metrics(tmp_path / "c.json", 0.2, 0.3)
    ggn = _metrics(tmp_path / "g.json", 0.3, 0.5)
    quality = {"recall": {"top-1": 0.25, "top-3": 0.5, "top-20": 0.75},
               "candidate_AR": {"bbox": 0.4, "segm": 0.3}, "pseudo_gt": {"precision": 0.125}}
    (tmp_path / "qg.json").write_text(json.dumps(quality))
    (tmp_path / "qc.json").write_text(json.dumps({**quality, "pseudo_gt": {"precision": None}}))
    assert main(["table", "row", "--experiment", "x", "--baseline", str(base), "--control", str(control), "--ggn",
                 str(ggn), "--ggn-quality", str(tmp_path / "qg.json"), "--control-quality", str(tmp_path / "qc.json"),
                 "--out", str(tmp_path / "row.json")]) == 0
    row = json.loads((tmp_path / "row.json").read_text())
    assert row["control_mask_AR@100"] == 15.0 and row["gain_mask_AR@100"] == 15.0
    assert row["ggn_pseudo_recall@1"] == 25.0 and row["ggn_pseudo_recall@20"] == 75.0
    assert row["ggn_candidate_mask_AR"] == 30.0 and row["ggn_pseudo_precision"] == 12.5
    assert row["control_pseudo_recall@3"] == 50.0 and row["control_pseudo_precision"] is None
    assert main(["table", "gather", "--rows", str(tmp_path / "row.json"), "--csv", str(tmp_path / "t.csv"),
                 "--md", str(tmp_path / "t.md")]) == 0
    md = (tmp_path / "t.md").read_text()
    assert "10.0 → 15.0 → 25.0" in md and "baseline → control → GGN" in md
    assert "| x | PA network (GGN) | 25.0 | 50.0 | 75.0 | 40.0 | 30.0 | 12.5 |" in md
    assert "| x | image gradient (control) | 25.0 | 50.0 | 75.0 | 40.0 | 30.0 |  |" in md
    assert main(["table", "gather", "--rows", str(tmp_path / "row.json"), "--csv", str(tmp_path / "t.csv"),
                 "--md", str(tmp_path / "t.md"), "--html", str(tmp_path / "t.html")]) == 0
    page = (tmp_path / "t.html").read_text()
    assert page.count("<table>") == 2 and "<td>10.0 → 15.0 → 25.0</td>" in page and "<td>PA network (GGN)</td>" in page
    columns = next(csv.reader((tmp_path / "t.csv").open()))
    assert "control_box_AR@10" in columns and "ggn_pseudo_precision" in columns


def test_quality_file_that_is_not_eval_pseudo_output_is_named(tmp_path):
    bad = tmp_path / "q.json"
    bad.write_text(json.dumps({"recall": {}}))
    with pytest.raises(InputError, match="q.json has no recall top-1"):
        make_row("x", _metrics(tmp_path / "b.json", 0.1, 0.2), None, ggn_quality=bad)
