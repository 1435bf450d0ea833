"""The bad-input catalogue (docs/bad_inputs.md): each input a careless user or an annotation tool produces, and what
the pipeline does with it -- a clear error naming the file, the field and the fix, a repair or drop that is counted,
or a skip counted in a batch stage's summary. Real components only, tiny generated data."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image

from conftest import make_tiny_coco, save_tiny_pa
from ggn import extract
from ggn.annotations import validate_coco
from ggn.cli import main as cli_main
from ggn.coco_data import CocoInstances
from ggn.evaluate import evaluate
from ggn.images import ImageError, image_path, load_image, read_header, read_image
from ggn.io import InputError, atomic_torch_save, load_checkpoint
from ggn.merge import merge_shards
from ggn.split import split

# ----------------------------------------------------------------------------------------------------
# Images


def _save(img: Image.Image, path: Path, **kw) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path, **kw)
    return path


def test_missing_empty_truncated_and_garbage_files_are_image_errors(tmp_path):
    good = _save(Image.fromarray(np.full((20, 30, 3), 90, np.uint8)), tmp_path / "a.jpg")
    data = good.read_bytes()
    (tmp_path / "cut.jpg").write_bytes(data[: len(data) // 2])
    png = _save(Image.fromarray(np.full((20, 30, 3), 90, np.uint8)), tmp_path / "b.png").read_bytes()
    (tmp_path / "cut.png").write_bytes(png[: len(png) - 30])
    (tmp_path / "empty.png").write_bytes(b"")
    (tmp_path / "garbage.jpg").write_bytes(b"\x00\x01 not an image" * 20)
    for name in ("missing.jpg", "cut.jpg", "cut.png", "empty.png", "garbage.jpg"):
        with pytest.raises(ImageError, match=name):
            read_image(tmp_path / name)
        assert isinstance(read_header(tmp_path / name), str)  # what training's up-front check sees
    assert read_image(good).shape == (20, 30, 3)


def test_grayscale_palette_rgba_cmyk_become_rgb(tmp_path):
    gray = np.arange(20 * 30, dtype=np.uint8).reshape(20, 30)
    out = read_image(_save(Image.fromarray(gray), tmp_path / "gray.png"))
    assert out.shape == (20, 30, 3) and out.dtype == np.uint8 and (out[..., 1] == gray).all()
    pal = Image.fromarray(gray).convert("P")
    assert read_image(_save(pal, tmp_path / "pal.png")).shape == (20, 30, 3)
    rgba = np.zeros((20, 30, 4), np.uint8)
    rgba[..., 0], rgba[..., 3] = 200, 128
    out = read_image(_save(Image.fromarray(rgba), tmp_path / "rgba.png"))
    assert out.shape == (20, 30, 3) and (out[..., 0] == 200).all()
    cmyk = Image.new("CMYK", (30, 20), (0, 255, 255, 0))  # pure red in CMYK
    out = read_image(_save(cmyk, tmp_path / "cmyk.jpg", quality=95))
    assert out.shape == (20, 30, 3) and out[..., 0].mean() > 200 and out[..., 1].mean() < 60


def test_16_bit_png_is_scaled_not_clipped_to_white(tmp_path):
    deep = (np.linspace(0, 65535, 20 * 30).reshape(20, 30)).astype(np.uint16)
    path = _save(Image.fromarray(deep), tmp_path / "deep.png")
    with Image.open(path) as im:
        assert im.mode.startswith("I")  # the file is 16-bit
    out = read_image(path)
    assert out.shape == (20, 30, 3)
    expected = np.rint(deep / 257.0).astype(np.uint8)
    assert np.abs(out[..., 0].astype(int) - expected).max() <= 1
    assert out.min() == 0 and out.max() == 255 and 100 < out.mean() < 155  # not all white


def test_exif_rotated_photo_is_read_as_displayed_and_checked_against_its_annotation(tmp_path):
    pixels = np.zeros((24, 48, 3), np.uint8)
    pixels[:, :8] = 255  # a white band on the left of the stored image
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    path = _save(Image.fromarray(pixels), tmp_path / "photos" / "rot.jpg", exif=exif.tobytes(), quality=95)
    out = read_image(path)
    assert out.shape == (48, 24, 3)  # as the annotation tool showed it
    assert out[:8].mean() > 200 and out[-8:].mean() < 50  # the band is now on top
    assert read_header(path)[:2] == (48, 24)
    info = {"id": 1, "file_name": "rot.jpg", "height": 48, "width": 24}
    assert load_image(tmp_path / "photos", info).shape == (48, 24, 3)
    with pytest.raises(ImageError, match="24x48.*annotation says 48x24"):
        load_image(tmp_path / "photos", {**info, "height": 24, "width": 48})


def test_image_size_disagreeing_with_annotation_is_skipped_by_extract_and_refused_by_training(tmp_path):
    ann, img_dir = make_tiny_coco(tmp_path, num_images=3, size=32)
    Image.fromarray(np.zeros((20, 32, 3), np.uint8)).save(img_dir / "000002.png")  # annotated 32x32
    (img_dir / "000003.png").unlink()  # missing
    data = CocoInstances(ann, img_dir)
    with pytest.raises(InputError, match=r"2 of the 3 images .*cannot be trained on.*000002.png: 32x20.*000003.png"):
        data.verify_images()
    with pytest.raises(ImageError, match="annotation says 32x32"):
        data[1]


@pytest.fixture(scope="module")
def pa_ckpt(tmp_path_factory):
    return save_tiny_pa(tmp_path_factory.mktemp("pa") / "checkpoint.pt", input_size=32)


def test_extract_skips_and_counts_missing_and_wrong_size_images(tmp_path, pa_ckpt):
    ann, img_dir = make_tiny_coco(tmp_path, num_images=3, size=32)
    Image.fromarray(np.zeros((20, 32, 3), np.uint8)).save(img_dir / "000002.png")
    (img_dir / "000003.png").unlink()
    out = tmp_path / "0-of-1.parquet"
    summary = extract.extract_shard(pa_ckpt, ann, img_dir, 0, 1, out, device="cpu", top_k=3)
    assert summary["images_processed"] == 1 and summary["images_skipped"] == 2
    assert "annotation says 32x32" in summary["skipped"]["2"] and "does not exist" in summary["skipped"]["3"]
    assert set(pq.read_table(out)["image_id"].to_pylist()) <= {1}


def test_file_name_with_subfolders_is_read(tmp_path):
    _save(Image.fromarray(np.zeros((8, 9, 3), np.uint8)), tmp_path / "imgs" / "a" / "b" / "x.png")
    assert load_image(tmp_path / "imgs", {"id": 1, "file_name": "a/b/x.png", "height": 8, "width": 9}).shape == (8, 9, 3)


@pytest.mark.parametrize("name", ["../secret.png", "/etc/passwd", "a/../../x.png", "C:\\data\\x.png"])
def test_file_name_leaving_the_image_folder_is_refused(tmp_path, name):
    with pytest.raises(InputError, match="leaves the image folder"):
        image_path(tmp_path, name)
    coco = {"images": [{"id": 1, "file_name": name, "height": 8, "width": 8}], "annotations": [], "categories": []}
    with pytest.raises(InputError, match=r"x\.json: image 1: file_name .* leaves the image folder"):
        validate_coco(coco, "x.json")


# ----------------------------------------------------------------------------------------------------
# Annotation files

SQUARE = [[2, 2, 12, 2, 12, 12, 2, 12]]


def _coco(anns, images=None, cats=None):
    images = images or [{"id": 1, "file_name": "1.png", "height": 20, "width": 20},
                        {"id": 2, "file_name": "2.png", "height": 20, "width": 20}]
    cats = cats or [{"id": 1, "name": "box"}, {"id": 2, "name": "disc"}]
    return {"images": images, "annotations": anns, "categories": cats}


def _ann(i, image_id=1, cat=1, seg=None, **kw):
    return {"id": i, "image_id": image_id, "category_id": cat, "iscrowd": 0,
            "segmentation": SQUARE if seg is None else seg,
            "bbox": [2.0, 2.0, 10.0, 10.0], "area": 100.0, **kw}


def test_malformed_and_truncated_json_is_a_clear_error(tmp_path):
    (tmp_path / "e.json").write_text('{"images": [1, 2')  # truncated
    with pytest.raises(InputError, match=r"e\.json is not valid JSON"):
        cli_main(["split", "--train-annotations", str(tmp_path / "e.json"), "--seen", "all",
                  "--train-out", str(tmp_path / "t.json")])


@pytest.mark.parametrize("key", ["images", "annotations", "categories"])
def test_missing_top_level_list_is_a_clear_error(key):
    coco = _coco([_ann(1)])
    del coco[key]
    with pytest.raises(InputError, match=f"has no '{key}' list"):
        validate_coco(coco, "x.json")


def test_bad_polygons_empty_segmentation_and_uncompressed_rle_are_repaired_or_dropped_and_counted():
    from pycocotools import mask as mask_utils

    full = np.zeros((20, 20), np.uint8)
    full[5:9, 3:7] = 1
    counts = mask_utils.encode(np.asfortranarray(full))
    uncompressed = {"size": [20, 20], "counts": [int(c) for c in _rle_runs(full)]}
    anns = [_ann(1, seg=[[1, 1, 5, 5]]),                        # 2-point polygon: dropped
            _ann(2, seg=[[1, 1, 5, 5], SQUARE[0]]),             # one good part: that part kept
            _ann(3, seg=[]),                                    # empty segmentation: dropped
            _ann(4, seg=uncompressed),                          # uncompressed RLE: converted
            _ann(5, seg=[[3, 3, 3, 3, 3, 3]])]                  # 3 equal points: no pixel, dropped
    out, n = validate_coco(_coco(anns), "x.json")
    assert [a["id"] for a in out["annotations"]] == [2, 4]
    assert out["annotations"][0]["segmentation"] == SQUARE
    rle = out["annotations"][1]["segmentation"]
    assert isinstance(rle["counts"], str) and rle["counts"] == counts["counts"].decode()
    assert n == {"degenerate_polygons": 1, "polygons_dropped": 2, "no_mask": 1, "rle_converted": 1, "empty_mask": 1}


def _rle_runs(mask):
    flat = mask.flatten(order="F")
    runs, value, count = [], 0, 0
    for v in flat:
        if v == value:
            count += 1
        else:
            runs.append(count)
            value, count = v, 1
    runs.append(count)
    return runs


def test_zero_area_and_out_of_image_boxes_are_taken_from_the_mask():
    anns = [_ann(1, bbox=[2.0, 2.0, 0.0, 10.0]), _ann(2, bbox=[15.0, 15.0, 30.0, 30.0]), _ann(3, bbox=None, area=0)]
    out, n = validate_coco(_coco(anns), "x.json")
    assert all(a["bbox"] == [2.0, 2.0, 10.0, 10.0] for a in out["annotations"])
    assert n["boxes_from_mask"] == 3 and n["areas_from_mask"] == 1
    # ... and so box AR counts them: ground truth as detections gives 1.0 (a zero box would give 0).
    ev = _coco([_ann(1, bbox=[2.0, 2.0, 0.0, 0.0])])
    dets = [{"image_id": 1, "bbox": [2.0, 2.0, 10.0, 10.0], "segmentation": SQUARE, "score": 1.0}]
    assert evaluate(ev, dets)["bbox"]["AR@10"] == pytest.approx(1.0)


def test_annotation_ids_zero_missing_or_duplicated_are_renumbered():
    anns = [_ann(0), _ann(4), _ann(5, image_id=2), _ann(5, image_id=2)]
    del anns[1]["id"]
    out, n = validate_coco(_coco(anns), "x.json")
    assert [a["id"] for a in out["annotations"]] == [1, 2, 3, 4] and n["ids_renumbered"] == 3  # 0, none, 2nd 5


def test_duplicated_image_ids_are_refused():
    images = [{"id": 1, "file_name": "1.png", "height": 20, "width": 20},
              {"id": 1, "file_name": "2.png", "height": 20, "width": 20}]
    with pytest.raises(InputError, match="image id 1 is used twice"):
        validate_coco(_coco([_ann(1)], images=images), "x.json")


def test_category_id_not_in_categories_is_refused():
    with pytest.raises(InputError, match="annotation 7 has category_id 9, which is not in 'categories'"):
        validate_coco(_coco([_ann(7, cat=9)]), "x.json")


def test_background_category_zero_is_dropped_with_its_annotations():
    cats = [{"id": 0, "name": "_background_"}, {"id": 1, "name": "box"}]
    out, n = validate_coco(_coco([_ann(1, cat=0), _ann(2)], cats=cats), "x.json")
    assert out["categories"] == [{"id": 1, "name": "box"}]
    assert [a["id"] for a in out["annotations"]] == [2] and n["background_class"] == 1
    train, ev = split(_coco([_ann(1, cat=0), _ann(2), _ann(3, image_id=2, cat=2)],
                          cats=cats + [{"id": 2, "name": "disc"}]),
                      _coco([_ann(1, cat=0), _ann(3, image_id=2, cat=2)], cats=cats + [{"id": 2, "name": "disc"}]),
                      "all", allow_no_unseen=True)  # "all" does not make the background a seen class
    assert len(train["annotations"]) == 2 and len(ev["annotations"]) == 1
    assert [c["name"] for c in ev["categories"]] == ["box", "disc"]


def test_images_without_annotations_dropped_from_training_kept_for_evaluation_and_mining(tmp_path):
    src = tmp_path / "src.json"
    src.write_text(json.dumps(_coco([_ann(1, cat=1), _ann(2, image_id=2, cat=2)])))
    assert cli_main(["split", "--train-annotations", str(src), "--eval-annotations", str(src), "--seen", "box",
                     "--train-out", str(tmp_path / "t.json"), "--eval-out", str(tmp_path / "e.json"),
                     "--mining-out", str(tmp_path / "m.json")]) == 0
    assert [i["id"] for i in json.loads((tmp_path / "t.json").read_text())["images"]] == [1]
    assert [i["id"] for i in json.loads((tmp_path / "e.json").read_text())["images"]] == [1, 2]
    mining = json.loads((tmp_path / "m.json").read_text())
    assert [i["id"] for i in mining["images"]] == [1, 2] and len(mining["annotations"]) == 1


def test_empty_dataset_is_refused():
    with pytest.raises(InputError, match="lists no images"):
        validate_coco(_coco([], images=[]) | {"images": []}, "x.json")


def test_box_only_export_is_refused():
    anns = [{k: v for k, v in _ann(i).items() if k != "segmentation"} for i in (1, 2)]
    with pytest.raises(InputError, match="box-only export.*export polygons or masks"):
        validate_coco(_coco(anns), "x.json")


def test_no_seen_class_object_refuses_pa_training_before_any_step(tmp_path):
    ann, img_dir = make_tiny_coco(tmp_path, num_images=2, size=32)
    train, _ = split(json.loads(ann.read_text()), None, "none")
    (tmp_path / "train.json").write_text(json.dumps(train))
    with pytest.raises(InputError, match="lists no images.*no image has an object of a seen class"):
        cli_main(["train-pa", "--train-json", str(tmp_path / "train.json"), "--images", str(img_dir),
                  "--out", str(tmp_path / "pa.pt"), "--backbone", "resnet18", "--device", "cpu"])
    assert not (tmp_path / "pa.pt").exists()


def test_seen_unseen_spec_leaving_nothing_to_evaluate_is_refused():
    coco = _coco([_ann(1, cat=1), _ann(2, image_id=2, cat=2)])
    with pytest.raises(InputError, match="no object of an unseen class.*targets: pseudo"):
        split(coco, coco, "all")
    train, ev = split(coco, coco, "all", allow_no_unseen=True)  # pseudo-GT only: a warning
    assert len(ev["annotations"]) == 2


def test_unknown_class_name_is_refused_with_the_valid_names():
    coco = _coco([_ann(1)])
    with pytest.raises(InputError, match="unknown class name.*'bxo'.*valid names in this file: box, disc"):
        split(coco, coco, "bxo")


# ----------------------------------------------------------------------------------------------------
# Detections and evaluation


def test_nan_detection_scores_are_refused():
    dets = [{"image_id": 1, "bbox": [2, 2, 10, 10], "segmentation": SQUARE, "score": float("nan")}]
    with pytest.raises(InputError, match="1 of 1 detections have a NaN or infinite score"):
        evaluate(_coco([_ann(1)]), dets)


def test_detections_for_another_evaluation_set_are_refused():
    dets = [{"image_id": 77, "bbox": [2, 2, 10, 10], "segmentation": SQUARE, "score": 0.5}]
    with pytest.raises(InputError, match="made for another evaluation set"):
        evaluate(_coco([_ann(1)]), dets)


def _metrics_file(path, ar100):
    values = {"AR@10": ar100, "AR@100": ar100}
    path.write_text(json.dumps({"bbox": values, "segm": values}))
    return path


def test_undefined_ar_reaches_the_table_as_undefined_not_minus_100(tmp_path):
    from ggn.table import gather, make_row

    row = make_row("no unseen", _metrics_file(tmp_path / "b.json", -1.0), _metrics_file(tmp_path / "g.json", 0.233))
    assert row["baseline_mask_AR@100"] is None and row["ggn_mask_AR@100"] == 23.3
    assert row["gain_mask_AR@100"] is None and "baseline_mask_AR@100" in row["undefined"]
    (tmp_path / "row.json").write_text(json.dumps(row))
    gather([tmp_path / "row.json"], tmp_path / "t.csv", tmp_path / "t.md")
    md = (tmp_path / "t.md").read_text()
    line = next(x for x in md.splitlines() if x.startswith("| no unseen"))
    assert "undef. → 23.3" in line and "-100" not in md and "+123" not in md and line.count("undef.") == 5


def test_pipe_in_an_experiment_name_keeps_the_markdown_table_whole(tmp_path):
    from ggn.table import render_html, render_markdown, make_row

    row = make_row("a|b", _metrics_file(tmp_path / "b.json", 0.1), _metrics_file(tmp_path / "g.json", 0.2),
                   training="VOC | COCO")
    md = render_markdown([row])
    header, _, line = md.splitlines()[:3]
    assert line.startswith("| a\\|b | VOC \\| COCO |")
    unescaped = lambda x: len(__import__("re").findall(r"(?<!\\)\|", x))  # noqa: E731
    assert unescaped(line) == unescaped(header)
    assert "<td>a|b</td>" in render_html(md)


# ----------------------------------------------------------------------------------------------------
# Artefacts: checkpoints and shards


def _tiny_detector(path):
    from ggn.detector.model import build_detector, detector_config

    cfg = detector_config(backbone="resnet18", fpn_channels=16, representation_size=32, mask_channels=16,
                          min_size=64, max_size=64)
    atomic_torch_save({"model": build_detector(cfg).state_dict(), "config": cfg}, path)
    return path


def test_predict_skips_and_counts_missing_and_wrong_size_images(tmp_path):
    ann, img_dir = make_tiny_coco(tmp_path, num_images=3, size=32)
    Image.fromarray(np.zeros((20, 32, 3), np.uint8)).save(img_dir / "000002.png")
    (img_dir / "000003.png").unlink()
    det, out = _tiny_detector(tmp_path / "det.pt"), tmp_path / "dets.json"
    assert cli_main(["predict", "--checkpoint", str(det), "--annotations", str(ann), "--images", str(img_dir),
                     "--out", str(out), "--device", "cpu", "--max-detections", "5", "--rpn-proposals", "20"]) == 0
    summary = json.loads((tmp_path / "dets.json.summary.json").read_text())
    assert summary["images_processed"] == 1 and summary["images_skipped"] == 2 and set(summary["skipped"]) == {"2", "3"}
    assert {d["image_id"] for d in json.loads(out.read_text())} <= {1}


def test_checkpoint_of_another_network_says_what_it_holds(tmp_path, pa_ckpt):
    from ggn.detector.model import load_detector
    from ggn.pa.model import load_pa_model

    det = _tiny_detector(tmp_path / "det.pt")
    with pytest.raises(InputError, match=r"holds a PA network \(resnet18\), but this step needs a detector checkpoint"):
        load_detector(pa_ckpt)
    with pytest.raises(InputError, match=r"holds a Mask R-CNN detector \(resnet18\), but this step needs a PA checkpoint"):
        load_pa_model(det)
    epoch = {"model": {}, "config": torch.load(pa_ckpt, weights_only=True)["config"], "optimizer": {}, "epoch": 3}
    torch.save(epoch, tmp_path / "epoch_003.pt")
    with pytest.raises(InputError, match="resumable training state of a PA network"):
        load_pa_model(tmp_path / "epoch_003.pt")
    torch.save({"layer1.0.conv1.weight": torch.zeros(1)}, tmp_path / "resnet.pt")
    with pytest.raises(InputError, match="bare ResNet weights"):
        load_detector(tmp_path / "resnet.pt")


def test_truncated_checkpoint_is_a_clear_error(tmp_path, pa_ckpt):
    data = Path(pa_ckpt).read_bytes()
    (tmp_path / "cut.pt").write_bytes(data[: len(data) // 3])
    with pytest.raises(InputError, match="cut.pt cannot be read .* truncated, damaged"):
        load_checkpoint(tmp_path / "cut.pt", expect="pa")


@pytest.fixture(scope="module")
def two_shards(tmp_path_factory, pa_ckpt):
    root = tmp_path_factory.mktemp("shards")
    ann, img_dir = make_tiny_coco(root, num_images=4, size=32)
    outs = [root / f"{i}-of-2.parquet" for i in range(2)]
    for i, out in enumerate(outs):
        extract.extract_shard(pa_ckpt, ann, img_dir, i, 2, out, device="cpu", top_k=3)
    one = root / "one" / "0-of-1.parquet"
    extract.extract_shard(pa_ckpt, ann, img_dir, 0, 1, one, device="cpu", top_k=3)
    return ann, outs, one


def test_merge_refuses_one_of_two_shards(tmp_path, two_shards):
    ann, outs, _ = two_shards
    with pytest.raises(InputError, match=r"1 of the 2 shards are missing \(index 1\)"):
        merge_shards([outs[0]], ann, tmp_path / "p.json")
    assert merge_shards(outs, ann, tmp_path / "p.json").images_in_shards >= 1


def test_merge_refuses_shards_of_another_shard_count(tmp_path, two_shards):
    ann, outs, one = two_shards
    with pytest.raises(InputError, match=r"different --num-shards \(\[1, 2\]\)"):
        merge_shards([one, outs[1]], ann, tmp_path / "p.json")


def test_merge_refuses_shards_of_another_annotation_file(tmp_path, two_shards):
    ann, outs, _ = two_shards
    other = tmp_path / "other.json"
    coco = json.loads(Path(ann).read_text())
    coco["annotations"] = coco["annotations"][:1]
    other.write_text(json.dumps(coco))
    with pytest.raises(InputError, match="extracted from another annotation file"):
        merge_shards(outs, other, tmp_path / "p.json")


# ----------------------------------------------------------------------------------------------------
# Outputs


def test_unwritable_output_folder_is_refused_before_the_step_runs(tmp_path):
    (tmp_path / "a_file").write_text("x")
    for out in ("/proc/ggn-no-such-folder/m.json", str(tmp_path / "a_file" / "m.json")):
        with pytest.raises(InputError, match="--out .*(cannot write in|is a file, not a folder)"):
            cli_main(["evaluate", "--gt", str(tmp_path / "none.json"), "--detections", str(tmp_path / "none.json"),
                      "--out", out])


# ----------------------------------------------------------------------------------------------------
# Third round (issue 20): silent results, files in the wrong role, files others can read, huge images


def test_atomic_writes_keep_the_mode_a_plain_open_gives_under_the_umask(tmp_path):
    import os

    from ggn.io import atomic_write_json
    from ggn.merge import StoreWriter

    old = os.umask(0o022)
    try:
        for mask in (0o022, 0o002, 0o077):
            os.umask(mask)
            atomic_write_json(tmp_path / f"row{mask:o}.json", {"a": 1})
            (tmp_path / f"plain{mask:o}").write_text("x")
            modes = [(tmp_path / f"{name}{mask:o}{ext}").stat().st_mode & 0o777 for name, ext in
                     (("row", ".json"), ("plain", ""))]
            assert modes == [0o666 & ~mask] * 2
            store = StoreWriter(tmp_path / f"store{mask:o}")
            assert store.tmp.stat().st_mode & 0o777 == 0o777 & ~mask  # mkdtemp alone gives 0700
    finally:
        os.umask(old)


BOUND_CASES = [
    (["merge", "--shards", "s.parquet", "--annotations", "a.json", "--out", "p.json", "--gt-iou-max", "5"],
     r"--gt-iou-max 5.0 is above its maximum 1.*merge.gt_iou_max"),
    (["train-pa", "--train-json", "t.json", "--images", "i", "--out", "o.pt", "--epochs", "-1"],
     r"--epochs -1 is below its minimum 1.*pa.epochs"),
    (["train-detector", "--train-json", "t.json", "--images", "i", "--out", "o.pt", "--epochs", "0"],
     r"--epochs 0 is below its minimum 1.*detector.epochs"),
    (["train-detector", "--train-json", "t.json", "--images", "i", "--out", "o.pt", "--lr", "0"],
     r"--lr 0.0 is not above 0.*detector.lr"),
    (["extract", "--checkpoint", "p.pt", "--annotations", "a.json", "--images", "i", "--out", "s.parquet",
      "--batch-size", "0"], r"--batch-size 0 is below its minimum 1.*extract.batch_size"),
    (["synth", "--out", "d", "--texture-period", "0", "4"], r"--texture-period 0.0 is not above 0"),
    (["predict", "--checkpoint", "d.pt", "--annotations", "a.json", "--images", "i", "--out", "o.json",
      "--batch-size", "0"], r"--batch-size 0 is below its minimum 1.*predict.batch_size"),
    (["rank-oln", "--shard", "s", "--checkpoint", "c", "--annotations", "a", "--images", "i", "--out", "o",
      "--pa-weight", "-1"], r"--pa-weight -1.0 is below its minimum 0"),
]


@pytest.mark.parametrize("argv, message", BOUND_CASES, ids=[c[0][0] + " " + c[0][-2] for c in BOUND_CASES])
def test_the_command_line_refuses_what_the_config_schema_refuses(argv, message, capsys):
    with pytest.raises(SystemExit) as stop:
        cli_main(argv)
    assert stop.value.code == 2
    assert __import__("re").search(message, capsys.readouterr().err)


def test_command_line_bounds_are_the_schemas_and_every_one_reaches_its_step():
    """One set of bounds: read from the schema, and each names an option its step really has (a renamed option
    would otherwise leave its bound unchecked)."""
    import yaml

    from ggn.bounds import SCHEMA, STEP_BLOCKS, option_bounds
    from ggn.config_check import _options

    schema = yaml.safe_load(SCHEMA.read_text())["$defs"]["experiment"]["properties"]
    assert option_bounds("merge")["gt_iou_max"] == {"minimum": 0, "maximum": 1} == {
        k: schema["merge"]["properties"]["gt_iou_max"][k] for k in ("minimum", "maximum")}
    for step, block in STEP_BLOCKS.items():
        bounded = set(option_bounds(step))
        assert bounded, step
        assert bounded - {"num_shards"} <= _options(step), (step, bounded - _options(step))


def test_pa_training_on_images_without_annotations_stops_before_a_checkpoint(tmp_path):
    ann, img_dir = make_tiny_coco(tmp_path, num_images=2, size=32)
    coco = json.loads(ann.read_text())
    coco["annotations"] = [dict(a, iscrowd=1) for a in coco["annotations"][:1]]  # a crowd region teaches nothing
    (tmp_path / "none.json").write_text(json.dumps(coco))
    out = tmp_path / "pa" / "checkpoint.pt"
    with pytest.raises(InputError, match="none of its 2 images has an annotated object .* would learn nothing"):
        cli_main(["train-pa", "--train-json", str(tmp_path / "none.json"), "--images", str(img_dir), "--out",
                  str(out), "--backbone", "resnet18", "--fpn-dim", "16", "--ppm-dim", "16", "--input-size", "32",
                  "--workers", "0", "--epochs", "1"])
    assert not out.parent.exists() or not any(out.parent.rglob("*.pt"))


def test_detector_training_without_any_object_stops_before_a_checkpoint(tmp_path):
    ann, img_dir = make_tiny_coco(tmp_path, num_images=2, size=32)
    coco = json.loads(ann.read_text())
    coco["annotations"] = []
    (tmp_path / "none.json").write_text(json.dumps(coco))
    out = tmp_path / "det" / "checkpoint.pt"
    with pytest.raises(InputError, match="none of its 2 training images has an object .* would learn nothing"):
        cli_main(["train-detector", "--train-json", str(tmp_path / "none.json"), "--images", str(img_dir),
                  "--out", str(out), "--backbone", "resnet18", "--workers", "0", "--epochs", "1"])
    assert not out.parent.exists() or not any(out.parent.rglob("*.pt"))


def test_training_file_or_an_annotation_file_as_pseudo_gt_is_refused_and_pseudo_gt_is_counted(tmp_path, caplog):
    from ggn.detector.data import build_training_dataset

    ann, img_dir = make_tiny_coco(tmp_path, num_images=2, size=32)
    with pytest.raises(InputError, match="is the training file itself"):
        build_training_dataset(ann, img_dir, variant="ggn", pseudo_gt=ann)
    copy = tmp_path / "copy.json"
    copy.write_text(ann.read_text())
    with pytest.raises(InputError, match=r"copy.json is not a pseudo-GT file: \d+ of its \d+ annotations have no "
                                         "'score'"):
        build_training_dataset(ann, img_dir, variant="ggn", pseudo_gt=copy)
    coco = json.loads(ann.read_text())
    pseudo = tmp_path / "pseudo_gt.json"
    pseudo.write_text(json.dumps({**coco, "annotations": [dict(a, score=0.5) for a in coco["annotations"][:2]]}))
    with caplog.at_level("INFO"):
        build_training_dataset(ann, img_dir, variant="ggn", pseudo_gt=pseudo)
    assert any("pseudo-GT: 2 objects from" in r.getMessage() for r in caplog.records)


def test_a_training_file_never_split_is_named_and_an_evaluation_file_refused(tmp_path, caplog):
    from ggn.coco_data import CocoInstances

    ann, img_dir = make_tiny_coco(tmp_path, num_images=3, size=32)
    with caplog.at_level("WARNING"):
        CocoInstances(ann, img_dir).check_training_file("train-detector")
    assert any("2 categories (box, disc): it is not a training file of `ggn split`" in r.getMessage()
               for r in caplog.records)
    caplog.clear()
    train, evaluation = split(json.loads(ann.read_text()), json.loads(ann.read_text()), "box")
    (tmp_path / "train.json").write_text(json.dumps(train))
    with caplog.at_level("WARNING"):
        CocoInstances(tmp_path / "train.json", img_dir).check_training_file("train-detector")
    assert not caplog.records
    (tmp_path / "eval.json").write_text(json.dumps(evaluation))  # unseen objects marked: refused for training
    with pytest.raises(InputError, match=r"eval.json is an evaluation file of `ggn split`: \d+ of its annotations "
                                         r"are unseen-class objects \(ignored_split 0\)"):
        CocoInstances(tmp_path / "eval.json", img_dir).check_training_file("train-detector")
    with pytest.raises(InputError, match="is an evaluation file of `ggn split`"):
        extract._load_coco(tmp_path / "eval.json")


def test_negative_box_sizes_and_string_image_ids_are_named(tmp_path):
    box = {"image_id": 1, "bbox": [12, 12, -10, -10], "segmentation": SQUARE, "score": 0.5}
    with pytest.raises(InputError, match="1 of 1 detections have a box of negative width or height"):
        evaluate(_coco([_ann(1)]), [box], iou_types=("bbox",))
    with pytest.raises(InputError, match="annotation 1 has bbox .* width and height >= 0"):
        evaluate(_coco([_ann(1, bbox=[12.0, 12.0, -10.0, -10.0])]), [dict(box, bbox=[2, 2, 10, 10])],
                 iou_types=("bbox",))
    with pytest.raises(InputError, match="2 of 2 detections give their image_id as a string"):
        evaluate(_coco([_ann(1)]), [dict(box, bbox=[2, 2, 10, 10], image_id=i) for i in ("1", "2")])


def test_non_finite_scores_written_by_python_json_are_named_not_called_truncated(tmp_path):
    dets = [{"image_id": 1, "bbox": [2, 2, 10, 10], "segmentation": SQUARE, "score": float("nan")}]
    (tmp_path / "nan.json").write_text(json.dumps(dets))  # Python writes NaN, which JSON has not
    with pytest.raises(InputError, match="holds NaN or Infinity.*diverged") as err:
        evaluate(_coco([_ann(1)]), tmp_path / "nan.json")
    assert "truncated" not in str(err.value)
    (tmp_path / "cut.json").write_text(json.dumps(dets).replace("NaN", "0.5")[:40])
    with pytest.raises(InputError, match="is truncated"):
        evaluate(_coco([_ann(1)]), tmp_path / "cut.json")


def test_flat_polygons_are_read_as_the_polygon_they_are_and_counted():
    flat = SQUARE[0]
    data, counts = validate_coco(_coco([_ann(1, seg=flat), _ann(2, seg=SQUARE)]), "x.json")
    assert counts == {"flat_polygons": 1}
    assert [a["segmentation"] for a in data["annotations"]] == [SQUARE, SQUARE]
    train, _ = split(_coco([_ann(1, seg=flat), _ann(2, image_id=2, cat=2, seg=flat)]), None, "box")
    assert len(train["annotations"]) == 1 and train["annotations"][0]["segmentation"] == SQUARE


def test_a_metrics_file_where_a_table_row_belongs_is_named(tmp_path):
    from ggn.table import gather

    metrics = _metrics_file(tmp_path / "baseline.json", 0.2)
    with pytest.raises(InputError, match="baseline.json is a metrics file of `ggn evaluate`, not a row of "
                                         "`ggn table row`"):
        gather([metrics], tmp_path / "t.csv", tmp_path / "t.md")
    assert not (tmp_path / "t.csv").exists()


def test_recipe_writes_its_documented_out_file_for_a_shipped_config(tmp_path):
    out = tmp_path / "recipe.json"
    config = Path(__file__).resolve().parents[1] / "config" / "coco_voc_to_nonvoc.yaml"
    assert cli_main(["recipe", "--out", str(out), str(config)]) == 0
    resolved = json.loads(out.read_text())[str(config)]
    assert resolved["coco_voc_to_nonvoc"]["pa"]["train_json"] == "TRAIN.json"  # a Path option, as a string


def test_an_image_name_in_another_unicode_normalisation_is_named_with_the_fix(tmp_path):
    import unicodedata

    from ggn.images import read_header

    nfc = "caf\u00e9.png"
    _save(Image.fromarray(np.zeros((4, 4, 3), np.uint8)), tmp_path / unicodedata.normalize("NFD", nfc))
    with pytest.raises(ImageError, match=r"does not exist; the folder has 'cafe\\u0301.png', the same name in "
                                         r"another Unicode normalisation \(NFD on disk, NFC"):
        read_image(tmp_path / nfc)
    assert "convmv" in read_header(tmp_path / nfc)


def test_a_log_message_while_a_progress_bar_is_drawn_gets_a_line_of_its_own(capsys):
    import logging

    from tqdm import tqdm

    from ggn.io import ProgressBarSafeHandler

    logger = logging.getLogger("ggn.test_progress")
    handler = ProgressBarSafeHandler()
    handler.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
    logger.addHandler(handler)
    try:
        bar = tqdm(total=3, desc="extract", mininterval=0)
        bar.update(1)
        logger.warning("skipping image 7")
        bar.update(1)
        bar.close()
    finally:
        logger.removeHandler(handler)
    err = capsys.readouterr().err
    line = next(x for x in err.split("\n") if "skipping image 7" in x)
    assert line.split("\r")[-1] == "WARNING skipping image 7"  # not appended to the bar's text


def test_predict_pastes_each_mask_within_its_box_with_torchvision_s_rles():
    from torchvision.models.detection.roi_heads import paste_masks_in_image
    from torchvision.ops import clip_boxes_to_image

    from ggn.detector.predict import to_results
    from ggn.masks import encode_masks

    g = torch.Generator().manual_seed(0)
    for _ in range(40):
        h, w = (int(v) for v in torch.randint(5, 60, (2,), generator=g))
        n = int(torch.randint(0, 6, (1,), generator=g))
        corner = torch.rand(n, 2, generator=g) * torch.tensor([w, h]) * 1.2 - 5
        size = torch.rand(n, 2, generator=g) * torch.tensor([w, h])
        boxes = clip_boxes_to_image(torch.cat([corner, corner + size], 1), (h, w))
        det = {"boxes": boxes, "scores": torch.rand(n, generator=g), "masks": torch.rand(n, 1, 28, 28, generator=g)}
        full = paste_masks_in_image(det["masks"], boxes, (h, w))[:, 0] > 0.5
        assert [r["segmentation"] for r in to_results(1, det, h, w)] == encode_masks(full.numpy())


_PEAK = """
import resource, sys, numpy as np, torch
torch.set_num_threads(1)
def peak_mb(): return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
{setup}
run(64)  # warm up at a small size: imports, allocator
before = peak_mb()
run({size})
print(peak_mb() - before)
"""


def _peak_growth_mb(setup: str, size: int) -> float:
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-c", _PEAK.format(setup=setup, size=size)], capture_output=True, text=True,
                          env={**__import__("os").environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr
    return float(proc.stdout.strip().splitlines()[-1])


def test_predict_and_extract_never_hold_every_mask_of_an_image_at_full_size():
    """100 masks on a 1200 x 1200 image: all at full size at once (the old code) grew the peak by 1.1 GB in
    predict (float pasting) and 400 MB in extract (bool masks and their uint8 copy); one at a time, by < 10 MB."""
    predict = """
from ggn.detector.predict import to_results
def run(size):
    g = torch.Generator().manual_seed(0)
    xy = torch.rand(100, 2, generator=g) * (size - 60)
    det = {"boxes": torch.cat([xy, xy + 50], 1), "scores": torch.rand(100, generator=g),
           "masks": torch.rand(100, 1, 28, 28, generator=g)}
    assert len(to_results(1, det, size, size)) == 100
"""
    extract_setup = """
from ggn.extract import candidate_rows
def run(size):
    masks = np.zeros((100, 64, 64), bool)
    for i in range(100):
        masks[i, i % 50:i % 50 + 10, (i * 7) % 50:(i * 7) % 50 + 12] = True
    rows = candidate_rows(1, masks, np.linspace(1, 0, 100, dtype=np.float32), size, size, None)
    assert len(rows["rle"]) == 100
"""
    assert _peak_growth_mb(predict, 1200) < 100
    assert _peak_growth_mb(extract_setup, 1200) < 100


def test_extract_skips_an_image_whose_network_input_exceeds_the_limit_naming_size_and_option(tmp_path, pa_ckpt):
    ann, img_dir = make_tiny_coco(tmp_path, num_images=2, size=32)
    summary = extract.extract_shard(pa_ckpt, ann, img_dir, 0, 1, tmp_path / "big.parquet", device="cpu", top_k=3,
                                    max_input_pixels=500)  # the checkpoint's input: 32x32 = 1024 pixels
    assert summary["images_processed"] == 0 and summary["images_skipped"] == 2
    assert "is 32x32: its network input (32x32) has more pixels than --max-input-pixels 500; pass --input-size" \
        in summary["skipped"]["1"]
    summary = extract.extract_shard(pa_ckpt, ann, img_dir, 0, 1, tmp_path / "small.parquet", device="cpu",
                                    top_k=3, max_input_pixels=500, input_size=16)
    assert summary["images_processed"] == 2


def test_predict_shrinks_a_huge_image_a_channel_at_a_time_to_the_same_network_input(monkeypatch):
    from ggn.detector import predict
    from ggn.detector.model import build_detector, detector_config

    model = build_detector(detector_config(backbone="resnet18", fpn_channels=16, representation_size=32,
                                           mask_channels=16, min_size=40, max_size=64)).eval()
    image = np.random.default_rng(0).integers(0, 256, (90, 130, 3), dtype=np.uint8)
    plain = model.transform([predict.image_tensor(model, image, torch.device("cpu"))])[0]
    monkeypatch.setattr(predict, "LARGE_IMAGE_PIXELS", 0)
    small = predict.image_tensor(model, image, torch.device("cpu"))
    assert small.shape[1:] == tuple(plain.image_sizes[0])  # already at the network's size
    shrunk = model.transform([small])[0]
    assert shrunk.image_sizes == plain.image_sizes
    assert torch.allclose(shrunk.tensors, plain.tensors, atol=1e-4)
