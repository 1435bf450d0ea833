"""The authors' released pseudo-GT formats (extract_pa_masks.py per-image lists; merge_annotations.py merged COCO
file) -> a shard -> `ggn merge` (top-k by rank, gt_iou < 0.5) -> the detector's training set; and
`ggn compare-pseudo` (ladder rung c). Files are built here in the formats the reference's tools write."""
from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from ggn.cli import main
from ggn.io import InputError
from ggn.masks import encode_mask

H, W = 20, 24


def _box_mask(y0, x0, y1, x1):
    m = np.zeros((H, W), bool)
    m[y0:y1, x0:x1] = True
    return m


def _train_json(tmp_path):
    images = [{"id": i, "file_name": f"im{i}.png", "height": H, "width": W} for i in (1, 2, 3)]
    anns = [{"id": 1, "image_id": 1, "category_id": 1, "segmentation": encode_mask(_box_mask(0, 0, 6, 6)),
             "bbox": [0, 0, 6, 6], "area": 36, "iscrowd": 0}]
    path = tmp_path / "train.json"
    path.write_text(json.dumps({"images": images, "annotations": anns,
                                "categories": [{"id": 1, "name": "object"}]}))
    (tmp_path / "images").mkdir()
    for im in images:
        Image.fromarray(np.zeros((H, W, 3), np.uint8)).save(tmp_path / "images" / im["file_name"])
    return path


# candidates as proposals2json writes them (extract_pa_masks.py): rank, gt_iou, score, RLE, orig_shape
def _candidate(image_id, rank, gt_iou, mask):
    return {"segmentation": encode_mask(mask), "area": int(mask.sum()), "bbox": [0, 0, 1, 1], "image_id": image_id,
            "category_id": 1, "rank": rank, "gt_iou": gt_iou, "score": 1.0 - rank / 10, "orig_shape": [H, W, 3]}


MASKS = [_box_mask(i, i, i + 5, i + 6) for i in range(8)]
FAR = _box_mask(14, 16, 20, 24)


def released_lists():
    # image 1: `rank` fields out of file order (the reference's training reads the file's order); the second in the
    # file overlaps an annotated object (gt_iou 0.9) and is not kept
    image1 = [_candidate(1, 3, 0.0, MASKS[3]), _candidate(1, 0, 0.9, MASKS[0]), _candidate(1, 1, 0.1, MASKS[1]),
              _candidate(1, 2, 0.2, MASKS[2])]
    image2 = [_candidate("im2.png", 0, 0.0, MASKS[4]), _candidate("im2.png", 1, 0.3, FAR)]  # file names
    elsewhere = [_candidate(99, 0, 0.0, MASKS[6])]  # an image outside train.json
    return [image1, image2, elsewhere]


def released_merged(tmp_path):
    anns = [a for image in released_lists() for a in image]
    for i, a in enumerate(anns, start=1000):
        a["id"] = i
    ref = json.loads((tmp_path / "train.json").read_text())
    return {"images": ref["images"], "categories": ref["categories"], "annotations": anns}


def released_folder(tmp_path):
    """coco_split_online.py's layout: {image_id}.json per image, its candidates in rank order, no rank field."""
    folder = tmp_path / "per_image"
    folder.mkdir()
    for image in released_lists():
        image_id = {"im2.png": 2}.get(image[0]["image_id"], image[0]["image_id"])
        for a in image:
            del a["rank"], a["image_id"]
        (folder / f"{image_id}.json").write_text(json.dumps(image))
    return folder


@pytest.mark.parametrize("fmt", ["lists", "merged", "folder"])
def test_released_pseudo_gt_reaches_the_training_set_with_top_k(tmp_path, fmt):
    from ggn.detector.data import build_training_dataset

    train = _train_json(tmp_path)
    if fmt == "folder":
        released = released_folder(tmp_path)
    else:
        released = tmp_path / "released.json"
        released.write_text(json.dumps(released_lists() if fmt == "lists" else released_merged(tmp_path)))
    shard = tmp_path / "shards" / "0-of-1.parquet"
    assert main(["import-pseudo", "--released", str(released), "--annotations", str(train), "--out", str(shard)]) == 0
    summary = json.loads((tmp_path / "shards" / "0-of-1.parquet.summary.json").read_text())
    # (a per-image folder is read for the images of train.json only: image 99's file is never opened)
    assert summary["imported"] == 6 and summary["outside_annotations"] == (0 if fmt == "folder" else 1)
    out = tmp_path / "pseudo_gt.json"
    assert main(["merge", "--shards", str(shard), "--annotations", str(train), "--out", str(out), "--top-k", "2",
                 "--gt-iou-max", "0.5"]) == 0
    pseudo = json.loads(out.read_text())["annotations"]
    by_image = {}
    for a in pseudo:
        by_image.setdefault(a["image_id"], []).append(a)
    # image 1: the 0.9 one is out; the first two of the rest in file order are MASKS[3] and MASKS[1], whatever
    # their `rank` fields say
    assert sorted(a["gt_iou"] for a in by_image[1]) == pytest.approx([0.0, 0.1])
    assert summary["rank_field_not_file_order"] == (0 if fmt == "folder" else 4)  # ranks 3, 0, 1, 2
    assert sorted(a["gt_iou"] for a in by_image[2]) == pytest.approx([0.0, 0.3])
    assert set(by_image) == {1, 2}
    from pycocotools import mask as mask_utils
    kept1 = {tuple(mask_utils.toBbox(dict(a["segmentation"], counts=a["segmentation"]["counts"].encode()))[:2])
             for a in by_image[1]}
    assert kept1 == {(3.0, 3.0), (1.0, 1.0)}  # MASKS[3] and MASKS[1]

    dataset = build_training_dataset(train, tmp_path / "images", "ggn", pseudo_gt=out, flip=0)
    counts = {}
    for i in range(len(dataset)):
        _, target = dataset[i]
        counts[int(target["image_id"])] = len(target["masks"])
    assert counts[1] == 1 + 2 and counts[2] == 2  # the seen object plus the kept pseudo-GT


def test_import_pseudo_refuses_other_files(tmp_path):
    train = _train_json(tmp_path)
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"images": []}))
    with pytest.raises(InputError, match="without an `annotations` list"):
        main(["import-pseudo", "--released", str(bad), "--annotations", str(train), "--out", str(tmp_path / "s.parquet")])
    other = tmp_path / "other.json"
    other.write_text(json.dumps([[_candidate(500, 0, 0.0, MASKS[0])]]))
    with pytest.raises(InputError, match="none of the 1 candidates"):
        main(["import-pseudo", "--released", str(other), "--annotations", str(train), "--out", str(tmp_path / "s.parquet")])


def test_compare_pseudo_reports_the_share_reproduced(tmp_path, capsys):
    from ggn.compare_pseudo import compare

    train = _train_json(tmp_path)
    released = tmp_path / "released.json"
    released.write_text(json.dumps(released_lists()))
    # "our" candidates: image 1 reproduces MASKS[1] exactly and MASKS[2] shifted by one pixel (IoU 0.6); image 2
    # reproduces FAR exactly and nothing that overlaps MASKS[4] at 0.5
    shifted = np.roll(MASKS[2], 1, axis=1)
    ours = [[_candidate(1, 0, 0.0, MASKS[1]), _candidate(1, 1, 0.0, shifted)],
            [_candidate(2, 0, 0.0, FAR), _candidate(2, 1, 0.0, MASKS[7])]]
    ours_file = tmp_path / "ours.json"
    ours_file.write_text(json.dumps(ours))
    shard = tmp_path / "ours.parquet"
    main(["import-pseudo", "--released", str(ours_file), "--annotations", str(train), "--out", str(shard)])
    result = compare([str(shard)], str(released), str(train), top_k=2, gt_iou_max=0.5)
    iou_shift = (MASKS[2] & shifted).sum() / (MASKS[2] | shifted).sum()
    assert 0.5 <= iou_shift < 0.8
    assert result["their_kept_masks"] == 4 and result["images_compared"] == 2
    # their kept: MASKS[1] (1.0), MASKS[2] (iou_shift), MASKS[4] (< 0.5), FAR (1.0)
    assert result["reproduced_by_any_our_candidate"]["iou>=0.5"] == pytest.approx(3 / 4)
    assert result["reproduced_by_any_our_candidate"]["iou>=0.8"] == pytest.approx(2 / 4)
    assert main(["compare-pseudo", "--ours", str(shard), "--theirs", str(released), "--annotations", str(train),
                 "--top-k", "2", "--out", str(tmp_path / "cmp.json")]) == 0
    printed = capsys.readouterr().out
    assert "IoU>=0.5 75.0%" in printed and "IoU>=0.8 50.0%" in printed


def test_rung_c_extracts_with_a_converted_pa_network_and_compares(tmp_path, capsys):
    """Ladder rung (c) end to end on stand-ins: a reference-layout PA predictor converted by `ggn import-reference`,
    our extraction with it, and `ggn compare-pseudo` against a released-format file."""
    from tests.test_import_reference import pa_predictor_keys, random_state, save_mmcv

    train = _train_json(tmp_path)
    rng = np.random.default_rng(0)
    for i in (1, 2, 3):  # texture, so that the grouping finds regions
        Image.fromarray(rng.integers(0, 255, (H, W, 3), dtype=np.uint8)).save(tmp_path / "images" / f"im{i}.png")
    src = save_mmcv(tmp_path / "pa_voc.pth", random_state(pa_predictor_keys(), seed=5))
    pa = tmp_path / "pa_voc.pt"
    assert main(["import-reference", "--checkpoint", str(src), "--out", str(pa)]) == 0
    ours = tmp_path / "ours_0-of-1.parquet"
    assert main(["extract", "--checkpoint", str(pa), "--annotations", str(train), "--images", str(tmp_path / "images"),
                 "--out", str(ours), "--device", "cpu"]) == 0
    released = tmp_path / "released.json"
    released.write_text(json.dumps(released_lists()))
    capsys.readouterr()
    assert main(["compare-pseudo", "--ours", str(ours), "--theirs", str(released), "--annotations", str(train),
                 "--top-k", "3", "--out", str(tmp_path / "cmp.json")]) == 0
    result = json.loads((tmp_path / "cmp.json").read_text())
    # images 1 and 2 are theirs and ours (the shard covers all three, candidates or not); top 3 below gt_iou 0.5:
    # three of image 1 (its rank 0 covers an annotated object), both of image 2
    assert result["images_compared"] == 2 and result["their_kept_masks"] == 5
    # no candidate of ours survives on 20x24 images: those images are compared, with nothing reproduced
    assert result["images_without_our_candidates"] == 2
    for key in ("reproduced_by_our_kept", "reproduced_by_any_our_candidate"):
        assert 0.0 <= result[key]["iou>=0.8"] <= result[key]["iou>=0.5"] <= 1.0
    printed = capsys.readouterr().out
    assert "IoU>=0.5" in printed and "their kept masks (top 3, gt_iou < 0.5): 5 on 2 images" in printed
