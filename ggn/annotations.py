"""The one annotation validator of every stage: a COCO file as annotation tools export it -> one the pipeline can trust.

Every stage that reads a user's COCO file calls `validate_coco` (split, extract, train-pa/train-detector through
`CocoInstances`, eval-pa, predict, merge, evaluate). What it does with each defect (docs/bad_inputs.md lists
each with its test):
- refused with an `InputError` naming the file, the entry and the fix: not a JSON object, a missing
  `images`/`annotations`/`categories` list, no images, an image without an integer id, a file_name or a
  positive height/width, a `file_name` leaving the image folder, duplicated image or category ids, an
  annotation on an image or of a category the file does not list, and a file whose objects have no masks at
  all (a box-only export: GGN learns from instance masks);
- completed, counted and logged: an image without `file_name` but with a `coco_url` (LVIS v1 as released) is
  named `<folder>/<file>` from the URL's last two parts, relative to the COCO image root (docs/datasets.md);
- repaired, counted and logged: uncompressed RLE (converted to compressed), a polygon written flat (`[x, y, ...]`:
  read as the one polygon it is), polygons with fewer than 3 points or
  an odd number of coordinates (that polygon dropped), a zero-area, missing, non-finite or out-of-image box
  (taken from the mask), a missing or non-positive area (the mask's), annotation ids 0, missing or duplicated
  (all renumbered from 1);
- dropped, counted and logged: objects without a usable mask (empty segmentation, only degenerate polygons,
  an RLE of another size, a mask with no pixel), and the annotation tools' background class
  (`_background_`, `__background__`, `__ignore__`: labelme's export writes `_background_` as category 0) with
  any annotation of it.
"""
from __future__ import annotations

import logging
import math
import os
from collections import Counter
from typing import Any

from ggn.io import InputError, read_json

log = logging.getLogger("ggn.annotations")

BACKGROUND_NAMES = frozenset({"_background_", "__background__", "__ignore__"})

# Counters of `validate_coco`, with the words the log uses for them.
REPAIRS = {
    "file_names_from_coco_url": "images without a file_name named by their coco_url (LVIS v1: <folder>/<file> under "
                                "the COCO image root)",
    "rle_converted": "uncompressed RLE masks converted to compressed RLE",
    "flat_polygons": ("segmentations written as one flat polygon ([x, y, x, y, ...] without the enclosing list), "
                      "read as that polygon"),
    "polygons_dropped": "polygons with fewer than 3 points or an odd number of coordinates dropped",
    "boxes_from_mask": "boxes missing, zero-area, non-finite or outside the image, taken from the mask",
    "areas_from_mask": "areas missing or not positive, taken from the mask",
    "ids_renumbered": "annotation ids 0, missing or duplicated (all ids renumbered from 1)",
}
DROPS = {
    "no_mask": "objects without a segmentation",
    "degenerate_polygons": "objects whose every polygon has fewer than 3 points",
    "rle_other_size": "objects whose RLE mask has another size than their image",
    "empty_mask": "objects whose mask has no pixel",
    "background_class": "objects of the background class",
}


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _finite_numbers(values: Any, n: int | None = None) -> bool:
    return (isinstance(values, (list, tuple)) and (n is None or len(values) == n)
            and all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in values))


def _mask_rle(seg: Any, height: int, width: int, counts: Counter) -> tuple[Any, dict | None]:
    """(segmentation to keep, its compressed RLE) or (None, None) with the reason counted."""
    from pycocotools import mask as mask_utils

    if not seg:
        counts["no_mask"] += 1
        return None, None
    if isinstance(seg, list) and seg and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in seg):
        counts["flat_polygons"] += 1  # one polygon without its enclosing list: numbers cannot be anything else
        seg = [seg]
    if isinstance(seg, list):
        polygons = [p for p in seg if _finite_numbers(p) and len(p) >= 6 and len(p) % 2 == 0]
        counts["polygons_dropped"] += len(seg) - len(polygons)
        if not polygons:
            counts["degenerate_polygons"] += 1
            return None, None
        rle = mask_utils.merge(mask_utils.frPyObjects([[float(v) for v in p] for p in polygons], height, width))
        return polygons, rle
    if isinstance(seg, dict) and "counts" in seg:
        size = seg.get("size")
        if not _finite_numbers(size, 2) or [int(size[0]), int(size[1])] != [height, width]:
            counts["rle_other_size"] += 1
            return None, None
        if isinstance(seg["counts"], list):
            rle = mask_utils.frPyObjects({"size": [height, width], "counts": seg["counts"]}, height, width)
            counts["rle_converted"] += 1
            return {"size": [height, width], "counts": rle["counts"].decode("ascii")}, rle
        if isinstance(seg["counts"], (str, bytes)):
            rle = {"size": [height, width], "counts": seg["counts"] if isinstance(seg["counts"], bytes)
                   else seg["counts"].encode("ascii")}
            return seg, rle
    counts["no_mask"] += 1
    return None, None


def _box_ok(bbox: Any, height: int, width: int) -> bool:
    if not _finite_numbers(bbox, 4):
        return False
    x, y, w, h = bbox
    return w > 0 and h > 0 and x >= -1 and y >= -1 and x + w <= width + 1 and y + h <= height + 1


def validate_coco(data: Any, path: str | os.PathLike, *, annotations: bool = True,
                  categories: bool = True, renumber: bool = True) -> tuple[dict, dict]:
    """(a cleaned copy of a COCO file's content, counts of what was repaired or dropped).

    `annotations`/`categories`: whether those lists are required (an image list such as `ggn list-images`
    writes has neither); an `annotations` list present is validated either way. `renumber` False leaves
    unusable annotation ids to the caller (split renumbers its outputs). The input is not modified.
    """
    from pycocotools import mask as mask_utils

    from ggn.images import file_name_problem, with_file_name

    path = str(path)
    if not isinstance(data, dict):
        raise InputError(f"{path} is not a COCO annotation file (expected a JSON object with 'images', "
                         "'annotations' and 'categories')")
    required = ["images"] + (["annotations"] if annotations else []) + (["categories"] if categories else [])
    for key in required:
        if not isinstance(data.get(key), list):
            raise InputError(f"{path} has no '{key}' list; it must be a COCO instances file "
                             "(export it as COCO from the annotation tool)")
    if not data["images"]:
        raise InputError(f"{path} lists no images (empty 'images'): nothing to train or evaluate on (a train.json "
                         "of `ggn split` is empty when no image has an object of a seen class: check `seen`)")
    counts: Counter = Counter()
    images: dict[int, dict] = {}
    for img in data["images"]:
        if not isinstance(img, dict) or not _is_int(img.get("id")):
            raise InputError(f"{path}: image entry {img!r:.200} has no integer 'id'")
        if img["id"] in images:
            raise InputError(f"{path}: image id {img['id']} is used twice ('images'); give every image its own id")
        for key in ("height", "width"):
            if not _is_int(img.get(key)) or img[key] <= 0:
                raise InputError(f"{path}: image {img['id']} needs a positive integer '{key}' (got "
                                 f"{img.get(key)!r}); export the file again with image sizes")
        named = with_file_name(img)
        if named is not img:
            counts["file_names_from_coco_url"] += 1
            img = named
        problem = file_name_problem(img.get("file_name"))
        if problem:
            raise InputError(f"{path}: image {img['id']}: {problem}")
        images[img["id"]] = img

    out = {k: v for k, v in data.items() if k not in ("images", "annotations", "categories")}
    out["images"] = list(images.values())
    background: set = set()
    if isinstance(data.get("categories"), list):
        cats, ids = [], set()
        for c in data["categories"]:
            if not isinstance(c, dict) or "id" not in c or not isinstance(c.get("name"), str):
                raise InputError(f"{path}: category {c!r:.200} needs an 'id' and a 'name'")
            if c["id"] in ids:
                raise InputError(f"{path}: category id {c['id']} is used twice ('categories')")
            ids.add(c["id"])
            if c["name"] in BACKGROUND_NAMES:
                background.add(c["id"])
                log.info("%s: category %r (id %s) is an annotation tool's background class; dropped", path,
                         c["name"], c["id"])
            else:
                cats.append(c)
        out["categories"] = cats
        category_ids = ids
    else:
        category_ids = None
    if not isinstance(data.get("annotations"), list):
        return out, dict(counts)

    anns, with_mask_field = [], 0
    for a in data["annotations"]:
        if not isinstance(a, dict):
            raise InputError(f"{path}: annotation {a!r:.200} is not an object")
        if a.get("image_id") not in images:
            raise InputError(f"{path}: annotation {a.get('id')} refers to image {a.get('image_id')!r}, which is "
                             "not in 'images'; remove the annotation or add its image")
        if category_ids is not None:
            if "category_id" not in a:
                raise InputError(f"{path}: annotation {a.get('id')} has no 'category_id'")
            if a["category_id"] in background:
                counts["background_class"] += 1
                continue
            if a["category_id"] not in category_ids:
                raise InputError(f"{path}: annotation {a.get('id')} has category_id {a['category_id']!r}, which "
                                 f"is not in 'categories' (ids {sorted(category_ids, key=str)[:20]}); add the "
                                 "category or remove the annotation")
        img = images[a["image_id"]]
        h, w = img["height"], img["width"]
        with_mask_field += bool(a.get("segmentation"))
        seg, rle = _mask_rle(a.get("segmentation"), h, w, counts)
        if rle is None:
            continue
        area = float(mask_utils.area(rle))
        if area <= 0:
            counts["empty_mask"] += 1
            continue
        fixed = dict(a)
        fixed["segmentation"] = seg
        fixed["iscrowd"] = int(bool(a.get("iscrowd", 0)))
        if not _box_ok(a.get("bbox"), h, w):
            fixed["bbox"] = [float(v) for v in mask_utils.toBbox(rle)]
            counts["boxes_from_mask"] += 1
        if not (isinstance(a.get("area"), (int, float)) and math.isfinite(a["area"]) and a["area"] > 0):
            fixed["area"] = area
            counts["areas_from_mask"] += 1
        anns.append(fixed)
    if data["annotations"] and not with_mask_field:
        raise InputError(f"{path}: none of its {len(data['annotations'])} annotations has a 'segmentation' (a "
                         "box-only export); GGN learns pairwise affinity from instance masks: export polygons or "
                         "masks (COCO segmentation) from the annotation tool")
    if renumber:
        from ggn.split import renumber_ids

        counts["ids_renumbered"] = renumber_ids(anns, path, quiet=True)
    out["annotations"] = anns
    return out, {k: v for k, v in counts.items() if v}


def refuse_evaluation_file(annotations, path: str | os.PathLike, role: str) -> None:
    """Refuse the eval.json of `ggn split` where a training or mining file belongs: its annotations marked
    `ignored_split` 0 are the unseen objects the evaluation holds out (learning them, or counting them as
    already annotated, would leak the evaluation into training)."""
    unseen = sum(1 for a in annotations if isinstance(a, dict) and a.get("ignored_split") == 0)
    if unseen:
        raise InputError(f"{path} is an evaluation file of `ggn split`: {unseen} of its annotations are unseen-class "
                         f"objects (ignored_split 0) that the evaluation holds out, and {role} would use them; pass "
                         "the train.json of `ggn split` (or the source file of the images)")


def log_counts(path: str | os.PathLike, counts: dict, total: int | None = None) -> None:
    """One warning per kind of repair or drop (nothing when the file was clean)."""
    for key, words in {**REPAIRS, **DROPS}.items():
        if counts.get(key):
            # COCO's own crowd regions are uncompressed RLE, LVIS names images by URL: routine, not warnings.
            routine = key in ("rle_converted", "file_names_from_coco_url")
            (log.info if routine else log.warning)("%s: %d %s%s", path, counts[key], words,
                                                   " (dropped)" if key in DROPS and key != "background_class" else "")


def load_coco(path: str | os.PathLike, what: str = "annotation file", **kwargs) -> tuple[dict, dict]:
    """Read and validate a COCO file (`validate_coco`'s keywords), logging what was repaired or dropped."""
    data, counts = validate_coco(read_json(path, what), path, **kwargs)
    log_counts(path, counts)
    return data, counts
