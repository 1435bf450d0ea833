"""The reference-grouping twin (bench/grouping_twin.py) and the parts of `grouping: paper` that follow it exactly."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage as ndi

import pa_lib
from pa_lib import _kernels
from pa_lib.grouping import edge_orientations, merge_by_mean, reference_markers, reference_region_graph
from pa_lib.synthetic import potential_from_labels, random_label_map, recall

_TWIN = Path(__file__).parents[1] / "bench" / "grouping_twin.py"
_spec = importlib.util.spec_from_file_location("grouping_twin", _TWIN)
twin = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(twin)


def _smooth_noise(shape, seed, sigma=2.0):
    return ndi.gaussian_filter(np.random.default_rng(seed).random(shape), sigma).astype(np.float32)


def _twin_markers(potential):
    coords = twin.peak_local_max_019(potential, np.ones((20, 20)))
    mask = np.zeros(potential.shape, bool)
    mask[tuple(coords.T)] = True
    markers, _ = ndi.label(mask)
    return markers * (potential > 0)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_markers_are_the_references(seed):
    potential = _smooth_noise((90, 120), seed)
    potential[0, 7] = 2.0  # a maximum on the image border: excluded, as peak_local_max does
    potential[30:32, 50:52] = 3.0  # a plateau maximum: one marker of 4 pixels
    ours, n = reference_markers(potential)
    ref = _twin_markers(potential)
    assert n == len(np.unique(ref)) - 1 > 3
    assert np.array_equal(ours > 0, ref > 0) and ours[0, 7] == 0
    # The same pixels grouped the same way (labels may be numbered differently).
    pairs = {(a, b) for a, b in zip(ours[ours > 0].tolist(), ref[ref > 0].tolist())}
    assert len(pairs) == n
    assert len(np.unique(ours[30:32, 50:52])) == 1 and ours[30, 50] > 0
    assert reference_markers(np.full((20, 20), 0.5, np.float32))[1] == 0  # a constant map has no peak


@pytest.mark.parametrize("seed", [0, 1])
def test_flooding_kernel_equals_the_references_watershed(seed):
    labels = random_label_map(80, 110, 6, seed=seed)
    potential = potential_from_labels(labels, blur=1.0, noise=0.1, seed=seed)
    markers = _twin_markers(potential).astype(np.int64)
    ours = _kernels.flood_watershed(-potential, markers)
    assert np.array_equal(ours, twin.watershed_019(-potential, markers))


def test_mean_merging_builds_the_references_hierarchy():
    # Superpixels of a real flooding and a random boundary map: the reference's region graph, then both mergings.
    potential = _smooth_noise((100, 140), 3, sigma=1.5)
    labels = twin.watershed_019(-potential, _twin_markers(potential))
    edge_map = np.random.default_rng(4).random(labels.shape)
    rag = twin.rag_boundary(labels, edge_map)
    nodes = sorted(rag.adj)
    index = {n: i for i, n in enumerate(nodes)}
    u, v, w = zip(*[(index[a], index[b], d["weight"]) for a, b, d in rag.edges()])
    ref_segments = {frozenset(index[x] for x in seg) for seg in twin.merge_hierarchical(rag, 1.0)}
    parents, _, merged = merge_by_mean(len(nodes), np.array(u), np.array(v), np.array(w), 1.0)
    assert merged.all() and len(parents) == 2 * len(nodes) - 1
    leaves = [{i} for i in range(len(nodes))] + [set() for _ in range(len(nodes) - 1)]
    for child in range(len(parents) - 1):
        leaves[parents[child]] |= leaves[child]
    assert {frozenset(s) for s in leaves} == ref_segments
    assert len(ref_segments) == 2 * len(nodes) - 1 > 30


def test_merging_stops_at_join_thresh_and_closes_the_forest_outside_the_candidates():
    # Regions 0-1 and 2-3 join below the threshold; the edge 1-2 is above it and never merges.
    parents, altitudes, merged = merge_by_mean(4, np.array([0, 1, 2]), np.array([1, 2, 3]),
                                               np.array([0.1, 1.0, 0.2]), join_thresh=1.0)
    assert parents.tolist()[:4] == [4, 4, 5, 5] and merged.tolist() == [True] * 6 + [False]
    assert altitudes[4] == pytest.approx(0.1) and altitudes[5] == pytest.approx(0.2)
    # The merged edge is the plain mean of the two old ones, whatever their lengths.
    parents, altitudes, _ = merge_by_mean(3, np.array([0, 0, 1]), np.array([1, 2, 2]), np.array([0.1, 0.3, 0.9]))
    assert altitudes[4] == pytest.approx((0.3 + 0.9) / 2)


def test_twin_and_paper_grouping_find_the_objects_of_a_small_map():
    labels = random_label_map(96, 128, 4, seed=7)
    potential = potential_from_labels(labels, blur=1.0, noise=0.1, seed=7)
    masks, scores = twin.propose(potential)
    assert masks.dtype == bool and masks.shape[1:] == (96, 128) and len(masks) == len(scores) <= 20
    assert np.all(np.diff(scores) <= 0)
    found, total = recall(masks, labels)
    assert found >= total - 1
    ours, _ = pa_lib.propose(potential)
    inter = (masks[:3, None] & ours[None]).reshape(len(masks[:3]), len(ours), -1).sum(-1)
    union = (masks[:3, None] | ours[None]).reshape(len(masks[:3]), len(ours), -1).sum(-1)
    assert ((inter / np.maximum(union, 1)).max(1) >= 0.8).all()  # the twin's top 3 are among ours


def test_twin_peaks_and_boundaries_equal_scikit_image_when_installed():
    skimage = pytest.importorskip("skimage")
    from skimage.feature import peak_local_max
    from skimage.segmentation import find_boundaries

    potential = _smooth_noise((70, 90), 5)
    assert np.array_equal(peak_local_max(potential, footprint=np.ones((20, 20))),
                          twin.peak_local_max_019(potential, np.ones((20, 20)))), skimage.__version__
    labels = np.random.default_rng(6).integers(0, 4, (30, 40))
    assert np.array_equal(find_boundaries(labels), twin.find_boundaries(labels))
    assert np.array_equal(find_boundaries(labels > 1, mode="inner"), twin.find_boundaries(labels > 1, "inner"))


def test_region_graph_is_the_references():
    potential = _smooth_noise((80, 100), 8, sigma=1.5)
    labels = twin.watershed_019(-potential, _twin_markers(potential))
    edge_map = np.random.default_rng(9).random(labels.shape)
    ref = {(a, b): d["weight"] for a, b, d in twin.rag_boundary(labels, edge_map).edges()}
    ref = {(min(k), max(k)): v for k, v in ref.items()}
    # Ours numbers regions from 0; the reference keeps the marker labels (from 1).
    u, v, mean = reference_region_graph(labels - 1, edge_map, int(labels.max()))
    ours = {(a + 1, b + 1): m for a, b, m in zip(u.tolist(), v.tolist(), mean.tolist())}
    assert ours.keys() == ref.keys() and len(ours) > 20
    assert np.allclose([ours[k] for k in ref], list(ref.values()))


def test_orientations_are_the_references():
    edge_map = _smooth_noise((60, 70), 10)
    ours, ref = edge_orientations(edge_map), twin.edge_orientations(edge_map)
    # Angles are modulo pi: compare the agreement |cos| that the grouping uses.
    assert np.allclose(np.abs(np.cos(ours - ref)), 1.0)


@pytest.mark.parametrize("orientation", [False, True])
def test_without_globalisation_the_top_20_are_the_twins(orientation):
    # Everything but the spectral step follows the reference: the same masks in the same order.
    labels = random_label_map(150, 200, 8, seed=11)
    potential = potential_from_labels(labels, blur=1.0, noise=0.1, seed=11)
    ref, _ = twin.propose(potential, dict(use_orientation=orientation, use_globalization=0.0))
    ours, _ = pa_lib.propose(potential, orientation=orientation, globalization=0.0)
    assert len(ours) == len(ref) >= 5
    assert all(np.array_equal(a, b) for a, b in zip(ours, ref))
