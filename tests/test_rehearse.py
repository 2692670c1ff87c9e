"""The CPU rehearsal of the paper protocol (pipeline/rehearse.py, keyhand/data/fixtures.py): the fixture writers
produce what the readers read, the rehearsal's params are the paper profile with only the CPU overrides, the
projection's arithmetic, the table check; and (slow) the whole rehearsal end to end through dvc repro."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from keyhand.data.fixtures import FixtureSizes, stb_frame_counts, write_fixtures
from keyhand.data.readers import open_dataset
from pipeline.rehearse import Costs, Protocol, missing_rows, overrides, projection, protocol_of, stage_times

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
SIZES = FixtureSizes()   # what the rehearsal writes


@pytest.fixture(scope="module")
def fixtures(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return write_fixtures(tmp_path_factory.mktemp("fixtures") / "data-fixtures", SIZES)


def _inside(uv: np.ndarray, image: np.ndarray) -> bool:
    h, w = image.shape[:2]
    return bool(((uv >= 0) & (uv <= np.array([w - 1, h - 1]))).all())


def test_obman_fixture_is_read_as_obman(fixtures: dict[str, Path]) -> None:
    for split, n in SIZES.obman:
        reader = open_dataset("obman", fixtures["obman"], split)
        assert len(reader) == n and reader.keys[0] == f"{split}/rgb/00000000.jpg"
    s = open_dataset("obman", fixtures["obman"], "train")[0]
    assert s.image.shape == (256, 256, 3) and _inside(s.joints_2d, s.image)
    assert 250 < float(s.joints_3d[:, 2].mean()) < 2000          # mm in front of ObMan's camera
    assert s.mask.sum() > 50 and s.extra["verts_3d"].shape == (778, 3)
    tip = float(np.linalg.norm(s.extra["verts_3d"] - s.joints_3d[8], axis=1).min())
    assert tip < 10.0                                              # the mesh is the hand of the joints (mm)
    hand_only = open_dataset("obman", fixtures["obman"], "train", mode="rgb_hand")[0]
    assert hand_only.mask.sum() >= s.mask.sum()                    # rgb/: part of the hand behind the object


def test_stb_fixture_is_read_as_stb(fixtures: dict[str, Path]) -> None:
    frames = stb_frame_counts(SIZES)
    assert len(frames) == 12 and all(n >= 1 for n in frames.values())
    assert all((fixtures["stb"] / "labels" / f"{seq}_SK.mat").is_file() for seq in frames)
    test = open_dataset("stb", fixtures["stb"], "test")
    train = open_dataset("stb", fixtures["stb"], "train")
    assert len(test) == 2 * SIZES.stb_test_frames and len(train) == 10 * SIZES.stb_train_frames
    for s in (test[0], train[-1]):
        assert s.image.shape == (480, 640, 3) and s.side == "left" and _inside(s.joints_2d, s.image)
        # STB annotates the palm centre: the reader's extrapolated wrist puts it halfway to the ring MCP
        np.testing.assert_allclose(s.extra["palm"], 0.5 * (s.joints_3d[0] + s.joints_3d[13]), atol=1e-3)
    kept = open_dataset("stb", fixtures["stb"], "test", palm_to_wrist="keep")[0]
    np.testing.assert_allclose(kept.joints_3d[0], test[0].extra["palm"], atol=1e-3)


def test_gesture_fixtures_are_read_as_rwth_and_senz3d(fixtures: dict[str, Path]) -> None:
    rwth = open_dataset("rwth", fixtures["rwth"], "all")
    assert len(rwth) == SIZES.rwth_classes * SIZES.rwth_signers
    labels = [s.gesture for s in rwth]
    assert len(set(labels)) == SIZES.rwth_classes and max(labels) == 29          # spread up to the last sign "5"
    assert {s.subject for s in rwth} == {f"P{k + 1:02d}" for k in range(SIZES.rwth_signers)}
    sample = rwth[0]
    assert sample.image.shape == (240, 320, 3) and rwth.hand_box(sample) is not None
    senz = open_dataset("senz3d", fixtures["senz3d"], "all")
    assert len(senz) == 11 * SIZES.senz3d_subjects * SIZES.senz3d_repetitions
    assert sorted({s.gesture for s in senz}) == list(range(11))
    s = senz[0]
    assert s.image.shape == (480, 640, 3) and s.depth.shape == (240, 320) and (s.depth == 0).any()
    x0, y0, x1, y1 = senz.hand_box(s)
    assert 0 < x1 - x0 < 400 and 0 < y1 - y0 < 400                                 # the near blob, not the wall


def test_fixtures_are_reused(fixtures: dict[str, Path]) -> None:
    stamp = fixtures["mano"].parents[1] / "fixtures.json"
    before = stamp.stat().st_mtime_ns
    again = write_fixtures(fixtures["mano"].parents[1], SIZES)
    assert again == fixtures and stamp.stat().st_mtime_ns == before


def test_rehearsal_params_are_the_paper_profile(fixtures: dict[str, Path], tmp_path: Path) -> None:
    from pipeline.params import Params
    from pipeline.rehearse import write_rehearsal_params

    params, paper = write_rehearsal_params(tmp_path / "params.yaml", fixtures, tmp_path, seeds=1)
    ref = Params.for_profile("paper")
    assert params.model.model_dump() == {**ref.model.model_dump(), "mano_path": str(fixtures["mano"].resolve())}
    assert params.loss == ref.loss and list(params.sweep.rows) == list(ref.sweep.rows)
    assert params.sweep.rows == ref.sweep.rows and params.sweep.base == ref.sweep.base
    assert params.model.image_size == 256 and params.train.batch_size == ref.train.batch_size
    assert (params.sfe.epochs, params.train.epochs, params.stats.seeds) == (1, 1, 1)
    assert params.data.source == "real" and Path(params.data.stb.root) == fixtures["stb"].resolve()
    assert paper.train.epochs == ref.train.epochs and paper.stats.seeds == ref.stats.seeds   # projection's sizes
    _, rest = overrides(fixtures, tmp_path, 3)
    assert rest["stats.seeds"] == 3 and rest["sweep.gpus_per_trial"] == 0


def test_protocol_comes_from_the_params() -> None:
    from pipeline.params import Params

    paper = Params.for_profile("paper")
    pr = protocol_of(paper)
    assert (pr.sfe_epochs, pr.train_epochs, pr.train_batch) == (paper.sfe.epochs, paper.train.epochs,
                                                                paper.train.batch_size)
    assert pr.rows == list(paper.sweep.rows) and pr.seeds == paper.stats.seeds and pr.folds == paper.cv.folds
    assert pr.stb_train + pr.stb_val == paper.data.synthetic.stb["train"]
    assert pr.gesture_images["rwth"] == paper.data.synthetic.gestures["all"]


def test_projection_arithmetic() -> None:
    c = Costs(sfe_step_s=2.0, train_step_s=10.0, row_step_s={"base": 10.0, "cheap": 5.0}, forward_img_s=0.5,
              forward_threads=2, classifier_epoch_s=0.001, grabcut_img_s=0.1, prepare_img_s=0.01)
    pr = Protocol(obman_images=13, sfe_batch=6, sfe_epochs=2,       # 13 % 6 == 1: last sample dropped, 2 steps
                  stb_train=12, stb_val=3, stb_test=4, train_batch=6, train_epochs=3,
                  gesture_images={"a": 10, "b": 5}, rows=["base", "cheap", "unmeasured"], seeds=2, folds=2,
                  extra_folds={"a": 1}, classifier_epochs=4, test_fraction=0.2, base_reused=True)
    gpu = {"name": "g", "train_step_s": 1.0, "forward_img_s": 0.01}
    pj = projection(c, pr, [gpu])
    parts = pj["parts"]
    assert parts["pretrain_sfe"]["steps"] == 4 and parts["pretrain_sfe"]["cpu_s"] == 8.0
    assert parts["train"]["steps"] == 6 and parts["train"]["cpu_s"] == 60.0
    # base: 1 trial (seed 0 is the train stage's run), cheap 2, unmeasured 2 at the main configuration's cost
    assert parts["ablate"]["trials"] == 5
    assert parts["ablate"]["cpu_s"] == 6 * (10.0 * 1 + 5.0 * 2 + 10.0 * 2)
    assert parts["evaluate"]["cpu_s"] == 4 * 0.5 * 2                       # forwards on 2 threads: core-seconds
    assert parts["ablate_test"]["images"] == 3 * 2 * 4
    assert parts["gesture_joints"]["cpu_s"] == 15 * 0.5 * 2
    assert parts["gesture_folds"]["samples_x_epochs"] == int((10 * 0.8 * 3 + 5 * 0.8 * 2) * 4)
    assert parts["masks"]["images"] == 13 + 12 + 3 + 4 and parts["masks"]["cpu_only"]
    assert parts["prepare"]["cpu_s"] == pytest.approx((32 + 15) * 0.01)
    cpu = sum(v["cpu_s"] for v in parts.values())
    assert pj["cpu_core_hours"] == pytest.approx(cpu / 3600)
    # GPU: the SFE step and each row scaled by their CPU ratio to the main configuration's step
    assert parts["pretrain_sfe"]["gpu_s"] == [pytest.approx(1.0 * 0.2 * 4)]
    assert parts["ablate"]["gpu_s"] == [pytest.approx(6 * (1.0 + 0.5 * 2 + 1.0 * 2))]
    assert parts["masks"]["gpu_s"] == [None]
    gpu_s = sum(v["gpu_s"][0] for v in parts.values() if not v.get("cpu_only"))
    assert pj["gpus"][0]["gpu_hours"] == pytest.approx(gpu_s / 3600) and not pj["gpus"][0]["measured"]
    # an unmeasured cost leaves the total open instead of guessing
    assert projection(Costs(train_step_s=1.0), pr)["cpu_core_hours"] is None


def test_missing_rows_names_each_empty_row() -> None:
    def t(*vals):
        return {"rows": [{"row": f"r{i}", "ours": v} for i, v in enumerate(vals)]}

    report = {"tables": {"table1": t(1.0, None), "table2": t(2.0), "table3": t(float("nan")), "table4": t(4.0),
                         "table5": {"rows": [{"label": "x", "ours": None}, {"label": "ours", "ours": 0.9}]},
                         "table6": {"columns": ["rwth", "senz3d"],
                                    "rows": [{"label": "ours (the paper)*", "ours": {"rwth": 50.0}},
                                             {"label": "ours, subject-aware", "kind": "subject", "ours": {}}]}}}
    assert missing_rows(report) == ["table1:r1", "table3:r0", "table6:senz3d"]
    report["tables"]["table5"]["rows"][1]["ours"] = None
    assert "table5:ours AUC" in missing_rows(report)


def test_stage_times_from_marks() -> None:
    marks = [("synthetic", 0.0), ("prepare@pose", 2.0), ("train", 5.5), ("<end>", 9.0)]
    assert stage_times(marks) == {"synthetic": 2.0, "prepare@pose": 3.5, "train": 3.5}


def test_project_folder_guard(tmp_path: Path) -> None:
    from pipeline.rehearse import RehearsalError, check_project_folder

    for bad in (ROOT, ROOT.parent):
        with pytest.raises(RehearsalError, match="repository"):
            check_project_folder(bad)
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "dvc.yaml").write_text("stages: {}\n")
    with pytest.raises(RehearsalError, match="another project"):
        check_project_folder(tmp_path / "other")
    check_project_folder(tmp_path / "fresh")          # absent or empty: fine
    (tmp_path / "other" / "data-fixtures").mkdir()
    check_project_folder(tmp_path / "other")          # a previous rehearsal's folder: replaced


@pytest.mark.slow
def test_rehearsal_end_to_end(tmp_path: Path, keyhand_cache: Path) -> None:
    """`keyhand rehearse` in a temporary project: dvc repro of the paper profile on the fixtures, exit 0, every
    table row filled, the stage times and the projection printed (the project's checkpoints are removed after)."""
    out = tmp_path / "rehearse"
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}", "KEYHAND_CACHE": str(keyhand_cache)}
    try:
        run = subprocess.run([str(BIN / "keyhand"), "rehearse", "--out", str(out)], cwd=ROOT, env=env,
                             capture_output=True, text=True, timeout=1500)
        text = run.stdout + run.stderr
        print(text[text.find("# keyhand rehearsal"):])   # the summary (pytest -s shows it)
        assert run.returncode == 0, text[-6000:]
        report = json.loads((out / "runs" / "report" / "report.json").read_text())
        assert missing_rows(report) == []
        assert report["data_source"] == "real"
        result = json.loads((out / "rehearsal.json").read_text())
        for stage in ("synthetic", "pretrain_sfe", "train", "evaluate", "ablate", "gesture_cv", "report"):
            assert stage in result["stage_times_s"] and f"| {stage} |" in text
        assert "total rehearsal" in text and "GPU-hours" in text and "CPU core-hours" in text
        assert "NO GPU figures measured" in text or result["projection"]["gpus"][0]["measured"]
        assert result["projection"]["cpu_core_hours"] > 0 and result["missing"] == []
        assert all(v is not None for v in result["costs"]["row_step_s"].values())
        assert (out / "runs" / "report" / "report.md").is_file()
    finally:   # the checkpoints and their MLflow copies (~10 GB); the report, summary and log stay in tmp_path
        for heavy in ("data", "data-fixtures", ".dvc", "runs/ablate", "runs/mlartifacts", "runs/train",
                      "runs/pretrain_sfe", "runs/ray"):
            shutil.rmtree(out / heavy, ignore_errors=True)
