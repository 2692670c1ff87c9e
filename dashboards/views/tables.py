"""Tables: the paper's Tables 1-6 (pipeline/paper_results.yaml) beside ours (runs/report/report.json), coloured."""

from __future__ import annotations

import streamlit as st

from dashboards import data, figures, ui

st.title("The paper's tables beside ours")
proj = ui.project_or_stop()
report_path = proj.runs_dir / "report" / "report.json"
try:
    report = data.read_json(report_path)
except data.ProjectError as e:
    st.error(str(e))
    st.stop()
if report is None:
    st.info(f"No report yet ({report_path}). Build it with `{data.NO_RUNS_HINT}` (or `dvc repro`; just this "
            "stage: `keyhand stage report`). Below: the paper's numbers alone.")
    from pipeline.report import build_report

    report = build_report({}, {}, {})  # the paper's numbers with every "ours" empty

st.caption("Ours: mean over test images and seeds with its 95 % interval (bootstrap over both). Coloured only "
           "when resolved: ours − paper green / red when the paper's value lies outside our interval; vs base "
           "(the paired difference to the base row = the main configuration at the same budget) when its "
           "interval excludes 0. Everything else is within noise. The test split is read only by the "
           "evaluation and the report (training and the search read val). " + (
               "Data source **synthetic**: a pipeline check, not a reproduction."
               if report.get("data_source") == "synthetic" else f"Data source: {report.get('data_source')}."))
ev = report.get("evaluation") or {}
if ev:
    st.write(f"Evaluation: EPE **{ev.get('epe_mean', float('nan')):.2f} mm** (median "
             f"{ev.get('epe_median', float('nan')):.2f}), AUC 20-50 mm **{ev.get('auc', float('nan')):.3f}**, "
             f"{ev.get('count', 0)} samples.")

controls = report.get("controls") or []
if any(c.get("ours") is not None for c in controls):
    st.subheader("Controls: does the framework beat trivial baselines?")
    cframe = figures.controls_frame(controls)
    st.dataframe(figures.style_comparison(cframe, True), hide_index=True, width="stretch", key="df_controls")
    stats = report.get("statistics") or {}
    st.caption(f"{stats.get('seeds') or '—'} seed(s) per row at {stats.get('epochs') or '—'} epochs (the main run: "
               f"{stats.get('main_epochs') or '—'} epochs, one seed, interval over test images only).")

tables = report.get("tables", {})
show_plots = st.toggle("Bar charts", value=True, help="paper vs ours per row")
for key in ("table1", "table2", "table3", "table4", "table5"):
    table = tables.get(key)
    if not table:
        continue
    st.subheader(table["title"])
    frame = figures.comparison_frame(table)
    if key == "table5":
        frame = frame.drop(columns=["row"])
    lower = bool(table.get("lower_is_better", True))
    st.dataframe(figures.style_comparison(frame, lower, digits=2 if lower else 3), hide_index=True, width="stretch",
                 key=f"df_{key}")
    ran = frame["ours"].notna().sum()
    if show_plots and ran and key != "table5":
        st.plotly_chart(figures.table_figure(table), width="stretch", key=f"fig_{key}")

t6 = tables.get("table6")
if t6:
    st.subheader(t6["title"])
    st.dataframe(figures.style_comparison(figures.table6_frame(t6), lower_is_better=False), hide_index=True,
                 width="stretch", key="df_table6")
    ours = t6.get("ours_by_dataset") or {}
    if ours:
        st.markdown("Our gesture cross-validation per dataset (mean ± std over folds): " + "; ".join(
            f"**{ds}** {v['mean_pct']:.2f} % ± {v['std_pct']:.2f} ({v['folds']} folds)"
            for ds, v in ours.items() if v.get("mean_pct") is not None))
        st.caption("The synthetic gesture set is neither RWTH nor Senz3D: it has no column of the paper's table."
                   if not any(ds in t6.get("columns", []) for ds in ours) else "")

tm = report.get("timings_ms") or {}
if tm.get("ours"):
    st.subheader("Inference time per image (ms, §4.3)")
    paper, ours = tm.get("paper", {}), tm["ours"]
    st.dataframe([{"component": c.upper() if c != "total" else "total", "paper (GTX 1080)": paper.get(c),
                   "ours": ours.get(c)} for c in ("sfe", "ve", "he", "total")], hide_index=True, key="df_timings")
    if ours.get("device"):
        st.caption(f"ours measured on {ours['device']}")
