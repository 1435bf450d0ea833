"""Detector stage: model building, one training step per kind, data with pseudo-GT, predictions, resume."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO

from ggn.cli import main as ggn_main
from ggn.coco_data import CocoInstances, collate
from ggn.detector.data import DetectorDataset, RandomHorizontalFlip, build_training_dataset
from ggn.detector.model import build_detector, detector_config, load_detector
from ggn.detector.oln import aligned_iou, centerness
from ggn.io import InputError, load_checkpoint

TINY_MODEL = dict(backbone="resnet18", fpn_channels=16, representation_size=32, mask_channels=16,
                  min_size=64, max_size=64, anchor_sizes=[8, 16, 32, 64, 128],
                  rpn_pre_nms_top_n_train=200, rpn_post_nms_top_n_train=100, box_batch_size_per_image=64)
TINY_FLAGS = ["--backbone", "resnet18", "--fpn-channels", "16", "--representation-size", "32",
              "--mask-channels", "16", "--min-size", "64", "--max-size", "64",
              "--anchor-sizes", "8", "16", "32", "64", "128", "--rpn-pre-nms-top-n-train", "200",
              "--rpn-post-nms-top-n-train", "100", "--box-batch-size-per-image", "64",
              "--batch-size", "2", "--workers", "0", "--threads", "1", "--warmup-iters", "2", "--lr", "0.01"]


@pytest.fixture(autouse=True)
def one_thread():
    """One CPU thread: tiny models spend most of a multi-threaded step waiting on a shared 2-core machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _empty(target: dict) -> dict:
    out = dict(target)
    for key in ("masks", "boxes", "labels", "iscrowd"):
        out[key] = target[key][:0]
    return out


@pytest.mark.parametrize("kind", ["maskrcnn", "oln"])
def test_one_training_step_is_finite_with_an_empty_image(tiny_coco, kind):
    torch.manual_seed(0)
    model = build_detector(detector_config(kind=kind, **TINY_MODEL)).train()
    dataset = build_training_dataset(*tiny_coco, flip=0)
    images, targets = collate([dataset[0], dataset[1]])
    targets = [targets[0], _empty(targets[1])]
    assert len(targets[0]["boxes"]) > 0
    expected = {"loss_objectness", "loss_rpn_box_reg", "loss_box_reg", "loss_mask",
                "loss_classifier" if kind == "maskrcnn" else "loss_box_iou"}
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    before = [p.detach().clone() for p in model.parameters()]
    losses = model(list(images), targets)
    assert set(losses) == expected
    loss = sum(losses.values())
    assert torch.isfinite(loss) and all(torch.isfinite(v) for v in losses.values())
    loss.backward()
    opt.step()
    changed = sum(not torch.equal(a, b) for a, b in zip(before, model.parameters()))
    assert changed > len(before) // 2


def test_oln_inference_scores_are_geometric_means(tiny_coco):
    torch.manual_seed(0)
    model = build_detector(detector_config(kind="oln", box_detections_per_img=100, rpn_pre_nms_top_n_test=300,
                                           rpn_post_nms_top_n_test=300, **TINY_MODEL)).eval()
    image, _ = build_training_dataset(*tiny_coco, flip=0)[0]
    with torch.no_grad():
        out = model([image])[0]
    assert out["boxes"].shape[1] == 4 and 0 < len(out["boxes"]) == len(out["scores"]) == len(out["masks"]) <= 100
    assert (out["scores"] >= 0).all() and (out["scores"] <= 1).all()
    assert torch.all(out["scores"][:-1] >= out["scores"][1:])
    assert out["masks"].shape[-2:] == image.shape[-2:]


def test_centerness_and_iou_targets():
    gt = torch.tensor([[0.0, 0.0, 10.0, 20.0]] * 3)
    anchors = torch.tensor([[4.0, 9.0, 6.0, 11.0],      # centre (5, 10): the box centre
                            [1.0, 9.0, 3.0, 11.0],      # centre (2, 10): l=2, r=8
                            [20.0, 9.0, 22.0, 11.0]])   # centre outside the box
    c = centerness(anchors, gt)
    assert torch.allclose(c, torch.tensor([1.0, (2 / 8) ** 0.5, 0.0]))
    iou = aligned_iou(torch.tensor([[0.0, 0.0, 10.0, 10.0], [0.0, 0.0, 10.0, 10.0]]),
                      torch.tensor([[0.0, 0.0, 10.0, 10.0], [5.0, 0.0, 15.0, 10.0]]))
    assert torch.allclose(iou, torch.tensor([1.0, 1 / 3]))


def test_flip_keeps_masks_and_boxes_in_step(tiny_coco):
    dataset = DetectorDataset(CocoInstances(*tiny_coco), transform=RandomHorizontalFlip(p=1.0))
    plain = DetectorDataset(CocoInstances(*tiny_coco))
    image, target = dataset[0]
    image0, target0 = plain[0]
    assert torch.equal(image, image0.flip(-1))
    assert torch.equal(target["masks"], target0["masks"].flip(-1))
    from ggn.coco_data import masks_to_boxes
    assert torch.equal(target["boxes"], masks_to_boxes(target["masks"]))


def _pseudo_gt(tiny_coco, tmp_path) -> tuple[Path, int, int]:
    """pseudo_gt.json with two masks on image 1 (a new square and a copy of nothing annotated)."""
    ann_file, _ = tiny_coco
    coco = json.loads(Path(ann_file).read_text())
    h = w = coco["images"][0]["height"]
    anns = []
    for i, (y, x) in enumerate([(2, 2), (40, 40)], start=1):
        m = np.zeros((h, w), bool)
        m[y:y + 10, x:x + 12] = True
        rle = mask_utils.encode(np.asfortranarray(m.astype(np.uint8)))
        rle["counts"] = rle["counts"].decode()
        anns.append({"id": i, "image_id": 1, "category_id": 1, "segmentation": rle, "bbox": [x, y, 12, 10],
                     "area": 120.0, "iscrowd": 0, "score": 0.5, "gt_iou": 0.0})
    path = tmp_path / "pseudo_gt.json"
    path.write_text(json.dumps({"images": coco["images"], "annotations": anns,
                                "categories": [{"id": 1, "name": "object"}]}))
    n_gt = sum(a["image_id"] == 1 for a in coco["annotations"])
    return path, n_gt, len(anns)


def test_ggn_dataset_adds_pseudo_gt_and_baseline_does_not(tiny_coco, tmp_path):
    pseudo, n_gt, n_pseudo = _pseudo_gt(tiny_coco, tmp_path)
    ggn = build_training_dataset(*tiny_coco, variant="ggn", pseudo_gt=pseudo, flip=0)
    base = build_training_dataset(*tiny_coco, variant="baseline", flip=0)
    _, t_ggn = ggn[0]
    _, t_base = base[0]
    assert t_ggn["image_id"] == t_base["image_id"] == 1
    assert len(t_base["masks"]) == n_gt
    assert len(t_ggn["masks"]) == n_gt + n_pseudo
    assert torch.equal(t_ggn["masks"][:n_gt], t_base["masks"])
    assert torch.equal(t_ggn["boxes"][n_gt:], torch.tensor([[2.0, 2, 14, 12], [40, 40, 52, 50]]))
    assert (t_ggn["labels"] == 1).all()
    # other images are untouched
    assert len(ggn[1][1]["masks"]) == len(base[1][1]["masks"])


def test_pseudo_store_is_read_per_image(tiny_coco, tmp_path):
    pseudo, n_gt, n_pseudo = _pseudo_gt(tiny_coco, tmp_path)
    anns = json.loads(pseudo.read_text())["annotations"]

    class Store:  # the documented PseudoStore interface: annotations_for(image_id) -> list[dict]
        calls: list[int] = []

        def annotations_for(self, image_id):
            self.calls.append(image_id)
            return [a for a in anns if a["image_id"] == image_id]

    store = Store()
    dataset = build_training_dataset(*tiny_coco, variant="ggn", pseudo_store=store, flip=0)
    assert store.calls == []  # nothing loaded up front
    assert len(dataset[0][1]["masks"]) == n_gt + n_pseudo
    assert store.calls == [1]


def test_crowd_regions_are_not_targets(tiny_coco, tmp_path):
    ann_file, images = tiny_coco
    coco = json.loads(Path(ann_file).read_text())
    first = next(a for a in coco["annotations"] if a["image_id"] == 1)
    first["iscrowd"] = 1
    n = sum(a["image_id"] == 1 for a in coco["annotations"])
    path = tmp_path / "crowd.json"
    path.write_text(json.dumps(coco))
    _, target = build_training_dataset(path, images, flip=0)[0]
    assert len(target["masks"]) == n - 1 and not target["iscrowd"].any()


def test_ggn_variant_without_pseudo_gt_names_the_flags(tiny_coco):
    with pytest.raises(InputError, match="--pseudo-gt"):
        build_training_dataset(*tiny_coco, variant="ggn")


def _train(tiny_coco, out: Path, epochs: int, *extra: str) -> int:
    ann_file, images = tiny_coco
    return ggn_main(["train-detector", "--train-json", str(ann_file), "--images", str(images), "--out", str(out),
                     "--epochs", str(epochs), "--lr-steps", "1", *TINY_FLAGS, *extra])


@pytest.fixture(scope="module")
def one_epoch_maskrcnn(tmp_path_factory):
    """(tiny COCO, checkpoint) of a 1-epoch Mask R-CNN training: shared by the results-contract test and the
    resume test, which needs exactly this run as its "killed after epoch 1" state (the slow tier's time)."""
    from conftest import make_tiny_coco

    root = tmp_path_factory.mktemp("one_epoch")
    tiny = make_tiny_coco(root)
    ckpt = root / "det" / "checkpoint.pt"
    assert _train(tiny, ckpt, 1) == 0
    return tiny, ckpt


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["maskrcnn", "oln"])
def test_train_and_predict_follow_the_results_contract(request, tmp_path, kind):
    if kind == "maskrcnn":  # the shared run (maskrcnn is the default kind)
        tiny_coco, ckpt = request.getfixturevalue("one_epoch_maskrcnn")
    else:
        tiny_coco = request.getfixturevalue("tiny_coco")
        ckpt = tmp_path / "det" / "checkpoint.pt"
        assert _train(tiny_coco, ckpt, 1, "--kind", kind) == 0
    ann_file, images = tiny_coco
    saved = torch.load(ckpt, weights_only=True)
    assert set(saved) == {"model", "config", "provenance"} and saved["config"]["kind"] == kind
    assert {"torch", "torchvision", "numpy", "cpu"} <= set(saved["provenance"])
    log = [json.loads(line) for line in (ckpt.parent / "train_log.jsonl").read_text().splitlines()]
    assert log[-1]["epoch"] == 1 and np.isfinite(log[-1]["mean"]["loss"])
    dets_path = tmp_path / "detections.json"
    assert ggn_main(["predict", "--checkpoint", str(ckpt), "--annotations", str(ann_file), "--images", str(images),
                     "--out", str(dets_path), "--batch-size", "3", "--threads", "1", "--max-detections", "50"]) == 0
    dets = json.loads(dets_path.read_text())
    gt = json.loads(Path(ann_file).read_text())
    sizes = {im["id"]: (im["height"], im["width"]) for im in gt["images"]}
    assert {d["image_id"] for d in dets} == set(sizes)  # every image gets detections (score threshold 0)
    for d in dets:
        assert set(d) == {"image_id", "category_id", "bbox", "segmentation", "score"}
        assert d["category_id"] == 1 and isinstance(d["segmentation"]["counts"], str)
        assert len(d["bbox"]) == 4 and d["bbox"][2] >= 0 and d["bbox"][3] >= 0
        assert tuple(d["segmentation"]["size"]) == sizes[d["image_id"]]
        assert mask_utils.decode(d["segmentation"]).shape == sizes[d["image_id"]]
    per_image = {i: [d["score"] for d in dets if d["image_id"] == i] for i in sizes}
    assert all(s == sorted(s, reverse=True) and len(s) <= 50 for s in per_image.values())
    coco_gt = COCO(str(ann_file))
    coco_dt = coco_gt.loadRes(str(dets_path))
    assert len(coco_dt.getAnnIds()) == len(dets)


@pytest.mark.slow
def test_resume_after_interruption_matches_uninterrupted_run(one_epoch_maskrcnn, tmp_path):
    import shutil

    tiny_coco, one_epoch = one_epoch_maskrcnn
    straight = tmp_path / "straight" / "checkpoint.pt"
    resumed = tmp_path / "resumed" / "checkpoint.pt"
    assert _train(tiny_coco, straight, 2) == 0
    # "killed" after epoch 1: a copy of the shared 1-epoch run (only its epoch checkpoint matters; the
    # fingerprint leaves the output path out, so the copy resumes as the original would)
    shutil.copytree(one_epoch.parent, resumed.parent)
    after_one = load_checkpoint(resumed.parent / "epochs" / "epoch_000.pt")
    assert after_one["epoch"] == 0 and set(after_one) >= {"model", "optimizer", "scheduler", "rng"}
    resumed.unlink()

    loaded_states = []
    original = torch.optim.SGD.load_state_dict

    def spy(self, state):  # record what the resumed run restores
        import copy
        loaded_states.append(copy.deepcopy(state))  # training later updates the buffers in place
        return original(self, state)

    torch.optim.SGD.load_state_dict = spy
    try:
        assert _train(tiny_coco, resumed, 2) == 0
    finally:
        torch.optim.SGD.load_state_dict = original
    assert len(loaded_states) == 1
    saved_momenta = [s["momentum_buffer"] for s in after_one["optimizer"]["state"].values()]
    restored = [s["momentum_buffer"] for s in loaded_states[0]["state"].values()]
    assert len(saved_momenta) > 0 and all(torch.equal(a, b) for a, b in zip(saved_momenta, restored))
    epochs_logged = [r["epoch"] for r in map(json.loads, (resumed.parent / "train_log.jsonl").read_text().splitlines())
                     if "mean" in r]
    assert epochs_logged == [1, 2]
    a = torch.load(straight, weights_only=True)["model"]
    b = torch.load(resumed, weights_only=True)["model"]
    assert all(torch.allclose(a[k].float(), b[k].float(), atol=1e-5) for k in a)
    assert sorted(p.name for p in (resumed.parent / "epochs").iterdir()) == ["epoch_001.pt"]


def test_other_pseudo_gt_trains_afresh(tiny_coco, tmp_path):
    """A Snakemake rerun after merge.top_k changed: the ggn detector's old epoch checkpoints are not resumed."""
    out = tmp_path / "ggn" / "checkpoint.pt"
    pseudo, _, _ = _pseudo_gt(tiny_coco, tmp_path)
    assert _train(tiny_coco, out, 1, "--variant", "ggn", "--pseudo-gt", str(pseudo), "--max-images", "2") == 0
    first = load_checkpoint(out)["model"]
    data = json.loads(pseudo.read_text())
    data["annotations"] = data["annotations"][:1]
    pseudo.write_text(json.dumps(data))  # same file, fewer pseudo-GT masks
    assert _train(tiny_coco, out, 1, "--variant", "ggn", "--pseudo-gt", str(pseudo), "--max-images", "2") == 0
    epochs = [r["epoch"] for r in map(json.loads, (out.parent / "train_log.jsonl").read_text().splitlines())
              if "mean" in r]
    assert epochs == [1, 1]  # trained again, not "resumed past the end"
    assert not torch.equal(first["roi_heads.box_predictor.cls_score.weight"],
                           load_checkpoint(out)["model"]["roi_heads.box_predictor.cls_score.weight"])


def test_load_detector_round_trip(tiny_coco, tmp_path):
    torch.manual_seed(0)
    config = detector_config(**TINY_MODEL)
    model = build_detector(config)
    path = tmp_path / "ckpt.pt"
    torch.save({"model": model.state_dict(), "config": config}, path)
    loaded, cfg = load_detector(path)
    assert cfg == config and not loaded.training
    assert all(torch.equal(v, loaded.state_dict()[k]) for k, v in model.state_dict().items())
    with pytest.raises(InputError, match="detector checkpoint"):
        torch.save({"weights": 1}, path)
        load_detector(path)


def test_ggn_dataset_reads_the_merge_store(tiny_coco, tmp_path):
    pa = pytest.importorskip("pyarrow")
    from ggn.merge import STORE_SCHEMA, StoreWriter

    pseudo, n_gt, n_pseudo = _pseudo_gt(tiny_coco, tmp_path)
    rows = [{"id": a["id"], "image_id": a["image_id"], "rank": r, "score": a["score"], "gt_iou": a["gt_iou"],
             "bbox": a["bbox"], "area": a["area"], "height": a["segmentation"]["size"][0],
             "width": a["segmentation"]["size"][1], "rle": a["segmentation"]["counts"]}
            for r, a in enumerate(json.loads(pseudo.read_text())["annotations"])]
    writer = StoreWriter(tmp_path / "store", num_partitions=4)
    writer.add(pa.Table.from_pylist(rows, schema=STORE_SCHEMA))
    writer.close()
    from_store = build_training_dataset(*tiny_coco, variant="ggn", pseudo_store=tmp_path / "store", flip=0)
    from_json = build_training_dataset(*tiny_coco, variant="ggn", pseudo_gt=pseudo, flip=0)
    for i in range(len(from_json)):
        a, b = from_store[i][1], from_json[i][1]
        assert torch.equal(a["masks"], b["masks"]) and torch.equal(a["boxes"], b["boxes"])
    assert len(from_store[0][1]["masks"]) == n_gt + n_pseudo


def test_pretrained_resnet_weights_load_into_the_backbone(tmp_path):
    from torchvision.models import resnet18

    torch.manual_seed(1)
    resnet = resnet18(weights=None)
    path = tmp_path / "resnet18.pt"
    torch.save(resnet.state_dict(), path)
    from ggn.detector.model import load_pretrained

    for norm, counters in (("bn", 0), ("eval_bn", 0), ("frozen_bn", 20)):
        model = build_detector(detector_config(**TINY_MODEL, norm=norm))
        loaded, skipped, _ = load_pretrained(model, path)
        assert skipped == 2  # the ImageNet classifier (fc.weight, fc.bias) has no place in the detector
        # FrozenBatchNorm2d has no num_batches_tracked (20 in a ResNet-18): nothing to load, nothing skipped.
        assert loaded == len(resnet.state_dict()) - 2 - counters
        assert torch.equal(model.backbone.body.layer3[0].conv1.weight, resnet.layer3[0].conv1.weight)
        assert torch.equal(model.backbone.body.layer3[0].bn1.running_var, resnet.layer3[0].bn1.running_var)
    with pytest.raises(InputError, match="fits"):
        torch.save({"something.else": torch.zeros(3)}, path)
        load_pretrained(model, path)


def test_mask_branch_runs_in_chunks_at_inference_with_the_same_outputs():
    """1500 detections through the mask head at once took ~3.4 GB on CPU; chunks give the same logits."""
    import torch

    from ggn.detector.model import MASK_CHUNK, build_detector, detector_config

    torch.manual_seed(0)
    model = build_detector(detector_config(backbone="resnet18", fpn_channels=16, mask_channels=16, norm="bn",
                                           frozen_stages=-1)).eval()
    head, predictor = model.roi_heads.mask_head, model.roi_heads.mask_predictor
    x = torch.randn(MASK_CHUNK * 2 + 5, 16, 14, 14)
    calls = []
    hook = head[0].register_forward_hook(lambda m, i, o: calls.append(i[0].shape[0]))
    with torch.inference_mode():
        chunked = predictor(head(x))
        assert calls == [MASK_CHUNK, MASK_CHUNK, 5]  # the convolutions saw chunks, the caller one batch
        whole = torch.cat([predictor(head(x[i:i + 1])) for i in range(len(x))])
    hook.remove()
    assert chunked.shape[0] == len(x) and torch.allclose(chunked, whole, atol=1e-5)
    model.train()
    assert head(x[:3]).shape[0] == 3  # training passes straight through


def test_pseudo_gt_alone_trains_only_the_images_that_have_some(tiny_coco, tmp_path):
    """`--no-ground-truth` (the ImageNet row): the file's annotations are ignored, images without pseudo-GT are
    left out, and each kept image carries exactly its pseudo-GT masks."""
    from ggn.detector.data import build_training_dataset

    train_json, images = tiny_coco
    coco = json.loads(Path(train_json).read_text())
    pseudo = [dict(a, id=k + 1, score=1.0) for k, a in enumerate(coco["annotations"]) if a["image_id"] in (2, 4)]
    (tmp_path / "pseudo.json").write_text(json.dumps({"images": coco["images"], "annotations": pseudo,
                                                     "categories": [{"id": 1, "name": "object"}]}))
    ds = build_training_dataset(train_json, images, "ggn", pseudo_gt=tmp_path / "pseudo.json", flip=0,
                                ground_truth=False)
    assert [ds[i][1]["image_id"] for i in range(len(ds))] == [2, 4]
    for i, image_id in enumerate((2, 4)):
        assert len(ds[i][1]["masks"]) == sum(a["image_id"] == image_id for a in pseudo)
    with_gt = build_training_dataset(train_json, images, "ggn", pseudo_gt=tmp_path / "pseudo.json", flip=0)
    assert len(with_gt) == len(coco["images"])  # with ground truth: every image, GT + pseudo-GT
    assert len(with_gt[1][1]["masks"]) == 2 * sum(a["image_id"] == 2 for a in coco["annotations"])


def test_roi_align_and_mask_targets_are_the_references():
    """The reference's RoI extractors are mmcv RoIAlign(sampling_ratio=0) with aligned=True (mmcv's default;
    class_agn_mask_rcnn_pa.py bbox/mask_roi_extractor) and its mask targets are binarised at 0.5
    (mmdet BitmapMasks.crop_and_resize(binarize=True)); LEGACY_CONFIG rebuilds torchvision's for old checkpoints."""
    from torchvision.models.detection.roi_heads import project_masks_on_boxes
    from torchvision.ops import MultiScaleRoIAlign, roi_align

    from ggn.detector.model import LEGACY_CONFIG, AlignedMultiScaleRoIAlign, mask_targets

    for kind in ("maskrcnn", "oln"):
        model = build_detector(detector_config(kind=kind, **TINY_MODEL))
        for pool in (model.roi_heads.box_roi_pool, model.roi_heads.mask_roi_pool):
            assert type(pool) is AlignedMultiScaleRoIAlign and pool.sampling_ratio == 0
    legacy = build_detector(detector_config(**{**TINY_MODEL, **LEGACY_CONFIG}))
    assert type(legacy.roi_heads.box_roi_pool) is MultiScaleRoIAlign and legacy.roi_heads.box_roi_pool.sampling_ratio == 2

    # the pooler: each RoI pooled with aligned=True on its level (a 20 px box on the stride-4 level)
    torch.manual_seed(0)
    feats = {str(i): torch.randn(1, 3, 64 >> i, 64 >> i) for i in range(4)}
    box = torch.tensor([[10.3, 5.7, 30.1, 25.2]])
    pool = AlignedMultiScaleRoIAlign(["0", "1", "2", "3"], 7, 0)
    got = pool(feats, [box], [(256, 256)])
    rois = torch.cat([torch.zeros(1, 1), box], 1)
    assert torch.allclose(got, roi_align(feats["0"], rois, 7, 0.25, 0, aligned=True))
    assert not torch.allclose(got, roi_align(feats["0"], rois, 7, 0.25, 0, aligned=False))

    # mask targets: binary ones are 0/1, the soft ones torchvision's own
    masks = torch.zeros(2, 40, 40)
    masks[0, 8:30, 5:21] = 1
    masks[1, 0:13, 17:39] = 1
    boxes = torch.tensor([[4.0, 6.0, 24.0, 33.0], [15.0, 0.0, 39.0, 15.0], [2.5, 2.5, 19.5, 19.5]])
    matched = torch.tensor([0, 1, 0])
    binary = mask_targets(masks, boxes, matched, 28, binary=True, aligned=True)
    assert set(binary.unique().tolist()) == {0.0, 1.0}
    soft = mask_targets(masks, boxes, matched, 28, binary=False, aligned=False)
    assert torch.equal(soft, project_masks_on_boxes(masks, boxes, matched, 28))
    assert ((soft > 0) & (soft < 1)).any()


@pytest.mark.parametrize("kind", ["maskrcnn", "oln"])
def test_mask_loss_uses_the_configured_targets(tiny_coco, kind):
    """Same weights, same sample: the soft-target model's loss_mask is torchvision's; the reference model's
    differs from it (binarised, aligned targets) and is finite."""
    dataset = build_training_dataset(*tiny_coco, flip=0)
    images, targets = collate([dataset[0], dataset[1]])
    losses = {}
    for name, extra in (("reference", {}), ("torchvision", dict(mask_target="soft", roi_aligned=False,
                                                                 roi_sampling_ratio=2))):
        torch.manual_seed(0)
        model = build_detector(detector_config(kind=kind, **TINY_MODEL, **extra)).train()
        torch.manual_seed(1)
        losses[name] = model(list(images), [dict(t) for t in targets])["loss_mask"]
    assert torch.isfinite(losses["reference"]) and losses["reference"] > 0
    assert not torch.isclose(losses["reference"], losses["torchvision"])


def test_ground_truth_boxes_are_the_annotations_own(tiny_coco, tmp_path):
    """The reference trains on each annotation's `bbox` (coco_split.py `_parse_ann_info`), not on a box rebuilt
    from the rasterised mask: a polygon's box has sub-pixel corners that rasterising rounds away. A bbox under
    1 px (which mmdet skips) falls back to the mask's box; `--boxes mask` keeps the mask's box."""
    from ggn.coco_data import masks_to_boxes

    ann_file, images = tiny_coco
    coco = json.loads(Path(ann_file).read_text())
    first = coco["images"][0]["id"]
    anns = [a for a in coco["annotations"] if a["image_id"] == first and not a.get("iscrowd")]
    assert len(anns) >= 2
    anns[0]["bbox"] = [a + 0.3 for a in anns[0]["bbox"][:2]] + list(anns[0]["bbox"][2:])
    anns[1]["bbox"] = [anns[1]["bbox"][0], anns[1]["bbox"][1], 0.5, 3.0]
    edited = tmp_path / "train.json"
    edited.write_text(json.dumps(coco))
    by_annotation = build_training_dataset(edited, images, flip=0, boxes="annotation")
    index = by_annotation.base.ids.index(first)
    _, target = by_annotation[index]
    from_masks = masks_to_boxes(target["masks"])
    x, y, w, h = anns[0]["bbox"]
    assert torch.allclose(target["boxes"][0], torch.tensor([x, y, x + w, y + h]))
    assert not torch.equal(target["boxes"][0], from_masks[0])
    assert torch.equal(target["boxes"][1], from_masks[1])  # the 0.5 px wide bbox: the mask's box
    _, by_mask = build_training_dataset(edited, images, flip=0, boxes="mask")[index]
    assert torch.equal(by_mask["boxes"], from_masks)
    with pytest.raises(InputError, match="--boxes"):
        build_training_dataset(edited, images, boxes="polygon")


def test_rpn_trains_no_anchor_in_the_padding_of_a_batch():
    """A landscape and a portrait image batched together: the anchors beyond each image's own size (padded
    to 32) take no part in RPN assignment or sampling, as the reference's valid flags (pad_shape); torchvision's
    RPN (`rpn_valid_anchors: false`) samples them as negatives."""
    from torchvision.models.detection.image_list import ImageList

    from ggn.detector.model import valid_anchor_flags

    flags = valid_anchor_flags([(24, 24), (12, 12)], (96, 96), (64, 96), 1)
    assert flags[:576].view(24, 24)[:16].all() and not flags[:576].view(24, 24)[16:].any()
    assert flags[576:].view(12, 12)[:8].all() and not flags[576:].view(12, 12)[8:].any()

    images = ImageList(torch.randn(2, 3, 96, 96), [(64, 96), (96, 64)])
    targets = [{"boxes": torch.tensor([[10.0, 10.0, 40.0, 40.0]])}, {"boxes": torch.tensor([[5.0, 50.0, 30.0, 90.0]])}]
    for exclude in (True, False):
        torch.manual_seed(0)
        model = build_detector(detector_config(rpn_valid_anchors=exclude, **TINY_MODEL)).train()
        seen = {}
        sampler = model.rpn.fg_bg_sampler

        def spy(labels, sampler=sampler):
            seen["labels"] = [lab.clone() for lab in labels]
            return sampler(labels)

        model.rpn.fg_bg_sampler = spy
        features = model.backbone(images.tensors)
        _, losses = model.rpn(images, features, targets)
        assert all(torch.isfinite(v) for v in losses.values())
        sizes = [tuple(f.shape[-2:]) for f in features.values()]
        for labels, size in zip(seen["labels"], images.image_sizes):
            valid = valid_anchor_flags(sizes, (96, 96), size, 1)
            assert (~valid).sum() > 0 and (labels[valid] >= 0).any() and (labels[valid] == 1).any()
            if exclude:
                assert (labels[~valid] == -1).all()
            else:
                assert (labels[~valid] == 0).any()


def test_aspect_grouped_batches_hold_one_orientation():
    """mmdet's GroupSampler (the reference's training loader): each batch is all landscape or all portrait;
    the epoch keeps len // batch_size batches; with a single orientation the order is left as it was."""
    from ggn.detector.train import aspect_grouped, epoch_order

    landscape = [i % 3 == 0 for i in range(23)]
    order = epoch_order(23, seed=0, epoch=1)
    for batch_size in (1, 2, 4, 5):
        grouped = aspect_grouped(order, landscape, batch_size)
        assert len(grouped) == 23 // batch_size * batch_size
        batches = [grouped[k:k + batch_size] for k in range(0, len(grouped), batch_size)]
        assert all(len({landscape[i] for i in b}) == 1 for b in batches)
        assert len(set(grouped)) >= len(grouped) - batch_size  # at most one batch completed with repeats
    assert aspect_grouped(order, [False] * 23, 4) == order[:20]
    assert aspect_grouped(order, landscape, 1) == order


def test_fpn_and_box_head_initialised_as_mmdet():
    """mmdet 2.x (the reference): FPN convs Xavier-uniform, box-head FCs Xavier-uniform, classifier normal(0.01),
    regressor normal(0.001), zero biases; torchvision's FPN uses Kaiming-uniform(a=1)."""
    import math

    torch.manual_seed(0)
    model = build_detector(detector_config(**{**TINY_MODEL, "fpn_channels": 64, "representation_size": 256}))
    conv = model.backbone.fpn.inner_blocks[3][0]  # lateral 1x1, 512 -> 64 channels
    bound = math.sqrt(6 / (conv.in_channels + conv.out_channels))
    assert conv.weight.abs().max() <= bound and conv.weight.abs().max() > 0.9 * bound and not conv.bias.any()
    fc6 = model.roi_heads.box_head.fc6
    assert fc6.weight.abs().max() <= math.sqrt(6 / sum(fc6.weight.shape)) and not fc6.bias.any()
    pred = model.roi_heads.box_predictor
    assert abs(pred.cls_score.weight.std().item() - 0.01) < 0.003
    assert abs(pred.bbox_pred.weight.std().item() - 0.001) < 0.0003
    torch.manual_seed(0)
    plain = build_detector(detector_config(**{**TINY_MODEL, "fpn_channels": 64, "head_init": "torchvision"}))
    # torchvision: Kaiming-uniform(a=1), bound sqrt(3 / fan_in), narrower here
    assert plain.backbone.fpn.inner_blocks[3][0].weight.abs().max() <= math.sqrt(3 / 512) < 0.8 * bound
