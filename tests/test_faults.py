"""Faults (docs/bad_inputs.md, "Faults"): SIGKILL of an extraction shard and of the merge, then the same command again;
a diverging training; a full disk while writing outputs; two Snakemake runs on one working directory.

SIGKILL of PA and detector training is tested in test_preemption.py (and through Slurm in test_slurm.py)."""
from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
from pathlib import Path

import numpy as np
import psutil
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
import yaml

from conftest import BIN, ggn_env, kill_when, make_tiny_coco, run_ggn, save_tiny_pa, stop_when
from ggn import merge
from ggn.extract import SHARD_SCHEMA
from ggn.io import DiskFullError, atomic_torch_save, atomic_write_json, load_checkpoint
from ggn.masks import encode_mask
from test_preemption import DETECTOR, PA
from test_workflow import SNAKEMAKE, tiny_config

# ---- SIGKILL of an extraction shard and of the merge ----

@pytest.fixture(scope="module")
def pa_checkpoint(tmp_path_factory):
    return save_tiny_pa(tmp_path_factory.mktemp("pa") / "checkpoint.pt", input_size=64)


@pytest.mark.slow
def test_sigkilled_extraction_shard_resumes_to_the_identical_rows(tmp_path, pa_checkpoint):
    ann, images = make_tiny_coco(tmp_path / "data", num_images=6)
    common = ["extract", "--checkpoint", pa_checkpoint, "--annotations", ann, "--images", images, "--shard", "0",
              "--num-shards", "1", "--input-size", "64", "--batch-size", "1", "--flush-every", "1", "--device", "cpu"]
    straight = tmp_path / "straight" / "0-of-1.parquet"
    run_ggn([*common, "--out", straight])

    out = tmp_path / "killed" / "0-of-1.parquet"
    parts = out.with_name(out.name + ".parts")
    kill_when([BIN / "ggn", *common, "--out", out], lambda: any(parts.glob("part-*.parquet")), tmp_path / "kill.log")
    flushed = len(list(parts.glob("part-*.parquet")))
    assert not out.exists() and 1 <= flushed < 6, "killed after the shard was written, or before any part"

    resumed = run_ggn([*common, "--out", out])
    assert f"{flushed} of 6 images already done" in resumed.stdout + resumed.stderr, resumed.stderr
    a, b = pq.read_table(straight), pq.read_table(out)
    assert a.num_rows > 0
    assert a.replace_schema_metadata(None).equals(b.replace_schema_metadata(None))  # the identical rows, in order
    assert not parts.exists() and not list(out.parent.glob(".*.tmp"))


H, W = 16, 16


def _shards(folder: Path, num_shards: int, images_per_shard: int, candidates: int = 8) -> tuple[list[Path], Path]:
    """`num_shards` shards of one extraction run (ggn.shard metadata included) and their annotation file."""
    from ggn.extract import META_SHARD

    rng = np.random.default_rng(0)
    folder.mkdir(parents=True)
    ann = folder / "train.json"
    ids = list(range(1, num_shards * images_per_shard + 1))
    ann.write_text(json.dumps({"images": [{"id": i, "file_name": f"{i}.png", "height": H, "width": W} for i in ids],
                               "annotations": [], "categories": [{"id": 1, "name": "object"}]}))
    paths = []
    for s in range(num_shards):
        rows = []
        for image_id in ids[s::num_shards]:
            for rank in range(candidates):
                m = rng.random((H, W)) < 0.3
                ys, xs = np.nonzero(m)
                rows.append({"image_id": image_id, "rank": rank, "score": float(1 - rank / candidates),
                             "gt_iou": None if rank % 3 == 0 else float(rng.random()),
                             "bbox": [float(xs.min()), float(ys.min()), float(np.ptp(xs) + 1), float(np.ptp(ys) + 1)],
                             "area": float(m.sum()), "height": H, "width": W, "rle": encode_mask(m)["counts"]})
        meta = {"shard": s, "num_shards": num_shards, "images_in_shard": images_per_shard}
        table = pa.Table.from_pylist(rows, schema=SHARD_SCHEMA).replace_schema_metadata(
            {META_SHARD: json.dumps(meta).encode()})
        paths.append(folder / f"{s}-of-{num_shards}.parquet")
        pq.write_table(table, paths[-1])
    return paths, ann


def _merge_args(shards, ann, out: Path) -> list:
    return ["merge", "--shards", *shards, "--annotations", ann, "--out", out, "--store", out.parent / "store",
            "--top-k", "3"]


def _store_rows(store: Path) -> list[dict]:
    return sorted((r for p in sorted(store.glob("part=*/data.parquet")) for r in pq.read_table(p).to_pylist()),
                  key=lambda r: r["id"])


def test_interrupted_merge_filters_only_the_shards_it_had_not_finished(tmp_path, monkeypatch):
    shards, ann = _shards(tmp_path / "shards", num_shards=4, images_per_shard=5)
    straight = tmp_path / "straight" / "pseudo_gt.json"
    merge.merge_shards(shards, ann, straight, store=straight.parent / "store", top_k=3)

    out = tmp_path / "resumed" / "pseudo_gt.json"

    def stop_after_two(part):
        if part.name == "part-00001.parquet":
            raise KeyboardInterrupt  # a kill after the second shard's part

    with pytest.raises(KeyboardInterrupt):
        merge.merge_shards(shards, ann, out, store=out.parent / "store", top_k=3, after_part=stop_after_two)
    parts = merge.parts_dir_for(out)
    assert sorted(p.name for p in parts.iterdir()) == ["part-00000.json", "part-00000.parquet", "part-00001.json",
                                                       "part-00001.parquet"]
    assert not out.exists() and not (out.parent / "store").exists()

    filtered = []
    real_iter = merge.iter_kept
    monkeypatch.setattr(merge, "iter_kept", lambda paths, *a, **k: filtered.extend(paths) or real_iter(paths, *a, **k))
    counts = merge.merge_shards(shards, ann, out, store=out.parent / "store", top_k=3)
    assert filtered == shards[2:]  # the two finished shards were not filtered again
    assert out.read_bytes() == straight.read_bytes()
    assert _store_rows(out.parent / "store") == _store_rows(straight.parent / "store")
    assert counts.images_in_shards == 20 and counts.kept == json.loads(out.read_text())["annotations"][-1]["id"]
    assert not parts.exists()

    # A part made from another shard file (re-extracted since) is not reused.
    with pytest.raises(KeyboardInterrupt):
        merge.merge_shards(shards, ann, out, store=out.parent / "store", top_k=3, after_part=stop_after_two)
    pq.write_table(pq.read_table(shards[0]).slice(0, 8), shards[0])  # now image 1 only (and its ggn.shard metadata)
    filtered.clear()
    merge.merge_shards(shards, ann, out, store=out.parent / "store", top_k=3)
    assert filtered == shards[0:1] + shards[2:]


@pytest.mark.slow
def test_sigkilled_merge_resumes_from_its_parts_to_identical_outputs(tmp_path):
    shards, ann = _shards(tmp_path / "shards", num_shards=60, images_per_shard=20)
    straight = tmp_path / "straight" / "pseudo_gt.json"
    run_ggn(_merge_args(shards, ann, straight))

    out = tmp_path / "killed" / "pseudo_gt.json"
    parts = merge.parts_dir_for(out)
    kill_when([BIN / "ggn", *_merge_args(shards, ann, out)], lambda: (parts / "part-00000.json").is_file(),
               tmp_path / "kill.log")
    done = len(list(parts.glob("part-*.json")))
    assert not out.exists() and 1 <= done < 60, f"killed with {done} of 60 parts done"

    resumed = run_ggn(_merge_args(shards, ann, out))
    assert f"resumed: {done} of 60 shards were filtered before" in resumed.stderr, resumed.stderr
    assert out.read_bytes() == straight.read_bytes()
    assert _store_rows(out.parent / "store") == _store_rows(straight.parent / "store")
    assert not parts.exists()
    assert sorted(p.name for p in out.parent.iterdir()) == ["pseudo_gt.json", "store"]  # nothing torn left


def test_merge_killed_while_writing_its_outputs_leaves_no_torn_file(tmp_path):
    """A kill after the last part, while pseudo_gt.json and the store are written: their temporary files are removed
    by the next run, which assembles the outputs from the parts alone."""
    shards, ann = _shards(tmp_path / "shards", num_shards=3, images_per_shard=4)
    straight = tmp_path / "straight" / "pseudo_gt.json"
    merge.merge_shards(shards, ann, straight, store=straight.parent / "store", top_k=3)
    out = tmp_path / "resumed" / "pseudo_gt.json"
    with pytest.raises(KeyboardInterrupt):
        merge.merge_shards(shards, ann, out, store=out.parent / "store", top_k=3,
                           after_part=lambda p: p.name == "part-00002.parquet" and (_ for _ in ()).throw(
                               KeyboardInterrupt()))
    # what a SIGKILL in the middle of writing leaves: a torn JSON and a half-built store folder
    (out.parent / ".pseudo_gt.json.abc123.tmp").write_text('{"images": [')
    (out.parent / ".store.abc123.tmp" / "spill").mkdir(parents=True)
    merge.merge_shards(shards, ann, out, store=out.parent / "store", top_k=3)
    assert out.read_bytes() == straight.read_bytes()
    assert sorted(p.name for p in out.parent.iterdir()) == ["pseudo_gt.json", "store"]


# ---- a diverging training ----

DIVERGE = {  # a learning rate far too high, reached by the warm-up within the first epoch
    "train-pa": [*PA, "--lr", "1e5"],
    "train-detector": [*DETECTOR, "--lr", "1e2"],
}


@pytest.mark.slow
@pytest.mark.parametrize("step", ["train-pa", "train-detector"])
def test_non_finite_loss_stops_training_naming_the_iteration_and_keeps_the_last_good_checkpoint(tmp_path, step):
    ann, images = make_tiny_coco(tmp_path / "data", num_images=6)
    out = tmp_path / "run" / "checkpoint.pt"
    proc = run_ggn([step, "--train-json", ann, "--images", images, "--out", out, *DIVERGE[step], "--batch-size", "1",
                 "--workers", "0", "--threads", "1", "--warmup-iters", "6", "--epochs", "3",
                 "--checkpoint-minutes", "1e-9"], ok=False)
    message = proc.stderr.strip().splitlines()[-1]
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert message.startswith(f"error: {step}: non-finite "), message
    iteration = int(message.split(" iteration ")[1].split()[0])
    assert "--lr" in message and str(out.parent / "epochs") in message
    assert not out.exists()
    kept = sorted((out.parent / "epochs").glob("*.pt"))
    assert kept, f"no checkpoint from before the divergence at iteration {iteration}"
    for path in kept:  # every checkpoint left is good: finite, and from before the iteration that failed
        state = load_checkpoint(path)
        assert all(torch.isfinite(v).all() for v in state["model"].values() if torch.is_floating_point(v)), path
        batches = 6
        done = state["epoch"] * batches + state.get("batches_done", batches)
        assert done < iteration, (path, done, iteration)


# ---- a full disk ----

@pytest.fixture
def small_disk(tmp_path):
    """A 1 MiB file system (tmpfs, as root; CI runs as root)."""
    if os.geteuid() != 0:
        pytest.skip("mounting a size-limited tmpfs needs root (CI runs as root)")
    disk = tmp_path / "disk"
    disk.mkdir()
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(disk)], capture_output=True, text=True)
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {proc.stderr.strip()}")
    try:
        yield disk
    finally:
        subprocess.run(["umount", str(disk)], check=True)


def _only(folder: Path, names: list[str]) -> None:
    assert sorted(p.name for p in folder.iterdir()) == sorted(names)  # no temporary file left behind


def test_disk_full_atomic_json_and_checkpoint_writes_leave_the_old_file_and_no_temporary(small_disk):
    target = small_disk / "metrics.json"
    atomic_write_json(target, {"AR@100": 0.5})
    with pytest.raises(DiskFullError, match=f"disk full while writing {target}"):
        atomic_write_json(target, {"AR@100": 0.6, "padding": "x" * 2_000_000})
    assert json.loads(target.read_text()) == {"AR@100": 0.5}
    _only(small_disk, ["metrics.json"])

    checkpoint = small_disk / "checkpoint.pt"  # torch.save's zip writer says only "unexpected pos": still named
    with pytest.raises(DiskFullError, match=f"disk full while writing {checkpoint}"):
        atomic_torch_save({"model": {"w": torch.zeros(500_000)}}, checkpoint)
    _only(small_disk, ["metrics.json"])


def test_disk_full_while_writing_a_shard_part_keeps_the_shard_resumable(small_disk):
    from ggn.extract import ShardParts

    parts = ShardParts(small_disk / "0-of-1.parquet", fingerprint="f")
    row = {"image_id": 1, "rank": 0, "score": 0.5, "gt_iou": None, "bbox": [0.0, 0.0, 1.0, 1.0], "area": 1.0,
           "height": 1, "width": 1, "rle": "1"}
    parts.write({k: [v] for k, v in row.items()}, [1], {}, 0.1)
    noise = np.random.default_rng(0).integers(0, 2**62, 300_000).astype(str)  # incompressible
    big = {k: [v] * len(noise) for k, v in row.items()} | {"rle": list(noise), "image_id": [2] * len(noise)}
    with pytest.raises(DiskFullError, match="disk full while writing .*part-000001.parquet"):
        parts.write(big, [2], {}, 0.1)
    _only(parts.dir, ["part-000000.parquet"])
    assert ShardParts(small_disk / "0-of-1.parquet", fingerprint="f").done == {1}  # image 2 is redone next time


def test_disk_full_in_ggn_merge_is_a_clear_error_without_a_traceback(tmp_path, small_disk):
    shards, ann = _shards(tmp_path / "shards", num_shards=2, images_per_shard=1500, candidates=3)
    out = small_disk / "pseudo_gt.json"
    proc = run_ggn(["merge", "--shards", *shards, "--annotations", ann, "--out", out, "--top-k", "3",
                 "--gt-iou-max", "1"], ok=False)  # every gt_iou is < 1: all kept
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert "disk full while writing" in proc.stderr and str(small_disk) in proc.stderr, proc.stderr
    assert not out.exists() and not list(small_disk.glob(".pseudo_gt.json.*.tmp"))


# ---- two Snakemake runs on one working directory ----

@pytest.mark.slow
def test_a_second_snakemake_on_the_same_working_directory_is_refused_and_the_first_finishes_intact(tmp_path):
    work = tmp_path / "work"
    work.mkdir()
    config = tiny_config(Path("results"))
    config["experiments"]["tiny"]["synthetic"].update(num_train=4, num_val=2)
    cfg = work / "config.yaml"
    cfg.write_text(yaml.safe_dump(config))
    target = ["results/tiny/data/train.json", "--configfile", str(cfg)]
    log = tmp_path / "first.log"
    with open(log, "w") as out:
        first = subprocess.Popen([*SNAKEMAKE, "--cores", "1", *target], cwd=work, stdout=out,
                                 stderr=subprocess.STDOUT, env=ggn_env())
    locks = work / ".snakemake" / "locks"
    tree = []
    try:
        tree = stop_when(first, lambda: any(locks.glob("*.lock")), log)  # held still while the second run tries
        second = subprocess.run([*SNAKEMAKE, "--cores", "1", *target], cwd=work, capture_output=True, text=True,
                                env=ggn_env())
    finally:
        for p in tree:
            with contextlib.suppress(psutil.NoSuchProcess):
                p.send_signal(signal.SIGCONT)
    assert second.returncode != 0
    assert "Directory cannot be locked" in second.stdout + second.stderr, second.stdout + second.stderr
    assert first.wait(timeout=600) == 0, log.read_text()
    train = json.loads((work / "results" / "tiny" / "data" / "train.json").read_text())
    assert train["images"] and train["annotations"]
    assert not any(locks.glob("*.lock"))
    plan = subprocess.run([*SNAKEMAKE, "-n", *target], cwd=work, capture_output=True, text=True, env=ggn_env())
    assert "Nothing to be done" in plan.stdout + plan.stderr, plan.stdout + plan.stderr
