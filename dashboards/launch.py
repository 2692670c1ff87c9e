"""Start the results dashboard: ``streamlit run dashboards/app.py`` on 127.0.0.1, headless, without usage statistics.

    from dashboards.launch import launch, streamlit_command
    launch("params.yaml", port=8501)          # blocks until Ctrl-C; returns streamlit's exit code
    python -m dashboards.launch --params params.yaml --port 8501

The params file names the project (its folder holds ``runs/``) and the MLflow tracking URI
(``mlflow.tracking_uri``, else ``$MLFLOW_TRACKING_URI``, else ``runs/mlflow.db``).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

__all__ = ["APP", "streamlit_command", "launch"]

APP = Path(__file__).resolve().with_name("app.py")


def streamlit_command(params_path: str | os.PathLike = "params.yaml", port: int = 8501, address: str = "127.0.0.1",
                      extra: list[str] | None = None) -> list[str]:
    """The ``streamlit run`` command line (list) that serves the dashboard for ``params_path``.

    ``extra`` are more ``--section.option value`` flags for streamlit (before the ``--``).
    """
    if not 0 < int(port) < 65536:
        raise ValueError(f"dashboard port {port}: expected 1-65535")
    return [sys.executable, "-m", "streamlit", "run", str(APP), "--server.headless", "true",
            "--browser.gatherUsageStats", "false", "--server.address", str(address), "--server.port", str(int(port)),
            *(extra or []), "--", "--params", str(Path(params_path).expanduser().resolve())]


def launch(params_path: str | os.PathLike = "params.yaml", port: int = 8501, address: str = "127.0.0.1") -> int:
    """Serve the dashboard until interrupted (prints the URL); returns streamlit's exit code (0 after Ctrl-C)."""
    params = Path(params_path).expanduser().resolve()
    if not params.is_file():
        print(f"dashboard: {params}: no such params file; the dashboard shows the default paths "
              f"({params.parent / 'runs'})", file=sys.stderr)
    print(f"keyhand dashboard: http://{address}:{port}  (project {params.parent}; Ctrl-C stops it)", flush=True)
    proc = subprocess.Popen(streamlit_command(params, port, address), cwd=params.parent)
    try:
        return proc.wait()
    except KeyboardInterrupt:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
        return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m dashboards.launch", description=__doc__.splitlines()[0])
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--port", type=int, default=8501)
    ap.add_argument("--address", default="127.0.0.1")
    a = ap.parse_args(argv)
    return launch(a.params, a.port, a.address)


if __name__ == "__main__":
    raise SystemExit(main())
