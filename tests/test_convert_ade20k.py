"""`ggn convert-ade20k` on a tiny fake tree of ADE20K_2021_17_01's layout: masks, parts, skips, resume, bad layouts."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_util
from pycocotools.coco import COCO

from ggn import convert_ade20k
from ggn.cli import main as cli_main
from ggn.evaluate import evaluate
from ggn.io import InputError
from ggn.split import split

H, W = 30, 40


def box(x0, y0, x1, y1):
    """Boolean mask of the pixels x0..x1-1, y0..y1-1 and its polygon (pixel corners)."""
    m = np.zeros((H, W), bool)
    m[y0:y1, x0:x1] = True
    return m, {"x": [x0, x1, x1, x0], "y": [y0, y0, y1, y1]}


def obj(oid, name, ndx, image, mask=None, polygon=None, part_of=None, crop="0"):
    o = {"id": oid, "name": name, "name_ndx": ndx, "raw_name": name.split(",")[0], "crop": crop,
         "parts": {"hasparts": [], "ispartof": [] if part_of is None else part_of,
                   "part_level": 0 if part_of is None else 1},
         "polygon": polygon or {"x": [], "y": []}, "attributes": [], "occluded": "no"}
    if mask is not None:
        o["instance_mask"] = f"{image}/instance_{oid:03d}_{image}.png"
    return o


def write_image(folder: Path, image: str, objects: list[tuple[dict, np.ndarray | None]]):
    """ADE_val_*.jpg, ADE_val_*.json and ADE_val_*/instance_NNN_*.png, as the 2021 release stores them."""
    folder.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((H, W, 3), 90, np.uint8)).save(folder / f"{image}.jpg")
    for o, mask in objects:
        if mask is not None and "instance_mask" in o:
            path = folder / o["instance_mask"]
            path.parent.mkdir(exist_ok=True)
            Image.fromarray(mask.astype(np.uint8) * 255).save(path)
    ann = {"annotation": {"filename": f"{image}.jpg", "folder": str(folder), "imsize": [H, W, 3],
                          "scene": ["outdoor"], "object": [o for o, _ in objects]}}
    (folder / f"{image}.json").write_text(json.dumps(ann))


def fake_ade20k(root: Path) -> dict:
    """Three validation images; returns the expected visible objects as {(image file, name): mask}."""
    val = root / "images" / "ADE" / "validation"
    car, car_poly = box(5, 10, 15, 15)
    wheel, wheel_poly = box(6, 13, 8, 15)
    sky, sky_poly = box(0, 0, 40, 5)
    person, _ = box(30, 8, 33, 20)
    person[8, 30] = False  # the PNG, not the polygon, is the object's mask
    _, person_poly = box(30, 8, 33, 20)
    write_image(val / "urban" / "street", "ADE_val_00000001", [
        (obj(0, "car, auto, automobile, machine, motorcar", 401, "ADE_val_00000001", car, car_poly), car),
        (obj(1, "wheel", 3030, "ADE_val_00000001", wheel, wheel_poly, part_of=0), wheel),  # a part: left out
        (obj(2, "sky", 2420, "ADE_val_00000001", None, sky_poly), None),  # no PNG: polygon fallback
        (obj(3, "person, individual, someone, somebody, mortal, soul", 1831, "ADE_val_00000001",
             person, person_poly), person),
    ])
    cup, cup_poly = box(20, 20, 25, 26)
    edge, edge_poly = box(35, 25, 40, 30)
    write_image(val / "home" / "kitchen", "ADE_val_00000002", [
        (obj(4, "cup", 640, "ADE_val_00000002", cup, cup_poly), cup),
        (obj(6, "sky", 2420, "ADE_val_00000002", np.zeros((H, W), bool), {"x": [1, 2], "y": [1, 2]}),
         np.zeros((H, W), bool)),  # empty mask, degenerate polygon: skipped
        (obj(7, "cup", 640, "ADE_val_00000002", edge, edge_poly, crop="1"), edge),  # cut by the border
    ])
    broken = val / "home" / "kitchen" / "ADE_val_00000003.json"
    broken.write_text('{"annotation": {"object": [')  # truncated: the image is skipped and counted
    Image.fromarray(np.zeros((H, W, 3), np.uint8)).save(broken.with_suffix(".jpg"))
    return {("urban/street/ADE_val_00000001.jpg", "car, auto, automobile, machine, motorcar"): car,
            ("urban/street/ADE_val_00000001.jpg", "sky"): sky,
            ("urban/street/ADE_val_00000001.jpg", "person, individual, someone, somebody, mortal, soul"): person,
            ("home/kitchen/ADE_val_00000002.jpg", "cup"): cup | edge}


@pytest.fixture
def ade(tmp_path):
    root = tmp_path / "ADE20K_2021_17_01"
    return root, fake_ade20k(root)


def test_converts_visible_objects_with_masks_areas_and_boxes(ade, tmp_path):
    root, expected = ade
    out = tmp_path / "ade_val.json"
    assert cli_main(["convert-ade20k", "--root", str(root), "--out", str(out), "--chunk-size", "2"]) == 0
    coco = COCO(str(out))
    images = {img["file_name"]: img for img in coco.dataset["images"]}
    assert sorted(images) == ["home/kitchen/ADE_val_00000002.jpg", "urban/street/ADE_val_00000001.jpg"]
    assert [images[name]["id"] for name in sorted(images)] == [2, 1]  # ids follow ADE's numbering
    assert all((img["height"], img["width"]) == (H, W) for img in images.values())
    cats = coco.dataset["categories"]
    assert [c["name"] for c in cats] == sorted(c["name"] for c in cats) and [c["id"] for c in cats] == [1, 2, 3, 4]
    assert "wheel" not in {c["name"] for c in cats}  # parts are not objects
    assert {c["name"]: c["ade_name_ndx"] for c in cats}["cup"] == 640

    got: dict = {}
    file_of = {img["id"]: name for name, img in images.items()}
    for a in coco.dataset["annotations"]:
        mask = coco.annToMask(a).astype(bool)
        assert a["area"] == mask.sum()
        ys, xs = np.nonzero(mask)
        assert a["bbox"] == [xs.min(), ys.min(), xs.max() - xs.min() + 1, ys.max() - ys.min() + 1]
        assert a["iscrowd"] == 0 and isinstance(a["segmentation"]["counts"], str)
        key = (file_of[a["image_id"]], coco.cats[a["category_id"]]["name"])
        got[key] = got.get(key, np.zeros((H, W), bool)) | mask
    assert set(got) == set(expected)
    for key, mask in expected.items():
        assert np.array_equal(got[key], mask), key
    assert [a["id"] for a in coco.dataset["annotations"]] == [1, 2, 3, 4, 5]
    summary = coco.dataset["info"]["summary"]
    assert summary == {"images": 2, "images_skipped": 1, "objects": 5, "parts_excluded": 1, "objects_empty": 1,
                       "objects_malformed": 0, "masks_from_polygon": 1, "categories": 4}
    assert list(coco.dataset["info"]["skipped_images"]) == ["home/kitchen/ADE_val_00000003.json"]
    assert not (tmp_path / "ade_val.json.parts").exists()


def test_polygons_and_parts_on_request(ade, tmp_path):
    root, expected = ade
    out = tmp_path / "poly.json"
    summary = convert_ade20k.convert(root, out, masks="polygon", include_parts=True)
    assert summary["parts_excluded"] == 0 and summary["objects"] == 6
    coco = COCO(str(out))
    by_name = {}
    for a in coco.dataset["annotations"]:
        assert isinstance(a["segmentation"], list) and len(a["segmentation"][0]) == 8
        by_name.setdefault(coco.cats[a["category_id"]]["name"], []).append(a)
    (wheel,) = by_name["wheel"]
    assert wheel["ade_part_level"] == 1
    # The polygon of the person covers the pixel its PNG leaves out.
    person_name = "person, individual, someone, somebody, mortal, soul"
    (person,) = by_name[person_name]
    assert person["area"] == expected[("urban/street/ADE_val_00000001.jpg", person_name)].sum() + 1


def test_resume_skips_finished_parts_and_gives_the_same_file(ade, tmp_path, monkeypatch):
    root, _ = ade
    reference = tmp_path / "reference.json"
    convert_ade20k.convert(root, reference, chunk_size=1)

    class Killed(Exception):
        pass

    def kill_after_first(path):
        raise Killed(path)

    out = tmp_path / "resumed.json"
    with pytest.raises(Killed):
        convert_ade20k.convert(root, out, chunk_size=1, after_part=kill_after_first)
    parts = tmp_path / "resumed.json.parts"
    assert not out.exists() and sorted(p.name for p in parts.iterdir()) == ["part-00000.json"]
    first_part = (parts / "part-00000.json").read_bytes()

    converted = []
    real = convert_ade20k.convert_image

    def counting(path, *args, **kwargs):
        converted.append(path.name)
        return real(path, *args, **kwargs)

    monkeypatch.setattr(convert_ade20k, "convert_image", counting)
    convert_ade20k.convert(root, out, chunk_size=1, keep_parts=True)
    assert converted == ["ADE_val_00000002.json", "ADE_val_00000003.json"]  # image 1 came from its part
    assert (parts / "part-00000.json").read_bytes() == first_part
    assert out.read_bytes() == reference.read_bytes()

    # Other options invalidate the parts: everything is converted again.
    converted.clear()
    convert_ade20k.convert(root, out, chunk_size=1, masks="polygon")
    assert len(converted) == 3 and not parts.exists()


def test_usable_by_split_and_evaluate_as_the_config_does(ade, tmp_path):
    """The COCO -> ADE20K row: every ADE object unseen (`seen: all`, `eval_seen: none`)."""
    root, _ = ade
    out = tmp_path / "ade_val.json"
    convert_ade20k.convert(root, out)
    ade_val = json.loads(out.read_text())
    coco_train = {"images": [{"id": 1, "file_name": "a.jpg", "height": 10, "width": 10}],
                  "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "iscrowd": 0, "area": 4.0,
                                   "bbox": [0, 0, 2, 2], "segmentation": [[0, 0, 2, 0, 2, 2, 0, 2]]}],
                  "categories": [{"id": 1, "name": "person"}]}
    train, ev = split(coco_train, ade_val, "all", eval_seen="none")
    assert len(train["annotations"]) == 1
    assert len(ev["annotations"]) == 5 and all(a["ignored_split"] == 0 for a in ev["annotations"])
    # The ground truth itself as detections recalls every object.
    dets = [{"image_id": a["image_id"], "category_id": 1, "bbox": a["bbox"], "segmentation": a["segmentation"],
             "score": 1.0} for a in ev["annotations"]]
    metrics = evaluate(ev, dets)
    assert metrics["segm"]["AR@10"] == pytest.approx(1.0) and metrics["bbox"]["AR@10"] == pytest.approx(1.0)


def test_wrong_layouts_are_refused_with_the_path_and_the_fix(tmp_path, capsys):
    with pytest.raises(InputError, match="does not exist.*ADE20K_2021_17_01"):
        convert_ade20k.convert(tmp_path / "missing", tmp_path / "o.json")

    challenge = tmp_path / "ADEChallengeData2016"
    (challenge / "images" / "validation").mkdir(parents=True)
    (challenge / "annotations" / "validation").mkdir(parents=True)
    with pytest.raises(InputError, match="ADEChallengeData2016.*no instance annotations.*ADE20K_2021_17_01"):
        convert_ade20k.convert(challenge, tmp_path / "o.json")

    old = tmp_path / "ADE20K_2016_07_26" / "images" / "validation" / "a" / "abbey"
    old.mkdir(parents=True)
    (old / "ADE_val_00000001_atr.txt").write_text("001 # 0 # 0 # wall # wall # \"\"\n")
    with pytest.raises(InputError, match=r"_atr\.txt.*ADE20K_2016_07_26.*download"):
        convert_ade20k.convert(tmp_path / "ADE20K_2016_07_26", tmp_path / "o.json")

    empty = tmp_path / "ADE20K_2021_17_01"
    (empty / "images" / "ADE" / "validation" / "street").mkdir(parents=True)
    with pytest.raises(InputError, match=r"no ADE_\*\.json annotation file under .*validation"):
        convert_ade20k.convert(empty, tmp_path / "o.json")
    with pytest.raises(InputError, match="images/ADE folder.*two levels up"):
        convert_ade20k.convert(empty / "images" / "ADE", tmp_path / "o.json")

    # Through the command line: the message, no traceback, and --help describes the step.
    with pytest.raises(SystemExit) as exc:
        cli_main(["convert-ade20k", "--root", str(challenge), "--out", str(tmp_path / "o.json")])
    assert "ADEChallengeData2016" in str(exc.value.code)
    with pytest.raises(SystemExit):
        cli_main(["convert-ade20k", "--help"])
    assert "ADE20K_2021_17_01" in capsys.readouterr().out
