"""Trivial controls a hand-pose model must beat (issue 11): the mean-pose predictor.

    from keyhand.controls import mean_pose, mean_pose_errors
    template = mean_pose(train_joints)                 # (21, 3) mm: the mean root-relative training skeleton
    per_image, per_joint = mean_pose_errors(template, test_joints)   # (N,), (N, 21) mm

The mean-pose predictor ignores the image and predicts, for every test image, the mean of the training
set's root-relative 3D joints (joint 0, the wrist, subtracted as in :func:`keyhand.metrics.root_relative`).
Its EPE is the error of knowing only the data's average hand in the camera frame: a model that does not
beat it has learnt nothing from the images. (The other control, direct regression of the 63 coordinates by
the same SFE + VE, is a model switch: ``model.estimator: direct``.) Pure numpy.
"""

from __future__ import annotations

import numpy as np

from keyhand.metrics import joint_errors, root_relative

__all__ = ["mean_pose", "mean_pose_errors"]


def mean_pose(train_joints) -> np.ndarray:
    """(N, J, 3) training joints (mm, any frame) -> (J, 3) mean root-relative skeleton, float64."""
    j = root_relative(train_joints)
    if j.shape[0] == 0:
        raise ValueError("mean_pose: no training joints")
    return j.mean(axis=0)


def mean_pose_errors(template, test_joints) -> tuple[np.ndarray, np.ndarray]:
    """Errors of predicting ``template`` (J, 3) for every one of ``test_joints`` (N, J, 3):
    (per-image mean joint error (N,), per-joint errors (N, J)), mm, both root-relative."""
    gt = np.asarray(test_joints, dtype=np.float64)
    pred = np.broadcast_to(np.asarray(template, dtype=np.float64), gt.shape)
    per_joint = joint_errors(pred, gt)
    return per_joint.mean(axis=1), per_joint
