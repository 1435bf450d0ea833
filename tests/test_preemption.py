"""Training killed mid-epoch after a time-based checkpoint resumes to exactly the uninterrupted result.

The kill is real: the `ggn` process and its descendants (with 2 processes, torchrun and both gloo ranks, which
torchrun starts in sessions of their own) are stopped with
SIGSTOP the moment its first mid-epoch checkpoint appears (`--checkpoint-minutes` tiny: one after every batch),
checked to be still inside its first epoch, and killed with SIGKILL. The same command again must continue from
that checkpoint and end with the weights of an uninterrupted run, bit for bit.
"""
from __future__ import annotations

import re

import pytest
import torch

from conftest import BIN, kill_when, make_tiny_coco, run_ggn
from ggn.io import load_checkpoint

IMAGES = 8  # batch 1: 8 batches per epoch in one process, 4 per rank in two

DETECTOR = ["--backbone", "resnet18", "--fpn-channels", "16", "--representation-size", "32", "--mask-channels", "16",
            "--min-size", "64", "--max-size", "64", "--anchor-sizes", "8", "16", "32", "64", "128",
            "--rpn-pre-nms-top-n-train", "200", "--rpn-post-nms-top-n-train", "100",
            "--box-batch-size-per-image", "64"]
PA = ["--backbone", "resnet18", "--fpn-dim", "16", "--ppm-dim", "16", "--input-size", "48", "--flip"]
COMMON = ["--batch-size", "1", "--workers", "0", "--threads", "1", "--warmup-iters", "2", "--lr", "0.01", "--epochs", "2"]

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("step, processes", [("train-detector", 1), ("train-pa", 1), ("train-detector", 2)])
def test_killed_mid_epoch_resumes_to_the_uninterrupted_result(tmp_path, step, processes):
    ann, images = make_tiny_coco(tmp_path / "data", num_images=IMAGES)
    common = [step, "--train-json", str(ann), "--images", str(images), "--gpus", str(processes),
              *(DETECTOR if step == "train-detector" else PA), *COMMON]
    batches = IMAGES // processes

    straight = tmp_path / "straight" / "checkpoint.pt"
    run_ggn([*common, "--out", str(straight), "--checkpoint-minutes", "0"])

    resumed = tmp_path / "resumed" / "checkpoint.pt"
    epochs = resumed.parent / "epochs"
    kill_when([BIN / "ggn", *common, "--out", resumed, "--checkpoint-minutes", "1e-9"],
              lambda: (epochs / "mid_epoch.pt").is_file(), tmp_path / "killed.log")
    assert not resumed.exists() and not list(epochs.glob("epoch_*.pt"))  # killed within epoch 1
    state = load_checkpoint(epochs / "mid_epoch.pt")
    done = state["batches_done"]
    assert state["epoch"] == 0 and 1 <= done < batches and state["optimizer"]["state"]
    assert len(state["rng_per_rank"]) == processes

    # the same command again (default interval) continues after the batches trained before the kill
    proc = run_ggn([*common, "--out", str(resumed)])
    out = proc.stdout + proc.stderr
    assert re.search(rf"resuming from \S+mid_epoch.pt in epoch 1 after its first {done} of {batches} batches", out), out
    a, b = load_checkpoint(straight)["model"], load_checkpoint(resumed)["model"]
    assert a.keys() == b.keys()
    different = [k for k in a if not torch.equal(a[k], b[k])]
    assert not different, f"resumed weights differ from the uninterrupted run's: {different[:5]}"
    assert not (epochs / "mid_epoch.pt").exists()  # the epoch checkpoints supersede it
