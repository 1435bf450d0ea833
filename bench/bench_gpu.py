"""Every GPU stage once on a CUDA machine, at paper settings on synthetic images: speed per image and proof that
the CUDA paths (AMP training of PA and detectors, GPU extraction with grouping workers, Pseudo-OLN ranking,
prediction) run. CPU numbers for the same commands come from the same script run with --device cpu (the
baseline: the machine's CPU cores).

    python bench/bench_gpu.py --work /tmp/gpu_bench --out gpu.json            # on the GPU machine
    python bench/bench_gpu.py --work /tmp/cpu_bench --device cpu --images 8   # the same on CPU

Prints one line per stage: wall seconds, images, seconds per image (and the stage's own seconds per image where
it reports one). The images are the synthetic set's at --image-size (640 by default: a COCO-sized image),
resized by the detector to 800 x 1333 as in the paper rows.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def ggn(*args: str, log: Path) -> float:
    start = time.perf_counter()
    with open(log, "w") as f:
        proc = subprocess.run([sys.executable, "-m", "ggn.cli", *args], stdout=f, stderr=subprocess.STDOUT,
                              cwd=REPO, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        print(log.read_text()[-4000:])
        raise SystemExit(f"ggn {args[0]} failed ({proc.returncode}); log {log}")
    return seconds


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--work", type=Path, required=True)
    p.add_argument("--out", type=Path, default=None, help="JSON of the measurements")
    p.add_argument("--device", default="cuda")
    p.add_argument("--images", type=int, default=48, help="training images (evaluation: a quarter)")
    p.add_argument("--image-size", type=int, default=640)
    p.add_argument("--detector-size", type=int, default=800, help="detector min_size (max_size: x 1333/800)")
    p.add_argument("--grouping-workers", type=int, default=max(1, (os.cpu_count() or 2) - 2))
    args = p.parse_args()
    w = args.work
    w.mkdir(parents=True, exist_ok=True)
    n_train, n_val = args.images, max(4, args.images // 4)
    dev = ["--device", args.device]
    rows: list[dict] = []

    def record(stage: str, seconds: float, images: int, **extra) -> None:
        row = {"stage": stage, "seconds": round(seconds, 2), "images": images,
               "s_per_image": round(seconds / max(images, 1), 4), **extra}
        rows.append(row)
        print(json.dumps(row), flush=True)

    import torch

    info = {"torch": torch.__version__, "cuda": torch.version.cuda,
            "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu",
            "cpu_count": os.cpu_count()}
    print(json.dumps(info), flush=True)

    ggn("synth", "--out", str(w / "synth"), "--num-train", str(n_train), "--num-val", str(n_val),
        "--image-size", str(args.image_size), "--seed", "0", log=w / "synth.log")
    ggn("split", "--train-annotations", str(w / "synth/annotations/instances_train.json"),
        "--eval-annotations", str(w / "synth/annotations/instances_val.json"), "--seen", "synthetic_seen",
        "--unseen", "synthetic_unseen", "--train-out", str(w / "train.json"), "--eval-out", str(w / "eval.json"),
        log=w / "split.log")
    images = str(w / "synth/train")
    # Per-image figures count the images the stages see: the split drops training images without a seen object.
    n_train = len(json.loads((w / "train.json").read_text())["images"])
    n_val = len(json.loads((w / "eval.json").read_text())["images"])

    # PA network, the reference's recipe (ResNet-50, native resolution, 1 image per GPU), one epoch.
    s = ggn("train-pa", "--train-json", str(w / "train.json"), "--images", images, "--out", str(w / "pa.pt"),
            "--backbone", "resnet50", "--input-size", "0", "--batch-size", "1", "--epochs", "1", "--lr-steps",
            "--warmup-iters", "10", "--workers", "4", *dev, log=w / "train_pa.log")
    record("train-pa R50 native, batch 1", s, n_train)

    # Extraction at native resolution: network on the device, grouping in worker processes.
    for workers in (args.grouping_workers,):
        s = ggn("extract", "--checkpoint", str(w / "pa.pt"), "--annotations", str(w / "train.json"), "--images",
                images, "--out", str(w / f"shard-w{workers}.parquet"), "--workers", str(workers), "--batch-size",
                "4", *dev, log=w / f"extract-w{workers}.log")
        summary = json.loads((w / f"shard-w{workers}.parquet.summary.json").read_text())
        record(f"extract native + grouping ({workers} workers)", s, n_train,
               stage_s_per_image=summary["seconds_per_image"], candidates=summary["candidates_written"])
    s = ggn("extract", "--checkpoint", str(w / "pa.pt"), "--annotations", str(w / "train.json"), "--images",
            images, "--out", str(w / "shard-all.parquet"), "--workers", str(args.grouping_workers), "--top-k", "0",
            "--propose-params", "nms=0", *dev, log=w / "extract-all.log")
    summary = json.loads((w / "shard-all.parquet.summary.json").read_text())
    record("extract, every candidate unsuppressed (Pseudo-OLN input)", s, n_train,
           candidates=summary["candidates_written"])

    # Detectors, paper settings (ResNet-50-FPN, 800 x 1333, 2 images per GPU), one epoch each, AMP on.
    for kind in ("maskrcnn", "oln"):
        out = w / kind / "det.pt"  # each training in its own folder: epoch checkpoints live beside --out
        # From random init at batch 2 the speed run keeps the lr in warm-up (this measures speed, not accuracy).
        s = ggn("train-detector", "--train-json", str(w / "train.json"), "--images", images, "--out", str(out),
                "--kind", kind, "--backbone", "resnet50", "--batch-size", "2", "--epochs", "1", "--lr-steps",
                "--warmup-iters", "1000", "--clip-grad", "10", "--workers", "4", "--amp", "on" if args.device != "cpu" else "off",
                "--min-size", str(args.detector_size), "--max-size", str(round(args.detector_size * 1333 / 800)),
                *dev, log=w / f"train-{kind}.log")
        record(f"train-detector {kind} R50-FPN {args.detector_size}x{round(args.detector_size * 1333 / 800)}, "
               f"batch 2, AMP {'on' if args.device != 'cpu' else 'off'}", s, n_train)

    s = ggn("rank-oln", "--shard", str(w / "shard-all.parquet"), "--checkpoint", str(w / "oln" / "det.pt"),
            "--annotations", str(w / "train.json"), "--images", images, "--out", str(w / "ranked.parquet"), *dev,
            log=w / "rank.log")
    summary = json.loads((w / "ranked.parquet.summary.json").read_text())
    record("rank-oln (Pseudo-OLN)", s, n_train, stage_s_per_image=summary["seconds_per_image"],
           candidates_in=summary["candidates_in"], candidates_out=summary["candidates_out"])

    for kind in ("maskrcnn", "oln"):
        s = ggn("predict", "--checkpoint", str(w / kind / "det.pt"), "--annotations", str(w / "eval.json"),
                "--images", str(w / "synth/val"), "--out", str(w / f"dets-{kind}.json"), "--batch-size", "2", *dev,
                log=w / f"predict-{kind}.log")
        record(f"predict {kind} (1500 detections, masks pasted)", s, n_val)
        s = ggn("evaluate", "--gt", str(w / "eval.json"), "--detections", str(w / f"dets-{kind}.json"), "--out",
                str(w / f"metrics-{kind}.json"), log=w / f"evaluate-{kind}.log")
        record(f"evaluate {kind}", s, n_val)

    result = {"info": info, "rows": rows}
    if args.out:
        args.out.write_text(json.dumps(result, indent=1))
    print("\n| stage | s | images | s/image |")
    print("|---|---|---|---|")
    for r in rows:
        print(f"| {r['stage']} | {r['seconds']:.1f} | {r['images']} | {r['s_per_image']:.3f} |")


if __name__ == "__main__":
    main()
