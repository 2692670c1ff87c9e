"""Cost of each framework component (SFE §3.2, VE §3.3, HE §3.4): parameters, FLOPs and wall time.

    from keyhand.model.profile import profile, time_components
    profile(model)                     # {"sfe": {"params": ..., "flops": ...}, "ve": ..., "he": ...}
    time_components(model, batch_size=1, device="cpu", repeats=5)   # {"sfe": ms, "ve": ms, "he": ms, "total": ms}

FLOPs are counted by torch.utils.flop_counter.FlopCounterMode (2 per multiply-accumulate of convolutions,
matmuls and their batched forms; element-wise ops, pooling, BN and the renderer's rasterisation are not
counted) for one forward pass in eval mode, divided by the batch size. A model built on the "meta" device
(``with torch.device("meta"): Framework(cfg)``) is profiled from shapes alone, without memory or compute;
there the silhouette is not rendered (the renderer needs values), which changes no counted FLOP.
The paper reports 64.9 / 9.6 / 15.04 ms for SFE / VE / HE on a GTX 1080 (§4.3).
"""

from __future__ import annotations

import statistics
import time

import torch
from torch import Tensor, nn
from torch.utils.flop_counter import FlopCounterMode

from keyhand.model.framework import Framework

COMPONENTS = ("sfe", "ve", "he")


def count_params(module: nn.Module | None) -> int:
    """Number of parameters (trainable or not) of ``module``; 0 for None."""
    return 0 if module is None else sum(p.numel() for p in module.parameters())


def _device(model: Framework) -> torch.device:
    return model.he.mano.v_template.device


def _stages(model: Framework, image: Tensor, render: bool):
    """The three stage calls as closures, each fed by the previous stage's (precomputed) output."""
    f = model.sfe(image)[2] if model.sfe is not None else image
    v = model.ve(f)
    return {
        "sfe": (lambda: model.sfe(image)) if model.sfe is not None else None,
        "ve": lambda: model.ve(f),
        "he": lambda: model.he(v, render=render),
    }


def profile(model: Framework, batch_size: int = 1) -> dict[str, dict[str, float]]:
    """Parameters and forward FLOPs per image of each component: {"sfe"|"ve"|"he": {"params", "flops"}}.

    Without an SFE (cfg.sfe == "none") its entry is zeros.
    """
    dev = _device(model)
    s = model.cfg.image_size
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            stages = _stages(model, torch.randn(batch_size, 3, s, s, device=dev), render=dev.type != "meta")
            out = {}
            for name in COMPONENTS:
                flops = 0
                if stages[name] is not None:
                    with FlopCounterMode(display=False) as counter:
                        stages[name]()
                    flops = counter.get_total_flops()
                out[name] = {"params": count_params(getattr(model, name)), "flops": flops / batch_size}
    finally:
        model.train(was_training)
    return out


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_components(model: Framework, batch_size: int = 1, device: str | torch.device = "cpu",
                    repeats: int = 5, warmup: int = 1, render: bool = True) -> dict[str, float]:
    """Median forward wall time (ms) of each component, eval mode, no grad: {"sfe", "ve", "he", "total"}.

    The model is moved to ``device``; each stage is timed on the previous stage's output.
    """
    device = torch.device(device)
    model = model.to(device)
    s = model.cfg.image_size
    was_training = model.training
    model.eval()
    times: dict[str, float] = {}
    try:
        with torch.no_grad():
            stages = _stages(model, torch.randn(batch_size, 3, s, s, device=device), render)
            for name in COMPONENTS:
                if stages[name] is None:
                    times[name] = 0.0
                    continue
                samples = []
                for i in range(warmup + repeats):
                    _sync(device)
                    t0 = time.perf_counter()
                    stages[name]()
                    _sync(device)
                    if i >= warmup:
                        samples.append((time.perf_counter() - t0) * 1e3)
                times[name] = statistics.median(samples)
    finally:
        model.train(was_training)
    times["total"] = sum(times[n] for n in COMPONENTS)
    return times
