"""Shared fixtures: a tiny COCO dataset drawn on the fly (no downloads, no shipped images)."""
from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ggn.masks import encode_mask


def make_tiny_coco(root: Path, num_images: int = 4, size: int = 64, seed: int = 0) -> tuple[Path, Path]:
    """Images with 1-3 coloured rectangles/discs on noise; categories 'box' (seen) and 'disc' (unseen)."""
    rng = np.random.default_rng(seed)
    img_dir = root / "images"
    img_dir.mkdir(parents=True, exist_ok=True)
    images, anns = [], []
    yy, xx = np.mgrid[:size, :size]
    for i in range(1, num_images + 1):
        canvas = rng.integers(0, 60, (size, size, 3)).astype(np.uint8)
        for _ in range(int(rng.integers(1, 4))):
            cat = int(rng.integers(1, 3))
            cx, cy = rng.integers(size // 5, size - size // 5, 2)
            r = int(rng.integers(size // 10, size // 5))
            if cat == 1:
                m = (abs(xx - cx) <= r) & (abs(yy - cy) <= r)
            else:
                m = (xx - cx) ** 2 + (yy - cy) ** 2 <= r * r
            canvas[m] = rng.integers(120, 255, 3)
            for a in anns:  # later objects occlude earlier ones
                if a["image_id"] == i:
                    a["_mask"] &= ~m
            anns.append({"id": len(anns) + 1, "image_id": i, "category_id": cat, "iscrowd": 0, "_mask": m})
        name = f"{i:06d}.png"
        Image.fromarray(canvas).save(img_dir / name)
        images.append({"id": i, "file_name": name, "height": size, "width": size})
    out = []
    for a in anns:
        m = a.pop("_mask")
        if not m.any():
            continue
        ys, xs = np.nonzero(m)
        a.update(segmentation=encode_mask(m), area=float(m.sum()),
                 bbox=[float(xs.min()), float(ys.min()), float(xs.max() - xs.min() + 1), float(ys.max() - ys.min() + 1)])
        out.append(a)
    coco = {"images": images, "annotations": out,
            "categories": [{"id": 1, "name": "box"}, {"id": 2, "name": "disc"}]}
    ann_file = root / "instances.json"
    ann_file.write_text(json.dumps(coco))
    return ann_file, img_dir


# The test files that take minutes, longest first (`--durations`, 2026-12-04, 2 cores). They are collected first,
# and `make test` / `make test-all` hand whole files to pytest-xdist's processes in collection order
# (--dist loadfile --no-loadscope-reorder), so the long files start at once and the short ones fill in around
# them; by default xdist would start files with many tests first, and the one-test Slurm file (10 minutes,
# mostly waiting on the cluster) ran last, alone.
LONG_FILES = ("test_slurm.py", "test_datasets_as_released.py", "test_paper_row.py", "test_more_paper_rows.py",
              "test_own_data.py", "test_imagenet_rows.py", "test_workflow.py", "test_pseudo_oln_workflow.py",
              "test_preemption.py", "test_reference_workflow.py", "test_faults.py")


def pytest_collection_modifyitems(config, items):
    rank = {name: i for i, name in enumerate(LONG_FILES)}
    items.sort(key=lambda item: rank.get(item.path.name, len(LONG_FILES)))  # stable: the rest keep their order


@pytest.fixture
def tiny_coco(tmp_path):
    return make_tiny_coco(tmp_path)


def save_tiny_pa(path: Path, input_size: int) -> Path:
    """A randomly initialised, narrow ResNet-18 PA network saved as `ggn train-pa` saves one (seeded)."""
    import torch

    from ggn.io import atomic_torch_save
    from ggn.pa.model import build_pa_model, default_pa_config

    torch.manual_seed(0)
    cfg = default_pa_config(backbone="resnet18", fpn_dim=16, ppm_dim=16, input_size=input_size)
    atomic_torch_save({"model": build_pa_model(cfg).eval().state_dict(), "config": cfg}, path)
    return path


# ---- running `ggn` and stopping or killing it at a chosen point (the fault and preemption tests) ----

BIN = Path(sys.executable).parent


def ggn_env() -> dict:
    """One thread per process, and this venv's `ggn` and `torchrun` first on PATH."""
    return {**os.environ, "OMP_NUM_THREADS": "1", "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}


def run_ggn(args: list, ok: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run([str(BIN / "ggn"), *map(str, args)], capture_output=True, text=True, env=ggn_env())
    if ok:
        assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc


def stop_when(proc: subprocess.Popen, ready, log: Path) -> list:
    """Wait until `ready()`, then SIGSTOP `proc` and its descendants (nothing moves on while the test looks);
    returns them (psutil processes)."""
    import psutil

    while not ready():
        if proc.poll() is not None:
            pytest.fail(f"{proc.args[:2]} exited ({proc.returncode}) before the point it was to be stopped at:\n"
                        f"{log.read_text()}")
        time.sleep(0.002)
    root = psutil.Process(proc.pid)
    tree = [root, *root.children(recursive=True)]
    for p in tree:
        p.send_signal(signal.SIGSTOP)
    return tree


def kill_when(cmd: list, ready, log: Path) -> None:
    """Run `cmd`; when `ready()` turns true, stop it and its descendants and kill them with SIGKILL."""
    import psutil

    with open(log, "w") as out:
        proc = subprocess.Popen([str(c) for c in cmd], stdout=out, stderr=subprocess.STDOUT, env=ggn_env())
    tree: list = []
    try:
        tree = stop_when(proc, ready, log)
    finally:
        for p in tree or [psutil.Process(proc.pid)]:
            with contextlib.suppress(psutil.NoSuchProcess):
                p.kill()
        proc.wait()
