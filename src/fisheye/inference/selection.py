"""Which backend runs a bundle here: a named one, or `auto`'s selection checked on this CPU.

`auto` takes the fastest export whose recorded accuracy is within half a point of fp32's
(`backends.select_backend`). Those figures were measured on one CPU; a quantised backend
(`BackendSpec.host_dependent`) is served on another only after its host check passes
(`host_check.verify`). One that fails is not served: the next choice is (fp32), with one
warning, and the selection says why (`/readyz`, `/v1/model`, a metric, the CLI).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from fisheye.bundle import Bundle
from fisheye.inference import backends
from fisheye.inference.backend import Backend
from fisheye.inference.host import host_profile
from fisheye.inference.host_check import HostCheck, verify
from fisheye.inference.options import RuntimeOptions

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class BackendSelection:
    """The backend that runs the model, what was asked for, and the host checks on the way."""

    requested: str
    backend: Backend
    checks: tuple[HostCheck, ...] = ()

    @property
    def fallback_from(self) -> str | None:
        """The backend `auto` preferred but did not serve (it failed its host check)."""
        failed = [c.backend for c in self.checks if not c.passed]
        return failed[0] if failed else None

    @property
    def status(self) -> str:
        """ "fallback", the served backend's check ("same_cpu", "passed"), or "not_checked"."""
        if self.fallback_from is not None:
            return "fallback"
        served = [c.status for c in self.checks if c.backend == self.backend.name]
        return served[0] if served else "not_checked"

    def describe(self) -> dict[str, Any]:
        """JSON-ready form for /v1/model, /readyz and the CLI."""
        return {
            "requested": self.requested,
            "served": self.backend.name,
            "status": self.status,
            "fallback_from": self.fallback_from,
            "host": host_profile().summary(),
            "checks": [c.to_dict() for c in self.checks],
        }


def open_backend(
    bundle: Bundle, requested: str = backends.AUTO, runtime: RuntimeOptions = RuntimeOptions()
) -> BackendSelection:
    """Build the requested backend, or `auto`'s first choice that holds on this CPU."""

    def build(name: str) -> Backend:
        return backends.create_backend(bundle, name, runtime)

    if str(requested) != backends.AUTO:
        return BackendSelection(str(requested), build(str(requested)))
    checks: list[HostCheck] = []
    while True:
        name = backends.select_backend(bundle.meta, exclude=[c.backend for c in checks])
        backend = build(name)
        if backends.spec(name).host_dependent:
            file_name = backends.export_file(bundle.meta, name) or ""
            checks.append(verify(bundle, name, file_name, backend))
            if not checks[-1].passed:
                continue
        selection = BackendSelection(backends.AUTO, backend, tuple(checks))
        _report(selection)
        return selection


def _report(selection: BackendSelection) -> None:
    for check in selection.checks:
        if check.status == "passed":
            log.info("%s passed its host check on this CPU: %s", check.backend, check.detail)
        elif not check.passed:
            log.warning(
                "%s is not served on this CPU (%s): %s. Serving %s instead; `fisheye export "
                "--format %s` re-exports it in a form that holds on every CPU.",
                check.backend,
                check.host.summary(),
                check.detail,
                selection.backend.name,
                check.backend,
            )
