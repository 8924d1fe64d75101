"""The CPU profile, the int8 host check and `auto`'s fallback when a quantised backend disagrees."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from fisheye.bundle import BUNDLE_JSON, load_bundle
from fisheye.cli import app
from fisheye.data.preprocess import Preprocessing
from fisheye.inference import backends
from fisheye.inference.host import HostProfile, host_profile
from fisheye.inference.host_check import check_file, dead_leaves, feature_deviation
from fisheye.inference.predictor import Predictor
from fisheye.inference.quantize import INT8_FILE
from fisheye.inference.selection import open_backend
from fisheye.monitoring.loading import load_model
from tests.helpers.bundles import break_int8, measured_elsewhere, rewrite_meta

runner = CliRunner()


def _int8_entry(bundle_dir: Path) -> dict:
    return json.loads((bundle_dir / BUNDLE_JSON).read_text())["files"][INT8_FILE]


def test_host_profile_names_this_cpu_and_round_trips() -> None:
    host = host_profile()
    assert host.machine and host.onnxruntime not in ("", "not installed")
    assert list(host.isa) == sorted(host.isa)
    again = HostProfile.from_dict(json.loads(json.dumps(host.to_dict())))
    assert again == host and again.same_kernels(host)
    assert host.summary().startswith(host.machine)


def test_profiles_differ_by_kernels_not_by_name() -> None:
    vnni = HostProfile("x86_64", ("avx2", "avx512bw", "avx512f", "avx512vnni"), "1.32.0", "A")
    assert vnni.same_kernels(HostProfile("x86_64", vnni.isa, "1.32.0", "another name"))
    assert not vnni.same_kernels(HostProfile("x86_64", ("avx2",), "1.32.0", "A"))
    assert not vnni.same_kernels(HostProfile("x86_64", vnni.isa, "1.33.0", "A"))
    assert not vnni.int8_saturates
    assert HostProfile("x86_64", ("avx2", "avx512bw", "avx512f"), "1.32.0").int8_saturates
    assert not HostProfile("aarch64", ("neon",), "1.32.0").int8_saturates
    with pytest.raises(ValueError, match="malformed"):
        HostProfile.from_dict({"machine": "x86_64"})


@pytest.mark.parametrize("size", [224, 33])
def test_check_photos_are_fixed_by_the_seed(size: int) -> None:
    spec = Preprocessing(input_size=size)
    a, b = dead_leaves(spec, 4, seed=1), dead_leaves(spec, 4, seed=1)
    assert a.shape == (4, 3, size, size) and a.dtype == np.float32
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, dead_leaves(spec, 4, seed=2))
    # Photo-like: every channel spans most of the normalised range, no two photos alike.
    low, high = (0 - np.array(spec.mean)) / spec.std, (1 - np.array(spec.mean)) / spec.std
    span = a.max(axis=(0, 2, 3)) - a.min(axis=(0, 2, 3))
    assert (span > 0.8 * (high - low)).all()
    assert len({x.tobytes() for x in a}) == 4


def test_feature_deviation_is_relative_per_photo() -> None:
    ref = np.array([[3.0, 4.0], [0.0, 10.0]], np.float32)
    assert feature_deviation(ref, ref) == 0
    assert feature_deviation(ref * 1.1, ref) == pytest.approx(0.1, rel=1e-6)


def test_int8_export_records_its_cpu_and_host_check(exported_bundle: Path) -> None:
    entry = _int8_entry(exported_bundle)
    assert entry["measured_on"] == host_profile().to_dict()
    assert "7-bit" in entry["quantization"]["weights"]
    assert entry["quantization"]["fp32_nodes"]  # the head at least
    check = entry["host_check"]
    assert check["file"] == check_file("onnx-int8")
    assert check["inputs"]["generator"] == "dead_leaves" and check["inputs"]["n"] > 0
    assert 0 <= check["features_deviation"] < 1
    files = json.loads((exported_bundle / BUNDLE_JSON).read_text())["files"]
    assert files[check["file"]]["kind"] == "host_check"
    # The check file is not mistaken for an export of its own.
    assert backends.exported_entries({"files": files})["onnx-int8"][0] == INT8_FILE


def test_auto_trusts_the_figures_on_the_cpu_they_were_measured_on(int8_bundle: Path) -> None:
    selection = open_backend(load_bundle(int8_bundle))
    assert selection.backend.name == "onnx-int8"
    assert selection.status == "same_cpu" and selection.fallback_from is None
    assert selection.checks[0].deviation is None  # nothing was run


def test_auto_checks_int8_measured_elsewhere_and_serves_it_when_it_holds(
    int8_bundle: Path, caplog: pytest.LogCaptureFixture
) -> None:
    measured_elsewhere(int8_bundle)
    with caplog.at_level(logging.INFO, logger="fisheye.inference.selection"):
        selection = open_backend(load_bundle(int8_bundle))
    assert selection.backend.name == "onnx-int8" and selection.status == "passed"
    check = selection.checks[0]
    recorded = _int8_entry(int8_bundle)["host_check"]["features_deviation"]
    # The same model on the same kind of kernels: the deviation found is the one recorded.
    assert check.deviation == pytest.approx(recorded, abs=1e-4)
    assert check.deviation <= check.limit
    assert "passed its host check" in caplog.text


def test_int8_that_disagrees_on_this_cpu_is_not_served(
    int8_bundle: Path, caplog: pytest.LogCaptureFixture
) -> None:
    break_int8(int8_bundle)
    measured_elsewhere(int8_bundle)
    with caplog.at_level(logging.WARNING, logger="fisheye.inference.selection"):
        predictor, monitor = load_model(int8_bundle, monitoring=None)
    selection = predictor.backend_selection
    assert predictor.backend_name == "onnx"  # the next selection: fp32 ONNX
    assert selection.status == "fallback" and selection.fallback_from == "onnx-int8"
    failed = selection.checks[0]
    assert failed.status == "failed" and failed.deviation > failed.limit
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "onnx-int8 is not served on this CPU" in warnings[0].message
    described = selection.describe()
    assert described["served"] == "onnx" and described["checks"][0]["status"] == "failed"
    # Asked for by name, the broken file is served as asked: the check is `auto`'s.
    assert Predictor.from_dir(int8_bundle, backend="onnx-int8").backend_name == ("onnx-int8")


def test_int8_without_a_host_check_is_not_trusted_elsewhere(
    int8_bundle: Path,
) -> None:
    meta = json.loads((int8_bundle / BUNDLE_JSON).read_text())
    del meta["files"][INT8_FILE]["host_check"]
    del meta["files"][INT8_FILE]["measured_on"]
    rewrite_meta(int8_bundle, meta)
    selection = open_backend(load_bundle(int8_bundle))
    assert selection.backend.name == "onnx" and selection.checks[0].status == "unverifiable"
    assert "records no host check" in selection.checks[0].detail


def test_drift_reference_follows_the_backend_that_serves(
    int8_bundle: Path, synthetic_dataset: Path
) -> None:
    result = runner.invoke(
        app,
        [
            "drift",
            "fit",
            "--model",
            str(int8_bundle),
            "--data",
            str(synthetic_dataset),
            "--backend",
            "all",
        ],
    )
    assert result.exit_code == 0, result.output
    break_int8(int8_bundle)
    measured_elsewhere(int8_bundle)
    predictor, monitor = load_model(int8_bundle)
    assert predictor.backend_name == "onnx"
    assert monitor is not None and monitor.backend in ("torch", "onnx")
    assert predictor.ood is monitor.ood


def test_auto_is_not_a_backend_to_build(int8_bundle: Path) -> None:
    with pytest.raises(ValueError, match="open_backend"):
        backends.create_backend(load_bundle(int8_bundle), backends.AUTO)
    meta = load_bundle(int8_bundle).meta
    assert backends.select_backend(meta) == "onnx-int8"
    assert backends.select_backend(meta, exclude=["onnx-int8"]) == "onnx"
