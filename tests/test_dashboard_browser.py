"""The dashboard in a real browser: `streamlit run` on 127.0.0.1 + headless Chromium driven by Playwright.

The test builds the populated tmp project of ``test_dashboard.build_project`` (a real MLflow store and report
files), starts ``dashboards.launch.streamlit_command`` (the command ``keyhand dashboard`` runs) as a subprocess
in its own process group on a free port, waits for ``/_stcore/health``, and opens every page from the sidebar in
Debian's Chromium (``executable_path`` = the system ``chromium``; Playwright never downloads a browser). When
``chromium`` is missing the test installs it with ``apt-get install -y chromium`` and skips, naming the reason,
only when that is impossible. It asserts the visible tables and plots (the paper's Table 1 labels, plotly charts
and their trace types read from the page, the Fig. 6 panel image), saves one screenshot per page under the
pytest tmp folder (and into ``$KEYHAND_SCREENSHOTS`` when set), then stops the server: SIGTERM to its process
group, SIGKILL after 10 s.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest
from test_dashboard import build_project

#: sidebar entry -> the page's title (h1)
PAGES = {"Overview": "keyhand results", "Tables": "The paper's tables beside ours", "PCK curves": "3D PCK curves",
         "Gesture CV": "Gesture recognition: cross-validation", "Meshes": "Fig. 6 panels and meshes",
         "Runs": "MLflow runs"}


def _chromium() -> str:
    """The system chromium; installed with apt-get when missing (skip, with the reason, only if impossible)."""
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found:
        return found
    if shutil.which("apt-get") is None:
        pytest.skip("chromium is not installed and there is no apt-get to install it (apt-get install -y chromium)")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    out = subprocess.run(["apt-get", "install", "-y", "chromium"], capture_output=True, text=True, env=env,
                         timeout=600)
    if out.returncode != 0:  # stale package lists: refresh once
        subprocess.run(["apt-get", "update"], capture_output=True, text=True, env=env, timeout=300)
        out = subprocess.run(["apt-get", "install", "-y", "chromium"], capture_output=True, text=True, env=env,
                             timeout=600)
    found = shutil.which("chromium")
    if out.returncode != 0 or not found:
        last = (out.stderr.strip().splitlines() or ["no output"])[-1]
        pytest.skip(f"chromium is missing and `apt-get install -y chromium` failed: {last}")
    return found


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_healthy(url: str, proc: subprocess.Popen, log: Path, timeout_s: float = 60.0) -> None:
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout_s:
        if proc.poll() is not None:
            raise AssertionError(f"streamlit exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.3)
    raise AssertionError(f"streamlit did not answer on {url} within {timeout_s} s:\n{log.read_text()[-3000:]}")


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, keyhand_cache: Path):
    """The dashboard of the populated tmp project, served by a real `streamlit run` subprocess."""
    from dashboards.launch import streamlit_command

    project = build_project(tmp_path_factory.getbasetemp() / "dashboard-project")
    port = _free_port()
    log = tmp_path_factory.mktemp("streamlit-log") / "streamlit.log"
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    cmd = streamlit_command(project["params"], port, extra=["--server.fileWatcherType", "none"])
    with log.open("w") as fh:
        proc = subprocess.Popen(cmd, cwd=project["root"], stdout=fh, stderr=subprocess.STDOUT, env=env,
                                start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_healthy(url, proc, log)
        yield {"url": url, "project": project, "log": log}
    finally:
        _stop(proc)
    assert proc.returncode is not None


def _settle(page, timeout_ms: int = 60_000) -> None:
    """Wait until the script run of the page has finished (Streamlit marks the app root)."""
    page.wait_for_selector("[data-testid='stApp'][data-test-script-state='notRunning']", timeout=timeout_ms)
    page.wait_for_timeout(400)  # let plotly finish drawing


def _trace_types(page) -> list[list[str]]:
    """The trace types of every plotly chart on the page (plotly keeps the figure on its graph div)."""
    return page.evaluate("() => Array.from(document.querySelectorAll('.js-plotly-plot'))"
                         ".map(d => (d.data || []).map(t => t.type || 'scatter'))")


@pytest.mark.slow
def test_every_page_in_chromium(server: dict, tmp_path: Path) -> None:
    pw = pytest.importorskip("playwright.sync_api", reason="playwright is in the test extra: pip install -e '.[test]'")
    executable = _chromium()
    shots = [tmp_path / "screenshots"]
    if os.environ.get("KEYHAND_SCREENSHOTS"):
        shots.append(Path(os.environ["KEYHAND_SCREENSHOTS"]))
    for d in shots:
        d.mkdir(parents=True, exist_ok=True)
    from pipeline.report import load_paper_results

    table1 = [r["label"] for r in load_paper_results()["tables"]["table1"]["rows"]]
    errors: list[str] = []
    with pw.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=executable, headless=True,
                                    args=["--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu"])
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1500})
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto(server["url"], wait_until="domcontentloaded")
            page.wait_for_selector("h1", timeout=60_000)
            _settle(page)
            nav = page.locator("[data-testid='stSidebarNav']")
            for title in PAGES:
                nav.get_by_text(title, exact=True).click()
                page.locator("h1", has_text=PAGES[title]).wait_for(timeout=30_000)
                _settle(page)
                body = page.locator("[data-testid='stMain']")
                assert not page.locator("[data-testid='stException']").count(), title
                assert not page.locator("[data-testid='stAlertContentError']").count(), title
                if title == "Overview":
                    assert body.get_by_text("keyhand results", exact=True).is_visible()
                    assert page.locator("[data-testid='stMetricValue']").count() == 8   # the paper's + beyond it
                    assert page.locator("[data-testid='stDataFrame']").count() >= 1
                elif title == "Tables":
                    assert body.get_by_text("Table 1: Semantic feature extractor ablation study").first.is_visible()
                    assert body.get_by_text("Controls: does the framework beat trivial baselines?").is_visible()
                    assert page.locator("[data-testid='stDataFrame']").count() == 8   # controls, tables 1-6, timings
                    types = _trace_types(page)
                    assert len(types) == 2 and all(t == ["bar", "bar"] for t in types)
                    ticks = page.locator(".js-plotly-plot").first.locator(".xtick text").all_text_contents()
                    assert ticks == table1, ticks                    # the paper's Table 1 labels, on screen
                elif title == "PCK curves":
                    types = _trace_types(page)
                    assert types[0] == ["scatter"] and types[1] == ["bar"]
                    assert page.locator(".js-plotly-plot .scatterlayer .trace").count() >= 1
                    assert body.get_by_text("Beyond the paper", exact=True).is_visible()
                elif title == "Gesture CV":
                    assert "heatmap" in sum(_trace_types(page), [])
                    assert body.get_by_text("Accuracy per fold").first.is_visible()
                elif title == "Meshes":
                    img = page.locator("[data-testid='stImage'] img").first
                    img.wait_for(state="visible", timeout=30_000)
                    assert page.evaluate("i => i.complete && i.naturalWidth > 0", img.element_handle())
                    types = _trace_types(page)
                    assert types and types[0][0] == "mesh3d" and types[0].count("scatter3d") == 10
                    assert page.locator(".js-plotly-plot .gl-container canvas").count() >= 1   # WebGL scene drawn
                elif title == "Runs":
                    assert body.get_by_text("Compare runs").is_visible()
                    assert page.locator("[data-testid='stDataFrame']").count() == 2
                    assert _trace_types(page) and _trace_types(page)[0][0] == "scatter"
                name = f"dashboard_{title.lower().replace(' ', '_')}.png"
                for d in shots:
                    page.screenshot(path=str(d / name))
        finally:
            browser.close()
    assert not errors, errors
    for d in shots:
        assert len(list(d.glob("dashboard_*.png"))) == len(PAGES)
