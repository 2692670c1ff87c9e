"""Hand Pose/Shape Estimator (paper §3.4): MANO layer, skeleton adaptation, weak perspective, renderer.

    from keyhand.model.he import HandEstimator
    he = HandEstimator(pca_comps=45, image_size=256, render_size=64)
    out = he(v)                           # v: keyhand.model.ve.ViewParams
    out.joints_3d   # (B, 21, 3) mm, R J(β, θ) rooted at the wrist (joint 0 before skeleton adaptation)
    out.vertices    # (B, 778, 3) mm, same frame (R applied, wrist at the origin)
    out.joints_2d   # (B, 21, 2) crop pixels: ndc_to_pixels(s Π(R J) + t, image_size)     (Eq. 6)
    out.silhouette  # (B, render_size, render_size) in [0, 1], or None with render=False  (Eq. 7 + §3.4.3)

R is the MANO global orientation (rotation about the wrist), so R J(β, θ) is the MANO layer's output with
``global_orient = rot``; the wrist is then moved to the origin (translation is t's job, in NDC). With
skeleton adaptation (§3.4.1, Table 4) the 21 joints go through a linear layer initialised to the identity;
the 2D joints project the adapted joints, the silhouette the (unadapted) mesh. Coordinates follow
keyhand.geometry.render: NDC x right, y down; depth s (R v)_z for the z-buffer.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor, nn

from keyhand.geometry.mano import ManoLayer, SkeletonAdaptation, rotation_matrix
from keyhand.geometry.render import ndc_to_pixels, render_silhouette, weak_perspective, weak_perspective_with_depth
from keyhand.model.ve import ViewParams


class HandOutput(NamedTuple):
    joints_3d: Tensor          # (B, 21, 3) mm
    vertices: Tensor           # (B, V, 3) mm
    joints_2d: Tensor          # (B, 21, 2) crop pixels
    silhouette: Tensor | None  # (B, R, R) in [0, 1]


class HandEstimator(nn.Module):
    """v -> 3D joints, mesh, 2D joints, silhouette (§3.4, Eqs. 2-7).

    Args:
        pca_comps, flat_hand_mean, mano_path, side: the MANO layer (Table 3; mano_path None = proxy hand).
        skeleton_adaptation: map the joints through :class:`SkeletonAdaptation` (Table 4).
        image_size: crop side the 2D joints are expressed in (pixels).
        render_size, render_mode, soft_sigma: the silhouette renderer (keyhand.geometry.render).
    """

    def __init__(self, pca_comps: int = 45, flat_hand_mean: bool = False, mano_path: str | None = None,
                 side: str = "right", skeleton_adaptation: bool = True, image_size: int = 256,
                 render_size: int = 64, render_mode: str = "nmr", soft_sigma: float = 1e-4) -> None:
        super().__init__()
        self.mano = ManoLayer(model_path=mano_path, side=side, num_pca_comps=pca_comps,
                              flat_hand_mean=flat_hand_mean, unit="mm")
        self.skeleton = SkeletonAdaptation(21, 21) if skeleton_adaptation else None
        self.image_size = image_size
        self.render_size = render_size
        self.render_mode = render_mode
        self.soft_sigma = soft_sigma

    @property
    def faces(self) -> Tensor:
        return self.mano.faces  # (F, 3) long

    @torch.no_grad()
    def rest_joints(self) -> Tensor:
        """(21, 3) mm joints of the mean hand (R = 0, θ = 0, β = 0), wrist at the origin."""
        j = self.mano(global_orient=self.mano.v_template.new_zeros(1, 3)).joints[0]
        return j - j[:1]

    def forward(self, v: ViewParams, render: bool = True) -> HandOutput:
        # The HE (MANO, projection, renderer) runs in fp32 even inside a bf16 autocast region: skinning and
        # the z-buffer need the precision, and it costs a fraction of the SFE/VE's FLOPs.
        # (Its own dtype, in fact: float64 when the module was cast to it, as the GPU check's rounding floor is.)
        kind, dtype = v.t.device.type, self.mano.v_template.dtype
        if kind not in ("cpu", "cuda"):  # e.g. "meta" (profiling from shapes): no autocast there
            return self._forward(ViewParams(*(x.to(dtype) for x in v)), render)
        with torch.autocast(device_type=kind, enabled=False):
            return self._forward(ViewParams(*(x.to(dtype) for x in v)), render)

    def _forward(self, v: ViewParams, render: bool) -> HandOutput:
        # R J(β, θ): MANO's global orientation rotates the hand about the wrist, so posing with R = I and
        # rotating the wrist-rooted result is the same map, for either rotation parameterisation.
        mano = self.mano(global_orient=v.theta.new_zeros(v.theta.shape[0], 3), hand_pose=v.theta, betas=v.beta)
        root = mano.joints[:, :1]                                           # (B, 1, 3) wrist
        rot_t = rotation_matrix(v.rot).transpose(-1, -2)                    # (B, 3, 3) R^T
        joints, verts = (mano.joints - root) @ rot_t, (mano.vertices - root) @ rot_t   # mm
        if self.skeleton is not None:
            joints = self.skeleton(joints)
        joints_2d = ndc_to_pixels(weak_perspective(joints, v.s, v.t), self.image_size)   # Eq. 6
        sil = None
        if render:
            verts_ndc = weak_perspective_with_depth(verts, v.s, v.t)                      # Eq. 7
            sil = render_silhouette(verts_ndc, self.faces, self.render_size, mode=self.render_mode,
                                    sigma=self.soft_sigma)
        return HandOutput(joints_3d=joints, vertices=verts, joints_2d=joints_2d, silhouette=sil)
