"""Training stages: ``pretrain_sfe`` (§4.1.1, L_SFE only) and ``train`` (Eq. 12), resumable, tracked in MLflow."""

from __future__ import annotations

from pathlib import Path

from pipeline.params import Params
from pipeline.stages.common import (
    METRICS,
    RUNS,
    _experiment,
    _fresh_or_resume,
    _sfe_checkpoint,
    _tracking,
    _write_json,
    masks_dir,
    prepared_dir,
    role_datasets,
)


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
    with tracked_run(_experiment(p, exp), run_name=exp, params=cfg.model_dump(), stage=exp,
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

def stage_train(p: Params) -> None:
    """Full training (Eq. 12) on the pose role, starting from the pretrained SFE (Table 1, last row)."""
    _fit_stage(p, "train", RUNS / "train", "pose", METRICS / "train.json", sfe_checkpoint=_sfe_checkpoint())
