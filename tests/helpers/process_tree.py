"""A process and its descendants, read from /proc (Linux): resident memory and CPU time.

A server that decodes in worker processes holds memory in them too; what it costs is the
whole tree's, not the first process's.
"""

from __future__ import annotations

import contextlib
import os
import threading
from pathlib import Path

_TICK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def descendants(pid: int) -> list[int]:
    """`pid` and every process below it, alive now."""
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        for task in Path(f"/proc/{current}/task").glob("*/children"):
            with contextlib.suppress(OSError):
                todo.extend(int(c) for c in task.read_text().split())
    return found


def tree_rss_mb(pid: int) -> float:
    """Resident memory of the process and its descendants now, in MiB."""
    total = 0
    for p in descendants(pid):
        try:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        except OSError:
            pass  # the process ended meanwhile
    return total / 1024


def tree_cpu_s(pid: int) -> float:
    """CPU seconds used by the process, its waited-for children and its live descendants."""
    total = 0
    for p in descendants(pid):
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        # utime stime (and for the top process cutime cstime: ended children it reaped)
        used = fields[11:13] + (fields[13:15] if p == pid else [])
        total += sum(int(v) for v in used)
    return total / _TICK


class PeakSampler:
    """Samples the tree's resident memory every `interval_s` in a thread; `peak_mb` is
    the largest sum seen (a short spike between two samples can be missed)."""

    def __init__(self, pid: int, interval_s: float = 0.02) -> None:
        self.pid, self.interval_s, self.peak_mb = pid, interval_s, 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak_mb = max(self.peak_mb, tree_rss_mb(self.pid))
            self._stop.wait(self.interval_s)

    def __enter__(self) -> PeakSampler:
        self.peak_mb = tree_rss_mb(self.pid)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak_mb = max(self.peak_mb, tree_rss_mb(self.pid))
