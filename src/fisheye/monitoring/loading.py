"""A bundle folder to the model that serves it: verified bundle, backend, monitor, Predictor.

The server's slots, `fisheye predict`/`evaluate`/`drift`, the Ray actors and the benchmarks
all load a model here, so every one verifies the same way and scores OOD with the drift
reference of the backend that actually runs (after a host-check fallback: fp32's).
"""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

from fisheye.bundle import load_bundle
from fisheye.inference.backends import AUTO
from fisheye.inference.options import PredictionOptions, RuntimeOptions
from fisheye.inference.predictor import Predictor
from fisheye.inference.selection import open_backend
from fisheye.monitoring.monitor import Monitor, MonitorOptions
from fisheye.monitoring.storage import load_monitor


class LoadedModel(NamedTuple):
    """A verified bundle's Predictor and, when monitored and fitted, its Monitor."""

    predictor: Predictor
    monitor: Monitor | None


def load_model(
    bundle_dir: Path | None = None,
    *,
    backend: str = AUTO,
    runtime: RuntimeOptions = RuntimeOptions(),
    options: PredictionOptions = PredictionOptions(),
    monitoring: MonitorOptions | None = MonitorOptions(),
    expected_sha256: str | None = None,
    check_all_files: bool = True,
) -> LoadedModel:
    """Load, verify and assemble a bundle's model (`monitoring=None`: no monitor).

    Every file's hash is checked (and bundle.json's against `expected_sha256` when given),
    and the model is run once to check its outputs fit the class list and the monitor.
    `check_all_files=False` checks each file when it is read instead of all of them first
    (`load_bundle`): the server's start-up reads only what it serves.
    """
    bundle = load_bundle(bundle_dir, expected_sha256, check_all_files=check_all_files)
    selection = open_backend(bundle, backend, runtime)
    monitor = (
        None if monitoring is None else load_monitor(bundle, selection.backend.name, monitoring)
    )
    predictor = Predictor(
        bundle,
        backend=selection,
        options=options,
        ood=monitor.ood if monitor is not None else None,
        shift_temperature=monitor.shift_temperature if monitor is not None else None,
    )
    predictor.verify()
    return LoadedModel(predictor, monitor)


def load_predictor(bundle_dir: Path, *, backend: str, top_k: int) -> Predictor:
    """The Predictor of a bundle with its monitor, `top_k` candidates per photo (what one
    Ray actor of `fisheye predict --engine ray` runs)."""
    return load_model(bundle_dir, backend=backend, options=PredictionOptions(top_k=top_k))[0]
