"""Tiny model bundles for the tests: random-init small_cnn models, fast to build, load and run.

`make_bundle` writes the plain bundle; `make_exported_bundle` adds the ONNX and int8 ONNX
exports, `make_monitored_bundle` a fitted drift reference. The session fixtures in the
conftest files build each once; tests that change a bundle work on a `copy_bundle`.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from fisheye.bundle import BUNDLE_JSON, CHECKSUM_FILE, save_bundle
from fisheye.data.labelled import labelled_paths
from fisheye.data.preprocess import Preprocessing
from fisheye.inference.export import export_onnx
from fisheye.inference.predictor import Predictor
from fisheye.inference.quantize import export_onnx_int8
from fisheye.models.backbones import build_model
from fisheye.monitoring.fitting import FitOptions, fit_bundle
from tests.helpers.paths import FISH_CLASSES
from tests.helpers.photos import class_folders

TINY_NAME = "tiny-test"
TINY_INPUT_SIZE = 32
TINY_METRICS = {"accuracy": 0.0}


def make_bundle(
    out_dir: Path,
    classes: Sequence[str] = FISH_CLASSES,
    *,
    input_size: int = TINY_INPUT_SIZE,
    seed: int = 0,
    name: str = TINY_NAME,
    metrics: dict[str, Any] | None = None,
) -> Path:
    """Write a random-init small_cnn bundle (the real classes by default) and return its folder."""
    torch.manual_seed(seed)
    config = {"num_classes": len(classes), "input_size": input_size, "dropout": 0.0}
    model = build_model("small_cnn", **config)
    # Random BatchNorm statistics make the outputs depend on the photo, not only on the bias.
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 2.0)
    return save_bundle(
        out_dir,
        model.eval(),
        classes=list(classes),
        preprocessing=Preprocessing(input_size=input_size),
        architecture="small_cnn",
        architecture_config=config,
        name=name,
        metrics=dict(TINY_METRICS if metrics is None else metrics),
    )


def copy_bundle(bundle_dir: Path, out_dir: Path) -> Path:
    """A writable copy of a bundle folder (for tests that tamper with or add files)."""
    return Path(shutil.copytree(bundle_dir, out_dir))


def make_exported_bundle(out_dir: Path, photos: Path) -> Path:
    """A tiny bundle of the photo set's classes with onnx and onnx-int8 exported.

    The exports are checked and measured on `photos` (a class-per-folder set, e.g. the
    synthetic one), so bundle.json records their accuracy and latency.
    """
    bundle = make_bundle(out_dir, class_folders(photos))
    export_onnx(bundle, data=photos, repeats=3)
    export_onnx_int8(bundle, calibration=photos, calibration_size=24, data=photos, repeats=3)
    return bundle


def make_monitored_bundle(out_dir: Path, photos: Path) -> Path:
    """The tiny bundle plus a drift reference fitted on every photo under `photos`."""
    bundle = make_bundle(out_dir)
    predictor = Predictor.from_dir(bundle)
    items = labelled_paths(photos, predictor.classes)
    fit_bundle(predictor, items, None, FitOptions(sample=len(items), reference_size=len(items)))
    return bundle


def rewrite_meta(bundle_dir: Path, meta: dict | str) -> None:
    """Replace bundle.json (a dict, or raw text) and re-seal its checksum, as an editor would.

    Tests use it to reach the checks behind the checksum; without re-sealing, any edit is
    refused by the checksum first.
    """
    text = meta if isinstance(meta, str) else json.dumps(meta)
    (bundle_dir / BUNDLE_JSON).write_text(text)
    digest = hashlib.sha256(text.encode()).hexdigest()
    (bundle_dir / CHECKSUM_FILE).write_text(f"{digest}  {BUNDLE_JSON}\n")


# A CPU that no test machine is: the int8 export "was measured" there, so `auto` checks it.
ELSEWHERE = {"machine": "x86_64", "isa": ["avx2"], "onnxruntime": "0.0.0", "cpu": "elsewhere"}


def measured_elsewhere(bundle_dir: Path, backend: str = "onnx-int8") -> None:
    """Record that `backend`'s export was measured on another CPU (so `auto` checks it here)."""
    meta = json.loads((bundle_dir / BUNDLE_JSON).read_text())
    for entry in meta["files"].values():
        if entry.get("backend") == backend:
            entry["measured_on"] = dict(ELSEWHERE)
    rewrite_meta(bundle_dir, meta)


def break_int8(bundle_dir: Path, factor: float = 4.0) -> None:
    """Make the int8 export load and run but disagree with fp32, as saturating kernels would.

    Every weight scale of the QDQ graph is multiplied by `factor`; the file's new hash is
    recorded (with its other figures kept), so only its outputs give it away.
    """
    import onnx
    from onnx import numpy_helper

    meta = json.loads((bundle_dir / BUNDLE_JSON).read_text())
    name = next(n for n, e in meta["files"].items() if e.get("backend") == "onnx-int8")
    model = onnx.load(str(bundle_dir / name))
    weight_scales = {
        node.input[1]
        for node in model.graph.node
        if node.op_type == "DequantizeLinear" and node.input[0].endswith("_quantized")
    }
    for init in model.graph.initializer:
        if init.name in weight_scales:
            init.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(init) * factor, init.name))
    onnx.save(model, str(bundle_dir / name))
    data = (bundle_dir / name).read_bytes()
    meta["files"][name].update(sha256=hashlib.sha256(data).hexdigest(), bytes=len(data))
    rewrite_meta(bundle_dir, meta)


def int8_first(bundle_dir: Path) -> None:
    """Record figures that make int8 `auto`'s first choice, as on the real model.

    A tiny model's measured latencies are noise (its int8 graph is not faster than fp32), so
    tests of what `auto` does with int8 fix them: int8 as accurate as fp32 and faster.
    """
    meta = json.loads((bundle_dir / BUNDLE_JSON).read_text())
    for entry in meta["files"].values():
        if entry.get("backend") in ("onnx", "onnx-int8"):
            fast = entry["backend"] == "onnx-int8"
            entry.update(accuracy=1.0, reference_accuracy=1.0, reference_latency_ms=10.0)
            entry["latency_ms"] = 1.0 if fast else 2.0
    rewrite_meta(bundle_dir, meta)
