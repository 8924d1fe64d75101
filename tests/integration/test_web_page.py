"""The web page in a real headless Chromium (Debian's /usr/bin/chromium via Playwright)."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers.bundles import TINY_NAME
from tests.helpers.paths import FISH_CLASSES, require_default_model, val_photos
from tests.helpers.server import Server, run_server

pytestmark = pytest.mark.integration

SCREENSHOT_COPY = Path("/tmp/fisheye-page.png")  # a copy for people reviewing the page


@pytest.fixture(scope="module")
def tiny_server(tiny_bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    tmp = tmp_path_factory.mktemp("page-tiny")
    with run_server(tiny_bundle, tmp) as srv:
        yield srv


def _upload(page, url: str, files: list[Path]) -> None:
    page.goto(url)
    page.wait_for_selector("#model-info:has-text('version')", timeout=30_000)
    page.set_input_files("#file-input", [str(f) for f in files])


def test_page_uploads_and_reports_errors(browser, tiny_server: Server, tmp_path: Path) -> None:
    page = browser.new_page(viewport={"width": 390, "height": 844})  # a phone-sized screen
    (tmp_path / "notes.jpg").write_text("not a photo")
    photo = val_photos(per_class=1)[0][1]
    _upload(page, tiny_server.url, [photo, tmp_path / "notes.jpg"])
    page.wait_for_selector("#status:has-text('1 of 2')", timeout=30_000)
    labels = page.locator(".card.done .result-label").all_inner_texts()
    assert len(labels) == 1 and labels[0] in FISH_CLASSES
    assert page.locator(".card.done .bar").count() == 5
    assert TINY_NAME in page.locator("#model-info").inner_text()
    assert " ms" in page.locator(".card.done .meta").inner_text()
    error = page.locator(".card.failed .error")
    assert "not a photo FishEye can read" in error.inner_text()
    # Keyboard: the file picker is reachable with Tab.
    page.keyboard.press("Tab")
    page.keyboard.press("Tab")
    assert page.evaluate("document.activeElement.id") == "file-input"
    assert page.locator("a[href='/docs']").count() == 1
    page.screenshot(path=str(tmp_path / "page-tiny.png"), full_page=True)
    if not SCREENSHOT_COPY.exists():  # the default-model test overwrites it when it runs
        shutil.copyfile(tmp_path / "page-tiny.png", SCREENSHOT_COPY)
    page.close()


def test_real_photo_shows_right_species(browser, tmp_path_factory: pytest.TempPathFactory) -> None:
    model = require_default_model()
    species, photo = val_photos(per_class=1)[len(FISH_CLASSES) // 2]
    tmp = tmp_path_factory.mktemp("page-default")
    with run_server(model, tmp) as srv:
        page = browser.new_page(viewport={"width": 1100, "height": 800})
        _upload(page, srv.url, [photo])
        label = page.locator(".card.done .result-label")
        label.wait_for(timeout=30_000)
        shot = tmp / "page-default.png"
        page.screenshot(path=str(shot), full_page=True)
        shutil.copyfile(shot, SCREENSHOT_COPY)
        assert label.inner_text() == species
        page.close()


def test_page_asks_for_the_api_key_a_server_needs(
    browser, tiny_bundle: Path, tmp_path: Path
) -> None:
    photo = val_photos(per_class=1)[0][1]
    with run_server(tiny_bundle, tmp_path, FISHEYE_API_KEYS="market-key-1") as srv:
        page = browser.new_page(viewport={"width": 1100, "height": 800})
        page.goto(srv.url)
        page.wait_for_selector("#model-info:has-text('version')", timeout=30_000)
        assert page.locator("#api-key-form").count() == 1
        assert page.locator("#api-key-form").is_hidden()  # until the server asks for a key
        page.set_input_files("#file-input", [str(photo)])
        page.wait_for_selector("#status:has-text('0 of 1')", timeout=30_000)
        assert "needs an API key" in page.locator(".card.failed .error").inner_text()
        assert page.locator("#api-key-form").is_visible()

        page.fill("#api-key", "wrong-key")
        page.press("#api-key", "Enter")
        assert page.locator("#api-key-form").is_hidden()
        page.set_input_files("#file-input", [str(photo)])
        page.wait_for_selector(".card.failed .error:has-text('not accepted')", timeout=30_000)
        assert page.locator("#api-key-form").is_visible()

        page.fill("#api-key", "market-key-1")
        page.click("#api-key-form button")
        page.set_input_files("#file-input", [str(photo)])
        page.wait_for_selector(".card.done .result-label", timeout=30_000)
        assert page.locator(".card.done .result-label").inner_text() in FISH_CLASSES
        # The key stays in the tab (sessionStorage), never in the page's address or cookies.
        assert page.evaluate("sessionStorage.getItem('fisheye-api-key')") == "market-key-1"
        assert "market-key-1" not in page.url and not page.context.cookies()
        page.close()
