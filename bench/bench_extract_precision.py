"""Extraction as the demo runs it against extraction as the reference runs it, on the same images: PA output,
kept candidates and throughput, so that the paper rows' default (one image at a time in effect, fp32) is a
measured choice.

    python bench/bench_extract_precision.py --device cuda                 # on one GPU, under 5 minutes
    python bench/bench_extract_precision.py --device cpu --images 4       # seconds, a tiny network

Variants, all through ggn.pa.model.predict_affinity (what `ggn extract` runs):
  (a) batch8_bf16   batches of 8 consecutive images padded to a common size, under bf16 autocast
                    (`--batching padded --amp on`: what extraction did before the paper rows were set to fp32)
  (a') batch8_fp32  the same padded batches in fp32: what the padding alone changes
  (b) single_fp32   one image at a time at native size in fp32 (the reference, tools/extract_pa_masks.py)
  (c) same8_fp32    batches of up to 8 images of identical size, unpadded, fp32 (`--batching same_size --amp off`,
                    the paper rows' setting: the same output as (b), faster)
Printed side by side against (b): the PA output's largest absolute difference, the fraction of (b)'s kept top-20
candidates (pa_lib.propose, paper grouping) that the variant's top-20 matches at mask IoU >= 0.8, and images/s
of the network (forward passes only, synchronised) and of grouping. The last line is a one-line summary.

Images: ggn.synth scenes rendered at --size and cropped to landscape (4:3), portrait (3:4) and square shapes in
turn, so that a padded batch mixes orientations as COCO's do. The PA network: --checkpoint (a `ggn train-pa`
checkpoint), else a ResNet-50 UperNet (--backbone) trained here for --train-iters iterations on other synthetic
scenes (random init: nothing is downloaded); its affinity is then structured enough for the grouping to find
objects, which is all a precision comparison needs.
"""
from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from ggn.pa.model import (build_pa_model, default_pa_config, load_pa_model, normalize_images,  # noqa: E402
                          predict_affinity)
from ggn.pa.targets import affinity_loss, affinity_targets, masks_to_instance_ids  # noqa: E402
from ggn.synth import SceneOptions, render_image  # noqa: E402

VARIANTS = {  # name: (batch_size, batching, amp)
    "batch8_bf16": (8, "padded", "on"),
    "batch8_fp32": (8, "padded", "off"),
    "single_fp32": (1, "same_size", "off"),
    "same8_fp32": (8, "same_size", "off"),
}
REFERENCE = "single_fp32"


def scenes(n: int, size: int, seed: int) -> list[tuple[np.ndarray, list[np.ndarray]]]:
    """n synthetic images (uint8 HxWx3) with their object masks, cropped in turn to 4:3, 3:4 and 1:1."""
    out = []
    shapes = [(size * 3 // 4, size), (size, size * 3 // 4), (size, size)]
    for i in range(n):
        image, objects = render_image(seed, "val", i, size, SceneOptions())
        h, w = shapes[i % len(shapes)]
        out.append((np.ascontiguousarray(image[:h, :w]), [o["mask"][:h, :w] for o in objects if o["mask"][:h, :w].any()]))
    return out


def train_network(config: dict, device: torch.device, iters: int, size: int, seed: int) -> torch.nn.Module:
    """A PA network trained for `iters` SGD steps (batch 2 cropped to a common size, native resolution, the
    reference's targets and loss)."""
    torch.manual_seed(seed)
    model = build_pa_model(config).to(device).train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.02, momentum=0.9, weight_decay=1e-4)
    data = scenes(min(2 * iters, 32), size, seed + 1000)  # 32 scenes cycled: rendering 640 px takes 0.2 s each
    for it in range(iters):
        batch = [data[(2 * it + k) % len(data)] for k in range(2)]
        h = min(b[0].shape[0] for b in batch)
        w = min(b[0].shape[1] for b in batch)
        images = torch.stack([torch.from_numpy(b[0][:h, :w]).permute(2, 0, 1) for b in batch]).to(device)
        ids = []
        for _, masks in batch:
            m = torch.from_numpy(np.stack([x[:h, :w] for x in masks])) if masks else torch.zeros((0, h, w), dtype=torch.bool)
            ids.append(masks_to_instance_ids(m)[0])
        ids = torch.stack(ids).to(device)
        target, counted = affinity_targets(ids, reduce="mean")
        loss = affinity_loss(model(normalize_images(images, config)), target, counted, pos_weight=0.05)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if it == 0 or it + 1 == iters:
            print(f"  train iteration {it + 1}/{iters}: loss {loss.item():.4f}", flush=True)
    return model.eval()


def group(affinity: np.ndarray) -> np.ndarray:
    import pa_lib

    masks, _ = pa_lib.propose(affinity, top_k=20)
    return np.asarray(masks, dtype=bool)


def matched_fraction(reference: list[np.ndarray], other: list[np.ndarray], threshold: float = 0.8) -> float:
    """Fraction of the reference's kept candidates (all images) matched by one of `other`'s at IoU >= threshold."""
    hits = total = 0
    for ref, oth in zip(reference, other):
        total += len(ref)
        if not len(ref) or not len(oth):
            continue
        r = ref.reshape(len(ref), -1).astype(np.float32)
        o = oth.reshape(len(oth), -1).astype(np.float32)
        inter = r @ o.T
        union = r.sum(1)[:, None] + o.sum(1)[None, :] - inter
        hits += int(((inter / np.maximum(union, 1)) >= threshold).any(axis=1).sum())
    return hits / max(total, 1)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda", help="cuda or cpu")
    p.add_argument("--images", type=int, default=48, help="images compared (default 48: about 2 minutes on one GPU)")
    p.add_argument("--size", type=int, default=None, help="long side of the images (default 640 on CUDA, 96 on CPU)")
    p.add_argument("--checkpoint", type=Path, help="a `ggn train-pa` checkpoint; else a network is trained here")
    p.add_argument("--backbone", default=None, help="backbone of the network trained here (default resnet50 on "
                                                    "CUDA at the paper's widths, resnet18 narrow on CPU)")
    p.add_argument("--train-iters", type=int, default=None, help="its training iterations (default 200 on CUDA, 5 on CPU)")
    p.add_argument("--repeats", type=int, default=2, help="timed passes per variant (the best is reported)")
    p.add_argument("--workers", type=int, default=min(16, os.cpu_count() or 1), help="grouping processes")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, help="also write the numbers as JSON here")
    args = p.parse_args()

    device = torch.device(args.device)
    cuda = device.type == "cuda"
    if cuda and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device is visible; use --device cpu")
    size = args.size or (640 if cuda else 96)
    started = time.perf_counter()
    if args.checkpoint:
        model, config = load_pa_model(args.checkpoint, device)
        config = {**config, "input_size": 0}
        print(f"PA network: {args.checkpoint}")
    else:
        backbone = args.backbone or ("resnet50" if cuda else "resnet18")
        widths = {} if cuda else {"fpn_dim": 32, "ppm_dim": 32}
        config = default_pa_config(backbone=backbone, input_size=0, **widths)
        iters = args.train_iters if args.train_iters is not None else (200 if cuda else 5)
        print(f"PA network: {backbone} trained here for {iters} iterations on {size}px synthetic scenes", flush=True)
        model = train_network(config, device, iters, size, args.seed)
    images = [im for im, _ in scenes(args.images, size, args.seed)]
    print(f"{len(images)} images, shapes {sorted({im.shape[:2] for im in images})}, device {device}"
          f"{' (' + torch.cuda.get_device_name(device) + ')' if cuda else ''}", flush=True)

    outputs, network_ips = {}, {}
    for name, (batch_size, batching, amp) in VARIANTS.items():
        predict_affinity(model, images[:batch_size], config, device, batch_size=batch_size, batching=batching, amp=amp)
        best = float("inf")
        for _ in range(args.repeats):
            if cuda:
                torch.cuda.synchronize(device)
            t0 = time.perf_counter()
            out = predict_affinity(model, images, config, device, batch_size=batch_size, batching=batching, amp=amp)
            if cuda:
                torch.cuda.synchronize(device)
            best = min(best, time.perf_counter() - t0)
        outputs[name], network_ips[name] = out, len(images) / best
        print(f"  {name}: network {network_ips[name]:.1f} images/s", flush=True)

    candidates, group_ips = {}, {}
    ctx = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(args.workers, mp_context=ctx) as pool:
        list(pool.map(group, outputs[REFERENCE][:args.workers]))  # start the workers before timing
        for name in (REFERENCE, "batch8_bf16", "batch8_fp32", "same8_fp32"):
            t0 = time.perf_counter()
            candidates[name] = list(pool.map(group, outputs[name]))
            group_ips[name] = len(images) / (time.perf_counter() - t0)

    rows = {}
    for name in VARIANTS:
        diff = max(float(np.abs(a - b).max()) for a, b in zip(outputs[name], outputs[REFERENCE]))
        rows[name] = {"max_abs_diff": diff,
                      "top20_matched": matched_fraction(candidates[REFERENCE], candidates[name]),
                      "kept": float(np.mean([len(c) for c in candidates[name]])),
                      "network_images_per_s": network_ips[name],
                      "grouping_images_per_s": group_ips[name]}
    print()
    print(f"{'variant':<14}{'PA max|diff|':>14}{'top20 matched':>15}{'kept/img':>10}{'net img/s':>11}"
          f"{'group img/s':>13}")
    for name, r in rows.items():
        print(f"{name:<14}{r['max_abs_diff']:>14.2e}{r['top20_matched']:>15.3f}{r['kept']:>10.1f}"
              f"{r['network_images_per_s']:>11.1f}{r['grouping_images_per_s']:>13.1f}")
    a, p, b, c = rows["batch8_bf16"], rows["batch8_fp32"], rows[REFERENCE], rows["same8_fp32"]
    summary = (f"SUMMARY {device.type} {len(images)} images {size}px: batch8_bf16 vs single_fp32: PA max|diff| "
               f"{a['max_abs_diff']:.3g}, top-20 matched {a['top20_matched']:.1%}, network "
               f"{a['network_images_per_s']:.1f} vs {b['network_images_per_s']:.1f} img/s; padding alone (batch8_fp32): "
               f"max|diff| {p['max_abs_diff']:.3g}, matched {p['top20_matched']:.1%}; same8_fp32: max|diff| "
               f"{c['max_abs_diff']:.3g}, matched {c['top20_matched']:.1%}, {c['network_images_per_s']:.1f} img/s; "
               f"{time.perf_counter() - started:.0f} s in all")
    if args.out:
        args.out.write_text(json.dumps({"device": str(device), "images": len(images), "size": size,
                                        "variants": rows}, indent=2))
    print(summary)


if __name__ == "__main__":
    main()
