"""The default model's exported ONNX and int8 forms on real photos (skips when absent)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from fisheye.bundle import BUNDLE_JSON, BundleError, load_bundle
from fisheye.data.files import collect_image_paths
from fisheye.inference.backends import EXPORTED, exported_entries, select_backend
from fisheye.inference.measure import LabelledSet, backend_accuracy, load_labelled_set, preprocessed
from fisheye.inference.predictor import Predictor
from fisheye.monitoring.drift_check import check_photos
from fisheye.monitoring.loading import load_model
from tests.helpers.bundles import copy_bundle, measured_elsewhere
from tests.helpers.paths import DEFAULT_MODEL, OOD_PHOTOS, VAL

pytestmark = pytest.mark.integration

SUBSET = 300  # photos, spread over every class
# MiB: Lite2 weights, two ONNX forms, two drift references, the training photos' descriptors.
MAX_BUNDLE_MB = 64

if not (DEFAULT_MODEL / BUNDLE_JSON).is_file():
    pytest.skip(f"no default model bundle at {DEFAULT_MODEL}", allow_module_level=True)
if not VAL.is_dir():
    pytest.skip(f"real photos not available at {VAL} (../shared/data)", allow_module_level=True)


def _exported(backend: str) -> None:
    if backend not in exported_entries(load_bundle(DEFAULT_MODEL).meta):
        pytest.skip(f"models/default has no {backend} export yet (fisheye export --format ...)")


@pytest.fixture(scope="module")
def real_set() -> LabelledSet:
    bundle = load_bundle(DEFAULT_MODEL)
    return load_labelled_set(VAL, bundle.classes, limit=SUBSET)


def _first_photos(predictor: Predictor, real_set: LabelledSet, n: int) -> np.ndarray:
    """The model inputs of the first n photos of the set, as one batch."""
    return np.stack(preprocessed(predictor, real_set.paths[:n]))


def test_onnx_matches_eager_on_real_photos(real_set: LabelledSet) -> None:
    _exported("onnx")
    eager = Predictor.from_dir(DEFAULT_MODEL, backend="torch")
    fast = Predictor.from_dir(DEFAULT_MODEL, backend="onnx")
    batch = _first_photos(eager, real_set, 16)
    ref, got = eager.infer(batch), fast.infer(batch)
    np.testing.assert_allclose(got.probabilities, ref.probabilities, atol=1e-4)
    np.testing.assert_allclose(got.features, ref.features, atol=1e-3, rtol=1e-3)


def test_auto_serves_within_half_a_point_of_fp32(real_set: LabelledSet) -> None:
    """Whatever this CPU is: int8 when it holds here, else fp32 (the host check's fallback)."""
    bundle = load_bundle(DEFAULT_MODEL)
    fp32 = backend_accuracy(bundle, Predictor(bundle, backend="torch").backend, real_set)
    served = Predictor(bundle)
    auto = backend_accuracy(bundle, served.backend, real_set)
    assert fp32 is not None and auto is not None
    assert auto >= fp32 - 0.005, (
        f"{served.backend_name} ({served.backend_selection.status}) {auto:.2%} vs fp32 {fp32:.2%} "
        f"on {len(real_set)} photos"
    )


def test_committed_int8_holds_on_this_cpu(tmp_path: Path) -> None:
    """The int8 export computes here what it computed where it was measured (7-bit weights).

    Its figures are marked as measured on another CPU, so `auto` runs the host check.
    """
    _exported("onnx-int8")
    copy = copy_bundle(DEFAULT_MODEL, tmp_path / "default")
    measured_elsewhere(copy)
    choice = Predictor.from_dir(copy).backend_selection
    check = choice.checks[0]
    assert choice.backend.name == "onnx-int8", check.detail
    assert check.status == "passed" and check.deviation <= check.limit


def test_served_monitoring_passes_val_photos_and_flags_web_photos() -> None:
    """Drift and OOD mean the same on this CPU: healthy photos pass, other fish are flagged."""
    if not OOD_PHOTOS.is_dir():
        pytest.skip(f"OOD photos not found at {OOD_PHOTOS} (they live in ../shared/data)")
    predictor, monitor = load_model(DEFAULT_MODEL)
    assert monitor is not None and monitor.matches_backend
    val = check_photos(predictor, monitor, collect_image_paths([VAL]), sample_size=200)
    web = check_photos(predictor, monitor, collect_image_paths([OOD_PHOTOS]), sample_size=200)
    assert not val.result.drift and val.result.ood_fraction < 0.15, val.to_json()
    assert web.result.drift and web.result.ood_fraction > 0.8, web.to_json()


def test_int8_features_feed_monitoring(real_set: LabelledSet) -> None:
    _exported("onnx-int8")
    predictor = Predictor.from_dir(DEFAULT_MODEL, backend="onnx-int8")
    out = predictor.infer(_first_photos(predictor, real_set, 4))
    assert out.features.shape == (4, predictor.bundle.build_model().num_features)
    assert np.isfinite(out.features).all()


def test_default_bundle_auto_backend_and_size() -> None:
    bundle = load_bundle(DEFAULT_MODEL)
    size_mb = sum(p.stat().st_size for p in DEFAULT_MODEL.iterdir() if p.is_file()) / 2**20
    assert size_mb <= MAX_BUNDLE_MB
    predictor = Predictor(bundle)
    assert predictor.backend_name == select_backend(bundle.meta)
    assert predictor.backend_selection.status in ("same_cpu", "passed")
    if exported_entries(bundle.meta):
        assert predictor.backend_name in EXPORTED  # `make serve` takes the fast path


def test_tampered_default_onnx_is_refused(tmp_path: Path) -> None:
    _exported("onnx-int8")
    copy = copy_bundle(DEFAULT_MODEL, tmp_path / "default")
    name = exported_entries(load_bundle(copy).meta)["onnx-int8"][0]
    data = bytearray((copy / name).read_bytes())
    data[-100] ^= 0x01
    (copy / name).write_bytes(bytes(data))
    with pytest.raises(BundleError, match="integrity"):
        Predictor.from_dir(copy, backend="onnx-int8")
