"""Training killed mid-epoch after a time-based checkpoint resumes to exactly the uninterrupted result.

The kill is real (SIGKILL of a `ggn` process group) and lands at a known point without any timing: one
training image is replaced by a FIFO, so the run blocks for good when its batch is loaded, after the batches
before it were trained and checkpointed (`--checkpoint-minutes` tiny: a checkpoint after every batch). With 2
processes (gloo) the other rank waits for it in the gradient all-reduce.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from conftest import make_tiny_coco
from ggn.coco_data import CocoInstances
from ggn.io import load_checkpoint

BIN = Path(sys.executable).parent
BLOCKED_BATCH = 2  # the FIFO image is in the epoch's third (last) batch: two are trained before the kill

DETECTOR = ["--backbone", "resnet18", "--fpn-channels", "16", "--representation-size", "32", "--mask-channels", "16",
            "--min-size", "64", "--max-size", "64", "--anchor-sizes", "8", "16", "32", "64", "128",
            "--rpn-pre-nms-top-n-train", "200", "--rpn-post-nms-top-n-train", "100",
            "--box-batch-size-per-image", "64", "--workers", "0", "--threads", "1", "--warmup-iters", "2",
            "--lr", "0.01", "--epochs", "2"]
PA = ["--backbone", "resnet18", "--fpn-dim", "16", "--ppm-dim", "16", "--input-size", "48", "--flip",
      "--workers", "0", "--threads", "1", "--warmup-iters", "2", "--lr", "0.01", "--epochs", "2"]

pytestmark = pytest.mark.slow


def _first_epoch_order(step: str, num_images: int, processes: int) -> list[int]:
    """Dataset indices in the order rank 0 visits them in the first epoch (seed 0): torch's DistributedSampler
    as both trainers use it, or, for one detector process, ggn.detector.train.epoch_order."""
    if step == "train-detector" and processes == 1:
        from ggn.detector.train import epoch_order

        return epoch_order(num_images, 0, 0)
    sampler = torch.utils.data.DistributedSampler(range(num_images), num_replicas=processes, rank=0, shuffle=True,
                                                  seed=0, drop_last=step == "train-detector")
    sampler.set_epoch(0)
    return list(sampler)


def _ggn(args: list[str]) -> str:
    proc = subprocess.run([str(BIN / "ggn"), *args], capture_output=True, text=True, env=_env())
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout + proc.stderr


def _env() -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}


def _kill_when_blocked(cmd: list[str], mid_epoch: Path, blocked: Path, log: Path) -> None:
    """Run `cmd` with image `blocked` made a FIFO; SIGKILL it once its mid-epoch checkpoint records the batches
    before the blocked one (it can go no further); put the image back."""
    original = blocked.read_bytes()
    blocked.unlink()
    os.mkfifo(blocked)
    with open(log, "w") as out:  # its own process group: torchrun and its workers are killed together
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=_env(), start_new_session=True)
    try:
        deadline = time.monotonic() + 600  # a hang guard only; the run blocks within seconds
        while True:
            if proc.poll() is not None:
                pytest.fail(f"{' '.join(cmd)} exited ({proc.returncode}) before blocking:\n{log.read_text()}")
            if mid_epoch.is_file() and load_checkpoint(mid_epoch).get("batches_done") == BLOCKED_BATCH:
                break
            assert time.monotonic() < deadline, f"no mid-epoch checkpoint of {BLOCKED_BATCH} batches:\n{log.read_text()}"
            time.sleep(0.1)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        blocked.unlink()
        blocked.write_bytes(original)


@pytest.mark.parametrize("step, processes", [("train-detector", 1), ("train-pa", 1), ("train-detector", 2)])
def test_killed_mid_epoch_resumes_to_the_uninterrupted_result(tmp_path, step, processes):
    ann, images = make_tiny_coco(tmp_path / "data", num_images=6)
    batch = 2 if processes == 1 else 1  # 3 batches per epoch and process
    flags = [*(DETECTOR if step == "train-detector" else PA), "--batch-size", str(batch), "--gpus", str(processes)]
    order = _first_epoch_order(step, 6, processes)
    ids = CocoInstances(ann, images).ids  # dataset index -> image id, as both trainers index them
    common = [step, "--train-json", str(ann), "--images", str(images), *flags]

    straight = tmp_path / "straight" / "checkpoint.pt"
    _ggn([*common, "--out", str(straight), "--checkpoint-minutes", "0"])

    resumed = tmp_path / "resumed" / "checkpoint.pt"
    blocked = images / f"{ids[order[BLOCKED_BATCH * batch]]:06d}.png"
    mid_epoch = resumed.parent / "epochs" / "mid_epoch.pt"
    _kill_when_blocked([str(BIN / "ggn"), *common, "--out", str(resumed), "--checkpoint-minutes", "1e-9"],
                       mid_epoch, blocked, tmp_path / "killed.log")
    assert not resumed.exists() and not list(mid_epoch.parent.glob("epoch_*.pt"))  # killed within epoch 1
    state = load_checkpoint(mid_epoch)
    assert state["epoch"] == 0 and state["batches_done"] == BLOCKED_BATCH and state["optimizer"]["state"]
    assert len(state["rng_per_rank"]) == processes

    # the same command again (default interval) continues after the two trained batches
    out = _ggn([*common, "--out", str(resumed)])
    assert f"in epoch 1 after its first {BLOCKED_BATCH} of 3 batches" in out, out
    a, b = load_checkpoint(straight)["model"], load_checkpoint(resumed)["model"]
    assert a.keys() == b.keys()
    different = [k for k in a if not torch.equal(a[k], b[k])]
    assert not different, f"resumed weights differ from the uninterrupted run's: {different[:5]}"
    assert not mid_epoch.exists()  # the epoch checkpoints supersede it
