"""The reference's grouping step for step: a slow twin of Generic-Grouping's extraction, for the bench only.

Written for this project from the semantics of facebookresearch/Generic-Grouping (read at 8677ee0):
``pa_lib/evaluate_helper.py`` ``generate_pa_proposals`` (line numbers below as read there) with the
extraction settings of ``configs/pairwise_affinity/pa_extract.py`` (edge_thresh 0, join_thresh 1,
rank_method 3, nms 0.2, use_orientation 1, use_globalization 0.5, use_new_affinity False,
filter_by_edge_method 2 at 0.9, min_component_size 0), and ``tools/extract_pa_masks.py``'s top 20.

Step by step, as the reference does it (``a2m`` = pa_lib/affinity2mask.py, ``rag`` = pa_lib/rag.py,
``eh`` = pa_lib/evaluate_helper.py):

- potential: the minimum over the affinity channels (eh ``generate_pa_proposals``);
- markers: skimage ``peak_local_max`` with a 20x20 footprint (scikit-image 0.18-0.19 semantics,
  the last versions with ``skimage.future.graph``, which a2m imports), labelled 4-connected, kept
  where potential > 0 (a2m ``construct_finest_partition_watershed``);
- superpixels: skimage 0.19's ``watershed(-potential, markers, connectivity=2)``: a heap of
  (value, age), every neighbour labelled when pushed, with its own value;
- boundaries re-weighted by orientation (triangle filter, second differences, a2m
  ``compute_edge_orientations``) and globalised with 16 eigenvectors of the *pixel* graph
  (a2m ``get_globalized_boundary``, shift-invert at sigma 0), mixed 50/50;
- region graph: 8-connected, each boundary pixel pairs its label with the smallest and the largest
  label around it, edge weight the mean boundary over those pixels (rag ``rag_boundary``);
- hierarchy: greedy merging of the lowest edge while below 1.0, new edge the plain mean
  (w1 + w2) / 2, new node ids max + 1, heap ties by (weight, node, node) (rag ``merge_hierarchical``,
  ``avg_weight``, ``_rename_node``); every node a candidate (a2m ``hierarchy2segments``);
- each candidate drawn as a full mask, dropped when its image-edge pixels exceed 0.9 x its inner
  contour, scored by thick-boundary mean minus interior mean of the raw potential, sorted (stable),
  region NMS at IoU 0.2 counted on superpixel sizes, score 1 - value, first 20.

Ties between equal floating-point keys are broken as the reference's Python code breaks them; the
one place that cannot be reproduced without scikit-image's own heap is the order among marker
pixels of exactly equal value (broken here by pixel index, as in ``pa_lib._kernels.flood_watershed``).
Seconds per 500x375 map, one core: about 2 to 6 (the eigen-solve and the per-candidate masks).
"""
from __future__ import annotations

import heapq

import numpy as np
import scipy.signal
import scipy.sparse
import scipy.sparse.linalg
from scipy import ndimage as ndi

EXTRACT_SETTINGS = dict(edge_thresh=0.0, join_thresh=1.0, nms=0.2, use_orientation=True, use_globalization=0.5,
                        filter_by_edge_thresh=0.9, footprint=20, top_k=20)


# --- scikit-image 0.19 building blocks (the semantics a2m relied on) --------------------------------------------

def peak_local_max_019(image: np.ndarray, footprint: np.ndarray) -> np.ndarray:
    """[K,2] peak coordinates as skimage 0.19 ``peak_local_max(image, footprint=...)`` with every other default."""
    image_max = ndi.maximum_filter(image, footprint=footprint, mode="nearest")
    mask = image == image_max
    if mask.all():  # a trivial image has no peak
        return np.zeros((0, 2), np.int64)
    mask &= image > image.min()  # threshold_abs defaults to the minimum
    # exclude_border=True takes min_distance (1) as the border width.
    mask[:1] = mask[-1:] = False
    mask[:, :1] = mask[:, -1:] = False
    coords = np.transpose(np.nonzero(mask))
    order = np.argsort(-image[mask], kind="stable")  # no spacing is enforced at min_distance 1
    return coords[order]


def watershed_019(image: np.ndarray, markers: np.ndarray) -> np.ndarray:
    """skimage 0.19 ``watershed(image, markers, connectivity=2)`` (no mask, no compactness, no lines), in Python."""
    h, w = image.shape
    flat = image.astype(np.float64).ravel().tolist()
    out = markers.astype(np.int64).ravel().copy()
    heap = [(flat[i], 0, i) for i in np.flatnonzero(out).tolist()]
    heapq.heapify(heap)
    offsets = [(-1, -1), (-1, 0), (-1, 1), (0, -1), (0, 1), (1, -1), (1, 0), (1, 1)]
    age = 0
    while heap:
        _, _, p = heapq.heappop(heap)
        i, j = divmod(p, w)
        label = out[p]
        for di, dj in offsets:
            qi, qj = i + di, j + dj
            if 0 <= qi < h and 0 <= qj < w:
                q = qi * w + qj
                if out[q] == 0:
                    out[q] = label
                    age += 1
                    heapq.heappush(heap, (flat[q], age, q))
    return out.reshape(h, w)


def find_boundaries(labels: np.ndarray, mode: str = "thick") -> np.ndarray:
    """skimage ``find_boundaries(labels, connectivity=1, mode)``, 'thick' or 'inner' (the image edge is no boundary)."""
    lab = labels.astype(np.uint8) if labels.dtype == bool else labels
    cross = ndi.generate_binary_structure(2, 1)
    boundaries = ndi.grey_dilation(lab, footprint=cross) != ndi.grey_erosion(lab, footprint=cross)
    if mode == "inner":
        boundaries &= lab != 0
    return boundaries


# --- a2m: markers, superpixels, orientation, globalization ------------------------------------------------------

def finest_partition(potential: np.ndarray, edge_thresh: float = 0.0, footprint: int = 20) -> np.ndarray | None:
    sure_fg = (potential > edge_thresh * potential.max()).astype(np.float32)
    coords = peak_local_max_019(potential, np.ones((footprint, footprint)))
    mask = np.zeros(potential.shape, bool)
    mask[tuple(coords.T)] = True
    markers, _ = ndi.label(mask)
    markers = (markers * sure_fg).astype(np.int64)
    if len(np.unique(markers)) < 2:
        return None
    return watershed_019(-potential, markers)


def _triangle_kernel(length: int) -> np.ndarray:
    r = np.arange(length)
    k1 = (length + 1 - np.abs(r - r[::-1])) / 2
    k2 = np.outer(k1, k1)
    return k2 / k2.sum()


def edge_orientations(edge_map: np.ndarray) -> np.ndarray:
    smooth = scipy.signal.convolve2d(edge_map, _triangle_kernel(9), "same")
    second = np.array([[-1, 2, -1]])
    dy = scipy.signal.convolve2d(smooth, second, "same")
    dx = scipy.signal.convolve2d(smooth, second.T, "same")
    flip = scipy.signal.convolve2d(smooth, np.array([[1, 0, -1], [0, 0, 0], [-1, 0, 1]]), "same") > 0
    dy[flip] = -dy[flip]
    return np.mod(np.arctan2(dy, dx), np.pi)


def globalized_boundary(boundary: np.ndarray, nvec: int = 16, gamma: float = 0.12) -> np.ndarray:
    aff = np.exp(-boundary / gamma)
    h, w = aff.shape
    n = aff.size
    idx = np.arange(n).reshape(h, w)
    hor = np.minimum(aff[:, 1:], aff[:, :-1]).ravel()
    ver = np.minimum(aff[1:], aff[:-1]).ravel()
    rows = np.concatenate([np.arange(n), idx[:, 1:].ravel(), idx[:, :-1].ravel(), idx[:-1].ravel(), idx[1:].ravel()])
    cols = np.concatenate([np.arange(n), idx[:, :-1].ravel(), idx[:, 1:].ravel(), idx[1:].ravel(), idx[:-1].ravel()])
    data = np.concatenate([np.ones(n), hor, hor, ver, ver])
    affinity = scipy.sparse.csr_matrix((data, (rows, cols)), shape=(n, n), dtype=np.float64)
    degree = np.ones_like(aff, dtype=np.float64)
    vb = np.minimum(aff[1:], aff[:-1])
    hb = np.minimum(aff[:, 1:], aff[:, :-1])
    degree[1:] += vb
    degree[:-1] += vb
    degree[:, 1:] += hb
    degree[:, :-1] += hb
    diag = scipy.sparse.csr_matrix((degree.ravel(), (np.arange(n), np.arange(n))), shape=(n, n))
    vals, vecs = scipy.sparse.linalg.eigsh(A=diag - affinity, M=diag, k=nvec, which="LM", sigma=0)
    vecs, vals = vecs[:, 1:], vals[1:]
    lo, hi = vecs.min(0), vecs.max(0)
    nv = ((vecs - lo) / (hi - lo)).reshape(h, w, -1) / np.sqrt(vals)
    dh = np.abs(nv[:, :-1] - nv[:, 1:])
    dv = np.abs(nv[:-1] - nv[1:])
    out = np.zeros_like(nv)
    out[1:] = np.maximum(dv, out[1:])
    out[:-1] = np.maximum(dv, out[:-1])
    out[:, :-1] = np.maximum(dh, out[:, :-1])
    out[:, 1:] = np.maximum(dh, out[:, 1:])
    return np.power(out.sum(2), 1 / np.sqrt(2))


# --- rag: region graph and merging (networkx's dict-of-dicts order, reproduced with plain dicts) ----------------

class _Graph:
    """The parts of networkx.Graph the reference's RAG uses, with the same insertion-ordered adjacency."""

    def __init__(self):
        self.adj: dict[int, dict[int, dict]] = {}
        self.data: dict[int, dict] = {}
        self.max_id = 0
        self.removed: list[dict] = []

    def add_node(self, n):
        if n not in self.adj:
            self.adj[n] = {}
            self.data[n] = {}

    def add_edge(self, u, v, attrs):
        self.add_node(u)
        self.add_node(v)
        d = self.adj[u].get(v, {})
        d.update(attrs)
        self.adj[u][v] = d
        self.adj[v][u] = d

    def remove_node(self, n):
        self.removed.append(self.data[n])
        for nbr in self.adj[n]:
            del self.adj[nbr][n]
        del self.adj[n]
        del self.data[n]

    def edges(self):
        seen = set()
        for n, nbrs in self.adj.items():
            for nbr, d in nbrs.items():
                if nbr not in seen:
                    yield n, nbr, d
            seen.add(n)


def rag_boundary(labels: np.ndarray, edge_map: np.ndarray) -> _Graph | None:
    conn = ndi.generate_binary_structure(2, 2)
    eroded = ndi.grey_erosion(labels, footprint=conn)
    dilated = ndi.grey_dilation(labels, footprint=conn)
    b0, b1 = eroded != labels, dilated != labels
    small = np.concatenate((eroded[b0], labels[b1]))
    large = np.concatenate((labels[b0], dilated[b1]))
    if large.size == 0:
        return None
    n = int(large.max()) + 1
    counts = scipy.sparse.coo_matrix((np.ones(len(small)), (small, large)), shape=(n, n)).tocsr()
    sums = scipy.sparse.coo_matrix((np.concatenate((edge_map[b0], edge_map[b1])), (small, large)),
                                   shape=(n, n)).tocsr()
    counts.sort_indices()
    sums.sort_indices()
    rag = _Graph()
    for i in range(n):
        for k in range(sums.indptr[i], sums.indptr[i + 1]):
            rag.add_edge(i, int(sums.indices[k]), {"weight": float(sums.data[k] / counts.data[k])})
    for node in rag.adj:
        rag.data[node]["labels"] = [node]
    rag.max_id = max(rag.adj)
    return rag


def merge_hierarchical(rag: _Graph, thresh: float) -> list[set]:
    """Every node of the merge hierarchy as a set of superpixel labels, in the reference's order."""
    heap = []
    for n1, n2, d in rag.edges():
        item = [d["weight"], n1, n2, True]
        heapq.heappush(heap, item)
        d["heap item"] = item
    while heap and heap[0][0] < thresh:
        _, n1, n2, valid = heapq.heappop(heap)
        if not valid:
            continue
        for nbr in rag.adj[n1]:
            rag.adj[n1][nbr]["heap item"][3] = False
        for nbr in rag.adj[n2]:
            rag.adj[n2][nbr]["heap item"][3] = False
        # Rename n2 to a new id (its old record goes to the removed list), then merge n1 into it.
        new = rag.max_id + 1
        rag.add_node(new)
        rag.data[new].update(rag.data[n2])
        for nbr in list(rag.adj[n2]):
            rag.add_edge(nbr, new, {"weight": rag.adj[n2][nbr]["weight"]})
            rag.max_id = max(nbr, new, rag.max_id)
        rag.remove_node(n2)
        for nbr in (set(rag.adj[n1]) | set(rag.adj[new])) - {n1, new}:
            w1 = rag.adj[nbr][n1]["weight"] if n1 in rag.adj[nbr] else np.inf
            w2 = rag.adj[nbr][new]["weight"] if new in rag.adj[nbr] else np.inf
            w = w2 if w1 == np.inf else w1 if w2 == np.inf else (w1 + w2) / 2
            rag.add_edge(nbr, new, {"weight": w})
        rag.data[new]["labels"] = rag.data[n1]["labels"] + rag.data[new]["labels"]
        rag.remove_node(n1)
        for nbr in rag.adj[new]:
            d = rag.adj[new][nbr]
            if "heap item" in d:
                d["heap item"][3] = False
            item = [d["weight"], new, nbr, True]
            d["heap item"] = item
            heapq.heappush(heap, item)
    return [set(d["labels"]) for d in rag.removed] + [set(d["labels"]) for d in rag.data.values()]


# --- eh: filtering, ranking, NMS ---------------------------------------------------------------------------------

def _rank3(mask: np.ndarray, potential: np.ndarray) -> float:
    boundary = find_boundaries(mask, "thick")
    inner = mask & ~boundary
    if boundary.sum() == 0 or inner.sum() == 0:
        return 100.0
    # Whole-image products summed in the potential's dtype, as eh compute_ranking_score (rank_method 3).
    return float(np.true_divide((potential * boundary).sum(), boundary.sum())
                 - np.true_divide((potential * inner).sum(), inner.sum()))


def _edge_filtered(mask: np.ndarray, thresh: float) -> bool:
    laps = mask[0].sum() + mask[-1].sum() + mask[:, 0].sum() + mask[:, -1].sum()
    return find_boundaries(mask, "inner").sum() * thresh < laps


def hierarchy(potential: np.ndarray, settings: dict | None = None):
    """(superpixel labels, candidate segments as label sets) or (None, None), as a2m potential2masks_ucm_hierarchy."""
    s = {**EXTRACT_SETTINGS, **(settings or {})}
    labels = finest_partition(potential, s["edge_thresh"], s["footprint"])
    if labels is None:
        return None, None
    new_potential = potential  # float32 as the network's output, so sums round as the reference's do
    wt_boundaries = find_boundaries(labels, "thick")
    if s["use_orientation"]:
        pa_boundaries = 1 - new_potential
        align = np.abs(np.cos(edge_orientations(wt_boundaries.astype(np.float64)) - edge_orientations(pa_boundaries)))
        new_potential = 1 - align * wt_boundaries * pa_boundaries
    if s["use_globalization"]:
        local = 1 - new_potential
        glob = globalized_boundary(1 - new_potential)
        glob = glob / glob.max()
        new_potential = 1 - ((1.0 - s["use_globalization"]) * local + glob * s["use_globalization"])
    rag = rag_boundary(labels, 1 - new_potential)
    if rag is None:
        return None, None
    return labels, merge_hierarchical(rag, s["join_thresh"])


def propose(affinity, settings: dict | None = None) -> tuple[np.ndarray, np.ndarray]:
    """masks bool [N,H,W] and scores float32 [N], best first, N <= top_k: the reference's extraction of one map."""
    s = {**EXTRACT_SETTINGS, **(settings or {})}
    a = np.asarray(affinity, np.float32)
    potential = np.min(a, axis=0) if a.ndim == 3 else a
    h, w = potential.shape
    labels, segments = hierarchy(potential, s)
    if labels is None:
        return np.zeros((0, h, w), bool), np.zeros(0, np.float32)
    values, masks = {}, {}
    for i, seg in enumerate(segments):
        mask = np.isin(labels, list(seg))
        if _edge_filtered(mask, s["filter_by_edge_thresh"]):
            continue
        masks[i] = mask
        values[i] = _rank3(mask, potential)
    order = [k for k, _ in sorted(values.items(), key=lambda item: item[1])]
    if s["nms"] > 0:
        ids, counts = np.unique(labels, return_counts=True)
        size = dict(zip(ids.tolist(), counts.tolist()))
        removed = set()
        for i, cur in enumerate(order[1:]):
            for prev in order[: i + 1]:
                if prev in removed:
                    continue
                inter = sum(size[x] for x in segments[cur] & segments[prev])
                union = sum(size[x] for x in segments[cur] | segments[prev])
                if inter / union > s["nms"]:
                    removed.add(cur)
                    break
        order = [k for k in order if k not in removed]
    order = order[: s["top_k"]]
    if not order:
        return np.zeros((0, h, w), bool), np.zeros(0, np.float32)
    return np.stack([masks[k] for k in order]), np.array([1 - values[k] for k in order], np.float32)
