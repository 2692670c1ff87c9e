"""CPU vs device agreement of gradients (the GPU check's ``gradients`` section and tests/test_cuda.py).

    from pipeline.gpu_agree import he_agreement, weight_agreement, agrees, strict_fp32
    with strict_fp32():
        figs = he_agreement("nmr", torch.device("cuda"))   # {"t": {"value": ..., "floor": ...}, ...}
    ok = agrees("grad", figs["t"])

Forward outputs agreeing does not show that a backward does: the NMR backward (Eqs. 8-11), the soft renderer's
custom backward and MANO's skinning backward are where a CUDA path most often differs. Each comparison runs the
same inputs and weights three times: the reference on the CPU in fp32, the CPU in float64 and the candidate on
``device`` in fp32 (on CUDA with TF32 off and cuDNN deterministic: :func:`strict_fp32`). Each figure is the
candidate's difference to the CPU fp32 reference (``value``) beside fp32's own rounding error, CPU fp32 vs CPU
float64 (``floor``); on a machine without CUDA the candidate is the float64 run, so value = floor.

- HE (``he_agreement``, per render mode): relative L2 difference ``‖g − g_ref‖ / ‖g_ref‖`` of the gradients of
  the HE's Eq. 12 terms (L_3D, L_2D, L_M, L_Reg, every weight 1) with respect to t, s, R, θ, β through MANO, the
  skeleton adaptation, the projection and the renderer; the 2D joints' max abs difference (px); the
  silhouette's changed pixels (coverage flipped: difference > 0.5) and its mean abs difference.
- Weights (``weight_agreement``): relative L2 difference of the concatenated gradients of the SFE's and of the
  VE's weights for the whole Eq. 12 loss of one training-mode forward.

Why a floor and not a fixed bound: how far fp32 lands from the exact gradient depends on the conditioning, not
on the device. On a randomly initialised framework (default profile at 64², batch 2, AMD EPYC, torch
2.13.0+cpu) CPU fp32 is 1.6 % (SFE) to 37 % (VE) away from float64 in relative L2: BatchNorm over a few values
at the hourglass's 1×1 level and the heatmap loss's cancellations amplify rounding. The HE alone is better
conditioned: nmr 2e-5 - 4e-4 per group, soft 4e-8 - 3e-6, 2D 3e-5 px, no silhouette pixel changed (batch 4).
A device passes when it is no further from the CPU than :data:`FACTOR` times fp32's own error (or within the
absolute :data:`MIN_TOL` when that error is tiny): another device rounds differently but by the same order,
while a broken kernel or backward is off by orders more.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
from typing import Any

import torch
from torch import Tensor

#: Gradient groups of the HE's inputs (keyhand.model.ve.ViewParams order).
VIEW_GROUPS = ("t", "s", "R", "theta", "beta")
#: A device passes when value <= max(FACTOR × floor, MIN_TOL[kind]) (module docstring).
FACTOR = 10.0
MIN_TOL = {"grad": 1e-5, "weights": 1e-5, "joints_2d_px": 1e-3, "silhouette_mean": 1e-4}
#: Changed silhouette pixels allowed, as a fraction of the pixels (a pixel centre on an edge may flip).
SILHOUETTE_FLIP_FRACTION = 5e-4


def agrees(kind: str, fig: dict[str, float]) -> bool:
    """Whether ``fig`` ({"value", "floor"[, "pixels"]}) passes for ``kind`` ("grad", "weights", "joints_2d_px",
    "silhouette_mean", "silhouette_px")."""
    if kind == "silhouette_px":
        return fig["value"] <= max(fig["floor"], SILHOUETTE_FLIP_FRACTION * fig["pixels"])
    return fig["value"] <= max(FACTOR * fig["floor"], MIN_TOL[kind])


def describe(kind: str) -> str:
    """The pass rule of ``kind`` in words (the notes of the check's cells)."""
    if kind == "silhouette_px":
        return f"pass: at most {SILHOUETTE_FLIP_FRACTION:.2%} of the pixels (or the floor's count)"
    return f"pass: ≤ max({FACTOR:g} × the fp32 floor, {MIN_TOL[kind]:g})"


@contextlib.contextmanager
def strict_fp32():
    """fp32 means fp32 on CUDA: no TF32, and cuDNN's deterministic kernels rather than whatever its autotuner
    picks (FFT/Winograd convolutions round differently), so a comparison tests the CUDA path, not the
    algorithm. The flags are restored on exit; a no-op for CPU work."""
    flags = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32,
             torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic)
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic = False, True
    try:
        yield
    finally:
        (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32,
         torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic) = flags


def rel_l2(a: Tensor, ref: Tensor) -> float:
    """``‖a − ref‖ / ‖ref‖`` in float64 (0 when both are 0)."""
    a, ref = a.detach().double().cpu(), ref.detach().double().cpu()
    den = float(ref.norm())
    num = float((a - ref).norm())
    return num / den if den > 0 else (0.0 if num == 0 else float("inf"))


def view_params(batch_size: int, pca_comps: int = 45, seed: int = 0):
    """A plausible batch of VE outputs: a hand near the crop's centre at the VE's initial scale, posed and
    shaped away from the mean (so every MANO gradient is non-zero) and seen from a tilted view."""
    from keyhand.model.ve import S_INIT, ViewParams

    g = torch.Generator().manual_seed(seed)
    return ViewParams(t=0.05 * torch.randn(batch_size, 2, generator=g),
                      s=S_INIT * (1 + 0.1 * torch.rand(batch_size, 1, generator=g)),
                      rot=0.3 * torch.randn(batch_size, 3, generator=g),
                      theta=0.5 * torch.randn(batch_size, pca_comps, generator=g),
                      beta=0.5 * torch.randn(batch_size, 10, generator=g))


def hand_batch(batch_size: int, image_size: int = 256, mask_size: int = 64, seed: int = 1) -> dict[str, Tensor]:
    """Targets for the HE's terms of Eq. 12 (3D and 2D joints, a mask), random but fixed by ``seed``."""
    g = torch.Generator().manual_seed(seed)
    ones = torch.ones(batch_size)
    return {"joints_3d": 30 * torch.randn(batch_size, 21, 3, generator=g),
            "joints_2d": image_size * torch.rand(batch_size, 21, 2, generator=g),
            "mask": (torch.rand(batch_size, 1, mask_size, mask_size, generator=g) > 0.5).float(),
            "visibility": torch.ones(batch_size, 21), "image": torch.zeros(batch_size, 3, image_size, image_size),
            "has_mask": ones, "has_joints_2d": ones, "has_joints_3d": ones}


def _he_pass(he, v0, batch: dict[str, Tensor], w, device: torch.device, dtype: torch.dtype) -> dict[str, Any]:
    from keyhand.losses import multitask_loss

    he = copy.deepcopy(he).to(device=device, dtype=dtype)
    v = type(v0)(*(x.to(device=device, dtype=dtype).clone().requires_grad_() for x in v0))
    out = he(v, render=True)
    fields = {"joints_3d": out.joints_3d, "joints_2d": out.joints_2d, "silhouette": out.silhouette,
              "theta": v.theta, "beta": v.beta}
    b = {k: (x.to(device=device, dtype=dtype) if x.is_floating_point() else x.to(device)) for k, x in batch.items()}
    loss, _ = multitask_loss(_Out(**fields), b, w)
    grads = torch.autograd.grad(loss, list(v))
    return {"grads": dict(zip(VIEW_GROUPS, grads, strict=True)), "joints_2d": out.joints_2d.detach(),
            "silhouette": out.silhouette.detach(), "loss": float(loss.detach())}


@dataclasses.dataclass
class _Out:
    """The fields of a FrameworkOutput that the HE's terms of Eq. 12 read (SFE terms off)."""

    joints_3d: Tensor
    joints_2d: Tensor
    silhouette: Tensor
    theta: Tensor
    beta: Tensor


def he_loss_weights():
    """Eq. 12 as the paper weighs it (every weight 1) with L_SFE off: the HE's terms only."""
    from keyhand.losses import LossWeights

    return LossWeights(sfe=0.0, joints_3d=1.0, joints_2d=1.0, mask=1.0, reg=1.0)


def he_agreement(mode: str, device: torch.device, batch_size: int = 4, image_size: int = 256,
                 render_size: int = 64, mano_path: str | None = None) -> dict[str, dict[str, float]]:
    """CPU fp32 vs ``device`` fp32 (and vs CPU float64, the floor) for the HE: MANO with 45 PCA components
    (the proxy hand unless ``mano_path``), skeleton adaptation, weak perspective, the ``mode`` renderer.

    Returns ``{figure: {"value", "floor"}}`` for each of :data:`VIEW_GROUPS` (relative L2 of the gradient),
    ``joints_2d_px`` (max abs), ``silhouette_px`` (changed pixels; also ``"pixels"``: how many there are),
    ``silhouette_mean`` (mean abs); and ``coverage``: the reference silhouette's mean (a hand was drawn).
    """
    from keyhand.model.he import HandEstimator

    torch.manual_seed(0)
    he = HandEstimator(pca_comps=45, image_size=image_size, render_size=render_size, render_mode=mode,
                       mano_path=mano_path)
    v0 = view_params(batch_size)
    batch = hand_batch(batch_size, image_size, render_size)
    w = he_loss_weights()
    cpu = torch.device("cpu")
    ref = _he_pass(he, v0, batch, w, cpu, torch.float32)
    exact = _he_pass(he, v0, batch, w, cpu, torch.float64)
    got = exact if device.type == "cpu" else _he_pass(he, v0, batch, w, device, torch.float32)

    def diffs(run: dict[str, Any]) -> dict[str, float]:
        d2 = (run["joints_2d"].double().cpu() - ref["joints_2d"].double()).abs()
        ds = (run["silhouette"].double().cpu() - ref["silhouette"].double()).abs()
        return {**{k: rel_l2(run["grads"][k], ref["grads"][k]) for k in VIEW_GROUPS},
                "joints_2d_px": float(d2.max()), "silhouette_px": int((ds > 0.5).sum()),
                "silhouette_mean": float(ds.mean())}

    value, floor = diffs(got), diffs(exact)
    figs: dict[str, dict[str, float]] = {k: {"value": value[k], "floor": floor[k]} for k in value}
    figs["silhouette_px"]["pixels"] = int(ref["silhouette"].numel())
    figs["coverage"] = {"value": float(ref["silhouette"].mean()), "floor": 0.0}
    return figs


def weight_agreement(model, batch: dict[str, Tensor], device: torch.device, w=None) -> dict[str, dict[str, float]]:
    """CPU fp32 vs ``device`` fp32 (and vs CPU float64, the floor): relative L2 of the gradients of the SFE's and
    the VE's weights for the whole Eq. 12 loss (``w``: every weight 1, the paper's, when None) of one
    training-mode forward of ``model`` (a Framework, left unchanged) on ``batch``; also ``loss_rel``, the loss's
    relative difference. Returns ``{"sfe" | "ve" | "loss_rel": {"value", "floor"}}``."""
    from trainers.train import full_step

    if w is None:
        from keyhand.losses import LossWeights

        w = LossWeights(sfe=1.0, heatmap=1.0, silhouette=1.0, joints_3d=1.0, joints_2d=1.0, mask=1.0, reg=1.0)

    def run(dev: torch.device, dt: torch.dtype) -> tuple[float, dict[str, Tensor]]:
        m = copy.deepcopy(model).to(device=dev, dtype=dt).train()
        b = {k: (x.to(device=dev, dtype=dt) if x.is_floating_point() else x.to(dev)) for k, x in batch.items()}
        loss, _ = full_step(m, b, w)
        loss.backward()
        flat = {}
        for part in ("sfe", "ve"):
            mod = getattr(m, part, None)
            if mod is None:
                continue
            gs = [p.grad.detach().reshape(-1).double().cpu() for p in mod.parameters() if p.grad is not None]
            flat[part] = torch.cat(gs) if gs else torch.zeros(0, dtype=torch.float64)
        del m
        return float(loss.detach()), flat

    cpu = torch.device("cpu")
    ref_loss, ref = run(cpu, torch.float32)
    exact_loss, exact = run(cpu, torch.float64)
    got_loss, got = (exact_loss, exact) if device.type == "cpu" else run(device, torch.float32)
    figs = {part: {"value": rel_l2(got[part], ref[part]), "floor": rel_l2(exact[part], ref[part])} for part in ref}
    den = max(abs(ref_loss), 1e-12)
    figs["loss_rel"] = {"value": abs(got_loss - ref_loss) / den, "floor": abs(exact_loss - ref_loss) / den}
    return figs
