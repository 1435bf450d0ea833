"""Named class sets (VOC, non-VOC, person, synthetic seen/unseen, ...) resolved to a file's category ids."""
from __future__ import annotations

import logging
from pathlib import Path

from ggn.io import InputError

log = logging.getLogger("ggn.classes")

# The 80 COCO categories in category-id order.
COCO_CLASSES = (
    "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat",
    "traffic light", "fire hydrant", "stop sign", "parking meter", "bench", "bird", "cat", "dog",
    "horse", "sheep", "cow", "elephant", "bear", "zebra", "giraffe", "backpack", "umbrella",
    "handbag", "tie", "suitcase", "frisbee", "skis", "snowboard", "sports ball", "kite",
    "baseball bat", "baseball glove", "skateboard", "surfboard", "tennis racket", "bottle",
    "wine glass", "cup", "fork", "knife", "spoon", "bowl", "banana", "apple", "sandwich", "orange",
    "broccoli", "carrot", "hot dog", "pizza", "donut", "cake", "chair", "couch", "potted plant",
    "bed", "dining table", "toilet", "tv", "laptop", "mouse", "remote", "keyboard", "cell phone",
    "microwave", "oven", "toaster", "sink", "refrigerator", "book", "clock", "vase", "scissors",
    "teddy bear", "hair drier", "toothbrush",
)

# The 20 PASCAL VOC classes under their COCO names (GGN/OLN VOC -> non-VOC split).
VOC_CLASSES = (
    "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "boat", "bird", "cat",
    "dog", "horse", "sheep", "cow", "bottle", "chair", "couch", "potted plant", "dining table", "tv",
)

# The bundled synthetic dataset (ggn.synth): shapes split so that both halves mix straight and
# curved outlines and every texture.
SYNTHETIC_SEEN = ("disc", "square", "triangle", "cross")
SYNTHETIC_UNSEEN = ("star", "ring", "hexagon", "ellipse")

_VOC = set(VOC_CLASSES)
NAMED_SETS: dict[str, tuple[str, ...] | None] = {
    "all": None,  # every category of the annotation file
    "coco": COCO_CLASSES,
    "voc": VOC_CLASSES,
    "nonvoc": tuple(n for n in COCO_CLASSES if n not in _VOC),
    "person": ("person",),
    "nonperson": tuple(n for n in COCO_CLASSES if n != "person"),
    "synthetic_seen": SYNTHETIC_SEEN,
    "synthetic_unseen": SYNTHETIC_UNSEEN,
}


def _read_names_file(path: str) -> list[str]:
    file = Path(path)
    if not file.is_file():
        raise InputError(f"class list {file} does not exist; give one class name per line")
    names = []
    for line in file.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            names.append(line)
    if not names:
        raise InputError(f"class list {file} names no classes (one name per line, '#' starts a comment)")
    return names


def _expand(item: str, file_names: list[str]) -> list[str]:
    item = item.strip()
    if item.startswith("@"):
        return _read_names_file(item[1:])
    if item in NAMED_SETS:
        members = NAMED_SETS[item]
        if members is None:
            return list(file_names)
        present = [n for n in members if n in file_names]
        missing = [n for n in members if n not in file_names]
        if not present:
            raise InputError(f"class set {item!r} has none of its classes in this annotation file "
                             f"(it has: {', '.join(file_names)})")
        if missing:
            log.warning("class set %r: %d of its classes are not in the annotation file: %s",
                        item, len(missing), ", ".join(missing))
        return present
    return [n.strip() for n in item.split(",") if n.strip()]


def class_names(spec: str | list[str], categories: list[dict]) -> list[str]:
    """A class spec (set name, comma-separated names, @file, or list of these) -> category names.

    `none` names no class; a leading `~` takes the complement within the file (`~@coco.txt`).
    """
    file_names = [c["name"] for c in categories]
    if isinstance(spec, str) and spec.strip() == "none":
        return []
    if isinstance(spec, str) and spec.strip().startswith("~"):
        excluded = set(class_names(spec.strip()[1:], categories))
        return [n for n in file_names if n not in excluded]
    items = [spec] if isinstance(spec, str) else list(spec)
    names: list[str] = []
    for item in items:
        names.extend(_expand(item, file_names))
    unknown = [n for n in dict.fromkeys(names) if n not in file_names]
    if unknown:
        raise InputError(
            f"unknown class name(s) {', '.join(map(repr, unknown))}; valid names in this file: "
            f"{', '.join(file_names)}; or a set: {', '.join(NAMED_SETS)}; or @file with one name per line "
            "(none: no class; ~SPEC: every other class)")
    if not names:
        raise InputError(f"class spec {spec!r} names no classes")
    return list(dict.fromkeys(names))


def resolve_classes(spec: str | list[str], categories: list[dict]) -> set[int]:
    """Category ids of `categories` (a COCO file's list) named by `spec`.

    `spec` is a set name (all, coco, voc, nonvoc, person, nonperson, synthetic_seen,
    synthetic_unseen), comma-separated class names, `@path` to a file with one name per line
    (# comments), or a list of any of these; `none` is the empty set and `~SPEC` the file's other
    classes. Named sets are taken as far as the file has them; an explicit name the file lacks
    is an error listing the valid names.
    """
    names = set(class_names(spec, categories))
    return {int(c["id"]) for c in categories if c["name"] in names}
