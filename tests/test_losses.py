"""keyhand.losses (§3.5, Eqs. 12-18): each term on hand-computed cases, switching off, has_* masking, errors."""

from __future__ import annotations

import math

import pytest
import torch

from keyhand.losses import (
    JOINTS_3D_UNIT_MM,
    LossInputError,
    LossWeights,
    multitask_loss,
    resize_mask,
    sfe_loss,
)
from keyhand.model.framework import Framework, FrameworkOutput, ModelConfig

B, J, H, R, S = 2, 21, 4, 4, 100          # batch, joints, heatmap side, render side, crop side
ONLY = {name: 0.0 for name in ("sfe", "heatmap", "silhouette", "joints_3d", "joints_2d", "mask", "reg")}


def weights(**on: float) -> LossWeights:
    """All weights 0 except the given ones."""
    return LossWeights(**{**ONLY, **on})


def make_out(**fields) -> FrameworkOutput:
    """A FrameworkOutput with zero tensors of the contract's shapes, overridden by ``fields``."""
    base = dict(heatmaps=[torch.zeros(B, J, H, H)] * 2, silhouettes=[torch.zeros(B, 2, H, H)] * 2,
                t=torch.zeros(B, 2), s=torch.ones(B, 1), rot=torch.zeros(B, 3), theta=torch.zeros(B, 3),
                beta=torch.zeros(B, 10), joints_3d=torch.zeros(B, J, 3), vertices=torch.zeros(B, 778, 3),
                joints_2d=torch.zeros(B, J, 2), silhouette=torch.zeros(B, R, R),
                faces=torch.zeros(1, 3, dtype=torch.long))
    base.update(fields)
    return FrameworkOutput(**base)


def make_batch(**fields) -> dict[str, torch.Tensor]:
    base = dict(image=torch.zeros(B, 3, S, S), heatmaps=torch.zeros(B, J, H, H), mask=torch.zeros(B, 1, 2 * R, 2 * R),
                joints_2d=torch.zeros(B, J, 2), joints_3d=torch.zeros(B, J, 3), visibility=torch.ones(B, J),
                has_mask=torch.ones(B), has_joints_2d=torch.ones(B), has_joints_3d=torch.ones(B))
    base.update(fields)
    return base


# ------------------------------------------------------------------------------------------- LossWeights

def test_weights_defaults_and_validation():
    w = LossWeights()
    assert (w.joints_3d, w.joints_2d, w.mask, w.reg) == (1.0, 0.1, 0.001, 0.001)   # balanced by gradient (docstring)
    assert all(v >= 0 for k, v in w.as_dict().items() if k != "heatmap_form") and w.heatmap_form == "l2"
    for bad in (-1.0, float("nan"), float("inf"), "1", True):
        with pytest.raises(ValueError, match=r"LossWeights\.mask must be a finite number >= 0"):
            LossWeights(mask=bad)
    with pytest.raises(ValueError, match="unknown key.*'joints3d'"):
        LossWeights.from_dict({"joints3d": 1.0})
    assert LossWeights.from_dict({"reg": 0}).reg == 0.0
    with pytest.raises(AttributeError):
        w.reg = 2.0  # frozen


# ------------------------------------------------------------------------------------------- each term

def test_heatmap_term_hand_computed():
    target = torch.zeros(B, J, H, H)
    target[:, :, 1, 1] = 1.0                      # one unit pixel per 4x4 map
    total, terms = sfe_loss([torch.zeros(B, J, H, H)] * 2, [], make_batch(heatmaps=target), weights(heatmap=1))
    assert terms["heatmap"].item() == pytest.approx(2 * 1 / 16)       # 2 hourglasses x mean over 16 pixels
    assert total.item() == pytest.approx(2 / 16) and "silhouette" not in terms
    pred = target.clone()
    pred[0, 0] += 0.5                              # error 0.25 on all 16 pixels of one of the B*J maps
    _, terms = sfe_loss([pred, target], [], make_batch(heatmaps=target), weights(heatmap=1))
    assert terms["heatmap"].item() == pytest.approx(0.25 / (B * J))
    vis = torch.ones(B, J)
    vis[0, 1:] = 0                                 # sample 0: only joint 0 visible -> 1 + 21 visible maps
    _, terms = sfe_loss([pred, target], [], make_batch(heatmaps=target, visibility=vis), weights(heatmap=1))
    assert terms["heatmap"].item() == pytest.approx(0.25 / (1 + J))


def test_softmax_heatmap_term_is_the_kl_to_the_normalised_target():
    """heatmap_form="softmax": KL(target/Σtarget ‖ softmax(pred)), mean over visible maps with a target."""
    target = torch.zeros(B, J, H, H)
    target[:, :, 1, 1], target[:, :, 1, 2] = 1.0, 1.0          # two pixels: normalised to 0.5 / 0.5
    w = LossWeights(**{**ONLY, "heatmap": 1.0, "heatmap_form": "softmax"})
    _, terms = sfe_loss([torch.zeros(B, J, H, H)], [], make_batch(heatmaps=target), w)
    assert terms["heatmap"].item() == pytest.approx(math.log(16 / 2))       # uniform prediction: log(16) − log(2)
    pred = torch.full((B, J, H, H), -1e4)
    pred[:, :, 1, 1] = pred[:, :, 1, 2] = 0.0                                # the target itself, 0.5 / 0.5
    _, terms = sfe_loss([pred], [], make_batch(heatmaps=target), w)
    assert terms["heatmap"].item() == pytest.approx(0.0, abs=1e-6)
    # a joint outside the crop (all-zero target) and an invisible one are not trained
    target[0, 0] = 0.0
    vis = torch.ones(B, J)
    vis[1, 3] = 0
    pred = torch.zeros(B, J, H, H, requires_grad=True)
    total, terms = sfe_loss([pred], [], make_batch(heatmaps=target, visibility=vis), w)
    assert terms["heatmap"].item() == pytest.approx(math.log(8))
    total.backward()
    assert pred.grad[0, 0].abs().sum() == 0 and pred.grad[1, 3].abs().sum() == 0 and pred.grad[0, 1].abs().sum() > 0
    with pytest.raises(ValueError, match="heatmap_form must be one of l2, softmax"):
        LossWeights(heatmap_form="ce")


def test_silhouette_bce_hand_computed_and_resized_target():
    logits = torch.zeros(B, 2, H, H)
    logits[:, 1] = math.log(3.0)                   # softmax -> p(hand) = 0.75
    mask = torch.ones(B, 1, 2 * H, 2 * H)         # resized 8x8 -> 4x4 by area averaging
    mask[1, :, H:] = 0.0                           # sample 1: bottom half background
    _, terms = sfe_loss([], [logits], make_batch(mask=mask), weights(silhouette=1))
    expected = (-math.log(0.75) + (-math.log(0.75) - math.log(0.25)) / 2) / 2   # channel 1 = hand
    assert terms["silhouette"].item() == pytest.approx(expected, rel=1e-5)
    _, terms2 = sfe_loss([], [logits, logits], make_batch(mask=mask), weights(silhouette=2))
    assert terms2["silhouette"].item() == pytest.approx(2 * expected, rel=1e-5)
    assert terms2["total"].item() == pytest.approx(4 * expected, rel=1e-5)


def test_resize_mask_area_and_bilinear():
    m = torch.zeros(1, 1, 4, 4)
    m[..., :2, :2] = 1.0
    assert torch.allclose(resize_mask(m, 2)[0], torch.tensor([[1.0, 0.0], [0.0, 0.0]]))
    assert torch.allclose(resize_mask(torch.full((1, 3, 3), 0.5), 3), torch.full((1, 3, 3), 0.5))
    assert resize_mask(m, 8).shape == (1, 8, 8)
    with pytest.raises(LossInputError, match="batch\\['mask'\\]"):
        resize_mask(torch.zeros(1, 2, 4, 4), 2)


def test_joints_3d_root_relative_decimetres():
    gt = torch.randn(B, J, 3) * 50
    out = make_out(joints_3d=gt + torch.tensor([300.0, -20.0, 700.0]))   # camera vs wrist frame: same pose
    _, terms = multitask_loss(out, make_batch(joints_3d=gt), weights(joints_3d=1))
    assert terms["joints_3d"].item() == pytest.approx(0.0, abs=1e-8)
    pred = gt.clone()
    pred[:, 5, 0] += 100.0                         # one joint 100 mm off = 1 dm -> 1 dm² / 21 joints
    total, terms = multitask_loss(make_out(joints_3d=pred), make_batch(joints_3d=gt), weights(joints_3d=3))
    assert JOINTS_3D_UNIT_MM == 100.0
    assert terms["joints_3d"].item() == pytest.approx(1 / J, rel=1e-5)
    assert total.item() == pytest.approx(3 / J, rel=1e-5)


def test_joints_2d_l1_crop_fraction_visible_only():
    gt = torch.rand(B, J, 2) * S
    pred = gt.clone()
    pred[:, 3] += torch.tensor([3.0, -4.0])       # |3| + |4| = 7 px = 0.07 crop
    _, terms = multitask_loss(make_out(joints_2d=pred), make_batch(joints_2d=gt), weights(joints_2d=1))
    assert terms["joints_2d"].item() == pytest.approx(0.07 / J, rel=1e-5)
    vis = torch.ones(B, J)
    vis[:, 3] = 0                                  # the wrong joint is invisible -> no loss
    vis[1] = 0
    _, terms = multitask_loss(make_out(joints_2d=pred), make_batch(joints_2d=gt, visibility=vis),
                              weights(joints_2d=1))
    assert terms["joints_2d"].item() == pytest.approx(0.0, abs=1e-7)
    # image_size= overrides the crop side read from batch["image"]
    batch = make_batch(joints_2d=gt)
    del batch["image"]
    _, terms = multitask_loss(make_out(joints_2d=pred), batch, weights(joints_2d=1), image_size=50)
    assert terms["joints_2d"].item() == pytest.approx(0.14 / J, rel=1e-5)
    with pytest.raises(LossInputError, match="image_size"):
        multitask_loss(make_out(joints_2d=pred), batch, weights(joints_2d=1))


def test_mask_l2_resized_to_render_size():
    sil = torch.full((B, R, R), 0.5)
    mask = torch.ones(B, 1, 2 * R, 2 * R)
    mask[1, :, :, :R] = 0.0                        # left half empty -> resized left half 0
    _, terms = multitask_loss(make_out(silhouette=sil), make_batch(mask=mask), weights(mask=1))
    assert terms["mask"].item() == pytest.approx(0.25)
    sil = torch.zeros(B, R, R)
    _, terms = multitask_loss(make_out(silhouette=sil), make_batch(mask=mask), weights(mask=1))
    assert terms["mask"].item() == pytest.approx((1.0 + 0.5) / 2)


def test_reg_sum_of_squares():
    out = make_out(beta=torch.ones(B, 10), theta=torch.full((B, 3), 2.0))
    total, terms = multitask_loss(out, {}, weights(reg=0.5))           # reg needs no batch key
    assert terms["reg"].item() == pytest.approx(10 + 12)
    assert total.item() == pytest.approx(11.0)


def test_total_is_weighted_sum_and_terms_detached():
    out = make_out(joints_3d=torch.randn(B, J, 3, requires_grad=True), joints_2d=torch.randn(B, J, 2) * 10,
                   silhouette=torch.rand(B, R, R), beta=torch.randn(B, 10), theta=torch.randn(B, 3),
                   heatmaps=[torch.rand(B, J, H, H)] * 2, silhouettes=[torch.randn(B, 2, H, H)] * 2)
    batch = make_batch(joints_3d=torch.randn(B, J, 3) * 30, mask=torch.rand(B, 1, 8, 8),
                       heatmaps=torch.rand(B, J, H, H))
    w = LossWeights(sfe=0.5, heatmap=2.0, silhouette=3.0, joints_3d=4.0, joints_2d=5.0, mask=6.0, reg=0.1)
    total, terms = multitask_loss(out, batch, w)
    assert set(terms) == {"sfe", "heatmap", "silhouette", "joints_3d", "joints_2d", "mask", "reg", "total"}
    assert all(not t.requires_grad and t.dim() == 0 for t in terms.values())
    assert terms["sfe"].item() == pytest.approx(2.0 * terms["heatmap"].item() + 3.0 * terms["silhouette"].item())
    expected = sum(getattr(w, k) * terms[k].item() for k in ("sfe", "joints_3d", "joints_2d", "mask", "reg"))
    assert total.item() == pytest.approx(expected, rel=1e-5)
    assert terms["total"].item() == pytest.approx(total.item())
    total.backward()
    assert out.joints_3d.grad is not None and torch.isfinite(out.joints_3d.grad).all()


# ------------------------------------------------------------------------------------------- switching off

@pytest.mark.parametrize("term, field, batch_key", [
    ("joints_3d", "joints_3d", "joints_3d"),
    ("joints_2d", "joints_2d", "joints_2d"),
    ("mask", "silhouette", "mask"),
    ("reg", "beta", None),
    ("sfe", "heatmaps", "heatmaps"),
])
def test_zero_weight_skips_term(term, field, batch_key):
    w = LossWeights(**{term: 0.0})
    out = make_out(**{field: None})                # the term is not computed, so None cannot break it
    if term == "reg":
        out.theta = None
    if term == "sfe":
        out.silhouettes = None
    batch = make_batch()
    if batch_key is not None:
        del batch[batch_key]
    if term == "mask":
        batch["mask"] = torch.full((B, 1, 1, 1), float("nan"))    # still read by the silhouette BCE only
        w = LossWeights(mask=0.0, silhouette=0.0)
    total, terms = multitask_loss(out, batch, w)
    assert term not in terms and torch.isfinite(total)
    # and with weight > 0 the missing input is one clear line naming it
    with pytest.raises(LossInputError, match=field if field != "heatmaps" else "heatmaps"):
        on = LossWeights(**{**ONLY, term: 1.0, **({"heatmap": 1.0} if term == "sfe" else {})})
        multitask_loss(make_out(**{field: None}) if term != "sfe" else make_out(), batch, on)


def test_sfe_sub_weights_and_missing_sfe_outputs():
    batch = make_batch(heatmaps=torch.rand(B, J, H, H))
    _, terms = multitask_loss(make_out(), batch, weights(sfe=1, heatmap=1))
    assert "heatmap" in terms and "silhouette" not in terms
    # Table 1 "none": no SFE outputs at all -> the SFE term is skipped, not an error
    total, terms = multitask_loss(make_out(heatmaps=[], silhouettes=[]), batch, LossWeights())
    assert "sfe" not in terms and "heatmap" not in terms and torch.isfinite(total)
    # "heatmaps" only: silhouette part skipped
    _, terms = multitask_loss(make_out(silhouettes=[]), batch, weights(sfe=1, heatmap=1, silhouette=1))
    assert "heatmap" in terms and "silhouette" not in terms
    total, terms = sfe_loss([], [], batch, LossWeights())
    assert total.item() == 0.0 and set(terms) == {"sfe", "total"}


def test_all_weights_zero_gives_zero_total():
    total, terms = multitask_loss(make_out(), make_batch(), LossWeights(**ONLY))
    assert total.item() == 0.0 and set(terms) == {"total"}


# ------------------------------------------------------------------------------------------- has_* masking

def test_has_flags_exclude_samples_even_with_nan_targets():
    gt3 = torch.randn(B, J, 3) * 40
    gt2 = torch.rand(B, J, 2) * S
    mask = torch.ones(B, 1, 8, 8)
    hm = torch.rand(B, J, H, H)
    for t in (gt3, gt2, mask, hm):
        t[1] = float("nan")                        # sample 1 is unannotated: placeholders must not leak
    pred3 = (gt3[:1] + torch.randn(1, J, 3) * 10).expand(B, J, 3).clone().requires_grad_(True)
    pred2 = (gt2[:1] + 5.0).expand(B, J, 2).clone().requires_grad_(True)
    sil = torch.full((B, R, R), 0.25, requires_grad=True)
    hms = [torch.zeros(B, J, H, H, requires_grad=True)]
    sils = [torch.zeros(B, 2, H, H, requires_grad=True)]
    out = make_out(joints_3d=pred3, joints_2d=pred2, silhouette=sil, heatmaps=hms, silhouettes=sils)
    flags = torch.tensor([1.0, 0.0])
    batch = make_batch(joints_3d=gt3, joints_2d=gt2, mask=mask, heatmaps=hm, has_mask=flags,
                       has_joints_2d=flags, has_joints_3d=flags)
    total, terms = multitask_loss(out, batch, LossWeights(reg=0.0))
    assert all(math.isfinite(v.item()) for v in terms.values())
    one = {k: v[:1] for k, v in batch.items()}
    out1 = make_out(joints_3d=pred3[:1], joints_2d=pred2[:1], silhouette=sil[:1], heatmaps=[hms[0][:1]],
                    silhouettes=[sils[0][:1]], theta=torch.zeros(1, 3), beta=torch.zeros(1, 10))
    _, terms1 = multitask_loss(out1, one, LossWeights(reg=0.0))
    for k in ("heatmap", "silhouette", "joints_3d", "joints_2d", "mask"):
        assert terms[k].item() == pytest.approx(terms1[k].item(), rel=1e-5), k
    total.backward()
    for t in (pred3, pred2, sil, hms[0], sils[0]):
        assert torch.isfinite(t.grad).all() and t.grad[1].abs().sum() == 0


def test_no_annotated_sample_gives_zero_term_with_graph():
    pred = torch.randn(B, J, 3, requires_grad=True)
    batch = make_batch(joints_3d=torch.randn(B, J, 3), has_joints_3d=torch.zeros(B))
    total, terms = multitask_loss(make_out(joints_3d=pred), batch, weights(joints_3d=1))
    assert terms["joints_3d"].item() == 0.0
    total.backward()
    assert torch.equal(pred.grad, torch.zeros_like(pred))


def test_shape_errors_name_the_input():
    with pytest.raises(LossInputError, match="batch\\['joints_3d'\\]"):
        multitask_loss(make_out(), make_batch(joints_3d=torch.zeros(B, 20, 3)), weights(joints_3d=1))
    with pytest.raises(LossInputError, match="batch\\['heatmaps'\\].*hourglass 0"):
        multitask_loss(make_out(), make_batch(heatmaps=torch.zeros(B, J, 8, 8)), weights(sfe=1, heatmap=1))
    with pytest.raises(LossInputError, match="has_mask"):
        multitask_loss(make_out(), make_batch(has_mask=torch.ones(3)), weights(mask=1))


# ------------------------------------------------------------------------------------------- NaN detection

def test_nan_prediction_is_detected():
    pred = torch.zeros(B, J, 3)
    pred[0, 4, 1] = float("nan")
    _, terms = multitask_loss(make_out(joints_3d=pred), make_batch(), weights(joints_3d=1, reg=1))
    bad = sorted(k for k, v in terms.items() if not torch.isfinite(v))   # what the trainer's check names
    assert bad == ["joints_3d", "total"]


# ------------------------------------------------------------------------------------------- real Framework

def test_with_real_framework_tiny_config():
    cfg = ModelConfig(image_size=32, sfe_channels=8, ve_input_size=16, ve_channels=8, dense_scale=1 / 64,
                      render_size=16, pca_comps=6)
    torch.manual_seed(0)
    model = Framework(cfg)
    image = torch.randn(2, 3, 32, 32)
    out = model(image)
    h = out.heatmaps[0].shape[-1]
    gen = torch.Generator().manual_seed(1)
    batch = {"image": image, "heatmaps": torch.rand(2, J, h, h, generator=gen),
             "mask": (torch.rand(2, 1, 32, 32, generator=gen) > 0.5).float(),
             "joints_2d": torch.rand(2, J, 2, generator=gen) * 32,
             "joints_3d": torch.randn(2, J, 3, generator=gen) * 40,
             "visibility": torch.ones(2, J), "has_mask": torch.tensor([1.0, 0.0]), "has_joints_2d": torch.ones(2),
             "has_joints_3d": torch.ones(2)}
    total, terms = multitask_loss(out, batch, LossWeights())
    assert all(torch.isfinite(v) for v in terms.values())
    assert {"sfe", "heatmap", "silhouette", "joints_3d", "joints_2d", "mask", "reg", "total"} <= set(terms)
    total.backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)
    hms, sils = model.sfe_forward(image)
    l_sfe, t_sfe = sfe_loss(hms, sils, batch, LossWeights())
    assert l_sfe.item() == pytest.approx(terms["sfe"].item(), rel=1e-4)
    # render=False with the mask term off works; with it on, a clear error
    out2 = model(image, render=False)
    _, terms2 = multitask_loss(out2, batch, LossWeights(mask=0.0))
    assert "mask" not in terms2
    with pytest.raises(LossInputError, match="out.silhouette"):
        multitask_loss(out2, batch, LossWeights())
