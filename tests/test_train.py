"""trainers/: configuration, checkpoints, the three training stages, evaluation, prediction and their CLI.

Tiny real data: synth-stb (16 train + 8 test images at 96×128) and synth-gestures, prepared at 64 px, generated
once per session; a tiny Framework (64 px, 16-channel hourglass, 1/64 dense widths, 32 px renderer).
"""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import yaml
from torch import nn
from typer.testing import CliRunner

from keyhand.data.cache import PreparedDataset
from keyhand.data.prepare import open_reader, prepare_split
from keyhand.data.synthetic import generate
from pipeline.cli import app
from trainers import checkpoint as ckpt_mod
from trainers.checkpoint import CheckpointError, latest, list_checkpoints, load_checkpoint, restore, save_checkpoint
from trainers.config import (
    ConfigError,
    LossSection,
    TrainConfig,
    load_config,
    profile_names,
    run_hash,
)
from trainers.device import EpochSampler, amp_dtype, resolve_device
from trainers.gesture import build_classifier, fit_gesture, num_gesture_classes
from trainers.train import (
    FitError,
    NonFiniteLossError,
    build_framework,
    evaluate,
    fit,
    make_loader,
    make_loaders,
)

TINY_MODEL = {"image_size": 64, "sfe_channels": 16, "ve_input_size": 32, "dense_scale": 1 / 64, "render_size": 32}
runner = CliRunner()


def tiny_cfg(**sections) -> TrainConfig:
    base = {"model": TINY_MODEL,
            "sfe": {"epochs": 1, "batch_size": 8, "lr": 1e-3},
            "train": {"epochs": 2, "batch_size": 8, "lr": 1e-3},
            "gesture": {"epochs": 30, "batch_size": 16, "lr": 1e-2}}
    for k, v in sections.items():
        base[k] = {**base.get(k, {}), **v}
    return TrainConfig.model_validate(base)


def _prepare(kind: str, root: Path, sizes: dict[str, int], **kw) -> dict[str, Path]:
    generate(kind, root / "raw", sizes, seed=0, image_size=(96, 128), **kw)
    out = {}
    for split in sizes:
        prepare_split(open_reader(kind, root / "raw", split), root / "prepared" / split, image_size=64)
        out[split] = root / "prepared" / split
    out["root"] = root / "prepared"
    out["raw"] = root / "raw"
    return out


@pytest.fixture(scope="session")
def stb(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return _prepare("synth-stb", tmp_path_factory.mktemp("synth-stb"), {"train": 16, "test": 8})


@pytest.fixture(scope="session")
def gestures(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    # 12 classes x 2 subjects: 4 training and 2 test samples per class
    return _prepare("synth-gestures", tmp_path_factory.mktemp("synth-gestures"), {"train": 48, "test": 24},
                    num_subjects=2)


def _one_line(text: str) -> str:
    lines = [line for line in text.splitlines() if line.strip() and not line.startswith("[ WARN")]
    assert len(lines) == 1, lines
    return lines[0]


def _state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


# ------------------------------------------------------------------------------------------------- config

def test_config_unknown_key_is_one_line_naming_it(tmp_path: Path) -> None:
    p = tmp_path / "params.yaml"
    p.write_text(yaml.safe_dump({"train": {"lrr": 1e-3}}))
    with pytest.raises(ConfigError) as e:
        load_config(p)
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith(f"{p}: train.lrr: unknown key") and "lr" in msg
    p.write_text(yaml.safe_dump({"modell": {}}))
    with pytest.raises(ConfigError, match=r"modell: unknown key \(allowed: .*model"):
        load_config(p)


def test_config_wrong_type_is_one_line_naming_it(tmp_path: Path) -> None:
    p = tmp_path / "params.yaml"
    p.write_text("train:\n  lr: fast\nmodel:\n  image_size: 64\n")
    with pytest.raises(ConfigError) as e:
        load_config(p)
    assert str(e.value).startswith(f"{p}: train.lr: must be a valid number") and "\n" not in str(e.value)
    p.write_text("model: {sfe: bogus}\n")
    with pytest.raises(ConfigError, match=r"model\.sfe: must be 'none', 'heatmaps' or"):
        load_config(p)
    p.write_text("train: [1, 2\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(p)
    with pytest.raises(ConfigError, match="no such configuration file"):
        load_config(tmp_path / "nope.yaml")


def test_config_profiles_and_one_schema() -> None:
    from dataclasses import fields

    from keyhand.losses import LossWeights
    from keyhand.model.framework import ModelConfig

    paper = TrainConfig.for_profile("paper")
    for stage, epochs in (("sfe", 60), ("train", 80)):   # §4.3.1
        st = paper.stage(stage)
        assert (st.batch_size, st.lr, st.weight_decay, st.epochs) == (6, 1e-4, 1e-5, epochs)
    assert paper.model == ModelConfig() and type(paper.model) is ModelConfig   # the one model schema
    assert set(LossSection.model_fields) == {f.name for f in fields(LossWeights)}
    assert LossSection().to_loss_weights() == LossWeights()         # generated from LossWeights: same defaults
    cfg = TrainConfig.for_profile("paper", {"train": {"epochs": 3}})
    assert cfg.train.epochs == 3 and cfg.train.batch_size == 6
    assert load_config(None, {"train.epochs": 3}).train.batch_size == 16     # what is left out: default profile
    assert {"paper", "default", "paper-keyhand-weights"} <= set(profile_names())   # profiles/*.yaml
    # epochs / workers are not part of the run hash (continue with more epochs), the learning rate is
    assert run_hash(cfg, "train") == run_hash(cfg.with_overrides(train={"epochs": 9, "num_workers": 2}), "train")
    assert run_hash(cfg, "train") != run_hash(cfg.with_overrides({"train.lr": 1e-3}), "train")
    # so are the inputs: data content and starting weights
    assert run_hash(cfg, "train", {"init": "a"}) != run_hash(cfg, "train", {"init": "b"})


def test_a_new_model_field_reaches_the_params_schema_and_the_run_hash() -> None:
    """ModelConfig is the schema: a field added to it is in params.yaml's model section and in the hash."""
    from typing import Literal

    from pydantic import create_model

    from keyhand.model.framework import ModelConfig
    from pipeline.params import Params, render_params

    assert set(Params.model_fields["model"].annotation.model_fields) == set(ModelConfig.model_fields)
    assert set(yaml.safe_load(render_params(Params()))["model"]) == set(ModelConfig.model_fields)
    Extended = create_model("Extended", __base__=ModelConfig, new_switch=(Literal["a", "b"], "a"))

    class Cfg(TrainConfig):
        model: Extended = Extended()  # type: ignore[valid-type]

    a, b = Cfg(), Cfg.model_validate({"model": {"new_switch": "b"}})
    assert run_hash(a, "train") != run_hash(b, "train")
    with pytest.raises(ValueError, match=r"model\.new_switch: must be 'a' or 'b', got 'c'"):
        Cfg.model_validate({"model": {"new_switch": "c"}})


def test_profile_key_is_refused_with_one_line(tmp_path: Path) -> None:
    p = tmp_path / "params.yaml"
    p.write_text("profile: paper\ntrain: {epochs: 2}\n")
    with pytest.raises(ConfigError) as e:
        load_config(p)
    assert "\n" not in str(e.value) and "keyhand params write --profile paper" in str(e.value)


def test_device_defaults() -> None:
    cpu = resolve_device("cpu")
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    assert amp_dtype(cpu, "auto") is None and amp_dtype(cpu, "bf16") is None      # fp32 on CPU
    s = EpochSampler(10, seed=3)
    s.set_epoch(1)
    a = list(s)
    s.set_epoch(2)
    assert sorted(a) == list(range(10)) and a != list(s)
    s.set_epoch(1)
    assert list(s) == a


# --------------------------------------------------------------------------------------------- checkpoints

def test_checkpoint_round_trip_and_hash_check(tmp_path: Path) -> None:
    model = nn.Linear(4, 3)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    model(torch.randn(2, 4)).sum().backward()
    opt.step()
    path = save_checkpoint(tmp_path, epoch=0, model=model, optimizer=opt, params_hash="h1", metrics={"loss": 1.5})
    after = (torch.rand(3), np.random.rand(), __import__("random").random())  # noqa: NPY002 - the global RNG
    other = nn.Linear(4, 3)
    other_opt = torch.optim.Adam(other.parameters(), lr=1e-3)
    ck = load_checkpoint(tmp_path, params_hash="h1")
    assert Path(ck["path"]) == path == latest(tmp_path) and ck["metrics"] == {"loss": 1.5}
    assert restore(ck, other, other_opt) == 1
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), other.state_dict().values(),
                                                  strict=True))
    assert torch.equal(other_opt.state_dict()["state"][0]["exp_avg"], opt.state_dict()["state"][0]["exp_avg"])
    again = (torch.rand(3), np.random.rand(), __import__("random").random())  # noqa: NPY002
    assert torch.equal(after[0], again[0]) and after[1:] == again[1:]          # RNG states restored
    with pytest.raises(CheckpointError) as e:
        load_checkpoint(path, params_hash="h2")
    assert "\n" not in str(e.value) and "h1" in str(e.value) and "h2" in str(e.value)
    for epoch in (1, 2, 3):
        save_checkpoint(tmp_path, epoch=epoch, model=model, keep=2)
    assert [p.name for p in list_checkpoints(tmp_path)] == ["epoch-0002.pt", "epoch-0003.pt"]


def test_checkpoint_write_is_atomic(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    model = nn.Linear(4, 3)
    good = save_checkpoint(tmp_path, epoch=0, model=model, params_hash="h")
    before = good.read_bytes()

    def dying_save(obj, f, *a, **k):   # a crash half-way through writing the next checkpoint
        f.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(ckpt_mod.torch, "save", dying_save)
    with pytest.raises(OSError):
        save_checkpoint(tmp_path, epoch=1, model=model, params_hash="h")
    monkeypatch.undo()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["epoch-0000.pt"]      # no partial, no temp file
    assert latest(tmp_path) == good and good.read_bytes() == before
    (tmp_path / "epoch-0005.pt").write_bytes(b"garbage")
    with pytest.raises(CheckpointError, match="unreadable checkpoint"):
        load_checkpoint(tmp_path)


# ------------------------------------------------------------------------------------------------ training

class _Interrupt(Exception):
    pass


class _StopAt:
    def __init__(self, step: int) -> None:
        self.step = step

    def on_step_end(self, step: int, terms: dict) -> None:
        if step == self.step:
            raise _Interrupt


def test_resume_after_interrupted_epoch_matches_uninterrupted(stb, tmp_path: Path) -> None:
    cfg = tiny_cfg(train={"epochs": 2, "augment": True})
    loaders = make_loaders(cfg, "train", stb["train"])        # 16 samples, batch 8: 2 steps per epoch
    ref = build_framework(cfg)
    fit("train", ref, loaders, cfg, tmp_path / "a", progress=False)

    model = build_framework(cfg)
    with pytest.raises(_Interrupt):                            # killed after the first step of epoch 2
        fit("train", model, loaders, cfg, tmp_path / "b", callbacks=[_StopAt(3)], progress=False)
    assert [p.name for p in list_checkpoints(tmp_path / "b")] == ["epoch-0000.pt"]
    # other starting weights = another identity: an explicit resume refuses with one line, nothing moves
    with pytest.raises(FitError, match="another identity") as e:
        fit("train", build_framework(cfg, seed=123), loaders, cfg, tmp_path / "b", resume="require", progress=False)
    assert "\n" not in str(e.value) and list_checkpoints(tmp_path / "b")
    resumed = build_framework(cfg)                             # the same identity: continued ("auto")
    epochs_seen, restored = [], []
    result = fit("train", resumed, loaders, cfg, tmp_path / "b", progress=False,
                 callbacks=[SimpleNamespace(on_epoch_end=lambda e, m: epochs_seen.append(e),
                                            on_resume=lambda h: restored.extend(x["epoch"] for x in h))])
    assert result.start_epoch == 1 and result.epochs_run == 1 and epochs_seen == [1] and restored == [0]
    a, b = ref.state_dict(), resumed.state_dict()
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    hist = json.loads((tmp_path / "b" / "history.json").read_text())
    assert [h["epoch"] for h in hist] == [0, 1] and [h["epoch"] for h in result.history] == [0, 1]
    # other settings ("auto"): the old run is set aside, never continued, and the stage starts fresh
    changed = tiny_cfg(train={"epochs": 1, "lr": 5e-4})
    result = fit("train", build_framework(changed), make_loaders(changed, "train", stb["train"]), changed,
                 tmp_path / "b", progress=False)
    assert result.start_epoch == 0 and result.epochs_run == 1
    assert [p.name for p in list_checkpoints(tmp_path / "b.previous")] == ["epoch-0000.pt", "epoch-0001.pt"]


def _fresh(cfg: TrainConfig, stb: dict, out: Path) -> dict[str, torch.Tensor]:
    model = build_framework(cfg)
    fit("train", model, make_loaders(cfg, "train", stb["train"]), cfg, out, progress=False)
    return _state(model)


def _same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_fewer_epochs_give_the_fresh_run_of_that_many_never_the_longer_one(stb, tmp_path: Path) -> None:
    """Run identity excludes epochs, so asking for fewer must still give what a fresh run of that many gives."""
    three = tiny_cfg(train={"epochs": 3, "augment": True, "batch_size": 16})    # one step per epoch
    long = _fresh(three, stb, tmp_path / "run")                # keeps epochs 1 and 2 (keep=2)
    two, one = (three.with_overrides({"train.epochs": n}) for n in (2, 1))
    model = build_framework(two)                               # epoch 2's checkpoint is kept: no training
    result = fit("train", model, make_loaders(two, "train", stb["train"]), two, tmp_path / "run", progress=False)
    assert result.epochs_run == 0 and len(result.history) == 2 and result.checkpoint.name == "epoch-0001.pt"
    assert [p.name for p in list_checkpoints(tmp_path / "run")] == ["epoch-0001.pt"]
    assert _same(_state(model), _fresh(two, stb, tmp_path / "fresh2")) and not _same(_state(model), long)
    model = build_framework(one)                               # epoch 1's checkpoint is gone: trained afresh
    result = fit("train", model, make_loaders(one, "train", stb["train"]), one, tmp_path / "run", progress=False)
    assert result.start_epoch == 0 and result.epochs_run == 1
    assert _same(_state(model), _fresh(one, stb, tmp_path / "fresh1"))
    assert json.loads((tmp_path / "run" / "history.json").read_text())[-1]["epoch"] == 0


class _Threads:
    """Records torch's intra-op thread count at every optimiser step."""

    def __init__(self) -> None:
        self.seen: set[int] = set()

    def on_step_end(self, step: int, terms: dict) -> None:
        self.seen.add(torch.get_num_threads())


def test_a_cpu_runs_thread_count_is_set_and_part_of_its_identity(stb, tmp_path: Path) -> None:
    """train.threads is the count the steps run with (restored after); another count is another run (its float
    reductions differ), so a run folder of one count is set aside, never continued, by a run of another."""
    before = torch.get_num_threads()
    results, models = {}, {}
    for n in (1, 2, 1):
        cfg = tiny_cfg(train={"epochs": 1, "augment": False, "threads": n})
        rec, model = _Threads(), build_framework(cfg)
        result = fit("train", model, make_loaders(cfg, "train", stb["train"]), cfg, tmp_path / "run", callbacks=[rec],
                     progress=False)
        assert rec.seen == {n} and torch.get_num_threads() == before
        assert result.epochs_run == 1                 # each switch of count trains afresh
        results.setdefault(n, []).append(result.params_hash)
        models.setdefault(n, []).append(_state(model))
    assert results[1][0] == results[1][1] != results[2][0]
    assert _same(models[1][0], models[1][1])         # same count, same run: bitwise the same weights
    assert (tmp_path / "run.previous").is_dir()
    unset = tiny_cfg(train={"epochs": 1, "augment": False})
    assert unset.train.threads == 1 and TrainConfig.for_profile("paper").train.threads is None


def test_dataloader_workers_do_not_change_the_run(stb, tmp_path: Path) -> None:
    results = []
    for workers in (0, 2):
        cfg = tiny_cfg(train={"epochs": 1, "num_workers": workers, "augment": True})
        model = build_framework(cfg)
        fit("train", model, make_loaders(cfg, "train", stb["train"]), cfg, tmp_path / str(workers), progress=False)
        results.append(model.state_dict())
    assert all(torch.equal(results[0][k], results[1][k]) for k in results[0])


class _Poisoned(torch.utils.data.Dataset):
    """A prepared split whose samples carry NaN 3D joints from epoch ``from_epoch`` on."""

    def __init__(self, ds: PreparedDataset, from_epoch: int) -> None:
        self.ds, self.from_epoch, self.epoch = ds, from_epoch, 0
        self.manifest, self.masks_dir = ds.manifest, None

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.ds)

    def __getitem__(self, i: int) -> dict:
        item = self.ds[i]
        if self.epoch >= self.from_epoch:
            item["joints_3d"] = torch.full_like(item["joints_3d"], float("nan"))
        return item


def test_nan_loss_stops_with_one_line_and_keeps_last_good_checkpoint(stb, tmp_path: Path) -> None:
    cfg = tiny_cfg(train={"epochs": 3, "augment": False})
    from trainers.train import open_split

    ds = _Poisoned(open_split(stb["train"], cfg, "train", train=False), from_epoch=1)
    model = build_framework(cfg)
    with pytest.raises(NonFiniteLossError) as e:
        fit("train", model, {"train": make_loader(ds, 8, True)}, cfg, tmp_path, progress=False)
    msg = str(e.value)
    assert "\n" not in msg and "epoch 1 step 0" in msg and "joints_3d=nan" in msg and "total=nan" in msg
    assert "epoch-0000.pt" in msg
    assert [p.name for p in list_checkpoints(tmp_path)] == ["epoch-0000.pt"]
    kept = load_checkpoint(tmp_path)
    assert all(torch.isfinite(v).all() for v in kept["model"].values() if v.is_floating_point())


def test_sfe_pretraining_changes_only_sfe(stb, tmp_path: Path) -> None:
    cfg = tiny_cfg()
    model = build_framework(cfg)
    before = _state(model)
    result = fit("sfe", model, make_loaders(cfg, "sfe", stb["train"], stb["test"]), cfg, tmp_path, progress=False)
    after = model.state_dict()
    sfe_changed = [k for k in before if k.startswith("sfe.") and not torch.equal(before[k], after[k])]
    others_changed = [k for k in before if not k.startswith("sfe.") and not torch.equal(before[k], after[k])]
    assert len(sfe_changed) > 10 and others_changed == []
    assert {"train/heatmap", "train/silhouette", "train/total", "val/total"} <= set(result.metrics)
    assert "train/joints_3d" not in result.metrics


@pytest.mark.slow
def test_short_cpu_run_lowers_loss_and_epe(stb, tmp_path: Path) -> None:
    cfg = tiny_cfg(train={"epochs": 4, "augment": False})
    model = build_framework(cfg)
    loaders = make_loaders(cfg, "train", stb["train"], stb["test"])
    before = evaluate(model, loaders["val"])
    assert before["count"] == 8 and before["predictions"]["joints_3d"].shape == (8, 21, 3)
    result = fit("train", model, loaders, cfg, tmp_path, progress=False)
    hist = result.history
    first, last = hist[0], hist[-1]
    print(f"\nsynth-stb tiny run: train/total {first['train/total']:.3f} -> {last['train/total']:.3f}, "
          f"val EPE {before['epe_mean']:.1f} mm (init) -> {last['val/epe_mean']:.1f} mm, "
          f"AUC {before['auc']:.3f} -> {last['val/auc']:.3f}")
    assert last["train/total"] < first["train/total"]
    assert last["val/epe_mean"] < before["epe_mean"] - 1.0
    after = evaluate(model, loaders["val"])
    assert after["epe_mean"] == pytest.approx(last["val/epe_mean"])
    assert len(after["pck"]["values"]) == len(after["pck"]["thresholds_mm"]) and 0 <= after["auc"] <= 1
    # the SFE's own 2D error: the arg-max cells of its last heatmaps against the visible annotated joints
    from keyhand.data.heatmaps import heatmap_argmax

    model.eval()
    errs = []
    with torch.no_grad():
        for b in loaders["val"]:
            uv = heatmap_argmax(model(b["image"], render=False).heatmaps[-1], in_size=b["image"].shape[-1],
                                subpixel=False)
            errs.append((uv - b["joints_2d"]).norm(dim=-1)[b["visibility"] > 0])
    assert after["sfe_2d_px"] == pytest.approx(float(torch.cat(errs).mean()), rel=1e-5)
    assert "val/sfe_2d_px" in last                       # logged every epoch beside the 3D metrics


# ------------------------------------------------------------------------------------------------- gesture

class _OracleFramework(nn.Module):
    """A perfect frozen framework for the gesture stage: the annotated 3D joints of the nearest stored crop."""

    def __init__(self, *datasets: PreparedDataset) -> None:
        super().__init__()
        items = [d[i] for d in datasets for i in range(len(d))]
        self.register_buffer("images", torch.stack([it["image"] for it in items]).flatten(1))
        self.register_buffer("joints", torch.stack([it["joints_3d"] for it in items]))
        self.dummy = nn.Parameter(torch.zeros(()))
        self.calls = 0

    def forward(self, image: torch.Tensor, render: bool = True) -> SimpleNamespace:
        self.calls += 1
        nearest = torch.cdist(image.flatten(1), self.images).argmin(1)
        return SimpleNamespace(joints_3d=self.joints[nearest] + 0 * self.dummy)


def test_gesture_training_beats_chance(gestures, tmp_path: Path) -> None:
    cfg = tiny_cfg()
    loaders = make_loaders(cfg, "gesture", gestures["train"], gestures["test"])
    k = num_gesture_classes(loaders["train"].dataset)
    assert k == 12
    oracle = _OracleFramework(loaders["train"].dataset, loaders["val"].dataset)
    clf = build_classifier(cfg, k)
    result = fit_gesture(clf, oracle, loaders, cfg, tmp_path, progress=False)
    calls = oracle.calls
    assert calls == 3 + 2                             # joints computed once per split (48/16 + 24/16 batches)
    assert (tmp_path / "joints-train.pt").is_file() and (tmp_path / "joints-val.pt").is_file()
    assert result.metrics["val/accuracy"] > 3 / k     # chance = 1/12
    assert result.metrics["train/accuracy"] > result.history[0]["train/accuracy"]
    more = cfg.with_overrides(gesture={"epochs": 32})
    again = fit_gesture(build_classifier(cfg, k), oracle, loaders, more, tmp_path, progress=False)
    assert oracle.calls == calls                      # cached joints reused
    assert again.start_epoch == 30 and again.epochs_run == 2           # the same identity: continued


def test_gesture_stage_with_real_frozen_framework(gestures, tmp_path: Path) -> None:
    cfg = tiny_cfg(gesture={"epochs": 2})
    framework = build_framework(cfg)
    before = _state(framework)
    loaders = make_loaders(cfg, "gesture", gestures["train"], gestures["test"])
    clf = build_classifier(cfg, num_gesture_classes(loaders["train"].dataset))
    result = fit_gesture(clf, framework, loaders, cfg, tmp_path, progress=False)
    assert result.epochs_run == 2 and 0 <= result.metrics["val/accuracy"] <= 1
    assert all(torch.equal(before[k], v) for k, v in framework.state_dict().items())   # frozen
    cached = torch.load(tmp_path / "joints-train.pt", weights_only=True)["data"]
    assert cached["joints_3d"].shape == (48, 21, 3) and cached["gesture"].tolist()[:12] == list(range(12))
    with pytest.raises(FitError, match="frozen framework"):
        fit_gesture(clf, None, loaders, cfg, tmp_path / "x", progress=False)
    with pytest.raises(FitError, match="trainers.gesture.fit_gesture"):
        fit("gesture", clf, loaders, cfg, tmp_path / "x", progress=False)


# --------------------------------------------------------------------------------------- predict and CLI

def test_predict_writes_json_obj_panel_and_times(stb, tmp_path: Path) -> None:
    from trainers.predict import load_model, predict_images

    cfg = tiny_cfg()
    model = build_framework(cfg)
    save_checkpoint(tmp_path / "run", epoch=0, model=model, config={"stage": "train", **cfg.model_dump()})
    loaded, section = load_model(tmp_path / "run", "cpu")
    assert section.image_size == 64
    images = [stb["raw"] / "test" / "000000.png", stb["raw"] / "test" / "000001.png"]
    results = predict_images(loaded, images, tmp_path / "out")
    assert len(results) == 2
    for r, img in zip(results, images, strict=True):
        files = {k: Path(v) for k, v in r["files"].items()}
        record = json.loads(files["json"].read_text())
        assert np.asarray(record["joints_2d"]).shape == (21, 2) and np.asarray(record["joints_3d_mm"]).shape == (21, 3)
        assert record["crop"] == "centre square" and record["crop_box"] == [64.0, 48.0, 96.0]
        assert set(record["times_ms"]) == {"sfe", "ve", "he", "total"}
        assert all(v > 0 for v in record["times_ms"].values())
        assert record["times_ms"]["sfe"] + record["times_ms"]["ve"] + record["times_ms"]["he"] \
            <= record["times_ms"]["total"] * 1.05
        obj = files["obj"].read_text().splitlines()
        assert sum(line.startswith("v ") for line in obj) == 778 and sum(line.startswith("f ") for line in obj) > 1000
        assert files["panel"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert files["panel"].name == f"{img.stem}_panel.png"
    with torch.no_grad():  # the crop-px joints map back to original px through the centre-square crop
        boxed = predict_images(loaded, images[:1], tmp_path / "boxed", box=(10, 10, 60, 50), panels=False)[0]
    from keyhand.data.prepare import box_to_crop

    c = box_to_crop((10, 10, 60, 50), 0.2)                    # the §3.1 square around the box (its convention)
    assert boxed["crop_box"] == [c.cx, c.cy, c.side] == pytest.approx([35.0, 30.0, 60.0], abs=0.5)
    assert "panel" not in boxed["files"]
    scale = c.side / 64
    j2d_crop, j2d = np.asarray(boxed["joints_2d_crop"]), np.asarray(boxed["joints_2d"])
    np.testing.assert_allclose(j2d, (j2d_crop - 31.5) * scale + [c.cx, c.cy], atol=2e-3)


def test_cli_train_evaluate_predict_and_errors(stb, tmp_path: Path) -> None:
    cfgfile = tmp_path / "tiny.yaml"       # a params file: what it leaves out comes from the default profile
    cfgfile.write_text(yaml.safe_dump({"model": TINY_MODEL, "sfe": {"batch_size": 8}, "train": {"batch_size": 8}}))
    r = runner.invoke(app, ["--help"])
    assert all(c in r.output for c in ("pretrain-sfe", "train-gesture", "evaluate", "predict", "make-synthetic"))
    common = ["--params", str(cfgfile), "--data", str(stb["root"]), "--epochs", "1", "--device", "cpu"]
    r = runner.invoke(app, ["pretrain-sfe", *common, "--out", str(tmp_path / "sfe")])
    assert r.exit_code == 0, r.output
    train = ["train", *common, "--out", str(tmp_path / "train"), "--sfe-checkpoint", str(tmp_path / "sfe")]
    r = runner.invoke(app, train)
    assert r.exit_code == 0, r.output
    assert "SFE initialised from" in r.output and (tmp_path / "train" / "epoch-0000.pt").is_file()
    r = runner.invoke(app, [*train, "--resume"])                    # the same identity: nothing left to run
    assert r.exit_code == 0 and "nothing to run" in r.output, r.output
    r = runner.invoke(app, [*train[:-2], "--sfe-checkpoint", "none", "--resume"])   # other starting weights
    assert r.exit_code == 2 and "another identity" in _one_line(r.output)
    r = runner.invoke(app, ["evaluate", "--params", str(cfgfile), "--checkpoint", str(tmp_path / "train"),
                            "--data", str(stb["root"]), "--out", str(tmp_path / "eval"), "--panels", "2"])
    assert r.exit_code == 0, r.output
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert metrics["count"] == 8 and metrics["epe_mean"] > 0
    assert len(list((tmp_path / "eval" / "panels").iterdir())) == 2
    assert np.load(tmp_path / "eval" / "predictions.npz")["joints_3d"].shape == (8, 21, 3)
    image = stb["raw"] / "test" / "000002.png"
    r = runner.invoke(app, ["predict", str(image), "--checkpoint", str(tmp_path / "train"),
                            "--out", str(tmp_path / "pred"), "--device", "cpu"])
    assert r.exit_code == 0, r.output
    assert "SFE" in r.output and (tmp_path / "pred" / "000002.obj").is_file()
    # one-line errors, exit 2
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: {epochs: many}\n")
    r = runner.invoke(app, ["train", "--params", str(bad), "--data", str(stb["root"]), "--out", str(tmp_path / "x")])
    assert r.exit_code == 2 and "train.epochs" in _one_line(r.output)
    r = runner.invoke(app, ["predict", str(tmp_path / "nope.png"), "--checkpoint", str(tmp_path / "train")])
    assert r.exit_code == 2 and "nope.png" in _one_line(r.output)
    r = runner.invoke(app, ["predict", str(image), "--checkpoint", str(tmp_path / "train"), "--box", "1,2,3"])
    assert r.exit_code == 2 and "--box" in _one_line(r.output)
    r = runner.invoke(app, ["evaluate", "--params", str(cfgfile), "--checkpoint", str(tmp_path / "none"),
                            "--data", str(stb["root"]), "--out", str(tmp_path / "e2")])
    assert r.exit_code == 2 and "no such checkpoint" in _one_line(r.output)
    big = tmp_path / "big.yaml"
    big.write_text(yaml.safe_dump({"model": {**TINY_MODEL, "image_size": 128}}))
    r = runner.invoke(app, ["train", "--params", str(big), "--data", str(stb["root"]), "--out", str(tmp_path / "y"),
                            "--sfe-checkpoint", "none"])
    assert r.exit_code == 2 and "--size 128" in _one_line(r.output)
