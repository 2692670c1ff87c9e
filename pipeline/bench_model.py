"""Benchmark of the framework's components (SFE §3.2, VE §3.3, HE §3.4): parameters, GFLOPs/image, forward ms.

    python -m pipeline.bench_model            # this machine's CPU (or pass device="cuda" to run())

Configurations: "paper" is ModelConfig()'s defaults (image 256, hourglass width 256, VE input 256, VE2
dense layers, 45 PCA comps, render 64); "tiny" is a CPU profile (image 64, width 32, VE input 64). FLOPs come
from keyhand.model.profile.profile (FlopCounterMode, 2 per multiply-accumulate, renderer not counted); times
are medians of ``repeats`` forward passes (eval mode, no grad) after one warm-up, batch ``batch_size``,
per image. The paper reports SFE / VE / HE = 64.9 / 9.6 / 15.04 ms on a GTX 1080 (§4.3).
"""

from __future__ import annotations

import torch

from keyhand.model.framework import Framework, ModelConfig
from keyhand.model.profile import COMPONENTS, profile, time_components

CONFIGS = {
    "paper": ModelConfig(),
    "tiny": ModelConfig(image_size=64, sfe_channels=32, ve_input_size=64, ve_channels=16, dense_scale=1 / 16),
}


def run(configs: dict[str, ModelConfig] | None = None, device: str | None = None, batch_size: int = 1,
        repeats: int = 3) -> list[dict]:
    """One row per configuration and component (sfe, ve, he, total)."""
    device = torch.device(device or "cpu")
    name_dev = device.type if device.type == "cpu" else torch.cuda.get_device_name(device)
    rows = []
    for name, cfg in (configs or CONFIGS).items():
        torch.manual_seed(0)
        model = Framework(cfg).to(device)
        cost = profile(model, batch_size=1)
        ms = time_components(model, batch_size=batch_size, device=device, repeats=repeats)
        for comp in (*COMPONENTS, "total"):
            params = sum(c["params"] for c in cost.values()) if comp == "total" else cost[comp]["params"]
            flops = sum(c["flops"] for c in cost.values()) if comp == "total" else cost[comp]["flops"]
            rows.append({"config": name, "device": name_dev, "threads": torch.get_num_threads(), "batch": batch_size,
                         "component": comp, "params_m": params / 1e6, "gflops": flops / 1e9,
                         "ms": ms[comp] / batch_size})
    return rows


def format_table(rows: list[dict]) -> str:
    """Markdown table of :func:`run`'s rows."""
    if not rows:
        return "(no rows)"
    lines = ["| config | device | threads | batch | component | params (M) | GFLOPs/image | ms/image |",
             "|---|---|---|---|---|---|---|---|"]
    lines += [f"| {r['config']} | {r['device']} | {r['threads']} | {r['batch']} | {r['component']} | "
              f"{r['params_m']:.3f} | {r['gflops']:.3f} | {r['ms']:.2f} |" for r in rows]
    return "\n".join(lines)


if __name__ == "__main__":
    print(format_table(run()))
