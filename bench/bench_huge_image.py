"""Peak memory of `ggn predict` and `ggn extract` on one 10000 x 10000 image (target: at most 4 GB each).

Writes the image (a JPEG of coloured stripes and six annotated discs, ~2 MB on disk, 300 MB decoded), a tiny
randomly initialised detector and PA network (memory on such an image is the image's and its masks', not the
network's) in --work, then runs each command under /usr/bin/time -v and prints its maximum resident set size:

    .venv/bin/python bench/bench_huge_image.py --work /tmp/huge_bench

The detector keeps 1500 detections (the test protocol), each pasted at full resolution; extraction runs at
native resolution (the paper rows' input_size 0: the image is skipped, counted, as its network input exceeds
--max-input-pixels) and with --input-size 1024 (processed: 20 candidates resized to 10000 x 10000 and encoded).
"""
from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
SIDE = 10_000
TARGET_GB = 4.0


def make_inputs(work: Path) -> None:
    import torch
    from PIL import Image

    from ggn.detector.model import build_detector, detector_config
    from ggn.io import atomic_torch_save
    from ggn.masks import encode_mask
    from ggn.pa.model import build_pa_model, default_pa_config

    (work / "images").mkdir(parents=True, exist_ok=True)
    if not (work / "images" / "huge.jpg").is_file():
        yy, xx = np.arange(SIDE)[:, None], np.arange(SIDE)[None, :]
        image = np.empty((SIDE, SIDE, 3), np.uint8)
        image[..., 0], image[..., 1], image[..., 2] = (xx // 40) % 256, (yy // 40) % 256, 90
        rng, anns = np.random.default_rng(0), []
        for k in range(6):
            cx, cy = rng.integers(1500, 8500, 2)
            r = int(rng.integers(500, 1400))
            disc = (xx - cx) ** 2 + (yy - cy) ** 2 <= r * r
            image[disc] = rng.integers(120, 255, 3)
            anns.append({"id": k + 1, "image_id": 1, "category_id": 1, "iscrowd": 0, "segmentation": encode_mask(disc),
                         "area": float(disc.sum()), "bbox": [float(cx - r), float(cy - r), 2.0 * r + 1, 2.0 * r + 1]})
        Image.MAX_IMAGE_PIXELS = None
        Image.fromarray(image).save(work / "images" / "huge.jpg", quality=90)
        (work / "huge.json").write_text(json.dumps({
            "images": [{"id": 1, "file_name": "huge.jpg", "height": SIDE, "width": SIDE}], "annotations": anns,
            "categories": [{"id": 1, "name": "object"}]}))
    torch.manual_seed(0)
    pa = default_pa_config(backbone="resnet18", fpn_dim=16, ppm_dim=16, input_size=0)
    atomic_torch_save({"model": build_pa_model(pa).state_dict(), "config": pa}, work / "pa.pt")
    det = detector_config(backbone="resnet18", fpn_channels=16, representation_size=32, mask_channels=16)
    atomic_torch_save({"model": build_detector(det).state_dict(), "config": det}, work / "det.pt")


def peak_gb(command: list[str], log: Path) -> float:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    with open(log, "w") as out:
        proc = subprocess.run(["/usr/bin/time", "-v", *command], stdout=out, stderr=subprocess.STDOUT, env=env)
    text = log.read_text()
    if proc.returncode != 0:
        sys.exit(f"{' '.join(command)} failed ({proc.returncode}); see {log}")
    return int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", text).group(1)) / 1024 ** 2


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, required=True, help="folder for the image, checkpoints and outputs")
    work = parser.parse_args().work.resolve()
    make_inputs(work)
    ggn = str(Path(sys.executable).parent / "ggn")
    common = ["--annotations", str(work / "huge.json"), "--images", str(work / "images"), "--device", "cpu"]
    runs = {
        "predict (1500 detections)": [ggn, "predict", "--checkpoint", str(work / "det.pt"), *common, "--out",
                                      str(work / "dets.json"), "--batch-size", "1", "--threads", "1"],
        "extract, native resolution (skipped)": [ggn, "extract", "--checkpoint", str(work / "pa.pt"), *common,
                                                 "--out", str(work / "native.parquet")],
        "extract --input-size 1024": [ggn, "extract", "--checkpoint", str(work / "pa.pt"), *common, "--out",
                                      str(work / "s1024.parquet"), "--input-size", "1024"],
    }
    for out in ("dets.json", "native.parquet", "s1024.parquet"):
        (work / out).unlink(missing_ok=True)
    for i, (name, command) in enumerate(runs.items()):
        gb = peak_gb(command, work / f"run{i}.log")
        print(f"{name:40s} peak RSS {gb:5.2f} GB (target <= {TARGET_GB:.0f} GB)")
    summary = json.loads((work / "s1024.parquet.summary.json").read_text())
    native = json.loads((work / "native.parquet.summary.json").read_text())
    print(f"predict wrote {len(json.loads((work / 'dets.json').read_text()))} detections; extract at 1024: "
          f"{summary['candidates_written']} candidates; at native resolution: {native['images_skipped']} skipped "
          f"({next(iter(native['skipped'].values()))[:80]}...)")


if __name__ == "__main__":
    main()
