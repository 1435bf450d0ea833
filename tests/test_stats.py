"""Statistics over seeds (ggn.stats) and the rows and tables that report them (ggn.table): known inputs give known
means, standard deviations and Student-t intervals; one seed gives no interval."""
from __future__ import annotations

import csv
import json
import math

import pytest

from ggn.cli import main
from ggn.io import InputError
from ggn.stats import paired_difference, summarize, t_quantile
from ggn.table import make_row


def test_summary_and_t_interval_of_known_values():
    s = summarize([1.0, 2.0, 3.0])
    assert s.mean == 2.0 and s.sd == 1.0 and s.n == 3
    assert t_quantile(2) == pytest.approx(4.302653, abs=1e-5)  # two-sided 95%, 2 degrees of freedom
    assert t_quantile(9) == pytest.approx(2.262157, abs=1e-5)
    # differences 2, 3, 4: mean 3, sd 1, half-width 4.3027 / sqrt(3)
    d = paired_difference([12.0, 13.0, 14.0], [10.0, 10.0, 10.0])
    half = 4.302653 / math.sqrt(3)
    assert d.mean == 3.0 and d.sd == 1.0 and d.n == 3
    assert d.low == pytest.approx(3 - half, abs=1e-5) and d.high == pytest.approx(3 + half, abs=1e-5)
    assert d.distinguishable is True
    assert paired_difference([1.0, 2.0, 0.0], [0.5, 0.5, 0.5]).distinguishable is False  # interval holds 0


def test_pairing_is_by_seed_not_by_pooled_means():
    """Paired: a constant lead over a noisy baseline has no spread; unpaired it would."""
    d = paired_difference([11.0, 21.0, 31.0], [10.0, 20.0, 30.0])
    assert d.mean == 1.0 and d.sd == 0.0 and d.low == d.high == 1.0


def test_one_seed_has_no_interval_and_undefined_stays_undefined():
    s = summarize([5.0])
    assert s.mean == 5.0 and s.sd is None and s.n == 1
    d = paired_difference([5.0], [3.0])
    assert d.mean == 2.0 and d.low is None and d.high is None and d.distinguishable is None
    assert summarize([1.0, None]).mean is None
    assert paired_difference([1.0, 2.0], [1.0, float("nan")]).mean is None
    with pytest.raises(ValueError, match="as many values"):
        paired_difference([1.0, 2.0, 3.0], [1.0, 2.0])


def _metrics(path, mask_ar100):
    names = ["AR@10", "AR@20", "AR@30", "AR@50", "AR@100", "AR@300", "AR@500", "AR@1000", "AR@1500"]
    values = {n: mask_ar100 for n in names}
    path.write_text(json.dumps({"bbox": values, "segm": values}))
    return path


def _quality(path, recall20, precision):
    path.write_text(json.dumps({"recall": {"top-1": 0.1, "top-3": 0.2, "top-20": recall20},
                                "candidate_AR": {"bbox": 0.3, "segm": 0.2}, "pseudo_gt": {"precision": precision}}))
    return path


def test_row_over_three_seeds_reports_mean_sd_and_paired_gain(tmp_path):
    seeds = [0, 1, 7]
    base = [_metrics(tmp_path / f"b{s}.json", v) for s, v in zip(seeds, (0.20, 0.22, 0.24))]
    ggn = [_metrics(tmp_path / f"g{s}.json", v) for s, v in zip(seeds, (0.22, 0.25, 0.28))]
    qg = [_quality(tmp_path / f"qg{s}.json", r, p) for s, r, p in zip(seeds, (0.30, 0.32, 0.34), (0.5, 0.6, 0.7))]
    qc = [_quality(tmp_path / "qc.json", 0.20, 0.1)]  # the control: one file for every seed
    args = ["table", "row", "--experiment", "x", "--seeds", *map(str, seeds), "--baseline", *map(str, base),
            "--ggn", *map(str, ggn), "--ggn-quality", *map(str, qg), "--control-quality", *map(str, qc),
            "--out", str(tmp_path / "row.json")]
    assert main(args) == 0
    row = json.loads((tmp_path / "row.json").read_text())
    assert row["n"] == 3 and row["seeds"] == "0 1 7"
    assert row["baseline_mask_AR@100"] == 22.0 and row["baseline_mask_AR@100_sd"] == 2.0
    assert row["baseline_mask_AR@100_seed7"] == 24.0 and row["ggn_mask_AR@100_seed1"] == 25.0
    # gains 2, 3, 4 points: mean 3, sd 1
    half = 4.302653 / math.sqrt(3)
    assert row["gain_mask_AR@100"] == 3.0
    assert row["gain_mask_AR@100_ci_low"] == round(3 - half, 2) and row["gain_mask_AR@100_ci_high"] == round(3 + half, 2)
    # the PA network's lead over the control: recall 10, 12, 14 points; precision 40, 50, 60
    assert row["quality_gain_pseudo_recall@20"] == 12.0 and row["quality_gain_pseudo_precision"] == 50.0
    assert row["control_pseudo_precision"] == 10.0 and row["control_pseudo_precision_sd"] is None
    md = _gather(tmp_path, tmp_path / "row.json")
    assert "22.0 ± 2.0 → 25.0 ± 3.0" in md and "| 0 1 7 (3) |" in md
    line = next(x for x in md.splitlines() if x.startswith("| x |"))
    assert f"+3.0 (95% CI {3 - half:+.1f} to {3 + half:+.1f})" in line and "not distinguishable" not in line
    assert "PA network − control" in md
    rows = list(csv.DictReader((tmp_path / "t.csv").open()))
    assert rows[0]["ggn_mask_AR@100_seed0"] == "22.0" and rows[0]["n"] == "3"  # per-seed values stay in the CSV


def test_a_gain_whose_interval_holds_zero_says_so(tmp_path):
    base = [_metrics(tmp_path / f"b{s}.json", 0.20) for s in range(3)]
    ggn = [_metrics(tmp_path / f"g{s}.json", v) for s, v in zip(range(3), (0.25, 0.18, 0.21))]
    row = make_row("x", base, ggn, seeds=[0, 1, 2])
    assert row["gain_mask_AR@100_ci_low"] < 0 < row["gain_mask_AR@100_ci_high"]
    assert "not distinguishable from 0" in _gather(tmp_path, _write(tmp_path / "row.json", row))


def test_one_seed_prints_n_1_and_no_interval(tmp_path):
    row = make_row("x", _metrics(tmp_path / "b.json", 0.2), _metrics(tmp_path / "g.json", 0.25))
    assert row["n"] == 1 and row["gain_mask_AR@100"] == 5.0 and row["gain_mask_AR@100_ci_low"] is None
    assert row["baseline_mask_AR@100_sd"] is None and "baseline_mask_AR@100_seed0" not in row
    md = _gather(tmp_path, _write(tmp_path / "row.json", row))
    line = next(x for x in md.splitlines() if x.startswith("| x |"))
    assert "+5.0 (n = 1, no interval)" in line and "CI" not in line and "±" not in line


def test_per_seed_lists_must_match_the_seeds(tmp_path):
    base = [_metrics(tmp_path / f"b{s}.json", 0.2) for s in range(3)]
    with pytest.raises(InputError, match="--ggn: 2 files for 3 seeds"):
        make_row("x", base, base[:2], seeds=[0, 1, 2])
    with pytest.raises(InputError, match="names a seed twice"):
        make_row("x", base, base, seeds=[0, 0, 1])


def test_row_names_the_versions_and_machine_of_its_checkpoints(tmp_path):
    import torch

    from ggn.io import atomic_torch_save, load_checkpoint, machine_provenance

    ckpt = tmp_path / "c.pt"
    atomic_torch_save({"model": {"w": torch.zeros(1)}, "config": {"kind": "maskrcnn"},
                       "provenance": machine_provenance()}, ckpt)
    assert load_checkpoint(ckpt)["provenance"]["torch"] == str(torch.__version__)  # weights_only loads it
    row = make_row("x", _metrics(tmp_path / "b.json", 0.2), _metrics(tmp_path / "g.json", 0.25), checkpoints=[ckpt])
    assert row["versions"].startswith(f"torch {torch.__version__}, torchvision ") and "numpy" in row["versions"]
    assert row["machine"]


def _gather(tmp_path, row_path) -> str:
    """`ggn table gather` of one row file: the Markdown table (the CSV beside it as t.csv)."""
    assert main(["table", "gather", "--rows", str(row_path), "--csv", str(tmp_path / "t.csv"),
                 "--md", str(tmp_path / "t.md")]) == 0
    return (tmp_path / "t.md").read_text()


def _write(path, row):
    path.write_text(json.dumps(row))
    return path


def test_ar_curves_are_the_mean_over_seeds_with_a_t_band(tmp_path):
    from ggn.plots import ar_curves, plot_curves

    files = [_metrics(tmp_path / f"g{s}.json", v) for s, v in enumerate((0.20, 0.26, 0.23))]
    ks, mean, half, n = ar_curves([("ggn", files)])["ggn"]["segm"]
    assert n == 3 and ks[0] == 10 and mean[0] == pytest.approx(23.0)
    assert half[0] == pytest.approx(4.302653 * 3.0 / math.sqrt(3), abs=1e-4)  # sd of 20, 26, 23 is 3
    assert ar_curves([("ggn", files[:1])])["ggn"]["segm"][2] is None  # one seed: no band
    plot_curves([("ggn", files), ("baseline", files[:1])], tmp_path / "curves.png")
    assert (tmp_path / "curves.png").stat().st_size > 0
