"""The int8 export (`onnx-int8`): static QDQ quantization that computes the same on every CPU.

Weights use 7 of their 8 bits (x86 CPUs without VNNI sum pairs of u8 x s8 products in 16
bits, which saturate with 8-bit weights), except in depthwise convolutions, whose kernels
sum in 32 bits everywhere; the first convolutions and the head stay fp32. The export is
calibrated on training photos, checked against eager PyTorch, measured, and records the
CPU it was measured on and its host check (`host_check`), which `auto` runs elsewhere.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from fisheye.bundle import Bundle, add_arrays, add_file, load_bundle
from fisheye.data.files import collect_image_paths
from fisheye.data.manifest import read_manifest
from fisheye.inference import backends
from fisheye.inference.backend import default_threads
from fisheye.inference.export import (
    ONNX_FILE,
    ExportError,
    check_outputs,
    eval_set,
    export_onnx,
    measure_export,
    quiet_third_party,
    summary_line,
)
from fisheye.inference.host_check import record as record_host_check
from fisheye.inference.measure import DEFAULT_TRAIN, example_batch, preprocessed, spread
from fisheye.inference.onnx_backend import ONNX_INPUT, ONNX_OUTPUTS, OnnxBackend
from fisheye.inference.options import RuntimeOptions
from fisheye.inference.predictor import Predictor
from fisheye.inference.torch_backend import TorchBackend

log = logging.getLogger(__name__)

ONNX_INT8 = "onnx-int8"
INT8_FILE = backends.spec(ONNX_INT8).export_file or "model.int8.onnx"


def _fp32_nodes(graph: Any, first_convs: int) -> list[str]:
    """The nodes int8 leaves in fp32: the first `first_convs` convolutions and the head.

    The first convolutions (full resolution, a few input channels, little of the compute)
    lose the most to quantization: with the first two in fp32, the default model keeps
    fp32's accuracy on blurred photos (0.935 against 0.918 with only the first). The head
    is one small product, and the linear probe's head has weights about 100 times a trained
    head's.
    """
    convs = [node.name for node in graph.node if node.op_type == "Conv"][:first_convs]
    head = [node.name for node in graph.node if ONNX_OUTPUTS[0] in node.output]
    return convs + head


def _depthwise_weights(graph: Any) -> list[str]:
    """The weight initializers of depthwise convolutions (one input channel per group)."""
    shapes = {init.name: list(init.dims) for init in graph.initializer}
    found = []
    for node in graph.node:
        group = next((a.i for a in node.attribute if a.name == "group"), 1)
        weight = node.input[1] if node.op_type == "Conv" and len(node.input) > 1 else None
        if weight in shapes and group > 1 and shapes[weight][1] == 1:
            found.append(weight)
    return found


class _PhotoReader:
    """onnxruntime CalibrationDataReader over preprocessed photos, in small batches."""

    def __init__(self, batches: list[np.ndarray]):
        self._it = iter([{ONNX_INPUT: b} for b in batches])

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._it, None)


def calibration_batches(
    predictor: Predictor, calibration: Path, size: int, batch_size: int = 16
) -> tuple[list[np.ndarray], int]:
    """Up to `size` photos, through the bundle's preprocessing, as batches.

    `calibration` is a folder of photos, or a manifest CSV whose train split is used (so
    that no val or test photo shapes the quantised model).
    """
    if Path(calibration).is_file():
        rows = [r for r in read_manifest(Path(calibration)) if r.split == "train"]
        paths = spread(sorted(r.path for r in rows), size)
    else:
        paths = spread(sorted(collect_image_paths([Path(calibration)])), size)
    inputs = preprocessed(predictor, paths)
    if not inputs:
        raise ExportError(f"no readable calibration photos in {calibration}")
    batches = [np.stack(inputs[i : i + batch_size]) for i in range(0, len(inputs), batch_size)]
    return batches, len(inputs)


def _ensure_onnx(bundle_dir: Path, **kwargs: Any) -> Bundle:
    """The loaded bundle, exporting fp32 ONNX first when it has none."""
    bundle = load_bundle(bundle_dir)
    if ONNX_FILE not in bundle.meta["files"]:
        log.info("the bundle has no fp32 ONNX yet; exporting it first")
        export_onnx(bundle_dir, **kwargs)
        bundle = load_bundle(bundle_dir)
    return bundle


def export_onnx_int8(
    bundle_dir: Path,
    *,
    calibration: Path | None = None,
    calibration_size: int = 256,
    method: str = "minmax",
    data: Path | None = None,
    limit: int | None = None,
    threads: int | None = None,
    repeats: int = 20,
    fp32_first_convs: int = 2,
) -> dict[str, Any]:
    """Static int8 QDQ quantization of the bundle's ONNX, calibrated on photos; recorded.

    Weights use 7 of their 8 bits except in depthwise convolutions, so the model computes
    the same on every x86 CPU; the first `fp32_first_convs` convolutions and the head stay
    fp32 (`_fp32_nodes`).
    """
    import onnx
    from onnxruntime.quantization import (
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    methods = {
        "minmax": CalibrationMethod.MinMax,
        "percentile": CalibrationMethod.Percentile,
        "entropy": CalibrationMethod.Entropy,
    }
    if method not in methods:
        raise ExportError(f"unknown calibration method {method!r}; choose one of {list(methods)}")
    if calibration is None:
        if not DEFAULT_TRAIN.is_dir():
            raise ExportError(
                "int8 quantization needs calibration photos: pass --calibration DIR "
                "(a folder of training photos)"
            )
        calibration = DEFAULT_TRAIN
    bundle = _ensure_onnx(bundle_dir, data=data, limit=limit, threads=threads)
    threads = threads or default_threads()
    reference = TorchBackend(bundle.build_model())
    inputs = Predictor(bundle, backend=reference)
    batches, n_calib = calibration_batches(inputs, calibration, calibration_size)
    log.info("calibrating int8 on %d photos from %s (%s)", n_calib, calibration, method)
    evalset = eval_set(bundle, data, limit)
    with tempfile.TemporaryDirectory(dir=bundle.path, prefix=".export-") as tmp:
        pre = Path(tmp) / "pre.onnx"
        out = Path(tmp) / INT8_FILE
        with quiet_third_party(), warnings.catch_warnings():
            quant_pre_process(str(bundle.path / ONNX_FILE), str(pre))
            graph = onnx.load(str(pre), load_external_data=False).graph
            fp32_nodes = _fp32_nodes(graph, fp32_first_convs)
            depthwise = _depthwise_weights(graph)
            warnings.simplefilter("ignore")
            quantize_static(
                str(pre),
                str(out),
                _PhotoReader(batches),
                quant_format=QuantFormat.QDQ,
                per_channel=True,
                # 7-bit weights: x86 CPUs without VNNI sum pairs of u8 x s8 products in 16
                # bits, which saturate with 8-bit weights; with 7 they cannot, so every CPU
                # computes the same int8 model (ONNX Runtime's advice for such CPUs).
                reduce_range=True,
                activation_type=QuantType.QUInt8,
                weight_type=QuantType.QInt8,
                calibrate_method=methods[method],
                nodes_to_exclude=fp32_nodes,
                extra_options={
                    "CalibTensorRangeSymmetric": False,
                    # Depthwise convolutions keep 8 bits: their kernels sum in 32 bits on every
                    # CPU, and 7 bits there cost 2 points on blurred or recompressed photos.
                    "TensorQuantOverrides": {
                        w: [{"axis": 0, "reduce_range": False}] for w in depthwise
                    },
                },
            )
        candidate = OnnxBackend(out, ONNX_INT8, RuntimeOptions(threads=threads))
        diffs = check_outputs(reference, candidate, example_batch(inputs, evalset, 8))
        info = measure_export(bundle, reference, candidate, evalset, threads, repeats)
        host_check, check_arrays = record_host_check(reference, candidate, bundle.preprocessing)
        shutil.move(str(out), bundle.path / INT8_FILE)
    add_arrays(
        bundle.path, host_check["file"], check_arrays, kind="host_check", checked_backend=ONNX_INT8
    )
    entry = {
        "kind": "onnx-int8",
        "backend": ONNX_INT8,
        "source": {"file": ONNX_FILE, "sha256": bundle.meta["files"][ONNX_FILE]["sha256"]},
        "quantization": {
            "method": "onnxruntime.quantization.quantize_static",
            "format": "QDQ",
            "per_channel": True,
            "activations": "uint8",
            "weights": "int8 per channel: 7-bit range (reduce_range), 8-bit in depthwise convs",
            "fp32_nodes": fp32_nodes,
        },
        "calibration": {"data": str(calibration), "n_images": n_calib, "method": method},
        "check": diffs,
        "host_check": host_check,
        **info,
    }
    add_file(bundle.path, INT8_FILE, **entry)
    log.info("wrote %s: %s", bundle.path / INT8_FILE, summary_line(entry))
    return entry
