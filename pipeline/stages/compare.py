"""The ablation's comparison (issue 11): rows × seeds as trials, every trial's final TEST errors, the mean-pose
control, and the statistics of ``runs/metrics/ablation.json``.

The ``ablate`` stage (:mod:`pipeline.stages.sweeps`) trains one Ray trial per (row, seed) — label
``<row>.seed<k>``, :func:`trial_labels` — through the one orchestration path (:func:`trainers.trials.ablation_trial`
→ :func:`trainers.run.fit_stage`), each monitoring the pose ``val`` split. Then :func:`summarise` evaluates
every finished trial's checkpoint on the ``test`` split (:func:`trainers.run.evaluate_checkpoint`; per-image
errors in ``runs/ablate/eval/<label>/predictions.npz``), adds the mean-pose control (the mean root-relative
training skeleton predicted for every test image, :mod:`keyhand.controls`), and computes per row the mean EPE
with its interval (bootstrap over test images and seeds) and the paired difference to the row's base (the row
it differs from, ``Params.row_base``: its ``from``, else ``base``, the main configuration), "resolved" when its
interval excludes 0, "no verdict" when fewer than 3 seeds stand behind it (the mean-pose control, which has no
seed, counts its base's; :mod:`keyhand.stats`); test images from video sequences (STB: the sequence and frame
recorded at preparation, :func:`pipeline.stages.evaluate.sequence_groups`) are resampled in blocks of consecutive
frames within each sequence, independent images (synthetic sets) one by one; and the same after
Procrustes alignment (``pa``: PA-EPE, what remains of the error once rotation, scale and translation are fitted
away — the articulation and shape, where a MANO prior can differ from a direct head).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from pipeline.params import Params

__all__ = ["MEAN_POSE", "CONTROLS", "trial_labels", "summarise"]

#: The computed (untrained) control's row name, and every control row (shown beside the framework).
MEAN_POSE = "control_mean_pose"
CONTROLS = (MEAN_POSE, "control_direct")


def trial_labels(p: Params) -> dict[str, tuple[str, int]]:
    """``{"<row>.seed<k>": (row, k)}`` for every row of ``sweep.rows`` and seed index of ``stats.seeds``."""
    return {f"{row}.seed{k}": (row, k) for row in p.sweep.rows for k in p.seed_indices()}


def _train_joints(split: Path) -> np.ndarray:
    from keyhand.data.cache import PreparedDataset

    ds = PreparedDataset(split)
    rows = [ds.raw(i) for i in range(len(ds))]
    return np.stack([np.asarray(r["joints_3d"], np.float64) for r in rows if float(r.get("has_joints_3d", 1)) > 0])


def summarise(p: Params, result: Any, labels: dict[str, tuple[str, int]], trials_dir: Path, out: Path,
              data: Any, test: tuple[Path, Path]) -> dict[str, Any]:
    """ablation.json's content (module docstring). ``result``: the sweep's :class:`trainers.sweep.SweepResult`;
    ``data``: the pose :class:`trainers.run.StageData` (its train split gives the mean pose); ``test``: the
    (split, masks) folders evaluation reads."""
    from keyhand.controls import mean_pose, mean_pose_errors
    from keyhand.metrics import PCK_THRESHOLDS_MM, auc, procrustes_errors
    from keyhand.stats import MIN_SEEDS_FOR_VERDICT, block_layout, compare_rows, pck_band, resampling_note
    from pipeline.stages.evaluate import per_image_errors, sequence_groups
    from trainers.run import evaluate_checkpoint

    status = {r["label"]: r for r in result.rows}
    per_row: dict[str, dict[int, tuple[np.ndarray, np.ndarray, np.ndarray]]] = {}
    trials: dict[str, dict[str, Any]] = {}
    evaluated: dict | None = None          # one trial's predictions: which test images the errors are, in order
    for label, (row, k) in labels.items():
        r = status.get(label, {"status": "NOT RUN"})
        trials[label] = {"row": row, "seed_index": k, "status": r["status"], "error": r.get("error"),
                         "val_epe_mean": (r.get("metrics") or {}).get("epe_mean")}
        if r["status"] != "FINISHED":
            continue
        ev = evaluate_checkpoint(trials_dir / label, test[0], masks=str(test[1]), batch_size=p.train.batch_size,
                                 out=out / "eval" / label, device="auto")
        per_row.setdefault(row, {})[k] = per_image_errors(ev.predictions)
        evaluated = evaluated if evaluated is not None else ev.predictions
        trials[label]["test_epe_mean"] = float(ev.metrics.get("epe_mean", float("nan")))
    gt = _test_joints(test[0])
    template = mean_pose(_train_joints(Path(data.train)))
    per_row[MEAN_POSE] = {0: (*mean_pose_errors(template, gt),
                              procrustes_errors(np.broadcast_to(template, gt.shape), gt).mean(axis=1))}

    epe = {row: np.stack([seeds[k][0] for k in sorted(seeds)]) for row, seeds in per_row.items()}
    joints = {row: np.stack([seeds[k][1] for k in sorted(seeds)]) for row, seeds in per_row.items()}
    # video frames (STB) are resampled in blocks within their sequence; independent images one by one
    groups = sequence_groups(test[0], evaluated)
    layout = None if groups is None else block_layout(groups)
    bases = {row: p.row_base(row) for row in per_row}   # each row against the row it differs from, else "base"
    how = {"bases": bases, "groups": layout, "deterministic": {MEAN_POSE}}
    stats = compare_rows(epe, "base", p.stats.confidence, p.stats.bootstrap, **how)
    # the same comparison after Procrustes alignment (articulation and shape, rotation and scale removed)
    pa = compare_rows({row: np.stack([seeds[k][2] for k in sorted(seeds)]) for row, seeds in per_row.items()},
                      "base", p.stats.confidence, p.stats.bootstrap, **how)
    budget = p.sweep.epochs if p.sweep.epochs is not None else p.train.epochs
    table: dict[str, dict[str, Any]] = {}
    for row in [*p.sweep.rows, MEAN_POSE]:
        done = [lbl for lbl, (r, _) in labels.items() if r == row]
        failed = [lbl for lbl in done if trials[lbl]["status"] != "FINISHED"]
        entry: dict[str, Any] = {"control": row in CONTROLS, "seeds_asked": len(done) if row != MEAN_POSE else 1,
                                 "epochs": None if row == MEAN_POSE else budget, "failed_trials": failed}
        if row in stats:
            s = stats[row]
            band = pck_band(joints[row], PCK_THRESHOLDS_MM, p.stats.confidence, min(p.stats.bootstrap, 1000),
                            groups=layout)
            entry.update({"status": "FINISHED" if not failed else "PARTIAL", "epe_mean": s["mean"],
                          "ci": [s["lo"], s["hi"]], "seeds": s["seeds"], "images": s["images"],
                          "per_seed": epe[row].mean(axis=1).tolist(), "base_row": bases[row],
                          "vs_base": s["vs_base"],
                          "auc": auc(band["thresholds_mm"], band["pck"]), "pck": band,
                          "pa": {"epe_mean": pa[row]["mean"], "ci": [pa[row]["lo"], pa[row]["hi"]],
                                 "vs_base": pa[row]["vs_base"]}})
        else:
            entry.update({"status": "FAILED", "epe_mean": None, "error": "; ".join(
                str(trials[lbl].get("error") or trials[lbl]["status"]) for lbl in failed) or "not run"})
        table[row] = entry
    _log_mlflow(result.parent_run_id, table)
    return {"rows": table, "trials": trials, "failed": [k for k, v in table.items() if v["status"] == "FAILED"],
            "base": "base", "confidence": p.stats.confidence, "bootstrap": p.stats.bootstrap,
            "seeds": p.stats.seeds, "epochs": budget, "main_epochs": p.train.epochs,
            "split": "test (val monitored training)",
            "interval": ("percentile bootstrap over test images and seeds; " + resampling_note(layout)
                         + "; vs_base paired by image and seed with the row's base; no verdict below "
                         f"{MIN_SEEDS_FOR_VERDICT} seeds"),
            "resampling": {"method": "iid" if layout is None else "block",
                           "block": None if layout is None else layout.block,
                           "sequences": {} if layout is None else dict(zip(map(str, layout.names),
                                                                          layout.lengths.tolist(), strict=True)),
                           "blocks": None if layout is None else int(layout.block_sizes.size),
                           "dof": None if layout is None else layout.dof},
            "min_seeds_for_verdict": MIN_SEEDS_FOR_VERDICT}


def _test_joints(split: Path) -> np.ndarray:
    return _train_joints(split)


def _log_mlflow(parent_run_id: str | None, table: dict[str, dict]) -> None:
    """Every row's mean, interval and difference to base as metrics of the ablation's parent run."""
    if not parent_run_id:
        return
    from mlflow.tracking import MlflowClient

    client = MlflowClient()
    for row, e in table.items():
        if e.get("epe_mean") is None:
            continue
        client.log_metric(parent_run_id, f"{row}/epe_mean", float(e["epe_mean"]))
        client.log_metric(parent_run_id, f"{row}/epe_ci_lo", float(e["ci"][0]))
        client.log_metric(parent_run_id, f"{row}/epe_ci_hi", float(e["ci"][1]))
        if e.get("vs_base"):
            client.log_metric(parent_run_id, f"{row}/diff_vs_base", float(e["vs_base"]["mean"]))
            if e["vs_base"].get("resolved") is not None:          # None: no verdict (fewer than 3 seeds)
                client.log_metric(parent_run_id, f"{row}/diff_resolved", float(e["vs_base"]["resolved"]))
        if e.get("pa"):
            client.log_metric(parent_run_id, f"{row}/pa_epe_mean", float(e["pa"]["epe_mean"]))
            if e["pa"].get("vs_base"):
                client.log_metric(parent_run_id, f"{row}/pa_diff_vs_base", float(e["pa"]["vs_base"]["mean"]))
                if e["pa"]["vs_base"].get("resolved") is not None:
                    client.log_metric(parent_run_id, f"{row}/pa_diff_resolved",
                                      float(e["pa"]["vs_base"]["resolved"]))
