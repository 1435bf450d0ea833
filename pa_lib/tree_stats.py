"""Per-node statistics and NMS on a higra hierarchy over superpixels, in NumPy and via the compiled kernels.

Every node of the hierarchy is a candidate mask (a union of leaf regions). Instead of drawing each
candidate, region statistics are summed up the tree: a pixel's contribution is added at its leaf
and removed at the first ancestor where it stops counting, and a subtree sum
(``hg.accumulate_and_add_sequential``) turns those differences into per-node totals.
"""
from __future__ import annotations

import higra as hg
import numpy as np

from . import _kernels


def children_of_binary_tree(tree: hg.Tree) -> np.ndarray:
    """int64 [num_internal, 2]: the two children of each internal node, in node order."""
    parents = tree.parents()
    order = np.argsort(parents[:-1], kind="stable")
    return order.reshape(-1, 2).astype(np.int64)


def leaf_intervals(tree: hg.Tree) -> tuple[np.ndarray, np.ndarray]:
    """(start, size) per node: its leaves occupy depth-first ranks [start, start + size).

    ``start[:num_leaves]`` is the depth-first rank of each leaf.
    """
    n = tree.num_vertices()
    nl = tree.num_leaves()
    # Leaf counts, not pixel areas (attribute_area would use a RAG's pixel areas when the tree has one).
    size = np.asarray(hg.accumulate_sequential(tree, np.ones(nl, np.int64), hg.Accumulators.sum), np.int64)
    start = [0] * n
    if n > nl:
        kids = children_of_binary_tree(tree).tolist()
        size_l = size.tolist()
        for p in range(n - 1, nl - 1, -1):
            a, b = kids[p - nl]
            s = start[p]
            start[a] = s
            start[b] = s + size_l[a]
    return np.asarray(start, np.int64), size


def ring_stats_numpy(labels: np.ndarray, values: np.ndarray, tree: hg.Tree, leaf_rank: np.ndarray) -> np.ndarray:
    """NumPy twin of ``_kernels.ring_stats`` (same [6, num_nodes] difference arrays)."""
    n = tree.num_vertices()
    h, w = labels.shape
    padded = np.pad(labels, 1, mode="edge")  # outside-image neighbours repeat the pixel: never a boundary
    neighbours = np.stack(
        [padded[:-2, 1:-1], padded[2:, 1:-1], padded[1:-1, :-2], padded[1:-1, 2:]]
    ).reshape(4, -1)
    flat = labels.ravel()
    idx = np.flatnonzero((neighbours != flat).any(0))
    out = np.zeros((6, n))
    if idx.size == 0:
        return out
    r = flat[idx]
    s = neighbours[:, idx]
    v = values.ravel()[idx].astype(np.float64)
    lca = hg.make_lca_fast(tree)
    top = lca.lca(np.tile(r, 4), s.ravel()).reshape(4, -1).max(0)
    ones = np.ones_like(v)
    out[0] = np.bincount(r, v, n) - np.bincount(top, v, n)
    out[1] = np.bincount(r, ones, n) - np.bincount(top, ones, n)
    out[4] = np.bincount(r, v, n)
    out[5] = np.bincount(r, ones, n)
    cross = np.vstack([r[None], s])
    rank = leaf_rank[cross]
    leaf_at_rank = np.empty_like(leaf_rank)
    leaf_at_rank[leaf_rank] = np.arange(len(leaf_rank))
    cross = leaf_at_rank[np.sort(rank, axis=0)]
    consecutive = lca.lca(cross[:-1].ravel(), cross[1:].ravel())
    v5, v4 = np.tile(v, 5), np.tile(v, 4)
    out[2] = np.bincount(cross.ravel(), v5, n) - np.bincount(consecutive, v4, n)
    out[3] = np.bincount(cross.ravel(), minlength=n) - np.bincount(consecutive, minlength=n)
    return out


def ring_stats(labels, values, tree, leaf_rank, use_kernels: bool = True) -> np.ndarray:
    """Per-node difference arrays (inner, dilation, boundary-pixel sums and counts), see _kernels.ring_stats."""
    if use_kernels:
        return _kernels.ring_stats(
            np.ascontiguousarray(labels, np.int64),
            np.ascontiguousarray(values, np.float64),
            np.ascontiguousarray(tree.parents(), np.int64),
            np.ascontiguousarray(leaf_rank, np.int64),
        )
    return ring_stats_numpy(labels, values, tree, leaf_rank)


def subtree_sums(tree: hg.Tree, diffs: np.ndarray) -> np.ndarray:
    """[k, num_nodes]: each row of ``diffs`` summed over every node's subtree."""
    nl = tree.num_leaves()
    d = np.ascontiguousarray(diffs.T)
    out = hg.accumulate_and_add_sequential(tree, d, d[:nl], hg.Accumulators.sum)
    return np.asarray(out).T


def tree_nms_numpy(order, area, tree: hg.Tree, iou_threshold: float, top_k: int) -> np.ndarray:
    """NumPy twin of ``_kernels.tree_nms``."""
    lca = hg.make_lca_fast(tree)
    kept: list[int] = []
    for c in np.asarray(order).tolist():
        if len(kept) >= top_k:
            break
        if kept:
            k = np.asarray(kept)
            common = lca.lca(k, np.full(len(k), c))
            ratio = np.where(common == k, area[c] / area[k], np.where(common == c, area[k] / area[c], 0.0))
            if (ratio > iou_threshold).any():
                continue
        kept.append(c)
    return np.asarray(kept, np.int64)


def tree_nms(order, area, tree, iou_threshold: float, top_k: int, use_kernels: bool = True) -> np.ndarray:
    """Greedy region NMS over nested-or-disjoint tree nodes, best first; returns kept node ids."""
    if use_kernels:
        return _kernels.tree_nms(
            np.ascontiguousarray(order, np.int64),
            np.ascontiguousarray(area, np.float64),
            np.ascontiguousarray(tree.parents(), np.int64),
            float(iou_threshold),
            int(top_k),
        )
    return tree_nms_numpy(order, area, tree, iou_threshold, top_k)
