"""MLflow tracking: where runs go, how they start and always end, and what an evaluation logs.

    from trainers.tracking import (resolve_tracking_uri, check_tracking, ensure_experiments, tracked_run,
                                   MlflowCallback, log_evaluation, log_gesture_cv, log_image, close_stale_runs)
    uri = resolve_tracking_uri(params_uri, project_dir)   # param > $MLFLOW_TRACKING_URI > sqlite:///<project>/runs/mlflow.db
    check_tracking(uri)                                   # TrackingError (one line) when a server is unreachable
    ensure_experiments(uri, ["keyhand-train", "keyhand-sweeps"])   # in the driver, before any trial starts
    close_stale_runs("keyhand-train", older_than_s=3600)  # runs a crashed driver left RUNNING -> FAILED
    with tracked_run("keyhand-train", "train", params=cfg_dict, stage="train") as run:
        fit(..., callbacks=[MlflowCallback()])            # per-epoch loss terms, checkpoint artifacts
        log_evaluation(evaluate(model, loader))           # EPE, AUC, the PCK curve (metrics, table, figure)

The default store is a SQLite database inside the project (``runs/mlflow.db``, artifacts in
``runs/mlartifacts``); any tracking server is used by its ``http(s)://`` URI (several machines log to one
``mlflow server``). A plain ``./mlruns`` file store is not supported by MLflow 3 and is never used.

Every run opened by :func:`tracked_run` ends: FINISHED when its block returns, FAILED when the block raises,
KILLED on Ctrl-C; the exception is re-raised. A driver that was killed outright cannot end its runs, so a
driver starting up calls :func:`close_stale_runs`: runs still RUNNING whose process is gone (same host) or
whose last heartbeat (start, or the last :class:`MlflowCallback` epoch) is older than ``older_than_s`` are
marked FAILED. Runs carry tags ``keyhand.git_commit``, ``keyhand.params_hash``, ``keyhand.stage``,
``keyhand.host``, ``keyhand.pid`` and ``keyhand.heartbeat``.

Units: EPE in millimetres (``epe_mean``, ``epe_median``), PCK thresholds in millimetres (the metric ``pck``
is logged with ``step`` = threshold in mm), AUC normalised to [0, 1].
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "TrackingError", "DEFAULT_DB", "DEFAULT_ARTIFACTS", "default_tracking_uri", "resolve_tracking_uri",
    "check_tracking", "use_tracking", "ensure_experiments", "flatten_params", "params_hash", "git_commit",
    "tracked_run", "MlflowCallback", "log_evaluation", "log_gesture_cv", "log_image", "close_stale_runs",
    "child_runs", "pid_alive",
]

DEFAULT_DB = "runs/mlflow.db"             # relative to the project folder
DEFAULT_ARTIFACTS = "runs/mlartifacts"    # relative to the project folder

TAG_COMMIT = "keyhand.git_commit"
TAG_HASH = "keyhand.params_hash"
TAG_STAGE = "keyhand.stage"
TAG_HOST = "keyhand.host"
TAG_PID = "keyhand.pid"
TAG_HEARTBEAT = "keyhand.heartbeat"       # unix seconds of the last sign of life
PARENT_TAG = "mlflow.parentRunId"

_MAX_PARAMS_PER_CALL = 100                # MLflow's log_batch limit
_MAX_PARAM_LEN = 6000


class TrackingError(RuntimeError):
    """The tracking store is unreachable or misconfigured; the message is one line naming the URI."""


# --------------------------------------------------------------------------------------------------- where


def default_tracking_uri(project_dir: str | os.PathLike = ".") -> str:
    """``sqlite:///<project>/runs/mlflow.db`` (absolute path)."""
    return "sqlite:///" + str((Path(project_dir) / DEFAULT_DB).resolve())


def resolve_tracking_uri(uri: str | None, project_dir: str | os.PathLike = ".") -> str:
    """The tracking URI to use: ``uri`` (params.yaml / CLI) > ``$MLFLOW_TRACKING_URI`` > the project's SQLite store.

    A relative ``sqlite:///`` path or a bare path is made absolute against ``project_dir`` so that trials
    running in other working directories write to the same database.
    """
    chosen = (uri or "").strip() or os.environ.get("MLFLOW_TRACKING_URI", "").strip()
    if not chosen:
        return default_tracking_uri(project_dir)
    if chosen.startswith("sqlite:///"):
        path = chosen[len("sqlite:///"):]
        if path and not path.startswith("/") and path != ":memory:":
            return "sqlite:///" + str((Path(project_dir) / path).resolve())
        return chosen
    if "://" not in chosen:
        if chosen.rstrip("/").endswith("mlruns") or Path(chosen).is_dir():
            raise TrackingError(f"tracking URI {chosen!r}: MLflow 3 has no file store; use sqlite:///<path>/mlflow.db "
                                "or an http(s):// server")
        return "sqlite:///" + str((Path(project_dir) / chosen).resolve())
    if chosen.startswith("file:"):
        raise TrackingError(f"tracking URI {chosen!r}: MLflow 3 has no file store; use sqlite:///<path>/mlflow.db "
                            "or an http(s):// server")
    return chosen


def _artifact_root_for(uri: str) -> str | None:
    """Artifacts of a SQLite store live beside the database (``<db dir>/mlartifacts``); a server decides its own."""
    if uri.startswith("sqlite:///"):
        db = Path(uri[len("sqlite:///"):])
        return (db.parent / "mlartifacts").resolve().as_uri()
    return None


def check_tracking(uri: str, timeout_s: float = 3.0) -> None:
    """Fail fast (``TrackingError``, one line) when ``uri`` cannot be used.

    ``http(s)://``: ``GET <uri>/health`` must answer within ``timeout_s``. ``sqlite:///``: the folder of the
    database must be creatable. Other schemes (databricks, postgresql...) are left to MLflow.
    """
    if uri.startswith(("http://", "https://")):
        url = uri.rstrip("/") + "/health"
        try:
            with urllib.request.urlopen(url, timeout=timeout_s) as resp:  # noqa: S310 - http(s) only
                if resp.status >= 400:
                    raise TrackingError(f"tracking server {uri} answered HTTP {resp.status} on /health; "
                                        "check the URI or start it with `mlflow server --host ... --port ...`")
        except TrackingError:
            raise
        except (urllib.error.URLError, OSError, ValueError) as e:
            reason = getattr(e, "reason", e)
            raise TrackingError(f"tracking server {uri} is unreachable ({reason}); start it with `mlflow server "
                                "--host <host> --port <port>` or set mlflow.tracking_uri / MLFLOW_TRACKING_URI to a "
                                "reachable one (default: the project's sqlite store)") from None
    elif uri.startswith("sqlite:///"):
        folder = Path(uri[len("sqlite:///"):]).parent
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise TrackingError(f"tracking URI {uri}: cannot create {folder} ({e.strerror})") from None


def use_tracking(uri: str) -> str:
    """Point the ``mlflow`` module at ``uri`` and bound its HTTP retries (a dead server fails in seconds, not minutes).

    ``MLFLOW_HTTP_REQUEST_MAX_RETRIES`` (default here 2) and ``MLFLOW_HTTP_REQUEST_TIMEOUT`` (default here 30 s)
    are only set when the environment does not set them already.
    """
    import mlflow

    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "30")
    if uri.startswith("sqlite:///"):
        Path(uri[len("sqlite:///"):]).parent.mkdir(parents=True, exist_ok=True)
    mlflow.set_tracking_uri(uri)
    return uri


def _client(uri: str | None = None):
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=uri) if uri else MlflowClient()


def ensure_experiments(uri: str, names: Sequence[str], check: bool = True) -> dict[str, str]:
    """Create the experiments (and the SQLite database) once, in the driver, before any trial: ``{name: id}``.

    Creating them concurrently from several trials races (duplicate-name errors, SQLite migrations), so
    trials only ever look experiments up. A SQLite store keeps artifacts in ``<db dir>/mlartifacts/<name>``.
    """
    if check:
        check_tracking(uri)
    use_tracking(uri)
    client = _client(uri)
    root = _artifact_root_for(uri)
    ids: dict[str, str] = {}
    for name in names:
        exp = client.get_experiment_by_name(name)
        if exp is None:
            location = f"{root}/{name}" if root else None
            try:
                ids[name] = client.create_experiment(name, artifact_location=location)
            except Exception:  # created meanwhile by another driver
                exp = client.get_experiment_by_name(name)
                if exp is None:
                    raise
                ids[name] = exp.experiment_id
        else:
            if exp.lifecycle_stage == "deleted":
                client.restore_experiment(exp.experiment_id)
            ids[name] = exp.experiment_id
    return ids


def _experiment_id(experiment: str, client) -> str:
    """An experiment id from a name (or an id); created when missing (prefer :func:`ensure_experiments` first)."""
    exp = client.get_experiment_by_name(experiment)
    if exp is not None:
        return exp.experiment_id
    with contextlib.suppress(Exception):
        exp = client.get_experiment(experiment)
        if exp is not None:
            return exp.experiment_id
    uri = client.tracking_uri if hasattr(client, "tracking_uri") else None
    root = _artifact_root_for(uri) if uri else None
    return client.create_experiment(experiment, artifact_location=f"{root}/{experiment}" if root else None)


# --------------------------------------------------------------------------------------------------- what


def flatten_params(params: Mapping[str, Any] | None, sep: str = ".", prefix: str = "") -> dict[str, str]:
    """``{"model": {"sfe": "heatmaps"}}`` -> ``{"model.sfe": "heatmaps"}``; lists become JSON; values are strings."""
    out: dict[str, str] = {}
    for key, value in (params or {}).items():
        name = f"{prefix}{sep}{key}" if prefix else str(key)
        if isinstance(value, Mapping):
            out.update(flatten_params(value, sep, name))
        else:
            if isinstance(value, list | tuple):
                text = json.dumps(list(value), default=str)
            elif isinstance(value, Path):
                text = str(value)
            else:
                text = str(value)
            out[name] = text[:_MAX_PARAM_LEN]
    return out


def params_hash(params: Mapping[str, Any] | None) -> str:
    """sha256 (16 hex) of the flattened params, key order independent."""
    text = json.dumps(flatten_params(params), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def git_commit(cwd: str | os.PathLike | None = None) -> str:
    """``git rev-parse HEAD`` of ``cwd`` (default: this file's repository); ``"unknown"`` outside git."""
    folder = Path(cwd) if cwd else Path(__file__).resolve().parent
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=folder, capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    commit = out.stdout.strip()
    return commit if out.returncode == 0 and commit else "unknown"


def _log_params(client, run_id: str, params: dict[str, str]) -> None:
    from mlflow.entities import Param

    items = [Param(k, v) for k, v in params.items()]
    for i in range(0, len(items), _MAX_PARAMS_PER_CALL):
        client.log_batch(run_id, params=items[i:i + _MAX_PARAMS_PER_CALL])


@contextlib.contextmanager
def tracked_run(experiment: str, run_name: str | None = None, params: Mapping[str, Any] | None = None,
                tags: Mapping[str, Any] | None = None, parent_run_id: str | None = None, nested: bool = False,
                stage: str | None = None, uri: str | None = None, run_id: str | None = None,
                log_params: bool = True) -> Iterator[Any]:
    """Open an MLflow run, yield it (``mlflow.ActiveRun``), and always end it.

    FINISHED when the block returns; FAILED when it raises (the exception's first line is tagged as
    ``keyhand.error``); KILLED on ``KeyboardInterrupt``; the exception is re-raised. ``parent_run_id`` makes
    it a child (sweep trial) of a run opened elsewhere, even in another process or machine; ``nested=True``
    nests it under the run active in this process. ``run_id`` reopens an existing run (a resumed sweep or a
    retried trial). ``params`` are flattened with dots. ``uri`` switches the tracking URI first.
    """
    import mlflow

    if uri:
        use_tracking(uri)
    client = _client()
    exp_id = _experiment_id(experiment, client) if run_id is None else None
    flat = flatten_params(params)
    all_tags = {TAG_COMMIT: git_commit(), TAG_HASH: params_hash(params), TAG_HOST: socket.gethostname(),
                TAG_PID: str(os.getpid()), TAG_HEARTBEAT: str(int(time.time()))}
    if stage:
        all_tags[TAG_STAGE] = stage
    all_tags.update({k: str(v) for k, v in (tags or {}).items()})
    if run_id is not None:
        active = mlflow.start_run(run_id=run_id, nested=nested or mlflow.active_run() is not None)
        client.set_tag(run_id, "keyhand.error", "")
    else:
        active = mlflow.start_run(experiment_id=exp_id, run_name=run_name, nested=nested,
                                  parent_run_id=parent_run_id, tags=all_tags)
    rid = active.info.run_id
    status = "FAILED"
    try:
        if run_id is not None:
            for k, v in all_tags.items():
                client.set_tag(rid, k, v)
        if log_params and flat:
            if run_id is not None:  # a reopened run already holds its params; MLflow refuses changing them
                old = client.get_run(rid).data.params
                flat = {k: v for k, v in flat.items() if k not in old}
            _log_params(client, rid, flat)
        yield active
        status = "FINISHED"
    except KeyboardInterrupt:
        status = "KILLED"
        raise
    except BaseException as e:
        with contextlib.suppress(Exception):
            client.set_tag(rid, "keyhand.error", _first_line(e))
        raise
    finally:
        _end(rid, status)


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0] if text else ''}"[:500]


def _end(run_id: str, status: str) -> None:
    """End ``run_id`` with ``status`` whether or not it is the fluent active run (never leaves it RUNNING)."""
    import mlflow

    active = mlflow.active_run()
    try:
        if active is not None and active.info.run_id == run_id:
            mlflow.end_run(status=status)
        else:
            _client().set_terminated(run_id, status=status)
    except Exception:
        # the fluent stack may be out of sync (a nested run ended elsewhere): end it through the client
        _client().set_terminated(run_id, status=status)
        if active is not None and active.info.run_id == run_id:
            with contextlib.suppress(Exception):
                mlflow.end_run(status=status)


def _resolve_run(run_id: str | None) -> str:
    import mlflow

    if run_id:
        return run_id
    active = mlflow.active_run()
    if active is None:
        raise TrackingError("no active MLflow run: call inside `with tracked_run(...)` or pass run_id=")
    return active.info.run_id


# --------------------------------------------------------------------------------------------------- epochs


class MlflowCallback:
    """Training callback (:mod:`trainers.train` hooks): per-epoch metrics and checkpoint artifacts.

    ``on_epoch_end(epoch, metrics)`` logs every numeric value (all loss terms, validation EPE...) with
    ``step=epoch`` and refreshes the heartbeat tag; ``on_checkpoint(path)`` uploads the checkpoint:
    ``checkpoints="last"`` keeps one artifact ``checkpoints/last<suffix>`` (overwritten each time),
    ``"all"`` keeps every file under ``checkpoints/``, ``"none"`` uploads nothing. The run is the active one
    at construction, or ``run_id``. Non-finite values are skipped (MLflow stores NaN badly in some backends).
    """

    def __init__(self, run_id: str | None = None, checkpoints: str = "last", prefix: str = "") -> None:
        if checkpoints not in ("last", "all", "none"):
            raise ValueError(f"MlflowCallback checkpoints={checkpoints!r}: expected 'last', 'all' or 'none'")
        self.run_id = _resolve_run(run_id)
        self.checkpoints = checkpoints
        self.prefix = prefix
        self.client = _client()

    def on_epoch_end(self, epoch: int, metrics: Mapping[str, Any]) -> None:
        from mlflow.entities import Metric, RunTag

        now = int(time.time() * 1000)
        items = []
        for k, v in metrics.items():
            try:
                x = float(v)
            except (TypeError, ValueError):
                continue
            if math.isfinite(x):
                items.append(Metric(f"{self.prefix}{k}", x, now, int(epoch)))
        self.client.log_batch(self.run_id, metrics=items, tags=[RunTag(TAG_HEARTBEAT, str(int(time.time())))])
        return None

    def on_checkpoint(self, path: str | os.PathLike) -> None:
        path = Path(path)
        if self.checkpoints == "none" or not path.is_file():
            return
        if self.checkpoints == "all":
            self.client.log_artifact(self.run_id, str(path), artifact_path="checkpoints")
            return
        with tempfile.TemporaryDirectory() as tmp:
            last = Path(tmp) / f"last{path.suffix}"
            try:
                os.link(path, last)
            except OSError:
                import shutil

                shutil.copyfile(path, last)
            self.client.log_artifact(self.run_id, str(last), artifact_path="checkpoints")


# --------------------------------------------------------------------------------------------------- results


def _pck_steps(thresholds: Sequence[float]) -> tuple[str, list[int]]:
    """Metric name and integer steps for PCK thresholds: ``("pck", mm)`` when whole millimetres are distinct."""
    mm = [int(round(t)) for t in thresholds]
    if len(set(mm)) == len(mm):  # e.g. 20, 21.58, 23.16 ... -> 20, 22, 23; exact values are in the table
        return "pck", mm
    return "pck_um", [int(round(t * 1000)) for t in thresholds]


def log_evaluation(metrics: Mapping[str, Any], prefix: str = "", run_id: str | None = None,
                   artifact_dir: str = "evaluation") -> dict[str, float]:
    """Log a :class:`keyhand.metrics.PoseEvaluator` result: EPE (mm), AUC, the PCK curve; returns the scalars.

    ``metrics`` = ``{"epe_mean", "epe_median", "auc", "pck": {"thresholds_mm": [...], "values": [...]}}``
    (other scalar keys are logged too). The curve is logged three ways: metric ``<prefix>pck`` with
    ``step`` = threshold in mm (``pck_um`` in micrometres when thresholds are closer than 1 mm), a table
    ``<artifact_dir>/<prefix>pck.json`` (``mlflow.log_table``) plus ``.csv``, and a figure ``<prefix>pck.png``.
    """
    from mlflow.entities import Metric

    rid = _resolve_run(run_id)
    client = _client()
    now = int(time.time() * 1000)
    scalars: dict[str, float] = {}
    for k, v in metrics.items():
        if k == "pck" or isinstance(v, Mapping | list | tuple | np.ndarray):
            continue
        try:
            x = float(v)
        except (TypeError, ValueError):
            continue
        if math.isfinite(x):
            scalars[f"{prefix}{k}"] = x
    items = [Metric(k, v, now, 0) for k, v in scalars.items()]
    pck = metrics.get("pck")
    if pck is not None:
        th = [float(t) for t in pck["thresholds_mm"]]
        vals = [float(v) for v in pck["values"]]
        if len(th) != len(vals) or not th:
            raise ValueError(f"pck: {len(th)} thresholds_mm but {len(vals)} values")
        name, steps = _pck_steps(th)
        items += [Metric(f"{prefix}{name}", v, now, s) for s, v in zip(steps, vals, strict=True)]
    for i in range(0, len(items), 1000):
        client.log_batch(rid, metrics=items[i:i + 1000])
    if pck is not None:
        import mlflow

        table = {"threshold_mm": th, "pck": vals}
        mlflow.log_table(data=table, artifact_file=f"{artifact_dir}/{prefix}pck.json", run_id=rid)
        csv = "threshold_mm,pck\n" + "".join(f"{t:.6g},{v:.6g}\n" for t, v in zip(th, vals, strict=True))
        client.log_text(rid, csv, f"{artifact_dir}/{prefix}pck.csv")
        fig = _pck_figure(th, vals, metrics.get("auc"))
        try:
            client.log_figure(rid, fig, f"{artifact_dir}/{prefix}pck.png")
        finally:
            _close(fig)
    return scalars


def _plt():
    import matplotlib

    if matplotlib.get_backend().lower() not in ("agg", "pdf", "svg", "cairo"):
        with contextlib.suppress(Exception):
            matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _close(fig) -> None:
    _plt().close(fig)


def _pck_figure(thresholds: Sequence[float], values: Sequence[float], auc: Any = None):
    plt = _plt()
    fig, ax = plt.subplots(figsize=(4.5, 3.5), dpi=100)
    label = f"AUC={float(auc):.3f}" if auc is not None else None
    ax.plot(thresholds, values, marker="o", markersize=3, label=label)
    ax.set_xlabel("threshold (mm)")
    ax.set_ylabel("3D PCK")
    ax.set_ylim(0.0, 1.0)
    ax.grid(alpha=0.3)
    if label:
        ax.legend(loc="lower right")
    fig.tight_layout()
    return fig


def log_gesture_cv(fold_accuracies: Sequence[float], confusion: Any, class_names: Sequence[str],
                   prefix: str = "gesture_", run_id: str | None = None,
                   artifact_dir: str = "gesture") -> dict[str, float]:
    """Log gesture cross-validation (§4.3.3): per-fold accuracy, mean ± std, the confusion matrix.

    Metrics: ``<prefix>accuracy`` with ``step`` = fold index, ``<prefix>accuracy_fold<k>``,
    ``<prefix>accuracy_mean`` and ``<prefix>accuracy_std`` (population std over folds). Artifacts:
    ``<artifact_dir>/confusion.json`` (``{"class_names", "matrix", "fold_accuracies", "mean", "std"}``) and
    ``confusion.png``. ``confusion`` is (C, C) counts, rows = true class, columns = predicted class.
    """
    from mlflow.entities import Metric

    rid = _resolve_run(run_id)
    client = _client()
    acc = np.asarray(fold_accuracies, dtype=np.float64).reshape(-1)
    if acc.size == 0:
        raise ValueError("fold_accuracies: empty")
    cm = np.asarray(confusion)
    names = [str(c) for c in class_names]
    if cm.ndim != 2 or cm.shape[0] != cm.shape[1] or cm.shape[0] != len(names):
        raise ValueError(f"confusion: shape {tuple(cm.shape)} does not match {len(names)} class_names")
    now = int(time.time() * 1000)
    mean, std = float(acc.mean()), float(acc.std())
    items = [Metric(f"{prefix}accuracy", float(a), now, k) for k, a in enumerate(acc)]
    items += [Metric(f"{prefix}accuracy_fold{k}", float(a), now, 0) for k, a in enumerate(acc)]
    items += [Metric(f"{prefix}accuracy_mean", mean, now, 0), Metric(f"{prefix}accuracy_std", std, now, 0)]
    client.log_batch(rid, metrics=items)
    blob = {"class_names": names, "matrix": cm.tolist(), "fold_accuracies": acc.tolist(), "mean": mean, "std": std}
    client.log_dict(rid, blob, f"{artifact_dir}/confusion.json")
    fig = _confusion_figure(cm, names, f"accuracy {mean:.3f} ± {std:.3f} over {acc.size} folds")
    try:
        client.log_figure(rid, fig, f"{artifact_dir}/confusion.png")
    finally:
        _close(fig)
    return {"accuracy_mean": mean, "accuracy_std": std}


def _confusion_figure(cm: np.ndarray, names: Sequence[str], title: str):
    plt = _plt()
    n = len(names)
    side = max(3.5, 0.45 * n + 2)
    fig, ax = plt.subplots(figsize=(side, side), dpi=100)
    rows = cm.sum(axis=1, keepdims=True).astype(np.float64)
    frac = np.divide(cm, rows, out=np.zeros(cm.shape, dtype=np.float64), where=rows > 0)
    ax.imshow(frac, cmap="Blues", vmin=0.0, vmax=1.0)
    ax.set_xticks(range(n), names, rotation=45, ha="right")
    ax.set_yticks(range(n), names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title, fontsize=9)
    if n <= 20:
        for i in range(n):
            for j in range(n):
                ax.text(j, i, f"{cm[i, j]:g}", ha="center", va="center", fontsize=7,
                        color="white" if frac[i, j] > 0.5 else "black")
    fig.tight_layout()
    return fig


def log_image(image: str | os.PathLike | np.ndarray, name: str, run_id: str | None = None,
              artifact_dir: str = "images") -> str:
    """Log a Fig. 6 style panel: a file (copied as is) or an array (H, W) / (H, W, 3|4), uint8 or float in [0, 1].

    Returns the artifact path ``<artifact_dir>/<name>`` (``.png`` added to arrays without a suffix).
    """
    rid = _resolve_run(run_id)
    client = _client()
    if isinstance(image, str | os.PathLike):
        src = Path(image)
        if not src.is_file():
            raise FileNotFoundError(f"log_image: {src}: no such file")
        artifact = f"{artifact_dir}/{name}"
        with tempfile.TemporaryDirectory() as tmp:
            dst = Path(tmp) / name
            dst.parent.mkdir(parents=True, exist_ok=True)
            dst.write_bytes(src.read_bytes())
            sub = str(Path(artifact).parent)
            client.log_artifact(rid, str(dst), artifact_path=sub)
        return artifact
    arr = np.asarray(image)
    if arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[2] not in (1, 3, 4)):
        raise ValueError(f"log_image {name}: array of shape {arr.shape}, expected (H, W) or (H, W, 1|3|4)")
    if arr.dtype != np.uint8:
        arr = (np.clip(arr.astype(np.float64), 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[..., 0]
    artifact = f"{artifact_dir}/{name}" if Path(name).suffix else f"{artifact_dir}/{name}.png"
    client.log_image(rid, arr, artifact_file=artifact)
    return artifact


# --------------------------------------------------------------------------------------------------- stale runs


def pid_alive(pid: int, group: bool = False) -> bool:
    """Whether process ``pid`` (``group=True``: any process of process group ``pid``) still exists on this host
    (signal 0; a process of another user counts as alive)."""
    try:
        (os.killpg if group else os.kill)(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def close_stale_runs(experiment: str, older_than_s: float = 3600.0, uri: str | None = None,
                     status: str = "FAILED") -> list[str]:
    """Mark runs left RUNNING by a crashed driver or trial as ``status``; returns their ids.

    A RUNNING run is stale when it was started on this host by a process that no longer exists, or when its
    last heartbeat (tag ``keyhand.heartbeat``, else its start time) is older than ``older_than_s`` seconds.
    Call it when a driver starts, before opening new runs. Unknown experiments are skipped.
    """
    from mlflow.entities import ViewType

    client = _client(uri)
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        return []
    host, now, closed = socket.gethostname(), time.time(), []
    runs = client.search_runs([exp.experiment_id], filter_string="attributes.status = 'RUNNING'",
                              run_view_type=ViewType.ACTIVE_ONLY, max_results=5000)
    for run in runs:
        tags = run.data.tags
        beat = float(tags.get(TAG_HEARTBEAT) or (run.info.start_time or 0) / 1000.0)
        dead = False
        if tags.get(TAG_HOST) == host and (tags.get(TAG_PID) or "").isdigit():
            pid = int(tags[TAG_PID])
            dead = pid != os.getpid() and not pid_alive(pid)
        if dead or now - beat > older_than_s:
            client.set_tag(run.info.run_id, "keyhand.error", "closed as stale: its driver or trial stopped")
            client.set_terminated(run.info.run_id, status=status)
            closed.append(run.info.run_id)
    return closed


def child_runs(parent_run_id: str, uri: str | None = None) -> list[Any]:
    """The runs whose ``mlflow.parentRunId`` is ``parent_run_id`` (a sweep's trials), oldest first."""
    client = _client(uri)
    parent = client.get_run(parent_run_id)
    return list(client.search_runs([parent.info.experiment_id],
                                   filter_string=f"tags.`{PARENT_TAG}` = '{parent_run_id}'",
                                   max_results=5000, order_by=["attributes.start_time ASC"]))
