"""The §4.3.3 gesture stage: a classifier on the frozen framework's 3D joints, trained by the shared epoch loop.

    from trainers.gesture import build_classifier, fit_gesture, fit_on_joints, framework_joints
    clf = build_classifier(cfg, num_gesture_classes(loaders["train"].dataset))
    result = fit_gesture(clf, framework, loaders, cfg, "runs/gesture")   # joints once per split, then epochs
    result = fit_on_joints(clf, {"train": (x, y), "val": (xv, yv)}, cfg, "runs/cv/fold-3")   # a CV fold

The framework is frozen, so its 3D joints are computed once per split (eval mode, no augmentation) and
cached in ``out_dir/joints-{split}.pt``, keyed by the framework's weights and the split's content. The
:class:`keyhand.model.gesture.GestureClassifier` then trains with cross-entropy through
:func:`trainers.train.train_epochs` (checkpoints, history, run identity and resume rules as every stage);
the run's identity covers the joints it trains on and the classifier's initial weights. Every epoch is
validated on ``val`` (accuracy, :func:`keyhand.metrics.gesture_metrics`).
"""

from __future__ import annotations

import copy
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from keyhand.atomic import atomic_path
from trainers.config import TrainConfig, run_hash
from trainers.device import autocast, resolve_device
from trainers.train import (
    FitError,
    FitResult,
    dataset_identity,
    make_loader,
    state_fingerprint,
    train_epochs,
)

__all__ = ["build_classifier", "num_gesture_classes", "framework_joints", "fit_gesture", "fit_on_joints",
           "evaluate_gesture", "joints_loader"]


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
    key = f"{state_fingerprint(framework)}:{dataset_identity(loader)}"
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
    with atomic_path(path) as tmp:
        torch.save({"key": key, "data": data}, tmp)
    return data


class _JointsDict(Dataset):
    """(joints, label) pairs as the dict batches the gesture step reads."""

    def __init__(self, joints: Tensor, labels: Tensor) -> None:
        self.joints, self.labels = joints, labels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> dict[str, Tensor]:
        return {"joints_3d": self.joints[i], "gesture": self.labels[i]}


def joints_loader(joints: Tensor, labels: Tensor, batch_size: int, shuffle: bool = False,
                  seed: int = 0) -> DataLoader:
    """Batches ``{"joints_3d": (B, 21, 3), "gesture": (B,)}`` of joints and labels (order: ``(seed, epoch)``)."""
    return make_loader(_JointsDict(joints.float(), labels.long()), batch_size, shuffle, seed)


def _gesture_step(model: nn.Module, batch: dict, w: Any) -> tuple[Tensor, dict[str, Tensor]]:
    logits = model(batch["joints_3d"])
    loss = torch.nn.functional.cross_entropy(logits.float(), batch["gesture"])
    acc = (logits.argmax(-1) == batch["gesture"]).float().mean()
    return loss, {"ce": loss.detach(), "accuracy": acc.detach()}


@torch.no_grad()
def evaluate_gesture(model: nn.Module, loader: DataLoader, device: str | torch.device | None = None,
                     num_classes: int | None = None) -> dict[str, Any]:
    """Gesture accuracy of a classifier on joint batches (``joints_3d``, ``gesture``): §4.3.3, Table 6.

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


def _validate(model: nn.Module, loader: DataLoader, dev: torch.device, amp: str) -> dict[str, float]:
    m = evaluate_gesture(model, loader, device=dev)
    return {k: v for k, v in m.items() if isinstance(v, int | float)}


def fit_on_joints(classifier: nn.Module, splits: dict[str, tuple[Tensor, Tensor]], cfg: TrainConfig,
                  out_dir: str | os.PathLike, resume: str = "auto", callbacks: Sequence[Any] = (), *,
                  device: str | torch.device | None = "auto", progress: bool = True,
                  keep: int | None = 2, extra: dict | None = None) -> FitResult:
    """Train ``classifier`` on ``splits`` = ``{"train": (joints (N, 21, 3), labels (N,)), "val": ...}``.

    The gesture stage's loop (``cfg.gesture``): the identity covers the joints and labels, the classifier's
    initial weights and the gesture / classifier settings.
    """
    if "train" not in splits:
        raise FitError("the gesture stage needs a 'train' split of joints")
    st = cfg.gesture
    loaders, inputs = {}, {}
    for split, (joints, labels) in splits.items():
        if bool((labels < 0).any()):
            raise FitError(f"split {split!r} has samples without a gesture label: the gesture stage needs a "
                           f"gesture dataset (synth-gestures, rwth, senz3d)")
        loaders[split] = joints_loader(joints, labels, st.batch_size, split == "train", st.seed)
        inputs[split] = state_fingerprint({"joints": joints.float(), "labels": labels.long()})
    inputs["init"] = state_fingerprint(classifier)
    params = [p for p in classifier.parameters() if p.requires_grad]
    return train_epochs("gesture", classifier, params, _gesture_step, _validate, loaders, cfg, out_dir,
                        run_hash(cfg, "gesture", inputs), resume=resume, callbacks=callbacks, device=device,
                        progress=progress, keep=keep, extra=extra)


def fit_gesture(classifier: nn.Module, framework: nn.Module, loaders: dict[str, DataLoader], cfg: TrainConfig,
                out_dir: str | os.PathLike, resume: str = "auto", callbacks: Sequence[Any] = (), *,
                device: str | torch.device | None = "auto", progress: bool = True,
                keep: int | None = 2) -> FitResult:
    """The gesture stage on image loaders of a gesture dataset: the frozen ``framework``'s joints once per
    split (cached in ``out_dir``), then :func:`fit_on_joints`."""
    if framework is None:
        raise FitError("the gesture stage needs the frozen framework (framework=...)")
    dev = resolve_device(device)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    framework.to(dev).eval()
    for p in framework.parameters():
        p.requires_grad_(False)
    splits = {}
    for split, ld in loaders.items():
        if ld is not None:
            data = _cached_joints(framework, ld, split, out, dev, progress)
            splits[split] = (data["joints_3d"], data["gesture"])
    return fit_on_joints(classifier, splits, cfg, out, resume, callbacks, device=dev, progress=progress,
                         keep=keep, extra={"framework": state_fingerprint(framework)})
