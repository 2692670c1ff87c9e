"""One path from settings to numbers: fit a stage, evaluate a checkpoint. The CLI, the DVC stages and the Ray
trials all call these two functions, so a number is computed the same way wherever it is asked for.

    from trainers.run import StageData, fit_stage, evaluate_checkpoint
    data = StageData(train="data/prepared/pose/synth-stb/train", val="data/prepared/pose/synth-stb/test",
                     masks_train="data/masks/pose/synth-stb/train", masks_val="data/masks/pose/synth-stb/test")
    result = fit_stage(cfg, "train", data, "runs/train", sfe_init="runs/pretrain_sfe",
                       track={"experiment": "keyhand-train", "run_name": "train"})
    ev = evaluate_checkpoint("runs/train", "data/prepared/pose/synth-stb/test", out="runs/evaluate", panels=4)

:func:`fit_stage` builds the loaders of ``data`` (§4.2 augmentation on the training split), the seeded
framework (or, for the gesture stage, the classifier on the frozen ``framework`` checkpoint's joints), loads
the pretrained SFE into it (Table 1, last row), and calls :func:`trainers.train.fit` (or
:func:`trainers.gesture.fit_gesture`), which continues the run in ``out`` only if it has the same identity
(settings, data content, starting weights; :mod:`trainers.train`). ``track`` records it in MLflow: a mapping
opens a run (:func:`trainers.tracking.tracked_run`: experiment, run_name, tags), ``True`` logs into the run
already active (a sweep trial's child). A continued run logs the epochs it restored too, so the MLflow run
reads like a fresh one.

Seeds: a run's seed is ``cfg.train.seed`` (initial weights, data order, §4.2 augmentation). The compared
configurations run ``stats.seeds`` seeds each as ``train.seed + k`` (:meth:`pipeline.params.Params.ablation_config`,
one Ray trial per row and seed through :func:`fit_stage`); ``data.val`` is the split a stage monitors, the test
split is read only by :func:`evaluate_checkpoint` (the evaluate stage and the ablation's final errors).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from trainers.checkpoint import latest
from trainers.config import STAGES, TrainConfig
from trainers.train import FitError, FitResult

__all__ = ["StageData", "EvalResult", "fit_stage", "evaluate_checkpoint", "pick_panels"]


@dataclass(frozen=True)
class StageData:
    """Prepared splits a stage reads: ``train``, optional ``val`` (evaluated every epoch) and their masks."""

    train: Path
    val: Path | None = None
    masks_train: Path | None = None
    masks_val: Path | None = None

    def masks(self) -> dict[str, Path]:
        return {k: v for k, v in (("train", self.masks_train), ("val", self.masks_val)) if v is not None}

    def as_dict(self) -> dict[str, str | None]:
        """Absolute paths (JSON-able: a Ray trial on another node reads the same storage)."""
        return {k: None if v is None else str(Path(v).resolve()) for k, v in self.__dict__.items()}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> StageData:
        return cls(**{k: None if d.get(k) is None else Path(d[k]) for k in ("train", "val", "masks_train",
                                                                               "masks_val")})


class _Replay:
    """Logs a continued run's restored epochs through ``callback.on_epoch_end`` (the MLflow run is complete)."""

    def __init__(self, callback: Any) -> None:
        self.callback = callback

    def on_resume(self, history: list[dict[str, float]]) -> None:
        for h in history:
            self.callback.on_epoch_end(int(h["epoch"]), {k: v for k, v in h.items() if k != "epoch"})


def _sfe_checkpoint(sfe_init: str | os.PathLike | None, model: torch.nn.Module) -> Path | None:
    if sfe_init is None or getattr(model, "sfe", None) is None:
        return None
    found = latest(sfe_init) if Path(sfe_init).is_dir() else Path(sfe_init)
    if found is None:
        raise FitError(f"{sfe_init} holds no SFE checkpoint: run the pretrain_sfe stage first (dvc repro)")
    return found


def fit_stage(cfg: TrainConfig, stage: str, data: StageData, out: str | os.PathLike, *,
              sfe_init: str | os.PathLike | None = None, framework: str | os.PathLike | None = None,
              resume: str = "auto", callbacks: Sequence[Any] = (), track: Mapping[str, Any] | bool = False,
              device: str | torch.device | None = "auto", progress: bool = True) -> FitResult:
    """Fit ``stage`` ("sfe" | "train" | "gesture") of ``cfg`` on ``data`` into ``out`` (module docstring).

    ``sfe_init``: a pretrained SFE checkpoint or run folder loaded into the framework before training
    (ignored when ``model.sfe`` is "none"); ``framework``: the frozen framework checkpoint of the gesture
    stage; ``resume``: :data:`trainers.train.RESUME_MODES`. Raises FitError / CheckpointError (one line).
    """
    from trainers.device import resolve_device
    from trainers.train import build_framework, fit, load_sfe_weights, make_loaders

    if stage not in STAGES:
        raise FitError(f"unknown stage {stage!r}; choose one of {', '.join(STAGES)}")
    dev = resolve_device(device)
    if stage == "gesture":
        from trainers.gesture import build_classifier, fit_gesture, num_gesture_classes
        from trainers.predict import load_model

        if framework is None:
            raise FitError("the gesture stage needs the trained framework (--framework)")
        frozen, model_cfg = load_model(framework, dev)
        cfg = cfg.training().with_overrides(model=model_cfg.model_dump())
        loaders = make_loaders(cfg, stage, data.train, data.val, device=dev)
        model = build_classifier(cfg, num_gesture_classes(loaders["train"].dataset))

        def run(cbs: list) -> FitResult:
            return fit_gesture(model, frozen, loaders, cfg, out, resume, cbs, device=dev, progress=progress)
    else:
        loaders = make_loaders(cfg, stage, data.train, data.val, data.masks(), device=dev)
        model = build_framework(cfg)
        sfe = _sfe_checkpoint(sfe_init, model) if stage == "train" else None
        if sfe is not None:
            load_sfe_weights(model, sfe)
            if progress:
                print(f"{stage}: SFE initialised from {sfe}")

        def run(cbs: list) -> FitResult:
            return fit(stage, model, loaders, cfg, out, resume, cbs, device=dev, progress=progress)

    if not track:
        return run(list(callbacks))
    from trainers.tracking import MlflowCallback, tracked_run

    if track is True:
        mlflow_cb = MlflowCallback()
        return run([_Replay(mlflow_cb), mlflow_cb, *callbacks])
    opts = dict(track)
    with tracked_run(opts.pop("experiment"), params=cfg.training().model_dump(), stage=opts.pop("stage", stage),
                     **opts):
        mlflow_cb = MlflowCallback()
        return run([_Replay(mlflow_cb), mlflow_cb, *callbacks])


@dataclass
class EvalResult:
    """What :func:`evaluate_checkpoint` measured and wrote."""

    metrics: dict[str, Any]               # PoseEvaluator metrics (epe_mean, epe_median, auc, pck, ...), count
    predictions: dict[str, np.ndarray]    # per sample (trainers.train.evaluate)
    panels: list[Path]
    model: torch.nn.Module
    dataset: Any
    checkpoint: Path


def pick_panels(epe: np.ndarray | None, n: int, count: int) -> list[int]:
    """Fig. 6 panel samples: the best, median and worst by EPE, then the first ones; ``n`` at most."""
    order = np.argsort(np.nan_to_num(epe, nan=np.inf)) if epe is not None and len(epe) else []
    picks = list(dict.fromkeys([int(order[0]), int(order[len(order) // 2]), int(order[-1])] if len(order) else []))
    return [*picks, *[i for i in range(count) if i not in picks]][:n]


def evaluate_checkpoint(checkpoint: str | os.PathLike, split: str | os.PathLike, *, masks: str | None = None,
                        batch_size: int = 16, out: str | os.PathLike | None = None, panels: int = 0,
                        device: str | torch.device | None = "auto", progress: bool = False) -> EvalResult:
    """3D EPE, PCK (20-50 mm) and AUC (§4.3) of a framework checkpoint (or run folder) on a prepared split.

    With ``out``: ``predictions.npz`` and ``panels`` Fig. 6 panels (best, median, worst, then the first
    samples) under ``out/panels``. Raises FitError / CheckpointError / PredictError (one line).
    """
    from keyhand.data.cache import PreparedDataset
    from trainers.checkpoint import resolve_checkpoint
    from trainers.predict import load_model, split_panels
    from trainers.train import evaluate, make_loader, save_predictions

    ckpt = resolve_checkpoint(checkpoint)
    model, model_cfg = load_model(ckpt, device)
    ds = PreparedDataset(split, heatmap_size=model_cfg.image_size // 4, masks_dir=masks)
    if ds.image_size != model_cfg.image_size:
        raise FitError(f"prepared split {split} has {ds.image_size} px crops but the model takes "
                       f"{model_cfg.image_size} (model.image_size)")
    metrics = evaluate(model, make_loader(ds, batch_size, shuffle=False), progress=progress)
    predictions = metrics.pop("predictions")
    written: list[Path] = []
    if out is not None:
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        save_predictions(out / "predictions.npz", predictions)
        has_mesh = getattr(model_cfg, "estimator", "mano") == "mano"   # the direct control: joints only
        picks = pick_panels(predictions.get("epe"), panels, len(ds)) if has_mesh else []
        written = split_panels(model, ds, picks, out / "panels") if picks else []
    return EvalResult(metrics, predictions, written, model, ds, ckpt)
