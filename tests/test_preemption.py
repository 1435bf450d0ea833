"""Training killed mid-epoch after a time-based checkpoint resumes to exactly the uninterrupted result.

The kill is real (SIGKILL of a `ggn` process) and lands at a known point without any timing: one training
image is replaced by a FIFO, so the process blocks for good when its batch is loaded, after the batches before
it were trained and checkpointed (`--checkpoint-minutes` tiny: a checkpoint after every batch).
"""
from __future__ import annotations

import logging
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from conftest import make_tiny_coco
from ggn.cli import main as ggn_main
from ggn.coco_data import CocoInstances
from ggn.io import load_checkpoint

BIN = Path(sys.executable).parent
BATCH = 2
BLOCKED_BATCH = 2  # the FIFO image is in the epoch's third batch: two batches are trained before the kill

DETECTOR = ["--backbone", "resnet18", "--fpn-channels", "16", "--representation-size", "32", "--mask-channels", "16",
            "--min-size", "64", "--max-size", "64", "--anchor-sizes", "8", "16", "32", "64", "128",
            "--rpn-pre-nms-top-n-train", "200", "--rpn-post-nms-top-n-train", "100",
            "--box-batch-size-per-image", "64", "--batch-size", str(BATCH), "--workers", "0", "--threads", "1",
            "--warmup-iters", "2", "--lr", "0.01", "--epochs", "2"]
PA = ["--backbone", "resnet18", "--fpn-dim", "16", "--ppm-dim", "16", "--input-size", "48", "--flip",
      "--batch-size", str(BATCH), "--workers", "0", "--threads", "1", "--warmup-iters", "2", "--lr", "0.01",
      "--epochs", "2"]

pytestmark = pytest.mark.slow


def _pa_order(num_images: int, seed: int, epoch: int) -> list[int]:
    """ggn train-pa's order of one process: torch's DistributedSampler for 1 replica, seeded (seed, epoch)."""
    sampler = torch.utils.data.DistributedSampler(range(num_images), num_replicas=1, rank=0, shuffle=True, seed=seed)
    sampler.set_epoch(epoch)
    return list(sampler)


def _detector_order(num_images: int, seed: int, epoch: int) -> list[int]:
    from ggn.detector.train import epoch_order

    return epoch_order(num_images, seed, epoch)


def _kill_when_blocked(cmd: list[str], mid_epoch: Path, blocked: Path, log: Path) -> None:
    """Run `cmd` with image `blocked` made a FIFO; SIGKILL it once its mid-epoch checkpoint records the batches
    before the blocked one (it can go no further); put the image back."""
    original = blocked.read_bytes()
    blocked.unlink()
    os.mkfifo(blocked)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env)
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
        proc.kill()
        proc.wait()
        blocked.unlink()
        blocked.write_bytes(original)


@pytest.mark.parametrize("step", ["train-detector", "train-pa"])
def test_killed_mid_epoch_resumes_to_the_uninterrupted_result(tmp_path, step, caplog):
    ann, images = make_tiny_coco(tmp_path / "data", num_images=6)
    flags = DETECTOR if step == "train-detector" else PA
    order = (_detector_order if step == "train-detector" else _pa_order)(6, 0, 0)
    ids = CocoInstances(ann, images).ids  # dataset index -> image id, as both trainers index them
    common = [step, "--train-json", str(ann), "--images", str(images), *flags]

    straight = tmp_path / "straight" / "checkpoint.pt"
    assert ggn_main([*common, "--out", str(straight), "--checkpoint-minutes", "0"]) == 0

    resumed = tmp_path / "resumed" / "checkpoint.pt"
    blocked = images / f"{ids[order[BLOCKED_BATCH * BATCH]]:06d}.png"
    mid_epoch = resumed.parent / "epochs" / "mid_epoch.pt"
    _kill_when_blocked([str(BIN / "ggn"), *common, "--out", str(resumed), "--checkpoint-minutes", "1e-9"],
                       mid_epoch, blocked, tmp_path / "killed.log")
    assert not resumed.exists() and not list(mid_epoch.parent.glob("epoch_*.pt"))  # killed within epoch 1
    state = load_checkpoint(mid_epoch)
    assert state["epoch"] == 0 and state["batches_done"] == BLOCKED_BATCH and state["optimizer"]["state"]

    # the same command again (default interval) continues after the two trained batches
    with caplog.at_level(logging.INFO):
        assert ggn_main([*common, "--out", str(resumed)]) == 0
    assert f"in epoch 1 after its first {BLOCKED_BATCH} of 3 batches" in caplog.text
    a, b = load_checkpoint(straight)["model"], load_checkpoint(resumed)["model"]
    assert a.keys() == b.keys()
    different = [k for k in a if not torch.equal(a[k], b[k])]
    assert not different, f"resumed weights differ from the uninterrupted run's: {different[:5]}"
    assert not mid_epoch.exists()  # the epoch checkpoints supersede it
