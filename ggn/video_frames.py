"""A video dataset as released (UVO v1.0) -> the frames its annotation file names, decoded once from the videos.

UVO ships videos (`uvo_videos_sparse/<video>.mp4`, Kinetics clips preprocessed to a 480-pixel short side at
30 fps) and COCO-style frame annotations (`FrameSet/UVO_frame_val.json`) whose `file_name` is `<video>/<n>.png`
under the frames folder, `n` counting decoded frames from 0 as the release's `video2frames.py` does. This step
decodes each video that has an annotated frame missing, up to its last annotated frame, and writes only the
annotated frames, each atomically: an interrupted run resumes where it stopped, and a frame already written
is never decoded again. When every frame is there it writes `ggn_frames.json` (the manifest the workflow waits
for); a video that is missing, unreadable, too short or of another size than its annotation is named in the
error, after every other video's frames are written.
"""
from __future__ import annotations

import argparse
import logging
import os
import re
from collections import defaultdict
from pathlib import Path, PurePosixPath

from ggn.annotations import load_coco
from ggn.images import image_path
from ggn.io import InputError, atomic_open, atomic_write_json, file_sha256

log = logging.getLogger("ggn.video_frames")

MANIFEST = "ggn_frames.json"
VIDEO_SUFFIXES = (".mp4", ".webm", ".mkv", ".avi", ".mov")
_FRAME = re.compile(r"^(\d+)\.(png|jpe?g)$", re.IGNORECASE)


def frame_of(file_name: str) -> tuple[str, int]:
    """(video name, frame index) of a frame file name `<video>/<n>.<png|jpg>` (subfolders above are allowed)."""
    parts = PurePosixPath(file_name.replace("\\", "/")).parts
    match = _FRAME.match(parts[-1]) if len(parts) >= 2 else None
    if match is None:
        raise InputError(f"frame file_name {file_name!r} is not <video>/<frame number>.png (UVO's layout, e.g. "
                         "'Yoe2gRvwvSo/45.png'); `ggn video-frames` reads the frame number from the file name")
    return parts[-2], int(match.group(1))


def find_video(videos: Path, name: str) -> Path | None:
    for suffix in VIDEO_SUFFIXES:
        path = videos / f"{name}{suffix}"
        if path.is_file():
            return path
    return None


def _write_frame(path: Path, pixels) -> None:
    from PIL import Image

    fmt = "PNG" if path.suffix.lower() == ".png" else "JPEG"
    options = {"compress_level": 1} if fmt == "PNG" else {"quality": 95}
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_open(path, "wb", fsync=False) as f:
        Image.fromarray(pixels).save(f, format=fmt, **options)


def decode_video(video: Path, wanted: dict[int, tuple[Path, int, int]]) -> tuple[int, str | None]:
    """Write the frames `wanted` ({index: (path, height, width)}) of one video; (frames written, problem or None)."""
    import av

    written, last = 0, max(wanted)
    try:
        with av.open(str(video)) as container:
            if not container.streams.video:
                return 0, f"{video}: no video stream"
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"
            index = -1
            for index, frame in enumerate(container.decode(stream)):
                if index in wanted:
                    path, height, width = wanted[index]
                    if (frame.height, frame.width) != (height, width):
                        return written, (f"{video}: frame {index} is {frame.width}x{frame.height} but the annotation "
                                         f"of {path.name} says {width}x{height}; use the release's preprocessed videos "
                                         "(UVO: 480-pixel short side, 30 fps)")
                    _write_frame(path, frame.to_ndarray(format="rgb24"))
                    written += 1
                if index >= last:
                    break
            if index < last:
                return written, (f"{video}: has {index + 1} frames, the annotation names frame {last}; the video "
                                 "is cut or not the release's")
    except av.error.FFmpegError as e:
        return written, f"{video}: unreadable ({type(e).__name__}: {e})"
    return written, None


def _decode_job(job: tuple[str, dict]) -> tuple[str, int, str | None]:
    video, wanted = job
    written, problem = decode_video(Path(video), wanted)
    return video, written, problem


def plan(images: list[dict], videos: Path, out: Path) -> tuple[dict[Path, dict], list[str], int]:
    """({video file: {frame index: (frame path, height, width)}} of the frames still missing, missing videos,
    frames already there)."""
    per_video: dict[str, dict[int, tuple[Path, int, int]]] = defaultdict(dict)
    present = 0
    for img in images:
        name, index = frame_of(img["file_name"])
        path = image_path(out, img["file_name"])
        if path.is_file() and path.stat().st_size > 0:
            present += 1
            continue
        per_video[name][index] = (path, int(img["height"]), int(img["width"]))
    jobs, missing = {}, []
    for name, wanted in sorted(per_video.items()):
        video = find_video(videos, name)
        if video is None:
            missing.append(name)
        else:
            jobs[video] = wanted
    return jobs, missing, present


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--annotations", required=True, type=Path,
                        help="COCO file naming the frames as <video>/<n>.png (UVO: FrameSet/UVO_frame_val.json)")
    parser.add_argument("--videos", required=True, type=Path,
                        help="folder of the videos, <video>.mp4 (UVO: uvo_videos_sparse)")
    parser.add_argument("--out", required=True, type=Path,
                        help="frames folder (UVO: uvo_videos_sparse_frames); frames already there are kept")
    parser.add_argument("--workers", type=int, default=1, help="videos decoded in parallel")


def run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    try:
        import av  # noqa: F401
    except ImportError:
        raise InputError("decoding videos needs PyAV (`pip install av`, a dependency in pyproject.toml): "
                         "install it in this environment") from None
    if not args.videos.is_dir():
        raise InputError(f"--videos {args.videos} is not a folder; give the release's video folder "
                         "(UVO: uvo_videos_sparse with <video>.mp4)")
    coco, _ = load_coco(args.annotations, "frame annotations", annotations=False, categories=False)
    images = coco["images"]
    jobs, missing, present = plan(images, args.videos, args.out)
    todo = sum(len(w) for w in jobs.values())
    log.info("%s: %d annotated frames of %d videos; %d already in %s, %d to decode from %d videos",
             args.annotations, len(images), len({frame_of(i['file_name'])[0] for i in images}), present, args.out,
             todo, len(jobs))
    problems = [f"{args.videos}/{name}.mp4: no such video (nor {', '.join(VIDEO_SUFFIXES[1:])})" for name in missing]
    work = [(str(v), w) for v, w in jobs.items()]
    written = 0
    with tqdm(total=todo, unit="frame", desc="frames", disable=None) as bar:
        if args.workers > 1 and len(work) > 1:
            from multiprocessing import get_context

            with get_context("spawn").Pool(min(args.workers, len(work))) as pool:
                results = pool.imap_unordered(_decode_job, work)
                for _, n, problem in results:
                    written += n
                    bar.update(n)
                    if problem:
                        problems.append(problem)
        else:
            for job in work:
                _, n, problem = _decode_job(job)
                written += n
                bar.update(n)
                if problem:
                    problems.append(problem)
    log.info("wrote %d frames under %s", written, args.out)
    if problems:
        shown = "\n  ".join(problems[:20]) + (f"\n  ... ({len(problems) - 20} more)" if len(problems) > 20 else "")
        raise InputError(f"{len(problems)} videos could not give their annotated frames (the other frames are "
                         f"written; rerun to resume once fixed):\n  {shown}")
    manifest = {"annotations": os.path.abspath(args.annotations), "annotations_sha256": file_sha256(args.annotations),
                "videos": os.path.abspath(args.videos), "frames": len(images)}
    atomic_write_json(args.out / MANIFEST, manifest, indent=1)
    log.info("all %d frames are in %s (%s)", len(images), args.out, args.out / MANIFEST)
    return 0
