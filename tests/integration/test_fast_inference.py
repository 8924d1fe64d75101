"""The default model's exported ONNX and int8 forms on real photos (skips when absent)."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from fisheye.bundle import BUNDLE_JSON, DEFAULT_BUNDLE, BundleError, load_bundle
from fisheye.inference.backends import ONNX_BACKENDS, exported_entries, select_backend
from fisheye.inference.measure import accuracy, load_labelled_set
from fisheye.inference.predictor import Predictor

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
VAL = REPO.parent / "shared" / "data" / "fish-256" / "val"
SUBSET = 300  # photos, spread over every class
MAX_BUNDLE_MB = 40

if not (DEFAULT_BUNDLE / BUNDLE_JSON).is_file():
    pytest.skip(f"no default model bundle at {DEFAULT_BUNDLE}", allow_module_level=True)
if not VAL.is_dir():
    pytest.skip(f"real photos not available at {VAL} (../shared/data)", allow_module_level=True)


def _exported(backend: str) -> None:
    if backend not in exported_entries(load_bundle(DEFAULT_BUNDLE).meta):
        pytest.skip(f"models/default has no {backend} export yet (fisheye export --format ...)")


@pytest.fixture(scope="module")
def real_set():
    bundle = load_bundle(DEFAULT_BUNDLE)
    return load_labelled_set(VAL, bundle.classes, bundle.preprocessing, limit=SUBSET)


def test_onnx_matches_eager_on_real_photos(real_set) -> None:
    _exported("onnx")
    eager = Predictor.from_dir(DEFAULT_BUNDLE, backend="torch")
    fast = Predictor.from_dir(DEFAULT_BUNDLE, backend="onnx")
    batch, _ = next(real_set.batches(eager.preprocessing, 16))
    ref, got = eager.infer(batch), fast.infer(batch)
    np.testing.assert_allclose(got.probabilities, ref.probabilities, atol=1e-4)
    np.testing.assert_allclose(got.features, ref.features, atol=1e-3, rtol=1e-3)


def test_int8_accuracy_within_one_point_of_fp32(real_set) -> None:
    _exported("onnx-int8")
    spec = load_bundle(DEFAULT_BUNDLE).preprocessing
    fp32 = accuracy(Predictor.from_dir(DEFAULT_BUNDLE, backend="torch").backend, real_set, spec)
    int8 = accuracy(Predictor.from_dir(DEFAULT_BUNDLE, backend="onnx-int8").backend, real_set, spec)
    assert int8 >= fp32 - 0.01, f"int8 {int8:.2%} vs fp32 {fp32:.2%} on {len(real_set)} photos"


def test_int8_features_feed_monitoring(real_set) -> None:
    _exported("onnx-int8")
    predictor = Predictor.from_dir(DEFAULT_BUNDLE, backend="onnx-int8")
    batch, _ = next(real_set.batches(predictor.preprocessing, 4))
    out = predictor.infer(batch)
    assert out.features.shape == (4, predictor.model.num_features)
    assert np.isfinite(out.features).all()


def test_default_bundle_auto_backend_and_size() -> None:
    bundle = load_bundle(DEFAULT_BUNDLE)
    size_mb = sum(p.stat().st_size for p in DEFAULT_BUNDLE.iterdir() if p.is_file()) / 2**20
    assert size_mb <= MAX_BUNDLE_MB
    predictor = Predictor(bundle)
    assert predictor.backend_name == select_backend(bundle.meta)
    if exported_entries(bundle.meta):
        assert predictor.backend_name in ONNX_BACKENDS  # `make serve` takes the fast path


def test_tampered_default_onnx_is_refused(tmp_path: Path) -> None:
    _exported("onnx-int8")
    copy = Path(shutil.copytree(DEFAULT_BUNDLE, tmp_path / "default"))
    name = exported_entries(load_bundle(copy).meta)["onnx-int8"][0]
    data = bytearray((copy / name).read_bytes())
    data[-100] ^= 0x01
    (copy / name).write_bytes(bytes(data))
    with pytest.raises(BundleError, match="integrity"):
        Predictor.from_dir(copy, backend="onnx-int8")
