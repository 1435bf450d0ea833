"""`ggn list-images` on a tiny fake ImageNet tree: ids, names, sizes (EXIF included), skips, determinism, resume."""
from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageOps

from ggn import list_images as li
from ggn.cli import main as cli_main
from ggn.coco_data import read_image
from ggn.extract import GroundTruth, _load_coco
from ggn.io import InputError


def jpeg_bytes(height: int, width: int, seed: int, exif_orientation: int | None = None) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    buf = io.BytesIO()
    kwargs = {}
    if exif_orientation is not None:
        exif = Image.Exif()
        exif[li.EXIF_ORIENTATION] = exif_orientation
        kwargs["exif"] = exif.tobytes()
    Image.fromarray(pixels).save(buf, format="JPEG", quality=95, **kwargs)
    return buf.getvalue()


def png(path: Path, height: int, width: int, seed: int) -> None:
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (height, width), dtype=np.uint8)).save(path)


def fake_imagenet(root: Path) -> list[tuple[str, int, int]]:
    """Three class folders; returns the (file_name, height, width) the list must hold, in id order."""
    for wnid in ("n01440764", "n01443537", "n01484850"):
        (root / wnid).mkdir(parents=True)
    (root / "n01440764/n01440764_10026.JPEG").write_bytes(jpeg_bytes(30, 40, 0))
    (root / "n01440764/n01440764_2.png").write_bytes(b"")  # empty: skipped
    (root / "n01440764/n01440764_3.PNG").parent.mkdir(exist_ok=True)
    png(root / "n01440764/n01440764_3.PNG", 20, 10, 1)
    # Stored 48 wide x 24 high with "rotate 90 degrees" in EXIF: listed (and read) 24 wide x 48 high.
    (root / "n01443537/n01443537_1.jpg").write_bytes(jpeg_bytes(24, 48, 2, exif_orientation=6))
    (root / "n01443537/n01443537_22.JPEG").write_bytes(b"\x89garbage, not an image" * 10)  # corrupt: skipped
    whole = jpeg_bytes(64, 64, 3)
    (root / "n01443537/n01443537_5.JPEG").write_bytes(whole[: len(whole) * 3 // 5])  # truncated: skipped
    (root / "n01484850/n01484850_7.jpeg").write_bytes(jpeg_bytes(17, 23, 4) + b"\0" * 64)  # trailing bytes: kept
    png(root / "n01484850/n01484850_8.png", 33, 12, 5)
    Image.fromarray(np.zeros((9, 11, 3), np.uint8)).save(root / "n01484850/n01484850_9.bmp")
    (root / "n01484850/README.txt").write_text("not an image")
    (root / "n01484850/.n01484850_0.JPEG").write_bytes(jpeg_bytes(8, 8, 6))  # hidden file
    (root / ".cache").mkdir()
    (root / ".cache/x.jpg").write_bytes(jpeg_bytes(8, 8, 7))  # hidden folder
    return [("n01440764/n01440764_10026.JPEG", 30, 40), ("n01440764/n01440764_3.PNG", 20, 10),
            ("n01443537/n01443537_1.jpg", 48, 24), ("n01484850/n01484850_7.jpeg", 17, 23),
            ("n01484850/n01484850_8.png", 33, 12), ("n01484850/n01484850_9.bmp", 9, 11)]


SKIPPED = {"n01440764/n01440764_2.png", "n01443537/n01443537_22.JPEG", "n01443537/n01443537_5.JPEG"}


@pytest.fixture
def tree(tmp_path):
    root = tmp_path / "train"
    return root, fake_imagenet(root)


def test_lists_tree_with_ids_sizes_and_skips(tree, tmp_path):
    root, expected = tree
    out = tmp_path / "list.json"
    assert cli_main(["list-images", "--root", str(root), "--out", str(out)]) == 0
    coco = json.loads(out.read_text())
    assert coco["images"] == [{"id": i, "file_name": f, "height": h, "width": w}
                              for i, (f, h, w) in enumerate(expected, start=1)]
    assert "annotations" not in coco and coco["categories"] == []
    assert coco["info"]["images"] == 6 and coco["info"]["skipped"] == 3

    summary = json.loads((tmp_path / "list.json.summary.json").read_text())
    assert summary["images"] == 6 and summary["skipped"] == 3 and summary["found"] == 9
    assert set(summary["skipped_files"]) == SKIPPED
    assert summary["skipped_files"]["n01440764/n01440764_2.png"] == "empty file (0 bytes)"
    assert "truncated" in summary["skipped_files"]["n01443537/n01443537_5.JPEG"]
    assert summary["ignored"] == {"hidden": 2, "other_extensions": 1}
    assert summary["exif_rotated"] == 1
    assert not (tmp_path / "list.json.parts").exists()


def test_sizes_agree_with_read_image(tree, tmp_path):
    """The sizes are what ggn extract checks them against: read_image's array, EXIF-tagged file included."""
    root, _ = tree
    out = tmp_path / "list.json"
    li.list_images(root, out)
    for image in json.loads(out.read_text())["images"]:
        assert read_image(root / image["file_name"]).shape[:2] == (image["height"], image["width"]), image
    with Image.open(root / "n01443537/n01443537_1.jpg") as im:  # the test file does carry a rotation
        assert im.getexif()[li.EXIF_ORIENTATION] == 6 and im.size == (48, 24)
    for rel in SKIPPED:  # what the list skips, read_image cannot read either
        with pytest.raises(Exception):
            read_image(root / rel)


def test_exif_rotation_swaps_when_the_reader_rotates(tree, monkeypatch):
    root, _ = tree
    path = root / "n01443537/n01443537_1.jpg"
    with Image.open(path) as im:
        w, h = ImageOps.exif_transpose(im).size
    assert li.read_header(str(path)) == (h, w, 6) == (48, 24, 6)  # the reader rotates: so does the list
    monkeypatch.setattr(li, "READER_APPLIES_EXIF_ORIENTATION", False)
    assert li.read_header(str(path)) == (24, 48, 6)


def test_deterministic_across_runs_and_workers(tree, tmp_path):
    root, _ = tree
    outs = [tmp_path / "a.json", tmp_path / "b.json", tmp_path / "c.json"]
    li.list_images(root, outs[0], chunk=4)
    li.list_images(root, outs[1], chunk=4)
    li.list_images(root, outs[2], chunk=2, workers=2)
    assert outs[0].read_bytes() == outs[1].read_bytes() == outs[2].read_bytes()


def test_resume_after_a_kill_redoes_only_missing_parts(tree, tmp_path, monkeypatch):
    root, _ = tree
    reference = tmp_path / "ref.json"
    li.list_images(root, reference, chunk=2)
    files = li.find_images(root, li.DEFAULT_EXTENSIONS)[0]
    assert len(files) == 9  # 5 parts of 2

    real = li.read_header
    calls: list[str] = []

    def killed_at_the_fourth_file(path):
        if len(calls) == 3:
            raise KeyboardInterrupt  # Ctrl-C / a kill in the middle of the second part
        calls.append(path)
        return real(path)

    out = tmp_path / "list.json"
    monkeypatch.setattr(li, "read_header", killed_at_the_fourth_file)
    with pytest.raises(KeyboardInterrupt):
        li.list_images(root, out, chunk=2)
    assert not out.exists()
    assert len(list((tmp_path / "list.json.parts").glob("part-*.json"))) == 1

    calls.clear()
    monkeypatch.setattr(li, "read_header", lambda path: calls.append(path) or real(path))
    summary = li.list_images(root, out, chunk=2)
    assert sorted(Path(p).relative_to(root).as_posix() for p in calls) == files[2:]  # part 0 not read again
    assert summary["parts_reused"] == 1 and summary["files_read"] == 7
    assert out.read_bytes() == reference.read_bytes()


def test_resume_after_losing_the_output_and_one_part(tree, tmp_path):
    root, _ = tree
    out = tmp_path / "list.json"
    li.list_images(root, out, chunk=4, keep_parts=True)
    first = out.read_bytes()
    parts = sorted((tmp_path / "list.json.parts").glob("part-*.json"))
    assert len(parts) == 3
    out.unlink()
    parts[1].unlink()
    summary = li.list_images(root, out, chunk=4)
    assert summary["parts_reused"] == 2 and summary["files_read"] == 4
    assert out.read_bytes() == first
    assert not (tmp_path / "list.json.parts").exists()


def test_a_part_from_another_tree_is_not_reused(tree, tmp_path):
    root, _ = tree
    out = tmp_path / "list.json"
    li.list_images(root, out, chunk=4, keep_parts=True)
    (root / "n01440764/n01440764_1.JPEG").write_bytes(jpeg_bytes(5, 6, 8))  # sorts first: every part shifts
    summary = li.list_images(root, out, chunk=4)
    assert summary["parts_reused"] == 0 and summary["images"] == 7
    assert json.loads(out.read_text())["images"][0] == {"id": 1, "file_name": "n01440764/n01440764_1.JPEG",
                                                        "height": 5, "width": 6}


def test_extract_loader_accepts_the_list(tree, tmp_path):
    root, expected = tree
    out = tmp_path / "list.json"
    li.list_images(root, out)
    coco, _ = _load_coco(out)
    assert [img["file_name"] for img in coco["images"]] == [f for f, _, _ in expected]
    # No "annotations" key: extract records gt_iou as null (no ground truth), not 0.0.
    assert not GroundTruth(coco, [img["id"] for img in coco["images"]]).available


def test_extensions_and_max_images(tree, tmp_path):
    root, _ = tree
    out = tmp_path / "list.json"
    li.list_images(root, out, extensions=["PNG"])
    assert [i["file_name"] for i in json.loads(out.read_text())["images"]] == [
        "n01440764/n01440764_3.PNG", "n01484850/n01484850_8.png"]
    summary = li.list_images(root, out, max_images=3)  # the first 3 files, the empty one among them
    assert [i["file_name"] for i in json.loads(out.read_text())["images"]] == [
        "n01440764/n01440764_10026.JPEG", "n01440764/n01440764_3.PNG"]
    assert summary["skipped"] == 1 and summary["found"] == 9


def test_flat_folder(tmp_path):
    png(tmp_path / "b.png", 4, 5, 0)
    (tmp_path / "a.jpg").write_bytes(jpeg_bytes(6, 7, 1))
    out = tmp_path / "out" / "list.json"
    li.list_images(tmp_path, out)
    assert json.loads(out.read_text())["images"] == [{"id": 1, "file_name": "a.jpg", "height": 6, "width": 7},
                                                     {"id": 2, "file_name": "b.png", "height": 4, "width": 5}]


def test_bad_roots_name_the_path_and_the_fix(tmp_path):
    with pytest.raises(InputError, match=r"missing.* does not exist.*--root"):
        li.list_images(tmp_path / "missing", tmp_path / "o.json")
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs/readme.txt").write_text("x")
    with pytest.raises(InputError, match=r"no image files .* under .*docs.*--extensions"):
        li.list_images(tmp_path / "docs", tmp_path / "o.json")
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad/x.jpg").write_bytes(b"nope")
    with pytest.raises(InputError, match=r"none of the 1 image files under .*bad could be read"):
        li.list_images(tmp_path / "bad", tmp_path / "o.json")
    assert not (tmp_path / "o.json").exists()
    assert json.loads((tmp_path / "o.json.summary.json").read_text())["skipped"] == 1
