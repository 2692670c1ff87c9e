"""Sweeps on a multi-node Ray cluster: its nodes, remote-safety checks, a pre-sweep probe, the MLflow server.

    from trainers.cluster import alive_nodes, check_remote_safe, probe_plan, probe_nodes, placement, TrackingServer
    nodes = alive_nodes()                               # [Node(node_id, ip, is_head, cpus, gpus)], after ray.init
    check_remote_safe(nodes, tracking_uri, storage)     # ClusterError (one line): sqlite / loopback tracking, memory://
    plan = probe_plan(param_space, storage, tracking_uri, experiment, artifact_location)
    reports = probe_nodes(trial_nodes(nodes, {"cpu": 1, "gpu": 0.5}), plan)   # ClusterError naming a failing node
    with TrackingServer("0.0.0.0:5000", store_uri="sqlite:///.../runs/mlflow.db") as server:
        server.url                                      # http://<this machine's address>:5000, for every node

What "remote-safe" means here. With more than one Ray node, a trial may run on another machine; everything it
reads or writes must be reachable from there:

* tracking: a ``sqlite:///`` URI is a file on the driver's machine (another node would open or create its own
  copy and its runs would be silently lost) and is refused; an ``http(s)://`` MLflow server is accepted, but
  not a loopback one (``127.0.0.1``, ``localhost``) when some node has another address than the driver.
* storage (Ray Tune's experiment folder) and data: a path is accepted when the probe shows every node sees it;
  a URI (``s3://``, ``gs://``, ``abfs://``, ``hdfs://``: anything ``pyarrow.fs`` opens) is accepted for the
  Tune storage, ``memory://`` is refused.

The probe. Before the first trial, one tiny task (no CPU, pinned to the node) runs on every node that can host
a trial and checks, there: keyhand imports; the Tune storage holds the random file the driver just wrote and
takes one written back (so the folder is shared, in both directions); every trial output folder (config keys
named ``out``) and a ``file://`` MLflow artifact store show the driver's file too; every existing absolute
path in the trial config is there, files (data manifests, checkpoints, the joints file, an explicit MANO file)
with the driver's SHA-256; the MANO file each config names resolves and reads (``mano_path`` null = the
proxy hand, generated on first use there); the tracking server answers ``/health`` and its REST API (a server
that rejects the node's Host header answers ``/health`` but 403 on the API). The first failing node is named
in one line, with the number of other problems.

Ray 2.60 turns token authentication on by default: every node and the driver need the cluster's token
(``RAY_AUTH_TOKEN`` or ``RAY_AUTH_TOKEN_PATH``; ``ray get-auth-token`` on the head prints it).
"""

from __future__ import annotations

import contextlib
import hashlib
import ipaddress
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from trainers.sweep import SweepError
from trainers.tracking import pid_alive

__all__ = ["ClusterError", "Node", "alive_nodes", "trial_nodes", "is_uri", "check_remote_safe", "ProbePlan",
           "probe_plan", "probe_nodes", "placement", "TrackingServer", "parse_bind", "reachable_ip"]

log = logging.getLogger(__name__)

PROBE_DIR = ".keyhand-probe"           # under the Tune storage (and beside trial outputs), removed after
_URI_OK = ("s3", "gs", "gcs", "abfs", "abfss", "az", "hdfs", "viewfs")   # shared by construction (pyarrow.fs)
_HASH_CAP = 256 * 1024 * 1024          # files larger than this are checked for size only


class ClusterError(SweepError):
    """The cluster cannot run this sweep safely (unreachable tracking, unshared storage, a bad node): one line."""


# --------------------------------------------------------------------------------------------------- nodes


@dataclass(frozen=True)
class Node:
    """One alive Ray node: its id, address, whether it is the head, and its declared CPUs / GPUs."""

    node_id: str
    ip: str
    is_head: bool
    cpus: float
    gpus: float

    @property
    def name(self) -> str:
        """``<ip>/<first 8 hex of the node id>``: unique even when several nodes share a machine."""
        return f"{self.ip}/{self.node_id[:8]}"


def alive_nodes() -> list[Node]:
    """The alive nodes of the connected Ray cluster (head first)."""
    import ray

    out = []
    for n in ray.nodes():
        if not n.get("Alive"):
            continue
        res = n.get("Resources") or {}
        out.append(Node(node_id=n["NodeID"], ip=n.get("NodeManagerAddress", "?"),
                        is_head="node:__internal_head__" in res, cpus=float(res.get("CPU", 0.0)),
                        gpus=float(res.get("GPU", 0.0))))
    return sorted(out, key=lambda n: (not n.is_head, n.ip, n.node_id))


def trial_nodes(nodes: Sequence[Node], resources: Mapping[str, float]) -> list[Node]:
    """The nodes that can host one trial of ``resources`` (``{"cpu": 1, "gpu": 0.5}``); ClusterError if none."""
    cpu, gpu = float(resources.get("cpu", 1.0)), float(resources.get("gpu", 0.0))
    fit = [n for n in nodes if n.cpus >= cpu and n.gpus >= gpu]
    if not fit:
        have = ", ".join(f"{n.name} {n.cpus:g} CPU {n.gpus:g} GPU" for n in nodes)
        raise ClusterError(f"no Ray node can host a trial of {cpu:g} CPU and {gpu:g} GPU (nodes: {have}); "
                           "lower --cpus-per-trial / --gpus-per-trial or add bigger nodes")
    return fit


def is_uri(path: str | os.PathLike) -> bool:
    """True for ``scheme://...`` (other than ``file://``): a storage location pyarrow opens, not a local path."""
    text = str(path)
    return "://" in text and not text.startswith("file://")


def _is_loopback(host: str | None) -> bool:
    if not host:
        return False
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_remote_safe(nodes: Sequence[Node], tracking_uri: str, storage: str | os.PathLike,
                      driver_ip: str | None = None) -> None:
    """The checks that need no probe (module docstring); a no-op with one node. ClusterError, one line."""
    if len(nodes) <= 1:
        return
    n = len(nodes)
    uri = tracking_uri.strip()
    if uri.startswith("sqlite:") or "://" not in uri:
        raise ClusterError(f"tracking URI {uri} is a SQLite file on this machine, but the Ray cluster has {n} nodes "
                           "whose trials cannot write to it (their runs would be lost): run an MLflow server "
                           "(`keyhand sweep --tracking-server 0.0.0.0:5000`) or pass --tracking-uri http://<host>:5000")
    if uri.startswith(("http://", "https://")):
        host = urllib.parse.urlsplit(uri).hostname
        elsewhere = sorted({nd.ip for nd in nodes if driver_ip is None or nd.ip != driver_ip})
        if _is_loopback(host) and elsewhere:
            raise ClusterError(f"tracking URI {uri} is this machine's loopback address, which nodes at "
                               f"{', '.join(elsewhere)} cannot reach: bind the server to an address they reach "
                               "(--tracking-server 0.0.0.0:5000) and use http://<head address>:5000")
    text = str(storage)
    if text.startswith("memory://"):
        raise ClusterError(f"storage path {text}: an in-memory filesystem is not shared by the cluster's {n} nodes; "
                           "use a shared folder or an s3:// / gs:// URI (--storage-path)")
    if is_uri(text) and text.split("://", 1)[0].lower() not in _URI_OK:
        log.warning("storage path %s: scheme not known to be shared; the probe checks it", text)


# --------------------------------------------------------------------------------------------------- storage


def _fs(location: str | os.PathLike) -> tuple[Any, str]:
    """(pyarrow filesystem, path inside it) for a local path, a ``file://`` URI or a remote URI."""
    import pyarrow.fs as pafs

    text = str(location)
    if is_uri(text):
        return pafs.FileSystem.from_uri(text)
    if text.startswith("file://"):
        text = urllib.parse.urlsplit(text).path
    return pafs.LocalFileSystem(), str(Path(text).expanduser().resolve())


def write_text(location: str, text: str) -> None:
    """Write a small text file to a local path or a storage URI (atomic for local paths)."""
    fs, path = _fs(location)
    fs.create_dir(path.rsplit("/", 1)[0], recursive=True)
    tmp = f"{path}.{os.getpid()}.tmp"
    with fs.open_output_stream(tmp) as f:
        f.write(text.encode())
    fs.move(tmp, path)


def read_text(location: str) -> str | None:
    """The text of a small file at a local path or a storage URI; None when it does not exist."""
    import pyarrow.fs as pafs

    fs, path = _fs(location)
    if fs.get_file_info(path).type != pafs.FileType.File:
        return None
    with fs.open_input_stream(path) as f:
        return f.read().decode()


def _delete_dir(location: str) -> None:
    with contextlib.suppress(Exception):
        fs, path = _fs(location)
        fs.delete_dir(path)


def join(location: str | os.PathLike, *parts: str) -> str:
    """``location/part/...`` for paths and URIs alike."""
    return "/".join([str(location).rstrip("/"), *parts])


# --------------------------------------------------------------------------------------------------- probe


@dataclass
class ProbePlan:
    """What every node must see before the first trial (built on the driver by :func:`probe_plan`)."""

    nonce: str
    storage: str                                        # the Tune storage (path or URI)
    files: dict[str, tuple[int, str | None]] = field(default_factory=dict)   # path -> (size, sha256 or None)
    dirs: list[str] = field(default_factory=list)       # folders that must exist there
    shared: list[str] = field(default_factory=list)     # folders holding the driver's nonce file
    mano: list[tuple[str | None, str, str | None]] = field(default_factory=list)   # (mano_path, side, sha256)
    tracking_uri: str = ""
    experiment: str = ""


def _sha256(path: Path) -> tuple[int, str | None]:
    size = path.stat().st_size
    if size > _HASH_CAP:
        return size, None
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return size, h.hexdigest()


def _walk(obj: Any, key: str = "") -> Iterator[tuple[str, Any, Mapping | None]]:
    """(key, value, the mapping holding it) for every leaf of nested dicts / lists."""
    if isinstance(obj, Mapping):
        for k, v in obj.items():
            if isinstance(v, Mapping | list | tuple):
                yield from _walk(v, str(k))
            else:
                yield str(k), v, obj
    elif isinstance(obj, list | tuple):
        for v in obj:
            if isinstance(v, Mapping | list | tuple):
                yield from _walk(v, key)
            else:
                yield key, v, None


def probe_plan(space: Mapping[str, Any], storage: str | os.PathLike, tracking_uri: str = "", experiment: str = "",
               artifact_location: str | None = None, skip_keys: Iterable[str] = ("_keyhand",)) -> ProbePlan:
    """Collect what trials will touch (module docstring) and write the nonce files the nodes must find."""
    nonce = uuid.uuid4().hex
    plan = ProbePlan(nonce=nonce, storage=str(storage), tracking_uri=tracking_uri, experiment=experiment)
    skip = set(skip_keys)
    seen: set[str] = set()
    shared: list[str] = []
    for key, value, holder in _walk({k: v for k, v in space.items() if k not in skip}):
        if key == "mano_path" and holder is not None:
            entry = (value or None, str(holder.get("side") or "right"))
            if all((m[0], m[1]) != entry for m in plan.mano):
                sha = None
                if entry[0]:
                    from keyhand.geometry.mano import resolve_model_path

                    with contextlib.suppress(Exception):
                        sha = _sha256(resolve_model_path(entry[0], entry[1]))[1]
                plan.mano.append((entry[0], entry[1], sha))
            continue
        if not isinstance(value, str) or not value.startswith("/") or value in seen:
            continue
        seen.add(value)
        p = Path(value)
        if key == "out":
            shared.append(value)
        elif p.is_file():
            plan.files[value] = _sha256(p)
        elif p.is_dir():
            plan.dirs.append(value)
            manifest = p / "manifest.json"
            if manifest.is_file():
                plan.files[str(manifest)] = _sha256(manifest)
    if artifact_location and artifact_location.startswith("file:"):
        shared.append(urllib.parse.unquote(urllib.parse.urlsplit(artifact_location).path))
    write_text(_probe_file(plan.storage, nonce, "driver"), nonce)
    for folder in shared:
        Path(folder).mkdir(parents=True, exist_ok=True)
        write_text(_probe_file(folder, nonce, "driver"), nonce)
        plan.shared.append(folder)
    return plan


def _probe_file(folder: str, nonce: str, name: str) -> str:
    """``<folder>/.keyhand-probe/<nonce>/<name>``: one folder per probe (concurrent sweeps may share storage)."""
    return join(folder, PROBE_DIR, nonce, name)


def _remove_probe(folder: str, nonce: str) -> None:
    _delete_dir(join(folder, PROBE_DIR, nonce))
    if not is_uri(folder):
        with contextlib.suppress(OSError):
            os.rmdir(Path(_fs(folder)[1]) / PROBE_DIR)  # only when no other probe is using it


def _probe_here(plan: ProbePlan) -> dict[str, Any]:
    """Runs on one node (a Ray task): the problems found there, and what the node is."""
    import ray

    node_id = ray.get_runtime_context().get_node_id()
    problems: list[str] = []

    def _why(e: BaseException) -> str:
        return getattr(e, "strerror", None) or str(e).strip().splitlines()[0][:200] or type(e).__name__

    for folder in plan.dirs:
        if not os.path.isdir(folder):
            problems.append(f"data folder {folder} is missing (not on storage every node sees)")
    for path, (size, sha) in plan.files.items():
        try:
            got = _sha256(Path(path))
        except OSError as e:
            problems.append(f"cannot read {path} ({_why(e)})")
            continue
        if got[0] != size or (sha is not None and got[1] != sha):
            problems.append(f"{path} differs from the driver's copy ({got[0]} bytes, driver {size})")
    for mano_path, side, sha in plan.mano:
        try:
            from keyhand.geometry.mano import resolve_model_path

            found = resolve_model_path(mano_path, side)
            got = _sha256(found)
            if sha is not None and got[1] != sha:
                problems.append(f"MANO file {found} differs from the driver's copy")
        except Exception as e:  # noqa: BLE001
            problems.append(f"MANO file {mano_path or '(proxy hand)'} ({side}): {_why(e)}")
    try:
        if read_text(_probe_file(plan.storage, plan.nonce, "driver")) != plan.nonce:
            problems.append(f"storage path {plan.storage} is not on storage shared with the driver "
                            "(the probe file the driver wrote is not there)")
        else:
            write_text(_probe_file(plan.storage, plan.nonce, node_id), node_id)
    except Exception as e:  # noqa: BLE001 - any failure is the node's problem to report
        problems.append(f"storage path {plan.storage}: {_why(e)}")
    for folder in plan.shared:
        try:
            ok = read_text(_probe_file(folder, plan.nonce, "driver")) == plan.nonce
        except Exception:  # noqa: BLE001
            ok = False
        if not ok:
            problems.append(f"output folder {folder} is not on storage shared with the driver")
    if plan.tracking_uri.startswith(("http://", "https://")):
        problem = _tracking_problem(plan.tracking_uri, plan.experiment)
        if problem:
            problems.append(problem)
    cuda = False
    with contextlib.suppress(Exception):
        import torch

        cuda = bool(torch.cuda.is_available())
    return {"node_id": node_id, "ip": ray.util.get_node_ip_address(), "host": socket.gethostname(),
            "problems": problems, "cuda": cuda, "python": sys.version.split()[0]}


def _tracking_problem(uri: str, experiment: str, timeout_s: float = 10.0) -> str | None:
    """None when the MLflow server at ``uri`` answers /health and its REST API from here, else why not."""
    base = uri.rstrip("/")
    name = urllib.parse.quote(experiment or "Default")
    for what, url in (("/health", f"{base}/health"),
                      ("its REST API", f"{base}/api/2.0/mlflow/experiments/get-by-name?experiment_name={name}")):
        try:
            with urllib.request.urlopen(url, timeout=timeout_s) as resp:  # noqa: S310 - http(s) only
                status = resp.status
        except urllib.error.HTTPError as e:
            status = e.code
        except (urllib.error.URLError, OSError, ValueError) as e:
            return f"tracking server {uri} is unreachable ({getattr(e, 'reason', e)})"
        if status >= 400 and not (status == 404 and what != "/health"):
            return f"tracking server {uri} answered HTTP {status} on {what}" + (
                " (it rejects this Host header: start it with --allowed-hosts naming this address)"
                if status == 403 else "")
    return None


def probe_nodes(nodes: Sequence[Node], plan: ProbePlan, timeout_s: float = 60.0) -> list[dict[str, Any]]:
    """Run the probe on every node in ``nodes``; ClusterError naming the first failing node; the reports otherwise.

    The probe folder and the nonce files are removed whatever happens.
    """
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    remote = ray.remote(num_cpus=0, max_retries=0)(_probe_here)
    refs = {remote.options(scheduling_strategy=NodeAffinitySchedulingStrategy(n.node_id, soft=False),
                           name=f"keyhand-probe-{n.node_id[:8]}").remote(plan): n for n in nodes}
    reports: dict[str, dict[str, Any]] = {}
    bad: list[tuple[Node, str]] = []
    try:
        done, pending = ray.wait(list(refs), num_returns=len(refs), timeout=timeout_s)
        finished = set(done)
        for ref in [r for r in refs if r in finished]:  # in node order: the error names the first node
            node = refs[ref]
            try:
                rep = ray.get(ref)
            except Exception as e:  # noqa: BLE001 - e.g. keyhand not importable on that node
                cause = getattr(e, "cause", None) or e
                bad.append((node, f"the probe task failed there ({type(cause).__name__}: "
                                  f"{(str(cause).strip().splitlines() or [''])[-1][:200]})"))
                continue
            reports[node.node_id] = rep
            for problem in rep["problems"]:
                bad.append((node, problem))
            if not rep["problems"] and read_text(_probe_file(plan.storage, plan.nonce, node.node_id)) != node.node_id:
                bad.append((node, f"the driver does not see the file the node wrote to {plan.storage}"))
        for ref in pending:
            ray.cancel(ref, force=True)
            bad.append((refs[ref], f"did not answer the probe within {timeout_s:g} s"))
    finally:
        for folder in [plan.storage, *plan.shared]:
            _remove_probe(folder, plan.nonce)
    if bad:
        node, first = bad[0]
        others = sorted({n.name for n, _ in bad[1:] if n.node_id != node.node_id})
        more = f" (+{len(bad) - 1} more problem(s)" + (f", also on {', '.join(others)}" if others else "") + ")" \
            if len(bad) > 1 else ""
        raise ClusterError(f"node {node.name} cannot run this sweep's trials: {first}{more}")
    return [reports[n.node_id] for n in nodes]


# --------------------------------------------------------------------------------------------------- placement


def placement() -> dict[str, Any]:
    """Inside a trial: where Ray put it: node id and address, the GPU ids it assigned, the device used.

    ``device`` is what :func:`trainers.device.resolve_device` picks (``cuda`` or ``cpu``); a trial given a
    GPU on a node without CUDA runs on CPU, and resolve_device logs one line saying so.
    """
    import ray

    from trainers.device import resolve_device

    ctx = ray.get_runtime_context()
    gpus = [str(g) for g in ray.get_gpu_ids()]
    device = resolve_device("auto")
    return {"node_id": ctx.get_node_id(), "node_ip": ray.util.get_node_ip_address(), "gpu_ids": gpus,
            "device": device.type if device.type == "cpu" else f"cuda:{os.environ.get('CUDA_VISIBLE_DEVICES', '')}",
            "cpu_fallback": bool(gpus) and device.type == "cpu", "pid": os.getpid(), "host": socket.gethostname(),
            "start": time.time()}


# --------------------------------------------------------------------------------------------------- MLflow server


def parse_bind(bind: str) -> tuple[str, int]:
    """``"HOST:PORT"``, ``"[::]:PORT"`` or ``"PORT"`` (127.0.0.1) -> (host, port); ValueError names the input."""
    text = str(bind).strip()
    if text.isdigit():
        host, port = "127.0.0.1", text
    elif text.startswith("["):
        host, _, port = text[1:].partition("]:")
    else:
        host, _, port = text.rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"--tracking-server {bind!r}: expected HOST:PORT (e.g. 0.0.0.0:5000) or PORT")
    return host, int(port)


def reachable_ip(towards: str | None = None) -> str:
    """This machine's address as seen from ``towards`` (a host; default: the default route), no packet sent."""
    target = towards or "10.255.255.255"
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.connect((target, 1))
            return s.getsockname()[0]
    except OSError:
        return socket.gethostbyname(socket.gethostname())


class TrackingServer:
    """``mlflow server --workers 1`` on this machine (the head) for the length of a sweep; stopped by its pid.

    ``bind``: ``HOST:PORT`` as the user asks (``127.0.0.1:5000``: this machine only; ``0.0.0.0:5000``: every
    interface). ``store_uri``: the backend store (the project's ``sqlite:///.../runs/mlflow.db``), artifacts
    served by the server from ``artifacts`` (default ``<db folder>/mlartifacts``). ``url`` is what trials use:
    the bound host, or for ``0.0.0.0`` / ``::`` this machine's address towards ``advertise_towards`` (the Ray
    head). A non-loopback server is started with ``--allowed-hosts`` naming that address (MLflow 3 rejects
    other Host headers than localhost and private networks). Background job workers are off
    (``MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false``). The server runs in its own session: :meth:`stop` signals
    exactly its process group (TERM, then KILL after 10 s).
    """

    def __init__(self, bind: str, store_uri: str, artifacts: str | os.PathLike | None = None,
                 log_path: str | os.PathLike | None = None, advertise_towards: str | None = None) -> None:
        self.host, self.port = parse_bind(bind)
        self.store_uri = store_uri
        if artifacts is None:
            if not store_uri.startswith("sqlite:///"):
                raise ClusterError(f"--tracking-server: store {store_uri} is not SQLite; name an artifacts folder")
            artifacts = Path(store_uri[len("sqlite:///"):]).parent / "mlartifacts"
        self.artifacts = str(artifacts)
        self.log_path = Path(log_path) if log_path else None
        wildcard = self.host in ("0.0.0.0", "::", "")
        self.public_host = reachable_ip(advertise_towards) if wildcard else self.host
        host = f"[{self.public_host}]" if ":" in self.public_host else self.public_host
        self.url = f"http://{host}:{self.port}"
        self.proc: subprocess.Popen | None = None

    def command(self) -> list[str]:
        """The ``mlflow server`` command line."""
        cmd = [str(Path(sys.executable).with_name("mlflow")), "server", "--workers", "1", "--host", self.host,
               "--port", str(self.port), "--backend-store-uri", self.store_uri,
               "--artifacts-destination", self.artifacts]
        if not _is_loopback(self.public_host):
            hosts = [self.public_host, f"{self.public_host}:{self.port}", "localhost", "localhost:*",
                     "127.0.0.1", "127.0.0.1:*"]
            cmd += ["--allowed-hosts", ",".join(dict.fromkeys(hosts))]
        return cmd

    def start(self, timeout_s: float = 180.0) -> str:
        """Start it and wait for ``/health``; the URL. ClusterError (one line) when the port is taken or it dies."""
        with socket.socket(socket.AF_INET6 if ":" in self.host else socket.AF_INET) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn does: TIME_WAIT is no conflict
            try:
                s.bind((self.host, self.port))
            except OSError as e:
                raise ClusterError(f"--tracking-server {self.host}:{self.port}: cannot bind ({e.strerror}); "
                                   "pick a free port or an address of this machine") from None
        if self.store_uri.startswith("sqlite:///"):
            Path(self.store_uri[len("sqlite:///"):]).parent.mkdir(parents=True, exist_ok=True)
        Path(self.artifacts).mkdir(parents=True, exist_ok=True)
        env = dict(os.environ, MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false")
        if self.log_path:
            self.log_path.parent.mkdir(parents=True, exist_ok=True)
        out = self.log_path.open("ab") if self.log_path else subprocess.DEVNULL
        try:
            self.proc = subprocess.Popen(self.command(), stdout=out, stderr=subprocess.STDOUT, env=env,
                                         start_new_session=True)
        finally:
            if self.log_path:
                out.close()
        deadline = time.monotonic() + timeout_s
        local = f"http://{'127.0.0.1' if self.host in ('0.0.0.0', '') else self.public_host}:{self.port}"
        if self.host == "::":
            local = f"http://[::1]:{self.port}"
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                tail = self.log_path.read_text()[-300:].strip().splitlines()[-1:] if self.log_path else []
                raise ClusterError(f"mlflow server on {self.host}:{self.port} exited ({self.proc.returncode})"
                                   + (f": {tail[0]}" if tail else ""))
            with contextlib.suppress(OSError, ValueError):
                with urllib.request.urlopen(f"{local}/health", timeout=2) as resp:  # noqa: S310
                    if resp.status == 200:
                        return self.url
            time.sleep(0.5)
        self.stop()
        raise ClusterError(f"mlflow server on {self.host}:{self.port} did not answer /health within {timeout_s:g} s")

    def stop(self, grace_s: float = 10.0) -> None:
        """TERM its process group, KILL after ``grace_s``; a no-op when not running."""
        proc, self.proc = self.proc, None
        if proc is None:
            return
        for sig, wait in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 5.0)):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, sig)
            deadline = time.monotonic() + wait
            while time.monotonic() < deadline:
                proc.poll()  # reap the leader, else its zombie keeps the group "alive"
                if not pid_alive(proc.pid, group=True):
                    return
                time.sleep(0.1)

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    def __enter__(self) -> TrackingServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def summary_line(nodes: Sequence[Node], hosts: Sequence[Node], resources: Mapping[str, float]) -> str:
    """``cluster: 3 nodes; trials on 2 (192.0.2.2/f88006c4 2 CPU 2 GPU, ...); 1 CPU + 0.5 GPU per trial``."""
    return (f"cluster: {len(nodes)} node(s); trials on {len(hosts)} ("
            + ", ".join(f"{n.name} {n.cpus:g} CPU {n.gpus:g} GPU" for n in hosts)
            + f"); {resources.get('cpu', 1):g} CPU + {resources.get('gpu', 0):g} GPU per trial")


def as_json(obj: Any) -> str:
    return json.dumps(obj, separators=(",", ":"), default=str)
