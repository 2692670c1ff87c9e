"""The ``keyhand`` command line: one entry per DVC stage and the tools around them.

    keyhand --help
    keyhand make-hand-model --out models/      # license-free proxy MANO_RIGHT.pkl / MANO_LEFT.pkl
    keyhand render-hand --out docs/proxy_hand.png
    keyhand make-synthetic synth-stb --out data/synth/synth-stb --split train=600 --split test=200
    keyhand contact-sheet data/synth/synth-stb --out docs/synth_stb.png
    keyhand prepare synth-stb --root data/synth/synth-stb --split train --out data/prepared/synth-stb/train
    keyhand masks data/prepared/synth-stb/train --out data/masks/synth-stb/train --workers 2
    keyhand bench mano|render|data             # benchmark figures (not timed tests)
    keyhand bench gpu --update-readme          # the prepared GPU check (pipeline/bench_gpu.py)
    keyhand pretrain-sfe --out runs/sfe [--params params.yaml] [--data data/prepared/synth-obman] [--resume]
    keyhand train --out runs/mine --sfe-checkpoint runs/sfe --epochs 3   # params.yaml, its data, 3 epochs
    keyhand train-gesture --framework runs/train --data data/prepared/synth-gestures --out runs/gesture
    keyhand evaluate --checkpoint runs/train --out runs/train/eval [--data data/prepared/synth-stb/test]
    keyhand predict hand1.jpg hand2.png --checkpoint runs/train --out predictions/ [--box x0,y0,x1,y1]
    keyhand stage train                        # one stage of dvc.yaml (reads params.yaml)
    keyhand sweep ablation --address auto --gpus-per-trial 0.25 [--resume]   # also gesture-cv, search
    keyhand params write --profile paper       # the paper's protocol into params.yaml (then: dvc repro)
    keyhand rehearse                           # that protocol on tiny real-layout fixtures, CPU, minutes
    keyhand dashboard                          # Streamlit on http://127.0.0.1:8501

Commands that train or evaluate read params.yaml (--params) and, by default, the graph's data; flags
override. They and the DVC stages run the same code (trainers.run); this module only parses arguments.
"""

from __future__ import annotations

import sys
from enum import StrEnum
from pathlib import Path

import typer

app = typer.Typer(
    help="keyhand: reproduce and extend a keypoint-based 3D hand pose/shape estimation paper.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _fail(message: str) -> None:
    """One clear line on stderr, exit status 2."""
    typer.echo(f"keyhand: {message}", err=True)
    raise typer.Exit(2)


class Side(StrEnum):
    right = "right"
    left = "left"
    both = "both"


@app.command("make-hand-model")
def make_hand_model(
    out: Path = typer.Option(Path("models/proxy"), help="Folder for MANO_RIGHT.pkl / MANO_LEFT.pkl."),
    seed: int = typer.Option(0, help="Generator seed (same seed, same file)."),
    side: Side = typer.Option(Side.both, help="Which hand(s) to write."),
) -> None:
    """Write keyhand's license-free proxy hand in MANO's pickle format."""
    from keyhand.geometry.mano import load_mano_model
    from keyhand.geometry.proxy_hand import write_proxy_hand

    sides = ["right", "left"] if side is Side.both else [side.value]
    for s in sides:
        path = write_proxy_hand(out / f"MANO_{s.upper()}.pkl", seed=seed, side=s)
        model = load_mano_model(path)
        typer.echo(f"wrote {path}: {model.v_template.shape[0]} vertices, {model.faces.shape[0]} faces, "
                   f"{model.shapedirs.shape[-1]} shape directions, {path.stat().st_size / 1e6:.2f} MB")


@app.command("render-hand")
def render_hand(
    out: Path = typer.Option(Path("docs/proxy_hand.png"), help="PNG to write."),
    model: Path = typer.Option(None, help="A MANO file (default: the proxy hand)."),
    seed: int = typer.Option(0, help="Proxy seed when no model is given."),
) -> None:
    """Render the hand model: three views, flat and in a fist."""
    from keyhand.geometry.mano import ManoFileError, load_mano_pickle, resolve_model_path
    from keyhand.geometry.proxy_hand import render_views

    try:
        data = load_mano_pickle(resolve_model_path(model, "right", seed))
    except ManoFileError as exc:
        _fail(str(exc))
    out.parent.mkdir(parents=True, exist_ok=True)
    render_views(data, out)
    typer.echo(f"wrote {out}")


def _sizes(items: list[str]) -> dict[str, int]:
    sizes = {}
    for item in items:
        name, _, n = item.partition("=")
        if not name or not n.isdigit():
            _fail(f"--split expects NAME=COUNT (e.g. train=600), got {item!r}")
        sizes[name] = int(n)
    return sizes


@app.command("make-synthetic")
def make_synthetic(
    kind: str = typer.Argument(..., help="synth-obman, synth-stb or synth-gestures."),
    out: Path = typer.Option(..., help="Dataset folder to write."),
    split: list[str] = typer.Option(["train=64", "test=16"], help="NAME=COUNT, repeatable."),
    seed: int = typer.Option(0, help="Same seed, same files."),
    height: int = typer.Option(240, help="Image height (px)."),
    width: int = typer.Option(320, help="Image width (px)."),
    subjects: int = typer.Option(4, help="Subjects of the gesture set (shape + skin tone)."),
    model: Path = typer.Option(None, help="A MANO file or folder (default: the proxy hand)."),
) -> None:
    """Render a synthetic dataset (keyhand.data.synthetic): images, exact 2D/3D joints, masks, camera."""
    from keyhand.data.synthetic import KINDS, generate
    from keyhand.geometry.mano import ManoFileError

    if kind not in KINDS:
        _fail(f"unknown synthetic dataset {kind!r}; choose one of {', '.join(KINDS)}")
    sizes = _sizes(split)
    try:
        root = generate(kind, out, sizes, seed=seed, image_size=(height, width),
                        model_path=None if model is None else str(model), num_subjects=subjects)
    except (ManoFileError, ValueError) as exc:   # ValueError: a folder of another generator version or seed
        _fail(str(exc))
    typer.echo(f"wrote {root}: " + ", ".join(f"{k} {v}" for k, v in sizes.items()))


@app.command("contact-sheet")
def contact_sheet_cmd(
    root: Path = typer.Argument(..., help="A synthetic dataset folder."),
    out: Path = typer.Option(..., help="PNG to write."),
    split: str = typer.Option("train", help="Split to show."),
    n: int = typer.Option(16, help="Number of samples."),
) -> None:
    """A PNG grid of samples with their 2D joints and skeleton drawn."""
    from keyhand.data.record import DatasetError
    from keyhand.data.synthetic import contact_sheet

    try:
        typer.echo(f"wrote {contact_sheet(root, split, out, n=n)}")
    except DatasetError as exc:
        _fail(str(exc))


@app.command("prepare")
def prepare_cmd(
    dataset: str = typer.Argument(..., help="synth-obman, synth-stb, synth-gestures, obman, stb, rwth, senz3d."),
    root: Path = typer.Option(..., help="The dataset's folder."),
    split: str = typer.Option("train", help="Split to prepare."),
    out: Path = typer.Option(..., help="Prepared split folder to write."),
    size: int = typer.Option(256, help="Crop side (px), §3.1."),
    enlarge: float = typer.Option(0.2, help="Crop enlargement, §3.1 (20 %)."),
    on_corrupt: str = typer.Option("fail", help="Corrupt images: fail, or skip with a counted warning."),
) -> None:
    """§3.1 crops of a dataset split into the prepared cache (keyhand.data.prepare)."""
    from keyhand.data.prepare import open_reader, prepare_split
    from keyhand.data.record import DatasetError

    try:
        reader = open_reader(dataset, root, split, on_corrupt=on_corrupt)
        manifest, stats = prepare_split(reader, out, image_size=size, enlarge=enlarge,
                                        params={"dataset": dataset, "split": split, "root": str(root)})
    except (DatasetError, ValueError) as exc:
        _fail(str(exc))
    typer.echo(f"wrote {out}: {manifest['count']} samples ({stats.by_joints} by joints, {stats.by_hand_box} by "
               f"hand box, {stats.whole_image} whole image, {len(stats.skipped_files)} corrupt skipped)")


@app.command("masks")
def masks_cmd(
    split_dir: Path = typer.Argument(..., help="A prepared split (keyhand prepare)."),
    out: Path = typer.Option(..., help="Folder for the GrabCut masks."),
    workers: int = typer.Option(0, help="Processes (0 = all cores)."),
    iterations: int = typer.Option(5, help="GrabCut iterations."),
) -> None:
    """§3.5 GrabCut masks of every prepared crop, in parallel and resumable."""
    from keyhand.data.prepare import compute_split_masks
    from keyhand.data.record import DatasetError

    try:
        report = compute_split_masks(split_dir, out, workers=workers or None, iterations=iterations)
    except DatasetError as exc:
        _fail(str(exc))
    typer.echo(f"wrote {out}: {report.done} GrabCut, {report.fallback} fallback, {report.skipped} already done, "
               f"{len(report.failed)} failed, {report.seconds:.1f} s")
    for key, err in report.failed[:5]:
        typer.echo(f"  failed {key}: {err}", err=True)


class Bench(StrEnum):
    mano = "mano"
    render = "render"
    data = "data"
    model = "model"
    gpu = "gpu"


@app.command("bench")
def bench(
    what: Bench = typer.Argument(..., help="Which component to benchmark (gpu: the whole prepared GPU check)."),
    device: list[str] = typer.Option(None, help="Devices (default: cpu, and cuda when present)."),
    out: Path = typer.Option(Path("runs/gpu-check"), "--out", help="gpu: folder for gpu_check.json / .md."),
    update_readme: bool = typer.Option(False, "--update-readme", help="gpu: fill README's GPU figures (CUDA only)."),
    readme: Path = typer.Option(Path("README.md"), "--readme", help="gpu: the README to fill."),
    from_json: Path = typer.Option(None, "--from-json", help="gpu: a saved gpu_check.json instead of measuring."),
    only: str = typer.Option(None, "--only", help="gpu: comma-separated sections (default: all)."),
) -> None:
    """Print benchmark figures (Markdown) for a component; `gpu` runs pipeline/bench_gpu.py's check."""
    if what is Bench.gpu:
        from pipeline.bench_gpu import run_check

        try:
            status = run_check(device[0] if device else "auto", out, update_readme, readme, from_json, only,
                               log=typer.echo)
        except ValueError as exc:
            _fail(str(exc))
        raise typer.Exit(status)
    if what is Bench.mano:
        from pipeline import bench_mano as mod

        rows = mod.run(devices=device or None)
    elif what is Bench.render:
        from pipeline import bench_render as mod

        rows = [r for d in (device or [None]) for r in mod.run(device=d)]
    elif what is Bench.data:
        from pipeline import bench_data as mod

        rows = mod.run()
    else:
        from pipeline import bench_model as mod

        rows = [r for d in (device or [None]) for r in mod.run(device=d)]
    typer.echo(mod.format_table(rows))


# ------------------------------------------------------------------------------------------ training (trainers/)
# Every command that trains or evaluates reads --params (params.yaml) for its settings and, by default, the
# data of the DVC graph; flags override. The work itself is trainers.run (the DVC stages call the same).

_PARAMS = typer.Option(Path("params.yaml"), "--params", help="The params file (params.yaml).")


def _params(path: Path, overrides: dict | None = None):
    from pipeline.params import ParamsError, load_params

    try:
        return load_params(path, overrides)
    except ParamsError as exc:
        _fail(str(exc))


def _split_dirs(data: Path, what: str = "--data") -> tuple[Path, Path | None, str | None]:
    """(train split, evaluation split or None, its name): ``data`` is a split or a folder of splits."""
    if (data / "manifest.json").is_file():
        return data, None, None
    if not (data / "train" / "manifest.json").is_file():
        _fail(f"{what} {data}: no prepared split (manifest.json) in it or in {data / 'train'}: run keyhand prepare")
    for name in ("val", "test"):
        if (data / name / "manifest.json").is_file():
            return data / "train", data / name, name
    return data / "train", None, None


def _eval_split(data: Path) -> Path:
    """A split to evaluate: ``data`` itself, else its test/ (or val/) split."""
    if (data / "manifest.json").is_file():
        return data
    for name in ("test", "val"):
        if (data / name / "manifest.json").is_file():
            return data / name
    _fail(f"--data {data}: no prepared split (manifest.json) in it or in its test/ or val/: run keyhand prepare")


def _masks(masks: Path | None, val_name: str | None) -> dict:
    if masks is None:
        return {}
    if (masks / "manifest.json").is_file():
        return {"masks_train": masks}
    out = {"masks_train": masks / "train"}
    if val_name and (masks / val_name / "manifest.json").is_file():
        out["masks_val"] = masks / val_name
    if not (out["masks_train"] / "manifest.json").is_file():
        _fail(f"--masks {masks}: no packed masks (manifest.json) in it or in {out['masks_train']}: run keyhand masks")
    return out


def _training_errors():
    from keyhand.config import ConfigError
    from keyhand.data.record import DatasetError
    from keyhand.geometry.mano import ManoFileError
    from trainers.checkpoint import CheckpointError
    from trainers.predict import PredictError
    from trainers.train import FitError

    return (FitError, CheckpointError, ConfigError, DatasetError, ManoFileError, PredictError, ValueError)


def _fit_cmd(stage: str, params: Path, data: Path | None, masks: Path | None, out: Path, resume: bool,
             epochs: int | None, device: str, sfe_checkpoint: str | None = None, framework: Path | None = None) -> None:
    from pipeline.stages.common import stage_role
    from pipeline.stages.runs import stage_data
    from trainers.run import StageData, fit_stage

    p = _params(params, {f"{stage}.epochs": epochs} if epochs is not None else None)
    if data is None:
        sd = stage_data(p, stage_role(p, stage), with_val=stage != "sfe")
    else:
        train_dir, val_dir, val_name = _split_dirs(data)
        sd = StageData(train=train_dir, val=val_dir, **_masks(masks, val_name))
    sfe_init = None if sfe_checkpoint in (None, "none") or p.model.sfe == "none" else Path(sfe_checkpoint)
    try:
        result = fit_stage(p.train_config(), stage, sd, out, sfe_init=sfe_init, framework=framework,
                           resume="require" if resume else "auto", device=device)
    except KeyboardInterrupt:
        from trainers.checkpoint import latest

        _fail(f"interrupted: the last complete epoch is kept in {latest(out) or out}; run again to continue")
    except _training_errors() as exc:
        _fail(str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__)
    shown = ", ".join(f"{k}={v:.4g}" for k, v in result.metrics.items()
                      if k.startswith(("train/total", "val/")) and isinstance(v, float))
    ran = (f"ran epochs {result.start_epoch + 1}-{result.start_epoch + result.epochs_run}" if result.epochs_run
           else f"nothing to run ({len(result.history)} epochs done)")
    typer.echo(f"{stage}: {ran} into {out} (identity {result.params_hash}, checkpoint {result.checkpoint})"
               f"{': ' + shown if shown else ''}")


_OUT = typer.Option(..., "--out", help="Run folder: checkpoints, history.json.")
_RESUME = typer.Option(False, "--resume", help="Refuse (one line) unless --out is empty or holds a run of the same "
                                               "identity. Without it, a run of the same identity is continued and any "
                                               "other is moved to <out>.previous before a fresh start.")
_EPOCHS = typer.Option(None, "--epochs", help="Override the stage's number of epochs (params.yaml <stage>.epochs).")
_DEVICE = typer.Option("auto", "--device", help="auto (CUDA when present), cpu, cuda, cuda:1 ...")
_MASKS = typer.Option(None, "--masks", help="GrabCut masks (keyhand masks): a folder or one with train/ val|test/.")
_DATA = typer.Option(None, "--data", help="Prepared split, or a folder with train/ (and val/ or test/); default: "
                                          "the params' data under data/prepared (with data/masks).")


@app.command("pretrain-sfe")
def pretrain_sfe_cmd(
    out: Path = _OUT, params: Path = _PARAMS, data: Path = _DATA, masks: Path = _MASKS, resume: bool = _RESUME,
    epochs: int = _EPOCHS, device: str = _DEVICE,
) -> None:
    """SFE pretraining (§4.1.1): L_SFE (Eqs. 13-14) on the set data.sfe_on names; only the SFE's weights change."""
    _fit_cmd("sfe", params, data, masks, out, resume, epochs, device)


@app.command("train")
def train_cmd(
    out: Path = _OUT, params: Path = _PARAMS, data: Path = _DATA, masks: Path = _MASKS,
    sfe_checkpoint: str = typer.Option("runs/pretrain_sfe", "--sfe-checkpoint",
                                       help="Pretrained SFE (a pretrain-sfe run or .pt); 'none' = start from the "
                                            "seeded initialisation."),
    resume: bool = _RESUME, epochs: int = _EPOCHS, device: str = _DEVICE,
) -> None:
    """Full training with the multi-task loss (Eq. 12), evaluated (EPE, AUC) after every epoch."""
    _fit_cmd("train", params, data, masks, out, resume, epochs, device, sfe_checkpoint=sfe_checkpoint)


@app.command("train-gesture")
def train_gesture_cmd(
    out: Path = _OUT, params: Path = _PARAMS,
    framework: Path = typer.Option(Path("runs/train"), "--framework", help="The trained framework (a run or .pt)."),
    data: Path = _DATA, resume: bool = _RESUME, epochs: int = _EPOCHS, device: str = _DEVICE,
) -> None:
    """The §4.3.3 gesture classifier on the frozen framework's 3D joints (computed once per split)."""
    _fit_cmd("gesture", params, data, None, out, resume, epochs, device, framework=framework)


@app.command("evaluate")
def evaluate_cmd(
    out: Path = typer.Option(..., "--out", help="Folder for metrics.json, predictions.npz and panels."),
    params: Path = _PARAMS,
    checkpoint: Path = typer.Option(Path("runs/train"), "--checkpoint", help="A framework checkpoint or run folder."),
    data: Path = typer.Option(None, "--data", help="Prepared split to evaluate (or a folder with test/); default: "
                                                   "the params' pose test split."),
    panels: int = typer.Option(None, "--panels", help="Fig. 6 panels (default: params.yaml evaluate.panels)."),
    batch_size: int = typer.Option(None, "--batch-size", help="Batch size (default: params.yaml train.batch_size)."),
    device: str = _DEVICE,
) -> None:
    """3D EPE, PCK (20-50 mm) and AUC on a split (§4.3), per-sample predictions and Fig. 6 panels."""
    from keyhand.atomic import atomic_write_json
    from pipeline.stages.runs import test_split
    from trainers.run import evaluate_checkpoint

    p = _params(params)
    if data is None:
        test, test_masks = test_split(p, "pose")   # evaluation reads the test split (training monitors val)
        split, split_masks = test, str(test_masks)
    else:
        split, split_masks = _eval_split(data), None
    try:
        ev = evaluate_checkpoint(checkpoint, split, masks=split_masks, out=out, device=device, progress=True,
                                 batch_size=batch_size or p.train.batch_size,
                                 panels=p.evaluate.panels if panels is None else panels)
    except _training_errors() as exc:
        _fail(str(exc).strip().splitlines()[0])
    metrics = ev.metrics
    atomic_write_json(out / "metrics.json", {"checkpoint": str(ev.checkpoint), "split": str(split), **metrics},
                      indent=1)
    typer.echo(f"{split}: EPE {metrics.get('epe_mean', float('nan')):.2f} mm (median "
               f"{metrics.get('epe_median', float('nan')):.2f}), AUC 20-50 mm {metrics.get('auc', float('nan')):.3f}"
               f" over {metrics['count']} samples; wrote {out / 'metrics.json'}, {len(ev.panels)} panels")


def _box(text: str | None) -> tuple[float, ...] | None:
    if text is None:
        return None
    try:
        box = tuple(float(v) for v in text.split(","))
    except ValueError:
        box = ()
    if len(box) != 4:
        _fail(f"--box expects x0,y0,x1,y1 in image pixels, got {text!r}")
    return box


@app.command("predict")
def predict_cmd(
    images: list[Path] = typer.Argument(..., help="Image files (RGB)."),
    checkpoint: Path = typer.Option(..., "--checkpoint", help="A framework checkpoint (.pt) or its run folder."),
    out: Path = typer.Option(Path("predictions"), "--out", help="Folder for JSON, .obj and panel PNG per image."),
    box: str = typer.Option(None, "--box", help="Hand box x0,y0,x1,y1 (px; enlarged 20 %); default: centre square."),
    device: str = _DEVICE,
) -> None:
    """2D/3D joints, mesh and a Fig. 6 panel per image, with SFE / VE / HE times (§4.3)."""
    from trainers.predict import load_model, predict_images

    try:
        model, _ = load_model(checkpoint, device)
        results = predict_images(model, images, out, box=_box(box))
    except _training_errors() as exc:
        _fail(str(exc).strip().splitlines()[0])
    for r in results:
        t = r["times_ms"]
        typer.echo(f"{r['image']}: wrote {', '.join(Path(f).name for f in r['files'].values())}; "
                   f"SFE {t['sfe']:.1f} ms, VE {t['ve']:.1f} ms, HE {t['he']:.1f} ms, total {t['total']:.1f} ms "
                   f"({r['device']})")


# ------------------------------------------------------------------------------ the experiment graph (dvc.yaml)

def _stage_errors() -> tuple[type[BaseException], ...]:
    from keyhand.data.record import DatasetError
    from keyhand.geometry.mano import ManoFileError
    from pipeline.params import ParamsError
    from pipeline.stages import StageError
    from trainers.checkpoint import CheckpointError
    from trainers.tracking import TrackingError

    errors: list[type[BaseException]] = [DatasetError, ManoFileError, ParamsError, StageError, CheckpointError,
                                         TrackingError, *_training_errors()]
    try:
        from trainers.sweep import SweepError

        errors.append(SweepError)
    except ImportError:  # pragma: no cover - ray missing
        pass
    return tuple(errors)


@app.command("stage")
def stage_cmd(
    name: str = typer.Argument(..., help="synthetic, prepare, masks, pretrain-sfe, train, evaluate, ablate, "
                                         "gesture-cv, report (the stages of dvc.yaml)."),
    role: str = typer.Argument(None, help="Data role of prepare / masks: pretrain, pose, gesture."),
    params: Path = _PARAMS,
) -> None:
    """Run one stage of the experiment graph (what `dvc repro` calls; pipeline/stages/)."""
    from pipeline.stages import run_stage

    p = _params(params)
    try:
        run_stage(name, p, role)
    except _stage_errors() as exc:
        _fail(f"stage {name}{' ' + role if role else ''}: {str(exc).strip().splitlines()[0]}")


class Sweep(StrEnum):
    ablation = "ablation"
    gesture_cv = "gesture-cv"
    search = "search"


@app.command("sweep")
def sweep_cmd(
    what: Sweep = typer.Argument(..., help="ablation (Tables 1-4 rows), gesture-cv (the folds) or search (Optuna)."),
    address: str = typer.Option(None, "--address", help="Ray cluster: auto (this machine's), HEAD:6379 (the head's "
                                                         "GCS port) or ray://HEAD:10001 (Ray Client); default: "
                                                         "params.yaml ray.address, else a local Ray."),
    tracking_uri: str = typer.Option(None, "--tracking-uri", help="MLflow tracking server, e.g. http://HEAD:5000 "
                                                                  "(overrides mlflow.tracking_uri). Required on a "
                                                                  "multi-node cluster unless --tracking-server."),
    tracking_server: str = typer.Option(None, "--tracking-server", metavar="[HOST:]PORT",
                                        help="Start `mlflow server --workers 1` on this machine (the head), bound "
                                             "to HOST:PORT (127.0.0.1:5000 this machine only, 0.0.0.0:5000 every "
                                             "interface), serving the project's SQLite store and artifacts; trials "
                                             "log to it; it is stopped when the sweep ends (log: "
                                             "runs/mlflow-server.log)."),
    storage_path: str = typer.Option(None, "--storage-path", help="Ray Tune's storage (trial results, checkpoints, "
                                                                  "resume state): a folder every node sees, or an "
                                                                  "s3:// / gs:// URI (overrides ray.storage_path; "
                                                                  "default runs/ray)."),
    gpus_per_trial: float = typer.Option(None, "--gpus-per-trial", help="e.g. 0.25 packs four trials on a GPU."),
    cpus_per_trial: float = typer.Option(None, "--cpus-per-trial"),
    max_failures: int = typer.Option(None, "--max-failures", help="Retries of a failed trial (a trial whose node "
                                                                  "died counts one)."),
    resume: bool = typer.Option(False, "--resume", help="Continue an interrupted sweep of the same inputs: "
                                                        "finished trials are kept, the same MLflow parent reused."),
    progress_every: float = typer.Option(None, "--progress-every", metavar="SECONDS",
                                         help="Period of the progress summary (default 30; 0: trial events only)."),
    verbose: int = typer.Option(0, "--verbose", "-v", count=True, help="Also show Ray Tune's own status table "
                                                                       "(-vv: more)."),
    params: Path = _PARAMS,
) -> None:
    """Spread a sweep over Ray Tune workers (one MLflow parent run, one child per trial).

    Progress: a line per trial event (started on node X, finished, failed and retried) and a periodic summary.

    Several nodes: a store or storage other nodes cannot reach is refused; every node is probed first.

    Ray 2.60 token auth: give this driver the head's token (RAY_AUTH_TOKEN_PATH=FILE or RAY_AUTH_TOKEN).

    Step by step: README, "Running on a GPU cluster".
    """
    import os

    from pipeline.stages import stage_ablate, stage_gesture_cv, stage_search

    overrides: dict = {"sweep": {k: v for k, v in (("gpus_per_trial", gpus_per_trial),
                                                    ("cpus_per_trial", cpus_per_trial),
                                                    ("max_failures", max_failures)) if v is not None}}
    if address is not None:
        overrides["ray"] = {"address": address}
    if storage_path is not None:
        overrides.setdefault("ray", {})["storage_path"] = storage_path
    if tracking_uri is not None and tracking_server is not None:
        _fail("--tracking-uri and --tracking-server: give one (the server started here is the tracking URI)")
    if tracking_uri is not None:
        overrides["mlflow"] = {"tracking_uri": tracking_uri}
    if progress_every is not None:
        os.environ["KEYHAND_SWEEP_PROGRESS_S"] = str(progress_every)
    if verbose:
        os.environ["KEYHAND_SWEEP_VERBOSE"] = str(verbose)
    p = _params(params, overrides)
    fn = {Sweep.ablation: stage_ablate, Sweep.gesture_cv: stage_gesture_cv, Sweep.search: stage_search}[what]
    server = None
    try:
        if tracking_server is not None:
            server = _start_tracking_server(tracking_server, p)
            p = _params(params, {**overrides, "mlflow": {"tracking_uri": server.url}})
        fn(p, resume=resume)
    except _stage_errors() as exc:
        _fail(f"sweep {what.value}: {str(exc).strip().splitlines()[0]}")
    finally:
        if server is not None:
            server.stop()
            typer.echo(f"tracking server {server.url} stopped")


def _start_tracking_server(bind: str, p):
    """``keyhand sweep --tracking-server``: the project's SQLite store served by ``mlflow server`` on this machine."""
    from trainers.cluster import ClusterError, TrackingServer
    from trainers.sweep import _parse_host_port
    from trainers.tracking import resolve_tracking_uri

    store = resolve_tracking_uri(p.mlflow.tracking_uri, Path.cwd())
    if not store.startswith("sqlite:///"):
        _fail(f"--tracking-server serves the project's SQLite store, but the tracking URI is already {store}; "
              "drop --tracking-server (or use --tracking-uri)")
    head = _parse_host_port(p.ray.address) if p.ray.address and p.ray.address != "auto" else None
    try:
        server = TrackingServer(bind, store, log_path=Path("runs") / "mlflow-server.log",
                                advertise_towards=head[0] if head else None)
    except ValueError as exc:
        _fail(str(exc))
    try:
        url = server.start()
    except ClusterError as exc:
        _fail(str(exc))
    typer.echo(f"tracking server: {url} (pid {server.pid}, bound to {server.host}:{server.port}, store {store}); "
               "stopped when the sweep ends")
    return server


@app.command("rehearse")
def rehearse_cmd(
    out: Path = typer.Option(Path("runs/rehearse"), "--out", help="The rehearsal's project folder (its data/ and "
                                                                   "runs/ are replaced; data-fixtures/ is reused)."),
    seeds: int = typer.Option(1, "--seeds", min=1, help="stats.seeds of every row (1: no verdict, fits minutes)."),
    timeout: float = typer.Option(1800.0, "--timeout", help="Stop dvc repro after this many seconds."),
) -> None:
    """The paper's protocol rehearsed on CPU: fixtures in the datasets' layouts, dvc repro, every table row checked,
    stage times and the full protocol's projected GPU-hours (pipeline/rehearse.py)."""
    from pipeline.rehearse import rehearse

    raise typer.Exit(rehearse(out, seeds, timeout, log=typer.echo))


params_app = typer.Typer(help="Write or show params.yaml (profiles: the YAML overlays in profiles/).",
                         no_args_is_help=True)
app.add_typer(params_app, name="params")


@params_app.command("write")
def params_write(
    profile: str = typer.Option("default", help="A profile of profiles/: default (synthetic, 2-core CPU), paper (the "
                                "paper's protocol), paper-keyhand-weights (the paper with keyhand's Eq. 12 weights)."),
    params: Path = _PARAMS,
    keep_local: bool = typer.Option(True, help="Keep data roots, MANO path, Ray address and MLflow URI."),
) -> None:
    """Write a complete params file for a profile (then: dvc repro)."""
    from pipeline.params import ParamsError, write_params

    try:
        write_params(params, profile, keep_local=keep_local)
    except ParamsError as exc:
        _fail(str(exc))
    typer.echo(f"wrote {params} (profile {profile})")


@params_app.command("show")
def params_show(params: Path = _PARAMS) -> None:
    """Print the validated params (keys the file leaves out filled from the default profile) as YAML."""
    from pipeline.params import render_params

    typer.echo(render_params(_params(params)))


@app.command("dashboard")
def dashboard_cmd(
    params: Path = _PARAMS,
    port: int = typer.Option(8501, "--port", help="Port on 127.0.0.1."),
    address: str = typer.Option("127.0.0.1", "--address", help="Interface to bind (default: this machine only)."),
) -> None:
    """The Streamlit results dashboard: the paper's tables beside ours, PCK curves, folds, meshes, runs."""
    from dashboards.launch import launch  # the dashboards layer sits above pipeline: imported only here

    raise typer.Exit(launch(str(params), port, address))


def main() -> None:  # pragma: no cover - console entry
    app(prog_name="keyhand")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
