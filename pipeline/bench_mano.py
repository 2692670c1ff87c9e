"""Benchmark of the MANO layer (§3.4.1): forward and forward+backward time per batch size.

    keyhand bench mano                 # this machine's CPU (and CUDA when present)
    python -m pipeline.bench_mano

Prints a Markdown table; times are medians over ``repeats`` runs after warm-up.
"""

from __future__ import annotations

import statistics
import time

import torch

from keyhand.geometry.mano import ManoLayer


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _median_ms(fn, device: torch.device, repeats: int) -> float:
    for _ in range(3):
        fn()
    _sync(device)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        _sync(device)
        times.append((time.perf_counter() - t0) * 1000)
    return statistics.median(times)


def run(batch_sizes=(1, 6, 64), devices=None, num_pca_comps: int = 45, repeats: int = 20) -> list[dict]:
    """Time the layer (float32, PCA pose space) for each device and batch size."""
    if devices is None:
        devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    rows = []
    for dev_name in devices:
        device = torch.device(dev_name)
        layer = ManoLayer(num_pca_comps=num_pca_comps).to(device)
        for bsz in batch_sizes:
            g = torch.Generator().manual_seed(bsz)
            orient = (0.5 * torch.randn(bsz, 3, generator=g)).to(device)
            pose = torch.randn(bsz, num_pca_comps, generator=g).to(device)
            betas = torch.randn(bsz, 10, generator=g).to(device)

            def forward(layer=layer, orient=orient, pose=pose, betas=betas):
                with torch.no_grad():
                    layer(orient, pose, betas)

            def forward_backward(layer=layer, orient=orient, pose=pose, betas=betas):
                p = pose.clone().requires_grad_(True)
                b = betas.clone().requires_grad_(True)
                out = layer(orient, p, b)
                (out.vertices.square().mean() + out.joints.square().mean()).backward()

            rows.append({
                "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
                "threads": torch.get_num_threads(),
                "batch": bsz,
                "forward_ms": _median_ms(forward, device, repeats),
                "forward_backward_ms": _median_ms(forward_backward, device, repeats),
            })
    return rows


def format_table(rows: list[dict]) -> str:
    lines = ["| device | threads | batch | forward ms | forward+backward ms |", "|---|---|---|---|---|"]
    lines += [f"| {r['device']} | {r['threads']} | {r['batch']} | {r['forward_ms']:.2f} | "
              f"{r['forward_backward_ms']:.2f} |" for r in rows]
    return "\n".join(lines)


if __name__ == "__main__":
    print(format_table(run()))
