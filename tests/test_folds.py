"""The gesture_cv stage's two fold kinds (§4.3.3, Table 6): the paper-comparable stratified 80/20 folds as the
top-level numbers of runs/metrics/gesture_cv.json and the subject-aware folds beside them, and the report's
Table 6 of both. The stage runs with its Ray sweep replaced by a loop calling the real fold_trial."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from pipeline.params import Params
from pipeline.report import SUBJECT_ROW_LABEL, build_report, render_markdown

CLASSES = 3


class _FakeSplit:
    """A prepared gesture split: subjects, labels and names (what the stage reads of it)."""

    def __init__(self, subjects: np.ndarray, labels: np.ndarray) -> None:
        self.subjects, self.labels = subjects, labels
        self.manifest = {"gesture_names": {str(k): f"g{k}" for k in range(CLASSES)}}

    def __len__(self) -> int:
        return len(self.labels)

    def raw(self, i: int) -> dict:
        return {"subject": int(self.subjects[i])}


def _gesture_set(n_subjects: int, per_subject_class: int = 4, seed: int = 0) -> _FakeSplit:
    subjects = np.repeat(np.arange(n_subjects), CLASSES * per_subject_class)
    labels = np.tile(np.repeat(np.arange(CLASSES), per_subject_class), n_subjects)
    return _FakeSplit(subjects, labels)


@pytest.fixture
def stage(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """stage_gesture_cv with the framework, data and Ray replaced; returns (run, sweeps called)."""
    import pipeline.stages.sweeps as sw
    import trainers.checkpoint
    import trainers.gesture
    import trainers.predict
    import trainers.sweep
    import trainers.train
    import trainers.trials

    sets = {"senz3d": _gesture_set(4), "rwth": _gesture_set(6)}
    calls: list[dict] = []
    monkeypatch.setattr(sw, "RUNS", tmp_path / "runs")
    monkeypatch.setattr(sw, "METRICS", tmp_path / "runs" / "metrics")
    monkeypatch.setattr(sw, "_sweep_common", lambda p: {})
    monkeypatch.setattr(sw, "role_datasets", lambda p, role: {name: ["all"] for name in sets})
    monkeypatch.setattr(sw, "prepared_dir", lambda role, name, split: name)
    monkeypatch.setattr(trainers.checkpoint, "latest", lambda path: tmp_path / "ckpt.pt")
    monkeypatch.setattr(trainers.predict, "load_model", lambda ckpt, device=None: (None, None))
    monkeypatch.setattr(trainers.train, "open_split", lambda path, cfg, role, train=False: sets[str(path)])
    monkeypatch.setattr(trainers.train, "make_loader", lambda ds, batch, shuffle=False: ds)

    def joints(framework, ds):   # separable gestures: a class template + noise
        gen = torch.Generator().manual_seed(0)
        templates = torch.randn(CLASSES, 21, 3, generator=gen) * 30
        y = torch.as_tensor(ds.labels, dtype=torch.long)
        return {"joints_3d": templates[y] + torch.randn(len(y), 21, 3, generator=gen),
                "gesture": y, "index": torch.arange(len(y))}

    monkeypatch.setattr(trainers.gesture, "framework_joints", joints)

    class _Quiet:
        def on_epoch_end(self, epoch, metrics):
            pass

        def on_resume(self, history):
            pass

    monkeypatch.setattr(trainers.trials, "_FoldReport", _Quiet)

    def run_sweep(name, trainable, space, **kw):
        calls.append({"name": name, "folds": space["fold"]["grid_search"], "spec": space["spec"],
                      "parent": kw["parent_run_name"], "out_dir": kw["out_dir"]})
        for k in space["fold"]["grid_search"]:
            trainable({"spec": space["spec"], "fold": k})
        return SimpleNamespace(failed=[], parent_run_id=None)

    monkeypatch.setattr(trainers.sweep, "run_sweep", run_sweep)

    def run(only: dict | None = None, **cv):
        if only is not None:
            sets.clear()
            sets.update(only)
        p = Params.for_profile("default", {"gesture": {"epochs": 2, "batch_size": 16}, "cv": cv})
        sw.stage_gesture_cv(p, resume=False)
        return json.loads((tmp_path / "runs" / "metrics" / "gesture_cv.json").read_text())["datasets"], calls

    return run


def test_stage_writes_table6_folds_and_subject_folds_beside(stage, capsys) -> None:
    out, calls = stage(folds=10, mode="stratified", subject_folds=True)
    assert set(out) == {"senz3d", "rwth"}
    # per dataset: the subject sweep first, then the Table 6 sweep (the newest parent run is Table 6's)
    assert [(c["spec"]["fold_kind"], len(c["folds"])) for c in calls] == [
        ("subject", 4), ("stratified", 10), ("subject", 6), ("stratified", 10)]
    assert [c["parent"] for c in calls[:2]] == ["gesture-cv senz3d subject", "gesture-cv senz3d"]
    assert len({c["out_dir"] for c in calls}) == 4 and len({c["name"] for c in calls}) == 4
    for name, n_subjects in (("senz3d", 4), ("rwth", 6)):
        res = out[name]
        # top level: Table 6's paper-comparable folds, the keys the dashboard reads
        assert {"fold_accuracies", "mean", "std", "folds", "chance", "confusion", "class_names"} <= set(res)
        assert res["kind"] == "stratified" and res["folds"] == 10 and len(res["fold_accuracies"]) == 10
        assert res["mean"] == pytest.approx(np.mean(res["fold_accuracies"]))
        assert res["std"] == pytest.approx(np.std(res["fold_accuracies"]))
        assert res["chance"] == pytest.approx(1 / CLASSES) and res["class_names"] == ["g0", "g1", "g2"]
        n = 12 * n_subjects
        assert np.asarray(res["confusion"]).sum() == 2 * n                  # 10 × 20 %: every sample twice
        assert "80/20" in res["protocol"] and res["test_fraction"] == 0.2
        # beside: leave-subjects-out, folds = min(10, subjects), each subject tested once
        sub = res["subject"]
        assert sub["subject_folds"] == sub["folds"] == n_subjects and sub["n_subjects"] == n_subjects
        assert len(sub["fold_accuracies"]) == n_subjects and 0 <= sub["mean"] <= 1
        assert np.asarray(sub["confusion"]).sum() == n                      # every sample tested once
        assert sorted(s for t in sub["test_subjects"] for s in t) == list(range(n_subjects))
        assert "leave-one-subject-out" in sub["protocol"]
        assert res["mean"] > 0.9                                             # separable joints: the folds train
    printed = capsys.readouterr().out
    assert "gesture-cv senz3d: subject folds" in printed and "4/4 (leave-one-subject-out" in printed
    assert "[Table 6: the stratified folds]" in printed


def test_stage_subject_mode_and_no_subject_folds(stage) -> None:
    out, calls = stage(folds=5, mode="stratified", subject_folds=False)
    assert [c["spec"]["fold_kind"] for c in calls] == ["stratified", "stratified"]
    assert "subject" not in out["senz3d"] and out["senz3d"]["folds"] == 5
    calls.clear()
    out, calls = stage(folds=5, mode="subject", subject_folds=True)
    assert [(c["spec"]["fold_kind"], len(c["folds"])) for c in calls] == [("subject", 4), ("subject", 5)]
    assert out["rwth"]["kind"] == "subject" and out["rwth"]["folds"] == 5 and out["rwth"]["subject"]["folds"] == 5


def test_stage_skips_subject_folds_without_two_subjects(stage, capsys) -> None:
    one = _gesture_set(1, per_subject_class=6)
    out, calls = stage(only={"one": one}, folds=5, mode="stratified", subject_folds=True)
    assert [c["spec"]["fold_kind"] for c in calls] == ["stratified"] and out["one"]["folds"] == 5
    assert out["one"]["subject"] == {"skipped": "one has 1 subject (leave-subjects-out needs >= 2)", "folds": 0,
                                     "subject_folds": 0, "n_subjects": 1}
    assert "no subject folds: one has 1 subject" in capsys.readouterr().out
    from pipeline.stages.common import StageError

    with pytest.raises(StageError, match="cv.mode is 'subject' but one has 1 subject"):
        stage(folds=5, mode="subject")


def _cv(mean: float, std: float, folds: int, protocol: str, **extra) -> dict:
    return {"fold_accuracies": [mean] * folds, "mean": mean, "std": std, "folds": folds, "planned_folds": folds,
            "chance": 1 / 11, "protocol": protocol, **extra}


def test_report_table6_shows_both_fold_kinds() -> None:
    gesture = {
        "senz3d": {**_cv(0.9, 0.02, 10, "10 stratified random 80/20 folds", kind="stratified"),
                   "subject": _cv(0.7, 0.1, 4, "leave-one-subject-out: 4 folds = min(cv.folds 10, 4 subjects)",
                                  subject_folds=4, n_subjects=4)},
        "synth-gestures": {**_cv(0.6, 0.1, 10, "10 stratified random 80/20 folds", kind="stratified"),
                           "subject": {"skipped": "synth-gestures has 1 subject", "folds": 0, "subject_folds": 0}},
    }
    report = build_report(None, None, gesture)
    t6 = report["tables"]["table6"]
    ours = next(r for r in t6["rows"] if r["label"] == "ours (the paper)*")
    assert ours["ours"] == {"senz3d": pytest.approx(90.0)} and ours["diff"]["senz3d"] == pytest.approx(90.0 - 92.83)
    subject = next(r for r in t6["rows"] if r["label"] == SUBJECT_ROW_LABEL)
    assert subject["ours"] == {"senz3d": pytest.approx(70.0)} and subject["paper"] == {} and subject["diff"] == {}
    by = t6["ours_by_dataset"]
    assert by["senz3d"]["mean_pct"] == pytest.approx(90.0) and by["senz3d"]["subject"]["folds"] == 4
    assert by["senz3d"]["subject"]["chance_pct"] == pytest.approx(100 / 11)
    md = render_markdown(report)
    assert f"| {SUBJECT_ROW_LABEL} | — | — | — | 70.00 |" in md
    assert "- senz3d: 90.00 % ± 2.00 (10 folds, chance level 9.09 %) — 10 stratified random 80/20 folds" in md
    assert ("  - subject-aware folds: 70.00 % ± 10.00 (4 folds, chance level 9.09 %) — leave-one-subject-out: "
            "4 folds = min(cv.folds 10, 4 subjects)") in md
    assert "  - subject-aware folds: not run (synth-gestures has 1 subject)" in md
    # a file written before the subject folds existed still renders
    old = build_report(None, None, {"rwth": {"fold_accuracies": [0.7, 0.74], "mean": 0.72, "std": 0.02}})
    assert all(r["label"] != SUBJECT_ROW_LABEL for r in old["tables"]["table6"]["rows"])
    assert "- rwth: 72.00 % ± 2.00 (2 folds)" in render_markdown(old)


def test_dashboard_table6_frame_with_the_subject_row() -> None:
    from dashboards import figures as F

    gesture = {"rwth": {**_cv(0.72, 0.02, 10, "p", kind="stratified"),
                        "subject": _cv(0.6, 0.05, 10, "q", subject_folds=10, n_subjects=20)}}
    frame = F.table6_frame(build_report(None, None, gesture)["tables"]["table6"])
    row = frame[frame["model"] == SUBJECT_ROW_LABEL].iloc[0]
    assert row["ours rwth"] == pytest.approx(60.0) and np.isnan(row["paper rwth"])
    assert frame[frame["model"] == "ours (the paper)*"].iloc[0]["ours rwth"] == pytest.approx(72.0)
