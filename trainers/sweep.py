"""Ray Tune sweeps: the ablation grid (Tables 1-4), the 10 gesture folds, an Optuna search; one MLflow run each.

    from trainers.sweep import connect, run_sweep, ablation_space, folds_space, search_space, trial_run, apply_overrides
    connect(None)                     # a quiet local Ray; "auto" / "host:port" / "ray://host:port" = existing cluster

    def trainable(config):            # runs in a Ray worker, once per trial (and again on each retry)
        with trial_run(config) as run:                         # nested MLflow child of the sweep's parent run
            cfg = apply_overrides(base_params, rows[config["row"]])
            for epoch in range(n):
                tune.report({"epe_mean": ..., "total": ...})   # ray.tune.report, not ray.train.report

    result = run_sweep("ablation", trainable, ablation_space(rows), kind="grid", metric="epe_mean", mode="min",
                       storage_path="/abs/project/runs/ray", mlflow_uri=uri, experiment="keyhand-ablation",
                       resources_per_trial={"cpu": 1, "gpu": 0.25}, max_failures=1, resume=True)
    result.rows          # one dict per trial: trial_id, label, status FINISHED|FAILED, error, config, metrics
    # files: <out_dir>/results.json and results.csv (out_dir defaults to <storage_path>/<name>)

    run_sweep("search", trainable, {"epochs": 4}, kind="search", search_space=search_space(
              {"lr": ["loguniform", 1e-5, 1e-2], "weight_decay": ["loguniform", 1e-6, 1e-3]}),
              metric="epe_mean", mode="min", num_samples=20, asha={"max_t": 4, "grace_period": 1}, ...)

Kinds: ``"grid"`` (ablation rows, folds: ``tune.grid_search``; FIFO, nothing pruned) and ``"search"``
(OptunaSearch + ASHA; OptunaSearch rejects grids, so grids never go there).

Tracking: the driver creates the experiment, closes runs a crashed driver left RUNNING, and opens the
sweep's parent run; each trial's config carries ``config["_keyhand"]`` (tracking URI, experiment, parent run
id) so :func:`trial_run` opens a child run with ``parent_run_id`` (Ray's MLflow helpers cannot nest runs).
A retried trial reopens its own child (one child per trial, tag ``keyhand.attempts``). After the sweep,
any child still RUNNING (a worker killed outright) is marked FAILED, the results files are logged to the
parent, and the parent ends FINISHED; a crash of the driver itself ends it FAILED (KILLED on Ctrl-C).

Failures: a trial that raises is retried ``max_failures`` times, then recorded FAILED with the first line
of its error; the other trials go on. ``resume=True`` restores the Tune experiment folder
(``Tuner.restore(..., resume_errored=True)``): finished trials are not run again, unfinished and errored
ones are, and the same parent run is reopened.

Clusters and progress: with several Ray nodes, :func:`run_sweep` refuses a tracking store or storage other
nodes cannot reach and probes every node before the first trial (:mod:`trainers.cluster`); each trial's
child run records the node and GPU ids of each attempt; the driver prints a line per trial event and a
periodic summary (:mod:`trainers.progress`).

Addresses: an unreachable ``host:port`` / ``ray://host:port`` fails in about a second with one line
(:class:`SweepError`), checked with a TCP connect before Ray is asked. Ray 2.60 turns token authentication
on whenever a token exists (``ray.init()`` writes ``~/.ray/auth_token``): a driver on another machine needs
the cluster's token (``RAY_AUTH_TOKEN`` or ``RAY_AUTH_TOKEN_PATH``); without it, :func:`connect` says so in
one line (after Ray's own 20 s of retries). ``ray start --node-ip-address 127.0.0.1`` is rewritten by Ray to
the machine's reachable address; the GCS port still answers on 127.0.0.1.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import logging
import math
import os
import re
import socket
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ray.tune import Callback as TuneCallback

from keyhand.atomic import atomic_write_text
from keyhand.config import apply_overrides  # the one dotted-override helper (re-exported)
from trainers import tracking

__all__ = ["SweepError", "SweepResult", "TRIAL_KEY", "connect", "ablation_space", "folds_space", "search_space",
           "apply_overrides", "trial_run", "trial_params", "trial_label", "run_sweep"]

TRIAL_KEY = "_keyhand"                 # the config entry that carries tracking info into each trial
TAG_TRIAL = "keyhand.trial_id"
TAG_SWEEP = "keyhand.sweep"
TAG_ATTEMPTS = "keyhand.attempts"
STATE_FILE = "keyhand-sweep.json"       # in the Tune experiment folder: the parent run id, for resume
TAG_NODE = "keyhand.node_id"           # the Ray node of the trial's last attempt
TAG_NODE_IP = "keyhand.node_ip"
TAG_GPUS = "keyhand.gpu_ids"            # the GPU ids Ray assigned to it ("" = none)
TAG_DEVICE = "keyhand.device"           # cpu | cuda:<ids>
TAG_PLACEMENTS = "keyhand.placements"   # JSON list: every attempt's node, GPUs, device, start / end (unix s)
_MAX_PLACEMENTS = 20                    # attempts kept in that tag (MLflow tags hold 8,000 characters)

_TUNE_KEYS = {"timestamp", "time_this_iter_s", "time_total_s", "pid", "hostname", "node_ip", "time_since_restore",
              "iterations_since_restore", "checkpoint_dir_name", "done", "date", "config", "should_checkpoint",
              "experiment_tag", "trial_id", "training_iteration"}

log = logging.getLogger(__name__)


class SweepError(RuntimeError):
    """A sweep cannot start (unreachable cluster, bad space, impossible resources); the message is one line."""


# --------------------------------------------------------------------------------------------------- Ray


def _parse_host_port(address: str) -> tuple[str, int] | None:
    rest = address[len("ray://"):] if address.startswith("ray://") else address
    m = re.fullmatch(r"\[?([^\[\]]+?)\]?:(\d{1,5})", rest.strip())
    if not m:
        return None
    return m.group(1), int(m.group(2))


def _check_port(address: str, host: str, port: int, timeout_s: float) -> None:
    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            pass
    except OSError as e:
        reason = e.strerror or type(e).__name__
        raise SweepError(f"Ray cluster at {address} is unreachable ({reason}); start one there with "
                         f"`ray start --head --port {port}`, or drop --address to use a local Ray") from None


def connect(address: str | None = None, num_cpus: int | None = None, num_gpus: float | None = None,
            timeout_s: float = 3.0) -> dict[str, float]:
    """Start or join Ray; return the cluster's resources (``{"CPU": 2.0, "GPU": 1.0, ...}``).

    ``None`` / ``"local"``: a fresh, quiet local Ray (no dashboard, worker logs not forwarded), ``num_cpus`` /
    ``num_gpus`` bounding it; ``None`` follows ``$RAY_ADDRESS`` when set (a `ray job submit` job).
    ``"auto"``: the cluster this machine belongs to (started with `ray start`). ``"host:port"`` (the head's
    GCS port) or ``"ray://host:port"`` (Ray Client): an existing cluster, whose port is probed first so that
    a wrong address fails in ``timeout_s`` with one line (:class:`SweepError`). An already connected Ray is
    reused for a local request and replaced for an explicit address.
    """
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    import ray

    if address is None and os.environ.get("RAY_ADDRESS", "").strip():
        address = os.environ["RAY_ADDRESS"].strip()  # inside `ray job submit`: the job's cluster
    local = address is None or address.strip().lower() in ("", "local")
    if ray.is_initialized():
        if local:
            return dict(ray.cluster_resources())
        ray.shutdown()
    kwargs: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False,
                              "logging_level": logging.WARNING, "ignore_reinit_error": True}
    if local:
        if num_cpus is not None:
            kwargs["num_cpus"] = num_cpus
        if num_gpus is not None:
            kwargs["num_gpus"] = num_gpus
        ray.init(address="local", **kwargs)  # never a stray `ray start` head found through /tmp/ray
        return dict(ray.cluster_resources())
    address = address.strip()
    if address != "auto":
        hp = _parse_host_port(address)
        if hp is None:
            raise SweepError(f"Ray address {address!r}: expected 'auto', 'host:port' or 'ray://host:port'")
        _check_port(address, hp[0], hp[1], timeout_s)
    if address.startswith("ray://"):
        kwargs = {"logging_level": logging.WARNING, "log_to_driver": False}
    try:
        ray.init(address=address, **kwargs)
    except (ConnectionError, TimeoutError, RuntimeError, ValueError) as e:
        if _auth_refused(e):
            raise SweepError(f"Ray cluster at {address} refused this driver's token (the cluster uses Ray's "
                             "token authentication): copy the head's token (`ray get-auth-token` there) and set "
                             "RAY_AUTH_MODE=token and RAY_AUTH_TOKEN_PATH=<file> or RAY_AUTH_TOKEN=<token> "
                             "here") from None
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise SweepError(f"Ray cluster at {address} is unreachable ({first}); start one with "
                         "`ray start --head`, or drop --address to use a local Ray") from None
    return dict(ray.cluster_resources())


def _auth_refused(err: BaseException) -> bool:
    """True when ``err`` (or what caused it) is Ray's token-authentication refusal."""
    seen: set[int] = set()
    e: BaseException | None = err
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if type(e).__name__ == "AuthenticationError" or "InvalidAuthToken" in str(e):
            return True
        e = e.__cause__ or e.__context__
    return False


# --------------------------------------------------------------------------------------------------- spaces


def ablation_space(rows: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """The ablation grid: ``{"row": tune.grid_search([row names])}``; each row is a named dict of overrides.

    ``rows`` = ``{"full": {}, "no-silhouette": {"model.sfe": "heatmaps"}, ...}`` (Tables 1-4). The trainable
    looks its row up (``apply_overrides(base, rows[config["row"]])``); names must be unique non-empty strings.
    """
    from ray import tune

    if not rows:
        raise ValueError("ablation rows: empty; name at least one configuration")
    for name, overrides in rows.items():
        if not isinstance(name, str) or not name:
            raise ValueError(f"ablation rows: row name {name!r} must be a non-empty string")
        if not isinstance(overrides, Mapping):
            raise ValueError(f"ablation rows.{name}: expected a mapping of overrides, got {type(overrides).__name__}")
    return {"row": tune.grid_search(list(rows))}


def folds_space(k: int) -> dict[str, Any]:
    """The cross-validation folds as trials: ``{"fold": tune.grid_search([0, ..., k-1])}`` (§4.3.3: k = 10)."""
    from ray import tune

    if not isinstance(k, int) or isinstance(k, bool) or k < 1:
        raise ValueError(f"folds: k={k!r} must be a positive integer")
    return {"fold": tune.grid_search(list(range(k)))}


_KINDS = {"loguniform": 2, "uniform": 2, "quniform": 3, "qloguniform": 3, "randint": 2, "choice": 1}


def search_space(spec: Mapping[str, Any]) -> dict[str, Any]:
    """Optuna-compatible Tune distributions from a small spec (``params.yaml``'s ``sweep.search``).

    ``{"lr": ["loguniform", 1e-5, 1e-2], "loss.reg": ["uniform", 0.0, 1.0], "ve_blocks": ["choice", [2, 4, 5]]}``;
    kinds: loguniform, uniform, quniform (low, high, q), qloguniform, randint (low, high exclusive), choice
    (list). A dotted key stays one flat key (the trainable applies it with :func:`apply_overrides`).
    A bad entry raises ``ValueError`` naming the key.
    """
    from ray import tune

    out: dict[str, Any] = {}
    for key, entry in spec.items():
        if not isinstance(entry, list | tuple) or not entry or entry[0] not in _KINDS:
            raise ValueError(f"search.{key}: expected [kind, ...] with kind in {sorted(_KINDS)}, got {entry!r}")
        kind, args = entry[0], list(entry[1:])
        if len(args) != _KINDS[kind]:
            raise ValueError(f"search.{key}: {kind} takes {_KINDS[kind]} argument(s), got {len(args)}")
        if kind == "choice":
            if not isinstance(args[0], list | tuple) or not args[0]:
                raise ValueError(f"search.{key}: choice takes a non-empty list, got {args[0]!r}")
            out[key] = tune.choice(list(args[0]))
            continue
        try:
            low, high = float(args[0]), float(args[1])
        except (TypeError, ValueError):
            raise ValueError(f"search.{key}: bounds must be numbers, got {args[:2]!r}") from None
        if not low < high:
            raise ValueError(f"search.{key}: low {low:g} must be below high {high:g}")
        if "log" in kind and low <= 0:
            raise ValueError(f"search.{key}: {kind} needs low > 0, got {low:g}")
        if kind == "loguniform":
            out[key] = tune.loguniform(low, high)
        elif kind == "uniform":
            out[key] = tune.uniform(low, high)
        elif kind == "quniform":
            out[key] = tune.quniform(low, high, float(args[2]))
        elif kind == "qloguniform":
            out[key] = tune.qloguniform(low, high, float(args[2]))
        else:
            out[key] = tune.randint(int(low), int(high))
    return out


def _searched_keys(space: Mapping[str, Any], prefix: str = "") -> list[str]:
    from ray.tune.search.sample import Domain

    keys = []
    for k, v in space.items():
        if k == TRIAL_KEY:
            continue
        name = f"{prefix}{k}"
        if isinstance(v, Domain) or (isinstance(v, Mapping) and set(v) == {"grid_search"}):
            keys.append(name)
        elif isinstance(v, Mapping):
            keys += _searched_keys(v, f"{name}/")
    return keys


def _has_grid(space: Mapping[str, Any]) -> bool:
    return any(isinstance(v, Mapping) and ("grid_search" in v or _has_grid(v)) for v in space.values())


def _get(config: Mapping[str, Any], path: str) -> Any:
    node: Any = config
    for p in path.split("/"):
        if not isinstance(node, Mapping) or p not in node:
            return None
        node = node[p]
    return node


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.3g}"
    return str(v)


def trial_label(config: Mapping[str, Any], keys: list[str] | None = None) -> str:
    """A short name for a trial from its searched values: the row name, ``fold=3`` or ``lr=0.0003,wd=1e-05``."""
    keys = keys if keys is not None else (config.get(TRIAL_KEY) or {}).get("label_keys", [])
    if keys == ["row"]:
        return str(config.get("row"))
    return ",".join(f"{k.replace('/', '.')}={_fmt(_get(config, k))}" for k in keys) or "trial"


def trial_params(config: Mapping[str, Any]) -> dict[str, Any]:
    """The trial's config without keyhand's private entries (keys starting with ``_``)."""
    return {k: v for k, v in config.items() if not str(k).startswith("_")}


# --------------------------------------------------------------------------------------------------- trials


def _find_child(client, experiment_id: str, parent_run_id: str, trial_id: str):
    runs = client.search_runs([experiment_id], max_results=5,
                              filter_string=f"tags.`{tracking.PARENT_TAG}` = '{parent_run_id}' and "
                                            f"tags.`{TAG_TRIAL}` = '{trial_id}'")
    return runs[0] if runs else None


@contextlib.contextmanager
def trial_run(config: Mapping[str, Any], params: Mapping[str, Any] | None = None,
              stage: str = "sweep-trial") -> Iterator[Any]:
    """Inside a trainable: the trial's MLflow child run (yields ``mlflow.ActiveRun``; ``None`` without tracking).

    Opens the child of the sweep's parent run (``parent_run_id`` from ``config["_keyhand"]``), named after
    the trial's label and tagged with its trial id; a retry reopens the same child. Logs ``params`` (default:
    the trial's public config), ends FINISHED when the block returns and FAILED when it raises (re-raised,
    so Tune retries or records the failure).

    Placement: the child is tagged with the node and GPU ids Ray gave this attempt (``keyhand.node_id``,
    ``keyhand.node_ip``, ``keyhand.gpu_ids``, ``keyhand.device``) and keeps every attempt's placement with
    its start / end time (unix s) in ``keyhand.placements`` (JSON list); the sweep's progress board hears
    "started on node X" at once. A GPU on a node without CUDA: the trial runs on CPU (one log line, from
    :func:`trainers.device.resolve_device`). MLflow HTTP calls retry patiently here (at least 7 retries with
    exponential backoff, about two minutes): a tracking server restarted mid-sweep pauses a trial, not fail it.
    """
    info = config.get(TRIAL_KEY) if isinstance(config, Mapping) else None
    if not info:
        yield None
        return
    from ray import tune

    from trainers import cluster, progress

    try:
        ctx = tune.get_context()
        trial_id = ctx.get_trial_id() or "local"
    except Exception:  # called outside Tune (a unit test calling the trainable directly)
        trial_id = "local"
    os.environ.update(_patient_http_env())  # this process is the trial's: no need to restore
    where: dict[str, Any] = {}
    with contextlib.suppress(Exception):  # outside a Ray worker (unit tests): no placement
        where = cluster.placement()
    label = trial_label(config)
    progress.announce(info.get("sweep", ""), {"label": label, "trial_id": trial_id, **where})  # before any HTTP
    tracking.use_tracking(info["uri"])
    client = tracking._client()
    existing = _find_child(client, info["experiment_id"], info["parent_run_id"], trial_id)
    attempts, history = 1, []
    if existing is not None:
        with contextlib.suppress(ValueError):
            attempts = int(existing.data.tags.get(TAG_ATTEMPTS, "1")) + 1
        with contextlib.suppress(ValueError, TypeError):
            history = list(json.loads(existing.data.tags.get(TAG_PLACEMENTS) or "[]"))[-(_MAX_PLACEMENTS - 1):]
    entry = {"attempt": attempts, "node_id": where.get("node_id", ""), "node_ip": where.get("node_ip", ""),
             "gpu_ids": where.get("gpu_ids", []), "device": where.get("device", ""),
             "pid": os.getpid(), "start": round(where.get("start", time.time()), 3), "end": None, "status": "RUNNING"}
    tags = {TAG_TRIAL: trial_id, TAG_SWEEP: info.get("sweep", ""), TAG_ATTEMPTS: attempts,
            TAG_NODE: entry["node_id"], TAG_NODE_IP: entry["node_ip"], TAG_GPUS: ",".join(entry["gpu_ids"]),
            TAG_DEVICE: entry["device"], TAG_PLACEMENTS: json.dumps(history + [entry], separators=(",", ":"))}
    with tracking.tracked_run(info["experiment"], run_name=label, stage=stage, tags=tags,
                              params=trial_params(config) if params is None else params,
                              parent_run_id=info["parent_run_id"],
                              run_id=existing.info.run_id if existing is not None else None) as run:
        status = "FAILED"
        try:
            yield run
            status = "FINISHED"
        finally:
            entry.update(end=round(time.time(), 3), status=status)
            with contextlib.suppress(Exception):
                client.set_tag(run.info.run_id, TAG_PLACEMENTS, json.dumps(history + [entry], separators=(",", ":")))


# --------------------------------------------------------------------------------------------------- sweeps


@dataclass
class SweepResult:
    """What a sweep produced. ``rows``: one per trial (see :func:`run_sweep`); ``best``: the best FINISHED row."""

    name: str
    kind: str
    metric: str
    mode: str
    path: Path | str                # the Tune experiment folder (restore from here): a path or a storage URI
    out_dir: Path                   # results.json / results.csv
    parent_run_id: str | None
    rows: list[dict[str, Any]] = field(default_factory=list)
    best: dict[str, Any] | None = None

    @property
    def failed(self) -> list[dict[str, Any]]:
        """Rows that did not finish: FAILED (errored after its retries) or INCOMPLETE (sweep interrupted)."""
        return [r for r in self.rows if r["status"] != "FINISHED"]

    @property
    def incomplete(self) -> list[dict[str, Any]]:
        return [r for r in self.rows if r["status"] == "INCOMPLETE"]

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "kind": self.kind, "metric": self.metric, "mode": self.mode,
                "path": str(self.path), "parent_run_id": self.parent_run_id,
                "best": self.best, "trials": self.rows}


class _Heartbeat(TuneCallback):
    """Tune driver callback: refresh the parent run's heartbeat tag every ``every_s`` seconds.

    Keeps :func:`tracking.close_stale_runs` (run by any other driver starting) from closing a long sweep.
    Picklable (Tune saves run_config callbacks with the experiment): the client is created lazily.
    """

    def __init__(self, uri: str, run_id: str, every_s: float = 60.0) -> None:
        self.uri, self.run_id, self.every_s, self._last = uri, run_id, every_s, 0.0

    def __getstate__(self) -> dict[str, Any]:
        return {"uri": self.uri, "run_id": self.run_id, "every_s": self.every_s, "_last": 0.0}

    def _beat(self) -> None:
        now = time.time()
        if now - self._last >= self.every_s:
            self._last = now
            with contextlib.suppress(Exception):
                tracking._client(self.uri).set_tag(self.run_id, tracking.TAG_HEARTBEAT, str(int(now)))

    def setup(self, **info: Any) -> None:
        self._beat()

    def on_step_end(self, iteration: int, trials: list, **info: Any) -> None:
        self._beat()


def _trial_dirname(trial) -> str:
    return f"trial_{trial.trial_id}"


def _trial_id_from(result) -> str:
    tid = (result.metrics or {}).get("trial_id")
    if tid:
        return str(tid)
    name = Path(str(result.path)).name if result.path else ""
    m = re.search(r"([0-9a-f]{5}_\d{5})", name)
    return m.group(1) if m else name


def _error_line(err: BaseException | None) -> str:
    """The first meaningful line of a trial's error (Tune wraps the trainable's exception in RayTaskError)."""
    if err is None:
        return ""
    cause = getattr(err, "cause", None)
    if isinstance(cause, BaseException):
        err = cause
    text = str(err).strip()
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    # a RayTaskError's text is a traceback whose last line is "ValueError: message"
    for ln in reversed(lines):
        if re.match(r"^[A-Za-z_][\w.]*(Error|Exception|Interrupt)\b.*:", ln):
            return ln[:500]
    return f"{type(err).__name__}: {lines[0] if lines else ''}"[:500]


def _rows(grid, label_keys: list[str], exp_path: Path) -> list[dict[str, Any]]:
    """One row per trial, with Tune's trial status as saved in the experiment folder.

    An interrupted sweep (Ctrl-C) returns from ``fit()`` normally and Tune then marks its running trials
    TERMINATED in memory; the state it saved just before (what ``Tuner.restore`` reads) still says RUNNING.
    So statuses come from ``tune.ExperimentAnalysis(<experiment folder>)``: TERMINATED -> FINISHED,
    ERROR -> FAILED, PENDING / RUNNING / PAUSED -> INCOMPLETE.
    """
    from ray import tune

    saved: dict[str, str] = {}
    with contextlib.suppress(Exception):
        saved = {t.trial_id: t.status for t in tune.ExperimentAnalysis(str(exp_path)).trials}
    results = list(grid)
    trials = getattr(getattr(grid, "_experiment_analysis", None), "trials", None)
    if trials is None or len(trials) != len(results):
        trials = [None] * len(results)
    rows = []
    for r, t in zip(results, trials, strict=True):
        tid = getattr(t, "trial_id", None) or _trial_id_from(r)
        row = _row(r, label_keys, saved.get(tid) or getattr(t, "status", None), tid)
        row["retries"] = int(getattr(t, "num_failures", 0) or 0)  # Tune's retries of it (a dead node counts one)
        rows.append(row)
    return sorted(rows, key=lambda r: r["trial_id"])


def _row(result, label_keys: list[str], tune_status: str | None = None,
         trial_id: str | None = None) -> dict[str, Any]:
    config = dict(result.config or {})
    if result.error is not None or tune_status == "ERROR":
        status = "FAILED"
    elif tune_status in ("PENDING", "RUNNING", "PAUSED"):
        status = "INCOMPLETE"
    else:
        status = "FINISHED"
    metrics = {k: v for k, v in (result.metrics or {}).items()
               if k not in _TUNE_KEYS and isinstance(v, int | float) and not isinstance(v, bool)}
    metrics = {k: (float(v) if math.isfinite(float(v)) else None) for k, v in metrics.items()}
    return {"trial_id": trial_id or _trial_id_from(result), "label": trial_label(config, label_keys),
            "status": status, "error": _error_line(result.error),
            "iterations": int((result.metrics or {}).get("training_iteration") or 0),
            "config": tracking.flatten_params(trial_params(config)), "metrics": metrics,
            "path": str(result.path) if result.path else ""}


_PLACE_COLS = ("node_ip", "node_id", "gpu_ids", "device", "attempts", "retries")


def _add_placements(rows: list[dict[str, Any]], parent_run_id: str) -> None:
    """Copy each trial's placement (node, GPU ids, device, attempts with start / end) from its MLflow child."""
    kids = {c.data.tags.get(TAG_TRIAL): c for c in tracking.child_runs(parent_run_id)}
    for r in rows:
        child = kids.get(r["trial_id"])
        tags = child.data.tags if child is not None else {}
        try:
            placements = json.loads(tags.get(TAG_PLACEMENTS) or "[]")
        except ValueError:
            placements = []
        r.update(node_id=tags.get(TAG_NODE, ""), node_ip=tags.get(TAG_NODE_IP, ""),
                 gpu_ids=tags.get(TAG_GPUS, ""), device=tags.get(TAG_DEVICE, ""),
                 attempts=int(tags.get(TAG_ATTEMPTS) or 0), placements=placements)


def _best(rows: list[dict[str, Any]], metric: str, mode: str) -> dict[str, Any] | None:
    ok = [r for r in rows if r["status"] == "FINISHED" and r["metrics"].get(metric) is not None]
    if not ok:
        return None
    pick = min if mode == "min" else max
    return pick(ok, key=lambda r: r["metrics"][metric])


def _write_results(res: SweepResult) -> tuple[Path, Path]:
    res.out_dir.mkdir(parents=True, exist_ok=True)
    jpath, cpath = res.out_dir / "results.json", res.out_dir / "results.csv"
    atomic_write_text(jpath, json.dumps(res.to_json(), indent=2, default=str) + "\n")
    cfg_keys = sorted({k for r in res.rows for k in r["config"]})
    met_keys = sorted({k for r in res.rows for k in r["metrics"]})
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["trial_id", "label", "status", "error", "iterations"] + list(_PLACE_COLS)
               + [f"config.{k}" for k in cfg_keys] + met_keys)
    for r in res.rows:
        w.writerow([r["trial_id"], r["label"], r["status"], r["error"], r["iterations"]]
                   + [r.get(c, "") for c in _PLACE_COLS]
                   + [r["config"].get(k, "") for k in cfg_keys]
                   + ["" if r["metrics"].get(k) is None else r["metrics"][k] for k in met_keys])
    atomic_write_text(cpath, buf.getvalue())
    return jpath, cpath


def _resources(requested: Mapping[str, float] | None, cluster: Mapping[str, float]) -> dict[str, float]:
    have_cpu, have_gpu = float(cluster.get("CPU", 0)), float(cluster.get("GPU", 0))
    if requested is None:
        requested = {"cpu": 1, "gpu": 0.25 if have_gpu > 0 else 0}
    res = {str(k).lower(): float(v) for k, v in requested.items()}
    unknown = set(res) - {"cpu", "gpu", "memory"}
    if unknown:
        raise SweepError(f"resources_per_trial: unknown key(s) {sorted(unknown)} (allowed: cpu, gpu, memory)")
    if res.get("gpu", 0) > 0 and have_gpu <= 0:
        raise SweepError(f"resources_per_trial gpu={res['gpu']:g} but the Ray cluster has no GPU; "
                         "use --gpus-per-trial 0 or an address with GPU workers")
    if res.get("gpu", 0) > have_gpu > 0:
        raise SweepError(f"resources_per_trial gpu={res['gpu']:g} exceeds the cluster's {have_gpu:g} GPU(s)")
    if res.get("cpu", 1) > have_cpu:
        raise SweepError(f"resources_per_trial cpu={res['cpu']:g} exceeds the cluster's {have_cpu:g} CPU(s)")
    return res


def _close_running_children(parent_run_id: str, rows: list[dict[str, Any]]) -> None:
    """No child stays RUNNING: children of interrupted trials end KILLED, any other (a killed worker) FAILED;
    children of trials Tune records as failed end FAILED."""
    client = tracking._client()
    failed = {r["trial_id"]: r["error"] for r in rows if r["status"] == "FAILED"}
    incomplete = {r["trial_id"] for r in rows if r["status"] == "INCOMPLETE"}
    for child in tracking.child_runs(parent_run_id):
        tid = child.data.tags.get(TAG_TRIAL, "")
        if child.info.status == "RUNNING" or (tid in failed and child.info.status != "FAILED"):
            if tid in incomplete:
                why, status = "sweep interrupted; resume it to continue this trial", "KILLED"
            else:
                why, status = failed.get(tid) or "trial stopped without ending its run", "FAILED"
            client.set_tag(child.info.run_id, "keyhand.error", why)
            client.set_terminated(child.info.run_id, status=status)


def run_sweep(name: str, trainable: Callable[[dict], Any], param_space: Mapping[str, Any] | None = None, *,
              kind: str = "grid", metric: str, mode: str = "min", num_samples: int = 1,
              resources_per_trial: Mapping[str, float] | None = None, max_failures: int = 1,
              resume: bool = False, storage_path: str | os.PathLike, out_dir: str | os.PathLike | None = None,
              mlflow_uri: str | None = None, experiment: str = "keyhand-sweeps",
              parent_run_name: str | None = None, parent_params: Mapping[str, Any] | None = None,
              search_space: Mapping[str, Any] | None = None, asha: Mapping[str, Any] | None = None,
              seed: int | None = 0, max_concurrent_trials: int | None = None, checkpoints_to_keep: int = 2,
              stale_after_s: float = 6 * 3600.0, verbose: int | None = None, progress_every_s: float | None = None,
              probe: bool = True, probe_timeout_s: float = 60.0) -> SweepResult:
    """Run a Tune sweep of ``trainable`` under one MLflow parent run; write ``results.json`` / ``results.csv``.

    ``param_space``: constants and (for ``kind="grid"``) ``tune.grid_search`` entries (:func:`ablation_space`,
    :func:`folds_space`). ``kind="search"``: ``search_space`` (from :func:`search_space`) is merged in and
    explored by OptunaSearch (``seed``) with an ASHA scheduler (``asha``: ``max_t``, ``grace_period``,
    ``reduction_factor``, ``time_attr``) over ``num_samples`` trials. ``metric`` / ``mode`` pick the best trial.

    ``resources_per_trial``: ``{"cpu": 1, "gpu": 0.25}`` packs four trials on a GPU; default 1 CPU and a
    quarter GPU when the cluster has GPUs. Ray is started locally when not connected (:func:`connect`).
    ``storage_path`` holds the Tune experiment ``<storage_path>/<name>``: a path (made absolute) or a storage
    URI (``s3://bucket/keyhand``: then ``out_dir`` is required); ``out_dir`` (default that folder) receives the
    results. ``mlflow_uri`` defaults to :func:`tracking.resolve_tracking_uri`.

    A cluster of several nodes (:mod:`trainers.cluster`): the tracking URI and the storage must be reachable
    from every node (a SQLite store is refused in one line), and unless ``probe=False`` a probe task on every
    node that can host a trial checks the storage, the data, the MANO file and the tracking server before the
    first trial (the failing node is named). Progress (:mod:`trainers.progress`): a line per trial event and a
    summary every ``progress_every_s`` (default ``$KEYHAND_SWEEP_PROGRESS_S`` or 30 s); Tune's own table
    only with ``verbose`` > 0 (default ``$KEYHAND_SWEEP_VERBOSE`` or 0).

    Each row: ``trial_id``, ``label``, ``status`` (FINISHED | FAILED | INCOMPLETE: the sweep was interrupted,
    e.g. Ctrl-C, and the parent run ends KILLED), ``error`` (first line), ``iterations``,
    ``config`` (flattened), ``metrics`` (last reported), ``path``, and where it ran: ``node_ip``, ``node_id``,
    ``gpu_ids``, ``device`` (of the last attempt), ``attempts`` (that reached the trial's code), ``retries``
    (Tune's retries after a failure) and ``placements`` (every attempt: node, GPUs, device, start / end unix
    time, status). ``results.json`` is
    ``{"name", "kind", "metric", "mode", "path", "parent_run_id", "best", "trials": [rows]}``.
    """
    import functools

    import ray
    from ray import tune

    from trainers import cluster, progress

    if kind not in ("grid", "search"):
        raise SweepError(f"sweep kind {kind!r}: expected 'grid' or 'search'")
    if mode not in ("min", "max"):
        raise SweepError(f"sweep mode {mode!r}: expected 'min' or 'max'")
    space: dict[str, Any] = dict(param_space or {})
    if kind == "search":
        if _has_grid(space):
            raise SweepError("kind='search': OptunaSearch cannot take tune.grid_search entries; "
                             "run grids (ablation rows, folds) with kind='grid'")
        space.update(search_space or {})
    elif search_space:
        raise SweepError("search_space is only used with kind='search'")
    remote_storage = cluster.is_uri(storage_path)
    if remote_storage:
        storage: Path | str = str(storage_path).rstrip("/")
        exp_path: Path | str = f"{storage}/{name}"
        if out_dir is None:
            raise SweepError(f"storage path {storage} is a URI: pass out_dir, a local folder for results.json")
    else:
        text = str(storage_path)
        local = text[len("file://"):] if text.startswith("file://") else text
        storage = Path(local).expanduser().resolve()
        exp_path = storage / name
    out = Path(out_dir).resolve() if out_dir is not None else Path(exp_path)
    verbose = progress.tune_verbosity() if verbose is None else int(verbose)
    every_s = progress.progress_every() if progress_every_s is None else float(progress_every_s)

    uri = tracking.resolve_tracking_uri(mlflow_uri, Path.cwd())
    exp_id = tracking.ensure_experiments(uri, [experiment])[experiment]  # TrackingError first: fail before Ray
    tracking.close_stale_runs(experiment, older_than_s=stale_after_s, uri=uri)

    if not ray.is_initialized():
        connect(None)
    resources = _resources(resources_per_trial, ray.cluster_resources())
    nodes = cluster.alive_nodes()
    hosts = cluster.trial_nodes(nodes, resources)
    cluster.check_remote_safe(nodes, uri, storage, driver_ip=ray.util.get_node_ip_address())
    label_keys = _searched_keys(space)
    total = _count_trials(space, kind, num_samples)
    print(f"sweep {name}: {total} trial(s); {cluster.summary_line(nodes, hosts, resources)}", flush=True)
    if len(nodes) > 1 and probe:
        artifacts = tracking._client(uri).get_experiment(exp_id).artifact_location
        plan = cluster.probe_plan(space, storage, uri, experiment, artifacts)
        reports = cluster.probe_nodes(hosts, plan, timeout_s=probe_timeout_s)
        no_cuda = [r["ip"] + "/" + r["node_id"][:8] for r, n in zip(reports, hosts, strict=True)
                   if n.gpus > 0 and not r["cuda"]]
        print(f"probe: {len(reports)} node(s) see the storage, data, MANO file and tracking server"
              + (f"; GPUs declared but no CUDA on {', '.join(no_cuda)}: trials there run on CPU" if no_cuda else ""),
              flush=True)
    if not remote_storage:  # a finished trial is on record within seconds (a killed driver re-runs none)
        os.environ.setdefault("TUNE_GLOBAL_CHECKPOINT_S", "2")
    if verbose == 0:  # Tune's new console output prints its configuration box even when silent
        os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")

    state_path = cluster.join(exp_path, STATE_FILE)
    restoring = resume and tune.Tuner.can_restore(str(exp_path))
    parent_id = None
    if resume:
        with contextlib.suppress(Exception):  # reopen the previous parent run when it is still in the store
            previous = json.loads(cluster.read_text(state_path) or "{}")["parent_run_id"]
            parent_id = tracking._client().get_run(previous).info.run_id
    params = {"sweep": {"name": name, "kind": kind, "metric": metric, "mode": mode, "num_samples": num_samples,
                        "max_failures": max_failures, "resources": resources, "searched": label_keys},
              **dict(parent_params or {})}
    tags = {TAG_SWEEP: name}
    rows: list[dict[str, Any]] = []
    result = SweepResult(name, kind, metric, mode, exp_path, out, None)
    progress.clear_board(name)
    try:
        with _patient_http(), tracking.tracked_run(experiment, parent_run_name or name, params=params, tags=tags,
                                                   stage=f"sweep-{kind}", uri=uri, run_id=parent_id) as parent:
            result.parent_run_id = pid = parent.info.run_id
            cluster.write_text(state_path, json.dumps({"parent_run_id": pid, "experiment": experiment,
                                                       "tracking_uri": uri}) + "\n")
            space[TRIAL_KEY] = {"uri": uri, "experiment": experiment, "experiment_id": exp_id, "parent_run_id": pid,
                                "sweep": name, "label_keys": label_keys}
            fn = tune.with_resources(trainable, resources)
            if restoring:
                tuner = tune.Tuner.restore(str(exp_path), fn, resume_unfinished=True, resume_errored=True,
                                           param_space=space)
            else:
                reporter = progress.SweepProgress(name, metric, mode, total,
                                                  functools.partial(trial_label, keys=label_keys), every_s=every_s)
                tuner = tune.Tuner(fn, param_space=space, tune_config=_tune_config(
                    kind, metric, mode, num_samples, seed, asha, max_concurrent_trials),
                    run_config=tune.RunConfig(
                        name=name, storage_path=str(storage), verbose=verbose,
                        failure_config=tune.FailureConfig(max_failures=max_failures),
                        checkpoint_config=tune.CheckpointConfig(num_to_keep=checkpoints_to_keep),
                        callbacks=[_Heartbeat(uri, pid), reporter]))
            grid = _fit(tuner, quiet=verbose == 0)
            rows = _rows(grid, label_keys, exp_path)
            with contextlib.suppress(Exception):
                _add_placements(rows, pid)
            result.rows, result.best = rows, _best(rows, metric, mode)
            jpath, cpath = _write_results(result)
            client = tracking._client()
            from mlflow.entities import Metric

            now = int(time.time() * 1000)
            summary = [Metric("n_trials", len(rows), now, 0),
                       Metric("n_failed", sum(r["status"] == "FAILED" for r in rows), now, 0),
                       Metric("n_incomplete", len(result.incomplete), now, 0)]
            if result.best is not None:
                summary.append(Metric(f"best_{metric}", result.best["metrics"][metric], now, 0))
                client.set_tag(pid, "keyhand.best_trial", f"{result.best['trial_id']} {result.best['label']}")
            client.log_batch(pid, metrics=summary)
            client.log_artifact(pid, str(jpath), artifact_path="sweep")
            client.log_artifact(pid, str(cpath), artifact_path="sweep")
        if result.incomplete:  # interrupted (Ctrl-C): Tune saved its state; `resume=True` continues
            tracking._client().set_terminated(result.parent_run_id, status="KILLED")
    finally:
        if result.parent_run_id:
            with contextlib.suppress(Exception):
                _close_running_children(result.parent_run_id, rows)
        progress.clear_board(name)
    return result


_PATIENT_RETRIES = 7   # MLflow HTTP retries once a sweep runs: backoff 1, 2, 4 ... 64 s, about two minutes in all


def _patient_http_env() -> dict[str, str]:
    try:
        retries = max(_PATIENT_RETRIES, int(os.environ.get("MLFLOW_HTTP_REQUEST_MAX_RETRIES") or 0))
    except ValueError:
        retries = _PATIENT_RETRIES
    return {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": str(retries),
            "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": os.environ.get("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR") or "1"}


@contextlib.contextmanager
def _patient_http() -> Iterator[None]:
    """While a sweep runs, MLflow HTTP calls wait for a restarting tracking server instead of failing in
    seconds (the fail-fast check of an unreachable server is :func:`tracking.check_tracking`, done before)."""
    env = _patient_http_env()
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _fit(tuner, quiet: bool):
    """``tuner.fit()``; ``quiet``: Tune's per-failure tracebacks off (the progress line and the error file say it)."""
    logger = logging.getLogger("ray.tune.execution.tune_controller")
    level = logger.level
    if quiet:
        logger.setLevel(logging.CRITICAL)
    try:
        return tuner.fit()
    finally:
        logger.setLevel(level)


def _count_trials(space: Mapping[str, Any], kind: str, num_samples: int) -> int:
    """How many trials Tune will run: the product of the grid sizes times ``num_samples`` (search: num_samples)."""
    if kind != "grid":
        return int(num_samples)
    n = 1
    stack = [v for k, v in space.items() if k != TRIAL_KEY]
    while stack:
        v = stack.pop()
        if isinstance(v, Mapping):
            if set(v) == {"grid_search"}:
                n *= max(1, len(v["grid_search"]))
            else:
                stack.extend(v.values())
    return n * int(num_samples)


def _tune_config(kind: str, metric: str, mode: str, num_samples: int, seed: int | None,
                 asha: Mapping[str, Any] | None, max_concurrent: int | None):
    from ray import tune

    if kind == "grid":
        return tune.TuneConfig(metric=metric, mode=mode, num_samples=num_samples,
                               max_concurrent_trials=max_concurrent, trial_dirname_creator=_trial_dirname)
    from ray.tune.schedulers import ASHAScheduler
    from ray.tune.search.optuna import OptunaSearch

    a = dict(asha or {})
    unknown = set(a) - {"max_t", "grace_period", "reduction_factor", "time_attr", "brackets"}
    if unknown:
        raise SweepError(f"asha: unknown key(s) {sorted(unknown)} (allowed: brackets, grace_period, max_t, "
                         "reduction_factor, time_attr)")
    scheduler = ASHAScheduler(time_attr=a.get("time_attr", "training_iteration"), max_t=int(a.get("max_t", 100)),
                              grace_period=int(a.get("grace_period", 1)),
                              reduction_factor=float(a.get("reduction_factor", 4)), brackets=int(a.get("brackets", 1)))
    return tune.TuneConfig(metric=metric, mode=mode, num_samples=num_samples, search_alg=OptunaSearch(seed=seed),
                           scheduler=scheduler, max_concurrent_trials=max_concurrent,
                           trial_dirname_creator=_trial_dirname)
