"""Sweeps on a real multi-node Ray cluster (issue 12): spread, GPU packing, remote safety, fault drills.

The cluster (one module fixture, shared by every slow test here): a head and two worker nodes, each a separate
`ray start` on 127.0.0.1 with its own raylet, object store (80 MB) and temp dir, each in its own session
(``start_new_session``). The head declares no CPU and no GPU (trials never land there); each worker declares
2 CPUs and 2 GPUs (``--num-gpus 2``: Ray schedules by declared resources, so fractional packing is testable
without CUDA). Token authentication is on (``RAY_AUTH_MODE=token``) with the test's own token file
(``RAY_AUTH_TOKEN_PATH``), never ``~/.ray/auth_token``. Worker 2 runs in a private mount namespace (``unshare
--mount``, when this machine allows it) where ``<root>/hidden`` is an empty tmpfs: a folder the driver sees and
that node does not, to test that the probe names the node. Stopping: every process of a node's session, or
whose command line names its temp dir (TERM, then KILL) - never `ray stop`, which would stop every Ray here.

The project: a tiny params.yaml (64 px crops, 8 training images, 1 epoch per row, ablation rows that differ
in ``loss.reg`` and need no pretrained SFE) and its data, built once with `keyhand stage synthetic / prepare
pose / masks pose`; each sweep runs `keyhand sweep ablation --address ...` in a copy of it (own checkpoints).

The fault drills print, for the README: trials lost (goal 0), trials re-run, wall time.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from procs import free_port, procs, session_pids

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
KEYHAND = str(BIN / "keyhand")
RAY = str(BIN / "ray")
GPUS_PER_TRIAL = 0.5
ROW_REG = [0.01, 0.0, 0.02, 0.05, 0.1, 0.2, 0.005, 0.03]

TINY = {
    "data": {"synthetic": {"height": 96, "width": 96, "obman": {"train": 2}, "stb": {"train": 8, "val": 4, "test": 4},
                           "gestures": {"all": 24}, "subjects": 2}},
    "prepare": {"mask_workers": 1, "mask_iterations": 1},
    "model": {"image_size": 64, "sfe_channels": 16, "ve_input_size": 32, "ve_channels": 8, "dense_scale": 0.02,
              "render_size": 32},
    "train": {"epochs": 1, "batch_size": 4},
}

FIGURES: dict[str, dict] = {}


# ------------------------------------------------------------------------------------------ processes


def _stop_sessions(nodes: list[tuple[int, str]]) -> None:
    """Stop exactly these nodes: the processes of their sessions or naming their temp dirs (TERM, then KILL)."""
    def alive() -> set[int]:
        return set().union(*(session_pids(sid, marker) for sid, marker in nodes)) if nodes else set()

    for sig, wait in ((signal.SIGTERM, 3.0), (signal.SIGKILL, 5.0)):
        for pid in alive():
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + wait
        while alive() and time.monotonic() < deadline:
            time.sleep(0.2)
        if not alive():
            return


@dataclass
class RayNode:
    name: str
    temp_dir: str
    sid: int
    raylet_pid: int
    node_id: str


@dataclass
class Cluster:
    address: str
    root: Path
    env: dict
    head: RayNode
    workers: list[RayNode]
    hidden: Path | None          # a folder worker 2 does not see (None: no mount namespaces here)


def _can_unshare() -> bool:
    if not shutil.which("unshare"):
        return False
    r = subprocess.run(["unshare", "--mount", "--propagation", "private", "true"], capture_output=True)
    return r.returncode == 0


def _start_nodes(root: Path, env: dict, specs: list[tuple[str, list[str], Path | None]]) -> list[RayNode]:
    """`ray start` each (name, args, folder to hide) at once; the nodes, once every `ray start` returned."""
    starts = []
    for name, args, hide in specs:
        temp_dir = str(root / name)
        cmd = [RAY, "start", "--node-ip-address", "127.0.0.1", "--temp-dir", temp_dir,
               "--object-store-memory", str(80 * 2**20), "--dashboard-agent-listen-port", str(free_port()),
               "--include-log-monitor", "false", "--disable-usage-stats", *args]
        if hide is not None:  # this node's own view: an empty tmpfs over `hide`
            cmd = ["unshare", "--mount", "--propagation", "private", "sh", "-c",
                   'mount -t tmpfs tmpfs "$0" && exec "$@"', str(hide), *cmd]
        starts.append((name, temp_dir, subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                                       text=True, env=env, start_new_session=True)))
    nodes = []
    for name, temp_dir, proc in starts:
        output, _ = proc.communicate(timeout=180)
        assert proc.returncode == 0, f"ray start {name} failed:\n{output[-3000:]}"
        raylets = [(pid, sid, line) for pid, (sid, line) in procs().items()
                   if temp_dir in line and "raylet/raylet" in line]
        assert len(raylets) == 1, f"{name}: expected one raylet, found {len(raylets)}"
        pid, sid, line = raylets[0]
        nodes.append(RayNode(name, temp_dir, sid, pid, re.search(r"--node_id=([0-9a-f]+)", line).group(1)))
    return nodes


@pytest.fixture(scope="module")
def cluster(keyhand_cache: Path):
    """Head (0 CPU, 0 GPU) + two workers (2 CPU, 2 declared GPUs each) on 127.0.0.1, token auth on."""
    root = Path(f"/tmp/khc-{uuid.uuid4().hex[:6]}")  # short: Ray's unix socket paths must stay < 108 bytes
    root.mkdir()
    token = root / "token"
    token.write_text(uuid.uuid4().hex + uuid.uuid4().hex)
    env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(token),
           "RAY_USAGE_STATS_ENABLED": "0", "KEYHAND_CACHE": str(keyhand_cache),
           "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}
    for key in ("RAY_ADDRESS", "RAY_AUTH_TOKEN", "MLFLOW_TRACKING_URI", "KEYHAND_SWEEP_VERBOSE"):
        env.pop(key, None)
    hidden = root / "hidden" if _can_unshare() else None
    if hidden is not None:
        hidden.mkdir()
    nodes: list[RayNode] = []
    port = free_port()
    try:
        nodes += _start_nodes(root, env, [("h", ["--head", "--port", str(port), "--num-cpus", "0", "--num-gpus", "0",
                                                 "--include-dashboard", "false"], None)])
        worker = ["--address", f"127.0.0.1:{port}", "--num-cpus", "2", "--num-gpus", "2"]
        nodes += _start_nodes(root, env, [("w1", worker, None), ("w2", worker, hidden)])
        yield Cluster(f"127.0.0.1:{port}", root, env, nodes[0], nodes[1:], hidden)
    finally:
        _stop_sessions([(n.sid, n.temp_dir) for n in nodes] + [(-1, f"{root}/")])  # also a half-started node
        for node in nodes:
            assert not session_pids(node.sid, node.temp_dir), f"node {node.name} left processes behind"
        shutil.rmtree(root, ignore_errors=True)


# ------------------------------------------------------------------------------------------ the project


def _write_params(folder: Path, rows: int) -> None:
    """``rows`` ablation rows (``r0``, ``r1`` ...: loss.reg values), one seed each: one trial per row."""
    from pipeline.params import Params, render_params

    data = {**TINY, "sweep": {"base": {"pretrained_sfe": False}, "epochs": 1,
                              "rows": {f"r{i}": {"loss": {"reg": ROW_REG[i]}} for i in range(rows)}}}
    if "stats" in Params.model_fields:
        data["stats"] = {"seeds": 1}
    (folder / "params.yaml").write_text(render_params(Params.for_profile("default", data)))


@pytest.fixture(scope="module")
def template(cluster: Cluster) -> Path:
    """A tiny project (params.yaml + its prepared pose data and masks), built once."""
    tpl = cluster.root / "tpl"
    tpl.mkdir()
    _write_params(tpl, 4)
    for stage in (["synthetic"], ["prepare", "pose"], ["masks", "pose"]):
        r = subprocess.run([KEYHAND, "stage", *stage], cwd=tpl, env=cluster.env, capture_output=True, text=True,
                           timeout=600)
        assert r.returncode == 0, f"keyhand stage {' '.join(stage)}:\n{r.stdout[-2000:]}\n{r.stderr[-2000:]}"
    return tpl


def _project(template: Path, where: Path, rows: int = 4) -> Path:
    """A copy of the template (its own checkpoints, runs and Tune experiment) with ``rows`` ablation rows."""
    shutil.copytree(template / "data", where / "data")
    _write_params(where, rows)
    return where


@pytest.fixture(scope="module")
def mlflow_server(cluster: Cluster):
    """An `mlflow server --workers 1` on 127.0.0.1 (the drills restart it), SQLite store in the cluster's folder."""
    from trainers.cluster import TrackingServer

    server = TrackingServer(f"127.0.0.1:{free_port()}", f"sqlite:///{cluster.root}/mlflow/mlflow.db",
                            log_path=cluster.root / "mlflow.log")
    server.start()
    try:
        yield server
    finally:
        server.stop()
        assert server.pid is None


def _sweep(cluster: Cluster, project: Path, *args: str, env: dict | None = None) -> tuple[subprocess.Popen, Path]:
    """`keyhand sweep ablation --address <cluster> ...` in ``project``, in the background; stdout+stderr to a file."""
    out = project / f"sweep-{uuid.uuid4().hex[:4]}.log"
    with out.open("w") as f:
        proc = subprocess.Popen([KEYHAND, "sweep", "ablation", "--address", cluster.address,
                                 "--gpus-per-trial", str(GPUS_PER_TRIAL), *args],
                                cwd=project, env=env or cluster.env, stdout=f, stderr=subprocess.STDOUT,
                                start_new_session=True)
    return proc, out


def _tail(text: str, lines: int = 60) -> str:
    """The end of a sweep's output for an assertion message (long lines cut, errors first)."""
    cut = [ln[:300] for ln in text.splitlines()]
    errors = [ln for ln in cut if re.search(r"Error|error:|keyhand: ", ln)][:15]
    return "\n".join(["errors:", *errors, "tail:", *cut[-lines:]])


def _finish(proc: subprocess.Popen, out: Path, timeout: float = 600) -> str:
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        raise AssertionError(f"sweep did not finish in {timeout:g} s:\n{_tail(out.read_text())}") from None
    return out.read_text()


def _wait_for(out: Path, pattern: str, proc: subprocess.Popen, timeout: float = 300, count: int = 1) -> list[str]:
    """Wait until ``pattern`` (regex) matched ``count`` lines of the sweep's output; the matching lines."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = [ln for ln in out.read_text().splitlines() if re.search(pattern, ln)]
        if len(found) >= count:
            return found
        assert proc.poll() is None, f"sweep ended before {pattern!r}:\n{_tail(out.read_text())}"
        time.sleep(0.3)
    raise AssertionError(f"no {count} line(s) matching {pattern!r} within {timeout:g} s:\n"
                         f"{_tail(out.read_text())}")


def _results(project: Path) -> dict:
    return json.loads((project / "runs" / "ablate" / "results.json").read_text())


def _runs(uri: str, parent_run_id: str):
    """(parent run, children) from the tracking store."""
    from mlflow import MlflowClient

    client = MlflowClient(uri)
    parent = client.get_run(parent_run_id)
    kids = client.search_runs([parent.info.experiment_id],
                              filter_string=f"tags.`mlflow.parentRunId` = '{parent_run_id}'", max_results=100)
    return parent, kids


def _max_overlap(intervals: list[tuple[float, float]]) -> int:
    events = sorted([(s, 1) for s, _ in intervals] + [(e, -1) for _, e in intervals])
    best = cur = 0
    for _, d in events:  # at equal times an end (-1) sorts before a start (+1)
        cur += d
        best = max(best, cur)
    return best


def _check_packing(rows: list[dict], worker_ids: set[str]) -> int:
    """No GPU of any node carries more than 1/gpus_per_trial trials at once; the largest count seen."""
    per_gpu: dict[tuple[str, str], list[tuple[float, float]]] = {}
    for r in rows:
        for p in r["placements"]:
            assert p["node_id"] in worker_ids, f"{r['label']} ran on {p['node_id'][:8]}, not a worker node"
            assert len(p["gpu_ids"]) == 1, f"{r['label']}: {GPUS_PER_TRIAL} GPU per trial gave GPUs {p['gpu_ids']}"
            if p["end"] is not None:
                per_gpu.setdefault((p["node_id"], p["gpu_ids"][0]), []).append((p["start"], p["end"]))
    most = max(_max_overlap(v) for v in per_gpu.values())
    assert most <= round(1 / GPUS_PER_TRIAL), f"a GPU carried {most} trials at once (limit {1 / GPUS_PER_TRIAL:g})"
    return most


# ------------------------------------------------------------------------------------------ fast checks


def test_sweep_help_documents_every_cluster_option() -> None:
    from typer.testing import CliRunner

    from pipeline.cli import app

    text = CliRunner().invoke(app, ["sweep", "--help"], env={"COLUMNS": "200", "NO_COLOR": "1"}).output
    for option in ("--address", "--tracking-uri", "--tracking-server", "--storage-path", "--gpus-per-trial",
                   "--cpus-per-trial", "--max-failures", "--resume", "--progress-every", "--verbose"):
        assert option in text, option
    assert "RAY_AUTH_TOKEN_PATH" in text and "Running on a GPU cluster" in text


def test_remote_safety_rules_without_a_cluster() -> None:
    from trainers.cluster import ClusterError, Node, TrackingServer, check_remote_safe, is_uri, parse_bind, trial_nodes

    one = [Node("a" * 56, "10.0.0.1", True, 0, 0)]
    two = [*one, Node("b" * 56, "10.0.0.2", False, 2, 2)]
    check_remote_safe(one, "sqlite:////tmp/x/mlflow.db", "/tmp/ray")          # one node: anything goes
    for uri in ("sqlite:////tmp/x/mlflow.db", "/tmp/x/mlflow.db"):
        with pytest.raises(ClusterError, match="SQLite file on this machine.*2 nodes") as err:
            check_remote_safe(two, uri, "/tmp/ray")
        assert "\n" not in str(err.value)
    with pytest.raises(ClusterError, match="loopback address, which nodes at 10.0.0.2 cannot reach"):
        check_remote_safe(two, "http://127.0.0.1:5000", "/tmp/ray", driver_ip="10.0.0.1")
    check_remote_safe(two, "http://10.0.0.1:5000", "s3://bucket/keyhand", driver_ip="10.0.0.1")
    same_machine = [Node("a" * 56, "10.0.0.1", True, 0, 0), Node("b" * 56, "10.0.0.1", False, 2, 2)]
    check_remote_safe(same_machine, "http://localhost:5000", "/tmp/ray", driver_ip="10.0.0.1")
    with pytest.raises(ClusterError, match="in-memory filesystem"):
        check_remote_safe(two, "https://mlflow.example.org", "memory://ray", driver_ip="10.0.0.1")
    assert is_uri("s3://b/k") and is_uri("gs://b") and not is_uri("/shared/ray") and not is_uri("file:///x")
    assert trial_nodes(two, {"cpu": 1, "gpu": 0.5}) == two[1:]
    with pytest.raises(ClusterError, match="no Ray node can host a trial of 4 CPU and 1 GPU"):
        trial_nodes(two, {"cpu": 4, "gpu": 1})
    assert parse_bind("5000") == ("127.0.0.1", 5000) and parse_bind("0.0.0.0:5001") == ("0.0.0.0", 5001)
    assert parse_bind("[::]:5002") == ("::", 5002)
    with pytest.raises(ValueError, match="expected HOST:PORT"):
        parse_bind("host:notaport")
    loop = TrackingServer("127.0.0.1:5000", "sqlite:////tmp/x/mlflow.db")
    assert loop.url == "http://127.0.0.1:5000" and "--allowed-hosts" not in loop.command()
    cmd = TrackingServer("10.1.2.3:5000", "sqlite:////tmp/x/mlflow.db").command()
    assert cmd[cmd.index("--workers") + 1] == "1"
    assert cmd[cmd.index("--artifacts-destination") + 1] == "/tmp/x/mlartifacts"
    assert "10.1.2.3:5000" in cmd[cmd.index("--allowed-hosts") + 1].split(",")


def test_probe_plan_collects_what_trials_touch(tmp_path: Path) -> None:
    from trainers.cluster import PROBE_DIR, _probe_file, _remove_probe, probe_plan

    data = tmp_path / "data" / "train"
    data.mkdir(parents=True)
    (data / "manifest.json").write_text('{"count": 3}')
    joints = tmp_path / "joints.pt"
    joints.write_bytes(b"0123")
    space = {"row": {"grid_search": ["a"]}, "_keyhand": {"uri": "/not/a/data/path"},
             "spec": {"data": {"train": str(data), "val": None}, "joints": str(joints), "out": str(tmp_path / "out"),
                      "configs": {"a": {"model": {"mano_path": None, "side": "left"}}}}}
    plan = probe_plan(space, tmp_path / "ray", "http://10.0.0.1:5000", "keyhand-ablation",
                      artifact_location=f"file://{tmp_path}/art/1")
    assert plan.dirs == [str(data)]
    assert set(plan.files) == {str(data / "manifest.json"), str(joints)} and plan.files[str(joints)][0] == 4
    assert plan.mano == [(None, "left", None)]
    assert plan.shared == [str(tmp_path / "out"), f"{tmp_path}/art/1"]
    for folder in (str(tmp_path / "ray"), *plan.shared):
        assert Path(_probe_file(folder, plan.nonce, "driver")).read_text() == plan.nonce
        _remove_probe(folder, plan.nonce)
        assert not (Path(folder) / PROBE_DIR).exists()


def test_progress_summary_and_eta() -> None:
    from trainers.progress import SweepProgress, fmt_duration

    class T:
        def __init__(self, status: str, value: float | None = None, row: str = "x") -> None:
            self.status, self.trial_id, self.config = status, row, {"row": row}
            self.last_result = {} if value is None else {"epe_mean": value}

    lines: list[str] = []
    p = SweepProgress("abl", "epe_mean", "min", 5, lambda c: c["row"], every_s=0, out=lines.append)
    p._durations = [40.0, 40.0]                      # two trials took 40 s each
    p._started = {"c": time.monotonic() - 30.0, "d": time.monotonic() - 10.0}   # two running, 10 s and 30 s left
    trials = [T("TERMINATED", 30.0, "a"), T("TERMINATED", 20.0, "b"), T("RUNNING", row="c"), T("RUNNING", row="d"),
              T("PENDING", row="e")]
    text = p.summary(trials)  # the longer running trial (30 s left), then one wave of 40 s for the pending one
    assert text == "sweep abl: 2/5 done, 2 running, 1 pending, 0 failed; best epe_mean 20 (b); ETA 1m10s", text
    assert p.summary(trials[:2], final=True).endswith("; took 0s")
    assert fmt_duration(41) == "41s" and fmt_duration(250) == "4m10s" and fmt_duration(7380) == "2h03m"


# ------------------------------------------------------------------------------------------ the cluster


@pytest.mark.slow
def test_multi_node_sweep_spreads_packs_and_records_placement(cluster: Cluster, template: Path) -> None:
    """`keyhand sweep ablation --address ... --tracking-server <node address>:PORT` on 2 GPU-declaring workers."""
    from trainers.cluster import reachable_ip

    project = _project(template, cluster.root / "spread")
    host, port = reachable_ip(), free_port()  # the address Ray advertises for the nodes (not loopback)
    t0 = time.monotonic()
    proc, out = _sweep(cluster, project, "--tracking-server", f"{host}:{port}", "--progress-every", "5")
    text = _finish(proc, out)
    wall = time.monotonic() - t0
    assert proc.returncode == 0, _tail(text)
    url = f"http://{host}:{port}"
    assert f"tracking server: {url} (pid" in text and f"tracking server {url} stopped" in text
    server_pid = int(re.search(r"tracking server: \S+ \(pid (\d+)", text).group(1))
    assert server_pid not in procs(), "the sweep left its mlflow server running"
    with socket.socket() as s:
        assert s.connect_ex((host, port)) != 0, "the tracking server's port still answers"
    assert "probe: 2 node(s) see the storage, data, MANO file and tracking server" in text
    workers = {w.node_id: w for w in cluster.workers}
    started = re.findall(r"(r\d[\w.]*): started on node [\d.]+/([0-9a-f]{8}), GPU (\d)", text)
    assert {n for _, n, _ in started} == {w[:8] for w in workers}, "the trials did not spread over both workers"
    assert len(re.findall(r"r\d[\w.]*: finished, epe_mean [\d.]+", text)) == 4
    assert re.search(r"sweep ablation-\w+: \d/4 done, \d running, \d pending, 0 failed", text)
    assert "Trial Status" not in text and "Number of trials" not in text  # Ray's own table stays off

    res = _results(project)
    rows = res["trials"]
    assert len(rows) == 4 and all(r["status"] == "FINISHED" for r in rows)
    assert {r["node_id"] for r in rows} == set(workers) and all(r["gpu_ids"] and r["device"] == "cpu" for r in rows)
    most = _check_packing(rows, set(workers))
    csv_head = (project / "runs" / "ablate" / "results.csv").read_text().splitlines()[0]
    assert csv_head.startswith("trial_id,label,status,error,iterations,node_ip,node_id,gpu_ids,device,attempts,"
                               "retries,")

    # MLflow (the server is gone: read its SQLite store): one child per trial, tagged with node and GPU ids
    parent, kids = _runs(f"sqlite:///{project}/runs/mlflow.db", res["parent_run_id"])
    assert parent.info.status == "FINISHED" and len(kids) == 4
    by_trial = {r["trial_id"]: r for r in rows}
    for k in kids:
        row = by_trial[k.data.tags["keyhand.trial_id"]]
        assert k.info.status == "FINISHED" and k.data.tags["keyhand.node_id"] == row["node_id"]
        assert k.data.tags["keyhand.gpu_ids"] == row["gpu_ids"] and k.data.tags["keyhand.device"] == "cpu"

    # a trial whose assigned GPU has no CUDA runs on CPU and says so in one line of its worker's log
    for r in rows:
        p = r["placements"][-1]
        logs = list(Path(workers[p["node_id"]].temp_dir).glob(f"session_2*/logs/worker-*-{p['pid']}.err"))
        assert len(logs) == 1, f"{r['label']}: no worker log for pid {p['pid']}"
        said = [ln for ln in logs[0].read_text().splitlines() if "keyhand device:" in ln]
        gpu = p["gpu_ids"][0]
        assert len(said) == 1 and re.fullmatch(rf"keyhand device: GPU {gpu} assigned \(CUDA_VISIBLE_DEVICES={gpu}, "
                                               rf"pid {p['pid']}\) but CUDA is not available here \(torch .+\): "
                                               "running on CPU", said[0]), said
    FIGURES["clean"] = {"wall_s": round(wall, 1), "max_trials_per_gpu": most}
    print("\n" + "\n".join(ln for ln in text.splitlines()
                             if re.match(r"(tracking server|sweep ablation|probe:|\[ *\w+\] )", ln)))
    print(f"\nclean sweep: 4 trials on 2 workers, at most {most} trial(s) per GPU at once, wall {wall:.1f} s")


def _refusal(proc: subprocess.Popen, out: Path) -> str:
    """The one `keyhand: ...` line a refused sweep printed (exit status 2)."""
    text = _finish(proc, out, timeout=300)
    err = [ln for ln in text.splitlines() if ln.startswith("keyhand: ")]
    assert proc.returncode == 2 and len(err) == 1, _tail(text)
    assert "started on node" not in text
    print(f"\nrefused: {err[0]}")
    return err[0]


@pytest.mark.slow
def test_unsafe_or_unauthenticated_sweeps_are_refused_in_one_line(cluster: Cluster, template: Path, mlflow_server,
                                                                 tmp_path: Path) -> None:
    # a driver without the cluster's token (Ray retries for ~20 s before giving up: runs meanwhile)
    env = {k: v for k, v in cluster.env.items() if k not in ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN_PATH")}
    env["HOME"] = str(tmp_path)  # no ~/.ray/auth_token either
    no_token = _sweep(cluster, _project(template, cluster.root / "notoken"), env=env)
    # the project's SQLite store: other nodes cannot write to it
    project = _project(template, cluster.root / "unsafe")
    err = _refusal(*_sweep(cluster, project))
    assert "is a SQLite file on this machine" in err and "3 nodes" in err
    assert not (project / "runs" / "ray").exists() or not any((project / "runs" / "ray").iterdir())
    err = _refusal(*no_token)
    assert f"Ray cluster at {cluster.address} refused this driver's token" in err and "RAY_AUTH_TOKEN_PATH" in err
    if cluster.hidden is None:
        pytest.skip("no mount namespaces here (unshare): cannot hide a folder from one node")
    # data (and everything else) on a folder worker 2 does not see: the probe names worker 2
    w2 = cluster.workers[1]
    hidden = _project(template, cluster.hidden / "proj")
    err = _refusal(*_sweep(cluster, hidden, "--tracking-uri", mlflow_server.url, "--storage-path",
                           str(cluster.root / "shared-ray")))
    assert f"/{w2.node_id[:8]} cannot run this sweep's trials: data folder {hidden}/data/prepared" in err
    assert "more problem(s)" in err
    # only the Tune storage unshared
    err = _refusal(*_sweep(cluster, _project(template, cluster.root / "unsafe2"), "--tracking-uri",
                           mlflow_server.url, "--storage-path", str(cluster.hidden / "ray")))
    assert re.search(rf"node [\d.]+/{w2.node_id[:8]} cannot run this sweep's trials: storage path "
                     rf"{re.escape(str(cluster.hidden / 'ray'))} is not on storage shared with the driver", err)


# ------------------------------------------------------------------------------------------ fault drills


def _drill_report(name: str, rows: list[dict], wall: float, rerun: int) -> None:
    lost = sum(r["status"] != "FINISHED" for r in rows)
    FIGURES[name] = {"trials": len(rows), "lost": lost, "rerun": rerun, "wall_s": round(wall, 1)}
    print(f"\ndrill {name}: {len(rows)} trials, trials lost {lost}, trials re-run {rerun}, wall {wall:.1f} s")


def _no_run_left_running(uri: str, parent_run_id: str) -> list:
    parent, kids = _runs(uri, parent_run_id)
    assert parent.info.status == "FINISHED"
    assert {k.info.status for k in kids} <= {"FINISHED", "FAILED"}, [k.info.status for k in kids]
    return kids


@pytest.mark.slow
def test_drill_tracking_server_restarted_mid_sweep(cluster: Cluster, template: Path, mlflow_server) -> None:
    """(c) The MLflow server goes down and comes back while trials run: they wait and go on; none re-run."""
    project = _project(template, cluster.root / "drill-c")
    t0 = time.monotonic()
    proc, out = _sweep(cluster, project, "--tracking-uri", mlflow_server.url, "--progress-every", "5")
    _wait_for(out, r"started on node", proc, count=2)
    down = time.monotonic()
    mlflow_server.stop()
    time.sleep(3.0)
    mlflow_server.start()
    outage = time.monotonic() - down
    text = _finish(proc, out)
    wall = time.monotonic() - t0
    assert proc.returncode == 0, _tail(text)
    rows = _results(project)["trials"]
    assert len(rows) == 4 and all(r["status"] == "FINISHED" for r in rows)
    kids = _no_run_left_running(mlflow_server.url, _results(project)["parent_run_id"])
    assert len(kids) == 4 and all(k.info.status == "FINISHED" for k in kids)
    rerun = sum(r["attempts"] > 1 or r["retries"] > 0 for r in rows)
    assert rerun == 0, "a trial was re-run: its logging did not wait for the server"
    _drill_report("c (MLflow server restarted)", rows, wall, rerun)
    FIGURES["c (MLflow server restarted)"]["outage_s"] = round(outage, 1)
    print(f"  tracking server down for {outage:.1f} s (stop, 3 s, start)")


def _tune_finished(project: Path) -> set[str]:
    """The labels of the trials Tune's saved experiment state holds as finished (what ``--resume`` reads)."""
    from ray import tune

    exp = next((project / "runs" / "ray").glob("ablation-*"))
    quiet = logging.getLogger("ray.tune")
    level = quiet.level
    quiet.setLevel(logging.ERROR)  # trials not started yet have no results: Tune warns about each
    try:
        return {t.config["row"] for t in tune.ExperimentAnalysis(str(exp)).trials if t.status == "TERMINATED"}
    finally:
        quiet.setLevel(level)


@pytest.mark.slow
def test_drill_driver_killed_then_resumed(cluster: Cluster, template: Path, mlflow_server) -> None:
    """(b) kill -9 the driver after a trial finished; `--resume`: finished trials kept, the rest run, same parent.

    Tune saves its experiment state every 2 s (TUNE_GLOBAL_CHECKPOINT_S): a trial Tune recorded as finished is
    never started again; one that finished in the last instant before the kill (printed, not yet saved) is
    started again, finds all its epochs in its checkpoints and reports the same number without training.
    """
    n = 8
    project = _project(template, cluster.root / "drill-b", rows=n)
    t0 = time.monotonic()
    proc, out = _sweep(cluster, project, "--tracking-uri", mlflow_server.url, "--progress-every", "5")
    first = _wait_for(out, r"r\d[\w.]*: finished, epe_mean", proc)
    _wait_for(out, r"started on node", proc, count=5)  # a fifth trial is running: it will be interrupted
    deadline = time.monotonic() + 30
    while not _tune_finished(project) and time.monotonic() < deadline:
        time.sleep(0.2)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    killed_at = time.monotonic() - t0
    before = out.read_text()
    printed = dict(re.findall(r"(r\d[\w.]*): finished, epe_mean (\S+)", before))
    recorded = _tune_finished(project)
    assert first and recorded, "no finished trial in Tune's saved state before the kill"
    assert recorded <= set(printed), (recorded, printed)
    assert len(printed) < n, "every trial finished before the kill: nothing left to resume"
    state = json.loads(next((project / "runs" / "ray").glob("ablation-*/keyhand-sweep.json")).read_text())
    proc2, out2 = _sweep(cluster, project, "--tracking-uri", mlflow_server.url, "--resume", "--progress-every", "5")
    text = _finish(proc2, out2)
    wall = time.monotonic() - t0
    assert proc2.returncode == 0, _tail(text)
    res = _results(project)
    rows = res["trials"]
    assert len(rows) == n and all(r["status"] == "FINISHED" for r in rows)
    assert res["parent_run_id"] == state["parent_run_id"], "the resumed sweep opened another parent run"
    by_label = {r["label"]: r for r in rows}
    rerun = sum(by_label[lab]["attempts"] > 1 for lab in recorded)
    assert rerun == 0, f"finished trials ran again: {[lab for lab in recorded if by_label[lab]['attempts'] > 1]}"
    assert not re.search(r"(" + "|".join(map(re.escape, recorded)) + r"): started on", text)
    for lab, value in printed.items():  # recorded or not: the number printed before the kill is the one kept
        assert f"{by_label[lab]['metrics']['epe_mean']:.4g}" == value, (lab, value, by_label[lab]["metrics"])
    interrupted = set(re.findall(r"(r\d[\w.]*): started on", before)) - set(printed)
    assert interrupted, "no trial was running when the driver was killed"
    restarted = set(re.findall(r"(r\d[\w.]*): started on", text))
    assert interrupted <= restarted, f"interrupted trials not run again: {sorted(interrupted - restarted)}"
    kids = _no_run_left_running(mlflow_server.url, res["parent_run_id"])
    assert len(kids) == n
    _drill_report("b (driver killed, --resume)", rows, wall, rerun)
    FIGURES["b (driver killed, --resume)"].update(killed_after_s=round(killed_at, 1), resumed_trials=len(interrupted),
                                                 finished_before_kill=len(recorded))
    print(f"  killed at {killed_at:.1f} s with {len(recorded)} trial(s) finished; {len(interrupted)} interrupted "
          "trial(s) continued after --resume")


@pytest.mark.slow
def test_drill_worker_node_dies_mid_sweep(cluster: Cluster, template: Path, mlflow_server) -> None:
    """(a) kill -9 one worker's raylet while its trials run: they are retried on the other worker. Runs last
    (the cluster keeps one worker)."""
    project = _project(template, cluster.root / "drill-a")
    victim, survivor = cluster.workers
    t0 = time.monotonic()
    proc, out = _sweep(cluster, project, "--tracking-uri", mlflow_server.url, "--max-failures", "2",
                       "--progress-every", "5")
    _wait_for(out, rf"started on node [\d.]+/{victim.node_id[:8]}", proc)
    time.sleep(3.0)
    on_victim = set(re.findall(rf"(r\d[\w.]*): started on node [\d.]+/{victim.node_id[:8]}", out.read_text()))
    os.kill(victim.raylet_pid, signal.SIGKILL)
    text = _finish(proc, out)
    wall = time.monotonic() - t0
    assert proc.returncode == 0, _tail(text)
    res = _results(project)
    rows = res["trials"]
    assert len(rows) == 4 and all(r["status"] == "FINISHED" for r in rows), [r["status"] for r in rows]
    moved, kept = [], []
    for r in rows:  # every trial caught on the dead node was retried and ended on the survivor, or had its
        if r["label"] in on_victim:  # result in before the node was gone (finished there, nothing re-run)
            if r["retries"] >= 1:
                assert r["placements"][-1]["node_id"] == survivor.node_id, r
                moved.append(r)
            else:
                assert [p["node_id"] for p in r["placements"]] == [victim.node_id], r
                kept.append(r)
    retried = re.findall(r".*r\d[\w.]*: failed \((?!error\)).+\), retrying \(attempt 2\).*", text)  # says why
    assert moved and retried, f"no trial was caught on the killed node: {sorted(on_victim)}"
    print("\n" + "\n".join(ln[:300] for ln in retried))
    kids = _no_run_left_running(mlflow_server.url, res["parent_run_id"])
    assert len(kids) == 4
    _check_packing(rows, {w.node_id for w in cluster.workers})
    rerun = sum(r["retries"] > 0 for r in rows)
    assert rerun == len(retried)  # one "retrying" line per retried trial
    _drill_report("a (worker raylet killed)", rows, wall, rerun)
    print(f"  {len(moved)} trial(s) caught on the killed node finished on {survivor.node_id[:8]}; {len(kept)} had "
          "reported before it was gone")
    print("\nfigures: " + json.dumps(FIGURES))


# ------------------------------------------------------------------------------------------ recipes


def test_cluster_launcher_yaml_is_valid_for_ray() -> None:
    import jsonschema
    import ray

    schema = json.loads((Path(ray.__file__).parent / "autoscaler" / "ray-schema.json").read_text())
    config = yaml.safe_load((ROOT / "cluster" / "ray-cluster-gpu.yaml").read_text())
    jsonschema.validate(config, schema)
    types = config["available_node_types"]
    head = types[config["head_node_type"]]
    workers = [t for name, t in types.items() if name != config["head_node_type"]]
    assert head["resources"].get("CPU") == 0 and workers and all(w["resources"].get("GPU", 0) >= 1 for w in workers)
    pip = [c for c in config["setup_commands"] if "pip install" in c]
    assert len(pip) == 1 and "torch==2.13.0" in pip[0] and "keyhand" in pip[0]
    mounts = " ".join(config.get("file_mounts", {}))
    assert "mano" in mounts.lower() or any("mano" in c.lower() for c in config["setup_commands"])
    assert any("RAY_AUTH_TOKEN" in c or "auth_token" in c for c in config["head_start_ray_commands"]
               + config["worker_start_ray_commands"] + config.get("initialization_commands", [])
               + config["setup_commands"])


def test_slurm_script_starts_head_then_workers_then_the_sweep() -> None:
    text = (ROOT / "cluster" / "slurm-sweep.sh").read_text()
    assert text.startswith("#!/bin/bash")
    directives = dict(re.findall(r"^#SBATCH --([\w-]+)=?(\S*)", text, flags=re.M))
    assert int(directives["nodes"]) >= 2 and "gpus-per-node" in directives
    assert directives.get("ntasks-per-node") == "1"
    head = re.search(r'srun .*\n?.*ray"? start --head', text)
    workers = re.search(r'srun .*\n?.*ray"? start --address', text)
    sweep = re.search(r'keyhand"? sweep "?\$WHAT"? --address', text)
    assert head and workers and sweep and head.start() < workers.start() < sweep.start()
    assert text.count("--block") == 2 and "--num-cpus=0" in text[head.start():workers.start()]
    assert "RAY_AUTH_MODE=token" in text and "RAY_AUTH_TOKEN_PATH" in text
    assert "--tracking-server" in text[sweep.start():]
    r = subprocess.run(["bash", "-n", str(ROOT / "cluster" / "slurm-sweep.sh")], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


def test_kuberay_manifest_has_a_head_gpu_workers_and_shared_storage() -> None:
    docs = [d for d in yaml.safe_load_all((ROOT / "cluster" / "kuberay-raycluster.yaml").read_text()) if d]
    rc = next(d for d in docs if d["kind"] == "RayCluster")
    assert rc["apiVersion"].startswith("ray.io/")
    spec = rc["spec"]
    assert spec["rayVersion"].startswith("2.60")
    head = spec["headGroupSpec"]
    head_container = head["template"]["spec"]["containers"][0]
    assert head["rayStartParams"].get("num-cpus") == "0"
    groups = spec["workerGroupSpecs"]
    assert groups and all(int(g["replicas"]) >= 1 for g in groups)
    for g in groups:
        c = g["template"]["spec"]["containers"][0]
        assert int(c["resources"]["limits"]["nvidia.com/gpu"]) >= 1
        mounts = {m["mountPath"] for m in c["volumeMounts"]}
        assert mounts == {m["mountPath"] for m in head_container["volumeMounts"]}  # same storage everywhere
    env = {e["name"] for e in head_container.get("env", [])}
    assert {"RAY_AUTH_MODE", "RAY_AUTH_TOKEN"} <= env or "RAY_AUTH_TOKEN_PATH" in env
    claims = [d for d in docs if d["kind"] == "PersistentVolumeClaim"]
    assert claims and all("ReadWriteMany" in d["spec"]["accessModes"] for d in claims)
