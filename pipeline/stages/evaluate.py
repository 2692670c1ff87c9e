"""The ``evaluate`` stage: EPE, AUC and the PCK curve (§4.3), Fig. 6 panels, per-component inference times."""

from __future__ import annotations

import os

from pipeline.params import Params
from pipeline.stages.common import (
    METRICS,
    RUNS,
    StageError,
    _experiment,
    _tracking,
    _write_json,
    masks_dir,
    prepared_dir,
    role_datasets,
)


def stage_evaluate(p: Params) -> None:
    """EPE, AUC and the PCK curve on the pose test split; Fig. 6 panels; per-component inference times."""
    import numpy as np
    import torch

    from keyhand.model.profile import time_components
    from trainers.checkpoint import latest
    from trainers.predict import load_model, split_panels
    from trainers.tracking import log_evaluation, log_image, tracked_run
    from trainers.train import evaluate, make_loader, open_split, save_predictions

    _tracking(p)
    ckpt = latest(RUNS / "train")
    if ckpt is None:
        raise StageError(f"{RUNS / 'train'} holds no checkpoint: run the train stage first (dvc repro)")
    model, _ = load_model(ckpt, device="auto")
    cfg = p.train_config()
    (name, splits), = role_datasets(p, "pose").items()
    ds = open_split(prepared_dir("pose", name, splits[-1]), cfg, "train", train=False,
                    masks_dir=masks_dir("pose", name, splits[-1]))
    loader = make_loader(ds, cfg.train.batch_size, shuffle=False, seed=cfg.train.seed)
    metrics = evaluate(model, loader)
    predictions = metrics.pop("predictions", None)
    out = RUNS / "evaluate"
    out.mkdir(parents=True, exist_ok=True)
    if predictions is not None:
        save_predictions(out / "predictions.npz", predictions)
    # Fig. 6 panels: the best, median and worst samples by EPE, then the first ones
    order = np.argsort(np.nan_to_num(predictions["epe"], nan=np.inf)) if predictions is not None else []
    picks = list(dict.fromkeys([int(order[0]), int(order[len(order) // 2]), int(order[-1])] if len(order) else []))
    picks = [*picks, *[i for i in range(len(ds)) if i not in picks]][: p.evaluate.panels]
    panels = split_panels(model, ds, picks, out / "panels") if picks else []
    device = next(model.parameters()).device
    times = time_components(model, batch_size=1, device=device, repeats=5)
    timings = {k: round(float(v), 3) for k, v in times.items()}
    timings["device"] = torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({os.cpu_count()} cores)"
    timings["model"] = (f"{cfg.model.image_size}² input, SFE width {cfg.model.sfe_channels}, VE input "
                        f"{cfg.model.ve_input_size}² (the paper's: 256², 256, 256²)")
    summary = {k: metrics[k] for k in ("epe_mean", "epe_median", "auc", "auc_0_50", "count") if k in metrics}
    summary["dataset"] = f"{name}/{splits[-1]}"
    summary["timings_ms"] = timings
    with tracked_run(_experiment(p, "evaluate"), run_name="evaluate", params=cfg.model_dump(), stage="evaluate",
                     tags={"keyhand.dataset": summary["dataset"], "keyhand.checkpoint": str(ckpt)}):
        log_evaluation(metrics)
        for path in panels:
            log_image(path, f"panels/{path.name}")
    _write_json(METRICS / "evaluate.json", summary)
    pck = metrics.get("pck", {"thresholds_mm": [], "values": []})
    _write_json(METRICS / "pck.json", [{"threshold_mm": round(float(t), 3), "pck": float(v)}
                                       for t, v in zip(pck["thresholds_mm"], pck["values"], strict=True)])
