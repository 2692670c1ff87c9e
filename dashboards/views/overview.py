"""Overview: the latest run of each experiment, its status and headline numbers; the empty state names the command."""

from __future__ import annotations

import math

import pandas as pd
import streamlit as st

from dashboards import data, ui

st.title("keyhand results")
proj = ui.project_or_stop()
runs = ui.runs_or_stop(proj)
report = data.read_json(proj.runs_dir / "report" / "report.json")
metrics_dir = proj.runs_dir / "metrics"

if runs.empty and report is None:
    ui.no_runs(proj)
    st.stop()

if (report or {}).get("data_source", proj.data_source) == "synthetic":
    st.warning("Data source: **synthetic** (the embedded default). These numbers show the pipeline running end to "
               "end; they are not a reproduction of the paper's figures (set `data.source: real` for that).")


def _metric(row: pd.Series | None, key: str) -> float | None:
    if row is None:
        return None
    v = row.get(f"metrics.{key}")
    return None if v is None or (isinstance(v, float) and math.isnan(v)) else float(v)


latest = data.latest_by_experiment(runs)
evaluation = latest.get(proj.experiment("evaluate"))
gesture = latest.get(proj.experiment("gesture_cv"))
file_eval = data.read_json(metrics_dir / "evaluate.json") or {}
epe = _metric(evaluation, "epe_mean") or file_eval.get("epe_mean")
auc = _metric(evaluation, "auc") or file_eval.get("auc")
g_mean, g_std = _metric(gesture, "gesture_accuracy_mean"), _metric(gesture, "gesture_accuracy_std")
ablation_parent = latest.get(proj.experiment("ablation"))
ablation_children = runs[runs["parent_run_id"] == (ablation_parent["run_id"] if ablation_parent is not None else "")]

cols = st.columns(4)
cols[0].metric("EPE (mm, latest evaluation)", "—" if epe is None else f"{epe:.2f}",
               help="mean root-relative end-point error on the pose test split; paper (STB): 8.79 mm (Table 4)")
cols[1].metric("AUC 20-50 mm", "—" if auc is None else f"{auc:.3f}", help="paper (STB): 0.995 (Table 5)")
cols[2].metric("Gesture accuracy", "—" if g_mean is None else f"{100 * g_mean:.1f} % ± {100 * (g_std or 0):.1f}",
               help="mean ± std over the cross-validation folds (Table 6)")
n_fin = int((ablation_children["status"] == "FINISHED").sum()) if len(ablation_children) else 0
cols[3].metric("Ablation rows finished (latest sweep)",
               f"{n_fin} / {len(ablation_children)}" if len(ablation_children) else "—")


def _eval(key: str) -> float | None:
    """A metric of the latest evaluation: its MLflow run, else runs/metrics/evaluate.json."""
    v = _metric(evaluation, key)
    if v is None:
        f = file_eval.get(key)
        v = None if f is None or (isinstance(f, float) and math.isnan(f)) else float(f)
    return v


def _pair(a: float | None, b: float | None, fmt: str) -> str:
    return "—" if a is None and b is None else " / ".join("—" if v is None else format(v, fmt) for v in (a, b))


# Beyond the paper (keyhand.metrics): aligned EPEs, F-scores, mesh errors where a ground-truth mesh exists
extra = st.columns(4)
extra[0].metric("EPE scale-aligned / Procrustes (mm)", _pair(_eval("epe_scaled_mean"), _eval("epe_pa_mean"), ".2f"),
                help="prediction rescaled to the ground truth's middle-finger MCP→PIP bone (hand3d) / after the best "
                     "rotation, scale and translation (PA-EPE)")
extra[1].metric("F@5 / F@15 mm (joints)", _pair(_eval("f5_joints"), _eval("f15_joints"), ".3f"),
                help="F-score of the Procrustes-aligned 21 joints as point sets (FreiHAND's definition)")
extra[2].metric("Mesh error root / Procrustes (mm)",
                _pair(_eval("mesh_error_mean"), _eval("mesh_error_pa_mean"), ".2f"),
                help="mean vertex distance to the ground-truth mesh (synthetic sets; none for STB)")
extra[3].metric("F@5 / F@15 mm (mesh)", _pair(_eval("f5_mesh"), _eval("f15_mesh"), ".3f"),
                help="FreiHAND's F-scores on the Procrustes-aligned vertices")

st.subheader("Latest run of each experiment")
HEADLINE = {"pretrain_sfe": ["train/total"], "train": ["val/epe_mean", "train/total"],
            "evaluate": ["epe_mean", "auc", "epe_pa_mean"], "ablation": [], "gesture_cv": ["gesture_accuracy_mean"],
            "search": ["epe_mean"]}
rows = []
for role, name in proj.experiments.items():
    row = latest.get(name)
    exp_runs = runs[runs["experiment"] == name] if not runs.empty else runs
    entry = {"experiment": name, "runs": len(exp_runs), "latest run": "—", "status": "no runs", "started": None,
             "duration (s)": None, "headline": ""}
    if row is not None:
        numbers = []
        for key in HEADLINE.get(role, []):
            v = _metric(row, key)
            if v is not None:
                numbers.append(f"{key} {v:.4g}")
        children = exp_runs[exp_runs["parent_run_id"] == row["run_id"]]
        if len(children):
            done = int((children["status"] == "FINISHED").sum())
            numbers.append(f"{done}/{len(children)} child runs finished")
        entry.update({"latest run": row["run_name"], "status": row["status"],
                      "started": row["start_time"].strftime("%Y-%m-%d %H:%M:%S UTC") if pd.notna(row["start_time"])
                      else "",
                      "duration (s)": None if pd.isna(row["duration_s"]) else round(float(row["duration_s"]), 1),
                      "headline": ", ".join(numbers)})
    rows.append(entry)
overview = pd.DataFrame(rows)


def _status_colour(col: pd.Series) -> list[str]:
    colours = {"FINISHED": "color: #1a7f37", "FAILED": "color: #cf222e", "RUNNING": "color: #9a6700",
               "KILLED": "color: #cf222e"}
    return [colours.get(str(v), "color: #57606a") for v in col]


st.dataframe(overview.style.apply(_status_colour, subset=["status"]).format({"duration (s)": "{:.1f}"}, na_rep="—"),
             hide_index=True, width="stretch", key="latest_runs")

if runs.empty:
    ui.no_runs(proj, "MLflow runs")
else:
    failed = runs[runs["status"].isin(["FAILED", "KILLED"])]
    if len(failed):
        st.subheader(f"Failed runs ({len(failed)})")
        st.dataframe(failed[["experiment", "run_name", "status", "start_time", "error"]], hide_index=True,
                     width="stretch", key="failed_runs")
    running = runs[runs["status"] == "RUNNING"]
    if len(running):
        st.info(f"{len(running)} run(s) still RUNNING: " + ", ".join(running["label"].head(8)))

if report is None:
    st.info(f"No report yet ({proj.runs_dir / 'report' / 'report.json'}): run `{data.NO_RUNS_HINT}` "
            "(or `dvc repro`) to build it; the Tables page reads it.")
else:
    ds = report.get("datasets") or {}
    ev = report.get("evaluation") or {}
    st.caption("Report: " + ", ".join(f"{k}: {v}" for k, v in ds.items())
               + (f" · evaluation on {ev.get('count')} samples" if ev.get("count") else ""))
