"""Shared fixtures: a hermetic keyhand cache and the proxy hand files, built once per session."""

from __future__ import annotations

import os
from pathlib import Path

import pytest


@pytest.fixture(scope="session", autouse=True)
def keyhand_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Point $KEYHAND_CACHE at a session folder so tests never touch the user's cache."""
    path = tmp_path_factory.mktemp("keyhand-cache")
    old = os.environ.get("KEYHAND_CACHE")
    os.environ["KEYHAND_CACHE"] = str(path)
    yield path
    if old is None:
        os.environ.pop("KEYHAND_CACHE", None)
    else:
        os.environ["KEYHAND_CACHE"] = old


@pytest.fixture(scope="session")
def proxy_dir(keyhand_cache: Path) -> Path:
    """A folder holding the proxy MANO_RIGHT.pkl and MANO_LEFT.pkl (seed 0)."""
    from keyhand.geometry.proxy_hand import write_proxy_hand

    folder = keyhand_cache / "proxy-files"
    for side in ("right", "left"):
        write_proxy_hand(folder / f"MANO_{side.upper()}.pkl", seed=0, side=side)
    return folder
