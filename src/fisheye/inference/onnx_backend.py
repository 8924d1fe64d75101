"""ONNX Runtime on the CPU, for the fp32 (`onnx`) and int8 QDQ (`onnx-int8`) exports."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import onnxruntime as ort

from fisheye.bundle import Bundle, BundleError
from fisheye.inference.backend import InferenceOutput, default_threads, softmax
from fisheye.inference.options import RuntimeOptions

log = logging.getLogger(__name__)
ONNX_INPUT = "x"
ONNX_OUTPUTS = ("logits", "features")


def session_options(
    threads: int | None = None, *, spinning: bool = True, memory_arena: bool = True
) -> ort.SessionOptions:
    """CPU session options with explicit, non-oversubscribing thread settings."""
    opts = ort.SessionOptions()
    opts.enable_cpu_mem_arena = memory_arena
    # intra-op threads include the calling thread: threads=2 keeps 2 cores busy, not 3.
    opts.intra_op_num_threads = threads or default_threads()
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    # Spinning pool threads answer faster but burn CPU that a busy server needs elsewhere.
    opts.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")
    # With spinning on: the pool threads stop spinning at the end of each run, so they spin
    # only while a model call is under way, not between calls.
    opts.add_session_config_entry("session.force_spinning_stop", "1")
    opts.log_severity_level = 3
    return opts


class OnnxBackend:
    """ONNX Runtime over a graph with outputs `logits` and `features`.

    With `runtime.spin_wait`, a single photo runs in a session whose `threads` spin while
    the call is under way (about 1 ms less per photo than waking them from sleep), and
    batches run in a session of `batch_threads` (default `threads`) that sleep when they
    wait, which leaves more CPU for decoding photos under load. Both hold the same graph.
    With `runtime.spinning_session_later` the spinning session is opened by
    `open_spinning_session`, not here (a cold start opens one session, not two).
    Probabilities are softmax(logits / temperature).
    """

    def __init__(
        self,
        model: bytes | str | Path,
        name: str = "onnx",
        runtime: RuntimeOptions = RuntimeOptions(),
        temperature: float = 1.0,
    ):
        self.name = name
        self.temperature = temperature
        self.runtime = runtime
        self.threads = runtime.threads or default_threads()
        self.batch_threads = runtime.batch_threads or self.threads
        source = model if isinstance(model, bytes) else str(model)
        self.session = self._session(source, self.batch_threads, spinning=False)
        self.single = self.session
        self._source: bytes | str | None = None
        if runtime.spin_wait and runtime.spinning_session_later and isinstance(source, bytes):
            self._source = source  # the checked bytes, kept until the session is opened
        elif runtime.spin_wait:
            self.single = self._session(source, self.threads, spinning=True)
        self.input_name = self.session.get_inputs()[0].name
        outputs = [o.name for o in self.session.get_outputs()]
        if set(ONNX_OUTPUTS) - set(outputs):
            raise BundleError(
                f"the ONNX graph has outputs {outputs}; FishEye needs {list(ONNX_OUTPUTS)}. "
                "Re-export it with `fisheye export --format onnx`."
            )

    def _session(
        self, source: bytes | str, threads: int, *, spinning: bool
    ) -> ort.InferenceSession:
        return ort.InferenceSession(
            source,
            sess_options=session_options(
                threads, spinning=spinning, memory_arena=self.runtime.memory_arena
            ),
            providers=["CPUExecutionProvider"],
        )

    def open_spinning_session(self) -> None:
        """Open the deferred spinning session for lone photos (its threads take the calling
        thread's priority), once. It must give the batch session's answer on a test input,
        else lone photos stay in the batch session (logged)."""
        source, self._source = self._source, None
        if source is None:
            return
        single = self._session(source, self.threads, spinning=True)
        shape = [d if isinstance(d, int) else 1 for d in self.session.get_inputs()[0].shape]
        x = np.random.default_rng(0).random(shape, dtype=np.float32)
        names = list(ONNX_OUTPUTS)
        expected = self.session.run(names, {self.input_name: x})
        got = single.run(names, {self.input_name: x})
        if all(np.allclose(a, b, rtol=1e-3, atol=1e-3) for a, b in zip(got, expected, strict=True)):
            self.single = single
        else:
            log.warning(
                "the spinning ONNX Runtime session disagrees with the batch session; "
                "lone photos keep running in the batch session"
            )

    def run(self, batch: np.ndarray) -> InferenceOutput:
        """Probabilities and features for a preprocessed (N, 3, H, W) float32 batch."""
        x = np.ascontiguousarray(batch, dtype=np.float32)
        session = self.single if len(x) == 1 else self.session
        logits, features = session.run(list(ONNX_OUTPUTS), {self.input_name: x})
        return InferenceOutput(
            softmax(logits, self.temperature), features.astype(np.float32, copy=False)
        )


def create(
    bundle: Bundle, name: str, file_name: str | None, runtime: RuntimeOptions
) -> OnnxBackend:
    """The registry's factory: the bundle's exported graph `file_name`, hash-checked."""
    if file_name is None:
        raise BundleError(f"the {name} backend needs an exported file in the bundle")
    return OnnxBackend(bundle.read_file(file_name), name, runtime, bundle.temperature)
