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

One module per group of stages, imported only when its stage runs, so that ``dvc.yaml`` lists exactly the
code each stage runs (tests/test_dvc_deps.py walks the imports): ``common`` (shared), ``synthetic``, ``data``
(prepare, masks), ``runs`` (shared by the next three), ``training`` (pretrain_sfe, train), ``evaluate``,
``sweeps`` (ablate, gesture_cv, search) and ``report``.
"""

from __future__ import annotations

import importlib
from typing import Any

from pipeline.params import Params
from pipeline.stages.common import ROLES, StageError, masks_dir, prepared_dir, role_datasets

__all__ = ["ROLES", "STAGES", "StageError", "run_stage", "stage_function", "prepared_dir", "masks_dir",
           "role_datasets", "stage_synthetic", "stage_prepare", "stage_masks", "stage_pretrain_sfe", "stage_train",
           "stage_evaluate", "stage_ablate", "stage_gesture_cv", "stage_search", "stage_report"]

#: ``keyhand stage <name>`` -> "module:function" (imported when the stage runs).
STAGES = {
    "synthetic": "pipeline.stages.synthetic:stage_synthetic",
    "prepare": "pipeline.stages.data:stage_prepare",
    "masks": "pipeline.stages.data:stage_masks",
    "pretrain-sfe": "pipeline.stages.training:stage_pretrain_sfe",
    "train": "pipeline.stages.training:stage_train",
    "evaluate": "pipeline.stages.evaluate:stage_evaluate",
    "ablate": "pipeline.stages.sweeps:stage_ablate",
    "gesture-cv": "pipeline.stages.sweeps:stage_gesture_cv",
    "report": "pipeline.stages.report:stage_report",
}
_FUNCTIONS = {target.split(":")[1]: target for target in [*STAGES.values(), "pipeline.stages.sweeps:stage_search"]}
ROLE_STAGES = {"prepare", "masks"}


def stage_function(name: str):
    """The function of stage ``name`` (a key of :data:`STAGES`)."""
    if name not in STAGES:
        raise StageError(f"unknown stage {name!r}; choose one of {', '.join(STAGES)}")
    module, func = STAGES[name].split(":")
    return getattr(importlib.import_module(module), func)


def run_stage(name: str, p: Params, role: str | None = None) -> None:
    """Run stage ``name`` (``role`` for the per-role data stages)."""
    fn = stage_function(name)
    if name in ROLE_STAGES:
        if role is None:
            raise StageError(f"stage {name} needs a data role: {', '.join(ROLES)}")
        fn(p, role)
    else:
        fn(p)


def __getattr__(name: str) -> Any:  # ``from pipeline.stages import stage_train`` imports its module then
    if name in _FUNCTIONS:
        module, func = _FUNCTIONS[name].split(":")
        return getattr(importlib.import_module(module), func)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
