"""Model changes: load, hot swap, reload, challenger attach/detach/promote, rollback.

One change at a time (a second is refused, not queued). A change loads, verifies and warms
the new slot beside the live one, then replaces one reference; the replaced slot stops once
the requests it took are answered and is kept (stopped) for a one-step rollback. The slot
kept before it is freed at once: nothing holds a model in a reference cycle (its drift
window calls its monitor through a weak reference), so its sessions, threads and buffers go
when the last reference does, not when the cycle collector runs. Every
change, done or failed, is counted, logged and kept in a short history.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from fisheye.monitoring.prediction_log import PredictionLog
from fisheye.serving.challenger import Challenger
from fisheye.serving.decoding import DecodePool
from fisheye.serving.memory import trim_freed_memory
from fisheye.serving.metrics import Metrics
from fisheye.serving.settings import ServeSettings
from fisheye.serving.slots import ModelSlot, Slots, WarmupError, load_slot
from fisheye.tracking.loading import resolve_model
from fisheye.tracking.model_registry import is_registry_uri

log = logging.getLogger(__name__)
RETIRE_GRACE_S = 0.5
HISTORY = 20

# What a refused or failed change was, for the HTTP layer's one mapping.
CHANGE_IN_PROGRESS = "change_in_progress"
NO_CHALLENGER = "no_challenger"
NOTHING_TO_ROLL_BACK = "nothing_to_roll_back"
WARMUP_FAILED = "warmup_failed"


class ModelChangeError(Exception):
    """A model change that was refused or failed; the live model is unchanged."""

    def __init__(self, kind: str, detail: str) -> None:
        super().__init__(detail)
        self.kind = kind
        self.detail = detail


class ModelChanges:
    """Changes the models in `slots`, one at a time, with the app's shared resources."""

    def __init__(
        self,
        settings: ServeSettings,
        metrics: Metrics,
        slots: Slots,
        decoder: DecodePool | None,
        prediction_log: PredictionLog | None,
    ) -> None:
        self.settings = settings
        self.metrics = metrics
        self.slots = slots
        self.decoder = decoder
        self.prediction_log = prediction_log
        self.history: list[dict[str, Any]] = []  # the last changes, newest last
        self._lock = threading.Lock()
        self._retiring: list[threading.Thread] = []

    # -- the changes (blocking: run them in a thread) -------------------------------------
    def load(self) -> ModelSlot:
        """Start-up: load the configured model (pinned by FISHEYE_MODEL_SHA256), make it live."""
        with self._lock:
            # The largest batch and the spinning session wait for the first answer
            # (ServingState._after_first_answer).
            slot = self._open(self.settings.model, largest_batch=False, cold_start=True)
            self._make_live(slot)
            return slot

    def swap(self, source: Path | str, action: str = "swap") -> dict[str, Any]:
        """Load, verify and warm `source` beside the live model, then make it live."""
        with self._changing(action):
            return self._replace_live(self._open(source), action)

    def reload(self) -> dict[str, Any]:
        """SIGHUP: load the configured model again (a registry alias may point elsewhere now)."""
        return self.swap(self.settings.model, action="reload")

    def attach(self, source: Path | str, mode: str, share: float) -> dict[str, Any]:
        """Load `source` as the challenger (replacing any), in shadow or canary mode."""
        with self._changing("attach"):
            slot = self._open(source, role="challenger")
            old = self.slots.challenger
            self.slots.challenger = Challenger(
                slot, mode, share, self.settings, self.metrics, self.prediction_log
            )
            if old is not None:
                self._retire(old.slot)
                old.close()
            self._record("attach", slot, mode=mode, share=share)
            return self.status()

    def detach(self) -> dict[str, Any]:
        """Drop the challenger (ModelChangeError when there is none)."""
        with self._changing("detach"):
            challenger = self._need_challenger()
            self.slots.challenger = None
            challenger.close()
            self._retire(challenger.slot)
            self._record("detach", challenger.slot)
            return self.status()

    def promote(self) -> dict[str, Any]:
        """Make the challenger the live model (the old live model is kept for rollback)."""
        with self._changing("promote"):
            challenger = self._need_challenger()
            # A fresh batcher and a live drift window; the challenger's own slot stops once
            # the canary or shadow photos it took are answered.
            slot = challenger.slot.fresh()
            self._start(slot)
            self.slots.challenger = None
            challenger.close()
            self._retire(challenger.slot)
            return self._replace_live(slot, "promote")

    def rollback(self) -> dict[str, Any]:
        """Make the model the last change replaced live again (one step back)."""
        with self._changing("rollback"):
            previous = self.slots.previous
            if previous is None:
                raise ModelChangeError(
                    NOTHING_TO_ROLL_BACK, "no earlier model is kept: nothing to roll back"
                )
            slot = previous.fresh()
            self._start(slot)
            result = self._replace_live(slot, "rollback")
            self.slots.previous = None  # one step only
            return {**result, "previous": None}

    def status(self) -> dict[str, Any]:
        """The live, previous and challenger models and the recent changes."""
        slots = self.slots
        return {
            "live": None if slots.live is None else slots.live.describe(),
            "previous": None if slots.previous is None else slots.previous.describe(),
            "challenger": None if slots.challenger is None else slots.challenger.describe(),
            "changes": list(self.history),
        }

    def close(self) -> None:
        """Wait for slots being retired, then stop the live slot and the challenger's."""
        for thread in self._retiring:
            thread.join(self.settings.request_timeout_s + 5)
        challenger = self.slots.challenger
        for slot in (self.slots.live, None if challenger is None else challenger.slot):
            if slot is not None:
                slot.stop()

    # -- internals ------------------------------------------------------------------------
    @contextlib.contextmanager
    def _changing(self, action: str) -> Iterator[None]:
        """One model change at a time (a second is refused); failures are counted and logged."""
        if not self._lock.acquire(blocking=False):
            raise ModelChangeError(CHANGE_IN_PROGRESS, "another model change is in progress; retry")
        try:
            yield
        except Exception as exc:
            self.metrics.model_swaps.labels(action, "failed").inc()
            log.warning("model %s failed: %s", action, exc)
            self._record(action, None, error=str(exc))
            raise
        finally:
            self._lock.release()

    def _open(
        self,
        source: Path | str,
        role: str = "live",
        largest_batch: bool = True,
        cold_start: bool = False,
    ) -> ModelSlot:
        """Resolve, load, verify and start `source` (pinned when it is the configured model)."""
        pinned = self.settings.model_sha256 if self._is_configured(source) else None
        slot = load_slot(resolve_model(source, pinned), self.settings, cold_start=cold_start)
        self._start(slot, role, largest_batch)
        return slot

    def _is_configured(self, source: Path | str) -> bool:
        """Whether `source` names the configured model (FISHEYE_MODEL), however it is spelled
        (`dir/`, `./dir`, a link to it): the pin holds for every way of naming that folder."""
        configured = self.settings.model
        if str(source) == str(configured):
            return True
        if is_registry_uri(source) or is_registry_uri(configured):
            return False
        try:
            return Path(source).resolve() == Path(configured).resolve()
        except (OSError, RuntimeError, ValueError):  # a link loop, a NUL: not the configured one
            return False

    def _start(self, slot: ModelSlot, role: str = "live", largest_batch: bool = True) -> None:
        try:
            slot.start(
                self.settings, self.metrics, self.decoder, self.prediction_log, role, largest_batch
            )
        except WarmupError as exc:
            raise ModelChangeError(WARMUP_FAILED, str(exc)) from exc

    def _need_challenger(self) -> Challenger:
        if self.slots.challenger is None:
            raise ModelChangeError(NO_CHALLENGER, "no challenger model is attached")
        return self.slots.challenger

    def _make_live(self, slot: ModelSlot) -> None:
        old = self.slots.live
        self.slots.live = slot  # one reference: requests from now on take the new slot
        bundle = slot.predictor.bundle
        if old is not None:
            b = old.predictor.bundle
            self.metrics.model_info.remove(b.name, b.version, b.architecture)
        self.metrics.model_info.labels(bundle.name, bundle.version, bundle.architecture).set(1)
        self.metrics.backend_fallback.set(
            int(slot.predictor.backend_selection.fallback_from is not None)
        )
        self.metrics.model_loaded_at.set(slot.loaded_at)

    def _replace_live(self, slot: ModelSlot, action: str) -> dict[str, Any]:
        old = self.slots.live
        assert old is not None
        slot.loaded_at = time.time()
        self._make_live(slot)
        self.slots.previous = old
        self._retire(old)
        self.metrics.model_swaps.labels(action, "ok").inc()
        self._record(action, slot, replaced=old.describe())
        log.info(
            "%s: %s %s is live (was %s %s)",
            action,
            slot.predictor.bundle.name,
            slot.predictor.bundle.version,
            old.predictor.bundle.name,
            old.predictor.bundle.version,
        )
        return self.status()

    def _retire(self, slot: ModelSlot) -> None:
        """Stop a slot once the requests it took are answered (in a background thread)."""
        deadline = time.monotonic() + self.settings.request_timeout_s + 5

        def wait_then_stop() -> None:
            # A request that read the old `live` just before the switch counts itself in
            # `active` right after (no await in between); the grace covers that instant.
            time.sleep(RETIRE_GRACE_S)
            while slot.active > 0 and time.monotonic() < deadline:
                time.sleep(0.01)
            slot.stop()
            # A slot no longer kept for rollback is freed by now (reference counting: no
            # cycle holds a model); give its buffers back to the system.
            trim_freed_memory()

        self._retiring = [t for t in self._retiring if t.is_alive()]
        thread = threading.Thread(target=wait_then_stop, name="fisheye-retire", daemon=True)
        thread.start()
        self._retiring.append(thread)

    def _record(self, action: str, slot: ModelSlot | None, **extra: Any) -> None:
        entry: dict[str, Any] = {"action": action, "at": time.time(), **extra}
        if slot is not None:
            entry["model"] = {k: slot.describe()[k] for k in ("name", "version", "sha256")}
        self.history = [*self.history[-(HISTORY - 1) :], entry]
