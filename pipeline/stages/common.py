"""What every stage shares: the data roles, the project folders, JSON outputs, MLflow and Ray set-up."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

from pipeline.params import Params

ROLES = ("pretrain", "pose", "gesture")

DATA = Path("data")

RUNS = Path("runs")

METRICS = RUNS / "metrics"

class StageError(RuntimeError):
    """A stage cannot run: one line saying why and what to do."""

def _write_json(path: Path, obj: Any) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(obj, indent=2, default=float))
    os.replace(tmp, path)
    return path

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
    return {name: ["train", "test"]}

def prepared_dir(role: str, dataset: str, split: str) -> Path:
    return DATA / "prepared" / role / dataset / split

def masks_dir(role: str, dataset: str, split: str) -> Path:
    return DATA / "masks" / role / dataset / split

def _tracking(p: Params) -> str:
    import logging

    import mlflow  # noqa: F401 - configures its loggers on import; quieten them after

    from trainers.tracking import check_tracking, ensure_experiments, resolve_tracking_uri, use_tracking

    logging.getLogger("mlflow").setLevel(logging.WARNING)  # not "Creating initial MLflow database tables..."
    uri = resolve_tracking_uri(p.mlflow.tracking_uri, Path.cwd())
    check_tracking(uri)
    use_tracking(uri)
    ensure_experiments(uri, list(p.mlflow.experiments.values()))
    return uri

def _experiment(p: Params, stage: str) -> str:
    name = p.mlflow.experiments.get(stage)
    if not name:
        raise StageError(f"params.yaml: mlflow.experiments has no entry for stage {stage!r}")
    return name

def _fresh_or_resume(out: Path, stage: str, expected_hash: str) -> bool:
    """True = resume the checkpoints in ``out``; a run of other settings is moved aside (never deleted)."""
    from trainers.checkpoint import latest, load_checkpoint

    found = latest(out)
    if found is None:
        return False
    try:
        ckpt = load_checkpoint(found)
        same = ckpt.get("params_hash") == expected_hash
    except Exception:  # noqa: BLE001 - an unreadable checkpoint is set aside like a foreign one
        same = False
    if same:
        return True
    aside = out.with_name(f"{out.name}.previous")
    if aside.exists():
        shutil.rmtree(aside)
    out.rename(aside)
    print(f"{stage}: {out} held a run of other settings; moved to {aside}, starting fresh")
    return False

def _sfe_checkpoint() -> Path | None:
    from trainers.checkpoint import latest

    return latest(RUNS / "pretrain_sfe")

def _content_hash(spec: dict, files: list[Path]) -> str:
    """sha256 (10 hex) of a sweep's spec and input files: the Tune experiment's name suffix, so that
    ``resume`` continues an interrupted sweep of the SAME inputs and never reuses results of other ones."""
    import hashlib

    h = hashlib.sha256(json.dumps(spec, sort_keys=True, default=str).encode())
    for f in files:
        if f.is_file():
            h.update(f.read_bytes())
    return h.hexdigest()[:10]

def _split_files(folder: str | Path) -> list[Path]:
    return [Path(folder) / "manifest.json"]

def _sweep_common(p: Params) -> dict[str, Any]:
    from trainers.sweep import connect

    uri = _tracking(p)
    connect(p.ray.address)
    return {"storage_path": (RUNS / "ray").resolve(), "mlflow_uri": uri, "max_failures": p.sweep.max_failures,
            "resources_per_trial": {"cpu": p.sweep.cpus_per_trial, "gpu": p.sweep.gpus_per_trial}}

def _pose_data(p: Params) -> dict[str, str]:
    """Absolute paths of the pose role's prepared splits and masks (trials may run on other nodes)."""
    (name, splits), = role_datasets(p, "pose").items()
    return {"train": str(prepared_dir("pose", name, splits[0]).resolve()),
            "val": str(prepared_dir("pose", name, splits[1]).resolve()),
            "masks_train": str(masks_dir("pose", name, splits[0]).resolve()),
            "masks_val": str(masks_dir("pose", name, splits[1]).resolve())}
