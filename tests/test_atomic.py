"""keyhand.atomic: the one helper every file writer uses — a reader sees the old file or the new one, never half."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from keyhand.atomic import atomic_path, atomic_write_json, atomic_write_text


def test_a_failed_write_keeps_the_previous_file_and_leaves_no_temporary(tmp_path: Path) -> None:
    path = atomic_write_json(tmp_path / "sub" / "m.json", {"epe": 1.5})
    with pytest.raises(RuntimeError), atomic_path(path) as tmp:
        tmp.write_text('{"epe": ')                      # half written, then the writer dies
        raise RuntimeError("killed")
    assert json.loads(path.read_text()) == {"epe": 1.5} and [p.name for p in path.parent.iterdir()] == ["m.json"]
    atomic_write_text(path, "new", fsync=True)
    assert path.read_text() == "new" and len(list(path.parent.iterdir())) == 1


def test_writers_that_choose_the_format_by_suffix(tmp_path: Path) -> None:
    with atomic_path(tmp_path / "p.npz") as tmp:
        assert tmp.suffix == ".npz" and tmp.name.startswith(".p.npz.")
        np.savez_compressed(tmp, a=np.arange(3))      # would append .npz to a name without it
    assert np.load(tmp_path / "p.npz")["a"].tolist() == [0, 1, 2] and len(list(tmp_path.iterdir())) == 1
