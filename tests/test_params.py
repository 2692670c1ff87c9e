"""params.yaml (pipeline/params.py): validation, profiles, the committed file, and the report builder."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from keyhand.config import ConfigError
from pipeline.params import Params, ParamsError, load_params, render_params, write_params
from pipeline.report import build_report, load_paper_results, render_markdown, write_report

ROOT = Path(__file__).resolve().parents[1]


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "params.yaml"
    path.write_text(text)
    return path


def test_committed_params_file_is_the_default_profile_in_full() -> None:
    p = load_params(ROOT / "params.yaml")
    assert p == Params()
    assert (ROOT / "params.yaml").read_text() == render_params(p)   # regenerate: keyhand params write


def test_paper_profile_is_the_papers_protocol() -> None:
    p = Params.for_profile("paper")
    for stage, epochs in (("sfe", 60), ("train", 80)):                     # §4.3.1: 60 ObMan, 80 STB
        st = p.stage(stage)
        assert (st.batch_size, st.lr, st.weight_decay, st.epochs) == (6, 1e-4, 1e-5, epochs)
    assert p.model.image_size == 256 and p.model.sfe_channels == 256 and p.model.ve_input_size == 256
    assert p.data.synthetic.stb == {"train": 15000, "val": 750, "test": 3000} and p.cv.folds == 10
    assert p.stats.seeds == 3 and p.sweep.epochs is None and "control_direct" in p.sweep.rows  # same budget
    # Eq. 12 as written: an unweighted sum (keyhand's tuned weights are the paper-keyhand-weights profile)
    assert {k: v for k, v in p.loss.model_dump().items() if k != "heatmap_form"} == dict.fromkeys(
        ("sfe", "heatmap", "silhouette", "joints_3d", "joints_2d", "mask", "reg"), 1.0)
    tuned = Params.for_profile("paper-keyhand-weights")
    assert (tuned.loss.joints_2d, tuned.loss.mask, tuned.loss.reg) == (0.1, 0.001, 0.001)
    assert tuned.model_dump(exclude={"loss"}) == p.model_dump(exclude={"loss"})   # one switch from the paper
    # Eq. 13's L2 heatmaps and ObMan pretraining (§4.1.1); the default profile: softmax maps on the pose set
    assert p.loss.heatmap_form == "l2" and p.data.sfe_on == "obman"
    assert (Params().loss.heatmap_form, Params().data.sfe_on) == ("softmax", "pose")
    # what a file states wins over the profile; what it leaves out comes from the default profile
    assert Params.for_profile("paper", {"train": {"epochs": 3}}).train.epochs == 3
    assert Params.model_validate({"train": {"epochs": 3}}).model == Params().model


def test_no_key_does_nothing_profile_is_refused(tmp_path: Path) -> None:
    """A file naming a profile would silently keep every key it states: refused with one line saying how to
    write that profile in full."""
    path = _write(tmp_path, "profile: paper\nmodel: {image_size: 128}\n")
    with pytest.raises(ParamsError) as err:
        load_params(path)
    assert str(path) in str(err.value) and "keyhand params write --profile paper" in str(err.value)
    assert "profile" not in yaml.safe_load((ROOT / "params.yaml").read_text())


def test_overrides_are_dotted_keys_or_sections(tmp_path: Path) -> None:
    path = _write(tmp_path, "train: {epochs: 5}\n")
    p = load_params(path, {"train.epochs": 2, "sweep": {"epochs": 3}, "model.pca_comps": 15})
    assert (p.train.epochs, p.sweep.epochs, p.model.pca_comps) == (2, 3, 15)
    with pytest.raises(ParamsError, match=r"model\.pca_comps: must be less than or equal to 45"):
        load_params(path, {"model.pca_comps": 46})


def test_one_merge_helper_serves_params_profiles_and_sweeps() -> None:
    import trainers.sweep as sweep
    from keyhand.config import apply_overrides, merge

    assert sweep.apply_overrides is apply_overrides
    base = {"model": {"sfe": "none", "pca_comps": 45}, "loss": {"reg": 0.01}}
    assert apply_overrides(base, {"model.sfe": "heatmaps", "loss": {"reg": 0.0}}) == \
        {"model": {"sfe": "heatmaps", "pca_comps": 45}, "loss": {"reg": 0.0}}
    assert merge(base, {"model": {"pca_comps": 15}})["model"] == {"sfe": "none", "pca_comps": 15}
    assert base["model"]["sfe"] == "none"                                      # inputs are never changed


@pytest.mark.parametrize("text, key", [
    ("trian: {epochs: 1}\n", "trian: unknown key"),
    ("train: {lrr: 0.1}\n", "train.lrr: unknown key"),
    ("train: {lr: fast}\n", "train.lr:"),
    ("model: {sfe: everything}\n", "model.sfe:"),
    ("sweep: {rows: {x: {modle: {}}}}\n", "sweep.rows.x: unknown section"),
    ("data: {source: real}\n", "data.obman.root must be set"),
    ("cv: {test_fraction: 1.5}\n", "cv.test_fraction"),
    ("profile: huge\n", "profile:"),
    ("model: {ve_blocks: 9}\n", "model.ve_blocks: must be less than or equal to 6"),
    ("model: {image_size: 96}\n", "model.image_size: must be 16 * 2^k"),
    ("loss: {reg: -1}\n", "loss.reg: must be greater than or equal to 0"),
])
def test_bad_params_one_line_naming_the_key(tmp_path: Path, text: str, key: str) -> None:
    path = _write(tmp_path, text)
    with pytest.raises(ParamsError) as err:
        load_params(path)
    msg = str(err.value)
    assert key in msg and str(path) in msg and "\n" not in msg


def test_bad_yaml_and_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ParamsError, match="not valid YAML"):
        load_params(_write(tmp_path, "train: [1, 2\n"))
    with pytest.raises(ParamsError, match="no such params file"):
        load_params(tmp_path / "none.yaml")
    with pytest.raises(ParamsError, match="expected a mapping"):
        load_params(_write(tmp_path, "- 1\n"))


def test_write_keeps_local_settings_and_leaves_a_bad_file_untouched(tmp_path: Path) -> None:
    path = _write(tmp_path, "model: {mano_path: /opt/mano}\nray: {address: auto}\ntrain: {epochs: 99}\n")
    p = write_params(path, "paper")
    assert p.model.mano_path == "/opt/mano" and p.ray.address == "auto" and p.train.epochs == 80
    assert load_params(path) == p and "profile" not in yaml.safe_load(path.read_text())
    assert p.model.image_size == 256 and p.data.synthetic.stb["train"] == 15000     # the paper's, in full
    old = _write(tmp_path, "profile: default\nray: {address: auto}\n")            # a file of the old format
    assert write_params(old, "default").ray.address == "auto" and load_params(old) == Params.for_profile(
        "default", {"ray": {"address": "auto"}})
    bad = _write(tmp_path, "train: {lrr: 1}\n")
    with pytest.raises(ParamsError, match="train.lrr"):
        write_params(bad, "default")
    assert bad.read_text() == "train: {lrr: 1}\n"


def test_paper_rows_are_one_switch_from_the_rows_the_paper_compares_them_with() -> None:
    """Tables 1-3 change one switch of the paper's 11.12 mm configuration (Table 4's first row: no skeleton
    adaptation, hourglass summation), not of the final 8.79 mm one; Table 4 goes one component at a time."""
    p = Params.for_profile("paper")
    base, pretrained = p.ablation_config("base")
    assert pretrained and base == p.train_config()            # the base row IS the main run, same budget and seed
    ref, ref_pre = p.ablation_config("t4_no_adapt_sum")        # the paper's Tables 1-3 base
    assert ref_pre and not ref.model.skeleton_adaptation and ref.model.fusion == "sum"
    assert ref.model_dump(exclude={"model"}) == base.model_dump(exclude={"model"})

    def switches(a, b) -> dict:
        da, db = a.model_dump(), b.model_dump()
        return {f"{s}.{k}": v for s in da for k, v in da[s].items() if isinstance(da[s], dict) and db[s][k] != v}

    for row in p.sweep.rows:
        if row.startswith(("t1_", "t2_", "t3_")):
            assert p.row_base(row) == "t4_no_adapt_sum", row
    row, pretrained = p.ablation_config("t1_no_sfe")
    assert switches(row, ref) == {"model.sfe": "none"} and not pretrained
    row, pretrained = p.ablation_config("t1_sfe_heatmaps_silhouette")
    assert switches(row, ref) == {} and not pretrained        # Table 1: the same SFE, not pretrained on ObMan
    assert switches(p.ablation_config("t2_ve1")[0], ref) == {"model.ve_dense": "VE1"}
    assert switches(p.ablation_config("t3_no_reprojection")[0], ref) == {"loss.joints_2d": 0.0, "loss.mask": 0.0}
    row, _ = p.ablation_config("t3_no_reg", seed_index=2)
    assert switches(row, ref) == {"loss.reg": 0.0, "train.seed": ref.train.seed + 2}
    # Table 4 as the paper's text compares it: adaptation, then concatenation, then VE1 instead of VE2
    t4 = {r: p.ablation_config(r)[0] for r in ("t4_no_adapt_sum", "t4_adapt_sum", "t4_adapt_concat_ve1")}
    assert switches(t4["t4_no_adapt_sum"], t4["t4_adapt_sum"]) == {"model.skeleton_adaptation": False}
    assert switches(t4["t4_adapt_sum"], base) == {"model.fusion": "sum"}
    assert switches(t4["t4_adapt_concat_ve1"], base) == {"model.ve_dense": "VE1"}
    for row in t4:
        assert switches(t4[row], p.ablation_config(p.row_base(row))[0]), row   # compared with a neighbour row
    direct, _ = p.ablation_config("control_direct")
    assert direct.model.estimator == "direct"
    assert (direct.loss.joints_2d, direct.loss.mask, direct.loss.reg) == (0, 0, 0)
    assert direct.train == base.train                          # the control at the main run's budget
    assert p.row_base("control_direct") == "base" and p.row_base("base") == "base"
    d = Params()                                               # default: fewer rows, the main budget, 3 seeds
    assert d.seed_indices() == [0, 1, 2] and set(d.sweep.rows) == {"base", "control_direct", "t1_no_sfe"}
    assert d.sweep.epochs is None and d.ablation_config("base") == (d.train_config(), True)   # = the main run
    with pytest.raises(ParamsError, match="no row 'nope'"):
        p.ablation_config("nope")
    # every row the paper's tables name exists
    paper = load_paper_results()
    named = {r["row"] for t in ("table1", "table2", "table3", "table4") for r in paper["tables"][t]["rows"]}
    assert named <= set(p.sweep.rows)


def test_report_tables_beside_the_paper(tmp_path: Path) -> None:
    evaluation = {"epe_mean": 20.0, "epe_median": 19.0, "auc": 0.9, "auc_hand3d_stb": 0.95, "count": 10}
    diff = {"mean": 1.5, "lo": 0.5, "hi": 2.5, "resolved": True}
    ablation = {"t4_no_adapt_sum": {"status": "FINISHED", "epe_mean": 12.12, "base_row": "t4_adapt_sum",
                                    "vs_base": diff},
                "t2_ve1": {"status": "FINISHED", "epe_mean": 11.0, "base_row": "t4_no_adapt_sum", "vs_base": diff},
                "t1_no_sfe": {"status": "FAILED", "error": "x", "base_row": "base"}}
    gesture = {"synth-gestures": {"fold_accuracies": [0.5, 0.7], "mean": 0.6, "std": 0.1}}
    report = build_report(evaluation, ablation, gesture, {"sfe": 1.0, "ve": 2.0, "he": 3.0, "total": 6.0})
    t1 = {r["row"]: r for r in report["tables"]["table1"]["rows"]}
    assert t1["t4_no_adapt_sum"]["ours"] == 12.12 and abs(t1["t4_no_adapt_sum"]["diff"] - 1.0) < 1e-9
    assert t1["t4_no_adapt_sum"]["vs_base"] is None and t1["t4_no_adapt_sum"]["paper_vs"] is None  # table's base
    assert t1["t1_no_sfe"]["ours"] is None and "failed" in t1["t1_no_sfe"]["note"]
    assert t1["t1_no_sfe"]["paper_vs"] == "t4_no_adapt_sum" and t1["t1_no_sfe"]["paper_vs_diff"] == pytest.approx(1.94)
    assert not t1["t1_no_sfe"]["same_base"]                   # ours one switch from `base`, the paper's from 11.12
    assert t1["t1_sfe_heatmaps"]["note"] == "not run"
    t2 = {r["row"]: r for r in report["tables"]["table2"]["rows"]}
    assert t2["t2_ve1"]["ours_vs"] == "t4_no_adapt_sum" and t2["t2_ve1"]["same_base"]
    assert t2["t2_ve1"]["paper_vs_diff"] == pytest.approx(10.79 - 11.12)
    t4 = {r["row"]: r for r in report["tables"]["table4"]["rows"]}
    assert t4["t4_no_adapt_sum"]["ours_vs"] == "t4_adapt_sum" and t4["t4_no_adapt_sum"]["paper_vs_diff"] == \
        pytest.approx(11.12 - 9.10)
    t5 = [r for r in report["tables"]["table5"]["rows"] if r["ours"] is not None]
    assert len(t5) == 1 and abs(t5[0]["diff"] - (0.95 - 0.995)) < 1e-9     # hand3d's STB protocol
    assert report["tables"]["table5"]["ours_wrist_auc"] == 0.9
    assert report["tables"]["table6"]["ours_by_dataset"]["synth-gestures"]["mean_pct"] == pytest.approx(60.0)
    js, md = write_report(report, tmp_path / "report")
    text = md.read_text()
    assert "Table 1: Semantic feature extractor ablation study" in text and "| 12.12 | — | +1.00 | — |" in text
    assert "| -0.33 vs `t4_no_adapt_sum` | 11.00 |" in text and "vs `t4_no_adapt_sum` |" in text
    assert "our base is `base`, the paper's `t4_no_adapt_sum`" in text and "palm centre" in text
    assert "synth-gestures: 60.00 % ± 10.00" in text and js.is_file()
    assert render_markdown(build_report(None, None, None)).count("| — |") > 20       # nothing run yet


def test_cli_params_and_stage_errors(tmp_path: Path) -> None:
    from pipeline.cli import app

    runner = CliRunner()
    path = tmp_path / "p.yaml"
    r = runner.invoke(app, ["params", "write", "--profile", "paper", "--params", str(path)])
    assert r.exit_code == 0 and load_params(path) == Params.for_profile("paper")
    r = runner.invoke(app, ["params", "show", "--params", str(path)])
    assert r.exit_code == 0 and "image_size: 256" in r.output and "\nprofile:" not in r.output
    bad = _write(tmp_path, "sweep: {ablaton: 1}\n")
    r = runner.invoke(app, ["stage", "train", "--params", str(bad)])
    assert r.exit_code == 2 and "sweep.ablaton: unknown key" in r.output and len(r.output.strip().splitlines()) == 1
    r = runner.invoke(app, ["stage", "nope", "--params", str(path)])
    assert r.exit_code == 2 and "unknown stage 'nope'" in r.output
    r = runner.invoke(app, ["stage", "prepare", "nowhere", "--params", str(path)])
    assert r.exit_code == 2 and "unknown data role" in r.output


def test_unreachable_tracking_server_and_ray_address_one_line(tmp_path: Path, monkeypatch) -> None:
    from pipeline.cli import app

    monkeypatch.chdir(tmp_path)
    runner = CliRunner()
    path = _write(tmp_path, "mlflow: {tracking_uri: 'http://127.0.0.1:1'}\n")
    r = runner.invoke(app, ["stage", "train", "--params", str(path)])
    assert r.exit_code == 2 and "127.0.0.1:1" in r.output and len(r.output.strip().splitlines()) == 1
    path = _write(tmp_path, "ray: {address: '127.0.0.1:1'}\n")
    r = runner.invoke(app, ["stage", "ablate", "--params", str(path)])
    assert r.exit_code == 2 and "127.0.0.1:1" in r.output and len(r.output.strip().splitlines()) == 1
    assert not (tmp_path / "runs" / "ablate").exists()


def test_stated_rows_replace_the_profiles() -> None:
    p = Params.model_validate({"sweep": {"rows": {"base": {}, "mine": {"model": {"pca_comps": 15}}}}})
    assert set(p.sweep.rows) == {"base", "mine"}
    assert p.ablation_config("mine")[0].model.pca_comps == 15


def test_cli_sweep_unreachable_address_one_line(tmp_path: Path, monkeypatch) -> None:
    from pipeline.cli import app

    monkeypatch.chdir(tmp_path)
    path = _write(tmp_path, "evaluate: {panels: 1}\n")
    for what in ("ablation", "gesture-cv", "search"):
        r = CliRunner().invoke(app, ["sweep", what, "--address", "ray://127.0.0.1:1", "--params", str(path)])
        assert r.exit_code == 2 and f"sweep {what}:" in r.output and "127.0.0.1:1" in r.output
        assert len(r.output.strip().splitlines()) == 1


def test_report_shows_controls_intervals_and_resolution(tmp_path: Path) -> None:
    evaluation = {"epe_mean": 20.0, "auc": 0.5, "count": 48, "epe_ci": [18.0, 22.5], "epochs": 12}
    ablation = {
        "base": {"status": "FINISHED", "epe_mean": 30.0, "ci": [28.0, 32.0], "seeds": 3, "epochs": 2, "vs_base": None},
        "t1_no_sfe": {"status": "FINISHED", "epe_mean": 35.0, "ci": [33.0, 37.0], "seeds": 3,
                      "vs_base": {"mean": 5.0, "lo": 3.0, "hi": 7.0, "resolved": True}},
        "control_direct": {"status": "FINISHED", "epe_mean": 29.0, "ci": [27.0, 31.0], "seeds": 3, "control": True,
                           "vs_base": {"mean": -1.0, "lo": -2.5, "hi": 0.4, "resolved": False}},
        "control_mean_pose": {"status": "FINISHED", "epe_mean": 70.0, "ci": [65.0, 75.0], "seeds": 1,
                              "vs_base": {"mean": 40.0, "lo": 36.0, "hi": 44.0, "resolved": True},
                              "pck": {"thresholds_mm": [21.0, 35.0, 50.0], "pck": [0.1, 0.3, 0.5],
                                      "lo": [0.05, 0.2, 0.4], "hi": [0.15, 0.4, 0.6]}}}
    report = build_report(evaluation, ablation, {}, comparison={"seeds": 3, "epochs": 2, "main_epochs": 12})
    controls = {r["row"]: r for r in report["controls"]}
    assert controls["evaluate"]["ci"] == [18.0, 22.5] and controls["evaluate"]["seeds"] == 1
    assert controls["control_mean_pose"]["vs_base"]["verdict"] == "resolved"
    assert controls["control_direct"]["vs_base"]["verdict"] == "within noise"
    t1 = {r["row"]: r for r in report["tables"]["table1"]["rows"]}
    assert t1["t1_no_sfe"]["ci"] == [33.0, 37.0] and t1["t1_no_sfe"]["vs_base"]["resolved"]
    text = write_report(report, tmp_path)[1].read_text()
    assert "## Controls" in text and "| 70.00 | [65.0, 75.0] |" in text
    assert "+5.00 [+3.00, +7.00] **resolved**" in text and "-1.00 [-2.50, +0.40] within noise" in text
    assert "3 seed(s) at 2 epochs (the main run: 12)" in text and "read only by the evaluation" in text
    assert "PCK@35.0 mm" in text and "0.300 [0.200, 0.400]" in text


def test_real_data_without_the_mano_file_is_refused_at_load(tmp_path: Path) -> None:
    """data.source real with model.mano_path unset would train the license-free proxy hand on real images (Table
    3's PCA rows would vary a synthetic basis): refused when params.yaml is loaded, one line naming the key;
    data.allow_proxy_hand is the explicit opt-in."""
    roots = "data: {source: real, obman: {root: /o}, stb: {root: /s}%s}\n"
    with pytest.raises(ParamsError) as err:
        load_params(_write(tmp_path, roots % ""))
    line = str(err.value)
    assert "model.mano_path" in line and "allow_proxy_hand" in line and len(line.splitlines()) == 1
    assert load_params(_write(tmp_path, roots % ", allow_proxy_hand: true")).model.mano_path is None
    ok = load_params(_write(tmp_path, roots % "" + "model: {mano_path: /m/MANO_RIGHT.pkl}\n"))
    assert ok.model.mano_path == "/m/MANO_RIGHT.pkl"


@pytest.mark.parametrize("rows, match", [
    ("{base: {}, a: {from: nope}}", "sweep.rows.a.from: no row 'nope'"),
    ("{base: {}, a: {from: b}, b: {from: a}}", "a cycle"),
])
def test_row_from_is_checked_at_load(tmp_path: Path, rows: str, match: str) -> None:
    with pytest.raises(ParamsError, match=match):
        load_params(_write(tmp_path, f"sweep: {{rows: {rows}}}\n"))


def test_profiles_are_yaml_overlays_with_extends(tmp_path: Path, monkeypatch) -> None:
    """profiles/<name>.yaml is what a profile sets; `extends` merges it over another; a bad name is one line."""
    import keyhand.config as kc

    for f in ROOT.joinpath("profiles").glob("*.yaml"):
        (tmp_path / f.name).write_text(f.read_text())
    (tmp_path / "mine.yaml").write_text("extends: paper\ntrain: {epochs: 7}\n")
    (tmp_path / "loop.yaml").write_text("extends: loop2\n")
    (tmp_path / "loop2.yaml").write_text("extends: loop\n")
    monkeypatch.setattr(kc, "PROFILES_DIR", tmp_path)
    mine = Params.for_profile("mine")
    assert mine.train.epochs == 7 and mine.model_dump(exclude={"train"}) == Params.for_profile("paper").model_dump(
        exclude={"train"})
    with pytest.raises(ParamsError, match="unknown profile 'nope'; choose one of .*default.*paper"):
        Params.for_profile("nope")
    with pytest.raises(ConfigError, match="cycle"):
        kc.load_profile("loop")
