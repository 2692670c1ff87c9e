"""The end-to-end framework (paper §3, Figs. 1-2): SFE (§3.2) -> VE (§3.3) -> HE (§3.4).

    from keyhand.model.framework import Framework, ModelConfig
    model = Framework(ModelConfig(image_size=64, sfe_channels=32, ve_input_size=64, dense_scale=1 / 64))
    out = model(image)                       # image (B, 3, S, S) standardised crop
    out.joints_3d, out.joints_2d, out.silhouette, out.heatmaps, ...   # see FrameworkOutput
    heatmaps, silhouettes = model.sfe_forward(image)                  # SFE pretraining (ObMan)

Every ablation of Tables 1-4 is a :class:`keyhand.model.config.ModelConfig` field (params.yaml's ``model``);
a bad value raises one ValueError line naming ``model.<field>`` and the allowed values. At initialisation the
prediction is the mean hand (R = identity, θ = 0, β = 0), scaled so a ~180 mm hand spans 60 % of the
crop, its middle-finger MCP (the §3.1 crop centre) at the crop centre.

``estimator="direct"`` builds the direct-regression CONTROL instead of the HE: the same SFE and VE, whose last
dense layer feeds a linear head regressing the 63 root-relative joint coordinates (in decimetres, the unit
of L_3D, starting at the mean hand). Its output carries joints_3d only (every other field None).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from keyhand.losses import JOINTS_3D_UNIT_MM
from keyhand.model.config import ModelConfig  # the model's settings (re-exported): keyhand/model/config.py
from keyhand.model.he import HandEstimator
from keyhand.model.sfe import SemanticFeatureExtractor
from keyhand.model.ve import S_INIT, ViewpointEncoder
from keyhand.skeleton import MIDDLE_MCP


@dataclass
class FrameworkOutput:
    """Everything the losses (§3.5) and metrics need. Lengths in mm, 2D in crop pixels at image_size."""

    heatmaps: list[Tensor]      # one (B, 21, S/4, S/4) per hourglass; [] without SFE
    silhouettes: list[Tensor]   # one (B, 2, S/4, S/4) logits per hourglass (channel 1 = hand); [] without
    joints_3d: Tensor           # (B, 21, 3) mm, R J(β, θ), wrist-rooted, skeleton-adapted if enabled
    faces: Tensor               # (F, 3) long
    # None for the direct-regression control (estimator="direct"):
    t: Tensor | None = None           # (B, 2) NDC
    s: Tensor | None = None           # (B, 1) > 0, NDC per mm
    rot: Tensor | None = None         # (B, 3) axis-angle or (B, 6) 6D R
    theta: Tensor | None = None       # (B, P) PCA pose coefficients
    beta: Tensor | None = None        # (B, 10) shape
    vertices: Tensor | None = None    # (B, 778, 3) mm, R applied, same origin
    joints_2d: Tensor | None = None   # (B, 21, 2) crop pixels (Eq. 6)
    silhouette: Tensor | None = None  # (B, R, R) in [0, 1] (Eq. 7 + renderer), None with render=False


class Framework(nn.Module):
    """SFE + VE + HE (§3). Submodules ``.sfe`` (None when cfg.sfe == "none"), ``.ve``, ``.he``."""

    def __init__(self, cfg: ModelConfig | None = None) -> None:
        super().__init__()
        cfg = cfg or ModelConfig()
        self.cfg = cfg
        self.sfe = None
        if cfg.sfe != "none":
            self.sfe = SemanticFeatureExtractor(cfg.image_size, cfg.sfe_channels,
                                                silhouette=cfg.sfe == "heatmaps+silhouette", fusion=cfg.fusion)
        self.he = HandEstimator(pca_comps=cfg.pca_comps, flat_hand_mean=cfg.flat_hand_mean, mano_path=cfg.mano_path,
                                side=cfg.side, skeleton_adaptation=cfg.skeleton_adaptation,
                                image_size=cfg.image_size, render_size=cfg.render_size,
                                render_mode=cfg.render_mode, soft_sigma=cfg.soft_sigma)
        # Centre the mean hand's middle MCP (the §3.1 crop centre) at t = -s Π(J_mcp).
        # (On the "meta" device, used to profile from shapes alone, there are no values: t_init = 0.)
        rest = self.he.rest_joints()
        t_init = [0.0, 0.0] if rest.is_meta else (-S_INIT * rest[MIDDLE_MCP, :2]).tolist()
        self.ve = ViewpointEncoder(self.sfe.out_channels if self.sfe is not None else 3, cfg.ve_input_size,
                                   cfg.ve_blocks, cfg.ve_dense, cfg.pca_comps, cfg.ve_channels, cfg.dense_scale,
                                   s_init=S_INIT, t_init=tuple(t_init), rot_repr=cfg.rot_repr,
                                   head_gain=cfg.head_gain, rot6d_norm=cfg.rot6d_norm)
        self.direct = None
        if cfg.estimator == "direct":
            self.ve.head = None                                              # replaced by the 63-output head
            self.direct = nn.Linear(self.ve.dense[-2].out_features, 63)
            with torch.no_grad():
                self.direct.weight.mul_(0.01)
                mean_hand = rest if not rest.is_meta else torch.zeros(21, 3)
                self.direct.bias.copy_(mean_hand.reshape(63) / JOINTS_3D_UNIT_MM)

    @property
    def faces(self) -> Tensor:
        return self.he.faces

    def _check(self, image: Tensor) -> None:
        s = self.cfg.image_size
        if image.dim() != 4 or tuple(image.shape[1:]) != (3, s, s):
            raise ValueError(f"framework: image must have shape (B, 3, {s}, {s}) (model.image_size), "
                             f"got {tuple(image.shape)}")

    def sfe_forward(self, image: Tensor) -> tuple[list[Tensor], list[Tensor]]:
        """(B, 3, S, S) -> (heatmaps list, silhouette-logit list), for SFE pretraining (Eq. 14)."""
        if self.sfe is None:
            raise ValueError("framework: sfe_forward needs an SFE, but model.sfe is 'none'")
        self._check(image)
        heatmaps, silhouettes, _ = self.sfe(image)
        return heatmaps, silhouettes

    def forward(self, image: Tensor, render: bool = True) -> FrameworkOutput:
        """(B, 3, S, S) standardised crop -> FrameworkOutput; render=False skips the silhouette."""
        self._check(image)
        heatmaps, silhouettes, f = self.sfe(image) if self.sfe is not None else ([], [], image)
        if self.direct is not None:
            joints = self.direct(self.ve.features(f)).view(-1, 21, 3) * JOINTS_3D_UNIT_MM   # (B, 21, 3) mm
            return FrameworkOutput(heatmaps=heatmaps, silhouettes=silhouettes, joints_3d=joints, faces=self.faces)
        v = self.ve(f)
        hand = self.he(v, render=render)
        return FrameworkOutput(heatmaps=heatmaps, silhouettes=silhouettes, t=v.t, s=v.s, rot=v.rot,
                               theta=v.theta, beta=v.beta, joints_3d=hand.joints_3d, vertices=hand.vertices,
                               joints_2d=hand.joints_2d, silhouette=hand.silhouette, faces=self.faces)

