"""The ``evaluate`` stage: EPE, AUC and the PCK curve (§4.3), Fig. 6 panels, per-component inference times."""

from __future__ import annotations

import math
import os

from pipeline.params import Params
from pipeline.stages.common import METRICS, RUNS, _write_json, role_datasets
from pipeline.stages.runs import _experiment, _tracking, stage_data


def stage_evaluate(p: Params) -> None:
    """EPE, AUC and the PCK curve on the pose test split; Fig. 6 panels; per-component inference times."""
    import torch

    from keyhand.model.profile import time_components
    from trainers.run import evaluate_checkpoint
    from trainers.tracking import log_evaluation, log_image, tracked_run

    _tracking(p)
    (name, splits), = role_datasets(p, "pose").items()
    data = stage_data(p, "pose")
    ev = evaluate_checkpoint(RUNS / "train", data.val, masks=data.masks_val, batch_size=p.train.batch_size,
                             out=RUNS / "evaluate", panels=p.evaluate.panels, device="auto")
    model, metrics = ev.model, ev.metrics
    device = next(model.parameters()).device
    times = time_components(model, batch_size=1, device=device, repeats=5)
    timings = {k: round(float(v), 3) for k, v in times.items()}
    timings["device"] = torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({os.cpu_count()} cores)"
    mc = model.cfg
    timings["model"] = (f"{mc.image_size}² input, SFE width {mc.sfe_channels}, VE input "
                        f"{mc.ve_input_size}² (the paper's: 256², 256, 256²)")
    from keyhand.metrics import SUMMARY_KEYS  # the paper's EPE / AUC, then the metrics beyond it (finite only)

    summary = {k: metrics[k] for k in SUMMARY_KEYS if k in metrics and math.isfinite(metrics[k])}
    summary["dataset"] = f"{name}/{splits[-1]}"
    summary["timings_ms"] = timings
    with tracked_run(_experiment(p, "evaluate"), run_name="evaluate", params={"model": mc.model_dump()},
                     stage="evaluate", tags={"keyhand.dataset": summary["dataset"],
                                             "keyhand.checkpoint": str(ev.checkpoint)}):
        log_evaluation(metrics)
        for path in ev.panels:
            log_image(path, f"panels/{path.name}")
    _write_json(METRICS / "evaluate.json", summary)
    pck = metrics.get("pck", {"thresholds_mm": [], "values": []})
    _write_json(METRICS / "pck.json", [{"threshold_mm": round(float(t), 3), "pck": float(v)}
                                       for t, v in zip(pck["thresholds_mm"], pck["values"], strict=True)])
