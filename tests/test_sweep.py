"""trainers.sweep: param spaces, fast failures, real Ray sweeps (local Ray and a Ray head started here).

How the Ray head test starts and stops its head: `ray start --head --node-ip-address 127.0.0.1 --port <free>
--num-cpus 2 --num-gpus 0 --include-dashboard false --temp-dir /tmp/rk-<random>` runs in a NEW session
(``start_new_session=True``), so every process of that head (GCS, raylet, agents, and the workers the raylet
forks: they change their process group but keep the session) has session id = the pid of `ray start`. The
test stops exactly the processes whose session id is that one, or whose command line names that unique temp
dir (SIGTERM, then SIGKILL after 10 s) - never `ray stop`, which kills every Ray on the machine. A sentinel
process that has "ray" in its command line is started first and must still be alive afterwards.

The trainables live in this module; Ray workers cannot import a pytest module by name, so the module is
registered with cloudpickle to be shipped by value.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
import ray
import torch
from procs import free_port, procs, session_pids
from ray import cloudpickle, tune

from trainers import sweep as S
from trainers import tracking as T

cloudpickle.register_pickle_by_value(sys.modules[__name__])


# ------------------------------------------------------------------------------------------ trainables


def fit_line(config: dict) -> None:
    """Fit y = a x + b (a=2, b=0.5) with SGD for a few steps; report the MSE each iteration."""
    with S.trial_run(config):
        torch.manual_seed(0)
        a = torch.zeros(1, requires_grad=True)
        b = torch.zeros(1, requires_grad=True)
        x = torch.linspace(-1.0, 1.0, 32)
        y = 2.0 * x + 0.5
        opt = torch.optim.SGD([a, b], lr=float(config.get("lr", 0.1)))
        for _ in range(int(config.get("iters", 3))):
            for _ in range(5):
                opt.zero_grad()
                loss = ((a * x + b - y) ** 2).mean()
                loss.backward()
                opt.step()
            tune.report({"loss": float(loss.detach())})


def flaky(config: dict) -> None:
    """Row "bad" raises until the file ``fixed`` exists; every attempt is counted in ``<row>.count``."""
    folder = Path(config["counter_dir"])
    counter = folder / f"{config['row']}.count"
    n = int(counter.read_text()) + 1 if counter.exists() else 1
    counter.write_text(str(n))
    with S.trial_run(config):
        if config["row"] == "bad" and not (folder / "fixed").exists():
            raise ValueError(f"row bad is broken (attempt {n})\nsecond line")
        tune.report({"loss": 1.0 if config["row"] == "good" else 2.0})


def interruptible(config: dict) -> None:
    """Row "quick" finishes at once; row "slow", on its first run, waits for it, then sends Ctrl-C (SIGINT) to
    the driver and hangs; on a resumed run it finishes."""
    folder = Path(config["counter_dir"])
    counter = folder / f"{config['row']}.count"
    n = int(counter.read_text()) + 1 if counter.exists() else 1
    counter.write_text(str(n))
    with S.trial_run(config):
        if config["row"] == "slow" and n == 1:
            tune.report({"loss": 5.0})
            deadline = time.time() + 60
            while not (folder / "quick.done").exists() and time.time() < deadline:
                time.sleep(0.1)
            time.sleep(3.0)  # let the driver record the quick trial as TERMINATED
            os.kill(int(config["driver_pid"]), signal.SIGINT)
            time.sleep(120)
        tune.report({"loss": 1.0 if config["row"] == "quick" else 0.5})
    if config["row"] == "quick":
        (folder / "quick.done").touch()


# ------------------------------------------------------------------------------------------ fast unit tests


def test_spaces_and_overrides() -> None:
    rows = {"full": {}, "no-silhouette": {"model.sfe": "heatmaps"}}
    assert S.ablation_space(rows) == {"row": tune.grid_search(["full", "no-silhouette"])}
    assert S.folds_space(3) == {"fold": {"grid_search": [0, 1, 2]}}
    base = {"model": {"sfe": "heatmaps+silhouette", "pca_comps": 45}, "lr": 1e-4}
    out = S.apply_overrides(base, {"model.sfe": "heatmaps", "loss": {"reg": 0.0}})
    assert out == {"model": {"sfe": "heatmaps", "pca_comps": 45}, "lr": 1e-4, "loss": {"reg": 0.0}}
    assert base["model"]["sfe"] == "heatmaps+silhouette"
    space = S.search_space({"lr": ["loguniform", 1e-5, 1e-2], "loss.reg": ["uniform", 0.0, 1.0],
                            "ve_blocks": ["choice", [2, 4, 5]]})
    assert "LogUniform" in type(space["lr"].get_sampler()).__name__
    assert space["lr"].lower == 1e-5 and space["loss.reg"].upper == 1.0 and space["ve_blocks"].categories == [2, 4, 5]
    for bad, match in [({"lr": ["loguniform", 0.0, 1.0]}, "search.lr: loguniform needs low > 0"),
                       ({"wd": ["gauss", 1, 2]}, "search.wd: expected"),
                       ({"lr": ["uniform", 2.0, 1.0]}, "search.lr: low 2 must be below high 1")]:
        with pytest.raises(ValueError, match=match):
            S.search_space(bad)
    with pytest.raises(ValueError, match="rows.x: expected a mapping"):
        S.ablation_space({"x": 3})
    with pytest.raises(ValueError, match="positive integer"):
        S.folds_space(0)
    assert S.trial_label({"row": "full"}, ["row"]) == "full"
    assert S.trial_label({"fold": 3, "lr": 0.000123}, ["fold", "lr"]) == "fold=3,lr=0.000123"


def test_unreachable_ray_address_is_one_fast_line() -> None:
    for address in ("127.0.0.1:1", "ray://127.0.0.1:1"):
        t0 = time.monotonic()
        with pytest.raises(S.SweepError) as err:
            S.connect(address)
        assert time.monotonic() - t0 < 5
        msg = str(err.value)
        assert "\n" not in msg and address in msg and "unreachable" in msg
    with pytest.raises(S.SweepError, match="expected 'auto', 'host:port'"):
        S.connect("not an address")


def test_bad_sweep_inputs_fail_before_ray_starts(tmp_path: Path) -> None:
    with pytest.raises(S.SweepError, match="OptunaSearch cannot take tune.grid_search"):
        S.run_sweep("s", fit_line, S.folds_space(2), kind="search", metric="loss", storage_path=tmp_path)
    t0, was_up = time.monotonic(), ray.is_initialized()
    with pytest.raises(T.TrackingError, match="http://127.0.0.1:1 is unreachable"):
        S.run_sweep("s", fit_line, S.folds_space(2), metric="loss", storage_path=tmp_path,
                    mlflow_uri="http://127.0.0.1:1")
    assert time.monotonic() - t0 < 10 and ray.is_initialized() == was_up  # Ray was not started


# ------------------------------------------------------------------------------------------ local Ray


@pytest.fixture(scope="module")
def local_ray():
    if ray.is_initialized():
        ray.shutdown()
    resources = S.connect(None, num_cpus=2, num_gpus=0)
    assert resources["CPU"] == 2
    yield resources
    ray.shutdown()


def _children(uri: str, parent: str) -> list:
    T.use_tracking(uri)
    return T.child_runs(parent, uri)


@pytest.mark.slow
def test_failed_trial_is_retried_recorded_and_resumed(local_ray, tmp_path: Path) -> None:
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    counters = tmp_path / "counters"
    counters.mkdir()
    space = {**S.ablation_space({"good": {}, "bad": {}}), "counter_dir": str(counters)}
    kw = dict(kind="grid", metric="loss", mode="min", storage_path=tmp_path / "ray", mlflow_uri=uri,
              experiment="keyhand-ablation", resources_per_trial={"cpu": 1, "gpu": 0}, max_failures=1)
    res = S.run_sweep("ablation", flaky, space, **kw)
    by = {r["label"]: r for r in res.rows}
    assert by["good"]["status"] == "FINISHED" and by["good"]["metrics"]["loss"] == 1.0
    assert by["bad"]["status"] == "FAILED"
    assert by["bad"]["error"] == "ValueError: row bad is broken (attempt 2)"  # the retry's error, first line only
    assert (counters / "bad.count").read_text() == "2"  # 1 try + max_failures=1 retry
    assert res.best["label"] == "good"
    saved = json.loads((res.out_dir / "results.json").read_text())
    assert [t["status"] for t in saved["trials"]] == [r["status"] for r in res.rows]
    assert (res.out_dir / "results.csv").read_text().splitlines()[0].startswith("trial_id,label,status,error")
    kids = {c.info.run_name: c for c in _children(uri, res.parent_run_id)}
    assert kids["good"].info.status == "FINISHED" and kids["bad"].info.status == "FAILED"
    assert kids["bad"].data.tags[S.TAG_ATTEMPTS] == "2"  # the retry reopened the same child
    client = T._client(uri)
    assert client.get_run(res.parent_run_id).info.status == "FINISHED"
    assert client.get_run(res.parent_run_id).data.metrics["n_failed"] == 1

    # resume: the finished trial is not run again; the errored one is, and now succeeds
    (counters / "fixed").touch()
    again = S.run_sweep("ablation", flaky, space, resume=True, **kw)
    assert (counters / "good.count").read_text() == "1"
    assert (counters / "bad.count").read_text() == "3"
    assert again.parent_run_id == res.parent_run_id
    assert {r["trial_id"] for r in again.rows} == {r["trial_id"] for r in res.rows}
    assert all(r["status"] == "FINISHED" for r in again.rows)
    kids = {c.info.run_name: c for c in _children(uri, res.parent_run_id)}
    assert len(kids) == 2 and kids["bad"].info.status == "FINISHED"
    assert not client.search_runs([kids["bad"].info.experiment_id], filter_string="attributes.status = 'RUNNING'")


@pytest.mark.slow
def test_interrupted_sweep_is_resumed(local_ray, tmp_path: Path) -> None:
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    counters = tmp_path / "counters"
    counters.mkdir()
    space = {**S.ablation_space({"quick": {}, "slow": {}}), "counter_dir": str(counters), "driver_pid": os.getpid()}
    kw = dict(kind="grid", metric="loss", mode="min", storage_path=tmp_path / "ray", mlflow_uri=uri,
              experiment="keyhand-ablation", resources_per_trial={"cpu": 1}, max_failures=0)
    res = S.run_sweep("interrupted", interruptible, space, **kw)
    by = {r["label"]: r for r in res.rows}
    assert by["quick"]["status"] == "FINISHED" and by["slow"]["status"] == "INCOMPLETE"
    client = T._client(uri)
    assert client.get_run(res.parent_run_id).info.status == "KILLED"
    kids = {c.info.run_name: c.info.status for c in _children(uri, res.parent_run_id)}
    assert kids == {"quick": "FINISHED", "slow": "KILLED"}  # none left RUNNING

    again = S.run_sweep("interrupted", interruptible, space, resume=True, **kw)
    assert (counters / "quick.count").read_text() == "1"  # the finished trial is not run again
    assert (counters / "slow.count").read_text() == "2"
    assert {r["label"]: r["status"] for r in again.rows} == {"quick": "FINISHED", "slow": "FINISHED"}
    assert again.best["label"] == "slow" and again.parent_run_id == res.parent_run_id
    assert client.get_run(res.parent_run_id).info.status == "FINISHED"
    kids = {c.info.run_name: c.info.status for c in _children(uri, res.parent_run_id)}
    assert kids == {"quick": "FINISHED", "slow": "FINISHED"}


def test_heartbeat_callback_pickles_and_beats(tmp_path: Path) -> None:
    import pickle

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    T.ensure_experiments(uri, ["hb"])
    client = T._client(uri)
    run = client.create_run(client.get_experiment_by_name("hb").experiment_id,
                            tags={T.TAG_HEARTBEAT: "1"})
    hb = pickle.loads(pickle.dumps(S._Heartbeat(uri, run.info.run_id, every_s=0.0)))
    hb.on_step_end(0, [])
    assert int(client.get_run(run.info.run_id).data.tags[T.TAG_HEARTBEAT]) >= int(time.time()) - 5
    client.set_terminated(run.info.run_id)


@pytest.mark.slow
def test_search_sweep_optuna_asha(local_ray, tmp_path: Path) -> None:
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    res = S.run_sweep("search", fit_line, {"iters": 3}, kind="search", metric="loss", mode="min", num_samples=3,
                      search_space=S.search_space({"lr": ["loguniform", 1e-3, 0.5]}),
                      asha={"max_t": 3, "grace_period": 1, "reduction_factor": 2},
                      storage_path=tmp_path / "ray", mlflow_uri=uri, experiment="keyhand-search",
                      resources_per_trial={"cpu": 1})
    assert len(res.rows) == 3 and all(r["status"] == "FINISHED" for r in res.rows)
    lrs = [float(r["config"]["lr"]) for r in res.rows]
    assert len(set(lrs)) == 3 and all(1e-3 <= lr <= 0.5 for lr in lrs)
    assert res.best["metrics"]["loss"] == min(r["metrics"]["loss"] for r in res.rows)
    assert all(r["label"].startswith("lr=") for r in res.rows)
    assert len(_children(uri, res.parent_run_id)) == 3


# ------------------------------------------------------------------------------------------ a real Ray head


def _stop_head(sid: int, temp_dir: str) -> None:
    """Stop only this head: the processes of its session or naming its temp dir (TERM, then KILL)."""
    for sig, wait in ((signal.SIGTERM, 10.0), (signal.SIGKILL, 5.0)):
        for pid in session_pids(sid, temp_dir):
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + wait
        while session_pids(sid, temp_dir) and time.monotonic() < deadline:
            time.sleep(0.2)
        if not session_pids(sid, temp_dir):
            return


@pytest.fixture()
def ray_head():
    """A Ray head on 127.0.0.1:<free port> with 2 CPUs, its own session and temp dir; stopped (only it) after."""
    if ray.is_initialized():
        ray.shutdown()
    port = free_port()
    temp_dir = f"/tmp/rk-{uuid.uuid4().hex[:8]}"  # short: Ray's unix socket paths must stay < 108 bytes
    ray_bin = str(Path(sys.executable).with_name("ray"))
    env = dict(os.environ, RAY_USAGE_STATS_ENABLED="0")
    proc = subprocess.run([ray_bin, "start", "--head", "--node-ip-address", "127.0.0.1", "--port", str(port),
                           "--num-cpus", "2", "--num-gpus", "0", "--include-dashboard", "false",
                           "--temp-dir", temp_dir, "--disable-usage-stats"],
                          capture_output=True, text=True, env=env, timeout=120, start_new_session=True)
    # `ray start` exits after starting the daemons; its pid was the session id they all inherited
    started = {pid for pid, (_, cmd) in procs().items() if temp_dir in cmd}
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert started, "ray start left no process naming its temp dir"
    sid = procs()[min(started)][0]
    try:
        yield {"address": f"127.0.0.1:{port}", "sid": sid, "temp_dir": temp_dir}
    finally:
        if ray.is_initialized():
            ray.shutdown()
        _stop_head(sid, temp_dir)
        subprocess.run(["rm", "-rf", temp_dir], check=False)


@pytest.mark.slow
def test_grid_sweep_on_a_ray_head_started_here(ray_head, tmp_path: Path) -> None:
    sentinel = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)", "ray-sentinel"],
                                start_new_session=True)
    try:
        assert sentinel.pid not in session_pids(ray_head["sid"], ray_head["temp_dir"])
        resources = S.connect(ray_head["address"])
        assert resources["CPU"] == 2 and resources.get("GPU", 0) == 0
        uri = f"sqlite:///{tmp_path}/mlflow.db"
        res = S.run_sweep("folds", fit_line, {**S.folds_space(2), "lr": 0.2}, kind="grid", metric="loss",
                          mode="min", storage_path=tmp_path / "ray", mlflow_uri=uri, experiment="keyhand-cv",
                          resources_per_trial={"cpu": 1, "gpu": 0}, parent_run_name="cv-parent")
        assert [r["label"] for r in res.rows] == ["fold=0", "fold=1"]
        assert all(r["status"] == "FINISHED" and r["iterations"] == 3 for r in res.rows)
        assert all(r["metrics"]["loss"] < 1.0 for r in res.rows)  # the line is being fitted: MSE starts at 1.58
        # the trials ran in the head's workers, not in a local Ray
        assert ray.get_runtime_context().gcs_address.endswith(ray_head["address"].split(":")[1])
        client = T._client(uri)
        parent = client.get_run(res.parent_run_id)
        assert parent.info.status == "FINISHED" and parent.info.run_name == "cv-parent"
        kids = _children(uri, res.parent_run_id)
        assert sorted(k.info.run_name for k in kids) == ["fold=0", "fold=1"]
        assert all(k.info.status == "FINISHED" and k.data.params["fold"] in ("0", "1") for k in kids)
        saved = json.loads((res.out_dir / "results.json").read_text())
        assert saved["parent_run_id"] == res.parent_run_id and len(saved["trials"]) == 2
        assert len((res.out_dir / "results.csv").read_text().splitlines()) == 3
        ray.shutdown()
        head = session_pids(ray_head["sid"], ray_head["temp_dir"])
        assert head
        _stop_head(ray_head["sid"], ray_head["temp_dir"])
        assert not session_pids(ray_head["sid"], ray_head["temp_dir"])
        assert sentinel.poll() is None, "stopping the test's head killed another process"
    finally:
        sentinel.kill()
        sentinel.wait()
