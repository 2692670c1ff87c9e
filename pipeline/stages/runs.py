"""What the training, evaluation and sweep stages share: MLflow set-up, the pretrained SFE, the data they read."""

from __future__ import annotations

from pathlib import Path

from pipeline.params import Params
from pipeline.stages.common import RUNS, StageError, masks_dir, prepared_dir, role_datasets


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


def _sfe_checkpoint() -> Path | None:
    from trainers.checkpoint import latest

    return latest(RUNS / "pretrain_sfe")


def stage_data(p: Params, role: str, with_val: bool = True):
    """The :class:`trainers.run.StageData` of ``role``: its first split trains, the second (if any) validates."""
    from trainers.run import StageData

    (name, splits), = role_datasets(p, role).items()
    val = splits[1] if with_val and len(splits) > 1 else None
    masks = role != "gesture"
    return StageData(train=prepared_dir(role, name, splits[0]),
                     val=None if val is None else prepared_dir(role, name, val),
                     masks_train=masks_dir(role, name, splits[0]) if masks else None,
                     masks_val=masks_dir(role, name, val) if masks and val else None)
