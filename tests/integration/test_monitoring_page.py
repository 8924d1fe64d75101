"""The web page warns on out-of-distribution photos, in a real headless Chromium."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.helpers.paths import OOD_PHOTOS, require_default_model
from tests.helpers.photos import synthetic_photos
from tests.helpers.server import run_server

pytestmark = pytest.mark.integration

# Outside the repository on purpose: the screenshot shows a photo from ../shared/data.
SCREENSHOT = Path("/tmp/fisheye-ood-warning.png")


def _upload(page, url: str, files: list[Path]) -> None:
    page.goto(url)
    page.wait_for_selector("#model-info:has-text('version')", timeout=30_000)
    page.set_input_files("#file-input", [str(f) for f in files])
    page.wait_for_selector(f"#status:has-text('of {len(files)}')", timeout=60_000)


def test_page_warns_on_ood_and_still_shows_the_prediction(
    browser, monitored_bundle: Path, tmp_path: Path, synthetic_dataset: Path
) -> None:
    # A near-1 false-alarm rate makes the tiny model call (almost) every photo OOD.
    env = {"FISHEYE_OOD_FALSE_ALARM_RATE": "0.999", "FISHEYE_PREDICTION_DB": str(tmp_path / "l")}
    photos = synthetic_photos(synthetic_dataset)[:4]
    noise = tmp_path / "noise.png"
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(noise)
    with run_server(monitored_bundle, tmp_path, **env) as server:
        page = browser.new_page()
        _upload(page, server.url, [*photos, noise])
        warnings = page.locator(".card.done .ood-warning:visible")
        assert warnings.count() >= 1
        assert "does not look like" in warnings.first.inner_text()
        # The prediction is still shown on every card, warned or not.
        assert all(page.locator(".card.done .result-label").all_inner_texts())
        assert page.locator(".card.ood .bar").count() > 0


def test_default_model_page_warns_on_a_web_photo(browser, tmp_path: Path) -> None:
    model = require_default_model()
    if not (model / "drift_reference.safetensors").is_file():
        pytest.skip("the default model has no drift reference yet (fisheye drift fit)")
    if not OOD_PHOTOS.is_dir():
        pytest.skip(f"OOD photos not found at {OOD_PHOTOS} (they live in ../shared/data)")
    photos = sorted(OOD_PHOTOS.glob("*.jpg"))[:4]
    with run_server(model, tmp_path, FISHEYE_PREDICTION_DB=str(tmp_path / "log")) as server:
        page = browser.new_page(viewport={"width": 1000, "height": 900})
        _upload(page, server.url, photos)
        warned = page.locator(".card.done .ood-warning:visible").count()
        assert warned >= 3, "web photos of other fish should be flagged"
        page.screenshot(path=str(SCREENSHOT), full_page=True)
