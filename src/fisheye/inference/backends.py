"""Inference backends: eager PyTorch and ONNX Runtime (fp32 and int8), one interface.

Every backend's `run` takes a preprocessed (N, 3, H, W) float batch and returns an
`InferenceOutput` with class probabilities and penultimate features, so the Predictor, the
server and monitoring work the same whichever backend runs.
"""

from __future__ import annotations

import hashlib
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
import torch

from fisheye.bundle import BundleError

if TYPE_CHECKING:
    from fisheye.bundle import Bundle

log = logging.getLogger(__name__)

TORCH = "torch"
ONNX = "onnx"
ONNX_INT8 = "onnx-int8"
AUTO = "auto"
BACKENDS = (TORCH, ONNX, ONNX_INT8)
ONNX_BACKENDS = (ONNX, ONNX_INT8)
# "auto" accepts an exported backend whose recorded accuracy is at most this far below fp32's.
AUTO_MAX_ACCURACY_DROP = 0.005
ONNX_INPUT = "x"
ONNX_OUTPUTS = ("logits", "features")


@dataclass(frozen=True)
class InferenceOutput:
    """What one model call gives for a batch: class probabilities and penultimate features."""

    probabilities: np.ndarray  # (N, classes) float32
    features: np.ndarray  # (N, num_features) float32, used by drift and OOD monitoring


class Backend(Protocol):
    """A way to run the model: `run` maps a preprocessed batch to probabilities and features."""

    name: str

    def run(self, batch: torch.Tensor) -> InferenceOutput:
        """Probabilities and features for a preprocessed (N, 3, H, W) batch."""
        ...


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax in float32, numerically stable."""
    z = logits.astype(np.float32, copy=False)
    z = np.exp(z - z.max(axis=1, keepdims=True))
    return z / z.sum(axis=1, keepdims=True)


class TorchBackend:
    """Eager fp32 PyTorch: the reference backend every other backend is checked against."""

    name = TORCH

    def __init__(self, model: torch.nn.Module, name: str = TORCH):
        self.model = model.eval()
        self.name = name

    @torch.inference_mode()
    def run(self, batch: torch.Tensor) -> InferenceOutput:
        """Probabilities and features for a preprocessed (N, 3, H, W) batch."""
        features = self.model.forward_features(batch)
        logits = self.model.head(features)
        return InferenceOutput(
            torch.softmax(logits.float(), dim=1).numpy(), features.float().numpy()
        )


def default_threads() -> int:
    """Intra-op threads when none are given: torch's setting, at most the CPU count."""
    return max(1, min(torch.get_num_threads(), os.cpu_count() or 1))


def ort_session_options(threads: int | None = None, *, spinning: bool = True) -> Any:
    """ONNX Runtime CPU session options with explicit, non-oversubscribing thread settings."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    # intra-op threads include the calling thread: threads=2 keeps 2 cores busy, not 3.
    opts.intra_op_num_threads = threads or default_threads()
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    # Spinning pool threads answer faster but burn CPU that a busy server needs elsewhere.
    opts.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")
    opts.log_severity_level = 3
    return opts


class OnnxBackend:
    """ONNX Runtime on CPU, for an fp32 (`onnx`) or int8 QDQ (`onnx-int8`) graph."""

    def __init__(
        self,
        model: bytes | str | Path,
        name: str = ONNX,
        *,
        threads: int | None = None,
        spinning: bool = True,
    ):
        import onnxruntime as ort

        self.name = name
        self.threads = threads or default_threads()
        source = model if isinstance(model, bytes) else str(model)
        self.session = ort.InferenceSession(
            source,
            sess_options=ort_session_options(self.threads, spinning=spinning),
            providers=["CPUExecutionProvider"],
        )
        self.input_name = self.session.get_inputs()[0].name
        outputs = [o.name for o in self.session.get_outputs()]
        if set(ONNX_OUTPUTS) - set(outputs):
            raise BundleError(
                f"the ONNX graph has outputs {outputs}; FishEye needs {list(ONNX_OUTPUTS)}. "
                "Re-export it with `fisheye export --format onnx`."
            )

    def run(self, batch: torch.Tensor) -> InferenceOutput:
        """Probabilities and features for a preprocessed (N, 3, H, W) batch."""
        x = np.ascontiguousarray(batch.detach().cpu().numpy(), dtype=np.float32)
        logits, features = self.session.run(list(ONNX_OUTPUTS), {self.input_name: x})
        return InferenceOutput(softmax(logits), features.astype(np.float32, copy=False))


def exported_entries(meta: dict[str, Any]) -> dict[str, tuple[str, dict[str, Any]]]:
    """Backend name -> (file name, bundle.json entry) for each exported form the bundle lists."""
    found: dict[str, tuple[str, dict[str, Any]]] = {}
    for file_name, entry in meta.get("files", {}).items():
        backend = entry.get("backend")
        if backend in ONNX_BACKENDS:
            found[backend] = (file_name, entry)
    return found


def select_backend(meta: dict[str, Any]) -> str:
    """The `auto` choice: the fastest recorded backend within 0.5 points of fp32, else torch.

    An exported backend qualifies only if its export recorded both its accuracy and fp32's on
    the same photos (`accuracy`, `reference_accuracy`) and its batch-1 latency (`latency_ms`).
    Torch competes with its own recorded latency (`reference_latency_ms`), when known.
    """
    best, best_ms = TORCH, float("inf")
    torch_ms: list[float] = []
    for backend, (file_name, entry) in sorted(exported_entries(meta).items()):
        acc, ref = entry.get("accuracy"), entry.get("reference_accuracy")
        ms = entry.get("latency_ms")
        if entry.get("reference_latency_ms") is not None:
            torch_ms.append(float(entry["reference_latency_ms"]))
        if acc is None or ref is None or ms is None:
            log.debug("auto: %s (%s) has no recorded accuracy/latency; skipped", backend, file_name)
            continue
        if float(acc) < float(ref) - AUTO_MAX_ACCURACY_DROP - 1e-9:
            log.info(
                "auto: %s skipped: accuracy %.2f%% is over %.1f points below fp32's %.2f%%",
                backend,
                100 * acc,
                100 * AUTO_MAX_ACCURACY_DROP,
                100 * ref,
            )
            continue
        if float(ms) < best_ms:
            best, best_ms = backend, float(ms)
    if best != TORCH and torch_ms and min(torch_ms) <= best_ms:
        return TORCH
    return best


def _verified_bytes(bundle: Bundle, file_name: str, entry: dict[str, Any]) -> bytes:
    """Read an exported file once and check its sha256 against bundle.json before use."""
    path = Path(bundle.path) / file_name
    if not path.is_file():
        raise BundleError(f"bundle file {path} is missing; re-export it with `fisheye export`")
    data = path.read_bytes()
    actual = hashlib.sha256(data).hexdigest()
    if actual != entry.get("sha256"):
        raise BundleError(
            f"bundle file {path} fails its integrity check (sha256 {actual[:12]}..., expected "
            f"{str(entry.get('sha256'))[:12]}...): it was modified or corrupted. Re-export it "
            "with `fisheye export`."
        )
    return data


def create_backend(
    bundle: Bundle,
    backend: str = AUTO,
    *,
    threads: int | None = None,
    model: torch.nn.Module | None = None,
    spinning: bool = True,
) -> Backend:
    """Build the named backend (or the `auto` choice) for a loaded bundle."""
    if backend not in (AUTO, *BACKENDS):
        raise ValueError(f"unknown backend {backend!r}; choose one of {[AUTO, *BACKENDS]}")
    name = select_backend(bundle.meta) if backend == AUTO else backend
    if name == TORCH:
        if threads:
            torch.set_num_threads(threads)
        return TorchBackend(model if model is not None else bundle.build_model())
    entries = exported_entries(bundle.meta)
    if name not in entries:
        raise BundleError(
            f"the bundle {bundle.path} has no {name} export; create it with "
            f"`fisheye export --model {bundle.path} --format {name}`, or use --backend torch"
        )
    file_name, entry = entries[name]
    return OnnxBackend(
        _verified_bytes(bundle, file_name, entry), name, threads=threads, spinning=spinning
    )
