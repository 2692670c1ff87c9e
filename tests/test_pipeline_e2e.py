"""End to end: `dvc repro` of a tiny profile in a copy of the repository, then metrics, plots, MLflow, report,
and the two ways a persisted run folder could report stale weights as a new experiment (run identity).

One repository copy for the module, marked slow (they still run in CI): about three minutes on 2 cores.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent

TINY = {
    "data": {"synthetic": {"height": 96, "width": 96, "obman": {"train": 12}, "stb": {"train": 12, "val": 4, "test": 6},
                           "gestures": {"all": 24}, "subjects": 2}},
    "prepare": {"mask_workers": 1},
    "model": {"image_size": 64, "sfe_channels": 16, "ve_input_size": 32, "ve_channels": 8, "dense_scale": 0.02,
              "render_size": 32},
    "sfe": {"epochs": 1, "batch_size": 6},
    "train": {"epochs": 1, "batch_size": 6},
    "gesture": {"epochs": 5, "batch_size": 8},
    "evaluate": {"panels": 1},
    "cv": {"folds": 2},
    "sweep": {"rows": {"base": {}, "t3_no_reg": {"loss": {"reg": 0.0}},
                       "control_direct": {"model": {"estimator": "direct"},
                                          "loss": {"joints_2d": 0.0, "mask": 0.0, "reg": 0.0}}}, "epochs": 1},
    "stats": {"seeds": 2, "bootstrap": 200},
}
ROWS = {"base", "t3_no_reg", "control_direct", "control_mean_pose"}


def _run(cmd: list[str], cwd: Path, env: dict, timeout: int = 900) -> subprocess.CompletedProcess:
    result = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, f"{' '.join(cmd)} failed:\n{result.stdout[-4000:]}\n{result.stderr[-4000:]}"
    return result


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory, keyhand_cache: Path) -> tuple[Path, dict]:
    repo = tmp_path_factory.mktemp("e2e") / "keyhand"
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=ROOT, capture_output=True,
                           text=True, check=True).stdout.split()
    for f in files:
        if (ROOT / f).is_file() and not f.startswith(("dvc.lock", "docs/")):
            (repo / f).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / f, repo / f)
    from pipeline.params import Params, render_params

    (repo / "params.yaml").write_text(render_params(Params.model_validate(TINY)))
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}", "KEYHAND_CACHE": str(keyhand_cache),
           "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@t"}
    env.pop("MLFLOW_TRACKING_URI", None)
    env.pop("RAY_ADDRESS", None)
    for cmd in (["git", "init", "-q"], ["git", "add", "-A"], ["git", "commit", "-qm", "tiny profile"]):
        _run(cmd, repo, env)
    _run(["dvc", "repro"], repo, env)
    return repo, env


@pytest.mark.slow
def test_dvc_repro_end_to_end(project: tuple[Path, dict]) -> None:
    repo, env = project
    metrics = json.loads(_run(["dvc", "metrics", "show", "--json"], repo, env).stdout)
    files = next(iter(metrics.values()))["data"]
    ev = files["runs/metrics/evaluate.json"]["data"]
    assert ev["count"] == 6 and 0 < ev["epe_mean"] < 1000 and 0 <= ev["auc"] <= 1
    ev_file = json.loads((repo / "runs/metrics/evaluate.json").read_text())   # lists: not in `dvc metrics show`
    assert ev["dataset"].endswith("/test") and ev_file["epe_ci"][0] <= ev["epe_mean"] <= ev_file["epe_ci"][1]
    assert set(ev["timings_ms"]) >= {"sfe", "ve", "he", "total"} and 0 <= ev_file["sfe_2d_px"] < 64 * 1.5
    # data.sfe_on: pose (the default profile): the SFE pretrained on the pose set's train split
    assert json.loads((repo / "runs/metrics/pretrain_sfe.json").read_text())["dataset"] == "synth-stb"
    assert set(files["runs/metrics/ablation.json"]["data"]["rows"]) == ROWS
    ablation = json.loads((repo / "runs/metrics/ablation.json").read_text())["rows"]
    assert set(ablation) == ROWS and all(r["status"] == "FINISHED" for r in ablation.values())
    assert all(r["epe_mean"] > 0 and r["ci"][0] <= r["epe_mean"] <= r["ci"][1] for r in ablation.values())
    assert ablation["base"]["seeds"] == 2 and ablation["control_mean_pose"]["seeds"] == 1
    # 2 seeds: the difference and its interval, but no verdict (keyhand.stats.MIN_SEEDS_FOR_VERDICT)
    assert ablation["base"]["vs_base"] is None and ablation["t3_no_reg"]["vs_base"]["verdict"] == "no verdict"
    assert ablation["t3_no_reg"]["base_row"] == "base"
    # the same comparison after Procrustes alignment: every row, the mean pose included
    assert all(0 < r["pa"]["epe_mean"] < 1.2 * r["epe_mean"] for r in ablation.values())   # PA: RMS-optimal
    assert ablation["control_direct"]["pa"]["vs_base"]["verdict"] == "no verdict"
    assert ablation["control_mean_pose"]["vs_base"]["verdict"] == "no verdict"    # it counts its base's 2 seeds
    # the trials monitored val (4 images); their final errors are on test (6 images), per seed
    trials = json.loads((repo / "runs/metrics/ablation.json").read_text())["trials"]
    assert len(trials) == 6 and all((repo / "runs/ablate/eval" / t / "predictions.npz").is_file() for t in trials)
    assert ablation["base"]["images"] == 6
    # base.seed0 is the main configuration at the main budget: it continues the train stage's run (0 epochs
    # left) instead of training it twice, and scores what the evaluate stage scored with those weights
    assert trials["base.seed0"]["test_epe_mean"] == pytest.approx(ev["epe_mean"], rel=1e-6)
    assert trials["base.seed1"]["test_epe_mean"] != pytest.approx(ev["epe_mean"], rel=1e-6)
    assert files["runs/metrics/gesture_cv.json"]["data"]["datasets"]["synth-gestures"]["folds"] == 2
    cv = json.loads((repo / "runs/metrics/gesture_cv.json").read_text())["datasets"]["synth-gestures"]
    assert len(cv["fold_accuracies"]) == 2 and 0 <= cv["mean"] <= 1 and len(cv["confusion"]) == 12
    # the PCK curve as a DVC plot (x = threshold mm, y = PCK)
    pck = json.loads((repo / "runs/metrics/pck.json").read_text())
    assert len(pck) == 12 and pck[0]["threshold_mm"] == pytest.approx(21.053) and pck[-1]["threshold_mm"] == 50.0
    assert all(r["lo"] <= r["pck"] + 1e-9 and r["pck"] <= r["hi"] + 1e-9 for r in pck)     # the curve's band
    _run(["dvc", "plots", "show", "-o", "plots"], repo, env)
    html = (repo / "plots" / "index.html").read_text()
    assert "runs_metrics_pck_json" in html and "runs_metrics_train_history_json" in html
    # the report holds numbers beside the paper's
    report = json.loads((repo / "runs/report/report.json").read_text())
    base = next(r for r in report["tables"]["table4"]["rows"] if r["row"] == "base")
    assert base["paper"] == 8.79 and base["ours"] == pytest.approx(ablation["base"]["epe_mean"])
    assert base["ci"] == pytest.approx(ablation["base"]["ci"])
    no_reg = next(r for r in report["tables"]["table3"]["rows"] if r["row"] == "t3_no_reg")
    assert no_reg["vs_base"]["mean"] == pytest.approx(ablation["t3_no_reg"]["vs_base"]["mean"])
    controls = {r["row"]: r for r in report["controls"]}
    assert set(controls) == {"evaluate", "base", "control_direct", "control_mean_pose"}
    assert all(r["ours"] is not None and r["ci"] for r in controls.values())
    md = (repo / "runs/report/report.md").read_text()
    assert "Table 6" in md and "## Controls" in md and "control_mean_pose" in md and "vs base" in md
    assert "PA vs base" in md
    assert "no verdict (2 seeds)" in md
    # every MLflow run ended; sweeps are parents with one child per trial
    import mlflow

    client = mlflow.MlflowClient(f"sqlite:///{repo / 'runs/mlflow.db'}")
    by_name = {e.name: e.experiment_id for e in client.search_experiments()}
    runs = client.search_runs(list(by_name.values()), max_results=500)
    assert runs and {r.info.status for r in runs} == {"FINISHED"}
    abl = client.search_runs([by_name["keyhand-ablation"]])
    parents = [r for r in abl if "mlflow.parentRunId" not in r.data.tags]
    children = [r for r in abl if r.data.tags.get("mlflow.parentRunId") == parents[0].info.run_id]
    assert len(parents) == 1 and sorted(r.info.run_name for r in children) == sorted(
        f"{row}.seed{k}" for row in ("base", "t3_no_reg", "control_direct") for k in (0, 1))
    assert "control_mean_pose/epe_mean" in parents[0].data.metrics and "base/epe_ci_hi" in parents[0].data.metrics
    assert "control_direct/pa_diff_vs_base" in parents[0].data.metrics
    evaluate = client.search_runs([by_name["keyhand-evaluate"]])[0]
    assert "epe_mean" in evaluate.data.metrics and len(client.get_metric_history(evaluate.info.run_id, "pck")) == 12
    assert evaluate.data.tags["keyhand.git_commit"] != "unknown"


@pytest.mark.slow
def test_dvc_exp_run_reruns_only_what_changed(project: tuple[Path, dict]) -> None:
    repo, env = project
    out = _run(["dvc", "exp", "run", "-S", "evaluate.panels=2"], repo, env)
    text = out.stdout + out.stderr
    assert "Running stage 'evaluate'" in text and "Running stage 'train'" not in text
    assert "Running stage 'synthetic'" not in text
    assert len(list((repo / "runs/evaluate/panels").glob("*.png"))) == 2


def _train_state(repo: Path) -> tuple[dict, dict]:
    """(weights of runs/train's last checkpoint, runs/metrics/train.json)."""
    import torch

    from trainers.checkpoint import latest

    ckpt = torch.load(latest(repo / "runs/train"), map_location="cpu", weights_only=True)
    return ckpt["model"], json.loads((repo / "runs/metrics/train.json").read_text())


def _same(a: dict, b: dict) -> bool:
    import torch

    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.slow
def test_new_pretrained_sfe_retrains_the_train_stage(project: tuple[Path, dict]) -> None:
    """`dvc exp run -S sfe.epochs=... -S data.sfe_on=obman`: the SFE the train stage starts from changes (now
    pretrained on the ObMan set, the paper's), so does its run identity: train trains afresh (never "resumes" its
    finished run) and reports new weights and metrics."""
    repo, env = project
    weights, metrics = _train_state(repo)
    out = _run(["dvc", "exp", "run", "-S", "sfe.epochs=2", "-S", "data.sfe_on=obman", "train"], repo, env)
    text = out.stdout + out.stderr
    assert "Running stage 'pretrain_sfe'" in text and "Running stage 'train'" in text
    new_weights, new_metrics = _train_state(repo)
    assert new_metrics["identity"] != metrics["identity"] and not _same(weights, new_weights)
    assert new_metrics["val/epe_mean"] != metrics["val/epe_mean"] and new_metrics["epochs"] == TINY["train"]["epochs"]
    assert len(json.loads((repo / "runs/metrics/pretrain_sfe_history.json").read_text())) == 2
    sfe = json.loads((repo / "runs/metrics/pretrain_sfe.json").read_text())
    assert sfe["dataset"] == "synth-obman"
    # the CLI reads the set data.sfe_on names too: same identity as the stage's run
    _run(["keyhand", "pretrain-sfe", "--out", str(repo / "cli_sfe"), "--device", "cpu"], repo, env)
    import torch

    ckpt = torch.load(next((repo / "cli_sfe").glob("epoch-*.pt")), map_location="cpu", weights_only=True)
    assert ckpt["params_hash"] == sfe["identity"]


@pytest.mark.slow
def test_fewer_train_epochs_give_the_weights_of_a_fresh_run(project: tuple[Path, dict],
                                                             tmp_path: Path) -> None:
    """`dvc exp run -S train.epochs=1` after a 2-epoch run: the model of a fresh 1-epoch run (bitwise on CPU),
    never the longer run's; the fresh run is `keyhand train` on the same params.yaml (one orchestration path)."""
    repo, env = project
    _run(["dvc", "exp", "run", "-S", "train.epochs=2", "train"], repo, env)
    two, two_metrics = _train_state(repo)
    _run(["dvc", "exp", "run", "-S", "train.epochs=1", "train"], repo, env)
    one, one_metrics = _train_state(repo)
    assert one_metrics["epochs"] == 1 and not _same(one, two)
    assert len(json.loads((repo / "runs/metrics/train_history.json").read_text())) == 1
    fresh = tmp_path / "fresh"
    _run(["keyhand", "train", "--out", str(fresh), "--device", "cpu"], repo, env)
    import torch

    ckpt = torch.load(fresh / "epoch-0000.pt", map_location="cpu", weights_only=True)
    assert ckpt["params_hash"] == one_metrics["identity"] and _same(ckpt["model"], one)
    assert ckpt["metrics"]["val/epe_mean"] == one_metrics["val/epe_mean"]
