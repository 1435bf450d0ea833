"""Detector training throughput (images/s) on CPU: demo settings against the paper's Mask R-CNN settings.

Both use a ResNet-18-FPN trained from scratch on random images with 3-6 rectangle instances; "paper" keeps
torchvision's/the paper's head sizes and sampling (FPN 256, box MLP 1024, mask head 256, 2000 RPN proposals,
512 RoIs per image), "demo" the light settings recommended for the bundled synthetic demo. Timings depend on
machine load: on a shared machine run it when it is quiet, and compare only rows of one run.

    .venv/bin/python bench/bench_detector.py [--sizes 256 800] [--iters 3] [--threads 1]
"""
from __future__ import annotations

import argparse
import time

import torch

from ggn.coco_data import masks_to_boxes
from ggn.detector.model import build_detector, detector_config

PAPER = dict(fpn_channels=256, representation_size=1024, mask_channels=256,
             rpn_pre_nms_top_n_train=2000, rpn_post_nms_top_n_train=2000, box_batch_size_per_image=512)
DEMO = dict(fpn_channels=64, representation_size=256, mask_channels=64,
            rpn_pre_nms_top_n_train=600, rpn_post_nms_top_n_train=300, box_batch_size_per_image=128)


def random_batch(size: int, batch: int, gen: torch.Generator):
    images, targets = [], []
    for _ in range(batch):
        n = int(torch.randint(3, 7, (1,), generator=gen))
        masks = torch.zeros((n, size, size), dtype=torch.bool)
        for m in masks:
            x0, y0 = torch.randint(0, size * 3 // 4, (2,), generator=gen).tolist()
            w, h = torch.randint(size // 10, size // 4, (2,), generator=gen).tolist()
            m[y0:y0 + h, x0:x0 + w] = True
        images.append(torch.rand((3, size, size), generator=gen))
        targets.append({"masks": masks, "boxes": masks_to_boxes(masks), "labels": torch.ones(n, dtype=torch.int64)})
    return images, targets


def images_per_second(kind: str, size: int, settings: dict, iters: int, batch: int) -> tuple[float, float]:
    """(images per wall-clock second, images per CPU second of this process); on a shared machine the
    second is the steadier figure (with one thread it is what a dedicated core would do)."""
    torch.manual_seed(0)
    anchors = [16, 32, 64, 128, 256] if size <= 320 else [32, 64, 128, 256, 512]
    model = build_detector(detector_config(kind=kind, backbone="resnet18", min_size=size, max_size=size,
                                           anchor_sizes=anchors, **settings)).train()
    opt = torch.optim.SGD(model.parameters(), lr=0.002, momentum=0.9)
    gen = torch.Generator().manual_seed(0)
    batches = [random_batch(size, batch, gen) for _ in range(iters + 1)]
    for i, (images, targets) in enumerate(batches):
        if i == 1:  # the first step pays one-off allocation costs
            start, start_cpu = time.perf_counter(), time.process_time()
        loss = sum(model(images, targets).values())
        opt.zero_grad()
        loss.backward()
        opt.step()
    n = iters * batch
    return n / (time.perf_counter() - start), n / (time.process_time() - start_cpu)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", type=int, nargs="+", default=[256, 800])
    p.add_argument("--kinds", nargs="+", default=["maskrcnn", "oln"])
    p.add_argument("--iters", type=int, default=3)
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--settings", nargs="+", choices=("paper", "demo"), default=["paper", "demo"])
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (the demo gives each training one)")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    print(f"training throughput, resnet18-fpn from scratch, batch {args.batch}, {args.threads} thread(s), "
          f"{args.iters} timed iterations (machine may be shared: compare rows of this run only)")
    print("images/s as wall-clock | per CPU-second; ratio on CPU time")
    print(f"{'kind':9s} {'size':>5s} {'paper':>15s} {'demo':>15s} {'demo/paper':>10s}")
    table = {"paper": PAPER, "demo": DEMO}
    for size in args.sizes:
        for kind in args.kinds:
            got = {name: images_per_second(kind, size, table[name], args.iters, args.batch) for name in args.settings}
            cells = [f"{got[n][0]:6.3f} | {got[n][1]:6.3f}" if n in got else f"{'-':>15s}" for n in ("paper", "demo")]
            ratio = f"{got['demo'][1] / got['paper'][1]:9.2f}x" if len(got) == 2 else f"{'-':>10s}"
            print(f"{kind:9s} {size:5d} {cells[0]:>15s} {cells[1]:>15s} {ratio}", flush=True)


if __name__ == "__main__":
    main()
