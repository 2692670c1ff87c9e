"""One way to write a file so that a reader never sees half of it: a temporary file beside it, then a rename.

    from keyhand.atomic import atomic_path, atomic_write_bytes, atomic_write_text, atomic_write_json
    atomic_write_json("runs/metrics/train.json", {"epe_mean": 12.1})
    with atomic_path("out/predictions.npz") as tmp:      # any writer that takes a path (np.savez, fig.savefig)
        np.savez_compressed(tmp, **arrays)

The temporary file is ``.<name>.<pid>.<random>.tmp<suffix>`` in the target's folder (same file system, so
``os.replace`` is atomic; the target's suffix is kept so writers that pick a format by extension work). A
failure or a kill leaves the previous file (or none) and no temporary file under the final name; on an
exception the temporary file is removed. ``fsync=True`` also flushes the file and the folder to disk
(checkpoints), so a power cut cannot leave an empty file under the final name.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

__all__ = ["atomic_path", "atomic_write_bytes", "atomic_write_text", "atomic_write_json", "fsync_dir"]


def fsync_dir(folder: str | os.PathLike) -> None:
    """Flush a folder's entries (a rename in it) to disk; a no-op where folders cannot be opened."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # pragma: no cover - platforms without directory fds
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover
        pass
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, fsync: bool = False) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; when the block ends without an exception it becomes ``path``."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.{os.getpid()}.{secrets.token_hex(3)}.tmp{target.suffix}")
    try:
        yield tmp
        if fsync:
            with open(tmp, "rb+") as f:
                os.fsync(f.fileno())
        os.replace(tmp, target)
        if fsync:
            fsync_dir(target.parent)
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write_bytes(path: str | os.PathLike, data: bytes, fsync: bool = False) -> Path:
    """Write ``data`` to ``path`` atomically; returns the path."""
    with atomic_path(path, fsync) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def atomic_write_text(path: str | os.PathLike, text: str, fsync: bool = False) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically; returns the path."""
    return atomic_write_bytes(path, text.encode("utf-8"), fsync)


def atomic_write_json(path: str | os.PathLike, obj: Any, indent: int | None = 2, **kw: Any) -> Path:
    """Write ``obj`` as JSON (``json.dumps(obj, indent=indent, **kw)``) to ``path`` atomically."""
    return atomic_write_text(path, json.dumps(obj, indent=indent, **kw))
