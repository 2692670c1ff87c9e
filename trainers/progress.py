"""Sweep progress on the driver's stdout: one line per trial event and a periodic summary (DVC shows the same).

    [   14s] t2_ve1: started on node 192.0.2.2/f88006c4, GPU 0 (no CUDA there: CPU), attempt 1
    [   41s] t2_ve1: finished, epe_mean 23.41 (27s)
    [   55s] t3_pca_15: failed (RayActorError: The actor died unexpectedly ...), retrying (attempt 2)
    [   60s] sweep ablation: 1/4 done, 2 running, 1 pending, 0 failed; best epe_mean 23.41 (t2_ve1); ETA 1m10s

Where the events come from: the trial itself posts where Ray placed it, as soon as it starts, to the sweep's
*board*, a key prefix in Ray's GCS key-value store (:func:`announce`, called by :func:`trainers.sweep.trial_run`;
no actor, no extra process); the driver's Tune callback (:class:`SweepProgress`) drains it every second and
adds what Tune knows (finished, failed, retried). Tune's own status table stays off unless ``verbose`` > 0.
Everything here is best effort: a board that cannot be reached never fails a trial or the sweep.

``every_s`` (summary period, default 30 s; 0 = events only) and ``verbose`` (Ray Tune's table, 0 = off) can
be set by the environment for DVC stages: ``KEYHAND_SWEEP_PROGRESS_S``, ``KEYHAND_SWEEP_VERBOSE``.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import sys
import time
from collections.abc import Callable
from typing import Any

from ray.tune import Callback

__all__ = ["SweepProgress", "announce", "drain", "clear_board", "progress_every", "tune_verbosity", "fmt_duration"]

ENV_EVERY = "KEYHAND_SWEEP_PROGRESS_S"
ENV_VERBOSE = "KEYHAND_SWEEP_VERBOSE"


def progress_every(default: float = 30.0) -> float:
    """The summary period in seconds (``$KEYHAND_SWEEP_PROGRESS_S``, else ``default``); 0 = no summaries."""
    with contextlib.suppress(ValueError):
        return max(0.0, float(os.environ.get(ENV_EVERY, default)))
    return default


def tune_verbosity(default: int = 0) -> int:
    """Ray Tune's verbosity (``$KEYHAND_SWEEP_VERBOSE``, else ``default``): 0 = its table off."""
    with contextlib.suppress(ValueError):
        return max(0, min(3, int(os.environ.get(ENV_VERBOSE, default))))
    return default


def fmt_duration(seconds: float) -> str:
    """``41s``, ``4m10s``, ``2h03m``."""
    s = int(round(max(0.0, seconds)))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{(s % 3600) // 60:02d}m"


# --------------------------------------------------------------------------------------------------- board


_NS = "keyhand-progress"   # the GCS key-value namespace of the boards


def board_prefix(sweep: str) -> str:
    """The key prefix of a sweep's events in Ray's GCS key-value store."""
    return f"{sweep}/"


def clear_board(sweep: str) -> None:
    """Forget a sweep's undelivered events (before it starts, and after it ends)."""
    with contextlib.suppress(Exception):
        from ray.experimental.internal_kv import _internal_kv_del

        _internal_kv_del(board_prefix(sweep), del_by_prefix=True, namespace=_NS)


def announce(sweep: str, event: dict[str, Any]) -> None:
    """Inside a trial: post ``event`` to the sweep's board (one GCS key-value write; never raises)."""
    with contextlib.suppress(Exception):
        from ray.experimental.internal_kv import _internal_kv_put

        key = f"{board_prefix(sweep)}{event.get('trial_id', '?')}/{event.get('attempt', 1)}/{time.time():.6f}"
        _internal_kv_put(key, json.dumps(event, default=str), namespace=_NS)


def drain(sweep: str) -> list[dict[str, Any]]:
    """On the driver: the events posted since the last drain, oldest first (removed from the board)."""
    from ray.experimental.internal_kv import _internal_kv_del, _internal_kv_get, _internal_kv_list

    events = []
    for key in sorted(_internal_kv_list(board_prefix(sweep), namespace=_NS), key=lambda k: k.rsplit(b"/", 1)[-1]):
        raw = _internal_kv_get(key, namespace=_NS)
        _internal_kv_del(key, namespace=_NS)
        if raw:
            with contextlib.suppress(ValueError):
                events.append(json.loads(raw))
    return events


# --------------------------------------------------------------------------------------------------- callback


class SweepProgress(Callback):
    """Tune driver callback printing trial events and a summary every ``every_s`` seconds (module docstring).

    ``labels``: trial -> short name (:func:`trainers.sweep.trial_label`). ``total``: the number of trials
    the sweep will run. Picklable (Tune saves run_config callbacks with the experiment): the board handle and
    the clock are not saved.
    """

    def __init__(self, sweep: str, metric: str, mode: str, total: int, label: Callable[[Any], str],
                 every_s: float = 30.0, out: Callable[[str], None] | None = None) -> None:
        self.sweep, self.metric, self.mode, self.total = sweep, metric, mode, int(total)
        self.label, self.every_s, self.out = label, float(every_s), out
        self._reset()

    def _reset(self) -> None:
        self._t0 = time.monotonic()
        self._last_summary = self._t0
        self._last_drain = 0.0
        self._durations: list[float] = []   # seconds, trials finished in this session
        self._started: dict[str, float] = {}
        self._best: tuple[float, str] | None = None

    def __getstate__(self) -> dict[str, Any]:
        return {"sweep": self.sweep, "metric": self.metric, "mode": self.mode, "total": self.total,
                "label": self.label, "every_s": self.every_s, "out": None}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._reset()

    # -------------------------------------------------------------------- output
    def _print(self, text: str) -> None:
        line = f"[{fmt_duration(time.monotonic() - self._t0):>6}] {text}"
        if self.out is not None:
            self.out(line)
        else:
            print(line, file=sys.stdout, flush=True)

    def _name(self, trial) -> str:
        with contextlib.suppress(Exception):
            return self.label(trial.config)
        return str(getattr(trial, "trial_id", trial))

    # -------------------------------------------------------------------- Tune hooks
    def setup(self, **info: Any) -> None:
        self._reset()

    def on_trial_start(self, iteration: int, trials: list, trial, **info: Any) -> None:
        self._started[trial.trial_id] = time.monotonic()

    def on_trial_complete(self, iteration: int, trials: list, trial, **info: Any) -> None:
        self._drain(trials)
        value = (trial.last_result or {}).get(self.metric)
        took = ""
        if trial.trial_id in self._started:
            self._durations.append(time.monotonic() - self._started.pop(trial.trial_id))
            took = f" ({fmt_duration(self._durations[-1])})"
        if isinstance(value, int | float) and math.isfinite(float(value)):
            v = float(value)
            if self._best is None or (v < self._best[0] if self.mode == "min" else v > self._best[0]):
                self._best = (v, self._name(trial))
            self._print(f"{self._name(trial)}: finished, {self.metric} {v:.4g}{took}")
        else:
            self._print(f"{self._name(trial)}: finished without {self.metric}{took}")

    def on_trial_recover(self, iteration: int, trials: list, trial, **info: Any) -> None:
        self._drain(trials)
        attempt = trial.num_failures + 1
        self._print(f"{self._name(trial)}: failed ({_error(trial)}), retrying (attempt {attempt})")

    def on_trial_error(self, iteration: int, trials: list, trial, **info: Any) -> None:
        self._drain(trials)
        self._started.pop(trial.trial_id, None)
        self._print(f"{self._name(trial)}: failed for good after {trial.num_failures} attempt(s) ({_error(trial)}); "
                    f"traceback: {trial.error_file}")

    def on_step_end(self, iteration: int, trials: list, **info: Any) -> None:
        now = time.monotonic()
        if now - self._last_drain >= 1.0:
            self._last_drain = now
            self._drain(trials)
        if self.every_s > 0 and now - self._last_summary >= self.every_s:
            self._last_summary = now
            self._print(self.summary(trials))

    def on_experiment_end(self, trials: list, **info: Any) -> None:
        self._drain(trials)
        self._print(self.summary(trials, final=True))

    # -------------------------------------------------------------------- pieces
    def _drain(self, trials: list | None = None) -> None:
        try:
            events = drain(self.sweep)
        except Exception:  # noqa: BLE001 - progress is best effort
            return
        by_id = {t.trial_id: t for t in trials or []}
        for ev in events:
            trial = by_id.get(ev.get("trial_id"))
            attempt = f", attempt {trial.num_failures + 1}" if trial is not None else ""
            gpus = ev.get("gpu_ids") or []
            where = f"node {ev.get('node_ip')}/{str(ev.get('node_id', ''))[:8]}"
            if gpus:
                where += f", GPU {','.join(gpus)}"
                if ev.get("cpu_fallback"):
                    where += " (no CUDA there: CPU)"
            self._print(f"{ev.get('label')}: started on {where}{attempt}")

    def summary(self, trials: list, final: bool = False) -> str:
        """``sweep X: 3/15 done, 4 running, 8 pending, 0 failed; best epe_mean 23.1 (t2_ve1); ETA 4m10s``."""
        status = [getattr(t, "status", "") for t in trials]
        done, running = status.count("TERMINATED"), status.count("RUNNING")
        failed = status.count("ERROR")
        total = max(self.total, len(trials))
        pending = max(0, total - done - running - failed)
        best = ""
        for t in trials:  # the best over every finished trial (also those finished before a resume)
            v = (t.last_result or {}).get(self.metric) if getattr(t, "status", "") == "TERMINATED" else None
            if isinstance(v, int | float) and math.isfinite(float(v)):
                v = float(v)
                if self._best is None or (v < self._best[0] if self.mode == "min" else v > self._best[0]):
                    self._best = (v, self._name(t))
        if self._best is not None:
            best = f"; best {self.metric} {self._best[0]:.4g} ({self._best[1]})"
        now = time.monotonic()
        if final:
            tail = f"; took {fmt_duration(now - self._t0)}"
        elif self._durations:
            # the running trials' remaining time, then the pending ones in waves of the current concurrency
            mean = sum(self._durations) / len(self._durations)
            left = [max(0.0, mean - (now - self._started[t.trial_id])) for t in trials
                    if getattr(t, "status", "") == "RUNNING" and t.trial_id in self._started]
            waves = math.ceil(pending / max(running, 1))
            tail = f"; ETA {fmt_duration((max(left) if left else 0.0) + waves * mean)}"
        else:
            tail = "; ETA unknown (no trial finished yet)"
        return (f"sweep {self.sweep}: {done}/{total} done, {running} running, {pending} pending, "
                f"{failed} failed{best}{tail}")


def _error(trial) -> str:
    """The first meaningful line of the trial's last failure (its pickled error, else its error file)."""
    import re

    from trainers.sweep import _error_line

    with contextlib.suppress(Exception):
        err = trial.get_pickled_error()
        if err is not None:
            return _error_line(err)[:160]
    with contextlib.suppress(Exception):
        text = open(trial.error_file).read()  # noqa: SIM115 - small file
        lines = [ln.strip() for ln in text[text.rfind("Failure #"):].splitlines()[1:] if ln.strip()]
        for line in reversed(lines):
            if re.match(r"^[A-Za-z_][\w.]*(Error|Exception|Interrupt)\b.*:", line):
                return re.sub(r"^(ray\.exceptions|ray\.tune\.error)\.", "", line)[:160]
        if lines:  # e.g. a dead node's actor: "The actor ... is unavailable: ..." without a class name
            return lines[0][:160]
    return "error"
