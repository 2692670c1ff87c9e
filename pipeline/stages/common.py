"""What every stage shares: the data roles, the project folders, JSON outputs (no trainers import: the data
stages depend on this module; what the training, evaluation and sweep stages share is in ``runs``)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from keyhand.atomic import atomic_write_json
from pipeline.params import Params

ROLES = ("pretrain", "pose", "gesture")

DATA = Path("data")

RUNS = Path("runs")

METRICS = RUNS / "metrics"

#: The pose role's splits: ``train`` fits, ``val`` monitors every epoch and is what the Optuna search and any
#: model selection read, ``test`` is read only by evaluation (the evaluate stage, the ablation's final
#: per-image errors) and the report. Synthetic sets generate the three; real STB's val is one whole held-out
#: training sequence (``data.stb.val_sequence``), another real set's a deterministic held-out share of its train
#: split (``data.val_fraction``; :func:`pipeline.stages.data.held_out`).
POSE_SPLITS = ("train", "val", "test")

class StageError(RuntimeError):
    """A stage cannot run: one line saying why and what to do."""

def _write_json(path: Path, obj: Any) -> Path:
    return atomic_write_json(path, obj, indent=2, default=float)

def _read_json(path: Path) -> Any:
    if not path.is_file():
        raise StageError(f"{path} is missing: run the stage that writes it first (dvc repro)")
    return json.loads(path.read_text())

def role_datasets(p: Params, role: str) -> dict[str, list[str]]:
    """{dataset: [splits]} prepared for ``role``."""
    if role not in ROLES:
        raise StageError(f"unknown data role {role!r}; choose one of {', '.join(ROLES)}")
    if role == "gesture":
        return {name: ["all"] for name in p.gesture_datasets()}
    name = p.pose_datasets()[role]
    if role == "pretrain":
        return {name: ["train"]}
    return {name: list(POSE_SPLITS)}

def stage_role(p: Params, stage: str) -> str:
    """The data role a training stage reads: ``sfe`` the pretrain set, or the pose set when ``data.sfe_on`` is
    "pose"; ``train`` the pose set; ``gesture`` the gesture sets. (The DVC stages and the CLI both ask here.)"""
    if stage == "sfe":
        return "pose" if p.data.sfe_on == "pose" else "pretrain"
    return {"train": "pose", "gesture": "gesture"}[stage]

def prepared_dir(role: str, dataset: str, split: str) -> Path:
    return DATA / "prepared" / role / dataset / split

def masks_dir(role: str, dataset: str, split: str) -> Path:
    return DATA / "masks" / role / dataset / split
