"""Helpers for the export and backend tests: a tiny bundle with its ONNX forms exported."""

from __future__ import annotations

from pathlib import Path

from inference_helpers import make_bundle

from fisheye.data.sources import synthetic_class_names
from fisheye.inference.export import export_onnx, export_onnx_int8


def tiny_bundle(out_dir: Path) -> Path:
    """A random-init small_cnn bundle (input 32) whose classes match the synthetic photos."""
    return make_bundle(out_dir, classes=synthetic_class_names(3))


def exported_bundle(out_dir: Path, photos: Path) -> Path:
    """A tiny bundle with onnx and onnx-int8 exported, measured on the synthetic photos."""
    bundle = tiny_bundle(out_dir)
    export_onnx(bundle, data=photos, repeats=3)
    export_onnx_int8(bundle, calibration=photos, calibration_size=24, data=photos, repeats=3)
    return bundle
