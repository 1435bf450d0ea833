"""Pretrained backbone weights: `imagenet` through torchvision's own cache, or a local file."""
from __future__ import annotations

import logging
import os
from pathlib import Path

from ggn.io import InputError, load_checkpoint

log = logging.getLogger(__name__)

# The reference configs load `torchvision://resnet50` (mmcv), i.e. torchvision's original ImageNet
# weights; in torchvision's weights API these are IMAGENET1K_V1 (not the later V2 recipe).
IMAGENET_WEIGHTS = {
    "resnet18": "ResNet18_Weights.IMAGENET1K_V1",
    "resnet34": "ResNet34_Weights.IMAGENET1K_V1",
    "resnet50": "ResNet50_Weights.IMAGENET1K_V1",
    "resnet101": "ResNet101_Weights.IMAGENET1K_V1",
}


def imagenet_weights_file(arch: str) -> tuple[Path, str]:
    """(path in torchvision's cache, download URL) of the ImageNet weights of a ResNet `arch`."""
    import torch
    import torchvision

    if arch not in IMAGENET_WEIGHTS:
        raise InputError(f"no ImageNet weights known for backbone {arch!r}; choose one of {sorted(IMAGENET_WEIGHTS)}")
    url = torchvision.models.get_weight(IMAGENET_WEIGHTS[arch]).url
    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(url), url


def load_imagenet_state(arch: str) -> dict:
    """State dict of torchvision's ImageNet ResNet: from the cache ($TORCH_HOME/hub/checkpoints), downloaded
    there once when missing; offline, an error that names the file to place there."""
    import torch

    path, url = imagenet_weights_file(arch)
    if not path.is_file():
        log.info("downloading %s ImageNet weights to %s", arch, path)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            match = torch.hub.HASH_REGEX.search(path.name)  # torchvision names carry a sha256 prefix
            torch.hub.download_url_to_file(url, str(path), hash_prefix=match.group(1) if match else None)
        except Exception as e:  # URLError, timeouts, hash mismatch: all mean "not in the cache"
            raise InputError(
                f"pretrained: imagenet needs torchvision's {arch} weights, which are not in the cache and could "
                f"not be downloaded ({type(e).__name__}: {e}). On a machine with internet, download {url} and "
                f"place it at {path} (the cache is $TORCH_HOME/hub/checkpoints; TORCH_HOME defaults to "
                f"~/.cache/torch), or set `pretrained` to a local weights file.") from None
    return load_checkpoint(path)


def load_pretrained_state(spec: str | os.PathLike, arch: str) -> tuple[dict, str]:
    """(state dict, where it came from) for `pretrained`: the word `imagenet` or a local weights file."""
    if str(spec) == "imagenet":
        path, _ = imagenet_weights_file(arch)
        return load_imagenet_state(arch), str(path)
    path = Path(spec)
    if not path.is_file():
        raise InputError(f"pretrained weights file {path} does not exist; give a local file or `imagenet`")
    return load_checkpoint(path), str(path)
