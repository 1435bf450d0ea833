"""`ggn check-config`: the errors Snakemake's own --configfile reading does not name (line, field)."""
import subprocess
import sys
from pathlib import Path

import pytest

from ggn.check_config import check
from ggn.io import InputError

REPO = Path(__file__).resolve().parent.parent


def test_a_yaml_syntax_error_names_its_line(tmp_path):
    bad = tmp_path / "row.yaml"
    bad.write_text("experiments:\n  x:\n    seen: [a, b\n    pa: {lr: 1}\n")
    with pytest.raises(InputError, match=r"(?s)row.yaml is not valid YAML.*line 3, column 11"):
        check(bad)


def test_every_schema_error_names_its_field(tmp_path):
    bad = tmp_path / "row.yaml"
    bad.write_text("experiments:\n  x:\n    seen: voc\n    pa: {lr: -1}\n    detector: {epochs: 0}\n")
    with pytest.raises(InputError) as e:
        check(bad)
    message = str(e.value)
    assert "2 place(s)" in message
    assert "experiments.x.pa.lr: -1 is less than or equal to the minimum of 0" in message
    assert "experiments.x.detector.epochs: 0 is less than the minimum of 1" in message


def test_an_overlay_without_experiments_is_laid_over_the_default_config(tmp_path):
    over = tmp_path / "over.yaml"
    over.write_text("results: elsewhere\n")
    config = check(over)
    assert config["results"] == "elsewhere"
    assert list(config["experiments"]) == ["synthetic"]  # from config/config.yaml, as the Snakefile loads it


def test_a_stage_option_the_command_line_refuses_names_the_experiment(tmp_path):
    bad = tmp_path / "row.yaml"
    bad.write_text("experiments:\n  x:\n    seen: voc\n    extract: {no_such_option: 3}\n")
    with pytest.raises(InputError, match=r"experiment x: .*ggn extract refuses the flags"):
        check(bad)


@pytest.mark.parametrize("name", sorted(p.name for p in (REPO / "config").glob("*.yaml")))
def test_every_shipped_config_passes(name):
    assert check(REPO / "config" / name)["experiments"]


def test_the_command_prints_what_it_checked_and_fails_on_a_bad_file(tmp_path):
    bad = tmp_path / "row.yaml"
    bad.write_text("experiments: [x\n")
    good = subprocess.run([sys.executable, "-m", "ggn.cli", "check-config", "config/config.yaml"], cwd=REPO,
                          capture_output=True, text=True)
    assert good.returncode == 0 and "config/config.yaml: valid; experiments synthetic" in good.stdout
    result = subprocess.run([sys.executable, "-m", "ggn.cli", "check-config", str(bad)], cwd=REPO,
                            capture_output=True, text=True)
    assert result.returncode != 0 and "row.yaml is not valid YAML" in result.stderr and "line 2" in result.stderr


def test_several_files_are_merged_as_snakemake_merges_them(tmp_path):
    caps = tmp_path / "caps.yaml"
    caps.write_text("experiments:\n  coco_voc_to_nonvoc:\n    resources:\n      train_detector: {runtime: 2880}\n")
    config = check(REPO / "config" / "coco_voc_to_nonvoc.yaml", caps)
    exp = config["experiments"]["coco_voc_to_nonvoc"]
    assert exp["resources"]["train_detector"]["runtime"] == 2880
    assert exp["seen"] == "voc"  # kept from the row's config
    with pytest.raises(InputError, match="'seen' is a required property"):
        check(caps)  # alone, the partial experiment is all there is (docs/cluster.md)
