"""The Predictor: same inputs as the eval transform, batch == single, order kept."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fisheye.bundle import BUNDLE_JSON
from fisheye.data.images import decode_image
from fisheye.data.preprocess import Preprocessing, preprocess
from fisheye.inference.options import PredictionOptions
from fisheye.inference.predictor import Predictor
from tests.helpers.bundles import TINY_INPUT_SIZE as INPUT_SIZE
from tests.helpers.bundles import rewrite_meta
from tests.helpers.paths import FISH_CLASSES as CLASSES
from tests.helpers.photos import encode, photo, write_bad_files


@pytest.fixture(scope="module")
def predictor(tiny_bundle: Path) -> Predictor:
    return Predictor.from_dir(tiny_bundle, options=PredictionOptions(top_k=3))


@pytest.fixture(scope="module")
def photo_files(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    folder = tmp_path_factory.mktemp("photos")
    files = []
    specs = [
        ("a.jpg", "JPEG", (48, 40), "RGB"),
        ("b.png", "PNG", (31, 77), "RGBA"),
        ("c.png", "PNG", (64, 64), "L"),
        ("d.webp", "WEBP", (100, 20), "RGB"),
        ("e.bmp", "BMP", (32, 32), "RGB"),
        ("f.jpg", "JPEG", (200, 150), "RGB"),
    ]
    for i, (name, fmt, size, mode) in enumerate(specs):
        path = folder / name
        path.write_bytes(encode(photo(i, size, mode), fmt))
        files.append(path)
    return files


def test_predictor_input_equals_eval_transform(predictor: Predictor, photo_files) -> None:
    spec = predictor.bundle.preprocessing
    assert spec == Preprocessing(input_size=INPUT_SIZE)
    for path in photo_files:
        img = decode_image(path)
        expected = preprocess(img, spec)
        got = predictor.prepare(path)
        assert got.dtype == np.float32
        assert got.shape == (3, INPUT_SIZE, INPUT_SIZE)
        assert np.array_equal(got, expected)
        # Bytes, a path and a decoded image all become the same model input.
        assert np.array_equal(predictor.prepare(path.read_bytes()), expected)
        assert np.array_equal(predictor.prepare(predictor.decode(path)), expected)


def test_center_crop_spec_is_honoured(writable_tiny_bundle: Path, photo_files) -> None:
    bundle_dir = writable_tiny_bundle
    meta = json.loads((bundle_dir / "bundle.json").read_text())
    spec = Preprocessing(input_size=INPUT_SIZE, resize="center_crop", interpolation="bicubic")
    meta["preprocessing"] = spec.to_dict()
    rewrite_meta(bundle_dir, meta)
    pred = Predictor.from_dir(bundle_dir)
    assert pred.preprocessing == spec
    img = decode_image(photo_files[-1])
    assert np.array_equal(pred.prepare(img), preprocess(img, spec))


def test_prediction_shape(predictor: Predictor) -> None:
    (pred,) = predictor.predict_images([photo(1)])
    assert pred.label in CLASSES
    assert len(pred.top_k) == 3
    probs = [p for _, p in pred.top_k]
    assert probs == sorted(probs, reverse=True)
    assert pred.top_k[0] == (pred.label, pred.confidence)
    assert pred.probabilities.shape == (len(CLASSES),)
    assert np.isclose(pred.probabilities.sum(), 1.0, atol=1e-5)
    d = pred.to_dict()
    assert set(d) == {"label", "status", "confidence", "top_k"} and d["status"] == "ok"
    assert d["top_k"][0] == {"label": pred.label, "probability": round(pred.confidence, 6)}
    assert len(predictor.predict_images([photo(1)], top_k=1)[0].top_k) == 1
    assert predictor.predict_images([]) == []


def test_batch_equals_single(predictor: Predictor) -> None:
    images = [photo(i, (40 + i, 30 + 2 * i)) for i in range(7)]
    batch = predictor.predict_images(images)
    singles = [predictor.predict_images([im])[0] for im in images]
    for b, s in zip(batch, singles, strict=True):
        assert b.label == s.label
        np.testing.assert_allclose(b.probabilities, s.probabilities, rtol=0, atol=1e-5)


def test_files_keep_order_with_errors_interleaved(
    predictor: Predictor, photo_files: list[Path], tmp_path: Path
) -> None:
    bad = write_bad_files(tmp_path / "bad")
    missing = tmp_path / "missing.jpg"
    paths = [
        bad["text"],
        photo_files[0],
        photo_files[1],
        bad["empty"],
        photo_files[2],
        missing,
        photo_files[3],
        photo_files[4],
        bad["truncated"],
        photo_files[5],
    ]
    expected_bad = {bad["text"], bad["empty"], bad["truncated"], missing}
    single = {
        p: predictor.predict_images([decode_image(p)])[0] for p in paths if p not in expected_bad
    }
    for batch_size in (1, 2, 3, 16):
        done: list[int] = []
        results = list(predictor.predict_files(paths, batch_size=batch_size, on_done=done.append))
        assert [r.path for r in results] == paths
        assert sum(done) == len(paths)
        for r in results:
            if r.path in expected_bad:
                assert r.prediction is None
                assert r.error
            else:
                assert r.error is None
                assert r.prediction.label == single[r.path].label
                np.testing.assert_allclose(
                    r.prediction.probabilities, single[r.path].probabilities, atol=1e-5
                )
    errors = {r.path: r.error for r in results}
    assert "empty" in errors[bad["empty"]]
    assert "not a recognised image" in errors[bad["text"]]
    assert "truncated" in errors[bad["truncated"]]
    assert "cannot read file" in errors[missing]


def test_max_pixels_limit(tiny_bundle: Path, tmp_path: Path) -> None:
    pred = Predictor.from_dir(tiny_bundle, options=PredictionOptions(max_pixels=100))
    path = tmp_path / "big.png"
    Image.new("RGB", (20, 20)).save(path)
    (res,) = pred.predict_files([path])
    assert res.prediction is None and "over the limit" in res.error


def test_output_rows_keep_each_photo_with_its_scores(predictor: Predictor) -> None:
    images = [photo(i) for i in range(5)]
    out = predictor.infer(np.stack([predictor.prepare(im) for im in images]))
    assert len(out) == 5 and out.ood_scores is None  # no OOD scorer on this Predictor
    scored = out.with_ood_scores(np.arange(5, dtype=np.float64))
    part = scored.rows(1, 3)
    assert len(part) == 2
    np.testing.assert_array_equal(part.probabilities, out.probabilities[1:3])
    np.testing.assert_array_equal(part.features, out.features[1:3])
    np.testing.assert_array_equal(part.ood_scores, [1.0, 2.0])
    preds = predictor.predictions(part)
    assert [p.ood_score for p in preds] == [1.0, 2.0]
    for got, expected in zip(preds, predictor.predict_images(images[1:3]), strict=True):
        assert got.label == expected.label
        np.testing.assert_allclose(got.probabilities, expected.probabilities, atol=1e-5)


def test_under_the_abstention_threshold_the_answer_is_not_sure(writable_tiny_bundle: Path) -> None:
    img = photo(3)
    sure = Predictor.from_dir(writable_tiny_bundle).predict_images([img])[0]
    assert not sure.unsure and sure.to_dict()["label"] == sure.label  # no threshold: answers
    meta = json.loads((writable_tiny_bundle / BUNDLE_JSON).read_text())
    meta["abstention"] = {"threshold": sure.confidence + 1e-3}
    rewrite_meta(writable_tiny_bundle, meta)
    unsure = Predictor.from_dir(writable_tiny_bundle).predict_images([img])[0]
    d = unsure.to_dict()
    assert unsure.unsure and d["label"] is None and d["status"] == "unsure"
    assert d["top_k"][0]["label"] == unsure.label  # the candidates are still given
    # An operator may answer everything (0) or be stricter than the bundle.
    never = PredictionOptions(abstain_below=0.0)
    assert (
        not Predictor.from_dir(writable_tiny_bundle, options=never).predict_images([img])[0].unsure
    )
    strict = PredictionOptions(abstain_below=1.0)
    assert Predictor.from_dir(writable_tiny_bundle, options=strict).predict_images([img])[0].unsure
