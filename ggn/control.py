"""The no-learning control: pairwise affinity read off the image itself instead of predicted by the PA network."""
from __future__ import annotations

import numpy as np

# `ggn extract --affinity` choices: the PA network, or the image-gradient boundary of `ggn eval-pa`.
AFFINITIES = ("network", "gradient")


def gradient_affinity(image: np.ndarray, input_size: int | None = None) -> np.ndarray:
    """float32 [1,h,w] in [0,1]: one minus the normalised colour-gradient magnitude (Gaussian sigma 1 + Sobel,
    max over channels, scaled by its 99.5th percentile; `ggn eval-pa`'s gradient baseline) of the image resized
    as the PA network sees it (long side `input_size`; None or 0: native). High inside smooth regions, low on
    colour edges: the potential the grouping would get if objects were exactly the regions between edges."""
    import torch

    from ggn.pa.evaluate import gradient_strength
    from ggn.pa.model import resize_image, resized_shape

    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"image must be HxWx3, got shape {image.shape}")
    h, w = resized_shape(image.shape[0], image.shape[1], input_size or 0)
    if (h, w) != image.shape[:2]:
        tensor = torch.from_numpy(np.array(image, dtype=np.uint8)).permute(2, 0, 1)
        image = resize_image(tensor, (h, w)).permute(1, 2, 0).numpy()
    return (1.0 - gradient_strength(image))[None].astype(np.float32)
