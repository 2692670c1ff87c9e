"""Gesture CV (§4.3.3, Table 6): per-fold accuracy, mean ± std, the confusion matrix and per-class accuracy."""

from __future__ import annotations

import numpy as np
import pandas as pd
import streamlit as st

from dashboards import data, figures, ui

st.title("Gesture recognition: cross-validation")
proj = ui.project_or_stop()
runs = ui.runs_or_stop(proj)
exp = proj.experiment("gesture_cv")
gruns = runs[runs["experiment"] == exp] if not runs.empty else runs
parents = gruns[gruns["parent_run_id"].isna()] if len(gruns) else gruns

folds: pd.DataFrame | None = None
blob = None
if len(parents):
    label = st.selectbox("Cross-validation run (one per gesture dataset)", parents["label"].tolist(), key="cv_run")
    parent = parents[parents["label"] == label].iloc[0]
    children = gruns[gruns["parent_run_id"] == parent["run_id"]]
    if len(children) and "metrics.accuracy" in children:
        fold_no = children["run_name"].str.extract(r"(\d+)\s*$")[0].astype(float)
        folds = pd.DataFrame({"fold": fold_no.fillna(-1).astype(int).to_numpy(), "run": children["run_name"],
                              "status": children["status"], "accuracy": children["metrics.accuracy"].to_numpy()})
        folds = folds.sort_values("fold").reset_index(drop=True)
    blob = data.artifact_json(proj.tracking_uri, parent["run_id"], "gesture/confusion.json")
    if folds is None and blob:
        folds = pd.DataFrame({"fold": range(len(blob["fold_accuracies"])), "accuracy": blob["fold_accuracies"]})
else:
    summary = (data.read_json(proj.runs_dir / "metrics" / "gesture_cv.json") or {}).get("datasets") or {}
    if summary:
        st.info("No gesture-cv run in MLflow: showing runs/metrics/gesture_cv.json of the gesture_cv stage.")
        name = st.selectbox("Gesture dataset", sorted(summary), key="cv_dataset")
        res = summary[name]
        folds = pd.DataFrame({"fold": range(len(res["fold_accuracies"])), "accuracy": res["fold_accuracies"]})
        if res.get("confusion"):
            blob = {"class_names": res["class_names"], "matrix": res["confusion"]}
    else:
        ui.no_runs(proj, "gesture cross-validation runs")
        st.stop()

if folds is not None and len(folds):
    acc = folds["accuracy"].dropna().to_numpy(np.float64)
    c = st.columns(3)
    c[0].metric("Mean accuracy", f"{100 * acc.mean():.2f} %" if acc.size else "—")
    c[1].metric("Std over folds", f"{100 * acc.std():.2f} %" if acc.size else "—")
    c[2].metric("Folds", f"{acc.size}")
    st.plotly_chart(figures.fold_accuracy_figure(folds["accuracy"].fillna(0).to_numpy(), folds["fold"].tolist()),
                    width="stretch", key="folds_chart")
    st.dataframe(folds.assign(**{"accuracy (%)": 100 * folds["accuracy"]}).drop(columns=["accuracy"])
                 .style.format({"accuracy (%)": "{:.1f}"}, na_rep="—"), hide_index=True, key="folds_table")
else:
    st.warning("This run has no finished fold yet.")

if blob:
    names, matrix = blob["class_names"], blob["matrix"]
    left, right = st.columns([3, 2])
    normalize = left.toggle("Row fractions", value=True, key="cm_norm")
    left.plotly_chart(figures.confusion_figure(matrix, names, normalize), width="stretch", key="cm_chart")
    per_class = figures.per_class_accuracy(matrix, names)
    right.plotly_chart(figures.per_class_figure(per_class), width="stretch", key="per_class_chart")
    right.dataframe(per_class.style.format({"accuracy (%)": "{:.1f}"}, na_rep="—"), hide_index=True,
                    key="per_class_table")
else:
    st.info("No confusion matrix logged for this run (artifact gesture/confusion.json).")

st.caption("Paper (Table 6, 10-fold CV): RWTH 72.03 %, Senz3D 92.83 %; the classifier reads the frozen "
           "framework's 3D joints.")
