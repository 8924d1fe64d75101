"""The drift reference stored in a bundle: one safetensors file per backend family.

The file holds the reference features, the OOD scorer's statistics and its calibration
scores; its bundle.json entry the kernel bandwidth, the OOD threshold and the shift
temperature. `load_monitor` reads back the reference of a backend's own features.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
from safetensors.numpy import load

from fisheye.bundle import Bundle, add_arrays
from fisheye.inference import backends
from fisheye.inference.calibration import ShiftTemperature
from fisheye.monitoring.drift import DEFAULT_ALPHA, DEFAULT_PERMUTATIONS, DriftDetector
from fisheye.monitoring.monitor import Monitor, MonitorOptions
from fisheye.monitoring.ood import OODScorer

log = logging.getLogger(__name__)

DRIFT_FILE = "drift_reference.safetensors"
DRIFT_KIND = "drift_reference"


def reference_file(backend: str) -> str:
    """The drift reference's file name for a backend (the fp32 one keeps the plain name)."""
    family = backends.family(backend)
    return DRIFT_FILE if family == "torch" else f"drift_reference.{family}.safetensors"


def reference_entries(meta: dict[str, Any]) -> dict[str, tuple[str, dict[str, Any]]]:
    """Backend family -> (file name, bundle.json entry) for each drift reference in a bundle.

    An entry without `features_backend` predates per-backend references; it was fitted on torch.
    """
    found: dict[str, tuple[str, dict[str, Any]]] = {}
    for name, entry in meta.get("files", {}).items():
        if entry.get("kind") == DRIFT_KIND:
            found[backends.family(entry.get("features_backend", "torch"))] = (name, entry)
    return found


def save_reference(
    bundle_dir: Path, monitor: Monitor, *, data: str | None = None, backend: str | None = None
) -> Path:
    """Write the monitor's arrays into the bundle and record the file in bundle.json."""
    bundle_dir = Path(bundle_dir)
    backend = backends.family(backend or monitor.backend)
    file_name = reference_file(backend)
    ood = monitor.ood
    arrays = {
        # float16 halves the file; the MMD test is insensitive at this precision.
        "reference": np.ascontiguousarray(monitor.drift.reference, dtype=np.float16),
        "class_means": np.ascontiguousarray(ood.class_means, dtype=np.float32),
        "components": np.ascontiguousarray(ood.components, dtype=np.float32),
        "eigenvalues": np.ascontiguousarray(ood.eigenvalues, dtype=np.float32),
        "calibration_scores": np.ascontiguousarray(ood.calibration_scores, dtype=np.float32),
    }
    path = bundle_dir / file_name
    add_arrays(
        bundle_dir,
        file_name,
        arrays,
        {"format": "np"},
        kind=DRIFT_KIND,
        # Not `backend`: that key marks an exported model form (fisheye.inference.backends).
        features_backend=backend,
        bandwidth=monitor.drift.bandwidth,
        n_permutations=monitor.drift.n_permutations,
        alpha=monitor.drift.alpha,
        class_prior=None
        if monitor.drift.class_prior is None
        else [int(c) for c in monitor.drift.class_prior],
        ood={
            "method": "mahalanobis_shared_cov_ledoit_wolf_ppca",
            "threshold": ood.threshold,
            "false_alarm_rate": ood.false_alarm_rate,
            "residual_variance": ood.residual_variance,
        },
        shift_temperature=None
        if monitor.shift_temperature is None
        else monitor.shift_temperature.to_json(),
        fitted={**monitor.info, "data": data, "created": datetime.now(UTC).isoformat()},
    )
    log.info("drift reference written to %s (%.1f MB)", path, path.stat().st_size / 1e6)
    return path


def load_monitor(
    bundle: Bundle, backend: str | None = None, options: MonitorOptions = MonitorOptions()
) -> Monitor | None:
    """The bundle's monitor for `backend`'s features, or None when it has no drift reference.

    Picks the reference fitted on the same backend (torch and onnx share the fp32 one). When
    there is none for `backend`, it falls back to another one with a warning and the monitor
    says so (`matches_backend` is False): expect false drift and OOD alarms then.
    """
    entries = reference_entries(bundle.meta)
    if not entries:
        return None
    wanted = backends.family(backend) if backend else "torch"
    if wanted in entries:
        family = wanted
    else:
        family = "torch" if "torch" in entries else sorted(entries)[0]
        log.warning(
            "the bundle %s has no drift reference for the %s backend (it has: %s); using the "
            "%s one, whose features differ: drift and OOD verdicts will be unreliable. Fit one "
            "with `fisheye drift fit --model %s --backend %s --data <training photos>`",
            bundle.path,
            backend,
            ", ".join(sorted(entries)),
            family,
            bundle.path,
            backend,
        )
    file_name, entry = entries[family]
    t = load(bundle.read_file(file_name))
    o = entry["ood"]
    ood = OODScorer(
        class_means=t["class_means"],
        components=t["components"],
        eigenvalues=t["eigenvalues"],
        residual_variance=float(o["residual_variance"]),
        threshold=float(o["threshold"]),
        false_alarm_rate=float(o["false_alarm_rate"]),
        calibration_scores=t["calibration_scores"],
    )
    rate = options.false_alarm_rate
    if rate is not None and rate != ood.false_alarm_rate:
        ood.calibrate(ood.calibration_scores, rate)
    drift = DriftDetector(
        t["reference"].astype(np.float32),
        entry["bandwidth"],
        n_permutations=options.n_permutations
        or int(entry.get("n_permutations", DEFAULT_PERMUTATIONS)),
        alpha=float(entry.get("alpha", DEFAULT_ALPHA)),
        class_prior=entry.get("class_prior"),
    )
    shift = entry.get("shift_temperature")
    return Monitor(
        drift,
        ood,
        dict(entry.get("fitted", {})),
        family,
        backend,
        None if shift is None else ShiftTemperature.from_json(shift),
    )
