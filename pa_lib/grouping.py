"""Grouping: predicted affinity -> superpixels -> boundary hierarchy -> ranked, NMS-filtered candidate masks.

Follows the GGN extraction (facebookresearch/Generic-Grouping, pa_lib/affinity2mask.py, rag.py and
evaluate_helper.py, config pa_extract.py): potential = min over affinity channels; markers as skimage's
peak_local_max (20 px footprint, image border excluded); 8-connected flooding of the unquantised
potential from them; boundaries re-weighted by orientation agreement and mixed 50/50 with a spectral
boundary from 16 eigenvectors; greedy merging of the lowest region edge below join_thresh, the merged
edge the plain mean (w1 + w2) / 2 of the two, every node a candidate; border-hugging candidates
dropped (edge overlap > 0.9 x contour); ranked by mean thick-ring potential minus mean interior
potential; region NMS at IoU 0.2; top 20. bench/grouping_twin.py is the reference step for step
(slow); docs/grouping.md measures how far this fast version agrees with it.

Differences from the reference, for speed: the spectral problem is solved on the region adjacency
graph of the superpixels (the Galerkin projection of the pixel problem onto piecewise-constant
functions) instead of the pixel graph, so the spectral part of a region edge is one value per
region pair where the reference averages a per-pixel spectral boundary; the ring is counted on the
thick 4-connected boundary exactly, but accumulated along the tree instead of drawing every
candidate mask. With globalization off, the top 20 equal the twin's mask for mask on the maps tried. Four additions, off by default (the
defaults are the paper's, ``PAPER_SETTINGS``) and on together in ``EXTENDED_SETTINGS``, because
they raise recall on synthetic maps: components of high
potential without a window maximum get their own marker (``seed_threshold``); candidates covering
over half the image edge are dropped (``max_border_fraction``) (together 0.936 -> 0.956 at
500x375, 5-20 objects); the image edge counts as part of a candidate's ring
(``edge_in_ring``, see ``ring_masks``); and a candidate's score is lowered by the strongest
contour inside it (``internal_penalty`` x the highest merge altitude in its subtree, the UCM
level of its strongest internal boundary), so a union of an object with a neighbour across a
strong contour no longer outranks, and NMS-suppresses, the object itself. Recall@0.5 of the top
20 on 64 maps (500x375, 5-20 objects, seeds 0-15), orientation + globalization 0.5: 0.962
without the last two, 0.987 with edge_in_ring, 0.989 with both (0.970 -> 0.988 on seeds 16-31),
measured with the earlier average-linkage merging and 4-connected flooding.
"""
from __future__ import annotations

from functools import lru_cache

import higra as hg
import numpy as np
import scipy.linalg
import scipy.sparse
import scipy.sparse.linalg
from scipy import ndimage as ndi

from . import _kernels, tree_stats

RANKINGS = ("boundary_minus_interior", "outer_boundary", "interior", "ncut")

# The paper's extraction settings: Generic-Grouping configs/pairwise_affinity/pa_extract.py, the `pa_to_masks`
# dict (edge_thresh 0.0, rank_method 3, nms 0.2, use_orientation 1, use_globalization 0.5,
# filter_by_edge_method 2 at 0.9, min_component_size 0), with the spectral constants of pa_lib/affinity2mask.py.
# These are propose()'s defaults.
PAPER_SETTINGS = dict(
    footprint=20,  # local-maximum window (px) for watershed markers
    marker_threshold=0.0,  # markers only where potential > this x max potential ("edge_thresh")
    seed_threshold=None,  # addition: also seed every component of potential > this that has no marker
    orientation=True,  # re-weight boundaries by orientation agreement ("use_orientation")
    globalization=0.5,  # weight of the spectral boundary ("use_globalization"); 0 disables
    n_eigenvectors=16,  # eigenvectors of the spectral boundary (the first, constant, one is dropped)
    affinity_gamma=0.12,  # spectral affinity = exp(-boundary / gamma)
    ranking="boundary_minus_interior",  # one of RANKINGS ("rank_method" 3)
    min_size=0,  # drop candidates smaller than this many pixels ("min_component_size")
    max_size_fraction=1.0,  # drop candidates larger than this fraction of the image
    border_thresh=0.9,  # drop if pixels on the image edge > this x contour length; 0/None disables
    max_border_fraction=None,  # addition: drop if the candidate covers more than this fraction of the image edge
    edge_in_ring=False,  # addition: the image edge is an open part of a candidate's contour (ring samples)
    internal_penalty=0.0,  # addition: score minus this x the highest merge altitude inside the candidate
    join_thresh=1.0,  # merge while the lowest region edge is below this ("join_thresh"); the unmerged are no candidates
    nms=0.2,  # region NMS IoU; 0/None disables
    use_kernels=True,  # compiled kernels (True) or NumPy/higra twins (False): same statistics and NMS;
    # higra's seeded watershed (a minimum spanning forest) may cut plateaus and saddles differently from
    # the flooding, so superpixels can differ slightly
)

# This project's four additions (module docstring), measured on synthetic maps; `grouping: extended`.
ADDITIONS = dict(seed_threshold=0.5, max_border_fraction=0.5, edge_in_ring=True, internal_penalty=0.3)
EXTENDED_SETTINGS = {**PAPER_SETTINGS, **ADDITIONS}
GROUPINGS = {"paper": PAPER_SETTINGS, "extended": EXTENDED_SETTINGS}
DEFAULTS = PAPER_SETTINGS


def potential_from_affinity(affinity) -> np.ndarray:
    """float32 [H,W] in [0,1]: minimum over channels of a [C,H,W] (or the [H,W] itself) affinity map."""
    a = np.asarray(affinity, dtype=np.float32)
    if a.ndim == 3:
        if a.shape[0] == 0:
            raise ValueError("affinity has 0 channels; expected float32 [C,H,W] with C >= 1 or [H,W]")
        a = a.min(axis=0)
    elif a.ndim != 2:
        raise ValueError(f"affinity must be [C,H,W] or [H,W], got shape {a.shape}")
    return np.clip(np.nan_to_num(a, nan=0.0), 0.0, 1.0)


@lru_cache(maxsize=8)
def _grid(shape: tuple[int, int]):
    graph = hg.get_4_adjacency_graph(shape)
    src, dst = graph.edge_list()
    return graph, src.astype(np.int64), dst.astype(np.int64)


DENSE_EIGEN_MAX = 200  # region graphs up to this size use a dense eigensolver, larger ones shift-invert Lanczos


def reference_markers(potential: np.ndarray, footprint: int = 20, marker_threshold: float = 0.0):
    """int64 [H,W] marker labels 1..n (0 elsewhere) and n, as the reference picks them.

    Generic-Grouping pa_lib/affinity2mask.py:163-190: skimage ``peak_local_max(potential,
    footprint=ones((20, 20)))`` with its defaults (scikit-image 0.18-0.19: a maximum filter with
    mode 'nearest', peaks strictly above the image minimum, a 1-pixel image border excluded, no
    plateau thinning at min_distance 1, none on a constant image), labelled 4-connected
    (``ndi.label``), and kept only where potential > ``marker_threshold`` x its maximum (edge_thresh).
    """
    size = max(int(footprint), 1)
    peaks = potential == ndi.maximum_filter(potential, size=size, mode="nearest")
    if peaks.all():
        return np.zeros(potential.shape, np.int64), 0
    peaks &= potential > potential.min()
    peaks[:1] = peaks[-1:] = False
    peaks[:, :1] = peaks[:, -1:] = False
    markers, _ = ndi.label(peaks)
    markers[potential <= marker_threshold * potential.max()] = 0
    # Relabel 1..n: a label dropped by the threshold leaves no gap.
    kept = np.unique(markers[markers > 0])
    lookup = np.zeros(int(markers.max()) + 1, np.int64)
    lookup[kept] = np.arange(1, len(kept) + 1)
    return lookup[markers], len(kept)


def oversegment(
    potential: np.ndarray, footprint: int = 20, marker_threshold: float = 0.0, seed_threshold=0.5, use_kernels=True
):
    """int64 [H,W] superpixel index 0..R-1 (seeded watershed from potential maxima) and R; (None, 0) without markers.

    Markers are the reference's (``reference_markers``) and the flooding is the reference's:
    8-connected on the unquantised potential (``_kernels.flood_watershed``; without kernels higra's
    seeded watershed on the 8-adjacency graph, the same basins up to ties). A window maximum can sit
    in a neighbouring object, so a region thinner than the window gets no marker and is flooded by
    its neighbour; with ``seed_threshold`` (an addition, off in the paper's settings) every connected
    component of potential > ``seed_threshold`` that holds no marker and covers at least a quarter of
    the window is added as a marker of its own.
    """
    markers, n = reference_markers(potential, footprint, marker_threshold)
    if seed_threshold is not None:
        comps, n_comps = ndi.label(potential > seed_threshold)
        if n_comps:
            # Components under a quarter of a window are speckle, not objects: they stay unseeded.
            skip = np.bincount(comps.ravel(), minlength=n_comps + 1) < max(int(footprint), 1) ** 2 // 4
            skip[comps[markers > 0]] = True
            skip[0] = True
            new_ids = np.cumsum(~skip) * ~skip
            extra = new_ids[comps]
            markers = np.where(extra > 0, extra + n, markers)
            n += int(new_ids.max())
    if n == 0:
        return None, 0
    if use_kernels:
        labels = _kernels.flood_watershed(np.negative(potential, dtype=np.float32), markers)
        return labels - 1, n
    graph = _grid8(potential.shape)
    src, dst = graph.edge_list()
    boundary = 1.0 - potential.ravel().astype(np.float64)
    # Flooding from the maxima: a pixel pair is as high as its higher boundary value.
    edge_w = np.maximum(boundary[src], boundary[dst])
    labels = hg.labelisation_seeded_watershed(graph, edge_w, markers.ravel())
    return (np.asarray(labels, np.int64) - 1).reshape(potential.shape), n


@lru_cache(maxsize=8)
def _grid8(shape: tuple[int, int]):
    return hg.get_8_adjacency_graph(shape)


def reference_region_graph(labels: np.ndarray, boundary: np.ndarray, n_regions: int):
    """(u, v, mean boundary) per region pair, as Generic-Grouping pa_lib/rag.py ``rag_boundary`` (connectivity 2).

    Every pixel whose 3x3 neighbourhood holds a smaller label adds its boundary value to the pair (smallest
    label, its own), and one that sees a larger label to (its own, largest); both sides of a contour
    therefore count, and a pixel between three regions joins only the extreme pairs, as there.
    """
    eroded = ndi.grey_erosion(labels, size=(3, 3))
    dilated = ndi.grey_dilation(labels, size=(3, 3))
    below, above = eroded != labels, dilated != labels
    small = np.concatenate([eroded[below], labels[above]])
    large = np.concatenate([labels[below], dilated[above]])
    values = np.concatenate([boundary[below], boundary[above]])
    pair_ids, which = np.unique(small * n_regions + large, return_inverse=True)
    mean = np.bincount(which, values) / np.bincount(which)
    return pair_ids // n_regions, pair_ids % n_regions, mean


def merge_by_mean(n_regions: int, rag_u: np.ndarray, rag_v: np.ndarray, weight: np.ndarray, join_thresh: float = 1.0):
    """Greedy region merging with the reference's rule; returns (parents, altitudes, merged) of a binary tree.

    Generic-Grouping pa_lib/rag.py:566-595, 654-705 (skimage's merge_hierarchical with its own
    ``avg_weight``): repeatedly merge the two regions joined by the lowest edge while it is below
    ``join_thresh``; the merged region's edge to a neighbour is the plain mean (w1 + w2) / 2 of the
    two old edges when both regions touched that neighbour, else the one edge (no length weighting).
    Ties go to the lower (weight, node, neighbour) as the reference's heap items do. Every node is a
    candidate. Regions still apart when no edge is below ``join_thresh`` are joined afterwards, in
    node order, under nodes marked False in ``merged`` (not candidates) so the tree stays binary.
    Node numbering is higra's: leaves 0..R-1, then each merge's node, the root last.
    """
    import heapq

    adj: list[dict] = [dict() for _ in range(n_regions)]
    for u, v, w in zip(rag_u.tolist(), rag_v.tolist(), np.asarray(weight, np.float64).tolist()):
        adj[u][v] = w
        adj[v][u] = w
    heap = [(w, u, v) for u in range(n_regions) for v, w in adj[u].items() if u < v]
    heapq.heapify(heap)
    parents = list(range(2 * n_regions - 1))
    altitudes = [0.0] * (2 * n_regions - 1)
    alive = [True] * (2 * n_regions - 1)
    nxt = n_regions
    while heap and heap[0][0] < join_thresh:
        w, a, b = heapq.heappop(heap)
        if not (alive[a] and alive[b]) or adj[a].get(b) != w:
            continue  # stale: one end merged since, or the edge was re-weighted
        new = nxt
        nxt += 1
        adj.append({})
        na, nb = adj[a], adj[b]
        for c in set(na) | set(nb):
            if c == a or c == b:
                continue
            w1, w2 = na.get(c), nb.get(c)
            nw = w2 if w1 is None else w1 if w2 is None else (w1 + w2) / 2.0
            adj[new][c] = nw
            adj[c][new] = nw
            adj[c].pop(a, None)
            adj[c].pop(b, None)
            heapq.heappush(heap, (nw, new, c) if new < c else (nw, c, new))
        alive[a] = alive[b] = False
        adj[a] = adj[b] = {}
        parents[a] = parents[b] = new
        altitudes[new] = w
    merged = np.ones(2 * n_regions - 1, bool)
    roots = [i for i in range(nxt) if alive[i]]
    top = max(altitudes[:nxt]) if nxt > n_regions else 0.0
    while len(roots) > 1:  # a forest: join what is left (never below join_thresh) outside the candidates
        a, b = roots[0], roots[1]
        new = nxt
        nxt += 1
        parents[a] = parents[b] = new
        altitudes[new] = max(top, join_thresh)
        merged[new] = False
        roots = roots[2:] + [new]
    return np.asarray(parents, np.int64), np.asarray(altitudes, np.float64), merged


def _triangle_1d(length: int = 9) -> np.ndarray:
    r = np.arange(length)
    k = (length + 1 - np.abs(r - r[::-1])) / 2.0
    return k / k.sum()


def edge_orientations(edge_map: np.ndarray) -> np.ndarray:
    """float64 [H,W] orientation in [0, pi) of an edge map, as Generic-Grouping's a2m ``compute_edge_orientations``.

    A 9x9 triangle filter, second differences [-1, 2, -1] along each axis, the sign of one flipped where
    the diagonal filter [[1, 0, -1], [0, 0, 0], [-1, 0, 1]] is positive, arctan2 modulo pi; zero padding
    as ``convolve2d(..., "same")`` (the filters are symmetric, so correlation equals convolution; the
    triangle filter is separable).
    """
    k = _triangle_1d(9)
    e = np.asarray(edge_map, np.float64)
    smooth = ndi.correlate1d(ndi.correlate1d(e, k, 0, mode="constant"), k, 1, mode="constant")
    second = np.array([-1.0, 2.0, -1.0])
    d_cols = ndi.correlate1d(smooth, second, 1, mode="constant")  # the reference's "Dy"
    d_rows = ndi.correlate1d(smooth, second, 0, mode="constant")  # its "Dx"
    diagonal = np.array([[1.0, 0.0, -1.0], [0.0, 0.0, 0.0], [-1.0, 0.0, 1.0]])
    flip = ndi.correlate(smooth, diagonal, mode="constant") > 0
    d_cols[flip] = -d_cols[flip]
    return np.mod(np.arctan2(d_cols, d_rows), np.pi)


def spectral_boundary(
    n_regions: int, rag_u, rag_v, cross_affinity, mass, n_eigenvectors: int = 16, edges=None
) -> np.ndarray | None:
    """Per region-graph edge spectral boundary in [0,1] (None if the graph is too small).

    ``edges``: (u, v) region pairs to evaluate it on instead of the graph's own (normalised over those).

    Solves L v = lambda D v for the smallest eigenpairs, with L the Laplacian of summed pixel
    affinities across region boundaries and D the summed pixel degrees of each region; each
    non-constant eigenvector is scaled to [0,1] and weighted by 1/sqrt(lambda), and an edge's
    value is (sum of |differences|)^(1/sqrt 2), normalised by the maximum.
    """
    k = min(int(n_eigenvectors), n_regions - 1)
    if k < 2:
        return None
    deg = np.bincount(rag_u, cross_affinity, n_regions) + np.bincount(rag_v, cross_affinity, n_regions)
    inv_sqrt = 1.0 / np.sqrt(mass)
    w_norm = cross_affinity * inv_sqrt[rag_u] * inv_sqrt[rag_v]
    if n_regions <= DENSE_EIGEN_MAX:
        a = np.zeros((n_regions, n_regions))
        a[rag_u, rag_v] = -w_norm
        a[rag_v, rag_u] = -w_norm
        a[np.arange(n_regions), np.arange(n_regions)] = deg / mass
        vals, vecs = scipy.linalg.eigh(a, subset_by_index=[0, k - 1], driver="evr")
    else:
        a = scipy.sparse.coo_matrix(
            (np.concatenate([-w_norm, -w_norm, deg / mass]),
             (np.concatenate([rag_u, rag_v, np.arange(n_regions)]),
              np.concatenate([rag_v, rag_u, np.arange(n_regions)]))),
            shape=(n_regions, n_regions),
        ).tocsc()
        # A small negative shift keeps the shift-invert factorisation non-singular (L has a null vector).
        vals, vecs = scipy.sparse.linalg.eigsh(a, k=k, sigma=-1e-4, which="LM")
        order = np.argsort(vals)
        vals, vecs = vals[order], vecs[:, order]
    vecs = vecs[:, 1:] * inv_sqrt[:, None]
    vals = np.maximum(vals[1:], 1e-10)
    lo, hi = vecs.min(0), vecs.max(0)
    vecs = (vecs - lo) / np.where(hi > lo, hi - lo, 1.0) / np.sqrt(vals)
    eu, ev = (rag_u, rag_v) if edges is None else edges
    edge = np.power(np.abs(vecs[eu] - vecs[ev]).sum(1), 1.0 / np.sqrt(2.0))
    top = edge.max()
    return edge / top if top > 0 else edge


def _ring_scores(
    ranking: str, area, sum_p, inner_sum, inner_cnt, outer_sum, outer_cnt, edge_sum=0.0, edge_cnt=0.0
) -> np.ndarray:
    """Higher-is-better scores from mask and thick-ring statistics of the potential (edge: image-edge ring samples)."""
    ring_sum = inner_sum + outer_sum + edge_sum
    ring_cnt = inner_cnt + outer_cnt + edge_cnt
    int_sum = sum_p - inner_sum
    int_cnt = area - inner_cnt
    with np.errstate(divide="ignore", invalid="ignore"):
        if ranking == "boundary_minus_interior":
            # Reference rank_method 3: value = ring mean - interior mean (lower better, 100 when a part
            # is empty), reported as 1 - value.
            value = np.where((ring_cnt > 0) & (int_cnt > 0), ring_sum / ring_cnt - int_sum / int_cnt, 100.0)
            return 1.0 - value
        if ranking == "outer_boundary":
            return np.where(ring_cnt > 0, 1.0 - ring_sum / ring_cnt, -99.0)
        if ranking == "interior":
            return np.where(area > 0, sum_p / area, -99.0)
        if ranking == "ncut":
            total = ring_sum + int_sum
            return np.where(total > 0, 1.0 - ring_sum / total, -99.0)
    raise ValueError(f"ranking must be one of {RANKINGS}, got {ranking!r}")


def edge_sides(shape: tuple[int, int]) -> np.ndarray:
    """float64 [H,W]: how many of a pixel's four sides lie on the image edge (0, 1 or 2; more for 1-px images)."""
    h, w = shape
    sides = np.zeros((h, w))
    sides[0] += 1
    sides[-1] += 1
    sides[:, 0] += 1
    sides[:, -1] += 1
    return sides


def ring_masks(masks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(inner, outer) bool [N,H,W]: mask pixels with a 4-neighbour outside, and outside pixels with one inside.

    The image edge is not a boundary here (as skimage.segmentation.find_boundaries). With
    ``edge_in_ring`` the ranking adds, for every side of a mask pixel on the image edge, one more
    ring sample of that pixel's potential (``edge_sides``). Why: the edge is where the candidate's
    contour is open, with no evidence of a boundary; without these samples a region bounded by
    objects on some sides and by the image edge on the others (a background pocket) looks like a
    closed object, and such pockets took top-20 slots from real objects on crowded maps.
    """
    m = np.asarray(masks, bool)
    p = np.pad(m, ((0, 0), (1, 1), (1, 1)), mode="edge")
    nb = [p[:, :-2, 1:-1], p[:, 2:, 1:-1], p[:, 1:-1, :-2], p[:, 1:-1, 2:]]
    any_out = ~nb[0] | ~nb[1] | ~nb[2] | ~nb[3]
    any_in = nb[0] | nb[1] | nb[2] | nb[3]
    return m & any_out, ~m & any_in


def score_masks(
    potential: np.ndarray, masks: np.ndarray, ranking: str = "boundary_minus_interior", edge_in_ring: bool = True
) -> np.ndarray:
    """float64 [N] ranking scores of arbitrary bool masks [N,H,W] (the generic, full-mask path)."""
    p = np.asarray(potential, np.float64)
    m = np.asarray(masks, bool)
    inner, outer = ring_masks(m)
    pv = p.ravel()

    def sums(x):
        x = x.reshape(len(x), -1)
        return np.where(x, pv, 0.0).sum(1), x.sum(1).astype(np.float64)

    (sum_p, area), (inner_sum, inner_cnt), (outer_sum, outer_cnt) = sums(m), sums(inner), sums(outer)
    edge_sum = edge_cnt = 0.0
    if edge_in_ring:
        sides = edge_sides(p.shape).ravel()
        flat = m.reshape(len(m), -1)
        edge_sum, edge_cnt = flat @ (sides * pv), flat @ sides
    return _ring_scores(ranking, area, sum_p, inner_sum, inner_cnt, outer_sum, outer_cnt, edge_sum, edge_cnt)


def nms_masks(masks: np.ndarray, scores: np.ndarray, iou_threshold: float = 0.2, top_k: int | None = None) -> np.ndarray:
    """Indices kept by greedy mask NMS (best score first) for arbitrary masks; the generic path."""
    m = np.asarray(masks, bool).reshape(len(masks), -1)
    order = np.argsort(-np.asarray(scores), kind="stable")
    inter = np.array([np.count_nonzero(m & row, axis=1) for row in m]).reshape(len(m), len(m))
    area = np.diag(inter)
    iou = inter / np.maximum(area[:, None] + area[None, :] - inter, 1.0)
    kept: list[int] = []
    for i in order.tolist():
        if top_k is not None and len(kept) >= top_k:
            break
        if all(iou[i, j] <= iou_threshold for j in kept):
            kept.append(i)
    return np.asarray(kept, np.int64)


class Hierarchy:
    """Superpixels, their merge tree and per-node candidate statistics for one potential map."""

    def __init__(self, labels, n_regions, tree, altitudes, area, sum_p, border, border_sum, inner, outer, start, size,
                 merged=None):
        self.labels, self.n_regions, self.tree, self.altitudes = labels, n_regions, tree, altitudes
        # merged: False on nodes that only close a forest into one tree (never candidates).
        self.merged = np.ones(tree.num_vertices(), bool) if merged is None else merged
        # border: image-edge sides of the node's pixels; border_sum: their potential with the same multiplicity.
        self.area, self.sum_p, self.border, self.border_sum = area, sum_p, border, border_sum
        self.inner_sum, self.inner_cnt = inner
        self.outer_sum, self.outer_cnt = outer
        self.start, self.size = start, size

    def scores(self, ranking: str, edge_in_ring: bool = True) -> np.ndarray:
        edge = (self.border_sum, self.border) if edge_in_ring else (0.0, 0.0)
        return _ring_scores(
            ranking, self.area, self.sum_p, self.inner_sum, self.inner_cnt, self.outer_sum, self.outer_cnt, *edge
        )

    def internal_level(self) -> np.ndarray:
        """float64 per node: the highest merge altitude in its subtree (0 for a leaf): its strongest inner contour.

        A maximum, not the node's own altitude: mean-merge altitudes need not increase up the tree.
        """
        nl = self.tree.num_leaves()
        return np.asarray(hg.accumulate_and_max_sequential(
            self.tree, np.asarray(self.altitudes, np.float64), np.zeros(nl), hg.Accumulators.max
        ), np.float64)

    def masks(self, nodes) -> np.ndarray:
        """bool [len(nodes),H,W]: the candidate masks of the given tree nodes."""
        nodes = np.asarray(nodes, np.int64)
        leaf_rank = self.start[: self.n_regions]
        contains = (leaf_rank[None, :] >= self.start[nodes, None]) & (
            leaf_rank[None, :] < (self.start + self.size)[nodes, None]
        )
        return contains[:, self.labels]


def build_hierarchy(potential: np.ndarray, **params) -> Hierarchy | None:
    """Over-segment, weight region boundaries, merge (``merge_by_mean``) and accumulate node statistics."""
    p = {**DEFAULTS, **params}
    h, w = potential.shape
    labels, n_regions = oversegment(potential, p["footprint"], p["marker_threshold"], p["seed_threshold"], p["use_kernels"])
    if n_regions < 2:
        return None
    _, src, dst = _grid(potential.shape)
    flat = labels.ravel()
    ls, ld = flat[src], flat[dst]
    cross = ls != ld
    es, ed = src[cross], dst[cross]
    a, b = np.minimum(ls[cross], ld[cross]), np.maximum(ls[cross], ld[cross])
    pair_ids, edge_of_cross = np.unique(a * n_regions + b, return_inverse=True)
    rag_u, rag_v = pair_ids // n_regions, pair_ids % n_regions

    boundary = 1.0 - potential
    bflat = boundary.ravel().astype(np.float64)
    if p["orientation"]:
        # The reference's local boundary map: 1 - potential re-weighted by orientation agreement on the thick
        # (4-connected) superpixel contours, 0 elsewhere (a2m potential2masks_ucm_hierarchy).
        on_contour = np.zeros(h * w, bool)
        on_contour[es] = True
        on_contour[ed] = True
        pixels = np.flatnonzero(on_contour)
        contour_angle = edge_orientations(on_contour.reshape(h, w)).ravel()[pixels]
        boundary_angle = edge_orientations(boundary).ravel()[pixels]
        agree = np.abs(np.cos(contour_angle - boundary_angle))
        local_px = np.zeros(h * w)
        local_px[pixels] = agree * bflat[pixels]
    else:
        local_px = bflat
    # Region edges as the reference's rag_boundary: each pixel pairs its label with the smallest and the
    # largest label of its 8-neighbourhood; an edge's weight is the mean local boundary over its pixels.
    ref_u, ref_v, weight = reference_region_graph(labels, local_px.reshape(h, w), n_regions)
    area_leaf = np.bincount(flat, minlength=n_regions).astype(np.float64)
    gw = float(p["globalization"] or 0.0)
    if gw > 0:
        # Pixel affinity across a contour: exp(-max boundary / gamma), the reference's min of the two exp.
        cross_aff = np.bincount(
            edge_of_cross, np.exp(-np.maximum(local_px[es], local_px[ed]) / p["affinity_gamma"]), len(rag_u))
        internal = np.bincount(ls[~cross], minlength=n_regions)
        aff_sum = np.bincount(rag_u, cross_aff, n_regions) + np.bincount(rag_v, cross_aff, n_regions)
        mass = area_leaf + 2.0 * internal + aff_sum
        spectral = spectral_boundary(n_regions, rag_u, rag_v, cross_aff, mass, p["n_eigenvectors"], (ref_u, ref_v))
        if spectral is not None:
            weight = (1.0 - gw) * weight + gw * spectral
    parents, altitudes, merged = merge_by_mean(n_regions, ref_u, ref_v, weight, p["join_thresh"])
    tree = hg.Tree(parents)

    sides = edge_sides((h, w)).ravel()
    pflat = potential.ravel()
    leaf_data = np.stack(
        [area_leaf, np.bincount(flat, pflat, n_regions), np.bincount(flat, sides, n_regions),
         np.bincount(flat, sides * pflat, n_regions)], 1
    )
    area, sum_p, border, border_sum = np.asarray(hg.accumulate_sequential(tree, leaf_data, hg.Accumulators.sum)).T
    start, size = tree_stats.leaf_intervals(tree)
    diffs = tree_stats.ring_stats(labels, potential, tree, start[:n_regions], p["use_kernels"])
    inner_sum, inner_cnt, dil_sum, dil_cnt, bpix_sum, bpix_cnt = tree_stats.subtree_sums(tree, diffs)
    return Hierarchy(
        labels, n_regions, tree, altitudes, area, sum_p, border, border_sum,
        (inner_sum, inner_cnt), (dil_sum - bpix_sum, dil_cnt - bpix_cnt), start, size, merged,
    )


def propose(affinity, top_k: int | None = 20, **params) -> tuple[np.ndarray, np.ndarray]:
    """Ranked candidate masks from predicted affinity.

    affinity: float32 [C,H,W] or [H,W] in [0,1], high = same instance. Returns masks bool [N,H,W]
    and scores float32 [N], best first, N <= top_k (None: every candidate that passes the filters and the
    NMS, as the reference's OLN ranker receives them). Parameters and their defaults: ``DEFAULTS``.
    """
    unknown = set(params) - set(DEFAULTS)
    if unknown:
        raise TypeError(f"unknown propose() parameters {sorted(unknown)}; allowed: {sorted(DEFAULTS)}")
    p = {**DEFAULTS, **params}
    if p["ranking"] not in RANKINGS:
        raise ValueError(f"ranking must be one of {RANKINGS}, got {p['ranking']!r}")
    potential = potential_from_affinity(affinity)
    h, w = potential.shape
    empty = np.zeros((0, h, w), bool), np.zeros(0, np.float32)
    if (top_k is not None and top_k <= 0) or h * w == 0:
        return empty
    hier = build_hierarchy(potential, **p)
    if hier is None:
        return empty
    scores = hier.scores(p["ranking"], p["edge_in_ring"])
    if p["internal_penalty"]:
        scores = scores - p["internal_penalty"] * hier.internal_level()
    valid = (hier.area >= p["min_size"]) & (hier.area <= p["max_size_fraction"] * h * w) & hier.merged
    if p["border_thresh"]:
        # The contour is the ring's: with edge_in_ring it includes the image edge, so a candidate is
        # dropped only when the edge is over 90% of its contour; measured against the inner contour
        # alone, objects cut by the image edge were dropped too.
        contour = hier.inner_cnt + (hier.border if p["edge_in_ring"] else 0.0)
        valid &= ~(hier.border > p["border_thresh"] * contour)
    if p["max_border_fraction"] is not None:
        valid &= hier.border <= p["max_border_fraction"] * 2 * (h + w)
    candidates = np.flatnonzero(valid)
    order = candidates[np.argsort(-scores[candidates], kind="stable")]
    if top_k is None:
        top_k = len(order)
    if p["nms"] and p["nms"] > 0:
        kept = tree_stats.tree_nms(order, hier.area, hier.tree, p["nms"], top_k, p["use_kernels"])
    else:
        kept = order[:top_k]
    return hier.masks(kept), scores[kept].astype(np.float32)
