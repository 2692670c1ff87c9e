"""A license-free proxy hand model, written in MANO's own pickle format (paper §3.4.1, Eqs. 2-5).

    from keyhand.geometry.proxy_hand import build_proxy_hand, write_proxy_hand, render_views
    path = write_proxy_hand("cache/MANO_RIGHT.pkl", seed=0, side="right")  # what ManoLayer loads
    model = build_proxy_hand(seed=0, side="left")                           # the same dict in memory
    render_views(model, "docs/proxy_hand.png")                              # flat hand and fist

The official MANO files are a licensed download. This module generates, deterministically from a
seed, a hand with exactly the keys, dtypes and shapes of ``MANO_RIGHT.pkl`` / ``MANO_LEFT.pkl``, so
that every code path (keyhand's MANO layer, smplx.MANO) runs unchanged on it:

- ``v_template`` (778, 3) float64, metres: T̂ of Eq. 3, an adult hand built from generalised
  cylinders (palm tube, thumb, four three-segment fingers with rounded tips) stitched into ONE
  closed, 2-manifold, outward-oriented genus-0 mesh; ``f`` (1552, 3) uint32 (V - E + F = 2; the
  official mesh has 1538 faces because its wrist is open, ours is closed by a cap).
- ``J_regressor`` (16, 778) sparse: each joint is a weighted mean of a ring of vertices around it.
- ``weights`` (778, 16) 𝒲 of Eq. 2: smooth blends across each joint along the bone axis.
- ``shapedirs`` (778, 3, 10) S_n of Eq. 4: central differences of the parametric generator at ±1
  population standard deviation of ten named parameters (:data:`SHAPE_DIRECTIONS`), so β ~ N(0, 1).
- ``posedirs`` (778, 3, 135) P_n of Eq. 5: least-squares pose correctives that make linear blend
  skinning approximate dual-quaternion skinning (which keeps volume at bent joints).
- ``hands_components`` / ``hands_mean`` / ``hands_coeffs``: PCA of synthetic natural poses from a
  synergy model (whole-hand flexion first; ``+coeff_0`` closes the hand).

Frame (right hand, flat template, zero pose): metres; the wrist joint at the origin, the fingers
point along +x, the back of the hand (dorsum) faces +y (the palm faces -y) and the thumb is on the
-z side (a right-handed frame: x × y = z points from the thumb towards the little finger, which is
what makes it a RIGHT hand). The mesh closes with a cap just proximal to the wrist joint. The two
hands are exact mirror images (z -> -z), as the official MANO_LEFT is a mirrored MANO_RIGHT: the
generator builds the thumb-on-+z (left) hand and mirrors it into the right one.

Joint order (MANO): 0 wrist, 1-3 index, 4-6 middle, 7-9 little, 10-12 ring, 13-15 thumb (each
proximal to distal). Pose: axis-angle per joint in the parent's frame, as in MANO/smplx.
"""

from __future__ import annotations

import os
import pickle
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse

from keyhand.atomic import atomic_write_bytes

__all__ = [
    "PROXY_VERSION",
    "TIP_VERTEX_IDS",
    "SHAPE_DIRECTIONS",
    "SHAPE_STD",
    "JOINT_NAMES",
    "PARENTS",
    "build_proxy_hand",
    "write_proxy_hand",
    "numpy_lbs",
    "render_views",
]

#: Bump whenever the generated geometry, weights or bases change (the cache folder is keyed on it).
PROXY_VERSION = "1"
#: manopth's fingertip vertex ids; the proxy puts the most distal vertex of each digit there.
TIP_VERTEX_IDS = {"thumb": 745, "index": 317, "middle": 444, "ring": 556, "little": 673}
#: The ten shape directions, in ``shapedirs`` order (β_n of Eq. 4, 1 unit = 1 population std).
SHAPE_DIRECTIONS = (
    "overall_size",            # uniform scale about the wrist joint
    "finger_length",           # the four fingers' phalanges
    "palm_width",              # knuckle spacing and palm width
    "palm_length",             # wrist to knuckles
    "thickness",               # dorsal-palmar thickness of palm and digits
    "thumb_length",            # the thumb's three segments
    "finger_girth",            # width and thickness of the fingers
    "index_vs_little_length",  # longer index and shorter little finger (and vice versa)
    "finger_spread",           # splay of the fingers at the knuckles in the flat hand
    "palm_bulk",               # thenar/hypothenar eminences and dorsal arch
)
#: One population standard deviation of each generator parameter (relative, radians for spread).
SHAPE_STD = (0.045, 0.04, 0.04, 0.04, 0.06, 0.05, 0.06, 0.03, 0.035, 0.3)
JOINT_NAMES = (
    "wrist",
    "index1", "index2", "index3",
    "middle1", "middle2", "middle3",
    "little1", "little2", "little3",
    "ring1", "ring2", "ring3",
    "thumb1", "thumb2", "thumb3",
)
PARENTS = (-1, 0, 1, 2, 0, 4, 5, 0, 7, 8, 0, 10, 11, 0, 13, 14)
N_VERTICES, N_FACES = 778, 1552

_DIGITS = ("thumb", "index", "middle", "ring", "little")
_FINGERS = ("index", "middle", "ring", "little")          # radial (+z) to ulnar (-z)
_DIGIT_JOINTS = {"index": (1, 2, 3), "middle": (4, 5, 6), "little": (7, 8, 9), "ring": (10, 11, 12),
                 "thumb": (13, 14, 15)}

# ------------------------------------------------------------------------------------------------
# Topology: counts chosen so that the closed mesh has exactly 778 vertices (and so 1552 faces).
# ------------------------------------------------------------------------------------------------
_RING = 10            # vertices around a digit
_NCOL = 16            # columns of the palm's distal cap grid: 4 per finger
_PRING = 2 * _NCOL + 2  # vertices around the palm tube: palmar row, radial side, dorsal row, ulnar side
_NPALM = 5            # palm tube rings proximal of the knuckle ring
_HOLE = (1, 2, 14, 3)  # thumb hole on the palm tube: first ring, rings spanned, first column, columns
# Stations along a digit as (segment, fraction): segment 0 = proximal phalanx (thumb: base to MCP).
_FINGER_STATIONS = ((0, 0.33), (0, 0.67), (1, 0.0), (1, 0.4), (1, 0.72), (2, 0.0), (2, 0.3), (2, 0.55),
                    (2, 0.75), (2, 0.88), (2, 0.96))
_THUMB_STATIONS = ((0, 0.35), (0, 0.7), (1, 0.0), (1, 0.35), (1, 0.7), (2, 0.0), (2, 0.3), (2, 0.55),
                   (2, 0.75), (2, 0.88), (2, 0.96))


@dataclass
class _Topology:
    n: int
    quads: list[tuple[int, int, int, int]]
    tris: list[tuple[int, int, int]]
    palm: np.ndarray                    # (_NPALM, _PRING) vertex ids, -1 where the thumb hole is
    knuckle: np.ndarray                 # (_PRING,) the palm's last ring = the fingers' base rings
    cap: np.ndarray                     # (_NCOL - 2,) wrist cap interior, middle row
    cap_centre: int
    rings: dict[str, list[np.ndarray]] = field(default_factory=dict)  # per digit, base ring first
    tips: dict[str, int] = field(default_factory=dict)
    hole: np.ndarray = field(default_factory=lambda: np.zeros(0, int))  # thumb base ring (palm ids)


def _build_topology() -> _Topology:
    """Vertex ids and faces of the hand. Palm: a tube of 34-vertex rings along x, closed at the
    wrist by a 16 x 3 grid cap; its distal ring plus six web vertices are the four fingers' 10-vertex
    base rings; the thumb's base ring is the boundary of a 2 x 3-quad hole in the tube's radial side.
    Digits: 11 more rings each and a tip vertex (fan). Vertices: (5 x 34 - 2) + (14 + 1) + 40
    + 4 x 111 + 111 = 778; closed genus 0, so faces = 2 x 778 - 4 = 1552."""
    nid = 0

    def new(k: int) -> np.ndarray:
        nonlocal nid
        ids = np.arange(nid, nid + k)
        nid += k
        return ids

    i0, na, j0, nb = _HOLE
    removed = {(i, j) for i in range(i0 + 1, i0 + na) for j in range(j0 + 1, j0 + nb)}
    palm = -np.ones((_NPALM, _PRING), int)
    for i in range(_NPALM):
        for j in range(_PRING):
            if (i, j) not in removed:
                palm[i, j] = new(1)[0]
    cap = new(_NCOL - 2)
    cap_centre = int(new(1)[0])
    rings: dict[str, list[np.ndarray]] = {}
    tips: dict[str, int] = {}
    for name in _FINGERS:
        rings[name] = [new(_RING) for _ in range(1 + len(_FINGER_STATIONS))]
        tips[name] = int(new(1)[0])
    # Knuckle ring: columns 0..15 from ulnar (-z) to radial (+z); finger d (little=0) owns 4d..4d+3.
    # Base ring angle m*36 deg: m=0 radial side, 1-4 dorsal (radial->ulnar), 5 ulnar side, 6-9 palmar.
    base = [rings[name][0] for name in reversed(_FINGERS)]  # little, ring, middle, index

    def grid(c: int, r: int) -> int:
        d, k = divmod(c, 4)
        if r == 0:
            return int(base[d][6 + k])
        if r == 2:
            return int(base[d][4 - k])
        return int(base[d][0] if k == 3 else base[d][5])

    knuckle = np.array([grid(c, 0) for c in range(_NCOL)] + [grid(_NCOL - 1, 1)]
                       + [grid(c, 2) for c in range(_NCOL - 1, -1, -1)] + [grid(0, 1)])
    quads: list[tuple[int, int, int, int]] = []
    tris: list[tuple[int, int, int]] = []
    # palm tube
    tube = np.vstack([palm, knuckle[None]])
    for i in range(_NPALM):
        for j in range(_PRING):
            if i0 <= i < i0 + na and j0 <= j < j0 + nb:
                continue
            jn = (j + 1) % _PRING
            quads.append((tube[i, j], tube[i, jn], tube[i + 1, jn], tube[i + 1, j]))
    # webs between fingers on the distal cap
    for c in (3, 7, 11):
        for r in (0, 1):
            quads.append((grid(c, r), grid(c + 1, r), grid(c + 1, r + 1), grid(c, r + 1)))
    # wrist cap: a 16 x 3 grid on ring 0, one extra vertex splitting the centre edge

    def wgrid(c: int, r: int) -> int:
        if r == 0:
            return int(palm[0, c])
        if r == 2:
            return int(palm[0, 2 * _NCOL - c])
        if c == 0:
            return int(palm[0, _PRING - 1])
        if c == _NCOL - 1:
            return int(palm[0, _NCOL])
        return int(cap[c - 1])

    mid = _NCOL // 2 - 1
    for c in range(_NCOL - 1):
        for r in (0, 1):
            if c != mid:
                quads.append((wgrid(c, r), wgrid(c + 1, r), wgrid(c + 1, r + 1), wgrid(c, r + 1)))
    a0, b0, b1, a1 = wgrid(mid, 0), wgrid(mid + 1, 0), wgrid(mid + 1, 1), wgrid(mid, 1)
    e = cap_centre
    tris += [(e, a1, a0), (e, a0, b0), (e, b0, b1)]
    a2, b2 = wgrid(mid, 2), wgrid(mid + 1, 2)
    tris += [(e, b1, b2), (e, b2, a2), (e, a2, a1)]
    # thumb base ring = boundary of the hole, walked once around
    loop = [(i0, j) for j in range(j0, j0 + nb + 1)]
    loop += [(i, j0 + nb) for i in range(i0 + 1, i0 + na + 1)]
    loop += [(i0 + na, j) for j in range(j0 + nb - 1, j0 - 1, -1)]
    loop += [(i, j0) for i in range(i0 + na - 1, i0, -1)]
    hole = np.array([tube[i, j] for i, j in loop])
    assert len(hole) == _RING
    rings["thumb"] = [hole] + [new(_RING) for _ in range(len(_THUMB_STATIONS))]
    tips["thumb"] = int(new(1)[0])
    # digit tubes and tip fans
    for name in _DIGITS:
        rs = rings[name]
        for ra, rb in zip(rs[:-1], rs[1:], strict=True):
            for m in range(_RING):
                mn = (m + 1) % _RING
                quads.append((int(ra[m]), int(ra[mn]), int(rb[mn]), int(rb[m])))
        last = rs[-1]
        for m in range(_RING):
            tris.append((int(last[m]), int(last[(m + 1) % _RING]), tips[name]))
    return _Topology(n=nid, quads=quads, tris=tris, palm=palm, knuckle=knuckle, cap=cap,
                     cap_centre=cap_centre, rings=rings, tips=tips, hole=hole)


def _triangulate(topo: _Topology, v: np.ndarray) -> np.ndarray:
    """Split each quad along its shorter diagonal, then orient all faces consistently outwards."""
    faces = list(topo.tris)
    for a, b, c, d in topo.quads:
        if np.linalg.norm(v[a] - v[c]) <= np.linalg.norm(v[b] - v[d]):
            faces += [(a, b, c), (a, c, d)]
        else:
            faces += [(a, b, d), (b, c, d)]
    f = np.array(faces, dtype=np.int64)
    f = _orient(f)
    if _signed_volume(v, f) < 0:
        f = f[:, ::-1]
    return np.ascontiguousarray(f)


def _orient(f: np.ndarray) -> np.ndarray:
    """Flip faces so that every shared edge is walked in opposite directions (breadth first)."""
    f = f.copy()
    edge_faces: dict[tuple[int, int], list[int]] = {}
    for i, tri in enumerate(f):
        for k in range(3):
            a, b = int(tri[k]), int(tri[(k + 1) % 3])
            edge_faces.setdefault((min(a, b), max(a, b)), []).append(i)
    bad = [e for e, fs in edge_faces.items() if len(fs) != 2]
    if bad:
        raise RuntimeError(f"proxy hand mesh is not 2-manifold at {len(bad)} edges, e.g. {bad[:3]}")
    done = np.zeros(len(f), bool)
    for start in range(len(f)):
        if done[start]:
            continue
        done[start] = True
        queue = deque([start])
        while queue:
            i = queue.popleft()
            for k in range(3):
                a, b = int(f[i, k]), int(f[i, (k + 1) % 3])
                for j in edge_faces[(min(a, b), max(a, b))]:
                    if j == i or done[j]:
                        continue
                    # the neighbour must walk the shared edge b -> a; flip it if it walks a -> b
                    walks = any(int(f[j, q]) == a and int(f[j, (q + 1) % 3]) == b for q in range(3))
                    if walks:
                        f[j] = f[j, ::-1]
                    done[j] = True
                    queue.append(j)
    return f


def _signed_volume(v: np.ndarray, f: np.ndarray) -> float:
    """Volume enclosed by a closed triangle mesh (positive when faces are oriented outwards), m^3."""
    a, b, c = v[f[:, 0]], v[f[:, 1]], v[f[:, 2]]
    return float(np.einsum("ij,ij->i", a, np.cross(b, c)).sum() / 6.0)


# ------------------------------------------------------------------------------------------------
# Geometry: a parametric hand (in cm internally) -> vertex positions in metres.
# ------------------------------------------------------------------------------------------------
# Nominal adult right hand, per finger (index, middle, ring, little).
_F_XMCP = np.array([8.45, 8.75, 8.35, 7.65])          # wrist -> knuckle along x (cm)
_F_WBASE = np.array([2.1, 2.15, 1.95, 1.75])          # knuckle ring width (cm)
_F_GAP = 0.1                                          # gap between knuckle rings (cm)
_F_LEN = np.array([[4.2, 2.55, 2.25], [4.6, 2.85, 2.45], [4.3, 2.7, 2.35], [3.45, 2.0, 2.15]])
_F_W = np.array([1.95, 2.0, 1.85, 1.65])              # proximal phalanx width (cm)
_F_T = np.array([1.85, 1.9, 1.8, 1.6])                # proximal phalanx thickness (cm)
_F_SPLAY = np.radians([6.0, 1.0, -4.5, -11.0])        # toward +z (radial) in the flat hand
_SPREAD_PATTERN = np.array([1.0, 0.25, -0.5, -1.0])
# Width/thickness profile along a finger at knots (s/L): base, mid-prox, PIP, mid-mid, DIP, pad, tip.
_PROF_W = np.array([1.0, 0.95, 0.97, 0.88, 0.86, 0.86, 0.84])
_PROF_T = np.array([1.0, 0.93, 0.92, 0.84, 0.80, 0.80, 0.76])
# Palm tube rings 0.._NPALM-1: x at the middle finger (cm), width, thickness, share of the knuckle arc
_P_X = np.array([-1.3, 1.3, 3.4, 5.4, 7.0])
_P_W = np.array([5.9, 7.3, 8.1, 8.35, 8.35])
_P_T = np.array([3.3, 3.2, 3.1, 2.9, 2.6])
_P_ARC = np.array([0.0, 0.15, 0.4, 0.7, 0.9])
_P_BLEND = np.array([0.0, 0.0, 0.0, 0.1, 0.35])       # pull toward the knuckle ring's shape
# Thumb: CMC position (cm), direction (yaw toward +z, pitch toward -y), segment lengths, nail roll.
_T_CMC = np.array([1.9, -0.7, 2.3])
_T_YAW, _T_PITCH, _T_ROLL = np.radians(40.0), np.radians(6.0), np.radians(50.0)
_T_LEN = np.array([4.4, 3.2, 2.9])
# Thumb cross-sections (width, thickness) at its stations (after the base ring).
_T_WT = np.array([[3.1, 2.7], [2.6, 2.3], [2.3, 2.05], [2.15, 1.9], [2.1, 1.85], [2.05, 1.8], [2.1, 1.75],
                  [2.05, 1.7], [2.0, 1.65], [2.0, 1.65], [2.0, 1.65]])


def _nominal_params() -> np.ndarray:
    """Generator parameters in SHAPE_DIRECTIONS order (relative factors; spread in radians)."""
    return np.array([1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 0.0, 0.0, 1.0])


def _unit(v: np.ndarray) -> np.ndarray:
    return v / np.linalg.norm(v, axis=-1, keepdims=True)


def _smoothstep(x: np.ndarray) -> np.ndarray:
    """0 below -1, 1 above +1, quintic in between (C2)."""
    t = np.clip((np.asarray(x, float) + 1.0) / 2.0, 0.0, 1.0)
    return t * t * t * (t * (6.0 * t - 15.0) + 10.0)


@dataclass
class _Skeleton:
    mcp: np.ndarray        # (4, 3) finger knuckle centres (cm), _FINGERS order
    dirs: np.ndarray       # (4, 3) finger directions
    lens: np.ndarray       # (4, 3) phalanx lengths (cm)
    thumb_pts: np.ndarray  # (4, 3) thumb base-ring centre, MCP, IP, tip (cm)
    thumb_dir: np.ndarray  # (3,) phalanx direction
    thumb_nail: np.ndarray  # (3,) dorsal (nail) normal of the thumb
    cmc: np.ndarray = field(default_factory=lambda: np.zeros(3))  # nominal thumb CMC (cm)
    station_s: dict[str, np.ndarray] = field(default_factory=dict)  # per digit: s of each ring (cm)
    joint_s: dict[str, np.ndarray] = field(default_factory=dict)    # per digit: s of its 3 joints


def _geometry(topo: _Topology, q: np.ndarray) -> tuple[np.ndarray, _Skeleton]:
    """Vertex positions (topology order, metres) and the skeleton (cm) for parameters ``q``."""
    size, flen, pw, pl, th, tl, girth, idx_little, spread, bulk = (float(x) for x in q)
    v = np.zeros((topo.n, 3))
    y_hat = np.array([0.0, 1.0, 0.0])

    # ---- fingers
    wbase = _F_WBASE * pw
    edges = np.cumsum(np.concatenate([[0.0], wbase[::-1] + _F_GAP])) - _F_GAP / 2
    zc = ((edges[:-1] + edges[1:]) / 2)[::-1]                 # index .. little
    zc = zc - (edges[-1] + edges[0]) / 2 - 0.1 * pw
    ang = _F_SPLAY + spread * _SPREAD_PATTERN
    dirs = np.stack([np.cos(ang), np.zeros(4), np.sin(ang)], 1)
    lat = np.cross(dirs, y_hat)                               # radial side of each finger
    mcp = np.stack([_F_XMCP * pl, np.zeros(4), zc], 1)
    lens = _F_LEN * flen
    lens[0] *= 1.0 + idx_little
    lens[3] *= 1.0 - idx_little
    skel = _Skeleton(mcp=mcp, dirs=dirs, lens=lens, thumb_pts=np.zeros((4, 3)), thumb_dir=np.zeros(3),
                     thumb_nail=np.zeros(3))
    phi = 2 * np.pi * np.arange(_RING) / _RING
    cphi, sphi = np.cos(phi), np.sin(phi)
    for d, name in enumerate(_FINGERS):
        L1, L2, L3 = lens[d]
        total = L1 + L2 + L3
        knots = np.array([0.0, 0.5 * L1, L1, L1 + 0.5 * L2, L1 + L2, L1 + L2 + 0.45 * L3, total])
        w_prof = _F_W[d] * girth * _PROF_W
        t_prof = _F_T[d] * girth * th * _PROF_T
        w_prof[0], t_prof[0] = wbase[d], 2.05 * th * (_F_T[d] / 1.85)
        starts = np.array([0.0, L1, L1 + L2])
        seg_len = np.array([L1, L2, L3])
        s_all = np.array([0.0] + [starts[g] + f * seg_len[g] for g, f in _FINGER_STATIONS])
        dome0 = L1 + L2 + 0.55 * L3
        for k, s in enumerate(s_all):
            w = np.interp(s, knots, w_prof)
            t = np.interp(s, knots, t_prof)
            u = np.clip((s - dome0) / (total - dome0), 0.0, 1.0)
            shrink = np.sqrt(1.0 - u * u)
            centre = mcp[d] + s * dirs[d] - 0.12 * t * u * y_hat   # tip pad sits a little palmar
            ty = np.where(sphi < 0, 1.06, 0.94) * t                # fuller palmar pad
            ring = (centre + 0.5 * w * shrink * cphi[:, None] * lat[d]
                    + 0.5 * ty[:, None] * shrink * sphi[:, None] * y_hat)
            v[topo.rings[name][k]] = ring
        t_tip = np.interp(total, knots, t_prof)
        v[topo.tips[name]] = mcp[d] + total * dirs[d] - 0.12 * t_tip * y_hat
        skel.station_s[name] = s_all
        skel.joint_s[name] = starts

    # ---- palm tube
    kn = v[topo.knuckle]                                       # (34, 3)
    zmin, zmax = kn[_PRING - 1, 2], kn[_NCOL, 2]
    zmid, half = (zmin + zmax) / 2, (zmax - zmin) / 2
    zn = (kn[:, 2] - zmid) / half                              # -1 ulnar .. +1 radial
    palmar = np.arange(_PRING) < _NCOL
    dorsal = (np.arange(_PRING) > _NCOL) & (np.arange(_PRING) < _PRING - 1)
    order = np.argsort(mcp[:, 2])
    for i in range(_NPALM):
        width, thick = _P_W[i] * pw, _P_T[i] * th
        z = zmid * (i / _NPALM) + zn * width / 2
        xk = np.interp(z, mcp[order, 2], mcp[order, 0])        # knuckle line at this z
        x = _P_X[i] * pl + _P_ARC[i] * (xk - mcp[1, 0])
        y = np.zeros(_PRING)
        y[palmar] = -thick / 2 * (1.0 - 0.32 * zn[palmar] ** 4)
        y[dorsal] = thick / 2 * (1.0 - 0.3 * zn[dorsal] ** 2)
        # thenar (radial, palmar) and hypothenar (ulnar, palmar) eminences, dorsal arch
        xs = _P_X[i] * pl
        then = 0.45 * bulk * np.exp(-(((xs - 3.0 * pl) / 2.6) ** 2)) * np.clip((zn - 0.15) / 0.5, 0, 1)
        hypo = 0.35 * bulk * np.exp(-(((xs - 3.5 * pl) / 2.8) ** 2)) * np.clip((-zn - 0.35) / 0.45, 0, 1)
        y[palmar] -= (then + hypo)[palmar]
        y[dorsal] += 0.15 * bulk * (1.0 - zn[dorsal] ** 2)
        ring = np.stack([x, y, z], 1)
        target = np.stack([x, kn[:, 1], kn[:, 2]], 1)        # the knuckle ring's cross-section
        ring = (1 - _P_BLEND[i]) * ring + _P_BLEND[i] * target
        ok = topo.palm[i] >= 0
        v[topo.palm[i][ok]] = ring[ok]
    # wrist cap: middle row, domed slightly proximally
    r0 = v[topo.palm[0]]
    for c in range(1, _NCOL - 1):
        pal, dor = r0[c], r0[2 * _NCOL - c]
        p = (pal + dor) / 2
        p[0] -= 0.35 * (1.0 - (p[2] / (_P_W[0] * pw / 2)) ** 2)
        v[topo.cap[c - 1]] = p
    mid = _NCOL // 2 - 1
    v[topo.cap_centre] = (v[topo.cap[mid - 1]] + v[topo.cap[mid]]) / 2 - np.array([0.05, 0, 0])

    # ---- thumb
    cmc = _T_CMC * np.array([pl, th, pw])
    tdir = np.array([np.cos(_T_PITCH) * np.cos(_T_YAW), -np.sin(_T_PITCH), np.cos(_T_PITCH) * np.sin(_T_YAW)])
    e1 = _unit(y_hat - (y_hat @ tdir) * tdir)
    e2 = np.cross(tdir, e1)                                    # away from the fingers
    nail = np.cos(_T_ROLL) * e1 + np.sin(_T_ROLL) * e2
    tlen = _T_LEN * tl
    p_mcp = cmc + tlen[0] * tdir
    p_ip = p_mcp + tlen[1] * tdir
    p_tip = p_ip + tlen[2] * tdir
    hole = v[topo.hole]
    cb = hole.mean(0)
    pts = np.stack([cb, p_mcp, p_ip, p_tip])
    seg = np.linalg.norm(np.diff(pts, axis=0), axis=1)
    d0 = _unit(p_mcp - cb)

    def frame(axis: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        a = _unit(nail - (nail @ axis) * axis)
        return a, np.cross(axis, a)

    f1, f2 = frame(d0)
    rel = hole - cb
    psi = np.unwrap(np.arctan2(rel @ f2, rel @ f1))
    if not (np.all(np.diff(psi) > 0) or np.all(np.diff(psi) < 0)):  # the thumb would twist or fold
        raise RuntimeError("proxy hand: the thumb's base ring does not wind once around its axis")
    step = np.sign(psi[-1] - psi[0]) * 2 * np.pi / _RING
    uniform = psi[0] + step * np.arange(_RING)
    uniform += np.mean(psi - uniform)
    s_thumb = [0.0]
    starts = np.concatenate([[0.0], np.cumsum(seg)])
    total = starts[-1]
    dome0 = starts[2] + 0.55 * seg[2]
    for k, (g, frac) in enumerate(_THUMB_STATIONS):
        s = starts[g] + frac * seg[g]
        s_thumb.append(s)
        centre = pts[g] + frac * (pts[g + 1] - pts[g])
        axis = _unit((1 - min(s / starts[1], 1.0)) * d0 + min(s / starts[1], 1.0) * tdir)
        a1, a2 = frame(axis)
        w, t = _T_WT[k] * np.array([girth, girth * th])
        u = np.clip((s - dome0) / (total - dome0), 0.0, 1.0)
        shrink = np.sqrt(1.0 - u * u)
        centre = centre - 0.12 * t * u * nail
        gam = min(1.0, (k + 1) / 3.0)
        ang_k = (1 - gam) * psi + gam * uniform
        ell = (centre + 0.5 * w * shrink * np.sin(ang_k)[:, None] * a2
               + 0.5 * t * shrink * np.cos(ang_k)[:, None] * a1)
        beta = min(1.0, 0.45 + 0.3 * k)
        v[topo.rings["thumb"][k + 1]] = (1 - beta) * (hole + (centre - cb)) + beta * ell
    t_last = _T_WT[-1, 1] * girth * th
    v[topo.tips["thumb"]] = p_tip - 0.12 * t_last * nail
    skel.station_s["thumb"] = np.array(s_thumb)
    skel.joint_s["thumb"] = starts[:3]
    skel.thumb_pts, skel.thumb_dir, skel.thumb_nail = pts, tdir, nail
    # put the wrist joint (as the regressor defines it) at the origin, for every shape
    wrist = sum(0.5 * v[ring].mean(0) for ring in _wrist_rings(topo))
    v -= wrist
    skel.mcp = skel.mcp - wrist
    skel.thumb_pts = skel.thumb_pts - wrist
    skel.cmc = cmc - wrist
    return v * 0.01 * size, skel


# ------------------------------------------------------------------------------------------------
# Joints and skinning weights (the J(β) regressor and 𝒲 of Eq. 2).
# ------------------------------------------------------------------------------------------------
_JOINT_RING = {1: 0, 2: 1 + _FINGER_STATIONS.index((1, 0.0)), 3: 1 + _FINGER_STATIONS.index((2, 0.0))}
_THUMB_RING = {2: 1 + _THUMB_STATIONS.index((1, 0.0)), 3: 1 + _THUMB_STATIONS.index((2, 0.0))}


def _wrist_rings(topo: _Topology) -> tuple[np.ndarray, np.ndarray]:
    """The two palm rings whose centroids, averaged, define the wrist joint."""
    return topo.palm[0], topo.palm[1][topo.palm[1] >= 0]


def _joint_regressor(topo: _Topology, v: np.ndarray, skel: _Skeleton) -> np.ndarray:
    """(16, V) non-negative rows summing to 1: each joint a weighted mean of vertex rings (metres)."""
    reg = np.zeros((16, topo.n))

    def ring_mean(j: int, ids: np.ndarray, share: float = 1.0) -> None:
        ids = ids[ids >= 0]
        reg[j, ids] += share / len(ids)

    for ring in _wrist_rings(topo):
        ring_mean(0, ring, 0.5)
    for name in _FINGERS:
        j1, j2, j3 = _DIGIT_JOINTS[name]
        ring_mean(j1, topo.rings[name][_JOINT_RING[1]])
        ring_mean(j2, topo.rings[name][_JOINT_RING[2]])
        ring_mean(j3, topo.rings[name][_JOINT_RING[3]])
    # thumb CMC: between the thumb's base ring and the palm ring through it, nearest the nominal CMC
    a = v[topo.hole].mean(0)
    palm_ring = topo.palm[_HOLE[0]][topo.palm[_HOLE[0]] >= 0]
    b = v[palm_ring].mean(0)
    target = skel.cmc * 0.01
    alpha = float(np.clip((target - a) @ (b - a) / ((b - a) @ (b - a)), 0.1, 0.6))
    ring_mean(13, topo.hole, 1.0 - alpha)
    ring_mean(13, palm_ring, alpha)
    ring_mean(14, topo.rings["thumb"][_THUMB_RING[2]])
    ring_mean(15, topo.rings["thumb"][_THUMB_RING[3]])
    return reg


def _skinning_weights(topo: _Topology, v_cm: np.ndarray, skel: _Skeleton) -> np.ndarray:
    """(V, 16) LBS weights: smooth steps along each digit's bone axis, centred on its joints.

    A digit vertex at arc length s (cm from the digit's first joint) blends parent and child bone
    over [s_joint - h, s_joint + h]; palm vertices are on the wrist except within h of a knuckle or
    of the thumb's base ring, where they start to follow that digit.
    """
    n = topo.n
    w = np.zeros((n, 16))

    def chain(name: str, s: np.ndarray, share: np.ndarray) -> np.ndarray:
        """Contributions (len(s), 16) of one digit's three bones, without the wrist part."""
        out = np.zeros((len(s), 16))
        js = skel.joint_s[name]
        seg = np.diff(np.append(js, skel.station_s[name][-1]))
        h = np.array([1.4 if name != "thumb" else 1.2, 0.4 * min(seg[0], seg[1]), 0.4 * min(seg[1], seg[2])])
        u = [_smoothstep((s - js[k]) / h[k]) for k in range(3)] + [np.zeros_like(s)]
        for k, j in enumerate(_DIGIT_JOINTS[name]):
            out[:, j] = share * (u[k] - u[k + 1])
        return out

    owned = np.zeros(n, bool)
    for name in _DIGITS:
        ids = np.concatenate(topo.rings[name] + [np.array([topo.tips[name]])])
        s = np.concatenate([np.full(_RING, sk) for sk in skel.station_s[name]]
                           + [np.array([skel.station_s[name][-1] + 0.3])])
        c = chain(name, s, np.ones(len(s)))
        w[ids] = c
        w[ids, 0] = 1.0 - c.sum(1)
        owned[ids] = True
    palm = np.flatnonzero(~owned)
    p = v_cm[palm]
    contrib = np.zeros((len(palm), 16))
    order = np.argsort(skel.mcp[:, 2])
    for d, name in enumerate(_FINGERS):
        onehot = (order == d).astype(float)
        share = np.interp(p[:, 2], skel.mcp[order, 2], onehot)   # hat functions: a partition of unity
        s = (p - skel.mcp[d]) @ skel.dirs[d]
        contrib += chain(name, s, share)
    dist = np.linalg.norm(p[:, None] - v_cm[topo.hole][None], axis=-1).min(1)
    contrib += chain("thumb", -dist, np.ones(len(palm)))
    total = contrib.sum(1, keepdims=True)
    contrib /= np.maximum(total, 1.0)
    w[palm] = contrib
    w[palm, 0] = 1.0 - contrib.sum(1)
    w[np.abs(w) < 1e-12] = 0.0
    return w / w.sum(1, keepdims=True)


# ------------------------------------------------------------------------------------------------
# Natural poses: a synergy model of the hand (axis-angle per joint in the parent's frame).
# ------------------------------------------------------------------------------------------------
def _pose_axes(skel: _Skeleton) -> dict[str, np.ndarray]:
    """Unit rotation axes (15, 3) per articulated joint: flexion (+ closes), abduction (+ radial)."""
    y = np.array([0.0, 1.0, 0.0])
    flex, abd, twist = np.zeros((15, 3)), np.zeros((15, 3)), np.zeros((15, 3))
    for d, name in enumerate(_FINGERS):
        for j in _DIGIT_JOINTS[name]:
            flex[j - 1] = _unit(np.cross(y, skel.dirs[d]))
            abd[j - 1] = -y
            twist[j - 1] = skel.dirs[d]
    t_flex = _unit(np.cross(skel.thumb_nail, skel.thumb_dir))
    for j in _DIGIT_JOINTS["thumb"]:
        flex[j - 1] = t_flex
        abd[j - 1] = y                  # toward the index finger
        twist[j - 1] = skel.thumb_dir
    palmar = _unit(np.cross(y, skel.thumb_dir))          # swings the thumb out of the palm plane
    # opposition: palmar abduction with pronation (the thumb nail turns away from the palm)
    opposition = _unit(0.75 * palmar + 0.2 * y + 0.5 * skel.thumb_dir)
    return {"flex": flex, "abd": abd, "twist": twist, "opposition": opposition, "palmar": palmar}


def _synergy_poses(rng: np.random.Generator, n: int, axes: dict[str, np.ndarray]) -> np.ndarray:
    """(n, 45) natural right-hand poses (radians), from hand synergies (joint-angle couplings):
    whole-hand flexion, a radial-ulnar flexion gradient, per-finger flexion and extended fingers,
    thumb opposition and adduction, spread (less in a fist), hook (PIP vs MCP) and PIP-DIP coupling,
    plus small independent noise."""
    g = 1.4 * rng.beta(1.6, 1.6, n) - 0.25                      # whole-hand closing, mean ~0.45
    grad = rng.normal(0.0, 0.28, n)                             # radial vs ulnar fingers
    hook = rng.normal(0.0, 0.18, n)
    spread = rng.normal(0.3, 0.35, n) - 0.5 * g
    pose = np.zeros((n, 15, 3))
    cascade = {"index": 0.95, "middle": 1.0, "ring": 1.04, "little": 1.08}
    gradient = {"index": 1.0, "middle": 0.4, "ring": -0.4, "little": -1.0}
    spread_dir = {"index": 0.3, "middle": 0.05, "ring": -0.15, "little": -0.4}
    for name in _FINGERS:
        level = g + gradient[name] * grad + rng.normal(0.0, 0.12, n)
        straight = rng.random(n) < 0.08                         # a pointing / extended finger
        level = np.where(straight, rng.uniform(-0.2, 0.1, n), level) * cascade[name]
        h = hook + rng.normal(0.0, 0.05, n)
        mcp = np.clip(1.2 * level - 0.35 * h, -0.35, 1.6)
        pip = np.clip(1.5 * level + 0.6 * h, -0.05, 1.9)
        dip = np.clip(0.62 * pip + rng.normal(0.0, 0.06, n), -0.1, 1.3)
        abd = spread * spread_dir[name] + rng.normal(0.0, 0.04, n)
        for j, ang in zip(_DIGIT_JOINTS[name], (mcp, pip, dip), strict=True):
            pose[:, j - 1] = ang[:, None] * axes["flex"][j - 1]
        pose[:, _DIGIT_JOINTS[name][0] - 1] += abd[:, None] * axes["abd"][_DIGIT_JOINTS[name][0] - 1]
    opp = 0.15 * g + rng.normal(0.15, 0.25, n)                  # thumb toward the finger pads
    add = 0.5 * g + rng.normal(0.0, 0.12, n)                     # thumb toward the index (fist)
    tflex = 0.6 * g + rng.normal(0.05, 0.18, n)
    t1, t2, t3 = (j - 1 for j in _DIGIT_JOINTS["thumb"])
    pose[:, t1] = (opp[:, None] * axes["opposition"] + add[:, None] * axes["abd"][t1]
                   + (0.2 * tflex)[:, None] * axes["flex"][t1])
    pose[:, t2] = np.clip(0.8 * tflex, -0.2, 1.2)[:, None] * axes["flex"][t2]
    pose[:, t3] = np.clip(1.0 * tflex + rng.normal(0.0, 0.1, n), -0.3, 1.4)[:, None] * axes["flex"][t3]
    pose += rng.normal(0.0, 0.025, pose.shape)
    return pose.reshape(n, 45)


def _random_joint_poses(rng: np.random.Generator, n: int, axes: dict[str, np.ndarray]) -> np.ndarray:
    """(n, 45) poses with independent joint angles over each joint's range (for the DQS fit)."""
    lo = np.array([-0.35, -0.05, -0.1] * 4 + [-0.3, -0.2, -0.3])   # MANO order: 4 fingers, thumb
    hi = np.array([1.6, 1.9, 1.3] * 4 + [0.6, 1.0, 1.3])
    flex = lo + (hi - lo) * rng.random((n, 15))
    abd = rng.normal(0.0, 0.15, (n, 15)) * np.array([1.0, 0.3, 0.3] * 5)
    twist = rng.normal(0.0, 0.06, (n, 15))
    pose = (flex[..., None] * axes["flex"] + abd[..., None] * axes["abd"] + twist[..., None] * axes["twist"])
    pose[:, 12] += rng.uniform(-0.2, 0.8, n)[:, None] * axes["opposition"]
    return pose.reshape(n, 45)


def _pose_pca(poses: np.ndarray, axes: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """PCA of (N, 45) poses -> components (45, 45) as rows, mean (45,), coefficients (N, 45)."""
    mean = poses.mean(0)
    centred = poses - mean
    cov = centred.T @ centred / len(poses)
    evals, evecs = np.linalg.eigh(cov)
    comps = evecs[:, ::-1].T.copy()
    finger_flex = axes["flex"].copy()
    finger_flex[12:] = 0.0
    load = np.einsum("cjk,jk->c", comps.reshape(45, 15, 3), finger_flex)     # finger flexion loading
    for c in range(45):
        ref = load[c] if c == 0 else comps[c, np.argmax(np.abs(comps[c]))]
        if ref < 0:
            comps[c] *= -1.0
    return comps, mean, centred @ comps.T


# ------------------------------------------------------------------------------------------------
# Skinning in numpy: Rodrigues, forward kinematics, LBS (Eq. 2) and dual-quaternion skinning.
# ------------------------------------------------------------------------------------------------
def _rodrigues(aa: np.ndarray) -> np.ndarray:
    """(..., 3) axis-angle (radians) -> (..., 3, 3) rotation matrices."""
    theta = np.linalg.norm(aa, axis=-1)
    k = aa / np.where(theta < 1e-12, 1.0, theta)[..., None]
    x, y, z = k[..., 0], k[..., 1], k[..., 2]
    theta = theta[..., None, None]
    zero = np.zeros_like(x)
    kx = np.stack([zero, -z, y, z, zero, -x, -y, x, zero], -1).reshape(*aa.shape[:-1], 3, 3)
    return np.eye(3) + np.sin(theta) * kx + (1.0 - np.cos(theta)) * (kx @ kx)


def _rigid_transforms(rot: np.ndarray, joints: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Forward kinematics: local rotations (B, 16, 3, 3), rest joints (B, 16, 3) ->
    skinning transforms A (B, 16, 3, 4) that map rest positions to posed ones, posed joints (B, 16, 3)."""
    rg, pg = [rot[:, 0]], [joints[:, 0]]
    for j in range(1, 16):
        p = PARENTS[j]
        rg.append(rg[p] @ rot[:, j])
        pg.append(pg[p] + (rg[p] @ (joints[:, j] - joints[:, p])[..., None])[..., 0])
    r, pos = np.stack(rg, 1), np.stack(pg, 1)
    trans = pos - (r @ joints[..., None])[..., 0]
    return np.concatenate([r, trans[..., None]], -1), pos


def numpy_lbs(model: dict, hand_pose: np.ndarray | None = None, betas: np.ndarray | None = None,
              global_orient: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """M(β, θ) of Eqs. 2-5 in numpy (a small reference for plots; the layer is keyhand.geometry.mano).

    Args:
        model: a MANO-format dict (from :func:`build_proxy_hand` or an official file).
        hand_pose: (B, 45) or (45,) axis-angle of the 15 finger joints (radians), used as given
            (add ``model["hands_mean"]`` yourself for MANO's non-flat mean).
        betas: (B, n) or (n,) shape coefficients (Eq. 4).
        global_orient: (B, 3) or (3,) wrist rotation.
    Returns:
        vertices (B, V, 3) and joints (B, 16, 3), metres.
    """
    hp = np.zeros((1, 45)) if hand_pose is None else np.atleast_2d(np.asarray(hand_pose, float))
    bsz = hp.shape[0]
    go = np.zeros((bsz, 3)) if global_orient is None else np.atleast_2d(np.asarray(global_orient, float))
    go = np.broadcast_to(go, (bsz, 3))
    reg = model["J_regressor"]
    reg = reg.toarray() if scipy.sparse.issparse(reg) else np.asarray(reg)
    v = np.broadcast_to(np.asarray(model["v_template"], float), (bsz, *np.shape(model["v_template"])))
    if betas is not None:
        b = np.atleast_2d(np.asarray(betas, float))
        v = v + np.einsum("vcn,bn->bvc", model["shapedirs"][..., : b.shape[1]], b)     # Eq. 4
    joints = np.einsum("jv,bvc->bjc", reg, v)
    rot = _rodrigues(np.concatenate([go, hp], 1).reshape(bsz, 16, 3))
    feat = (rot[:, 1:] - np.eye(3)).reshape(bsz, 135)
    v = v + (feat @ np.reshape(model["posedirs"], (-1, 135)).T).reshape(bsz, -1, 3)     # Eqs. 3, 5
    a, posed_joints = _rigid_transforms(rot, joints)
    m = np.einsum("vj,bjrc->bvrc", model["weights"], a)                                   # Eq. 2
    return (m[..., :3] @ v[..., None])[..., 0] + m[..., 3], posed_joints


def _quat_from_matrix(r: np.ndarray) -> np.ndarray:
    """(..., 3, 3) -> (..., 4) unit quaternions (w, x, y, z), numerically robust branch choice."""
    m = {(i, j): r[..., i, j] for i in range(3) for j in range(3)}
    tr = m[0, 0] + m[1, 1] + m[2, 2]
    cand = np.stack([                                     # 4 * q * q_k for k = w, x, y, z (rows)
        np.stack([1 + tr, m[2, 1] - m[1, 2], m[0, 2] - m[2, 0], m[1, 0] - m[0, 1]], -1),
        np.stack([m[2, 1] - m[1, 2], 1 + 2 * m[0, 0] - tr, m[0, 1] + m[1, 0], m[0, 2] + m[2, 0]], -1),
        np.stack([m[0, 2] - m[2, 0], m[0, 1] + m[1, 0], 1 + 2 * m[1, 1] - tr, m[1, 2] + m[2, 1]], -1),
        np.stack([m[1, 0] - m[0, 1], m[0, 2] + m[2, 0], m[1, 2] + m[2, 1], 1 + 2 * m[2, 2] - tr], -1),
    ], -2)                                                # (..., 4, 4)
    diag = np.stack([tr, m[0, 0], m[1, 1], m[2, 2]], -1)
    best = np.take_along_axis(cand, np.argmax(diag, -1)[..., None, None], -2)[..., 0, :]
    return best / np.linalg.norm(best, axis=-1, keepdims=True)


def _quat_mul(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Hamilton product of (..., 4) quaternions (w, x, y, z)."""
    aw, av = a[..., :1], a[..., 1:]
    bw, bv = b[..., :1], b[..., 1:]
    w = aw * bw - (av * bv).sum(-1, keepdims=True)
    return np.concatenate([w, aw * bv + bw * av + np.cross(av, bv)], -1)


def _dqs(weights: np.ndarray, a: np.ndarray, rest: np.ndarray) -> np.ndarray:
    """Dual-quaternion skinning: weights (V, 16), transforms (B, 16, 3, 4), rest (V, 3) -> (B, V, 3)."""
    qr = _quat_from_matrix(a[..., :3])                                      # (B, 16, 4)
    t = np.concatenate([np.zeros((*a.shape[:2], 1)), a[..., 3]], -1)
    qd = 0.5 * _quat_mul(t, qr)
    ref = qr[:, np.argmax(weights, 1)]                                      # (B, V, 4) dominant bone
    sign = np.sign(np.einsum("bvk,bjk->bvj", ref, qr))
    sign[sign == 0] = 1.0
    ws = weights[None] * sign                                               # (B, V, 16)
    br = np.einsum("bvj,bjk->bvk", ws, qr)
    bd = np.einsum("bvj,bjk->bvk", ws, qd)
    norm = np.linalg.norm(br, axis=-1, keepdims=True)
    br, bd = br / norm, bd / norm
    w, vec = br[..., :1], br[..., 1:]
    dw, dvec = bd[..., :1], bd[..., 1:]
    trans = 2.0 * (w * dvec - dw * vec + np.cross(vec, dvec))
    rot_v = rest + 2.0 * np.cross(vec, np.cross(vec, rest) + w * rest)
    return rot_v + trans


def _fit_posedirs(v: np.ndarray, joints: np.ndarray, weights: np.ndarray, poses: np.ndarray,
                  ridge: float = 1e-3) -> np.ndarray:
    """P_n of Eq. 5, (V, 3, 135): pose correctives so that LBS of T̂ + B_P(θ) matches DQS of T̂.

    For vertex i, LBS is affine in its rest position, v_i' = A_i(θ) (T_i + o_i) + t_i, so the needed
    rest-space offset is o_i = A_i^{-1} (DQS_i(θ) - t_i) - T_i; it is regressed (ridge) on the pose
    features (R_k(θ) - I) of the joints that skin that vertex, over the given poses (N, 45).
    """
    n = len(poses)
    full = np.concatenate([np.zeros((n, 3)), poses], 1).reshape(n, 16, 3)
    rot = _rodrigues(full)
    a, _ = _rigid_transforms(rot, np.broadcast_to(joints, (n, 16, 3)))
    m = np.einsum("vj,bjrc->bvrc", weights, a)                              # (N, V, 3, 4)
    target = _dqs(weights, a, v)
    offsets = np.linalg.solve(m[..., :3], (target - m[..., 3])[..., None])[..., 0] - v   # (N, V, 3)
    feat = (rot[:, 1:] - np.eye(3)).reshape(n, 135)
    posedirs = np.zeros((len(v), 3, 135))
    active = weights[:, 1:] > 0
    groups: dict[tuple[int, ...], list[int]] = {}
    for i in range(len(v)):
        key = tuple(np.flatnonzero(active[i]).tolist())
        if len(key) + int(weights[i, 0] > 0) > 1:
            groups.setdefault(key, []).append(i)
    for key, verts in groups.items():
        cols = np.concatenate([np.arange(9 * k, 9 * k + 9) for k in key])
        x = feat[:, cols]
        y = offsets[:, verts].reshape(n, -1)
        gram = x.T @ x / n + ridge * np.eye(len(cols))
        coef = np.linalg.solve(gram, x.T @ y / n)                            # (k, nv * 3)
        posedirs[np.ix_(verts, [0, 1, 2], cols)] = coef.reshape(len(cols), len(verts), 3).transpose(1, 2, 0)
    return posedirs


# ------------------------------------------------------------------------------------------------
# The model file.
# ------------------------------------------------------------------------------------------------
def _tip_permutation(topo: _Topology) -> np.ndarray:
    """order[new] = old vertex id, so that each digit's tip lands at TIP_VERTEX_IDS[digit]."""
    order = -np.ones(topo.n, np.int64)
    tips = {topo.tips[name]: TIP_VERTEX_IDS[name] for name in _DIGITS}
    for old, new in tips.items():
        order[new] = old
    rest = [i for i in range(topo.n) if i not in tips]
    order[order < 0] = rest
    return order


def _mirror_z(model: dict) -> dict:
    """Left <-> right hand: reflect z -> -z, keep faces outward, mirror the blend shapes and poses."""
    s = np.array([1.0, 1.0, -1.0])
    out = dict(model)
    out["v_template"] = model["v_template"] * s
    out["f"] = np.ascontiguousarray(model["f"][:, ::-1])
    out["shapedirs"] = model["shapedirs"] * s[None, :, None]
    # (R' - I) = M (R - I) M for M = diag(s): P'[v, c, k, a, b] = s_c s_a s_b P[v, c, k, a, b]
    sign = s[:, None, None, None] * s[None, None, :, None] * s[None, None, None, :]
    out["posedirs"] = (model["posedirs"].reshape(-1, 3, 15, 3, 3) * sign).reshape(-1, 3, 135)
    aa = np.array([-1.0, -1.0, 1.0])                  # axis-angle under the reflection z -> -z
    out["hands_components"] = (model["hands_components"].reshape(45, 15, 3) * aa).reshape(45, 45)
    out["hands_mean"] = (model["hands_mean"].reshape(15, 3) * aa).reshape(45)
    out["J"] = out["J_regressor"] @ out["v_template"]
    return out


def build_proxy_hand(seed: int = 0, side: str = "right") -> dict[str, Any]:
    """The proxy hand as a MANO-format dict (keys, dtypes and shapes of the official pickle).

    Args:
        seed: seeds the synthetic pose samples (PCA pose space and the pose-corrective fit); the
            template geometry, weights and shape directions do not depend on it.
        side: "right" or "left" (mirror images of each other, z -> -z).
    Returns:
        dict with 'v_template' (778, 3) m, 'f' (1552, 3) uint32, 'J_regressor' csc (16, 778),
        'J' (16, 3) m, 'kintree_table' (2, 16) int64, 'weights' (778, 16), 'shapedirs'
        (778, 3, 10) m per unit β, 'posedirs' (778, 3, 135) m per unit (R - I) entry,
        'hands_components' (45, 45) rows, 'hands_mean' (45,) rad, 'hands_coeffs' (N, 45),
        'bs_style', 'bs_type' and 'keyhand_meta'.
    """
    if side not in ("right", "left"):
        raise ValueError(f"proxy hand side must be 'right' or 'left', got {side!r}")
    topo = _build_topology()
    q0 = _nominal_params()
    v, skel = _geometry(topo, q0)
    faces = _triangulate(topo, v)
    if (topo.n, len(faces)) != (N_VERTICES, N_FACES):
        raise RuntimeError(f"proxy hand has {topo.n} vertices / {len(faces)} faces, "
                           f"expected {N_VERTICES} / {N_FACES}")
    shapedirs = np.zeros((topo.n, 3, len(SHAPE_DIRECTIONS)))
    for k, std in enumerate(SHAPE_STD):
        dq = np.zeros_like(q0)
        dq[k] = std
        shapedirs[..., k] = (_geometry(topo, q0 + dq)[0] - _geometry(topo, q0 - dq)[0]) / 2.0
    reg = _joint_regressor(topo, v, skel)
    weights = _skinning_weights(topo, v * 100.0, skel)
    axes = _pose_axes(skel)
    rng = np.random.Generator(np.random.PCG64(seed))
    comps, mean, coeffs = _pose_pca(_synergy_poses(rng, 1000, axes), axes)
    fit_poses = np.concatenate([_synergy_poses(rng, 300, axes), _random_joint_poses(rng, 200, axes)])
    posedirs = _fit_posedirs(v, reg @ v, weights, fit_poses)

    order = _tip_permutation(topo)
    inverse = np.argsort(order)
    reg_csc = scipy.sparse.csc_matrix(reg[:, order])
    reg_csc.sort_indices()
    kintree = np.array([[4294967295] + list(PARENTS[1:]), list(range(16))], dtype=np.int64)
    model: dict[str, Any] = {
        "v_template": np.ascontiguousarray(v[order], dtype=np.float64),
        "f": inverse[faces].astype(np.uint32),
        "J_regressor": reg_csc,
        "J": None,
        "kintree_table": kintree,
        "weights": np.ascontiguousarray(weights[order]),
        "shapedirs": np.ascontiguousarray(shapedirs[order]),
        "posedirs": np.ascontiguousarray(posedirs[order]),
        "hands_components": comps,
        "hands_mean": mean,
        "hands_coeffs": coeffs,
        "bs_style": "lbs",
        "bs_type": "lrotmin",
    }
    model["J"] = reg_csc @ model["v_template"]
    if side == "right":  # the generator's frame builds the thumb on +z: a left hand
        model = _mirror_z(model)
    model["keyhand_meta"] = {
        "generator": "keyhand proxy hand",
        "version": PROXY_VERSION,
        "seed": int(seed),
        "side": side,
        "units": "m",
        "tip_vertex_ids": [TIP_VERTEX_IDS[name] for name in _DIGITS],
        "shape_directions": list(SHAPE_DIRECTIONS),
        "shape_std": [float(x) for x in SHAPE_STD],
        "joint_names": list(JOINT_NAMES),
    }
    return model


def write_proxy_hand(path: str | os.PathLike, seed: int = 0, side: str = "right") -> Path:
    """Write :func:`build_proxy_hand` as a MANO pickle (protocol 2), atomically; returns the path.

    Name it ``MANO_RIGHT.pkl`` / ``MANO_LEFT.pkl``: smplx infers the side from the file name.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    data = pickle.dumps(build_proxy_hand(seed=seed, side=side), protocol=2)
    return atomic_write_bytes(path, data)


# ------------------------------------------------------------------------------------------------
# A look at it.
# ------------------------------------------------------------------------------------------------
_VIEWS = (("dorsal", 90.0, -90.0), ("side (thumb)", 0.0, -90.0), ("front", 0.0, 0.0))


def render_views(model: dict, out_png: str | os.PathLike,
                 poses: Sequence[tuple[str, np.ndarray]] | None = None,
                 views: Sequence[tuple[str, float, float]] = _VIEWS) -> Path:
    """Render the hand in a few poses (rows) x three views (dorsal, thumb side, front) to a PNG.

    Args:
        model: a MANO-format dict (:func:`build_proxy_hand`, or an official file's contents).
        out_png: output path (about 1200 x 400*rows pixels).
        poses: (name, (45,) axis-angle) rows, used as given; default: the flat hand (zero pose,
            flat mean) and a fist (``hands_mean + 2.5 * hands_components[0]``).
        views: (title, elevation, azimuth) columns in degrees, in a plot frame where x is the
            fingers' direction, -y the thumb side and z the dorsum.
    Uses the numpy LBS of :func:`numpy_lbs` (Eqs. 2-5) and Lambert shading from face normals.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from mpl_toolkits.mplot3d.art3d import Poly3DCollection

    if poses is None:
        fist = np.asarray(model["hands_mean"]) + 2.5 * np.asarray(model["hands_components"])[0]
        poses = (("flat hand", np.zeros(45)), ("fist (mean + 2.5 PC1)", fist))
    faces = np.asarray(model["f"], dtype=np.int64)
    # hand frame -> plot frame (a rotation): plot x = fingers, plot y = -thumb side, plot z = dorsum
    to_plot = np.array([[1.0, 0.0, 0.0], [0.0, 0.0, -1.0], [0.0, 1.0, 0.0]])
    fig = plt.figure(figsize=(4 * len(views), 4 * len(poses)), dpi=100)
    skin = np.array([0.88, 0.68, 0.56])
    for row, (name, pose) in enumerate(poses):
        verts, _ = numpy_lbs(model, np.asarray(pose, float)[None])
        v = verts[0] @ to_plot.T
        v = v - (v.max(0) + v.min(0)) / 2
        half = np.abs(v).max() * 1.02
        tri = v[faces]
        normal = _unit(np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0]))
        for col, (view, elev, azim) in enumerate(views):
            ax = fig.add_subplot(len(poses), len(views), len(views) * row + col + 1, projection="3d")
            e, a = np.radians(elev), np.radians(azim)
            eye = np.array([np.cos(e) * np.cos(a), np.cos(e) * np.sin(a), np.sin(e)])
            light = _unit(eye + 0.35 * np.array([0.3, 0.3, 1.0]))
            shade = 0.22 + 0.78 * np.clip(normal @ light, 0.0, 1.0)
            colors = np.clip(shade[:, None] * skin, 0, 1)
            poly = Poly3DCollection(tri, facecolors=colors, edgecolors=colors * 0.8, linewidths=0.15)
            ax.add_collection3d(poly)
            ax.set_proj_type("ortho")
            ax.view_init(elev=elev, azim=azim)
            for setter in (ax.set_xlim, ax.set_ylim, ax.set_zlim):
                setter(-half, half)
            ax.set_box_aspect((1, 1, 1), zoom=1.35)
            ax.set_axis_off()
            ax.set_title(f"{name}: {view}", fontsize=10)
    fig.subplots_adjust(left=0.0, right=1.0, top=0.95, bottom=0.0, wspace=0.0, hspace=0.08)
    out = Path(out_png)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out
