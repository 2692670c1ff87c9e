"""The multi-task loss of §3.5 (Eqs. 12-18) and the SFE pre-training loss (Eqs. 13-14).

    from keyhand.losses import LossWeights, multitask_loss, sfe_loss
    w = LossWeights()                                   # defaults below; 0 switches a term off
    total, terms = multitask_loss(model(batch["image"]), batch, w)
    total.backward()                                    # (the trainer checks every term is finite first)

    total, terms = sfe_loss(heatmaps, silhouettes, batch, w)   # SFE pre-training (Framework.sfe_forward)

Eq. 12:  L = w_sfe·L_SFE + w_3d·L_3D + w_2d·L_2D + w_M·L_M + w_reg·L_Reg
Eq. 14:  L_SFE = Σ_{h ∈ hourglasses} (w_heatmap·L_H(h) + w_silhouette·L_S(h))

The paper gives neither weights nor normalisations; Eq. 12 is an unweighted sum of squared/L1 norms whose
raw magnitudes differ by orders of magnitude (a squared 3D error in mm² is ~10⁴, a per-pixel BCE ~0.7). keyhand
chooses the normalisation and units of every term so that each is O(0.1–1) at initialisation with weight 1.
Values are not what trains the network, though: gradients are. The default weights balance the terms by their
GRADIENT on the VE outputs (R, θ, β), measured while overfitting 32 synthetic images: all 1 except L_M (0.01)
and L_Reg (0.001). The measurements and the before/after fits are in docs/hand_estimator_fit.md.
"Init" values below were measured with the untrained Framework on synthetic STB crops (paper configuration,
256² input; and a tiny one, 64² input); L_SFE sums two hourglasses, so its parts are twice the per-hourglass values:

* heatmap L_H (Eq. 13 L2): squared error mean over the h × h pixels of each map, then over the visible
  joints, v_bj = visibility · has_joints_2d (occluded / out-of-crop joints have all-zero target maps and are
  not trained towards "no joint"). Init: ≈ the per-pixel variance of the untrained prediction, measured 0.17
  per hourglass at the paper configuration (64² maps) and 0.3 at a tiny one (16²). An all-zero prediction
  scores πσ²/h² (0.005 at 64², σ = 2.5), so a trained value is ~10⁻³; Adam's per-parameter step size keeps
  the heatmap head learning at that scale (the usual stacked-hourglass MSE). A per-map normalisation by the
  target energy πσ² was considered and rejected: it is ~36 per hourglass at initialisation (the untrained
  maps carry ~35× the Gaussians' energy) and would swamp every other term.
  ``heatmap_form="softmax"`` (the default profile's; the paper profile keeps Eq. 13's L2): each predicted map
  is read as a distribution over its pixels (softmax) and fitted to the target normalised to sum 1 by KL
  divergence, mean over the visible maps. Init ≈ log(h²) − H(target) (≈ 2.2 at 32², σ = 2.5); 0 at a perfect
  fit. Why: with the L2 form a 2-minute SFE (360 steps of 16 synthetic crops, 128², 32 channels) stays at the
  trivial solution — arg-max 2D error 25-29 px on test crops, as far off as predicting every joint at its mean
  position (26 px), at weight 1, 21 or 200 — while the softmax form reaches 19 px (11 px on its training
  images), and the framework trained from it 47-50 mm EPE instead of 60 (docs/statistics.md "A working SFE").
  The maps stay heatmaps (their arg-max is the joint); the VE reads them as logits.
* silhouette L_S (Eq. 13 BCE): pixel-wise BCE of p(hand) = softmax(logits)[1] = σ(l₁ − l₀) against the mask
  target area-resized to the logits' side (soft border values kept); mean over pixels, then over samples with
  has_mask. Init: 0.73–0.76 per hourglass (0.69 for zero logits).
* joints_3d L_3D (Eq. 15): squared Euclidean distance between the root-relative (wrist = joint 0 subtracted
  from both) predicted R·J(β, θ) and annotated joints, in **decimetres²** (mm / 100), mean over the 21 joints,
  then over samples with has_joints_3d. 100 mm ≈ a palm length: an error the size of the hand costs ~1, a
  10 mm EPE costs 0.01, the scale of the 2D/mask terms once trained. (In mm² it would be ~10⁴ at init and
  swamp every other term; in m² ~10⁻⁴ and vanish.) Metrics stay in mm (:mod:`keyhand.metrics`). Init:
  1.6–2.2 (EPE ≈ 130 mm: the mean hand, R = identity, against randomly rotated synthetic hands).
* joints_2d L_2D (Eq. 16): L1 norm |Δu| + |Δv| of re-projected minus annotated 2D joints in **crop
  fractions** (crop px / image_size: 1 = the crop side; NDC would be twice that), mean over the visible
  joints (visibility · has_joints_2d). Init: 0.28–0.35.
  Default weight 0.1: an L1 term's gradient does not shrink as the fit improves while L_3D's (squared) does;
  at weight 1, once a network fits 32 hands to ~5 mm, L_2D's gradient on R, θ, β is 5.9× L_3D's (cosine
  0.42: it pulls towards the weak-perspective reading of perspective images) and floors the 3D fit. At 0.1
  it is ~0.6× L_3D's at the end and the fit reaches ~4 mm instead of ~5.5 (docs/hand_estimator_fit.md).
* mask L_M (Eq. 17): squared difference between the rendered silhouette (B, R, R) ∈ [0, 1] and the GrabCut
  mask resized to R = render_size, mean over pixels, then over samples with has_mask. Init: 0.24.
  Default weight 0.001: at weight 1 its (NMR-rule) gradient on R, θ, β is as large as L_3D's or larger, and
  unrelated to it (cosine ≈ 0, −0.4 at the start): a silhouette constrains the 2D outline, not the 3D pose,
  and even the ground-truth parameters score 0.04 against a GrabCut mask (IoU 0.83). At 0.01 it is ~1/10
  of L_3D's gradient early but as large as L_3D's once the fit is close (0.96×: L_3D's gradient shrinks with
  the error, L_M's does not, its minimum not being the ground truth); at 0.001 it stays ~1/10 to the end.
* reg L_Reg (Eq. 18): ‖β‖² + ‖θ‖² summed over the 10 + P components, mean over the batch (every sample).
  Default weight 0.001: its job (the paper's intent) is to keep pose and shape plausible, not to shrink
  them: the synthetic hands have ‖β‖² + ‖θ‖² ≈ 12, and 0.01 (the former default) pulled ‖β‖ from 3.1 to
  ≈ 0.4, flooring the fit; without it (1e-4) θ and β wander off to ‖·‖² ≈ 40-85. Init: 0 (θ = β = 0).

Masking: a sample whose has_* flag is 0 contributes nothing to the terms using that annotation (mask →
silhouette and L_M, joints_2d → heatmap and L_2D, joints_3d → L_3D); its target values are never read
(replaced by zeros, so NaN placeholders are harmless). A batch with no annotated sample for a term gives
that term 0 (still connected to the graph). Missing has_* keys mean "all present"; missing visibility means
all visible.

Switching off: a weight of 0 skips the term entirely (its output field may be None / [] and its batch key
may be absent) and its key is absent from ``terms``. With weight > 0 a missing input is one clear
:class:`LossInputError` line — except the SFE lists: an SFE configuration without silhouettes (``sfe=
"heatmaps"``) or without an SFE (``sfe="none"``, Table 1) returns [] and those parts are skipped.

``terms`` holds detached 0-d tensors: each term *before* its top-level weight (``"sfe"`` includes the heatmap
and silhouette weights, and ``"heatmap"`` / ``"silhouette"`` are the sums over hourglasses), and
``"total"``, the weighted sum that is returned for ``backward()``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["LossWeights", "LossInputError", "NonFiniteLossError", "JOINTS_3D_UNIT_MM", "ROOT_JOINT", "HEATMAP_FORMS",
           "sfe_loss", "multitask_loss", "resize_mask"]

#: L_3D length unit in mm (decimetre): squared errors are in dm².
JOINTS_3D_UNIT_MM = 100.0
#: The forms of the heatmap term L_H (:class:`LossWeights`.heatmap_form).
HEATMAP_FORMS = ("l2", "softmax")
#: Root joint (wrist, manopth order) made the origin of both prediction and ground truth for L_3D.
ROOT_JOINT = 0


class LossInputError(ValueError):
    """An output field or batch key a switched-on loss term needs is missing or has the wrong shape."""


class NonFiniteLossError(FloatingPointError):
    """A loss term became NaN or ±inf; the message names the step and the terms (one line)."""


@dataclass(frozen=True)
class LossWeights:
    """Weights of Eq. 12 (top level) and Eq. 13 (inside L_SFE). Every weight ≥ 0; 0 switches a term off.

    Attributes:
        sfe: weight of L_SFE in Eq. 12 (:func:`sfe_loss` itself ignores it: pre-training optimises L_SFE).
        heatmap: weight of the heatmap L2 inside each hourglass's L_h (Eq. 13).
        silhouette: weight of the silhouette BCE inside each hourglass's L_h (Eq. 13).
        joints_3d: weight of L_3D (Eq. 15).
        joints_2d: weight of L_2D (Eq. 16); 0 = Table 3 "No 2D re-projection".
        mask: weight of L_M (Eq. 17).
        reg: weight of L_Reg (Eq. 18); 0 = Table 3 "No L_Reg".
        heatmap_form: how L_H compares a predicted map with its Gaussian target (module docstring):
            ``"l2"`` the squared error of Eq. 13 (the paper's); ``"softmax"`` each map is a distribution over
            its pixels (softmax of the prediction), fitted to the normalised target by KL divergence.
    """

    sfe: float = 1.0
    heatmap: float = 1.0
    silhouette: float = 1.0
    joints_3d: float = 1.0
    joints_2d: float = 0.1
    mask: float = 0.001
    reg: float = 0.001
    heatmap_form: Literal["l2", "softmax"] = "l2"

    def __post_init__(self) -> None:
        if self.heatmap_form not in HEATMAP_FORMS:
            raise ValueError(f"LossWeights.heatmap_form must be one of {', '.join(HEATMAP_FORMS)}, "
                             f"got {self.heatmap_form!r}")
        for f in fields(self):
            if f.name == "heatmap_form":
                continue
            v = getattr(self, f.name)
            if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v) or v < 0:
                raise ValueError(f"LossWeights.{f.name} must be a finite number >= 0, got {v!r}")
            object.__setattr__(self, f.name, float(v))

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> LossWeights:
        """Build from a mapping (e.g. the ``loss`` section of params.yaml); unknown keys are an error."""
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ValueError(f"LossWeights: unknown key(s) {unknown}; expected a subset of {sorted(names)}")
        return cls(**dict(d))

    def as_dict(self) -> dict[str, float | str]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


# ---------------------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------------------

def _need(batch: Mapping[str, Tensor], key: str, term: str, weight: float) -> Tensor:
    if key not in batch or batch[key] is None:
        raise LossInputError(f"loss term {term} (weight {weight:g}) needs batch[{key!r}], which is missing")
    return batch[key]


def _field(out: Any, name: str, term: str, weight: float) -> Tensor:
    value = getattr(out, name, None)
    if value is None:
        raise LossInputError(f"loss term {term} (weight {weight:g}) needs out.{name}, which is None/missing "
                             f"(set the {term} weight to 0 to switch the term off)")
    return value


def _flag(batch: Mapping[str, Tensor], key: str, ref: Tensor) -> Tensor:
    """(B,) float {0, 1} has_* flag; all ones when the batch has no such key."""
    b = ref.shape[0]
    if key not in batch or batch[key] is None:
        return ref.new_ones(b)
    flag = batch[key].to(device=ref.device, dtype=ref.dtype).reshape(-1)
    if flag.numel() != b:
        raise LossInputError(f"batch[{key!r}] has {flag.numel()} values for a batch of {b}")
    return (flag > 0).to(ref.dtype)


def _check_shape(t: Tensor, shape: tuple[int | None, ...], what: str) -> None:
    ok = t.dim() == len(shape) and all(s is None or s == d for s, d in zip(shape, t.shape, strict=True))
    if not ok:
        want = "(" + ", ".join("*" if s is None else str(s) for s in shape) + ")"
        raise LossInputError(f"{what} has shape {tuple(t.shape)}, expected {want}")


def _weighted_mean(values: Tensor, weights: Tensor) -> Tensor:
    """Σ w·v / Σ w over all elements, 0 (graph-connected) when Σ w = 0; v where w = 0 is never used."""
    values = torch.where(weights > 0, values, torch.zeros_like(values))
    return (values * weights).sum() / weights.sum().clamp_min(1.0)


def _zero_absent(target: Tensor, flag: Tensor) -> Tensor:
    """Replace the targets of samples whose flag is 0 by zeros (NaN placeholders never reach the loss)."""
    keep = (flag > 0).reshape(-1, *([1] * (target.dim() - 1)))
    return torch.where(keep, target, torch.zeros_like(target))


def resize_mask(mask: Tensor, size: int) -> Tensor:
    """(B, 1, M, M) or (B, M, M) mask in [0, 1] -> (B, size, size): area average when shrinking (soft
    border values kept), bilinear when enlarging, unchanged when M == size."""
    if mask.dim() == 3:
        mask = mask[:, None]
    if mask.dim() != 4 or mask.shape[1] != 1:
        raise LossInputError(f"batch['mask'] has shape {tuple(mask.shape)}, expected (B, 1, M, M) or (B, M, M)")
    mask = mask.float()
    if mask.shape[-1] != size or mask.shape[-2] != size:
        if mask.shape[-1] >= size and mask.shape[-2] >= size:
            mask = F.adaptive_avg_pool2d(mask, size)
        else:
            mask = F.interpolate(mask, size=(size, size), mode="bilinear", align_corners=False)
    return mask[:, 0]


# ---------------------------------------------------------------------------------------------------------
# Eqs. 13-14
# ---------------------------------------------------------------------------------------------------------

def _heatmap_term(pred: Tensor, target: Tensor, vis: Tensor, form: str = "l2") -> Tensor:
    """L_H of one hourglass, mean over visible maps: pred/target (B, J, h, h), vis (B, J) {0, 1}.

    ``"l2"``: Eq. 13's squared error, mean over pixels. ``"softmax"``: KL(target ‖ softmax(pred)) with the
    target normalised to sum 1 over its pixels (cross-entropy minus the target's entropy: same gradient, 0 at a
    perfect fit); a map whose target is all zero (the joint outside the crop) is not trained.
    """
    target = torch.where(vis[..., None, None] > 0, target, torch.zeros_like(target))
    if form == "l2":
        err = ((pred - target) ** 2).mean((-1, -2))                 # (B, J)
        return _weighted_mean(err, vis)
    t = target.flatten(2).float()
    mass = t.sum(-1)                                                # (B, J)
    t = t / mass.clamp_min(1e-12)[..., None]
    logp = torch.log_softmax(pred.flatten(2).float(), -1)
    err = (t * (torch.log(t.clamp_min(1e-12)) - logp)).sum(-1)     # (B, J) KL, 0 where t == 0 (0·log 0)
    return _weighted_mean(err, vis * (mass > 0).to(vis.dtype))                # fp32, also under autocast


def _silhouette_term(logits: Tensor, target: Tensor, flag: Tensor) -> Tensor:
    """Eq. 13 BCE: logits (B, 2, h, h) (channel 1 = hand), target (B, h, h) in [0, 1], flag (B,)."""
    z = logits[:, 1] - logits[:, 0]                                  # log-odds of the hand class
    bce = F.binary_cross_entropy_with_logits(z, target, reduction="none").mean((-1, -2))  # (B,)
    return _weighted_mean(bce, flag)


def sfe_loss(heatmaps: list[Tensor], silhouettes: list[Tensor], batch: Mapping[str, Tensor],
             w: LossWeights) -> tuple[Tensor, dict[str, Tensor]]:
    """L_SFE of Eqs. 13-14, summed over the hourglasses (intermediate supervision).

    Args:
        heatmaps: one (B, 21, h, h) per hourglass ([] when the SFE predicts none).
        silhouettes: one (B, 2, h, h) LOGITS per hourglass, channel 1 = hand ([] without a silhouette head).
        batch: needs ``heatmaps`` (B, 21, h, h) (same side h as the predictions) and ``mask`` (B, 1, M, M) in
            [0, 1] (resized here to h); optional ``visibility`` (B, 21), ``has_joints_2d``, ``has_mask`` (B,).
        w: only ``w.heatmap`` and ``w.silhouette`` are used (``w.sfe`` weighs L_SFE inside Eq. 12 only).
    Returns:
        ``(total, terms)``: total = Σ_h (w.heatmap·L_H + w.silhouette·L_S), a 0-d tensor with grad;
        terms: detached ``"heatmap"`` (Σ_h L_H), ``"silhouette"`` (Σ_h L_S), ``"sfe"`` and ``"total"`` (= total).
        A part whose weight is 0 or whose list is empty is not computed and its key is absent.
    """
    terms: dict[str, Tensor] = {}
    parts: list[Tensor] = []
    if w.heatmap > 0 and heatmaps:
        target = _need(batch, "heatmaps", "heatmap", w.heatmap)
        ref = heatmaps[0]
        target = target.to(device=ref.device, dtype=ref.dtype)
        vis = batch.get("visibility")
        vis = ref.new_ones(ref.shape[:2]) if vis is None else (vis.to(ref.device, ref.dtype) > 0).to(ref.dtype)
        _check_shape(vis, tuple(ref.shape[:2]), "batch['visibility']")
        vis = vis * _flag(batch, "has_joints_2d", ref)[:, None]
        h_sum = ref.new_zeros(())
        for i, pred in enumerate(heatmaps):
            _check_shape(target, tuple(pred.shape), f"batch['heatmaps'] (hourglass {i} predicts "
                                                    f"{tuple(pred.shape)}: prepare heatmap_size accordingly)")
            h_sum = h_sum + _heatmap_term(pred, target, vis, w.heatmap_form)
        terms["heatmap"] = h_sum.detach()
        parts.append(w.heatmap * h_sum)
    if w.silhouette > 0 and silhouettes:
        mask = _need(batch, "mask", "silhouette", w.silhouette)
        ref = silhouettes[0]
        flag = _flag(batch, "has_mask", ref)
        s_sum = ref.new_zeros(())
        for i, logits in enumerate(silhouettes):
            _check_shape(logits, (ref.shape[0], 2, None, None), f"silhouette logits of hourglass {i}")
            target = resize_mask(mask.to(device=ref.device), logits.shape[-1]).to(ref.dtype).clamp(0, 1)
            s_sum = s_sum + _silhouette_term(logits, _zero_absent(target, flag), flag)
        terms["silhouette"] = s_sum.detach()
        parts.append(w.silhouette * s_sum)
    if parts:
        total = torch.stack(parts).sum()
    else:
        ref = next((t for t in [*heatmaps, *silhouettes]), None)
        total = torch.zeros((), device=None if ref is None else ref.device)
    terms["sfe"] = total.detach()
    terms["total"] = total.detach()
    return total, terms


# ---------------------------------------------------------------------------------------------------------
# Eq. 12
# ---------------------------------------------------------------------------------------------------------

def _image_size(batch: Mapping[str, Tensor], image_size: int | None) -> int:
    if image_size is not None:
        return int(image_size)
    image = batch.get("image")
    if image is None:
        raise LossInputError("loss term joints_2d needs the crop side: pass image_size= or batch['image']")
    return int(image.shape[-1])


def multitask_loss(out: Any, batch: Mapping[str, Tensor], w: LossWeights, *,
                   image_size: int | None = None) -> tuple[Tensor, dict[str, Tensor]]:
    """The multi-task loss of Eq. 12 (normalisations and units: module docstring).

    Args:
        out: a :class:`keyhand.model.framework.FrameworkOutput` (fields used: heatmaps, silhouettes,
            joints_3d (B, 21, 3) mm, joints_2d (B, 21, 2) crop px, silhouette (B, R, R) in [0, 1] or None,
            theta (B, P), beta (B, 10)). Fields of switched-off terms are not read.
        batch: a collated :class:`keyhand.data.cache.PreparedDataset` batch: heatmaps (B, 21, h, h),
            mask (B, 1, M, M), joints_2d (B, 21, 2) crop px, joints_3d (B, 21, 3) mm (camera frame; made
            root-relative here), visibility (B, 21), has_mask / has_joints_2d / has_joints_3d (B,), image.
        w: the weights; 0 switches a term off and skips it.
        image_size: crop side S in px for L_2D's normalisation (default: ``batch["image"].shape[-1]``).
    Returns:
        ``(total, terms)``: total 0-d tensor with grad; terms: detached 0-d tensors ``"sfe"`` (+ its parts
        ``"heatmap"``, ``"silhouette"``), ``"joints_3d"``, ``"joints_2d"``, ``"mask"``, ``"reg"``, ``"total"``
        — each before its Eq. 12 weight; a switched-off term's key is absent.
    """
    terms: dict[str, Tensor] = {}
    parts: list[Tensor] = []

    if w.sfe > 0:
        heatmaps = list(getattr(out, "heatmaps", None) or [])
        silhouettes = list(getattr(out, "silhouettes", None) or [])
        if (heatmaps and w.heatmap > 0) or (silhouettes and w.silhouette > 0):
            l_sfe, sfe_terms = sfe_loss(heatmaps, silhouettes, batch, w)
            terms.update({k: v for k, v in sfe_terms.items() if k != "total"})
            parts.append(w.sfe * l_sfe)

    if w.joints_3d > 0:
        pred = _field(out, "joints_3d", "joints_3d", w.joints_3d)
        gt = _need(batch, "joints_3d", "joints_3d", w.joints_3d).to(device=pred.device, dtype=pred.dtype)
        _check_shape(pred, (None, None, 3), "out.joints_3d")
        _check_shape(gt, tuple(pred.shape), "batch['joints_3d']")
        flag = _flag(batch, "has_joints_3d", pred)
        gt = _zero_absent(gt, flag)
        pred_rel = (pred - pred[:, ROOT_JOINT:ROOT_JOINT + 1]) / JOINTS_3D_UNIT_MM
        gt_rel = (gt - gt[:, ROOT_JOINT:ROOT_JOINT + 1]) / JOINTS_3D_UNIT_MM
        per_sample = ((pred_rel - gt_rel) ** 2).sum(-1).mean(-1)       # (B,) dm²
        l3d = _weighted_mean(per_sample, flag)
        terms["joints_3d"] = l3d.detach()
        parts.append(w.joints_3d * l3d)

    if w.joints_2d > 0:
        pred = _field(out, "joints_2d", "joints_2d", w.joints_2d)
        gt = _need(batch, "joints_2d", "joints_2d", w.joints_2d).to(device=pred.device, dtype=pred.dtype)
        _check_shape(pred, (None, None, 2), "out.joints_2d")
        _check_shape(gt, tuple(pred.shape), "batch['joints_2d']")
        size = _image_size(batch, image_size)
        vis = batch.get("visibility")
        vis = pred.new_ones(pred.shape[:2]) if vis is None else (vis.to(pred.device, pred.dtype) > 0).to(pred.dtype)
        _check_shape(vis, tuple(pred.shape[:2]), "batch['visibility']")
        vis = vis * _flag(batch, "has_joints_2d", pred)[:, None]       # (B, J)
        gt = torch.where(vis[..., None] > 0, gt, torch.zeros_like(gt))
        per_joint = (pred - gt).abs().sum(-1) / size                     # (B, J) crop fractions
        l2d = _weighted_mean(per_joint, vis)
        terms["joints_2d"] = l2d.detach()
        parts.append(w.joints_2d * l2d)

    if w.mask > 0:
        sil = _field(out, "silhouette", "mask", w.mask)
        _check_shape(sil, (None, None, None), "out.silhouette")
        mask = _need(batch, "mask", "mask", w.mask)
        target = resize_mask(mask.to(sil.device), sil.shape[-1]).to(sil.dtype)
        _check_shape(target, tuple(sil.shape), "batch['mask'] resized to the render size")
        flag = _flag(batch, "has_mask", sil)
        target = _zero_absent(target, flag)
        per_sample = ((sil - target) ** 2).mean((-1, -2))               # (B,)
        lm = _weighted_mean(per_sample, flag)
        terms["mask"] = lm.detach()
        parts.append(w.mask * lm)

    if w.reg > 0:
        beta = _field(out, "beta", "reg", w.reg)
        theta = _field(out, "theta", "reg", w.reg)
        lreg = (beta.pow(2).flatten(1).sum(1) + theta.pow(2).flatten(1).sum(1)).mean()
        terms["reg"] = lreg.detach()
        parts.append(w.reg * lreg)

    if parts:
        total = torch.stack(parts).sum()
    else:
        device = next((t.device for t in batch.values() if isinstance(t, Tensor)), None)
        total = torch.zeros((), device=device)
    terms["total"] = total.detach()
    return total, terms
