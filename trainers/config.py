"""Training settings: the model, loss and per-stage sections, validated with pydantic (one-line errors).

    from trainers.config import TrainConfig, load_config
    cfg = load_config("train.yaml")                  # or TrainConfig() for the CPU default profile
    cfg = TrainConfig(profile="paper")               # §4.3.1: batch 6, Adam 1e-4, wd 1e-5, 60 / 80 epochs
    cfg.stage("train").lr, cfg.model.to_model_config(), cfg.loss.to_loss_weights()

A YAML file holds any subset of these keys; what it omits comes from its ``profile``::

    profile: default            # "default" (2-core CPU, minutes) or "paper" (the paper's protocol)
    model: {image_size: 128, sfe: heatmaps+silhouette, ve_dense: VE2, pca_comps: 45}
    loss: {reg: 0.0}            # Table 3 "No LReg"
    sfe: {epochs: 60}           # SFE pretraining (ObMan, §4.1.1)
    train: {lr: 1.0e-4}         # full training (STB, Eq. 12)
    gesture: {epochs: 100}      # the §4.3.3 classifier on the frozen framework's 3D joints
    classifier: {hidden: 128}   # its hidden width

Every section forbids unknown keys, so a typo stops at load time with one line naming the dotted key:
``params.yaml: train.lrr: unknown key (allowed: amp, augment, batch_size, ...)``. A later issue builds the
whole ``params.yaml`` schema around these sections; keep them small and importable (no torch here).
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

__all__ = ["STAGES", "PROFILES", "ConfigError", "ModelSection", "LossSection", "StageSection",
           "ClassifierSection", "TrainConfig",
           "format_validation_error", "load_config", "run_hash"]

#: Training stages: SFE pretraining (§4.1.1, ObMan), full training (Eq. 12, STB), gesture classifier (§4.3.3).
STAGES = ("sfe", "train", "gesture")


class ConfigError(ValueError):
    """A bad configuration: the message is one line naming the file and the dotted key."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True)


class ModelSection(_Section):
    """Mirrors :class:`keyhand.model.framework.ModelConfig` field for field (every Table 1-4 ablation)."""

    sfe: Literal["none", "heatmaps", "heatmaps+silhouette"] = "heatmaps+silhouette"   # Table 1
    fusion: Literal["sum", "concat"] = "concat"                                          # Table 4
    ve_blocks: int = Field(4, ge=1, le=8)                                                # Table 2: 2 | 4 | 5
    ve_dense: Literal["VE1", "VE2", "VE3"] = "VE2"                                       # Table 2
    pca_comps: int = Field(45, ge=1, le=45)                                              # Table 3: 15 | 30 | 45
    skeleton_adaptation: bool = True                                                     # Table 4
    image_size: int = Field(256, ge=16)              # input crop side (px); heatmaps are image_size // 4
    sfe_channels: int = Field(256, ge=1)             # hourglass width (paper 256)
    ve_input_size: int = Field(256, ge=8)            # f is resized to this (§3.3)
    ve_channels: int = Field(64, ge=1)               # first abstraction block width
    dense_scale: float = Field(1.0, gt=0)            # multiplies the dense widths (1024 / 2048)
    render_size: int = Field(64, ge=8)               # rendered silhouette side (px)
    render_mode: Literal["nmr", "soft"] = "nmr"
    soft_sigma: float = Field(1e-4, gt=0)
    mano_path: str | None = None                     # None = the license-free proxy hand
    side: Literal["right", "left"] = "right"
    flat_hand_mean: bool = False

    def to_model_config(self):
        """The :class:`keyhand.model.framework.ModelConfig` these settings describe."""
        from keyhand.model.framework import ModelConfig

        return ModelConfig(**self.model_dump())


class LossSection(_Section):
    """Mirrors :class:`keyhand.losses.LossWeights`: weights of the Eq. 12 terms (0 switches a term off).

    ``sfe`` scales L_SFE (Eq. 14) as a whole, ``heatmap`` / ``silhouette`` its two parts (Eq. 13);
    ``joints_3d`` L_3D (Eq. 15), ``joints_2d`` L_2D (Eq. 16), ``mask`` L_M (Eq. 17), ``reg`` L_Reg (Eq. 18).
    """

    sfe: float = Field(1.0, ge=0)
    heatmap: float = Field(1.0, ge=0)
    silhouette: float = Field(1.0, ge=0)
    joints_3d: float = Field(1.0, ge=0)
    joints_2d: float = Field(1.0, ge=0)
    mask: float = Field(1.0, ge=0)
    reg: float = Field(0.01, ge=0)                   # keyhand.losses: 0.01 keeps L_Reg a regulariser

    def to_loss_weights(self):
        """The :class:`keyhand.losses.LossWeights` these settings describe."""
        from keyhand.losses import LossWeights

        return LossWeights(**self.model_dump())


class StageSection(_Section):
    """How one stage trains (§4.3.1: mini-batches of 6, Adam, lr 1e-4, weight decay 1e-5).

    ``amp``: "auto" = bf16 autocast on CUDA, fp32 on CPU; "bf16" = the same (CPU stays fp32); "off" = fp32.
    ``grad_clip``: max global gradient norm (None = no clipping). ``log_every``: progress-bar refresh (steps).
    ``augment``: the §4.2 appearance augmentation on training images (ignored by the gesture stage, whose
    inputs are the frozen framework's 3D joints, computed once per split).
    """

    epochs: int = Field(1, ge=0)
    batch_size: int = Field(6, ge=1)
    lr: float = Field(1e-4, gt=0)
    weight_decay: float = Field(1e-5, ge=0)
    num_workers: int = Field(0, ge=0)
    augment: bool = True
    seed: int = 0
    amp: Literal["auto", "off", "bf16"] = "auto"
    channels_last: bool = False
    compile: bool = False
    grad_clip: float | None = Field(None, gt=0)
    log_every: int = Field(10, ge=1)


class ClassifierSection(_Section):
    """The §4.3.3 gesture classifier ([33]: three fully connected layers with ReLU); widths not in the paper."""

    hidden: int = Field(128, ge=1)
    dropout: float = Field(0.0, ge=0, lt=1)


_PAPER_STAGE = {"batch_size": 6, "lr": 1e-4, "weight_decay": 1e-5}
#: Profiles fill what a configuration omits. "paper" is §4.3.1's protocol (the gesture classifier's epochs are
#: not given by the paper: 100 is ours); "default" is a small model that trains on a 2-core CPU in minutes.
PROFILES: dict[str, dict[str, Any]] = {
    "paper": {
        "model": {},
        "loss": {},
        "sfe": {**_PAPER_STAGE, "epochs": 60},
        "train": {**_PAPER_STAGE, "epochs": 80},
        "gesture": {**_PAPER_STAGE, "epochs": 100, "augment": False},
    },
    "default": {
        "model": {"image_size": 128, "sfe_channels": 32, "ve_input_size": 64, "ve_channels": 16,
                  "dense_scale": 0.125, "render_size": 32},
        "loss": {},
        "sfe": {"epochs": 4, "batch_size": 16, "lr": 1e-3, "weight_decay": 1e-5},
        "train": {"epochs": 12, "batch_size": 16, "lr": 1e-3, "weight_decay": 1e-5},
        "gesture": {"epochs": 60, "batch_size": 32, "lr": 1e-3, "weight_decay": 1e-5, "augment": False},
    },
}


def _merge(base: dict, over: dict) -> dict:
    out = copy.deepcopy(base)
    for k, v in over.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


class TrainConfig(_Section):
    """All training settings: ``profile`` supplies every key the input omits (module docstring)."""

    profile: Literal["paper", "default"] = "default"
    model: ModelSection = ModelSection()
    loss: LossSection = LossSection()
    sfe: StageSection = StageSection()
    train: StageSection = StageSection()
    gesture: StageSection = StageSection()
    classifier: ClassifierSection = ClassifierSection()

    @classmethod
    def profile_defaults(cls, profile: str) -> dict[str, Any]:
        """What ``profile`` fills in (subclasses with more sections extend it)."""
        return PROFILES[profile]

    @classmethod
    def merge_profile(cls, defaults: dict[str, Any], data: dict[str, Any]) -> dict[str, Any]:
        """``data`` over the profile's ``defaults`` (nested mappings merge; what ``data`` states wins)."""
        return _merge(defaults, data)

    @model_validator(mode="before")
    @classmethod
    def _apply_profile(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        profile = data.get("profile", "default")
        if not isinstance(profile, str) or profile not in PROFILES:
            return data  # the Literal field reports it
        return cls.merge_profile(cls.profile_defaults(profile), data)

    def stage(self, name: str) -> StageSection:
        """The section of stage ``name`` (one of :data:`STAGES`)."""
        if name not in STAGES:
            raise ConfigError(f"unknown stage {name!r}; choose one of {', '.join(STAGES)}")
        return getattr(self, name)

    def with_overrides(self, **sections: dict) -> TrainConfig:
        """A copy with some keys replaced, e.g. ``cfg.with_overrides(train={"epochs": 2})`` (validated)."""
        return TrainConfig.model_validate(_merge(self.model_dump(), sections))


def _allowed_keys(model: type[BaseModel], loc: tuple) -> list[str] | None:
    """Field names of the section at ``loc`` (a path of field names from ``model``), if it is a model."""
    cls = model
    for part in loc:
        field = cls.model_fields.get(part) if isinstance(part, str) else None
        ann = getattr(field, "annotation", None)
        if not (isinstance(ann, type) and issubclass(ann, BaseModel)):
            return None
        cls = ann
    return sorted(cls.model_fields)


def format_validation_error(exc: ValidationError, source: str | os.PathLike = "config",
                            model: type[BaseModel] = TrainConfig, prefix: tuple = ()) -> str:
    """One line from a pydantic error: ``params.yaml: train.lr: Input should be a valid number`` (+ N more).

    ``prefix``: the dotted location of the validated mapping inside the file (for embedded sections).
    """
    errors = exc.errors(include_url=False)
    if not errors:
        return f"{source}: invalid configuration"
    e = errors[0]
    loc = tuple(e.get("loc", ()))
    key = ".".join(str(p) for p in (*prefix, *loc)) or "(top level)"
    if e.get("type") == "extra_forbidden":
        allowed = _allowed_keys(model, loc[:-1])
        msg = "unknown key" + (f" (allowed: {', '.join(allowed)})" if allowed else "")
    else:
        msg = e.get("msg", "invalid value")
        if e.get("type") not in ("missing",) and "input" in e and not isinstance(e["input"], dict | list):
            msg += f", got {e['input']!r}"
    more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
    return f"{source}: {key}: {msg}{more}".replace("\n", " ")


def load_config(path: str | os.PathLike | None = None, overrides: dict | None = None) -> TrainConfig:
    """Read and validate a YAML file of the sections above (None = the default profile).

    ``overrides`` (nested dict, e.g. ``{"train": {"epochs": 2}}``) are merged over the file's content.
    Raises :class:`ConfigError` with one line naming the file and the key.
    """
    data: Any = {}
    source = "config" if path is None else str(path)
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"{p}: no such configuration file")
        try:
            data = yaml.safe_load(p.read_text()) or {}
        except yaml.YAMLError as e:
            mark = getattr(e, "problem_mark", None)
            where = f" line {mark.line + 1}" if mark is not None else ""
            problem = getattr(e, "problem", None) or type(e).__name__
            raise ConfigError(f"{p}:{where}: not valid YAML ({problem})") from None
        if not isinstance(data, dict):
            raise ConfigError(f"{p}: expected a mapping of sections (model, loss, sfe, train, gesture), "
                              f"got {type(data).__name__}")
    if overrides:
        data = _merge(data, overrides)
    try:
        return TrainConfig.model_validate(data)
    except ValidationError as e:
        raise ConfigError(format_validation_error(e, source)) from None


#: Stage keys that do not change what a given epoch computes: a run resumed with other values is the same run.
_UNHASHED = {"epochs", "num_workers", "log_every", "compile"}


def run_hash(cfg: TrainConfig, stage: str, data: dict[str, str] | None = None) -> str:
    """Content hash (sha256, 16 hex) of what defines a stage's run: model, loss, stage settings, data hashes.

    ``epochs``, ``num_workers``, ``log_every`` and ``compile`` are left out, so a run may be resumed
    with more epochs or more workers. Checkpoints record it; resuming with another hash is refused.
    """
    st = {k: v for k, v in cfg.stage(stage).model_dump().items() if k not in _UNHASHED}
    blob = {"stage": stage, "model": cfg.model.model_dump(), "stage_cfg": st, "data": data or {}}
    if stage != "gesture":
        blob["loss"] = cfg.loss.model_dump()
    else:
        blob["classifier"] = cfg.classifier.model_dump()
    text = json.dumps(blob, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]
