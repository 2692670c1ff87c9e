"""Plotly figures and pandas tables of the dashboard: pure functions of plain data (no Streamlit, no I/O).

    from dashboards import figures as F
    F.pck_figure({"evaluate 12:00": (thresholds_mm, pck)}, aucs={"evaluate 12:00": 0.71})
    F.comparison_frame(report["tables"]["table1"])      # paper / ours / ours − paper / verdict per row
    F.mesh_figure(vertices, faces, joints, joints_gt)     # interactive MANO mesh (Mesh3d) + skeletons
    F.beyond_paper_frame({"evaluate": {"epe_pa_mean": 9.1, "f5_mesh": 0.4}})   # metrics beyond the paper

Units: EPE in mm, PCK thresholds in mm, AUC and accuracies in [0, 1] (tables show accuracies in %).
3D coordinates are the camera frame of keyhand.geometry.render (x right, y down, z forward, mm); the mesh
figure's default camera looks along +z with y down, i.e. the view of the input crop (Eq. 6).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from pipeline.report import as_finite as _num

__all__ = [
    "BETTER", "WORSE", "SAME", "NOISE", "verdict", "comparison_frame", "controls_frame",
    "table6_frame", "style_comparison", "table_figure",
    "pck_figure", "auc_frame", "auc_figure", "fold_accuracy_figure", "confusion_figure", "per_class_accuracy",
    "per_class_figure", "mesh_figure", "history_figure", "compare_frame", "SKELETON", "BEYOND_PAPER",
    "beyond_paper_frame",
]

BETTER, WORSE, SAME = "#1a7f37", "#cf222e", "#57606a"
_BETTER_BG, _WORSE_BG = "#dafbe1", "#ffebe9"
#: Bones of the 21-joint skeleton (manopth order: wrist, thumb 1-4, index, middle, ring, little): (parent, child).
SKELETON = tuple((0 if (j - 1) % 4 == 0 else j - 1, j) for j in range(1, 21))
_FINGER = ["#ff5050", "#e0a800", "#2ca02c", "#1f77b4", "#9467bd"]


def verdict(diff: Any, lower_is_better: bool, tol: float = 1e-9) -> str:
    """``"better"`` / ``"worse"`` / ``"same"`` for ours − paper, or ``""`` when there is no difference to judge."""
    d = _num(diff)
    if d is None:
        return ""
    if abs(d) <= tol:
        return "same"
    return "better" if (d < 0) == lower_is_better else "worse"


# ------------------------------------------------------------------------------------------------- tables

NOISE = "within noise"


def _interval_text(lo: Any, hi: Any) -> str:
    lo, hi = _num(lo), _num(hi)
    return "" if lo is None or hi is None else f"[{lo:.2f}, {hi:.2f}]"


def comparison_frame(table: Mapping[str, Any]) -> pd.DataFrame:
    """One of report.json's Tables 1-5 (pipeline.report.build_report) as a frame.

    Columns: ``design choice`` (the paper's label), ``row`` (the params.yaml ablation row, when any),
    ``paper``, ``ours`` (mean over seeds and test images), ``interval`` (its 95 % bootstrap interval),
    ``ours − paper``, ``verdict`` (better / worse only when the paper's value lies outside our interval, else
    "within noise"; "" without an interval: nothing is judged on a bare number), ``paper vs base`` (the
    paper's difference to the row it compares this one with), ``base`` (the row ours is compared with: its
    ``from``, else ``base``), ``vs base`` (our paired difference to it), ``vs base interval``, ``vs base
    verdict`` ("resolved" / "within noise" / "no verdict" with fewer than 3 seeds) and ``note``. Missing
    values are NaN.
    """
    lower = bool(table.get("lower_is_better", True))
    rows = []
    for r in table.get("rows", []):
        paper, ours = _num(r.get("paper")), _num(r.get("ours"))
        diff = _num(r.get("diff"))
        if diff is None and paper is not None and ours is not None:
            diff = ours - paper
        ci = r.get("ci") or [None, None]
        lo, hi = _num(ci[0]), _num(ci[1])
        judged = ""
        if diff is not None and lo is not None and hi is not None and paper is not None:
            judged = verdict(diff, lower) if not lo <= paper <= hi else NOISE
        vb = r.get("vs_base") or {}
        vb_mean = _num(vb.get("mean"))
        rows.append({"design choice": r.get("label", ""), "row": r.get("row", ""),
                     "paper": np.nan if paper is None else paper, "ours": np.nan if ours is None else ours,
                     "interval": _interval_text(lo, hi),
                     "ours − paper": np.nan if diff is None else diff, "verdict": judged,
                     "paper vs base": np.nan if _num(r.get("paper_vs_diff")) is None else _num(r["paper_vs_diff"]),
                     "base": r.get("ours_vs") or "",
                     "vs base": np.nan if vb_mean is None else vb_mean,
                     "vs base interval": _interval_text(vb.get("lo"), vb.get("hi")),
                     "vs base verdict": "" if vb_mean is None else (vb.get("verdict") or (
                         "resolved" if vb.get("resolved") else NOISE)),
                     "note": r.get("note", "")})
    cols = ["design choice", "row", "paper", "ours", "interval", "ours − paper", "verdict", "paper vs base", "base",
            "vs base", "vs base interval", "vs base verdict", "note"]
    return pd.DataFrame(rows, columns=cols)


def controls_frame(controls: Sequence[Mapping[str, Any]]) -> pd.DataFrame:
    """report.json's ``controls`` (the framework beside the mean pose and the direct head) as a frame:
    ``model``, ``row``, ``seeds``, ``epochs``, ``EPE (mm)``, ``interval``, ``AUC``, ``vs base``,
    ``vs base interval``, ``vs base verdict``, then the same after Procrustes alignment: ``PA-EPE (mm)``,
    ``PA vs base``, ``PA vs base interval``, ``PA vs base verdict``."""
    rows = []
    for r in controls:
        ours, vb = _num(r.get("ours")), r.get("vs_base") or {}
        ci = r.get("ci") or [None, None]
        vb_mean = _num(vb.get("mean"))
        pa, pvb = _num(r.get("pa")), r.get("pa_vs_base") or {}
        pvb_mean = _num(pvb.get("mean"))
        rows.append({"model": r.get("label", ""), "row": r.get("row", ""), "seeds": r.get("seeds"),
                     "epochs": r.get("epochs"), "EPE (mm)": np.nan if ours is None else ours,
                     "interval": _interval_text(ci[0], ci[1]),
                     "AUC": np.nan if _num(r.get("auc")) is None else _num(r.get("auc")),
                     "vs base": np.nan if vb_mean is None else vb_mean,
                     "vs base interval": _interval_text(vb.get("lo"), vb.get("hi")),
                     "vs base verdict": "" if vb_mean is None else (vb.get("verdict") or (
                         "resolved" if vb.get("resolved") else NOISE)),
                     "PA-EPE (mm)": np.nan if pa is None else pa,
                     "PA vs base": np.nan if pvb_mean is None else pvb_mean,
                     "PA vs base interval": _interval_text(pvb.get("lo"), pvb.get("hi")),
                     "PA vs base verdict": "" if pvb_mean is None else (pvb.get("verdict") or (
                         "resolved" if pvb.get("resolved") else NOISE))})
    return pd.DataFrame(rows, columns=["model", "row", "seeds", "epochs", "EPE (mm)", "interval", "AUC", "vs base",
                                       "vs base interval", "vs base verdict", "PA-EPE (mm)", "PA vs base",
                                       "PA vs base interval", "PA vs base verdict"])


def table6_frame(table: Mapping[str, Any]) -> pd.DataFrame:
    """Table 6 (gesture accuracy, %): per model, ``paper <ds>`` / ``ours <ds>`` / ``ours − paper <ds>`` per dataset."""
    cols = list(table.get("columns", []))
    rows = []
    for r in table.get("rows", []):
        row: dict[str, Any] = {"model": r.get("label", "")}
        for c in cols:
            p, o = _num((r.get("paper") or {}).get(c)), _num((r.get("ours") or {}).get(c))
            d = _num((r.get("diff") or {}).get(c))
            row[f"paper {c}"] = np.nan if p is None else p
            row[f"ours {c}"] = np.nan if o is None else o
            row[f"ours − paper {c}"] = np.nan if d is None else d
        rows.append(row)
    return pd.DataFrame(rows, columns=["model"] + [f"{k} {c}" for c in cols for k in ("paper", "ours", "ours − paper")])


def _css(judged: str) -> str:
    return (f"background-color: {_BETTER_BG}; color: {BETTER}" if judged == "better" else
            f"background-color: {_WORSE_BG}; color: {WORSE}" if judged == "worse" else "")


#: Columns that count (seeds, epochs): shown as integers, not with the metric's digits.
_COUNTS = ("seeds", "epochs")


def style_comparison(frame: pd.DataFrame, lower_is_better: bool, digits: int = 2):
    """A pandas Styler colouring only RESOLVED differences: ``ours − paper`` green / red when the row's
    ``verdict`` is better / worse (the paper's value outside our interval), ``vs base`` (``PA vs base``) when its
    ``vs base verdict`` (``PA vs base verdict``) is "resolved" (green: better than the base). Differences
    within noise stay plain. A frame without a ``verdict`` column (Table 6: no intervals) is never coloured."""
    def colour_paper(col: pd.Series) -> list[str]:
        if "verdict" not in frame.columns:
            return [""] * len(col)
        return [_css(frame.loc[i, "verdict"]) for i in col.index]

    def colour_base(col: pd.Series) -> list[str]:
        judged = "PA vs base verdict" if col.name == "PA vs base" else "vs base verdict"
        return [_css(verdict(v, lower_is_better)) if frame.loc[i, judged] == "resolved" else ""
                for i, v in col.items()]

    num_cols = [c for c in frame.columns if pd.api.types.is_numeric_dtype(frame[c])]
    styler = frame.style.format({c: "{:.0f}" if c in _COUNTS else f"{{:.{digits}f}}" for c in num_cols}, na_rep="—")
    if "ours − paper" in frame.columns:
        styler = styler.apply(colour_paper, subset=["ours − paper"])
    if "vs base" in frame.columns and "vs base verdict" in frame.columns:
        styler = styler.apply(colour_base, subset=["vs base"])
    if "PA vs base" in frame.columns and "PA vs base verdict" in frame.columns:
        styler = styler.apply(colour_base, subset=["PA vs base"])
    return styler


def table_figure(table: Mapping[str, Any], title: str | None = None) -> go.Figure:
    """Grouped bars, paper vs ours per row of a Tables 1-5 entry (y: the table's metric)."""
    frame = comparison_frame(table)
    labels = frame["design choice"].tolist()
    fig = go.Figure()
    fig.add_bar(name="paper", x=labels, y=frame["paper"], marker_color="#8c959f")
    colours = [BETTER if v == "better" else WORSE if v == "worse" else SAME for v in frame["verdict"]]
    cis = [r.get("ci") or [None, None] for r in table.get("rows", [])]
    pairs = list(zip(cis, frame["ours"], strict=True))
    plus = [(_num(c[1]) - o) if _num(c[1]) is not None and o == o else None for c, o in pairs]
    minus = [(o - _num(c[0])) if _num(c[0]) is not None and o == o else None for c, o in pairs]
    error_y = ({"type": "data", "symmetric": False, "array": plus, "arrayminus": minus}
               if any(v is not None for v in plus) else None)
    fig.add_bar(name="ours", x=labels, y=frame["ours"], marker_color=colours, error_y=error_y)
    fig.update_layout(barmode="group", title=title or table.get("title", ""), yaxis_title=table.get("metric", ""),
                      legend={"orientation": "h", "y": 1.12}, margin={"l": 40, "r": 10, "t": 60, "b": 10},
                      height=360)
    return fig


#: The pose metrics beyond the paper (keyhand.metrics, issue 11): key -> (label, unit, what it measures).
BEYOND_PAPER = {
    "epe_scaled_mean": ("EPE, scale-aligned", "mm",
                        "prediction rescaled to the ground truth's middle-finger MCP→PIP bone (as hand3d)"),
    "epe_pa_mean": ("EPE, Procrustes-aligned", "mm", "after the best rotation, scale and translation (no reflection)"),
    "f5_joints": ("F@5 mm, joints", "", "F-score of the 21 Procrustes-aligned joints as point sets (FreiHAND)"),
    "f15_joints": ("F@15 mm, joints", "", "the same at 15 mm"),
    "mesh_error_mean": ("mesh error", "mm", "mean vertex distance, root-aligned (sets with a ground-truth mesh)"),
    "mesh_error_pa_mean": ("mesh error, Procrustes-aligned", "mm", "mean vertex distance after the best similarity"),
    "f5_mesh": ("F@5 mm, mesh", "", "F-score of the Procrustes-aligned vertices (FreiHAND's F@5)"),
    "f15_mesh": ("F@15 mm, mesh", "", "the same at 15 mm (FreiHAND's F@15)"),
    "sfe_2d_px": ("SFE 2D keypoint error", "crop px", "arg-max of the SFE's last heatmaps vs the annotated 2D joints "
                  "(does the SFE see the hand?)"),
}


def beyond_paper_frame(runs: Mapping[str, Mapping[str, Any]]) -> pd.DataFrame:
    """One row per metric of :data:`BEYOND_PAPER` (columns metric, unit, one per run label with its value or
    NaN, definition) from ``{label: {metric key: value}}``; mesh rows show NaN where a run had no mesh."""
    rows = []
    for key, (label, unit, what) in BEYOND_PAPER.items():
        row: dict[str, Any] = {"metric": label, "unit": unit}
        for name, values in runs.items():
            v = _num(values.get(key))
            row[name] = np.nan if v is None else v
        row["definition"] = what
        rows.append(row)
    return pd.DataFrame(rows, columns=["metric", "unit", *runs, "definition"])


# ------------------------------------------------------------------------------------------------- PCK / AUC

def pck_figure(curves: Mapping[str, tuple[Sequence[float], Sequence[float]]],
               aucs: Mapping[str, float] | None = None,
               bands: Mapping[str, tuple[Sequence[float], Sequence[float]]] | None = None) -> go.Figure:
    """3D PCK curves (x: threshold mm, y: fraction of joints within it), one line per run label.

    ``aucs`` (label -> AUC in [0, 1]) are appended to the legend entries; ``bands`` (label -> (lo, hi) per
    threshold, keyhand.stats.pck_band) are drawn as shaded intervals under their curve.
    """
    fig = go.Figure()
    for label, (th, vals) in curves.items():
        auc = (aucs or {}).get(label)
        name = f"{label} (AUC {auc:.3f})" if _num(auc) is not None else label
        band = (bands or {}).get(label)
        if band is not None:
            x = list(map(float, th))
            fig.add_scatter(x=x + x[::-1], y=list(map(float, band[1])) + list(map(float, band[0]))[::-1],
                            fill="toself", line={"width": 0}, opacity=0.2, hoverinfo="skip", showlegend=False,
                            name=f"{label} interval")
        fig.add_scatter(x=list(map(float, th)), y=list(map(float, vals)), mode="lines+markers", name=name,
                        hovertemplate="%{x:.1f} mm: %{y:.3f}<extra>" + label + "</extra>")
    fig.update_layout(xaxis_title="threshold (mm)", yaxis_title="3D PCK", yaxis_range=[0, 1.02], showlegend=True,
                      legend={"orientation": "h", "y": -0.2}, margin={"l": 40, "r": 10, "t": 30, "b": 10},
                      height=420, title="3D PCK (STB protocol, 20-50 mm)")
    return fig


def auc_frame(table5: Mapping[str, Any], ours: Mapping[str, float]) -> pd.DataFrame:
    """Table 5's AUCs (paper) and ours (label -> AUC) in one list, best first: columns method, AUC, source."""
    rows = [{"method": r.get("label", ""), "AUC": _num(r.get("paper")), "source": "paper"}
            for r in table5.get("rows", [])]
    rows += [{"method": label, "AUC": _num(v), "source": "ours"} for label, v in ours.items()]
    frame = pd.DataFrame(rows, columns=["method", "AUC", "source"]).dropna(subset=["AUC"])
    return frame.sort_values("AUC", ascending=False).reset_index(drop=True)


def auc_figure(frame: pd.DataFrame) -> go.Figure:
    """Horizontal bars of :func:`auc_frame` (ours highlighted)."""
    f = frame.iloc[::-1]
    colours = ["#d4793a" if s == "ours" else "#8c959f" for s in f["source"]]
    fig = go.Figure(go.Bar(x=f["AUC"], y=f["method"], orientation="h", marker_color=colours,
                           hovertemplate="%{y}: %{x:.3f}<extra></extra>"))
    fig.update_layout(xaxis_title="AUC (3D PCK 20-50 mm)", xaxis_range=[0, 1], height=max(300, 22 * len(f) + 80),
                      margin={"l": 10, "r": 10, "t": 30, "b": 10}, title="Table 5 with ours")
    return fig


# ------------------------------------------------------------------------------------------------- gestures

def fold_accuracy_figure(accuracies: Sequence[float], folds: Sequence[Any] | None = None) -> go.Figure:
    """Per-fold accuracy (bars, %), with the mean (line) and ± one std (band) over folds."""
    acc = np.asarray(accuracies, np.float64) * 100
    x = [str(f) for f in (folds if folds is not None else range(len(acc)))]
    fig = go.Figure(go.Bar(x=x, y=acc, name="fold accuracy", marker_color="#1f77b4",
                           hovertemplate="fold %{x}: %{y:.1f} %<extra></extra>"))
    if acc.size:
        mean, std = float(acc.mean()), float(acc.std())
        fig.add_hrect(y0=mean - std, y1=mean + std, fillcolor="#d4793a", opacity=0.15, line_width=0)
        fig.add_hline(y=mean, line_color="#d4793a", line_dash="dash",
                      annotation_text=f"mean {mean:.1f} % ± {std:.1f}", annotation_position="top left")
    fig.update_layout(xaxis_title="fold", yaxis_title="accuracy (%)", yaxis_range=[0, 100], height=340,
                      margin={"l": 40, "r": 10, "t": 30, "b": 10}, title="Accuracy per fold")
    return fig


def confusion_figure(matrix: Sequence[Sequence[float]], class_names: Sequence[str], normalize: bool = True
                     ) -> go.Figure:
    """Confusion matrix heatmap: rows = true class, columns = predicted; ``normalize`` shows row fractions
    (the counts stay in the hover text and the cell labels)."""
    cm = np.asarray(matrix, np.float64)
    names = [str(c) for c in class_names]
    rows = cm.sum(axis=1, keepdims=True)
    frac = np.divide(cm, rows, out=np.zeros_like(cm), where=rows > 0)
    z = frac if normalize else cm
    fig = go.Figure(go.Heatmap(z=z, x=names, y=names, colorscale="Blues", zmin=0, zmax=1 if normalize else None,
                               text=cm.astype(int).astype(str), texttemplate="%{text}", customdata=frac,
                               hovertemplate="true %{y} → predicted %{x}: %{text} (%{customdata:.0%})<extra></extra>",
                               colorbar={"title": "row fraction" if normalize else "count"}))
    fig.update_layout(xaxis_title="predicted", yaxis_title="true", yaxis_autorange="reversed",
                      height=max(360, 28 * len(names) + 120), margin={"l": 10, "r": 10, "t": 30, "b": 10},
                      title="Confusion matrix (all folds)")
    return fig


def per_class_accuracy(matrix: Sequence[Sequence[float]], class_names: Sequence[str]) -> pd.DataFrame:
    """Per class: samples (row sum), correct (diagonal), accuracy (%) = correct / samples (NaN without samples)."""
    cm = np.asarray(matrix, np.float64)
    n, correct = cm.sum(axis=1), np.diag(cm)
    acc = np.divide(correct, n, out=np.full_like(n, np.nan), where=n > 0) * 100
    return pd.DataFrame({"class": [str(c) for c in class_names], "samples": n.astype(int),
                         "correct": correct.astype(int), "accuracy (%)": acc})


def per_class_figure(frame: pd.DataFrame) -> go.Figure:
    """Bars of :func:`per_class_accuracy`."""
    fig = go.Figure(go.Bar(x=frame["class"], y=frame["accuracy (%)"], marker_color="#2ca02c",
                           customdata=frame["samples"],
                           hovertemplate="%{x}: %{y:.1f} % of %{customdata}<extra></extra>"))
    fig.update_layout(yaxis_title="accuracy (%)", yaxis_range=[0, 100], height=320,
                      margin={"l": 40, "r": 10, "t": 30, "b": 10}, title="Accuracy per class")
    return fig


# ------------------------------------------------------------------------------------------------- meshes

def _skeleton_traces(joints: np.ndarray, name: str, dash: str | None, width: int) -> list[go.Scatter3d]:
    traces = []
    for f in range(5):
        chain = [0] + [1 + 4 * f + i for i in range(4)]
        p = joints[chain]
        traces.append(go.Scatter3d(x=p[:, 0], y=p[:, 1], z=p[:, 2], mode="lines+markers", name=name,
                                   legendgroup=name, showlegend=f == 0,
                                   line={"color": _FINGER[f], "width": width, "dash": dash or "solid"},
                                   marker={"size": 3, "color": _FINGER[f]},
                                   hovertemplate=name + " joint: (%{x:.1f}, %{y:.1f}, %{z:.1f}) mm<extra></extra>"))
    return traces


def mesh_figure(vertices: np.ndarray, faces: np.ndarray, joints: np.ndarray | None = None,
                joints_gt: np.ndarray | None = None, title: str = "") -> go.Figure:
    """The MANO mesh as an interactive ``Mesh3d`` (vertices (V, 3) mm, faces (F, 3) 0-based), optionally with the
    predicted skeleton (solid) and the ground truth one (dashed), (21, 3) mm each, in the same frame."""
    v = np.asarray(vertices, np.float64)
    f = np.asarray(faces, np.int64)
    if v.ndim != 2 or v.shape[1] != 3 or f.ndim != 2 or f.shape[1] != 3:
        raise ValueError(f"mesh_figure: vertices {v.shape} and faces {f.shape} must be (V, 3) and (F, 3)")
    if f.size and (f.min() < 0 or f.max() >= len(v)):
        raise ValueError(f"mesh_figure: face indices span [{f.min()}, {f.max()}] but there are {len(v)} vertices")
    fig = go.Figure(go.Mesh3d(x=v[:, 0], y=v[:, 1], z=v[:, 2], i=f[:, 0], j=f[:, 1], k=f[:, 2], name="mesh",
                              color="#e8b89a", opacity=0.55 if joints is not None else 1.0, flatshading=False,
                              lighting={"ambient": 0.45, "diffuse": 0.8, "specular": 0.15, "roughness": 0.7},
                              lightposition={"x": 0, "y": -200, "z": -500}, showlegend=True,
                              hoverinfo="skip"))
    if joints is not None:
        for t in _skeleton_traces(np.asarray(joints, np.float64), "predicted joints", None, 6):
            fig.add_trace(t)
    if joints_gt is not None:
        for t in _skeleton_traces(np.asarray(joints_gt, np.float64), "ground truth", "dash", 3):
            fig.add_trace(t)
    axis = {"title": "", "showbackground": False, "showgrid": True, "zeroline": False}
    fig.update_layout(title=title, height=560, margin={"l": 0, "r": 0, "t": 40, "b": 0},
                      legend={"orientation": "h", "y": 0.02},
                      scene={"aspectmode": "data", "xaxis": {**axis, "title": "x (mm)"},
                             "yaxis": {**axis, "title": "y (mm)"}, "zaxis": {**axis, "title": "z (mm)"},
                             "camera": {"up": {"x": 0, "y": -1, "z": 0}, "eye": {"x": 0.0, "y": 0.0, "z": -1.9},
                                        "center": {"x": 0, "y": 0, "z": 0}}})
    return fig


# ------------------------------------------------------------------------------------------------- runs

def history_figure(histories: Mapping[str, tuple[Sequence[float], Sequence[float]]], metric: str) -> go.Figure:
    """A metric's logged values per step (epoch), one line per run label."""
    fig = go.Figure()
    for label, (steps, vals) in histories.items():
        fig.add_scatter(x=list(steps), y=list(vals), mode="lines+markers", name=label)
    fig.update_layout(xaxis_title="step (epoch)", yaxis_title=metric, title=metric, height=380,
                      legend={"orientation": "h", "y": -0.25}, margin={"l": 40, "r": 10, "t": 40, "b": 10})
    return fig


def compare_frame(runs: pd.DataFrame, only_differences: bool = False) -> pd.DataFrame:
    """Runs side by side: one column per run (its label), rows = status/times, metrics.*, params.*.

    ``runs`` is a slice of :func:`dashboards.data.runs_table` with a ``label`` column. ``only_differences``
    keeps the rows whose values are not all equal (always keeps the header rows)."""
    header = ["experiment", "run_name", "status", "start_time", "duration_s"]
    keys = header + sorted(c for c in runs.columns if c.startswith("metrics.")) \
        + sorted(c for c in runs.columns if c.startswith("params."))
    out = runs.set_index("label")[keys].T.astype(object)
    out = out.loc[[k for k in out.index if k in header or not out.loc[k].isna().all()]]
    if only_differences and out.shape[1] > 1:
        def differs(row: pd.Series) -> bool:
            return len({str(v) for v in row}) > 1

        out = out.loc[[k for k in out.index if k in header or differs(out.loc[k])]]
    out.index.name = "field"
    return out.map(lambda v: "—" if v is None or (isinstance(v, float) and math.isnan(v)) else str(v))
