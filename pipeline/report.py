"""The report: the paper's Tables 1-6 (``pipeline/paper_results.yaml``) beside ours, as Markdown and JSON.

    from pipeline.report import build_report, write_report
    report = build_report(evaluation, ablation, gesture_cv, timings)   # plain dicts (below)
    write_report(report, "runs/report")                                # report.json + report.md

Inputs (what the evaluate, ablate and gesture_cv stages write):

* ``evaluation``: the evaluate stage's metrics (``epe_mean``, ``auc`` on the 20-50 mm grid, ``count``).
* ``ablation``: ``{row: {"status": "FINISHED"|"FAILED"|..., "epe_mean": mm, "auc": .., "ci": [lo, hi],
  "seeds": S, "vs_base": {"mean", "lo", "hi", "resolved", "verdict"} | None, "control": bool}}`` per row of
  ``sweep.rows`` plus the computed ``control_mean_pose`` (``runs/metrics/ablation.json``,
  :mod:`pipeline.stages.compare`); the rows that the paper's tables name are matched by key. ``comparison``:
  the rest of that file (seeds, epochs, confidence).
* ``gesture_cv``: ``{dataset: {"fold_accuracies": [...], "mean": .., "std": .., "chance", "protocol",
  "subject": {the same for the subject-aware folds, "subject_folds", "n_subjects"} | {"skipped": why}}}``
  (accuracy in [0, 1]): the top-level numbers are Table 6's "ours" (the paper-comparable stratified 80/20
  folds), the subject-aware folds are shown beside them (an extra Table 6 row, no paper value).
* ``timings``: per-component inference ms ``{"sfe", "ve", "he", "total", "device"}`` (optional).

Each table row carries the paper's value, ours (the mean over seeds and test images, None when not run or
failed: shown as "—" with the reason) with its 95 % interval (bootstrap over test images and seeds,
:mod:`keyhand.stats`), ours − paper, and the paired difference to the base row (the main configuration at
the same budget) with its interval, "resolved" when the interval excludes 0, else "within noise". The
controls section puts the framework beside the mean-pose predictor and the direct-regression head. Every
number is measured on the test split, which only the evaluation and this report read (training and the
search monitor val). The synthetic default is not the paper's data: its numbers show that the
pipeline runs end to end, not that the paper's figures are reproduced; the report says which data it used.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import yaml

from keyhand.atomic import atomic_write_text

__all__ = ["PAPER_RESULTS", "as_finite", "load_paper_results", "build_report", "write_report", "render_markdown"]

PAPER_RESULTS = Path(__file__).with_name("paper_results.yaml")


def load_paper_results(path: str | os.PathLike = PAPER_RESULTS) -> dict[str, Any]:
    """The paper's numbers (tables 1-6, timings) as kept in ``paper_results.yaml``."""
    return yaml.safe_load(Path(path).read_text())


def as_finite(x: Any) -> float | None:
    """``float(x)`` when it is a finite number, else None (missing, failed or non-numeric values)."""
    try:
        v = float(x)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


def _ours_ablation(row: str, ablation: dict[str, dict], metric: str) -> tuple[float | None, str]:
    res = ablation.get(row)
    if res is None:
        return None, "not run"
    status = str(res.get("status", "")).upper()
    value = as_finite(res.get(metric))
    if value is None:
        return None, f"no {metric} ({status.lower() or 'unknown status'})"
    return value, status.lower()


def _interval(res: dict | None) -> list[float] | None:
    ci = (res or {}).get("ci")
    if not ci or len(ci) != 2 or as_finite(ci[0]) is None or as_finite(ci[1]) is None:
        return None
    return [float(ci[0]), float(ci[1])]


def _vs_base(res: dict | None) -> dict | None:
    """The row's paired difference to its base, normalised: mean, lo, hi, ``verdict`` ("resolved" / "within
    noise" / "no verdict": fewer than keyhand.stats.MIN_SEEDS_FOR_VERDICT seeds behind it, ``resolved`` None
    and ``reason`` why), ``seeds`` (the runs the verdict rule counted), ``resampling`` / ``block`` (how the
    test images were resampled) and the ``base`` row; older files (``resolved`` only) keep their verdict."""
    d = (res or {}).get("vs_base")
    if not d or as_finite(d.get("mean")) is None:
        return None
    verdict = d.get("verdict")
    if verdict not in ("resolved", "within noise", "no verdict"):
        verdict = "no verdict" if d.get("resolved") is None else ("resolved" if d["resolved"] else "within noise")
    seeds = d.get("verdict_seeds", d.get("seeds"))
    return {"mean": float(d["mean"]), "lo": float(d["lo"]), "hi": float(d["hi"]),
            "resolved": None if verdict == "no verdict" else verdict == "resolved", "verdict": verdict,
            "seeds": seeds, "reason": d.get("reason"), "resampling": d.get("resampling"), "block": d.get("block"),
            "base": d.get("base")}


def _paper_epe(paper: dict) -> dict[str, float]:
    """The paper's EPE of each keyhand row named in Tables 1-4 (the same configuration has one value)."""
    out: dict[str, float] = {}
    for key in ("table1", "table2", "table3", "table4"):
        for r in paper["tables"][key]["rows"]:
            out.setdefault(r["row"], float(r["value"]))
    return out


def _bases(r: dict, spec: dict, res: dict | None, paper_epe: dict[str, float]) -> dict[str, Any]:
    """A Tables 1-4 row's two comparisons: the paper's (its value minus that of the row the paper compares it
    with: ``vs`` of the row, else of the table) and ours (the ablation's paired difference to the row's own base,
    ``sweep.rows.<row>.from`` else ``base``). None where the row is the table's base (the paper compares
    nothing with it there)."""
    paper_vs = r["vs"] if "vs" in r else spec.get("vs")
    if paper_vs == r["row"]:
        paper_vs = None
    # the table's own base row (Tables 1-3: t4_no_adapt_sum) carries no comparison in that table
    ours_vs = (res or {}).get("base_row", "base") if res is not None and paper_vs is not None else None
    vs_base = _vs_base(res) if ours_vs not in (None, r["row"]) else None
    return {"paper_vs": paper_vs,
            "paper_vs_diff": None if paper_vs is None else float(r["value"]) - paper_epe[paper_vs],
            "ours_vs": ours_vs if ours_vs != r["row"] else None, "vs_base": vs_base,
            "same_base": paper_vs is None or ours_vs is None or ours_vs == paper_vs}


#: How "ours" of Table 5 is computed (keyhand.metrics, ``auc_hand3d_stb``).
TABLE5_PROTOCOL = ("3D PCK AUC on hand3d's 20-50 mm grid as hand3d's eval_full.py evaluates STB: root = STB's palm "
                   "centre (recovered from the extrapolated wrist), the prediction scaled to the ground truth's "
                   "middle MCP -> PIP length")


#: Rows of the controls section: (label, ablation row or None for the main run).
CONTROL_ROWS = (("main run (train stage, 1 seed, train.epochs)", None),
                ("main configuration (base row)", "base"),
                ("control: direct regression head (same SFE/VE, 63 outputs)", "control_direct"),
                ("control: mean pose (mean training skeleton for every image)", "control_mean_pose"))


def _controls(evaluation: dict, ablation: dict[str, dict]) -> list[dict[str, Any]]:
    rows = []
    for label, key in CONTROL_ROWS:
        if key is None:
            ev = evaluation
            rows.append({"label": label, "row": "evaluate", "ours": as_finite(ev.get("epe_mean")),
                         "ci": _interval({"ci": ev.get("epe_ci")}), "seeds": 1 if ev else None,
                         "epochs": ev.get("epochs"), "auc": as_finite(ev.get("auc")), "vs_base": None,
                         "pa": as_finite(ev.get("epe_pa_mean")), "pa_vs_base": None})
            continue
        res = ablation.get(key)
        ours, note = _ours_ablation(key, ablation, "epe_mean")
        rows.append({"label": label, "row": key, "ours": ours, "ci": _interval(res),
                     "seeds": (res or {}).get("seeds"), "epochs": (res or {}).get("epochs"),
                     "auc": as_finite((res or {}).get("auc")), "vs_base": _vs_base(res), "note": note,
                     "pa": as_finite(((res or {}).get("pa") or {}).get("epe_mean")),
                     "pa_vs_base": _vs_base((res or {}).get("pa"))})
    return rows


#: Table 6's extra row: the subject-aware folds beside the paper-comparable ones (no paper value: other protocol).
SUBJECT_ROW_LABEL = "ours, subject-aware folds (not the paper's protocol)*"


def _cv_figures(res: dict) -> dict[str, Any]:
    """Table 6 figures of one fold kind of gesture_cv.json: mean / std / chance in %, folds, protocol."""
    mean, std, chance = as_finite(res.get("mean")), as_finite(res.get("std")), as_finite(res.get("chance"))
    return {"mean_pct": None if mean is None else 100 * mean, "std_pct": None if std is None else 100 * std,
            "folds": len(res.get("fold_accuracies", [])), "planned_folds": res.get("planned_folds"),
            "chance_pct": None if chance is None else 100 * chance, "kind": res.get("kind"),
            "protocol": res.get("protocol")}


def build_report(evaluation: dict | None, ablation: dict[str, dict] | None, gesture_cv: dict[str, dict] | None,
                 timings: dict | None = None, *, data_source: str = "synthetic", datasets: dict | None = None,
                 paper: dict | None = None, comparison: dict | None = None) -> dict[str, Any]:
    """Tables 1-6 with the paper's value, ours and the difference per row (module docstring)."""
    paper = paper or load_paper_results()
    evaluation, ablation, gesture_cv = evaluation or {}, ablation or {}, gesture_cv or {}
    tables: dict[str, Any] = {}
    paper_epe = _paper_epe(paper)
    for key in ("table1", "table2", "table3", "table4"):
        spec = paper["tables"][key]
        rows = []
        for r in spec["rows"]:
            ours, note = _ours_ablation(r["row"], ablation, "epe_mean")
            res = ablation.get(r["row"])
            rows.append({"label": r["label"], "row": r["row"], "paper": r["value"], "ours": ours,
                         "diff": None if ours is None else ours - r["value"], "note": note,
                         "ci": _interval(res), "seeds": (res or {}).get("seeds"),
                         **_bases(r, spec, res, paper_epe)})
        tables[key] = {"title": spec["title"], "metric": "EPE (mm)", "lower_is_better": True, "rows": rows}
    spec = paper["tables"]["table5"]
    # as hand3d evaluates STB (the paper's Table 5 follows [33]'s evaluation): palm root, ground-truth scale
    ours_auc = as_finite(evaluation.get("auc_hand3d_stb"))
    wrist_auc = as_finite(evaluation.get("auc"))
    rows = []
    for r in spec["rows"]:
        mine = r.get("row") == "full"
        rows.append({"label": r["label"], "paper": r["value"], "ours": ours_auc if mine else None,
                     "diff": (ours_auc - r["value"]) if (mine and ours_auc is not None) else None,
                     "note": "" if not mine else ("evaluate stage" if ours_auc is not None else "not run")})
    tables["table5"] = {"title": spec["title"], "metric": "AUC", "lower_is_better": False, "rows": rows,
                        "protocol": TABLE5_PROTOCOL, "ours_wrist_auc": wrist_auc}
    spec = paper["tables"]["table6"]
    rows = []
    for r in spec["rows"]:
        rows.append({"label": r["label"], "paper": dict(r["values"]), "ours": {}, "diff": {}})
    ours6 = {}
    subject_row = {"label": SUBJECT_ROW_LABEL, "kind": "subject", "paper": {}, "ours": {}, "diff": {}}
    for ds, res in sorted(gesture_cv.items()):
        mean = as_finite(res.get("mean"))
        ours6[ds] = _cv_figures(res)
        sub = res.get("subject")
        if isinstance(sub, dict):
            ours6[ds]["subject"] = {**_cv_figures({"chance": res.get("chance"), **sub}),
                                    "subject_folds": sub.get("subject_folds"), "n_subjects": sub.get("n_subjects"),
                                    "skipped": sub.get("skipped")}
            sub_mean = as_finite(sub.get("mean"))
            if sub_mean is not None and ds in spec["columns"]:
                subject_row["ours"][ds] = 100 * sub_mean
        for row in rows:
            if "ours" in row["label"] and ds in row["paper"] and mean is not None:
                row["ours"][ds] = 100 * mean
                row["diff"][ds] = 100 * mean - row["paper"][ds]
    if subject_row["ours"]:
        rows.append(subject_row)   # beside the paper's protocol, not compared with its numbers
    tables["table6"] = {"title": spec["title"], "metric": "accuracy (%)", "lower_is_better": False,
                        "columns": spec["columns"], "rows": rows, "ours_by_dataset": ours6}
    comparison = comparison or {}
    return {
        "data_source": data_source,
        "datasets": datasets or {},
        "evaluation": {k: evaluation.get(k) for k in ("epe_mean", "epe_median", "auc", "count", "epe_ci")
                       if k in evaluation},
        "controls": _controls(evaluation, ablation),
        "statistics": {"seeds": comparison.get("seeds"), "epochs": comparison.get("epochs"),
                       "main_epochs": comparison.get("main_epochs"), "confidence": comparison.get("confidence", 0.95),
                       "bootstrap": comparison.get("bootstrap"), "base": comparison.get("base", "base"),
                       "resampling": comparison.get("resampling"),
                       "test_split": "the test split is read only by the evaluation (evaluate stage, the "
                                     "ablation's final errors) and this report; training and the search read val"},
        "pck_bands": {row: res["pck"] for row, res in ablation.items() if isinstance(res.get("pck"), dict)},
        "tables": tables,
        "timings_ms": {"paper": paper.get("timings_ms", {}), "ours": timings or {}},
    }


def _fmt(v: Any, nd: int = 2) -> str:
    v = as_finite(v)
    return "—" if v is None else f"{v:.{nd}f}"


def _signed(v: Any, nd: int = 2) -> str:
    v = as_finite(v)
    return "—" if v is None else f"{v:+.{nd}f}"


def _ci(ci: Any, nd: int = 1) -> str:
    return "—" if not ci else f"[{_fmt(ci[0], nd)}, {_fmt(ci[1], nd)}]"


def _vs(d: dict | None) -> str:
    if not d:
        return "—"
    text = f"{_signed(d['mean'])} [{_signed(d['lo'])}, {_signed(d['hi'])}]"
    if d.get("verdict") == "no verdict" or ("verdict" in d and d.get("resolved") is None):
        n = d.get("seeds")
        return f"{text} no verdict" + (f" ({n} seed{'s' if n != 1 else ''})" if isinstance(n, int) else "")
    return f"{text} **resolved**" if d.get("resolved") else f"{text} within noise"


def _cv_line(v: dict) -> str:
    """``60.00 % ± 10.00 (10 folds, chance level 8.33 %)`` for one fold kind of Table 6's per-dataset figures."""
    planned = v.get("planned_folds")
    folds = f"{v['folds']} of {planned} folds" if planned and planned != v["folds"] else f"{v['folds']} folds"
    chance = f", chance level {_fmt(v['chance_pct'])} %" if v.get("chance_pct") is not None else ""
    return f"{_fmt(v['mean_pct'])} % ± {_fmt(v['std_pct'])} ({folds}{chance})"


def render_markdown(report: dict[str, Any]) -> str:
    """The report as Markdown (one section per table)."""
    lines = ["# keyhand report: the paper's tables beside ours", ""]
    src = report.get("data_source", "synthetic")
    lines.append(f"Data source: **{src}**" + (f" ({', '.join(f'{k}: {v}' for k, v in report['datasets'].items())})"
                                              if report.get("datasets") else "") + ".")
    if src == "synthetic":
        lines.append("The synthetic default is not the paper's data: these numbers show the pipeline end to end, "
                     "they are not a reproduction of the paper's figures.")
    lines.append("Each ablation row is compared with its own base (`sweep.rows.<row>.from`, else `base`, the main "
                 "configuration), paired by test image and seed, beside the paper's difference to the row the paper "
                 "compares it with (Tables 1-3: its Table 4 first row, 11.12 mm, row `t4_no_adapt_sum`; Table 4: one "
                 "component at a time). Where the two bases differ the note says so.")
    ev = report.get("evaluation", {})
    if ev:
        lines += ["", f"Evaluation: EPE {_fmt(ev.get('epe_mean'))} mm {_ci(ev.get('epe_ci'))} (median "
                      f"{_fmt(ev.get('epe_median'))}), AUC 20-50 mm {_fmt(ev.get('auc'), 3)}, {ev.get('count', 0)} "
                      "test samples."]
    st = report.get("statistics") or {}
    conf = int(round(100 * float(st.get("confidence") or 0.95)))
    resampling = st.get("resampling")         # a sentence, ablation.json's dict, else what the controls used
    used = next((d for d in (c.get("vs_base") for c in report.get("controls") or []) if d and d.get("resampling")),
                None)
    if isinstance(resampling, dict):
        used, resampling = {"resampling": resampling.get("method"), "block": resampling.get("block")}, None
    if not resampling and used:
        resampling = (f"test images resampled in blocks of {used.get('block')} consecutive frames within each "
                      "sequence" if used["resampling"] == "block" else "test images resampled one by one")
    seeds = st.get("seeds")
    few = isinstance(seeds, int) and seeds < 3
    lines += ["", f"Statistics: every number below is a mean over test images and seeds with its {conf} % interval "
                  f"[lo, hi] (percentile bootstrap over test images and seeds, {st.get('bootstrap') or '—'} "
                  f"replicates{'; ' + resampling if resampling else ''}); each compared row ran "
                  f"{seeds or '—'} seed(s) at {st.get('epochs') or '—'} "
                  f"epochs (the main run: {st.get('main_epochs') or '—'}). \"vs base\" is the difference to the "
                  "row's base (the row it differs from, else the main configuration at the same budget), paired by "
                  "test image and seed: **resolved** when its interval excludes 0, else within noise; **no verdict "
                  "(N seeds)** when fewer than 3 seeds stand behind it: with one or two training runs the "
                  "seed-to-seed variation is not (or hardly) in the interval, so an interval that excludes 0 can be "
                  "one run's luck; the difference and its interval are shown all the same (the mean-pose control "
                  "has no seed: it counts its base's). Frames of one video are not independent: when the test set "
                  "is video sequences (STB), images are resampled in blocks of consecutive frames within each "
                  "sequence, not one by one. "
                  + (f"These rows ran {seeds} seed(s): no difference below gets a verdict. " if few else "")
                  + str(st.get("test_split", "")).capitalize() + "."]
    controls = report.get("controls") or []
    if controls:
        lines += ["", "## Controls: does the framework beat trivial baselines?", "",
                  "| model | row | seeds | epochs | EPE (mm) | interval | AUC | vs base (mm) | PA-EPE (mm) | "
                  "PA vs base (mm) |", "|---|---|---|---|---|---|---|---|---|---|"]
        for r in controls:
            lines.append(f"| {r['label']} | `{r['row']}` | {r.get('seeds') or '—'} | {r.get('epochs') or '—'} | "
                         f"{_fmt(r['ours'])} | {_ci(r.get('ci'))} | {_fmt(r.get('auc'), 3)} | "
                         f"{_vs(r.get('vs_base'))} | {_fmt(r.get('pa'))} | {_vs(r.get('pa_vs_base'))} |")
        lines += ["", "PA-EPE: the error after a per-image Procrustes alignment (rotation, scale, translation fitted "
                      "away): the articulation and shape, where a MANO prior can differ from a direct head; its "
                      "\"vs base\" is paired like the EPE's."]
    for key in ("table1", "table2", "table3", "table4"):
        t = report["tables"][key]
        lines += ["", f"## {t['title']}", "", "| design choice | row | paper EPE | paper vs its base | ours EPE | "
                  "interval | ours − paper | ours vs its base (mm) | note |", "|---|---|---|---|---|---|---|---|---|"]
        for r in t["rows"]:
            pvs = "—" if not r.get("paper_vs") else f"{_signed(r.get('paper_vs_diff'))} vs `{r['paper_vs']}`"
            ovs = "—" if not r.get("vs_base") else f"{_vs(r.get('vs_base'))} vs `{r['ours_vs']}`"
            note = r["note"] + ("" if r.get("same_base", True) else
                                f"; our base is `{r['ours_vs']}`, the paper's `{r['paper_vs']}`")
            lines.append(f"| {r['label']} | `{r['row']}` | {_fmt(r['paper'])} | {pvs} | {_fmt(r['ours'])} | "
                         f"{_ci(r.get('ci'))} | {_signed(r['diff'])} | {ovs} | {note} |")
    bands = report.get("pck_bands") or {}
    if bands:
        first = next(iter(bands.values()))
        n = len(first["thresholds_mm"])
        picks = sorted({0, n // 2, n - 1})
        lines += ["", "## 3D PCK with its interval (per row)", "", "| row | " + " | ".join(
            f"PCK@{first['thresholds_mm'][i]:.1f} mm" for i in picks) + " |", "|---|" + "---|" * len(picks)]
        for row, b in bands.items():
            lines.append(f"| `{row}` | " + " | ".join(f"{_fmt(b['pck'][i], 3)} [{_fmt(b['lo'][i], 3)}, "
                                                      f"{_fmt(b['hi'][i], 3)}]" for i in picks) + " |")
    t = report["tables"]["table5"]
    lines += ["", f"## {t['title']}", "", "| model | paper AUC | ours AUC | ours − paper |", "|---|---|---|---|"]
    for r in t["rows"]:
        lines.append(f"| {r['label']} | {_fmt(r['paper'], 3)} | {_fmt(r['ours'], 3)} | {_signed(r['diff'], 3)} |")
    lines += ["", f"Ours: {t.get('protocol', TABLE5_PROTOCOL)}. Beside it, the AUC with the extrapolated wrist as "
                  f"root and no scale given (the ablation's and the controls' AUC): "
                  f"{_fmt(t.get('ours_wrist_auc'), 3)}."]
    t = report["tables"]["table6"]
    cols = t["columns"]
    lines += ["", f"## {t['title']}", "", "| model | " + " | ".join(f"paper {c}" for c in cols)
              + " | " + " | ".join(f"ours {c}" for c in cols) + " |", "|---|" + "---|" * (2 * len(cols))]
    for r in t["rows"]:
        lines.append(f"| {r['label']} | " + " | ".join(_fmt(r["paper"].get(c)) for c in cols) + " | "
                     + " | ".join(_fmt(r["ours"].get(c)) for c in cols) + " |")
    if t["ours_by_dataset"]:
        lines += ["", "Our gesture cross-validation per dataset (mean ± std over folds). The \"ours\" numbers of the "
                      "table come from the paper-comparable folds (random stratified 80/20, §4.3.3 after [9]); the "
                      "subject-aware folds (no subject in both training and test) run beside them: a harder, "
                      "person-independent protocol, not the paper's.", ""]
        for ds, v in t["ours_by_dataset"].items():
            lines.append(f"- {ds}: {_cv_line(v)}" + (f" — {v['protocol']}" if v.get("protocol") else ""))
            sub = v.get("subject")
            if sub:
                if sub.get("skipped"):
                    lines.append(f"  - subject-aware folds: not run ({sub['skipped']})")
                else:
                    lines.append(f"  - subject-aware folds: {_cv_line(sub)}"
                                 + (f" — {sub['protocol']}" if sub.get("protocol") else ""))
    tm = report.get("timings_ms", {})
    if tm.get("ours"):
        o, p = tm["ours"], tm.get("paper", {})
        lines += ["", "## Inference time per image (ms, §4.3)", "", "| component | paper (GTX 1080) | ours |",
                  "|---|---|---|"]
        for c in ("sfe", "ve", "he", "total"):
            lines.append(f"| {c.upper() if c != 'total' else 'total'} | {_fmt(p.get(c))} | {_fmt(o.get(c))} |")
        if o.get("device"):
            lines.append(f"\nOurs measured on: {o['device']}" + (f"; model: {o['model']}" if o.get("model") else "")
                         + ".")
    return "\n".join(lines) + "\n"


def write_report(report: dict[str, Any], out_dir: str | os.PathLike) -> tuple[Path, Path]:
    """Write ``report.json`` and ``report.md`` into ``out_dir`` (atomically); returns both paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    js, md = out / "report.json", out / "report.md"
    atomic_write_text(js, json.dumps(report, indent=2))
    atomic_write_text(md, render_markdown(report))
    return js, md
