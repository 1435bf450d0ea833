"""`ggn eval-pseudo` on a hand-made image with known answers: which candidates find which unseen objects."""
from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from ggn.cli import main
from ggn.extract import SHARD_SCHEMA, candidate_rows
from ggn.io import InputError
from ggn.masks import encode_mask

SIZE = 64


def _box(y0, x0, y1, x1):
    m = np.zeros((SIZE, SIZE), bool)
    m[y0:y1, x0:x1] = True
    return m


SEEN_A = _box(4, 4, 20, 20)       # a seen object ("square")
UNSEEN_B = _box(30, 30, 50, 50)   # an unseen object ("star") that one candidate equals
UNSEEN_C = _box(4, 40, 14, 60)    # an unseen object no candidate covers
BLOB = _box(52, 2, 62, 30)        # background


def _ann(i, image_id, cat, mask):
    ys, xs = np.nonzero(mask)
    return {"id": i, "image_id": image_id, "category_id": cat, "iscrowd": 0, "segmentation": encode_mask(mask),
            "area": float(mask.sum()), "bbox": [float(xs.min()), float(ys.min()), float(np.ptp(xs) + 1),
                                                float(np.ptp(ys) + 1)]}


def _files(tmp_path, candidates, pseudo_masks, mined_id=7):
    """Full file (ids 1..), the seen-only mined file (its own id for the image), one shard, pseudo_gt.json."""
    image = {"id": 1, "file_name": "a.png", "height": SIZE, "width": SIZE}
    full = {"images": [image, {"id": 2, "file_name": "b.png", "height": SIZE, "width": SIZE}],
            "categories": [{"id": 1, "name": "square"}, {"id": 2, "name": "star"}],
            "annotations": [_ann(1, 1, 1, SEEN_A), _ann(2, 1, 2, UNSEEN_B), _ann(3, 1, 2, UNSEEN_C),
                            _ann(4, 2, 2, UNSEEN_B)]}  # image 2 is not mined: its object must not count
    mined = {"images": [{**image, "id": mined_id}], "annotations": [{**_ann(1, mined_id, 1, SEEN_A), "category_id": 1}],
             "categories": [{"id": 1, "name": "object"}]}
    masks = np.stack(candidates)
    rows = candidate_rows(mined_id, masks, np.linspace(1, 0, len(masks)), SIZE, SIZE, None)
    paths = {"full": tmp_path / "full.json", "mined": tmp_path / "train.json", "shard": tmp_path / "0-of-1.parquet",
             "pseudo": tmp_path / "pseudo_gt.json", "out": tmp_path / "quality.json"}
    paths["full"].write_text(json.dumps(full))
    paths["mined"].write_text(json.dumps(mined))
    pq.write_table(pa.Table.from_pydict(rows, schema=SHARD_SCHEMA), paths["shard"])
    pseudo = [{"id": i + 1, "image_id": mined_id, "category_id": 1, "segmentation": encode_mask(m), "iscrowd": 0,
               "bbox": [0, 0, 1, 1], "area": float(m.sum())} for i, m in enumerate(pseudo_masks)]
    paths["pseudo"].write_text(json.dumps({"images": mined["images"], "annotations": pseudo,
                                           "categories": [{"id": 1, "name": "object"}]}))
    return paths


def _run(paths, *extra):
    assert main(["eval-pseudo", "--shards", str(paths["shard"]), "--pseudo-gt", str(paths["pseudo"]), "--mined",
                 str(paths["mined"]), "--full-annotations", str(paths["full"]), "--seen", "square",
                 "--out", str(paths["out"]), *extra]) == 0
    return json.loads(paths["out"].read_text())


def test_a_candidate_equal_to_an_unseen_object_counts_one_equal_to_a_seen_object_does_not(tmp_path):
    # rank 0: the seen object; rank 1: unseen B exactly; rank 2: background. C is never found.
    paths = _files(tmp_path, [SEEN_A, UNSEEN_B, BLOB], pseudo_masks=[UNSEEN_B, BLOB, SEEN_A])
    q = _run(paths)
    assert q["images"] == 1 and q["unseen_objects"] == 2 and q["seen_objects"] == 1 and q["candidates"] == 3
    assert q["unseen_classes"] == ["star"]
    assert q["found"] == {"top-1": 0, "top-3": 1, "top-20": 1}
    assert q["recall"] == {"top-1": 0.0, "top-3": 0.5, "top-20": 0.5}
    # B matched at every IoU threshold, C never: AR 0.5 for masks and boxes; the seen candidate uses no budget.
    assert q["candidate_AR"]["segm"] == pytest.approx(0.5) and q["candidate_AR"]["bbox"] == pytest.approx(0.5)
    assert q["hit_rate_by_rank"] == [0.0, 1.0, 0.0] and q["candidates_by_rank"] == [1, 1, 1]
    assert q["pseudo_gt"] == {"kept": 3, "unseen_matches": 1, "seen_matches": 1, "precision": pytest.approx(1 / 3)}


def test_unseen_objects_found_at_rank_one_and_a_partial_candidate(tmp_path):
    half_c = UNSEEN_C.copy()
    half_c[:, 50:] = False  # IoU 0.5 with C exactly: counts (>= 0.5)
    third_b = UNSEEN_B.copy()
    third_b[:, 37:] = False  # IoU 0.35 with B: does not count
    paths = _files(tmp_path, [half_c, third_b], pseudo_masks=[])
    q = _run(paths, "--top-k", "1", "2")
    assert q["found"] == {"top-1": 1, "top-2": 1} and q["recall"]["top-1"] == 0.5
    assert q["pseudo_gt"]["kept"] == 0 and q["pseudo_gt"]["precision"] is None


def test_mined_images_missing_from_the_full_annotations_are_an_error(tmp_path):
    paths = _files(tmp_path, [UNSEEN_B], pseudo_masks=[])
    mined = json.loads(paths["mined"].read_text())
    mined["images"][0]["file_name"] = "elsewhere.png"
    paths["mined"].write_text(json.dumps(mined))
    with pytest.raises(InputError, match="elsewhere.png.*is not in .*full.json"):
        _run(paths)
