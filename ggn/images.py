"""The one image reader of every stage: a file named by an annotation -> RGB uint8 pixels as the annotation sees them.

What it does with the images real datasets hold (docs/bad_inputs.md lists each with its test):
- grayscale, palette, CMYK, RGBA/LA (alpha dropped) -> RGB; 16-bit grayscale (PNG `I;16`, TIFF `I`, `F`) is
  scaled to 8 bits, never clipped (clipping turns every 16-bit image white); 16-bit RGB PIL already reduces to
  its high byte;
- the EXIF orientation tag is applied (as labelme, CVAT and detectron2 do when showing or annotating a photo),
  so the pixels have the size and orientation the annotation tool showed; `read_header` reports that size
  without decoding;
- a missing, empty, truncated or undecodable file, or one whose size disagrees with the annotation's
  width/height, raises `ImageError` naming the file: batch stages (extract, predict, rank-oln) skip and count
  it; training stages check every image's header up front (`check_image`) and refuse with the list;
- `file_name` may hold subfolders, but never leaves the image folder: an absolute name or one with `..` is an
  `InputError` (`image_path`).
"""
from __future__ import annotations

import functools
import os
import re
import unicodedata
from pathlib import Path, PurePosixPath
from urllib.parse import urlparse

import numpy as np

from ggn.io import InputError

EXIF_ORIENTATION = 0x0112
SWAPS_AXES = (5, 6, 7, 8)  # transpose, 270, transverse, 90 degrees: height and width exchange
PNG_END = b"\x00\x00\x00\x00IEND\xaeB`\x82"
_HIGH_DEPTH_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I", "F")


class ImageError(Exception):
    """An image that cannot be used as its annotation describes it; the message names the file and why."""


def file_name_problem(file_name) -> str | None:
    """Why an `images` entry's file_name cannot name a file under the image folder, or None."""
    if not isinstance(file_name, str) or not file_name.strip():
        return (f"file_name {file_name!r} is not a file name (an image needs a 'file_name' relative to the image "
                "folder, or, as in LVIS v1, a 'coco_url' whose last two parts name it: <folder>/<file>)")
    parts = PurePosixPath(file_name.replace("\\", "/"))
    if parts.is_absolute() or ".." in parts.parts or re.match(r"^[A-Za-z]:", file_name):
        return (f"file_name {file_name!r} leaves the image folder (absolute, or with '..'); give names relative "
                "to the image folder (subfolders are fine)")
    return None


def coco_url_file_name(url) -> str | None:
    """`<folder>/<file>` from an LVIS v1 image's `coco_url` (`http://images.cocodataset.org/val2017/0..139.jpg`
    -> `val2017/0..139.jpg`), a name relative to the COCO image root; None when `url` has no such two parts.

    LVIS v1 files name no `file_name`: the URL's last two path components say which COCO folder holds the image
    (LVIS val draws from both train2017/ and val2017/), as mmdetection's LVISV1Dataset and detectron2's LVIS
    loader read them."""
    if not isinstance(url, str):
        return None
    parts = [p for p in urlparse(url.strip()).path.split("/") if p]
    if len(parts) < 2 or parts[-2] in (".", "..") or parts[-1] in (".", ".."):
        return None
    return f"{parts[-2]}/{parts[-1]}"


def with_file_name(info: dict) -> dict:
    """An `images` entry with its `file_name`: its own when it has one (COCO), else the one its `coco_url` names
    (LVIS v1); the entry itself when nothing changes, a copy otherwise."""
    if info.get("file_name") is not None:
        return info
    name = coco_url_file_name(info.get("coco_url"))
    return info if name is None else {**info, "file_name": name}


def image_path(root: str | os.PathLike, file_name: str) -> Path:
    """`root / file_name`; subfolders are fine, a name that leaves `root` (absolute, `..`) is an InputError."""
    problem = file_name_problem(file_name)
    if problem:
        raise InputError(f"image {problem} (image folder {root}); fix the annotation file's 'images'")
    return Path(root) / Path(*PurePosixPath(file_name.replace("\\", "/")).parts)


def _orientation(im) -> int:
    raw = im.info.get("exif")  # JPEG, PNG eXIf and WebP keep it from the header; nothing is decoded to find it
    if not raw:
        return 1
    from PIL import Image

    try:
        exif = Image.Exif()
        exif.load(raw)
        value = int(exif.get(EXIF_ORIENTATION, 1) or 1)
    except Exception:  # a malformed EXIF block is ignored, as by every viewer
        return 1
    return value if 1 <= value <= 8 else 1


def _to_uint8(pixels: np.ndarray, mode: str) -> np.ndarray:
    """High-bit-depth grayscale -> uint8 by its depth's range (16-bit: /257), not by clipping at 255."""
    a = pixels.astype(np.float64)
    if mode.startswith("I;16"):
        top = 65535.0
    elif mode == "F":
        top = 1.0 if a.size and np.nanmin(a) >= 0 and np.nanmax(a) <= 1 else 255.0
    else:  # "I": 32-bit integers, as PIL opens some 16-bit PNGs and TIFFs
        top = 255.0 if not a.size or a.max() <= 255 else 65535.0
    return np.clip(np.rint(np.nan_to_num(a) * (255.0 / top)), 0, 255).astype(np.uint8)


def _decode(im) -> np.ndarray:
    from PIL import ImageOps

    orientation = _orientation(im)
    im.load()
    if orientation != 1:
        im = ImageOps.exif_transpose(im)
    if im.mode in _HIGH_DEPTH_MODES:
        gray = _to_uint8(np.asarray(im), im.mode)
        return np.repeat(gray[:, :, None], 3, axis=2)
    if im.mode == "P" and "transparency" in im.info:
        im = im.convert("RGBA")  # PIL warns when a palette image with transparency goes straight to RGB
    return np.array(im.convert("RGB"))  # a writable copy: torch.from_numpy needs one


@functools.lru_cache(maxsize=8)
def _names_by_key(folder: str) -> dict[str, list[str]]:
    """A folder's file names by their NFC form, case folded (listed once per folder: COCO's has 118k)."""
    out: dict[str, list[str]] = {}
    try:
        for name in os.listdir(folder):
            out.setdefault(unicodedata.normalize("NFC", name).casefold(), []).append(name)
    except OSError:
        pass
    return out


def missing_hint(path: str | os.PathLike) -> str:
    """Why a missing image may be there after all: its name on disk in another Unicode normalisation (macOS
    writes NFD, JSON files usually hold NFC) or another case; "" when nothing like it is in its folder."""
    path = Path(path)
    near = [n for n in _names_by_key(str(path.parent)).get(unicodedata.normalize("NFC", path.name).casefold(), [])
            if n != path.name]
    if not near:
        return ""
    other = near[0]
    if unicodedata.normalize("NFC", other) == unicodedata.normalize("NFC", path.name):
        form = "NFD" if unicodedata.is_normalized("NFD", other) else "another form"
        return (f"; the folder has {other!a}, the same name in another Unicode normalisation ({form} on disk, "
                f"{'NFC' if unicodedata.is_normalized('NFC', path.name) else 'another form'} in the annotation "
                "file, as when files were copied from macOS): rename the files to NFC (e.g. `convmv -r -f utf8 "
                "-t utf8 --nfc --notest FOLDER`) or write file_name as it is on disk")
    return f"; the folder has {other!r}, which differs in case: fix file_name or the file's name"


def read_image(path: str | os.PathLike) -> np.ndarray:
    """RGB uint8 [H,W,3] with the EXIF orientation applied; `ImageError` (naming the file) when unusable."""
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    try:
        with Image.open(path) as im:
            return _decode(im)
    except FileNotFoundError:
        raise ImageError(f"image {path} does not exist{missing_hint(path)}") from None
    except UnidentifiedImageError:
        raise ImageError(f"image {path} is not an image format PIL can read (empty, garbage or another kind "
                         "of file)") from None
    except Exception as e:  # PIL raises many types for truncated or damaged files
        raise ImageError(f"image {path} is unreadable ({type(e).__name__}: {e})") from None


def check_size(image: np.ndarray, info: dict, path: str | os.PathLike) -> np.ndarray:
    """`image` when it has the annotation's height/width (when given), else `ImageError` with both sizes."""
    h, w = info.get("height"), info.get("width")
    if h is not None and w is not None and image.shape[:2] != (int(h), int(w)):
        raise ImageError(f"image {path} is {image.shape[1]}x{image.shape[0]} (width x height, EXIF orientation "
                         f"applied) but its annotation says {w}x{h}; fix 'width'/'height' of image "
                         f"{info.get('id')} or the file")
    return image


def load_image(root: str | os.PathLike, info: dict) -> np.ndarray:
    """The pixels of one COCO `images` entry under `root`, checked against its width/height."""
    path = image_path(root, info["file_name"])
    return check_size(read_image(path), info, path)


def _complete(f, fmt: str | None, size: int) -> bool:
    """True when the file visibly ends where its format ends; False means: decode it to find out."""
    if fmt in ("JPEG", "MPO"):
        f.seek(size - 2)
        return f.read(2) == b"\xff\xd9"
    if fmt == "PNG":
        f.seek(max(size - len(PNG_END), 0))
        return f.read(len(PNG_END)) == PNG_END
    if fmt == "WEBP":
        f.seek(4)
        return int.from_bytes(f.read(4), "little") + 8 == size
    return False


def read_header(path: str | os.PathLike) -> tuple[int, int, int] | str:
    """(height, width, EXIF orientation) of the image as `read_image` returns it, or why it is unusable.

    Reads the header only, plus the file's last bytes: a JPEG without its end-of-image marker or a PNG without
    its IEND chunk is decoded to tell trailing bytes (fine) from a cut file (unusable); so are formats without
    such a marker."""
    from PIL import Image

    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            if size == 0:
                return "empty file (0 bytes)"
            with Image.open(f) as im:
                width, height = im.size
                if width <= 0 or height <= 0:
                    return f"header says {width}x{height} pixels"
                orientation = _orientation(im)
                if not _complete(f, im.format, size):
                    im.load()  # raises on a cut file; a file with trailing bytes decodes and is kept
    except FileNotFoundError:
        return f"file does not exist{missing_hint(path)}"
    except Image.UnidentifiedImageError:
        return "not an image format PIL can read (garbage, or another kind of file)"
    except Exception as e:  # PIL raises many types for damaged or truncated files
        return f"{type(e).__name__}: {e}"
    if orientation in SWAPS_AXES:
        height, width = width, height
    return height, width, orientation


def check_image(root: str | os.PathLike, info: dict) -> str | None:
    """Why the image of one `images` entry cannot be trained on (missing, unreadable, cut, another size than
    the annotation's), or None; header only, so that training checks every image before its first step."""
    path = image_path(root, info["file_name"])
    header = read_header(path)
    if isinstance(header, str):
        return f"{path}: {header}"
    h, w, _ = header
    if info.get("height") is not None and (h, w) != (int(info["height"]), int(info["width"])):
        return (f"{path}: {w}x{h} (width x height, EXIF orientation applied) but the annotation says "
                f"{info['width']}x{info['height']}")
    return None
