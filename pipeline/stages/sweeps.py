"""Sweep stages on Ray Tune: ``ablate`` (Tables 1-4 rows), ``gesture_cv`` (§4.3.3 folds) and the Optuna ``search``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from keyhand.atomic import atomic_path
from pipeline.params import Params
from pipeline.stages.common import METRICS, RUNS, StageError, _write_json, prepared_dir, role_datasets
from pipeline.stages.runs import _experiment, _sfe_checkpoint, _tracking, stage_data


def _content_hash(spec: dict, files: list[Path]) -> str:
    """sha256 (10 hex) of a sweep's spec and input files: the Tune experiment's name suffix, so that
    ``resume`` continues an interrupted sweep of the SAME inputs and never reuses results of other ones."""
    import hashlib

    h = hashlib.sha256(json.dumps(spec, sort_keys=True, default=str).encode())
    for f in files:
        if f.is_file():
            h.update(f.read_bytes())
    return h.hexdigest()[:10]


def _data_content(p: Params) -> dict[str, str]:
    """Content hashes of the pose role's prepared splits with their masks (what the sweep trials read)."""
    from keyhand.data.cache import PreparedDataset

    d = stage_data(p, "pose")
    return {"train": PreparedDataset(d.train, masks_dir=d.masks_train).content_hash(),
            "val": PreparedDataset(d.val, masks_dir=d.masks_val).content_hash()}


def _sweep_common(p: Params) -> dict[str, Any]:
    from trainers.sweep import connect

    uri = _tracking(p)
    connect(p.ray.address)
    return {"storage_path": p.ray.storage_path or (RUNS / "ray").resolve(), "mlflow_uri": uri,
            "max_failures": p.sweep.max_failures,
            "resources_per_trial": {"cpu": p.sweep.cpus_per_trial, "gpu": p.sweep.gpus_per_trial}}

def _pose_data(p: Params) -> dict[str, str | None]:
    """Absolute paths of the pose role's prepared splits and masks (trials may run on other nodes)."""
    return stage_data(p, "pose").as_dict()


def stage_ablate(p: Params, resume: bool = True) -> None:
    """The Tables 1-4 grid and the controls (``sweep.rows``) through Ray Tune: one trial per row and seed
    (``stats.seeds``), monitored on val; then every trial's test errors and the statistics
    (:mod:`pipeline.stages.compare`)."""
    from pipeline.stages.compare import summarise, trial_labels
    from pipeline.stages.runs import test_split
    from trainers.sweep import ablation_space, run_sweep
    from trainers.trials import ablation_trial

    common = _sweep_common(p)  # tracking server and Ray cluster first: an unreachable one fails at once
    rows = dict(p.sweep.rows)
    if not rows:
        raise StageError("params.yaml: sweep.rows is empty: name at least one ablation row")
    labels = trial_labels(p)   # "<row>.seed<k>": one trial per row and seed
    configs, pretrained = {}, {}
    for label, (row, k) in labels.items():
        cfg, pre = p.ablation_config(row, k)
        configs[label], pretrained[label] = cfg.model_dump(), pre
    sfe = _sfe_checkpoint()
    if any(pretrained.values()) and sfe is None:
        raise StageError(f"{RUNS / 'pretrain_sfe'} holds no checkpoint: run the pretrain_sfe stage first")
    out = (RUNS / "ablate").resolve()
    reused = _reuse_main_run(p, configs, pretrained, out / "trials")
    spec = {"configs": configs, "pretrained": pretrained, "data": _pose_data(p),
            "rows": {label: list(v) for label, v in labels.items()},
            "sfe_checkpoint": None if sfe is None else str(sfe.resolve()), "out": str(out / "trials")}
    name = f"ablation-{_content_hash({**spec, 'content': _data_content(p)}, [sfe] if sfe else [])}"
    result = run_sweep(name, ablation_trial, {**ablation_space(configs), "spec": spec}, kind="grid",
                       metric="epe_mean", mode="min", out_dir=out, experiment=_experiment(p, "ablation"),
                       parent_run_name="ablation", parent_params={"base": p.sweep.base, "seeds": p.stats.seeds},
                       resume=resume, **common)
    summary = summarise(p, result, labels, out / "trials", out, stage_data(p, "pose"), test_split(p, "pose"))
    _write_json(METRICS / "ablation.json", summary)
    failed = summary["failed"]
    print(f"ablate: {len(summary['rows']) - len(failed)}/{len(summary['rows'])} rows finished ({p.stats.seeds} "
          "seeds each)" + (f"; failed: {failed}" if failed else "")
          + (f"; {', '.join(reused)} = the train stage's run (same identity), not trained twice" if reused else ""))


def _reuse_main_run(p: Params, configs: dict[str, dict], pretrained: dict[str, bool], trials: Path) -> list[str]:
    """Seed each trial whose configuration is the main run's (``base.seed0`` when ``sweep.epochs`` is null) with
    a copy of the train stage's run folder: the trial then continues that run — 0 epochs left — instead of
    training the same model twice. The trial's own identity check (:func:`trainers.train.plan_start`) still
    decides: a copy of another identity (other data, SFE or code settings) is set aside and trained afresh."""
    import shutil

    from trainers.checkpoint import latest

    main, src = p.train_config().model_dump(), RUNS / "train"
    if latest(src) is None or p.train.threads is None:
        return []   # train.threads null: the stage ran on the machine's cores, a trial on one — another identity
    main_pre = p.model.sfe != "none"
    reused = []
    for label, cfg in configs.items():
        dst = trials / label
        if cfg == main and pretrained[label] == main_pre and not dst.exists():
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copytree(src, dst)
            reused.append(label)
    return reused


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
    key = _content_hash({**spec, "search": s.model_dump(), "content": _data_content(p)}, [sfe] if sfe else [])
    name = f"search-{key}"
    result = run_sweep(name, search_trial, {"spec": spec}, kind="search", search_space=space, metric=s.metric,
                       mode=s.mode, num_samples=s.num_samples, out_dir=out, experiment=_experiment(p, "search"),
                       parent_run_name="search", parent_params={"search": s.model_dump()}, resume=resume,
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
    from trainers.gesture import framework_joints, num_gesture_classes
    from trainers.predict import load_model
    from trainers.sweep import folds_space, run_sweep
    from trainers.train import make_loader, open_split
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
        with atomic_path(joints_file) as tmp:
            torch.save(data, tmp)
        num_classes = num_gesture_classes(ds)
        names = ds.manifest.get("gesture_names") or {}
        class_names = [str(names.get(str(k), k)) for k in range(num_classes)]
        if p.cv.mode == "subject" and bool((subjects < 0).any()):
            raise StageError(f"cv.mode is 'subject' but {name} has samples without a subject")
        spec = {"joints": str(joints_file), "cv": p.cv.model_dump(), "config": cfg.training().model_dump(),
                "num_classes": num_classes, "out": str(out / "folds")}
        tune_name = f"gesture-cv-{name}-{_content_hash(spec, [joints_file])}"
        result = run_sweep(tune_name, fold_trial, {**folds_space(p.cv.folds), "spec": spec},
                           kind="grid", metric="accuracy", mode="max", out_dir=out,
                           experiment=_experiment(p, "gesture_cv"), parent_run_name=f"gesture-cv {name}",
                           parent_params={"dataset": name, "cv": p.cv.model_dump()}, resume=resume, **common)
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
