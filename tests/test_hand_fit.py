"""The hand estimator can represent and learn the synthetic hands (issue: the hand estimator must learn).

* round trip: a sample's own generator parameters (β, the 45 flat-mean axis-angle finger rotations, the global
  rotation) through the HE reproduce its annotated root-relative joints, for both rotation parameterisations;
* overfit (slow): the full framework, every loss term of Eq. 12 on, fits 32 synthetic training images.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from keyhand.data.synthetic import generate
from keyhand.model.he import HandEstimator
from keyhand.model.ve import ViewParams


@pytest.fixture(scope="module")
def synth(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("synth") / "synth-stb"
    generate("synth-stb", root, {"train": 12}, seed=3, image_size=(96, 96))
    return root


def _axis_angle(rotation: np.ndarray) -> np.ndarray:
    """(3, 3) rotation -> axis-angle (3,), robust near π (the synthetic views reach 170°)."""
    import cv2

    return cv2.Rodrigues(rotation)[0][:, 0]


@pytest.mark.parametrize("rot_repr", ["axis_angle", "6d"])
def test_generator_parameters_reproduce_the_joints(synth: Path, rot_repr: str) -> None:
    samples = [json.loads(p.read_text()) for p in sorted((synth / "train").glob("*.json"))]
    he = HandEstimator(pca_comps=45, skeleton_adaptation=False, image_size=96, render_size=16)
    comps = he.mano.hands_components.double().numpy()            # (45, 45) rows = components
    mean = he.mano.hands_mean.double().numpy()                    # (45,)
    pose = np.array([s["pose"] for s in samples])                 # (N, 45) flat-mean axis-angle
    theta = (pose - mean) @ np.linalg.inv(comps)                  # PCA coefficients that give that pose
    rotations = np.array([s["rotation"] for s in samples])        # (N, 3, 3) hand -> camera
    if rot_repr == "axis_angle":
        rot = np.stack([_axis_angle(r) for r in rotations])
    else:
        rot = np.concatenate([rotations[:, :, 0], rotations[:, :, 1]], 1)   # the first two columns
    n = len(samples)
    v = ViewParams(t=torch.zeros(n, 2), s=torch.full((n, 1), 0.01), rot=torch.tensor(rot, dtype=torch.float32),
                   theta=torch.tensor(theta, dtype=torch.float32),
                   beta=torch.tensor([s["betas"] for s in samples], dtype=torch.float32))
    joints = he(v, render=False).joints_3d                        # (N, 21, 3) mm, wrist-rooted
    gt = torch.tensor([s["joints_3d"] for s in samples], dtype=torch.float32)
    gt = gt - gt[:, :1]
    err = (joints - gt).norm(dim=-1)                              # (N, 21) mm
    assert err.max() < 0.5, f"round trip error up to {err.max():.3f} mm"
    # the rest pose is not a solution: the test can fail
    v0 = v._replace(theta=torch.zeros_like(v.theta), beta=torch.zeros_like(v.beta))
    assert (he(v0, render=False).joints_3d - gt).norm(dim=-1).mean() > 5.0


# ------------------------------------------------------------------------------------------------- overfit

#: The overfit recipe: the default profile's model and loss at a 64² crop, no augmentation, 32 images.
OVERFIT_IMAGES = 32
OVERFIT_EPOCHS = 350
#: 3.6-3.8 mm measured at 325-400 epochs, 4.2 at 300 (docs/hand_estimator_fit.md; the direct head: 3.7 mm at
#: 300); before the fixes 27.8 mm after ~290 epochs.
OVERFIT_EPE_MM = 5.0


@pytest.mark.slow
def test_full_framework_overfits_32_images(tmp_path: Path) -> None:
    """Every Eq. 12 term on (L_SFE, L_3D, L_2D, L_M through the NMR renderer, L_Reg), the default profile's
    weights, 6D rotation and VE output scaling: training EPE on the 32 training images <= 5 mm after 350
    epochs (before the fixes: 27.8 mm after ~290). Budget: 700 optimiser steps of batch 16 at 64², ~4-5 min on
    one thread (the default profile's ``train.threads``)."""
    from keyhand.data.prepare import compute_split_masks, open_reader, prepare_split
    from trainers.config import TrainConfig
    from trainers.run import StageData, evaluate_checkpoint, fit_stage

    assert TrainConfig().model.head_gain > 1 and TrainConfig().model.rot_repr == "6d"

    root = generate("synth-stb", tmp_path / "synth", {"train": OVERFIT_IMAGES}, seed=0, image_size=(160, 160))
    prep, masks = tmp_path / "prep", tmp_path / "masks"
    prepare_split(open_reader("synth-stb", root, "train"), prep, image_size=64, enlarge=0.2,
                  params={"dataset": "synth-stb", "split": "train"})
    compute_split_masks(prep, masks, workers=1, iterations=5)
    cfg = TrainConfig().with_overrides({
        "model.image_size": 64,
        "train.epochs": OVERFIT_EPOCHS, "train.batch_size": 16, "train.lr": 1e-3, "train.augment": False,
    })
    w = cfg.loss
    assert min(w.sfe, w.joints_3d, w.joints_2d, w.mask, w.reg) > 0, "every loss term of Eq. 12 must be on"
    assert cfg.model.estimator == "mano"
    fit_stage(cfg, "train", StageData(train=prep, masks_train=masks), tmp_path / "run", progress=False)
    epe = evaluate_checkpoint(tmp_path / "run", prep).metrics["epe_mean"]
    print(f"\noverfit: training EPE {epe:.2f} mm on {OVERFIT_IMAGES} images after {OVERFIT_EPOCHS} epochs")
    assert epe <= OVERFIT_EPE_MM, f"training EPE {epe:.2f} mm after {OVERFIT_EPOCHS} epochs"


def test_direct_control_trains_and_evaluates_without_a_mesh(tmp_path: Path) -> None:
    """The direct-regression control goes through the one path (fit_stage, evaluate_checkpoint): joints and
    EPE, no Fig. 6 panels (it has no mesh), and a one-line refusal where a mesh is required."""
    from keyhand.data.prepare import open_reader, prepare_split
    from trainers.config import TrainConfig
    from trainers.predict import PredictError, load_model, split_panels
    from trainers.run import StageData, evaluate_checkpoint, fit_stage

    root = generate("synth-stb", tmp_path / "synth", {"train": 6}, seed=1, image_size=(96, 96))
    prep = tmp_path / "prep"
    prepare_split(open_reader("synth-stb", root, "train"), prep, image_size=64, enlarge=0.2,
                  params={"dataset": "synth-stb", "split": "train"})
    cfg = TrainConfig().with_overrides({"model.image_size": 64, "model.estimator": "direct", "loss.joints_2d": 0,
                                        "loss.mask": 0, "loss.reg": 0, "train.epochs": 1, "train.batch_size": 3,
                                        "train.augment": False})
    fit_stage(cfg, "train", StageData(train=prep), tmp_path / "run", progress=False)
    ev = evaluate_checkpoint(tmp_path / "run", prep, out=tmp_path / "eval", panels=2)
    assert np.isfinite(ev.metrics["epe_mean"]) and ev.panels == [] and "theta" not in ev.predictions
    model, _ = load_model(tmp_path / "run", "cpu")
    with pytest.raises(PredictError, match="direct-regression control"):
        split_panels(model, ev.dataset, [0], tmp_path / "panels")
