"""CUDA against the CPU (issue 20), without smplx: `make gpu-check` runs these on the GPU machine (pytest -m cuda).

Each test is skipped where no CUDA device is; tests/test_gpu_check.py runs the same comparisons on the CPU
against float64 (the floor these are measured against), so the code below is exercised in `make test` too.
"""

from __future__ import annotations

import pytest
import torch

from pipeline import gpu_agree as ga

pytestmark = [pytest.mark.cuda,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device on this machine")]
CUDA = torch.device("cuda")


def _failures(figs: dict, kinds: dict[str, str]) -> dict:
    return {k: figs[k] for k, kind in kinds.items() if not ga.agrees(kind, figs[k])}


@pytest.mark.parametrize("mode", ["nmr", "soft"])
def test_he_gradients_match_cpu(mode: str) -> None:
    """d loss / d (t, s, R, θ, β) through MANO, the projection and the renderer; the 2D joints; the silhouette."""
    with ga.strict_fp32():
        figs = ga.he_agreement(mode, CUDA)
    assert figs["coverage"]["value"] > 0.01                       # a hand was drawn
    kinds = {**{g: "grad" for g in ga.VIEW_GROUPS}, "joints_2d_px": "joints_2d_px",
             "silhouette_px": "silhouette_px", "silhouette_mean": "silhouette_mean"}
    assert not _failures(figs, kinds), figs


def test_weight_gradients_match_cpu() -> None:
    """The SFE's and VE's weight gradients for the whole Eq. 12 loss (default profile's model, batch 2)."""
    from keyhand.model.framework import Framework
    from trainers.config import TrainConfig

    cfg = TrainConfig.for_profile("default").model
    torch.manual_seed(0)
    model = Framework(cfg)
    size = cfg.image_size
    g = torch.Generator().manual_seed(3)
    batch = ga.hand_batch(2, size, 64)
    batch["image"] = torch.randn(2, 3, size, size, generator=g)
    batch["heatmaps"] = torch.rand(2, 21, size // 4, size // 4, generator=g)
    with ga.strict_fp32():
        figs = ga.weight_agreement(model, batch, CUDA)
    assert not _failures(figs, {"sfe": "weights", "ve": "weights"}), figs


def test_mano_layer_matches_cpu() -> None:
    """keyhand's own MANO layer (proxy hand): vertices and joints on CUDA within 1e-3 mm of the CPU's."""
    from keyhand.geometry.mano import ManoLayer

    cpu = ManoLayer(num_pca_comps=30, unit="mm")
    gpu = ManoLayer(num_pca_comps=30, unit="mm").cuda()
    g = torch.Generator().manual_seed(0)
    orient, pose = torch.randn(8, 3, generator=g), torch.randn(8, 30, generator=g)
    betas = torch.randn(8, 10, generator=g)
    with ga.strict_fp32():
        a = cpu(orient, pose, betas)
        b = gpu(orient.cuda(), pose.cuda(), betas.cuda())
    assert float((a.vertices - b.vertices.cpu()).abs().max()) < 1e-3
    assert float((a.joints - b.joints.cpu()).abs().max()) < 1e-3


def test_train_step_on_cuda_is_finite_and_keeps_the_he_fp32() -> None:
    """fit's own step (trainers.train.train_step) on CUDA with amp auto (bf16): finite terms, weights moved."""
    from keyhand.model.framework import Framework
    from trainers.config import TrainConfig
    from trainers.train import full_step, train_step

    cfg = TrainConfig.for_profile("default")
    torch.manual_seed(0)
    model = Framework(cfg.model).cuda().train()
    size = cfg.model.image_size
    batch = ga.hand_batch(4, size, 64)
    batch["image"] = torch.randn(4, 3, size, size)
    batch["heatmaps"] = torch.rand(4, 21, size // 4, size // 4)
    params = [p for p in model.parameters() if p.requires_grad]
    before = [p.detach().clone() for p in params]
    opt = torch.optim.Adam(params, lr=1e-4)
    seen = {}
    hook = model.he.mano.register_forward_hook(lambda m, i, out: seen.update(dtype=out.vertices.dtype))
    try:
        values, n = train_step(model, batch, full_step, cfg.loss.to_loss_weights(), opt, params, CUDA, "auto")
    finally:
        hook.remove()
    assert n == 4 and all(torch.isfinite(torch.tensor(v)) for v in values.values())
    assert seen["dtype"] == torch.float32
    assert any(not torch.equal(a, b) for a, b in zip(before, params, strict=True))
