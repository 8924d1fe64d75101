"""A challenger model beside the live one: shadow (sees a share of photos, answers none) or
canary (answers a share of requests).

Shadow work starts after the live answer has been sent and runs as its own task, so a client
never waits for the challenger; when `shadow_max_pending` photos are already waiting for it,
further photos are skipped (and counted) instead of queueing behind it.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections import Counter, deque
from typing import TYPE_CHECKING, Any

import numpy as np

from fisheye.monitoring.prediction_log import PredictionLog, ShadowRow
from fisheye.serving.batcher import BatcherStoppedError, QueueFullError
from fisheye.serving.capacity import OverloadedError
from fisheye.serving.decoding import DecodePool
from fisheye.serving.metrics import Metrics
from fisheye.serving.settings import ServeSettings

if TYPE_CHECKING:  # slots.py refers to this module
    from fisheye.serving.live_monitor import Observation
    from fisheye.serving.slots import ModelSlot

log = logging.getLogger(__name__)
MODES = ("shadow", "canary")
LATENCIES_KEPT = 2000


def _percentile(values: list[float], q: float) -> float | None:
    return None if not values else round(float(np.percentile(values, q)), 3)


class Challenger:
    """The attached challenger: its slot, mode and share, and what it has seen so far."""

    def __init__(
        self,
        slot: ModelSlot,
        mode: str,
        share: float,
        settings: ServeSettings,
        metrics: Metrics,
        prediction_log: PredictionLog | None,
    ) -> None:
        if mode not in MODES:
            raise ValueError(f"mode must be one of {', '.join(MODES)}, not {mode!r}")
        if not 0.0 <= share <= 1.0:
            raise ValueError(f"share must be between 0 and 1, not {share}")
        self.slot = slot
        self.mode = mode
        self.share = share
        self.settings = settings
        self.metrics = metrics
        self.prediction_log = prediction_log
        self.attached_at = time.time()
        self.shadowed = self.agreed = self.skipped = self.errors = self.ood = 0
        self.canary_answers = 0
        self.disagreements: Counter[tuple[str, str]] = Counter()
        self.latencies_ms: deque[float] = deque(maxlen=LATENCIES_KEPT)
        self.pending = 0
        self._tasks: set[asyncio.Task] = set()
        bundle = slot.predictor.bundle
        self._labels = (bundle.name, bundle.version, mode)
        metrics.challenger_info.labels(*self._labels).set(share)

    def close(self) -> None:
        """Forget the challenger's info metric (shadow tasks still running finish)."""
        self.metrics.challenger_info.remove(*self._labels)

    def answered_canary(self, n: int) -> None:
        """Count canary answers (called by the prediction routes)."""
        self.canary_answers += n
        self.metrics.challenger_predictions.labels("canary", "n/a").inc(n)

    def shadow(
        self,
        decoder: DecodePool,
        live: ModelSlot,
        seen: list[Observation],
        inputs: list[np.ndarray | None],
    ) -> None:
        """Send the shadow share of answered photos to the challenger (returns at once)."""
        if self.mode != "shadow":
            return
        same_input = live.predictor.preprocessing == self.slot.predictor.preprocessing
        for observation, x in zip(seen, inputs, strict=True):
            if random.random() >= self.share:
                continue
            if self.pending >= self.settings.shadow_max_pending:
                self.skipped += 1
                self.metrics.challenger_skipped.inc()
                continue
            self.pending += 1
            task = asyncio.create_task(self._run(decoder, observation, x if same_input else None))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _run(self, decoder: DecodePool, live: Observation, x: np.ndarray | None) -> None:
        with self.slot.in_flight() as slot:
            try:
                if x is None:  # the challenger preprocesses differently: decode again
                    if live.data is None:
                        return
                    x = (await decoder.run(slot.predictor.prepare, live.data))[None]
                assert slot.batcher is not None
                start = time.perf_counter()
                out = await slot.batcher.submit(x)
                seconds = time.perf_counter() - start
                (pred,) = slot.predictor.predictions(out)
                self._record(live, pred, out, seconds)
            except (QueueFullError, BatcherStoppedError, OverloadedError):
                self.skipped += 1
                self.metrics.challenger_skipped.inc()
            except Exception:  # the challenger must never affect the live service
                self.errors += 1
                self.metrics.challenger_errors.inc()
                log.exception("the challenger failed on a shadow photo")
            finally:
                self.pending -= 1

    def _record(self, live: Observation, pred: Any, out: Any, seconds: float) -> None:
        agree = pred.label == live.label
        self.shadowed += 1
        self.agreed += agree
        self.latencies_ms.append(seconds * 1000.0)
        m = self.metrics
        m.challenger_predictions.labels("shadow", str(agree).lower()).inc()
        m.challenger_latency.observe(seconds)
        if not agree:
            self.disagreements[(live.label, pred.label)] += 1
            m.challenger_disagreements.labels(live.label, pred.label).inc()
        if pred.in_distribution is False:
            self.ood += 1
            m.challenger_ood.inc()
        monitoring = self.slot.live_monitor
        if monitoring is not None and monitoring.window is not None and out.features is not None:
            index = {c: i for i, c in enumerate(self.slot.predictor.classes)}
            monitoring.window.observe(
                out.features[:1],
                np.array([pred.in_distribution is not False]),
                np.array([index.get(pred.label, -1)]),
            )
        if self.prediction_log is not None:
            score = pred.ood_score
            self.prediction_log.record_shadow(
                ShadowRow(
                    id=live.id,
                    ts=time.time(),
                    model_version=self.slot.predictor.bundle.version,
                    label=pred.label,
                    confidence=pred.confidence,
                    ood_score=score if score is None or np.isfinite(score) else 1e308,
                    in_distribution=pred.in_distribution,
                    latency_ms=seconds * 1000.0,
                    live_label=live.label,
                    agree=agree,
                )
            )

    def describe(self) -> dict[str, Any]:
        """What the challenger is and how it compares, for the admin and monitoring endpoints."""
        latencies = list(self.latencies_ms)
        monitoring = self.slot.live_monitor
        return {
            "model": self.slot.describe(),
            "mode": self.mode,
            "share": self.share,
            "attached_at": self.attached_at,
            "shadow": {
                "photos": self.shadowed,
                "agreement": None if not self.shadowed else self.agreed / self.shadowed,
                "disagreements": [
                    {"live": a, "challenger": b, "count": n}
                    for (a, b), n in self.disagreements.most_common(50)
                ],
                "latency_ms": {
                    "p50": _percentile(latencies, 50),
                    "p95": _percentile(latencies, 95),
                    "p99": _percentile(latencies, 99),
                },
                "ood_rate": None if not self.shadowed else self.ood / self.shadowed,
                "skipped": self.skipped,
                "errors": self.errors,
                "pending": self.pending,
            },
            "canary": {"answers": self.canary_answers},
            "drift": None if monitoring is None else monitoring.drift_status(),
        }
