"""Fixtures shared by the integration tests: a monitored bundle, a headless Chromium."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers.bundles import make_monitored_bundle

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
# Without the background-networking flags Chromium keeps dialling out on this closed network.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


# Module scope, not session: Playwright's sync API keeps an event loop running in this thread
# while it is open, which would break later tests that call asyncio.run().
@pytest.fixture(scope="module")
def browser() -> Iterator:
    """Debian's Chromium driven by Playwright; skips with the reason when it cannot start."""
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")
    if not Path(CHROMIUM).is_file():
        pytest.skip(f"Chromium not found at {CHROMIUM} (apt-get install chromium)")
    with sync_api.sync_playwright() as pw:
        try:
            b = pw.chromium.launch(
                executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS, timeout=60_000
            )
        except Exception as exc:  # any launch failure means no browser here, not a bug
            pytest.skip(f"headless Chromium cannot start: {exc}")
        try:
            yield b
        finally:
            b.close()


@pytest.fixture(scope="session")
def monitored_bundle(tmp_path_factory: pytest.TempPathFactory, synthetic_dataset: Path) -> Path:
    """The tiny bundle with a drift reference fitted on the synthetic photos (read-only)."""
    out = tmp_path_factory.mktemp("monitored") / "bundle"
    return make_monitored_bundle(out, synthetic_dataset)
