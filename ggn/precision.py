"""`--amp`: whether a stage runs its network under autocast (mixed precision) or in fp32, as one option per stage.

The reference (mmdetection 2.x without `fp16` in its configs) trains and infers in fp32; the paper rows set
`amp: off` in every stage (workflow/schemas/config.schema.yaml defaults, checked by tests/test_parity.py).
`auto` (the commands' default, the demo's) uses autocast on CUDA only.

`off` on CUDA is strict fp32: TF32 is turned off for convolutions and matrix products (PyTorch turns it on for
cuDNN convolutions by default on Ampere and newer GPUs; the reference's fp32 predates TF32). Measured on one
H200 (docs/extraction_precision.md): with TF32 on, same-size batches of 8 differ from one image at a time by up
to 3e-3 in the PA output and keep only 85-89% of its top-20 candidates; with TF32 off, by 2.4e-6 and 99.8%.
"""
from __future__ import annotations

import argparse

import torch

AMP_MODES = ("auto", "on", "off")


def add_amp_argument(parser: argparse.ArgumentParser, what: str) -> None:
    """`--amp [auto|on|off]` and `--no-amp` (what a config's `amp: false`, YAML's reading of `off`, becomes)."""
    parser.add_argument("--amp", nargs="?", const="on", choices=AMP_MODES, default="auto",
                        help=f"mixed precision of the {what}: auto (autocast on CUDA, fp32 elsewhere), on, or off "
                             "(fp32, as the reference)")
    parser.add_argument("--no-amp", dest="amp", action="store_const", const="off", help="same as --amp off")


def autocast_dtype(mode: str, device: torch.device | str, prefer_bf16: bool = True) -> torch.dtype | None:
    """The autocast dtype a stage runs with on `device`, or None for fp32. bf16 where the GPU has it (no
    loss scaling needed), else fp16; `on` off CUDA is bf16 on CPU."""
    if mode not in AMP_MODES:
        raise ValueError(f"--amp {mode!r}: choose one of {', '.join(AMP_MODES)}")
    device = torch.device(device)
    if mode == "off" and device.type == "cuda":
        strict_fp32()
    if mode == "off" or (mode == "auto" and device.type != "cuda"):
        return None
    if device.type != "cuda":
        return torch.bfloat16
    return torch.bfloat16 if prefer_bf16 and torch.cuda.is_bf16_supported() else torch.float16


def strict_fp32() -> None:
    """fp32 without TF32 in this process (cuDNN convolutions and CUDA matrix products): `--amp off` on CUDA."""
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False
