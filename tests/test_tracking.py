"""trainers.tracking: URIs, runs that always end, loggers, stale runs, a real `mlflow server` over HTTP.

The server test starts `mlflow server --workers 1` on 127.0.0.1 (a free port, SQLite backend and artifacts
in tmp) in its own process group, waits for /health, logs a run over HTTP, reads it back through the REST
API with urllib, then terminates that process group (SIGTERM, then SIGKILL after 10 s).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from trainers import tracking as T

PCK = {"thresholds_mm": [20.0, 25.0, 30.0, 35.0, 40.0, 45.0, 50.0],
       "values": [0.41, 0.55, 0.66, 0.74, 0.81, 0.86, 0.90]}
EVAL = {"epe_mean": 12.5, "epe_median": 11.0, "auc": 0.713, "pck": PCK}


@pytest.fixture(autouse=True)
def _restore_mlflow_env():
    """Tests point mlflow at tmp stores; put the process-wide settings back afterwards."""
    import mlflow

    keys = [k for k in os.environ if k.startswith("MLFLOW_")]
    saved = {k: os.environ[k] for k in keys}
    yield
    while mlflow.active_run() is not None:
        mlflow.end_run()
    for k in [k for k in os.environ if k.startswith("MLFLOW_")]:
        if k not in saved:
            del os.environ[k]
    os.environ.update(saved)


@pytest.fixture()
def store(tmp_path: Path) -> str:
    uri = T.resolve_tracking_uri("sqlite:///runs/mlflow.db", tmp_path)
    T.ensure_experiments(uri, ["exp"])
    return uri


def test_resolve_tracking_uri(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert T.resolve_tracking_uri(None, tmp_path) == f"sqlite:///{tmp_path.resolve()}/runs/mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://tracker:5000")
    assert T.resolve_tracking_uri(None, tmp_path) == "http://tracker:5000"
    assert T.resolve_tracking_uri("http://other:5000", tmp_path) == "http://other:5000"  # param beats env
    assert T.resolve_tracking_uri("sqlite:///db/m.db", tmp_path) == f"sqlite:///{tmp_path.resolve()}/db/m.db"
    with pytest.raises(T.TrackingError, match="no file store"):
        T.resolve_tracking_uri("./mlruns", tmp_path)
    assert T.flatten_params({"model": {"sfe": "none", "dims": [1, 2]}, "lr": 1e-4}) == {
        "model.sfe": "none", "model.dims": "[1, 2]", "lr": "0.0001"}
    assert T.params_hash({"a": 1, "b": {"c": 2}}) == T.params_hash({"b": {"c": 2}, "a": 1})
    assert T.params_hash({"a": 1}) != T.params_hash({"a": 2})


def test_unreachable_tracking_uri_is_one_fast_line() -> None:
    t0 = time.monotonic()
    with pytest.raises(T.TrackingError) as err:
        T.check_tracking("http://127.0.0.1:1")
    with pytest.raises(T.TrackingError):
        T.ensure_experiments("http://127.0.0.1:1", ["x"])
    assert time.monotonic() - t0 < 10
    msg = str(err.value)
    assert "\n" not in msg and "http://127.0.0.1:1" in msg and "mlflow server" in msg


def test_tracked_run_always_ends(store: str) -> None:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(store)
    params = {"model": {"sfe": "heatmaps"}, "train": {"lr": 1e-4}}
    with T.tracked_run("exp", "ok", params=params, stage="train") as run:
        ok = run.info.run_id
    with pytest.raises(ValueError, match="boom"):
        with T.tracked_run("exp", "bad", stage="train") as run:
            bad = run.info.run_id
            raise ValueError("boom\nsecond line")
    with pytest.raises(KeyboardInterrupt):
        with T.tracked_run("exp", "ctrl-c") as run:
            killed = run.info.run_id
            raise KeyboardInterrupt
    r = client.get_run(ok)
    assert r.info.status == "FINISHED"
    assert r.data.params == {"model.sfe": "heatmaps", "train.lr": "0.0001"}
    assert r.data.tags[T.TAG_STAGE] == "train" and r.data.tags[T.TAG_HASH] == T.params_hash(params)
    assert len(r.data.tags[T.TAG_COMMIT]) in (40, 7)  # a commit, or "unknown" outside git
    b = client.get_run(bad)
    assert b.info.status == "FAILED" and b.data.tags["keyhand.error"] == "ValueError: boom"
    assert client.get_run(killed).info.status == "KILLED"
    running = client.search_runs([client.get_experiment_by_name("exp").experiment_id],
                                 filter_string="attributes.status = 'RUNNING'")
    assert not running
    # a reopened run (resumed sweep, retried trial) ends again, keeping its params
    with T.tracked_run("exp", run_id=bad, params={"model": {"sfe": "heatmaps"}, "extra": 1}):
        assert client.get_run(bad).info.status == "RUNNING"
    b = client.get_run(bad)
    assert b.info.status == "FINISHED" and b.data.params["extra"] == "1"


def test_callback_and_loggers(store: str, tmp_path: Path) -> None:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(store)
    ckpt = tmp_path / "epoch-0001.pt"
    with T.tracked_run("exp", "train") as run:
        rid = run.info.run_id
        cb = T.MlflowCallback(checkpoints="last")
        for epoch, total in enumerate([1.0, 0.7, 0.5]):
            assert cb.on_epoch_end(epoch, {"total": total, "joints_3d": total / 2, "nan": float("nan"),
                                           "name": "text"}) is None
            ckpt.write_bytes(bytes([epoch]) * 8)
            cb.on_checkpoint(ckpt)
        T.log_evaluation(EVAL)
        T.log_gesture_cv([0.9, 0.8, 0.85, 0.95], np.array([[5, 1], [0, 6]]), ["fist", "palm"])
        art = T.log_image(np.linspace(0, 1, 12 * 10 * 3).reshape(12, 10, 3), "fig6/panel")
        with pytest.raises(ValueError, match="class_names"):
            T.log_gesture_cv([0.9], np.eye(3), ["a", "b"])
    hist = client.get_metric_history(rid, "total")
    assert [(m.step, m.value) for m in hist] == [(0, 1.0), (1, 0.7), (2, 0.5)]
    assert "nan" not in client.get_run(rid).data.metrics
    assert [a.path for a in client.list_artifacts(rid, "checkpoints")] == ["checkpoints/last.pt"]
    last = client.download_artifacts(rid, "checkpoints/last.pt", str(tmp_path / "dl"))
    assert Path(last).read_bytes() == bytes([2]) * 8
    pck = sorted((m.step, m.value) for m in client.get_metric_history(rid, "pck"))
    assert pck == list(zip([20, 25, 30, 35, 40, 45, 50], PCK["values"], strict=True))
    m = client.get_run(rid).data.metrics
    assert m["epe_mean"] == 12.5 and m["auc"] == pytest.approx(0.713)
    assert m["gesture_accuracy_mean"] == pytest.approx(0.875)
    assert m["gesture_accuracy_std"] == pytest.approx(np.std([0.9, 0.8, 0.85, 0.95]))
    assert [(h.step, h.value) for h in client.get_metric_history(rid, "gesture_accuracy")][1] == (1, 0.8)
    files = {a.path for a in client.list_artifacts(rid, "evaluation")} | {
        a.path for a in client.list_artifacts(rid, "gesture")}
    assert files == {"evaluation/pck.json", "evaluation/pck.csv", "evaluation/pck.png",
                     "gesture/confusion.json", "gesture/confusion.png"}
    cm = json.loads(Path(client.download_artifacts(rid, "gesture/confusion.json", str(tmp_path / "dl"))).read_text())
    assert cm["matrix"] == [[5, 1], [0, 6]] and cm["class_names"] == ["fist", "palm"]
    png = Path(client.download_artifacts(rid, art, str(tmp_path / "dl")))
    assert art == "images/fig6/panel.png" and png.read_bytes()[:4] == b"\x89PNG"


def test_close_stale_runs(store: str) -> None:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(store)
    exp_id = client.get_experiment_by_name("exp").experiment_id
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    alive = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        host = socket.gethostname()
        now = str(int(time.time()))
        r_dead = client.create_run(exp_id, tags={T.TAG_HOST: host, T.TAG_PID: str(dead.pid), T.TAG_HEARTBEAT: now})
        r_alive = client.create_run(exp_id, tags={T.TAG_HOST: host, T.TAG_PID: str(alive.pid),
                                                  T.TAG_HEARTBEAT: now})
        r_old = client.create_run(exp_id, tags={T.TAG_HOST: "elsewhere", T.TAG_PID: "1",
                                                T.TAG_HEARTBEAT: str(int(time.time()) - 7200)})
        closed = T.close_stale_runs("exp", older_than_s=3600)
        assert set(closed) == {r_dead.info.run_id, r_old.info.run_id}
        assert client.get_run(r_dead.info.run_id).info.status == "FAILED"
        assert client.get_run(r_old.info.run_id).info.status == "FAILED"
        assert client.get_run(r_alive.info.run_id).info.status == "RUNNING"
    finally:
        alive.kill()
        alive.wait()
    assert T.close_stale_runs("no-such-experiment") == []


# ------------------------------------------------------------------------------------------ a real mlflow server


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(base: str, endpoint: str, **query: str) -> dict:
    url = f"{base}{endpoint}?{urllib.parse.urlencode(query)}"
    with urllib.request.urlopen(url, timeout=10) as resp:  # noqa: S310 - 127.0.0.1 test server
        return json.loads(resp.read())


@pytest.fixture()
def mlflow_server(tmp_path: Path):
    """`mlflow server` on 127.0.0.1:<free port>, its own process group, SQLite + artifacts in tmp."""
    port = _free_port()
    env = dict(os.environ, MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false")  # no background job workers
    env.pop("MLFLOW_TRACKING_URI", None)
    log = open(tmp_path / "server.log", "wb")  # noqa: SIM115
    cmd = [str(Path(sys.executable).with_name("mlflow")), "server", "--host", "127.0.0.1", "--port", str(port),
           "--workers", "1", "--backend-store-uri", f"sqlite:///{tmp_path}/server.db",
           "--artifacts-destination", str(tmp_path / "server-artifacts")]
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                with urllib.request.urlopen(base + "/health", timeout=2) as r:  # noqa: S310
                    if r.status == 200:
                        break
            except OSError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("mlflow server did not start:\n" + (tmp_path / "server.log").read_text()[-2000:])
            time.sleep(0.3)
        yield base
    finally:
        pgid = os.getpgid(proc.pid) if proc.poll() is None else proc.pid
        _killpg(pgid, signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pass
        _killpg(pgid, signal.SIGKILL)  # the uvicorn worker too, if it outlived its parent
        proc.wait(timeout=10)
        log.close()


def _killpg(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        pass


@pytest.mark.slow
def test_mlflow_server_over_http(mlflow_server: str) -> None:
    uri = mlflow_server
    T.check_tracking(uri)
    ids = T.ensure_experiments(uri, ["keyhand-train", "keyhand-sweeps"])
    assert set(ids) == {"keyhand-train", "keyhand-sweeps"}
    with T.tracked_run("keyhand-train", "train-http", params={"train": {"lr": 1e-4, "epochs": 2}},
                       stage="train", uri=uri) as run:
        rid = run.info.run_id
        cb = T.MlflowCallback()
        cb.on_epoch_end(0, {"total": 2.0, "sfe": 1.5})
        cb.on_epoch_end(1, {"total": 1.0, "sfe": 0.5})
        T.log_evaluation(EVAL)
    run = _get(uri, "/api/2.0/mlflow/runs/get", run_id=rid)["run"]
    assert run["info"]["status"] == "FINISHED"
    params = {p["key"]: p["value"] for p in run["data"]["params"]}
    assert params == {"train.lr": "0.0001", "train.epochs": "2"}
    metrics = {m["key"]: m["value"] for m in run["data"]["metrics"]}
    assert metrics["epe_mean"] == 12.5 and metrics["total"] == 1.0
    tags = {t["key"]: t["value"] for t in run["data"]["tags"]}
    assert tags["keyhand.stage"] == "train" and tags["keyhand.git_commit"]
    hist = _get(uri, "/api/2.0/mlflow/metrics/get-history", run_id=rid, metric_key="pck")["metrics"]
    assert sorted((int(m["step"]), m["value"]) for m in hist) == list(
        zip([20, 25, 30, 35, 40, 45, 50], PCK["values"], strict=True))
    losses = _get(uri, "/api/2.0/mlflow/metrics/get-history", run_id=rid, metric_key="sfe")["metrics"]
    assert sorted((int(m["step"]), m["value"]) for m in losses) == [(0, 1.5), (1, 0.5)]
    arts = _get(uri, "/api/2.0/mlflow/artifacts/list", run_id=rid, path="evaluation")["files"]
    assert {a["path"] for a in arts} == {"evaluation/pck.json", "evaluation/pck.csv", "evaluation/pck.png"}
    # the table and the figure are served back over HTTP
    url = f"{uri}/get-artifact?" + urllib.parse.urlencode({"path": "evaluation/pck.json", "run_uuid": rid})
    with urllib.request.urlopen(url, timeout=10) as resp:  # noqa: S310
        table = json.loads(resp.read())
    assert table["columns"] == ["threshold_mm", "pck"] and len(table["data"]) == 7
    # a failing block over HTTP ends FAILED, never RUNNING
    with pytest.raises(RuntimeError):
        with T.tracked_run("keyhand-train", "crash", uri=uri) as run:
            crashed = run.info.run_id
            raise RuntimeError("driver crashed")
    assert _get(uri, "/api/2.0/mlflow/runs/get", run_id=crashed)["run"]["info"]["status"] == "FAILED"
