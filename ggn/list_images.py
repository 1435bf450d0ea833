"""`ggn list-images`: a folder tree of images (ImageNet's train/<wnid>/*.JPEG, or a flat folder) -> a COCO image list.

The output is what `ggn extract --annotations` reads to mine pseudo-GT on images without annotations:

  {"info": {...}, "images": [{"id": 1, "file_name": "n01440764/n01440764_10026.JPEG", "height": 375,
                              "width": 500}, ...], "categories": []}

Files are found recursively under --root (symbolic links followed, hidden files and folders ignored), kept
when their extension is one of --extensions (case-insensitive), and sorted by their path relative to the
root; ids count 1..N in that order over the images kept, so the same tree always gives the same file, byte
for byte. The file has no "annotations" key on purpose: `ggn extract` then records gt_iou as null (no ground
truth known) rather than 0.0 (ground truth known, nothing overlaps), as COCO's own image-info files do.

Sizes come from the image headers (PIL opens a file without decoding it). `height`/`width` are the shape of
the array `ggn.images.read_image` returns, which is what `ggn extract` checks them against: that reader
applies the EXIF orientation tag, so a photo tagged "rotate 90" is listed with its height and width exchanged;
images whose tag asks for such a rotation are counted in the summary. A file is skipped, logged and listed with its reason in
the summary when it is empty, its header is unreadable or gives no pixels, or it is truncated: a JPEG without
its end-of-image marker or a PNG without its IEND chunk is decoded to tell trailing bytes (kept) from a cut
file (skipped); so are BMPs (no such marker) and WebPs whose RIFF size disagrees with the file's.

Streaming and resumable: files are read in parts of --chunk, each written atomically to
`OUT.parts/part-KKKKK-<fingerprint>.json`, the fingerprint covering the part's file names and the options
that decide its content; a rerun reuses the parts it finds and reads only the others. The final file is
assembled part by part into a temporary file renamed into place, the summary goes to `OUT.summary.json`,
and the parts folder is removed. The fingerprint holds names, not modification times (stating every file
of ImageNet again would cost as much as the header pass): after replacing files in place, delete OUT.parts/.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import shutil
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Iterator

from ggn import images as _images
from ggn.images import EXIF_ORIENTATION, SWAPS_AXES  # noqa: F401 (used by the tests)
from ggn.io import InputError, atomic_open, atomic_write_json

log = logging.getLogger(__name__)

DEFAULT_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
FORMAT_VERSION = 2  # of the part files; bump when what a part holds for the same files changes (2: EXIF applied)

# Whether ggn.images.read_image rotates images by their EXIF orientation tag. It does (as labelme, CVAT and
# detectron2 do), so sizes are the displayed ones; tests/test_list_images.py checks the two agree.
READER_APPLIES_EXIF_ORIENTATION = True


def parts_dir_for(out: Path) -> Path:
    return out.with_name(out.name + ".parts")


def summary_path_for(out: Path) -> Path:
    return out.with_name(out.name + ".summary.json")


def normalise_extensions(items: list[str] | tuple[str, ...]) -> tuple[str, ...]:
    """'.JPEG', 'jpg', 'png,webp' -> ('.jpeg', '.jpg', '.png', '.webp')."""
    exts = {("." + e.strip().lstrip(".")).lower() for item in items for e in item.split(",") if e.strip().strip(".")}
    if not exts:
        raise InputError("--extensions is empty; give at least one, e.g. --extensions .jpg .png")
    return tuple(sorted(exts))


# ----------------------------------------------------------------------------------------------------
# Finding the files


def find_images(root: Path, extensions: tuple[str, ...]) -> tuple[list[str], dict, dict[str, str]]:
    """(relative POSIX paths of the image files under `root`, sorted; counts of what was left out;
    {relative folder: reason} of folders that could not be listed)."""
    if not root.exists():
        raise InputError(f"image folder {root} does not exist; give --root the folder holding the images "
                         "(for ImageNet, the train/ folder with one subfolder per class)")
    if not root.is_dir():
        raise InputError(f"--root {root} is a file, not a folder; give the folder holding the images")
    files: list[str] = []
    ignored = {"hidden": 0, "other_extensions": 0}
    unlistable: dict[str, str] = {}
    seen_dirs: set[tuple[int, int]] = set()
    stack = [(root, "")]
    while stack:
        folder, prefix = stack.pop()
        try:
            st = folder.stat()
            if (st.st_dev, st.st_ino) in seen_dirs:  # a symbolic link back up the tree
                continue
            seen_dirs.add((st.st_dev, st.st_ino))
            with os.scandir(folder) as entries:
                entries = list(entries)
        except OSError as e:
            if not prefix:
                raise InputError(f"cannot list image folder {root} ({e.strerror or e}); check its permissions") from None
            unlistable[prefix] = f"folder not listable ({e.strerror or e})"
            continue
        for entry in entries:
            rel = prefix + entry.name
            if entry.name.startswith("."):
                ignored["hidden"] += 1
                continue
            try:
                if entry.is_dir():
                    stack.append((Path(entry.path), rel + "/"))
                    continue
                is_file = entry.is_file()
            except OSError:
                is_file = False
            if is_file and os.path.splitext(entry.name)[1].lower() in extensions:
                files.append(rel)
            else:
                ignored["other_extensions"] += 1
    files.sort()
    return files, ignored, unlistable


# ----------------------------------------------------------------------------------------------------
# One file (runs in the worker processes)


def read_header(path: str) -> tuple[int, int, int] | str:
    """(height, width, EXIF orientation) of the image as read_image will return it, or why it is unusable
    (ggn.images.read_header: header only, a file without its end marker decoded to tell a cut file)."""
    result = _images.read_header(path)
    if isinstance(result, str) or READER_APPLIES_EXIF_ORIENTATION or result[2] not in SWAPS_AXES:
        return result
    height, width, orientation = result
    return width, height, orientation


# ----------------------------------------------------------------------------------------------------
# Parts, assembly


def _fingerprint(chunk: list[str], settings: dict) -> str:
    digest = hashlib.sha256(json.dumps(settings, sort_keys=True).encode())
    digest.update("\n".join(chunk).encode("utf-8", "surrogateescape"))
    return digest.hexdigest()


def _read_part(path: Path, fingerprint: str) -> dict:
    try:
        part = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise InputError(f"part file {path} is unreadable ({e}); delete {path.parent} and run again") from None
    if not isinstance(part, dict) or part.get("fingerprint") != fingerprint:
        raise InputError(f"part file {path} changed during the run; delete {path.parent} and run again")
    return part


def _iter_parts(paths: list[Path], fingerprints: list[str]) -> Iterator[dict]:
    for path, fingerprint in zip(paths, fingerprints):
        yield _read_part(path, fingerprint)


def list_images(root: str | os.PathLike, out: str | os.PathLike, *,
                extensions: tuple[str, ...] | list[str] = DEFAULT_EXTENSIONS, workers: int = 0,
                chunk: int = 50_000, max_images: int | None = None, keep_parts: bool = False) -> dict:
    """Write the image list of `root` to `out` (resuming from `out.parts/`) and return the summary."""
    from tqdm import tqdm

    t0 = time.perf_counter()
    root, out = Path(root), Path(out)
    extensions = normalise_extensions(list(extensions))
    if chunk < 1:
        raise InputError(f"--chunk {chunk}: must be >= 1")
    if max_images is not None and max_images < 1:
        raise InputError(f"--max-images {max_images}: must be >= 1 (leave it out for every image)")
    if workers < 0:
        raise InputError(f"--workers {workers}: must be >= 0 (0: read in this process)")

    files, ignored, unlistable = find_images(root, extensions)
    for rel, reason in unlistable.items():
        log.warning("skipping folder %s: %s", root / rel, reason)
    if not files:
        raise InputError(f"no image files ({', '.join(extensions)}) under {root}: found {ignored['other_extensions']} "
                         f"other file(s) and {ignored['hidden']} hidden entr(ies); point --root at the image folder "
                         "(for ImageNet, train/ with one subfolder per class) or change --extensions")
    found = len(files)
    if max_images is not None:
        files = files[:max_images]
    log.info("%d image files under %s%s", found, root,
             f"; listing the first {len(files)} (--max-images)" if len(files) < found else "")

    settings = {"format": FORMAT_VERSION, "root": str(root.resolve()),
                "reader_applies_exif_orientation": READER_APPLIES_EXIF_ORIENTATION}
    chunks = [files[i:i + chunk] for i in range(0, len(files), chunk)]
    fingerprints = [_fingerprint(c, settings) for c in chunks]
    parts_dir = parts_dir_for(out)
    part_paths = [parts_dir / f"part-{k:05d}-{fp[:16]}.json" for k, fp in enumerate(fingerprints)]
    done = {k for k, p in enumerate(part_paths) if p.is_file()}
    if parts_dir.is_dir():
        wanted = set(part_paths)
        stale = [p for p in parts_dir.iterdir() if p not in wanted and p.is_file()]
        for p in stale:  # other files or options, or a write torn by a kill (.tmp)
            p.unlink()
        if stale:
            log.info("removed %d file(s) in %s made from other files or options", len(stale), parts_dir)
    if done:
        log.info("resuming: %d of %d parts already done in %s", len(done), len(chunks), parts_dir)

    root_str = str(root)
    pool = ProcessPoolExecutor(max_workers=workers) if workers > 0 and len(done) < len(chunks) else None
    progress = tqdm(total=len(files), initial=sum(len(chunks[k]) for k in done), unit="img",
                    desc="list-images", dynamic_ncols=True)
    read = 0
    try:
        for k, names in enumerate(chunks):
            if k in done:
                continue
            paths = [os.path.join(root_str, rel) for rel in names]
            results = pool.map(read_header, paths, chunksize=64) if pool else map(read_header, paths)
            images, skipped, exif_rotated = [], {}, 0
            for rel, result in zip(names, results):
                if isinstance(result, str):
                    log.warning("skipping %s: %s", root / rel, result)
                    skipped[rel] = result
                else:
                    height, width, orientation = result
                    images.append({"file_name": rel, "height": height, "width": width})
                    exif_rotated += orientation in SWAPS_AXES
                progress.update(1)
            read += len(names)
            atomic_write_json(part_paths[k], {"fingerprint": fingerprints[k], "images": images,
                                              "skipped": skipped, "exif_rotated": exif_rotated})
    finally:
        progress.close()
        if pool is not None:
            pool.shutdown(cancel_futures=True)

    summary = {"root": str(root), "out": str(out),
               **_totals(part_paths, fingerprints, unlistable),
               "found": found, "max_images": max_images, "extensions": list(extensions), "ignored": ignored,
               "parts": len(chunks), "parts_reused": len(done), "files_read": read, "workers": workers}
    if summary["images"] == 0:
        summary["seconds"] = round(time.perf_counter() - t0, 3)
        atomic_write_json(summary_path_for(out), summary, indent=2)
        shutil.rmtree(parts_dir, ignore_errors=True)
        raise InputError(f"none of the {len(files)} image files under {root} could be read (reasons in "
                         f"{summary_path_for(out)}); check the files or --extensions")
    _write(out, part_paths, fingerprints, root, extensions, summary)
    summary["seconds"] = round(time.perf_counter() - t0, 3)
    atomic_write_json(summary_path_for(out), summary, indent=2)
    if not keep_parts:
        shutil.rmtree(parts_dir, ignore_errors=True)
    log.info("wrote %s: %d images, %d skipped (reasons in %s), %d with an EXIF rotation (listed rotated, as "
             "read_image reads them); %d hidden and %d other files ignored", out, summary["images"],
             summary["skipped"], summary_path_for(out), summary["exif_rotated"], ignored["hidden"],
             ignored["other_extensions"])
    return summary


def _totals(part_paths: list[Path], fingerprints: list[str], unlistable: dict[str, str]) -> dict:
    skipped = dict(unlistable)
    exif_rotated = count = 0
    for part in _iter_parts(part_paths, fingerprints):
        skipped.update(part["skipped"])
        exif_rotated += part["exif_rotated"]
        count += len(part["images"])
    return {"images": count, "skipped": len(skipped), "skipped_files": dict(sorted(skipped.items())),
            "exif_rotated": exif_rotated}


def _write(out: Path, part_paths: list[Path], fingerprints: list[str], root: Path, extensions: tuple[str, ...],
           totals: dict) -> None:
    """Stream the parts into `out`, one image per line, ids 1..N in part order (= sorted file names). Nothing
    that varies between runs (times, reused parts, workers) goes in, so the same tree gives the same bytes."""
    info = {"description": f"images under {root.resolve()}, listed by `ggn list-images` (no annotations)",
            "root": str(root.resolve()), "extensions": list(extensions), "images": totals["images"],
            "skipped": totals["skipped"]}
    with atomic_open(out, "w") as f:
        f.write('{"info": ' + json.dumps(info) + ', "images": [')
        next_id = 1
        for part in _iter_parts(part_paths, fingerprints):
            for image in part["images"]:
                f.write(("\n" if next_id == 1 else ",\n") + json.dumps({"id": next_id, **image}))
                next_id += 1
        f.write('\n], "categories": []}\n')


# ----------------------------------------------------------------------------------------------------
# Command line


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--root", required=True, type=Path,
                        help="folder of images: one subfolder per class (ImageNet's train/) or flat")
    parser.add_argument("--out", required=True, type=Path, help="COCO image list (JSON) to write")
    parser.add_argument("--extensions", nargs="+", default=list(DEFAULT_EXTENSIONS), metavar="EXT",
                        help="file extensions to list, case-insensitive (.jpg or jpg; commas also separate)")
    parser.add_argument("--workers", type=int, default=0,
                        help="processes reading image headers (0: in this process)")
    parser.add_argument("--chunk", type=int, default=50_000, help="files per part file (the unit of resuming)")
    parser.add_argument("--max-images", type=int, default=None,
                        help="only the first N image files in sorted order (smoke tests)")
    parser.add_argument("--keep-parts", action="store_true",
                        help="keep OUT.parts/ after the final file is written (default: removed)")


def run(args: argparse.Namespace) -> int:
    list_images(args.root, args.out, extensions=args.extensions, workers=args.workers, chunk=args.chunk,
                max_images=args.max_images, keep_parts=args.keep_parts)
    return 0
