"""`ggn merge`: gather extraction shards into pseudo-GT (COCO JSON and/or a per-image parquet store).

Kept candidates: ``gt_iou < --gt-iou-max`` (null gt_iou, i.e. no ground truth known, counts as kept),
``score >= --min-score`` when given, then per image the best ``--top-k`` of what remains, by rank.
Shards are streamed batch by batch; this relies on the extraction contract that every image lives in
one shard and its rows are contiguous there (checked: a repeated image is an error), so memory does not
grow with the number of shards. Annotation ids count from 1 in the order the shards are given.

Resuming: each shard's kept rows are first written, atomically, to a part in ``{out}.parts/`` (``{store}.parts/``
with ``--no-json``), with a record of the shard file (path, size, modification time), the filter settings and the
annotation file's hash. A merge killed at any point and run again keeps the parts whose record still matches, filters
only the other shards, then assembles the outputs from the parts (ids are numbered there, in shard order, so the
result is the same as an uninterrupted run's) and removes the parts folder. Temporary files a kill left behind
are removed on the next run (Snakemake's lock keeps two runs off one output).

The parquet store (``--store DIR``, for ImageNet-sized sets) hashes images into ``DIR/part=KKK/data.parquet``
by ``image_id % num_partitions``; rows of each file are sorted by image id and written in small row groups
whose min/max statistics let ``PseudoStore.annotations_for`` read one image's rows without the rest.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from ggn.annotations import validate_coco
from ggn.extract import SHARD_SCHEMA
from ggn.io import DiskFullError, InputError, atomic_open, atomic_write_json, file_sha256, is_disk_full, plain_mode, read_json

log = logging.getLogger(__name__)

STORE_SCHEMA = pa.schema([pa.field("id", pa.int64(), nullable=False)] + list(SHARD_SCHEMA))
NUM_PARTITIONS = 256
# About 1.28M images x 3 kept / 256 files = 15k rows per file; 256-row groups make one image's read
# touch ~100 kB instead of the whole file, with ~60 groups of statistics to scan.
ROW_GROUP_ROWS = 256
# Rows buffered per partition before they are spilled to disk while merging (memory stays bounded).
SPILL_ROWS = 2048
CATEGORIES = [{"id": 1, "name": "object"}]


@dataclass
class MergeCounts:
    candidates_read: int = 0
    removed_by_gt_iou: int = 0
    removed_by_score: int = 0
    removed_by_top_k: int = 0
    kept: int = 0
    images_with_pseudo_gt: int = 0
    images_in_shards: int = 0

    def add(self, other: "MergeCounts") -> None:
        for key, value in asdict(other).items():
            setattr(self, key, getattr(self, key) + value)


def row_to_annotation(row: dict) -> dict:
    """One kept candidate (a shard/store row as a dict) -> COCO annotation, as in pseudo_gt.json."""
    gt_iou = row["gt_iou"]
    return {
        "id": int(row["id"]), "image_id": int(row["image_id"]), "category_id": 1,
        "segmentation": {"size": [int(row["height"]), int(row["width"])], "counts": row["rle"]},
        "bbox": [float(v) for v in row["bbox"]], "area": float(row["area"]), "iscrowd": 0,
        "score": round(float(row["score"]), 6),
        "gt_iou": None if gt_iou is None else round(float(gt_iou), 6),
    }


def _open_shard(path: Path) -> pq.ParquetFile:
    if not path.is_file():
        raise InputError(f"shard {path} does not exist; run `ggn extract` for it first")
    try:
        pf = pq.ParquetFile(path)
    except Exception as e:
        raise InputError(f"shard {path} is not a readable parquet file ({e}); extract it again") from None
    missing = [n for n in SHARD_SCHEMA.names if n not in pf.schema_arrow.names]
    if missing:
        raise InputError(f"shard {path} lacks columns {missing}; it was not written by `ggn extract`")
    return pf


def check_shard_set(paths: list[Path], annotations: str | os.PathLike, annotations_sha256: str) -> None:
    """Refuse shards that are not one extraction run's complete set for `annotations` (whose content hash is
    given), from the `ggn.shard` metadata `ggn extract` writes (and `ggn rank-oln` keeps): shard counts that
    differ, a shard index twice or missing (1 of 2 shards), another annotation file. Shards without that metadata
    are taken with a warning."""
    from ggn.extract import META_SHARD

    metas = {}
    for p in paths:
        raw = (pq.read_schema(p).metadata or {}).get(META_SHARD)
        try:
            metas[p] = json.loads(raw) if raw else None
        except json.JSONDecodeError:
            metas[p] = None
    unlabelled = [str(p) for p, m in metas.items() if not isinstance(m, dict)]
    if unlabelled:
        log.warning("%d shard(s) carry no ggn.shard metadata (%s); cannot check that they are one run's complete "
                    "set", len(unlabelled), ", ".join(unlabelled[:3]))
    labelled = {p: m for p, m in metas.items() if isinstance(m, dict)}
    if not labelled:
        return
    counts = {int(m["num_shards"]) for m in labelled.values()}
    if len(counts) > 1:
        raise InputError(f"the shards were made with different --num-shards ({sorted(counts)}): "
                         + ", ".join(f"{p.name}: {m['shard']} of {m['num_shards']}" for p, m in labelled.items())
                         + "; merge the shards of one extraction run")
    n = counts.pop()
    indices = [int(m["shard"]) for m in labelled.values()]
    twice = sorted({i for i in indices if indices.count(i) > 1})
    if twice:
        raise InputError(f"shard index(es) {twice} of {n} given twice; pass each shard once")
    if not unlabelled:
        missing = sorted(set(range(n)) - set(indices))
        if missing:
            raise InputError(f"{len(missing)} of the {n} shards are missing (index {', '.join(map(str, missing[:10]))}"
                             f"{', ...' if len(missing) > 10 else ''}): merging {len(paths)} of {n} shards would "
                             f"leave those images without pseudo-GT; pass all {n} shards")
    for p, m in labelled.items():
        if m.get("annotations_sha256") not in (None, annotations_sha256):
            raise InputError(f"shard {p} was extracted from another annotation file than --annotations "
                             f"{annotations} (its content differs): a shard of another run; extract it again or "
                             "merge with the annotation file it was made from")
        if m.get("max_images") is not None:
            log.warning("shard %s holds only the first %s images of its share (--max-images): a smoke test", p,
                        m["max_images"])


def _top_k_per_image(table: pa.Table, top_k: int) -> pa.Table:
    """The best `top_k` rows by rank of each image; images are contiguous runs in `table`."""
    if table.num_rows == 0:
        return table
    ids = table["image_id"].to_numpy()
    ranks = table["rank"].to_numpy()
    starts = np.flatnonzero(np.r_[True, ids[1:] != ids[:-1]])
    group = np.cumsum(np.r_[True, ids[1:] != ids[:-1]]) - 1
    order = np.lexsort((ranks, group))
    position = np.arange(len(ids)) - starts[group[order]]
    return table.take(pa.array(order[position < top_k]))


def iter_kept(shards: list[Path], known_ids: np.ndarray, top_k: int, gt_iou_max: float | None,
              min_score: float | None, counts: MergeCounts, batch_rows: int = 65536,
              seen: np.ndarray | None = None) -> Iterator[pa.Table]:
    """Tables of kept rows, each holding every kept row of the images it contains, in shard order.

    `known_ids` (sorted) are the training images; a shard image outside them, or an image met twice
    (two shards, or non-contiguous rows), is an error naming the shard. `seen` (one flag per known id) carries
    the images met so far across calls.
    """
    if seen is None:
        seen = np.zeros(len(known_ids), dtype=bool)
    for path in shards:
        pf = _open_shard(path)
        carry: pa.Table | None = None
        last_id: int | None = None
        for batch in pf.iter_batches(batch_size=batch_rows, columns=SHARD_SCHEMA.names):
            table = pa.Table.from_batches([batch]).cast(SHARD_SCHEMA)
            n = table.num_rows
            if n == 0:
                continue
            counts.candidates_read += n
            ids = table["image_id"].to_numpy()
            run_ids = ids[np.r_[True, ids[1:] != ids[:-1]]]
            if last_id is not None and run_ids[0] == last_id:  # the image continues from the last batch
                run_ids = run_ids[1:]
            last_id = int(ids[-1])
            _mark_seen(run_ids, known_ids, seen, path)
            counts.images_in_shards += len(run_ids)

            gt_iou = table["gt_iou"]
            ok = pc.fill_null(pc.less(gt_iou, gt_iou_max), True) if gt_iou_max is not None else None
            if ok is not None:
                kept_gt = pc.sum(ok).as_py() or 0
                counts.removed_by_gt_iou += n - kept_gt
            else:
                kept_gt = n
            if min_score is not None:
                score_ok = pc.greater_equal(table["score"], min_score)
                both = pc.and_(ok, score_ok) if ok is not None else score_ok
                counts.removed_by_score += kept_gt - (pc.sum(both).as_py() or 0)
                ok = both
            if ok is not None:
                table = table.filter(ok)
            if carry is not None:
                table = pa.concat_tables([carry, table])
                carry = None
            if table.num_rows == 0:
                continue
            # The last image may go on in the next batch: hold its rows back until its run ends.
            kept_ids = table["image_id"].to_numpy()
            cut = len(kept_ids)
            while cut > 0 and kept_ids[cut - 1] == last_id:
                cut -= 1
            carry = table.slice(cut)
            if cut:
                yield _finish(table.slice(0, cut), top_k, counts)
        if carry is not None and carry.num_rows:
            yield _finish(carry, top_k, counts)


def _mark_seen(run_ids: np.ndarray, known_ids: np.ndarray, seen: np.ndarray, path: Path) -> None:
    if len(run_ids) == 0:
        return
    idx = np.searchsorted(known_ids, run_ids)
    idx_clipped = np.minimum(idx, len(known_ids) - 1)
    unknown = (idx >= len(known_ids)) | (known_ids[idx_clipped] != run_ids) if len(known_ids) else np.ones(len(run_ids), bool)
    if unknown.any():
        raise InputError(f"shard {path} has image {int(run_ids[unknown][0])}, which is not in --annotations; "
                         "merge shards extracted from the same annotation file")
    if seen[idx].any() or len(np.unique(idx)) != len(idx):
        dup = next(int(i) for i in run_ids if seen[np.searchsorted(known_ids, i)] or (run_ids == i).sum() > 1)
        raise InputError(f"image {dup} appears twice (again in shard {path}): shards overlap or were made "
                         "with different --num-shards; extract them again with the same settings")
    seen[idx] = True


def _finish(table: pa.Table, top_k: int, counts: MergeCounts) -> pa.Table:
    kept = _top_k_per_image(table, top_k)
    counts.removed_by_top_k += table.num_rows - kept.num_rows
    counts.kept += kept.num_rows
    if kept.num_rows:
        ids = kept["image_id"].to_numpy()
        counts.images_with_pseudo_gt += int(np.count_nonzero(np.r_[True, ids[1:] != ids[:-1]]))
    return kept


# ----------------------------------------------------------------------------------------------------
# Outputs


class StoreWriter:
    """Builds the per-image parquet store in a temporary folder; `close()` moves it into place."""

    def __init__(self, path: Path, num_partitions: int = NUM_PARTITIONS):
        self.path = Path(path)
        self.num_partitions = num_partitions
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.tmp = Path(tempfile.mkdtemp(prefix=f".{self.path.name}.", suffix=".tmp", dir=self.path.parent))
        self.tmp.chmod(plain_mode(folder=True))  # mkdtemp's 0700 would hide the store from collaborators
        self.spill_dir = self.tmp / "spill"
        self.spill_dir.mkdir()
        self.buffers: dict[int, list[pa.Table]] = {}
        self.buffered: dict[int, int] = {}
        self.writers: dict[int, pq.ParquetWriter] = {}

    def add(self, table: pa.Table) -> None:
        buckets = pc.remainder(table["image_id"], self.num_partitions).to_numpy()
        for k in np.unique(buckets):
            k = int(k)
            self.buffers.setdefault(k, []).append(table.filter(pa.array(buckets == k)))
            self.buffered[k] = self.buffered.get(k, 0) + int(np.count_nonzero(buckets == k))
            if self.buffered[k] >= SPILL_ROWS:
                self._spill(k)

    def _spill(self, k: int) -> None:
        if not self.buffers.get(k):
            return
        if k not in self.writers:
            self.writers[k] = pq.ParquetWriter(self.spill_dir / f"{k:03d}.parquet", STORE_SCHEMA)
        self.writers[k].write_table(pa.concat_tables(self.buffers.pop(k)))
        self.buffered[k] = 0

    def close(self) -> dict:
        for k in list(self.buffers):
            self._spill(k)
        for w in self.writers.values():
            w.close()
        rows = images = 0
        for k in sorted(self.writers):
            table = pq.read_table(self.spill_dir / f"{k:03d}.parquet").sort_by([("image_id", "ascending"),
                                                                                ("rank", "ascending")])
            rows += table.num_rows
            images += len(pc.unique(table["image_id"]))
            out = self.tmp / f"part={k:03d}" / "data.parquet"
            out.parent.mkdir()
            pq.write_table(table, out, row_group_size=ROW_GROUP_ROWS, write_statistics=True)
        shutil.rmtree(self.spill_dir)
        manifest = {"format": "ggn-pseudo-store", "version": 1, "num_partitions": self.num_partitions,
                    "partition": "image_id % num_partitions -> part=KKK/data.parquet",
                    "num_annotations": rows, "num_images": images}
        atomic_write_json(self.tmp / "manifest.json", manifest, indent=2)
        # Swap the finished folder into place; an older store is only removed once the new one is there.
        old = None
        if self.path.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{self.path.name}.", suffix=".old", dir=self.path.parent))
            os.replace(self.path, old / "store")
        os.replace(self.tmp, self.path)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
        return manifest

    def abort(self) -> None:
        for w in self.writers.values():
            with contextlib.suppress(Exception):
                w.close()
        shutil.rmtree(self.tmp, ignore_errors=True)


class PseudoStore:
    """Read side of the parquet store: one image's pseudo-GT annotations without loading the rest."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        manifest = read_json(self.path / "manifest.json", "pseudo-GT store manifest")
        if manifest.get("format") != "ggn-pseudo-store":
            raise InputError(f"{self.path} is not a pseudo-GT store written by `ggn merge --store`")
        self.num_partitions = int(manifest["num_partitions"])
        self.manifest = manifest
        self._index: dict[int, tuple[pq.FileMetaData, np.ndarray, np.ndarray] | None] = {}

    def _partition_file(self, k: int) -> Path:
        return self.path / f"part={k:03d}" / "data.parquet"

    def _partition(self, k: int):
        """Cached footer and per-row-group image id ranges of partition k (None when it is empty)."""
        if k not in self._index:
            path = self._partition_file(k)
            if not path.is_file():
                self._index[k] = None
            else:
                meta = pq.read_metadata(path)
                col = meta.schema.to_arrow_schema().get_field_index("image_id")
                lo = np.empty(meta.num_row_groups, dtype=np.int64)
                hi = np.empty(meta.num_row_groups, dtype=np.int64)
                for g in range(meta.num_row_groups):
                    stats = meta.row_group(g).column(col).statistics
                    lo[g], hi[g] = stats.min, stats.max
                self._index[k] = (meta, lo, hi)
        return self._index[k]

    def annotations_for(self, image_id: int) -> list[dict]:
        """The image's kept candidates as COCO annotation dicts (as in pseudo_gt.json), best first."""
        image_id = int(image_id)
        part = self._partition(image_id % self.num_partitions)
        if part is None:
            return []
        meta, lo, hi = part
        groups = np.flatnonzero((lo <= image_id) & (hi >= image_id)).tolist()
        if not groups:
            return []
        pf = pq.ParquetFile(self._partition_file(image_id % self.num_partitions), metadata=meta)
        table = pf.read_row_groups(groups)
        table = table.filter(pc.equal(table["image_id"], image_id)).sort_by("rank")
        return [row_to_annotation(r) for r in table.to_pylist()]

    def image_ids(self) -> list[int]:
        """Sorted ids of every image that has pseudo-GT in the store."""
        ids = [pq.read_table(self._partition_file(k), columns=["image_id"])["image_id"].to_numpy()
               for k in range(self.num_partitions) if self._partition_file(k).is_file()]
        return np.unique(np.concatenate(ids)).tolist() if ids else []


def parts_dir_for(out: Path) -> Path:
    """Where a merge keeps its per-shard parts until its outputs are written."""
    return out.with_name(out.name + ".parts")


def _remove_torn_writes(out: Path | None, store: Path | None) -> None:
    """Temporary files and folders of a merge killed while writing its outputs (atomic_open's `.NAME.*.tmp`,
    the store's `.NAME.*.tmp` / `.NAME.*.old` folders)."""
    for path in (out, store):
        if path is None or not path.parent.is_dir():
            continue
        for torn in [*path.parent.glob(f".{path.name}.*.tmp"), *path.parent.glob(f".{path.name}.*.old")]:
            log.info("removing %s, left by an interrupted merge", torn)
            shutil.rmtree(torn) if torn.is_dir() else torn.unlink(missing_ok=True)


class MergeParts:
    """Per-shard kept rows in `dir`: `part-NNNNN.parquet` and, written after it, `part-NNNNN.json`, the record that
    it is complete (the shard file and settings it was made from, and its counts)."""

    def __init__(self, folder: Path, settings: dict):
        self.dir = folder
        self.settings = settings
        if self.dir.is_dir():
            for tmp in self.dir.glob(".*.tmp"):  # a part torn by a kill
                tmp.unlink(missing_ok=True)

    def part_path(self, i: int) -> Path:
        return self.dir / f"part-{i:05d}.parquet"

    def _record_path(self, i: int) -> Path:
        return self.dir / f"part-{i:05d}.json"

    def _source(self, i: int, shard: Path) -> dict:
        st = shard.stat()
        return {"index": i, "shard": str(shard.absolute()), "size": st.st_size, "mtime_ns": st.st_mtime_ns,
                **self.settings}

    def load(self, i: int, shard: Path) -> MergeCounts | None:
        """The counts of shard i's part when it was made from this very shard file and settings, else None."""
        record, part = self._record_path(i), self.part_path(i)
        if not (record.is_file() and part.is_file()):
            return None
        try:
            saved = json.loads(record.read_text())
        except (OSError, json.JSONDecodeError):
            return None
        if saved.get("source") != self._source(i, shard):
            log.info("part %s was made from another shard file or settings: filtering %s again", part, shard)
            return None
        return MergeCounts(**saved["counts"])

    def write(self, i: int, shard: Path, tables: Iterator[pa.Table], counts: MergeCounts) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        self._record_path(i).unlink(missing_ok=True)
        with atomic_open(self.part_path(i), "wb") as f:
            with pq.ParquetWriter(f, SHARD_SCHEMA) as writer:
                for table in tables:
                    writer.write_table(table.cast(SHARD_SCHEMA))
        atomic_write_json(self._record_path(i), {"source": self._source(i, shard), "counts": asdict(counts)})

    def remove(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)


def merge_shards(shards: list[str | os.PathLike], annotations: str | os.PathLike, out: str | os.PathLike | None,
                 store: str | os.PathLike | None = None, top_k: int = 3, gt_iou_max: float | None = 0.5,
                 min_score: float | None = None, num_partitions: int = NUM_PARTITIONS,
                 after_part: Callable[[Path], None] | None = None) -> MergeCounts:
    """Filter and gather shards into `out` (pseudo_gt.json) and/or the parquet `store`; returns the counts.

    Resumable (see the module's docstring); `after_part(part_path)` is called after each shard's part is done
    (tests use it to interrupt a merge)."""
    from tqdm import tqdm

    if out is None and store is None:
        raise InputError("nothing to write: give --out, --store, or both")
    if top_k < 1:
        raise InputError(f"--top-k must be >= 1, got {top_k}")
    coco = read_json(annotations, "annotation file")
    if isinstance(coco, dict):  # only the image list matters here
        coco = {k: v for k, v in coco.items() if k != "annotations"}
    images = validate_coco(coco, annotations, annotations=False, categories=False)[0]["images"]
    del coco
    known_ids = np.unique(np.array([int(img["id"]) for img in images], dtype=np.int64))
    shard_paths = [Path(s) for s in shards]
    shard_rows = [_open_shard(p).metadata.num_rows for p in shard_paths]  # fails on a bad shard before any work
    annotations_sha256 = file_sha256(annotations)
    check_shard_set(shard_paths, annotations, annotations_sha256)

    anchor = Path(out if out is not None else store)
    _remove_torn_writes(Path(out) if out is not None else None, Path(store) if store is not None else None)
    parts = MergeParts(parts_dir_for(anchor), settings={
        "annotations_sha256": annotations_sha256, "top_k": top_k, "gt_iou_max": gt_iou_max,
        "min_score": min_score})
    counts = MergeCounts()
    seen = np.zeros(len(known_ids), dtype=bool)
    progress = tqdm(total=sum(shard_rows), unit="cand",
                    desc="merge", dynamic_ncols=True)
    reused = 0
    try:
        for i, path in enumerate(shard_paths):
            done = parts.load(i, path)
            if done is not None:  # filtered before a kill: only its images are checked again (one column)
                ids = pq.read_table(path, columns=["image_id"])["image_id"].to_numpy()
                if len(ids):
                    _mark_seen(ids[np.r_[True, ids[1:] != ids[:-1]]], known_ids, seen, path)
                part_counts = done
                reused += 1
            else:
                part_counts = MergeCounts()
                parts.write(i, path, iter_kept([path], known_ids, top_k, gt_iou_max, min_score, part_counts,
                                               seen=seen), part_counts)
            counts.add(part_counts)
            progress.update(shard_rows[i])
            if after_part is not None:
                after_part(parts.part_path(i))
    finally:
        progress.close()
    if reused:
        log.info("resumed: %d of %d shards were filtered before (parts in %s)", reused, len(shard_paths), parts.dir)

    writer = StoreWriter(Path(store), num_partitions) if store is not None else None
    next_id = 1
    try:
        with (atomic_open(out, "w") if out is not None else contextlib.nullcontext()) as f:
            if f is not None:
                f.write('{"images": ')
                json.dump(images, f)
                f.write(', "categories": ' + json.dumps(CATEGORIES) + ', "annotations": [')
            first = True
            for i in range(len(shard_paths)):
                for batch in pq.ParquetFile(parts.part_path(i)).iter_batches(batch_size=65536):
                    kept = pa.Table.from_batches([batch]).cast(SHARD_SCHEMA)
                    kept = kept.add_column(0, "id", pa.array(np.arange(next_id, next_id + kept.num_rows),
                                                             type=pa.int64()))
                    next_id += kept.num_rows
                    if writer is not None:
                        writer.add(kept.cast(STORE_SCHEMA))
                    if f is not None:
                        for row in kept.to_pylist():
                            f.write(("" if first else ", ") + json.dumps(row_to_annotation(row)))
                            first = False
            # The store is complete before pseudo_gt.json (the workflow's record that merge is done) appears.
            manifest = writer.close() if writer is not None else None
            if f is not None:
                f.write("]}\n")
    except BaseException as e:
        if writer is not None:
            writer.abort()
            if is_disk_full(e, writer.path):
                raise DiskFullError(store, e) from None
        raise
    parts.remove()

    log.info("read %d candidates of %d images (those with any candidate) from %d shards", counts.candidates_read,
             counts.images_in_shards, len(shard_paths))
    log.info("removed: %d with gt_iou >= %s, %s, %d beyond top-%d per image",
             counts.removed_by_gt_iou, gt_iou_max,
             "no score threshold" if min_score is None else f"{counts.removed_by_score} with score < {min_score}",
             counts.removed_by_top_k, top_k)
    log.info("kept %d pseudo-GT annotations on %d of %d training images",
             counts.kept, counts.images_with_pseudo_gt, len(images))
    if out is not None:
        log.info("wrote %s", out)
    if manifest is not None:
        log.info("wrote store %s (%d partitions)", store, manifest["num_partitions"])
    return counts


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--shards", nargs="+", required=True, help="extraction shard parquet files")
    parser.add_argument("--annotations", required=True,
                        help="training COCO file: its images become the images of pseudo_gt.json")
    parser.add_argument("--out", help="pseudo_gt.json (COCO); required unless --no-json")
    parser.add_argument("--store", help="also write a per-image parquet store in this folder")
    parser.add_argument("--no-json", action="store_true", help="write only the --store (huge sets)")
    parser.add_argument("--top-k", type=int, default=3, help="kept candidates per image, best rank first")
    parser.add_argument("--gt-iou-max", type=float, default=0.5,
                        help="keep candidates whose best IoU with annotated objects is below this")
    parser.add_argument("--min-score", type=float, default=None, help="also drop candidates scoring below this")
    parser.add_argument("--counts", help="also write the filter counts as JSON here")


def run(args: argparse.Namespace) -> int:
    if args.no_json and not args.store:
        raise InputError("--no-json needs --store (otherwise nothing would be written)")
    if not args.no_json and not args.out:
        raise InputError("give --out pseudo_gt.json (or --store DIR --no-json)")
    counts = merge_shards(args.shards, args.annotations, None if args.no_json else args.out, store=args.store,
                          top_k=args.top_k, gt_iou_max=args.gt_iou_max, min_score=args.min_score)
    if args.counts:
        atomic_write_json(args.counts, asdict(counts), indent=2)
    return 0
