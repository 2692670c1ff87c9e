"""``keyhand rehearse`` (``make rehearse``): the paper's whole protocol rehearsed end to end on a CPU, in minutes.

    keyhand rehearse                      # project in runs/rehearse/, report runs/rehearse/runs/report/report.md
    keyhand rehearse --out /tmp/r --seeds 3

What it runs: the **paper profile** (``write_params(..., profile="paper")``: the paper's widths, 256² crops, Eq. 12's
weights, every row of ``sweep.rows`` and the controls) on tiny copies of ObMan, STB, RWTH and Senz3D written in their
published layouts with a MANO-format hand file (:mod:`keyhand.data.fixtures`), through ``dvc repro`` of the
project's own ``dvc.yaml``, to the report. Only what a CPU rehearsal must change is overridden (:func:`overrides`):
the data roots and ``data.source: real``, ``model.mano_path``, one epoch per stage, one CPU thread per stage (so a
step's cost is a per-core figure, and ``base.seed0`` is the train stage's run), no GPU per trial, ``stats.seeds``
(1 unless ``--seeds``: with one seed the statistics give no verdict), ``cv.folds`` 2 (:data:`REHEARSAL_FOLDS`),
one Fig. 6 panel, the MLflow store inside the project. ``dvc repro --no-commit``: the disposable project does not
copy its outputs (every trial's checkpoint, ~230 MB each) into a DVC cache.

The project folder (``--out``): ``dvc.yaml`` (a copy), links to the repository's code folders the stages name as
deps (``keyhand/``, ``trainers/``, ``pipeline/``, ...: the code that runs is the repository's, and DVC hashes it
through the links), ``params.yaml``, a ``dvc init --no-scm`` repository, ``data-fixtures/`` (reused while its
``fixtures.json`` matches), and what the stages write (``data/``, ``runs/``). Each rehearsal starts from an empty
``data/`` and ``runs/`` (persisted run folders would otherwise be continued and train nothing). It fails (exit 1,
one line naming them) unless every row of Tables 1-6 has a number for ours (Tables 1-4: every row's EPE; Table 5:
ours AUC; Table 6: every gesture dataset), and prints:

* each DVC stage's wall time (from ``dvc repro``'s output as it streams: a stage runs from its "Running stage"
  line to the next), and the total;
* the per-step costs it measured (each training epoch's ``epoch_time_s`` per training image, times the batch: the
  epoch's validation pass, checkpoint write and the first step's warm-up included, so an upper bound of a step;
  the evaluate stage's per-image forward time; the GrabCut seconds per image of the masks stages);
* the compute the full protocol would take (:func:`projection`), sized from the paper profile's params (ObMan, STB
  and RWTH sizes, epochs, batch, rows x ``stats.seeds``, folds; Senz3D's 1,320 images from its reader's layout):
  CPU core-hours from this machine's measured costs, and GPU-hours from the GPU check's figures when
  ``runs/gpu-check/gpu_check.json`` holds a CUDA run (``make gpu-check``), beside two stated ASSUMPTIONS that
  scale this CPU's costs (:func:`gpu_figures`: the paper's GTX 1080 from its own §4.3 step and inference times, an H100
  at :data:`ASSUMED_GPU`'s share of its peak on counted FLOPs); without the GPU check the output says that the
  projection is from this CPU only.

It writes ``rehearsal.json`` and ``rehearsal.md`` (the same summary) and ``rehearse.log`` (dvc's output) there.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from keyhand.atomic import atomic_write_text

__all__ = ["REPO", "ASSUMED_GPU", "SENZ3D_IMAGES", "Costs", "Protocol", "RehearsalError", "overrides", "projection",
           "protocol_of", "missing_rows", "stage_times", "check_project_folder", "rehearse", "main"]

REPO = Path(__file__).resolve().parents[1]
#: Creative Senz3D's size (11 gestures x 4 subjects x 30 repetitions; keyhand/data/senz3d.py): not a param.
SENZ3D_IMAGES = 11 * 4 * 30
#: STB: 1,500 frames per sequence (keyhand/data/stb.py); a held-out val sequence is one of them.
STB_FRAMES_PER_SEQUENCE = 1500
#: The GPU-hours assumption when no GPU check exists: a device, its dense bf16 peak and the share of it reached.
ASSUMED_GPU = {"device": "H100 SXM (assumed)", "peak_tflops": 989.4, "mfu": 0.15,
               "note": "bf16 dense peak from the data sheet; 15 % MFU is an assumption for batch-6 training of this "
                       "model (make gpu-check measures paper.train.b6.mfu); training step = 3 x forward FLOPs "
                       "(counted on the meta device, renderer not counted)"}
GPU_CHECK = Path("runs") / "gpu-check" / "gpu_check.json"
#: cv.folds of the rehearsal (the paper's 10 in the projection): a fold trial is ~3-6 s of Ray Tune overhead for a
#: 1-epoch classifier on 2 cores (24 fold trials: ~90 s); 2 run the same code for both fold kinds.
REHEARSAL_FOLDS = 2
#: Project entries the rehearsal creates (removed before each run); data-fixtures/ is kept and reused.
_OWNED = ("data", "runs", ".dvc", ".dvcignore", "dvc.yaml", "dvc.lock", "params.yaml", "rehearse.log",
          "rehearsal.json", "rehearsal.md")
_STAGE_LINE = re.compile(r"Running stage '([^']+)'")
_MASKS_LINE = re.compile(r"masks (\w+): ([\w-]+)/(\w+): (\d+) GrabCut, (\d+) fallback, (\d+) failed, ([\d.]+) s")


# ------------------------------------------------------------------------------------------------ params
def overrides(fixtures: dict[str, Path], project: Path, seeds: int) -> tuple[dict[str, Any], dict[str, Any]]:
    """(local keys, other overrides) of the rehearsal's params.yaml over the paper profile (module docstring).
    The local keys go in before ``write_params`` (it keeps them); the rest over the written file."""
    local = {"data": {"source": "real", **{name: {"root": str(Path(fixtures[name]).resolve())}
                                           for name in ("obman", "stb", "rwth", "senz3d")}},
             "model": {"mano_path": str(Path(fixtures["mano"]).resolve())},
             "mlflow": {"tracking_uri": f"sqlite:///{(project / 'runs' / 'mlflow.db').resolve()}"},
             "ray": {"address": None, "storage_path": None}}
    rest = {"sfe.epochs": 1, "train.epochs": 1, "gesture.epochs": 1,
            "sfe.threads": 1, "train.threads": 1, "gesture.threads": 1,
            "sweep.gpus_per_trial": 0.0, "sweep.cpus_per_trial": 1.0, "stats.seeds": int(seeds),
            "evaluate.panels": 1, "cv.folds": REHEARSAL_FOLDS}
    return local, rest


def write_rehearsal_params(path: Path, fixtures: dict[str, Path], project: Path, seeds: int):
    """The paper profile written in full (``write_params``), then :func:`overrides`; returns (params, paper)."""
    import yaml

    from pipeline.params import load_params, render_params, write_params

    local, rest = overrides(fixtures, project, seeds)
    atomic_write_text(path, yaml.safe_dump(local, sort_keys=False))
    paper = write_params(path, profile="paper", keep_local=True)
    params = load_params(path, rest)
    atomic_write_text(path, render_params(params))
    return params, paper


# ----------------------------------------------------------------------------------------------- project
def _dep_roots(dvc_yaml: Path) -> list[str]:
    """Top-level repository entries the stages of ``dvc_yaml`` name as deps (not the graph's data/ and runs/)."""
    import yaml

    stages = (yaml.safe_load(dvc_yaml.read_text()) or {}).get("stages", {})
    roots: set[str] = set()
    for spec in stages.values():
        body = spec.get("do", spec)
        for dep in body.get("deps", []):
            head = str(dep).split("/", 1)[0]
            if head not in ("data", "runs") and (REPO / head).exists():
                roots.add(head)
    return sorted(roots)


class RehearsalError(RuntimeError):
    """The rehearsal cannot start: one line saying why."""


def check_project_folder(project: Path) -> None:
    """Refuse a folder the rehearsal would clobber: the repository (or a folder above it), or a folder holding
    another project (a dvc.yaml without the rehearsal's data-fixtures/ or rehearsal.json beside it)."""
    project = project.resolve()
    if project == REPO or REPO.is_relative_to(project):
        raise RehearsalError(f"--out {project}: the repository or a folder above it; the rehearsal replaces its "
                             "folder's data/, runs/, dvc.yaml and params.yaml: choose e.g. runs/rehearse")
    ours = (project / "data-fixtures").is_dir() or (project / "rehearsal.json").is_file()
    if (project / "dvc.yaml").exists() and not ours:
        raise RehearsalError(f"--out {project} holds another project's dvc.yaml: choose an empty folder")


def _remove(path: Path) -> None:
    """Delete a file, a link (not what it points to) or a folder tree, if there is one."""
    if path.is_symlink() or path.is_file():
        path.unlink()
    elif path.is_dir():
        shutil.rmtree(path)


def make_project(project: Path, env: dict[str, str]) -> list[str]:
    """An empty rehearsal project in ``project`` (module docstring); returns the linked code entries."""
    check_project_folder(project)
    project.mkdir(parents=True, exist_ok=True)
    for name in _OWNED:
        _remove(project / name)
    linked = _dep_roots(REPO / "dvc.yaml")
    for name in linked:
        link = project / name
        _remove(link)
        link.symlink_to(REPO / name, target_is_directory=(REPO / name).is_dir())
    shutil.copy2(REPO / "dvc.yaml", project / "dvc.yaml")
    dvc = _dvc(env)
    subprocess.run([dvc, "init", "--no-scm", "-q"], cwd=project, env=env, check=True)
    for key, value in (("core.analytics", "false"), ("core.check_update", "false")):
        subprocess.run([dvc, "config", key, value], cwd=project, env=env, check=False, capture_output=True)
    with open(project / ".dvcignore", "a") as fh:
        fh.write("\n/data-fixtures/\n__pycache__/\n")
    return linked


def _bin() -> Path:
    return Path(sys.executable).parent


def _dvc(env: dict[str, str]) -> str:
    found = shutil.which("dvc", path=env.get("PATH"))
    if found is None:
        raise RuntimeError(f"dvc not found on PATH (expected in {_bin()}): make install")
    return found


def _env(project: Path) -> dict[str, str]:
    env = {**os.environ, "PATH": f"{_bin()}{os.pathsep}{os.environ.get('PATH', '')}", "PYTHONUNBUFFERED": "1",
           "DVC_NO_ANALYTICS": "1", "RAY_USAGE_STATS_ENABLED": "0"}
    for var in ("MLFLOW_TRACKING_URI", "RAY_ADDRESS"):   # the project's own store and a local Ray
        env.pop(var, None)
    return env


def run_repro(project: Path, env: dict[str, str], log,
              timeout_s: float) -> tuple[int, list[tuple[str, float]], list[str]]:
    """``dvc repro`` in ``project``, its output streamed into ``rehearse.log``; returns (exit status, [(line
    prefix, monotonic time)] of the "Running stage" lines and the end, every output line)."""
    import signal
    import threading

    marks: list[tuple[str, float]] = []
    lines: list[str] = []
    start = time.monotonic()
    with open(project / "rehearse.log", "w") as fh:
        # its own process group: on timeout, dvc and the stage processes it started are stopped together
        proc = subprocess.Popen([_dvc(env), "repro", "--no-commit"], cwd=project, env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True, bufsize=1, start_new_session=True)
        timed_out = threading.Event()

        def stop() -> None:
            timed_out.set()
            try:
                os.killpg(proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass

        timer = threading.Timer(timeout_s, stop)
        timer.start()
        assert proc.stdout is not None
        try:
            for line in proc.stdout:
                now = time.monotonic()
                fh.write(line)
                lines.append(line.rstrip("\n"))
                m = _STAGE_LINE.search(line)
                if m:
                    marks.append((m.group(1), now))
                    log(f"  [{now - start:6.1f} s] stage {m.group(1)}")
        finally:
            rc = proc.wait()
            timer.cancel()
    if timed_out.is_set():
        lines.append(f"rehearse: dvc repro stopped after --timeout {timeout_s:.0f} s")
        rc = rc or 124
    marks.append(("<end>", time.monotonic()))
    return rc, marks, lines


def stage_times(marks: list[tuple[str, float]]) -> dict[str, float]:
    """{stage: seconds} from the (stage, time) marks of :func:`run_repro` (the last mark is the end)."""
    out: dict[str, float] = {}
    for (name, t0), (_, t1) in zip(marks, marks[1:], strict=False):
        out[name] = out.get(name, 0.0) + (t1 - t0)
    return out


# --------------------------------------------------------------------------------------------- the checks
def missing_rows(report: dict[str, Any]) -> list[str]:
    """The rows of Tables 1-6 without a number for ours: ``"table2:t2_ve1"``, ``"table5:ours"``,
    ``"table6:senz3d"``... (empty: every row filled)."""
    tables = report.get("tables") or {}
    missing = []
    for key in ("table1", "table2", "table3", "table4"):
        t = tables.get(key)
        if not t or not t.get("rows"):
            missing.append(f"{key}:(no table)")
            continue
        missing += [f"{key}:{r.get('row') or r.get('label')}" for r in t["rows"] if not _number(r.get("ours"))]
    t5 = tables.get("table5") or {}
    if not any(_number(r.get("ours")) for r in t5.get("rows", [])):
        missing.append("table5:ours AUC")
    t6 = tables.get("table6") or {}
    ours = [r for r in t6.get("rows", []) if "ours" in str(r.get("label", "")) and r.get("kind") != "subject"]
    for col in t6.get("columns") or []:
        if not ours or not all(_number((r.get("ours") or {}).get(col)) for r in ours):
            missing.append(f"table6:{col}")
    if not t6:
        missing.append("table6:(no table)")
    return missing


def _number(x: Any) -> bool:
    try:
        return math.isfinite(float(x))
    except (TypeError, ValueError):
        return False


# ------------------------------------------------------------------------------------------ measured costs
@dataclass
class Costs:
    """What this rehearsal measured (seconds, one CPU thread per training step; see :func:`measure`)."""

    sfe_step_s: float | None = None                 # SFE pretraining step (batch sfe.batch_size)
    train_step_s: float | None = None               # the train stage's step (main configuration)
    row_step_s: dict[str, float] = field(default_factory=dict)   # per ablation row (mean over its trials)
    forward_img_s: float | None = None              # framework forward per image (evaluate stage, batch 1)
    forward_threads: int | None = None
    classifier_epoch_s: float | None = None         # one gesture-classifier epoch (a fold), per training sample
    grabcut_img_s: float | None = None              # GrabCut per image (one process)
    prepare_img_s: float | None = None              # prepare stages' wall time per image (start-up included)
    sources: dict[str, str] = field(default_factory=dict)


def _steps(n: int, batch: int) -> int:
    """Training steps of one epoch over ``n`` samples (trainers.train.make_loader's drop_last rule)."""
    if n <= 0:
        return 0
    drop = n > batch and n % batch == 1
    return n // batch if drop else math.ceil(n / batch)


def _count(split_dir: Path) -> int:
    f = split_dir / "manifest.json"
    return int(json.loads(f.read_text()).get("count", 0)) if f.is_file() else 0


def _epoch_s(run_dir: Path) -> float | None:
    f = run_dir / "history.json"
    if not f.is_file():
        return None
    hist = json.loads(f.read_text())
    times = [h["epoch_time_s"] for h in hist if isinstance(h, dict) and "epoch_time_s" in h]
    return float(times[-1]) if times else None


def measure(project: Path, p, times: dict[str, float], lines: list[str]) -> Costs:
    """The per-step costs of the rehearsal's run folders and output (module docstring)."""
    from pipeline.stages.common import prepared_dir, role_datasets, stage_role

    c = Costs()
    role = stage_role(p, "sfe")
    (sfe_set, sfe_splits), = role_datasets(p, role).items()
    n_sfe = _count(project / prepared_dir(role, sfe_set, sfe_splits[0]))
    e = _epoch_s(project / "runs" / "pretrain_sfe")
    if e is not None and n_sfe:
        b = p.sfe.batch_size
        c.sfe_step_s = e / n_sfe * b
        c.sources["sfe_step_s"] = (f"pretrain_sfe: 1 epoch over {n_sfe} {sfe_set} crops ({_steps(n_sfe, b)} step(s) of "
                                   f"batch <= {b}, {p.sfe.threads or 'all'} thread(s)) {e:.1f} s; per image x {b}")
    (pose, _), = role_datasets(p, "pose").items()
    n_train = _count(project / prepared_dir("pose", pose, "train"))
    n_val = _count(project / prepared_dir("pose", pose, "val"))
    b = p.train.batch_size
    e = _epoch_s(project / "runs" / "train")
    if e is not None and n_train:
        c.train_step_s = e / n_train * b
        c.sources["train_step_s"] = (f"train: 1 epoch over {n_train} {pose} crops ({_steps(n_train, b)} steps of batch "
                                     f"<= {b}) + {n_val} val, {p.train.threads or 'all'} thread(s): {e:.1f} s; per "
                                     f"image x {b} (its validation, checkpoint and warm-up included)")
    trials = project / "runs" / "ablate" / "trials"
    per_row: dict[str, list[float]] = {}
    if trials.is_dir():
        for d in sorted(trials.iterdir()):
            e = _epoch_s(d)
            row = d.name.rsplit(".seed", 1)[0]
            if e is not None and n_train and row in p.sweep.rows:
                per_row.setdefault(row, []).append(e / n_train * b)
    c.row_step_s = {row: sum(v) / len(v) for row, v in per_row.items()}
    if c.row_step_s:
        c.sources["row_step_s"] = (f"ablate: each trial's epoch ({n_train} crops + {n_val} val, 1 thread, its "
                                   f"checkpoint included) per image x {b}, mean over the row's trials")
    ev = project / "runs" / "metrics" / "evaluate.json"
    if ev.is_file():
        timings = json.loads(ev.read_text()).get("timings_ms") or {}
        if _number(timings.get("total")):
            c.forward_img_s = float(timings["total"]) / 1000.0
            c.forward_threads = os.cpu_count() or 1   # the evaluate stage leaves torch's threads as they are
            c.sources["forward_img_s"] = (f"evaluate: per-component forward, batch 1, median of 5 "
                                          f"({timings.get('device', 'cpu')}, torch's default threads)")
    fold_epochs, fold_n = [], []
    for hist in (project / "runs" / "gesture_cv").glob("**/fold-*/history.json"):
        e = _epoch_s(hist.parent)
        record = hist.parent.with_suffix(".json")
        if e is not None and record.is_file():
            n = int(json.loads(record.read_text()).get("train_size") or 0)
            if n:
                fold_epochs.append(e)
                fold_n.append(n)
    if fold_epochs:
        c.classifier_epoch_s = sum(fold_epochs) / sum(fold_n)
        c.sources["classifier_epoch_s"] = (f"gesture_cv: {len(fold_epochs)} folds' classifier epochs over their "
                                           "training samples (per sample)")
    grab_s, grab_n = 0.0, 0
    for line in lines:
        m = _MASKS_LINE.search(line)
        if m:
            grab_n += int(m.group(4)) + int(m.group(5))
            grab_s += float(m.group(7))
    if grab_n:
        workers = p.prepare.mask_workers or os.cpu_count() or 1
        c.grabcut_img_s = grab_s * min(workers, max(grab_n, 1)) / grab_n
        c.sources["grabcut_img_s"] = (f"masks: {grab_n} GrabCut masks in {grab_s:.1f} s on {workers} process(es), "
                                      "per image and process")
    n_prep = sum(_count(project / prepared_dir(r, name, split))
                 for r in ("pretrain", "pose", "gesture") for name, splits in role_datasets(p, r).items()
                 for split in splits)
    prep_s = sum(v for k, v in times.items() if k.startswith("prepare"))
    if n_prep and prep_s:
        c.prepare_img_s = prep_s / n_prep
        c.sources["prepare_img_s"] = (f"prepare stages: {prep_s:.1f} s for {n_prep} crops (process start-up "
                                      "included: an upper bound)")
    return c


# ------------------------------------------------------------------------------------------ the projection
@dataclass
class Protocol:
    """The full protocol's sizes (from the paper profile's params; :func:`protocol_of`)."""

    obman_images: int = 141550
    stb_train: int = 13500
    stb_val: int = 1500
    stb_test: int = 3000
    gesture_images: dict[str, int] = field(default_factory=lambda: {"rwth": 1160, "senz3d": SENZ3D_IMAGES})
    sfe_epochs: int = 60
    sfe_batch: int = 6
    train_epochs: int = 80
    train_batch: int = 6
    rows: list[str] = field(default_factory=list)
    seeds: int = 3
    folds: int = 10
    extra_folds: dict[str, int] = field(default_factory=dict)   # subject-aware folds run beside, per dataset
    classifier_epochs: int = 100
    test_fraction: float = 0.2
    base_reused: bool = False          # base.seed0 continues the train stage's run (not trained twice)
    sources: dict[str, str] = field(default_factory=dict)


def protocol_of(paper) -> Protocol:
    """The full protocol of the paper profile's params ``paper`` (module docstring)."""
    d, pr = paper.data, Protocol()
    syn = d.synthetic
    modes = 2 if "+" in str(getattr(d.obman, "mode", "rgb")) else 1
    pr.obman_images = int(syn.obman.get("train", pr.obman_images)) * modes
    total = int(syn.stb.get("train", 15000))
    if getattr(d.stb, "val_sequence", None):
        pr.stb_val = min(STB_FRAMES_PER_SEQUENCE, total)
        how = f"data.stb.val_sequence {d.stb.val_sequence}: one sequence of {STB_FRAMES_PER_SEQUENCE} frames"
    else:
        k = max(2, round(1.0 / d.val_fraction))
        pr.stb_val = math.ceil(total / k)
        how = f"data.val_fraction {d.val_fraction}: every {k}-th frame"
    pr.stb_train, pr.stb_test = total - pr.stb_val, int(syn.stb.get("test", 3000))
    pr.gesture_images = {"rwth": int(syn.gestures.get("all", 1160)), "senz3d": SENZ3D_IMAGES}
    pr.sfe_epochs, pr.sfe_batch = paper.sfe.epochs, paper.sfe.batch_size
    pr.train_epochs, pr.train_batch = paper.train.epochs, paper.train.batch_size
    pr.rows, pr.seeds = list(paper.sweep.rows), paper.stats.seeds
    pr.folds, pr.test_fraction, pr.classifier_epochs = paper.cv.folds, paper.cv.test_fraction, paper.gesture.epochs
    if getattr(paper.cv, "subject_folds", False):
        subjects = {"rwth": len(getattr(d.rwth, "signers", range(20))), "senz3d": 4}
        pr.extra_folds = {ds: min(pr.folds, n) for ds, n in subjects.items()}
    pr.base_reused = paper.sweep.epochs is None and paper.train.threads is not None
    pr.sources = {
        "obman_images": f"data.synthetic.obman.train ({syn.obman.get('train')}, §4.1.1) x {modes} "
                        f"(data.obman.mode {getattr(d.obman, 'mode', 'rgb')})",
        "stb": f"data.synthetic.stb train {total} / test {pr.stb_test} (§4.1.2); val = {how}",
        "gesture_images": f"RWTH data.synthetic.gestures.all ({pr.gesture_images['rwth']}, §4.1.3); Senz3D "
                          f"{SENZ3D_IMAGES} (11 x 4 x 30, §4.1.4; not a param)",
        "epochs": f"sfe.epochs {pr.sfe_epochs}, train.epochs {pr.train_epochs}, batch {pr.train_batch} (§4.3.1); "
                  f"gesture.epochs {pr.classifier_epochs}",
        "rows": f"sweep.rows ({len(pr.rows)} rows) x stats.seeds {pr.seeds}"
                + ("; base.seed0 = the train stage's run" if pr.base_reused else
                   "; base.seed0 trained again (train.threads null: the main run is not reused)"),
        "folds": f"cv.folds {pr.folds}" + (f" + subject-aware folds {pr.extra_folds}" if pr.extra_folds else ""),
    }
    return pr


def projection(c: Costs, pr: Protocol, gpus: list[dict[str, Any]] | tuple = ()) -> dict[str, Any]:
    """The full protocol's compute per part: CPU core-seconds from this CPU's measured costs, GPU seconds for each
    set of GPU figures of ``gpus`` (:func:`gpu_figures`).

    ``c``: measured costs; ``pr``: the protocol's sizes. A GPU figure set holds ``train_step_s`` (a batch step of
    the main configuration), ``forward_img_s`` and optionally ``sfe_step_s``; an SFE step without one, and every
    ablation row, is the GPU's training step scaled by its CPU cost relative to the main configuration's
    (assumption: the ratio of two configurations' costs carries over). Rows without a measured CPU cost take the
    main configuration's. Returns ``{"parts": {part: {<work>: n, "cpu_s", "cpu_only"?, "gpu_s": [per set]}},
    "cpu_core_hours" (None when a part was not measured), "cpu_core_hours_known", "gpus": [{"name", "source",
    "measured", "gpu_hours"}]}``; data preparation (GrabCut, crops) is CPU work in every case."""
    def mul(a: float | None, b: float) -> float | None:
        return None if a is None else a * b

    base_step = c.train_step_s if c.train_step_s is not None else c.row_step_s.get("base")

    def ratio(step: float | None) -> float | None:
        return None if (step is None or not base_step) else step / base_step

    fwd_core = mul(c.forward_img_s, c.forward_threads or 1)    # core-seconds of one forward image
    sfe_steps = _steps(pr.obman_images, pr.sfe_batch) * pr.sfe_epochs
    train_steps = _steps(pr.stb_train, pr.train_batch) * pr.train_epochs   # validation: inside the measured epoch
    trials = {row: pr.seeds - (1 if (row == "base" and pr.base_reused) else 0) for row in pr.rows}
    n_test_all = len(pr.rows) * pr.seeds * pr.stb_test
    n_gest = sum(pr.gesture_images.values())
    fold_samples = sum(n * (1 - pr.test_fraction) * (pr.folds + pr.extra_folds.get(ds, 0))
                       for ds, n in pr.gesture_images.items()) * pr.classifier_epochs
    n_masks = pr.obman_images + pr.stb_train + pr.stb_val + pr.stb_test
    row_cpu: float | None = 0.0
    for row, n in trials.items():
        step = c.row_step_s.get(row, base_step)
        row_cpu = None if (row_cpu is None or step is None) else row_cpu + step * train_steps * n
    parts: dict[str, dict[str, Any]] = {
        "pretrain_sfe": {"steps": sfe_steps, "cpu_s": mul(c.sfe_step_s, sfe_steps)},
        "train": {"steps": train_steps, "cpu_s": mul(base_step, train_steps)},
        "evaluate": {"images": pr.stb_test, "cpu_s": mul(fwd_core, pr.stb_test)},
        "ablate": {"trials": sum(trials.values()), "steps": sum(trials.values()) * train_steps, "cpu_s": row_cpu},
        "ablate_test": {"images": n_test_all, "cpu_s": mul(fwd_core, n_test_all)},
        "gesture_joints": {"images": n_gest, "cpu_s": mul(fwd_core, n_gest)},
        "gesture_folds": {"samples_x_epochs": int(fold_samples), "cpu_s": mul(c.classifier_epoch_s, fold_samples)},
        "masks": {"images": n_masks, "cpu_s": mul(c.grabcut_img_s, n_masks), "cpu_only": True},
        "prepare": {"images": n_masks + n_gest, "cpu_s": mul(c.prepare_img_s, n_masks + n_gest), "cpu_only": True},
    }
    for v in parts.values():
        v["gpu_s"] = []
    for g in gpus:
        g_step, g_fwd = g.get("train_step_s"), g.get("forward_img_s")
        g_sfe = g.get("sfe_step_s")
        if g_sfe is None and g_step is not None and ratio(c.sfe_step_s) is not None:
            g_sfe = g_step * ratio(c.sfe_step_s)
        g_rows: float | None = 0.0
        for row, n in trials.items():
            r = ratio(c.row_step_s.get(row, base_step))
            g_rows = None if (g_rows is None or g_step is None or r is None) else g_rows + g_step * r * train_steps * n
        gpu_s = {"pretrain_sfe": mul(g_sfe, sfe_steps), "train": mul(g_step, train_steps),
                 "evaluate": mul(g_fwd, pr.stb_test), "ablate": g_rows, "ablate_test": mul(g_fwd, n_test_all),
                 "gesture_joints": mul(g_fwd, n_gest),
                 "gesture_folds": parts["gesture_folds"]["cpu_s"]}   # a 63-input MLP: CPU-bound either way
        for part, v in parts.items():
            v["gpu_s"].append(None if v.get("cpu_only") else gpu_s[part])
    cpu = [v["cpu_s"] for v in parts.values()]
    out_gpus = []
    for i, g in enumerate(gpus):
        vals = [v["gpu_s"][i] for v in parts.values() if not v.get("cpu_only")]
        out_gpus.append({"name": g.get("name"), "source": g.get("source"), "measured": bool(g.get("measured")),
                         "gpu_hours": None if any(x is None for x in vals) else sum(vals) / 3600})
    return {"parts": parts, "cpu_core_hours": None if any(x is None for x in cpu) else sum(cpu) / 3600,
            "cpu_core_hours_known": sum(x for x in cpu if x is not None) / 3600,
            "cpu_only_core_hours": sum(v["cpu_s"] or 0.0 for v in parts.values() if v.get("cpu_only")) / 3600,
            "gpus": out_gpus}


def gpu_figures(repo: Path, p, log=None) -> list[dict[str, Any]]:
    """The GPU figure sets of :func:`projection`, measured first: the GPU check's (``runs/gpu-check/gpu_check.json``
    of a CUDA run: its batch-6 training step and bf16 inference throughput of the paper model) when there is one;
    then two more, always: the paper's GPU (GTX 1080) from the paper's own training-step and inference times (§4.3,
    pipeline/paper_results.yaml: 0.5 s per batch-6 training step of the entire framework, 89.54 ms per forward image),
    and an H100 at :data:`ASSUMED_GPU`'s share of its peak on FLOPs counted for the main configuration."""
    sets: list[dict[str, Any]] = []
    path = repo / GPU_CHECK
    if path.is_file():
        try:
            res = json.loads(path.read_text())
        except json.JSONDecodeError:
            res = {}
        figs = {f.get("key"): f.get("value") for f in res.get("figures", []) if isinstance(f, dict)}
        step_ms = figs.get("paper.train.b6.step_ms")
        img_s = figs.get("paper.infer.bf16.b64.img_s") or figs.get("paper.infer.fp32.b64.img_s")
        if not res.get("small") and _number(step_ms) and _number(img_s):
            dev = res.get("device") or {}
            name = dev.get("name") if isinstance(dev, dict) else str(dev)
            sets.append({"name": f"{name} (measured)", "measured": True, "train_step_s": float(step_ms) / 1000.0,
                         "forward_img_s": 1.0 / float(img_s),
                         "source": f"the GPU check ({path}, {res.get('date', '?')}): training step, batch 6, "
                                   f"{float(step_ms):.0f} ms (amp auto); inference {float(img_s):.0f} img/s (bf16, "
                                   "batch 64); the SFE step and each row scaled by their CPU cost ratios (assumed)"})
        elif log:
            log(f"rehearse: {path} holds no CUDA training figures (a CPU run of the check): not used")
    try:
        from pipeline.report import load_paper_results

        t = load_paper_results().get("timings_ms") or {}
    except Exception:  # noqa: BLE001 - the assumption is then left out
        t = {}
    try:
        tr = load_paper_results().get("training_s") or {}
    except Exception:  # noqa: BLE001
        tr = {}
    if _number(tr.get("stb_step")) and _number(t.get("total")):
        step, fwd = float(tr["stb_step"]), float(t["total"]) / 1000.0
        sets.append({"name": "GTX 1080 (the paper's GPU and its own timings)", "measured": False,
                     "forward_img_s": fwd, "train_step_s": step,
                     "source": f"the paper's own GTX 1080 figures: a training step of batch 6 {step} s (§4.3.1, "
                               f"~1278 s per STB epoch), a forward {t['total']} ms per image (§4.3); the SFE step "
                               "and each row scaled by their CPU cost ratios to the main configuration (assumed)"})
    flops = _forward_flops(p)
    if flops is not None:
        rate = ASSUMED_GPU["peak_tflops"] * 1e12 * ASSUMED_GPU["mfu"]
        sets.append({"name": f"{ASSUMED_GPU['device']} at {ASSUMED_GPU['mfu']:.0%} MFU", "measured": False,
                     "train_step_s": 3 * flops * p.train.batch_size / rate, "forward_img_s": flops / rate,
                     "source": f"ASSUMED: {flops / 1e9:.1f} GFLOP per forward image counted (the main "
                               f"configuration), at {ASSUMED_GPU['mfu']:.0%} of {ASSUMED_GPU['peak_tflops']:.0f} "
                               f"TFLOP/s; {ASSUMED_GPU['note']} (optimistic: launch and renderer time not counted)"})
    return sets


def _forward_flops(p) -> float | None:
    """Forward FLOPs per image of the main configuration (keyhand.model.profile on the meta device)."""
    try:
        import torch

        from keyhand.model.framework import Framework
        from keyhand.model.profile import profile

        with torch.device("meta"):
            model = Framework(p.model)
        return float(sum(v["flops"] for v in profile(model, batch_size=1).values()))
    except Exception:  # noqa: BLE001 - the projection then leaves this assumption out
        return None


# ------------------------------------------------------------------------------------------------ summary
def _hms(s: float | None) -> str:
    if s is None:
        return "—"
    s = float(s)
    return f"{s:.1f} s" if s < 60 else f"{int(s // 60)} min {s % 60:04.1f} s"


def _hours(s: float | None) -> str:
    return "—" if s is None else f"{s / 3600:,.1f}"


def summary_lines(result: dict[str, Any]) -> list[str]:
    """The printed summary (also rehearsal.md)."""
    L = ["", f"# keyhand rehearsal: the paper profile on real-layout fixtures ({result['project']})", "",
         f"Seeds per row: {result['seeds']}" + (
             f" — FEWER than the {result['min_seeds']} a verdict needs: every comparison says \"no verdict\""
             if result["seeds"] < result["min_seeds"] else "")
         + f"; rows: {len(result['rows'])} ({', '.join(result['rows'])}).",
         "Paper profile (profiles/paper.yaml via write_params) with, for this CPU: "
         + ", ".join(f"{k} {v}" for k, v in result["overrides"].items())
         + "; data.source real on the fixtures in data-fixtures/, model.mano_path their MANO_RIGHT.pkl.", "",
         "## Stage times (wall, this machine)", "", "| stage | time |", "|---|---|"]
    for name, s in result["stage_times_s"].items():
        L.append(f"| {name} | {_hms(s)} |")
    L += [f"| fixtures (written or reused) | {_hms(result['fixtures_s'])} |",
          f"| project set-up (dvc init, params) | {_hms(result['setup_s'])} |",
          f"| **total rehearsal** | **{_hms(result['total_s'])}** |", "",
          "## Per-step costs measured (this CPU)", "", "| cost | seconds | from |", "|---|---|---|"]
    c = result["costs"]
    for key in ("sfe_step_s", "train_step_s", "forward_img_s", "classifier_epoch_s", "grabcut_img_s",
                "prepare_img_s"):
        v = c.get(key)
        L.append(f"| {key} | {'—' if v is None else f'{v:.4g}'} | {c['sources'].get(key, 'not measured')} |")
    for row, v in sorted(c.get("row_step_s", {}).items()):
        L.append(f"| row_step_s[{row}] | {v:.4g} | ablate trial(s) |")
    pj, pr = result["projection"], result["protocol"]
    gpus = pj.get("gpus") or []
    L += ["", "## The full protocol's compute, projected", "",
          "Sizes (the paper profile's params): " + "; ".join(pr["sources"].values()) + ".", "",
          "| part | work | CPU core-hours (measured costs) | " + " | ".join(f"GPU-hours: {g['name']}" for g in gpus)
          + " |", "|---|---|---|" + "---|" * len(gpus)]
    for part, v in pj["parts"].items():
        work = ", ".join(f"{k} {v[k]:,}" for k in ("trials", "steps", "images", "samples_x_epochs") if k in v)
        cells = ["CPU work" if v.get("cpu_only") else _hours(x) for x in v.get("gpu_s", [])]
        L.append(f"| {part} | {work} | {_hours(v.get('cpu_s'))} | " + " | ".join(cells) + " |")
    cpu_total = pj["cpu_core_hours"]
    L.append(f"| **total** | | **{_hours(None if cpu_total is None else cpu_total * 3600)}** | "
             + " | ".join(f"**{_hours(None if g['gpu_hours'] is None else g['gpu_hours'] * 3600)}**" for g in gpus)
             + " |")
    L += ["", f"CPU: this machine's measured costs ({result['cpu']}); a training step on one core, its cost the "
              "epoch's time per training image x the batch (validation, checkpoint and warm-up included: an upper "
              "bound); forwards at the evaluate stage's threads, counted as that many cores. Data preparation "
              f"(masks, prepare: {pj['cpu_only_core_hours']:,.1f} core-hours) is CPU work with any GPU."]
    if not any(g["measured"] for g in gpus):
        L.append("GPU: NO GPU figures measured (no CUDA run of `make gpu-check` in runs/gpu-check/): the projection "
                 "is from this CPU only; the GPU-hours columns scale it by the stated assumptions.")
    for g in gpus:
        L.append(f"- {g['name']}: {g['source']}.")
    L.append(f"Report: {result['report']}.")
    if result["missing"]:
        L += ["", f"MISSING ROWS: {', '.join(result['missing'])}"]
    return L


# ------------------------------------------------------------------------------------------------- entry


def rehearse(out: str | os.PathLike = "runs/rehearse", seeds: int = 1, timeout_s: float = 1800.0,
             log=print) -> int:
    """The rehearsal (module docstring); returns the exit status (0 ok, 1 rows missing, 2 dvc repro failed)."""
    from keyhand.data.fixtures import write_fixtures
    from keyhand.stats import MIN_SEEDS_FOR_VERDICT as min_seeds
    from trainers.device import cpu_name

    t_start = time.monotonic()
    project = Path(out).resolve()
    try:
        check_project_folder(project)
    except RehearsalError as exc:
        log(f"rehearse: {exc}")
        return 2
    project.mkdir(parents=True, exist_ok=True)
    log(f"rehearse: fixtures in {project / 'data-fixtures'}")
    t0 = time.monotonic()
    fixtures = write_fixtures(project / "data-fixtures", log=log)
    fixtures_s = time.monotonic() - t0
    t0 = time.monotonic()
    env = _env(project)
    try:
        linked = make_project(project, env)
    except RehearsalError as exc:
        log(f"rehearse: {exc}")
        return 2
    params, paper = write_rehearsal_params(project / "params.yaml", fixtures, project, seeds)
    setup_s = time.monotonic() - t0
    log(f"rehearse: project {project} (links: {', '.join(linked)}); paper profile, {len(params.sweep.rows)} rows x "
        f"{params.stats.seeds} seed(s); dvc repro ...")
    rc, marks, lines = run_repro(project, env, log, timeout_s)
    times = stage_times(marks)
    report_path = project / "runs" / "report" / "report.json"
    if rc != 0:
        tail = "\n".join(lines[-40:])
        log(f"{tail}\nrehearse: dvc repro failed (exit {rc}) after {_hms(time.monotonic() - t_start)}; "
            f"full output: {project / 'rehearse.log'}")
        return 2
    report = json.loads(report_path.read_text()) if report_path.is_file() else {}
    missing = missing_rows(report) if report else ["report.json missing"]
    costs = measure(project, params, times, lines)
    pr = protocol_of(paper)
    proj = projection(costs, pr, gpu_figures(REPO, paper, log))
    total_s = time.monotonic() - t_start
    result = {"project": str(project), "seeds": params.stats.seeds, "min_seeds": int(min_seeds),
              "overrides": overrides(fixtures, project, seeds)[1], "rows": list(params.sweep.rows),
              "stage_times_s": times, "fixtures_s": fixtures_s, "setup_s": setup_s, "total_s": total_s,
              "costs": asdict(costs), "protocol": asdict(pr), "projection": proj,
              "cpu": f"{cpu_name()}, {os.cpu_count()} cores",
              "report": str(project / "runs" / "report" / "report.md"), "missing": missing}
    text = "\n".join(summary_lines(result))
    atomic_write_text(project / "rehearsal.json", json.dumps(result, indent=1, default=str))
    atomic_write_text(project / "rehearsal.md", text + "\n")
    log(text)
    if missing:
        log(f"rehearse: rows without a number for ours: {', '.join(missing)}")
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:  # pragma: no cover - the CLI is `keyhand rehearse`
    import argparse

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="runs/rehearse")
    ap.add_argument("--seeds", type=int, default=1)
    ap.add_argument("--timeout", type=float, default=1800.0)
    a = ap.parse_args(argv)
    return rehearse(a.out, a.seeds, a.timeout)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
