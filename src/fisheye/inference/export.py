"""Export a bundle's model to ONNX, int8 ONNX (static QDQ) or TorchScript, inside the bundle.

Each exported file is checked against eager PyTorch, measured (accuracy on labelled photos,
batch-1 latency, both next to fp32's on the same photos and threads, and the CPU they were
measured on) and recorded in bundle.json with its sha256, so `Predictor(backend="auto")`
can pick the fastest form that keeps the accuracy and refuses a file that was changed. The
int8 export also records its host check (`host_check`), which `auto` runs on other CPUs.
"""

from __future__ import annotations

import contextlib
import inspect
import logging
import shutil
import tempfile
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fisheye.bundle import Bundle, add_arrays, add_file, load_bundle
from fisheye.data.files import collect_image_paths
from fisheye.data.manifest import read_manifest
from fisheye.inference import backends
from fisheye.inference.backend import Backend, default_threads
from fisheye.inference.host import host_profile
from fisheye.inference.host_check import record as record_host_check
from fisheye.inference.measure import (
    DEFAULT_TRAIN,
    DEFAULT_VAL,
    LabelledSet,
    backend_accuracy,
    example_batch,
    load_labelled_set,
    median_ms,
    preprocessed,
    spread,
)
from fisheye.inference.onnx_backend import ONNX_INPUT, ONNX_OUTPUTS, OnnxBackend
from fisheye.inference.options import RuntimeOptions
from fisheye.inference.predictor import Predictor
from fisheye.inference.torch_backend import TorchBackend

log = logging.getLogger(__name__)

ONNX = "onnx"
ONNX_INT8 = "onnx-int8"
TORCHSCRIPT = backends.TORCHSCRIPT
FORMATS = backends.EXPORT_FORMATS
ONNX_FILE = backends.spec(ONNX).export_file or "model.onnx"
INT8_FILE = backends.spec(ONNX_INT8).export_file or "model.int8.onnx"
TORCHSCRIPT_FILE = "model.torchscript.pt"
DEFAULT_OPSET = 18
# fp32 ONNX must match eager within these (probabilities and features).
PROB_ATOL = 1e-4
FEATURE_ATOL = 1e-3
FEATURE_RTOL = 1e-3


@contextlib.contextmanager
def _quiet_third_party() -> Iterator[None]:
    """Silence the exporters' and quantizer's INFO chatter (some log on the root logger)."""
    root = logging.getLogger()
    names = ("onnx_ir", "onnxscript", "torch.onnx", "torch._dynamo", "torch.export")
    saved = [(lg, lg.level) for lg in (root, *map(logging.getLogger, names))]
    for lg, _ in saved:
        lg.setLevel(logging.WARNING)
    try:
        yield
    finally:
        for lg, level in saved:
            lg.setLevel(level)


class ExportError(RuntimeError):
    """An export failed or its output does not match eager PyTorch."""


class LogitsAndFeatures(torch.nn.Module):
    """The exported graph: (N, 3, H, W) -> (logits, penultimate features)."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model.eval()

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features = self.model.forward_features(x)
        return self.model.head(features), features


def _onnx_export(model: torch.nn.Module, example: torch.Tensor, out: Path, opset: int) -> str:
    """Write an ONNX file with a dynamic batch axis; returns which exporter was used."""
    wrapper = LogitsAndFeatures(model)
    names = {"input_names": [ONNX_INPUT], "output_names": list(ONNX_OUTPUTS)}
    try:
        batch = torch.export.Dim("batch", min=1, max=4096)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(
                wrapper,
                (example,),
                str(out),
                opset_version=opset,
                dynamo=True,
                external_data=False,
                dynamic_shapes={"x": {0: batch}},
                verbose=False,
                **names,
            )
        return "torch.onnx.export(dynamo=True)"
    except Exception as exc:  # the exporters fail with many exception types
        log.warning("the dynamo ONNX exporter failed (%s); trying the TorchScript-based one", exc)
    axes = {n: {0: "batch"} for n in (ONNX_INPUT, *ONNX_OUTPUTS)}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            wrapper,
            (example,),
            str(out),
            opset_version=opset,
            dynamo=False,
            dynamic_axes=axes,
            **names,
        )
    return "torch.onnx.export(dynamo=False)"


def check_outputs(reference: Backend, candidate: Backend, batch: np.ndarray) -> dict[str, float]:
    """Max absolute differences of probabilities and features between two backends."""
    ref, got = reference.run(batch), candidate.run(batch)
    if got.probabilities.shape != ref.probabilities.shape:
        raise ExportError(
            f"output shape {got.probabilities.shape} differs from eager's {ref.probabilities.shape}"
        )
    return {
        "max_abs_diff_probabilities": float(np.abs(got.probabilities - ref.probabilities).max()),
        "max_abs_diff_features": float(np.abs(got.features - ref.features).max()),
        "top1_agreement": float(
            (got.probabilities.argmax(1) == ref.probabilities.argmax(1)).mean()
        ),
    }


def _eval_set(bundle: Bundle, data: Path | None, limit: int | None) -> LabelledSet | None:
    if data is None:
        if not DEFAULT_VAL.is_dir():
            log.warning(
                "no labelled photos to measure accuracy on (pass --data); the export is recorded "
                "without accuracy, so `auto` will not choose it"
            )
            return None
        data = DEFAULT_VAL
    log.info("measuring accuracy on %s%s", data, f" (subset of {limit})" if limit else "")
    return load_labelled_set(data, bundle.classes, limit=limit)


def _measure(
    bundle: Bundle,
    reference: TorchBackend,
    candidate: Backend,
    evalset: LabelledSet | None,
    threads: int,
    repeats: int,
) -> dict[str, Any]:
    """Accuracy and batch-1 latency of the candidate next to eager fp32's."""
    one = example_batch(Predictor(bundle, backend=reference), evalset, 1)
    torch.set_num_threads(threads)
    info: dict[str, Any] = {
        "latency_ms": round(median_ms(lambda: candidate.run(one), repeats=repeats), 3),
        "reference_latency_ms": round(median_ms(lambda: reference.run(one), repeats=repeats), 3),
        "threads": threads,
        "measured_on": host_profile().to_dict(),
    }
    if evalset is not None and len(evalset):
        info["accuracy"] = backend_accuracy(bundle, candidate, evalset)
        info["reference_accuracy"] = backend_accuracy(bundle, reference, evalset)
        info["eval"] = {"data": evalset.source, "n_images": len(evalset)}
    return info


def export_onnx(
    bundle_dir: Path,
    *,
    opset: int = DEFAULT_OPSET,
    data: Path | None = None,
    limit: int | None = None,
    threads: int | None = None,
    repeats: int = 20,
    measure_accuracy: bool = True,
) -> dict[str, Any]:
    """Export fp32 ONNX into the bundle, check it against eager, measure and record it.

    `measure_accuracy=False` skips the accuracy measurement (e.g. for a feature extractor
    whose head is not trained); the export is then recorded without accuracy.
    """
    if opset < 17:
        raise ExportError(f"opset {opset} is too old; FishEye exports opset 17 or newer")
    bundle = load_bundle(bundle_dir)
    model = bundle.build_model()
    reference = TorchBackend(model)
    threads = threads or default_threads()
    evalset = _eval_set(bundle, data, limit) if measure_accuracy else None
    inputs = Predictor(bundle, backend=reference)
    with tempfile.TemporaryDirectory(dir=bundle.path, prefix=".export-") as tmp:
        tmp_file = Path(tmp) / ONNX_FILE
        example = torch.from_numpy(example_batch(inputs, evalset, 2))
        with _quiet_third_party():
            exporter = _onnx_export(model, example, tmp_file, opset)
        candidate = OnnxBackend(tmp_file, ONNX, RuntimeOptions(threads=threads))
        diffs = check_outputs(reference, candidate, example_batch(inputs, evalset, 8))
        if (
            diffs["max_abs_diff_probabilities"] > PROB_ATOL
            or diffs["max_abs_diff_features"] > FEATURE_ATOL
        ):
            raise ExportError(f"the ONNX outputs differ from eager beyond tolerance: {diffs}")
        info = _measure(bundle, reference, candidate, evalset, threads, repeats)
        shutil.move(str(tmp_file), bundle.path / ONNX_FILE)
    entry = {
        "kind": "onnx",
        "backend": ONNX,
        "opset": opset,
        "exporter": exporter,
        "check": diffs,
        **info,
    }
    add_file(bundle.path, ONNX_FILE, **entry)
    log.info("wrote %s: %s", bundle.path / ONNX_FILE, _summary(entry))
    return entry


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
    evalset = _eval_set(bundle, data, limit)
    with tempfile.TemporaryDirectory(dir=bundle.path, prefix=".export-") as tmp:
        pre = Path(tmp) / "pre.onnx"
        out = Path(tmp) / INT8_FILE
        with _quiet_third_party(), warnings.catch_warnings():
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
        info = _measure(bundle, reference, candidate, evalset, threads, repeats)
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
    log.info("wrote %s: %s", bundle.path / INT8_FILE, _summary(entry))
    return entry


def export_torchscript(bundle_dir: Path) -> dict[str, Any]:
    """Trace the model to TorchScript (for libtorch users; the Predictor does not load it)."""
    bundle = load_bundle(bundle_dir)
    model = bundle.build_model()
    reference = TorchBackend(model)
    inputs = Predictor(bundle, backend=reference)
    example = torch.from_numpy(example_batch(inputs, None, 2))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        traced = torch.jit.trace(LogitsAndFeatures(model), example, check_trace=False)
    check = example_batch(inputs, None, 4)
    with torch.inference_mode():
        logits, features = traced(torch.from_numpy(check))
    ref = reference.run(check)
    diff = float(np.abs(torch.softmax(logits, 1).numpy() - ref.probabilities).max())
    if diff > PROB_ATOL:
        raise ExportError(f"the TorchScript outputs differ from eager by {diff:.2e}")
    with tempfile.TemporaryDirectory(dir=bundle.path, prefix=".export-") as tmp:
        out = Path(tmp) / TORCHSCRIPT_FILE
        traced.save(str(out))
        shutil.move(str(out), bundle.path / TORCHSCRIPT_FILE)
    entry = {
        "kind": "torchscript",
        "outputs": list(ONNX_OUTPUTS),
        "check": {"max_abs_diff_probabilities": diff},
    }
    add_file(bundle.path, TORCHSCRIPT_FILE, **entry)
    log.info("wrote %s", bundle.path / TORCHSCRIPT_FILE)
    return entry


def export(bundle_dir: Path, fmt: str, **options: Any) -> dict[str, Any]:
    """Export one format (an exported backend of the registry, or torchscript) into the bundle.

    Each exporter takes the `options` it knows (e.g. `calibration` for int8) and ignores
    the rest, so one call serves every format.
    """
    if fmt == TORCHSCRIPT:
        return export_torchscript(bundle_dir)
    if fmt not in FORMATS:
        raise ExportError(f"unknown format {fmt!r}; choose one of {list(FORMATS)}")
    exporter = backends.exporter(fmt)
    accepted = inspect.signature(exporter).parameters
    return exporter(bundle_dir, **{k: v for k, v in options.items() if k in accepted})


def _summary(entry: dict[str, Any]) -> str:
    parts = []
    if entry.get("accuracy") is not None:
        parts.append(
            f"accuracy {entry['accuracy']:.2%} (fp32 {entry['reference_accuracy']:.2%}, "
            f"{entry['eval']['n_images']} photos)"
        )
    if entry.get("latency_ms") is not None:
        parts.append(
            f"batch-1 {entry['latency_ms']:.1f} ms (fp32 {entry['reference_latency_ms']:.1f} ms)"
        )
    return ", ".join(parts) or "recorded"
