"""Processes found through /proc (Linux only): a process's descendants, Ray's train workers
among them, and SIGKILLing only the trees a test started."""

from __future__ import annotations

import contextlib
import os
import signal
import time
from pathlib import Path


def processes() -> dict[int, tuple[int, list[str]]]:
    """pid -> (parent pid, command line as the process shows it; Ray workers show their task)."""
    out = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        out[int(entry)] = (ppid, [c.decode(errors="replace") for c in cmdline.split(b"\0") if c])
    return out


def tree(root: int) -> dict[int, list[str]]:
    """`root` and every process below it, with their command lines."""
    procs = processes()
    children: dict[int, list[int]] = {}
    for pid, (ppid, _) in procs.items():
        children.setdefault(ppid, []).append(pid)
    found, todo = {}, [root]
    while todo:
        pid = todo.pop()
        if pid in procs:
            found[pid] = procs[pid][1]
            todo += children.get(pid, [])
    return found


def kill_tree(root: int) -> None:
    """SIGKILL `root` and its descendants, listed first: Ray workers run in their own process
    groups, and once their raylet is gone they would no longer be found under it."""
    for pid in tree(root):
        with contextlib.suppress(ProcessLookupError):  # gone already
            os.kill(pid, signal.SIGKILL)


def wait_gone(pid: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            return
        if state in ("Z", "X"):
            return
        time.sleep(0.02)


def train_workers(root: int) -> list[int]:
    """Ray workers below `root` running a train_task now (Ray sets the process title)."""
    return sorted(pid for pid, cmd in tree(root).items() if cmd and cmd[0].startswith("ray::train_task"))
