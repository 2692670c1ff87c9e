"""Process helpers for the tests that start real servers (Ray nodes, MLflow): free ports, live processes."""

from __future__ import annotations

import os
import socket
from pathlib import Path


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def procs() -> dict[int, tuple[int, str]]:
    """pid -> (session id, command line) of every live (non-zombie) process we can read."""
    out = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
            fields = stat[stat.rindex(")") + 2:].split()
            cmd = Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if fields[0] != "Z":
            out[int(entry)] = (int(fields[3]), cmd)
    return out


def session_pids(sid: int, marker: str) -> set[int]:
    """Live processes of session ``sid`` or whose command line contains ``marker`` (e.g. a temp dir)."""
    return {pid for pid, (s, cmd) in procs().items() if s == sid or marker in cmd}
