"""The backend registry: every way to run a bundle's model, in one table.

The CLI's `--backend` choices, `ServeSettings.backend`, `fisheye export --format`, the
benchmarks and the per-backend drift references all derive from `BACKENDS`. Adding a
backend is one module with a `create` factory (and, if it runs an exported file, an
exporter) plus one row here; docs/architecture.md walks through an example.

Factories and exporters are named by import path and imported when a backend is chosen:
a backend's runtime library (PyTorch for `torch`, which is in the `train` extra) is then
only needed by those who use it.
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from fisheye.bundle import Bundle, BundleError
from fisheye.inference.backend import Backend
from fisheye.inference.options import RuntimeOptions

log = logging.getLogger(__name__)

AUTO = "auto"
# "auto" accepts an exported backend whose recorded accuracy is at most this far below fp32's.
AUTO_MAX_ACCURACY_DROP = 0.005


@dataclass(frozen=True)
class BackendSpec:
    """One row of the registry."""

    name: str
    # Backends of one family compute the same features (to ~1e-5), so they share one drift
    # reference; a quantised backend's features differ enough to need its own.
    family: str
    # "module:function" building the backend: f(bundle, name, file_name, runtime).
    factory: str
    # The file `fisheye export --format <name>` writes into the bundle; None: runs the weights.
    export_file: str | None = None
    # "module:function" writing export_file: f(bundle_dir, **options) -> bundle.json entry.
    exporter: str | None = None
    summary: str = ""
    # Top-level modules the backend needs at run time, and the extra that installs them.
    requires: tuple[str, ...] = ()
    extra: str | None = None
    # Its outputs depend on the CPU's kernels (int8): `auto` serves it on a CPU other than
    # the one its figures were measured on only after a host check (inference/selection.py).
    host_dependent: bool = False

    @property
    def needs_export(self) -> bool:
        """Whether the backend runs an exported file rather than the bundle's weights."""
        return self.export_file is not None


BACKENDS: dict[str, BackendSpec] = {
    spec.name: spec
    for spec in (
        BackendSpec(
            "torch",
            family="torch",
            factory="fisheye.inference.torch_backend:create",
            summary="eager PyTorch, fp32 (needs the train extra)",
            requires=("torch",),
            extra="train",
        ),
        BackendSpec(
            "onnx",
            family="torch",
            factory="fisheye.inference.onnx_backend:create",
            export_file="model.onnx",
            exporter="fisheye.inference.export:export_onnx",
            summary="ONNX Runtime, fp32",
            requires=("onnxruntime",),
        ),
        BackendSpec(
            "onnx-int8",
            family="onnx-int8",
            factory="fisheye.inference.onnx_backend:create",
            export_file="model.int8.onnx",
            exporter="fisheye.inference.quantize:export_onnx_int8",
            summary="ONNX Runtime, static int8 (QDQ), calibrated on training photos",
            requires=("onnxruntime",),
            host_dependent=True,
        ),
    )
}
NAMES: tuple[str, ...] = tuple(BACKENDS)
EXPORTED: tuple[str, ...] = tuple(n for n, s in BACKENDS.items() if s.needs_export)
# `fisheye export --format`: every exported backend, plus TorchScript for libtorch users
# (no FishEye backend runs it).
TORCHSCRIPT = "torchscript"
EXPORT_FORMATS: tuple[str, ...] = (*EXPORTED, TORCHSCRIPT)


def _enum_member(name: str) -> str:
    return name.replace("-", "_")


# Choice types for Typer and pydantic, derived from the table.
BackendName = StrEnum("BackendName", [(_enum_member(n), n) for n in NAMES])
BackendChoice = StrEnum("BackendChoice", [(AUTO, AUTO), *((_enum_member(n), n) for n in NAMES)])


class BackendUnavailableError(RuntimeError):
    """A backend's runtime library is not installed (e.g. PyTorch without the train extra)."""


def installed(name: str) -> bool:
    """Whether the libraries backend `name` needs are installed."""
    return all(importlib.util.find_spec(module) is not None for module in spec(name).requires)


def require_installed(name: str) -> None:
    """Raise BackendUnavailableError, saying what to install, unless `name` can run here."""
    row = spec(name)
    if not installed(name):
        missing = ", ".join(m for m in row.requires if importlib.util.find_spec(m) is None)
        how = f"pip install 'fisheye[{row.extra}]'" if row.extra else f"pip install {missing}"
        raise BackendUnavailableError(
            f"the {name} backend needs {missing}, which is not installed: {how}, or run an "
            "exported backend (`--backend auto` picks one the bundle has)"
        )


def spec(name: str) -> BackendSpec:
    """The registry row of a backend name (ValueError for an unknown one)."""
    try:
        return BACKENDS[str(name)]
    except KeyError:
        raise ValueError(
            f"unknown backend {name!r}; choose one of {', '.join([AUTO, *NAMES])}"
        ) from None


def _load(path: str) -> Callable[..., Any]:
    module, _, attr = path.partition(":")
    return getattr(importlib.import_module(module), attr)


def family(name: str) -> str:
    """The feature family of a backend (which drift reference it uses)."""
    return spec(name).family


def exported_entries(meta: dict[str, Any]) -> dict[str, tuple[str, dict[str, Any]]]:
    """Backend name -> (file name, bundle.json entry) for each exported form the bundle lists."""
    found: dict[str, tuple[str, dict[str, Any]]] = {}
    for file_name, entry in meta.get("files", {}).items():
        backend = entry.get("backend")
        if backend in EXPORTED:
            found[backend] = (file_name, entry)
    return found


def has_export(meta: dict[str, Any], name: str) -> bool:
    """Whether a bundle can run `name` (an exported backend needs its file; weights are there)."""
    return not spec(name).needs_export or name in exported_entries(meta)


def export_file(meta: dict[str, Any], name: str) -> str | None:
    """The bundle file an exported backend runs (None for one that runs the weights)."""
    if not spec(name).needs_export:
        return None
    entries = exported_entries(meta)
    if name not in entries:
        raise BundleError(f"the bundle has no {name} export")
    return entries[name][0]


def reference_backends(meta: dict[str, Any]) -> list[str]:
    """One backend per feature family the bundle can run here: what references are fitted on."""
    chosen: dict[str, str] = {}
    for name, row in BACKENDS.items():
        if row.family not in chosen and has_export(meta, name) and installed(name):
            chosen[row.family] = name
    return list(chosen.values())


def select_backend(meta: dict[str, Any], exclude: Sequence[str] = ()) -> str:
    """The `auto` choice: the fastest recorded backend within 0.5 points of fp32, else torch.

    An exported backend qualifies only if its export recorded both its accuracy and fp32's on
    the same photos (`accuracy`, `reference_accuracy`) and its batch-1 latency (`latency_ms`).
    Torch competes with its own recorded latency (`reference_latency_ms`), when known.
    Backends in `exclude` (e.g. one that failed its host check) are passed over.
    """
    best, best_ms = "torch", float("inf")
    torch_ms: list[float] = []
    for backend, (file_name, entry) in sorted(exported_entries(meta).items()):
        if backend in exclude:
            continue
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
    if best != "torch" and torch_ms and min(torch_ms) <= best_ms:
        return "torch"
    return best


def resolve(meta: dict[str, Any], requested: str = AUTO) -> str:
    """The concrete backend for a request: `auto` resolved, an unknown or missing one refused."""
    name = select_backend(meta) if str(requested) == AUTO else spec(requested).name
    if not has_export(meta, name):
        raise BundleError(
            f"the bundle has no {name} export; create it with `fisheye export --format {name}`, "
            "or use --backend auto"
        )
    return name


def create_backend(
    bundle: Bundle, backend: str, runtime: RuntimeOptions = RuntimeOptions()
) -> Backend:
    """Build the named backend for a loaded bundle (`auto`: `selection.open_backend`)."""
    if str(backend) == AUTO:
        raise ValueError("`auto` is chosen on this CPU by fisheye.inference.selection.open_backend")
    name = resolve(bundle.meta, backend)
    require_installed(name)
    factory = _load(spec(name).factory)
    return factory(bundle, name, export_file(bundle.meta, name), runtime)


def exporter(name: str) -> Callable[..., dict[str, Any]]:
    """The function that exports a bundle for backend `name` (ValueError if it has none)."""
    row = spec(name)
    if row.exporter is None:
        raise ValueError(f"the {name} backend runs the bundle's weights; it has nothing to export")
    return _load(row.exporter)
