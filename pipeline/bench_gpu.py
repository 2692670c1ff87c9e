"""One prepared GPU check: every CUDA path and figure in one command (issue 13), exercised on CPU in the suite.

    make gpu-check                                  # measure, write runs/gpu-check/, fill docs/gpu.md's GPU table
    keyhand bench gpu [--device auto|cuda|cpu] [--out runs/gpu-check] [--update-readme] [--only a,b]
    keyhand bench gpu --from-json runs/gpu-check/gpu_check.json --update-readme   # docs/gpu.md from a saved run
    python -m pipeline.bench_gpu ...                # the same without the installed entry point

It writes ``gpu_check.json`` (every figure: value, unit, note, pass flag) and ``gpu_check.md`` (one table) into
``--out`` after every section (a run cut short keeps what it measured) and prints a summary. Exit status 1 when
a check fails (CUDA tests, agreement, dtypes, a non-finite loss) or a section raises; the others still run.

Sections, in order, with the planned time on one H100/H200 (a section starts no new measurement once its
budget is spent; every cell it leaves says why):

    section      GPU s  what
    cuda_tests      40  pytest -m cuda of the test files holding cuda-marked tests (tests/test_cuda.py, test_mano.py)
    data            15  a synth-stb set rendered by keyhand.data.synthetic, prepared (§3.1) per model size
    dtypes           8  under bf16 autocast (CUDA, and CPU with the 64² stand-ins): the VE runs bf16, every op
                        inside the HE (MANO layer, projection, renderer) is fp32 (a TorchDispatchMode records
                        the dtypes of the op outputs between hooks on the HE)
    agreement       20  same weights and images, CPU fp32 reference vs the device: max abs 3D joint difference
                        fp32 ≤ 1e-3 mm (TF32 off, cuDNN deterministic), bf16 autocast ≤ 1 mm, channels_last ≤ 1e-3 mm;
                        SFE heatmaps and VE block output (image-dependent, unlike a random VE's v) relative max
                        difference ≤ 1e-4 (fp32, channels_last), ≤ 5e-2 (bf16)
    gradients       20  pipeline.gpu_agree: d loss / d t, s, R, θ, β through MANO, the projection and the renderer
                        (nmr, soft), the 2D joints and silhouette, and the SFE / VE weight gradients: CUDA fp32 vs
                        CPU fp32, each against fp32's own error (CPU fp32 vs float64); on CPU that floor itself
    inference       45  img/s at batch 1/8/64/256: fp32 (TF32 on, as the trainer runs), bf16 autocast,
                        bf16 + channels_last; peak memory, MFU
    compile         60  torch.compile (inductor, static shapes) of the two models at batch 256
    latency         10  batch-1 latency per component (SFE / VE / HE incl. the renderer), CUDA-synchronised
    training        40  training img/s through trainers.train.train_step (fit's own step: host batch, one read per
                        term, clipping, Adam; amp "auto") at batch 6 and the largest batch that fits (doubling
                        from 6 until out of memory or a cuBLAS / cuDNN allocation failure, then two bisections)
    loader          12  the paper profile's data loader img/s, in the main process and with its own settings
                        (num_workers auto, prefetch 4, pinned memory), beside the training step's img/s
    renderer        10  keyhand.geometry.render both modes (nmr, soft), batch 64 at 256²: fwd, fwd+bwd, memory
    train_steps     50  up to 320 steps (8 epochs × 40) of trainers.train.fit, paper profile, synthetic data
    total          330  no section starts after DEADLINE_S = 345 s since the process started: under 6 minutes

Every section stops starting new measurements once its budget is spent and its cells say so (the pytest of
cuda_tests is stopped at its budget). A compilation already started is not interrupted: the compile section
can overrun by at most one compilation. ``$OUT/gpu-check`` is the default ``--out`` when ``$OUT`` is set.

Models: "paper" is the paper profile's model (256², hourglass width 256, VE2); "default" the default profile's
(128²). FLOPs per image come from torch.utils.flop_counter.FlopCounterMode (keyhand.model.profile for inference,
forward+backward of a training step for training; the renderer is not counted). MFU = FLOPs/image × img/s ÷ the
device's dense peak (:data:`PEAK_TFLOPS`: bf16 rows against bf16, fp32 rows against TF32 when TF32 is on, as the
trainer sets it on CUDA); a device not in the table gives "n/a (unknown peak)".

On CPU (``--device cpu``, or no CUDA) the same code runs with small sizes and no budgets, on one thread (a
shared 2-core machine then does not oversubscribe): both models at 64² ("paper" with widths 32/16 and dense
×1/16), batches 1 and 2, torch.compile traced by dynamo with the "eager" backend for one model and batch
(inductor's C++ build takes ~100 s on a 2-core CPU), a batch search capped at 12, 6 training steps. CPU peak
memory is the live heap above the start (glibc ``mallinfo2``, sampled). Cells that cannot exist on CPU (CUDA
agreement, MFU) say why. tests/test_gpu_check.py runs it so in ``make test`` (about 45 s).
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import datetime as _dt
import gc
import json
import math
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from keyhand.atomic import atomic_write_text
from pipeline.gpu_agree import VIEW_GROUPS

REPO = Path(__file__).resolve().parents[1]
T0 = time.perf_counter()  # the process's start, near enough: imports and CUDA's start-up count against DEADLINE_S
JSON_NAME, MD_NAME = "gpu_check.json", "gpu_check.md"
README_BEGIN, README_END = "<!-- gpu-figures:begin -->", "<!-- gpu-figures:end -->"
NOT_YET = "not measured yet"
SCHEMA = 1

#: Dense (no sparsity) peak TFLOP/s by device-name pattern, first match wins: (fp32, tf32, bf16); None = no such
#: unit. From the vendors' data sheets (the sparse figures halved).
PEAK_TFLOPS: tuple[tuple[str, float, float | None, float | None], ...] = (
    (r"H[12]00.*NVL", 60.0, 417.5, 835.0),
    (r"H100.*PCIe", 51.2, 378.0, 756.5),
    (r"H100|H200", 67.0, 494.7, 989.4),              # SXM ("NVIDIA H100 80GB HBM3", "NVIDIA H200")
    (r"A100", 19.5, 156.0, 312.0),                   # 40 / 80 GB, SXM4 / PCIe
    (r"\bL4\b", 30.3, 60.0, 121.0),
    (r"\bA10\b", 31.2, 62.5, 125.0),                 # not the A10G
    (r"RTX 4090", 82.6, 82.6, 165.2),
    (r"V100.*PCIE", 14.0, None, None),
    (r"V100", 15.7, None, None),
    (r"\bT4\b", 8.1, None, None),
)

#: (section, planned GPU seconds = its budget on CUDA). On CPU the sizes are fixed and small: no budget applies.
#: They add up to 330 s: with CUDA's start-up and the imports, the whole check ends within 6 minutes (DEADLINE_S).
SECTIONS: tuple[tuple[str, float], ...] = (
    ("cuda_tests", 40), ("data", 15), ("dtypes", 8), ("agreement", 20), ("gradients", 20), ("inference", 45),
    ("compile", 60), ("latency", 10), ("training", 40), ("loader", 12), ("renderer", 10), ("train_steps", 50),
)
#: On CUDA no section starts once the check has run this long (start-up included): it ends within 6 minutes.
DEADLINE_S = 345.0
VARIANTS = {"fp32": "fp32", "bf16": "bf16 autocast", "bf16_cl": "bf16 + channels_last",
            "compiled": "bf16 + channels_last + torch.compile"}
TOL_MM = {"fp32": 1e-3, "bf16": 1.0, "channels_last": 1e-3}
#: Relative tolerances (max abs difference / max abs reference) of the SFE heatmaps and the VE block output.
TOL_REL = {"fp32": 1e-4, "bf16": 5e-2, "channels_last": 1e-4}
AGREE_FIGURES = ("joints_mm", "heatmaps_rel", "ve_latent_rel", "joints_2d_px", "silhouette")
COMPONENTS = ("sfe", "ve", "he", "total")
GRAD_GROUPS = VIEW_GROUPS   # the HE inputs whose gradients the gradients section compares


# ------------------------------------------------------------------------------------------------ the plan

@dataclass(frozen=True)
class Plan:
    """Sizes of one run: full on CUDA, small on CPU."""

    device: torch.device
    small: bool
    models: dict[str, Any]                    # name -> keyhand.model.framework.ModelConfig
    infer_batches: tuple[int, ...]
    compile_jobs: tuple[tuple[str, int], ...]  # (model, batch) in the order they are compiled
    compile_backend: str
    train_batch: int = 6
    max_batch_cap: int = 4096
    render_batch: int = 64
    render_size: int = 256
    agree_batch: int = 4
    synth_n: int = 240
    synth_hw: tuple[int, int] = (240, 320)
    step_batch: int = 6
    step_epochs: int = 8
    workers: int = 4
    warmup: int = 3
    min_s: float = 0.4
    max_iter: int = 50
    repeats: int = 20
    threads: int | None = None    # torch CPU threads for the run (None = as set)
    deadline_s: float | None = None   # no section starts after this many seconds since the process started
    budgets: dict[str, float] = field(default_factory=dict)   # section -> seconds; absent = no limit

    def budget(self, section: str) -> float:
        return self.budgets.get(section, math.inf)

    @property
    def steps(self) -> int:
        return self.step_epochs * (self.synth_n // self.step_batch)


def make_plan(device: torch.device) -> Plan:
    """The full plan on CUDA, the small one elsewhere (module docstring)."""
    from trainers.config import TrainConfig

    paper, default = TrainConfig.for_profile("paper").model, TrainConfig.for_profile("default").model
    if device.type == "cuda":
        batches = (1, 8, 64, 256)
        return Plan(device, False, {"paper": paper, "default": default}, batches,
                    (("paper", 256), ("default", 256)), "inductor",
                    workers=min(4, os.cpu_count() or 1), budgets=dict(SECTIONS), deadline_s=DEADLINE_S)
    small = {"image_size": 64, "sfe_channels": 32, "ve_input_size": 64, "ve_channels": 16, "dense_scale": 1 / 16}
    models = {"paper": type(paper)(**{**paper.model_dump(), **small}),
              "default": type(default)(**{**default.model_dump(), "image_size": 64})}
    return Plan(device, True, models, (1, 2), (("paper", 2),), "eager", max_batch_cap=12, render_batch=4,
                render_size=64, agree_batch=2, synth_n=12, synth_hw=(120, 160), step_batch=4, step_epochs=2,
                workers=0, warmup=1, min_s=0.0, max_iter=2, repeats=3, threads=1)


def model_label(name: str, cfg, small: bool) -> str:
    """One line naming a model and its size."""
    base = {"paper": "paper profile", "default": "default profile"}[name]
    extra = " (CPU stand-in)" if small and name == "paper" else ""
    return (f"{base}{extra}: {cfg.image_size}², hourglass width {cfg.sfe_channels}, VE input {cfg.ve_input_size}, "
            f"{cfg.ve_dense} ×{cfg.dense_scale:g}")


# ----------------------------------------------------------------------------------------------- figures

@dataclass
class Figure:
    """One cell: a number or a dtype name, or None with a note saying why."""

    key: str
    section: str
    label: str
    unit: str = ""
    value: float | int | str | None = None
    note: str = ""
    ok: bool | None = None


def declare(plan: Plan) -> dict[str, Figure]:
    """Every figure the run reports, in table order (the test checks each is in the JSON and the Markdown)."""
    figs: list[Figure] = []

    def add(key: str, section: str, label: str, unit: str = "") -> None:
        figs.append(Figure(key, section, label, unit))

    add("cuda_tests.selected", "cuda_tests", "CUDA-only tests selected", "tests")
    for k in ("passed", "failed", "skipped"):
        add(f"cuda_tests.{k}", "cuda_tests", f"CUDA-only tests {k}", "tests")
    add("data.samples", "data", "synthetic samples rendered and prepared", "samples")
    devs = [plan.device.type] + (["cpu"] if plan.device.type == "cuda" else [])
    for m in plan.models:
        for d in devs:
            p = f"dtypes.{m}.{d}"
            add(f"{p}.ve_output", "dtypes", f"{m}: VE output dtype under {d} bf16 autocast (bf16 expected)")
            add(f"{p}.mano_output", "dtypes", f"{m}: MANO layer output dtype under {d} autocast")
            add(f"{p}.joints_2d", "dtypes", f"{m}: projected 2D joints dtype under {d} autocast")
            add(f"{p}.silhouette", "dtypes", f"{m}: rendered silhouette dtype under {d} autocast")
            add(f"{p}.he_low_precision_ops", "dtypes", f"{m}: ops inside the HE with a bf16/fp16 output", "ops")
    for m in plan.models:
        for mode in ("fp32", "bf16", "channels_last"):
            what = {"fp32": "fp32 (TF32 off) vs CPU fp32", "bf16": "bf16 autocast vs CPU fp32",
                    "channels_last": "channels_last fp32 (TF32 off) vs CPU fp32"}[mode]
            add(f"agree.{m}.{mode}.joints_mm", "agreement", f"{m}: max abs 3D joint difference, {what}", "mm")
            add(f"agree.{m}.{mode}.heatmaps_rel", "agreement", f"{m}: SFE heatmaps, relative max difference, {what}")
            add(f"agree.{m}.{mode}.ve_latent_rel", "agreement",
                f"{m}: VE block output, relative max difference, {what}")
            add(f"agree.{m}.{mode}.joints_2d_px", "agreement", f"{m}: max abs 2D joint difference, {what}", "px")
            add(f"agree.{m}.{mode}.silhouette", "agreement", f"{m}: mean abs silhouette difference, {what}")
        add(f"agree.{m}.sensitivity_mm", "agreement",
            f"{m}: max abs difference between two images' joints (the scale)", "mm")
    vs = "CUDA fp32 (TF32 off) vs CPU fp32" if plan.device.type == "cuda" else "CPU float64 vs CPU fp32 (the floor)"
    for mode in ("nmr", "soft"):
        for g in GRAD_GROUPS:
            add(f"grad.he.{mode}.{g}", "gradients", f"HE ({mode}): d loss / d {g}, relative L2 difference, {vs}")
        add(f"grad.he.{mode}.joints_2d_px", "gradients", f"HE ({mode}): max abs 2D joint difference, {vs}", "px")
        add(f"grad.he.{mode}.silhouette_px", "gradients", f"HE ({mode}): silhouette pixels changed, {vs}", "px")
        add(f"grad.he.{mode}.silhouette_mean", "gradients", f"HE ({mode}): mean abs silhouette difference, {vs}")
    for m in plan.models:
        for part in ("sfe", "ve"):
            add(f"grad.{m}.{part}", "gradients",
                f"{m}: {part.upper()} weight gradients (Eq. 12 loss), relative L2 difference, {vs}")
    add("loader.main_img_s", "loader", "data loader img/s, paper profile, augmentation in the main process", "img/s")
    add("loader.profile_img_s", "loader", "data loader img/s, the paper profile's loader settings", "img/s")
    add("loader.train_img_s", "loader", "training step img/s beside it (paper model, batch 6, fit's step)", "img/s")
    add("loader.feeds", "loader", "the paper profile's loader keeps the training step fed")
    for m in plan.models:
        add(f"{m}.params_m", "inference", f"{m}: parameters", "M")
        add(f"{m}.gflops_inference", "inference", f"{m}: forward GFLOPs per image", "GFLOP")
        add(f"{m}.gflops_train", "training", f"{m}: training step (fwd+bwd) GFLOPs per image", "GFLOP")
        for v, vlabel in VARIANTS.items():
            sec = "compile" if v == "compiled" else "inference"
            for b in plan.infer_batches:
                p = f"{m}.infer.{v}.b{b}"
                add(f"{p}.img_s", sec, f"{m}: inference {vlabel}, batch {b}", "img/s")
                add(f"{p}.peak_mib", sec, f"{m}: inference peak memory, {vlabel}, batch {b}", "MiB")
                add(f"{p}.mfu", sec, f"{m}: inference MFU, {vlabel}, batch {b}", "%")
                if v == "compiled":
                    add(f"{p}.compile_s", sec, f"{m}: torch.compile time (first call), batch {b}", "s")
        for prec in ("fp32", "bf16"):
            for c in COMPONENTS:
                add(f"{m}.latency.{prec}.{c}_ms", "latency", f"{m}: batch-1 latency {c.upper()}, {prec}", "ms")
        for which in ("b6", "max"):
            what = f"batch {plan.train_batch}" if which == "b6" else "largest batch that fits"
            if which == "max":
                add(f"{m}.train.max.batch", "training", f"{m}: largest training batch that fits (search)", "img")
                add(f"{m}.train.max.first_oom", "training", f"{m}: smallest batch that ran out of memory", "img")
            add(f"{m}.train.{which}.img_s", "training", f"{m}: training img/s, {what}", "img/s")
            add(f"{m}.train.{which}.step_ms", "training", f"{m}: training step time, {what}", "ms")
            add(f"{m}.train.{which}.peak_mib", "training", f"{m}: training peak memory, {what}", "MiB")
            add(f"{m}.train.{which}.mfu", "training", f"{m}: training MFU, {what}", "%")
    for mode in ("nmr", "soft"):
        what = f"{mode}, batch {plan.render_batch} at {plan.render_size}²"
        add(f"renderer.{mode}.fwd_ms", "renderer", f"renderer forward, {what}", "ms")
        add(f"renderer.{mode}.fwd_bwd_ms", "renderer", f"renderer forward+backward, {what}", "ms")
        add(f"renderer.{mode}.peak_mib", "renderer", f"renderer peak memory (fwd+bwd), {what}", "MiB")
    for k, label, unit in (("steps", "training steps run (paper profile, fit)", "steps"),
                           ("loss_first", "mean loss, first tenth of the steps", ""),
                           ("loss_last", "mean loss, last tenth of the steps", ""),
                           ("loss_ratio", "last / first", ""),
                           ("finite", "every loss finite", ""),
                           ("decreasing", "loss decreased", ""),
                           ("step_ms", "median step time (data loading included)", "ms"),
                           ("curve", "loss curve (mean per tenth of the steps)", "")):
        add(f"train_steps.{k}", "train_steps", label, unit)
    return {f.key: f for f in figs}


def fmt(f: Figure | dict) -> str:
    """A cell: the value with its unit, or "n/a (why)"."""
    d = f if isinstance(f, dict) else f.__dict__
    v, unit, note = d["value"], d["unit"], d["note"]
    if v is None:
        return note or NOT_YET
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, str):
        return v
    if unit == "%":
        return f"{100 * v:.1f} %"
    if unit in ("tests", "ops", "img", "steps", "samples"):
        return f"{int(v)}"
    if unit == "mm" or unit == "px" or unit == "":
        return f"{v:.3g}" + (f" {unit}" if unit else "")
    if abs(v) >= 100:
        return f"{v:,.0f} {unit}"
    return f"{v:.3g} {unit}"


# ------------------------------------------------------------------------------------------------ helpers

def peak_tflops(name: str) -> dict[str, float | None] | None:
    """{"fp32", "tf32", "bf16"} dense peak TFLOP/s of a device named ``name``; None when unknown."""
    for pattern, fp32, tf32, bf16 in PEAK_TFLOPS:
        if re.search(pattern, name, re.IGNORECASE):
            return {"fp32": fp32, "tf32": tf32, "bf16": bf16}
    return None




def device_info(device: torch.device) -> dict[str, Any]:
    """Name, memory, versions and peak FLOP/s of the device."""
    info: dict[str, Any] = {"type": device.type, "torch": torch.__version__, "threads": torch.get_num_threads(),
                            "python": platform.python_version()}
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info.update(name=torch.cuda.get_device_name(device), memory_gib=round(props.total_memory / 2**30, 1),
                    capability=f"{props.major}.{props.minor}", cuda=torch.version.cuda,
                    peak_tflops=peak_tflops(torch.cuda.get_device_name(device)))
    else:
        from trainers.device import cpu_name

        info.update(name=f"cpu ({cpu_name()})", peak_tflops=None)
    return info


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _free(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"[:300]


#: Messages of allocation failures other than torch's own OutOfMemoryError: near the memory limit cuBLAS and
#: cuDNN fail to allocate their workspaces and say so in their own words.
OOM_MARKERS = ("out of memory", "cublas_status_alloc_failed", "cudnn_status_alloc_failed",
               "cudnn_status_not_enough_workspace", "failed to allocate")


def _is_oom(exc: BaseException) -> bool:
    oom = getattr(torch, "OutOfMemoryError", torch.cuda.OutOfMemoryError)
    text = str(exc).lower()
    return isinstance(exc, oom) or any(m in text for m in OOM_MARKERS)


def _rate(fn, n_items: int, device: torch.device, warmup: int, min_s: float, max_iter: int) -> tuple[float, float]:
    """(items/s, median seconds per call): ``warmup`` calls, then calls until ``min_s`` or ``max_iter``."""
    for _ in range(warmup):
        fn()
    _sync(device)
    times: list[float] = []
    while len(times) < max_iter and (len(times) < min(2, max_iter) or sum(times) < min_s):
        t0 = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - t0)
    return n_items * len(times) / sum(times), statistics.median(times)


class _HeapPeak:
    """Peak live heap bytes above the level at entry (MiB), sampled every 0.5 ms by a thread: glibc's
    ``mallinfo2`` (arena bytes in use + mmapped chunks), which sees torch's CPU tensors; None without glibc."""

    def __init__(self) -> None:
        import ctypes

        class _Info(ctypes.Structure):
            _fields_ = [(n, ctypes.c_size_t) for n in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks",
                                                        "fsmblks", "uordblks", "fordblks", "keepcost")]

        try:
            fn = ctypes.CDLL("libc.so.6").mallinfo2
        except (OSError, AttributeError):
            self.fn = None
            return
        fn.restype = _Info
        self.fn = fn

    def live(self) -> int:
        info = self.fn()
        return int(info.uordblks + info.hblkhd)

    def __enter__(self) -> _HeapPeak:
        import threading

        self.peak_mib = None
        if self.fn is None:
            return self
        self._base = self._peak = self.live()
        self._stop = threading.Event()

        def sample() -> None:
            while not self._stop.is_set():
                self._peak = max(self._peak, self.live())
                time.sleep(0.0005)

        self._thread = threading.Thread(target=sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        if self.fn is None:
            return
        self._stop.set()
        self._thread.join()
        self.peak_mib = (max(self._peak, self.live()) - self._base) / 2**20


#: How peak memory is measured, per device type (the notes of the memory cells).
MEMORY_NOTE = {"cuda": "torch.cuda.max_memory_allocated (weights included)",
               "cpu": "live heap above the start, glibc mallinfo2 sampled every 0.5 ms (weights excluded)"}


@contextlib.contextmanager
def _peak(device: torch.device):
    """Yields a dict whose "mib" is the peak memory of the block (:data:`MEMORY_NOTE`; on CPU without glibc:
    pipeline.bench_render's sampled RSS increase, a lower bound since the allocator reuses freed memory)."""
    box: dict[str, float] = {}
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        yield box
        torch.cuda.synchronize(device)
        box["mib"] = torch.cuda.max_memory_allocated(device) / 2**20
        return
    with _HeapPeak() as heap:
        if heap.fn is not None:
            yield box
    if heap.fn is not None:
        box["mib"] = heap.peak_mib
        return
    from pipeline.bench_render import _PeakMemory

    with _PeakMemory(device) as pm:
        yield box
    box["mib"] = pm.peak_mib


class _DtypeRecorder(TorchDispatchMode):
    """Counts floating-point op outputs by dtype while ``active`` (set by hooks around the HE)."""

    def __init__(self) -> None:
        super().__init__()
        self.active = False
        self.counts: dict[str, int] = {}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if self.active:
            for t in out if isinstance(out, tuple | list) else (out,):
                if isinstance(t, torch.Tensor) and t.is_floating_point():
                    key = str(t.dtype).replace("torch.", "")
                    self.counts[key] = self.counts.get(key, 0) + 1
        return out


def _collate(split_dir: Path, image_size: int, n: int, device: torch.device) -> dict[str, torch.Tensor]:
    """A training batch of ``n`` prepared samples (the split's first ones, repeated as needed) on ``device``."""
    from torch.utils.data import default_collate

    from keyhand.data.cache import PreparedDataset

    ds = PreparedDataset(split_dir, heatmap_size=image_size // 4)
    batch = default_collate([ds[i % len(ds)] for i in range(min(n, len(ds)))])
    reps = math.ceil(n / len(ds))
    return {k: (v.repeat(reps, *([1] * (v.dim() - 1)))[:n] if reps > 1 else v).to(device)
            for k, v in batch.items() if isinstance(v, torch.Tensor)}


# ---------------------------------------------------------------------------------------------- the check

class GpuCheck:
    """Runs the sections of :data:`SECTIONS` on ``plan`` and keeps the figures (module docstring)."""

    def __init__(self, plan: Plan, out: Path, only: set[str] | None = None, log=print) -> None:
        self.plan, self.out, self.only, self.log = plan, Path(out), only, log
        self.dev = plan.device
        self.figs = declare(plan)
        self.sections: dict[str, dict[str, Any]] = {}
        self.info = device_info(self.dev)
        self.curve: list[float] = []
        self.t_start = time.perf_counter()
        self._t_section = 0.0
        self._section = ""
        self.splits: dict[int, Path] = {}
        self.flops: dict[str, dict[str, float]] = {}
        self.budget_hit: set[str] = set()

    # -- bookkeeping
    def set(self, key: str, value, note: str = "", ok: bool | None = None) -> None:
        f = self.figs[key]  # KeyError: a figure that declare() does not list
        if isinstance(value, float) and not math.isfinite(value):
            value, note = None, note or f"n/a (non-finite: {value})"
        f.value, f.note, f.ok = value, note, ok

    def na(self, key: str, why: str) -> None:
        self.set(key, None, f"n/a ({why})")

    def left(self) -> float:
        """Seconds left in the current section's budget."""
        return self.plan.budget(self._section) - (time.perf_counter() - self._t_section)

    def spent(self, keys) -> bool:
        """True when the current section's budget is spent; the cells ``keys`` then say so."""
        if self.left() > 0:
            return False
        for k in keys:
            self.na(k, f"skipped: {self._section} budget {self.plan.budget(self._section):.0f} s spent")
        self.budget_hit.add(self._section)
        return True

    def peak_for(self, prec: str) -> tuple[float | None, str]:
        """(peak FLOP/s or None, which peak) for rows of precision "fp32" | "bf16"."""
        table = self.info.get("peak_tflops")
        if not table:
            return None, "unknown peak"
        if prec == "bf16":
            return (table["bf16"] * 1e12, "bf16 peak") if table["bf16"] else (None, "no bf16 tensor cores")
        tf32 = torch.backends.cuda.matmul.allow_tf32 and torch.backends.cudnn.allow_tf32 and table["tf32"]
        return (table["tf32"] * 1e12, "TF32 peak") if tf32 else (table["fp32"] * 1e12, "fp32 peak")

    def set_mfu(self, key: str, flops_per_img: float | None, img_s: float | None, prec: str) -> None:
        peak, which = self.peak_for(prec)
        if peak is None:
            return self.na(key, which)
        if not flops_per_img or not img_s:
            return self.na(key, "no throughput")
        self.set(key, flops_per_img * img_s / peak, f"vs {which} {peak / 1e12:g} TFLOP/s")

    def run(self) -> int:
        """All sections; writes the JSON and Markdown after each. Returns the exit status (0 = all passed)."""
        self.out.mkdir(parents=True, exist_ok=True)
        self.log(f"gpu-check on {self.info['name']} (torch {self.info['torch']}; "
                 f"{'small CPU sizes' if self.plan.small else 'full sizes'}) -> {self.out}")
        if self.dev.type == "cuda":
            from trainers.device import seed_everything

            seed_everything(0, self.dev)  # cudnn.benchmark and TF32 on, as the trainer runs
        threads = torch.get_num_threads()
        if self.plan.threads:  # CPU sizes: one thread keeps a shared 2-core machine from oversubscribing
            torch.set_num_threads(self.plan.threads)
            self.info["threads"] = self.plan.threads
        try:
            with tempfile.TemporaryDirectory(prefix="keyhand-gpu-check-") as tmp:
                self.tmp = Path(tmp)
                for name, _ in SECTIONS:
                    if self.only and name not in self.only and name != "data":  # the others read its data
                        self.sections[name] = {"status": "not run (--only)", "wall_s": 0.0}
                        continue
                    if self.plan.deadline_s is not None and time.perf_counter() - T0 > self.plan.deadline_s:
                        self.sections[name] = {"status": f"not run (the check's {self.plan.deadline_s:.0f} s limit, "
                                                         "start-up included, was reached)", "wall_s": 0.0}
                        continue
                    self._run_section(name)
                    self.write()
        finally:
            torch.set_num_threads(threads)
        for f in self.figs.values():
            if f.value is None and not f.note:
                st = self.sections.get(f.section, {}).get("status", "not run")
                f.note = f"not measured: section {f.section} {st}"
        self.write()
        self.log(self.summary())
        return 0 if self.passed() else 1

    def _run_section(self, name: str) -> None:
        self._section, self._t_section = name, time.perf_counter()
        self.log(f"[{name}] start" + (f" (budget {self.plan.budget(name):.0f} s)" if name in self.plan.budgets
                                      else ""))
        cpu0 = time.process_time()
        try:
            getattr(self, f"s_{name}")()
            status = "ok"
        except Exception as exc:  # noqa: BLE001 - a broken section is reported, the others still run
            status = f"failed: {_first_line(exc)}"
        wall = time.perf_counter() - self._t_section
        if status == "ok" and name in self.budget_hit:
            status = "ok (stopped by its budget: the cells it left say so)"
        self.sections[name] = {"status": status, "wall_s": round(wall, 1),
                               "cpu_s": round(time.process_time() - cpu0, 1), "planned_gpu_s": dict(SECTIONS)[name],
                               "budget_s": self.plan.budgets.get(name)}
        _free(self.dev)
        self.log(f"[{name}] {status} in {wall:.1f} s")

    def passed(self) -> bool:
        return (all(f.ok is not False for f in self.figs.values())
                and all(s["status"].startswith(("ok", "not run")) for s in self.sections.values()))

    # -- sections
    def s_cuda_tests(self) -> None:
        from pipeline.gpu_bundle import cuda_test_files

        files = cuda_test_files(REPO / "tests")
        if not files:
            for k in ("selected", "passed", "failed", "skipped"):
                self.set(f"cuda_tests.{k}", 0, "no test file holds a cuda-marked test")
            return
        xml = self.tmp / "cuda-tests.xml"
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(
            [str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])])}
        # the tests marked `cuda` (pytest -m cuda) of the files that hold any: other files may import what a
        # GPU machine lacks (ray, mlflow, streamlit)
        cmd = [sys.executable, "-m", "pytest", "-q", "-m", "cuda", "-p", "no:cacheprovider",
               "--continue-on-collection-errors", f"--junitxml={xml}", *[str(p.relative_to(REPO)) for p in files]]
        limit = min(600.0, self.plan.budget("cuda_tests"))
        try:
            proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=limit)
        except subprocess.TimeoutExpired:
            raise RuntimeError(f"pytest -m cuda stopped by the cuda_tests budget ({limit:.0f} s)") from None
        if proc.returncode not in (0, 1, 5) or not xml.is_file():
            tail = (proc.stdout + proc.stderr).strip().splitlines()[-3:]
            raise RuntimeError(f"pytest exited {proc.returncode}: {' | '.join(tail)}")
        cases = ET.parse(xml).getroot().iter("testcase")
        counts = {"passed": 0, "failed": 0, "skipped": 0}
        reasons: list[str] = []
        for case in cases:
            name = f"{case.get('classname', '')}::{case.get('name', '')}".strip(":")
            kinds = {child.tag for child in case}
            if kinds & {"failure", "error"}:
                counts["failed"] += 1
                msg = next(c.get("message", "") for c in case if c.tag in ("failure", "error"))
                reasons.append(f"FAILED {name}: {msg.splitlines()[0] if msg else ''}")
            elif "skipped" in kinds:
                counts["skipped"] += 1
                msg = next(c.get("message", "") for c in case if c.tag == "skipped")
                reasons.append(f"skipped {name}: {msg}")
            else:
                counts["passed"] += 1
        selected = sum(counts.values())
        note = "; ".join(reasons)[:400]
        gpu = self.dev.type == "cuda"
        self.set("cuda_tests.selected", selected, f"pytest -m cuda: {', '.join(p.name for p in files)}")
        self.set("cuda_tests.passed", counts["passed"], "" if gpu else "CPU run: CUDA tests skip here",
                 ok=(counts["passed"] > 0) if gpu else None)
        self.set("cuda_tests.failed", counts["failed"], note if counts["failed"] else "", ok=counts["failed"] == 0)
        self.set("cuda_tests.skipped", counts["skipped"], note if counts["skipped"] else "")

    def s_data(self) -> None:
        from keyhand.data.prepare import open_reader, prepare_split
        from keyhand.data.synthetic import generate

        root = generate("synth-stb", self.tmp / "synth-stb", {"train": self.plan.synth_n}, seed=0,
                        image_size=self.plan.synth_hw)
        for size in sorted({c.image_size for c in self.plan.models.values()}):
            out = self.tmp / f"prepared-{size}"
            prepare_split(open_reader("synth-stb", root, "train"), out, image_size=size,
                          params={"dataset": "synth-stb", "split": "train", "root": str(root)})
            self.splits[size] = out
        self.set("data.samples", self.plan.synth_n, f"synth-stb {self.plan.synth_hw[1]}×{self.plan.synth_hw[0]}, "
                 f"prepared at {', '.join(f'{s}²' for s in self.splits)}")

    def _model(self, name: str, head_scale: float = 1.0):
        from keyhand.model.framework import Framework

        torch.manual_seed(0)
        model = Framework(self.plan.models[name])
        if head_scale != 1.0:
            with torch.no_grad():
                model.ve.head.weight.mul_(head_scale)
        return model

    def _images(self, name: str, n: int) -> torch.Tensor:
        size = self.plan.models[name].image_size
        if size in self.splits:
            return _collate(self.splits[size], size, n, torch.device("cpu"))["image"]
        return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(0))

    def s_dtypes(self) -> None:
        from keyhand.model.framework import Framework

        devs = [self.dev] + ([torch.device("cpu")] if self.dev.type == "cuda" else [])
        small = make_plan(torch.device("cpu")).models
        for m in self.plan.models:
            for d in devs:
                # The CPU leg of a CUDA run uses the 64² stand-in: the dtype flow is the same code, and a 256²
                # model under CPU bf16 autocast can take minutes where the CPU lacks bf16 kernels.
                stand_in = d.type == "cpu" and self.dev.type == "cuda"
                if self.spent([f"dtypes.{m}.{d.type}.{k}" for k in ("ve_output", "mano_output", "joints_2d",
                                                                     "silhouette", "he_low_precision_ops")]):
                    continue
                torch.manual_seed(0)
                model = (Framework(small[m]) if stand_in else self._model(m)).eval().to(d)
                size = model.cfg.image_size
                x = self._images(m, 2) if not stand_in else torch.randn(2, 3, size, size)
                rec, seen = _DtypeRecorder(), {}
                hooks = [model.he.register_forward_pre_hook(lambda *a, r=rec: setattr(r, "active", True)),
                         model.he.register_forward_hook(lambda *a, r=rec: setattr(r, "active", False)),
                         model.he.mano.register_forward_hook(
                             lambda mod, inp, out, seen=seen: seen.update(mano=str(out.vertices.dtype)))]
                try:
                    with torch.no_grad(), torch.autocast(d.type, dtype=torch.bfloat16), rec:
                        out = model(x.to(d), render=True)
                finally:
                    for h in hooks:
                        h.remove()
                p = f"dtypes.{m}.{d.type}"
                name = lambda t: str(t.dtype).replace("torch.", "")  # noqa: E731
                self.set(f"{p}.ve_output", name(out.theta), "autocast reaches the VE"
                         + (f" ({size}² stand-in on CPU)" if stand_in else ""), ok=out.theta.dtype == torch.bfloat16)
                self.set(f"{p}.mano_output", seen.get("mano", "not called").replace("torch.", ""),
                         ok=seen.get("mano") == "torch.float32")
                self.set(f"{p}.joints_2d", name(out.joints_2d), ok=out.joints_2d.dtype == torch.float32)
                self.set(f"{p}.silhouette", name(out.silhouette), ok=out.silhouette.dtype == torch.float32)
                low = sum(v for k, v in rec.counts.items() if k in ("bfloat16", "float16"))
                self.set(f"{p}.he_low_precision_ops", low, f"op outputs inside the HE: {rec.counts}", ok=low == 0)
                del model
            _free(self.dev)

    def _forward_with_latent(self, model, x: torch.Tensor, ctx) -> tuple[Any, torch.Tensor]:
        """(FrameworkOutput, the VE's block output) of one no-grad forward under ``ctx``."""
        box: dict[str, torch.Tensor] = {}
        hook = model.ve.blocks.register_forward_hook(lambda mod, inp, out: box.update(latent=out.detach()))
        try:
            with torch.no_grad(), ctx:
                out = model(x, render=True)
        finally:
            hook.remove()
        return out, box["latent"]

    def s_agreement(self) -> None:
        gpu = self.dev.type == "cuda"

        def rel(a: torch.Tensor, ref: torch.Tensor) -> float:  # max abs difference / max abs reference value
            return float((a.float().cpu() - ref).abs().max() / ref.abs().max().clamp_min(1e-12))

        for m in self.plan.models:
            # The VE head starts at ×0.01 (the first prediction is the mean hand); ×100 restores nn.Linear's scale.
            # A randomly initialised VE still maps every image to nearly the same v, so the joints alone would not
            # show a broken convolution: the SFE heatmaps and the VE's block output (both image-dependent) are
            # compared too, relative to their largest value.
            ref_model = self._model(m, head_scale=100.0).eval()
            x = self._images(m, self.plan.agree_batch)
            ref, ref_latent = self._forward_with_latent(ref_model, x, contextlib.nullcontext())
            hm, lat = rel(ref.heatmaps[-1][0], ref.heatmaps[-1][1]), rel(ref_latent[0], ref_latent[1])
            self.set(f"agree.{m}.sensitivity_mm", float((ref.joints_3d[0] - ref.joints_3d[1]).abs().max()),
                     f"two images' joints; their heatmaps differ by {hm:.2g}, VE block outputs by {lat:.2g} (relative)")
            # fp32 means fp32: no TF32, and cuDNN's deterministic kernels rather than whatever its autotuner picks
            # (FFT/Winograd convolutions round differently), so the comparison tests the CUDA path, not the algorithm
            flags = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32,
                     torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic)
            torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
            torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic = False, True
            try:
                for mode in ("fp32", "bf16", "channels_last"):
                    p = f"agree.{m}.{mode}"
                    if self.spent([f"{p}.{k}" for k in AGREE_FIGURES]):
                        continue
                    if mode == "fp32" and not gpu:
                        for k in AGREE_FIGURES:
                            self.na(f"{p}.{k}", "CPU run: no CUDA device to compare with the CPU")
                        continue
                    model = copy.deepcopy(ref_model).to(self.dev)
                    xd = x.to(self.dev)
                    if mode == "channels_last":
                        model = model.to(memory_format=torch.channels_last)
                        xd = xd.contiguous(memory_format=torch.channels_last)
                    ctx = (torch.autocast(self.dev.type, dtype=torch.bfloat16) if mode == "bf16"
                           else contextlib.nullcontext())
                    out, latent = self._forward_with_latent(model, xd, ctx)
                    where = f"{self.dev.type} vs cpu"
                    dj = float((out.joints_3d.float().cpu() - ref.joints_3d).abs().max())
                    self.set(f"{p}.joints_mm", dj, f"{where}; tolerance {TOL_MM[mode]:g} mm", ok=dj <= TOL_MM[mode])
                    for k, a, b in (("heatmaps_rel", out.heatmaps[-1], ref.heatmaps[-1]),
                                    ("ve_latent_rel", latent, ref_latent)):
                        r = rel(a, b)
                        self.set(f"{p}.{k}", r, f"{where}; tolerance {TOL_REL[mode]:g}", ok=r <= TOL_REL[mode])
                    self.set(f"{p}.joints_2d_px", float((out.joints_2d.float().cpu() - ref.joints_2d).abs().max()),
                             where)
                    self.set(f"{p}.silhouette", float((out.silhouette.float().cpu() - ref.silhouette).abs().mean()),
                             where)
                    del model
            finally:
                (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32,
                 torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic) = flags
            _free(self.dev)

    def s_gradients(self) -> None:
        from pipeline import gpu_agree as ga

        gpu = self.dev.type == "cuda"
        floor = "CPU float64 vs CPU fp32: fp32's own rounding (no CUDA device here)"
        with ga.strict_fp32():
            for mode in ("nmr", "soft"):
                p = f"grad.he.{mode}"
                keys = [f"{p}.{k}" for k in (*GRAD_GROUPS, "joints_2d_px", "silhouette_px", "silhouette_mean")]
                if self.spent(keys):
                    continue
                figs = ga.he_agreement(mode, self.dev, batch_size=self.plan.agree_batch * 2)
                for k in keys:
                    name = k.rsplit(".", 1)[1]
                    kind = "grad" if name in GRAD_GROUPS else name
                    f = figs[name]
                    note = (f"floor {f['floor']:.2g}; {ga.describe(kind)}" if gpu else floor)
                    if name == "silhouette_px":
                        note += f"; of {f['pixels']} pixels, coverage {figs['coverage']['value']:.2f}"
                    self.set(k, f["value"], note, ok=ga.agrees(kind, f))
            for m in self.plan.models:
                keys = [f"grad.{m}.{part}" for part in ("sfe", "ve")]
                if self.spent(keys):
                    continue
                model = self._model(m)
                figs = ga.weight_agreement(model, self._train_batch(m, self.plan.agree_batch, torch.device("cpu")),
                                           self.dev)
                for part in ("sfe", "ve"):
                    f = figs[part]
                    self.set(f"grad.{m}.{part}", f["value"], (f"floor {f['floor']:.2g}; {ga.describe('weights')}"
                                                               if gpu else floor), ok=ga.agrees("weights", f))
                del model
                _free(self.dev)

    def _paper_run(self, **train) -> tuple[Any, Path]:
        """(the paper profile's TrainConfig with this plan's paper model and ``train`` overrides, its prepared
        split)."""
        from trainers.config import TrainConfig

        size = self.plan.models["paper"].image_size
        if size not in self.splits:
            raise RuntimeError("no prepared data (the data section did not run)")
        cfg = TrainConfig.for_profile("paper").with_overrides(model=self.plan.models["paper"].model_dump(),
                                                              train=train)
        return cfg, self.splits[size]

    def s_loader(self) -> None:
        from trainers.train import loader_workers, make_loaders

        cfg, split = self._paper_run()
        st = cfg.train
        rates = {}
        for key, workers in (("main_img_s", 0), ("profile_img_s", st.num_workers)):
            if self.spent([f"loader.{key}"]):
                continue
            c = cfg.with_overrides(train={"num_workers": workers})
            loader = make_loaders(c, "train", split, device=self.dev)["train"]
            it, n, t0 = iter(loader), 0, None
            for i, batch in enumerate(it):   # the first batch waits for the workers' start: not timed
                if i == 0:
                    t0 = time.perf_counter()
                    continue
                n += int(batch["image"].shape[0])
                if self.left() <= 0:
                    break
            dt = time.perf_counter() - t0 if t0 is not None else 0.0
            rates[key] = n / dt if n and dt > 0 else None
            w = loader_workers(workers)
            self.set(f"loader.{key}", rates[key], f"{w} workers, prefetch {st.prefetch_factor if w else '-'}, "
                     f"pinned memory {'on' if self.dev.type == 'cuda' else 'off (CPU)'}, batch {st.batch_size}, "
                     f"§4.2 augmentation, {n} images after the first batch")
            del loader, it
        train = self.figs["paper.train.b6.img_s"].value
        self.set("loader.train_img_s", train, "from the training section" if train else "n/a (training did not run)")
        fed = rates.get("profile_img_s")
        if fed and train:
            self.set("loader.feeds", fed >= train, f"{fed:.0f} ≥ {train:.0f} img/s needed" if fed >= train
                     else f"{fed:.0f} < {train:.0f} img/s: the GPU waits for data",
                     ok=(fed >= train) if self.dev.type == "cuda" else None)
        else:
            self.na("loader.feeds", "no rate to compare")

    def _flops(self, m: str, model) -> dict[str, float]:
        """Forward (inference) and training-step FLOPs per image (FlopCounterMode), cached per model."""
        if m in self.flops:
            return self.flops[m]
        from torch.utils.flop_counter import FlopCounterMode

        from keyhand.model.profile import profile

        cost = profile(model, batch_size=1)
        fwd = sum(c["flops"] for c in cost.values())
        params = sum(c["params"] for c in cost.values())
        train_model = copy.deepcopy(model).train()
        batch = self._train_batch(m, 2)
        w = self._loss_weights()
        from trainers.train import full_step

        with FlopCounterMode(display=False) as counter:
            loss, _ = full_step(train_model, batch, w)
            loss.backward()
        self.flops[m] = {"inference": fwd, "train": counter.get_total_flops() / 2, "params": params}
        del train_model
        self.set(f"{m}.params_m", params / 1e6)
        self.set(f"{m}.gflops_inference", fwd / 1e9, "FlopCounterMode, forward without the renderer")
        self.set(f"{m}.gflops_train", self.flops[m]["train"] / 1e9,
                 "FlopCounterMode, forward+backward of the trainer's step (renderer not counted)")
        return self.flops[m]

    def _train_batch(self, m: str, n: int, device: torch.device | None = None) -> dict[str, torch.Tensor]:
        size = self.plan.models[m].image_size
        if size not in self.splits:
            raise RuntimeError("no prepared data (the data section did not run)")
        return _collate(self.splits[size], size, n, device or self.dev)

    def _loss_weights(self):
        from trainers.config import TrainConfig

        return TrainConfig.for_profile("paper").loss.to_loss_weights()

    def _measure(self, fn, n: int, warmup: int, max_iter: int) -> tuple[float, float, float]:
        """(items/s, median seconds per call, peak MiB) of ``fn`` processing ``n`` items per call."""
        if self.dev.type == "cuda":
            with _peak(self.dev) as mem:
                rate, sec = _rate(fn, n, self.dev, warmup, self.plan.min_s, max_iter)
        else:  # the RSS sampler thread would slow the timed loop: the first (warm-up) call is the sampled one
            with _peak(self.dev) as mem:
                fn()
            rate, sec = _rate(fn, n, self.dev, warmup - 1, self.plan.min_s, max_iter)
        return rate, sec, mem["mib"]

    def _infer(self, m: str, model, v: str, b: int, compiled=None) -> None:
        p = f"{m}.infer.{v}.b{b}"
        size = self.plan.models[m].image_size
        x = torch.randn(b, 3, size, size, device=self.dev)
        if v in ("bf16_cl", "compiled"):
            x = x.contiguous(memory_format=torch.channels_last)
        ctx = (lambda: torch.autocast(self.dev.type, dtype=torch.bfloat16)) if v != "fp32" else contextlib.nullcontext
        net = compiled if compiled is not None else model

        def fwd():
            with torch.no_grad(), ctx():
                return net(x, render=False)

        if compiled is not None:
            t0 = time.perf_counter()
            fwd()
            _sync(self.dev)
            self.set(f"{p}.compile_s", time.perf_counter() - t0,
                     f"backend {self.plan.compile_backend}, static shapes" + (
                         " (dynamo capture only: inductor's C++ build takes ~100 s on this CPU)"
                         if self.plan.compile_backend == "eager" else ""))
        img_s, _, mib = self._measure(fwd, b, self.plan.warmup, self.plan.max_iter)
        tf32 = v == "fp32" and torch.backends.cudnn.allow_tf32 and torch.backends.cuda.matmul.allow_tf32
        self.set(f"{p}.img_s", img_s, ("CUDA-synchronised" if self.dev.type == "cuda" else "CPU wall time")
                 + ("; TF32 on, as the trainer runs" if tf32 and self.dev.type == "cuda" else ""))
        self.set(f"{p}.peak_mib", mib, MEMORY_NOTE[self.dev.type])
        self.set_mfu(f"{p}.mfu", self.flops[m]["inference"], img_s, "fp32" if v == "fp32" else "bf16")

    def s_inference(self) -> None:
        for m in self.plan.models:
            base = cl = None
            for v in ("fp32", "bf16", "bf16_cl"):
                for b in self.plan.infer_batches:
                    p = f"{m}.infer.{v}.b{b}"
                    if self.left() <= 0:
                        for k in ("img_s", "peak_mib", "mfu"):
                            self.na(f"{p}.{k}", f"skipped: inference budget {self.plan.budget('inference'):.0f} s "
                                                "spent")
                        continue
                    if base is None:
                        base = self._model(m).eval().to(self.dev)
                        self._flops(m, base)
                        cl = copy.deepcopy(base).to(memory_format=torch.channels_last)
                    try:
                        self._infer(m, cl if v == "bf16_cl" else base, v, b)
                    except Exception as exc:  # noqa: BLE001 - out of memory or a broken kernel: the cell says so
                        for k in ("img_s", "peak_mib", "mfu"):
                            self.set(f"{p}.{k}", None, f"failed: {_first_line(exc)}", ok=False if k == "img_s"
                                     and not _is_oom(exc) else None)
                        del exc
                    _free(self.dev)
            del base, cl
            _free(self.dev)

    def s_compile(self) -> None:
        jobs = list(self.plan.compile_jobs)
        for m in self.plan.models:
            for b in self.plan.infer_batches:
                if (m, b) not in jobs:
                    for k in ("img_s", "peak_mib", "mfu", "compile_s"):
                        self.na(f"{m}.infer.compiled.b{b}.{k}", "not planned on CPU: one dynamo trace per run, "
                                "~8 s each on 2 cores")
        models: dict[str, Any] = {}
        took: dict[str, float] = {}  # model -> its last compile+measure time: the estimate for its next batch
        for m, b in jobs:
            p = f"{m}.infer.compiled.b{b}"
            est = took.get(m, max(took.values(), default=0.0))
            if self.left() < est:
                for k in ("img_s", "peak_mib", "mfu", "compile_s"):
                    self.na(f"{p}.{k}", f"skipped: compile budget {self.plan.budget('compile'):.0f} s spent "
                            f"({self.left():.0f} s left, about {est:.0f} s needed)")
                continue
            t0 = time.perf_counter()
            try:
                if m not in models:
                    base = self._model(m).eval().to(self.dev).to(memory_format=torch.channels_last)
                    self._flops(m, base)
                    models[m] = (base, torch.compile(base, dynamic=False, backend=self.plan.compile_backend))
                self._infer(m, models[m][0], "compiled", b, compiled=models[m][1])
            except Exception as exc:  # noqa: BLE001
                for k in ("img_s", "peak_mib", "mfu", "compile_s"):
                    self.set(f"{p}.{k}", None, f"failed: {_first_line(exc)}",
                             ok=False if k == "img_s" and not _is_oom(exc) else None)
                del exc
            took[m] = time.perf_counter() - t0
            _free(self.dev)
        models.clear()
        torch._dynamo.reset()

    def s_latency(self) -> None:
        from keyhand.model.profile import time_components

        for m in self.plan.models:
            model = self._model(m).eval().to(self.dev)
            for prec in ("fp32", "bf16"):
                bf16 = prec == "bf16"
                if self.spent([f"{m}.latency.{prec}.{c}_ms" for c in COMPONENTS]):
                    continue
                with torch.autocast(self.dev.type, dtype=torch.bfloat16) if bf16 else contextlib.nullcontext():
                    ms = time_components(model, batch_size=1, device=self.dev, repeats=self.plan.repeats,
                                         warmup=self.plan.warmup, render=True)
                note = ("CUDA-synchronised median" if self.dev.type == "cuda"
                        else "CPU wall-time median (no CUDA stream to synchronise)")
                for c in COMPONENTS:
                    self.set(f"{m}.latency.{prec}.{c}_ms", ms[c], note + (", renderer included" if c == "he" else ""))
            del model

    def _train_rate(self, m: str, base, b: int) -> dict[str, float]:
        from trainers.train import full_step, train_step

        model = copy.deepcopy(base).train()
        params = [q for q in model.parameters() if q.requires_grad]
        # the batch starts on the host (pinned on CUDA, as the loader hands it over): train_step moves it, reads
        # each term to the host, clips the gradient norm and steps, exactly as fit does
        host = self._train_batch(m, b, torch.device("cpu"))
        if self.dev.type == "cuda":
            host = {k: v.pin_memory() for k, v in host.items()}
        st = {"model": model, "opt": torch.optim.Adam(params, lr=1e-4, weight_decay=1e-5), "params": params,
              "batch": host, "w": self._loss_weights()}
        del model, params

        def step():
            train_step(st["model"], st["batch"], full_step, st["w"], st["opt"], st["params"], self.dev, "auto")

        try:
            img_s, sec, mib = self._measure(step, b, 1, 1 if self.plan.small else 3)
        finally:
            st.clear()  # frees the copy, Adam state and batch before the next (larger) try
        return {"img_s": img_s, "step_ms": sec * 1e3, "peak_mib": mib}

    def _set_train(self, m: str, which: str, r: dict[str, float]) -> None:
        from trainers.device import amp_dtype

        bf16 = amp_dtype(self.dev, "auto") == torch.bfloat16
        tf32 = self.dev.type == "cuda" and torch.backends.cuda.matmul.allow_tf32 and torch.backends.cudnn.allow_tf32
        note = (f"amp auto ({'bf16 autocast' if bf16 else 'fp32'}, the trainer's default; TF32 on)" if tf32 else
                f"amp auto ({'bf16 autocast' if bf16 else 'fp32'}, the trainer's default)") + \
            "; trainers.train.train_step, fit's own step"
        self.set(f"{m}.train.{which}.img_s", r["img_s"], note)
        self.set(f"{m}.train.{which}.step_ms", r["step_ms"], "median")
        self.set(f"{m}.train.{which}.peak_mib", r["peak_mib"], MEMORY_NOTE[self.dev.type]
                 + (", Adam state included" if self.dev.type == "cuda" else ""))
        self.set_mfu(f"{m}.train.{which}.mfu", self.flops[m]["train"], r["img_s"], "bf16" if bf16 else "fp32")

    def s_training(self) -> None:
        share = self.plan.budget("training") / len(self.plan.models)
        cap, b0 = self.plan.max_batch_cap, self.plan.train_batch
        for m in self.plan.models:
            t_model = time.perf_counter()
            base = self._model(m).to(self.dev)
            self._flops(m, base)
            best_r = self._train_rate(m, base, b0)
            self._set_train(m, "b6", best_r)
            best, oom, why, bisections, ok = b0, None, "", 0, True
            last = time.perf_counter() - t_model
            b = 2 * b0
            while True:  # doubling until out of memory, then bisection between the last fit and the first OOM
                if oom is None and b > cap:
                    why = f"search cap {cap} reached without running out of memory"
                    break
                if oom is not None and (bisections >= 2 or oom - best <= 1):
                    why = f"doubling from {b0}, then {bisections} bisection steps"
                    break
                if time.perf_counter() - t_model + 2.5 * last > share:
                    why = f"search stopped by the training budget ({share:.0f} s per model)"
                    break
                t0, bisecting, failed = time.perf_counter(), oom is not None, None
                try:
                    best_r, best = self._train_rate(m, base, b), b
                except Exception as exc:  # noqa: BLE001 - out of memory ends the doubling; anything else is a finding
                    failed = exc if not _is_oom(exc) else None
                    oom = b if failed is None else oom
                    msg = _first_line(exc)
                    del exc
                _free(self.dev)
                last = time.perf_counter() - t0
                if failed is not None:
                    why, ok = f"batch {b} failed (not out of memory): {msg}", False
                    break
                bisections += bisecting
                if oom is not None:
                    b = (best + oom) // 2
                else:
                    b *= 2
            self.set(f"{m}.train.max.batch", best, f"CPU: {why} (host memory is not probed)" if self.plan.small
                     else why, ok=None if ok else False)
            if oom is None:
                self.na(f"{m}.train.max.first_oom", why)
            else:
                self.set(f"{m}.train.max.first_oom", oom)
            self._set_train(m, "max", best_r)
            del base
            _free(self.dev)

    def s_renderer(self) -> None:
        from pipeline.bench_render import _median_ms, _workload

        b, s = self.plan.render_batch, self.plan.render_size
        for mode in ("nmr", "soft"):
            if self.spent([f"renderer.{mode}.{k}" for k in ("fwd_ms", "fwd_bwd_ms", "peak_mib")]):
                continue
            fwd, fwd_bwd, coverage = _workload(mode, b, s, self.dev)
            note = f"coverage {coverage:.2f}, median of {self.plan.repeats}"
            self.set(f"renderer.{mode}.fwd_bwd_ms", _median_ms(fwd_bwd, self.dev, self.plan.repeats,
                                                                self.plan.warmup), note)
            self.set(f"renderer.{mode}.fwd_ms", _median_ms(fwd, self.dev, self.plan.repeats, self.plan.warmup), note)
            with _peak(self.dev) as mem:
                fwd_bwd()
            self.set(f"renderer.{mode}.peak_mib", mem["mib"], MEMORY_NOTE[self.dev.type])
            del fwd, fwd_bwd
            _free(self.dev)

    def s_train_steps(self) -> None:
        from keyhand.losses import NonFiniteLossError
        from trainers.train import build_framework, fit, make_loaders

        m = "paper"
        cfg, split = self._paper_run(epochs=self.plan.step_epochs, batch_size=self.plan.step_batch,
                                     num_workers=self.plan.workers, log_every=1000)
        loaders = make_loaders(cfg, "train", split, device=self.dev)
        model = build_framework(cfg)
        losses, times = self.curve, []
        budget_hit = []
        check = self

        class _Steps:
            t = time.perf_counter()

            def on_step_end(self, step: int, terms: dict[str, float]) -> None:
                now = time.perf_counter()
                times.append(now - self.t)
                self.t = now
                losses.append(terms["total"])
                if check.left() <= 0:
                    budget_hit.append(step)
                    raise _BudgetSpent

        nonfinite = ""
        try:
            fit("train", model, loaders, cfg, self.tmp / "fit", callbacks=[_Steps()], device=self.dev,
                progress=False, keep=1)
        except _BudgetSpent:
            pass
        except NonFiniteLossError as exc:  # the finding this section exists for: reported, not raised
            nonfinite = _first_line(exc)
        n = len(losses)
        planned = self.plan.steps
        note = f"{n} of {planned} planned ({self.plan.step_epochs} epochs × {planned // self.plan.step_epochs}, " \
               f"batch {self.plan.step_batch}, {model_label(m, self.plan.models[m], self.plan.small)})"
        if budget_hit:
            note += f"; stopped by the budget ({self.plan.budget('train_steps'):.0f} s)"
        self.set("train_steps.steps", n, note, ok=n > 0)
        finite = not nonfinite and all(math.isfinite(v) for v in losses)
        self.set("train_steps.finite", finite, nonfinite, ok=finite)
        if not n:
            return
        k = max(1, n // 10)
        bins = [statistics.fmean(losses[i:i + k]) for i in range(0, n - n % k, k)]
        self.set("train_steps.loss_first", bins[0], f"steps 1-{k}")
        self.set("train_steps.loss_last", bins[-1], f"steps {(len(bins) - 1) * k + 1}-{len(bins) * k}")
        self.set("train_steps.loss_ratio", bins[-1] / bins[0] if bins[0] else None, "" if bins[0] else "n/a (0)")
        self.set("train_steps.decreasing", bins[-1] < bins[0], "informational: a few CPU steps need not decrease"
                 if self.plan.small else "expected over a few hundred steps")
        self.set("train_steps.step_ms", 1e3 * statistics.median(times[1:] or times),
                 f"median interval between steps in fit (data loading with {self.plan.workers} workers included)")
        self.set("train_steps.curve", " → ".join(f"{v:.3g}" for v in bins), f"{len(bins)} bins of {k} steps")

    # -- outputs
    def results(self) -> dict[str, Any]:
        return {
            "schema": SCHEMA, "date": _dt.datetime.now().astimezone().isoformat(timespec="seconds"),
            "device": self.info, "small": self.plan.small, "passed": self.passed(),
            "total_s": round(time.perf_counter() - self.t_start, 1),
            "plan": {"infer_batches": list(self.plan.infer_batches), "train_batch": self.plan.train_batch,
                     "render": [self.plan.render_batch, self.plan.render_size], "steps": self.plan.steps,
                     "compile_backend": self.plan.compile_backend,
                     "models": {m: {"label": model_label(m, c, self.plan.small), **c.model_dump()}
                                for m, c in self.plan.models.items()}},
            "sections": self.sections, "loss_curve": list(self.curve),
            "figures": [dict(f.__dict__) for f in self.figs.values()],
        }

    def write(self) -> None:
        res = self.results()
        atomic_write_text(self.out / JSON_NAME, json.dumps(res, indent=1, default=str))
        atomic_write_text(self.out / MD_NAME, markdown(res))

    def summary(self) -> str:
        return summary(self.results(), self.out)


class _BudgetSpent(Exception):
    """Raised from the step callback to stop fit() when the train_steps budget is spent."""


def _header(res: dict) -> str:
    d = res["device"]
    extra = f", CUDA {d['cuda']}, {d['memory_gib']} GiB" if d.get("cuda") else f", {d['threads']} threads"
    return f"{d['name']} (torch {d['torch']}{extra})"


def _md(text: str) -> str:
    """A Markdown table cell: one line, pipes escaped."""
    return str(text).replace("\n", " ").replace("|", "\\|")


def markdown(res: dict) -> str:
    """The Markdown report: a header and one table of every figure."""
    lines = [f"# GPU check: {_header(res)}", "",
             f"{res['date']} · {'small CPU sizes' if res['small'] else 'full sizes'} · total {res['total_s']} s · "
             f"{'all checks passed' if res['passed'] else 'SOME CHECKS FAILED'}", ""]
    for m, c in res["plan"]["models"].items():
        lines.append(f"- {m}: {c['label']}")
    lines += ["", "| section | figure | value | check | note |", "|---|---|---|---|---|"]
    for f in res["figures"]:
        check = {True: "pass", False: "FAIL", None: ""}[f["ok"]]
        note = f["note"] if f["value"] is not None else ""
        cells = [f["section"], f["label"], fmt(f), check, note]
        lines.append("| " + " | ".join(_md(c) for c in cells) + " |")
    lines += ["", "| section | status | wall s | planned GPU s |", "|---|---|---|---|"]
    lines += [f"| {k} | {s['status']} | {s['wall_s']} | {s.get('planned_gpu_s', '')} |"
              for k, s in res["sections"].items()]
    return "\n".join(lines) + "\n"


def summary(res: dict, out: Path | None = None) -> str:
    """A few lines for the terminal: headline figures, failed checks, where the files are."""
    f = {x["key"]: x for x in res["figures"]}
    b = res["plan"]["infer_batches"]
    lines = [f"gpu-check: {_header(res)}, {res['total_s']} s, "
             f"{'all checks passed' if res['passed'] else 'SOME CHECKS FAILED'}"]
    for m in res["plan"]["models"]:
        g = lambda k: fmt(f[k]) if k in f and f[k]["value"] is not None else "—"  # noqa: E731
        lines.append(f"  {m}: inference img/s at batch {b[-1]}: " + ", ".join(
            f"{v} {g(f'{m}.infer.{v}.b{b[-1]}.img_s')}" for v in VARIANTS) +
            f"; training b6 {g(f'{m}.train.b6.img_s')}, max batch {g(f'{m}.train.max.batch')} "
            f"({g(f'{m}.train.max.img_s')}, MFU {g(f'{m}.train.max.mfu')})")
    g = lambda k: fmt(f[k]) if f[k]["value"] is not None else "—"  # noqa: E731
    lines.append(f"  renderer fwd+bwd: nmr {g('renderer.nmr.fwd_bwd_ms')}, soft {g('renderer.soft.fwd_bwd_ms')}; "
                 f"loss curve {g('train_steps.curve')}")
    for x in res["figures"]:
        if x["ok"] is False:
            lines.append(f"  FAIL {x['label']}: {fmt(x)} {x['note']}")
    for k, s in res["sections"].items():
        if s["status"].startswith("failed"):
            lines.append(f"  section {k} {s['status']}")
    if out is not None:
        lines.append(f"  wrote {Path(out) / JSON_NAME} and {Path(out) / MD_NAME}")
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------------- README

def _cells(f: dict[str, dict], keys: list[str]) -> str:
    parts = [fmt(f[k]) if k in f else NOT_YET for k in keys]
    if all(p == NOT_YET for p in parts):
        return NOT_YET
    units = {f[k]["unit"] for k in keys if k in f and f[k]["value"] is not None}
    if len(parts) > 1 and len(units) == 1 and (u := units.pop()) not in ("%", ""):
        parts = [p.removesuffix(f" {u}") for p in parts]
        return " / ".join(parts) + f" {u}"
    return " / ".join(parts)


def readme_block(res: dict | None) -> str:
    """The "GPU figures" block of docs/gpu.md (between the markers): from a results dict, or all "not measured yet"."""
    batches = res["plan"]["infer_batches"] if res else [1, 8, 64, 256]
    f = {x["key"]: x for x in res["figures"]} if res else {}
    models = list(res["plan"]["models"]) if res else ["paper", "default"]
    bl = " / ".join(map(str, batches))
    rows: list[tuple[str, list[list[str]]]] = []
    for v, label in VARIANTS.items():
        rows.append((f"inference img/s, batch {bl}, {label}", [[f"{m}.infer.{v}.b{b}.img_s" for b in batches]
                                                                for m in models]))
    big = batches[-1]
    rows += [
        (f"inference peak memory, batch {big}, bf16", [[f"{m}.infer.bf16.b{big}.peak_mib"] for m in models]),
        (f"inference MFU, batch {big}: bf16 / + channels_last / + compile",
         [[f"{m}.infer.{v}.b{big}.mfu" for v in ("bf16", "bf16_cl", "compiled")] for m in models]),
        ("batch-1 latency SFE / VE / HE, fp32", [[f"{m}.latency.fp32.{c}_ms" for c in COMPONENTS[:3]] for m in models]),
        ("batch-1 latency SFE / VE / HE, bf16", [[f"{m}.latency.bf16.{c}_ms" for c in COMPONENTS[:3]] for m in models]),
        ("training img/s, batch 6 (amp auto)", [[f"{m}.train.b6.img_s"] for m in models]),
        ("training peak memory / MFU, batch 6", [[f"{m}.train.b6.peak_mib", f"{m}.train.b6.mfu"] for m in models]),
        ("largest training batch that fits", [[f"{m}.train.max.batch"] for m in models]),
        ("training img/s / peak memory / MFU at it",
         [[f"{m}.train.max.img_s", f"{m}.train.max.peak_mib", f"{m}.train.max.mfu"] for m in models]),
        ("CPU/GPU max abs joint diff: fp32 / bf16 / channels_last",
         [[f"agree.{m}.{k}.joints_mm" for k in ("fp32", "bf16", "channels_last")] for m in models]),
        ("CPU/GPU relative diff of SFE heatmaps / VE block output: fp32 / bf16",
         [[f"agree.{m}.{k}.{x}" for k in ("fp32", "bf16") for x in ("heatmaps_rel", "ve_latent_rel")]
          for m in models]),
        ("ops inside the HE with bf16 output under autocast (0 = fp32)",
         [[f"dtypes.{m}.cuda.he_low_precision_ops" if (not res or not res["small"])
           else f"dtypes.{m}.cpu.he_low_precision_ops"] for m in models]),
    ]
    if res:
        d = res["device"]
        verdict = "all checks passed" if res["passed"] else "some checks failed (see gpu_check.md)"
        head = (f"Device: **{_header(res)}** · measured {res['date'][:10]} by `make gpu-check` in "
                f"{res['total_s']:.0f} s · {verdict}")
        if d["type"] == "cpu":
            head += " · CPU run (small sizes)"
    else:
        head = f"Device: {NOT_YET} · date: {NOT_YET}"
    if res:
        names = [res["plan"]["models"][m]["label"] for m in models]
    else:
        plan = make_plan(torch.device("cuda"))  # builds configs only: no CUDA call
        names = [model_label(m, plan.models[m], False) for m in models]
    lines = [head, "", "| figure | " + " | ".join(names) + " |", "|---|" + "---|" * len(models)]
    lines += [f"| {label} | " + " | ".join(_cells(f, keys) for keys in per_model) + " |" for label, per_model in rows]
    rb, rs = (res["plan"]["render"] if res else (64, 256))
    one = [
        (f"renderer fwd / fwd+bwd, nmr, batch {rb} at {rs}²", ["renderer.nmr.fwd_ms", "renderer.nmr.fwd_bwd_ms"]),
        (f"renderer fwd / fwd+bwd, soft, batch {rb} at {rs}²", ["renderer.soft.fwd_ms", "renderer.soft.fwd_bwd_ms"]),
        ("CUDA-only tests passed / failed / skipped", ["cuda_tests.passed", "cuda_tests.failed", "cuda_tests.skipped"]),
        ("training steps (paper profile) and loss curve", ["train_steps.steps", "train_steps.curve"]),
    ]
    lines += ["", "| figure | value |", "|---|---|"]
    lines += [f"| {label} | {_cells(f, keys)} |" for label, keys in one]
    return "\n".join(lines)


def update_readme(readme: str | os.PathLike, res: dict, allow_cpu: bool = False) -> Path:
    """Replace the block between the README's gpu-figures markers with :func:`readme_block` of ``res``.

    Refuses (ValueError, one line) a CPU run unless ``allow_cpu`` (the table holds GPU figures) and a README
    without the markers.
    """
    path = Path(readme)
    if res["device"]["type"] != "cuda" and not allow_cpu:
        raise ValueError(f"{path}: not updated: the results are from a CPU run and the table holds GPU figures")
    text = path.read_text()
    i, j = text.find(README_BEGIN), text.find(README_END)
    if i < 0 or j < i:
        raise ValueError(f"{path}: no '{README_BEGIN}' ... '{README_END}' block to fill")
    new = text[:i + len(README_BEGIN)] + "\n" + readme_block(res) + "\n" + text[j:]
    atomic_write_text(path, new)
    return path


def load_results(path: str | os.PathLike) -> dict:
    """A gpu_check.json (one clear line when it is not one)."""
    p = Path(path)
    try:
        res = json.loads(p.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ValueError(f"{p}: not a readable gpu_check.json ({_first_line(exc)})") from None
    if not isinstance(res, dict) or res.get("schema") != SCHEMA or "figures" not in res:
        raise ValueError(f"{p}: not a gpu_check.json of schema {SCHEMA}")
    return res


# ------------------------------------------------------------------------------------------- entry points

def run_check(device: str = "auto", out: str | os.PathLike | None = None, update: bool = False,
              readme: str | os.PathLike = REPO / "docs" / "gpu.md", from_json: str | os.PathLike | None = None,
              only: str | None = None, log=print) -> int:
    """What ``keyhand bench gpu`` and ``make gpu-check`` run; returns the exit status."""
    out = out if out is not None else default_out()
    if from_json is not None:
        res, status = load_results(from_json), 0
    else:
        from trainers.device import resolve_device

        dev = resolve_device(device)
        sections = dict(SECTIONS)
        chosen = set(only.split(",")) if only else None
        if chosen and chosen - set(sections):
            raise ValueError(f"--only: unknown section(s) {', '.join(sorted(chosen - set(sections)))}; "
                             f"choose from {', '.join(sections)}")
        check = GpuCheck(make_plan(dev), Path(out), chosen, log=log)
        status = check.run()
        res = check.results()
    if update:
        if res["device"]["type"] != "cuda":
            log(f"{readme}: not updated: a CPU run (the README table holds GPU figures)")
        else:
            log(f"updated {update_readme(readme, res)}")
    return status


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m pipeline.bench_gpu", description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="auto", help="auto (CUDA when present), cuda, cuda:1, cpu")
    ap.add_argument("--out", default=default_out(), help="folder for gpu_check.json and gpu_check.md "
                    "($OUT/gpu-check when $OUT is set: on the GPU machine only files under $OUT come back)")
    ap.add_argument("--update-readme", action="store_true", help="fill docs/gpu.md's GPU figures (CUDA runs only)")
    ap.add_argument("--readme", default=str(REPO / "docs" / "gpu.md"))
    ap.add_argument("--from-json", default=None, help="use a saved gpu_check.json instead of measuring")
    ap.add_argument("--only", default=None, help="comma-separated sections (default: all)")
    a = ap.parse_args(argv)
    try:
        return run_check(a.device, a.out, a.update_readme, a.readme, a.from_json, a.only)
    except ValueError as exc:
        print(f"bench_gpu: {exc}", file=sys.stderr)
        return 2
    except ModuleNotFoundError as exc:  # one line, never a traceback: the bundle is what is missing
        print(f"bench_gpu: {sys.executable} lacks the module {exc.name!r}: run `make gpu-bundle` where pip reaches "
              "PyPI and copy .whl/ here (docs/gpu.md)", file=sys.stderr)
        return 2


def default_out() -> str:
    """``$OUT/gpu-check`` when ``$OUT`` is set (the GPU machine keeps only what is under it), else runs/gpu-check."""
    out = os.environ.get("OUT")
    return str(Path(out) / "gpu-check") if out else "runs/gpu-check"


if __name__ == "__main__":
    sys.exit(main())
