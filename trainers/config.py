"""Training settings: the model, loss and per-stage sections, validated with pydantic (one-line errors).

    from trainers.config import TrainConfig, load_config
    cfg = TrainConfig()                               # the default profile (2-core CPU, minutes)
    cfg = TrainConfig.for_profile("paper")            # profiles/paper.yaml (§4.3.1: batch 6, Adam 1e-4, 60 / 80 epochs)
    cfg = load_config("params.yaml", {"train.epochs": 2})   # a YAML file (the training sections of it) + overrides
    cfg.stage("train").lr, cfg.model (a keyhand.model.config.ModelConfig), cfg.loss.to_loss_weights()

One schema: ``model`` IS :class:`keyhand.model.config.ModelConfig` (the class the Framework is built
from) and ``loss`` is generated from the fields of :class:`keyhand.losses.LossWeights`, so a field added
there appears in params.yaml's schema and in the run identity (:func:`run_hash`) without a second edit.

A mapping holds any subset of these keys; what it omits comes from the **default profile**
(``profiles/default.yaml``, the one profile that fills keys; profiles are YAML overlays read by
:func:`keyhand.config.load_profile`). Other profiles are written out in full (``keyhand params write
--profile paper`` or :meth:`TrainConfig.for_profile`); a file never names its profile, so no key does
nothing::

    model: {image_size: 128, sfe: heatmaps+silhouette, ve_dense: VE2, pca_comps: 45}
    loss: {reg: 0.0}            # Table 3 "No LReg"
    sfe: {epochs: 60}           # SFE pretraining (ObMan, §4.1.1)
    train: {lr: 1.0e-4}         # full training (STB, Eq. 12)
    gesture: {epochs: 100}      # the §4.3.3 classifier on the frozen framework's 3D joints
    classifier: {hidden: 128}   # its hidden width

Every section forbids unknown keys, so a typo stops at load time with one line naming the dotted key:
``params.yaml: train.lrr: unknown key (allowed: amp, augment, batch_size, ...)``.
"""

from __future__ import annotations

import hashlib
import json
import os
import typing
from dataclasses import MISSING, fields
from typing import Annotated, Any, Literal

from pydantic import BeforeValidator, Field, ValidationError, ValidationInfo, create_model, model_validator

from keyhand.config import (
    ConfigError,
    Section,
    apply_overrides,
    format_validation_error,
    load_profile,
    load_yaml,
    merge,
    not_bool,
    profile_names,
)
from keyhand.losses import LossWeights
from keyhand.model.config import ModelConfig

__all__ = ["STAGES", "profile_names", "ConfigError", "ModelConfig", "LossSection", "StageSection",
           "ClassifierSection", "TrainConfig", "format_validation_error", "load_config", "run_hash", "check_no_profile",
           "UNHASHED_STAGE_KEYS"]

#: Training stages: SFE pretraining (§4.1.1, ObMan), full training (Eq. 12, STB), gesture classifier (§4.3.3).
STAGES = ("sfe", "train", "gesture")

_Section = Section


_Weight = Annotated[float, BeforeValidator(not_bool), Field(ge=0, allow_inf_nan=False)]


class _LossBase(Section):
    def to_loss_weights(self) -> LossWeights:
        """The :class:`keyhand.losses.LossWeights` these settings describe."""
        return LossWeights(**self.model_dump())


def _loss_section() -> type[Section]:
    """A section with one field per :class:`LossWeights` field (same default; floats: finite and >= 0)."""
    hints = typing.get_type_hints(LossWeights)
    spec: dict[str, Any] = {}
    for f in fields(LossWeights):
        default = f.default if f.default is not MISSING else f.default_factory()  # type: ignore[misc]
        spec[f.name] = (_Weight if hints[f.name] is float else hints[f.name], default)
    return create_model("LossSection", __base__=_LossBase, __module__=__name__, **spec)


#: The ``loss`` section: the weights of Eq. 12 / Eq. 13 (:class:`keyhand.losses.LossWeights`, 0 switches a
#: term off): ``sfe`` L_SFE (Eq. 14) as a whole, ``heatmap`` / ``silhouette`` its parts (Eq. 13),
#: ``joints_3d`` L_3D (Eq. 15), ``joints_2d`` L_2D (Eq. 16), ``mask`` L_M (Eq. 17), ``reg`` L_Reg (Eq. 18).
LossSection = _loss_section()


class StageSection(_Section):
    """How one stage trains (§4.3.1: mini-batches of 6, Adam, lr 1e-4, weight decay 1e-5).

    ``amp``: "auto" = bf16 autocast on CUDA, fp32 on CPU; "bf16" = the same (CPU stays fp32); "off" = fp32.
    ``grad_clip``: max global gradient norm (None = no clipping). ``log_every``: progress-bar refresh (steps).
    ``num_workers``: loader processes (``"auto"``: :func:`trainers.train.loader_workers`, half the cores up to 8,
    none below 4 cores); ``prefetch_factor``: batches each worker keeps ready. Neither changes the numbers.
    ``augment``: the §4.2 appearance augmentation on training images (ignored by the gesture stage, whose
    inputs are the frozen framework's 3D joints, computed once per split). ``threads``: torch's intra-op CPU
    threads while the stage trains (None = as many as torch has, i.e. the machine's cores). On CPU the count
    changes the numbers (float reductions in another order), so the count in effect is part of the run's
    identity (:func:`trainers.train.with_threads`); pinned, a run is the same on any machine of the same
    CPU kind and torch build.
    """

    epochs: int = Field(1, ge=0)
    batch_size: int = Field(6, ge=1)
    lr: float = Field(1e-4, gt=0)
    weight_decay: float = Field(1e-5, ge=0)
    num_workers: Annotated[int, Field(ge=0)] | Literal["auto"] = 0
    prefetch_factor: int = Field(2, ge=1)
    augment: bool = True
    seed: int = 0
    amp: Literal["auto", "off", "bf16"] = "auto"
    channels_last: bool = False
    compile: bool = False
    grad_clip: float | None = Field(None, gt=0)
    log_every: int = Field(10, ge=1)
    threads: int | None = Field(None, ge=1)


class ClassifierSection(_Section):
    """The §4.3.3 gesture classifier ([33]: three fully connected layers with ReLU); widths not in the paper."""

    hidden: int = Field(128, ge=1)
    dropout: float = Field(0.0, ge=0, lt=1)


class TrainConfig(_Section):
    """All training settings; the default profile fills every key the input omits (module docstring)."""

    model: ModelConfig = ModelConfig()
    loss: LossSection = LossSection()  # type: ignore[valid-type]
    sfe: StageSection = StageSection()
    train: StageSection = StageSection()
    gesture: StageSection = StageSection()
    classifier: ClassifierSection = ClassifierSection()

    @classmethod
    def profile_defaults(cls, profile: str) -> dict[str, Any]:
        """What ``profile`` sets of this schema's sections (``profiles/<profile>.yaml``; subclasses with more
        sections read more of it)."""
        data = load_profile(profile)
        return {k: data[k] for k in cls.model_fields if k in data}

    @classmethod
    def merge_profile(cls, defaults: dict[str, Any], data: dict[str, Any]) -> dict[str, Any]:
        """``data`` over the profile's ``defaults`` (nested mappings merge; what ``data`` states wins)."""
        return merge(defaults, data)

    @model_validator(mode="before")
    @classmethod
    def _fill_from_profile(cls, data: Any, info: ValidationInfo) -> Any:
        if not isinstance(data, dict):
            return data
        profile = (info.context or {}).get("profile", "default")
        return cls.merge_profile(cls.profile_defaults(profile), data)

    @classmethod
    def for_profile(cls, profile: str, data: dict[str, Any] | None = None):
        """The settings of ``profile`` ("default" | "paper") with ``data`` (a nested mapping) over them."""
        if profile not in profile_names():
            raise ConfigError(f"unknown profile {profile!r}; choose one of {', '.join(profile_names())}")
        try:
            return cls.model_validate(data or {}, context={"profile": profile})
        except ValidationError as e:
            raise ConfigError(format_validation_error(e, model=cls)) from None

    def stage(self, name: str) -> StageSection:
        """The section of stage ``name`` (one of :data:`STAGES`)."""
        if name not in STAGES:
            raise ConfigError(f"unknown stage {name!r}; choose one of {', '.join(STAGES)}")
        return getattr(self, name)

    def training(self) -> TrainConfig:
        """Just the training sections (a :class:`TrainConfig`, also of a subclass such as pipeline's Params)."""
        return TrainConfig.model_validate({k: getattr(self, k).model_dump() for k in TrainConfig.model_fields})

    def with_overrides(self, overrides: dict[str, Any] | None = None, **sections: dict):
        """A validated copy with keys replaced: ``cfg.with_overrides({"train.epochs": 2})`` or
        ``cfg.with_overrides(train={"epochs": 2})`` (dotted keys and nested mappings both work)."""
        data = apply_overrides(apply_overrides(self.model_dump(), overrides or {}), sections)
        try:
            return type(self).model_validate(data)
        except ValidationError as e:
            raise ConfigError(format_validation_error(e, "overrides", model=type(self))) from None


def check_no_profile(data: dict[str, Any], source: str | os.PathLike) -> None:
    """A file that names a profile would silently ignore it for every key it states: one line instead."""
    if "profile" in data:
        raise ConfigError(f"{source}: profile: not a key of the file; a profile is written out in full: "
                          f"keyhand params write --profile {data['profile']} (keeps data roots, MANO path, Ray, "
                          "MLflow)")


def load_config(path: str | os.PathLike | None = None, overrides: dict | None = None) -> TrainConfig:
    """A YAML file of training sections (None = the default profile), then ``overrides``.

    ``overrides``: dotted keys or nested mappings (``{"train.epochs": 2}``, ``{"train": {"epochs": 2}}``).
    A whole params.yaml is read with ``pipeline.params.load_params`` (same loader, more sections).
    Raises :class:`ConfigError` (one line naming the file and the key).
    """
    data: dict[str, Any] = {}
    source = "config" if path is None else str(path)
    if path is not None:
        data = load_yaml(path)
        check_no_profile(data, source)
    data = apply_overrides(data, overrides or {})
    try:
        return TrainConfig.model_validate(data)
    except ValidationError as e:
        raise ConfigError(format_validation_error(e, source, model=TrainConfig)) from None


#: Stage keys that do not change what a given epoch computes: a run continued with other values is the same run.
#: (``epochs`` is left out so that a longer run continues a shorter one; no learning-rate schedule depends on it.)
UNHASHED_STAGE_KEYS = frozenset({"epochs", "num_workers", "prefetch_factor", "log_every", "compile"})


def run_hash(cfg: TrainConfig, stage: str, inputs: dict[str, Any] | None = None) -> str:
    """A run's identity (sha256, 16 hex): everything that changes what its epochs compute.

    The model section (every field of :class:`ModelConfig`), the loss weights (sfe/train) or the classifier
    (gesture), the stage's settings except :data:`UNHASHED_STAGE_KEYS`, and ``inputs``: content hashes of
    what the run reads and starts from (prepared data and masks, the initial weights with the pretrained
    SFE in them; see :func:`trainers.run.stage_inputs`). Checkpoints record it; a run folder of another
    identity is never continued.
    """
    st = {k: v for k, v in cfg.stage(stage).model_dump().items() if k not in UNHASHED_STAGE_KEYS}
    blob: dict[str, Any] = {"stage": stage, "model": cfg.model.model_dump(), "stage_cfg": st,
                            "inputs": inputs or {}}
    if stage != "gesture":
        blob["loss"] = cfg.loss.model_dump()
    else:
        blob["classifier"] = cfg.classifier.model_dump()
    text = json.dumps(blob, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]
