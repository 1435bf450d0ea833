"""Elements of the reference recipes: ImageNet weights through torchvision's cache, the detector's BN and frozen
stages, square anchors, L1 box losses, and the linear lr rule."""
from __future__ import annotations

import argparse
import urllib.error

import pytest
import torch
import torch.nn.functional as F
import torchvision

from ggn.coco_data import collate
from ggn.detector.data import build_training_dataset
from ggn.detector.model import EvalModeBatchNorm2d, L1RPN, build_detector, detector_config
from ggn.detector.train import resolve_freezing, sync_trainable_batchnorm
from ggn.dist import effective_lr
from ggn.io import InputError
from ggn.pa.model import build_pa_model, default_pa_config
from ggn.weights import imagenet_weights_file, load_pretrained_state

TINY = dict(backbone="resnet18", fpn_channels=16, representation_size=32, mask_channels=16, min_size=64,
            max_size=64, anchor_sizes=[8, 16, 32, 64, 128], rpn_pre_nms_top_n_train=200,
            rpn_post_nms_top_n_train=100, box_batch_size_per_image=64)


@pytest.fixture
def torch_home(tmp_path, monkeypatch):
    """A TORCH_HOME holding a (random) resnet18 under torchvision's file name, standing in for the download."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    path, url = imagenet_weights_file("resnet18")
    assert path.name == url.rsplit("/", 1)[1] == "resnet18-f37072fd.pth"
    assert path.parent == tmp_path / "torch" / "hub" / "checkpoints"
    path.parent.mkdir(parents=True)
    torch.manual_seed(3)
    weights = torchvision.models.resnet18(weights=None).state_dict()
    torch.save(weights, path)
    return weights


def test_imagenet_weights_come_from_torchvision_cache(torch_home):
    state, source = load_pretrained_state("imagenet", "resnet18")
    assert source.endswith("hub/checkpoints/resnet18-f37072fd.pth")
    assert torch.equal(state["layer2.0.conv1.weight"], torch_home["layer2.0.conv1.weight"])

    pa = build_pa_model(default_pa_config(backbone="resnet18", fpn_dim=16, ppm_dim=16), pretrained="imagenet")
    assert torch.equal(pa.backbone.layer3[1].conv2.weight, torch_home["layer3.1.conv2.weight"])
    assert torch.equal(pa.backbone.stem[0].weight, torch_home["conv1.weight"])

    from ggn.detector.model import load_pretrained

    det = build_detector(detector_config(**TINY))
    loaded, skipped, source = load_pretrained(det, "imagenet", "resnet18")
    assert source.endswith("resnet18-f37072fd.pth")
    assert loaded == len(torch_home) - 2 and skipped == 2  # all but the ImageNet classifier
    assert torch.equal(det.backbone.body.layer4[0].bn2.running_mean, torch_home["layer4.0.bn2.running_mean"])


def test_offline_without_the_file_names_it(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty"))

    def offline(*args, **kwargs):
        raise urllib.error.URLError("[Errno -2] Name or service not known")

    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    expected = tmp_path / "empty" / "hub" / "checkpoints" / "resnet50-0676ba61.pth"
    with pytest.raises(InputError) as err:
        load_pretrained_state("imagenet", "resnet50")
    assert str(expected) in str(err.value) and "download.pytorch.org/models/resnet50-0676ba61.pth" in str(err.value)
    with pytest.raises(InputError, match="does not exist"):
        load_pretrained_state(tmp_path / "missing.pth", "resnet50")


def test_reference_freezing_and_eval_mode_batchnorm(tiny_coco):
    torch.manual_seed(0)
    model = build_detector(detector_config(**TINY, norm="eval_bn", frozen_stages=1)).train()
    body = model.backbone.body
    assert not any(p.requires_grad for m in (body.conv1, body.bn1, body.layer1) for p in m.parameters())
    assert all(p.requires_grad for p in body.layer2.parameters())
    bns = [m for m in body.modules() if isinstance(m, EvalModeBatchNorm2d)]
    assert len(bns) == 20 and not any(m.training for m in bns)
    before = body.layer3[0].bn1.running_mean.clone()
    dataset = build_training_dataset(*tiny_coco, flip=0)
    images, targets = collate([dataset[0], dataset[1]])
    loss = sum(model(list(images), targets).values())
    loss.backward()
    assert torch.equal(body.layer3[0].bn1.running_mean, before)  # statistics fixed (norm_eval)
    assert body.layer3[0].bn1.weight.grad is not None  # affine trained (requires_grad=True)
    assert body.layer1[0].bn1.weight.grad is None and body.conv1.weight.grad is None
    # one square anchor per location (scale 8 x stride)
    assert model.rpn.anchor_generator.num_anchors_per_location() == [1] * 5
    assert model.rpn.head.cls_logits.out_channels == 1


def test_multi_gpu_keeps_fixed_batchnorm_statistics():
    # On several GPUs only trainable BN becomes SyncBatchNorm; the reference's norm_eval BN must stay fixed.
    for norm, synced in (("eval_bn", 0), ("frozen_bn", 0), ("bn", 20)):
        frozen = -1 if norm == "bn" else 1
        model = build_detector(detector_config(**TINY, norm=norm, frozen_stages=frozen))
        model = sync_trainable_batchnorm(model, norm, "cuda")  # module replacement only: runs on CPU too
        assert sum(isinstance(m, torch.nn.SyncBatchNorm) for m in model.modules()) == synced, norm
    model = build_detector(detector_config(**TINY, norm="bn", frozen_stages=-1))
    assert sync_trainable_batchnorm(model, "bn", "cpu") is model  # gloo: no SyncBatchNorm


def test_freezing_follows_pretrained():
    args = argparse.Namespace(norm="auto", frozen_stages=None, pretrained="imagenet")
    resolve_freezing(args)
    assert (args.norm, args.frozen_stages) == ("eval_bn", 1)
    args = argparse.Namespace(norm="auto", frozen_stages=None, pretrained=None)
    resolve_freezing(args)
    assert (args.norm, args.frozen_stages) == ("bn", -1)
    with pytest.raises(InputError, match="without --pretrained"):
        resolve_freezing(argparse.Namespace(norm="frozen_bn", frozen_stages=None, pretrained=None))


def test_rpn_l1_loss_is_mean_abs_over_sampled_anchors():
    model = build_detector(detector_config(**TINY, norm="bn", frozen_stages=-1))
    assert isinstance(model.rpn, L1RPN)
    torch.manual_seed(0)
    labels = [torch.tensor([1.0, 1.0, 0.0, 0.0, -1.0, 0.0])]
    targets = [torch.randn(6, 4)]
    deltas = torch.randn(6, 4)
    objectness = torch.randn(6, 1)
    obj_loss, box_loss = model.rpn.compute_loss(objectness, deltas, labels, targets)
    # 256 anchors per image are sampled, so all 5 labelled ones are: 2 positives, 3 negatives
    assert box_loss.item() == pytest.approx((deltas[:2] - targets[0][:2]).abs().sum().item() / 5, rel=1e-6)
    sampled = torch.tensor([0, 1, 2, 3, 5])
    expected = F.binary_cross_entropy_with_logits(objectness.flatten()[sampled], labels[0][sampled])
    assert obj_loss.item() == pytest.approx(expected.item(), rel=1e-6)


def test_box_head_l1_exceeds_smooth_l1_on_the_same_samples(tiny_coco):
    dataset = build_training_dataset(*tiny_coco, flip=0)
    images, targets = collate([dataset[0], dataset[1]])
    losses = {}
    for box_loss in ("l1", "smooth_l1"):
        torch.manual_seed(0)
        model = build_detector(detector_config(**TINY, norm="bn", frozen_stages=-1, box_loss=box_loss)).train()
        torch.manual_seed(1)
        losses[box_loss] = {k: v.item() for k, v in model(list(images), targets).items()}
    # same weights and samples: classification identical; |x| > smooth-L1(x) for every non-zero residual
    assert losses["l1"]["loss_classifier"] == pytest.approx(losses["smooth_l1"]["loss_classifier"], rel=1e-6)
    assert losses["l1"]["loss_box_reg"] > losses["smooth_l1"]["loss_box_reg"] > 0
    assert losses["l1"]["loss_rpn_box_reg"] > losses["smooth_l1"]["loss_rpn_box_reg"] > 0


def test_linear_lr_rule():
    assert effective_lr(0.02, 2, 8, 16) == pytest.approx(0.02)  # the reference's batch
    assert effective_lr(0.02, 2, 1, 16) == pytest.approx(0.0025)  # one GPU: 1/8 of the rate
    assert effective_lr(0.02, 4, 1, 4) == pytest.approx(0.02)
