"""Meshes: pick an evaluation run and a test sample -> its Fig. 6 panel and the interactive MANO mesh (§3.4).

The mesh of a sample is rebuilt from the HE parameters (t, s, R, θ, β) that the evaluate stage stored in
runs/evaluate/predictions.npz, through the HE (MANO layer) of the checkpoint the run evaluated; for an older
run (whose predictions were overwritten) the checkpoint is run on the prepared test sample instead.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import streamlit as st

from dashboards import data, figures, ui
from pipeline.stages import prepared_dir

st.title("Fig. 6 panels and meshes")
proj = ui.project_or_stop()
runs = ui.runs_or_stop(proj)
evals = runs[runs["experiment"] == proj.experiment("evaluate")] if not runs.empty else runs
pred_file = proj.runs_dir / "evaluate" / "predictions.npz"
panel_dir = proj.runs_dir / "evaluate" / "panels"
file_eval = data.read_json(proj.runs_dir / "metrics" / "evaluate.json") or {}
PANEL = re.compile(r"(\d+)_panel\.png$")

if len(evals):
    label = st.selectbox("Evaluation run", evals["label"].tolist(), key="mesh_run",
                         help="runs of the evaluate stage, newest first")
    row = evals[evals["label"] == label].iloc[0]
    run_id, latest_run = row["run_id"], label == evals["label"].iloc[0]
    checkpoint = proj.resolve(row["checkpoint"]) if row["checkpoint"] else proj.runs_dir / "train"
    dataset = row["dataset"] or file_eval.get("dataset", "")
    panels = {int(m.group(1)): ("artifact", p) for p in data.list_artifacts(proj.tracking_uri, run_id, "images")
              if (m := PANEL.search(p))}
elif pred_file.is_file() or panel_dir.is_dir():
    st.info("No evaluation run in MLflow: showing the evaluate stage's files (runs/evaluate).")
    run_id, latest_run, checkpoint, panels = None, True, proj.runs_dir / "train", {}
    dataset = file_eval.get("dataset", "")
else:
    ui.no_runs(proj, "evaluation runs")
    st.stop()
if latest_run and panel_dir.is_dir():
    for p in sorted(panel_dir.glob("*_panel.png")):
        m = PANEL.search(p.name)
        if m:
            panels.setdefault(int(m.group(1)), ("file", str(p)))

pred = data.read_predictions(pred_file) if latest_run else None
split_dir = None
if "/" in str(dataset):
    name, split = str(dataset).split("/", 1)
    split_dir = proj.resolve(prepared_dir("pose", name, split))
    split_dir = split_dir if (split_dir / "manifest.json").is_file() else None

if pred is not None:
    indices = [int(i) for i in pred["index"]]
    epe = {int(i): float(e) for i, e in zip(pred["index"], pred["epe"], strict=True)}
elif split_dir is not None:
    indices = list(range(int(data.read_json(split_dir / "manifest.json")["count"])))
    epe = {}
else:
    indices, epe = sorted(panels), {}
if not indices:
    st.warning("This run has no samples to show (no predictions, panels or prepared test split).")
    st.stop()


def _sample_label(i: int) -> str:
    bits = [f"sample {i}"]
    if i in epe and np.isfinite(epe[i]):
        bits.append(f"EPE {epe[i]:.1f} mm")
    if i in panels:
        bits.append("Fig. 6 panel")
    return " · ".join(bits)


with_panel = [i for i in indices if i in panels]
ordered = with_panel + [i for i in indices if i not in panels]
index = st.selectbox("Test sample", ordered, format_func=_sample_label, key="mesh_sample",
                     help=f"{len(indices)} samples of {dataset or 'the test split'}; those with a rendered panel first")
if not latest_run and run_id is not None:
    st.caption("An older run: its predictions file was replaced by a later evaluation, so the mesh comes from "
               "running its checkpoint on the sample.")

st.subheader("Fig. 6 panel: (a) input, (b) 2D joints, (c) silhouette, (d) 3D joints, (e) mesh")
model = None
try:
    model, section = data.load_framework(checkpoint)
except data.ProjectError as e:
    st.warning(f"No model for meshes: {e}")
if index in panels:
    kind, where = panels[index]
    st.image(data.artifact_bytes(proj.tracking_uri, run_id, where) if kind == "artifact" else where,
             width="stretch", caption=f"{Path(where).name} ({'MLflow artifact' if kind == 'artifact' else 'file'})")
elif model is not None and split_dir is not None:
    if st.button("Render the Fig. 6 panel of this sample", key="render_panel"):
        with st.spinner("Running the model on the sample…"):
            st.image(data.render_panel_png(model, split_dir, index), width="stretch")
else:
    st.info("No panel for this sample (the evaluate stage renders `evaluate.panels` of them).")

st.subheader("3D mesh (drag to turn, scroll to zoom)")
if model is not None:
    try:
        if pred is not None:
            k = indices.index(index)
            mesh = data.mesh_from_prediction(model, pred, k)
            how = "rebuilt from the stored HE parameters (t, s, R, θ, β) through the checkpoint's MANO layer"
        elif split_dir is not None:
            mesh = data.mesh_from_model(model, split_dir, index)
            how = "the checkpoint run on the prepared sample"
        else:
            mesh = None
            st.info("Neither predictions nor the prepared test split are available for this run.")
    except data.ProjectError as e:
        mesh = None
        st.error(str(e))
    if mesh is not None:
        show = st.toggle("Show joints (predicted solid, ground truth dashed)", value=True, key="mesh_joints")
        c = st.columns(3)
        c[0].metric("EPE of this sample (mm)", f"{mesh['epe']:.2f}" if np.isfinite(mesh["epe"]) else "—")
        c[1].metric("Vertices / faces", f"{len(mesh['vertices'])} / {len(mesh['faces'])}")
        c[2].metric("MANO PCA components", f"{section.pca_comps}")
        fig = figures.mesh_figure(mesh["vertices"], mesh["faces"], mesh["joints"] if show else None,
                                  mesh["joints_gt"] if show else None, title=f"sample {index}")
        st.plotly_chart(fig, width="stretch", key="mesh_chart")
        st.caption(f"Mesh {how}; millimetres, camera frame (x right, y down), the predicted wrist at the origin "
                   "and the ground truth root-aligned as EPE is computed. Checkpoint: "
                   f"`{checkpoint}`.")
