"""Training stages: ``pretrain_sfe`` (§4.1.1, L_SFE only) and ``train`` (Eq. 12), tracked in MLflow.

Both are :func:`trainers.run.fit_stage` on the params' data roles: a run folder of the same identity is
continued, any other is set aside and the stage trains afresh (:mod:`trainers.train`).
"""

from __future__ import annotations

from pathlib import Path

from pipeline.params import Params
from pipeline.stages.common import METRICS, RUNS, _write_json, role_datasets, stage_role
from pipeline.stages.runs import _experiment, _tracking, stage_data


def _fit_stage(p: Params, stage: str, out: Path, role: str, metrics_file: Path,
               sfe_init: Path | None = None) -> dict:
    from trainers.run import fit_stage

    _tracking(p)  # an unreachable tracking server fails before any work
    (dataset, _), = role_datasets(p, role).items()
    exp = "pretrain_sfe" if stage == "sfe" else "train"
    result = fit_stage(p.train_config(), stage, stage_data(p, role, with_val=stage == "train"), out,
                       sfe_init=sfe_init, track={"experiment": _experiment(p, exp), "run_name": exp, "stage": exp,
                                                  "tags": {"keyhand.dataset": dataset}})
    summary = {"stage": exp, "dataset": dataset, "epochs": len(result.history), "identity": result.params_hash,
               **result.metrics}
    _write_json(metrics_file, summary)
    _write_json(METRICS / f"{exp}_history.json", result.history)
    return summary


def stage_pretrain_sfe(p: Params) -> None:
    """SFE pretraining (§4.1.1, L_SFE only) on the pretrain role's set, or the pose role's train split when
    ``data.sfe_on`` is "pose"."""
    if p.model.sfe == "none":
        out = RUNS / "pretrain_sfe"
        out.mkdir(parents=True, exist_ok=True)
        _write_json(METRICS / "pretrain_sfe.json", {"stage": "pretrain_sfe", "skipped": "model.sfe is 'none'"})
        _write_json(METRICS / "pretrain_sfe_history.json", [])
        return
    _fit_stage(p, "sfe", RUNS / "pretrain_sfe", stage_role(p, "sfe"), METRICS / "pretrain_sfe.json")


def stage_train(p: Params) -> None:
    """Full training (Eq. 12) on the pose role, starting from the pretrained SFE (Table 1, last row)."""
    _fit_stage(p, "train", RUNS / "train", stage_role(p, "train"), METRICS / "train.json",
               sfe_init=RUNS / "pretrain_sfe" if p.model.sfe != "none" else None)
