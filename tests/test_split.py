"""Class sets (ggn.classes) and the seen/unseen split (ggn split) on a small hand-made COCO file."""
from __future__ import annotations

import json

import pytest

from ggn.classes import COCO_CLASSES, NAMED_SETS, VOC_CLASSES, resolve_classes
from ggn.cli import main as cli_main
from ggn.io import InputError
from ggn.split import split

# COCO ids of the names used below.
CATS = [{"id": 1, "name": "person"}, {"id": 2, "name": "bicycle"}, {"id": 8, "name": "truck"},
        {"id": 38, "name": "kite"}, {"id": 44, "name": "spoon"}]


def ann(ann_id, image_id, cat, iscrowd=0):
    a = {"image_id": image_id, "category_id": cat, "iscrowd": iscrowd, "area": 4.0,
         "bbox": [0.0, 0.0, 2.0, 2.0], "segmentation": [[0, 0, 2, 0, 2, 2, 0, 2]]}
    if ann_id is not None:
        a["id"] = ann_id
    return a


def small_coco():
    images = [{"id": i, "file_name": f"{i}.jpg", "height": 10, "width": 10} for i in (1, 2, 3, 4)]
    anns = [
        ann(0, 1, 1),            # person, id 0: COCOeval cannot match it
        ann(5, 1, 8),            # truck (unseen)
        ann(5, 2, 2),            # bicycle, duplicate id 5
        ann(7, 2, 1, iscrowd=1),  # person crowd region: stays as ignore region
        ann(8, 2, 8, iscrowd=1),  # truck crowd region: goes with its class
        ann(9, 3, 38),           # image 3 has only unseen objects: dropped from training
        ann(None, 3, 44),        # id missing
        ann(11, 4, 1, iscrowd=1),  # image 4: a seen crowd region alone does not keep it
    ]
    return {"info": {"year": 2017}, "images": images, "annotations": anns, "categories": CATS}


def test_named_sets():
    assert len(COCO_CLASSES) == 80 and len(set(COCO_CLASSES)) == 80
    assert len(VOC_CLASSES) == 20 and set(VOC_CLASSES) <= set(COCO_CLASSES)
    assert len(NAMED_SETS["nonvoc"]) == 60 and not set(NAMED_SETS["nonvoc"]) & set(VOC_CLASSES)
    assert len(NAMED_SETS["nonperson"]) == 79
    assert resolve_classes("voc", CATS) == {1, 2}
    assert resolve_classes("nonvoc", CATS) == {8, 38, 44}
    assert resolve_classes("person", CATS) == {1}
    assert resolve_classes("nonperson", CATS) == {2, 8, 38, 44}
    assert resolve_classes("all", CATS) == {1, 2, 8, 38, 44}
    assert resolve_classes("kite, spoon", CATS) == {38, 44}
    assert resolve_classes(["truck", "person"], CATS) == {1, 8}
    synth = [{"id": i + 1, "name": n} for i, n in enumerate(
        ["disc", "square", "triangle", "star", "ring", "cross", "hexagon", "ellipse"])]
    seen, unseen = resolve_classes("synthetic_seen", synth), resolve_classes("synthetic_unseen", synth)
    assert len(seen) == 4 and len(unseen) == 4 and seen | unseen == set(range(1, 9))


def test_class_file_with_comments(tmp_path):
    f = tmp_path / "seen.txt"
    f.write_text("# vehicles\ntruck\n\nbicycle  # two wheels\n")
    assert resolve_classes(f"@{f}", CATS) == {2, 8}
    with pytest.raises(InputError, match="does not exist"):
        resolve_classes(f"@{tmp_path / 'nope.txt'}", CATS)


def test_unknown_class_lists_valid_names():
    with pytest.raises(InputError) as err:
        resolve_classes("person,unicorn", CATS)
    message = str(err.value)
    assert "'unicorn'" in message
    for name in ("person", "bicycle", "truck", "kite", "spoon", "voc", "nonvoc"):
        assert name in message


def test_split_train_and_eval():
    train, ev = split(small_coco(), small_coco(), "voc")
    # train: seen only, one category, image without a seen object dropped, seen crowd kept.
    assert train["categories"] == [{"id": 1, "name": "object", "supercategory": "object"}]
    assert [img["id"] for img in train["images"]] == [1, 2]
    assert [(a["image_id"], a["iscrowd"]) for a in train["annotations"]] == [(1, 0), (2, 0), (2, 1)]
    assert all(a["category_id"] == 1 for a in train["annotations"])
    # id 0 and the duplicate made every id unusable-as-given: renumbered from 1.
    assert [a["id"] for a in train["annotations"]] == [1, 2, 3]
    assert train["info"] == {"year": 2017}
    # eval: every image, original categories, seen/unseen marked; nothing dropped with default unseen.
    assert ev["categories"] == CATS and len(ev["images"]) == 4
    assert [(a["category_id"], a["ignored_split"]) for a in ev["annotations"]] == [
        (1, 1), (8, 0), (2, 1), (1, 1), (8, 0), (38, 0), (44, 0), (1, 1)]
    ids = [a["id"] for a in ev["annotations"]]
    assert ids == list(range(1, 9))


def test_split_explicit_unseen_drops_the_rest():
    _, ev = split(small_coco(), small_coco(), "person", "truck,kite")
    assert [(a["category_id"], a["ignored_split"]) for a in ev["annotations"]] == [
        (1, 1), (8, 0), (1, 1), (8, 0), (38, 0), (1, 1)]
    with pytest.raises(InputError, match="both seen and unseen"):
        split(small_coco(), small_coco(), "person", "person,kite")


def test_split_keeps_valid_ids():
    data = small_coco()
    for i, a in enumerate(data["annotations"]):
        a["id"] = 100 + i
    train, ev = split(data, data, "voc")
    assert [a["id"] for a in train["annotations"]] == [100, 102, 103]
    assert [a["id"] for a in ev["annotations"]] == list(range(100, 108))
    assert "ignored_split" not in data["annotations"][0]  # inputs untouched


def test_split_cli(tmp_path, caplog):
    src = tmp_path / "instances.json"
    src.write_text(json.dumps(small_coco()))
    train_out, eval_out = tmp_path / "out" / "train.json", tmp_path / "out" / "eval.json"
    args = ["split", "--train-annotations", str(src), "--eval-annotations", str(src), "--seen", "person,bicycle",
            "--train-out", str(train_out), "--eval-out", str(eval_out)]
    assert cli_main(args) == 0
    train, ev = json.loads(train_out.read_text()), json.loads(eval_out.read_text())
    assert len(train["annotations"]) == 3 and len(ev["annotations"]) == 8
    assert "renumbered" in caplog.text
    bad = args.copy()
    bad[bad.index("person,bicycle")] = "person,zebra"
    with pytest.raises(InputError, match="zebra.*valid names"):
        cli_main(bad)
    assert list((tmp_path / "out").iterdir()) and not any(
        p.name.startswith(".") for p in (tmp_path / "out").iterdir())  # no temporary files left


def test_complement_and_none_specs(tmp_path):
    f = tmp_path / "coco_part.txt"
    f.write_text("person\ntruck\n")
    assert resolve_classes(f"~@{f}", CATS) == {2, 38, 44}
    assert resolve_classes("~voc", CATS) == {8, 38, 44}
    assert resolve_classes("none", CATS) == set()


def test_split_with_other_eval_vocabulary():
    """Training and evaluation files name classes differently (e.g. COCO -> LVIS/UVO)."""
    eval_src = small_coco()
    eval_src["categories"] = [{"id": c["id"], "name": c["name"].upper()} for c in CATS]
    train, ev = split(small_coco(), eval_src, "voc", eval_seen="PERSON,BICYCLE")
    assert len(train["annotations"]) == 3
    assert [a["ignored_split"] for a in ev["annotations"]] == [1, 0, 1, 1, 0, 0, 0, 1]
    _, ev = split(small_coco(), eval_src, "all", eval_seen="none")
    assert [a["ignored_split"] for a in ev["annotations"]] == [0] * 8
    _, ev = split(small_coco(), eval_src, "all", eval_seen="none", eval_unseen="KITE")
    assert [(a["category_id"], a["ignored_split"]) for a in ev["annotations"]] == [(38, 0)]
    with pytest.raises(InputError, match="none of its classes.*PERSON"):
        split(small_coco(), eval_src, "voc")  # 'voc' names are not in the upper-case vocabulary
