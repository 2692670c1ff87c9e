"""Training loops of the paper's stages, and evaluation (§3.5, §4.3).

    from trainers.config import load_config
    from trainers.train import build_framework, make_loaders, fit, evaluate
    cfg = load_config("params.yaml")
    model = build_framework(cfg)                                         # seeded init
    loaders = make_loaders(cfg, "train", "data/prepared/synth-stb/train", "data/prepared/synth-stb/test")
    result = fit("train", model, loaders, cfg, "runs/train")             # continues a run of the same identity
    metrics = evaluate(model, loaders["val"])                            # EPE, AUC, PCK, per-sample preds

The whole recipe (loaders, framework, pretrained SFE, fit, tracking) is :func:`trainers.run.fit_stage`; the
gesture classifier's stage (§4.3.3) is :mod:`trainers.gesture`. Stages (:data:`trainers.config.STAGES`):

* ``"sfe"``: SFE pretraining (§4.1.1, ObMan). Loss L_SFE (Eqs. 13-14) on :meth:`Framework.sfe_forward`;
  only the SFE's parameters are given to the optimiser (the VE and HE are neither run nor changed).
* ``"train"``: full training with the multi-task loss L = L_SFE + L_3D + L_2D + L_M + L_Reg (Eq. 12).

**Run identity.** A run's identity (:func:`trainers.config.run_hash`) is the content hash of everything
that changes what its epochs compute: the model, loss and stage settings, the bytes of the prepared data
and masks it reads, the weights it starts from (the seeded initialisation with any pretrained SFE
loaded into it) and, on CPU, the intra-op thread count it trains with (``<stage>.threads``: another count
reorders float reductions and gives other weights; :func:`with_threads`). Every checkpoint records it.
:func:`fit` continues the run in ``out_dir`` only when it has the same identity (``resume="auto"``;
``"require"`` refuses another one with one line; ``"never"`` always starts fresh); anything it cannot
continue is moved to ``<out_dir>.previous`` (never deleted), and the stage starts fresh. Epochs are not
part of the identity: asking for more epochs continues the run, asking for fewer than it has returns that
epoch's checkpoint (later ones are set aside) or, when that checkpoint is no longer kept, trains afresh —
so the result is always the model a fresh run of that many epochs gives.

Every epoch ends with one checkpoint (:mod:`trainers.checkpoint`), written atomically; ``history.json``
lists the per-epoch metrics. Continuing restores weights, optimiser and RNG states from the checkpoint;
with the per-epoch data order a function of ``(seed, epoch)`` (:class:`EpochSampler`) and §4.2
augmentation keyed by ``(epoch, index)``, a run interrupted mid-epoch and continued ends with the same
weights as an uninterrupted one (bitwise on CPU; tested). A non-finite loss or gradient stops the run at
once with one line naming the step and the terms (:class:`NonFiniteLossError`); the bad state is never
checkpointed.

Callbacks are any objects with some of ``on_epoch_end(epoch, metrics) -> bool | None`` (True = stop after
this epoch), ``on_checkpoint(path)``, ``on_step_end(step, terms)`` and ``on_resume(history)`` (the epochs a
continued run restored, before any new one); MLflow / Ray Tune plug in there.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import shutil
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from keyhand.atomic import atomic_path, atomic_write_json
from keyhand.data.augment import Augmenter
from keyhand.data.cache import PreparedDataset
from keyhand.losses import NonFiniteLossError as _LossNonFinite
from trainers.checkpoint import (
    CheckpointError,
    checkpoint_path,
    list_checkpoints,
    load_checkpoint,
    restore,
    save_checkpoint,
)
from trainers.config import TrainConfig, run_hash
from trainers.device import (
    EpochSampler,
    autocast,
    cpu_threads,
    epoch_seed,
    prepare_model,
    resolve_device,
    seed_everything,
    seed_worker,
)

__all__ = ["FitError", "NonFiniteLossError", "FitResult", "Callback", "RESUME_MODES", "build_framework",
           "open_split", "make_loader", "make_loaders", "fit", "train_epochs", "evaluate", "load_sfe_weights",
           "save_predictions", "state_fingerprint", "dataset_identity", "plan_start", "with_threads", "train_step",
           "full_step", "sfe_step", "NonFiniteTerms", "loader_workers"]

#: ``resume`` of :func:`fit`: "auto" continues a run of the same identity and starts fresh otherwise,
#: "require" refuses (one line) to start over a run of another identity, "never" always starts fresh.
RESUME_MODES = ("auto", "require", "never")


class FitError(RuntimeError):
    """Training cannot start or continue (message: one line naming the folder / setting)."""


class NonFiniteLossError(FitError, _LossNonFinite):
    """The loss or gradient went NaN/inf: one line naming epoch, step and the non-finite terms.

    Also a :class:`keyhand.losses.NonFiniteLossError`, so either can be caught.
    """


class Callback:
    """Base class (optional: duck typing is enough) for per-epoch / per-checkpoint / per-step hooks."""

    def on_step_end(self, step: int, terms: dict[str, float]) -> None:  # noqa: B027 - optional hook
        """After each optimiser step; ``step`` counts steps from the start of the run."""

    def on_checkpoint(self, path: Path) -> None:  # noqa: B027
        """After an epoch's checkpoint is written."""

    def on_epoch_end(self, epoch: int, metrics: dict[str, float]) -> bool | None:  # noqa: B027
        """After each epoch (0-based) with its metrics; return True to stop the run after it."""

    def on_resume(self, history: list[dict[str, float]]) -> None:  # noqa: B027
        """Once, before the first new epoch, with the epochs a continued run restored (may be all of them)."""


@dataclass
class FitResult:
    """What :func:`fit` did: the run's identity, the epochs it ran, per-epoch metrics, the last checkpoint.

    ``history`` holds every epoch of the run (restored ones first), so ``metrics`` is the final epoch's.
    """

    stage: str
    params_hash: str
    start_epoch: int
    epochs_run: int
    history: list[dict[str, float]] = field(default_factory=list)
    checkpoint: Path | None = None
    stopped_early: bool = False

    @property
    def metrics(self) -> dict[str, float]:
        return self.history[-1] if self.history else {}


# ----------------------------------------------------------------------------------------------- data

def open_split(split_dir: str | os.PathLike, cfg: TrainConfig, stage: str = "train", train: bool = True,
               masks_dir: str | os.PathLike | None = None) -> PreparedDataset:
    """A prepared split for ``stage``: heatmaps at image_size / 4, §4.2 augmentation on training splits.

    Raises :class:`FitError` when the split's crop size differs from ``model.image_size``.
    """
    st = cfg.stage(stage)
    aug = Augmenter(seed=st.seed) if (train and st.augment and stage != "gesture") else None
    ds = PreparedDataset(split_dir, augment=aug, heatmap_size=cfg.model.image_size // 4, masks_dir=masks_dir)
    if ds.image_size != cfg.model.image_size:
        raise FitError(f"prepared split {split_dir} has {ds.image_size} px crops but model.image_size is "
                       f"{cfg.model.image_size}: prepare it with --size {cfg.model.image_size} or change "
                       f"model.image_size")
    return ds


def loader_workers(num_workers: int | str, cores: int | None = None) -> int:
    """The loader processes of a stage's ``num_workers``: an int as given; ``"auto"`` = half the machine's cores,
    at most 8, and none below 4 cores (the main process then augments between steps: 2 cores are the
    training threads' already)."""
    if num_workers != "auto":
        return int(num_workers)
    cores = cores if cores is not None else (len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
                                             else os.cpu_count() or 1)
    return 0 if cores < 4 else min(8, cores // 2)


def make_loader(dataset: Dataset, batch_size: int, shuffle: bool, seed: int = 0, num_workers: int | str = 0,
                drop_last: bool | None = None, pin_memory: bool = False, prefetch_factor: int = 2) -> DataLoader:
    """A DataLoader whose order is a function of ``(seed, epoch)`` (:class:`EpochSampler`).

    ``drop_last`` (default: when shuffling and the set holds more than one batch) avoids a last batch of one
    sample, which BatchNorm cannot normalise in training mode. ``num_workers``: :func:`loader_workers`;
    ``prefetch_factor``: batches each worker keeps ready. Workers are not persistent: each epoch starts them
    again so that they see the epoch's augmentation seed (a persistent worker keeps the dataset copy of its
    first epoch, and the run would no longer be a function of its identity).
    """
    n = len(dataset)  # type: ignore[arg-type]
    if drop_last is None:
        drop_last = shuffle and n > batch_size and n % batch_size == 1
    workers = loader_workers(num_workers)
    return DataLoader(dataset, batch_size=batch_size, sampler=EpochSampler(n, seed, shuffle),
                      num_workers=workers, worker_init_fn=seed_worker if workers else None,
                      generator=torch.Generator().manual_seed(seed), drop_last=drop_last,
                      pin_memory=pin_memory, persistent_workers=False,
                      prefetch_factor=prefetch_factor if workers else None)


def make_loaders(cfg: TrainConfig, stage: str, train_dir: str | os.PathLike,
                 val_dir: str | os.PathLike | None = None, masks: dict[str, str | os.PathLike] | None = None,
                 device: torch.device | None = None) -> dict[str, DataLoader]:
    """``{"train": ..., "val": ...}`` loaders of prepared splits for ``stage`` (val only when given)."""
    st = cfg.stage(stage)
    pin = device is not None and device.type == "cuda"
    masks = masks or {}
    out = {"train": make_loader(open_split(train_dir, cfg, stage, True, masks.get("train")), st.batch_size,
                                True, st.seed, st.num_workers, pin_memory=pin, prefetch_factor=st.prefetch_factor)}
    if val_dir is not None:
        out["val"] = make_loader(open_split(val_dir, cfg, stage, False, masks.get("val")), st.batch_size,
                                 False, st.seed, st.num_workers, pin_memory=pin, prefetch_factor=st.prefetch_factor)
    return out


def _set_epoch(loader: DataLoader, seed: int, epoch: int) -> None:
    for obj in (loader.sampler, loader.dataset, getattr(loader.dataset, "dataset", None)):
        if hasattr(obj, "set_epoch"):
            obj.set_epoch(epoch)
    if loader.generator is not None:  # worker base seeds
        loader.generator.manual_seed(epoch_seed(seed, epoch))


def _to(batch: dict[str, Tensor], device: torch.device, channels_last: bool = False) -> dict[str, Tensor]:
    out = {k: v.to(device, non_blocking=True) if isinstance(v, Tensor) else v for k, v in batch.items()}
    if channels_last and "image" in out:
        out["image"] = out["image"].contiguous(memory_format=torch.channels_last)
    return out


def dataset_identity(loader: DataLoader | Dataset | None) -> str | None:
    """Content hash of the data a loader reads (a prepared split and its masks: their bytes), for the run
    identity; a dataset that is not a prepared split is identified by its type and size only."""
    ds = loader.dataset if isinstance(loader, DataLoader) else loader
    while ds is not None and not hasattr(ds, "content_hash") and hasattr(ds, "dataset"):
        ds = ds.dataset
    if ds is None:
        return None
    if hasattr(ds, "content_hash"):
        return ds.content_hash()
    return f"{type(ds).__name__}:{len(ds)}"  # type: ignore[arg-type]


def state_fingerprint(module: nn.Module | dict[str, Tensor]) -> str:
    """sha256 (16 hex) of a module's state (names, shapes, dtypes, bytes): identifies weights by content."""
    state = module.state_dict() if isinstance(module, nn.Module) else module
    h = hashlib.sha256()
    for k, v in sorted(state.items()):
        t = v.detach().cpu().contiguous()
        h.update(f"{k}:{tuple(t.shape)}:{t.dtype}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()[:16]


# ---------------------------------------------------------------------------------------------- model

def build_framework(cfg: TrainConfig, seed: int | None = None) -> nn.Module:
    """A :class:`keyhand.model.framework.Framework` of ``cfg.model``, initialised from ``seed``.

    ``seed`` defaults to the full-training stage's seed: the same configuration, the same initial weights.
    """
    from keyhand.model.framework import Framework

    torch.manual_seed(cfg.train.seed if seed is None else seed)
    return Framework(cfg.model)


def load_sfe_weights(model: nn.Module, checkpoint: str | os.PathLike) -> Path:
    """Copy a pretrained SFE (an ``"sfe"`` stage checkpoint) into ``model.sfe`` (Table 1, last row).

    Every tensor whose name and shape match is copied: the stem, both hourglasses and their heatmap /
    silhouette heads. Layers that exist only for another variant (the 1x1 convolution of ``fusion="sum"``,
    the silhouette head when pretraining had none) keep their initial weights (printed); a checkpoint that
    shares no hourglass weight with the model is refused.
    """
    ckpt = load_checkpoint(checkpoint)
    prefix = "sfe."
    state = {k[len(prefix):]: v for k, v in ckpt["model"].items() if k.startswith(prefix)}
    if getattr(model, "sfe", None) is None:
        raise FitError(f"{ckpt['path']}: model.sfe is 'none', there is no SFE to initialise")
    if not state:
        raise FitError(f"{ckpt['path']}: the checkpoint holds no SFE weights")
    own = model.sfe.state_dict()
    matched = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
    if not any("hourglass" in k or "hg" in k for k in matched) or len(matched) < len(own) // 2:
        raise FitError(f"{ckpt['path']}: SFE weights do not fit this model ({len(matched)} of {len(own)} tensors "
                       f"match); pretrain with the same model.image_size and model.sfe_channels")
    model.sfe.load_state_dict(matched, strict=False)
    skipped = sorted({k.split(".")[0] for k in set(own) - set(matched)})
    if skipped:
        print(f"pretrained SFE {Path(ckpt['path']).name}: kept the initial weights of {', '.join(skipped)} "
              f"(layers of another SFE variant)")
    return Path(ckpt["path"])


def _unwrap(model: nn.Module) -> nn.Module:
    return getattr(model, "_orig_mod", model)


# ----------------------------------------------------------------------------------------------- steps

def sfe_step(model: nn.Module, batch: dict, w) -> tuple[Tensor, dict[str, Tensor]]:
    from keyhand.losses import sfe_loss

    heatmaps, silhouettes = _unwrap(model).sfe_forward(batch["image"])  # (not through a compile wrapper)
    return sfe_loss(_f32(heatmaps), _f32(silhouettes), batch, w)


def full_step(model: nn.Module, batch: dict, w) -> tuple[Tensor, dict[str, Tensor]]:
    from keyhand.losses import multitask_loss

    out = model(batch["image"], render=w.mask > 0)
    # bf16 autocast: the loss reads fp32 copies of the outputs (a no-op in fp32)
    out = dataclasses.replace(out, **{f.name: _f32(getattr(out, f.name)) for f in dataclasses.fields(out)
                                      if f.name != "faces"})
    return multitask_loss(out, batch, w)


def _f32(x):
    if isinstance(x, Tensor):
        return x.float() if x.dtype in (torch.bfloat16, torch.float16) else x
    if isinstance(x, list | tuple):
        return type(x)(_f32(v) for v in x)
    return x


# ------------------------------------------------------------------------------------------------- fit

def _set_aside(out: Path, files: list[Path] | None, why: str, quiet: bool = False) -> Path:
    """Move ``files`` (None = everything in ``out``) to ``<out>.previous`` (replacing an older one)."""
    aside = out.with_name(f"{out.name}.previous")
    if aside.exists():
        shutil.rmtree(aside)
    aside.mkdir(parents=True)
    for f in (files if files is not None else sorted(out.iterdir())):
        shutil.move(str(f), aside / f.name)
    if not quiet:
        print(f"{out}: {why}; moved {'it' if files is None else ', '.join(f.name for f in files)} to {aside}")
    return aside


def plan_start(out: Path, identity: str, epochs: int, resume: str = "auto", quiet: bool = False) -> Path | None:
    """The checkpoint a run of ``identity`` and ``epochs`` epochs continues from in ``out`` (None = fresh).

    What cannot be continued is moved to ``<out>.previous``: a run of another identity (or with
    ``resume="never"``), the checkpoints after epoch ``epochs`` of a longer run of this identity, or the
    whole longer run when its epoch-``epochs`` checkpoint is no longer kept. ``resume="require"`` refuses a
    run of another identity with one :class:`FitError` line instead.
    """
    if resume not in RESUME_MODES:
        raise FitError(f"resume must be one of {', '.join(RESUME_MODES)}, got {resume!r}")
    found = list_checkpoints(out)
    if not found:
        return None
    if resume == "never":
        _set_aside(out, None, "a fresh start was asked for", quiet)
        return None
    try:
        last = load_checkpoint(found[-1])
        theirs = last.get("params_hash")
    except CheckpointError:
        last, theirs = None, "unreadable"
    if theirs != identity:
        if resume == "require":
            raise FitError(f"{out} holds a run of another identity ({theirs}; these settings, data and starting "
                           f"weights are {identity}): not resuming it; run without --resume to start fresh (it "
                           f"is then moved to {out.name}.previous) or choose another --out")
        _set_aside(out, None, f"held a run of another identity ({theirs}, now {identity}); starting fresh", quiet)
        return None
    done = int(last["epoch"]) + 1  # type: ignore[index]
    if done <= epochs:
        return found[-1]
    keep = checkpoint_path(out, epochs - 1) if epochs > 0 else None
    if keep is not None and keep.is_file():
        later = [p for p in found if p.name > keep.name]
        _set_aside(out, later, f"{epochs} epochs asked, the run has {done}: continuing from {keep.name}", quiet)
        return keep
    _set_aside(out, None, f"{epochs} epochs asked, the run has {done} and no checkpoint of epoch {epochs}; "
                          "starting fresh", quiet)
    return None


def fit(stage: str, model: nn.Module, loaders: dict[str, DataLoader], cfg: TrainConfig,
        out_dir: str | os.PathLike, resume: str = "auto", callbacks: Sequence[Any] = (), *,
        device: str | torch.device | None = "auto", progress: bool = True, keep: int | None = 2) -> FitResult:
    """Train the framework for stage ``"sfe"`` or ``"train"`` (module docstring) for ``cfg.<stage>.epochs``.

    Args:
        stage: ``"sfe"`` | ``"train"`` (the gesture classifier: :func:`trainers.gesture.fit_gesture`).
        model: a Framework holding the weights the run starts from (its content is part of the identity).
        loaders: ``{"train": DataLoader, "val": DataLoader (optional)}``, e.g. from :func:`make_loaders`.
        cfg: the settings; ``cfg.<stage>`` drives the loop, ``cfg.loss`` the loss.
        out_dir: checkpoints and ``history.json``.
        resume: "auto" | "require" | "never" (:data:`RESUME_MODES`, module docstring).
        callbacks: objects with ``on_epoch_end`` / ``on_checkpoint`` / ``on_step_end`` / ``on_resume``.
        device: "auto" (CUDA when present), "cpu", "cuda:0" ...
        keep: checkpoints kept (newest), None = all.
    Raises:
        FitError (one line) for a bad start, NonFiniteLossError when the loss goes NaN/inf.
    """
    if stage not in ("sfe", "train"):
        raise FitError(f"fit trains the framework (stage 'sfe' or 'train'), got {stage!r}"
                       + ("; the gesture classifier: trainers.gesture.fit_gesture" if stage == "gesture" else ""))
    if "train" not in loaders:
        raise FitError("fit needs loaders['train']")
    if stage == "sfe" and getattr(model, "sfe", None) is None:
        raise FitError("SFE pretraining needs model.sfe != 'none'")
    inputs = {s: dataset_identity(ld) for s, ld in loaders.items() if ld is not None}
    inputs["init"] = state_fingerprint(model)
    params = list(model.sfe.parameters()) if stage == "sfe" else [p for p in model.parameters() if p.requires_grad]
    w = cfg.loss.to_loss_weights()
    step_fn = sfe_step if stage == "sfe" else full_step
    return train_epochs(stage, model, params, step_fn, _validator(stage, w), loaders, cfg, out_dir,
                        run_hash(cfg, stage, inputs), w, resume=resume, callbacks=callbacks, device=device,
                        progress=progress, keep=keep)


def _validator(stage: str, w) -> Callable[[nn.Module, DataLoader, torch.device, str], dict]:
    @torch.no_grad()
    def validate(model: nn.Module, loader: DataLoader, dev: torch.device, amp: str) -> dict:
        if stage == "train":
            m = evaluate(model, loader, device=dev, amp=amp, keep_predictions=False)
            return {k: v for k, v in m.items() if isinstance(v, int | float)}
        model.eval()
        sums: dict[str, float] = {}
        count = 0
        for batch in loader:
            batch = _to(batch, dev)
            with autocast(dev, amp):
                loss, terms = sfe_step(model, batch, w)
            n = int(batch["image"].shape[0])
            for k, v in {**terms, "total": loss}.items():
                if isinstance(v, Tensor):
                    sums[k] = sums.get(k, 0.0) + float(v) * n
            count += n
        return {k: v / max(count, 1) for k, v in sums.items()}

    return validate


def train_epochs(stage: str, model: nn.Module, params: list[nn.Parameter], step_fn: Callable,
                 validate: Callable | None, loaders: dict[str, DataLoader], cfg: TrainConfig,
                 out_dir: str | os.PathLike, identity: str, w: Any = None, *, resume: str = "auto",
                 callbacks: Sequence[Any] = (), device: str | torch.device | None = "auto", progress: bool = True,
                 keep: int | None = 2, extra: dict | None = None) -> FitResult:
    """The epoch loop every stage shares: Adam (§4.3.1), one checkpoint and history entry per epoch.

    ``step_fn(model, batch, w) -> (loss, terms)``; ``validate(model, loader, device, amp) -> metrics`` on
    ``loaders["val"]``; ``identity``: the run's :func:`trainers.config.run_hash` (what :func:`plan_start`
    compares). ``model`` is the plain module whose state is checkpointed.

    On CPU the loop runs with ``cfg.<stage>.threads`` intra-op threads (None: as many as torch has) and the
    count in effect joins the identity (:func:`with_threads`): two thread counts give two different runs, so
    one is never continued or reused as the other.
    """
    dev = resolve_device(device)
    on_cpu = dev.type == "cpu"
    with cpu_threads(cfg.stage(stage).threads if on_cpu else None) as n:
        return _epoch_loop(stage, model, params, step_fn, validate, loaders, cfg, out_dir,
                           with_threads(identity, n) if on_cpu else identity, w, resume=resume, callbacks=callbacks,
                           dev=dev, progress=progress, keep=keep, extra=extra)


class NonFiniteTerms(FloatingPointError):
    """A step's loss terms or gradient norm are not finite (``terms``: "name=value" strings); raised before the
    update, so the weights are still those of the last good step."""

    def __init__(self, terms: list[str]) -> None:
        super().__init__(", ".join(terms))
        self.terms = terms


def train_step(model: nn.Module, batch: dict, step_fn: Callable, w: Any, optimizer: torch.optim.Optimizer,
               params: list[nn.Parameter], dev: torch.device, amp: str = "auto", grad_clip: float | None = None,
               channels_last: bool = False) -> tuple[dict[str, float], int]:
    """One optimisation step exactly as :func:`fit` takes it; returns ``(terms as floats, batch size)``.

    The batch goes to ``dev`` (non-blocking from pinned memory), the forward runs under the stage's autocast,
    each loss term is read to the host once (logged by the caller and checked finite before any update), then
    backward, global-norm clipping (``grad_clip`` None = no clipping, the norm is still computed and checked)
    and the optimizer's step. Raises :class:`NonFiniteTerms` before the update when a term or the gradient norm
    is not finite. pipeline/bench_gpu.py times this function, so its img/s is what ``fit`` reaches.
    """
    batch = _to(batch, dev, channels_last)
    with autocast(dev, amp):
        loss, terms = step_fn(model, batch, w)
    values = {k: float(v) for k, v in terms.items() if isinstance(v, Tensor)}
    values["total"] = float(loss.detach())
    bad = [f"{k}={v}" for k, v in values.items() if not math.isfinite(v)]
    if bad:
        raise NonFiniteTerms(bad)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    norm = torch.nn.utils.clip_grad_norm_(params, grad_clip or math.inf)
    if not bool(torch.isfinite(norm)):
        raise NonFiniteTerms([f"grad_norm={float(norm)}"])
    optimizer.step()
    n = int(next(iter(v for v in batch.values() if isinstance(v, Tensor))).shape[0])
    return values, n


def with_threads(identity: str, threads: int) -> str:
    """A CPU run's identity: :func:`trainers.config.run_hash` joined with its intra-op thread count, which changes
    the order of float reductions and so the weights (1 vs 2 threads, same run otherwise: 59.58 vs 58.75 mm test
    EPE; docs/statistics.md)."""
    return hashlib.sha256(f"{identity}|cpu_threads={int(threads)}".encode()).hexdigest()[:16]


def _epoch_loop(stage: str, model: nn.Module, params: list[nn.Parameter], step_fn: Callable,
                validate: Callable | None, loaders: dict[str, DataLoader], cfg: TrainConfig,
                out_dir: str | os.PathLike, identity: str, w: Any = None, *, resume: str, callbacks: Sequence[Any],
                dev: torch.device, progress: bool, keep: int | None, extra: dict | None) -> FitResult:
    st = cfg.stage(stage)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    found = plan_start(out, identity, st.epochs, resume, quiet=not progress)
    seed_everything(st.seed, dev)  # a continued run then restores the checkpoint's RNG states over these
    if found is None:
        (out / "history.json").unlink(missing_ok=True)
    model.to(dev)
    optimizer = torch.optim.Adam(params, lr=st.lr, weight_decay=st.weight_decay)  # §4.3.1

    start, history = 0, []
    if found is not None:
        try:
            ckpt = load_checkpoint(found, params_hash=identity, map_location=dev)
        except CheckpointError as e:
            raise FitError(str(e)) from None
        start = restore(ckpt, model, optimizer)
        history = _read_history(out)[:start]
        if len(history) < start:
            raise FitError(f"{out}/history.json lists {len(history)} epochs but {found.name} is epoch {start}: "
                           f"move {out} away to start fresh")
        _write_history(out, history)
    channels_last = st.channels_last and stage != "gesture"
    run_model = prepare_model(model, dev, channels_last, st.compile)
    callbacks = list(callbacks)
    for cb in callbacks:
        if hasattr(cb, "on_resume"):
            cb.on_resume([dict(h) for h in history])
    result = FitResult(stage, identity, start, 0, history, found)
    config_dump = {"stage": stage, **cfg.training().model_dump()}
    global_step = start * len(loaders["train"])

    for epoch in range(start, st.epochs):
        t0 = time.perf_counter()
        loader = loaders["train"]
        _set_epoch(loader, st.seed, epoch)
        run_model.train()
        sums: dict[str, float] = {}
        count = 0
        bar = tqdm(loader, desc=f"{stage} {epoch + 1}/{st.epochs}", disable=None if progress else True, leave=False,
                   dynamic_ncols=True)
        try:
            for step, batch in enumerate(bar):
                try:
                    values, n = train_step(run_model, batch, step_fn, w, optimizer, params, dev, st.amp,
                                           st.grad_clip, channels_last)
                except NonFiniteTerms as bad:
                    raise NonFiniteLossError(_nan_message(epoch, step, global_step, bad.terms,
                                                          result.checkpoint)) from None
                for k, v in values.items():
                    sums[k] = sums.get(k, 0.0) + v * n
                count += n
                global_step += 1
                if step % st.log_every == 0:
                    bar.set_postfix({k: f"{v:.4g}" for k, v in values.items()}, refresh=False)
                for cb in callbacks:
                    if hasattr(cb, "on_step_end"):
                        cb.on_step_end(global_step, values)
        finally:
            bar.close()
        metrics = {f"train/{k}": v / max(count, 1) for k, v in sums.items()}
        if validate is not None and loaders.get("val") is not None:
            metrics.update({f"val/{k}": v for k, v in validate(run_model, loaders["val"], dev, st.amp).items()})
        metrics["lr"] = optimizer.param_groups[0]["lr"]
        metrics["epoch_time_s"] = time.perf_counter() - t0
        history.append({"epoch": epoch, **metrics})
        path = save_checkpoint(out, epoch=epoch, model=model, optimizer=optimizer, params_hash=identity,
                               metrics=metrics, config=config_dump, extra=extra, keep=keep)
        _write_history(out, history)
        result.checkpoint, result.epochs_run = path, result.epochs_run + 1
        if progress:
            shown = ", ".join(f"{k}={v:.4g}" for k, v in metrics.items() if k.startswith(("train/total", "val/")))
            tqdm.write(f"{stage} epoch {epoch + 1}/{st.epochs}: {shown}")
        for cb in callbacks:
            if hasattr(cb, "on_checkpoint"):
                cb.on_checkpoint(path)
        stop = False
        for cb in callbacks:
            if hasattr(cb, "on_epoch_end") and cb.on_epoch_end(epoch, dict(metrics)):
                stop = True
        if stop:
            result.stopped_early = True
            break
    result.history = history
    return result


def _nan_message(epoch: int, step: int, global_step: int, bad: list[str], last: Path | None) -> str:
    kept = f"last good checkpoint {last}" if last is not None else "no checkpoint written yet"
    return (f"non-finite loss at epoch {epoch} step {step} (global step {global_step}): {', '.join(bad)}; "
            f"stopped without saving this state, {kept}")


def _read_history(out: Path) -> list[dict]:
    p = out / "history.json"
    try:
        return json.loads(p.read_text()) if p.is_file() else []
    except json.JSONDecodeError:
        return []


def _write_history(out: Path, history: list[dict]) -> None:
    atomic_write_json(out / "history.json", history, indent=1)


# -------------------------------------------------------------------------------------------- evaluate

@torch.no_grad()
def evaluate(model: nn.Module, loader: DataLoader | Iterable[dict], device: str | torch.device | None = None,
             amp: str = "auto", keep_predictions: bool = True, progress: bool = False) -> dict[str, Any]:
    """3D pose metrics of a Framework on a split (§4.3): EPE (mm, root-relative), 3D PCK 20-50 mm, AUC.

    Returns the :class:`keyhand.metrics.PoseEvaluator` dict (``epe_mean``, ``epe_median``, ``auc``, ``pck``)
    plus ``count``; with ``keep_predictions`` also ``predictions``: numpy arrays per sample for the Fig. 6
    panels — ``index`` (N,), ``joints_3d`` (N, 21, 3) mm as predicted (R·J, wrist-rooted),
    ``joints_3d_gt`` (N, 21, 3) mm camera frame, ``joints_2d`` / ``joints_2d_gt`` (N, 21, 2) crop px,
    ``epe`` (N,) mm root-relative, and the HE parameters ``t`` (N, 2), ``s`` (N, 1), ``rot`` (N, 3),
    ``theta`` (N, P), ``beta`` (N, 10) from which :mod:`trainers.predict` rebuilds meshes.
    The dict also holds the metrics beyond the paper (``keyhand.metrics.SUMMARY_KEYS``: aligned EPEs,
    F-scores, and vertex errors where the split has ground-truth meshes, ``read_split_vertices``) and, for a
    model with an SFE, ``sfe_2d_px``: the mean distance (crop px) between the arg-max cells of its last
    heatmaps and the annotated 2D joints (visible ones), the SFE's own keypoint error (§3.2).
    Samples without 3D joints are skipped in the metrics.
    """
    from keyhand.data.heatmaps import heatmap_argmax
    from keyhand.data.prepare import read_split_vertices
    from keyhand.metrics import PoseEvaluator

    dev = resolve_device(device) if device is not None else next(model.parameters()).device
    was_training = model.training
    model.eval()
    ev = PoseEvaluator()
    gt_mesh = read_split_vertices(getattr(getattr(loader, "dataset", None), "split_dir", None))  # (N, V, 3) | None
    keep: dict[str, list[np.ndarray]] = {}
    count = 0
    sfe_err = torch.zeros(2, device=dev)   # the SFE's own 2D: Σ error, Σ visible joints (one host sync, at the end)
    try:
        for batch in tqdm(loader, desc="evaluate", disable=not progress, leave=False):
            batch = _to(batch, dev)
            with autocast(dev, amp):
                out = model(batch["image"], render=False)
            pred = out.joints_3d.float()
            gt = batch["joints_3d"].float()
            has = batch.get("has_joints_3d")
            sel = torch.ones(len(pred), dtype=torch.bool, device=pred.device) if has is None else has > 0
            if bool(sel.any()):
                mesh = None if gt_mesh is None else gt_mesh[batch["index"][sel].cpu().numpy()]
                verts = None if out.vertices is None else out.vertices[sel]   # None: the direct control
                ev.update(pred[sel], gt[sel], pred_vertices=verts, gt_vertices=None if verts is None else mesh)
            count += int(sel.sum())
            if out.heatmaps and batch.get("joints_2d") is not None:
                uv = heatmap_argmax(out.heatmaps[-1].detach().float(), in_size=batch["image"].shape[-1],
                                    subpixel=False)
                vis = batch.get("visibility")
                vis = vis > 0 if vis is not None else torch.ones(uv.shape[:2], dtype=torch.bool, device=uv.device)
                has2 = batch.get("has_joints_2d")
                vis = vis & (has2[:, None] > 0) if has2 is not None else vis
                err = (uv - batch["joints_2d"].float()).norm(dim=-1)
                sfe_err += torch.stack([(err * vis).sum(), vis.sum().float()])
            if keep_predictions:
                rel_p = pred - pred[:, :1]
                rel_g = gt - gt[:, :1]
                epe = (rel_p - rel_g).norm(dim=-1).mean(-1)
                epe = torch.where(sel, epe, torch.full_like(epe, float("nan")))
                parts = {"index": batch.get("index", torch.arange(len(pred))), "joints_3d": pred,
                         "joints_3d_gt": gt, "joints_2d": out.joints_2d, "joints_2d_gt": batch.get("joints_2d"),
                         "epe": epe, "t": out.t, "s": out.s, "rot": out.rot, "theta": out.theta,
                         "beta": out.beta}
                for k, v in parts.items():
                    if v is not None:
                        keep.setdefault(k, []).append(v.detach().float().cpu().numpy()
                                                      if v.is_floating_point() else v.cpu().numpy())
    finally:
        model.train(was_training)
    metrics: dict[str, Any] = dict(ev.compute()) if count else {}
    metrics["count"] = count
    sfe_sum, sfe_n = sfe_err.tolist()
    if sfe_n:
        metrics["sfe_2d_px"] = sfe_sum / sfe_n
    if keep_predictions:
        metrics["predictions"] = {k: np.concatenate(v) for k, v in keep.items()}
    return metrics


def save_predictions(path: str | os.PathLike, predictions: dict[str, np.ndarray]) -> Path:
    """Write per-sample predictions (:func:`evaluate`) as a compressed ``.npz``, atomically."""
    with atomic_path(path) as tmp:
        np.savez_compressed(tmp, **predictions)
    return Path(path)
