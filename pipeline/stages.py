"""The DVC stages: one thin function per stage of ``dvc.yaml``, run as ``keyhand stage <name> [role]``.

    keyhand stage synthetic                 # data/synth/<dataset>          (synthetic source only)
    keyhand stage prepare pose              # data/prepared/pose/<dataset>/<split>   (§3.1 crops, cache)
    keyhand stage masks pose                # data/masks/pose/<dataset>/<split>      (§3.5 GrabCut)
    keyhand stage pretrain-sfe              # runs/pretrain_sfe   (checkpoints)  runs/metrics/pretrain_sfe.json
    keyhand stage train                     # runs/train          (checkpoints)  runs/metrics/train.json
    keyhand stage evaluate                  # runs/evaluate (panels, predictions) runs/metrics/{evaluate,pck}.json
    keyhand stage ablate                    # runs/ablate (Ray Tune: Tables 1-4)  runs/metrics/ablation.json
    keyhand stage gesture-cv                # runs/gesture_cv (Ray Tune: folds)   runs/metrics/gesture_cv.json
    keyhand stage report                    # runs/report/report.{md,json}: the paper's tables beside ours

Data roles: ``pretrain`` (SFE pretraining: synth-obman | ObMan), ``pose`` (training and evaluation:
synth-stb | STB) and ``gesture`` (synth-gestures | RWTH + Senz3D). Every path is relative to the project
folder (where ``dvc repro`` runs). Each stage records one MLflow run (a sweep: a parent and one child per
trial) in the experiment ``mlflow.experiments[<stage>]``.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

from pipeline.params import Params, flatten

__all__ = ["ROLES", "StageError", "run_stage", "STAGES"]

ROLES = ("pretrain", "pose", "gesture")
DATA = Path("data")
RUNS = Path("runs")
METRICS = RUNS / "metrics"


class StageError(RuntimeError):
    """A stage cannot run: one line saying why and what to do."""


# ------------------------------------------------------------------------------------------------ helpers

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


# ------------------------------------------------------------------------------------------------- stages

def stage_synthetic(p: Params) -> None:
    """Generate the synthetic datasets (synthetic source); with real data, write a note and nothing else."""
    from keyhand.data.synthetic import generate

    root = DATA / "synth"
    root.mkdir(parents=True, exist_ok=True)
    if p.data.source != "synthetic":
        (root / "SOURCE.txt").write_text("data.source is 'real': no synthetic data generated\n")
        return
    s = p.data.synthetic
    sizes = {"synth-obman": s.obman, "synth-stb": s.stb, "synth-gestures": s.gestures}
    for name, split_sizes in sizes.items():
        print(f"synthetic: {name} {split_sizes}")
        generate(name, root / name, dict(split_sizes), seed=s.seed, image_size=(s.height, s.width),
                 model_path=p.model.mano_path, num_subjects=s.subjects)
    (root / "SOURCE.txt").write_text("data.source is 'synthetic'\n")


def stage_prepare(p: Params, role: str) -> None:
    """§3.1 crops of every split of the role's datasets into the prepared cache."""
    from keyhand.data.prepare import open_reader, prepare_split

    for name, splits in role_datasets(p, role).items():
        root = p.dataset_root(name)
        for split in splits:
            reader = open_reader(name, root, split, on_corrupt=p.data.on_corrupt)
            out = prepared_dir(role, name, split)
            manifest, stats = prepare_split(reader, out, image_size=p.model.image_size, enlarge=p.prepare.enlarge,
                                            sigma=p.prepare.sigma,
                                            params={"dataset": name, "split": split, "root": str(root)})
            print(f"prepare {role}: {name}/{split}: {manifest['count']} samples ({stats.by_joints} by joints, "
                  f"{stats.by_hand_box} by hand box, {stats.whole_image} whole image)")


def stage_masks(p: Params, role: str) -> None:
    """§3.5 GrabCut masks of every prepared split of the role (parallel, resumable)."""
    from keyhand.data.prepare import compute_split_masks

    for name, splits in role_datasets(p, role).items():
        for split in splits:
            report = compute_split_masks(prepared_dir(role, name, split), masks_dir(role, name, split),
                                         workers=p.prepare.mask_workers or None,
                                         iterations=p.prepare.mask_iterations)
            print(f"masks {role}: {name}/{split}: {report.done} GrabCut, {report.fallback} fallback, "
                  f"{len(report.failed)} failed, {report.seconds:.1f} s")


def _loaders(p: Params, cfg, stage: str, role: str, with_val: bool):
    from trainers.train import make_loaders

    (name, splits), = role_datasets(p, role).items()
    train = prepared_dir(role, name, splits[0])
    val = prepared_dir(role, name, splits[1]) if with_val and len(splits) > 1 else None
    masks = {"train": masks_dir(role, name, splits[0])}
    if val is not None:
        masks["val"] = masks_dir(role, name, splits[1])
    return make_loaders(cfg, stage, train, val, masks=masks), name


def _fit_stage(p: Params, stage: str, out: Path, role: str, metrics_file: Path,
               sfe_checkpoint: Path | None = None) -> dict:
    from trainers.config import run_hash
    from trainers.tracking import MlflowCallback, tracked_run
    from trainers.train import build_framework, data_hash, fit, load_sfe_weights

    _tracking(p)  # an unreachable tracking server fails before any work
    cfg = p.train_config()
    loaders, dataset = _loaders(p, cfg, stage, role, with_val=stage == "train")
    model = build_framework(cfg)
    if sfe_checkpoint is not None and model.sfe is not None:
        load_sfe_weights(model, sfe_checkpoint)
    data = {s: data_hash(ld) for s, ld in loaders.items()}
    resume = _fresh_or_resume(out, stage, run_hash(cfg, stage, data))
    exp = "pretrain_sfe" if stage == "sfe" else "train"
    with tracked_run(_experiment(p, exp), run_name=exp, params=flatten(cfg), stage=exp,
                     tags={"keyhand.dataset": dataset}):
        result = fit(stage, model, loaders, cfg, out, resume=resume, callbacks=[MlflowCallback()])
    summary = {"stage": exp, "dataset": dataset, "epochs": len(result.history), **result.metrics}
    _write_json(metrics_file, summary)
    _write_json(METRICS / f"{exp}_history.json", result.history)
    return summary


def stage_pretrain_sfe(p: Params) -> None:
    """SFE pretraining (§4.1.1) on the pretrain role (L_SFE only)."""
    if p.model.sfe == "none":
        out = RUNS / "pretrain_sfe"
        out.mkdir(parents=True, exist_ok=True)
        _write_json(METRICS / "pretrain_sfe.json", {"stage": "pretrain_sfe", "skipped": "model.sfe is 'none'"})
        _write_json(METRICS / "pretrain_sfe_history.json", [])
        return
    _fit_stage(p, "sfe", RUNS / "pretrain_sfe", "pretrain", METRICS / "pretrain_sfe.json")


def _sfe_checkpoint() -> Path | None:
    from trainers.checkpoint import latest

    return latest(RUNS / "pretrain_sfe")


def stage_train(p: Params) -> None:
    """Full training (Eq. 12) on the pose role, starting from the pretrained SFE (Table 1, last row)."""
    _fit_stage(p, "train", RUNS / "train", "pose", METRICS / "train.json", sfe_checkpoint=_sfe_checkpoint())


def stage_evaluate(p: Params) -> None:
    """EPE, AUC and the PCK curve on the pose test split; Fig. 6 panels; per-component inference times."""
    import numpy as np
    import torch

    from keyhand.model.profile import time_components
    from trainers.checkpoint import latest
    from trainers.predict import load_model, split_panels
    from trainers.tracking import log_evaluation, log_image, tracked_run
    from trainers.train import evaluate, make_loader, open_split, save_predictions

    _tracking(p)
    ckpt = latest(RUNS / "train")
    if ckpt is None:
        raise StageError(f"{RUNS / 'train'} holds no checkpoint: run the train stage first (dvc repro)")
    model, _ = load_model(ckpt, device="auto")
    cfg = p.train_config()
    (name, splits), = role_datasets(p, "pose").items()
    ds = open_split(prepared_dir("pose", name, splits[-1]), cfg, "train", train=False,
                    masks_dir=masks_dir("pose", name, splits[-1]))
    loader = make_loader(ds, cfg.train.batch_size, shuffle=False, seed=cfg.train.seed)
    metrics = evaluate(model, loader)
    predictions = metrics.pop("predictions", None)
    out = RUNS / "evaluate"
    out.mkdir(parents=True, exist_ok=True)
    if predictions is not None:
        save_predictions(out / "predictions.npz", predictions)
    # Fig. 6 panels: the best, median and worst samples by EPE, then the first ones
    order = np.argsort(np.nan_to_num(predictions["epe"], nan=np.inf)) if predictions is not None else []
    picks = list(dict.fromkeys([int(order[0]), int(order[len(order) // 2]), int(order[-1])] if len(order) else []))
    picks = [*picks, *[i for i in range(len(ds)) if i not in picks]][: p.evaluate.panels]
    panels = split_panels(model, ds, picks, out / "panels") if picks else []
    device = next(model.parameters()).device
    times = time_components(model, batch_size=1, device=device, repeats=5)
    timings = {k: round(float(v), 3) for k, v in times.items()}
    timings["device"] = torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({os.cpu_count()} cores)"
    timings["model"] = (f"{cfg.model.image_size}² input, SFE width {cfg.model.sfe_channels}, VE input "
                        f"{cfg.model.ve_input_size}² (the paper's: 256², 256, 256²)")
    summary = {k: metrics[k] for k in ("epe_mean", "epe_median", "auc", "auc_0_50", "count") if k in metrics}
    summary["dataset"] = f"{name}/{splits[-1]}"
    summary["timings_ms"] = timings
    with tracked_run(_experiment(p, "evaluate"), run_name="evaluate", params=flatten(cfg), stage="evaluate",
                     tags={"keyhand.dataset": summary["dataset"], "keyhand.checkpoint": str(ckpt)}):
        log_evaluation(metrics)
        for path in panels:
            log_image(path, f"panels/{path.name}")
    _write_json(METRICS / "evaluate.json", summary)
    pck = metrics.get("pck", {"thresholds_mm": [], "values": []})
    _write_json(METRICS / "pck.json", [{"threshold_mm": round(float(t), 3), "pck": float(v)}
                                       for t, v in zip(pck["thresholds_mm"], pck["values"], strict=True)])


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


def stage_ablate(p: Params, resume: bool = True) -> None:
    """The Tables 1-4 grid (``sweep.rows``) through Ray Tune: one trial per row, EPE and AUC per row."""
    from trainers.sweep import ablation_space, run_sweep
    from trainers.trials import ablation_trial

    common = _sweep_common(p)  # tracking server and Ray cluster first: an unreachable one fails at once
    rows = dict(p.sweep.rows)
    if not rows:
        raise StageError("params.yaml: sweep.rows is empty: name at least one ablation row")
    configs, pretrained = {}, {}
    for row in rows:
        cfg, pre = p.ablation_config(row)
        configs[row], pretrained[row] = cfg.model_dump(), pre
    sfe = _sfe_checkpoint()
    if any(pretrained.values()) and sfe is None:
        raise StageError(f"{RUNS / 'pretrain_sfe'} holds no checkpoint: run the pretrain_sfe stage first")
    out = (RUNS / "ablate").resolve()
    spec = {"configs": configs, "pretrained": pretrained, "data": _pose_data(p),
            "sfe_checkpoint": None if sfe is None else str(sfe.resolve()), "out": str(out / "trials")}
    files = [f for d in spec["data"].values() for f in _split_files(d)] + ([sfe] if sfe else [])
    name = f"ablation-{_content_hash(spec, files)}"
    result = run_sweep(name, ablation_trial, {**ablation_space(rows), "spec": spec}, kind="grid",
                       metric="epe_mean", mode="min", out_dir=out, experiment=_experiment(p, "ablation"),
                       parent_run_name="ablation", parent_params=flatten(p.sweep.base), resume=resume,
                       **common)
    table = {}
    for r in result.rows:
        m = r.get("metrics") or {}
        table[r["label"]] = {"status": r["status"], "epe_mean": m.get("epe_mean"), "auc": m.get("auc"),
                             "epochs": m.get("epoch"), "error": r.get("error")}
    failed = [k for k, v in table.items() if v["status"] != "FINISHED"]
    _write_json(METRICS / "ablation.json", {"rows": table, "failed": failed,
                                             "best": (result.best or {}).get("label")})
    print(f"ablate: {len(table) - len(failed)}/{len(table)} rows finished" + (f"; failed: {failed}" if failed else ""))


def stage_search(p: Params, resume: bool = True) -> None:
    """Optuna + ASHA over ``sweep.search.space`` (lr, weight decay, loss weights) on the full configuration."""
    from trainers.sweep import run_sweep, search_space
    from trainers.trials import search_trial

    common = _sweep_common(p)
    s = p.sweep.search
    try:
        space = search_space(s.space)
    except ValueError as exc:
        raise StageError(f"params.yaml: sweep.{exc}") from None
    sfe = _sfe_checkpoint() if p.model.sfe != "none" else None
    out = (RUNS / "search").resolve()
    spec = {"base": p.train_config().model_dump(), "data": _pose_data(p), "out": str(out / "trials"),
            "sfe_checkpoint": None if sfe is None else str(sfe.resolve())}
    files = [f for d in spec["data"].values() for f in _split_files(d)] + ([sfe] if sfe else [])
    name = f"search-{_content_hash({**spec, 'search': s.model_dump()}, files)}"
    result = run_sweep(name, search_trial, {"spec": spec}, kind="search", search_space=space, metric=s.metric,
                       mode=s.mode, num_samples=s.num_samples, out_dir=out, experiment=_experiment(p, "search"),
                       parent_run_name="search", parent_params=flatten(s.model_dump(), "search."), resume=resume,
                       asha={"max_t": p.train.epochs, "grace_period": s.grace_period,
                             "reduction_factor": s.reduction_factor, "time_attr": "epoch"}, **common)
    best = result.best or {}
    _write_json(METRICS / "search.json", {"best": best.get("label"), "best_metrics": best.get("metrics"),
                                          "trials": len(result.rows), "failed": [r["label"] for r in result.failed]})
    print(f"search: {len(result.rows)} trials; best {best.get('label')} "
          f"({s.metric} {((best.get('metrics') or {}).get(s.metric))})")


def stage_gesture_cv(p: Params, resume: bool = True) -> None:
    """§4.3.3: per gesture dataset, the frozen framework's 3D joints once, then the CV folds through Ray Tune."""
    import numpy as np
    import torch

    from trainers.checkpoint import latest
    from trainers.predict import load_model
    from trainers.sweep import folds_space, run_sweep
    from trainers.train import framework_joints, make_loader, num_gesture_classes, open_split
    from trainers.trials import fold_trial

    common = _sweep_common(p)  # tracking server and Ray cluster first: an unreachable one fails at once
    ckpt = latest(RUNS / "train")
    if ckpt is None:
        raise StageError(f"{RUNS / 'train'} holds no checkpoint: run the train stage first (dvc repro)")
    framework, _ = load_model(ckpt, device="auto")
    cfg = p.train_config()
    summary: dict[str, Any] = {}
    for name, splits in role_datasets(p, "gesture").items():
        ds = open_split(prepared_dir("gesture", name, splits[0]), cfg, "gesture", train=False)
        out = (RUNS / "gesture_cv" / name).resolve()
        out.mkdir(parents=True, exist_ok=True)
        data = framework_joints(framework, make_loader(ds, 32, shuffle=False))
        subjects = torch.as_tensor([int(ds.raw(i)["subject"]) for i in range(len(ds))], dtype=torch.long)
        data["subject"] = subjects
        joints_file = out / "joints.pt"
        torch.save(data, joints_file)
        num_classes = num_gesture_classes(ds)
        names = ds.manifest.get("gesture_names") or {}
        class_names = [str(names.get(str(k), k)) for k in range(num_classes)]
        if p.cv.mode == "subject" and bool((subjects < 0).any()):
            raise StageError(f"cv.mode is 'subject' but {name} has samples without a subject")
        spec = {"joints": str(joints_file), "cv": p.cv.model_dump(), "gesture": cfg.gesture.model_dump(),
                "classifier": cfg.classifier.model_dump(), "num_classes": num_classes, "out": str(out / "folds")}
        tune_name = f"gesture-cv-{name}-{_content_hash(spec, [joints_file])}"
        result = run_sweep(tune_name, fold_trial, {**folds_space(p.cv.folds), "spec": spec},
                           kind="grid", metric="accuracy", mode="max", out_dir=out,
                           experiment=_experiment(p, "gesture_cv"), parent_run_name=f"gesture-cv {name}",
                           parent_params={"dataset": name, **flatten(p.cv, "cv.")}, resume=resume, **common)
        folds = []
        for k in range(p.cv.folds):
            f = out / "folds" / f"fold-{k}.json"
            if f.is_file():
                folds.append(json.loads(f.read_text()))
        acc = [f["accuracy"] for f in folds]
        confusion = np.sum([np.asarray(f["confusion"]) for f in folds], axis=0) if folds else np.zeros((0, 0))
        summary[name] = {"fold_accuracies": acc, "mean": float(np.mean(acc)) if acc else None,
                         "std": float(np.std(acc)) if acc else None, "folds": len(acc),
                         "failed": [r["label"] for r in result.failed], "class_names": class_names,
                         "chance": 1.0 / max(num_classes, 1),
                         "confusion": confusion.tolist()}
        if result.parent_run_id and acc:
            from trainers.tracking import log_gesture_cv

            log_gesture_cv(acc, confusion, class_names, run_id=result.parent_run_id)
        print(f"gesture-cv {name}: accuracy {100 * np.mean(acc):.2f} % ± {100 * np.std(acc):.2f} over {len(acc)} "
              f"folds" if acc else f"gesture-cv {name}: no fold finished")
    _write_json(METRICS / "gesture_cv.json", {"datasets": summary})


def stage_report(p: Params) -> None:
    """The paper's Tables 1-6 beside ours (runs/report/report.md and report.json)."""
    from pipeline.report import build_report, write_report

    evaluation = _read_json(METRICS / "evaluate.json")
    ablation = _read_json(METRICS / "ablation.json") if (METRICS / "ablation.json").is_file() else {}
    gesture = _read_json(METRICS / "gesture_cv.json") if (METRICS / "gesture_cv.json").is_file() else {}
    datasets = {role: ", ".join(role_datasets(p, role)) for role in ROLES}
    report = build_report(evaluation, ablation.get("rows", ablation), gesture.get("datasets", gesture),
                          evaluation.get("timings_ms"), data_source=p.data.source, datasets=datasets)
    js, md = write_report(report, RUNS / "report")
    print(f"report: wrote {md} and {js}")


STAGES = {
    "synthetic": stage_synthetic,
    "prepare": stage_prepare,
    "masks": stage_masks,
    "pretrain-sfe": stage_pretrain_sfe,
    "train": stage_train,
    "evaluate": stage_evaluate,
    "ablate": stage_ablate,
    "gesture-cv": stage_gesture_cv,
    "report": stage_report,
}
ROLE_STAGES = {"prepare", "masks"}


def run_stage(name: str, p: Params, role: str | None = None) -> None:
    """Run stage ``name`` (``role`` for the per-role data stages)."""
    if name not in STAGES:
        raise StageError(f"unknown stage {name!r}; choose one of {', '.join(STAGES)}")
    if name in ROLE_STAGES:
        if role is None:
            raise StageError(f"stage {name} needs a data role: {', '.join(ROLES)}")
        STAGES[name](p, role)
    else:
        STAGES[name](p)
