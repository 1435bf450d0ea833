# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""Compiled kernels for pa_lib: per-node boundary-ring statistics and tree NMS (loops no library offers).

Both rely on higra's node numbering: a parent always has a larger index than its children and the
root is the last node (its own parent), so walking up from the smaller of two nodes finds their
lowest common ancestor without depth tables. pa_lib/tree_stats.py holds the NumPy versions that
compute the same numbers; bench/bench_propose.py times the two side by side.
"""
import numpy as np
cimport numpy as cnp


cdef inline Py_ssize_t _lca(const cnp.int64_t[:] parent, Py_ssize_t a, Py_ssize_t b) noexcept nogil:
    while a != b:
        if a < b:
            a = parent[a]
        else:
            b = parent[b]
    return a


cdef inline bint _is_ancestor(const cnp.int64_t[:] parent, Py_ssize_t a, Py_ssize_t b) noexcept nogil:
    """True if node a is b or one of b's ancestors."""
    while b < a:
        b = parent[b]
    return b == a


def ring_stats(const cnp.int64_t[:, :] labels, const double[:, :] values,
               const cnp.int64_t[:] parent, const cnp.int64_t[:] leaf_rank):
    """Per-node difference arrays for inner-ring, dilation and boundary-pixel sums and counts.

    labels: leaf (region) index of every pixel; values: the quantity to average (the potential);
    leaf_rank: position of each leaf in a depth-first order of the tree. Only pixels that have a
    4-neighbour in another region contribute. Returns six float64 arrays of length len(parent):
    inner_sum, inner_cnt, dil_sum, dil_cnt, bpix_sum, bpix_cnt; summing each over a node's subtree
    (higra accumulate_and_add_sequential) gives, for that node's mask:
      inner: pixels of the mask with a 4-neighbour outside it,
      dil:   boundary pixels of the 4-dilated mask,
      bpix:  boundary pixels inside the mask,
    so the outer ring is dil - bpix and the thick ring is inner + outer.
    """
    cdef Py_ssize_t h = labels.shape[0], w = labels.shape[1], n = parent.shape[0]
    out = np.zeros((6, n), dtype=np.float64)
    cdef double[:, :] o = out
    cdef Py_ssize_t i, j, k, m, q, r, s, top, l, tmp
    cdef Py_ssize_t xs[5]
    cdef double v
    cdef bint differs
    with nogil:
        for i in range(h):
            for j in range(w):
                r = labels[i, j]
                xs[0] = r
                m = 1
                if i > 0:
                    xs[m] = labels[i - 1, j]; m += 1
                if i + 1 < h:
                    xs[m] = labels[i + 1, j]; m += 1
                if j > 0:
                    xs[m] = labels[i, j - 1]; m += 1
                if j + 1 < w:
                    xs[m] = labels[i, j + 1]; m += 1
                differs = False
                for k in range(1, m):
                    if xs[k] != r:
                        differs = True
                if not differs:
                    continue
                v = values[i, j]
                # Inner ring: the pixel is on the contour of every node from its leaf up to (not
                # including) the highest common ancestor with a neighbour.
                top = r
                for k in range(1, m):
                    l = _lca(parent, r, xs[k])
                    if l > top:
                        top = l
                o[0, r] += v; o[1, r] += 1.0
                o[0, top] -= v; o[1, top] -= 1.0
                o[4, r] += v; o[5, r] += 1.0
                # Dilation: union of the root paths of all leaves in the cross. Sorted by depth-first
                # rank, adding each leaf and removing the LCA of consecutive leaves counts it once.
                for k in range(1, m):
                    tmp = xs[k]
                    q = k - 1
                    while q >= 0 and leaf_rank[xs[q]] > leaf_rank[tmp]:
                        xs[q + 1] = xs[q]
                        q -= 1
                    xs[q + 1] = tmp
                for k in range(m):
                    o[2, xs[k]] += v; o[3, xs[k]] += 1.0
                for k in range(m - 1):
                    l = _lca(parent, xs[k], xs[k + 1])
                    o[2, l] -= v; o[3, l] -= 1.0
    return out


def tree_nms(const cnp.int64_t[:] order, const double[:] area, const cnp.int64_t[:] parent,
             double iou_threshold, Py_ssize_t top_k):
    """Greedy NMS over tree nodes given best-first ``order``; returns kept nodes (at most top_k).

    Two nodes of a hierarchy are nested or disjoint, so their IoU is small/large area when one
    contains the other and 0 otherwise.
    """
    cdef Py_ssize_t m = order.shape[0], n_kept = 0, i, k, c, kk
    cdef double iou
    cdef bint keep
    kept = np.empty(min(m, max(top_k, 0)), dtype=np.int64)
    cdef cnp.int64_t[:] kv = kept
    with nogil:
        for i in range(m):
            if n_kept >= top_k:
                break
            c = order[i]
            keep = True
            for k in range(n_kept):
                kk = kv[k]
                iou = 0.0
                if _is_ancestor(parent, kk, c):
                    iou = area[c] / area[kk]
                elif _is_ancestor(parent, c, kk):
                    iou = area[kk] / area[c]
                if iou > iou_threshold:
                    keep = False
                    break
            if keep:
                kv[n_kept] = c
                n_kept += 1
    return kept[:n_kept]
