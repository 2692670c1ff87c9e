"""Runs: browse and filter the MLflow runs of every experiment; compare the selected ones side by side."""

from __future__ import annotations

import numpy as np
import streamlit as st

from dashboards import data, figures, ui

st.title("MLflow runs")
proj = ui.project_or_stop()
runs = ui.runs_or_stop(proj)
if runs.empty:
    ui.no_runs(proj, "MLflow runs")
    st.stop()

with st.container(border=True):
    c = st.columns([3, 2, 2, 1])
    experiments = c[0].multiselect("Experiments", sorted(runs["experiment"].unique()), key="f_exp",
                                   placeholder="all")
    statuses = c[1].multiselect("Status", sorted(runs["status"].unique()), key="f_status", placeholder="all")
    text = c[2].text_input("Name contains", key="f_name")
    children = c[3].toggle("Child runs", value=True, key="f_children",
                           help="sweep trials, ablation rows, CV folds (runs with a parent)")
sel = runs
if experiments:
    sel = sel[sel["experiment"].isin(experiments)]
if statuses:
    sel = sel[sel["status"].isin(statuses)]
if text:
    sel = sel[sel["run_name"].str.contains(text, case=False, regex=False)]
if not children:
    sel = sel[sel["parent_run_id"].isna()]

metric_cols = sorted(c for c in sel.columns if c.startswith("metrics.") and sel[c].notna().any())
shown = ["label", "experiment", "run_name", "status", "start_time", "duration_s", "parent_run_id", *metric_cols]
st.caption(f"{len(sel)} of {len(runs)} runs · store `{proj.tracking_uri}`")
st.dataframe(sel[shown].rename(columns=lambda c: c.removeprefix("metrics.")), hide_index=True, width="stretch",
             key="runs_table", column_config={"label": None})

st.subheader("Compare runs")
picked = st.multiselect("Runs to compare", sel["label"].tolist(), default=sel["label"].tolist()[:2],
                        key="compare_runs", max_selections=8)
if picked:
    chosen = sel[sel["label"].isin(picked)].set_index("label").loc[picked].reset_index()
    only = st.toggle("Only fields that differ", value=True, key="only_diff")
    st.dataframe(figures.compare_frame(chosen, only_differences=only), width="stretch", key="compare_table")
    keys = sorted({c.removeprefix("metrics.") for c in metric_cols if chosen[c].notna().any()})
    if keys:
        default = next((k for k in ("val/epe_mean", "train/total", "epe_mean", "accuracy") if k in keys), keys[0])
        metric = st.selectbox("Metric history", keys, index=keys.index(default), key="compare_metric")
        histories = {}
        for _, r in chosen.iterrows():
            h = data.metric_history(proj.tracking_uri, r["run_id"], metric)
            if len(h):
                histories[r["label"]] = (h["step"].to_numpy(), h["value"].to_numpy(np.float64))
        if histories:
            st.plotly_chart(figures.history_figure(histories, metric), width="stretch", key="history_chart")
