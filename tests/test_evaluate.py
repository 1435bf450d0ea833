"""Cross-category AR (ggn.evaluate) on hand-built cases with known answers, and against pycocotools."""
from __future__ import annotations

import contextlib
import io
import json

import numpy as np
import pytest

from ggn.cli import main as cli_main
from ggn.evaluate import IOU_THRESHOLDS, MAX_DETS, evaluate, metric_names
from ggn.io import InputError
from ggn.masks import encode_mask

EXPECTED_NAMES = ["AR@10", "AR@20", "AR@30", "AR@50", "AR@100", "AR@300", "AR@500", "AR@1000", "AR@1500",
                  "AR_s@100", "AR_m@100", "AR_l@100"]


def box_ann(ann_id, image_id, x, y, w, h, size, seen=None, iscrowd=0, category_id=1):
    m = np.zeros(size, bool)
    m[y:y + h, x:x + w] = True
    a = {"id": ann_id, "image_id": image_id, "category_id": category_id, "segmentation": encode_mask(m),
         "area": float(w * h), "bbox": [float(x), float(y), float(w), float(h)], "iscrowd": iscrowd}
    if seen is not None:
        a["ignored_split"] = int(seen)
    return a


def coco(images, anns, size):
    return {"images": [{"id": i, "file_name": f"{i}.png", "height": size[0], "width": size[1]} for i in images],
            "annotations": anns, "categories": [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}]}


def as_dets(anns, scores=None):
    return [{"image_id": a["image_id"], "category_id": 1, "bbox": a["bbox"], "segmentation": a["segmentation"],
             "score": 1.0 if scores is None else float(scores[i])} for i, a in enumerate(anns)]


def grid_anns(n, image_id=1, size=(200, 200), cell=20, box=10, seen=0, first_id=1):
    """n non-overlapping 10x10 boxes on a 20 px grid."""
    per_row = size[1] // cell
    return [box_ann(first_id + i, image_id, (i % per_row) * cell, (i // per_row) * cell, box, box, size, seen=seen)
            for i in range(n)]


@pytest.fixture
def sized_case():
    """Small, medium and large unseen objects, a seen object, in two images."""
    size = (200, 200)
    anns = [
        box_ann(1, 1, 0, 0, 110, 110, size, seen=0),      # large (12100)
        box_ann(2, 1, 120, 0, 50, 50, size, seen=0),      # medium (2500)
        box_ann(3, 1, 130, 130, 20, 20, size, seen=0),    # small (400)
        box_ann(4, 1, 120, 60, 60, 50, size, seen=1),     # seen
        box_ann(5, 2, 10, 10, 40, 40, size, seen=0),
        box_ann(6, 2, 100, 100, 25, 25, size, seen=1),
    ]
    return coco([1, 2], anns, size)


def test_metric_names_carry_their_k():
    assert metric_names() == EXPECTED_NAMES


def test_ground_truth_as_detections_gives_one(sized_case):
    metrics = evaluate(sized_case, as_dets(sized_case["annotations"]))
    assert set(metrics) == {"bbox", "segm"}
    for iou_type in ("bbox", "segm"):
        assert list(metrics[iou_type]) == EXPECTED_NAMES
        for name, value in metrics[iou_type].items():
            assert value == pytest.approx(1.0), (iou_type, name)


def test_empty_detections_give_zero(sized_case):
    metrics = evaluate(sized_case, [])
    for iou_type in ("bbox", "segm"):
        assert metrics[iou_type] == {name: 0.0 for name in EXPECTED_NAMES}


def test_bad_annotation_ids_do_not_break_matching(sized_case):
    for a in sized_case["annotations"][:3]:
        a["id"] = 0  # COCOeval uses ids as match markers: 0 would read as "unmatched"
    metrics = evaluate(sized_case, as_dets(sized_case["annotations"]))
    assert metrics["segm"]["AR@100"] == pytest.approx(1.0)


def test_ar_names_match_budget():
    """20 GT, 20 exact detections, 10 of them ranked first: AR@10 = 0.5, AR@20 = 1."""
    size = (200, 200)
    anns = grid_anns(20, size=size)
    scores = np.linspace(1.0, 0.05, 20)
    metrics = evaluate(coco([1], anns, size), as_dets(anns, scores))
    for iou_type in ("bbox", "segm"):
        m = metrics[iou_type]
        assert m["AR@10"] == pytest.approx(0.5)
        assert m["AR@20"] == pytest.approx(1.0)
        assert m["AR@30"] == pytest.approx(1.0)
        assert m["AR_s@100"] == pytest.approx(1.0)
        assert m["AR_m@100"] == -1.0 and m["AR_l@100"] == -1.0  # no such objects: undefined, as COCOeval


def test_ar_at_each_k_with_thirty_objects():
    size = (200, 200)
    anns = grid_anns(30, size=size)
    scores = np.linspace(1.0, 0.05, 30)
    m = evaluate(coco([1], anns, size), as_dets(anns, scores), iou_types=("bbox",))["bbox"]
    assert [m["AR@10"], m["AR@20"], m["AR@30"], m["AR@50"]] == pytest.approx([1 / 3, 2 / 3, 1.0, 1.0])


def test_seen_detections_do_not_use_up_the_budget():
    size = (200, 200)
    seen = grid_anns(5, seen=1, first_id=1)
    unseen = [box_ann(100 + i, 1, 20 * (i % 10), 100 + 20 * (i // 10), 10, 10, size, seen=0) for i in range(10)]
    gt = coco([1], seen + unseen, size)
    # Seen-class objects are found first (highest scores), the ten unseen ones after.
    dets = as_dets(seen, np.full(5, 0.99)) + as_dets(unseen, np.linspace(0.9, 0.5, 10))
    metrics = evaluate(gt, dets)
    for iou_type in ("bbox", "segm"):
        assert metrics[iou_type]["AR@10"] == pytest.approx(1.0), iou_type
    # Same detections without the seen/unseen marks: the 5 seen ones now are objects to find
    # and the budget of 10 covers 10 of 15.
    plain = coco([1], [{k: v for k, v in a.items() if k != "ignored_split"} for a in seen + unseen], size)
    assert evaluate(plain, dets)["segm"]["AR@10"] == pytest.approx(10 / 15)
    # Without the budget rule the seen detections would take 5 of the 10 slots.
    no_seen_dets = evaluate(gt, dets[5:])
    assert no_seen_dets == metrics


def test_seen_match_is_decided_at_iou_half():
    """A detection overlapping a seen object at IoU < 0.5 stays in the budget (a false positive)."""
    size = (100, 100)
    seen = box_ann(1, 1, 0, 0, 20, 20, size, seen=1)
    unseen = box_ann(2, 1, 50, 50, 20, 20, size, seen=0)
    gt = coco([1], [seen, unseen], size)
    near_seen = {"image_id": 1, "category_id": 1, "bbox": [10.0, 0.0, 20.0, 20.0], "score": 0.9}  # IoU 1/3
    on_seen = {"image_id": 1, "category_id": 1, "bbox": [1.0, 0.0, 20.0, 20.0], "score": 0.95}  # IoU 0.9
    hit = {"image_id": 1, "category_id": 1, "bbox": [50.0, 50.0, 20.0, 20.0], "score": 0.5}
    # Budget 10 is plenty: both variants find the unseen object.
    assert evaluate(gt, [near_seen, hit], ("bbox",))["bbox"]["AR@10"] == pytest.approx(1.0)
    # With 10 near-seen false positives ahead, the hit falls out of AR@10; on-seen ones leave the budget.
    many_near = [dict(near_seen, score=0.9 - i * 0.01) for i in range(10)]
    many_on = [dict(on_seen, score=0.95 - i * 0.001) for i in range(11)]
    assert evaluate(gt, many_near + [hit], ("bbox",))["bbox"]["AR@10"] == 0.0
    # The first on-seen detection matches the seen object; later duplicates find it taken
    # (a non-crowd object matches once) and are ordinary false positives, as in COCOeval.
    assert evaluate(gt, many_on[:10] + [hit], ("bbox",))["bbox"]["AR@10"] == pytest.approx(1.0)
    assert evaluate(gt, many_on + [hit], ("bbox",))["bbox"]["AR@10"] == 0.0


def random_case(seed=3, num_images=4, size=(96, 128)):
    """Random boxes/blobs as GT (one crowd region) and jittered plus random detections."""
    rng = np.random.default_rng(seed)
    anns, dets = [], []
    yy, xx = np.mgrid[:size[0], :size[1]]
    for image_id in range(1, num_images + 1):
        for _ in range(int(rng.integers(3, 7))):
            cy, cx = rng.integers(0, size[0]), rng.integers(0, size[1])
            r = int(rng.integers(3, 40))
            m = (xx - cx) ** 2 + ((yy - cy) * rng.uniform(0.5, 2)) ** 2 <= r * r
            if not m.any():
                continue
            ys, xs = np.nonzero(m)
            box = [float(xs.min()), float(ys.min()), float(xs.max() - xs.min() + 1), float(ys.max() - ys.min() + 1)]
            anns.append({"id": len(anns) + 1, "image_id": image_id, "category_id": int(rng.integers(1, 3)),
                         "segmentation": encode_mask(m), "area": float(m.sum()), "bbox": box,
                         "iscrowd": int(len(anns) == 2)})
            for _ in range(3):
                dy, dx = rng.integers(-5, 6, 2)
                j = np.roll(m, (int(dy), int(dx)), axis=(0, 1))
                ys, xs = np.nonzero(j)
                dets.append({"image_id": image_id, "category_id": 1, "segmentation": encode_mask(j),
                             "bbox": [float(xs.min()), float(ys.min()), float(xs.max() - xs.min() + 1),
                                      float(ys.max() - ys.min() + 1)], "score": float(rng.random())})
        for _ in range(15):
            x, y = int(rng.integers(0, size[1] - 8)), int(rng.integers(0, size[0] - 8))
            w, h = int(rng.integers(4, size[1] - x)), int(rng.integers(4, size[0] - y))
            m = np.zeros(size, bool)
            m[y:y + h, x:x + w] = True
            dets.append({"image_id": image_id, "category_id": 1, "segmentation": encode_mask(m),
                         "bbox": [float(x), float(y), float(w), float(h)], "score": float(rng.random())})
    return coco(list(range(1, num_images + 1)), anns, size), dets


def _pycocotools_recall(eval_class, gt, dets, iou_type):
    """recall [T, K, A, M] of a pycocotools COCOeval (sub)class run class-agnostically on copies of gt/dets."""
    from pycocotools.coco import COCO

    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO()
        coco_gt.dataset = json.loads(json.dumps(gt))
        coco_gt.createIndex()
        coco_dt = coco_gt.loadRes(json.loads(json.dumps(dets)))
        ev = eval_class(coco_gt, coco_dt, iou_type)
        ev.params.useCats = 0
        ev.params.maxDets = list(MAX_DETS)
        ev.params.iouThrs = IOU_THRESHOLDS.copy()
        ev.evaluate()
        ev.accumulate()
    return ev.eval["recall"]


def pycocotools_ar(gt, dets, iou_type):
    from pycocotools.cocoeval import COCOeval

    r = _pycocotools_recall(COCOeval, gt, dets, iou_type)  # [T, K, A, M]

    def mean(x):
        x = x[x > -1]
        return float(x.mean()) if x.size else -1.0

    out = {f"AR@{k}": mean(r[:, :, 0, m]) for m, k in enumerate(MAX_DETS)}
    hundred = list(MAX_DETS).index(100)
    out.update({"AR_s@100": mean(r[:, :, 1, hundred]), "AR_m@100": mean(r[:, :, 2, hundred]),
                "AR_l@100": mean(r[:, :, 3, hundred])})
    return out


def test_without_seen_classes_equals_pycocotools():
    gt, dets = random_case()
    ours = evaluate(gt, dets)
    for iou_type in ("bbox", "segm"):
        reference = pycocotools_ar(gt, dets, iou_type)
        assert 0.05 < reference["AR@10"] < reference["AR@1500"] < 0.999  # a case with something to rank
        for name in EXPECTED_NAMES:
            assert ours[iou_type][name] == pytest.approx(reference[name], abs=1e-12), (iou_type, name)


def test_seen_ground_truth_only_is_ignored():
    """Marking objects seen removes them from the denominator; a GT-matching set stays at 1."""
    gt, _ = random_case(seed=5)
    for i, a in enumerate(gt["annotations"]):
        a["ignored_split"] = i % 2
    metrics = evaluate(gt, as_dets(gt["annotations"], np.linspace(1, 0.1, len(gt["annotations"]))))
    assert metrics["segm"]["AR@100"] == pytest.approx(1.0)


def test_bad_inputs_are_clear_errors(sized_case, tmp_path):
    with pytest.raises(InputError, match="not in the ground truth"):
        evaluate(sized_case, [{"image_id": 99, "bbox": [0, 0, 1, 1], "score": 1.0, "segmentation": {}}])
    with pytest.raises(InputError, match="segmentation"):
        evaluate(sized_case, [{"image_id": 1, "bbox": [0, 0, 1, 1], "score": 1.0}], ("segm",))
    with pytest.raises(InputError, match="does not exist"):
        evaluate(tmp_path / "missing.json", [])


def test_cli_writes_exact_layout(sized_case, tmp_path):
    gt_path, det_path, out = tmp_path / "eval.json", tmp_path / "dets.json", tmp_path / "m" / "metrics.json"
    gt_path.write_text(json.dumps(sized_case))
    det_path.write_text(json.dumps(as_dets(sized_case["annotations"])))
    assert cli_main(["evaluate", "--gt", str(gt_path), "--detections", str(det_path), "--out", str(out)]) == 0
    metrics = json.loads(out.read_text())
    assert list(metrics) == ["bbox", "segm"]
    for values in metrics.values():
        assert list(values) == EXPECTED_NAMES
        assert all(isinstance(v, float) and v == pytest.approx(1.0) for v in values.values())
    det_path.write_text("[]")
    assert cli_main(["evaluate", "--gt", str(gt_path), "--detections", str(det_path), "--out", str(out),
                     "--iou-types", "bbox"]) == 0
    assert json.loads(out.read_text()) == {"bbox": {name: 0.0 for name in EXPECTED_NAMES}}


def reference_cross_category_ar(gt, dets, iou_type):
    """The OLN protocol written on pycocotools' own per-image matching (test-only cross-check).

    Seen-class objects become ignore regions; a detection whose IoU-0.5 match is a seen object is
    dropped from that image's ranked list before the per-budget cut in accumulate(). (As in OLN, a
    detection can end up matched to a seen object at 0.5 because a higher-scored detection took
    its unseen object, and then also leaves the higher IoU thresholds; ggn.evaluate keeps that.)
    """
    from pycocotools.cocoeval import COCOeval

    class CrossCategory(COCOeval):
        def _prepare(self):
            super()._prepare()
            for gts in self._gts.values():
                for g in gts:
                    g["ignore"] = int(g["ignore"] or g.get("ignored_split", 0) == 1)

        def evaluateImg(self, imgId, catId, aRng, maxDet):
            res = super().evaluateImg(imgId, catId, aRng, maxDet)
            if res is None or not len(res["dtIds"]):
                return res
            seen_ids = {a["id"] for a in self.cocoGt.imgToAnns[imgId] if a.get("ignored_split", 0) == 1}
            keep = np.array([int(m) not in seen_ids for m in res["dtMatches"][0]])
            res["dtMatches"] = res["dtMatches"][:, keep]
            res["dtIgnore"] = res["dtIgnore"][:, keep]
            res["dtIds"] = [d for d, k in zip(res["dtIds"], keep) if k]
            res["dtScores"] = [s for s, k in zip(res["dtScores"], keep) if k]
            return res

    r = _pycocotools_recall(CrossCategory, gt, dets, iou_type)
    return {f"AR@{k}": float(r[:, :, 0, m][r[:, :, 0, m] > -1].mean()) for m, k in enumerate(MAX_DETS)}


@pytest.mark.parametrize("seed", [3, 8])
def test_seen_handling_matches_reference_protocol(seed):
    gt, dets = random_case(seed=seed, num_images=6)
    rng = np.random.default_rng(seed)
    for a in gt["annotations"]:
        a["ignored_split"] = int(rng.random() < 0.5)
    ours = evaluate(gt, dets)
    changed = 0
    for iou_type in ("bbox", "segm"):
        reference = reference_cross_category_ar(gt, dets, iou_type)
        # Seen objects merely deleted, their detections still in the budget:
        deleted = pycocotools_ar({**gt, "annotations": [a for a in gt["annotations"] if not a["ignored_split"]]},
                                 dets, iou_type)
        changed += sum(reference[k] != pytest.approx(deleted[k]) for k in reference)
        for name, value in reference.items():
            assert ours[iou_type][name] == pytest.approx(value, abs=1e-12), (iou_type, name)
    assert changed  # the seen-class rule matters in this case


@pytest.mark.parametrize("seed", [4, 11])
def test_chunked_evaluation_gives_the_numbers_of_one_pass(seed, tmp_path):
    """Images evaluated in chunks (down to one detection per chunk) and the results file read as a stream give
    exactly the numbers of one COCOeval over all detections, seen classes, crowd regions and ties included."""
    gt, dets = random_case(seed=seed, num_images=8)
    rng = np.random.default_rng(seed)
    for a in gt["annotations"]:
        a["ignored_split"] = int(rng.random() < 0.4)
    for d in dets[::7]:
        d["score"] = 0.5  # ties: file order decides, in one pass and in chunks alike
    gt["images"].append({"id": 99, "file_name": "99.png", "height": 96, "width": 128})  # no detections
    gt["annotations"].append(box_ann(1000, 99, 5, 5, 30, 30, (96, 128), seen=0))
    rng.shuffle(dets)  # images interleaved in the file
    path = tmp_path / "dets.json"
    path.write_text(json.dumps(dets))
    one_pass = evaluate(gt, dets, chunk_detections=10 ** 9)
    assert one_pass["segm"]["AR@10"] > 0.05  # something to rank
    for chunk in (1, 17, 60):
        assert evaluate(gt, path, chunk_detections=chunk) == one_pass, chunk


def test_polygon_and_uncompressed_rle_detections_equal_compressed(tmp_path):
    from ggn.masks import ann_to_mask

    size = (60, 80)
    anns = [box_ann(1, 1, 10, 10, 20, 20, size, seen=0), box_ann(2, 1, 40, 20, 30, 30, size, seen=0)]
    gt = coco([1], anns, size)
    compressed = as_dets(anns, [0.9, 0.8])
    polygon = [dict(compressed[0], segmentation=[[10, 10, 30, 10, 30, 30, 10, 30]])]
    m = ann_to_mask(compressed[1]["segmentation"], *size)
    runs, flat, value, count = [], m.flatten(order="F"), 0, 0
    for v in flat:
        if v != value:
            runs.append(count)
            value, count = v, 0
        count += 1
    runs.append(count)
    uncompressed = [dict(compressed[1], segmentation={"size": list(size), "counts": [int(r) for r in runs]})]
    path = tmp_path / "dets.json"
    path.write_text(json.dumps(polygon + uncompressed))
    assert evaluate(gt, path, ("segm",)) == evaluate(gt, polygon + uncompressed, ("segm",))
    assert evaluate(gt, uncompressed, ("segm",))["segm"]["AR@10"] == evaluate(gt, compressed[1:], ("segm",))["segm"]["AR@10"]


def test_damaged_results_files_are_clear_errors(sized_case, tmp_path):
    path = tmp_path / "dets.json"
    good = json.dumps(as_dets(sized_case["annotations"]))
    path.write_text(good[: len(good) // 2])
    with pytest.raises(InputError, match="not valid JSON"):
        evaluate(sized_case, path)
    path.write_text(json.dumps({"annotations": []}))
    with pytest.raises(InputError, match="must be a JSON list"):
        evaluate(sized_case, path)
    wrong_size = as_dets(sized_case["annotations"][:1])
    wrong_size[0]["segmentation"] = encode_mask(np.ones((50, 50), bool))
    with pytest.raises(InputError, match="mask of size"):
        evaluate(sized_case, wrong_size)
