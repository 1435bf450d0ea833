"""A GPU node whose driver (or GPU) does not fit the installed torch build is a clear error at device selection,
naming the driver, the build and the TORCH_INDEX fix, instead of a silent fall-back to the CPU. torch's CUDA
entry points are replaced by ones that behave as torch does on such a node (its own error text, recorded)."""
from __future__ import annotations

import pytest
import torch

from ggn import dist, io
from ggn.io import InputError, cuda_available, gpu_arch_error, nvidia_driver_version, pick_device

# /proc/driver/nvidia/version of a node with the 535 driver, and torch's error there for a CUDA 13 build
PROC_535 = ("NVRM version: NVIDIA UNIX x86_64 Kernel Module  535.104.05  Sat Aug 19 01:15:15 UTC 2023\n"
            "GCC version:  gcc version 12.2.0 (Debian 12.2.0-14)\n")
TOO_OLD = ("The NVIDIA driver on your system is too old (found version 12020). Please update your GPU driver by "
           "downloading and installing a new version from the URL: http://www.nvidia.com/Download/index.aspx "
           "Alternatively, go to: https://pytorch.org to install a PyTorch version that has been compiled with your "
           "version of the CUDA driver.")


@pytest.fixture
def gpu_node(tmp_path, monkeypatch):
    """A node with the NVIDIA 535 driver loaded and a CUDA 13 torch build that cannot initialise on it."""
    proc = tmp_path / "version"
    proc.write_text(PROC_535)
    monkeypatch.setattr(io, "NVIDIA_DRIVER_FILE", str(proc))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.version, "cuda", "13.0")

    def init_fails(message=TOO_OLD):
        def init():
            raise RuntimeError(message)
        monkeypatch.setattr(torch.cuda, "init", init)

    init_fails()
    return init_fails


def test_driver_version_is_read_from_the_kernel_module_line(tmp_path):
    proc = tmp_path / "version"
    proc.write_text(PROC_535)
    assert nvidia_driver_version(str(proc)) == "535.104.05"
    assert nvidia_driver_version(str(tmp_path / "absent")) is None


@pytest.mark.parametrize("select", [lambda: pick_device("auto"), lambda: pick_device("cuda"),
                                    lambda: dist.init_distributed("auto")])
def test_driver_too_old_for_the_build_stops_device_selection_with_the_fix(gpu_node, select):
    with pytest.raises(InputError) as err:
        select()
    message = str(err.value)
    assert "driver 535.104.05" in message and "CUDA 13.0" in message and "too old" in message
    assert "TORCH_INDEX=https://download.pytorch.org/whl/cu126" in message and "Nothing was run on the CPU" in message


def test_a_job_given_no_gpu_on_a_gpu_node_runs_on_the_cpu(gpu_node):
    gpu_node("No CUDA GPUs are available")  # CUDA_VISIBLE_DEVICES empty: the CPU is meant
    assert cuda_available() is False and pick_device("auto").type == "cpu"


def test_cpu_build_or_no_driver_means_cpu_without_error(gpu_node, monkeypatch, tmp_path):
    monkeypatch.setattr(torch.version, "cuda", None)
    assert pick_device("auto").type == "cpu"
    monkeypatch.setattr(torch.version, "cuda", "13.0")
    monkeypatch.setattr(io, "NVIDIA_DRIVER_FILE", str(tmp_path / "absent"))
    assert pick_device("auto").type == "cpu"


def test_gpu_older_than_the_builds_kernels_is_named():
    archs = ["sm_75", "sm_80", "sm_86", "sm_90", "sm_100", "sm_120"]
    message = gpu_arch_error("Tesla V100-SXM2-32GB", (7, 0), archs, "2.14.1+cu130", "13.0")
    assert "Tesla V100" in message and "7.0" in message and "sm_75" in message and "cu126" in message
    assert gpu_arch_error("NVIDIA A100", (8, 0), archs, "2.14.1+cu130", "13.0") is None
