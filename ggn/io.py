"""File helpers shared by every stage: atomic writes, safe loading, logging, seeds."""
from __future__ import annotations

import errno
import json
import logging
import os
import random
import re
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger("ggn")


class InputError(SystemExit):
    """Bad user input: the message names the file or field and what to do about it."""

    def __init__(self, message: str):
        super().__init__(f"error: {message}")


class DiskFullError(SystemExit):
    """An output could not be written for lack of space: the message names the file; nothing torn is left."""

    def __init__(self, path: str | os.PathLike, cause: BaseException):
        super().__init__(f"error: disk full while writing {path} ({type(cause).__name__}: {str(cause)[:200]}); "
                         "the partial file was removed and the previous output, if any, is left as it was; free "
                         f"space on {Path(path).parent} (or choose another results folder) and run the same "
                         "command again")


class TrainingDiverged(SystemExit):
    """A non-finite loss or weights: training stops, naming the iteration; the last good checkpoint is kept."""

    def __init__(self, message: str):
        super().__init__(f"error: {message}")


class ProgressBarSafeHandler(logging.StreamHandler):
    """Log records written through tqdm.write, to the stream (stderr) as it is at each record: a message
    logged while a progress bar is drawn gets a line of its own above the bar instead of being printed onto
    the bar's line (and the bar is redrawn below it)."""

    def __init__(self):
        super().__init__()

    @property
    def stream(self):  # the current sys.stderr (pytest and callers may swap it), as StreamHandler reads once
        import sys

        return sys.stderr

    @stream.setter
    def stream(self, value):
        pass

    def emit(self, record: logging.LogRecord) -> None:
        from tqdm import tqdm

        try:
            tqdm.write(self.format(record), file=self.stream)
        except Exception:
            self.handleError(record)


def setup_logging(verbose: bool = False) -> None:
    handler = ProgressBarSafeHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S"))
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, handlers=[handler])
    logging.captureWarnings(True)  # library warnings (torch, PIL) too go above the bar, not onto it


def _umask() -> int:
    """The process's umask: from /proc on Linux (reading it there changes nothing, so threads writing files at
    the same moment are unaffected), else by setting and restoring it, the only way POSIX offers."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def plain_mode(folder: bool = False) -> int:
    """The mode a plain open() (0666) or mkdir() (0777) gives under the process's umask."""
    return (0o777 if folder else 0o666) & ~_umask()


def _atomic_open(path: Path):
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    # mkstemp creates 0600 files; the output gets the mode a plain open() would give (0666 less the umask), so
    # that collaborators on a shared cluster can read the results as they can read any other file the user writes
    try:
        os.fchmod(fd, plain_mode())
    except BaseException:
        os.close(fd)
        os.unlink(tmp)
        raise
    return fd, Path(tmp)


@contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "wb", fsync: bool = True):
    """A file written under a temporary name beside `path`, fsynced (unless `fsync` is False) and renamed into
    place only when the block completes: readers never see half a file, and a killed job leaves the old file (or
    none). A full disk ends it with DiskFullError, the temporary removed."""
    path = Path(path)
    fd, tmp = _atomic_open(path)
    try:
        with os.fdopen(fd, mode, **({} if "b" in mode else {"encoding": "utf-8"})) as f:
            yield f
            f.flush()
            if fsync:
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        full = is_disk_full(e, tmp)
        tmp.unlink(missing_ok=True)
        if full:
            raise DiskFullError(path, e) from None
        raise


def is_disk_full(error: BaseException, tmp: Path) -> bool:
    """Whether a failed write (of `tmp`, or in its folder) ran out of space: ENOSPC/EDQUOT, or (torch.save's zip writer reports only an
    'unexpected pos') a write error on a file system with no block left."""
    if isinstance(error, DiskFullError):
        return False  # a nested atomic write already said so
    if isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    if not isinstance(error, (OSError, RuntimeError)):
        return False
    if "No space left on device" in str(error) or "Disk quota exceeded" in str(error):
        return True
    try:
        return os.statvfs(tmp.parent).f_bavail == 0
    except OSError:
        return False


def check_writable(path: str | os.PathLike, what: str) -> None:
    """Refuse, before any work, an output whose folder cannot be written (permissions, a read-only file system,
    a file where a folder should be): the folder, or its nearest existing ancestor, gets a probe file."""
    target = Path(path).absolute().parent
    folder = target
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    if not folder.is_dir():
        raise InputError(f"{what} {path}: {folder} is a file, not a folder; choose another output path")
    try:
        fd, probe = tempfile.mkstemp(prefix=".ggn-write-check.", dir=folder)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise InputError(f"{what} {path}: cannot write in {folder} ({e.strerror or e}); choose a writable folder "
                         "or fix its permissions") from None


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_open(path, "wb") as f:
        f.write(data)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike, obj: Any, indent: int | None = None) -> None:
    atomic_write_text(path, json.dumps(obj, indent=indent, default=_json_default))


def _json_default(o: Any):
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, bytes):
        return o.decode("ascii")
    if isinstance(o, os.PathLike):  # parsed options (`type=Path`) as the command line gave them
        return os.fspath(o)
    raise TypeError(f"cannot serialise {type(o).__name__} to JSON")


def read_json(path: str | os.PathLike, what: str = "JSON file") -> Any:
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{what} {path} does not exist; check the path (or run the stage that makes it)")
    try:
        with open(path, "rb") as f:
            return json.load(f)
    except json.JSONDecodeError as e:
        raise InputError(f"{what} {path} is not valid JSON ({e}); regenerate or fix it") from None


def load_yaml(path: str | os.PathLike) -> Any:
    import yaml

    path = Path(path)
    if not path.is_file():
        raise InputError(f"YAML file {path} does not exist")
    with open(path) as f:
        try:
            return yaml.safe_load(f)
        except yaml.YAMLError as e:
            raise InputError(f"{path} is not valid YAML: {e}") from None


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> None:
    """torch.save through a temporary file and rename, so a killed job never leaves a torn checkpoint."""
    import torch

    with atomic_open(path, "wb") as f:
        torch.save(obj, f)


CHECKPOINT_KINDS = {"pa": "a PA checkpoint (the --out of `ggn train-pa`)",
                    "detector": "a detector checkpoint (the --out of `ggn train-detector`)"}


def checkpoint_kind(ckpt: Any) -> tuple[str | None, str]:
    """(kind, words) of what a loaded checkpoint holds: kind "pa", "detector", "weights" (a bare state dict such
    as torchvision's ImageNet ResNet), "state" (a training run's resumable state) or None (unrecognised)."""
    if not isinstance(ckpt, dict):
        return None, f"a {type(ckpt).__name__}, not a checkpoint dict"
    config = ckpt.get("config") if isinstance(ckpt.get("config"), dict) else {}
    if "offsets" in config:
        kind, words = "pa", f"a PA network ({config.get('backbone', '?')})"
    elif "kind" in config or "anchor_sizes" in config:
        name = {"oln": "OLN", "maskrcnn": "Mask R-CNN"}.get(config.get("kind", "maskrcnn"), config.get("kind"))
        kind, words = "detector", f"a {name} detector ({config.get('backbone', '?')})"
    elif ckpt and all(isinstance(k, str) for k in ckpt) and any(k.startswith(("layer1.", "conv1.")) for k in ckpt):
        return "weights", "bare ResNet weights (a backbone state dict such as torchvision's ImageNet file)"
    else:
        return None, f"no network this pipeline writes (its keys: {', '.join(map(str, list(ckpt)[:6]))})"
    if "optimizer" in ckpt and "epoch" in ckpt:
        return "state", f"the resumable training state of {words}, epoch {ckpt['epoch']}"
    if not isinstance(ckpt.get("model"), dict):
        return None, f"the config of {words} without its 'model' tensors"
    return kind, words


def load_checkpoint(path: str | os.PathLike, map_location: Any = "cpu", expect: str | None = None,
                    mmap: bool = False) -> dict:
    """Load a checkpoint with weights_only=True: tensors and plain values only, never pickled code.

    `mmap`: map the tensors instead of reading them (for callers that read only the plain values).

    `expect` ("pa" or "detector"): refuse, naming what the file holds, a checkpoint of another network, a
    training state, bare weights or a file this pipeline did not write."""
    import torch

    path = Path(path)
    if not path.is_file():
        raise InputError(f"checkpoint {path} does not exist; train it first or fix the path")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True, mmap=mmap)
    except Exception as e:  # torch raises several types for corrupt or unsafe files
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise InputError(f"checkpoint {path} cannot be read with torch.load(weights_only=True): it is truncated, "
                         f"damaged or not a PyTorch file ({type(e).__name__}: {first:.300}); copy or train it "
                         "again") from None
    if expect is not None:
        kind, words = checkpoint_kind(ckpt)
        if kind != expect:
            raise InputError(f"checkpoint {path} holds {words}, but this step needs {CHECKPOINT_KINDS[expect]}; "
                             "pass the right file")
    return ckpt


# Options that change how a training runs, not what it computes: a resumed run may differ in them.
RUN_ONLY_OPTIONS = frozenset({"device", "workers", "threads", "log_every", "verbose", "out", "amp",
                              "checkpoint_minutes"})


def file_sha256(path: str | os.PathLike) -> str:
    """Hex SHA-256 of a file's content, read in 1 MiB blocks."""
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def training_fingerprint(args: Any, inputs: list, ignore: tuple = ("epochs",)) -> str:
    """Hash of a training run's options and input files. An epoch checkpoint is resumed only by a run with
    the same fingerprint: after a change of the annotations, the pseudo-GT or a hyper-parameter (a Snakemake
    rerun), training starts afresh instead of continuing the old run. Files are hashed by content; folders
    (a pseudo-GT store) by their files' names, sizes and modification times. The epoch count is left out: the
    schedule does not depend on it (steps are explicit epochs), so a longer run continues a shorter one."""
    import hashlib

    digest = hashlib.sha256()
    options = {k: v for k, v in sorted(vars(args).items()) if not k.startswith("_") and k not in RUN_ONLY_OPTIONS and k not in ignore}
    digest.update(json.dumps(options, sort_keys=True, default=str).encode())
    for item in inputs:
        if item is None:
            continue
        path = Path(item)
        digest.update(str(path).encode())
        if path.is_dir():
            for f in sorted(p for p in path.rglob("*") if p.is_file()):
                st = f.stat()
                digest.update(f"{f.relative_to(path)}:{st.st_size}:{st.st_mtime_ns}".encode())
        elif path.is_file():
            with open(path, "rb") as fh:
                for chunk in iter(lambda: fh.read(1 << 20), b""):
                    digest.update(chunk)
    return digest.hexdigest()


def _divergence_hint(args: Any) -> str:
    return f"lower --lr (now {args.lr}) or lengthen --warmup-iters (now {args.warmup_iters}), then run again"


def stop_on_non_finite_loss(loss, losses: dict | None, *, step: str, epoch: int, batch: int, batches: int,
                            checkpoints: Path, args: Any) -> None:
    """Stop training at a NaN or infinite loss, before it reaches the weights: the error names the iteration
    (1-based: the epoch's batch and the run's global iteration) and where the last good checkpoint is."""
    import torch

    if bool(torch.isfinite(loss)):
        return
    parts = "" if not losses else " (" + ", ".join(f"{k} {float(v):.4g}" for k, v in losses.items()) + ")"
    raise TrainingDiverged(
        f"{step}: non-finite loss {float(loss)}{parts} at iteration {epoch * batches + batch} (epoch {epoch + 1}, "
        f"batch {batch} of {batches}); training stopped before this step reached the weights, and the last good "
        f"checkpoint in {checkpoints} (if any) is kept; {_divergence_hint(args)}")


def stop_on_non_finite_weights(model, *, step: str, epoch: int, batch: int, batches: int, checkpoints: Path,
                               args: Any) -> None:
    """Refuse to checkpoint weights (or buffers) that an update made NaN or infinite: the last good checkpoint
    stays the last one written."""
    import torch

    state = model.module.state_dict() if hasattr(model, "module") else model.state_dict()
    bad = [k for k, v in state.items() if torch.is_floating_point(v) and not bool(torch.isfinite(v).all())]
    if bad:
        raise TrainingDiverged(
            f"{step}: non-finite weights ({', '.join(bad[:3])}{', ...' if len(bad) > 3 else ''}) after iteration "
            f"{epoch * batches + batch} (epoch {epoch + 1}, batch {batch} of {batches}); training stopped without "
            f"writing them, and the last good checkpoint in {checkpoints} (if any) is kept; {_divergence_hint(args)}")


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (2**32))
    try:
        import torch

        torch.manual_seed(seed)
    except ImportError:  # pragma: no cover - torch is a hard dependency
        pass


NVIDIA_DRIVER_FILE = "/proc/driver/nvidia/version"  # present where the NVIDIA kernel driver is loaded
TORCH_BUILD_FIX = ("install the torch build made for this node's driver and GPU into the environment, e.g. "
                   "`rm -rf .venv && make install TORCH_INDEX=https://download.pytorch.org/whl/cu126` (CUDA 12.6: "
                   "driver 525 or newer, V100s too; docs/install.md), or have the driver updated")


def nvidia_driver_version(path: str | None = None) -> str | None:
    """The loaded NVIDIA kernel driver's version (e.g. '535.104.05'), None where no NVIDIA driver is loaded."""
    try:
        text = Path(path or NVIDIA_DRIVER_FILE).read_text(errors="replace")
    except OSError:
        return None
    # "NVRM version: NVIDIA UNIX x86_64 Kernel Module  535.104.05  Sat Aug 19 01:15:15 UTC 2023"
    match = re.search(r"Kernel Module(?: for \S+)?\s+(\d+(?:\.\d+)+)", text)
    return match.group(1) if match else "unknown"


def cuda_unusable_reason(error: str) -> bool:
    """Whether torch's CUDA initialisation error says that the driver is too old for this torch build (the case
    that would otherwise fall back to the CPU without a word and run for days)."""
    text = error.lower()
    return "driver" in text and ("too old" in text or "insufficient" in text)


def cuda_driver_error(error: str, driver: str | None, torch_version: str, torch_cuda: str | None) -> str:
    return (f"this node has an NVIDIA GPU (driver {driver or 'unknown'}) that the installed torch {torch_version} "
            f"(built for CUDA {torch_cuda}) cannot use: {error.strip().splitlines()[0]:.300}. Nothing was run on "
            f"the CPU instead; {TORCH_BUILD_FIX}")


def gpu_arch_error(gpu: str, capability: tuple[int, int], arch_list: list[str], torch_version: str,
                   torch_cuda: str | None) -> str | None:
    """An error when torch has no kernels for this GPU's compute capability (a V100, sm_70, under the CUDA 13
    build, whose kernels start at sm_75), None when it has."""
    archs = [int(a.split("_")[1]) for a in arch_list if a.startswith("sm_") and a.split("_")[1].isdigit()]
    cap = capability[0] * 10 + capability[1]
    if not archs or cap >= min(archs):
        return None
    return (f"GPU {gpu} has compute capability {capability[0]}.{capability[1]}, and the installed torch "
            f"{torch_version} (built for CUDA {torch_cuda}) has kernels for {', '.join(arch_list)} only; "
            f"{TORCH_BUILD_FIX}")


def cuda_available() -> bool:
    """torch.cuda.is_available(), except that a GPU the installed torch cannot use (driver too old for its CUDA,
    or a GPU older than its kernels) is an error naming the driver, the build and the fix, at device selection,
    instead of a silent fall-back to the CPU or a failure hours into the job."""
    import torch

    if torch.cuda.is_available():
        gpu = torch.cuda.get_device_name(0)
        message = gpu_arch_error(gpu, torch.cuda.get_device_capability(0), torch.cuda.get_arch_list(),
                                 str(torch.__version__), torch.version.cuda)
        if message:
            raise InputError(message)
        return True
    driver = nvidia_driver_version()
    if torch.version.cuda is None or driver is None:
        return False  # a CPU-only torch build, or no NVIDIA driver on this machine: the CPU is meant
    try:
        torch.cuda.init()
    except Exception as e:  # torch's own account of why CUDA is unusable here
        if cuda_unusable_reason(str(e)):
            raise InputError(cuda_driver_error(str(e), driver, str(torch.__version__), torch.version.cuda)) from None
        return False  # e.g. no GPU given to this job (CUDA_VISIBLE_DEVICES empty): the CPU is meant
    return torch.cuda.is_available()


def pick_device(name: str = "auto"):
    import torch

    if name == "auto":
        return torch.device("cuda" if cuda_available() else "cpu")
    if name.startswith("cuda"):
        cuda_available()  # the clear error where the driver or the GPU does not fit the torch build
    return torch.device(name)


def load_state_into(model, state: dict, path, what: str) -> None:
    """`model.load_state_dict(state)`, or an InputError naming the checkpoint when the tensors do not fit."""
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        raise InputError(f"{what} checkpoint {path}: its tensors do not fit the network its config describes "
                         f"({str(e).strip().splitlines()[0]:.200}); it was edited or written by another version: "
                         "train it again") from None


def machine_provenance() -> dict:
    """What produced a result: versions of torch, torchvision and numpy, and the CPU or GPU model it ran on
    (stored in final checkpoints and copied into table rows, so that a number names its machine)."""
    import platform

    import numpy
    import torch
    import torchvision

    cpu = platform.processor() or platform.machine()
    try:  # Linux: the marketing name of the first core
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    except OSError:
        pass
    # plain str and int only: torch.__version__ is a str subclass that torch.load(weights_only=True) refuses
    record = {"torch": str(torch.__version__), "torchvision": str(torchvision.__version__),
              "numpy": str(numpy.__version__), "python": platform.python_version(), "cpu": str(cpu),
              "cpu_count": int(os.cpu_count() or 0)}
    if torch.cuda.is_available():
        record["gpu"] = f"{torch.cuda.get_device_name(0)} x {torch.cuda.device_count()}"
    return record
