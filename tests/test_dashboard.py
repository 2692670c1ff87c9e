"""dashboards/: every page through Streamlit's AppTest, the figure builders directly, the data layer's meshes.

The project under test is built once per session in tmp (:func:`build_project`): tiny real synth-stb data
(8 train + 4 test images at 96×128, prepared at 64 px), a tiny Framework (15 PCA components) that is really
trained for one epoch and evaluated, and a SQLite MLflow store filled through ``trainers.tracking`` with
the runs the graph logs: pretrain/train per-epoch metrics, two evaluate runs (untrained and trained model:
EPE, AUC, the PCK curve, Fig. 6 panels), an ablation parent with row children (one FAILED), a gesture-CV
parent with fold children and its confusion matrix; plus the report and metrics files the stages write.
"""

from __future__ import annotations

import base64
import json
import math
import re
from pathlib import Path

import numpy as np
import pytest
import yaml

from dashboards import figures as F

APP = Path(__file__).resolve().parents[1] / "dashboards" / "app.py"
TINY_MODEL = {"image_size": 64, "sfe_channels": 16, "ve_input_size": 32, "dense_scale": 1 / 64, "render_size": 32,
              "pca_comps": 15}
CLASSES = ["fist", "open", "point"]
FOLD_ACC = [0.5, 0.75, 0.625]
CONFUSION = [[3, 1, 0], [0, 4, 0], [1, 1, 2]]
_BUILT: dict[str, dict] = {}


# ------------------------------------------------------------------------------------------------ the project

def build_project(root: Path) -> dict:
    """A populated keyhand project in ``root`` (module docstring); returns what the tests compare against."""
    key = str(root)
    if key in _BUILT:
        return _BUILT[key]
    import mlflow

    from keyhand.data.prepare import open_reader, prepare_split
    from keyhand.data.synthetic import generate
    from pipeline.params import load_params
    from pipeline.report import build_report, write_report
    from trainers.checkpoint import save_checkpoint
    from trainers.predict import split_panels
    from trainers.tracking import (
        MlflowCallback,
        ensure_experiments,
        log_evaluation,
        log_gesture_cv,
        log_image,
        tracked_run,
    )
    from trainers.train import build_framework, evaluate, fit, make_loader, make_loaders, open_split, save_predictions

    previous_uri = mlflow.get_tracking_uri()
    root.mkdir(parents=True, exist_ok=True)
    (root / "params.yaml").write_text(yaml.safe_dump({
        "model": TINY_MODEL,
        "train": {"epochs": 1, "batch_size": 4, "lr": 1e-3, "augment": False},
        "mlflow": {"tracking_uri": "sqlite:///runs/mlflow.db"}}))
    p = load_params(root / "params.yaml")
    cfg = p.train_config()
    raw = root / "data" / "synth" / "synth-stb"
    generate("synth-stb", raw, {"train": 8, "test": 4}, seed=0, image_size=(96, 128))
    split = {}
    for s in ("train", "test"):
        split[s] = root / "data" / "prepared" / "pose" / "synth-stb" / s
        prepare_split(open_reader("synth-stb", raw, s), split[s], image_size=64)

    uri = f"sqlite:///{root / 'runs' / 'mlflow.db'}"
    names = p.mlflow.experiments
    ensure_experiments(uri, list(names.values()))
    test_loader = make_loader(open_split(split["test"], cfg, "train", train=False), 4, shuffle=False)
    runs = root / "runs"

    def log_eval(model, ckpt: Path, name: str) -> dict:
        metrics = evaluate(model, test_loader, device="cpu")
        predictions = metrics.pop("predictions")
        with tracked_run(names["evaluate"], run_name=name, params=cfg.model_dump(), stage="evaluate",
                         tags={"keyhand.dataset": "synth-stb/test",
                               "keyhand.checkpoint": str(ckpt.relative_to(root))}) as run:
            log_evaluation(metrics)
            panel_dir = runs / "tmp-panels" / name
            for path in split_panels(model, open_split(split["test"], cfg, "train", train=False), [1], panel_dir):
                log_image(path, f"panels/{path.name}")
        return {"run_id": run.info.run_id, "metrics": metrics, "predictions": predictions}

    # an evaluation of the untrained model (older), then training and the evaluation of the trained one
    model = build_framework(cfg)
    init_ckpt = save_checkpoint(runs / "init", epoch=0, model=model, config={"stage": "train", **cfg.model_dump()})
    old = log_eval(model, init_ckpt, "evaluate-untrained")
    loaders = make_loaders(cfg, "train", split["train"], split["test"])
    with tracked_run(names["train"], run_name="train", params=cfg.model_dump(), stage="train") as train_run:
        result = fit("train", model, loaders, cfg, runs / "train", callbacks=[MlflowCallback()], device="cpu",
                     progress=False)
    new = log_eval(model.eval(), result.checkpoint, "evaluate")
    save_predictions(runs / "evaluate" / "predictions.npz", new["predictions"])

    # the ablation sweep: a parent and one child per row (per-epoch validation EPE), one row failed
    ablation = {"base": 120.0, "t1_no_sfe": 130.0, "t4_adapt_sum": 8.0}
    with tracked_run(names["ablation"], run_name="ablation", stage="ablate") as parent:
        pid = parent.info.run_id
    for row, epe in ablation.items():
        with tracked_run(names["ablation"], run_name=row, parent_run_id=pid, params={"row": row}):
            cb = MlflowCallback()
            for epoch in range(2):
                cb.on_epoch_end(epoch, {"val/epe_mean": epe + 10 * (1 - epoch), "train/total": 1.0 / (epoch + 1)})
    with pytest.raises(RuntimeError), tracked_run(names["ablation"], run_name="t2_ve1", parent_run_id=pid):
        raise RuntimeError("SFE weights do not fit")

    # gesture cross-validation: a parent per dataset, one child per fold, the confusion matrix on the parent
    with tracked_run(names["gesture_cv"], run_name="gesture-cv synth-gestures", stage="gesture_cv") as gparent:
        gid = gparent.info.run_id
    for k, acc in enumerate(FOLD_ACC):
        with tracked_run(names["gesture_cv"], run_name=f"fold={k}", parent_run_id=gid):
            mlflow.log_metric("accuracy", acc)
    log_gesture_cv(FOLD_ACC, np.asarray(CONFUSION), CLASSES, run_id=gid)

    # the files the evaluate / ablate / gesture_cv / report stages write
    from keyhand.metrics import SUMMARY_KEYS

    ev = {k: new["metrics"][k] for k in SUMMARY_KEYS}
    metrics_dir = runs / "metrics"
    metrics_dir.mkdir(parents=True, exist_ok=True)
    (metrics_dir / "evaluate.json").write_text(json.dumps({**ev, "dataset": "synth-stb/test"}))
    pck = new["metrics"]["pck"]
    (metrics_dir / "pck.json").write_text(json.dumps([{"threshold_mm": t, "pck": v} for t, v in
                                                      zip(pck["thresholds_mm"], pck["values"], strict=True)]))
    rows = {r: {"status": "FINISHED", "epe_mean": e, "auc": 0.1, "ci": [e - 1.5, e + 0.5], "seeds": 3,
                "vs_base": None if r == "base" else {"mean": e - 120.0, "lo": e - 125.0, "hi": e - 115.0,
                                                     "resolved": True}} for r, e in ablation.items()}
    rows["t2_ve1"] = {"status": "FAILED", "epe_mean": None}
    rows["control_direct"] = {"status": "FINISHED", "epe_mean": 118.0, "ci": [110.0, 126.0], "seeds": 3, "auc": 0.1,
                              "vs_base": {"mean": -2.0, "lo": -6.0, "hi": 2.0, "resolved": False},
                              "pa": {"epe_mean": 30.0, "ci": [28.0, 32.0],
                                     "vs_base": {"mean": 3.0, "lo": 0.8, "hi": 6.1, "resolved": True}}}
    rows["control_mean_pose"] = {"status": "FINISHED", "epe_mean": 150.0, "ci": [140.0, 160.0], "seeds": 1,
                                 "vs_base": {"mean": 30.0, "lo": 25.0, "hi": 35.0, "resolved": True}}
    gesture = {"synth-gestures": {"fold_accuracies": FOLD_ACC, "mean": float(np.mean(FOLD_ACC)),
                                  "std": float(np.std(FOLD_ACC)), "class_names": CLASSES, "confusion": CONFUSION}}
    (metrics_dir / "gesture_cv.json").write_text(json.dumps({"datasets": gesture}))
    report = build_report(ev, rows, gesture, {"sfe": 5.0, "ve": 2.0, "he": 1.0, "total": 8.0, "device": "cpu"},
                          datasets={"pose": "synth-stb"})
    write_report(report, runs / "report")
    mlflow.set_tracking_uri(previous_uri)
    out = {"root": root, "params": root / "params.yaml", "uri": uri, "eval_new": new, "eval_old": old,
           "train_run": train_run.info.run_id, "ablation": ablation, "checkpoint": result.checkpoint,
           "split_test": split["test"], "report": report}
    _BUILT[key] = out
    return out


@pytest.fixture(scope="session")
def project(tmp_path_factory: pytest.TempPathFactory, keyhand_cache: Path) -> dict:
    return build_project(tmp_path_factory.getbasetemp() / "dashboard-project")


@pytest.fixture()
def app(project: dict, monkeypatch: pytest.MonkeyPatch):
    """An AppTest of the dashboard on the populated project (fresh caches)."""
    import streamlit as st
    from streamlit.testing.v1 import AppTest

    monkeypatch.setenv("KEYHAND_PARAMS", str(project["params"]))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    st.cache_data.clear()
    return AppTest.from_file(str(APP), default_timeout=60)


def _page(at, page: str | None = None):
    """Run the app (or a widget's rerun; after switching to ``page`` when given): no exception, no error."""
    if page not in (None, "overview"):
        at.switch_page(f"views/{page}.py")
    at = at.run()
    assert not at.exception, [e.value for e in at.exception]
    assert not at.error, [e.value for e in at.error]
    return at


def _df(at, *columns: str, nth: int = 0):
    """The ``nth`` dataframe of the page holding all ``columns`` (AppTest exposes no key for dataframes)."""
    found = [d.value for d in at.dataframe if all(c in d.value.columns for c in columns)]
    assert len(found) > nth, (columns, [list(d.value.columns) for d in at.dataframe])
    return found[nth]


def _spec(chart) -> dict:
    return json.loads(chart.proto.spec)


def _arr(v) -> np.ndarray:
    """A plotly JSON array (a list, or a base64 typed array ``{"dtype", "bdata", "shape"}``) as numpy."""
    if isinstance(v, dict) and "bdata" in v:
        a = np.frombuffer(base64.b64decode(v["bdata"]), dtype=np.dtype(v["dtype"]))
        return a.reshape([int(s) for s in str(v["shape"]).split(",")]) if "shape" in v else a
    return np.asarray(v)


# ------------------------------------------------------------------------------------------------ AppTest pages

def test_overview_page(app, project: dict) -> None:
    at = _page(app)
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["EPE (mm, latest evaluation)"] == f"{project['eval_new']['metrics']['epe_mean']:.2f}"
    assert metrics["AUC 20-50 mm"] == f"{project['eval_new']['metrics']['auc']:.3f}"
    assert metrics["Gesture accuracy"] == f"{100 * np.mean(FOLD_ACC):.1f} % ± {100 * np.std(FOLD_ACC):.1f}"
    assert metrics["Ablation rows finished (latest sweep)"] == "3 / 4"
    # beyond the paper, beside EPE / AUC: the synth-stb test split carries its generator meshes
    m = project["eval_new"]["metrics"]
    assert m["mesh_count"] == m["count"] == 4
    assert metrics["EPE scale-aligned / Procrustes (mm)"] == f"{m['epe_scaled_mean']:.2f} / {m['epe_pa_mean']:.2f}"
    assert metrics["F@5 / F@15 mm (joints)"] == f"{m['f5_joints']:.3f} / {m['f15_joints']:.3f}"
    assert metrics["Mesh error root / Procrustes (mm)"] == f"{m['mesh_error_mean']:.2f} / {m['mesh_error_pa_mean']:.2f}"
    assert metrics["F@5 / F@15 mm (mesh)"] == f"{m['f5_mesh']:.3f} / {m['f15_mesh']:.3f}"
    latest = _df(at, "latest run", "headline")
    by_exp = latest.set_index("experiment")
    assert by_exp.loc["keyhand-evaluate", "latest run"] == "evaluate"
    assert by_exp.loc["keyhand-evaluate", "runs"] == 2
    assert by_exp.loc["keyhand-search", "status"] == "no runs"
    assert "3/4 child runs finished" in by_exp.loc["keyhand-ablation", "headline"]
    failed = _df(at, "run_name", "error")
    assert failed["run_name"].tolist() == ["t2_ve1"]
    assert "SFE weights do not fit" in failed["error"].iloc[0]


def test_tables_page(app, project: dict) -> None:
    from pipeline.report import load_paper_results

    at = _page(app.run(), "tables")
    paper = load_paper_results()["tables"]
    t1 = _df(at, "design choice", "row", nth=0)
    assert t1["design choice"].tolist() == [r["label"] for r in paper["table1"]["rows"]]
    assert t1["paper"].tolist() == [r["value"] for r in paper["table1"]["rows"]]
    assert "base" not in t1["row"].tolist()      # Tables 1-3 compare with the paper's 11.12 mm row, not the main one
    t4 = _df(at, "design choice", "row", nth=3).set_index("row")
    base = t4.loc["base"]
    assert base["ours"] == pytest.approx(120.0) and base["ours − paper"] == pytest.approx(120.0 - 8.79)
    assert base["verdict"] == "worse" and base["interval"] == "[118.50, 120.50]"   # the paper outside our interval
    assert t4.loc["t4_adapt_sum", "paper vs base"] == pytest.approx(9.10 - 8.79)   # the paper's own comparison
    assert t4.loc["t4_adapt_sum", "base"] == "base"
    assert t4.loc["t4_adapt_sum", "verdict"] == "better"                  # [6.5, 8.5] mm < the paper's 9.10
    assert t4.loc["t4_adapt_sum", "vs base verdict"] == "resolved"
    controls = _df(at, "model", "vs base verdict").set_index("row")
    assert controls.loc["control_direct", "vs base verdict"] == "within noise"
    assert controls.loc["control_mean_pose", "vs base verdict"] == "resolved" and controls.loc["base", "seeds"] == 3
    assert controls.loc["control_direct", "PA-EPE (mm)"] == 30.0                      # after Procrustes alignment
    assert controls.loc["control_direct", "PA vs base verdict"] == "resolved"
    assert math.isnan(controls.loc["control_mean_pose", "PA-EPE (mm)"])                # none in the fixture
    t2 = _df(at, "design choice", "row", nth=1).set_index("row")
    assert math.isnan(t2.loc["t2_ve1", "ours"]) and "failed" in t2.loc["t2_ve1", "note"]
    t5 = _df(at, "design choice", "verdict", nth=4)
    ours5 = t5[t5["design choice"] == "ours (the paper)"].iloc[0]
    assert ours5["ours"] == pytest.approx(project["eval_new"]["metrics"]["auc_hand3d_stb"])   # hand3d's STB protocol
    t6 = _df(at, "model", "paper rwth")
    assert "paper rwth" in t6.columns and t6["paper senz3d"].notna().sum() == 4
    # a bar chart (paper vs ours) for every table we ran rows of: Table 1 (t1_no_sfe) and Table 4 (base, t4_adapt_sum)
    specs = [_spec(c) for c in at.get("plotly_chart")]
    assert len(specs) == 2
    assert [t["name"] for t in specs[0]["data"]] == ["paper", "ours"]


def test_pck_page_compares_runs(app, project: dict) -> None:
    at = _page(app.run(), "pck")
    select = at.multiselect(key="pck_runs")
    assert len(select.value) == 1 and select.value[0].startswith("evaluate ·")
    at = _page(select.set_value(select.options))   # both evaluation runs
    pck_spec = _spec(at.get("plotly_chart")[0])
    assert len(pck_spec["data"]) == 2
    want = project["eval_new"]["metrics"]["pck"]
    line = next(t for t in pck_spec["data"] if t["name"].startswith("evaluate ·"))
    np.testing.assert_allclose(_arr(line["y"]), want["values"], atol=1e-9)
    np.testing.assert_allclose(_arr(line["x"]), np.round(want["thresholds_mm"]), atol=1e-9)  # steps: whole mm
    assert f"AUC {project['eval_new']['metrics']['auc']:.3f}" in line["name"]
    aucs = _df(at, "method", "AUC")
    assert len(aucs) == 17 + 2 and set(aucs["source"]) == {"paper", "ours"}
    beyond = _df(at, "metric", "definition").set_index("metric")
    label = line["name"].split(" (AUC")[0]
    want = project["eval_new"]["metrics"]
    assert beyond.loc["EPE, Procrustes-aligned", label] == pytest.approx(want["epe_pa_mean"])
    assert beyond.loc["F@15 mm, mesh", label] == pytest.approx(want["f15_mesh"])
    assert len(beyond.columns) == 1 + 2 + 1                 # unit, both runs, definition (metric: the index)
    assert aucs["AUC"].is_monotonic_decreasing


def test_gesture_page(app) -> None:
    at = _page(app.run(), "gesture")
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["Mean accuracy"] == f"{100 * np.mean(FOLD_ACC):.2f} %"
    assert metrics["Std over folds"] == f"{100 * np.std(FOLD_ACC):.2f} %"
    assert metrics["Folds"] == "3"
    folds = _df(at, "fold", "accuracy (%)")
    assert folds["fold"].tolist() == [0, 1, 2]
    np.testing.assert_allclose(folds["accuracy (%)"], 100 * np.asarray(FOLD_ACC))
    per_class = _df(at, "class", "accuracy (%)")
    np.testing.assert_allclose(per_class["accuracy (%)"], [75.0, 100.0, 50.0])
    heat = next(s for s in map(_spec, at.get("plotly_chart")) if s["data"][0]["type"] == "heatmap")
    np.testing.assert_allclose(_arr(heat["data"][0]["z"]).reshape(3, 3)[2], [0.25, 0.25, 0.5])


def test_meshes_page(app, project: dict) -> None:
    at = _page(app.run(), "meshes")
    assert at.selectbox(key="mesh_run").value.startswith("evaluate ·")
    assert at.selectbox(key="mesh_sample").value == 1              # the sample with a Fig. 6 panel comes first
    assert len(at.get("image")) == 1
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["MANO PCA components"] == "15"
    assert metrics["Vertices / faces"].startswith("778 / ")
    k = list(project["eval_new"]["predictions"]["index"]).index(1)
    assert metrics["EPE of this sample (mm)"] == f"{project['eval_new']['predictions']['epe'][k]:.2f}"
    mesh = _spec(at.get("plotly_chart")[0])["data"]
    assert mesh[0]["type"] == "mesh3d" and _arr(mesh[0]["x"]).size == 778
    assert sum(t["type"] == "scatter3d" for t in mesh) == 10         # 5 fingers predicted + 5 ground truth
    # a sample without a panel: render it on demand
    at = _page(at.selectbox(key="mesh_sample").set_value(2))
    assert len(at.get("image")) == 0
    at = _page(at.button(key="render_panel").click())
    assert len(at.get("image")) == 1
    # the older run: its predictions were replaced, so its checkpoint runs on the sample
    old = next(o for o in at.selectbox(key="mesh_run").options if o.startswith("evaluate-untrained"))
    at = _page(at.selectbox(key="mesh_run").set_value(old))
    assert any("older run" in c.value for c in at.caption)
    assert _spec(at.get("plotly_chart")[0])["data"][0]["type"] == "mesh3d"


def test_runs_page_filters_and_compares(app, project: dict) -> None:
    at = _page(app.run(), "runs")
    table = _df(at, "label", "run_name", "parent_run_id")
    assert len(table) == 2 + 1 + 1 + 4 + 1 + 3          # evaluate, train, ablation(+4 rows), gesture(+3 folds)
    at.multiselect(key="f_exp").set_value(["keyhand-ablation"]).run()
    at = _page(at.multiselect(key="f_status").set_value(["FINISHED"]))
    table = _df(at, "label", "run_name", "parent_run_id")
    assert sorted(table["run_name"]) == sorted(["ablation", *project["ablation"]])
    picks = [lbl for lbl in at.multiselect(key="compare_runs").options if lbl.startswith(("base", "t1_no_sfe"))]
    at = _page(at.multiselect(key="compare_runs").set_value(picks))
    cmp = at.dataframe[-1].value
    assert list(cmp.columns) == picks
    assert set(cmp.loc["params.row"]) == {"base", "t1_no_sfe"}
    assert "metrics.val/epe_mean" in cmp.index
    hist = _spec(at.get("plotly_chart")[0])
    assert {t["name"] for t in hist["data"]} == set(picks)
    base = next(t for t in hist["data"] if t["name"].startswith("base"))
    np.testing.assert_allclose(_arr(base["y"]), [130.0, 120.0])


def test_every_page_without_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A fresh project (params.yaml only): every page says which command to run and nothing fails."""
    import streamlit as st
    from streamlit.testing.v1 import AppTest

    (tmp_path / "params.yaml").write_text(yaml.safe_dump({"evaluate": {"panels": 4}}))
    monkeypatch.setenv("KEYHAND_PARAMS", str(tmp_path / "params.yaml"))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    st.cache_data.clear()
    at = AppTest.from_file(str(APP), default_timeout=30)
    for page in ("overview", "tables", "pck", "gesture", "meshes", "runs"):
        at = _page(at, page)
        infos = " ".join(i.value for i in at.info)
        assert "make repro" in infos or "dvc repro" in infos, (page, infos)
    assert not (tmp_path / "runs" / "mlflow.db").exists()      # reading never creates a store
    # Tables still shows the paper's numbers
    at = _page(at, "tables")
    assert _df(at, "design choice", "row", nth=0)["ours"].isna().all()


def test_bad_params_is_one_error_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import streamlit as st
    from streamlit.testing.v1 import AppTest

    (tmp_path / "params.yaml").write_text("mlflow:\n  tracking_urii: x\n")
    monkeypatch.setenv("KEYHAND_PARAMS", str(tmp_path / "params.yaml"))
    st.cache_data.clear()
    at = AppTest.from_file(str(APP), default_timeout=30).run()
    assert not at.exception
    (err,) = at.error
    assert "tracking_urii" in err.value and "\n" not in err.value


# ------------------------------------------------------------------------------------------------ data layer

def test_mesh_rebuilt_from_predictions_matches_the_model(project: dict) -> None:
    """The HE rebuild from the stored (t, s, R, θ, β) equals running the checkpoint on the same sample."""
    from dashboards import data

    model, section = data.load_framework(project["root"] / "runs" / "train")
    assert section.pca_comps == 15
    pred = data.read_predictions(project["root"] / "runs" / "evaluate" / "predictions.npz")
    k = int(np.flatnonzero(pred["index"] == 2)[0])
    rebuilt = data.mesh_from_prediction(model, pred, k)
    direct = data.mesh_from_model(model, project["split_test"], 2)
    np.testing.assert_allclose(rebuilt["vertices"], direct["vertices"], atol=1e-3)
    np.testing.assert_allclose(rebuilt["joints"], direct["joints"], atol=1e-3)
    np.testing.assert_allclose(rebuilt["joints_gt"], direct["joints_gt"], atol=1e-4)
    assert rebuilt["epe"] == pytest.approx(direct["epe"], abs=1e-2)
    assert np.allclose(rebuilt["joints"][0], 0) and np.allclose(rebuilt["joints_gt"][0], 0)
    bad = {**pred, "theta": pred["theta"][:, :10]}
    with pytest.raises(data.ProjectError, match="pca_comps is 15"):
        data.mesh_from_prediction(model, bad, k)


def test_project_resolution(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from dashboards import data

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("KEYHAND_PARAMS", str(tmp_path / "env.yaml"))
    assert data.params_path_from_args(["--params", "p.yaml"]) == Path("p.yaml").resolve()
    assert data.params_path_from_args([]) == tmp_path / "env.yaml"
    proj = data.load_project(tmp_path / "missing.yaml")           # defaults without a params file
    assert proj.tracking_uri == f"sqlite:///{tmp_path}/runs/mlflow.db"
    assert proj.experiment("evaluate") == "keyhand-evaluate"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://tracker:5000")
    assert data.load_project(tmp_path / "missing.yaml").tracking_uri == "http://tracker:5000"
    assert data.runs_table(f"sqlite:///{tmp_path}/none/mlflow.db", ("keyhand-train",)).empty
    assert not (tmp_path / "none").exists()


def test_streamlit_command() -> None:
    from dashboards.launch import APP as LAUNCH_APP
    from dashboards.launch import streamlit_command

    cmd = streamlit_command("params.yaml", 8765)
    assert cmd[1:4] == ["-m", "streamlit", "run"] and cmd[4] == str(LAUNCH_APP) == str(APP)
    flags = dict(zip(cmd[5:cmd.index("--"):2], cmd[6:cmd.index("--"):2], strict=True))
    assert flags == {"--server.headless": "true", "--browser.gatherUsageStats": "false",
                     "--server.address": "127.0.0.1", "--server.port": "8765"}
    assert cmd[cmd.index("--") + 1:] == ["--params", str(Path("params.yaml").resolve())]
    with pytest.raises(ValueError, match="port"):
        streamlit_command(port=0)


# ------------------------------------------------------------------------------------------------ figures

def test_comparison_frame_and_colours() -> None:
    resolved = {"mean": 1.0, "lo": 0.5, "hi": 1.5, "resolved": True}
    table = {"lower_is_better": True, "rows": [
        {"label": "a", "row": "base", "paper": 11.12, "ours": 10.0, "diff": -1.12, "note": "finished",
         "ci": [9.0, 11.0]},
        {"label": "b", "row": "t2", "paper": 10.0, "ours": 12.0, "diff": 2.0, "note": "finished", "ci": [11.0, 13.0],
         "vs_base": resolved},
        {"label": "c", "row": "t3", "paper": 9.0, "ours": None, "diff": None, "note": "not run"},
        {"label": "d", "row": "t4", "paper": 10.0, "ours": 10.5, "diff": 0.5, "note": "finished", "ci": [8.0, 13.0],
         "vs_base": {**resolved, "lo": -0.5, "resolved": False}},
        {"label": "e", "row": "t5", "paper": 10.0, "ours": 15.0, "diff": 5.0, "note": "old, no interval"}]}
    frame = F.comparison_frame(table)
    assert frame["verdict"].tolist() == ["better", "worse", "", "within noise", ""]     # judged only with an interval
    assert frame["vs base verdict"].tolist() == ["", "resolved", "", "within noise", ""]
    assert math.isnan(frame.loc[2, "ours"])
    html = F.style_comparison(frame, lower_is_better=True).to_html()
    assert F.BETTER in html and F.WORSE in html and "—" in html
    plain = F.style_comparison(frame.iloc[[3, 4]].reset_index(drop=True), lower_is_better=True).to_html()
    assert F.BETTER not in plain and F.WORSE not in plain               # within noise, or no interval: no colour
    assert F.verdict(0.01, lower_is_better=False) == "better" and F.verdict(0.01, True) == "worse"
    fig = F.table_figure(table)
    assert fig.data[1].marker.color == (F.BETTER, F.WORSE, F.SAME, F.SAME, F.SAME)
    assert list(fig.data[1].error_y.array)[:2] == [1.0, 1.0]
    t6 = {"columns": ["rwth"], "rows": [{"label": "x", "paper": {"rwth": 70.0}, "ours": {"rwth": 72.0},
                                         "diff": {"rwth": 2.0}}]}
    assert F.table6_frame(t6).iloc[0].tolist() == ["x", 70.0, 72.0, 2.0]


def test_controls_show_counts_as_integers_and_metrics_with_digits() -> None:
    frame = F.controls_frame([
        {"label": "main configuration", "row": "base", "seeds": 3, "epochs": 6, "ours": 49.081, "ci": [46.2, 52.1]},
        {"label": "mean pose", "row": "control_mean_pose", "seeds": 1, "epochs": None, "ours": 78.86,
         "ci": [75.8, 82.2], "vs_base": {"mean": 29.78, "lo": 26.4, "hi": 33.3, "resolved": True}}])
    cells = [c.strip() for c in re.findall(r"<td[^>]*>([^<]*)</td>", F.style_comparison(frame, True).to_html())]
    assert cells[2:5] == ["3", "6", "49.08"] and cells[16:19] == ["1", "—", "78.86"]


def test_beyond_paper_frame() -> None:
    from keyhand.metrics import SUMMARY_KEYS

    assert set(F.BEYOND_PAPER) <= {*SUMMARY_KEYS, "sfe_2d_px"}   # every row is a metric evaluate reports
    frame = F.beyond_paper_frame({"run a": {"epe_pa_mean": 9.5, "f5_mesh": None}, "run b": {"f5_mesh": 0.25}})
    assert frame.columns.tolist() == ["metric", "unit", "run a", "run b", "definition"]
    rows = frame.set_index("metric")
    assert rows.loc["EPE, Procrustes-aligned", "run a"] == 9.5 and rows.loc["EPE, Procrustes-aligned", "unit"] == "mm"
    assert math.isnan(rows.loc["F@5 mm, mesh", "run a"]) and rows.loc["F@5 mm, mesh", "run b"] == 0.25
    assert len(frame) == len(F.BEYOND_PAPER)


def test_pck_and_auc_figures() -> None:
    fig = F.pck_figure({"a": ([20, 30], [0.5, 0.7]), "b": ([20, 30], [0.4, 0.6])}, aucs={"a": 0.61})
    assert [t.name for t in fig.data] == ["a (AUC 0.610)", "b"]
    assert list(fig.data[1].y) == [0.4, 0.6] and fig.layout.xaxis.title.text == "threshold (mm)"
    banded = F.pck_figure({"a": ([20, 30], [0.5, 0.7])}, bands={"a": ([0.4, 0.6], [0.6, 0.8])})
    assert banded.data[0].fill == "toself" and list(banded.data[0].y) == [0.6, 0.8, 0.6, 0.4]
    frame = F.auc_frame({"rows": [{"label": "p1", "paper": 0.9}, {"label": "p2", "paper": 0.99}]}, {"ours": 0.95})
    assert frame["method"].tolist() == ["p2", "ours", "p1"]
    bars = F.auc_figure(frame)
    assert list(bars.data[0].y) == ["p1", "ours", "p2"] and bars.data[0].marker.color[1] == "#d4793a"


def test_gesture_figures() -> None:
    fig = F.fold_accuracy_figure([0.5, 1.0], folds=[0, 1])
    assert list(fig.data[0].y) == [50.0, 100.0]
    assert fig.layout.shapes[1].y0 == pytest.approx(75.0)            # the mean line
    heat = F.confusion_figure(CONFUSION, CLASSES)
    np.testing.assert_allclose(np.asarray(heat.data[0].z)[0], [0.75, 0.25, 0.0])
    assert F.confusion_figure(CONFUSION, CLASSES, normalize=False).data[0].z[2][2] == 2
    per = F.per_class_accuracy([[2, 0], [0, 0]], ["a", "b"])
    assert per["accuracy (%)"].iloc[0] == 100.0 and math.isnan(per["accuracy (%)"].iloc[1])
    assert list(F.per_class_figure(per).data[0].x) == ["a", "b"]


def test_mesh_figure() -> None:
    v = np.array([[0, 0, 0], [1, 0, 0], [0, 1, 0], [0, 0, 1]], float)
    f = np.array([[0, 1, 2], [0, 1, 3]])
    joints = np.zeros((21, 3))
    fig = F.mesh_figure(v, f, joints, joints + 1)
    assert fig.data[0].type == "mesh3d" and list(fig.data[0].k) == [2, 3]
    assert len(fig.data) == 11 and fig.data[6].line.dash == "dash"
    assert fig.layout.scene.camera.up.y == -1                          # y down as in the image
    assert len(F.mesh_figure(v, f).data) == 1
    with pytest.raises(ValueError, match="face indices"):
        F.mesh_figure(v, f + 5)
    with pytest.raises(ValueError, match="must be"):
        F.mesh_figure(v[:, :2], f)


def test_compare_frame_and_history() -> None:
    import pandas as pd

    runs = pd.DataFrame({"label": ["r1", "r2"], "experiment": ["e", "e"], "run_name": ["a", "b"],
                         "status": ["FINISHED", "FAILED"], "start_time": [1, 2], "duration_s": [1.0, np.nan],
                         "metrics.epe": [1.0, 2.0], "params.lr": ["0.1", "0.1"], "params.x": [np.nan, np.nan]})
    full = F.compare_frame(runs)
    assert list(full.columns) == ["r1", "r2"] and "params.x" not in full.index
    assert full.loc["duration_s", "r2"] == "—"
    diff = F.compare_frame(runs, only_differences=True)
    assert "params.lr" in full.index and "params.lr" not in diff.index and "metrics.epe" in diff.index
    fig = F.history_figure({"r1": ([0, 1], [3.0, 2.0])}, "val/epe_mean")
    assert fig.layout.yaxis.title.text == "val/epe_mean" and list(fig.data[0].x) == [0, 1]
