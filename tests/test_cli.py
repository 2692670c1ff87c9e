"""The `keyhand` console script: help, proxy hand files, clear one-line errors."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from typer.testing import CliRunner

from keyhand.geometry.mano import load_mano_model
from pipeline.cli import app

runner = CliRunner()


def test_help_lists_commands() -> None:
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    for cmd in ("make-hand-model", "render-hand", "bench"):
        assert cmd in result.output


def test_console_script_installed() -> None:
    exe = Path(sys.executable).parent / "keyhand"
    out = subprocess.run([str(exe), "--help"], capture_output=True, text=True, check=True)
    assert "make-hand-model" in out.stdout


def test_make_hand_model_is_deterministic(tmp_path: Path) -> None:
    for out in ("a", "b"):
        result = runner.invoke(app, ["make-hand-model", "--out", str(tmp_path / out), "--seed", "3"])
        assert result.exit_code == 0, result.output
        assert "778 vertices" in result.output
    for side in ("RIGHT", "LEFT"):
        a = (tmp_path / "a" / f"MANO_{side}.pkl").read_bytes()
        assert a == (tmp_path / "b" / f"MANO_{side}.pkl").read_bytes()
        load_mano_model(tmp_path / "a" / f"MANO_{side}.pkl")


def test_render_hand_writes_png(tmp_path: Path, proxy_dir: Path) -> None:
    out = tmp_path / "hand.png"
    model = str(proxy_dir / "MANO_RIGHT.pkl")
    result = runner.invoke(app, ["render-hand", "--out", str(out), "--model", model])
    assert result.exit_code == 0, result.output
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_render_hand_missing_model_is_one_line(tmp_path: Path) -> None:
    result = runner.invoke(app, ["render-hand", "--out", str(tmp_path / "x.png"),
                                 "--model", str(tmp_path / "nope.pkl")])
    assert result.exit_code == 2
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and "nope.pkl" in lines[0] and "mano.model_path" in lines[0]
    assert not (tmp_path / "x.png").exists()
