"""Resolve a model reference (a bundle folder or `models:/` URI) and load it, or say why not.

The server (start-up, hot swap, reload, challenger) and the CLI load models through
`resolve_model` and `open_model`. Every failure is one `ModelLoadError` whose `kind` the HTTP
layer and the CLI each map once (to a status code, to an exit message).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fisheye.bundle import BundleError
from fisheye.inference.backends import BackendUnavailableError
from fisheye.monitoring.loading import LoadedModel, load_model
from fisheye.tracking.model_registry import (
    PinMismatchError,
    RegistryError,
    ResolvedModel,
    resolve_reference,
)
from fisheye.tracking.store import TrackingError, TrackingUnavailableError, default_tracking_uri

# What went wrong, for the callers' one mapping each.
REGISTRY_UNAVAILABLE = "registry_unavailable"  # the MLflow store cannot be reached
NOT_PINNED = "bundle_not_pinned"  # the bundle is not the pinned one
INVALID = "bundle_invalid"  # missing, tampered, malformed, or its files do not fit
BACKEND_UNAVAILABLE = "backend_unavailable"  # the backend's library is not installed


class ModelLoadError(Exception):
    """A model reference that could not be resolved or loaded; the model in use is unchanged."""

    def __init__(self, kind: str, detail: str) -> None:
        super().__init__(detail)
        self.kind = kind
        self.detail = detail


@dataclass(frozen=True)
class ResolvedSource:
    """A model reference as a local bundle folder, the hash it is pinned to, and its version."""

    source: str  # what was asked for
    path: Path
    pinned: str | None
    registered: ResolvedModel | None = None  # set for a registry URI


def resolve_model(source: Path | str, pinned: str | None = None) -> ResolvedSource:
    """A folder or registry URI as a local, pinned bundle folder (ModelLoadError if not)."""
    try:
        path, sha, registered = resolve_reference(source, pinned)
    except TrackingUnavailableError as exc:
        raise ModelLoadError(REGISTRY_UNAVAILABLE, str(exc)) from exc
    except PinMismatchError as exc:
        raise ModelLoadError(NOT_PINNED, str(exc)) from exc
    except (RegistryError, BundleError) as exc:
        raise ModelLoadError(INVALID, f"cannot use {source}: {exc}") from exc
    except TrackingError as exc:
        raise ModelLoadError(REGISTRY_UNAVAILABLE, str(exc)) from exc
    except Exception as exc:  # MLflow's own errors: an unreachable server, a bad URI
        raise ModelLoadError(
            REGISTRY_UNAVAILABLE,
            f"cannot resolve {source} in the MLflow registry at {default_tracking_uri()} "
            f"({type(exc).__name__}: {exc})",
        ) from exc
    return ResolvedSource(str(source), path, sha, registered)


def open_model(resolved: ResolvedSource, **options: Any) -> LoadedModel:
    """Load a resolved bundle (`monitoring.loading.load_model` options), or ModelLoadError."""
    try:
        return load_model(resolved.path, expected_sha256=resolved.pinned, **options)
    except BundleError as exc:
        raise ModelLoadError(
            INVALID, f"the bundle {resolved.path} failed verification: {exc}"
        ) from exc
    except BackendUnavailableError as exc:
        raise ModelLoadError(BACKEND_UNAVAILABLE, str(exc)) from exc
    except (KeyError, TypeError, ValueError, RuntimeError, OSError) as exc:
        raise ModelLoadError(
            INVALID, f"the bundle {resolved.path} cannot be loaded: {exc}"
        ) from exc
