"""`ggn convert-ade20k`: ADE20K's per-image instance annotations -> one COCO instances JSON (evaluation ground truth).

Expected input: the full ADE20K release ADE20K_2021_17_01 (the one CSAILVision distributes; layout as in the
CSAILVision/ADE20K README), given as --root:

  ROOT/images/ADE/{training,validation}/<scene>/.../ADE_val_00000001.jpg
  ROOT/images/ADE/validation/<scene>/.../ADE_val_00000001.json   {"annotation": {"imsize": [h, w, 3], "object": []}}
  ROOT/images/ADE/validation/<scene>/.../ADE_val_00000001/instance_000_ADE_val_00000001.png   one binary mask per object

Each object of the JSON has "id", "name" (the WordNet-corrected name), "name_ndx", "polygon" {"x", "y"},
"parts" {"part_level", "ispartof"} and "instance_mask" (path relative to the JSON's folder). Objects with
part_level > 0 are parts of another object (a car's wheel) and are left out unless --include-parts, as the
ADE20K toolkit separates objects from parts (utils/utils_ade20k.py). Older layouts (ADE20K_2016_07_26 with
*_atr.txt, the SceneParsing ADEChallengeData2016) are refused with what to download instead.

Output: images sorted by file name, ids 1..N in that order, `file_name` relative to
ROOT/images/ADE/<split> (the config's `eval_images`); one annotation per object with `segmentation` as
compressed RLE of the instance-mask PNG (--masks instance) or the annotated polygon (--masks polygon),
`area` and `bbox` from pycocotools, `iscrowd` 0 (ADE20K has no crowd regions) and `ade_id` (the object's id
in the JSON). Categories are ADE's names, ids 1..K in sorted name order (each carrying ADE's `name_ndx`);
evaluation resolves classes by name, so ids need only be unique within the file. `info.summary` counts what
was converted and skipped.

Streaming and resumable: images are converted in chunks of --chunk-size, each written atomically to
`OUT.parts/part-KKKKK.json`; a rerun skips finished parts (when the options and annotation files are
unchanged) and the final file is assembled part by part into a temporary file renamed into place.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import logging
import shutil
from pathlib import Path
from typing import Callable

import numpy as np
from pycocotools import mask as mask_util

from ggn.io import InputError, atomic_open, atomic_write_json

log = logging.getLogger(__name__)

RELEASE = "ADE20K_2021_17_01"
SPLITS = ("validation", "training")
MASK_SOURCES = ("instance", "polygon")
FORMAT_VERSION = 1  # of the part files; bump when their content changes


class BadImage(Exception):
    """A per-image file that cannot be used: the image is skipped and counted, the run goes on."""


def parts_dir_for(out: Path) -> Path:
    return out.with_name(out.name + ".parts")


# ----------------------------------------------------------------------------------------------------
# Layout


def split_dir(root: Path, split: str) -> Path:
    """ROOT/images/ADE/<split>, or an InputError naming what was found and what to download or pass."""
    wanted = root / "images" / "ADE" / split
    expected = (f"expected the {RELEASE} layout, {wanted}/<scene>/ADE_*.json with each image's .jpg and "
                "instance-mask folder beside it")
    if not root.is_dir():
        raise InputError(f"ADE20K folder {root} does not exist; give --root the {RELEASE} folder "
                         "(the one holding images/ADE/)")
    if wanted.is_dir():
        if next(wanted.rglob("ADE_*.json"), None) is None:
            if next(wanted.rglob("*_atr.txt"), None) is not None:
                raise InputError(_old_release(wanted))
            raise InputError(f"no ADE_*.json annotation file under {wanted}; {expected}")
        return wanted
    if (root / split).is_dir() and root.name == "ADE":
        raise InputError(f"{root} is the images/ADE folder; give --root the {RELEASE} folder two levels up")
    if (root / "annotations" / split).is_dir() and (root / "images" / split).is_dir():
        raise InputError(f"{root} has the ADEChallengeData2016 (SceneParsing, 150 classes) layout, which has no "
                         f"instance annotations; download the full ADE20K release {RELEASE}; {expected}")
    old = root / "images" / split
    if old.is_dir() and next(old.rglob("*_atr.txt"), None) is not None:
        raise InputError(_old_release(old))
    raise InputError(f"{wanted} does not exist; {expected}")


def _old_release(folder: Path) -> str:
    return (f"{folder} holds *_atr.txt files: the ADE20K_2016_07_26 release, whose instances are encoded in "
            f"*_seg.png without per-object masks; this converter reads the {RELEASE} release "
            "(per-image .json and instance masks); download that one")


def list_annotation_files(folder: Path) -> list[Path]:
    """Every image's JSON under the split folder, sorted by file name (ADE's numbering), then path."""
    return sorted(folder.rglob("ADE_*.json"), key=lambda p: (p.name, str(p)))


# ----------------------------------------------------------------------------------------------------
# One image


def _read_annotation(path: Path) -> dict:
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise BadImage(f"unreadable ({e.strerror or e})") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        text = raw.decode("latin-1")  # not UTF-8: every byte is a Latin-1 character, so read rather than skip
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise BadImage(f"not valid JSON ({e})") from None
    ann = data.get("annotation") if isinstance(data, dict) else None
    if not isinstance(ann, dict) or not isinstance(ann.get("object"), list):
        raise BadImage('no "annotation": {"object": [...]} list')
    return ann


def _image_size(ann: dict, json_path: Path) -> tuple[int, int]:
    size = ann.get("imsize")
    if isinstance(size, list) and len(size) >= 2 and all(isinstance(v, int) and v > 0 for v in size[:2]):
        return size[0], size[1]
    from PIL import Image  # no size in the JSON: read it from the image header

    image = json_path.with_suffix(".jpg")
    try:
        with Image.open(image) as im:
            return im.height, im.width
    except (OSError, ValueError) as e:
        raise BadImage(f"no imsize and image {image.name} unreadable ({e})") from None


def _polygon_rle(obj: dict, height: int, width: int) -> dict | None:
    poly = obj.get("polygon")
    if not isinstance(poly, dict):
        return None
    xs, ys = poly.get("x"), poly.get("y")
    if not isinstance(xs, list) or not isinstance(ys, list) or len(xs) != len(ys) or len(xs) < 3:
        return None
    flat = [float(v) for xy in zip(xs, ys) for v in xy]
    return mask_util.frPyObjects([flat], height, width)[0]


def _instance_rle(obj: dict, folder: Path, height: int, width: int) -> dict | None:
    from PIL import Image

    rel = obj.get("instance_mask")
    if not isinstance(rel, str) or not rel:
        return None
    try:
        with Image.open(folder / rel) as im:
            mask = np.asarray(im.convert("L")) > 0
    except (OSError, ValueError):
        return None
    if mask.shape != (height, width):
        return None
    return mask_util.encode(np.asfortranarray(mask.astype(np.uint8)))


def convert_image(json_path: Path, image_id: int, split_folder: Path, masks: str, include_parts: bool,
                  counts: dict) -> tuple[dict, list[dict]]:
    """(COCO image, annotations with `category_name`/`name_ndx` in place of a category id) of one image."""
    ann = _read_annotation(json_path)
    height, width = _image_size(ann, json_path)
    image = {"id": image_id, "file_name": json_path.with_suffix(".jpg").relative_to(split_folder).as_posix(),
             "height": height, "width": width}
    out = []
    for obj in ann["object"]:
        if not isinstance(obj, dict):
            counts["objects_malformed"] += 1
            continue
        parts = obj.get("parts") if isinstance(obj.get("parts"), dict) else {}
        try:
            part_level = int(parts.get("part_level", 0) or 0)
        except (TypeError, ValueError):
            part_level = 0
        if part_level > 0 and not include_parts:
            counts["parts_excluded"] += 1
            continue
        name = obj.get("name")
        if not isinstance(name, str) or not name.strip():
            counts["objects_malformed"] += 1
            continue
        rle = None
        if masks == "instance":
            rle = _instance_rle(obj, json_path.parent, height, width)
            if rle is None:
                counts["masks_from_polygon"] += 1
                log.debug("%s: object %s has no readable instance mask of %dx%d; using its polygon",
                          json_path, obj.get("id"), width, height)
        polygon = masks == "polygon" or rle is None
        if polygon:
            rle = _polygon_rle(obj, height, width)
        area = float(mask_util.area(rle)) if rle is not None else 0.0
        if area <= 0:
            counts["objects_empty"] += 1
            continue
        if masks == "polygon":
            xs, ys = obj["polygon"]["x"], obj["polygon"]["y"]
            segmentation = [[float(v) for xy in zip(xs, ys) for v in xy]]
        else:
            segmentation = {"size": [height, width], "counts": rle["counts"].decode("ascii")}
        a = {"image_id": image_id, "category_name": name.strip(), "name_ndx": obj.get("name_ndx"),
             "segmentation": segmentation, "area": area,
             "bbox": [float(v) for v in mask_util.toBbox(rle)], "iscrowd": 0, "ade_id": obj.get("id")}
        if include_parts:
            a["ade_part_level"] = part_level
        out.append(a)
        counts["objects"] += 1
    return image, out


# ----------------------------------------------------------------------------------------------------
# Parts, assembly


def _new_counts() -> dict:
    return {"images": 0, "images_skipped": 0, "objects": 0, "parts_excluded": 0, "objects_empty": 0,
            "objects_malformed": 0, "masks_from_polygon": 0}


def _fingerprint(files: list[Path], folder: Path, settings: dict) -> str:
    digest = hashlib.sha256(json.dumps(settings, sort_keys=True).encode())
    for f in files:
        st = f.stat()
        digest.update(f"{f.relative_to(folder).as_posix()}:{st.st_size}:{st.st_mtime_ns}\n".encode())
    return digest.hexdigest()


def _read_part(path: Path, fingerprint: str) -> dict | None:
    try:
        part = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None
    return part if isinstance(part, dict) and part.get("fingerprint") == fingerprint else None


def convert(root: str | Path, out: str | Path, split: str = "validation", masks: str = "instance",
            include_parts: bool = False, chunk_size: int = 250, keep_parts: bool = False,
            after_part: Callable[[Path], None] | None = None) -> dict:
    """Convert one split to `out` (resuming from `out.parts/`) and return the summary counts.

    `after_part(path)` is called after each part is written (tests use it to simulate a kill).
    """
    from tqdm import tqdm

    root, out = Path(root), Path(out)
    if split not in SPLITS:
        raise InputError(f"--split {split!r}: choose one of {', '.join(SPLITS)}")
    if masks not in MASK_SOURCES:
        raise InputError(f"--masks {masks!r}: choose one of {', '.join(MASK_SOURCES)}")
    if chunk_size < 1:
        raise InputError("--chunk-size must be >= 1")
    folder = split_dir(root, split)
    files = list_annotation_files(folder)
    log.info("%s %s: %d annotated images under %s", RELEASE, split, len(files), folder)
    settings = {"format": FORMAT_VERSION, "split": split, "masks": masks, "include_parts": include_parts,
                "chunk_size": chunk_size}
    fingerprint = _fingerprint(files, folder, settings)
    parts_dir = parts_dir_for(out)
    chunks = [files[i:i + chunk_size] for i in range(0, len(files), chunk_size)]
    part_paths = [parts_dir / f"part-{k:05d}.json" for k in range(len(chunks))]

    done = {k for k, p in enumerate(part_paths) if p.is_file() and _read_part(p, fingerprint) is not None}
    kept = {part_paths[k] for k in done}
    stale = [p for p in parts_dir.glob("part-*.json") if p not in kept] if parts_dir.is_dir() else []
    for p in stale:  # other options, changed annotation files, or a torn write
        p.unlink()
    if stale:
        log.info("removed %d part(s) in %s made with other options or older annotation files", len(stale), parts_dir)
    if done:
        log.info("resuming: %d of %d parts already done in %s", len(done), len(chunks), parts_dir)

    progress = tqdm(total=len(files), initial=sum(len(chunks[k]) for k in done), unit="img",
                    desc=f"convert-ade20k {split}", dynamic_ncols=True)
    try:
        for k, chunk in enumerate(chunks):
            if k in done:
                continue
            counts = _new_counts()
            images, annotations, skipped = [], [], {}
            first_id = k * chunk_size + 1
            for j, path in enumerate(chunk):
                try:
                    image, anns = convert_image(path, first_id + j, folder, masks, include_parts, counts)
                except BadImage as e:
                    rel = path.relative_to(folder).as_posix()
                    log.warning("skipping image %s: %s", path, e)
                    skipped[rel] = str(e)
                    counts["images_skipped"] += 1
                else:
                    images.append(image)
                    annotations.extend(anns)
                    counts["images"] += 1
                progress.update(1)
            atomic_write_json(part_paths[k], {"fingerprint": fingerprint, "images": images,
                                              "annotations": annotations, "skipped": skipped, "counts": counts})
            if after_part is not None:
                after_part(part_paths[k])
    finally:
        progress.close()

    summary = _assemble(out, part_paths, fingerprint, split, settings)
    if not keep_parts:
        shutil.rmtree(parts_dir, ignore_errors=True)
    log.info("wrote %s: %d images (%d skipped), %d objects of %d categories; %d parts excluded, %d empty and "
             "%d malformed objects skipped, %d masks taken from the polygon", out, summary["images"],
             summary["images_skipped"], summary["objects"], summary["categories"], summary["parts_excluded"],
             summary["objects_empty"], summary["objects_malformed"], summary["masks_from_polygon"])
    return summary


def _load_parts(part_paths: list[Path], fingerprint: str):
    for path in part_paths:
        part = _read_part(path, fingerprint)
        if part is None:  # written by this run or checked at its start: only a concurrent writer gets here
            raise InputError(f"part file {path} changed during the run; delete {path.parent} and convert again")
        yield part


def _assemble(out: Path, part_paths: list[Path], fingerprint: str, split: str, settings: dict) -> dict:
    """Write the COCO file part by part: one pass for the category names, one for images and annotations."""
    names: dict[str, int | None] = {}
    summary = _new_counts()
    skipped: dict[str, str] = {}
    for part in _load_parts(part_paths, fingerprint):
        for a in part["annotations"]:
            ndx = names.get(a["category_name"])
            if a["name_ndx"] is not None and (ndx is None or a["name_ndx"] < ndx):
                ndx = a["name_ndx"]
            names[a["category_name"]] = ndx
        for key, value in part["counts"].items():
            summary[key] += value
        skipped.update(part["skipped"])
    category_ids = {name: i for i, name in enumerate(sorted(names), start=1)}
    categories = [{"id": i, "name": name, "supercategory": "object", "ade_name_ndx": names[name]}
                  for name, i in category_ids.items()]
    summary["categories"] = len(categories)
    info = {"description": f"ADE20K ({RELEASE}) {split} instances, converted by `ggn convert-ade20k`",
            "release": RELEASE, "split": split, "masks": settings["masks"],
            "include_parts": settings["include_parts"], "summary": summary, "skipped_images": skipped}

    with atomic_open(out, "w") as f:
        f.write('{"info": ' + json.dumps(info) + ', "images": [')
        first = True
        for part in _load_parts(part_paths, fingerprint):
            for image in part["images"]:
                f.write(("" if first else ", ") + json.dumps(image))
                first = False
        f.write('], "annotations": [')
        next_id = 1
        for part in _load_parts(part_paths, fingerprint):
            for a in part["annotations"]:
                coco = {"id": next_id, "image_id": a["image_id"], "category_id": category_ids[a["category_name"]]}
                coco.update((k, v) for k, v in a.items() if k not in ("image_id", "category_name", "name_ndx"))
                f.write(("" if next_id == 1 else ", ") + json.dumps(coco))
                next_id += 1
        f.write('], "categories": ' + json.dumps(categories) + "}\n")
    return summary


# ----------------------------------------------------------------------------------------------------
# Command line


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--root", required=True, type=Path,
                        help=f"the {RELEASE} folder (holding images/ADE/{{training,validation}})")
    parser.add_argument("--split", default="validation", choices=SPLITS,
                        help="validation: the 2,000 evaluation images")
    parser.add_argument("--out", required=True, type=Path, help="COCO instances JSON to write")
    parser.add_argument("--masks", default="instance", choices=MASK_SOURCES,
                        help="instance: RLE of each object's instance-mask PNG (its annotated polygon when the "
                             "PNG is missing or unreadable); polygon: the annotated polygon, as COCO polygons")
    parser.add_argument("--include-parts", action="store_true",
                        help="also convert object parts (part_level > 0), left out by default")
    parser.add_argument("--chunk-size", type=int, default=250,
                        help="images per part file (the unit of resumption)")
    parser.add_argument("--keep-parts", action="store_true",
                        help="keep OUT.parts/ after the final file is written (default: removed)")


def run(args: argparse.Namespace) -> int:
    convert(args.root, args.out, split=args.split, masks=args.masks, include_parts=args.include_parts,
            chunk_size=args.chunk_size, keep_parts=args.keep_parts)
    return 0
