"""The host check: does a quantised backend compute here what it computed where it was measured?

At export, FishEye runs fp32 and the quantised model on a fixed set of synthetic photos
("dead leaves": overlapping discs of random colours and sizes, a standard stand-in for
natural images, generated from a seed, so the bundle holds no photo) and records fp32's
features and how far the quantised features were from them. On a CPU whose kernels differ
(`host.HostProfile`), `auto` runs the quantised model on the same photos again, in a few
tens of milliseconds, and serves it only if its features are no further from fp32's than
they were where its accuracy, drift reference and OOD threshold were measured.

Saturating int8 kernels (x86 without VNNI) move the features of an int8 model exported
without `reduce_range` three times further from fp32 than VNNI does; a model exported with
it computes the same features on every CPU.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
from safetensors.numpy import load

from fisheye.bundle import Bundle, BundleError
from fisheye.data.preprocess import Preprocessing, normalize
from fisheye.inference.backend import Backend
from fisheye.inference.host import HostProfile, host_profile

log = logging.getLogger(__name__)

GENERATOR = "dead_leaves"
GENERATOR_VERSION = 1
N_PHOTOS = 16
SEED = 20261207
DISCS = 100
# The host passes when its deviation from fp32 is at most this factor of the recorded one,
# plus this margin (kernels that differ only in rounding move it by well under 0.01).
RELATIVE_SLACK = 1.25
ABSOLUTE_SLACK = 0.02
FEATURES = "reference_features"


def check_file(backend: str) -> str:
    """The bundle file holding the fp32 reference outputs for `backend`'s host check."""
    return f"host_check.{backend}.safetensors"


def dead_leaves(spec: Preprocessing, n: int = N_PHOTOS, seed: int = SEED) -> np.ndarray:
    """`n` synthetic photo-like model inputs, identical on every machine for one seed.

    Discs of random colour with a heavy tail of radii, painted over each other on a half-size
    canvas, with mild noise; then upscaled and normalised like a photo.
    """
    rng = np.random.default_rng(seed)
    size = spec.input_size
    canvas = (size + 1) // 2
    grid = np.arange(canvas)
    pixels = np.empty((n, canvas, canvas, 3), np.uint8)
    for i in range(n):
        img = np.empty((canvas, canvas, 3), np.float32)
        img[:] = rng.random(3)
        # Each disc draws (radius, y, x, r, g, b) in turn: one call draws the same stream.
        draws = rng.random((DISCS, 6))
        centres = draws[:, 1:3] * canvas
        # Squared distances of every row and column to every centre: a pixel is inside a
        # disc when its row's plus its column's is under the squared radius.
        dy2 = (grid[None, :] - centres[:, :1]) ** 2
        dx2 = (grid[None, :] - centres[:, 1:]) ** 2
        colours = draws[:, 3:].astype(np.float32)
        for k, u in enumerate(draws[:, 0].tolist()):
            radius = canvas * 0.02 / (1.0 - u * 0.97) ** 0.5
            cy, cx = centres[k].tolist()
            y0, y1 = max(0, int(cy - radius)), min(canvas, int(cy + radius) + 1)
            x0, x1 = max(0, int(cx - radius)), min(canvas, int(cx + radius) + 1)
            inside = dy2[k, y0:y1, None] + dx2[k, None, x0:x1] < radius**2
            img[y0:y1, x0:x1][inside] = colours[k]
        img += rng.normal(0.0, 0.03, img.shape)
        pixels[i] = np.clip(img * 255.0 + 0.5, 0, 255).astype(np.uint8)
    full = pixels.repeat(2, axis=1).repeat(2, axis=2)[:, :size, :size]
    return normalize(np.ascontiguousarray(full.transpose(0, 3, 1, 2)), spec)


def feature_deviation(features: np.ndarray, reference: np.ndarray) -> float:
    """Median over photos of |features - reference| / |reference| (L2 norms per photo)."""
    num = np.linalg.norm(features.astype(np.float64) - reference, axis=1)
    den = np.maximum(np.linalg.norm(reference.astype(np.float64), axis=1), 1e-12)
    return float(np.median(num / den))


def record(
    reference: Backend, candidate: Backend, spec: Preprocessing
) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """What an export stores for the host check: its bundle.json record and the arrays."""
    inputs = dead_leaves(spec)
    ref = reference.run(inputs).features
    deviation = feature_deviation(candidate.run(inputs).features, ref)
    entry = {
        "file": check_file(candidate.name),
        "inputs": {
            "generator": GENERATOR,
            "version": GENERATOR_VERSION,
            "n": N_PHOTOS,
            "seed": SEED,
        },
        "features_deviation": round(deviation, 6),
    }
    return entry, {FEATURES: np.ascontiguousarray(ref, dtype=np.float32)}


@dataclass(frozen=True)
class HostCheck:
    """The verdict on one quantised backend on this CPU."""

    backend: str
    status: str  # "same_cpu", "passed", "failed" or "unverifiable"
    host: HostProfile
    measured_on: HostProfile | None = None
    deviation: float | None = None  # this CPU's features vs fp32's
    limit: float | None = None
    detail: str = ""
    seconds: float = 0.0

    @property
    def passed(self) -> bool:
        """Whether the backend may be served on this CPU."""
        return self.status in ("same_cpu", "passed")

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form for /v1/model, the CLI and benchmarks."""
        return {
            "backend": self.backend,
            "status": self.status,
            "host": self.host.summary(),
            "measured_on": None if self.measured_on is None else self.measured_on.summary(),
            "features_deviation": None if self.deviation is None else round(self.deviation, 4),
            "limit": None if self.limit is None else round(self.limit, 4),
            "detail": self.detail,
            "seconds": round(self.seconds, 3),
        }


def _measured_on(entry: dict[str, Any]) -> HostProfile | None:
    raw = entry.get("measured_on")
    if not isinstance(raw, dict):
        return None
    try:
        return HostProfile.from_dict(raw)
    except ValueError:
        return None


def verify(bundle: Bundle, name: str, file_name: str, backend: Backend) -> HostCheck:
    """Check backend `name` (the bundle's `file_name` export) on this CPU.

    Skipped when the export was measured on a CPU with the same kernels; "unverifiable" when
    the export recorded no host check (exported before FishEye recorded one).
    """
    start = time.perf_counter()
    host = host_profile()
    entry = bundle.meta["files"][file_name]
    measured_on = _measured_on(entry)
    if measured_on is not None and host.same_kernels(measured_on):
        return HostCheck(name, "same_cpu", host, measured_on, detail="measured on this CPU")
    recorded = entry.get("host_check")
    inputs = (recorded or {}).get("inputs", {})
    if (
        not isinstance(recorded, dict)
        or inputs.get("generator") != GENERATOR
        or inputs.get("version") != GENERATOR_VERSION
    ):
        return HostCheck(
            name,
            "unverifiable",
            host,
            measured_on,
            detail=f"the {name} export records no host check (an older FishEye exported it)",
        )
    try:
        reference = load(bundle.read_file(recorded["file"]))[FEATURES]
        spec = bundle.preprocessing
        features = backend.run(dead_leaves(spec, int(inputs["n"]), int(inputs["seed"]))).features
    except (BundleError, KeyError, ValueError) as exc:
        raise BundleError(f"the host check of {name} cannot run: {exc}") from exc
    if features.shape != reference.shape:
        raise BundleError(
            f"the host check of {name} expects features {reference.shape}, got {features.shape}"
        )
    deviation = feature_deviation(features, reference)
    limit = float(recorded["features_deviation"]) * RELATIVE_SLACK + ABSOLUTE_SLACK
    passed = deviation <= limit
    where = "where it was measured" if measured_on is None else f"on {measured_on.summary()}"
    detail = (
        f"its features are {deviation:.3f} from fp32's on this CPU, against "
        f"{float(recorded['features_deviation']):.3f} {where} (limit {limit:.3f})"
    )
    return HostCheck(
        name,
        "passed" if passed else "failed",
        host,
        measured_on,
        deviation,
        limit,
        detail,
        time.perf_counter() - start,
    )
