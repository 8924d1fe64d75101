"""Where a bundle's code came from: the git commit and whether the tree differed from it."""

from __future__ import annotations

import subprocess
from pathlib import Path


def _git(args: list[str], cwd: Path | None) -> str | None:
    try:
        out = subprocess.run(
            ["git", *args],
            cwd=cwd or Path.cwd(),
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout


def git_commit(cwd: Path | None = None) -> str | None:
    """The current git commit of the working tree, or None outside a repository."""
    out = _git(["rev-parse", "HEAD"], cwd)
    return (out or "").strip() or None


def git_dirty(cwd: Path | None = None) -> bool | None:
    """Whether tracked files differ from that commit (the code that ran is not the commit's)."""
    out = _git(["status", "--porcelain", "--untracked-files=no"], cwd)
    return None if out is None else bool(out.strip())
