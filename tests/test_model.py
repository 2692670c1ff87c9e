"""The framework of §3 (SFE §3.2, VE §3.3, HE §3.4) on tiny CPU configurations: shapes of every variant,
gradient flow, initial prediction, Eq. 6 consistency, config validation, profiling."""

from __future__ import annotations

import pytest
import torch

from keyhand.geometry.mano import ManoLayer
from keyhand.geometry.render import (
    axis_angle_to_matrix,
    ndc_to_pixels,
    render_silhouette,
    weak_perspective,
    weak_perspective_with_depth,
)
from keyhand.model.framework import Framework, FrameworkOutput, ModelConfig
from keyhand.model.he import HandEstimator
from keyhand.model.profile import profile, time_components
from keyhand.model.sfe import SemanticFeatureExtractor
from keyhand.model.ve import LATENT_SIDE, S_INIT, ViewParams, ViewpointEncoder, dense_widths

TINY = ModelConfig(image_size=64, sfe_channels=16, ve_input_size=32, ve_channels=8, dense_scale=1 / 64,
                   render_size=32)
B = 2


def tiny(**kw) -> ModelConfig:
    return TINY.replace(**kw)


def build(**kw) -> Framework:
    torch.manual_seed(0)
    return Framework(tiny(**kw))


def image(seed: int = 0, size: int = 64) -> torch.Tensor:
    return torch.randn(B, 3, size, size, generator=torch.Generator().manual_seed(seed))


def check_output(out: FrameworkOutput, cfg: ModelConfig, render: bool = True) -> None:
    h, p = cfg.image_size // 4, cfg.pca_comps
    n_hg = 0 if cfg.sfe == "none" else 2
    assert [tuple(x.shape) for x in out.heatmaps] == [(B, 21, h, h)] * n_hg
    n_sil = 2 if cfg.sfe == "heatmaps+silhouette" else 0
    assert [tuple(x.shape) for x in out.silhouettes] == [(B, 2, h, h)] * n_sil
    shapes = {"t": (B, 2), "s": (B, 1), "rot": (B, 3), "theta": (B, p), "beta": (B, 10), "joints_3d": (B, 21, 3),
              "vertices": (B, 778, 3), "joints_2d": (B, 21, 2)}
    for name, shape in shapes.items():
        value = getattr(out, name)
        assert tuple(value.shape) == shape, name
        assert torch.isfinite(value).all(), name
    assert (out.s > 0).all()
    assert out.faces.dtype == torch.long and out.faces.shape[1] == 3
    if render:
        assert tuple(out.silhouette.shape) == (B, cfg.render_size, cfg.render_size)
        assert 0 <= out.silhouette.min() and out.silhouette.max() <= 1 and out.silhouette.sum() > 0
    else:
        assert out.silhouette is None


# ---------------------------------------------------------------------------------------------- SFE
@pytest.mark.parametrize("silhouette", [False, True])
@pytest.mark.parametrize("fusion", ["sum", "concat"])
def test_sfe_shapes(silhouette, fusion):
    sfe = SemanticFeatureExtractor(image_size=64, channels=16, silhouette=silhouette, fusion=fusion)
    heatmaps, sils, f = sfe(image())
    assert [tuple(x.shape) for x in heatmaps] == [(B, 21, 16, 16)] * 2
    assert [tuple(x.shape) for x in sils] == ([(B, 2, 16, 16)] * 2 if silhouette else [])
    expected = 16 + (21 + 2 * silhouette if fusion == "concat" else 0)
    assert sfe.out_channels == expected and tuple(f.shape) == (B, expected, 16, 16)
    if fusion == "concat":  # f = [H2, M2, f_hat]
        assert torch.equal(f[:, :21], heatmaps[1])
        if silhouette:
            assert torch.equal(f[:, 21:23], sils[1])


def test_sfe_hourglass_reaches_4x4():
    for size, depth in ((32, 1), (64, 2), (256, 4)):
        with torch.device("meta"):
            sfe = SemanticFeatureExtractor(image_size=size, channels=8)
        hg, d = sfe.hourglasses[0], 0
        while hasattr(hg, "inner"):
            hg, d = hg.inner, d + 1
        assert d == depth  # (S/4) / 2^depth = 4
    with pytest.raises(ValueError, match="image_size"):
        SemanticFeatureExtractor(image_size=96, channels=8)


# ----------------------------------------------------------------------------------------------- VE
@pytest.mark.parametrize("blocks,dense", [(2, "VE2"), (4, "VE1"), (5, "VE3"), (4, "VE2")])
def test_ve_shapes(blocks, dense):
    torch.manual_seed(0)
    ve = ViewpointEncoder(in_channels=5, input_size=32, blocks=blocks, dense=dense, pca_comps=30, channels=4,
                          dense_scale=1 / 64)
    n_blocks = sum(isinstance(m, torch.nn.MaxPool2d) for m in ve.blocks)
    assert n_blocks == blocks
    assert ve.latent_size == 4 * 2 ** min(blocks - 1, 2) * LATENT_SIDE**2
    linears = [m for m in ve.dense if isinstance(m, torch.nn.Linear)]
    assert [m.out_features for m in linears] == list(dense_widths(dense, 1 / 64))
    assert linears[0].in_features == ve.latent_size
    v = ve(torch.randn(B, 5, 16, 16))                        # resized (bilinear) to 32^2 inside
    assert [tuple(x.shape) for x in v] == [(B, 2), (B, 1), (B, 3), (B, 30), (B, 10)]
    assert ve.num_params == 2 + 1 + 3 + 30 + 10


def test_dense_widths_match_table_2():
    assert dense_widths("VE1") == (1024, 1024, 1024)
    assert dense_widths("VE2") == (2048, 2048, 1024)
    assert dense_widths("VE3") == (2048, 2048, 2048)
    assert dense_widths("VE2", 1 / 1024) == (8, 8, 8)
    with torch.device("meta"):
        ve = ViewpointEncoder(in_channels=279)  # paper: 256^2 input, 4 blocks, latent 64 x 64, |v| = 61
    assert ve.latent_size == 64 * 64 and ve.num_params == 61


def test_ve_initial_output_and_positive_scale():
    torch.manual_seed(0)
    ve = ViewpointEncoder(in_channels=3, input_size=32, blocks=2, channels=4, dense_scale=1 / 64,
                          t_init=(0.25, -0.5))
    v = ve(torch.randn(B, 3, 32, 32))
    assert torch.allclose(v.s, torch.full_like(v.s, S_INIT), rtol=0.05)
    assert torch.allclose(v.t, torch.tensor([0.25, -0.5]).expand(B, 2), atol=0.05)
    for x in (v.rot, v.theta, v.beta):
        assert x.abs().max() < 0.05
    with torch.no_grad():
        ve.head.bias[2] = -80.0     # raw scale far negative: s stays positive
    assert (ve(torch.randn(B, 3, 32, 32)).s > 0).all()


# ----------------------------------------------------------------------------------------------- HE
def test_he_projection_rotation_and_render_consistency():
    torch.manual_seed(0)
    he = HandEstimator(pca_comps=15, skeleton_adaptation=False, image_size=64, render_size=32)
    v = ViewParams(t=torch.randn(B, 2) * 0.1, s=torch.full((B, 1), S_INIT), rot=torch.randn(B, 3) * 0.5,
                   theta=torch.randn(B, 15) * 0.5, beta=torch.randn(B, 10) * 0.5)
    out = he(v)
    mano = ManoLayer(num_pca_comps=15)(global_orient=torch.zeros(B, 3), hand_pose=v.theta, betas=v.beta)
    rest = mano.joints - mano.joints[:, :1]
    R = axis_angle_to_matrix(v.rot)
    torch.testing.assert_close(out.joints_3d, rest @ R.transpose(1, 2), atol=1e-3, rtol=1e-4)  # R J(β, θ), mm
    assert out.joints_3d[:, 0].abs().max() < 1e-4                                           # wrist-rooted
    torch.testing.assert_close(out.vertices, (mano.vertices - mano.joints[:, :1]) @ R.transpose(1, 2),
                               atol=1e-3, rtol=1e-4)
    torch.testing.assert_close(out.joints_2d, ndc_to_pixels(weak_perspective(out.joints_3d, v.s, v.t), 64))
    sil = render_silhouette(weak_perspective_with_depth(out.vertices, v.s, v.t), he.faces, 32)     # Eq. 7
    assert torch.equal(out.silhouette, sil)


# ---------------------------------------------------------------------------------------- Framework
VARIANTS = [
    dict(sfe="none"),
    dict(sfe="heatmaps", fusion="sum"),
    dict(sfe="heatmaps", fusion="concat", pca_comps=15),
    dict(sfe="heatmaps+silhouette", fusion="sum", skeleton_adaptation=False, ve_dense="VE1"),
    dict(sfe="heatmaps+silhouette", fusion="concat", pca_comps=30, ve_blocks=2, ve_dense="VE3"),
    dict(sfe="heatmaps+silhouette", fusion="concat", ve_blocks=5, render_mode="soft", flat_hand_mean=True),
]


@pytest.mark.parametrize("kw", VARIANTS, ids=lambda kw: "-".join(f"{k}={v}" for k, v in kw.items()))
def test_framework_variants(kw):
    model = build(**kw)
    assert (model.sfe is None) == (kw["sfe"] == "none")
    assert (model.he.skeleton is None) == (not kw.get("skeleton_adaptation", True))
    with torch.no_grad():
        out = model(image())
    check_output(out, model.cfg)
    # Eq. 6 consistency: the 2D joints are the weak perspective projection of the 3D joints.
    torch.testing.assert_close(out.joints_2d, ndc_to_pixels(weak_perspective(out.joints_3d, out.s, out.t), 64))


def test_render_false_and_sfe_forward():
    model = build()
    with torch.no_grad():
        out = model(image(), render=False)
        check_output(out, model.cfg, render=False)
        heatmaps, sils = model.sfe_forward(image())
    assert [tuple(x.shape) for x in heatmaps + sils] == [(B, 21, 16, 16)] * 2 + [(B, 2, 16, 16)] * 2
    with pytest.raises(ValueError, match="sfe_forward needs an SFE"):
        build(sfe="none").sfe_forward(image())
    with pytest.raises(ValueError, match=r"image must have shape \(B, 3, 64, 64\)"):
        model(image(size=32))


def test_gradients_reach_sfe_ve_and_skeleton():
    model = build(render_mode="nmr")
    out = model(image())
    loss = out.joints_3d.square().mean() * 1e-4 + out.joints_2d.abs().mean() + (out.silhouette - 1).square().mean()
    loss.backward()
    groups = {"sfe": model.sfe.stem, "ve": model.ve.blocks, "skeleton": model.he.skeleton}
    for name, module in groups.items():
        grads = [p.grad for p in module.parameters() if p.grad is not None]
        assert grads and sum(g.abs().sum() for g in grads) > 0, name
    # Each loss term alone reaches the VE (the silhouette through the renderer, Eqs. 8-11).
    for term in ("joints_3d", "joints_2d", "silhouette"):
        model.zero_grad()
        out = model(image())
        getattr(out, term).sum().backward()
        assert model.ve.head.weight.grad.abs().sum() > 0, term


def test_initial_prediction_is_a_centred_hand_inside_the_crop():
    model = build()
    with torch.no_grad():
        out = model(image())
    px = out.joints_2d
    assert (px >= 0).all() and (px <= 63).all()                    # all 21 joints inside the 64 px crop
    mcp = px[:, 9]                                                 # middle MCP = crop centre (§3.1)
    assert (mcp - 31.5).abs().max() < 3
    span = (px.amax(1) - px.amin(1)).amax(-1) / 64                 # the hand spans ~ half the crop
    assert ((span > 0.3) & (span < 0.9)).all()
    sil = out.silhouette
    assert (sil.flatten(1).mean(1) > 0.02).all()                   # visible, not touching the border
    assert sil[:, 0].sum() == 0 and sil[:, -1].sum() == 0 and sil[:, :, 0].sum() == 0 and sil[:, :, -1].sum() == 0
    assert out.rot.abs().max() < 0.05 and out.theta.abs().max() < 0.05 and out.beta.abs().max() < 0.05


# ------------------------------------------------------------------------------------------- config
@pytest.mark.parametrize("field,value", [
    ("sfe", "silhouette"), ("fusion", "mean"), ("ve_blocks", 0), ("ve_blocks", 2.5), ("ve_dense", "VE4"),
    ("pca_comps", 46), ("image_size", 96), ("image_size", 16), ("sfe_channels", 2), ("ve_input_size", 8),
    ("dense_scale", 0), ("dense_scale", float("nan")), ("render_mode", "hard"), ("soft_sigma", -1.0),
    ("side", "both"), ("skeleton_adaptation", "yes"), ("flat_hand_mean", 1), ("render_size", True),
])
def test_bad_config_values_name_the_field(field, value):
    kw = {field: value}
    if field == "ve_input_size":
        kw["ve_blocks"] = 4          # 8 < 2^4
    with pytest.raises(ValueError, match=rf"^model\.{field}: must be .*got ") as info:
        ModelConfig(**kw)
    assert "\n" not in str(info.value)
    print(info.value)


def test_default_config_is_the_paper():
    cfg = ModelConfig()
    assert (cfg.sfe, cfg.fusion, cfg.ve_blocks, cfg.ve_dense, cfg.pca_comps, cfg.skeleton_adaptation) == (
        "heatmaps+silhouette", "concat", 4, "VE2", 45, True)
    assert (cfg.image_size, cfg.sfe_channels, cfg.ve_input_size) == (256, 256, 256)


# ------------------------------------------------------------------------------------------ profile
def test_profile_and_timing_tiny():
    model = build()
    cost = profile(model, batch_size=2)
    for comp in ("sfe", "ve", "he"):
        assert cost[comp]["params"] > 0 and cost[comp]["flops"] > 0, comp
    assert cost["he"]["params"] == 21 * 21                         # the skeleton adaptation layer
    assert model.training                                          # mode restored
    ms = time_components(model, batch_size=1, device="cpu", repeats=1, warmup=0)
    assert set(ms) == {"sfe", "ve", "he", "total"} and all(v > 0 for v in ms.values())
    assert ms["total"] == pytest.approx(ms["sfe"] + ms["ve"] + ms["he"])
    assert profile(build(sfe="none"))["sfe"] == {"params": 0, "flops": 0}


def test_profile_paper_config_on_meta():
    with torch.device("meta"):
        model = Framework(ModelConfig())
    cost = profile(model)
    print({k: (f"{v['params'] / 1e6:.2f} M", f"{v['flops'] / 1e9:.2f} GFLOPs") for k, v in cost.items()})
    # Two 256-wide hourglasses on 64^2 (two residual modules per level) + the 7x7 stem at 256^2.
    assert 5e6 < cost["sfe"]["params"] < 30e6
    assert 10e9 < cost["sfe"]["flops"] < 60e9
    assert 1e9 < cost["ve"]["flops"] < 40e9 and cost["he"]["flops"] > 0


def test_bench_model_table():
    from pipeline import bench_model

    cfg = tiny(sfe_channels=8, ve_channels=4)
    rows = bench_model.run({"micro": cfg}, repeats=1)
    assert [r["component"] for r in rows] == ["sfe", "ve", "he", "total"]
    assert all(r["params_m"] > 0 and r["gflops"] > 0 and r["ms"] > 0 for r in rows)
    table = bench_model.format_table(rows)
    print(table)
    assert table.count("\n") == 5 and "| micro |" in table


def test_rotation_representations_agree():
    """6D (Zhou et al.) and axis-angle give the same HE output for the same rotation; 6D identity at init."""
    from keyhand.geometry.mano import rot6d_to_matrix, rotation_matrix

    aa = torch.randn(B, 3, generator=torch.Generator().manual_seed(1)) * 1.5
    R = axis_angle_to_matrix(aa)
    r6 = torch.cat([R[..., 0], R[..., 1]], -1) * 3.0                 # scale does not matter
    assert torch.allclose(rot6d_to_matrix(r6), R, atol=1e-5)
    assert torch.allclose(rotation_matrix(torch.tensor([[1.0, 0, 0, 0, 1, 0]])), torch.eye(3)[None])
    with pytest.raises(ValueError, match="3 .axis-angle. or 6"):
        rotation_matrix(torch.zeros(1, 4))
    he = HandEstimator(pca_comps=15, image_size=64, render_size=16)
    kw = dict(t=torch.zeros(B, 2), s=torch.full((B, 1), S_INIT), theta=torch.randn(B, 15) * 0.3,
              beta=torch.randn(B, 10) * 0.5)
    a, b = he(ViewParams(rot=aa, **kw)), he(ViewParams(rot=r6, **kw))
    assert torch.allclose(a.joints_3d, b.joints_3d, atol=1e-3) and torch.equal(a.silhouette, b.silhouette)
    out = build(rot_repr="6d")(image())
    assert tuple(out.rot.shape) == (B, 6) and torch.allclose(rotation_matrix(out.rot), torch.eye(3), atol=0.05)


def test_head_output_scaling():
    """head_gain multiplies θ and β (same raw head), rot6d_norm sets the norm of the 6D identity bias's two
    columns; the first prediction is still the identity rotation and the mean hand; a non-positive value is
    refused in one line."""
    from keyhand.config import SectionError
    from keyhand.geometry.mano import rotation_matrix

    plain, scaled = build(rot_repr="6d"), build(rot_repr="6d", head_gain=3.0, rot6d_norm=0.1)
    a, b = plain(image()), scaled(image())
    assert torch.allclose(b.theta, 3.0 * a.theta, atol=1e-6) and torch.allclose(b.beta, 3.0 * a.beta, atol=1e-6)
    assert torch.allclose(scaled.ve.head.bias[3:9].view(2, 3).norm(dim=1), torch.tensor([0.1, 0.1]))
    assert torch.allclose(rotation_matrix(b.rot), torch.eye(3), atol=0.1)      # still starts at the identity
    assert (b.joints_3d - plain.he.rest_joints()).norm(dim=-1).max() < 10.0    # and at the mean hand (mm)
    with pytest.raises(SectionError, match="model.head_gain"):
        tiny(head_gain=0.0)


def test_direct_regression_control():
    """estimator="direct": same SFE/VE, a 63-output head starting at the mean hand; joints only; trains."""
    from keyhand.losses import LossWeights, multitask_loss

    model, mano = build(estimator="direct"), build()
    out = model(image())
    assert tuple(out.joints_3d.shape) == (B, 21, 3) and out.vertices is None and out.theta is None
    assert model.ve.head is None and model.direct.out_features == 63
    rest = mano.he.rest_joints()
    assert (out.joints_3d - rest).norm(dim=-1).max() < 5.0           # starts at the mean hand (mm)
    batch = {"joints_3d": torch.randn(B, 21, 3) * 40, "heatmaps": torch.rand(B, 21, 16, 16),
             "mask": torch.rand(B, 1, 64, 64), "image": image()}
    w = LossWeights(joints_2d=0, mask=0, reg=0)
    loss, terms = multitask_loss(out, batch, w)
    loss.backward()
    assert model.direct.weight.grad.abs().sum() > 0 and set(terms) >= {"joints_3d", "sfe"}
    with pytest.raises(ValueError, match="joints_2d"):
        multitask_loss(model(image()), batch, LossWeights())
