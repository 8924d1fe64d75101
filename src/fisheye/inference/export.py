"""Export a bundle's model to ONNX or TorchScript, inside the bundle (int8: `quantize.py`).

Each exported file is checked against eager PyTorch, measured (accuracy on labelled photos,
batch-1 latency, both next to fp32's on the same photos and threads, and the CPU they were
measured on) and recorded in bundle.json with its sha256, so `Predictor(backend="auto")`
can pick the fastest form that keeps the accuracy and refuses a file that was changed.
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

from fisheye.bundle import Bundle, add_file, load_bundle
from fisheye.inference import backends
from fisheye.inference.backend import Backend, default_threads
from fisheye.inference.host import host_profile
from fisheye.inference.measure import (
    DEFAULT_VAL,
    LabelledSet,
    backend_accuracy,
    example_batch,
    load_labelled_set,
    median_ms,
)
from fisheye.inference.onnx_backend import ONNX_INPUT, ONNX_OUTPUTS, OnnxBackend
from fisheye.inference.options import RuntimeOptions
from fisheye.inference.predictor import Predictor
from fisheye.inference.torch_backend import TorchBackend

log = logging.getLogger(__name__)

ONNX = "onnx"
TORCHSCRIPT = backends.TORCHSCRIPT
FORMATS = backends.EXPORT_FORMATS
ONNX_FILE = backends.spec(ONNX).export_file or "model.onnx"
TORCHSCRIPT_FILE = "model.torchscript.pt"
DEFAULT_OPSET = 18
# fp32 ONNX must match eager within these (probabilities and features).
PROB_ATOL = 1e-4
FEATURE_ATOL = 1e-3
FEATURE_RTOL = 1e-3


@contextlib.contextmanager
def quiet_third_party() -> Iterator[None]:
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


def eval_set(bundle: Bundle, data: Path | None, limit: int | None) -> LabelledSet | None:
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


def measure_export(
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
    evalset = eval_set(bundle, data, limit) if measure_accuracy else None
    inputs = Predictor(bundle, backend=reference)
    with tempfile.TemporaryDirectory(dir=bundle.path, prefix=".export-") as tmp:
        tmp_file = Path(tmp) / ONNX_FILE
        example = torch.from_numpy(example_batch(inputs, evalset, 2))
        with quiet_third_party():
            exporter = _onnx_export(model, example, tmp_file, opset)
        candidate = OnnxBackend(tmp_file, ONNX, RuntimeOptions(threads=threads))
        diffs = check_outputs(reference, candidate, example_batch(inputs, evalset, 8))
        if (
            diffs["max_abs_diff_probabilities"] > PROB_ATOL
            or diffs["max_abs_diff_features"] > FEATURE_ATOL
        ):
            raise ExportError(f"the ONNX outputs differ from eager beyond tolerance: {diffs}")
        info = measure_export(bundle, reference, candidate, evalset, threads, repeats)
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
    log.info("wrote %s: %s", bundle.path / ONNX_FILE, summary_line(entry))
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


def summary_line(entry: dict[str, Any]) -> str:
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
