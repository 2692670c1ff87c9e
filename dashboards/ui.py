"""Small Streamlit helpers shared by the pages: the project (or a one-line error), run labels, the empty state."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from dashboards import data

__all__ = ["project_or_stop", "runs_or_stop", "run_label", "no_runs", "with_labels"]


def project_or_stop() -> data.Project:
    """The dashboard's project; a bad params file or tracking URI shows one error line and stops the page."""
    try:
        return data.project()
    except data.ProjectError as e:
        st.error(str(e))
        st.stop()
        raise  # unreachable (st.stop raises); keeps type checkers happy


def runs_or_stop(proj: data.Project) -> pd.DataFrame:
    """All runs of the project's experiments (labelled), or one error line when the store cannot be read."""
    try:
        return with_labels(data.runs_table(proj.tracking_uri, proj.experiment_names))
    except data.ProjectError as e:
        st.error(str(e))
        st.stop()
        raise
    except Exception as e:  # an MLflow store that exists but cannot be read (locked, newer schema...)
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        st.error(f"MLflow store {proj.tracking_uri}: cannot be read ({type(e).__name__}: {first[:300]})")
        st.stop()
        raise


def run_label(row: pd.Series) -> str:
    """``<run name> · <experiment> · <MM-DD HH:MM> · <id[:6]>`` (unique by the id)."""
    start = row.get("start_time")
    when = start.strftime("%m-%d %H:%M") if isinstance(start, pd.Timestamp) and not pd.isna(start) else "?"
    exp = str(row.get("experiment", "")).removeprefix("keyhand-")
    return f"{row['run_name']} · {exp} · {when} · {str(row['run_id'])[:6]}"


def with_labels(runs: pd.DataFrame) -> pd.DataFrame:
    out = runs.copy()
    out["label"] = [run_label(r) for _, r in out.iterrows()] if not out.empty else []
    return out


def no_runs(proj: data.Project, what: str = "runs") -> None:
    """The empty state: which command fills the project (instead of failing)."""
    st.info(f"No {what} yet in {proj.root}. Run the experiment graph first: `{data.NO_RUNS_HINT}` "
            f"(or `dvc repro` in the project folder), then reload this page.")
    st.code(f"cd {proj.root}\n{data.NO_RUNS_HINT}      # or: dvc repro", language="bash")
