"""Backends behind the Predictor: selection rule, ONNX Runtime runs, integrity checks."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from typer.testing import CliRunner

from fisheye.bundle import BundleError, load_bundle
from fisheye.cli import app
from fisheye.inference.backends import create_backend, select_backend
from fisheye.inference.export import ONNX_FILE
from fisheye.inference.onnx_backend import OnnxBackend, session_options
from fisheye.inference.options import RuntimeOptions
from fisheye.inference.predictor import Predictor
from fisheye.inference.quantize import INT8_FILE
from tests.helpers.paths import require_default_model
from tests.helpers.photos import photo

runner = CliRunner()


def _meta(**exports: dict[str, Any]) -> dict[str, Any]:
    files: dict[str, Any] = {"model.safetensors": {"kind": "weights"}}
    for backend, entry in exports.items():
        name = backend.replace("_", "-")
        files[f"{name}.onnx"] = {"backend": name, **entry}
    return {"files": files}


def _rec(acc: float | None, ms: float | None, ref_acc=0.95, ref_ms=30.0) -> dict[str, Any]:
    return {
        "accuracy": acc,
        "reference_accuracy": ref_acc,
        "latency_ms": ms,
        "reference_latency_ms": ref_ms,
    }


@pytest.mark.parametrize(
    ("exports", "expected"),
    [
        ({}, "torch"),  # nothing exported
        ({"onnx": _rec(0.95, 10.0)}, "onnx"),
        ({"onnx": _rec(0.95, 10.0), "onnx_int8": _rec(0.947, 4.0)}, "onnx-int8"),  # -0.3 points
        ({"onnx": _rec(0.95, 10.0), "onnx_int8": _rec(0.9449, 4.0)}, "onnx"),  # -0.51: too far
        ({"onnx": _rec(0.95, 10.0), "onnx_int8": _rec(0.945, 4.0)}, "onnx-int8"),  # exactly 0.5
        ({"onnx": _rec(0.95, 10.0), "onnx_int8": _rec(None, 4.0)}, "onnx"),  # unmeasured
        ({"onnx": _rec(0.95, None)}, "torch"),  # no latency recorded
        ({"onnx": _rec(0.95, 40.0)}, "torch"),  # slower than eager fp32
        ({"onnx_int8": _rec(0.96, 4.0)}, "onnx-int8"),  # better than fp32 is fine
    ],
)
def test_auto_selection_rule(exports: dict[str, Any], expected: str) -> None:
    assert select_backend(_meta(**exports)) == expected


@pytest.mark.parametrize("backend", ["torch", "onnx", "onnx-int8"])
def test_predictor_runs_each_backend_with_features(exported_bundle: Path, backend: str) -> None:
    predictor = Predictor.from_dir(
        exported_bundle, backend=backend, runtime=RuntimeOptions(threads=1)
    )
    assert predictor.backend_name == backend
    batch = np.stack([predictor.prepare(photo(i)) for i in range(3)])
    out = predictor.infer(batch)
    assert out.probabilities.shape == (3, len(predictor.classes))
    assert out.features.shape == (3, predictor.bundle.build_model().num_features)
    assert out.features.dtype == np.float32
    preds = predictor.predict_images([photo(i) for i in range(3)])
    assert [p.label for p in preds] and all(0 <= p.confidence <= 1 for p in preds)


def test_onnx_predictions_equal_torch(exported_bundle: Path) -> None:
    images = [photo(i, (40, 36)) for i in range(6)]
    torch_preds = Predictor.from_dir(exported_bundle, backend="torch").predict_images(images)
    onnx_preds = Predictor.from_dir(exported_bundle, backend="onnx").predict_images(images)
    np.testing.assert_allclose(
        np.stack([p.probabilities for p in onnx_preds]),
        np.stack([p.probabilities for p in torch_preds]),
        atol=1e-4,
    )


def test_auto_picks_a_recorded_backend(exported_bundle: Path) -> None:
    bundle = load_bundle(exported_bundle)
    predictor = Predictor(bundle)
    assert predictor.backend_name == select_backend(bundle.meta)


def test_auto_without_exports_is_torch(tiny_bundle: Path) -> None:
    assert Predictor.from_dir(tiny_bundle).backend_name == "torch"


def test_requesting_a_missing_export_is_a_clear_error(tiny_bundle: Path) -> None:
    with pytest.raises(BundleError, match="fisheye export"):
        Predictor.from_dir(tiny_bundle, backend="onnx-int8")


def test_unknown_backend_is_refused(exported_bundle: Path) -> None:
    with pytest.raises(ValueError, match="unknown backend"):
        create_backend(load_bundle(exported_bundle), "tensorrt")


@pytest.mark.parametrize("name", [ONNX_FILE, INT8_FILE])
def test_tampered_onnx_is_refused(writable_exported_bundle: Path, name: str) -> None:
    copy = writable_exported_bundle
    bundle = load_bundle(copy)  # verified while intact
    data = bytearray((copy / name).read_bytes())
    data[len(data) // 2] ^= 0xFF
    (copy / name).write_bytes(bytes(data))
    backend = json.loads((copy / "bundle.json").read_text())["files"][name]["backend"]
    # Refused at load time, and also when the file changed after the bundle was loaded.
    with pytest.raises(BundleError, match="integrity"):
        load_bundle(copy)
    with pytest.raises(BundleError, match="integrity"):
        Predictor(bundle, backend=backend)


def test_session_threads_are_explicit() -> None:
    opts = session_options(2)
    assert opts.intra_op_num_threads == 2
    assert opts.inter_op_num_threads == 1


def test_onnx_backend_refuses_a_graph_without_features(tmp_path: Path) -> None:
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["logits"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 3])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [None, 3])],
    )
    path = tmp_path / "bad.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), str(path))
    with pytest.raises(BundleError, match="features"):
        OnnxBackend(path)


def test_cli_predict_and_evaluate_take_backend(
    exported_bundle: Path, synthetic_dataset: Path, tmp_path: Path
) -> None:
    env = {"COLUMNS": "200", "NO_COLOR": "1"}
    some = next(p for p in sorted(synthetic_dataset.rglob("*.jpg")))
    result = runner.invoke(
        app,
        ["predict", str(some), "--model", str(exported_bundle), "--backend", "onnx", "-f", "json"],
        env=env,
    )
    assert result.exit_code == 0, result.output
    result = runner.invoke(
        app,
        [
            "evaluate",
            "--data",
            str(synthetic_dataset),
            "--model",
            str(exported_bundle),
            "--backend",
            "onnx-int8",
            "--json",
            "--out",
            str(tmp_path / "eval-out"),
        ],
        env=env,
    )
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["backend"] == "onnx-int8"


# Variables under which ONNX Runtime keeps its telemetry quiet by itself (CI systems).
_ORT_QUIET_VARS = (
    "ORT_DISABLE_TELEMETRY",
    "ORT_TELEMETRY_DISABLED",
    "CI",
    "GITHUB_ACTIONS",
    "TF_BUILD",
)


def _telemetry_state(tmp_path: Path, name: str, code: str) -> list[Path]:
    """Files ONNX Runtime left under a fresh HOME after running `code` in a new process."""
    import os
    import subprocess
    import sys

    home = tmp_path / name
    home.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in _ORT_QUIET_VARS}
    env.update(HOME=str(home), XDG_CACHE_HOME=str(home / ".cache"))
    subprocess.run([sys.executable, "-c", code], env=env, check=True, timeout=120)
    return [p for p in home.rglob("*") if p.is_file()]


def test_fisheye_turns_off_onnxruntime_telemetry(tmp_path: Path) -> None:
    model = require_default_model() / INT8_FILE
    bare = (
        "import onnxruntime as ort\n"
        f"ort.InferenceSession({str(model)!r}, providers=['CPUExecutionProvider'])\n"
    )
    if not _telemetry_state(tmp_path, "bare", bare):
        pytest.skip("this ONNX Runtime build keeps no telemetry state: nothing to turn off")
    through_fisheye = (
        "from PIL import Image\n"
        "from fisheye.bundle import load_bundle\n"
        "from fisheye.inference.predictor import Predictor\n"
        f"p = Predictor(load_bundle({str(model.parent)!r}), backend='onnx-int8')\n"
        "p.predict_images([Image.new('RGB', (64, 64))])\n"
    )
    assert _telemetry_state(tmp_path, "fisheye", through_fisheye) == []
