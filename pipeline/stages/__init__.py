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

One module per group of stages, so that ``dvc.yaml`` lists exactly the code each stage runs:
``common`` (shared), ``data`` (synthetic, prepare, masks), ``training`` (pretrain_sfe, train), ``evaluate``,
``sweeps`` (ablate, gesture_cv, search) and ``report``.
"""

from __future__ import annotations

from pipeline.params import Params
from pipeline.stages.common import ROLES, StageError, masks_dir, prepared_dir, role_datasets
from pipeline.stages.data import stage_masks, stage_prepare, stage_synthetic
from pipeline.stages.evaluate import stage_evaluate
from pipeline.stages.report import stage_report
from pipeline.stages.sweeps import stage_ablate, stage_gesture_cv, stage_search
from pipeline.stages.training import stage_pretrain_sfe, stage_train

__all__ = ["ROLES", "STAGES", "StageError", "run_stage", "prepared_dir", "masks_dir", "role_datasets",
           "stage_synthetic", "stage_prepare", "stage_masks", "stage_pretrain_sfe", "stage_train", "stage_evaluate",
           "stage_ablate", "stage_gesture_cv", "stage_search", "stage_report"]

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
