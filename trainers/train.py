"""Training loops of the paper's three stages, and evaluation (§3.5, §4.3).

    from trainers.config import load_config
    from trainers.train import build_framework, open_split, make_loaders, fit, evaluate
    cfg = load_config("train.yaml")
    model = build_framework(cfg)                                         # seeded init
    loaders = make_loaders(cfg, "train", "data/prepared/synth-stb/train", "data/prepared/synth-stb/test")
    result = fit("train", model, loaders, cfg, "runs/train", resume=True)
    metrics = evaluate(model, loaders["val"])                            # EPE, AUC, PCK, per-sample preds

    keyhand pretrain-sfe --data data/prepared/synth-obman --out runs/sfe
    keyhand train --data data/prepared/synth-stb --sfe-checkpoint runs/sfe --out runs/train

Stages (:data:`trainers.config.STAGES`):

* ``"sfe"``: SFE pretraining (§4.1.1, ObMan). Loss L_SFE (Eqs. 13-14) on :meth:`Framework.sfe_forward`;
  only the SFE's parameters are given to the optimiser (the VE and HE are neither run nor changed).
* ``"train"``: full training with the multi-task loss L = L_SFE + L_3D + L_2D + L_M + L_Reg (Eq. 12).
* ``"gesture"``: the §4.3.3 classifier. The framework is frozen, so its 3D joints are computed once per
  split (eval mode, no augmentation) and cached in ``out_dir/joints-{split}.pt`` (keyed by a fingerprint of
  the framework's weights and of the data); the :class:`GestureClassifier` then trains on them.

Every epoch ends with one checkpoint (:mod:`trainers.checkpoint`), written atomically; ``history.json``
lists the per-epoch metrics. Resuming (``resume=True``) restores weights, optimiser and RNG states from the
last checkpoint; with the per-epoch data order a function of ``(seed, epoch)`` (:class:`EpochSampler`) and
§4.2 augmentation keyed by ``(epoch, index)``, a run interrupted mid-epoch and resumed ends with the same
weights as an uninterrupted one (bitwise on CPU; tested). A non-finite loss or gradient stops the run at
once with one line naming the step and the terms (:class:`NonFiniteLossError`); the bad state is never
checkpointed.

Callbacks are any objects with some of ``on_epoch_end(epoch, metrics) -> bool | None`` (True = stop after
this epoch), ``on_checkpoint(path)`` and ``on_step_end(step, terms)``; MLflow / Ray Tune plug in there.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import math
import os
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset, TensorDataset
from tqdm.auto import tqdm

from keyhand.data.augment import Augmenter
from keyhand.data.cache import PreparedDataset
from keyhand.losses import NonFiniteLossError as _LossNonFinite
from trainers.checkpoint import CheckpointError, latest, load_checkpoint, restore, save_checkpoint
from trainers.config import STAGES, TrainConfig, run_hash
from trainers.device import (
    EpochSampler,
    autocast,
    epoch_seed,
    prepare_model,
    resolve_device,
    seed_everything,
    seed_worker,
)

__all__ = ["FitError", "NonFiniteLossError", "FitResult", "Callback", "build_framework", "open_split",
           "make_loader", "make_loaders", "fit", "evaluate", "framework_joints", "evaluate_gesture",
           "load_sfe_weights", "save_predictions", "build_classifier", "num_gesture_classes",
           "data_hash"]


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


@dataclass
class FitResult:
    """What :func:`fit` did: the epochs it ran, per-epoch metrics, the last checkpoint."""

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


def make_loader(dataset: Dataset, batch_size: int, shuffle: bool, seed: int = 0, num_workers: int = 0,
                drop_last: bool | None = None, pin_memory: bool = False) -> DataLoader:
    """A DataLoader whose order is a function of ``(seed, epoch)`` (:class:`EpochSampler`).

    ``drop_last`` (default: when shuffling and the set holds more than one batch) avoids a last batch of one
    sample, which BatchNorm cannot normalise in training mode.
    """
    n = len(dataset)  # type: ignore[arg-type]
    if drop_last is None:
        drop_last = shuffle and n > batch_size and n % batch_size == 1
    return DataLoader(dataset, batch_size=batch_size, sampler=EpochSampler(n, seed, shuffle),
                      num_workers=num_workers, worker_init_fn=seed_worker if num_workers else None,
                      generator=torch.Generator().manual_seed(seed), drop_last=drop_last,
                      pin_memory=pin_memory, persistent_workers=False)


def make_loaders(cfg: TrainConfig, stage: str, train_dir: str | os.PathLike,
                 val_dir: str | os.PathLike | None = None, masks: dict[str, str | os.PathLike] | None = None,
                 device: torch.device | None = None) -> dict[str, DataLoader]:
    """``{"train": ..., "val": ...}`` loaders of prepared splits for ``stage`` (val only when given)."""
    st = cfg.stage(stage)
    pin = device is not None and device.type == "cuda"
    masks = masks or {}
    out = {"train": make_loader(open_split(train_dir, cfg, stage, True, masks.get("train")), st.batch_size,
                                True, st.seed, st.num_workers, pin_memory=pin)}
    if val_dir is not None:
        out["val"] = make_loader(open_split(val_dir, cfg, stage, False, masks.get("val")), st.batch_size,
                                 False, st.seed, st.num_workers, pin_memory=pin)
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


def data_hash(loader: DataLoader | None) -> str | None:
    """What identifies a loader's data in the run hash: the prepared split's params hash, size and masks."""
    return _data_hash(loader)


def _data_hash(loader: DataLoader | None) -> str | None:
    ds = None if loader is None else loader.dataset
    while ds is not None and not hasattr(ds, "manifest") and hasattr(ds, "dataset"):
        ds = ds.dataset
    if ds is not None and hasattr(ds, "manifest"):
        return f"{ds.manifest['params_hash']}:{len(ds)}:{ds.masks_dir is not None}"
    return None if ds is None else f"{type(ds).__name__}:{len(ds)}"


# ---------------------------------------------------------------------------------------------- model

def build_framework(cfg: TrainConfig, seed: int | None = None) -> nn.Module:
    """A :class:`keyhand.model.framework.Framework` of ``cfg.model``, initialised from ``seed``.

    ``seed`` defaults to the full-training stage's seed: the same configuration, the same initial weights.
    """
    from keyhand.model.framework import Framework

    torch.manual_seed(cfg.train.seed if seed is None else seed)
    return Framework(cfg.model.to_model_config())


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

def _sfe_step(model: nn.Module, batch: dict, w) -> tuple[Tensor, dict[str, Tensor]]:
    from keyhand.losses import sfe_loss

    heatmaps, silhouettes = _unwrap(model).sfe_forward(batch["image"])  # (not through a compile wrapper)
    return sfe_loss(_f32(heatmaps), _f32(silhouettes), batch, w)


def _full_step(model: nn.Module, batch: dict, w) -> tuple[Tensor, dict[str, Tensor]]:
    from keyhand.losses import multitask_loss

    out = model(batch["image"], render=w.mask > 0)
    # bf16 autocast: the loss reads fp32 copies of the outputs (a no-op in fp32)
    out = dataclasses.replace(out, **{f.name: _f32(getattr(out, f.name)) for f in dataclasses.fields(out)
                                      if f.name != "faces"})
    return multitask_loss(out, batch, w)


def _f32(x):
    if isinstance(x, Tensor):
        return x.float()
    if isinstance(x, list | tuple):
        return type(x)(_f32(v) for v in x)
    return x


# ------------------------------------------------------------------------------------------------- fit

def fit(stage: str, model: nn.Module, loaders: dict[str, DataLoader], cfg: TrainConfig,
        out_dir: str | os.PathLike, resume: bool = False, callbacks: Sequence[Any] = (), *,
        framework: nn.Module | None = None, device: str | torch.device | None = "auto", force: bool = False,
        progress: bool = True, keep: int | None = 2) -> FitResult:
    """Train ``stage`` (module docstring) for ``cfg.<stage>.epochs`` epochs; one checkpoint per epoch.

    Args:
        stage: ``"sfe"`` | ``"train"`` | ``"gesture"``.
        model: a Framework (sfe, train) or a GestureClassifier (gesture).
        loaders: ``{"train": DataLoader, "val": DataLoader (optional)}``, e.g. from :func:`make_loaders`.
        cfg: the settings; ``cfg.<stage>`` drives the loop, ``cfg.loss`` the loss.
        out_dir: checkpoints, ``history.json`` (and the gesture stage's joint caches).
        resume: continue from the last checkpoint of ``out_dir`` (a fresh start when there is none).
        callbacks: objects with ``on_epoch_end`` / ``on_checkpoint`` / ``on_step_end`` (module docstring).
        framework: the frozen Framework whose 3D joints the gesture stage classifies.
        device: "auto" (CUDA when present), "cpu", "cuda:0" ...
        force: resume even when the checkpoint's params hash differs from these settings'.
        keep: checkpoints kept (newest), None = all.
    Raises:
        FitError (one line) for a bad start, NonFiniteLossError when the loss goes NaN/inf.
    """
    if stage not in STAGES:
        raise FitError(f"unknown stage {stage!r}; choose one of {', '.join(STAGES)}")
    if "train" not in loaders:
        raise FitError("fit needs loaders['train']")
    st = cfg.stage(stage)
    dev = resolve_device(device)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if stage == "gesture":
        if framework is None:
            raise FitError("the gesture stage needs the frozen framework (framework=...)")
        data = {s: f"joints:{_data_hash(ld)}" for s, ld in loaders.items() if ld is not None}
        data["framework"] = _fingerprint(framework)
    else:
        data = {s: _data_hash(ld) for s, ld in loaders.items() if ld is not None}
    phash = run_hash(cfg, stage, data)

    found = latest(out)
    if found is not None and not resume:
        raise FitError(f"{out} already holds checkpoints ({found.name}): pass --resume to continue that run "
                       f"or choose another --out")
    seed_everything(st.seed, dev)  # a resumed run then restores the checkpoint's RNG states over these
    if not resume or found is None:
        (out / "history.json").unlink(missing_ok=True)

    base = model
    base.to(dev)
    if stage == "gesture":
        framework.to(dev).eval()
        for p in framework.parameters():
            p.requires_grad_(False)
        loaders = _gesture_loaders(framework, loaders, cfg, out, dev, progress)
        params = [p for p in base.parameters() if p.requires_grad]
    elif stage == "sfe":
        if getattr(base, "sfe", None) is None:
            raise FitError("SFE pretraining needs model.sfe != 'none'")
        params = list(base.sfe.parameters())
    else:
        params = [p for p in base.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(params, lr=st.lr, weight_decay=st.weight_decay)  # §4.3.1

    start, history = 0, []
    if resume and found is not None:
        try:
            ckpt = load_checkpoint(found, params_hash=phash, force=force, map_location=dev)
        except CheckpointError as e:
            raise FitError(str(e)) from None
        start = restore(ckpt, base, optimizer)
        history = _read_history(out)[:start]
    run_model = prepare_model(base, dev, st.channels_last and stage != "gesture", st.compile)
    w = cfg.loss.to_loss_weights() if stage != "gesture" else None
    step_fn = {"sfe": _sfe_step, "train": _full_step, "gesture": _gesture_step}[stage]
    callbacks = list(callbacks)
    result = FitResult(stage, phash, start, 0, history, found if resume else None)
    config_dump = cfg.model_dump()
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
                batch = _to(batch, dev, st.channels_last and stage != "gesture")
                with autocast(dev, st.amp):
                    loss, terms = step_fn(run_model, batch, w)
                # one device->host read per term: logged below and checked here, before any update
                values = {k: float(v) for k, v in terms.items() if isinstance(v, Tensor)}
                values["total"] = float(loss.detach())
                bad = [f"{k}={v}" for k, v in values.items() if not math.isfinite(v)]
                if bad:
                    raise NonFiniteLossError(_nan_message(epoch, step, global_step, bad, result.checkpoint))
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                norm = torch.nn.utils.clip_grad_norm_(params, st.grad_clip or math.inf)
                if not bool(torch.isfinite(norm)):
                    raise NonFiniteLossError(_nan_message(epoch, step, global_step, [f"grad_norm={float(norm)}"],
                                                          result.checkpoint))
                optimizer.step()
                n = int(batch["image"].shape[0]) if "image" in batch else int(next(iter(batch.values())).shape[0])
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
        if loaders.get("val") is not None:
            metrics.update({f"val/{k}": v for k, v in _validate(stage, run_model, loaders["val"], w, dev, st.amp)
                            .items()})
        metrics["lr"] = optimizer.param_groups[0]["lr"]
        metrics["epoch_time_s"] = time.perf_counter() - t0
        history.append({"epoch": epoch, **metrics})
        path = save_checkpoint(out, epoch=epoch, model=base, optimizer=optimizer, params_hash=phash,
                               metrics=metrics, config={"stage": stage, **config_dump},
                               extra={"framework": data.get("framework", "")}, keep=keep)
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
    tmp = out / f".history.json.{os.getpid()}.tmp"
    tmp.write_text(json.dumps(history, indent=1))
    os.replace(tmp, out / "history.json")


@torch.no_grad()
def _validate(stage: str, model: nn.Module, loader: DataLoader, w, dev: torch.device, amp: str) -> dict:
    if stage == "train":
        m = evaluate(model, loader, device=dev, amp=amp, keep_predictions=False)
        return {k: v for k, v in m.items() if isinstance(v, int | float)}
    if stage == "gesture":
        m = evaluate_gesture(model, loader, device=dev)
        return {k: v for k, v in m.items() if isinstance(v, int | float)}
    model.eval()
    sums: dict[str, float] = {}
    count = 0
    for batch in loader:
        batch = _to(batch, dev)
        with autocast(dev, amp):
            loss, terms = _sfe_step(model, batch, w)
        n = int(batch["image"].shape[0])
        for k, v in {**terms, "total": loss}.items():
            if isinstance(v, Tensor):
                sums[k] = sums.get(k, 0.0) + float(v) * n
        count += n
    return {k: v / max(count, 1) for k, v in sums.items()}


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
    Samples without 3D joints are skipped in the metrics.
    """
    from keyhand.metrics import PoseEvaluator

    dev = resolve_device(device) if device is not None else next(model.parameters()).device
    was_training = model.training
    model.eval()
    ev = PoseEvaluator()
    keep: dict[str, list[np.ndarray]] = {}
    count = 0
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
                ev.update(pred[sel], gt[sel])
            count += int(sel.sum())
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
    if keep_predictions:
        metrics["predictions"] = {k: np.concatenate(v) for k, v in keep.items()}
    return metrics


def save_predictions(path: str | os.PathLike, predictions: dict[str, np.ndarray]) -> Path:
    """Write per-sample predictions (:func:`evaluate`) as a compressed ``.npz``, atomically."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_name(f".{p.name}.{os.getpid()}.tmp.npz")
    np.savez_compressed(tmp, **predictions)
    os.replace(tmp, p)
    return p


# --------------------------------------------------------------------------------------------- gesture

def _fingerprint(module: nn.Module) -> str:
    """sha256 (16 hex) of a module's state (names, shapes, bytes): identifies the frozen framework."""
    h = hashlib.sha256()
    for k, v in sorted(module.state_dict().items()):
        t = v.detach().cpu().contiguous()
        h.update(k.encode())
        h.update(str(tuple(t.shape)).encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()[:16]


@torch.no_grad()
def framework_joints(framework: nn.Module, loader: DataLoader, device: str | torch.device | None = None,
                     amp: str = "auto", progress: bool = False) -> dict[str, Tensor]:
    """The frozen framework's 3D joints of every sample (§4.3.3: the classifier's input).

    Returns ``{"joints_3d": (N, 21, 3) float32 mm (R·J as the HE outputs it), "gesture": (N,) int64,
    "index": (N,) int64}`` in loader order (the loader should not shuffle nor augment).
    """
    dev = resolve_device(device) if device is not None else next(framework.parameters()).device
    was = framework.training
    framework.eval()
    joints, labels, index = [], [], []
    try:
        for batch in tqdm(loader, desc="frozen framework joints", disable=not progress, leave=False):
            with autocast(dev, amp):
                out = framework(batch["image"].to(dev), render=False)
            joints.append(out.joints_3d.float().cpu())
            labels.append(batch["gesture"].cpu())
            index.append(batch["index"].cpu())
    finally:
        framework.train(was)
    return {"joints_3d": torch.cat(joints), "gesture": torch.cat(labels), "index": torch.cat(index)}


def _cached_joints(framework: nn.Module, loader: DataLoader, split: str, out: Path, dev: torch.device,
                   progress: bool) -> dict[str, Tensor]:
    key = f"{_fingerprint(framework)}:{_data_hash(loader)}"
    path = out / f"joints-{split}.pt"
    if path.is_file():
        try:
            cached = torch.load(path, map_location="cpu", weights_only=True)
            if cached.get("key") == key:
                return cached["data"]
        except Exception:  # noqa: BLE001 - a bad cache is recomputed
            pass
    dataset = loader.dataset
    if getattr(dataset, "augment", None) is not None:
        dataset = copy.copy(dataset)  # the classifier sees the framework's joints of the unaltered images
        dataset.augment = None
    plain = make_loader(dataset, loader.batch_size or 32, shuffle=False)
    data = framework_joints(framework, plain, dev, progress=progress)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    torch.save({"key": key, "data": data}, tmp)
    os.replace(tmp, path)
    return data


def _gesture_loaders(framework: nn.Module, loaders: dict, cfg: TrainConfig, out: Path, dev: torch.device,
                     progress: bool) -> dict[str, DataLoader]:
    st = cfg.gesture
    result = {}
    for split, ld in loaders.items():
        if ld is None:
            continue
        data = _cached_joints(framework, ld, split, out, dev, progress)
        if bool((data["gesture"] < 0).any()):
            raise FitError(f"split {split!r} has samples without a gesture label: the gesture stage needs a "
                           f"gesture dataset (synth-gestures, rwth, senz3d)")
        ds = TensorDataset(data["joints_3d"], data["gesture"])
        result[split] = make_loader(_JointsDict(ds), st.batch_size, split == "train", st.seed)
    return result


class _JointsDict(Dataset):
    """Cached (joints, label) pairs as the dict batches the gesture step reads."""

    def __init__(self, ds: TensorDataset) -> None:
        self.ds = ds

    def __len__(self) -> int:
        return len(self.ds)

    def __getitem__(self, i: int) -> dict[str, Tensor]:
        j, g = self.ds[i]
        return {"joints_3d": j, "gesture": g}


def _gesture_step(model: nn.Module, batch: dict, w) -> tuple[Tensor, dict[str, Tensor]]:
    logits = model(batch["joints_3d"])
    loss = torch.nn.functional.cross_entropy(logits.float(), batch["gesture"])
    acc = (logits.argmax(-1) == batch["gesture"]).float().mean()
    return loss, {"ce": loss.detach(), "accuracy": acc.detach()}


@torch.no_grad()
def evaluate_gesture(model: nn.Module, loader: DataLoader, device: str | torch.device | None = None,
                     num_classes: int | None = None) -> dict[str, Any]:
    """Gesture accuracy of a classifier on cached-joint batches (``joints_3d``, ``gesture``): §4.3.3, Table 6.

    Returns :func:`keyhand.metrics.gesture_metrics` (``accuracy``, ``per_class_accuracy``, ``confusion``,
    ``labels``, ``count``) over classes ``0 .. num_classes - 1`` (default: the classifier's ``num_classes``).
    """
    from keyhand.metrics import gesture_metrics

    dev = resolve_device(device) if device is not None else next(model.parameters()).device
    was = model.training
    model.eval()
    preds, labels = [], []
    try:
        for batch in loader:
            preds.append(model(batch["joints_3d"].to(dev)).argmax(-1).cpu())
            labels.append(batch["gesture"].cpu())
    finally:
        model.train(was)
    k = num_classes or getattr(model, "num_classes", None) or int(torch.cat(labels + preds).max()) + 1
    return gesture_metrics(torch.cat(labels), torch.cat(preds), list(range(k)))


def build_classifier(cfg: TrainConfig, num_classes: int, seed: int | None = None) -> nn.Module:
    """The §4.3.3 :class:`GestureClassifier` of ``cfg.classifier``, initialised from ``seed`` (gesture stage's)."""
    from keyhand.model.gesture import GestureClassifier

    torch.manual_seed(cfg.gesture.seed if seed is None else seed)
    return GestureClassifier(num_classes, hidden=cfg.classifier.hidden, dropout=cfg.classifier.dropout)


def num_gesture_classes(dataset: Dataset) -> int:
    """Gesture classes of a prepared split: its manifest's names, else the largest label + 1."""
    manifest = getattr(dataset, "manifest", {})
    names = manifest.get("gesture_names") or {}
    if names:
        return max(int(k) for k in names) + 1
    labels = [int(dataset[i]["gesture"]) for i in range(len(dataset))]  # type: ignore[arg-type]
    return max(labels) + 1 if labels else 0
