"""PCK curves: the 3D PCK of any evaluation runs against each other, and the AUCs of Table 5 with ours."""

from __future__ import annotations

import numpy as np
import streamlit as st

from dashboards import data, figures, ui
from pipeline.report import load_paper_results

st.title("3D PCK curves")
proj = ui.project_or_stop()
runs = ui.runs_or_stop(proj)
evals = runs[(runs["experiment"] == proj.experiment("evaluate"))] if not runs.empty else runs

curves: dict[str, tuple[np.ndarray, np.ndarray]] = {}
bands: dict[str, tuple[np.ndarray, np.ndarray]] = {}
aucs: dict[str, float] = {}
beyond: dict[str, dict[str, float]] = {}     # label -> the metrics beyond the paper
if len(evals):
    labels = evals["label"].tolist()
    picked = st.multiselect("Evaluation runs", labels, default=labels[:1], key="pck_runs",
                            help="runs of the evaluate stage (newest first)")
    for label in picked:
        row = evals[evals["label"] == label].iloc[0]
        th, vals = data.pck_curve(proj.tracking_uri, row["run_id"])
        if th.size:
            curves[label] = (th, vals)
            auc = row.get("metrics.auc")
            if auc is not None and not np.isnan(auc):
                aucs[label] = float(auc)
            beyond[label] = {k: row.get(f"metrics.{k}") for k in figures.BEYOND_PAPER}
        else:
            st.warning(f"{label}: logged no PCK curve")
else:
    file_curve = data.read_json(proj.runs_dir / "metrics" / "pck.json")
    if file_curve:
        st.info("No evaluation run in MLflow: showing runs/metrics/pck.json of the evaluate stage.")
        curves["evaluate (pck.json)"] = (np.array([r["threshold_mm"] for r in file_curve]),
                                         np.array([r["pck"] for r in file_curve]))
        if all("lo" in r and "hi" in r for r in file_curve):
            bands["evaluate (pck.json)"] = (np.array([r["lo"] for r in file_curve]),
                                            np.array([r["hi"] for r in file_curve]))
        ev = data.read_json(proj.runs_dir / "metrics" / "evaluate.json") or {}
        if ev.get("auc") is not None:
            aucs["evaluate (pck.json)"] = float(ev["auc"])
        beyond["evaluate (pck.json)"] = {k: ev.get(k) for k in figures.BEYOND_PAPER}
    else:
        ui.no_runs(proj, "evaluation runs")

if curves:
    st.plotly_chart(figures.pck_figure(curves, aucs, bands), width="stretch", key="pck_chart")
    st.caption("Fraction of joints whose root-relative 3D error is below the threshold (the lmb-freiburg/hand3d "
               "protocol the paper's Table 5 uses); AUC over 20-50 mm.")

report = data.read_json(proj.runs_dir / "report" / "report.json") or {}
row_bands = report.get("pck_bands") or {}
if row_bands:
    st.subheader("PCK of the compared rows and controls, with their intervals")
    picked_rows = st.multiselect("Rows", list(row_bands), default=[r for r in row_bands if r == "base"
                                                                   or r.startswith("control")], key="pck_rows")
    rc = {r: (np.array(row_bands[r]["thresholds_mm"]), np.array(row_bands[r]["pck"])) for r in picked_rows}
    rb = {r: (np.array(row_bands[r]["lo"]), np.array(row_bands[r]["hi"])) for r in picked_rows}
    if rc:
        st.plotly_chart(figures.pck_figure(rc, None, rb), width="stretch", key="pck_rows_chart")
        st.caption("Shaded: the 95 % interval of each curve (bootstrap over test images and seeds, keyhand.stats); "
                   "runs/report/report.json.")

if beyond:
    st.subheader("Beyond the paper")
    frame = figures.beyond_paper_frame(beyond)
    st.dataframe(frame.style.format({k: "{:.3f}" for k in beyond}, na_rep="—"), hide_index=True, width="stretch",
                 key="beyond_table")
    st.caption("Aligned EPEs (scale: the ground truth's middle-finger MCP→PIP bone as hand3d; Procrustes: best "
               "rotation, scale and translation), F-scores as FreiHAND defines them (point sets, Procrustes-aligned), "
               "and the mesh error where the split has a ground-truth mesh (the synthetic sets). keyhand.metrics.")

st.subheader("Table 5: AUC (3D PCK 20-50 mm) on STB")
table5 = load_paper_results()["tables"]["table5"]
paper5 = {"rows": [{"label": r["label"], "paper": r["value"]} for r in table5["rows"]]}
frame = figures.auc_frame(paper5, {f"ours: {k}": v for k, v in aucs.items()})
st.dataframe(frame.style.format({"AUC": "{:.3f}"}).apply(
    lambda col: ["font-weight: bold; color: #d4793a" if s == "ours" else "" for s in frame["source"]],
    subset=["method"]), hide_index=True, width="stretch", key="auc_table")
st.plotly_chart(figures.auc_figure(frame), width="stretch", key="auc_chart")
