"""The ``report`` stage: the paper's Tables 1-6 beside ours (runs/report/report.md and report.json)."""

from __future__ import annotations

from pipeline.params import Params
from pipeline.stages.common import (
    METRICS,
    ROLES,
    RUNS,
    _read_json,
    role_datasets,
    stage_role,
)


def stage_report(p: Params) -> None:
    """The paper's Tables 1-6 beside ours (runs/report/report.md and report.json)."""
    from pipeline.report import build_report, write_report

    evaluation = _read_json(METRICS / "evaluate.json")
    ablation = _read_json(METRICS / "ablation.json") if (METRICS / "ablation.json").is_file() else {}
    gesture = _read_json(METRICS / "gesture_cv.json") if (METRICS / "gesture_cv.json").is_file() else {}
    datasets = {role: ", ".join(role_datasets(p, role)) for role in ROLES}
    if stage_role(p, "sfe") != "pretrain":   # the SFE pretrained on another role's train split
        datasets["pretrain"] = f"{datasets[stage_role(p, 'sfe')]} train split (data.sfe_on: {p.data.sfe_on})"
    train = _read_json(METRICS / "train.json") if (METRICS / "train.json").is_file() else {}
    evaluation = {**evaluation, "epochs": train.get("epochs")}
    report = build_report(evaluation, ablation.get("rows", ablation), gesture.get("datasets", gesture),
                          evaluation.get("timings_ms"), data_source=p.data.source, datasets=datasets,
                          comparison={k: v for k, v in ablation.items() if k not in ("rows", "trials")})
    js, md = write_report(report, RUNS / "report")
    print(f"report: wrote {md} and {js}")
