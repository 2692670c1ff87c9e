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
    """§4.3.3: per gesture dataset, the frozen framework's 3D joints once, then the CV folds through Ray Tune.

    Two fold kinds, each one sweep of :func:`trainers.trials.fold_trial` (:func:`keyhand.model.gesture.cv_splits`):
    ``cv.mode`` ("stratified": the paper-comparable random 80/20 folds) gives Table 6's numbers, the top-level
    keys of ``runs/metrics/gesture_cv.json`` per dataset (``fold_accuracies``, ``mean``, ``std``, ``folds``,
    ``chance``, ``confusion``, ``class_names``, plus ``kind`` and ``protocol``); with ``cv.subject_folds`` the
    leave-subjects-out folds (min(cv.folds, subjects), each subject in one test fold) run beside them, first,
    and go to the ``subject`` block (same figures, ``subject_folds``, ``n_subjects``, ``test_subjects``; or
    ``skipped`` with the reason when the set has fewer than 2 known subjects). Folders:
    ``runs/gesture_cv/<dataset>/<kind>/``; MLflow parents ``gesture-cv <dataset>`` and ``... subject``."""
    import numpy as np
    import torch

    from keyhand.model.gesture import describe_folds
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
    cv = p.cv.model_dump(exclude={"subject_folds"})  # a fold sweep's identity: not whether the other kind runs
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
        n_subjects = len(set(subjects.tolist())) if not bool((subjects < 0).any()) else 0
        no_subjects = (f"{name} has samples without a subject" if n_subjects == 0 else
                       f"{name} has {n_subjects} subject (leave-subjects-out needs >= 2)" if n_subjects < 2 else None)
        if p.cv.mode == "subject" and no_subjects:
            raise StageError(f"cv.mode is 'subject' but {no_subjects}")
        kinds = [p.cv.mode]
        if p.cv.subject_folds and p.cv.mode != "subject" and not no_subjects:
            kinds.insert(0, "subject")  # first: the Table 6 sweep is the newest parent run (dashboard overview)
        figures: dict[str, dict[str, Any]] = {}
        for kind in kinds:
            k = min(p.cv.folds, n_subjects) if kind == "subject" else p.cv.folds
            kout = out / kind
            spec = {"joints": str(joints_file), "cv": cv, "fold_kind": kind, "config": cfg.training().model_dump(),
                    "num_classes": num_classes, "out": str(kout / "folds")}
            result = run_sweep(f"gesture-cv-{name}-{kind}-{_content_hash(spec, [joints_file])}", fold_trial,
                               {**folds_space(k), "spec": spec}, kind="grid", metric="accuracy", mode="max",
                               out_dir=kout, experiment=_experiment(p, "gesture_cv"),
                               parent_run_name=f"gesture-cv {name}" + (" subject" if kind == "subject" else ""),
                               parent_params={"dataset": name, "cv": cv, "fold_kind": kind, "folds": k},
                               resume=resume, **common)
            records = [json.loads(f.read_text()) for f in (kout / "folds" / f"fold-{i}.json" for i in range(k))
                       if f.is_file()]
            acc = [r["accuracy"] for r in records]
            confusion = (np.sum([np.asarray(r["confusion"]) for r in records], axis=0) if records
                         else np.zeros((0, 0)))
            fig: dict[str, Any] = {
                "kind": kind, "protocol": describe_folds(kind, p.cv.folds, p.cv.test_fraction, n_subjects or None),
                "fold_accuracies": acc, "mean": float(np.mean(acc)) if acc else None,
                "std": float(np.std(acc)) if acc else None, "folds": len(acc), "planned_folds": k,
                "failed": [r["label"] for r in result.failed], "chance": 1.0 / max(num_classes, 1),
                "confusion": confusion.tolist()}
            if kind == "subject":
                fig.update(subject_folds=k, n_subjects=n_subjects,
                           test_subjects=[r.get("test_subjects") for r in records])
            else:
                fig["test_fraction"] = p.cv.test_fraction
            figures[kind] = fig
            if result.parent_run_id and acc:
                from trainers.tracking import log_gesture_cv

                log_gesture_cv(acc, confusion, class_names, run_id=result.parent_run_id,
                               prefix="gesture_" if kind == p.cv.mode else "gesture_subject_")
        top = figures[p.cv.mode]
        entry = {**top, "class_names": class_names}
        if p.cv.subject_folds or p.cv.mode == "subject":
            sub = figures.get("subject")
            entry["subject"] = ({k: v for k, v in sub.items() if k != "kind"} if sub is not None
                                else {"skipped": no_subjects, "folds": 0, "subject_folds": 0,
                                      "n_subjects": n_subjects})
        summary[name] = entry
        line = f"gesture-cv {name}: "
        for kind in kinds:
            f = figures[kind]
            line += ("" if kind == kinds[0] else "; ") + (
                f"{kind} folds {100 * f['mean']:.2f} % ± {100 * f['std']:.2f} over {f['folds']}/{f['planned_folds']}"
                f" ({f['protocol']})" if f["folds"] else f"{kind} folds: none finished")
        if no_subjects and p.cv.subject_folds:
            line += f"; no subject folds: {no_subjects}"
        print(line + (" [Table 6: the " + p.cv.mode + " folds]" if len(kinds) > 1 else ""))
    _write_json(METRICS / "gesture_cv.json", {"datasets": summary})
