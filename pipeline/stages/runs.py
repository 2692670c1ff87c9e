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
    """The :class:`trainers.run.StageData` of ``role``: its first split trains, ``val`` (if any) validates.
    The test split is never part of it (:func:`test_split`)."""
    from trainers.run import StageData

    (name, splits), = role_datasets(p, role).items()
    val = "val" if with_val and "val" in splits else None
    masks = role != "gesture"
    return StageData(train=prepared_dir(role, name, splits[0]),
                     val=None if val is None else prepared_dir(role, name, val),
                     masks_train=masks_dir(role, name, splits[0]) if masks else None,
                     masks_val=masks_dir(role, name, val) if masks and val else None)


def test_split(p: Params, role: str = "pose") -> tuple[Path, Path]:
    """(prepared test split, its masks) of ``role``: what evaluation, and nothing else, reads."""
    (name, splits), = role_datasets(p, role).items()
    if "test" not in splits:
        raise StageError(f"data role {role} has no test split")
    return prepared_dir(role, name, "test"), masks_dir(role, name, "test")
