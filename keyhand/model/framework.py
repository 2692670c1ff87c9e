"""The end-to-end framework (paper §3, Figs. 1-2): SFE (§3.2) -> VE (§3.3) -> HE (§3.4).

    from keyhand.model.framework import Framework, ModelConfig
    model = Framework(ModelConfig(image_size=64, sfe_channels=32, ve_input_size=64, dense_scale=1 / 64))
    out = model(image)                       # image (B, 3, S, S) standardised crop
    out.joints_3d, out.joints_2d, out.silhouette, out.heatmaps, ...   # see FrameworkOutput
    heatmaps, silhouettes = model.sfe_forward(image)                  # SFE pretraining (ObMan)

Every ablation of Tables 1-4 is a ModelConfig field; a bad value raises one ValueError naming the field and
the allowed values. At initialisation the prediction is the mean hand (R = identity, θ = 0, β = 0), scaled so
a ~180 mm hand spans 60 % of the crop, its middle-finger MCP (the §3.1 crop centre) at the crop centre.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor, nn

from keyhand.model.he import MIDDLE_MCP, HandEstimator
from keyhand.model.sfe import SemanticFeatureExtractor
from keyhand.model.ve import DENSE, S_INIT, ViewpointEncoder

_CHOICES = {
    "sfe": ("none", "heatmaps", "heatmaps+silhouette"),
    "fusion": ("sum", "concat"),
    "ve_dense": tuple(DENSE),
    "render_mode": ("nmr", "soft"),
    "side": ("right", "left"),
}
_INT_RANGES = {  # field: (min, max or None, note)
    "ve_blocks": (1, 6, "paper: 2, 4, 5"),
    "pca_comps": (1, 45, "paper: 15, 30, 45"),
    "sfe_channels": (4, None, "paper 256"),
    "ve_input_size": (2, None, "paper 256"),
    "ve_channels": (2, None, "paper 64"),
    "render_size": (1, None, "paper 64"),
}


@dataclass(frozen=True)
class ModelConfig:
    """The model's knobs; every ablation of Tables 1-4 is a field. Validated on construction."""

    sfe: str = "heatmaps+silhouette"      # "none" | "heatmaps" | "heatmaps+silhouette"      (Table 1)
    fusion: str = "concat"                # "sum" | "concat": final feature f                 (Table 4)
    ve_blocks: int = 4                    # abstraction blocks 2 | 4 | 5                      (Table 2)
    ve_dense: str = "VE2"                 # "VE1" 3x1024 | "VE2" 2x2048+1x1024 | "VE3" 3x2048 (Table 2)
    pca_comps: int = 45                   # 15 | 30 | 45                                      (Table 3)
    skeleton_adaptation: bool = True      #                                                   (Table 4)
    image_size: int = 256                 # input crop side; heatmap side = image_size // 4
    sfe_channels: int = 256               # hourglass width (paper 256)
    ve_input_size: int = 256              # f is resized to this (§3.3)
    ve_channels: int = 64                 # first abstraction block width (doubles per block, capped at 4x)
    dense_scale: float = 1.0              # multiplies the dense widths (1024/2048)
    render_size: int = 64                 # rendered silhouette side
    render_mode: str = "nmr"              # "nmr" | "soft"
    soft_sigma: float = 1e-4
    mano_path: str | None = None          # None = proxy hand
    side: str = "right"
    flat_hand_mean: bool = False

    def __post_init__(self) -> None:
        def bad(name: str, allowed: str) -> ValueError:
            return ValueError(f"model.{name}: must be {allowed}, got {getattr(self, name)!r}")

        for name, allowed in _CHOICES.items():
            if getattr(self, name) not in allowed:
                raise bad(name, "one of " + ", ".join(repr(a) for a in allowed))
        for name, (lo, hi, note) in _INT_RANGES.items():
            val = getattr(self, name)
            if not isinstance(val, int) or isinstance(val, bool) or val < lo or (hi is not None and val > hi):
                raise bad(name, f"an integer in {lo}..{hi if hi is not None else 'inf'} ({note})")
        s = self.image_size
        if not isinstance(s, int) or isinstance(s, bool) or s < 32 or s % 16 or (s // 16) & (s // 16 - 1):
            raise bad("image_size", "16 * 2^k with k >= 1: 32, 64, 128, 256 (paper), 512, ...")
        if self.ve_input_size >> self.ve_blocks < 1:
            raise bad("ve_input_size", f">= 2^ve_blocks = {2**self.ve_blocks}")
        for name in ("dense_scale", "soft_sigma"):
            val = getattr(self, name)
            if isinstance(val, bool) or not isinstance(val, int | float) or not val > 0 or val == float("inf"):
                raise bad(name, "a finite number > 0")
        for name in ("skeleton_adaptation", "flat_hand_mean"):
            if not isinstance(getattr(self, name), bool):
                raise bad(name, "true or false")
        if self.mano_path is not None and not isinstance(self.mano_path, str):
            raise bad("mano_path", "a path string or null (proxy hand)")


@dataclass
class FrameworkOutput:
    """Everything the losses (§3.5) and metrics need. Lengths in mm, 2D in crop pixels at image_size."""

    heatmaps: list[Tensor]      # one (B, 21, S/4, S/4) per hourglass; [] without SFE
    silhouettes: list[Tensor]   # one (B, 2, S/4, S/4) logits per hourglass (channel 1 = hand); [] without
    t: Tensor                   # (B, 2) NDC
    s: Tensor                   # (B, 1) > 0, NDC per mm
    rot: Tensor                 # (B, 3) axis-angle R
    theta: Tensor               # (B, P) PCA pose coefficients
    beta: Tensor                # (B, 10) shape
    joints_3d: Tensor           # (B, 21, 3) mm, R J(β, θ), wrist-rooted, skeleton-adapted if enabled
    vertices: Tensor            # (B, 778, 3) mm, R applied, same origin
    joints_2d: Tensor           # (B, 21, 2) crop pixels (Eq. 6)
    silhouette: Tensor | None   # (B, R, R) in [0, 1] (Eq. 7 + renderer), None with render=False
    faces: Tensor               # (F, 3) long


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
                                   s_init=S_INIT, t_init=tuple(t_init))

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
        v = self.ve(f)
        hand = self.he(v, render=render)
        return FrameworkOutput(heatmaps=heatmaps, silhouettes=silhouettes, t=v.t, s=v.s, rot=v.rot,
                               theta=v.theta, beta=v.beta, joints_3d=hand.joints_3d, vertices=hand.vertices,
                               joints_2d=hand.joints_2d, silhouette=hand.silhouette, faces=self.faces)

