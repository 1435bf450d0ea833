"""PA network: shapes, norms, checkpoint round trip, predict_affinity, one optimisation step."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from ggn.io import atomic_torch_save
from ggn.pa.model import (build_pa_model, default_pa_config, load_backbone_weights, load_pa_model,
                          normalize_images, predict_affinity)
from ggn.pa.targets import affinity_loss, affinity_targets, neighbour_offsets


def tiny_config(**kw):
    return default_pa_config(backbone="resnet18", fpn_dim=16, ppm_dim=16, input_size=64, **kw)


@pytest.mark.parametrize("norm,reduce,channels", [("bn", "mean", 1), ("gn", "none", 8)])
def test_forward_shape(norm, reduce, channels):
    torch.manual_seed(0)
    model = build_pa_model(tiny_config(norm=norm, reduce=reduce)).eval()
    with torch.no_grad():
        out = model(torch.randn(2, 3, 64, 96))
    assert out.shape == (2, channels, 64, 96)
    assert torch.isfinite(out).all()
    has_gn = any(isinstance(m, torch.nn.GroupNorm) for m in model.modules())
    assert has_gn == (norm == "gn")


def test_checkpoint_round_trip_weights_only(tmp_path):
    torch.manual_seed(0)
    config = tiny_config(offsets=[list(o) for o in neighbour_offsets((1, 2))], reduce="none")
    model = build_pa_model(config).eval()
    path = tmp_path / "pa.pt"
    atomic_torch_save({"model": model.state_dict(), "config": config}, path)
    raw = torch.load(path, weights_only=True)
    assert set(raw) == {"model", "config"}
    loaded, cfg = load_pa_model(path, "cpu")
    assert cfg == config and not loaded.training
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))
    assert loaded(x).shape[1] == 16


def test_predict_affinity_non_square_and_batched():
    torch.manual_seed(0)
    config = tiny_config()
    model = build_pa_model(config)
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 255, (40, 100, 3), dtype=np.uint8),
              rng.integers(0, 255, (90, 30, 3), dtype=np.uint8),
              rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)]
    out = predict_affinity(model, images, config, "cpu", batch_size=2)
    assert [o.shape for o in out] == [(1, 26, 64), (1, 64, 21), (1, 64, 64)]
    assert all(o.dtype == np.float32 and o.min() >= 0 and o.max() <= 1 for o in out)
    big = predict_affinity(model, images[:1], config, "cpu", input_size=128)
    assert big[0].shape == (1, 51, 128)
    # an image batched with another of its size gives the same result as alone (eval mode, no padding)
    pair = predict_affinity(model, [images[2], images[2][::-1].copy()], config, "cpu")
    assert np.allclose(pair[0], out[2], atol=1e-5)


def test_one_step_reduces_loss():
    torch.manual_seed(0)
    config = tiny_config()
    model = build_pa_model(config).train()
    ids = torch.zeros((2, 32, 32), dtype=torch.int32)
    ids[0, 5:20, 5:15] = 1
    ids[0, 10:25, 15:30] = 2
    ids[1, 3:30, 3:13] = 1
    images = (ids.unsqueeze(1).repeat(1, 3, 1, 1) * 80 + 20).to(torch.uint8)
    x = normalize_images(images, config)
    target, counted = affinity_targets(ids, reduce="mean")
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    losses = []
    for _ in range(3):
        loss = affinity_loss(model(x), target, counted)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]


def test_pretrained_backbone_file(tmp_path):
    import torchvision

    torch.manual_seed(1)
    resnet = torchvision.models.resnet18(weights=None)
    path = tmp_path / "resnet18.pth"
    torch.save(resnet.state_dict(), path)
    model = build_pa_model(tiny_config(), pretrained=path)
    assert torch.equal(model.backbone.stem[0].weight, resnet.conv1.weight)
    assert torch.equal(model.backbone.layer4[1].conv2.weight, resnet.layer4[1].conv2.weight)
    wrong = tmp_path / "resnet50.pth"
    torch.save(torchvision.models.resnet50(weights=None).state_dict(), wrong)
    with pytest.raises(SystemExit, match="do not fit"):
        load_backbone_weights(build_pa_model(tiny_config()), wrong)


def test_same_size_batches_give_each_image_its_output_alone():
    """The paper rows' extraction (`--batching same_size`): a mixed batch of portrait and landscape images at
    native size gives every image exactly what one image alone, unpadded, gets (the reference runs one image
    at a time, tools/extract_pa_masks.py); padded batching does not for the image that gets padded."""
    torch.manual_seed(0)
    config = {**tiny_config(), "input_size": 0}
    model = build_pa_model(config)
    rng = np.random.default_rng(1)
    images = [rng.integers(0, 255, shape, dtype=np.uint8)
              for shape in [(45, 70, 3), (70, 45, 3), (45, 70, 3), (70, 45, 3), (45, 70, 3)]]
    alone = [predict_affinity(model, [im], config, "cpu", batch_size=1, batching="same_size", amp="off")[0]
             for im in images]
    with torch.no_grad():  # alone = the bare network on the unpadded image
        x = normalize_images(torch.from_numpy(images[1]).permute(2, 0, 1)[None], config)
        assert np.allclose(alone[1], torch.sigmoid(model.eval()(x))[0].numpy(), atol=1e-6)
    batched = predict_affinity(model, images, config, "cpu", batch_size=8, batching="same_size", amp="off")
    assert [b.shape for b in batched] == [a.shape for a in alone]
    assert max(float(np.abs(b - a).max()) for a, b in zip(alone, batched)) < 1e-5
    padded = predict_affinity(model, images, config, "cpu", batch_size=8, batching="padded", amp="off")
    assert max(float(np.abs(p - a).max()) for a, p in zip(alone, padded)) > 1e-3
    with pytest.raises(ValueError, match="batching"):
        predict_affinity(model, images, config, "cpu", batching="sorted")
