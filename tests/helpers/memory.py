"""Resident memory of a process, read from /proc (Linux)."""

from __future__ import annotations

from pathlib import Path


def _status_kb(pid: int, key: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise KeyError(key)


def rss_mb(pid: int) -> float:
    """Resident memory now, in MiB."""
    return _status_kb(pid, "VmRSS") / 1024


def peak_mb(pid: int) -> float:
    """Peak resident memory since the last `reset_peak`, in MiB."""
    return _status_kb(pid, "VmHWM") / 1024


def reset_peak(pid: int) -> None:
    """Make the peak (VmHWM) start again from the current resident memory."""
    Path(f"/proc/{pid}/clear_refs").write_text("5")
