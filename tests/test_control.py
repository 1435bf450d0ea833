"""The no-learning control: image-gradient affinity, and `ggn extract --affinity gradient` without a PA network."""
from __future__ import annotations

import json

import numpy as np
import pyarrow.parquet as pq
import pytest

from ggn.cli import main
from ggn.control import gradient_affinity
from ggn.io import InputError


def test_gradient_affinity_is_low_on_edges_high_inside_at_the_network_size():
    image = np.full((60, 80, 3), 40, np.uint8)
    image[20:40, 20:50] = (200, 90, 30)
    aff = gradient_affinity(image, input_size=40)
    assert aff.shape == (1, 30, 40) and aff.dtype == np.float32
    assert 0.0 <= aff.min() and aff.max() <= 1.0
    assert aff[0, 15, 17] > 0.9 and aff[0, 2, 2] > 0.9  # inside the object, background
    assert aff[0, 10, 17] < 0.5  # its top edge (row 20 of 60 -> 10 of 30)
    assert gradient_affinity(image).shape == (1, 60, 80)


def test_extract_with_gradient_affinity_needs_no_checkpoint_and_finds_objects(tmp_path, tiny_coco):
    ann, img_dir = tiny_coco
    out = tmp_path / "pseudo_control" / "shards" / "0-of-1.parquet"
    assert main(["extract", "--affinity", "gradient", "--annotations", str(ann), "--images", str(img_dir),
                 "--out", str(out), "--top-k", "5"]) == 0
    table = pq.read_table(out).to_pylist()
    assert {r["image_id"] for r in table} == {1, 2, 3, 4}
    # The tiny images are flat rectangles and discs on dark noise: their outlines are colour edges, so some
    # candidate covers an annotated object.
    assert max(r["gt_iou"] for r in table) > 0.5
    summary = json.loads(out.with_name(out.name + ".summary.json").read_text())
    assert summary["affinity"] == "gradient" and summary["checkpoint"] is None


def test_network_affinity_without_a_checkpoint_is_a_clear_error(tmp_path, tiny_coco):
    ann, img_dir = tiny_coco
    with pytest.raises(InputError, match="--checkpoint is required with --affinity network"):
        main(["extract", "--annotations", str(ann), "--images", str(img_dir), "--out", str(tmp_path / "s.parquet")])
