"""Eager PyTorch: the reference backend every other backend is checked against."""

from __future__ import annotations

import threading

import numpy as np
import torch

from fisheye.bundle import Bundle
from fisheye.inference.backend import InferenceOutput, softmax
from fisheye.inference.options import RuntimeOptions


class TorchBackend:
    """Eager fp32 PyTorch on the CPU; probabilities are softmax(logits / temperature)."""

    def __init__(
        self,
        model: torch.nn.Module,
        name: str = "torch",
        threads: int | None = None,
        temperature: float = 1.0,
    ):
        self.model = model.eval()
        self.name = name
        self.threads = threads
        self.temperature = temperature
        self._configured = threading.local()

    @torch.inference_mode()
    def run(self, batch: np.ndarray) -> InferenceOutput:
        """Probabilities and features for a preprocessed (N, 3, H, W) float32 batch."""
        # OpenMP's thread count is per calling thread: set it in each thread that runs us.
        if self.threads and not getattr(self._configured, "done", False):
            torch.set_num_threads(self.threads)
            self._configured.done = True
        x = torch.from_numpy(np.ascontiguousarray(batch, dtype=np.float32))
        features = self.model.forward_features(x)
        logits = self.model.head(features)
        return InferenceOutput(
            softmax(logits.float().numpy(), self.temperature), features.float().numpy()
        )


def create(
    bundle: Bundle, name: str, file_name: str | None, runtime: RuntimeOptions
) -> TorchBackend:
    """The registry's factory: the bundle's weights in eager PyTorch (`runtime.threads`)."""
    return TorchBackend(bundle.build_model(), name, runtime.threads, bundle.temperature)
