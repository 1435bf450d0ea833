"""The synthetic open-world dataset (ggn synth): determinism, COCO validity, sizes, occlusion, class split."""
from __future__ import annotations

import contextlib
import io
import json

import numpy as np
import pytest
from PIL import Image

from ggn.cli import main as cli_main
from ggn.masks import ann_to_mask
from ggn.io import InputError
from ggn.synth import CATEGORIES, SYNTHETIC_SEEN, SYNTHETIC_UNSEEN, SceneOptions, generate_dataset, render_image

# pycocotools' decode under numpy 2 (not ours).
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("synth")
    paths = generate_dataset(root, num_train=14, num_val=3, image_size=256, seed=7)
    return root, paths


def folder_bytes(root):
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_deterministic_for_a_seed(tmp_path):
    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    generate_dataset(a, 3, 2, 128, seed=11)
    generate_dataset(b, 3, 2, 128, seed=11, workers=2)  # worker count must not matter
    generate_dataset(c, 3, 2, 128, seed=12)
    files_a, files_b = folder_bytes(a), folder_bytes(b)
    assert sorted(files_a) == ["annotations/instances_train.json", "annotations/instances_val.json",
                               "train/000001.png", "train/000002.png", "train/000003.png",
                               "val/000001.png", "val/000002.png"]
    assert files_a == files_b
    files_c = folder_bytes(c)
    assert files_c["train/000001.png"] != files_a["train/000001.png"]
    assert files_c["annotations/instances_train.json"] != files_a["annotations/instances_train.json"]


def test_loads_in_pycocotools_with_all_sizes(dataset):
    from pycocotools.coco import COCO

    root, paths = dataset
    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO(str(paths["train"]))
    assert len(coco.getImgIds()) == 14
    assert [c["name"] for c in coco.loadCats(coco.getCatIds())] == [c.name for c in CATEGORIES]
    anns = coco.loadAnns(coco.getAnnIds())
    areas = np.array([a["area"] for a in anns])
    assert (areas < 32**2).any() and ((areas >= 32**2) & (areas < 96**2)).any() and (areas > 96**2).any()
    per_image = np.bincount([a["image_id"] for a in anns], minlength=15)[1:]
    assert per_image.max() <= 8 and 2 <= per_image.mean() <= 8
    for img in coco.loadImgs(coco.getImgIds()):
        pixels = np.asarray(Image.open(root / "train" / img["file_name"]))
        assert pixels.shape == (256, 256, 3) and pixels.dtype == np.uint8
    for a in anns:
        m = coco.annToMask(a).astype(bool)
        assert a["iscrowd"] == 0 and m.sum() == a["area"] > 0
        ys, xs = np.nonzero(m)
        assert a["bbox"] == [xs.min(), ys.min(), xs.max() - xs.min() + 1, ys.max() - ys.min() + 1]


def test_masks_are_visible_parts(dataset):
    """Occlusion: masks of one image never overlap (later objects cut earlier ones)."""
    _, paths = dataset
    data = json.loads(paths["train"].read_text())
    by_image = {}
    for a in data["annotations"]:
        by_image.setdefault(a["image_id"], []).append(ann_to_mask(a["segmentation"], 256, 256))
    occluded = 0
    for masks in by_image.values():
        stack = np.stack(masks)
        assert stack.sum(axis=0).max() <= 1
        occluded += len(masks)
    assert occluded > 0


def test_unseen_objects_in_training_images(dataset):
    _, paths = dataset
    data = json.loads(paths["train"].read_text())
    names = {c["id"]: c["name"] for c in data["categories"]}
    assert set(SYNTHETIC_SEEN) | set(SYNTHETIC_UNSEEN) == set(names.values())
    assert not set(SYNTHETIC_SEEN) & set(SYNTHETIC_UNSEEN)
    by_image = {}
    for a in data["annotations"]:
        by_image.setdefault(a["image_id"], set()).add(names[a["category_id"]])
    mixed = [i for i, n in by_image.items() if n & set(SYNTHETIC_SEEN) and n & set(SYNTHETIC_UNSEEN)]
    assert mixed, "unseen objects must share images with seen ones (they become unlabelled in train.json)"


def test_some_images_have_no_seen_object():
    seen_ids = {i + 1 for i, c in enumerate(CATEGORIES) if c.name in SYNTHETIC_SEEN}
    without_seen = 0
    for index in range(40):
        _, objects = render_image(seed=0, split="train", index=index, size=64)
        without_seen += not any(o["category_id"] in seen_ids for o in objects)
    assert 0 < without_seen < 20


def test_background_is_textured_and_objects_differ_from_it():
    image, objects = render_image(seed=3, split="val", index=0, size=128)
    occupied = np.zeros(image.shape[:2], bool)
    for o in objects:
        occupied |= o["mask"]
    background = image[~occupied].astype(float)
    assert background.std(axis=0).min() > 3  # noise, gradient and clutter: not flat
    for o in objects:
        inside = image[o["mask"]].astype(float).mean(axis=0)
        assert np.abs(inside - background.mean(axis=0)).max() > 20


def test_cli(tmp_path):
    out = tmp_path / "ds"
    assert cli_main(["synth", "--out", str(out), "--num-train", "2", "--num-val", "1", "--image-size", "64",
                     "--seed", "1", "--workers", "1"]) == 0
    train = json.loads((out / "annotations" / "instances_train.json").read_text())
    assert [img["file_name"] for img in train["images"]] == ["000001.png", "000002.png"]
    assert (out / "val" / "000001.png").is_file()


def _edges(image):
    """Colour-gradient magnitude (max over channels of |dx| + |dy|) per pixel."""
    f = image.astype(float)
    return (np.abs(np.diff(f, axis=0))[:, :-1] + np.abs(np.diff(f, axis=1))[:-1]).max(axis=2)


def test_clutter_and_textures_keep_the_objects_and_add_edges_that_are_not_outlines():
    hard = SceneOptions(clutter=10, texture_period=(10, 24), strong_texture=1.0)
    off_object_edges, inner_edges = [], []
    for index in range(6):
        image, objects = render_image(seed=0, split="train", index=index, size=128)
        hard_image, hard_objects = render_image(seed=0, split="train", index=index, size=128, options=hard)
        # What the options add comes from a second random stream: the objects are where the defaults put them.
        assert [o["category_id"] for o in hard_objects] == [o["category_id"] for o in objects]
        assert all((a["mask"] == b["mask"]).all() for a, b in zip(objects, hard_objects))
        occupied = np.zeros(image.shape[:2], bool)
        for o in objects:
            occupied |= o["mask"]
        background = ~occupied[:-1, :-1]
        off_object_edges.append([(_edges(im)[background] > 60).mean() for im in (image, hard_image)])
        # Edges well inside objects (two pixels off their outline): texture, not outline.
        for o in objects:
            m = o["mask"]
            inner = m[2:-2, 2:-2] & m[:-4, 2:-2] & m[4:, 2:-2] & m[2:-2, :-4] & m[2:-2, 4:]
            if inner.sum() > 100:
                inner_edges.append([np.percentile(_edges(im)[2:-1, 2:-1][inner], 95)
                                    for im in (image, hard_image)])
    off, inner = np.mean(off_object_edges, axis=0), np.mean(inner_edges, axis=0)
    assert off[1] > 3 * off[0] and off[1] > 0.04, off  # the smooth background gains hard edges
    assert inner[1] > inner[0] + 20, inner  # stronger edges inside objects


def test_clutter_is_nearly_grey():
    image, objects = render_image(seed=0, split="val", index=1, size=128, options=SceneOptions(clutter=12))
    plain, _ = render_image(seed=0, split="val", index=1, size=128)
    occupied = np.zeros(image.shape[:2], bool)
    for o in objects:
        occupied |= o["mask"]
    painted = (np.abs(image.astype(int) - plain.astype(int)).max(axis=2) > 30) & ~occupied
    assert painted.mean() > 0.05
    pixels = image[painted].astype(float)
    saturation = pixels.max(axis=1) - pixels.min(axis=1)
    assert np.median(saturation) < 40


def test_touching_objects_meet_an_earlier_one_in_nearly_its_colour():
    def touching_pairs(options):
        touching = close = total = 0
        for index in range(20):
            image, objects = render_image(seed=1, split="train", index=index, size=128, options=options)
            for k, o in enumerate(objects[1:], 1):
                total += 1
                grown = o["mask"].copy()
                grown[1:] |= o["mask"][:-1]
                grown[:-1] |= o["mask"][1:]
                grown[:, 1:] |= o["mask"][:, :-1]
                grown[:, :-1] |= o["mask"][:, 1:]
                neighbours = [p for p in objects[:k] if (grown & p["mask"]).any()]
                touching += bool(neighbours)
                colour = np.median(image[o["mask"]], axis=0)
                close += any(np.abs(np.median(image[p["mask"]], axis=0) - colour).max() < 40 for p in neighbours)
        return touching / total, close / total

    plain, _ = touching_pairs(SceneOptions())
    touching, close = touching_pairs(SceneOptions(touching=1.0))
    assert touching > plain + 0.2 and touching > 0.6, (plain, touching)
    assert close > 0.3, close


def test_scene_options_from_the_cli_and_their_ranges(tmp_path):
    args = ["synth", "--num-train", "1", "--num-val", "1", "--image-size", "64", "--seed", "1", "--workers", "1"]
    assert cli_main([*args, "--out", str(tmp_path / "a")]) == 0
    assert cli_main([*args, "--out", str(tmp_path / "b"), "--clutter", "8", "--texture-period", "10", "24",
                     "--strong-texture", "0.5", "--touching", "0.3"]) == 0
    plain, hard = (np.asarray(Image.open(tmp_path / d / "train" / "000001.png")) for d in "ab")
    assert plain.shape == hard.shape and (plain != hard).any()
    for bad in (dict(clutter=-1), dict(texture_period=(10, 4)), dict(strong_texture=1.5), dict(touching=-0.1),
                dict(object_area=(0, 100)), dict(object_area=(5000, 700))):
        with pytest.raises(InputError):
            SceneOptions(**bad)


def test_object_area_range_leaves_out_small_objects():
    def areas(options):
        out = []
        for index in range(30):
            _, objects = render_image(seed=2, split="train", index=index, size=128, options=options)
            out += [int(o["mask"].sum()) for o in objects]
        return np.array(out)

    plain, large = areas(SceneOptions()), areas(SceneOptions(object_area=(700, 22000)))
    # 700 px at 256x256 is 175 px at 128x128; occlusion and the image border only take pixels away,
    # and an object keeps at least half of them (MIN_VISIBLE)
    assert (plain < 80).mean() > 0.15
    assert (large < 80).mean() < 0.03 and np.median(large) > 2 * np.median(plain), (np.median(plain), np.median(large))
    assert 3 < len(large) / 30 < 6  # as many objects per image as the default scenes'
