"""Viewpoint Encoder (paper §3.3, Fig. 4): semantic feature f -> view parameters v = {t, s, R, θ, β}.

    from keyhand.model.ve import ViewpointEncoder
    ve = ViewpointEncoder(in_channels=279, input_size=256, blocks=4, dense="VE2", pca_comps=45)
    v = ve(f)          # f (B, 279, 64, 64), or the image (B, 3, S, S) without an SFE (Table 1)
    v.t (B, 2) NDC, v.s (B, 1) NDC per mm (> 0), v.rot (B, 3) axis-angle, v.theta (B, 45), v.beta (B, 10)

Layout: f is resized (bilinear) to ``input_size``^2, then N abstraction blocks (each two residual modules
+ 2x2 max-pool; widths c, 2c, 4c, 4c, ... with c = ``channels``), then the latent is max-pooled to a fixed
LATENT_SIDE^2 grid and flattened: l_v has 4c * LATENT_SIDE^2 values, 4096 = 64 x 64 for c = 64 (the
paper's "reduce the input vector down to a 64 x 64 size"). Without this bound the flatten would be
c_N * (input_size / 2^N)^2 values, e.g. 131k for N = 4 and 2M for N = 2 at 256^2, and the first dense layer
alone 0.3-4 G parameters. Then three dense layers (VE1 3x1024, VE2 2x2048 + 1x1024, VE3 3x2048, widths
times ``dense_scale``, at least 8) with ReLU, and a linear head to v (2 + 1 + 3 + P + 10 = 61 values for P = 45).

Initialisation: the head's weights are small (x0.01) so the first prediction is its bias: t = ``t_init``,
s = ``s_init``, R = 0 (identity rotation), θ = 0 (the pose mean), β = 0 (the mean shape). s is positive via
s = s_init * softplus(raw) / ln 2 (s = s_init at raw = 0, d ln s / d raw = 0.72 there). The default
s_init = S_INIT = 1.2 / 180 NDC per mm makes a ~180 mm hand span 60 % of the crop (NDC spans 2).

Output scaling (an optimisation choice the paper leaves open; docs/hand_estimator_fit.md): θ and β are
``head_gain`` times the head's raw outputs, and the 6D rotation's identity bias is ``rot6d_norm`` times
(e1, e2) (each of its two columns has that norm). Both set how fast Adam moves each group of MANO
parameters per step (Adam's step is about the learning rate in weight units, whatever the output means):
a gain g multiplies θ's and β's speed by g, a bias norm n multiplies R's by about 1/n (the 6D vector is
normalised). With a linear head on fixed features fitting 32 hands through MANO, g = 3 and n = 0.1 reach
1.0 mm in 800 Adam steps where g = n = 1 (the plain head) reaches 2.3 mm. g = 1, n = 1 is the plain
linear head the paper describes.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as tnf
from torch import Tensor, nn

from keyhand.model.sfe import Residual

#: Dense widths of Table 2.
DENSE = {"VE1": (1024, 1024, 1024), "VE2": (2048, 2048, 1024), "VE3": (2048, 2048, 2048)}
#: The latent grid side after the abstraction blocks (see the module docstring).
LATENT_SIDE = 4
#: Initial scale: a 180 mm hand spans 1.2 NDC = 60 % of the crop.
S_INIT = 1.2 / 180.0
NUM_BETAS = 10
#: Values of each rotation parameterisation, and the head bias that makes it the identity.
ROT_DIMS = {"axis_angle": 3, "6d": 6}
_ROT_IDENTITY = {"axis_angle": (0.0, 0.0, 0.0), "6d": (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)}


class ViewParams(NamedTuple):
    """The VE output v (§3.3)."""

    t: Tensor      # (B, 2) NDC translation
    s: Tensor      # (B, 1) > 0, NDC per mm
    rot: Tensor    # (B, 3) axis-angle or (B, 6) continuous 6D R (keyhand.geometry.mano.rotation_matrix)
    theta: Tensor  # (B, P) MANO PCA pose coefficients
    beta: Tensor   # (B, 10) MANO shape


def dense_widths(dense: str, scale: float = 1.0) -> tuple[int, ...]:
    """The three dense widths of variant ``dense`` times ``scale`` (at least 8 each)."""
    if dense not in DENSE:
        raise ValueError(f"ve: dense must be one of {sorted(DENSE)}, got {dense!r}")
    return tuple(max(8, int(round(w * scale))) for w in DENSE[dense])


class ViewpointEncoder(nn.Module):
    """Abstraction blocks + dense layers regressing v (§3.3).

    Args:
        in_channels: channels of f (``SemanticFeatureExtractor.out_channels``, or 3 for the image).
        input_size: side f is resized to (paper 256).
        blocks: number N of abstraction blocks (Table 2: 2, 4, 5); input_size / 2^N must be >= 1.
        dense: "VE1" | "VE2" | "VE3" (Table 2).
        pca_comps: P, the number of MANO pose PCA coefficients (Table 3).
        channels: width c of the first block; block i has c * 2^min(i, 2) channels.
        dense_scale: multiplies the dense widths (tiny profiles).
        s_init: initial scale (NDC per mm); t_init: initial translation (NDC), e.g. to centre the mean hand.
        rot_repr: "axis_angle" (the paper's R, 3 values) or "6d" (continuous, 6 values).
        head_gain: θ and β = head_gain × the head's raw outputs (module docstring; 1 = the plain head).
        rot6d_norm: norm of each column of the 6D identity bias (module docstring; 1 = the plain head).
    """

    def __init__(self, in_channels: int, input_size: int = 256, blocks: int = 4, dense: str = "VE2",
                 pca_comps: int = 45, channels: int = 64, dense_scale: float = 1.0, s_init: float = S_INIT,
                 t_init: tuple[float, float] = (0.0, 0.0), rot_repr: str = "axis_angle", head_gain: float = 1.0,
                 rot6d_norm: float = 1.0) -> None:
        super().__init__()
        if input_size >> blocks < 1:
            raise ValueError(f"ve: input_size {input_size} is too small for {blocks} blocks (needs >= {2**blocks})")
        self.input_size = input_size
        self.pca_comps = pca_comps
        self.s_init = float(s_init)
        if not (head_gain > 0 and rot6d_norm > 0):
            raise ValueError(f"ve: head_gain and rot6d_norm must be > 0, got {head_gain!r}, {rot6d_norm!r}")
        self.head_gain = float(head_gain)
        if rot_repr not in ROT_DIMS:
            raise ValueError(f"ve: rot_repr must be one of {sorted(ROT_DIMS)}, got {rot_repr!r}")
        self.rot_dims = ROT_DIMS[rot_repr]
        layers, cin = [], in_channels
        for i in range(blocks):
            cout = channels * 2 ** min(i, 2)
            layers += [Residual(cin, cout), Residual(cout, cout), nn.MaxPool2d(2)]
            cin = cout
        self.blocks = nn.Sequential(*layers)
        self.latent_size = cin * LATENT_SIDE**2                         # flattened l_v
        dims = (self.latent_size, *dense_widths(dense, dense_scale))
        mlp = []
        for a, b in zip(dims[:-1], dims[1:], strict=True):
            mlp += [nn.Linear(a, b), nn.ReLU(inplace=True)]
        self.dense = nn.Sequential(*mlp)
        self.num_params = 2 + 1 + self.rot_dims + pca_comps + NUM_BETAS  # |v| = 61 for P = 45, axis-angle
        self.head = nn.Linear(dims[-1], self.num_params)
        with torch.no_grad():
            self.head.weight.mul_(0.01)
            self.head.bias.zero_()
            self.head.bias[:2] = torch.as_tensor(t_init, dtype=self.head.bias.dtype)
            identity = torch.as_tensor(_ROT_IDENTITY[rot_repr])
            self.head.bias[3:3 + self.rot_dims] = identity * (rot6d_norm if rot_repr == "6d" else 1.0)

    def features(self, f: Tensor) -> Tensor:
        """f (B, C, h, w) -> the last dense layer's output (B, D); f is resized to input_size² first."""
        if f.shape[-2:] != (self.input_size, self.input_size):
            f = tnf.interpolate(f, size=(self.input_size, self.input_size), mode="bilinear", align_corners=False)
        x = tnf.adaptive_max_pool2d(self.blocks(f), LATENT_SIDE).flatten(1)   # (B, latent_size)
        return self.dense(x)

    def forward(self, f: Tensor) -> ViewParams:
        """f (B, C, h, w) -> v; f is resized to (input_size, input_size) first."""
        v = self.head(self.features(f))                                      # (B, 61)
        t, s_raw, rot, theta, beta = v.split([2, 1, self.rot_dims, self.pca_comps, NUM_BETAS], 1)
        s = self.s_init * tnf.softplus(s_raw) / math.log(2.0)
        if self.head_gain != 1.0:
            theta, beta = theta * self.head_gain, beta * self.head_gain
        return ViewParams(t=t, s=s, rot=rot, theta=theta, beta=beta)
