"""Export round trips on a tiny model: ONNX (fp32), int8 QDQ and TorchScript."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from typer.testing import CliRunner

from fisheye.bundle import load_bundle, sha256_file
from fisheye.cli import app
from fisheye.inference.export import (
    ONNX_FILE,
    TORCHSCRIPT_FILE,
    ExportError,
    export_onnx,
    export_torchscript,
)
from fisheye.inference.measure import example_batch
from fisheye.inference.onnx_backend import OnnxBackend
from fisheye.inference.options import RuntimeOptions
from fisheye.inference.predictor import Predictor
from fisheye.inference.quantize import INT8_FILE
from fisheye.inference.torch_backend import TorchBackend

runner = CliRunner()


def test_onnx_graph_has_dynamic_batch_two_outputs_and_opset(exported_bundle: Path) -> None:
    model = onnx.load(str(exported_bundle / ONNX_FILE))
    onnx.checker.check_model(model)
    assert [o.name for o in model.graph.output] == ["logits", "features"]
    opset = {o.domain: o.version for o in model.opset_import}[""]
    assert opset >= 17
    batch_dim = model.graph.input[0].type.tensor_type.shape.dim[0]
    assert batch_dim.dim_param and not batch_dim.dim_value  # symbolic, not a fixed size


def test_onnx_matches_eager_at_several_batch_sizes(exported_bundle: Path) -> None:
    bundle = load_bundle(exported_bundle)
    eager = TorchBackend(bundle.build_model())
    onnx_backend = OnnxBackend(exported_bundle / ONNX_FILE, runtime=RuntimeOptions(threads=1))
    for n in (1, 5):
        x = example_batch(Predictor(bundle, backend=eager), None, n)
        ref, got = eager.run(x), onnx_backend.run(x)
        assert got.probabilities.shape == ref.probabilities.shape == (n, 3)
        assert got.features.shape == ref.features.shape
        np.testing.assert_allclose(got.probabilities, ref.probabilities, atol=1e-4)
        np.testing.assert_allclose(got.features, ref.features, atol=1e-3, rtol=1e-3)


def test_exports_are_recorded_with_hash_accuracy_and_latency(exported_bundle: Path) -> None:
    files = json.loads((exported_bundle / "bundle.json").read_text())["files"]
    for name, backend in ((ONNX_FILE, "onnx"), (INT8_FILE, "onnx-int8")):
        entry = files[name]
        assert entry["backend"] == backend
        assert entry["sha256"] == sha256_file(exported_bundle / name)
        assert 0.0 <= entry["accuracy"] <= 1.0 and 0.0 <= entry["reference_accuracy"] <= 1.0
        assert entry["latency_ms"] > 0 and entry["reference_latency_ms"] > 0
        assert entry["eval"]["n_images"] == 36
    assert files[ONNX_FILE]["opset"] >= 17
    assert files[ONNX_FILE]["accuracy"] == files[ONNX_FILE]["reference_accuracy"]
    assert files[INT8_FILE]["calibration"]["n_images"] == 24
    # The int8 graph really is quantized (QDQ), and smaller than fp32.
    int8 = onnx.load(str(exported_bundle / INT8_FILE))
    assert any(n.op_type == "QuantizeLinear" for n in int8.graph.node)
    load_bundle(exported_bundle)  # every recorded hash still verifies


def test_int8_runs_and_gives_probabilities(exported_bundle: Path) -> None:
    bundle = load_bundle(exported_bundle)
    int8 = OnnxBackend(exported_bundle / INT8_FILE, "onnx-int8", RuntimeOptions(threads=1))
    out = int8.run(example_batch(Predictor(bundle, backend=int8), None, 4))
    assert out.probabilities.shape == (4, 3)
    np.testing.assert_allclose(out.probabilities.sum(axis=1), 1.0, atol=1e-5)
    assert out.features.shape == (4, bundle.build_model().num_features)


def test_export_without_data_records_no_accuracy(
    writable_tiny_bundle: Path, tmp_path: Path, monkeypatch
) -> None:
    monkeypatch.setattr("fisheye.inference.export.DEFAULT_VAL", tmp_path / "absent")
    entry = export_onnx(writable_tiny_bundle, repeats=1)
    assert "accuracy" not in entry and entry["latency_ms"] > 0


def test_export_refuses_old_opset(writable_tiny_bundle: Path) -> None:
    with pytest.raises(ExportError, match="opset"):
        export_onnx(writable_tiny_bundle, opset=13)


def test_torchscript_export_matches_eager(writable_tiny_bundle: Path) -> None:
    bundle_dir = writable_tiny_bundle
    entry = export_torchscript(bundle_dir)
    assert entry["kind"] == "torchscript"
    bundle = load_bundle(bundle_dir)  # recorded and verified
    traced = torch.jit.load(str(bundle_dir / TORCHSCRIPT_FILE))
    eager = TorchBackend(bundle.build_model())
    x = example_batch(Predictor(bundle, backend=eager), None, 3)
    with torch.inference_mode():
        logits, features = traced(torch.from_numpy(x))
    ref = eager.run(x)
    np.testing.assert_allclose(torch.softmax(logits, 1).numpy(), ref.probabilities, atol=1e-5)
    assert features.shape == ref.features.shape


def test_cli_export_onnx(writable_synthetic_bundle: Path, synthetic_dataset: Path) -> None:
    bundle_dir = writable_synthetic_bundle
    result = runner.invoke(
        app,
        ["export", "-m", str(bundle_dir), "--format", "onnx", "--data", str(synthetic_dataset)],
        env={"COLUMNS": "200", "NO_COLOR": "1"},
    )
    assert result.exit_code == 0, result.output
    assert ONNX_FILE in load_bundle(bundle_dir).meta["files"]


def test_cli_export_reports_a_bad_bundle(tmp_path: Path) -> None:
    result = runner.invoke(app, ["export", "--model", str(tmp_path), "--format", "onnx"])
    assert result.exit_code == 2
    assert "not a FishEye model bundle" in result.output
