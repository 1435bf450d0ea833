"""Distributed-training helpers: one code path for `torchrun` (DDP) and a single CPU/GPU process."""
from __future__ import annotations

import logging
import os
import subprocess
import sys

import torch
import torch.distributed as dist

from ggn.io import InputError, cuda_available

log = logging.getLogger(__name__)


def add_batch_arguments(p, lr_batch: int, reference: str) -> None:
    """--lr, --lr-batch and --gpus of a training command: the lr is given for a total batch and scaled to the
    one actually run (`effective_lr`)."""
    p.add_argument("--lr", type=float, default=0.02,
                   help="SGD learning rate for a total batch of --lr-batch images; scaled linearly to the "
                        "actual total batch (batch-size x gpus)")
    p.add_argument("--lr-batch", type=int, default=lr_batch, help=f"total batch that --lr is given for ({reference})")
    p.add_argument("--gpus", type=int, default=1,
                   help="training processes on this node, one per GPU (torchrun; on a CPU-only machine, gloo "
                        "processes); the total batch is batch-size x gpus")


def effective_lr(lr: float, batch_size: int, world: int, lr_batch: int) -> float:
    """Linear scaling rule (Goyal et al. 2017): lr x total batch / the batch that lr was given for."""
    if lr_batch < 1:
        raise InputError(f"--lr-batch (config `lr_batch`) must be >= 1, got {lr_batch}")
    return lr * batch_size * world / lr_batch


def under_launcher() -> bool:
    """True inside a process started by torchrun (or another launcher that sets the env:// variables)."""
    return "LOCAL_RANK" in os.environ and "WORLD_SIZE" in os.environ


def relaunch(processes: int, step: str, argv: list[str]) -> int:
    """Run `ggn STEP ARGV` as `processes` processes on this node through torchrun (one per GPU, or gloo
    processes on a CPU-only machine) and return its exit status. Each process sees the same arguments;
    ranks split the data and average gradients (DDP)."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={processes}",
           "-m", "ggn.cli", step, *argv]
    log.info("starting %d processes: %s", processes, " ".join(cmd))
    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // processes)))
    return subprocess.call(cmd, env=env)


def gather_counts(count: torch.Tensor) -> list[int]:
    """Every rank's value of a one-element counter (rank order); [value] in a single process."""
    if not dist.is_initialized():
        return [int(count.item())]
    backend_device = "cuda" if dist.get_backend() == "nccl" else "cpu"
    local = count.to(backend_device)
    values = [torch.zeros_like(local) for _ in range(dist.get_world_size())]
    dist.all_gather(values, local)
    return [int(v.item()) for v in values]


def init_distributed(device_name: str = "auto") -> tuple[torch.device, int, int]:
    """Start the process group when launched by torchrun; returns (device, rank, world_size)."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = device_name in ("auto", "cuda") and cuda_available()  # a driver too old for torch: a clear error
    if device_name not in ("auto", "cuda", "cpu"):
        device = torch.device(device_name)
    elif use_cuda:
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
    if world_size > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return device, rank, world_size


def is_main_process() -> bool:
    return not dist.is_initialized() or dist.get_rank() == 0


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def cleanup() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    return model.module if hasattr(model, "module") else model


def rank0_decides(flag: bool, device: torch.device) -> bool:
    """Rank 0's value of `flag` on every rank (e.g. "a checkpoint is due" by rank 0's clock), so that all ranks
    take part in what follows; `flag` itself in a single process."""
    if not dist.is_initialized():
        return flag
    value = torch.tensor([int(flag)], device=device if dist.get_backend() == "nccl" else "cpu")
    dist.broadcast(value, 0)
    return bool(value.item())


def gather_objects(obj) -> list:
    """Every rank's `obj` (rank order) on every rank; [obj] in a single process."""
    if not dist.is_initialized():
        return [obj]
    objects = [None] * dist.get_world_size()
    dist.all_gather_object(objects, obj)
    return objects
