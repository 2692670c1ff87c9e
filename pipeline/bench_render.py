"""Benchmark of keyhand's silhouette renderer (§3.4.3): forward and forward+backward time, peak memory.

    keyhand bench render                 # this machine's CPU (and --device cuda)
    python -m pipeline.bench_render

The mesh is the MANO layer's hand (the proxy hand unless an official file is configured) when it can be
built, else :func:`keyhand.geometry.render.closed_blob_mesh` (1536 faces); it is scaled so that its
silhouette covers about 1/3 of the image, with a different random rotation per batch element. Times are
medians over ``repeats`` runs after warm-up (``torch.cuda.synchronize`` on GPU); fwd+bwd is the render
plus an L2 silhouette loss and its backward to the vertices. Peak memory of one forward+backward: on
CUDA ``torch.cuda.max_memory_allocated`` above what was allocated before; on CPU (tracemalloc does not
see torch) the peak process RSS, ``/proc/self/statm`` sampled every 0.5 ms by a thread, above the RSS
after the scene is set up, in a fresh process per configuration (the allocator keeps freed memory).
"""

from __future__ import annotations

import math
import statistics
import threading
import time

import torch

from keyhand.geometry.render import (
    axis_angle_to_matrix,
    closed_blob_mesh,
    rasterize,
    render_silhouette,
    weak_perspective_with_depth,
)


def hand_mesh() -> tuple[torch.Tensor, torch.Tensor, str]:
    """(verts (V, 3) centred, faces (F, 3), name): the MANO layer's hand if available, else the blob."""
    try:
        from keyhand.geometry.mano import ManoLayer

        layer = ManoLayer(side="right", unit="m")
        with torch.no_grad():
            verts = layer(global_orient=torch.zeros(1, 3)).vertices[0]
        return verts - verts.mean(0), layer.faces, f"MANO hand ({layer.faces.shape[0]} faces)"
    except Exception:  # noqa: BLE001 - any failure (no proxy module yet, no file) falls back to the blob
        verts, faces = closed_blob_mesh()
        return verts, faces, f"blob ({faces.shape[0]} faces)"


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _rss_bytes() -> int:
    try:
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * 4096
    except OSError:  # not Linux: ru_maxrss (KiB on Linux, bytes on macOS) is the best we have
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


class _PeakMemory:
    """Peak memory above the level at entry (MiB): CUDA allocator or sampled CPU RSS."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.peak_mib = float("nan")

    def __enter__(self) -> _PeakMemory:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self._base = torch.cuda.memory_allocated(self.device)
        else:
            self._base = _rss_bytes()
            self._peak = self._base
            self._stop = threading.Event()

            def sample() -> None:
                while not self._stop.is_set():
                    self._peak = max(self._peak, _rss_bytes())
                    time.sleep(0.0005)

            self._thread = threading.Thread(target=sample, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            peak = torch.cuda.max_memory_allocated(self.device) - self._base
        else:
            self._stop.set()
            self._thread.join()
            peak = max(self._peak, _rss_bytes()) - self._base
        self.peak_mib = peak / 2**20


def _median_ms(fn, device: torch.device, repeats: int, warmup: int = 2) -> float:
    for _ in range(warmup):
        fn()
    _sync(device)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        _sync(device)
        times.append((time.perf_counter() - t0) * 1000)
    return statistics.median(times)


def _scene(verts: torch.Tensor, batch: int, size: int, device: torch.device, seed: int = 0) -> torch.Tensor:
    """(B, V, 3) NDC vertices: random rotations, scaled to cover about 1/3 of the image."""
    g = torch.Generator().manual_seed(seed)
    aa = torch.randn(batch, 3, generator=g)
    aa = aa / aa.norm(dim=1, keepdim=True) * 0.4
    rot = axis_angle_to_matrix(aa)
    extent = (verts[:, :2].amax(0) - verts[:, :2].amin(0)).max()
    s = torch.full((batch,), 1.4 / float(extent))
    t = torch.zeros(batch, 2)
    v = weak_perspective_with_depth(verts[None].expand(batch, -1, -1).float(), s, t, rot)
    return v.to(device)


def _fit_coverage(verts: torch.Tensor, faces: torch.Tensor, size: int) -> torch.Tensor:
    """Rescale x, y (about the origin) so that the mean silhouette coverage is about 1/3."""
    for _ in range(3):
        cov = float((rasterize(verts, faces, size).face_idx >= 0).float().mean())
        if cov <= 0:
            break
        verts = torch.cat([verts[..., :2] * math.sqrt((1 / 3) / cov), verts[..., 2:]], -1)
    return verts


def _workload(mode: str, bsz: int, size: int, device: torch.device):
    """(forward, forward+backward, coverage) closures for one configuration."""
    base, faces, _ = hand_mesh()
    faces = faces.to(device)
    verts = _fit_coverage(_scene(base, bsz, size, device), faces, size)
    target = torch.roll(render_silhouette(verts, faces, size), shifts=(2, 2), dims=(1, 2)).detach()
    v = verts.clone().requires_grad_(True)

    def fwd():
        with torch.no_grad():
            return render_silhouette(v, faces, size, mode=mode)

    def fwd_bwd():
        v.grad = None
        sil = render_silhouette(v, faces, size, mode=mode)
        ((sil - target) ** 2).mean().backward()

    return fwd, fwd_bwd, float(target.mean())


def _cpu_peak_child(args: tuple) -> float:
    """In a fresh process: peak RSS increase (MiB) over 3 forward+backward passes after the setup."""
    mode, bsz, size, threads = args
    torch.set_num_threads(threads)
    _, fwd_bwd, _ = _workload(mode, bsz, size, torch.device("cpu"))
    with _PeakMemory(torch.device("cpu")) as mem:
        for _ in range(3):
            fwd_bwd()
    return mem.peak_mib


def _peak_mib(mode: str, bsz: int, size: int, device: torch.device, fwd_bwd) -> float:
    if device.type == "cuda":
        with _PeakMemory(device) as mem:
            fwd_bwd()
        return mem.peak_mib
    # CPU: the allocator keeps what earlier configurations freed, so measure in a fresh process.
    import multiprocessing

    with multiprocessing.get_context("spawn").Pool(1) as pool:
        return pool.apply(_cpu_peak_child, ((mode, bsz, size, torch.get_num_threads()),))


def run(batch_sizes=(6, 32), sizes=(64, 128, 256), modes=("nmr", "soft"), device=None,
        repeats: int = 10) -> list[dict]:
    """Time render_silhouette for each mode, batch size and image size on one device."""
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    mesh_name = hand_mesh()[2]
    rows = []
    for size in sizes:
        for bsz in batch_sizes:
            for mode in modes:
                fwd, fwd_bwd, coverage = _workload(mode, bsz, size, device)
                fb_ms = _median_ms(fwd_bwd, device, repeats)
                f_ms = _median_ms(fwd, device, repeats)
                peak = _peak_mib(mode, bsz, size, device, fwd_bwd)
                rows.append({
                    "device": device.type if device.type == "cpu" else torch.cuda.get_device_name(device),
                    "threads": torch.get_num_threads(), "mesh": mesh_name, "mode": mode, "batch": bsz,
                    "size": size, "coverage": round(coverage, 3), "fwd_ms": round(f_ms, 2),
                    "fwd_bwd_ms": round(fb_ms, 2), "peak_mib": round(peak, 1),
                    "memory": "cuda max_allocated" if device.type == "cuda" else "RSS peak, fresh process",
                })
    return rows


def format_table(rows: list[dict]) -> str:
    """Markdown table of :func:`run`'s rows."""
    if not rows:
        return "(no rows)"
    head = ("| device | threads | mesh | mode | batch | size | coverage | fwd ms | fwd+bwd ms | peak MiB "
            "| memory |")
    lines = [head, "|" + "---|" * 11]
    for r in rows:
        lines.append(f"| {r['device']} | {r['threads']} | {r['mesh']} | {r['mode']} | {r['batch']} | "
                     f"{r['size']}² | {r['coverage']} | {r['fwd_ms']} | {r['fwd_bwd_ms']} | {r['peak_mib']} "
                     f"| {r['memory']} |")
    return "\n".join(lines)


if __name__ == "__main__":
    print(format_table(run()))
