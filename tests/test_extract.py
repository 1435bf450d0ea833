"""ggn extract: shard assignment, candidate rows at original size, and resumable shards on a real tiny PA model."""
from __future__ import annotations

import json

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from pycocotools import mask as mask_utils

from ggn import extract
from ggn.extract import SHARD_SCHEMA, candidate_rows, extract_shard, parse_propose_params, shard_image_ids
from ggn.io import InputError, atomic_torch_save
from ggn.masks import encode_mask


def test_shard_assignment_is_by_position_in_sorted_ids():
    ids = [50, 10, 90, 30, 70]
    assert shard_image_ids(ids, 0, 2) == [10, 50, 90]
    assert shard_image_ids(ids, 1, 2) == [30, 70]
    assert sorted(shard_image_ids(ids, 0, 3) + shard_image_ids(ids, 1, 3) + shard_image_ids(ids, 2, 3)) == sorted(ids)
    assert shard_image_ids(ids, 0, 9) == [10] and shard_image_ids(ids, 8, 9) == []
    with pytest.raises(InputError, match="0 <= shard < num_shards"):
        shard_image_ids(ids, 2, 2)


def test_parse_propose_params():
    assert parse_propose_params(['{"nms": 0.3, "x": [1, 2]}', "footprint=20", "border-margin=0.5",
                                 "mode=fast"]) == {"nms": 0.3, "x": [1, 2], "footprint": 20,
                                                   "border_margin": 0.5, "mode": "fast"}
    with pytest.raises(InputError, match="key=value"):
        parse_propose_params(["oops"])


def _decode(counts, h, w):
    return mask_utils.decode({"size": [h, w], "counts": counts.encode()}).astype(bool)


def test_candidate_rows_resize_rle_bbox_and_gt_iou():
    # Network resolution 4x5, original 8x10 (factor 2): bilinear + 0.5 threshold doubles each pixel.
    small = np.zeros((3, 4, 5), bool)
    small[0, 1:3, 1:4] = True        # -> rows 2..5, cols 2..7 at full size
    small[1, 0, 0] = True            # -> the 2x2 top-left corner
    small[2, :, :] = True            # whole image
    full = np.repeat(np.repeat(small, 2, axis=1), 2, axis=2)
    gt_obj = np.zeros((8, 10), bool)
    gt_obj[2:6, 2:6] = True          # 16 px, inside candidate 0 (24 px)
    crowd = np.zeros((8, 10), bool)
    crowd[0:4, 0:4] = True           # covers candidate 1 fully
    gt = ([encode_mask(gt_obj), encode_mask(crowd)], [0, 1])
    for g in gt[0]:
        g["counts"] = g["counts"].encode()
    rows = candidate_rows(7, small, np.array([0.9, 0.5, 0.1], np.float32), 8, 10, gt)
    assert set(rows) == set(SHARD_SCHEMA.names)
    assert rows["image_id"] == [7, 7, 7] and rows["rank"] == [0, 1, 2]
    assert rows["height"] == [8, 8, 8] and rows["width"] == [10, 10, 10]
    assert rows["score"] == pytest.approx([0.9, 0.5, 0.1])
    for i in range(3):
        assert np.array_equal(_decode(rows["rle"][i], 8, 10), full[i])
    assert rows["bbox"] == [[2, 2, 6, 4], [0, 0, 2, 2], [0, 0, 10, 8]]
    assert rows["area"] == [24.0, 4.0, 80.0]
    # candidate 0: IoU with gt_obj 16/24; crowd counts intersection over candidate area (4/24).
    # candidate 1: inside the crowd region -> 1.0; candidate 2: max(16/80, 16/80 crowd) = 0.2.
    assert rows["gt_iou"] == pytest.approx([16 / 24, 1.0, 0.2])

    no_gt = candidate_rows(7, small, np.ones(3, np.float32), 8, 10, None)
    assert no_gt["gt_iou"] == [None, None, None]
    empty_gt = candidate_rows(7, small, np.ones(3, np.float32), 8, 10, ([], []))
    assert empty_gt["gt_iou"] == [0.0, 0.0, 0.0]


def test_candidate_rows_drop_masks_that_vanish_and_keep_ranks_consecutive():
    big = np.zeros((3, 16, 20), bool)
    big[0, 4:12, 4:12] = True
    big[1, 0, 0] = True              # one pixel of 16x20 does not survive shrinking to 8x10
    big[2, 8:16, 10:20] = True
    rows = candidate_rows(1, big, np.array([3, 2, 1], np.float32), 8, 10, None)
    assert rows["rank"] == [0, 1] and rows["score"] == [3.0, 1.0]
    assert rows["bbox"] == [[2, 2, 4, 4], [5, 4, 5, 4]]
    empty = candidate_rows(1, np.zeros((0, 16, 20), bool), np.zeros(0, np.float32), 8, 10, None)
    assert all(v == [] for v in empty.values())


def test_parts_record_done_images_even_without_candidates(tmp_path):
    out = tmp_path / "shards" / "0-of-1.parquet"
    parts = extract.ShardParts(out, "fp-a")
    rows = candidate_rows(5, np.ones((1, 4, 4), bool), np.ones(1, np.float32), 4, 4, None)
    parts.write(rows, [5, 6], {}, 1.5)                       # image 6 had no candidates
    parts.write(candidate_rows(7, np.zeros((0, 4, 4), bool), np.zeros(0, np.float32), 4, 4, None),
                [7, 8], {8: "unreadable image x.png"}, 0.5)  # no rows at all in this part
    (parts.dir / ".part-000002.parquet.abc.tmp").write_bytes(b"torn write")
    again = extract.ShardParts(out, "fp-a")
    assert again.done == {5, 6, 7, 8} and again.skipped == {8: "unreadable image x.png"}
    assert again.candidates == 1 and again.seconds == 2.0
    assert not list(parts.dir.glob("*.tmp"))
    with pytest.raises(InputError, match="delete .*parts to start this shard over"):
        extract.ShardParts(out, "fp-b")
    again.finalize({"shard": 0})
    table = pq.read_table(out)
    assert table.schema.equals(SHARD_SCHEMA, check_metadata=False)
    assert table["image_id"].to_pylist() == [5] and table["bbox"].to_pylist() == [[0, 0, 4, 4]]
    assert not parts.dir.exists()


# ----------------------------------------------------------------------------------------------------
# End to end on a real (randomly initialised) PA network and pa_lib.propose


@pytest.fixture(scope="module")
def pa_checkpoint(tmp_path_factory):
    from ggn.pa.model import build_pa_model, default_pa_config

    torch.manual_seed(0)
    cfg = default_pa_config(backbone="resnet18", fpn_dim=16, ppm_dim=16, input_size=64)
    model = build_pa_model(cfg).eval()
    path = tmp_path_factory.mktemp("pa") / "checkpoint.pt"
    atomic_torch_save({"model": model.state_dict(), "config": cfg}, path)
    return path


def _run(ckpt, ann, img_dir, out, **kw):
    kw = {"shard": 0, "num_shards": 1, "batch_size": 2, "flush_every": 1, "device": "cpu", **kw}
    return extract_shard(ckpt, ann, img_dir, out=out, **{k: v for k, v in kw.items()
                                                            if k not in ("shard", "num_shards")},
                         shard=kw["shard"], num_shards=kw["num_shards"])


def _rows(path):
    return pq.read_table(path).replace_schema_metadata(None)


class Killed(Exception):
    pass


@pytest.mark.slow
def test_kill_resume_equals_uninterrupted_run(tmp_path, tiny_coco, pa_checkpoint):
    ann, img_dir = tiny_coco
    clean = tmp_path / "clean" / "0-of-1.parquet"
    summary = _run(pa_checkpoint, ann, img_dir, clean)
    assert summary["images_in_shard"] == 4 and summary["images_processed"] == 4
    assert summary["images_skipped"] == 0
    table = pq.read_table(clean)
    assert table.schema.equals(SHARD_SCHEMA, check_metadata=False)
    assert summary["candidates_written"] == table.num_rows
    assert table.num_rows > 0, "the random PA network gave no candidates at all; the test would be vacuous"
    ids = table["image_id"].to_pylist()
    assert set(ids) <= {1, 2, 3, 4}
    assert ids == sorted(ids)  # image order, each image contiguous
    assert not extract.parts_dir_for(clean).exists()
    assert json.loads(extract.summary_path_for(clean).read_text()) == summary
    meta = json.loads(table.schema.metadata[extract.META_SHARD])
    assert meta["images_in_shard"] == 4
    gt_iou = np.array(table["gt_iou"].to_pylist(), dtype=float)
    assert np.all((gt_iou >= 0) & (gt_iou <= 1))
    for rle, h, w, area, box in zip(table["rle"].to_pylist(), table["height"].to_pylist(),
                                    table["width"].to_pylist(), table["area"].to_pylist(),
                                    table["bbox"].to_pylist()):
        m = _decode(rle, h, w)
        assert (h, w) == (64, 64) and m.sum() == area > 0
        assert box == pytest.approx(mask_utils.toBbox({"size": [h, w], "counts": rle.encode()}).tolist())
    for image_id in set(ids):
        ranks = [r for i, r in zip(ids, table["rank"].to_pylist()) if i == image_id]
        assert ranks == list(range(len(ranks)))

    # Kill after the first flushed part (one image per part), then resume.
    out = tmp_path / "killed" / "0-of-1.parquet"

    def kill(part):
        raise Killed(part)

    with pytest.raises(Killed):
        _run(pa_checkpoint, ann, img_dir, out, after_flush=kill)
    parts = sorted(extract.parts_dir_for(out).glob("part-*.parquet"))
    assert len(parts) == 1 and not out.exists()
    assert json.loads(pq.read_metadata(parts[0]).metadata[extract.META_DONE]) == [1]

    with pytest.raises(InputError, match="another checkpoint, annotation file or settings"):
        _run(pa_checkpoint, ann, img_dir, out, top_k=5)

    flushed = []  # resumed with grouping in a worker process: same rows as in-process grouping
    resumed = _run(pa_checkpoint, ann, img_dir, out, after_flush=flushed.append, workers=1)
    assert len(flushed) == 3  # images 2, 3, 4 only: image 1 was not redone
    assert resumed["images_processed"] == 4 and resumed["candidates_written"] == table.num_rows
    assert _rows(out).equals(_rows(clean))
    assert not extract.parts_dir_for(out).exists()
    # A finished shard is left alone.
    assert _run(pa_checkpoint, ann, img_dir, out, after_flush=kill) == resumed


@pytest.mark.slow
def test_shards_cover_every_image_once_and_merge(tmp_path, tiny_coco, pa_checkpoint):
    from ggn.merge import PseudoStore, merge_shards

    ann, img_dir = tiny_coco
    outs = [tmp_path / f"shards/{i}-of-2.parquet" for i in range(2)]
    done = []
    for i, out in enumerate(outs):
        _run(pa_checkpoint, ann, img_dir, out, shard=i, num_shards=2, flush_every=2,
             after_flush=lambda p: done.extend(json.loads(pq.read_metadata(p).metadata[extract.META_DONE])))
    assert done == [1, 3, 2, 4]
    rows = [pq.read_table(o)["image_id"].to_pylist() for o in outs]
    assert set(rows[0]) <= {1, 3} and set(rows[1]) <= {2, 4}
    total = sum(len(r) for r in rows)
    assert total > 0

    store = tmp_path / "store"
    counts = merge_shards(outs, ann, tmp_path / "pseudo_gt.json", store=store, top_k=3, gt_iou_max=1.01)
    anns = json.loads((tmp_path / "pseudo_gt.json").read_text())["annotations"]
    assert counts.candidates_read == total
    expected_kept = sum(min(3, r.count(i)) for r in rows for i in set(r))
    assert len(anns) == counts.kept == expected_kept
    assert [a["id"] for a in anns] == list(range(1, len(anns) + 1))
    s = PseudoStore(store)
    assert s.image_ids() == sorted({a["image_id"] for a in anns})
    for image_id in (1, 2, 3, 4):
        assert s.annotations_for(image_id) == [a for a in anns if a["image_id"] == image_id]


@pytest.mark.slow
def test_corrupt_image_is_skipped_and_counted(tmp_path, tiny_coco, pa_checkpoint):
    from ggn.cli import main

    ann, img_dir = tiny_coco
    (img_dir / "000002.png").write_bytes(b"this is not a png \x00\xff" * 10)
    out = tmp_path / "shards" / "0-of-1.parquet"
    assert main(["extract", "--checkpoint", str(pa_checkpoint), "--annotations", str(ann), "--images",
                 str(img_dir), "--shard", "0", "--num-shards", "1", "--out", str(out), "--device", "cpu",
                 "--flush-every", "3", "--batch-size", "2", "--top-k", "5"]) == 0
    summary = json.loads(extract.summary_path_for(out).read_text())
    assert summary["images_in_shard"] == 4
    assert summary["images_processed"] == 3 and summary["images_skipped"] == 1
    assert list(summary["skipped"]) == ["2"] and "000002.png" in summary["skipped"]["2"]
    table = pq.read_table(out)
    assert 2 not in table["image_id"].to_pylist()
    assert summary["candidates_written"] == table.num_rows
    assert max(table["rank"].to_pylist(), default=0) < 5


@pytest.mark.slow
def test_image_list_without_annotations_gives_null_gt_iou(tmp_path, tiny_coco, pa_checkpoint):
    ann, img_dir = tiny_coco
    coco = json.loads(ann.read_text())
    image_list = tmp_path / "images_only.json"
    image_list.write_text(json.dumps({"images": coco["images"]}))
    out = tmp_path / "0-of-2.parquet"
    summary = _run(pa_checkpoint, image_list, img_dir, out, shard=0, num_shards=2, max_images=1, flush_every=4)
    assert summary["images_in_shard"] == 1 and summary["gt_iou"] == "null"
    table = pq.read_table(out)
    assert set(table["image_id"].to_pylist()) <= {1}
    assert table["gt_iou"].null_count == table.num_rows


def test_missing_inputs_are_clear_errors(tmp_path, tiny_coco):
    ann, img_dir = tiny_coco
    with pytest.raises(InputError, match="checkpoint"):
        extract_shard(tmp_path / "none.pt", ann, img_dir, 0, 1, tmp_path / "o.parquet")
    with pytest.raises(InputError, match=r"--propose-params \['bogus'\] are not parameters"):
        extract_shard(tmp_path / "none.pt", ann, img_dir, 0, 1, tmp_path / "o.parquet", propose_params={"bogus": 1})
    (tmp_path / "c.pt").write_bytes(b"x")
    with pytest.raises(InputError, match="no 'images' list"):
        (tmp_path / "bad.json").write_text("{}")
        extract_shard(tmp_path / "c.pt", tmp_path / "bad.json", img_dir, 0, 1, tmp_path / "o.parquet")


def test_crowd_regions_are_not_ground_truth_for_gt_iou():
    """The reference's gt_iou compares with its dataset's gt_masks, which hold no crowd region (coco_split.py
    `_parse_ann_info` sends crowds to gt_bboxes_ignore): a candidate inside a crowd keeps gt_iou 0 and can
    become pseudo-GT."""
    from ggn.extract import GroundTruth

    def square(y0, x0, n):
        m = np.zeros((8, 10), np.uint8)
        m[y0:y0 + n, x0:x0 + n] = 1
        return encode_mask(m.astype(bool))

    coco = {"images": [{"id": 1, "height": 8, "width": 10, "file_name": "a.png"}],
            "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "iscrowd": 0, "segmentation": square(4, 6, 4)},
                            {"id": 2, "image_id": 1, "category_id": 1, "iscrowd": 1, "segmentation": square(0, 0, 4)}]}
    gt = GroundTruth(coco, [1]).for_image(1)
    assert len(gt[0]) == 1 and gt[1] == [0]
    inside_crowd = np.zeros((1, 8, 10), bool)
    inside_crowd[0, 0:4, 0:4] = True
    rows = candidate_rows(1, inside_crowd, np.ones(1, np.float32), 8, 10, gt)
    assert rows["gt_iou"] == [0.0]
