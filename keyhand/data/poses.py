"""Hand poses that mean the same thing on any MANO file: finger curls, spread, gestures.

    from keyhand.data.poses import HandArticulation, GESTURES
    art = HandArticulation.from_layer(layer)                  # layer: a ManoLayer (official or proxy)
    pose = art.pose(curl=[0.2, 1, 1, 1, 1], spread=0.3)       # (45,) axis-angle, flat-hand-mean space
    pose = art.gesture("victory")

Used by the synthetic generator (§4.1 substitutes): random natural poses for the STB- and
ObMan-like sets, and canonical gesture poses for the gesture set (§4.1.3-4.1.4 substitutes).

Why not fixed axis-angle numbers: the official MANO and the proxy hand put the hand in different
frames, so a "flex the index" vector written for one is wrong for the other. Instead the axes are
derived from each model's rest skeleton: for a bone d of a joint and the palm's dorsal normal n,
rotating by a positive angle about ``normalize(n × d)`` curls the finger towards the palm (for
the thumb, towards the little-finger base across the palm); spreading rotates about ±n. MANO's
pose is relative to the rest pose, so these rest-frame axes are the joints' local axes
(Eq. 5's θ, before the PCA projection). The result is in the flat-hand-mean space: use it with
``ManoLayer(use_pca=False, flat_hand_mean=True)``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

__all__ = ["FINGERS", "GESTURES", "HandArticulation", "sample_natural_curls"]

#: Digits in the order used by curl/spread vectors.
FINGERS = ("thumb", "index", "middle", "ring", "little")
# MANO joint indices (file order) of each digit, base to distal.
_MANO_CHAIN = {"thumb": (13, 14, 15), "index": (1, 2, 3), "middle": (4, 5, 6), "ring": (10, 11, 12),
               "little": (7, 8, 9)}
# Tip vertex index position in ManoLayer.tip_vertex_ids (thumb, index, middle, ring, little).
_TIP_SLOT = {f: i for i, f in enumerate(FINGERS)}
# Full curl per joint (radians): base, middle, distal. Thumb: CMC, MCP, IP.
_MAX_CURL = {"finger": (np.radians(80), np.radians(100), np.radians(70)),
             "thumb": (np.radians(35), np.radians(50), np.radians(70))}
# Spread per finger at spread = 1 (radians, about the dorsal normal; + = away from the middle finger).
_MAX_SPREAD = {"thumb": np.radians(25), "index": np.radians(12), "middle": 0.0,
               "ring": np.radians(-8), "little": np.radians(-18)}

#: Canonical gestures: curl per digit (thumb, index, middle, ring, little), 0 straight .. 1 closed,
#: and spread in [0, 1]. Ten classes and more, distinct in their 3D joints.
GESTURES: dict[str, dict] = {
    "fist":      {"curl": (0.9, 1.0, 1.0, 1.0, 1.0), "spread": 0.0},
    "open":      {"curl": (0.0, 0.0, 0.0, 0.0, 0.0), "spread": 1.0},
    "flat":      {"curl": (0.1, 0.0, 0.0, 0.0, 0.0), "spread": 0.0},
    "point":     {"curl": (0.9, 0.0, 1.0, 1.0, 1.0), "spread": 0.0},
    "victory":   {"curl": (0.9, 0.0, 0.0, 1.0, 1.0), "spread": 1.0},
    "three":     {"curl": (0.9, 0.0, 0.0, 0.0, 1.0), "spread": 0.7},
    "four":      {"curl": (1.0, 0.0, 0.0, 0.0, 0.0), "spread": 0.6},
    "thumbs_up": {"curl": (0.0, 1.0, 1.0, 1.0, 1.0), "spread": 0.0},
    "call":      {"curl": (0.0, 1.0, 1.0, 1.0, 0.0), "spread": 1.0},
    "rock":      {"curl": (0.9, 0.0, 1.0, 1.0, 0.0), "spread": 0.8},
    "gun":       {"curl": (0.0, 0.0, 1.0, 1.0, 1.0), "spread": 0.6},
    "claw":      {"curl": (0.5, 0.5, 0.5, 0.5, 0.5), "spread": 0.8},
}


def _unit(v: np.ndarray) -> np.ndarray:
    return v / np.linalg.norm(v, axis=-1, keepdims=True).clip(1e-12)


@dataclass(frozen=True)
class HandArticulation:
    """Per-joint curl and spread axes of one MANO model, derived from its rest skeleton."""

    curl_axes: np.ndarray    # (16, 3) unit axes in the rest frame (row 0, the wrist, unused)
    spread_axes: np.ndarray  # (16, 3)

    @classmethod
    def from_layer(cls, layer) -> HandArticulation:
        """Derive the axes from a :class:`keyhand.geometry.mano.ManoLayer` (any file, any side)."""
        joints = layer.J_template.detach().cpu().double().numpy()          # (16, 3) rest joints
        tips = layer.v_template[list(layer.tip_vertex_ids)].detach().cpu().double().numpy()  # (5, 3)
        wrist, index1, little1 = joints[0], joints[1], joints[7]
        sign = 1.0 if layer.side == "right" else -1.0
        # Chirality: for a right hand (any right-handed frame) (L-W)×(I-W) points to the back of
        # the hand (palm down, fingers forward: the index is on the left, the little finger on the
        # right); a left hand is its mirror image, so the cross product flips.
        dorsal = _unit(sign * np.cross(little1 - wrist, index1 - wrist))
        curl = np.zeros((16, 3))
        spread = np.zeros((16, 3))
        for finger, chain in _MANO_CHAIN.items():
            points = [joints[j] for j in chain] + [tips[_TIP_SLOT[finger]]]
            for k, j in enumerate(chain):
                bone = _unit(points[k + 1] - points[k])
                if finger == "thumb":
                    # curl towards the little-finger base, across the palm and slightly palmar
                    target = _unit(_unit(little1 - points[k]) - 0.5 * dorsal)
                else:
                    target = -dorsal
                # rotating +φ about d × u moves d towards u (Rodrigues, small φ)
                curl[j] = _unit(np.cross(bone, target))
                # spread: rotate in the palm plane away from the middle finger
                side = np.cross(dorsal, bone)                              # in-plane, perpendicular
                away = np.sign(np.dot(points[0] - joints[4], side)) or 1.0
                spread[j] = away * dorsal
        return cls(curl_axes=curl, spread_axes=spread)

    def pose(self, curl, spread: float = 0.0, noise: np.ndarray | None = None) -> np.ndarray:
        """(45,) axis-angle finger pose (flat-hand-mean space) from 5 curls in [0, 1] and a spread.

        Args:
            curl: per digit (thumb, index, middle, ring, little), 0 straight .. 1 fully curled.
            spread: 0 fingers together .. 1 fully spread (applied at the base joints).
            noise: optional (15, 3) axis-angle added per joint (radians).
        """
        curl = np.asarray(curl, dtype=np.float64)
        aa = np.zeros((16, 3))
        for f, finger in enumerate(FINGERS):
            chain = _MANO_CHAIN[finger]
            limits = _MAX_CURL["thumb" if finger == "thumb" else "finger"]
            for k, j in enumerate(chain):
                aa[j] = curl[f] * limits[k] * self.curl_axes[j]
            base = chain[0]
            aa[base] += spread * abs(_MAX_SPREAD[finger]) * self.spread_axes[base] * (finger != "middle")
        out = aa[1:]
        if noise is not None:
            out = out + noise
        return out.reshape(45)

    def gesture(self, name: str, noise: np.ndarray | None = None) -> np.ndarray:
        """(45,) pose of a canonical gesture of :data:`GESTURES`."""
        g = GESTURES[name]
        return self.pose(g["curl"], g["spread"], noise)

    def batch(self, curls: np.ndarray, spreads: np.ndarray, noise: np.ndarray | None = None) -> torch.Tensor:
        """(N, 45) float32 tensor from (N, 5) curls and (N,) spreads (and optional (N, 15, 3) noise)."""
        rows = [self.pose(c, s, None if noise is None else noise[i])
                for i, (c, s) in enumerate(zip(curls, spreads, strict=True))]
        return torch.as_tensor(np.stack(rows), dtype=torch.float32)


def sample_natural_curls(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
    """(n, 5) curls and (n,) spreads of natural hand poses: a shared whole-hand flexion plus
    per-finger deviations (neighbouring fingers correlated), clipped to [0, 1]."""
    whole = rng.beta(1.2, 1.6, size=(n, 1))
    finger = rng.normal(0.0, 0.25, size=(n, 5))
    finger[:, 2:] = 0.5 * finger[:, 2:] + 0.5 * finger[:, 1:4]  # middle/ring/little follow neighbours
    curls = np.clip(whole + finger, 0.0, 1.0)
    spreads = np.clip(rng.beta(1.5, 2.0, size=n) * (1.2 - whole[:, 0]), 0.0, 1.0)
    return curls, spreads
