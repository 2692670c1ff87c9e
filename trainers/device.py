"""Device, precision and reproducibility: where a stage runs and how it is seeded.

    from trainers.device import resolve_device, autocast, prepare_model, seed_everything, seed_worker
    device = resolve_device("auto")                 # cuda when present, else cpu
    seed_everything(0, device)                      # torch, numpy, python; deterministic kernels on CPU
    model = prepare_model(model, device, channels_last=True, compile=False)
    with autocast(device, "auto"):                  # bf16 on GPU, plain fp32 on CPU
        out = model(x)

Per-epoch data order does not depend on these global generators: :class:`EpochSampler` draws a permutation
from a generator seeded by ``(seed, epoch)``, so an epoch resumed from a checkpoint sees the same batches.
"""

from __future__ import annotations

import contextlib
import platform
import random
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Sampler

__all__ = ["resolve_device", "cpu_threads", "amp_dtype", "autocast", "prepare_model", "seed_everything", "seed_worker",
           "epoch_seed", "EpochSampler", "synchronize", "Timer", "cpu_name"]



def cpu_name() -> str:
    """The CPU's model name (``/proc/cpuinfo``, else what :mod:`platform` knows): figures name their machine."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "cpu"

def resolve_device(spec: str | torch.device | None = "auto") -> torch.device:
    """``"auto"`` / None = CUDA when present, else CPU; otherwise ``torch.device(spec)`` (checked).

    ``"auto"`` in a process that was given GPUs (``CUDA_VISIBLE_DEVICES`` set, e.g. by Ray for a trial) but has
    no usable CUDA runs on CPU and logs one warning line saying so (once per process and GPU list).
    """
    if spec is None or str(spec) == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        _warn_gpu_without_cuda()
        return torch.device("cpu")
    try:
        device = torch.device(spec)
    except RuntimeError as e:
        raise ValueError(f"device {spec!r}: {e}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {spec!r} requested but CUDA is not available (use --device cpu or auto)")
    return device


_WARNED_GPUS: set[str] = set()


def _warn_gpu_without_cuda() -> None:
    """One log line when GPUs were assigned to this process (``CUDA_VISIBLE_DEVICES``) but CUDA is unusable."""
    import logging
    import os

    gpus = os.environ.get("CUDA_VISIBLE_DEVICES", "").strip()
    if not gpus or gpus in ("-1", "NoDevFiles") or gpus in _WARNED_GPUS:
        return
    _WARNED_GPUS.add(gpus)
    build = f"CUDA {torch.version.cuda}" if torch.version.cuda else "a CPU-only torch build"
    logging.getLogger("trainers.device").warning(
        "keyhand device: GPU %s assigned (CUDA_VISIBLE_DEVICES=%s, pid %d) but CUDA is not available here "
        "(torch %s, %s): running on CPU", gpus, gpus, os.getpid(), torch.__version__, build)


def amp_dtype(device: torch.device, amp: str = "auto") -> torch.dtype | None:
    """The autocast dtype: bf16 on a CUDA device that supports it unless ``amp == "off"``; None (fp32) on CPU."""
    if amp not in ("auto", "off", "bf16"):
        raise ValueError(f"amp must be 'auto', 'off' or 'bf16', got {amp!r}")
    if amp == "off" or device.type != "cuda":
        return None
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else None


def autocast(device: torch.device, amp: str = "auto") -> contextlib.AbstractContextManager:
    """bf16 autocast on GPU (no GradScaler needed for bf16), a no-op on CPU (fp32)."""
    dtype = amp_dtype(device, amp)
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def prepare_model(model: torch.nn.Module, device: torch.device, channels_last: bool = False,
                  compile: bool = False) -> torch.nn.Module:
    """Move to ``device``; optionally channels-last memory format and ``torch.compile`` (off by default).

    The compiled wrapper shares parameters with ``model``: checkpoint ``model``, never the wrapper.
    """
    model = model.to(device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    if compile:
        return torch.compile(model)
    return model


@contextlib.contextmanager
def cpu_threads(n: int | None) -> Iterator[int]:
    """torch's intra-op CPU threads set to ``n`` for the block (None: left as they are), restored after; yields
    the count in effect. The count changes the order of float reductions, hence a CPU run's numbers
    (docs/statistics.md, "Threads")."""
    before = torch.get_num_threads()
    if n is not None and n != before:
        torch.set_num_threads(int(n))
    try:
        yield torch.get_num_threads()
    finally:
        if torch.get_num_threads() != before:
            torch.set_num_threads(before)


def seed_everything(seed: int, device: torch.device | None = None) -> None:
    """Seed python, numpy and torch (all devices); on CPU ask for deterministic algorithms (warn only).

    On CUDA, cuDNN autotuning is kept (speed) and results are reproducible only up to kernel choice.
    """
    random.seed(seed)
    np.random.seed(seed % 2**32)  # noqa: NPY002 - seeds the global RNG libraries draw from
    torch.manual_seed(seed)
    if device is None or device.type == "cpu":
        torch.use_deterministic_algorithms(True, warn_only=True)
    else:
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True


def seed_worker(worker_id: int) -> None:
    """DataLoader ``worker_init_fn``: numpy and python seeded from the worker's torch seed.

    torch gives each worker ``base_seed + worker_id``, where ``base_seed`` comes from the loader's generator
    (seeded per epoch by :func:`trainers.train.make_loader`), so worker draws are reproducible too.
    """
    s = torch.initial_seed() % 2**32
    np.random.seed(s)  # noqa: NPY002
    random.seed(s)


def epoch_seed(seed: int, epoch: int) -> int:
    """A 63-bit seed that is a function of ``(seed, epoch)`` only."""
    return int(np.random.SeedSequence([seed & 0xFFFFFFFF, epoch, 0x6B6579]).generate_state(2, np.uint32)
               .astype(np.uint64).dot(np.array([1, 2**32], np.uint64)) & 0x7FFFFFFFFFFFFFFF)


class EpochSampler(Sampler[int]):
    """Shuffled (or sequential) indices whose order is a function of ``(seed, epoch)`` only.

    Call :meth:`set_epoch` before iterating (the trainer does); like DistributedSampler, but one process.
    """

    def __init__(self, n: int, seed: int = 0, shuffle: bool = True) -> None:
        self.n, self.seed, self.shuffle, self.epoch = int(n), int(seed), bool(shuffle), 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __iter__(self) -> Iterator[int]:
        if not self.shuffle:
            return iter(range(self.n))
        g = torch.Generator().manual_seed(epoch_seed(self.seed, self.epoch))
        return iter(torch.randperm(self.n, generator=g).tolist())

    def __len__(self) -> int:
        return self.n


def synchronize(device: torch.device | str | None) -> None:
    """Wait for queued CUDA work (no-op on CPU), so wall-clock timings measure the work."""
    if device is not None and torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


class Timer:
    """``with Timer(device) as t: ...`` then ``t.ms``: wall time in ms, CUDA-synchronised at both ends."""

    def __init__(self, device: torch.device | str | None = None) -> None:
        self.device, self.ms = device, 0.0

    def __enter__(self) -> Timer:
        synchronize(self.device)
        self._t0 = time.perf_counter()
        return self

    def __exit__(self, *exc) -> None:
        synchronize(self.device)
        self.ms = (time.perf_counter() - self._t0) * 1e3

