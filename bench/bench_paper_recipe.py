"""Seconds per training iteration of the paper recipes on this CPU, beside the recipes they replaced.

detector: the reference class-agnostic Mask R-CNN (ResNet-50-FPN, BatchNorm statistics fixed, stem + stage 1 frozen,
one square anchor, L1 box losses), 2 images of 1333x800 per iteration (one GPU's share of the reference's
batch of 16), against this project's previous default (trainable BatchNorm everywhere, three anchor ratios,
smooth-L1 losses) on the same images.
PA: ResNet-50 + UperNet head, 1 image per iteration at native 1333x800 (the reference), against the previous
default input (long side 512).

Random images with 3-6 rectangle instances; weights random (the timing does not depend on them). On a
shared machine compare only rows of one run; CPU seconds per iteration are printed beside wall seconds.

    .venv/bin/python bench/bench_paper_recipe.py [--iters 2] [--threads 2]
"""
from __future__ import annotations

import argparse
import time

import torch

from ggn.coco_data import masks_to_boxes
from ggn.detector.model import build_detector, detector_config
from ggn.pa.model import build_pa_model, default_pa_config
from ggn.pa.targets import affinity_loss, affinity_targets

PAPER_DETECTOR = dict(backbone="resnet50", norm="eval_bn", frozen_stages=1, anchor_ratios=[1.0], box_loss="l1")
PREVIOUS_DETECTOR = dict(backbone="resnet50", norm="bn", frozen_stages=-1, anchor_ratios=[0.5, 1.0, 2.0],
                         box_loss="smooth_l1")


def detection_batch(height: int, width: int, batch: int, gen: torch.Generator):
    images, targets = [], []
    for _ in range(batch):
        n = int(torch.randint(3, 7, (1,), generator=gen))
        masks = torch.zeros((n, height, width), dtype=torch.bool)
        for m in masks:
            y0 = int(torch.randint(0, height * 3 // 4, (1,), generator=gen))
            x0 = int(torch.randint(0, width * 3 // 4, (1,), generator=gen))
            h, w = torch.randint(height // 10, height // 4, (2,), generator=gen).tolist()
            m[y0:y0 + h, x0:x0 + w] = True
        images.append(torch.rand((3, height, width), generator=gen))
        targets.append({"masks": masks, "boxes": masks_to_boxes(masks), "labels": torch.ones(n, dtype=torch.int64)})
    return images, targets


def timed(step, iters: int) -> tuple[float, float]:
    """(wall seconds, CPU seconds) per iteration, after one untimed warm-up iteration."""
    step(0)
    start, start_cpu = time.perf_counter(), time.process_time()
    for i in range(1, iters + 1):
        step(i)
    return (time.perf_counter() - start) / iters, (time.process_time() - start_cpu) / iters


def detector_step_time(settings: dict, iters: int, batch: int) -> tuple[float, float]:
    torch.manual_seed(0)
    model = build_detector(detector_config(**settings)).train()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.SGD(params, lr=0.0001, momentum=0.9)
    gen = torch.Generator().manual_seed(0)
    batches = [detection_batch(800, 1333, batch, gen) for _ in range(iters + 1)]

    def step(i):
        loss = sum(model(*batches[i]).values())
        opt.zero_grad()
        loss.backward()
        opt.step()

    return timed(step, iters)


def pa_step_time(height: int, width: int, iters: int) -> tuple[float, float]:
    torch.manual_seed(0)
    model = build_pa_model(default_pa_config()).train()
    opt = torch.optim.SGD(model.parameters(), lr=0.0001, momentum=0.9)
    gen = torch.Generator().manual_seed(0)
    ph, pw = -(-height // 32) * 32, -(-width // 32) * 32
    images = torch.randn((1, 3, ph, pw), generator=gen)
    _, targets = detection_batch(ph, pw, 1, gen)
    ids = (targets[0]["masks"].int() * torch.arange(1, len(targets[0]["masks"]) + 1).view(-1, 1, 1)).amax(0)[None]

    def step(i):
        target, counted = affinity_targets(ids, reduce="mean")
        loss = affinity_loss(model(images), target, counted)
        opt.zero_grad()
        loss.backward()
        opt.step()

    return timed(step, iters)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--iters", type=int, default=2)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    print(f"seconds per training iteration on CPU, {args.threads} thread(s), {args.iters} timed iterations "
          "(wall | CPU)")
    rows = [
        ("detector, paper recipe, 2 x 1333x800", lambda: detector_step_time(PAPER_DETECTOR, args.iters, 2)),
        ("detector, previous default, 2 x 1333x800", lambda: detector_step_time(PREVIOUS_DETECTOR, args.iters, 2)),
        ("PA R50, paper recipe, 1 x 1333x800 native", lambda: pa_step_time(800, 1333, args.iters)),
        ("PA R50, previous default, 1 x 512x308", lambda: pa_step_time(308, 512, args.iters)),
    ]
    for name, run in rows:
        wall, cpu = run()
        print(f"{name:45s} {wall:8.2f} s | {cpu:8.2f} s", flush=True)


if __name__ == "__main__":
    main()
