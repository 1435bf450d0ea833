"""ggn merge: filters, per-image top-k across record batches, unique ids, JSON output and the parquet store."""
from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from pycocotools import mask as mask_utils

from ggn import merge
from ggn.extract import SHARD_SCHEMA
from ggn.io import InputError
from ggn.masks import encode_mask

H, W = 8, 10


def _row(image_id, rank, score, gt_iou):
    m = np.zeros((H, W), bool)
    m[rank % H, : rank + 1] = True  # a different, known mask per (rank)
    m[image_id % H, W - 1] = True
    rle = encode_mask(m)
    box = mask_utils.toBbox({"size": [H, W], "counts": rle["counts"].encode()}).tolist()
    return {"image_id": image_id, "rank": rank, "score": score, "gt_iou": gt_iou, "bbox": box,
            "area": float(m.sum()), "height": H, "width": W, "rle": rle["counts"]}


# (image_id, rank, score, gt_iou); rows of one image contiguous, as extraction writes them.
SHARD_A = [
    (1, 0, 0.9, 0.8),   # gt_iou too high
    (1, 1, 0.8, 0.1),   # kept (1st)
    (1, 2, 0.7, None),  # kept (2nd): no GT known counts as kept
    (1, 3, 0.6, 0.49),  # beyond top-2
    (3, 0, 0.2, 0.0),   # score too low
    (3, 1, 0.5, 0.5),   # gt_iou exactly at the threshold: removed
    (3, 2, 0.35, 0.3),  # kept
]
SHARD_B = [
    (2, 1, 0.9, 0.0),   # rank order, not row order, decides top-k: kept
    (2, 0, 0.95, 0.0),  # kept
    (2, 2, 0.99, 0.0),  # beyond top-2 even with the best score
    (4, 0, 0.1, 0.0),   # score too low
]
EXPECTED = [(1, 1), (1, 2), (3, 2), (2, 0), (2, 1)]  # (image_id, rank), in output order


def _write_shard(path, rows, row_group_size=None):
    table = pa.Table.from_pylist([_row(*r) for r in rows], schema=SHARD_SCHEMA)
    pq.write_table(table, path, row_group_size=row_group_size)
    return path


def _train_json(path, ids=(1, 2, 3, 4, 5)):
    coco = {"images": [{"id": i, "file_name": f"{i}.png", "height": H, "width": W} for i in ids],
            "annotations": [], "categories": [{"id": 1, "name": "object"}]}
    path.write_text(json.dumps(coco))
    return path


@pytest.fixture
def shards(tmp_path):
    # Row groups of 3 rows split images across record batches.
    return [_write_shard(tmp_path / "0-of-2.parquet", SHARD_A, row_group_size=3),
            _write_shard(tmp_path / "1-of-2.parquet", SHARD_B, row_group_size=3)]


def test_top_k_per_image_uses_rank_within_each_run():
    table = pa.table({"image_id": [5, 5, 5, 7, 7, 9], "rank": [2, 0, 1, 1, 0, 0]})
    kept = merge._top_k_per_image(table, 2)
    assert kept["image_id"].to_pylist() == [5, 5, 7, 7, 9]
    assert kept["rank"].to_pylist() == [0, 1, 0, 1, 0]


@pytest.mark.parametrize("batch_rows", [1, 2, 3, 1000])
def test_merge_filters_gt_iou_score_and_top_k(tmp_path, shards, batch_rows, monkeypatch):
    # Small record batches put the rows of one image into several batches.
    real_iter = merge.iter_kept
    monkeypatch.setattr(merge, "iter_kept", lambda *a, **k: real_iter(*a, **k, batch_rows=batch_rows))
    out = tmp_path / "pseudo_gt.json"
    counts = merge.merge_shards(shards, _train_json(tmp_path / "train.json"), out, top_k=2,
                                gt_iou_max=0.5, min_score=0.3)
    coco = json.loads(out.read_text())
    assert [i["id"] for i in coco["images"]] == [1, 2, 3, 4, 5]
    assert coco["categories"] == [{"id": 1, "name": "object"}]
    anns = coco["annotations"]
    assert [(a["image_id"], _rank_of(a)) for a in anns] == EXPECTED
    assert [a["id"] for a in anns] == [1, 2, 3, 4, 5]
    assert all(a["category_id"] == 1 and a["iscrowd"] == 0 for a in anns)
    by_key = {(r[0], r[1]): r for r in SHARD_A + SHARD_B}
    for a in anns:
        src = _row(*by_key[(a["image_id"], _rank_of(a))])
        assert a["segmentation"] == {"size": [H, W], "counts": src["rle"]}
        assert a["bbox"] == pytest.approx(src["bbox"]) and a["area"] == src["area"]
        assert a["score"] == pytest.approx(by_key[(a["image_id"], _rank_of(a))][2], abs=1e-6)
    assert anns[1]["gt_iou"] is None and anns[0]["gt_iou"] == pytest.approx(0.1)
    assert counts.candidates_read == 11
    assert counts.removed_by_gt_iou == 2
    assert counts.removed_by_score == 2
    assert counts.removed_by_top_k == 2
    assert counts.kept == 5 and counts.images_with_pseudo_gt == 3 and counts.images_in_shards == 4


def _rank_of(ann):
    # The tests' masks encode their rank as the length of one row segment (see _row).
    m = mask_utils.decode({"size": ann["segmentation"]["size"], "counts": ann["segmentation"]["counts"].encode()})
    rank_row = [r for r in range(H) if m[r, : W - 1].any()]
    return int(m[rank_row[0], : W - 1].sum()) - 1


def test_merge_without_score_threshold_keeps_best_k(tmp_path, shards):
    out = tmp_path / "p.json"
    counts = merge.merge_shards(shards, _train_json(tmp_path / "train.json"), out, top_k=1, gt_iou_max=0.5)
    anns = json.loads(out.read_text())["annotations"]
    assert [(a["image_id"], _rank_of(a)) for a in anns] == [(1, 1), (3, 0), (2, 0), (4, 0)]
    assert counts.removed_by_score == 0 and counts.images_with_pseudo_gt == 4


def test_store_returns_exactly_one_images_annotations(tmp_path, shards):
    out, store = tmp_path / "pseudo_gt.json", tmp_path / "store"
    merge.merge_shards(shards, _train_json(tmp_path / "train.json"), out, store=store, top_k=2,
                       gt_iou_max=0.5, min_score=0.3, num_partitions=2)
    anns = json.loads(out.read_text())["annotations"]
    s = merge.PseudoStore(store)
    assert s.image_ids() == [1, 2, 3]
    for image_id in (1, 2, 3):
        assert s.annotations_for(image_id) == [a for a in anns if a["image_id"] == image_id]
    assert s.annotations_for(4) == [] and s.annotations_for(5) == [] and s.annotations_for(99) == []
    # Images 1 and 3 share a partition; reading 1 must not return 3's rows.
    assert {a["image_id"] for a in s.annotations_for(1)} == {1}


def test_store_reads_only_matching_row_groups(tmp_path):
    # 600 images x 2 rows in one partition -> several row groups; a lookup reads one or two of them.
    rows = [(i, r, 0.9, 0.0) for i in range(1, 601) for r in range(2)]
    shard = _write_shard(tmp_path / "0-of-1.parquet", rows)
    store = tmp_path / "store"
    merge.merge_shards([shard], _train_json(tmp_path / "t.json", range(1, 601)), None, store=store, top_k=2,
                       num_partitions=1)
    meta = pq.read_metadata(store / "part=000" / "data.parquet")
    assert meta.num_row_groups == 1200 // merge.ROW_GROUP_ROWS + 1
    s = merge.PseudoStore(store)
    anns = s.annotations_for(321)
    assert [a["image_id"] for a in anns] == [321, 321]
    assert [a["id"] for a in anns] == [641, 642]
    _, lo, hi = s._partition(0)
    assert int(((lo <= 321) & (hi >= 321)).sum()) == 1


def test_merge_rejects_image_in_two_shards(tmp_path):
    a = _write_shard(tmp_path / "a.parquet", [(1, 0, 0.9, 0.0)])
    b = _write_shard(tmp_path / "b.parquet", [(2, 0, 0.9, 0.0), (1, 0, 0.9, 0.0)])
    with pytest.raises(InputError, match="image 1 appears twice"):
        merge.merge_shards([a, b], _train_json(tmp_path / "t.json"), tmp_path / "o.json")
    assert not (tmp_path / "o.json").exists()


def test_merge_rejects_unknown_image_and_missing_shard(tmp_path):
    a = _write_shard(tmp_path / "a.parquet", [(77, 0, 0.9, 0.0)])
    with pytest.raises(InputError, match="image 77, which is not in --annotations"):
        merge.merge_shards([a], _train_json(tmp_path / "t.json"), tmp_path / "o.json")
    with pytest.raises(InputError, match="does not exist"):
        merge.merge_shards([tmp_path / "nope.parquet"], _train_json(tmp_path / "t.json"), tmp_path / "o.json")


def test_cli_no_json_writes_store_only(tmp_path, shards):
    from ggn.cli import main

    store, counts = tmp_path / "store", tmp_path / "counts.json"
    assert main(["merge", "--shards", *map(str, shards), "--annotations", str(_train_json(tmp_path / "t.json")),
                 "--store", str(store), "--no-json", "--top-k", "2", "--min-score", "0.3",
                 "--counts", str(counts)]) == 0
    assert merge.PseudoStore(store).image_ids() == [1, 2, 3]
    assert json.loads(counts.read_text())["kept"] == 5
    assert not list(tmp_path.glob("*.json.tmp")) and not list(tmp_path.glob(".store*"))
