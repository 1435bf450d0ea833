"""Train the class-agnostic Mask R-CNN / OLN detector on seen-class GT (baseline) or GT + pseudo-GT (ggn).

Resuming: the resumable state (model, optimizer, schedule, scaler, every rank's random state) is saved at each
epoch end as OUT_DIR/epochs/epoch_NNN.pt and, every --checkpoint-minutes within an epoch, as
OUT_DIR/epochs/mid_epoch.pt with the number of batches of that epoch already trained. A rerun with the same
options and inputs continues from whichever is further on and skips exactly those batches (each epoch's image
order is a function of the seed and the epoch), so that a preempted job ends where an uninterrupted one does.
With `--workers` > 0 the flips of the rest of an interrupted epoch are drawn afresh (data-loading processes
are seeded per epoch, not per image); with 0, as the demo, the result is identical.
"""
from __future__ import annotations

import argparse
import json
import logging
import math
import random
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from ggn.coco_data import collate
from ggn.detector.data import build_training_dataset
from ggn.detector.model import DEFAULT_CONFIG, build_detector, load_pretrained, trainable_summary
from ggn.precision import add_amp_argument, strict_fp32
from ggn.dist import (add_batch_arguments, barrier, cleanup, effective_lr, gather_counts, gather_objects,
                      init_distributed, is_main_process, rank0_decides, relaunch, under_launcher, unwrap)
from ggn.io import (InputError, atomic_torch_save, machine_provenance, load_checkpoint, seed_everything, stop_on_non_finite_loss,
                    stop_on_non_finite_weights, training_fingerprint)

log = logging.getLogger(__name__)

# Training flags that become part of the model config (the rest only shape the optimisation).
MODEL_FLAGS = ("kind", "backbone", "norm", "frozen_stages", "anchor_ratios", "box_loss", "fpn_channels",
               "representation_size", "mask_channels", "mask_layers", "anchor_sizes", "min_size", "max_size",
               "rpn_pre_nms_top_n_train", "rpn_post_nms_top_n_train", "rpn_batch_size_per_image",
               "box_batch_size_per_image", "roi_aligned", "roi_sampling_ratio", "mask_target",
               "rpn_valid_anchors", "head_init")
MID_EPOCH = "mid_epoch.pt"  # the within-epoch checkpoint, beside the epoch_NNN.pt ones


def add_arguments(p: argparse.ArgumentParser) -> None:
    d = DEFAULT_CONFIG
    p.add_argument("--train-json", required=True, help="COCO training annotations (seen classes, train.json)")
    p.add_argument("--images", required=True, help="image folder (joined with each image's file_name)")
    p.add_argument("--out", required=True, help="final checkpoint; per-epoch ones go to OUT_DIR/epochs/")
    p.add_argument("--variant", choices=("baseline", "ggn"), default="baseline",
                   help="baseline: seen-class GT only; ggn: GT + pseudo-GT")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--pseudo-gt", help="pseudo_gt.json of `ggn merge` (for --variant ggn)")
    src.add_argument("--pseudo-store", help="per-image pseudo-GT parquet store of `ggn merge` (huge sets)")
    p.add_argument("--ground-truth", action=argparse.BooleanOptionalAction, default=True,
                   help="train on the --train-json annotations (with --variant ggn: plus pseudo-GT); "
                        "--no-ground-truth: pseudo-GT alone, on the listed images that have some (the ImageNet row)")
    p.add_argument("--boxes", choices=("annotation", "mask"), default="annotation",
                   help="ground-truth boxes: each annotation's own bbox (the reference), or the tight box of its "
                        "rasterised mask")
    p.add_argument("--kind", choices=("maskrcnn", "oln"), default=d["kind"])
    p.add_argument("--backbone", choices=("resnet18", "resnet34", "resnet50", "resnet101"), default=d["backbone"])
    p.add_argument("--pretrained", help="`imagenet` (torchvision's ImageNet ResNet via its cache, $TORCH_HOME), "
                                        "or a local file: ResNet state dict or a full detector checkpoint")
    p.add_argument("--norm", choices=("auto", "eval_bn", "frozen_bn", "bn", "gn"), default="auto",
                   help="backbone BatchNorm: eval_bn (statistics fixed, affine trained: the reference's norm_eval), "
                        "frozen_bn (both fixed, torchvision's FrozenBatchNorm2d), bn (trainable); gn: GroupNorm "
                        "(32 groups) in backbone and mask head (the ImageNet rows: class_agn_mask_rcnn_gn*.py); "
                        "auto: eval_bn when --pretrained, bn from scratch")
    p.add_argument("--frozen-stages", type=int, default=None,
                   help="stem and stages 1..N get no gradient (-1: none); default 1 when --pretrained "
                        "(the reference), -1 from scratch")
    p.add_argument("--anchor-ratios", type=float, nargs="+", default=d["anchor_ratios"],
                   help="anchor height/width ratios per location (reference: one square anchor)")
    p.add_argument("--box-loss", choices=("l1", "smooth_l1"), default=d["box_loss"],
                   help="box regression loss of RPN and box head (reference: L1)")
    p.add_argument("--epochs", type=int, default=8)
    add_batch_arguments(p, lr_batch=16, reference="the reference: 0.02 for 2 images x 8 GPUs = 16")
    p.add_argument("--lr-steps", type=int, nargs="*", default=[6, 7], help="epochs after which lr drops 10x")
    p.add_argument("--lr-schedule", choices=("step", "cosine"), default="step",
                   help="step: x0.1 after each --lr-steps epoch; cosine: per epoch from lr to lr x --min-lr-ratio "
                        "(mmdet's CosineAnnealing, the ImageNet row)")
    p.add_argument("--min-lr-ratio", type=float, default=1e-5, help="final lr / lr of the cosine schedule")
    p.add_argument("--warmup-iters", type=int, default=500, help="linear warm-up from 0.001*lr")
    p.add_argument("--momentum", type=float, default=0.9)
    p.add_argument("--weight-decay", type=float, default=1e-4)
    p.add_argument("--batch-size", type=int, default=2, help="images per process and step")
    p.add_argument("--min-size", type=int, default=d["min_size"], help="shorter image side after resizing")
    p.add_argument("--max-size", type=int, default=d["max_size"], help="cap on the longer side")
    p.add_argument("--fpn-channels", type=int, default=d["fpn_channels"])
    p.add_argument("--representation-size", type=int, default=d["representation_size"], help="box-head MLP width")
    p.add_argument("--mask-channels", type=int, default=d["mask_channels"], help="mask-head conv width")
    p.add_argument("--mask-layers", type=int, default=d["mask_layers"], help="mask-head conv layers")
    p.add_argument("--anchor-sizes", type=int, nargs=5, default=d["anchor_sizes"], help="one per FPN level")
    p.add_argument("--rpn-pre-nms-top-n-train", type=int, default=d["rpn_pre_nms_top_n_train"])
    p.add_argument("--rpn-post-nms-top-n-train", type=int, default=d["rpn_post_nms_top_n_train"])
    p.add_argument("--rpn-batch-size-per-image", type=int, default=d["rpn_batch_size_per_image"])
    p.add_argument("--box-batch-size-per-image", type=int, default=d["box_batch_size_per_image"])
    p.add_argument("--flip", type=float, default=0.5, help="horizontal flip probability")
    p.add_argument("--group-by-aspect", action=argparse.BooleanOptionalAction, default=True,
                   help="batch landscape images with landscape ones and portrait with portrait (mmdet's GroupSampler, "
                        "the reference), so that a batch carries little padding")
    p.add_argument("--clip-grad", type=float, default=0.0, help="max gradient norm (0: off, as the reference)")
    p.add_argument("--roi-aligned", action=argparse.BooleanOptionalAction, default=d["roi_aligned"],
                   help="RoIAlign with aligned=True (half-pixel offset), mmcv's default that the reference uses; "
                        "--no-roi-aligned: torchvision's MaskRCNN")
    p.add_argument("--roi-sampling-ratio", type=int, default=d["roi_sampling_ratio"],
                   help="RoIAlign sampling points per bin side (0: adaptive, the reference; torchvision's: 2)")
    p.add_argument("--mask-target", choices=("binary", "soft"), default=d["mask_target"],
                   help="mask-head targets: binary (the cropped mask thresholded at 0.5, the reference) or soft "
                        "(torchvision's bilinear crop)")
    p.add_argument("--rpn-valid-anchors", action=argparse.BooleanOptionalAction, default=d["rpn_valid_anchors"],
                   help="train the RPN only on anchors within each image's own size padded to 32, not on those in "
                        "the padding a batch adds (the reference); --no-rpn-valid-anchors: torchvision's, all")
    p.add_argument("--head-init", choices=("reference", "torchvision"), default=d["head_init"],
                   help="initialisation of FPN and box head: mmdet 2.x's (Xavier-uniform; classifier and regressor "
                        "normal 0.01 / 0.001: the reference) or torchvision's")
    add_amp_argument(p, "detector's training (fp16 with loss scaling; the reference: fp32)")
    p.add_argument("--workers", type=int, default=2, help="data-loading processes")
    p.add_argument("--threads", type=int, default=0, help="CPU threads for torch (0: torch's default)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto")
    p.add_argument("--max-images", type=int, help="train on the first N images only (smoke tests)")
    p.add_argument("--log-every", type=int, default=20, help="iterations between loss-log lines")
    p.add_argument("--checkpoint-minutes", type=float, default=30.0,
                   help="also save the resumable state every N minutes within an epoch, so that a preempted job "
                        "loses minutes, not an epoch (0: at epoch ends only)")


class WarmupMultiStep:
    """lr factor per iteration: linear warm-up from `warmup_ratio`, then x0.1 after each step epoch; or, with
    `cosine_epochs`, mmdet's by-epoch CosineAnnealing: min + (1 - min) x (1 + cos(pi x epoch / epochs)) / 2."""

    def __init__(self, iters_per_epoch: int, steps: list[int], warmup_iters: int, warmup_ratio: float = 0.001,
                 cosine_epochs: int | None = None, min_lr_ratio: float = 1e-5):
        self.iters_per_epoch = iters_per_epoch
        self.steps = list(steps)
        self.warmup_iters = warmup_iters
        self.warmup_ratio = warmup_ratio
        self.cosine_epochs = cosine_epochs
        self.min_lr_ratio = min_lr_ratio

    def __call__(self, it: int) -> float:
        epoch = it // max(1, self.iters_per_epoch)
        if self.cosine_epochs:
            progress = min(epoch, self.cosine_epochs) / self.cosine_epochs
            factor = self.min_lr_ratio + (1 - self.min_lr_ratio) * (1 + math.cos(math.pi * progress)) / 2
        else:
            factor = 0.1 ** sum(epoch >= s for s in self.steps)
        if it < self.warmup_iters:
            alpha = it / self.warmup_iters
            factor *= self.warmup_ratio * (1 - alpha) + alpha
        return factor


def resolve_freezing(args: argparse.Namespace) -> None:
    """auto norm and frozen stages: the reference's frozen BN and stem+stage 1 with pretrained weights;
    everything trainable from scratch (frozen random statistics give NaN losses). Frozen stages from scratch
    stay allowed: the reference's ImageNet recipe (class_agn_mask_rcnn_gn_online.py) keeps a random stem and
    stage 1 fixed under GroupNorm."""
    if args.norm == "auto":
        args.norm = "eval_bn" if args.pretrained else "bn"
    if args.frozen_stages is None:
        args.frozen_stages = 1 if args.pretrained else -1
    if not args.pretrained and args.norm in ("eval_bn", "frozen_bn"):
        raise InputError(f"--norm {args.norm} fixes random BatchNorm statistics without --pretrained (NaN losses); "
                         "give --pretrained imagenet (or a weights file) or use --norm bn or gn")


def model_config(args: argparse.Namespace) -> dict[str, Any]:
    return {k: getattr(args, k) for k in MODEL_FLAGS} | {
        k: DEFAULT_CONFIG[k] for k in DEFAULT_CONFIG if k not in MODEL_FLAGS}


def sync_trainable_batchnorm(model: torch.nn.Module, norm: str, device_type: str) -> torch.nn.Module:
    """Across GPUs, trainable BN (from scratch) shares its statistics: a couple of images per GPU are too few.
    Fixed-statistics BN (eval_bn, frozen_bn: the reference's norm_eval) must stay as it is: SyncBatchNorm would
    update the pretrained statistics. SyncBatchNorm is CUDA-only."""
    if norm == "bn" and device_type == "cuda":
        return torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    return model

def rng_state() -> dict[str, Any]:
    np_state = np.random.get_state()
    return {"torch": torch.get_rng_state(), "python": random.getstate(),
            "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:]]}


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    name, keys, *rest = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), *rest))


def latest_epoch_checkpoint(epoch_dir: Path) -> Path | None:
    found = sorted(epoch_dir.glob("epoch_*.pt"))
    return found[-1] if found else None


def epoch_order(num_images: int, seed: int, epoch: int) -> list[int]:
    """Dataset indices in the order a single training process visits them in `epoch` (0-based): a permutation
    drawn from (seed, epoch) alone, so that a resumed run can skip the batches already trained. The generator
    first gives the DataLoader its worker base seed (what torch's shuffling loader draws first), which keeps the
    order of earlier versions of this trainer."""
    gen = torch.Generator().manual_seed(seed * 1000 + epoch)
    torch.empty((), dtype=torch.int64).random_(generator=gen)
    return torch.randperm(num_images, generator=gen).tolist()


def aspect_grouped(order: list[int], landscape: list[bool], batch_size: int) -> list[int]:
    """`order` rearranged so that each consecutive run of `batch_size` indices holds images of one orientation
    (width > height or not: mmdet's GroupSampler flag, which the reference trains with), so that a batch pads
    little. Batches keep the order of their first image in `order`; the result has len(order) // batch_size
    batches, as the plain loader with drop_last, the last one completed from its own group when the two
    leftovers do not fill it (mmdet pads a group the same way). With one orientation it is `order` itself."""
    needed = len(order) // batch_size
    groups: dict[bool, list[int]] = {False: [], True: []}
    for position, index in enumerate(order):
        groups[bool(landscape[index])].append(position)
    batches, leftovers = [], []
    for positions in groups.values():
        full = len(positions) // batch_size * batch_size
        batches += [positions[k:k + batch_size] for k in range(0, full, batch_size)]
        if full < len(positions):
            leftovers.append(positions[full:])
    if len(batches) < needed:  # fill the larger leftover from the start of its own group
        rest = max(leftovers, key=len)
        group = groups[bool(landscape[order[rest[0]]])]
        batches.append(rest + group[:batch_size - len(rest)])
    batches.sort(key=lambda b: b[0])
    return [order[p] for batch in batches[:needed] for p in batch]


def _resume_point(epoch_dir: Path) -> tuple[Path | None, dict | None]:
    """The saved state furthest on: the last epoch checkpoint or the mid-epoch one, whichever is later."""
    found = [p for p in (latest_epoch_checkpoint(epoch_dir), epoch_dir / MID_EPOCH) if p is not None and p.is_file()]
    states = [(p, load_checkpoint(p)) for p in found]
    if not states:
        return None, None

    def progress(item):  # (epochs fully done, batches of the next one done)
        state = item[1]
        done = state.get("batches_done")
        return (state["epoch"] + 1, 0) if done is None else (state["epoch"], done)

    return max(states, key=progress)


def run(args: argparse.Namespace) -> int:
    if args.gpus > 1 and not under_launcher():
        return relaunch(args.gpus, "train-detector", args._argv)
    resolve_freezing(args)
    out = Path(args.out)
    if args.threads:
        torch.set_num_threads(args.threads)
    device, rank, world = init_distributed(args.device)
    seed_everything(args.seed + rank)
    dataset = build_training_dataset(args.train_json, args.images, args.variant, args.pseudo_gt,
                                     args.pseudo_store, flip=args.flip, max_images=args.max_images,
                                     ground_truth=args.ground_truth, boxes=args.boxes)
    if len(dataset) == 0:
        raise InputError(f"{args.train_json} has no images to train on: no image has an object of a seen class "
                         "(`ggn split` drops the others) or pseudo-GT; check `seen`")
    if not (any(dataset.base.objects_per_image().values()) or dataset.pseudo_store is not None):
        raise InputError(f"{args.train_json}: none of its {len(dataset)} training images has an object (annotated "
                         "or pseudo-GT), so the detector would learn nothing; pass the train.json of `ggn split` "
                         "(and, for --variant ggn, the pseudo_gt.json of `ggn merge`)")
    if args.ground_truth:
        dataset.base.check_training_file("train-detector", warn=is_main_process())
    dataset.base.verify_images()  # every image readable and of its annotated size, before the first step
    landscape = [int(dataset.base.images[i]["width"]) > int(dataset.base.images[i]["height"]) for i in dataset.base.ids]
    config = model_config(args)
    model = build_detector(config).to(device)
    if args.pretrained:
        loaded, skipped, source = load_pretrained(model, args.pretrained, args.backbone)
        if is_main_process():
            log.info("loaded %d tensors from %s (%s; %d did not fit, e.g. an ImageNet classifier)",
                     loaded, args.pretrained, source, skipped)
    lr = effective_lr(args.lr, args.batch_size, world, args.lr_batch)
    if is_main_process():
        log.info("total batch %d (%d per process x %d processes): effective lr %.5g (--lr %g for %d images); %s",
                 args.batch_size * world, args.batch_size, world, lr, args.lr, args.lr_batch,
                 trainable_summary(model))

    use_amp = args.amp == "on" or (args.amp == "auto" and device.type == "cuda")
    if args.amp == "off" and device.type == "cuda":
        strict_fp32()  # fp32 as the reference: no TF32 either
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(params, lr=lr, momentum=args.momentum, weight_decay=args.weight_decay)
    if world > 1:
        sampler = torch.utils.data.DistributedSampler(dataset, shuffle=True, seed=args.seed, drop_last=True)
        iters_per_epoch = len(sampler) // args.batch_size
    else:
        sampler = None
        iters_per_epoch = len(dataset) // args.batch_size
    if iters_per_epoch == 0:
        raise InputError(f"--batch-size {args.batch_size} is larger than the {len(dataset)} training images "
                         f"per process; lower it")
    schedule = WarmupMultiStep(iters_per_epoch, args.lr_steps, args.warmup_iters,
                               cosine_epochs=args.epochs if args.lr_schedule == "cosine" else None,
                               min_lr_ratio=args.min_lr_ratio)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
    scaler = torch.amp.GradScaler(device.type, enabled=use_amp)

    epoch_dir = out.parent / "epochs"
    log_path = out.parent / "train_log.jsonl"
    start_epoch = 0
    fingerprint = training_fingerprint(args, [args.train_json, args.pseudo_gt, args.pseudo_store])
    resume, state = _resume_point(epoch_dir)
    if state is not None and (state.get("fingerprint") != fingerprint or state.get("config") != config
                              or state["epoch"] + 1 > args.epochs):
        if is_main_process():
            log.warning("%s belongs to another run (its options, training data or a longer schedule differ): "
                        "training afresh", resume)
        barrier()
        if is_main_process():
            for old in [*epoch_dir.glob("epoch_*.pt"), epoch_dir / MID_EPOCH]:
                old.unlink(missing_ok=True)
        state = None
    skip_batches, resumed_sums, resumed_seconds = 0, {}, 0.0
    if state is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        scaler.load_state_dict(state["scaler"])
        ranks = state.get("rng_per_rank")
        set_rng_state(ranks[rank] if ranks and len(ranks) == world else state["rng"])
        if state.get("batches_done") is None:
            start_epoch = state["epoch"] + 1
            log.info("resuming from %s at epoch %d", resume, start_epoch + 1)
        else:
            start_epoch, skip_batches = state["epoch"], state["batches_done"]
            resumed_sums, resumed_seconds = dict(state["sums"]), state["seconds"]
            log.info("resuming from %s in epoch %d after its first %d of %d batches", resume, start_epoch + 1,
                     skip_batches, iters_per_epoch)
    barrier()
    images_seen = torch.zeros(1, dtype=torch.int64)
    if world > 1:
        model = sync_trainable_batchnorm(model, config["norm"], device.type)
        model = torch.nn.parallel.DistributedDataParallel(model, device_ids=[device] if device.type == "cuda" else None)

    def save(path: Path, epoch: int, extra: dict) -> None:
        """The resumable state, written by rank 0 (every rank's random state gathered first); never weights that
        an update made non-finite."""
        stop_on_non_finite_weights(model, step="train-detector", epoch=epoch,
                                   batch=extra.get("batches_done", iters_per_epoch), batches=iters_per_epoch,
                                   checkpoints=epoch_dir, args=args)
        rngs = gather_objects(rng_state())
        if is_main_process():
            atomic_torch_save({"model": unwrap(model).state_dict(), "optimizer": optimizer.state_dict(),
                               "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict(),
                               "epoch": epoch, "rng": rngs[0], "rng_per_rank": rngs, "config": config,
                               "fingerprint": fingerprint, **extra}, path)

    every_s = args.checkpoint_minutes * 60
    for epoch in range(start_epoch, args.epochs):
        model.train()
        skip = skip_batches if epoch == start_epoch else 0
        if sampler is not None:
            sampler.set_epoch(epoch)
            order = list(sampler)
        else:
            # Seeded per epoch so that a resumed run sees the same order as an uninterrupted one.
            order = epoch_order(len(dataset), args.seed, epoch)
        if args.group_by_aspect:
            order = aspect_grouped(order, landscape, args.batch_size)
        # The loader draws its worker base seed from a generator of its own, never from the global one that the
        # detector's samplers use: a resumed epoch then draws exactly what the uninterrupted one did.
        gen = torch.Generator().manual_seed(args.seed * 1000 + epoch + 1_000_003 * rank)
        loader = torch.utils.data.DataLoader(dataset, batch_size=args.batch_size, drop_last=True,
                                             sampler=order[skip * args.batch_size:], generator=gen,
                                             num_workers=args.workers, collate_fn=collate,
                                             persistent_workers=False)
        sums: dict[str, float] = dict(resumed_sums) if skip else {}
        t0 = time.time() - (resumed_seconds if skip else 0.0)
        last_save = time.monotonic()
        bar = tqdm(loader, desc=f"epoch {epoch + 1}/{args.epochs}", disable=not is_main_process(), dynamic_ncols=True,
                   initial=skip, total=iters_per_epoch)
        for i, (images, targets) in enumerate(bar, start=skip):
            images = [im.to(device, non_blocking=True) for im in images]
            targets = [{k: (v.to(device) if torch.is_tensor(v) else v) for k, v in t.items()} for t in targets]
            with torch.autocast(device.type, dtype=torch.float16, enabled=use_amp):
                losses = model(images, targets)
            loss = sum(losses.values())
            images_seen += len(images)
            stop_on_non_finite_loss(loss, losses, step="train-detector", epoch=epoch, batch=i + 1,
                                    batches=iters_per_epoch, checkpoints=epoch_dir, args=args)
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            if args.clip_grad > 0:
                scaler.unscale_(optimizer)
                torch.nn.utils.clip_grad_norm_(params, args.clip_grad)
            scaler.step(optimizer)
            scaler.update()
            scheduler.step()
            values = {k: float(v.detach()) for k, v in losses.items()} | {"loss": float(loss.detach())}
            for k, v in values.items():
                sums[k] = sums.get(k, 0.0) + v
            bar.set_postfix(loss=f"{values['loss']:.3f}", lr=f"{optimizer.param_groups[0]['lr']:.4f}")
            if is_main_process() and (i % args.log_every == 0):
                _append_jsonl(log_path, {"epoch": epoch + 1, "iter": i, "lr": optimizer.param_groups[0]["lr"],
                                         **values})
            if (every_s > 0 and i + 1 < iters_per_epoch
                    and rank0_decides(time.monotonic() - last_save >= every_s, device)):
                save(epoch_dir / MID_EPOCH, epoch, {"batches_done": i + 1, "sums": sums,
                                                    "seconds": time.time() - t0})
                last_save = time.monotonic()
        n = max(1, iters_per_epoch)
        per_rank = gather_counts(images_seen)
        summary = {"epoch": epoch + 1, "mean": {k: v / n for k, v in sums.items()}, "effective_lr": lr,
                   "total_batch": args.batch_size * world, "images_per_rank": per_rank,
                   "seconds": round(time.time() - t0, 1), "images_per_s": round(n * args.batch_size * world / max(1e-9, time.time() - t0), 3)}
        if is_main_process():
            _append_jsonl(log_path, summary)
            log.info("epoch %d: mean loss %.4f (%.1f s)", epoch + 1, summary["mean"].get("loss", math.nan),
                     summary["seconds"])
        path = epoch_dir / f"epoch_{epoch:03d}.pt"
        save(path, epoch, {})
        if is_main_process():
            for old in [*epoch_dir.glob("epoch_*.pt"), epoch_dir / MID_EPOCH]:  # one resumable state is enough
                if old != path:
                    old.unlink(missing_ok=True)
        barrier()

    if is_main_process():
        train_info = {k: v for k, v in vars(args).items()
                      if k not in MODEL_FLAGS and not k.startswith("_") and isinstance(v, (int, float, str, list, type(None)))}
        train_info |= {"effective_lr": lr, "world_size": world, "total_batch": args.batch_size * world}
        atomic_torch_save({"model": unwrap(model).state_dict(), "config": config | {"training": train_info},
                           "provenance": machine_provenance()}, out)
        log.info("detector written to %s (loss log %s)", out, log_path)
    cleanup()
    return 0


def _append_jsonl(path: Path, record: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        f.write(json.dumps(record) + "\n")
