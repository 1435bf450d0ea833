"""PA training throughput (images/s) on this CPU for resnet18/resnet50 at 256 and 512, with the per-image
cost of the target builder as its baseline; wall-clock and process CPU time side by side (shared machines)."""
from __future__ import annotations

import argparse
import os
import time

import torch

from ggn.pa.model import build_pa_model, default_pa_config, normalize_images
from ggn.pa.targets import affinity_loss, affinity_targets


def synthetic_batch(batch: int, size: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.zeros((batch, size, size), dtype=torch.int32)
    for b in range(batch):
        for k in range(1, 5):
            y, x = torch.randint(0, size * 3 // 4, (2,), generator=g).tolist()
            ids[b, y:y + size // 4, x:x + size // 3] = k
    images = torch.randint(0, 256, (batch, 3, size, size), generator=g, dtype=torch.uint8)
    return images, ids


def measure(backbone: str, size: int, batch: int, iters: int, fpn_dim: int, ppm_dim: int) -> dict:
    torch.manual_seed(0)
    config = default_pa_config(backbone=backbone, fpn_dim=fpn_dim, ppm_dim=ppm_dim, input_size=size)
    model = build_pa_model(config).train()
    opt = torch.optim.SGD(model.parameters(), lr=0.001, momentum=0.9, weight_decay=1e-4)
    images, ids = synthetic_batch(batch, size)
    valid = torch.ones_like(ids, dtype=torch.bool)

    def step():
        target, counted = affinity_targets(ids, valid, reduce="mean")
        loss = affinity_loss(model(normalize_images(images, config)), target, counted)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    step()  # warm-up: allocator and oneDNN kernel selection
    w0, c0 = time.perf_counter(), time.process_time()
    for _ in range(iters):
        step()
    wall, cpu = time.perf_counter() - w0, time.process_time() - c0
    t0 = time.perf_counter()
    for _ in range(iters):
        affinity_targets(ids, valid, reduce="mean")
    targets_s = (time.perf_counter() - t0) / (iters * batch)
    n = iters * batch
    threads = torch.get_num_threads()
    return {"backbone": backbone, "size": size, "batch": batch, "images_per_s_wall": n / wall,
            # CPU seconds / threads: what the step would take with the cores to itself
            "images_per_s_cpu": n / (cpu / threads), "target_ms_per_image": 1000 * targets_s}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--iters", type=int, default=3)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--backbones", nargs="*", default=["resnet18", "resnet50"])
    p.add_argument("--sizes", nargs="*", type=int, default=[256, 512])
    p.add_argument("--fpn-dim", type=int, default=256, help="head width (paper: 256; demo: smaller)")
    p.add_argument("--ppm-dim", type=int, default=512)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {args.threads} threads, load average {os.getloadavg()[0]:.1f} "
          f"(shared machine: wall-clock figures vary with other users' jobs)")
    print(f"{'backbone':10s} {'size':>5s} {'batch':>5s} {'img/s wall':>11s} {'img/s cpu':>10s} "
          f"{'targets ms/img':>15s} {'targets share':>14s}")
    for backbone in args.backbones:
        for size in args.sizes:
            r = measure(backbone, size, args.batch, args.iters, args.fpn_dim, args.ppm_dim)
            share = r["target_ms_per_image"] / (1000 / r["images_per_s_wall"])
            print(f"{backbone:10s} {size:5d} {args.batch:5d} {r['images_per_s_wall']:11.2f} "
                  f"{r['images_per_s_cpu']:10.2f} {r['target_ms_per_image']:15.2f} {share:14.1%}")


if __name__ == "__main__":
    main()
