"""Semantic Feature Extractor (paper §3.2): a multi-task stacked hourglass (Newell et al. [39]).

    from keyhand.model.sfe import SemanticFeatureExtractor
    sfe = SemanticFeatureExtractor(image_size=256, channels=256, silhouette=True, fusion="concat")
    heatmaps, silhouettes, f = sfe(image)      # image (B, 3, 256, 256) standardised
    heatmaps[i]     # (B, 21, 64, 64) per hourglass i = 0, 1 (L_SFE supervises both, Eq. 14)
    silhouettes[i]  # (B, 2, 64, 64) logits, channel 0 = background, 1 = hand
    f               # (B, sfe.out_channels, 64, 64) semantic feature for the VE (§3.3)

Layout (S = image side, C = ``channels``, h = S/4):
    stem       conv7x7 (C/4) + max-pool -> residual (C/2) -> residual (C/2) + max-pool -> residual (C):
               the paper's four layers taking S^2 to h^2, pooling in the first and third.
    hourglass  recursive, two residual modules per level on the skip, down and up paths, max-pool down to
               4^2 (depth = log2(h / 4)), nearest-neighbour upsampling + element-wise addition.
    heads      three consecutive 1x1 convolutions -> 21 heatmaps (+ 2 silhouette logits).
    f_hat      x + conv1x1([H1, M1]): the first predictions mapped back to C channels and summed with the
               first hourglass' input (long skip), the input of the second hourglass.
    f          fusion "concat": [H2, M2, f_hat] (21 + 2 + C channels, the paper's final design);
               fusion "sum": f_hat + conv1x1([H2, M2]) (C channels, the Table 4 baseline).
Variant ``silhouette=False`` ("SFE (heatmaps only)", Table 1) drops the silhouette head everywhere.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as tnf
from torch import Tensor, nn

NUM_JOINTS = 21
NUM_SIL = 2  # background, hand


class Residual(nn.Module):
    """Newell et al.'s pre-activation bottleneck residual module: (B, cin, H, W) -> (B, cout, H, W)."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        mid = max(cout // 2, 1)
        self.body = nn.Sequential(
            nn.BatchNorm2d(cin), nn.ReLU(inplace=True), nn.Conv2d(cin, mid, 1),
            nn.BatchNorm2d(mid), nn.ReLU(inplace=True), nn.Conv2d(mid, mid, 3, padding=1),
            nn.BatchNorm2d(mid), nn.ReLU(inplace=True), nn.Conv2d(mid, cout, 1),
        )
        self.skip = nn.Identity() if cin == cout else nn.Conv2d(cin, cout, 1)

    def forward(self, x: Tensor) -> Tensor:
        return self.skip(x) + self.body(x)


def _two_res(c: int) -> nn.Sequential:
    return nn.Sequential(Residual(c, c), Residual(c, c))


class Hourglass(nn.Module):
    """One hourglass level (recursive): out = skip(x) + up(inner(pool(x))), (B, C, h, h) -> same shape."""

    def __init__(self, depth: int, channels: int) -> None:
        super().__init__()
        self.skip = _two_res(channels)
        self.down = _two_res(channels)
        self.inner = Hourglass(depth - 1, channels) if depth > 1 else _two_res(channels)
        self.up = _two_res(channels)

    def forward(self, x: Tensor) -> Tensor:
        low = self.up(self.inner(self.down(tnf.max_pool2d(x, 2))))
        return self.skip(x) + tnf.interpolate(low, scale_factor=2, mode="nearest")


def _conv_bn_relu(cin: int, cout: int, k: int, **kw) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, k, **kw), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class SemanticFeatureExtractor(nn.Module):
    """Two stacked multi-task hourglasses (§3.2, Fig. 3).

    Args:
        image_size: input side S; S/4 must be 4 * 2^k (k >= 1): 32, 64, 128, 256 (paper), ...
        channels: hourglass width C (paper 256).
        silhouette: also predict the 2-channel silhouette (Table 1 "heatmaps + silhouette").
        fusion: "concat" or "sum", how the final feature f is built (Table 4).
    """

    def __init__(self, image_size: int = 256, channels: int = 256, silhouette: bool = True,
                 fusion: str = "concat") -> None:
        super().__init__()
        side = image_size // 4
        depth = int(round(math.log2(side / 4))) if side >= 8 else 0
        if image_size % 4 or depth < 1 or 4 * 2**depth != side:
            raise ValueError(f"sfe: image_size must be 16 * 2^k (32, 64, 128, 256, ...), got {image_size}")
        if fusion not in ("sum", "concat"):
            raise ValueError(f"sfe: fusion must be 'sum' or 'concat', got {fusion!r}")
        c = channels
        self.fusion = fusion
        self.num_out = NUM_JOINTS + (NUM_SIL if silhouette else 0)   # predicted maps per hourglass
        self.out_channels = c + self.num_out if fusion == "concat" else c
        self.stem = nn.Sequential(
            _conv_bn_relu(3, max(c // 4, 1), 7, padding=3), nn.MaxPool2d(2),   # S -> S/2
            Residual(max(c // 4, 1), max(c // 2, 1)),
            Residual(max(c // 2, 1), max(c // 2, 1)), nn.MaxPool2d(2),          # S/2 -> S/4
            Residual(max(c // 2, 1), c),
        )
        self.hourglasses = nn.ModuleList(Hourglass(depth, c) for _ in range(2))
        # Three consecutive 1x1 convolutions per hourglass -> [21 heatmaps, 2 silhouette logits].
        self.heads = nn.ModuleList(
            nn.Sequential(_conv_bn_relu(c, c, 1), _conv_bn_relu(c, c, 1), nn.Conv2d(c, self.num_out, 1))
            for _ in range(2)
        )
        # Predictions mapped back to C channels: into f_hat (after hourglass 1), into f ("sum", hourglass 2).
        self.remap = nn.Conv2d(self.num_out, c, 1)
        self.remap_out = nn.Conv2d(self.num_out, c, 1) if fusion == "sum" else None

    def _split(self, pred: Tensor) -> tuple[Tensor, Tensor | None]:
        return pred[:, :NUM_JOINTS], (pred[:, NUM_JOINTS:] if self.num_out > NUM_JOINTS else None)

    def forward(self, image: Tensor) -> tuple[list[Tensor], list[Tensor], Tensor]:
        """(B, 3, S, S) -> (heatmaps [2 x (B, 21, S/4, S/4)], silhouette logits [2 x (B, 2, S/4, S/4)] or [],
        f (B, out_channels, S/4, S/4))."""
        x = self.stem(image)
        pred1 = self.heads[0](self.hourglasses[0](x))
        f_hat = x + self.remap(pred1)                                  # long skip connection
        pred2 = self.heads[1](self.hourglasses[1](f_hat))
        if self.fusion == "concat":
            f = torch.cat([pred2, f_hat], 1)                           # [H2, M2, f_hat]
        else:
            f = f_hat + self.remap_out(pred2)
        (h1, m1), (h2, m2) = self._split(pred1), self._split(pred2)
        return [h1, h2], ([m1, m2] if m1 is not None else []), f
