"""Data access of the dashboard: the project, its MLflow runs, the report files, predictions and meshes (cached).

    from dashboards import data
    proj = data.project()                                  # params.yaml -> folders, tracking URI, experiments
    runs = data.runs_table(proj.tracking_uri, proj.experiment_names)   # one row per run (pandas)
    hist = data.metric_history(proj.tracking_uri, run_id, "pck")       # (step, value) rows
    report = data.read_json(proj.runs_dir / "report" / "report.json")   # None when missing

Where the project is: ``--params PATH`` after ``--`` on the ``streamlit run`` line (``dashboards/launch.py``),
else ``$KEYHAND_PARAMS``, else ``./params.yaml``; the project folder is the params file's folder. The tracking
URI is ``mlflow.tracking_uri`` of the params, else ``$MLFLOW_TRACKING_URI``, else ``runs/mlflow.db`` of the project
(:func:`trainers.tracking.resolve_tracking_uri`). A SQLite store that does not exist yet is never created here:
it reads as "no runs yet".

Everything read from MLflow is cached for :data:`TTL_S` seconds (``st.cache_data``); files are cached by their
modification time, so a finished stage shows up on the next rerun. Units follow the pipeline: EPE in mm, PCK
thresholds in mm, AUC and accuracies in [0, 1].
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import streamlit as st

__all__ = [
    "TTL_S", "Project", "ProjectError", "params_path_from_args", "load_project", "project", "runs_table",
    "metric_history", "list_artifacts", "artifact_bytes", "artifact_json", "read_json", "read_predictions",
    "pck_curve", "load_framework", "mesh_from_prediction", "mesh_from_model", "render_panel_png",
    "NO_RUNS_HINT", "latest_by_experiment",
]

TTL_S = 30
NO_RUNS_HINT = "make repro"  # or `dvc repro` in the project folder
PARENT_TAG = "mlflow.parentRunId"


class ProjectError(RuntimeError):
    """The project cannot be read (bad params file, unreachable tracking server): one line."""


@dataclass(frozen=True)
class Project:
    """Where a keyhand project keeps its results (all paths absolute)."""

    root: Path
    params_path: Path
    tracking_uri: str
    experiments: dict[str, str] = field(default_factory=dict)   # role (train, evaluate...) -> experiment name
    data_dir: Path | None = None
    data_source: str = "synthetic"

    @property
    def runs_dir(self) -> Path:
        return self.root / "runs"

    @property
    def experiment_names(self) -> tuple[str, ...]:
        return tuple(self.experiments.values())

    def experiment(self, role: str) -> str:
        return self.experiments.get(role, f"keyhand-{role.replace('_', '-')}")

    def resolve(self, path: str | os.PathLike) -> Path:
        """A path as the pipeline wrote it (relative to the project folder) made absolute."""
        p = Path(path)
        return p if p.is_absolute() else self.root / p


def params_path_from_args(argv: list[str] | None = None) -> Path:
    """``--params`` of the script arguments, else ``$KEYHAND_PARAMS``, else ``params.yaml`` (absolute)."""
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--params", default=None)
    args, _ = parser.parse_known_args(sys.argv[1:] if argv is None else argv)
    chosen = args.params or os.environ.get("KEYHAND_PARAMS") or "params.yaml"
    return Path(chosen).expanduser().resolve()


def load_project(params_path: str | os.PathLike) -> Project:
    """Read the params file (defaults when it does not exist) into a :class:`Project`; ProjectError on a bad one."""
    from pipeline.params import MlflowSection, ParamsError, load_params
    from trainers.tracking import TrackingError, resolve_tracking_uri

    path = Path(params_path).resolve()
    root = path.parent
    if path.is_file():
        try:
            p = load_params(path)
        except ParamsError as e:
            raise ProjectError(str(e)) from None
        mlflow_section, data_dir, source = p.mlflow, root / "data", p.data.source
    else:
        mlflow_section, data_dir, source = MlflowSection(), root / "data", "synthetic"
    try:
        uri = resolve_tracking_uri(mlflow_section.tracking_uri, root)
    except TrackingError as e:
        raise ProjectError(str(e)) from None
    return Project(root=root, params_path=path, tracking_uri=uri, experiments=dict(mlflow_section.experiments),
                   data_dir=data_dir, data_source=source)


@st.cache_data(ttl=TTL_S, show_spinner=False)
def _cached_project(params_path: str, mtime: float) -> Project:
    return load_project(params_path)


def project() -> Project:
    """The project of this dashboard (:func:`params_path_from_args`), cached by the params file's mtime."""
    path = params_path_from_args()
    mtime = path.stat().st_mtime if path.is_file() else 0.0
    return _cached_project(str(path), mtime)


# ------------------------------------------------------------------------------------------------- MLflow

def _store_missing(uri: str) -> bool:
    return uri.startswith("sqlite:///") and not Path(uri[len("sqlite:///"):]).is_file()


def _client(uri: str):
    from mlflow.tracking import MlflowClient

    from trainers.tracking import TrackingError, check_tracking, use_tracking

    if uri.startswith(("http://", "https://")):
        try:
            check_tracking(uri)
        except TrackingError as e:
            raise ProjectError(str(e)) from None
        use_tracking(uri)  # bounded HTTP retries
    return MlflowClient(tracking_uri=uri)


RUN_COLUMNS = ["experiment", "run_id", "run_name", "status", "start_time", "end_time", "duration_s", "parent_run_id",
               "stage", "dataset", "checkpoint", "error"]


@st.cache_data(ttl=TTL_S, show_spinner="Reading MLflow runs…")
def runs_table(uri: str, experiment_names: tuple[str, ...]) -> pd.DataFrame:
    """Every run of the experiments, newest first: :data:`RUN_COLUMNS` + ``metrics.<key>`` (last value) +
    ``params.<key>`` columns. Times are naive pandas timestamps in UTC; an empty frame when there are no runs."""
    empty = pd.DataFrame(columns=RUN_COLUMNS)
    if _store_missing(uri):
        return empty
    client = _client(uri)
    ids: dict[str, str] = {}
    for name in experiment_names:
        exp = client.get_experiment_by_name(name)
        if exp is not None and exp.lifecycle_stage == "active":
            ids[exp.experiment_id] = name
    if not ids:
        return empty
    rows = []
    for run in client.search_runs(list(ids), max_results=5000, order_by=["attributes.start_time DESC"]):
        info, tags = run.info, run.data.tags
        start = pd.to_datetime(info.start_time, unit="ms") if info.start_time else pd.NaT
        end = pd.to_datetime(info.end_time, unit="ms") if info.end_time else pd.NaT
        row = {"experiment": ids.get(info.experiment_id, info.experiment_id), "run_id": info.run_id,
               "run_name": info.run_name or info.run_id[:8], "status": info.status, "start_time": start,
               "end_time": end,
               "duration_s": (info.end_time - info.start_time) / 1000.0 if info.end_time and info.start_time
               else np.nan,
               "parent_run_id": tags.get(PARENT_TAG) or None, "stage": tags.get("keyhand.stage", ""),
               "dataset": tags.get("keyhand.dataset", ""), "checkpoint": tags.get("keyhand.checkpoint", ""),
               "error": tags.get("keyhand.error", "")}
        row.update({f"metrics.{k}": v for k, v in run.data.metrics.items()})
        row.update({f"params.{k}": v for k, v in run.data.params.items()})
        rows.append(row)
    return pd.DataFrame(rows) if rows else empty


def latest_by_experiment(runs: pd.DataFrame, top_level: bool = True) -> dict[str, pd.Series]:
    """The newest run of each experiment (only runs without a parent when ``top_level``)."""
    if runs.empty:
        return {}
    sel = runs[runs["parent_run_id"].isna()] if top_level else runs
    out = {}
    for name, group in sel.groupby("experiment", sort=False):
        out[str(name)] = group.sort_values("start_time", ascending=False).iloc[0]
    return out


@st.cache_data(ttl=TTL_S, show_spinner=False)
def metric_history(uri: str, run_id: str, key: str) -> pd.DataFrame:
    """The logged values of metric ``key`` of a run: columns ``step``, ``value``, sorted by step (last per step)."""
    hist = _client(uri).get_metric_history(run_id, key)
    frame = pd.DataFrame([(m.step, m.value, m.timestamp) for m in hist], columns=["step", "value", "timestamp"])
    frame = frame.sort_values(["step", "timestamp"]).drop_duplicates("step", keep="last")
    return frame[["step", "value"]].reset_index(drop=True)


@st.cache_data(ttl=TTL_S, show_spinner=False)
def list_artifacts(uri: str, run_id: str, path: str | None = None) -> list[str]:
    """Artifact file paths of a run under ``path`` (recursive), sorted."""
    client = _client(uri)
    out: list[str] = []
    stack = [path]
    while stack:
        for info in client.list_artifacts(run_id, stack.pop()):
            (stack.append(info.path) if info.is_dir else out.append(info.path))
    return sorted(out)


@st.cache_data(ttl=TTL_S, show_spinner=False)
def artifact_bytes(uri: str, run_id: str, path: str) -> bytes:
    """The bytes of one artifact file of a run."""
    import mlflow.artifacts

    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    with tempfile.TemporaryDirectory() as tmp:
        local = mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=path, dst_path=tmp,
                                                    tracking_uri=uri)
        return Path(local).read_bytes()


def artifact_json(uri: str, run_id: str, path: str) -> Any:
    """A JSON artifact of a run, parsed; None when the run has no such artifact."""
    if path not in list_artifacts(uri, run_id, str(Path(path).parent) if "/" in path else None):
        return None
    return json.loads(artifact_bytes(uri, run_id, path))


def pck_curve(uri: str, run_id: str) -> tuple[np.ndarray, np.ndarray]:
    """The 3D PCK curve a run logged (trainers.tracking.log_evaluation): thresholds (mm), values in [0, 1].

    The metric ``pck`` has step = threshold in mm; ``pck_um`` (thresholds closer than 1 mm) in micrometres.
    """
    frame = metric_history(uri, run_id, "pck")
    scale = 1.0
    if frame.empty:
        frame, scale = metric_history(uri, run_id, "pck_um"), 1e-3
    return frame["step"].to_numpy(np.float64) * scale, frame["value"].to_numpy(np.float64)


# ------------------------------------------------------------------------------------------------- files

@st.cache_data(show_spinner=False)
def _read_json(path: str, mtime: float) -> Any:
    return json.loads(Path(path).read_text())


def read_json(path: str | os.PathLike) -> Any:
    """A JSON file (report.json, runs/metrics/*.json), cached by mtime; None when it does not exist."""
    p = Path(path)
    if not p.is_file():
        return None
    try:
        return _read_json(str(p), p.stat().st_mtime)
    except json.JSONDecodeError as e:
        raise ProjectError(f"{p}: not valid JSON (line {e.lineno}): re-run the stage that writes it") from None


@st.cache_data(show_spinner=False)
def _read_npz(path: str, mtime: float) -> dict[str, np.ndarray]:
    with np.load(path) as z:
        return {k: z[k] for k in z.files}


def read_predictions(path: str | os.PathLike) -> dict[str, np.ndarray] | None:
    """``runs/evaluate/predictions.npz`` (per test sample: joints, EPE, the HE parameters t, s, rot, theta, beta)."""
    p = Path(path)
    return _read_npz(str(p), p.stat().st_mtime) if p.is_file() else None


# ------------------------------------------------------------------------------------------------- meshes

@st.cache_resource(show_spinner="Loading the trained model…", max_entries=4)
def _framework(checkpoint: str, mtime: float):
    from trainers.predict import load_model

    return load_model(checkpoint, device="cpu")


def load_framework(checkpoint: str | os.PathLike):
    """``(Framework in eval mode on the CPU, ModelConfig)`` of a checkpoint file or run folder (cached)."""
    from trainers.checkpoint import CheckpointError, resolve_checkpoint

    try:
        p = resolve_checkpoint(checkpoint)
    except CheckpointError as e:
        raise ProjectError(f"{e}: run the train stage first ({NO_RUNS_HINT})") from None
    return _framework(str(p), p.stat().st_mtime)


def _root_align(joints: np.ndarray) -> np.ndarray:
    return joints - joints[:1]


def mesh_from_prediction(model, pred: dict[str, np.ndarray], k: int) -> dict[str, np.ndarray]:
    """Rebuild sample ``k``'s mesh from its stored HE parameters (§3.4: MANO(θ, β) rotated by R, Eqs. 2-5).

    ``pred`` is :func:`read_predictions`; the HE of ``model`` (the checkpoint the evaluation used) maps
    ``(t, s, rot, theta, beta)`` to vertices (778, 3) mm (wrist-rooted, R applied). Returns ``vertices``,
    ``faces`` (F, 3), ``joints`` (21, 3) predicted and ``joints_gt`` (21, 3): the mesh and the predicted joints
    moved so that the predicted wrist is the origin, the ground truth root-aligned the same way (as EPE is).
    """
    import torch

    from keyhand.model.ve import ViewParams

    if "theta" not in pred:
        raise ProjectError("predictions.npz has no HE parameters: the run is the direct-regression control "
                           "(model.estimator: direct), which predicts joints, not a mesh")
    theta = np.asarray(pred["theta"][k], np.float32)
    pca = int(model.cfg.pca_comps)
    if theta.shape[-1] != pca:
        raise ProjectError(f"predictions.npz: theta has {theta.shape[-1]} PCA coefficients but the checkpoint's "
                           f"model.pca_comps is {pca}: re-run the evaluate stage")
    v = ViewParams(*(torch.as_tensor(np.asarray(pred[n][k], np.float32))[None]
                     for n in ("t", "s", "rot", "theta", "beta")))
    with torch.no_grad():
        out = model.he(v, render=False)
    joints = out.joints_3d[0].numpy().astype(np.float64)
    verts = out.vertices[0].numpy().astype(np.float64)
    origin = joints[:1]
    return {"vertices": verts - origin, "faces": model.faces.cpu().numpy(), "joints": joints - origin,
            "joints_gt": _root_align(np.asarray(pred["joints_3d_gt"][k], np.float64)),
            "epe": float(pred["epe"][k]) if "epe" in pred else float("nan")}


def mesh_from_model(model, split_dir: str | os.PathLike, index: int) -> dict[str, np.ndarray]:
    """Run the framework on prepared sample ``index`` of ``split_dir`` (its §3.1 crop): same keys as
    :func:`mesh_from_prediction`, EPE (mm) root-relative against the sample's 3D joints."""
    import torch

    from keyhand.data.cache import PreparedDataset

    ds = PreparedDataset(split_dir)
    if not 0 <= index < len(ds):
        raise ProjectError(f"{split_dir}: no sample {index} (it holds {len(ds)})")
    item = ds[index]
    with torch.no_grad():
        out = model(item["image"][None], render=False)
    joints = out.joints_3d[0].numpy().astype(np.float64)
    origin = joints[:1]
    gt = _root_align(item["joints_3d"].numpy().astype(np.float64))
    epe = float(np.linalg.norm((joints - origin) - gt, axis=1).mean()) if float(item["has_joints_3d"]) else np.nan
    return {"vertices": out.vertices[0].numpy().astype(np.float64) - origin, "faces": model.faces.cpu().numpy(),
            "joints": joints - origin, "joints_gt": gt, "epe": epe}


def render_panel_png(model, split_dir: str | os.PathLike, index: int) -> bytes:
    """A Fig. 6 panel (input, 2D joints, silhouette, 3D joints, mesh) of a prepared sample, as PNG bytes."""
    from keyhand.data.cache import PreparedDataset
    from trainers.predict import split_panels

    ds = PreparedDataset(split_dir)
    with tempfile.TemporaryDirectory() as tmp:
        (path,) = split_panels(model, ds, [index], tmp)
        return Path(path).read_bytes()
