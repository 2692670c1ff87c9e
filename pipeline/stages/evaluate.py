"""The ``evaluate`` stage: EPE, AUC and the PCK curve (§4.3) on the pose TEST split with their bootstrap intervals
over test images (keyhand.stats; the main run is one seed: the seeds of its configuration are the ablation's
``base`` row), Fig. 6 panels, per-component inference times. The test split is read here, by the ablation's
final evaluation and by the report only; training monitors ``val``."""

from __future__ import annotations

import math
import os

import numpy as np

from pipeline.params import Params
from pipeline.stages.common import METRICS, RUNS, _write_json, role_datasets
from pipeline.stages.runs import _experiment, _tracking, test_split


def stage_evaluate(p: Params) -> None:
    """EPE, AUC and the PCK curve on the pose test split; Fig. 6 panels; per-component inference times."""
    import torch

    from keyhand.model.profile import time_components
    from trainers.run import evaluate_checkpoint
    from trainers.tracking import log_evaluation, log_image, tracked_run

    _tracking(p)
    (name, _), = role_datasets(p, "pose").items()
    test, test_masks = test_split(p, "pose")
    ev = evaluate_checkpoint(RUNS / "train", test, masks=str(test_masks), batch_size=p.train.batch_size,
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

    # sfe_2d_px: the SFE's own 2D keypoint error (arg-max of its heatmaps), crop px
    summary = {k: metrics[k] for k in (*SUMMARY_KEYS, "sfe_2d_px") if k in metrics and math.isfinite(metrics[k])}
    summary["dataset"] = f"{name}/test"
    summary["timings_ms"] = timings
    band = _intervals(ev.predictions, p, summary, test)
    with tracked_run(_experiment(p, "evaluate"), run_name="evaluate", params={"model": mc.model_dump()},
                     stage="evaluate", tags={"keyhand.dataset": summary["dataset"],
                                             "keyhand.checkpoint": str(ev.checkpoint)}):
        log_evaluation(metrics)
        import mlflow

        mlflow.log_metrics({"epe_mean_ci_lo": summary["epe_ci"][0], "epe_mean_ci_hi": summary["epe_ci"][1]})
        for path in ev.panels:
            log_image(path, f"panels/{path.name}")
    _write_json(METRICS / "evaluate.json", summary)
    pck = metrics.get("pck", {"thresholds_mm": [], "values": []})
    _write_json(METRICS / "pck.json", [{"threshold_mm": round(float(t), 3), "pck": float(v), "lo": lo, "hi": hi}
                                       for t, v, lo, hi in zip(pck["thresholds_mm"], pck["values"], band["lo"],
                                                               band["hi"], strict=True)])


def per_image_errors(predictions: dict) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(per-image EPE (N,), per-joint errors (N, J), per-image PA-EPE (N,)) mm, of the samples with 3D ground
    truth (``predictions`` of :func:`trainers.run.evaluate_checkpoint`): root-relative, and after the per-image
    Procrustes alignment (:func:`keyhand.metrics.procrustes_errors`)."""
    from keyhand.metrics import joint_errors, procrustes_errors

    keep = np.isfinite(predictions["epe"])
    pred, gt = predictions["joints_3d"][keep], predictions["joints_3d_gt"][keep]
    per_joint = joint_errors(pred, gt)
    return per_joint.mean(axis=1), per_joint, procrustes_errors(pred, gt).mean(axis=1)


def sequence_groups(split: str | os.PathLike, predictions: dict | None = None) -> list[str] | None:
    """The video sequence of each test image, in the order of the errors the statistics get, for the block
    bootstrap (:mod:`keyhand.stats`); None when the split's images are independent (no sequence recorded at
    preparation: synthetic sets; :func:`keyhand.data.prepare.read_split_sequences`) or some have none.

    ``predictions`` (of :func:`trainers.run.evaluate_checkpoint`): the images :func:`per_image_errors` keeps,
    by their ``index``; None: every sample with 3D ground truth in split order (the mean-pose control's). The
    frames of each sequence must come in increasing order there (the readers list them so; the bootstrap's
    blocks are runs of consecutive positions): ValueError otherwise."""
    from keyhand.data.cache import HAS_FLAGS, PreparedDataset
    from keyhand.data.prepare import read_split_sequences

    labels = read_split_sequences(split)
    if labels is None:
        return None
    if predictions is not None:
        index = np.asarray(predictions["index"])[np.isfinite(predictions["epe"])]
    else:
        ds = PreparedDataset(split)
        index = [i for i in range(len(ds)) if ds.raw(i)["has"][HAS_FLAGS.index("joints_3d")]]
    seqs = [labels["sequence"][int(i)] for i in index]
    frames = [labels["frame"][int(i)] for i in index]
    if any(s is None for s in seqs):
        return None
    last: dict[str, int] = {}
    for i, s, f in zip(index, seqs, frames, strict=True):
        if f is None:
            continue
        if f <= last.get(s, -1):
            raise ValueError(f"{split}: sample {int(i)} (sequence {s}, frame {f}) comes after frame {last[s]}: the "
                             "block bootstrap needs each sequence's frames in increasing order")
        last[s] = f
    return seqs


def _intervals(predictions: dict, p: Params, summary: dict, split: str | os.PathLike | None = None) -> dict:
    """The EPE's interval over test images into ``summary``; the PCK band (keyhand.stats). Test images from
    video sequences (``split``'s, :func:`sequence_groups`) are resampled in blocks of consecutive frames."""
    from keyhand.metrics import PCK_THRESHOLDS_MM
    from keyhand.stats import block_layout, bootstrap_mean, pck_band, resampling_note

    epe, per_joint, _ = per_image_errors(predictions)
    groups = None if split is None else sequence_groups(split, predictions)
    layout = None if groups is None else block_layout(groups)
    est = bootstrap_mean(epe, p.stats.confidence, p.stats.bootstrap, groups=layout)
    summary["epe_ci"] = [est.lo, est.hi]
    summary["confidence"] = p.stats.confidence
    summary["interval"] = f"bootstrap over test images (one seed: the main run); {resampling_note(layout)}"
    summary["resampling"] = est.resampling
    summary["block"] = est.block
    return pck_band(per_joint, PCK_THRESHOLDS_MM, p.stats.confidence, min(p.stats.bootstrap, 1000), groups=layout)
