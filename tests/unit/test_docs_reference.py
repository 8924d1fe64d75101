"""The API reference lists every module of the package (docs/reference/*.md)."""

from __future__ import annotations

import re

from tests.helpers.paths import REPO_ROOT

SRC = REPO_ROOT / "src" / "fisheye"
REFERENCE = REPO_ROOT / "docs" / "reference"


def _modules() -> set[str]:
    found = set()
    for path in SRC.rglob("*.py"):
        parts = path.relative_to(SRC.parent).with_suffix("").parts
        if "conf" in parts:
            continue
        if parts[-1] == "__init__":
            parts = parts[:-1]
            # A package page starts with its docstring; the root holds only __version__.
            if len(parts) == 1 or not path.read_text().strip():
                continue
        found.add(".".join(parts))
    return found


def _documented() -> set[str]:
    text = "\n".join(p.read_text() for p in REFERENCE.glob("*.md"))
    return set(re.findall(r"^::: (fisheye[\w.]*)\s*$", text, flags=re.M))


def test_every_module_is_in_the_api_reference() -> None:
    missing = sorted(_modules() - _documented())
    assert not missing, f"add to docs/reference/*.md: {missing}"


def test_the_api_reference_names_no_module_that_is_gone() -> None:
    stale = sorted(_documented() - _modules())
    assert not stale, f"remove from docs/reference/*.md: {stale}"
