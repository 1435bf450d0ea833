"""Benchmark of `ggn merge`: streaming merge vs loading every shard at once, and per-image store lookups.

Prints, side by side and measured in the same run (each variant in a fresh process, so peak RSS is its own):
- wall time and peak resident memory of the streaming merge (ours, JSON only) and of a load-everything
  baseline (read all shards into one table, filter, sort, top-k, build the whole JSON in memory), for
  2 and 8 shards of the same size: ours should stay flat as shards are added, the baseline grows;
  then ours again with the parquet store written as well ("+store");
- reading one image's pseudo-GT from the parquet store (PseudoStore.annotations_for) against the
  baseline of loading pseudo_gt.json and indexing it.

Usage: .venv/bin/python bench/bench_merge.py [--images-per-shard 2500] [--candidates 20]
"""
from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import resource
import tempfile
import time
from pathlib import Path

import numpy as np


def make_shards(root: Path, num_shards: int, images_per_shard: int, candidates: int, seed: int = 0):
    """Shards laid out as `ggn extract` writes them, with real RLEs of random ellipses at 375x500."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    from pycocotools import mask as mask_utils

    from ggn.extract import SHARD_SCHEMA
    from ggn.masks import encode_mask

    rng = np.random.default_rng(seed)
    h, w = 375, 500
    yy, xx = np.mgrid[:h, :w]
    pool = []
    for _ in range(64):
        cy, cx, ry, rx = rng.uniform(40, 330), rng.uniform(40, 460), rng.uniform(10, 120), rng.uniform(10, 150)
        m = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1
        rle = encode_mask(m)
        box = mask_utils.toBbox({"size": [h, w], "counts": rle["counts"].encode()}).tolist()
        pool.append((rle["counts"], box, float(m.sum())))
    num_images = num_shards * images_per_shard
    ids = np.arange(1, num_images + 1)
    paths = []
    for s in range(num_shards):
        shard_ids = ids[s::num_shards]
        image_id = np.repeat(shard_ids, candidates)
        rank = np.tile(np.arange(candidates), len(shard_ids))
        pick = rng.integers(0, len(pool), len(image_id))
        gt_iou = rng.uniform(0, 1, len(image_id)).astype(np.float32)
        table = pa.table({
            "image_id": image_id, "rank": rank.astype(np.int32),
            "score": rng.uniform(0, 1, len(image_id)).astype(np.float32),
            "gt_iou": pa.array(gt_iou, mask=rng.uniform(size=len(image_id)) < 0.1),
            "bbox": [pool[p][1] for p in pick], "area": [pool[p][2] for p in pick],
            "height": np.full(len(image_id), h, np.int32), "width": np.full(len(image_id), w, np.int32),
            "rle": [pool[p][0] for p in pick],
        }).cast(SHARD_SCHEMA)
        path = root / f"{s}-of-{num_shards}.parquet"
        pq.write_table(table, path, row_group_size=64 * candidates)
        paths.append(path)
    ann = root / "train.json"
    ann.write_text(json.dumps({"images": [{"id": int(i), "file_name": f"{i}.jpg", "height": h, "width": w}
                                          for i in ids], "annotations": [], "categories": []}))
    return paths, ann


def streaming(paths, ann, out, store):
    from ggn.merge import merge_shards

    counts = merge_shards(paths, ann, out, store=store, top_k=3, gt_iou_max=0.5)
    return counts.kept


def load_everything(paths, ann, out, store):
    """Baseline: every shard in memory, then filter, sort and top-k, then the whole JSON as one string."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    from ggn.merge import _top_k_per_image, row_to_annotation

    table = pa.concat_tables([pq.read_table(p) for p in paths])
    table = table.filter(pc.fill_null(pc.less(table["gt_iou"], 0.5), True))
    table = _top_k_per_image(table.sort_by([("image_id", "ascending"), ("rank", "ascending")]), 3)
    table = table.add_column(0, "id", pa.array(np.arange(1, table.num_rows + 1)))
    coco = json.loads(Path(ann).read_text())
    coco["annotations"] = [row_to_annotation(r) for r in table.to_pylist()]
    Path(out).write_text(json.dumps(coco))
    return table.num_rows


def lookups_store(store, ids):
    from ggn.merge import PseudoStore

    t0 = time.perf_counter()
    s = PseudoStore(store)
    n = sum(len(s.annotations_for(i)) for i in ids)
    return n, time.perf_counter() - t0


def lookups_json(out, ids):
    t0 = time.perf_counter()
    by_image: dict[int, list] = {}
    for a in json.loads(Path(out).read_text())["annotations"]:
        by_image.setdefault(a["image_id"], []).append(a)
    n = sum(len(by_image.get(i, [])) for i in ids)
    return n, time.perf_counter() - t0


def _same_annotations(a: Path, b: Path) -> bool:
    """Same kept candidates (ids aside: the streaming merge numbers them in shard order, not by image)."""
    def key(path):
        coco = json.loads(path.read_text())
        anns = [{k: v for k, v in ann.items() if k != "id"} for ann in coco["annotations"]]
        return coco["images"], sorted(anns, key=lambda x: json.dumps(x, sort_keys=True))
    return key(a) == key(b)


def _child(queue, fn, args):
    t0 = time.perf_counter()
    result = fn(*args)
    queue.put((result, time.perf_counter() - t0, _peak_rss_mib()))


def _peak_rss_mib() -> float:
    # VmHWM is the high-water mark of this process image only; ru_maxrss would carry over the RSS of
    # the parent that forked it (spawn forks, then execs).
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def measure(fn, *args):
    """(result, seconds, peak RSS MiB) of fn(*args) in a fresh process."""
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    p = ctx.Process(target=_child, args=(queue, fn, args))
    p.start()
    out = queue.get()
    p.join()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images-per-shard", type=int, default=2500)
    parser.add_argument("--candidates", type=int, default=20)
    parser.add_argument("--shards", type=int, nargs="+", default=[2, 8],
                        help="shard counts to merge (e.g. 2 8 32 for a scale extrapolation)")
    parser.add_argument("--no-baseline", action="store_true", help="skip load-everything (large shard counts)")
    args = parser.parse_args()
    print("bench_merge (timings on a shared machine; peak RSS includes the Python/pyarrow baseline of each process)")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        print(f"{'shards':>6} {'rows':>8} | {'streaming s':>11} {'MiB':>6} | {'load-all s':>10} {'MiB':>6} | "
              f"{'+store s':>13} {'MiB':>6} | {'store MiB':>9} {'json MiB':>8} | kept")
        for num_shards in args.shards:
            d = root / f"s{num_shards}"
            d.mkdir()
            paths, ann = make_shards(d, num_shards, args.images_per_shard, args.candidates)
            rows = num_shards * args.images_per_shard * args.candidates
            kept_s, t_s, m_s = measure(streaming, paths, ann, d / "stream.json", None)
            if args.no_baseline:
                kept_b, t_b, m_b = kept_s, float("nan"), float("nan")
            else:
                kept_b, t_b, m_b = measure(load_everything, paths, ann, d / "base.json", None)
                assert _same_annotations(d / "stream.json", d / "base.json")
            kept_st, t_st, m_st = measure(streaming, paths, ann, d / "store.json", d / "store")
            assert kept_s == kept_b == kept_st, (kept_s, kept_b, kept_st)
            store_mib = sum(f.stat().st_size for f in (d / "store").rglob("*") if f.is_file()) / 2**20
            json_mib = (d / "stream.json").stat().st_size / 2**20
            print(f"{num_shards:>6} {rows:>8} | {t_s:>11.2f} {m_s:>6.0f} | {t_b:>10.2f} {m_b:>6.0f} | "
                  f"{t_st:>13.2f} {m_st:>6.0f} | {store_mib:>9.1f} {json_mib:>8.1f} | {kept_s}")
            for f in d.glob("*.json"):  # keep the disk use of large runs down
                if f.name not in ("stream.json", "train.json"):
                    f.unlink()
        ids = np.random.default_rng(1).integers(1, 8 * args.images_per_shard + 1, 200).tolist()
        (n_s, t_s), _, m_s = measure(lookups_store, d / "store", ids)
        (n_j, t_j), _, m_j = measure(lookups_json, d / "stream.json", ids)
        assert n_s == n_j
        print(f"{len(ids)} single-image lookups ({n_s} annotations): store {1000 * t_s / len(ids):.2f} ms/image "
              f"(total {t_s:.2f} s, peak {m_s:.0f} MiB) vs load pseudo_gt.json + index {t_j:.2f} s "
              f"(peak {m_j:.0f} MiB)")


if __name__ == "__main__":
    main()
