"""Sweep stages on Ray Tune: ``ablate`` (Tables 1-4 rows), ``gesture_cv`` (§4.3.3 folds) and the Optuna ``search``."""

from __future__ import annotations

import json
from typing import Any

from pipeline.params import Params
from pipeline.stages.common import (
    METRICS,
    RUNS,
    StageError,
    _content_hash,
    _experiment,
    _pose_data,
    _sfe_checkpoint,
    _split_files,
    _sweep_common,
    _write_json,
    prepared_dir,
    role_datasets,
)


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
                       parent_run_name="ablation", parent_params=p.sweep.base, resume=resume,
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
