"""The Ray Tune trainables of keyhand's sweeps: one ablation row, one gesture fold, one search sample.

    from trainers.trials import ablation_trial, fold_trial, search_trial
    run_sweep("ablation", ablation_trial, {**ablation_space(rows), "spec": spec}, kind="grid", metric="epe_mean", ...)

Each trainable runs in a Ray worker (any node of the cluster: paths in ``config`` are absolute, the data
on storage every node sees), opens its MLflow child run (:func:`trainers.sweep.trial_run`), and reports
every epoch through ``ray.tune.report`` so ASHA can stop a search trial early (grids are never pruned).

* ``ablation_trial``: one (row, seed) of the comparison, label ``<row>.seed<k>``: its
  :class:`~trainers.config.TrainConfig` (``spec["configs"][label]``, built by the driver from the main
  configuration + ``sweep.base`` + ``sweep.rows[row]`` with ``train.seed + k``), optionally initialised from
  the pretrained SFE (Table 1, last row), trained on the pose train split (Eq. 12) and monitored on its VAL
  split each epoch: reports ``epe_mean`` (mm), ``auc``, the loss terms. Checkpoints go to
  ``spec["out"]/<label>``; a retried or resumed trial continues from them. The test split is never read
  here: the driver evaluates the finished checkpoints (:mod:`pipeline.stages.compare`).
* ``search_trial``: the same on ``spec["base"]`` with the sampled dotted keys (``train.lr`` ...) applied.
* ``fold_trial``: §4.3.3 — the frozen framework's 3D joints of the gesture set were computed once by the
  driver (``spec["joints"]``); the fold's split (:func:`keyhand.model.gesture.cv_splits` of
  ``spec["fold_kind"]``: Table 6's stratified 80/20 folds or the subject-aware folds beside them) trains a fresh
  :class:`GestureClassifier` through the gesture stage's loop (:func:`trainers.gesture.fit_on_joints`,
  checkpoints in ``spec["out"]/fold-<k>/``) and reports the fold's test ``accuracy`` every epoch; the
  fold's confusion matrix and per-class accuracy go to ``spec["out"]/fold-<k>.json``.

Training goes through :func:`trainers.run.fit_stage` / :func:`trainers.gesture.fit_on_joints`, the same
path as the CLI and the DVC stages.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from keyhand.atomic import atomic_write_json

__all__ = ["ablation_trial", "search_trial", "fold_trial", "train_and_evaluate"]


class _TuneReport:
    """fit() callback: each epoch's metrics to ray.tune (``epe_mean``/``auc`` from the validation split)."""

    def on_epoch_end(self, epoch: int, metrics: dict[str, float]) -> None:
        from ray import tune

        report = {k.replace("/", "_"): float(v) for k, v in metrics.items() if isinstance(v, int | float)}
        report["epoch"] = epoch + 1
        for key in ("epe_mean", "epe_median", "auc"):
            if f"val/{key}" in metrics:
                report[key] = float(metrics[f"val/{key}"])
        tune.report(report)

    def on_resume(self, history: list[dict[str, float]]) -> None:
        """A retried or resumed trial continuing its checkpoints: report the last restored epoch, so that Tune
        has the trial's metric even when no epoch is left to run (its node or driver died after the last one)."""
        _report_last(self, history)


def _report_last(callback: Any, history: list[dict[str, float]]) -> None:
    if history:
        last = dict(history[-1])
        callback.on_epoch_end(int(last.pop("epoch", len(history) - 1)), last)


def train_and_evaluate(cfg_dict: dict, data: dict[str, str | None], out: str | os.PathLike,
                       sfe_checkpoint: str | None, callbacks: list) -> dict[str, float]:
    """:func:`trainers.run.fit_stage` of the ``train`` stage in a worker: the trial's child MLflow run is the
    active one; ``data`` is a :meth:`trainers.run.StageData.as_dict`. A retried trial continues its folder
    when the identity matches (:mod:`trainers.train`)."""
    from trainers.config import TrainConfig
    from trainers.run import StageData, fit_stage

    torch.set_num_threads(max(1, int(os.environ.get("KEYHAND_TRIAL_THREADS", "1"))))
    cfg = TrainConfig.model_validate(cfg_dict)
    result = fit_stage(cfg, "train", StageData.from_dict(data), out, sfe_init=sfe_checkpoint,
                       callbacks=callbacks, track=True, progress=False)
    return result.metrics


def ablation_trial(config: dict[str, Any]) -> None:
    """One row of Tables 1-4 (module docstring)."""
    from trainers.sweep import trial_run

    spec, label = config["spec"], config["row"]
    cfg = spec["configs"][label]
    row, seed_index = (spec.get("rows") or {}).get(label, (label, 0))   # "<row>.seed<k>" (stats.seeds)
    with trial_run(config, params={"row": row, "seed_index": seed_index, **cfg}, stage="ablation"):
        sfe = spec.get("sfe_checkpoint") if spec["pretrained"].get(label) else None
        train_and_evaluate(cfg, spec["data"], Path(spec["out"]) / label, sfe, [_TuneReport()])


def search_trial(config: dict[str, Any]) -> None:
    """One Optuna sample: the base configuration with the sampled dotted keys (``train.lr`` ...)."""
    from keyhand.config import apply_overrides
    from trainers.sweep import trial_label, trial_run

    spec = config["spec"]
    sampled = {k: v for k, v in config.items() if k != "spec" and not k.startswith("_")}
    cfg = apply_overrides(spec["base"], sampled)
    label = trial_label(config).replace("/", "_").replace(",", "_")
    with trial_run(config, params=sampled, stage="search"):
        train_and_evaluate(cfg, spec["data"], Path(spec["out"]) / label, spec.get("sfe_checkpoint"),
                           [_TuneReport()])


class _FoldReport:
    """fit callback of a fold: the test-fold accuracy of each epoch to ray.tune."""

    def on_epoch_end(self, epoch: int, metrics: dict[str, float]) -> None:
        from ray import tune

        tune.report({"accuracy": float(metrics["val/accuracy"]), "train_loss": float(metrics["train/ce"]),
                     "epoch": epoch + 1})

    def on_resume(self, history: list[dict[str, float]]) -> None:
        """As :meth:`_TuneReport.on_resume`: a fold whose checkpoints hold every epoch still reports its accuracy."""
        _report_last(self, history)


def fold_trial(config: dict[str, Any]) -> None:
    """One fold of the §4.3.3 gesture cross-validation (module docstring).

    ``spec["fold_kind"]`` (default ``spec["cv"]["mode"]``) picks the folds: "stratified" (Table 6's, the
    paper-comparable 80/20 folds) or "subject" (leave-subjects-out, min(cv.folds, subjects) folds); see
    :func:`keyhand.model.gesture.cv_splits`. The fold's record also names its kind and, where the joints file
    has subjects, the test fold's subjects."""
    from keyhand.model.gesture import cv_splits
    from trainers.config import TrainConfig
    from trainers.gesture import build_classifier, evaluate_gesture, fit_on_joints, joints_loader
    from trainers.sweep import trial_run

    spec, fold = config["spec"], int(config["fold"])
    torch.set_num_threads(1)
    data = torch.load(spec["joints"], map_location="cpu", weights_only=True)
    joints, labels = data["joints_3d"].float(), data["gesture"].long()
    subjects = data.get("subject")
    cv = spec["cv"]
    kind = str(spec.get("fold_kind") or cv["mode"])
    splits = cv_splits(labels.numpy(), k=cv["folds"], test_fraction=cv["test_fraction"], seed=cv["seed"],
                       subjects=None if subjects is None else subjects.numpy(), mode=kind)
    if not 0 <= fold < len(splits):
        raise ValueError(f"fold_trial: fold {fold} of {len(splits)} {kind} folds")
    train_idx, test_idx = (torch.as_tensor(i, dtype=torch.long) for i in splits[fold])
    cfg = TrainConfig.model_validate(spec["config"])
    num_classes = int(spec["num_classes"])
    out = Path(spec["out"])
    with trial_run(config, params={"fold": fold, "fold_kind": kind, "train_size": len(train_idx),
                                   "test_size": len(test_idx), "gesture": cfg.gesture.model_dump(),
                                   "classifier": cfg.classifier.model_dump(), "cv": cv}, stage="gesture-cv") as run:
        model = build_classifier(cfg, num_classes, seed=cfg.gesture.seed + fold)
        fit_on_joints(model, {"train": (joints[train_idx], labels[train_idx]),
                              "val": (joints[test_idx], labels[test_idx])},
                      cfg, out / f"fold-{fold}", callbacks=[_FoldReport()], progress=False, keep=1)
        m = evaluate_gesture(model, joints_loader(joints[test_idx], labels[test_idx], 256), num_classes=num_classes)
        record = {"fold": fold, "kind": kind, "accuracy": float(m["accuracy"]), "confusion": _tolist(m["confusion"]),
                  "per_class_accuracy": _tolist(m["per_class_accuracy"]), "test_size": len(test_idx),
                  "train_size": len(train_idx)}
        if subjects is not None:
            record["test_subjects"] = sorted({int(s) for s in subjects[test_idx].tolist()})
        path = atomic_write_json(out / f"fold-{fold}.json", record, indent=None)
        if run is not None:
            import mlflow

            mlflow.log_metric("accuracy", record["accuracy"])
            mlflow.log_artifact(str(path))


def _tolist(x: Any) -> Any:
    return x.tolist() if hasattr(x, "tolist") else x
