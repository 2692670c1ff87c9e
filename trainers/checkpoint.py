"""Checkpoints: one per epoch, written atomically, carrying everything a bitwise-exact resume needs.

    from trainers.checkpoint import save_checkpoint, load_checkpoint, latest, restore
    path = save_checkpoint(out_dir, epoch=3, model=model, optimizer=opt, params_hash=h, metrics=m, config=cfg)
    ckpt = load_checkpoint(latest(out_dir), params_hash=h)      # CheckpointError on another hash
    restore(ckpt, model, opt)                                     # weights, optimiser, RNG states

A file ``epoch-{epoch:04d}.pt`` (a ``torch.save`` dict) holds: ``model`` (state_dict), ``optimizer``,
``scaler`` (when a GradScaler is used; bf16 autocast needs none), ``rng`` (torch CPU, every CUDA device,
numpy, python), ``epoch`` (0-based, completed), ``params_hash`` (the run's identity, :func:`trainers.config.run_hash`),
``metrics`` (float dict of that epoch), ``config`` (the settings dump, so :mod:`trainers.predict` can
rebuild the model) and ``extra``. It is written with :func:`keyhand.atomic.atomic_path` (fsynced, renamed
into place, folder fsynced): a killed process leaves either the previous set of
checkpoints or the new one, never a partial file that :func:`latest` would pick. Everything stored is a
plain type or a tensor, so files load with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import os
import random
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch

from keyhand.atomic import atomic_path

__all__ = ["CheckpointError", "checkpoint_path", "save_checkpoint", "load_checkpoint", "latest", "list_checkpoints",
           "capture_rng", "restore_rng", "restore"]

_NAME = re.compile(r"^epoch-(\d{4,})\.pt$")


class CheckpointError(RuntimeError):
    """A checkpoint is missing, unreadable, or belongs to other settings; the message is one line."""


def checkpoint_path(out_dir: str | os.PathLike, epoch: int) -> Path:
    return Path(out_dir) / f"epoch-{epoch:04d}.pt"


def capture_rng() -> dict[str, Any]:
    """RNG states of torch (CPU and every CUDA device), numpy (legacy global) and python ``random``."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()  # noqa: NPY002 - the global RNG third-party code uses
    py_version, py_state, py_gauss = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": {"kind": kind, "keys": torch.from_numpy(np.asarray(keys, np.uint32).astype(np.int64)),
                  "pos": int(pos), "has_gauss": int(has_gauss), "cached": float(cached)},
        "python": {"version": py_version, "state": list(py_state), "gauss": py_gauss},
    }


def restore_rng(state: dict[str, Any]) -> None:
    """Inverse of :func:`capture_rng` (CUDA states only when as many devices are present)."""
    torch.set_rng_state(state["torch"])
    cuda = state.get("cuda") or []
    if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda)
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached"]))  # noqa: NPY002
    p = state["python"]
    random.setstate((p["version"], tuple(p["state"]), p["gauss"]))


def _atomic_save(obj: Any, path: Path) -> None:
    with atomic_path(path, fsync=True) as tmp, open(tmp, "wb") as f:
        torch.save(obj, f)


def _floats(metrics: dict | None) -> dict[str, float]:
    return {str(k): float(v) for k, v in (metrics or {}).items() if isinstance(v, int | float | np.number)}


def save_checkpoint(out_dir: str | os.PathLike, *, epoch: int, model: torch.nn.Module,
                    optimizer: torch.optim.Optimizer | None = None, scaler: Any = None, params_hash: str = "",
                    metrics: dict | None = None, config: dict | None = None, extra: dict | None = None,
                    keep: int | None = 2) -> Path:
    """Write ``epoch-{epoch:04d}.pt`` atomically (module docstring); keep the newest ``keep`` (None = all).

    Returns the path. ``model`` is the plain module (not a ``torch.compile`` wrapper).
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    state = {
        "format": 1,
        "epoch": int(epoch),
        "model": model.state_dict(),
        "optimizer": None if optimizer is None else optimizer.state_dict(),
        "scaler": None if scaler is None else scaler.state_dict(),
        "rng": capture_rng(),
        "params_hash": str(params_hash),
        "metrics": _floats(metrics),
        "config": config or {},
        "extra": extra or {},
    }
    path = checkpoint_path(out, epoch)
    _atomic_save(state, path)
    if keep is not None:
        for old in list_checkpoints(out)[:-keep]:
            old.unlink(missing_ok=True)
    return path


def list_checkpoints(out_dir: str | os.PathLike) -> list[Path]:
    """Completed checkpoints of a folder, oldest epoch first (temporary files are never listed)."""
    folder = Path(out_dir)
    if not folder.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in folder.iterdir() if (m := _NAME.match(p.name)) and p.is_file()]
    return [p for _, p in sorted(found)]


def latest(out_dir: str | os.PathLike) -> Path | None:
    """The checkpoint of the last completed epoch in ``out_dir``, or None."""
    found = list_checkpoints(out_dir)
    return found[-1] if found else None


def resolve_checkpoint(path: str | os.PathLike) -> Path:
    """A checkpoint file, or a run folder's :func:`latest` one; :class:`CheckpointError` (one line) if none."""
    p = Path(path)
    if p.is_dir():
        found = latest(p)
        if found is None:
            raise CheckpointError(f"{p}: no checkpoint (epoch-NNNN.pt) in this folder")
        p = found
    if not p.is_file():
        raise CheckpointError(f"{p}: no such checkpoint")
    return p


def load_checkpoint(path: str | os.PathLike, params_hash: str | None = None,
                    map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a checkpoint; with ``params_hash`` (a run identity), refuse one of another identity.

    A path to a folder means its :func:`latest` checkpoint. Raises :class:`CheckpointError` (one line).
    """
    p = resolve_checkpoint(path)
    try:
        ckpt = torch.load(p, map_location=map_location, weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unpickling failure is one line
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"{p}: unreadable checkpoint ({first})") from None
    if not isinstance(ckpt, dict) or "model" not in ckpt or "epoch" not in ckpt:
        raise CheckpointError(f"{p}: not a keyhand checkpoint (no model/epoch)")
    if params_hash is not None and ckpt.get("params_hash") != params_hash:
        raise CheckpointError(f"{p} belongs to a run of identity {ckpt.get('params_hash')}, not {params_hash} "
                              "(other settings, data or starting weights): it is never continued")
    ckpt["path"] = str(p)
    return ckpt


def restore(ckpt: dict[str, Any], model: torch.nn.Module, optimizer: torch.optim.Optimizer | None = None,
            scaler: Any = None, rng: bool = True) -> int:
    """Load weights, optimiser, scaler and (``rng``) RNG states; returns the next epoch to run."""
    model.load_state_dict(ckpt["model"])
    if optimizer is not None and ckpt.get("optimizer") is not None:
        optimizer.load_state_dict(ckpt["optimizer"])
    if scaler is not None and ckpt.get("scaler") is not None:
        scaler.load_state_dict(ckpt["scaler"])
    if rng and ckpt.get("rng"):
        restore_rng(ckpt["rng"])
    return int(ckpt["epoch"]) + 1
