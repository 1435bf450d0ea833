"""LVIS v1 and UVO v1.0 as their users download them (docs/datasets.md).

LVIS v1's files name no `file_name`: each image is named by its `coco_url`, and LVIS val draws from both COCO
train2017/ and val2017/. UVO ships videos and frame annotations; `ggn video-frames` writes the annotated frames
once. The end-to-end tests build trees in those layouts (tiny images and videos written here) and run the rows
as shipped, with only folders, data paths, schedules, the detectors' input size and detections per image shrunk, as
tests/test_more_paper_rows.py does.
"""
from __future__ import annotations

import json
import math
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image, ImageDraw
from pycocotools import mask as mask_utils

from test_more_paper_rows import _shrink, module_coco_with_weights, run_rows, unchanged_recipe
from test_paper_row import BIN, REPO, TRAIN_IMAGES, VAL_IMAGES, make_fake_coco

LVIS_COCO = REPO / "config" / "classes" / "lvis_coco.txt"
NON_COCO = ("aerosol_can", "alarm_clock", "antenna", "apron", "awning")  # LVIS v1 names of no COCO class


# ---------------------------------------------------------------- LVIS v1 as released

def lvis_coco_names() -> list[str]:
    """The 79 LVIS names of COCO classes, in COCO id order (hot dog has none)."""
    return [n for n in (line.split("#", 1)[0].strip() for line in LVIS_COCO.read_text().splitlines()) if n]


def lvis_categories() -> list[dict]:
    names = lvis_coco_names() + list(NON_COCO)
    return [{"id": i, "name": n, "synset": f"{n}.n.01", "synonyms": [n], "def": "", "frequency": "c",
             "image_count": 1, "instance_count": 1} for i, n in enumerate(sorted(names), start=1)]


def _lvis_image(info: dict, folder: str, rng: np.random.Generator, category_ids: list[int]) -> dict:
    """An LVIS v1 `images` entry: coco_url and the federated-annotation lists, no file_name."""
    return {"id": info["id"], "height": info["height"], "width": info["width"], "license": 1,
            "coco_url": f"http://images.cocodataset.org/{folder}/{info['id']:012d}.jpg",
            "flickr_url": "", "date_captured": "",
            "not_exhaustive_category_ids": [int(rng.choice(category_ids))],
            "neg_category_ids": [int(rng.choice(category_ids))]}


def make_fake_lvis(coco: Path, out: Path, seed: int = 3) -> dict[str, list[int]]:
    """lvis_v1_train.json and lvis_v1_val.json over the fake COCO tree's images, shaped as the release: images by
    coco_url only, LVIS categories, polygons without iscrowd. LVIS val holds the two val2017 images and two
    train2017 images (as LVIS v1 val draws from both); LVIS train the other train2017 images. Every other object
    of an image gets a non-COCO category, so both rows have seen and unseen objects. Returns the image ids."""
    rng = np.random.default_rng(seed)
    cats = lvis_categories()
    by_name = {c["name"]: c["id"] for c in cats}
    coco_to_lvis = dict(zip(_coco_names(), lvis_coco_names()))
    sources = {}
    for split in ("train", "val"):
        data = json.loads((coco / "annotations" / f"instances_{split}2017.json").read_text())
        names = {c["id"]: c["name"] for c in data["categories"]}
        for img in data["images"]:
            anns = [a for a in data["annotations"] if a["image_id"] == img["id"]]
            sources[img["id"]] = (f"{split}2017", img, anns, names)
    train_ids = sorted(TRAIN_IMAGES)
    split_ids = {"val": sorted(VAL_IMAGES) + train_ids[2:], "train": train_ids[:2]}
    ann_id = 1
    for split, ids in split_ids.items():
        images, anns = [], []
        for image_id in ids:
            folder, info, objects, names = sources[image_id]
            images.append(_lvis_image(info, folder, rng, [c["id"] for c in cats]))
            for k, a in enumerate(objects):
                name = NON_COCO[(image_id + k) % len(NON_COCO)] if k % 2 else coco_to_lvis[names[a["category_id"]]]
                anns.append({"id": ann_id, "image_id": image_id, "category_id": by_name[name],
                             "segmentation": a["segmentation"], "area": a["area"], "bbox": a["bbox"]})
                ann_id += 1
        out.mkdir(parents=True, exist_ok=True)
        (out / f"lvis_v1_{split}.json").write_text(json.dumps(
            {"info": {"description": "tiny fake LVIS v1 (tests)"}, "licenses": [], "images": images,
             "annotations": anns, "categories": cats}))
    return split_ids


def _coco_names() -> list[str]:
    from ggn.classes import COCO_CLASSES

    return [n for n in COCO_CLASSES if n != "hot dog"]  # lvis_coco.txt lists the other 79, in this order


def test_coco_url_names_the_file_under_the_coco_root():
    from ggn.images import coco_url_file_name, with_file_name

    assert coco_url_file_name("http://images.cocodataset.org/val2017/000000000139.jpg") == "val2017/000000000139.jpg"
    assert coco_url_file_name("https://images.cocodataset.org/train2017/000000391895.jpg?x=1") == \
        "train2017/000000391895.jpg"
    assert coco_url_file_name("000000000139.jpg") is None and coco_url_file_name(None) is None
    assert coco_url_file_name("http://host/../a.jpg") is None
    coco = {"id": 1, "file_name": "000000000139.jpg", "coco_url": "http://images.cocodataset.org/val2017/x.jpg"}
    assert with_file_name(coco) is coco  # COCO's own file_name wins (its image folder is val2017/ itself)
    lvis = {"id": 1, "coco_url": "http://images.cocodataset.org/val2017/000000000139.jpg"}
    assert with_file_name(lvis)["file_name"] == "val2017/000000000139.jpg" and "file_name" not in lvis


def test_validator_names_lvis_images_and_refuses_images_without_any_name():
    from ggn.annotations import validate_coco
    from ggn.io import InputError

    image = {"id": 7, "height": 4, "width": 4, "coco_url": "http://images.cocodataset.org/train2017/7.jpg",
             "not_exhaustive_category_ids": [2], "neg_category_ids": [3]}
    poly = [[0, 0, 3, 0, 3, 3, 0, 3]]
    data = {"images": [image], "annotations": [{"id": 1, "image_id": 7, "category_id": 1, "segmentation": poly}],
            "categories": [{"id": 1, "name": "apron"}]}
    out, counts = validate_coco(data, "lvis_v1_val.json")
    assert out["images"][0]["file_name"] == "train2017/7.jpg" and counts["file_names_from_coco_url"] == 1
    assert out["images"][0]["neg_category_ids"] == [3]  # LVIS's fields travel on untouched
    assert out["annotations"][0]["iscrowd"] == 0 and "file_name" not in image  # input not modified
    del image["coco_url"]
    with pytest.raises(InputError, match=r"lvis_v1_val.json: image 7: .*coco_url"):
        validate_coco(data, "lvis_v1_val.json")


def test_split_names_lvis_files_and_leaves_shared_images_out_of_training(tmp_path):
    from ggn.split import split

    coco = make_fake_coco(tmp_path / "coco")
    ids = make_fake_lvis(coco, tmp_path / "lvis")
    lvis_val = json.loads((tmp_path / "lvis" / "lvis_v1_val.json").read_text())
    coco_train = json.loads((coco / "annotations" / "instances_train2017.json").read_text())
    seen = f"@{LVIS_COCO}"
    train, ev = split(coco_train, lvis_val, "all", eval_seen=seen,
                      exclude_eval_images=(coco / "train2017", coco))
    shared = set(ids["val"]) & set(TRAIN_IMAGES)
    assert shared and {img["id"] for img in train["images"]} == set(TRAIN_IMAGES) - shared
    assert {a["image_id"] for a in train["annotations"]} <= set(TRAIN_IMAGES) - shared
    names = {img["id"]: img["file_name"] for img in ev["images"]}
    assert {names[i].split("/")[0] for i in ids["val"]} == {"train2017", "val2017"}
    assert all((coco / name).is_file() for name in names.values())  # every LVIS image found under the COCO root
    unseen = [a for a in ev["annotations"] if a["ignored_split"] == 0]
    cats = {c["id"]: c["name"] for c in lvis_val["categories"]}
    assert unseen and {cats[a["category_id"]] for a in unseen} <= set(NON_COCO)

    # Without the option every training image stays (the other rows: COCO val2017 shares no train2017 image).
    train_all, _ = split(coco_train, lvis_val, "all", eval_seen=seen)
    assert len(train_all["images"]) == len(TRAIN_IMAGES)

    # The authors' processed splits: COCO-style files with a file_name, already restricted to non-COCO classes.
    processed = dict(lvis_val, images=[{k: v for k, v in img.items() if k != "coco_url"} | {"file_name": n}
                                       for img, n in zip(lvis_val["images"], names.values())],
                     annotations=[a for a in lvis_val["annotations"] if cats[a["category_id"]] in NON_COCO])
    _, ev2 = split(coco_train, processed, "all", eval_seen="none")
    assert {img["file_name"] for img in ev2["images"]} == set(names.values())
    assert len(ev2["annotations"]) == len(unseen) and all(a["ignored_split"] == 0 for a in ev2["annotations"])


def _lvis_rows_config(tmp_path: Path, coco: Path, lvis: Path) -> dict:
    """Both LVIS rows in one run, each as shipped but for folders, data paths and schedules."""
    config = {"results": str(tmp_path / "results"), "table": "table_lvis_test", "experiments": {}}
    for row in ("coco_to_lvis", "lvis_to_coco"):
        shipped = yaml.safe_load((REPO / "config" / f"{row}.yaml").read_text())
        # datasets/coco -> the fake COCO root, datasets/lvis -> the fake LVIS folder
        data = {key: value.replace("datasets/coco", str(coco)).replace("datasets/lvis", str(lvis))
                if isinstance(value, str) else value for key, value in shipped["experiments"][row]["data"].items()}
        exp = _shrink({"results": "", "experiments": {row: shipped["experiments"][row]}}, tmp_path, coco, "")
        config["experiments"][row] = exp["experiments"][row]
        config["experiments"][row]["data"] = data  # _shrink points every row at COCO; keep the LVIS files
    return config


@pytest.fixture(scope="module")
def released_rows_run(tmp_path_factory):
    """Both LVIS rows and the UVO row in one workflow run (one Snakemake start; the three rows' jobs fill both
    cores together), on one fake COCO tree, an LVIS-v1-shaped tree and a UVO-v1.0-shaped tree; each shipped recipe
    as configured, only folders, data paths and schedules shrunk. One table, three rows."""
    pytest.importorskip("av", reason="PyAV (pyproject dependency) decodes the videos")

    tmp = tmp_path_factory.mktemp("released")
    monkeypatch, torch_home, coco = module_coco_with_weights(tmp)
    lvis = tmp / "lvis"
    ids = make_fake_lvis(coco, lvis)
    (tmp / "config").symlink_to(REPO / "config")  # the LVIS rows name @config/classes/lvis_coco.txt
    config = _lvis_rows_config(tmp, coco, lvis)
    for row in ("coco_to_lvis", "lvis_to_coco"):
        unchanged_recipe(yaml.safe_load((REPO / "config" / f"{row}.yaml").read_text()),
                         {"experiments": {row: config["experiments"][row]}})

    uvo = make_fake_uvo_release(tmp / "uvo")
    shipped = yaml.safe_load((REPO / "config" / "coco_to_uvo.yaml").read_text())
    uvo_config = _shrink(yaml.safe_load((REPO / "config" / "coco_to_uvo.yaml").read_text()), tmp / "results", coco,
                         "table_released_test")
    data = uvo_config["experiments"]["coco_to_uvo"]["data"]
    shipped_data = shipped["experiments"]["coco_to_uvo"]["data"]
    assert shipped_data["eval_annotations"].endswith("FrameSet/UVO_frame_val.json")
    for key in ("eval_annotations", "eval_images", "eval_videos"):
        data[key] = shipped_data[key].replace("datasets/uvo", str(uvo))
    unchanged_recipe(shipped, uvo_config)
    config["table"] = "table_released_test"
    config["experiments"].update(uvo_config["experiments"])
    proc = run_rows(tmp, config, torch_home)
    yield tmp, ids, uvo, proc.stdout + proc.stderr
    monkeypatch.undo()


@pytest.mark.slow
def test_lvis_rows_end_to_end_on_lvis_v1_as_released(released_rows_run):
    tmp_path, ids, _, _ = released_rows_run
    config = yaml.safe_load((tmp_path / "config.yaml").read_text())
    assert config["experiments"]["coco_to_lvis"]["data"]["exclude_eval_images"] is True
    results = tmp_path / "results"

    # COCO -> LVIS: train2017 images of LVIS val left out of training; LVIS val's files found in both folders.
    train = json.loads((results / "coco_to_lvis" / "data" / "train.json").read_text())
    shared = set(ids["val"]) & set(TRAIN_IMAGES)
    assert {img["id"] for img in train["images"]} == set(TRAIN_IMAGES) - shared
    ev = json.loads((results / "coco_to_lvis" / "data" / "eval.json").read_text())
    assert sorted(img["file_name"].split("/")[0] for img in ev["images"]) == ["train2017"] * 2 + ["val2017"] * 2
    log = (results / "coco_to_lvis" / "logs" / "split.log").read_text()
    assert f"{len(shared)} of {len(TRAIN_IMAGES)} training images are also evaluation images" in log

    # LVIS -> COCO: trained on LVIS train's non-COCO objects (files by coco_url), evaluated on COCO val2017.
    train = json.loads((results / "lvis_to_coco" / "data" / "train.json").read_text())
    assert {img["file_name"] for img in train["images"]} <= {f"train2017/{i:012d}.jpg" for i in ids["train"]}
    for row in ("coco_to_lvis", "lvis_to_coco"):
        values = json.loads((results / row / "row.json").read_text())
        for variant in ("baseline", "ggn"):
            assert math.isfinite(values[f"{variant}_mask_AR@100"]), (row, variant)
    md = (results / "table_released_test.md").read_text()
    assert "| coco_to_lvis |" in md and "| lvis_to_coco |" in md and "| coco_to_uvo |" in md


# ---------------------------------------------------------------- UVO v1.0 as released

UVO_SIZE = (96, 128)  # height, width (the release: 480-pixel short side)
UVO_VIDEOS = {"vidA0001": (3, 17, 24), "vidB0002": (5, 28)}  # video -> annotated frame numbers


def _uvo_frame(video: int, index: int, rng: np.random.Generator) -> tuple[np.ndarray, list[list[float]]]:
    """Frame `index` of a video: a moving bright rectangle and a disc on texture, under a flat top strip whose grey
    level encodes the index (10 + 7 * index)."""
    h, w = UVO_SIZE
    yy, xx = np.mgrid[:h, :w]
    img = np.clip(60 + 10 * np.sin(xx / 5.0)[..., None] + rng.normal(0, 3, (h, w, 3)), 0, 255).astype(np.uint8)
    img[:8] = 10 + 7 * index
    canvas = Image.fromarray(img)
    draw = ImageDraw.Draw(canvas)
    x0 = 10 + (index % 20) + 8 * video
    box = [x0, 20, x0 + 40, 20, x0 + 40, 70, x0, 70]
    draw.polygon(box, fill=(230, 200, 60))
    cx, cy = 100 - (index % 10), 50
    disc = [cx + 14 * math.cos(t) for t in np.linspace(0, 2 * math.pi, 12, endpoint=False)]
    disc = [v for t, x in zip(np.linspace(0, 2 * math.pi, 12, endpoint=False), disc) for v in (x, cy + 14 * math.sin(t))]
    draw.polygon(disc, fill=(60, 90, 230))
    return np.asarray(canvas), [box, disc]


def make_fake_uvo_release(root: Path, seed: int = 4) -> Path:
    """The UVO v1.0 layout: FrameSet/UVO_frame_val.json (frames named <video>/<n>.png, one class-agnostic
    category) and uvo_videos_sparse/<video>.mp4, each video longer than its last annotated frame."""
    import av

    rng = np.random.default_rng(seed)
    (root / "FrameSet").mkdir(parents=True)
    (root / "uvo_videos_sparse").mkdir()
    images, anns = [], []
    h, w = UVO_SIZE
    for v, (video, frames) in enumerate(UVO_VIDEOS.items()):
        with av.open(str(root / "uvo_videos_sparse" / f"{video}.mp4"), "w") as out:
            stream = out.add_stream("mpeg4", rate=30)
            stream.width, stream.height, stream.pix_fmt, stream.bit_rate = w, h, "yuv420p", 4_000_000
            for index in range(max(frames) + 5):
                pixels, polygons = _uvo_frame(v, index, rng)
                for packet in stream.encode(av.VideoFrame.from_ndarray(pixels, format="rgb24")):
                    out.mux(packet)
                if index in frames:
                    image_id = len(images) + 1
                    images.append({"id": image_id, "file_name": f"{video}/{index}.png", "height": h, "width": w,
                                   "video_id": v + 1, "frame_id": index})
                    for poly in polygons:
                        rle = mask_utils.merge(mask_utils.frPyObjects([poly], h, w))
                        anns.append({"id": len(anns) + 1, "image_id": image_id, "category_id": 1, "iscrowd": 0,
                                     "segmentation": [poly], "area": float(mask_utils.area(rle)),
                                     "bbox": [float(x) for x in mask_utils.toBbox(rle)]})
            for packet in stream.encode():
                out.mux(packet)
    (root / "FrameSet" / "UVO_frame_val.json").write_text(json.dumps(
        {"info": {"description": "tiny fake UVO v1.0 FrameSet (tests)"}, "images": images, "annotations": anns,
         "categories": [{"id": 1, "name": "object", "supercategory": "object"}]}))
    return root


def _video_frames(uvo: Path, *extra: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PATH=f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}")
    return subprocess.run([str(BIN / "ggn"), "video-frames", "--annotations", str(uvo / "FrameSet" / "UVO_frame_val.json"),
                           "--videos", str(uvo / "uvo_videos_sparse"), "--out", str(uvo / "uvo_videos_sparse_frames"),
                           *extra], env=env, capture_output=True, text=True)


def test_video_frames_writes_the_annotated_frames_once(tmp_path):
    pytest.importorskip("av", reason="PyAV (pyproject dependency) decodes the videos")
    uvo = make_fake_uvo_release(tmp_path / "uvo")
    frames = uvo / "uvo_videos_sparse_frames"
    proc = _video_frames(uvo, "--workers", "2")
    assert proc.returncode == 0, proc.stderr[-3000:]
    written = sorted(str(p.relative_to(frames)) for p in frames.rglob("*.png"))
    assert written == sorted(f"{v}/{n}.png" for v, ns in UVO_VIDEOS.items() for n in ns)  # only annotated frames
    manifest = json.loads((frames / "ggn_frames.json").read_text())
    assert manifest["frames"] == 5
    # Frame n is the n-th decoded frame counted from 0 (UVO's video2frames.py): its texture level says which.
    for video, numbers in UVO_VIDEOS.items():
        for n in numbers:
            pixels = np.asarray(Image.open(frames / video / f"{n}.png"))
            assert pixels.shape == (*UVO_SIZE, 3)
            level = np.median(pixels[2:6].astype(float))  # the flat top strip
            assert round((level - 10) / 7) == n, (video, n, level)

    # Resumable: a frame already there is kept and not decoded again; a removed one is written again.
    kept = frames / "vidA0001" / "3.png"
    stamp = kept.stat().st_mtime_ns
    (frames / "vidB0002" / "28.png").unlink()
    proc = _video_frames(uvo)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "4 already in" in proc.stderr and "1 to decode from 1 videos" in proc.stderr, proc.stderr[-2000:]
    assert kept.stat().st_mtime_ns == stamp and (frames / "vidB0002" / "28.png").is_file()


def test_video_frames_names_missing_short_and_resized_videos(tmp_path):
    av = pytest.importorskip("av", reason="PyAV (pyproject dependency) decodes the videos")
    uvo = make_fake_uvo_release(tmp_path / "uvo")
    videos = uvo / "uvo_videos_sparse"
    (videos / "vidB0002.mp4").unlink()
    proc = _video_frames(uvo)
    assert proc.returncode != 0 and "vidB0002.mp4: no such video" in proc.stderr, proc.stderr[-2000:]
    assert (uvo / "uvo_videos_sparse_frames" / "vidA0001" / "24.png").is_file()  # the other video's frames are in
    assert not (uvo / "uvo_videos_sparse_frames" / "ggn_frames.json").exists()

    with av.open(str(videos / "vidB0002.mp4"), "w") as out:  # too short, and another size than annotated
        stream = out.add_stream("mpeg4", rate=30)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        for _ in range(10):
            for packet in stream.encode(av.VideoFrame.from_ndarray(np.zeros((48, 64, 3), np.uint8), format="rgb24")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    proc = _video_frames(uvo)
    assert proc.returncode != 0 and "frame 5 is 64x48 but the annotation of 5.png says 128x96" in proc.stderr, \
        proc.stderr[-2000:]


@pytest.mark.slow
def test_uvo_row_end_to_end_on_uvo_v1_as_released(released_rows_run):
    tmp_path, _, uvo, output = released_rows_run
    frames = uvo / "uvo_videos_sparse_frames"
    assert (frames / "ggn_frames.json").is_file() and len(list(frames.rglob("*.png"))) == 5
    assert "ggn video-frames" in output
    values = json.loads((tmp_path / "results" / "coco_to_uvo" / "row.json").read_text())
    for variant in ("baseline", "ggn"):
        assert math.isfinite(values[f"{variant}_mask_AR@100"]), variant
