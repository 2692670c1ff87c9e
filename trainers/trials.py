"""The Ray Tune trainables of keyhand's sweeps: one ablation row, one gesture fold, one search sample.

    from trainers.trials import ablation_trial, fold_trial, search_trial
    run_sweep("ablation", ablation_trial, {**ablation_space(rows), "spec": spec}, kind="grid", metric="epe_mean", ...)

Each trainable runs in a Ray worker (any node of the cluster: paths in ``config`` are absolute, the data
on storage every node sees), opens its MLflow child run (:func:`trainers.sweep.trial_run`), and reports
every epoch through ``ray.tune.report`` so ASHA can stop a search trial early (grids are never pruned).

* ``ablation_trial``: the row's :class:`~trainers.config.TrainConfig` (``spec["configs"][row]``, built by the
  driver from params.yaml's ``sweep.base`` + ``sweep.rows[row]``), optionally initialised from the pretrained
  SFE (Table 1, last row), trained on the pose train split (Eq. 12), evaluated on its test split each epoch:
  reports ``epe_mean`` (mm), ``auc``, the loss terms. Checkpoints go to ``spec["out"]/<row>``; a retried
  or resumed trial continues from them.
* ``search_trial``: the same on ``spec["base"]`` with the sampled dotted keys (``train.lr`` ...) applied.
* ``fold_trial``: §4.3.3 — the frozen framework's 3D joints of the gesture set were computed once by the
  driver (``spec["joints"]``); the fold's split (:func:`keyhand.model.gesture.cv_splits`) trains a fresh
  :class:`GestureClassifier` and reports the fold's test ``accuracy``; the fold's confusion matrix and
  per-class accuracy go to ``spec["out"]/fold-<k>.json``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch

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


def train_and_evaluate(cfg_dict: dict, data: dict[str, str], out: str | os.PathLike, sfe_checkpoint: str | None,
                       callbacks: list) -> dict[str, float]:
    """Train a Framework of ``cfg_dict`` on ``data["train"]`` (validated on ``data["val"]`` each epoch)."""
    from trainers.checkpoint import latest
    from trainers.config import TrainConfig
    from trainers.tracking import MlflowCallback
    from trainers.train import build_framework, fit, load_sfe_weights, make_loaders

    torch.set_num_threads(max(1, int(os.environ.get("KEYHAND_TRIAL_THREADS", "1"))))
    cfg = TrainConfig.model_validate(cfg_dict)
    loaders = make_loaders(cfg, "train", data["train"], data.get("val"),
                           masks={"train": data.get("masks_train"), "val": data.get("masks_val")})
    model = build_framework(cfg)
    if sfe_checkpoint and model.sfe is not None:
        load_sfe_weights(model, sfe_checkpoint)
    out = Path(out)
    result = fit("train", model, loaders, cfg, out, resume=latest(out) is not None, force=False,
                 callbacks=[MlflowCallback(), *callbacks], progress=False)
    return result.metrics


def ablation_trial(config: dict[str, Any]) -> None:
    """One row of Tables 1-4 (module docstring)."""
    from trainers.sweep import trial_run

    spec, row = config["spec"], config["row"]
    cfg = spec["configs"][row]
    with trial_run(config, params={"row": row, **cfg}, stage="ablation"):
        sfe = spec.get("sfe_checkpoint") if spec["pretrained"].get(row) else None
        train_and_evaluate(cfg, spec["data"], Path(spec["out"]) / row, sfe, [_TuneReport()])


def search_trial(config: dict[str, Any]) -> None:
    """One Optuna sample: the base configuration with the sampled dotted keys (``train.lr`` ...)."""
    from trainers.sweep import apply_overrides, trial_label, trial_run

    spec = config["spec"]
    sampled = {k: v for k, v in config.items() if k != "spec" and not k.startswith("_")}
    cfg = apply_overrides(spec["base"], sampled)
    label = trial_label(config).replace("/", "_").replace(",", "_")
    with trial_run(config, params=sampled, stage="search"):
        train_and_evaluate(cfg, spec["data"], Path(spec["out"]) / label, spec.get("sfe_checkpoint"),
                           [_TuneReport()])


def fold_trial(config: dict[str, Any]) -> None:
    """One fold of the §4.3.3 gesture cross-validation (module docstring)."""
    from ray import tune

    from keyhand.metrics import gesture_metrics
    from keyhand.model.gesture import GestureClassifier, cv_splits
    from trainers.sweep import trial_run

    spec, fold = config["spec"], int(config["fold"])
    torch.set_num_threads(1)
    data = torch.load(spec["joints"], map_location="cpu", weights_only=True)
    joints, labels = data["joints_3d"].float(), data["gesture"].long()
    subjects = data.get("subject")
    cv = spec["cv"]
    splits = cv_splits(labels.numpy(), k=cv["folds"], test_fraction=cv["test_fraction"], seed=cv["seed"],
                       subjects=None if subjects is None else subjects.numpy(), mode=cv["mode"])
    train_idx, test_idx = (torch.as_tensor(i, dtype=torch.long) for i in splits[fold])
    st, num_classes = spec["gesture"], int(spec["num_classes"])
    with trial_run(config, params={"fold": fold, "train_size": len(train_idx), "test_size": len(test_idx),
                                   "gesture": st, "classifier": spec["classifier"], "cv": cv},
                   stage="gesture-cv") as run:
        torch.manual_seed(st["seed"] + fold)
        model = GestureClassifier(num_classes, hidden=spec["classifier"]["hidden"],
                                  dropout=spec["classifier"]["dropout"])
        opt = torch.optim.Adam(model.parameters(), lr=st["lr"], weight_decay=st["weight_decay"])
        gen = torch.Generator().manual_seed(st["seed"] * 1000 + fold)
        x_train, y_train = joints[train_idx], labels[train_idx]
        for epoch in range(st["epochs"]):
            model.train()
            order = torch.randperm(len(train_idx), generator=gen)
            total = 0.0
            for start in range(0, len(order), st["batch_size"]):
                b = order[start:start + st["batch_size"]]
                loss = torch.nn.functional.cross_entropy(model(x_train[b]), y_train[b])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                total += float(loss) * len(b)
            if (epoch + 1) % max(1, st["epochs"] // 5) == 0 or epoch + 1 == st["epochs"]:
                model.eval()
                with torch.no_grad():
                    pred = model(joints[test_idx]).argmax(-1)
                m = gesture_metrics(labels[test_idx], pred, list(range(num_classes)))
                tune.report({"accuracy": float(m["accuracy"]), "train_loss": total / len(order), "epoch": epoch + 1})
        out = Path(spec["out"])
        out.mkdir(parents=True, exist_ok=True)
        record = {"fold": fold, "accuracy": float(m["accuracy"]), "confusion": _tolist(m["confusion"]),
                  "per_class_accuracy": _tolist(m["per_class_accuracy"]), "test_size": len(test_idx),
                  "train_size": len(train_idx)}
        path = out / f"fold-{fold}.json"
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(record))
        os.replace(tmp, path)
        if run is not None:
            import mlflow

            mlflow.log_metric("accuracy", record["accuracy"])
            mlflow.log_artifact(str(path))


def _tolist(x: Any) -> Any:
    return x.tolist() if hasattr(x, "tolist") else x
