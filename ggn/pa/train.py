"""Train the pairwise-affinity network (paper schedule by default); resumes from its checkpoints.

The resumable state is saved at each epoch end (OUT_DIR/epochs/epoch_NNN.pt) and every --checkpoint-minutes
within an epoch (OUT_DIR/epochs/mid_epoch.pt, with the number of batches of the epoch already trained). A rerun
with the same options and inputs continues from whichever is further on and skips exactly those batches: the
order is a function of (seed, epoch) and flips of (seed, epoch, image), so it ends as an uninterrupted run.
"""
from __future__ import annotations

import argparse
import json
import logging
import random
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from tqdm import tqdm

from ggn import dist
from ggn.io import (InputError, atomic_torch_save, machine_provenance, load_checkpoint, seed_everything, stop_on_non_finite_loss,
                    stop_on_non_finite_weights, training_fingerprint)
from ggn.pa.data import PATrainingSet, collate_padded
from ggn.precision import add_amp_argument, autocast_dtype
from ggn.pa.model import build_pa_model, default_pa_config, normalize_images
from ggn.pa.targets import affinity_loss, affinity_targets, parse_offsets

log = logging.getLogger(__name__)

# Keys of the PA config that define the network and its targets: a resumed run must agree on them.
_MODEL_KEYS = ("backbone", "norm", "fpn_dim", "ppm_dim", "pool_scales", "offsets", "reduce", "target")
_KEEP_EPOCH_CHECKPOINTS = 2
MID_EPOCH = "mid_epoch.pt"  # the within-epoch checkpoint, beside the epoch_NNN.pt ones
_WARMUP_RATIO = 0.001  # linear warm-up starts at lr * 0.001 (mmcv default used by the reference)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--train-json", required=True, type=Path, help="COCO training annotations (train.json)")
    p.add_argument("--images", required=True, type=Path, help="image folder (joined with each file_name)")
    p.add_argument("--out", required=True, type=Path,
                   help="final checkpoint {model, config}; per-epoch checkpoints go to OUT's folder/epochs")
    p.add_argument("--backbone", default="resnet50", choices=["resnet18", "resnet34", "resnet50", "resnet101"])
    p.add_argument("--pretrained", default=None,
                   help="`imagenet` (torchvision's ImageNet weights via its cache, $TORCH_HOME) or a local "
                        "torchvision ResNet state_dict file; random init when omitted")
    p.add_argument("--norm", default="bn", choices=["bn", "gn"], help="BatchNorm or GroupNorm(32)")
    p.add_argument("--fpn-dim", type=int, default=256, help="channels of the FPN/fusion layers of the head")
    p.add_argument("--ppm-dim", type=int, default=512, help="channels of each pyramid-pooling branch")
    p.add_argument("--epochs", type=int, default=20)
    dist.add_batch_arguments(p, lr_batch=8, reference="the reference: 0.02 for 1 image x 8 GPUs = 8")
    p.add_argument("--momentum", type=float, default=0.9)
    p.add_argument("--weight-decay", type=float, default=1e-4)
    p.add_argument("--lr-steps", type=int, nargs="*", default=[15], help="epochs after which lr is multiplied by 0.1")
    p.add_argument("--warmup-iters", type=int, default=500, help="linear warm-up iterations (0: none)")
    p.add_argument("--batch-size", type=int, default=1, help="images per process (reference: 1 per GPU)")
    p.add_argument("--input-size", type=int, default=0,
                   help="long side of resized images; 0: native resolution (the reference)")
    p.add_argument("--offsets", nargs="*", default=["1"],
                   help="neighbour offsets: an integer d = the 8 neighbours at distance d; 'dy,dx' = one offset")
    p.add_argument("--reduce", default="mean", choices=["mean", "none"],
                   help="collapse the offset channels to their mean (released GGN config) or keep one per offset")
    p.add_argument("--pos-weight", type=float, default=0.05, help="BCE weight of the same-instance class")
    p.add_argument("--flip", action=argparse.BooleanOptionalAction, default=False,
                   help="random horizontal flips (the reference trains without)")
    p.add_argument("--sync-bn", action=argparse.BooleanOptionalAction, default=False,
                   help="synchronise BatchNorm statistics across GPUs (the reference uses per-GPU BN)")
    add_amp_argument(p, "PA network's training (the reference: fp32)")
    p.add_argument("--workers", type=int, default=2, help="data-loading processes per training process")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (torchrun sets the GPU per rank)")
    p.add_argument("--max-images", type=int, default=None, help="train on the first N images only")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads per process (0: torch's default)")
    p.add_argument("--log-every", type=int, default=10, help="iterations between loss log lines")
    p.add_argument("--checkpoint-minutes", type=float, default=30.0,
                   help="also save the resumable state every N minutes within an epoch, so that a preempted job "
                        "loses minutes, not an epoch (0: at epoch ends only)")


def pa_config_from_args(args: argparse.Namespace) -> dict:
    return default_pa_config(
        backbone=args.backbone, norm=args.norm, fpn_dim=args.fpn_dim, ppm_dim=args.ppm_dim,
        offsets=[list(o) for o in parse_offsets(args.offsets)], reduce=args.reduce, input_size=args.input_size,
        target="reference",
    )


def make_lr_lambda(iters_per_epoch: int, warmup_iters: int, lr_steps: list[int]) -> Callable[[int], float]:
    """Per-iteration lr factor: linear warm-up from 0.001, then x0.1 after each step epoch."""
    steps = sorted(int(s) for s in lr_steps)

    def factor(it: int) -> float:
        warm = 1.0
        if warmup_iters > 0 and it < warmup_iters:
            warm = _WARMUP_RATIO + (1.0 - _WARMUP_RATIO) * it / warmup_iters
        epoch = it // max(1, iters_per_epoch)
        return warm * 0.1 ** sum(epoch >= s for s in steps)

    return factor


def _rng_state() -> dict:
    np_state = np.random.get_state()
    state = {"torch": torch.get_rng_state(), "python": random.getstate(),
             "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), int(np_state[2]),
                       int(np_state[3]), float(np_state[4])]}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(_as_tuple(state["python"]))
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    if "cuda" in state and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])


def _as_tuple(x):
    return tuple(_as_tuple(v) for v in x) if isinstance(x, (list, tuple)) else x


def epoch_dir(out: Path) -> Path:
    return Path(out).parent / "epochs"


def latest_epoch_checkpoint(out: Path) -> Path | None:
    files = sorted(epoch_dir(out).glob("epoch_*.pt"))
    return files[-1] if files else None


def _resume_point(out: Path) -> tuple[Path | None, dict | None]:
    """The saved state furthest on: the last epoch checkpoint or the mid-epoch one, whichever is later."""
    found = [p for p in (latest_epoch_checkpoint(out), epoch_dir(out) / MID_EPOCH) if p is not None and p.is_file()]
    states = [(p, load_checkpoint(p, map_location="cpu")) for p in found]
    if not states:
        return None, None

    def progress(item):  # (epochs fully done, batches of the next one done)
        state = item[1]
        done = state.get("batches_done")
        return (int(state["epoch"]) + 1, 0) if done is None else (int(state["epoch"]), int(done))

    return max(states, key=progress)


def _jsonable_args(args: argparse.Namespace) -> dict:
    return {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()
            if isinstance(v, (str, int, float, bool, list, Path, type(None)))}


def train_pa(args: argparse.Namespace, on_epoch_end: Callable[[int], None] | None = None) -> Path:
    """Train (or resume) and write the final {"model", "config"} checkpoint to args.out.

    on_epoch_end(epoch) runs after each epoch's checkpoint is written (tests use it to simulate a kill).
    """
    if not args.train_json.is_file():
        raise InputError(f"--train-json {args.train_json} does not exist; run `ggn split` first")
    if getattr(args, "threads", 0):
        torch.set_num_threads(args.threads)
    device, rank, world = dist.init_distributed(args.device)
    main = rank == 0
    config = pa_config_from_args(args)
    seed_everything(args.seed)
    model = build_pa_model(config, pretrained=args.pretrained)
    if not args.pretrained and main:
        log.info("backbone %s starts from random initialisation (no --pretrained file given)", args.backbone)
    if args.sync_bn and world > 1 and args.norm == "bn" and device.type == "cuda":  # SyncBatchNorm is CUDA-only
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    model.to(device)

    dataset = PATrainingSet(args.train_json, args.images, input_size=args.input_size, flip=args.flip,
                            seed=args.seed, max_images=args.max_images)
    if len(dataset) == 0:
        raise InputError(f"{args.train_json} has no images to train on: no image has an object of a seen class "
                         "(`ggn split` drops the others); check `seen`, or name a trained PA network (pa_checkpoint)")
    objects = dataset.coco.objects_per_image()
    if not any(objects.values()):
        raise InputError(f"{args.train_json}: none of its {len(dataset)} images has an annotated object (a "
                         "non-crowd annotation with a mask), so the PA network would learn nothing (its loss counts "
                         "only pairs with an object pixel); pass the train.json of `ggn split`, whose images each "
                         "have a seen-class object, or add the annotations")
    if not all(objects.values()):  # no pair to learn from: a step on them would only decay the weights
        dataset.coco.ids = [i for i in dataset.coco.ids if objects[i]]
        if main:
            log.warning("%s: %d of %d images have no annotated object and are left out of PA training",
                        args.train_json, len(objects) - len(dataset), len(objects))
    dataset.coco.check_training_file("train-pa", warn=main)
    dataset.coco.verify_images()  # every image readable and of its annotated size, before the first step
    # One sampler for both paths: a single process is rank 0 of 1, shuffled by (seed, epoch).
    sampler = torch.utils.data.DistributedSampler(dataset, num_replicas=world, rank=rank, shuffle=True,
                                                  seed=args.seed, drop_last=False)
    iters_per_epoch = -(-len(sampler) // args.batch_size)

    def epoch_loader(epoch: int, skip_batches: int) -> torch.utils.data.DataLoader:
        """This rank's batches of `epoch` after the first `skip_batches` (a resumed epoch skips those)."""
        sampler.set_epoch(epoch)
        return torch.utils.data.DataLoader(
            dataset, batch_size=args.batch_size, sampler=list(sampler)[skip_batches * args.batch_size:],
            num_workers=args.workers, collate_fn=collate_padded, pin_memory=device.type == "cuda",
            drop_last=False, persistent_workers=False)

    lr = dist.effective_lr(args.lr, args.batch_size, world, args.lr_batch)
    if main:
        log.info("total batch %d (%d per process x %d processes): effective lr %.5g (--lr %g for %d images)",
                 args.batch_size * world, args.batch_size, world, lr, args.lr, args.lr_batch)
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=args.momentum,
                                weight_decay=args.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, make_lr_lambda(iters_per_epoch, args.warmup_iters, args.lr_steps))

    start_epoch = 0
    fingerprint = training_fingerprint(args, [args.train_json])
    resume_from, ckpt = _resume_point(args.out)
    if ckpt is not None and (ckpt.get("fingerprint") != fingerprint or int(ckpt["epoch"]) + 1 > args.epochs
                             or any(ckpt["config"].get(k) != config.get(k) for k in _MODEL_KEYS)):
        if main:
            log.warning("%s belongs to another run (its options, training data or a longer schedule differ): "
                        "training afresh", resume_from)
        dist.barrier()
        if main:
            for old in [*epoch_dir(args.out).glob("epoch_*.pt"), epoch_dir(args.out) / MID_EPOCH]:
                old.unlink(missing_ok=True)
        ckpt = None
    skip_batches, resumed_sums = 0, None
    if ckpt is not None:
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
        ranks = ckpt.get("rng_per_rank")
        _set_rng_state(ranks[rank] if ranks and len(ranks) == world else ckpt["rng"])
        if ckpt.get("batches_done") is None:
            start_epoch = int(ckpt["epoch"]) + 1
            if main:
                log.info("resuming from %s (epoch %d of %d done)", resume_from, start_epoch, args.epochs)
        else:
            start_epoch, skip_batches = int(ckpt["epoch"]), int(ckpt["batches_done"])
            resumed_sums = ckpt["sums"]
            if main:
                log.info("resuming from %s in epoch %d after its first %d of %d batches", resume_from,
                         start_epoch + 1, skip_batches, iters_per_epoch)
    dist.barrier()

    if world > 1:
        model = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None)

    amp_dtype = autocast_dtype(args.amp, device)
    use_amp = amp_dtype is not None
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp and device.type == "cuda" and amp_dtype == torch.float16)
    offsets = [tuple(o) for o in config["offsets"]]
    reduce = config["reduce"]
    log_path = Path(args.out).parent / "train_log.jsonl"
    if main:
        log.info("training %s on %d images (%d iterations/epoch, %d process(es), device %s, %s); log: %s",
                 args.backbone, len(dataset), iters_per_epoch, world, device,
                 f"autocast {amp_dtype}" if use_amp else "fp32", log_path)

    images_seen = torch.zeros(1, dtype=torch.int64)
    every_s = args.checkpoint_minutes * 60
    for epoch in range(start_epoch, args.epochs):
        model.train()
        skip = skip_batches if epoch == start_epoch else 0
        loader = epoch_loader(epoch, skip)
        dataset.set_epoch(epoch)
        t0 = time.perf_counter()
        total, count, window, window_n, seen = 0.0, 0, 0.0, 0, 0
        if skip:
            total, count, window, window_n, seen = (resumed_sums[k] for k in ("total", "count", "window", "window_n",
                                                                              "seen"))
            t0 -= resumed_sums["seconds"]
        last_save = time.perf_counter()
        bar = tqdm(loader, desc=f"train-pa epoch {epoch + 1}/{args.epochs}", disable=not main, leave=False,
                   initial=skip, total=iters_per_epoch)
        for it, batch in enumerate(bar, start=skip):
            images = normalize_images(batch["images"].to(device, non_blocking=True), config)
            ids = batch["ids"].to(device, non_blocking=True)
            valid = batch["valid"].to(device, non_blocking=True)
            crowd = batch["crowd"].to(device, non_blocking=True)
            target, counted = affinity_targets(ids, valid, offsets, ignore=crowd, reduce=reduce,
                                               target=config["target"])
            with torch.autocast(device_type=device.type, dtype=amp_dtype or torch.float32, enabled=use_amp):
                logits = model(images)
            loss = affinity_loss(logits.float(), target, counted, pos_weight=args.pos_weight)
            stop_on_non_finite_loss(loss, None, step="train-pa", epoch=epoch, batch=it + 1,
                                    batches=iters_per_epoch, checkpoints=epoch_dir(args.out), args=args)
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            scheduler.step()
            value = float(loss.detach())
            total += value
            count += 1
            window += value
            window_n += 1
            seen += images.shape[0]
            images_seen += images.shape[0]
            bar.set_postfix(loss=f"{value:.4f}", lr=f"{scheduler.get_last_lr()[0]:.2e}")
            if main and ((it + 1) % max(1, args.log_every) == 0 or it + 1 == iters_per_epoch):
                _append_log(log_path, {
                    "epoch": epoch + 1, "iter": it + 1, "global_iter": epoch * iters_per_epoch + it + 1,
                    "lr": scheduler.get_last_lr()[0], "loss": window / window_n,
                    "images_per_s": seen * world / (time.perf_counter() - t0)})
                window, window_n = 0.0, 0
            if (every_s > 0 and it + 1 < iters_per_epoch
                    and dist.rank0_decides(time.perf_counter() - last_save >= every_s, device)):
                sums = {"total": total, "count": count, "window": window, "window_n": window_n, "seen": seen,
                        "seconds": time.perf_counter() - t0}
                _save_state(epoch_dir(args.out) / MID_EPOCH, args, config, model, optimizer, scheduler, epoch,
                            fingerprint, {"batches_done": it + 1, "sums": sums}, iters_per_epoch)
                last_save = time.perf_counter()
        bar.close()
        seconds = time.perf_counter() - t0
        per_rank = dist.gather_counts(images_seen)
        if main:
            _append_log(log_path, {"epoch": epoch + 1, "epoch_loss": total / max(1, count), "seconds": seconds,
                                   "images_per_s": seen * world / max(seconds, 1e-9), "effective_lr": lr,
                                   "total_batch": args.batch_size * world, "images_per_rank": per_rank})
        _save_epoch(args, config, model, optimizer, scheduler, epoch, fingerprint, iters_per_epoch)
        if main:
            log.info("epoch %d/%d: mean loss %.4f, %.1f s", epoch + 1, args.epochs, total / max(1, count), seconds)
        dist.barrier()
        if on_epoch_end is not None:
            on_epoch_end(epoch)

    if main:
        state = {k: v.detach().cpu() for k, v in dist.unwrap(model).state_dict().items()}
        atomic_torch_save({"model": state, "config": config, "provenance": machine_provenance()}, args.out)
        log.info("PA checkpoint written to %s", args.out)
    dist.barrier()
    return Path(args.out)


def _append_log(path: Path, record: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    record = {"time": time.strftime("%Y-%m-%dT%H:%M:%S"), **record}
    with open(path, "a") as f:
        f.write(json.dumps(record) + "\n")


def _save_state(path: Path, args, config, model, optimizer, scheduler, epoch: int, fingerprint: str,
                extra: dict, batches: int) -> None:
    """The resumable state, written by rank 0 (every rank's random state gathered first; all ranks call this);
    never weights that an update made non-finite (`batches`: iterations per epoch, for that message)."""
    stop_on_non_finite_weights(model, step="train-pa", epoch=epoch, batch=extra.get("batches_done", batches),
                               batches=batches, checkpoints=epoch_dir(args.out), args=args)
    rngs = dist.gather_objects(_rng_state())
    if not dist.is_main_process():
        return
    atomic_torch_save({
        "model": {k: v.detach().cpu() for k, v in dist.unwrap(model).state_dict().items()},
        "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(), "epoch": epoch,
        "rng": rngs[0], "rng_per_rank": rngs, "config": config, "args": _jsonable_args(args),
        "fingerprint": fingerprint, **extra,
    }, path)


def _save_epoch(args, config, model, optimizer, scheduler, epoch: int, fingerprint: str, batches: int) -> None:
    folder = epoch_dir(args.out)
    _save_state(folder / f"epoch_{epoch:03d}.pt", args, config, model, optimizer, scheduler, epoch, fingerprint, {},
                batches)
    if dist.is_main_process():
        (folder / MID_EPOCH).unlink(missing_ok=True)
        for old in sorted(folder.glob("epoch_*.pt"))[:-_KEEP_EPOCH_CHECKPOINTS]:
            old.unlink(missing_ok=True)


def run(args: argparse.Namespace) -> int:
    if args.gpus > 1 and not dist.under_launcher():
        return dist.relaunch(args.gpus, "train-pa", args._argv)
    try:
        train_pa(args)
    finally:
        dist.cleanup()
    return 0
