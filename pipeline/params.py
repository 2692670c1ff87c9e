"""``params.yaml``: every knob of the platform in one file, validated when loaded.

    from pipeline.params import load_params
    p = load_params("params.yaml", {"train.epochs": 2})   # ParamsError: one line naming the file and the key
    p.train_config()                                   # trainers.config.TrainConfig (model, loss, stages)
    p.pose_datasets(), p.gesture_datasets()            # what the graph prepares and trains on
    Params.for_profile("paper")                        # the paper's protocol (keyhand params write --profile paper)

Profiles are YAML overlays in the repository's ``profiles/`` (keyhand.config.load_profile): ``default.yaml`` (the
embedded synthetic profile: the whole graph on a 2-core CPU in minutes), ``paper.yaml`` (the paper's protocol,
§3-4, every setting commented with its section: batch 6, Adam 1e-4, wd 1e-5, 60 / 80 epochs, 256² crops, the
paper's widths, Eq. 12 unweighted, Tables 1-3 one switch from the 11.12 mm configuration, 3 seeds per row) and
``paper-keyhand-weights.yaml`` (the paper with keyhand's tuned Eq. 12 weights). params.yaml is one profile
written out in full (``keyhand params write --profile NAME``); a key a file omits takes the default profile's
value. The file never names a profile (it would do nothing for the keys it states).

Sections (each forbids unknown keys, so a typo stops with ``params.yaml: sweep.ablaton: unknown key``):

    data      source (synthetic | real), the synthetic sizes, the real datasets' roots (generated, prepared
              and mask folders live under the project's data/, as dvc.yaml declares them)
    prepare   §3.1 crop enlargement, §3.5 heatmap σ and GrabCut iterations / processes
    model, loss, sfe, train, gesture    trainers.config sections (Tables 1-4 switches, Eq. 12 weights, stages)
    evaluate  Fig. 6 panels to render
    cv        §4.3.3 gesture cross-validation (folds, test fraction, stratified | subject)
    sweep     the Tables 1-4 rows and the direct-regression control (named overrides of the main configuration),
              epochs per row, the Optuna search space, per-trial resources, retries
    stats     seeds of every compared row (train.seed + k), the interval level, bootstrap replicates
    ray       the cluster address (None = a local Ray; "auto"; "ray://host:port")
    mlflow    tracking URI (None = $MLFLOW_TRACKING_URI, else the local store runs/mlflow.db) and experiments

``ray`` and ``mlflow`` say where work runs and is recorded, never what it computes: no stage depends on them.
The crop side is ``model.image_size`` (one source of truth for preparation and the network).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import Field, ValidationError, field_validator, model_validator

from keyhand.atomic import atomic_write_text
from keyhand.config import ConfigError, Section, apply_overrides, format_validation_error, load_yaml, merge
from trainers.config import TrainConfig, check_no_profile

__all__ = ["Params", "ParamsError", "load_params", "write_params", "render_params", "POSE_DATASETS",
           "GESTURE_DATASETS", "ROW_KEYS"]

#: Pose datasets (SFE pretraining, training/evaluation) and gesture datasets, synthetic and real.
POSE_DATASETS = {"synthetic": {"pretrain": "synth-obman", "pose": "synth-stb"},
                 "real": {"pretrain": "obman", "pose": "stb"}}
GESTURE_DATASETS = {"synthetic": ("synth-gestures",), "real": ("rwth", "senz3d")}


class ParamsError(ConfigError):
    """A bad params file: one line naming the file and the dotted key."""


_Section = Section


class SyntheticSection(_Section):
    """Sizes of the generated datasets (images per split), image size, seed, gesture subjects."""

    seed: int = 0
    height: int = Field(240, ge=32)
    width: int = Field(320, ge=32)
    obman: dict[str, int] = {"train": 240}
    stb: dict[str, int] = {"train": 240, "val": 30, "test": 60}
    gestures: dict[str, int] = {"all": 240}
    subjects: int = Field(4, ge=1)

    @field_validator("obman", "stb", "gestures")
    @classmethod
    def _positive(cls, v: dict[str, int]) -> dict[str, int]:
        for split, n in v.items():
            if n < 0:
                raise ValueError(f"split {split!r}: a size must be >= 0, got {n}")
        return v


class RootSection(_Section):
    root: str | None = None


class ObmanSection(RootSection):
    # the images read (keyhand.data.obman): "rgb" = rgb/, hand + object, the paper's 141,550 (§4.1.1); "rgb_hand" =
    # rgb_hand/, the hand-only renders; "rgb+rgb_hand" = both (2 x 141,550)
    mode: Literal["rgb", "rgb_hand", "rgb+rgb_hand"] = "rgb"

    @field_validator("mode", mode="before")
    @classmethod
    def _renamed(cls, v: Any) -> Any:
        renamed = {"hand_object": "rgb", "hand": "rgb_hand", "all": "rgb+rgb_hand"}
        if v in renamed:
            raise ValueError(f"{v!r} was renamed {renamed[v]!r} ('rgb' = rgb/ hand + object, the paper's 141,550; "
                             "'rgb_hand' = rgb_hand/ hand-only renders; 'rgb+rgb_hand' = both)")
        return v


#: STB's training sequences (B2-B6; B1 is the test split)
STB_TRAIN_SEQUENCES = tuple(f"B{b}{kind}" for b in range(2, 7) for kind in ("Counting", "Random"))


class StbSection(RootSection):
    palm_to_wrist: Literal["extrapolate", "keep"] = "extrapolate"
    # the pose role's val split: every frame of this one training sequence, which leaves train (consecutive frames
    # are near-duplicates, so a share of frames would validate on what train holds); B2 is obman_train's val
    val_sequence: Literal[STB_TRAIN_SEQUENCES] = "B2Counting"  # type: ignore[valid-type]


class RwthSection(RootSection):
    # §4.1.3: the paper's 20 individuals = the download's signers 1-20 (it also holds 23-26, session 1 only)
    signers: list[int] = list(range(1, 21))
    sessions: list[int] = [1, 2]
    camera: Literal["cam1", "cam2", "both"] = "cam1"   # cam1 = the webcam's view of the hand (one view per sequence)

    @field_validator("signers", "sessions")
    @classmethod
    def _ids(cls, v: list[int]) -> list[int]:
        if not v or any(i < 1 for i in v):
            raise ValueError(f"must list positive ids (1-based), got {v}")
        return v


class DataSection(_Section):
    source: Literal["synthetic", "real"] = "synthetic"
    on_corrupt: Literal["fail", "skip"] = "fail"        # corrupt images: stop, or skip with a counted warning
    val_fraction: float = Field(0.05, gt=0, lt=1)       # real sets but STB (one held-out sequence): share of train
                                                        # held out for val (every 1/f-th sample)
    # the images the SFE is pretrained on: "obman" = the pretrain set (§4.1.1, the paper's), "pose" = the pose
    # set's train split (the default profile: docs/statistics.md "A working SFE")
    sfe_on: Literal["obman", "pose"] = "obman"
    # data.source real with model.mano_path null trains the license-free proxy hand: refused unless this is true
    allow_proxy_hand: bool = False
    synthetic: SyntheticSection = SyntheticSection()
    obman: ObmanSection = ObmanSection()
    stb: StbSection = StbSection()
    rwth: RwthSection = RwthSection()
    senz3d: RootSection = RootSection()


class PrepareSection(_Section):
    enlarge: float = Field(0.2, ge=0)                   # §3.1: l enlarged by 20 %
    sigma: float = Field(2.5, gt=0)                     # §3.5: heatmap Gaussian σ (heatmap px)
    mask_iterations: int = Field(5, ge=1)               # §3.5: GrabCut iterations
    mask_workers: int = Field(0, ge=0)                  # GrabCut processes (0 = all cores)


class EvaluateSection(_Section):
    panels: int = Field(4, ge=0)                        # Fig. 6 panels rendered and logged


class CvSection(_Section):
    """§4.3.3 folds (keyhand.model.gesture.cv_splits, docs/gesture_cv.md). ``mode``: the folds whose numbers
    are Table 6's, "stratified" = the paper-comparable random 80/20 folds (⌈folds / 5⌉ repetitions of 5
    disjoint stratified test fifths), "subject" = leave-subjects-out. ``subject_folds``: also run the
    leave-subjects-out folds, min(folds, subjects) of them, beside (the ``subject`` block of gesture_cv.json)."""
    folds: int = Field(10, ge=2)                        # §4.3.3: 10-fold cross-validation
    test_fraction: float = Field(0.2, gt=0, lt=1)       # 80/20 splits (stratified folds)
    mode: Literal["stratified", "subject"] = "stratified"   # Table 6's folds: the paper's random 80/20
    subject_folds: bool = True                          # leave-subjects-out folds beside them
    seed: int = 0


class SearchSection(_Section):
    num_samples: int = Field(8, ge=1)
    metric: str = "epe_mean"
    mode: Literal["min", "max"] = "min"
    space: dict[str, list] = {"train.lr": ["loguniform", 1e-5, 1e-2],
                              "train.weight_decay": ["loguniform", 1e-7, 1e-3],
                              "loss.joints_2d": ["loguniform", 0.1, 10.0],
                              "loss.mask": ["loguniform", 0.1, 10.0]}
    grace_period: int = Field(1, ge=1)                  # ASHA: epochs before a trial may be stopped
    reduction_factor: int = Field(2, ge=2)


#: What a row of ``sweep.rows`` may state: overrides of sections model / loss / train, ``pretrained_sfe`` (start
#: from the pretrain_sfe checkpoint: Table 1's last row) and ``from`` (the row it changes one switch of: its
#: overrides apply on top of that row's, and the ablation compares the two; none = ``base``).
ROW_KEYS = ("model", "loss", "train", "pretrained_sfe", "from")


class SweepSection(_Section):
    #: Named rows of Tables 1-4 (keys: :data:`ROW_KEYS`): overrides of ``base`` (the main configuration's
    #: overrides common to every row, e.g. ``pretrained_sfe: true``), or of the row named by ``from``.
    base: dict[str, Any] = {}
    rows: dict[str, dict[str, Any]] = {}
    epochs: int | None = Field(None, ge=1)              # epochs per ablation trial (None = train.epochs)
    cpus_per_trial: float = Field(1.0, gt=0)
    gpus_per_trial: float = Field(0.0, ge=0)            # 0.25 packs four trials on a GPU
    max_failures: int = Field(1, ge=0)                  # retries of a failed trial before it is recorded FAILED
    search: SearchSection = SearchSection()


class StatsSection(_Section):
    """Seeds of every compared configuration and the bootstrap of their intervals (keyhand.stats)."""

    seeds: int = Field(3, ge=1)                         # training seeds per row (train.seed, +1, ...)
    confidence: float = Field(0.95, gt=0, lt=1)         # interval level (two-way bootstrap: images and seeds)
    bootstrap: int = Field(2000, ge=100)                # bootstrap replicates


class RaySection(_Section):
    address: str | None = None                          # None: a local Ray; "auto"; "ray://host:10001"
    storage_path: str | None = None                     # Tune storage; None: runs/ray (a shared path or s3:// URI
                                                        # on a multi-node cluster)


class MlflowSection(_Section):
    tracking_uri: str | None = None
    experiments: dict[str, str] = {"pretrain_sfe": "keyhand-pretrain-sfe", "train": "keyhand-train",
                                   "evaluate": "keyhand-evaluate", "ablation": "keyhand-ablation",
                                   "gesture_cv": "keyhand-gesture-cv", "search": "keyhand-search"}


class Params(TrainConfig):
    """The whole params.yaml (module docstring): the training sections of :class:`TrainConfig` (profile,
    model, loss, sfe, train, gesture, classifier; its profiles) plus the platform's sections below."""

    @classmethod
    def for_profile(cls, profile: str, data: dict[str, Any] | None = None) -> Params:
        """Every key of ``profile`` ("default" | "paper"), ``data`` (nested) over it; ParamsError (one line)."""
        try:
            return super().for_profile(profile, data)
        except ConfigError as e:
            raise ParamsError(str(e)) from None

    data: DataSection = DataSection()
    prepare: PrepareSection = PrepareSection()
    evaluate: EvaluateSection = EvaluateSection()
    cv: CvSection = CvSection()
    sweep: SweepSection = SweepSection()
    stats: StatsSection = StatsSection()
    ray: RaySection = RaySection()
    mlflow: MlflowSection = MlflowSection()

    @classmethod
    def merge_profile(cls, defaults: dict[str, Any], data: dict[str, Any]) -> dict[str, Any]:
        merged = merge(defaults, data)
        # named collections a file states replace the profile's (a file listing two ablation rows runs two)
        sweep = data.get("sweep") if isinstance(data.get("sweep"), dict) else {}
        if "rows" in sweep:
            merged["sweep"]["rows"] = sweep["rows"]
        if isinstance(sweep.get("search"), dict) and "space" in sweep["search"]:
            merged["sweep"]["search"]["space"] = sweep["search"]["space"]
        return merged

    @model_validator(mode="after")
    def _check(self) -> Params:
        rows = self.sweep.rows
        for name, row in rows.items():
            unknown = set(row) - set(ROW_KEYS)
            if unknown:
                raise ValueError(f"sweep.rows.{name}: unknown section(s) {sorted(unknown)} "
                                 f"(allowed: {', '.join(ROW_KEYS)})")
            if "from" in row and row["from"] not in rows:
                raise ValueError(f"sweep.rows.{name}.from: no row {row['from']!r} (rows: {', '.join(rows)})")
            self._lineage(name)   # a cycle of `from` is one line too
        if self.data.source == "real":
            for ds in ("obman", "stb"):
                if getattr(self.data, ds).root is None:
                    raise ValueError(f"data.{ds}.root must be set when data.source is 'real'")
            if self.model.mano_path is None and not self.data.allow_proxy_hand:
                raise ValueError("model.mano_path: data.source is 'real' but no MANO file is set: point it at the "
                                 "official MANO_RIGHT.pkl (or its folder); data.allow_proxy_hand: true trains the "
                                 "license-free proxy hand instead (Table 3's PCA rows then vary a synthetic basis)")
        return self

    def _lineage(self, row: str) -> list[str]:
        """``[row, its from, that row's from, ...]`` (ValueError on a cycle)."""
        chain = [row]
        while "from" in self.sweep.rows.get(chain[-1], {}):
            nxt = self.sweep.rows[chain[-1]]["from"]
            if nxt in chain:
                raise ValueError(f"sweep.rows.{row}.from: a cycle ({' -> '.join([*chain, nxt])})")
            chain.append(nxt)
        return chain

    def row_base(self, row: str) -> str:
        """The row ``row`` is compared with: its ``from``, else ``base`` (``base`` itself: ``base``)."""
        return str(self.sweep.rows.get(row, {}).get("from", "base"))

    # ---------------------------------------------------------------- views used by the stages
    def train_config(self, overrides: dict | None = None) -> TrainConfig:
        """The trainers.config.TrainConfig of these params (``overrides``: dotted keys or nested sections)."""
        return self.training().with_overrides(overrides)

    def ablation_config(self, row: str, seed_index: int = 0) -> tuple[TrainConfig, bool]:
        """(TrainConfig, start from the pretrained SFE?) of ablation row ``row`` (main configuration + base + the
        overrides of the rows it comes ``from``, then its own; ``sweep.epochs``), trained with seed
        ``train.seed + seed_index`` (one of ``stats.seeds``)."""
        if row not in self.sweep.rows:
            raise ParamsError(f"params.yaml: sweep.rows: no row {row!r} (rows: {', '.join(self.sweep.rows)})")
        spec = dict(self.sweep.base)
        for name in reversed(self._lineage(row)):   # the root row's overrides first, then each `from` descendant's
            spec = merge(spec, {k: v for k, v in self.sweep.rows[name].items() if k != "from"})
        pretrained = bool(spec.pop("pretrained_sfe", False))
        if self.sweep.epochs is not None:
            spec = merge(spec, {"train": {"epochs": self.sweep.epochs}})
        cfg = self.train_config(spec)
        return cfg.with_overrides({"train.seed": cfg.train.seed + int(seed_index)}), pretrained

    def seed_indices(self) -> list[int]:
        """0 .. stats.seeds − 1: the seeds (offsets of ``train.seed``) every compared row trains with."""
        return list(range(self.stats.seeds))

    def pose_datasets(self) -> dict[str, str]:
        """{"pretrain": dataset for SFE pretraining, "pose": dataset for training/evaluation}."""
        return dict(POSE_DATASETS[self.data.source])

    def gesture_datasets(self) -> tuple[str, ...]:
        return GESTURE_DATASETS[self.data.source]

    def reader_options(self, name: str) -> dict[str, Any]:
        """Constructor options of dataset ``name``'s reader: ``data.obman.mode``, ``data.stb.palm_to_wrist``,
        ``data.rwth.signers`` / ``sessions`` / ``camera``."""
        if name == "obman":
            return {"mode": self.data.obman.mode}
        if name == "stb":
            return {"palm_to_wrist": self.data.stb.palm_to_wrist}
        if name == "rwth":
            r = self.data.rwth
            return {"signers": list(r.signers), "sessions": list(r.sessions), "camera": r.camera}
        return {}

    def dataset_root(self, name: str) -> Path:
        """Where dataset ``name`` is read from: its generated folder, or the configured real root."""
        if name.startswith("synth-"):
            return Path("data") / "synth" / name   # the synthetic stage's output (dvc.yaml)
        root = getattr(self.data, name).root
        if root is None:
            raise ParamsError(f"params.yaml: data.{name}.root is not set (the {name} dataset's folder)")
        return Path(root)


def load_params(path: str | os.PathLike = "params.yaml", overrides: dict | None = None) -> Params:
    """Read and validate ``path``, then ``overrides`` (dotted keys or nested sections, e.g. CLI flags).

    Raises :class:`ParamsError` with one line naming the file and the key.
    """
    p = Path(path)
    if not p.is_file():
        raise ParamsError(f"{p}: no such params file (run from the project folder, or pass --params)")
    try:
        data = load_yaml(p, "params")
        check_no_profile(data, p)
    except ConfigError as e:
        raise ParamsError(str(e)) from None
    data = apply_overrides(data, overrides or {})
    try:
        return Params.model_validate(data)
    except ValidationError as e:
        raise ParamsError(format_validation_error(e, p, model=Params)) from None


#: One comment line per section, written above it in params.yaml.
SECTION_NOTES = {
    "data": "source synthetic|real; real roots: ObMan, STB (SK), RWTH, Senz3D (see README); real data needs "
            "model.mano_path (allow_proxy_hand: true opts in to the proxy hand); STB's val: one whole held-out "
            "sequence (stb.val_sequence); val_fraction: the held-out share of another real train split",
    "prepare": "§3.1 crop enlargement, §3.5 heatmap sigma and GrabCut iterations/processes "
               "(the crop side is model.image_size)",
    "model": "every switch of Tables 1-4 (sfe, fusion, ve_blocks, ve_dense, pca_comps, skeleton_adaptation); "
             "mano_path: the official MANO file or folder (null = the license-free proxy hand)",
    "loss": "Eq. 12 weights (0 switches a term off)",
    "sfe": "SFE pretraining (§4.1.1)",
    "train": "full training (Eq. 12); threads: torch CPU threads of a stage (part of a CPU run's identity: another "
             "count gives other numbers; null = the machine's cores; keep it <= sweep.cpus_per_trial)",
    "gesture": "the §4.3.3 classifier on the frozen framework's 3D joints",
    "classifier": "its hidden width",
    "evaluate": "Fig. 6 panels rendered by the evaluate stage",
    "cv": "§4.3.3 gesture cross-validation",
    "sweep": "the Tables 1-4 rows and controls (overrides of base = the main configuration), epochs per row "
             "(null = train.epochs), per-trial resources, retries, the Optuna search",
    "stats": "seeds of every compared row, the interval level and bootstrap replicates (keyhand/stats.py)",
    "ray": "address: null = a local Ray; auto, host:6379 or ray://host:10001 = an existing cluster; storage_path: "
           "Tune's folder (null = runs/ray; a shared path or s3:// URI on a multi-node cluster)",
    "mlflow": "null = $MLFLOW_TRACKING_URI, else the local store runs/mlflow.db",
}
#: Keys a user sets for their machine: kept when ``write_params`` switches profile.
LOCAL_KEYS = ("data.source", "data.allow_proxy_hand", "data.obman.root", "data.stb.root", "data.rwth.root",
              "data.senz3d.root",
              "model.mano_path", "ray.address", "ray.storage_path", "mlflow.tracking_uri")


def _get(d: dict, dotted: str) -> Any:
    for part in dotted.split("."):
        if not isinstance(d, dict) or part not in d:
            return None
        d = d[part]
    return d


def _set(d: dict, dotted: str, value: Any) -> None:
    *head, last = dotted.split(".")
    for part in head:
        d = d.setdefault(part, {})
    d[last] = value


def render_params(params: Params) -> str:
    """params.yaml text: every key of ``params``, each section under a comment."""
    data = params.model_dump()
    lines = ["# keyhand params: every knob of the platform. Validated when loaded (pipeline/params.py);",
             "# an unknown key or a wrong type stops with one line naming it; a key left out takes the default",
             "# profile's value. Write a profile in full (keeps data roots, MANO path, Ray, MLflow) with",
             "#   keyhand params write --profile default|paper", ""]
    for key, value in data.items():
        note = SECTION_NOTES.get(key)
        if note:
            lines.append(f"# {note}")
        lines.append(yaml.safe_dump({key: value}, sort_keys=False, default_flow_style=False, width=110).rstrip())
        lines.append("")
    return "\n".join(lines)


def write_params(path: str | os.PathLike, profile: str = "default", keep_local: bool = True) -> Params:
    """Write a complete params file for ``profile``; ``keep_local`` carries :data:`LOCAL_KEYS` over from an
    existing file (its other values are replaced by the profile's). Atomic; returns the written params."""
    p = Path(path)
    data: dict[str, Any] = {}
    if keep_local and p.is_file():
        try:
            raw = load_yaml(p, "params")
            raw.pop("profile", None)  # a file of the old format named its profile: rewritten in full here
            old = Params.model_validate(raw).model_dump()
        except ConfigError as e:
            raise ParamsError(str(e)) from None
        except ValidationError as e:
            raise ParamsError(format_validation_error(e, p, model=Params)) from None
        for k in LOCAL_KEYS:
            _set(data, k, _get(old, k))
    try:
        params = Params.for_profile(profile, data)
    except ParamsError as e:
        raise ParamsError(f"{p}: {e}") from None
    atomic_write_text(p, render_params(params))
    return params
