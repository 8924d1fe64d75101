"""Prometheus metrics on a per-app registry (`ServingMiddleware` records the requests)."""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from starlette.types import Scope

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)
START_KEY = "fisheye.start"  # scope key: when the request arrived (perf_counter seconds)


class Metrics:
    """The service's metrics; one instance (and registry) per app so tests stay isolated."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "fisheye_http_requests",
            "HTTP requests by route template, method and status code.",
            ["route", "method", "status"],
            registry=r,
        )
        self.latency = Histogram(
            "fisheye_http_request_duration_seconds",
            "HTTP request latency by route template, method and status code.",
            ["route", "method", "status"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.in_flight = Gauge(
            "fisheye_http_requests_in_flight", "HTTP requests being handled now.", registry=r
        )
        self.predictions = Counter(
            "fisheye_predictions",
            "Predictions returned, by predicted class.",
            ["label"],
            registry=r,
        )
        self.batch_size = Histogram(
            "fisheye_batch_size", "Photos per model call.", buckets=BATCH_BUCKETS, registry=r
        )
        self.batch_seconds = Histogram(
            "fisheye_batch_inference_seconds",
            "Time of one model call on a batch.",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.queue_depth = Gauge("fisheye_queue_depth", "Photos waiting for the model.", registry=r)
        self.rejected = Counter(
            "fisheye_rejected_photos",
            "Photos refused before reaching the model, by reason.",
            ["reason"],
            registry=r,
        )
        self.model_info = Gauge(
            "fisheye_model_info",
            "The loaded model (value 1), with its name, version and architecture as labels.",
            ["name", "version", "architecture"],
            registry=r,
        )
        self.ready = Gauge(
            "fisheye_model_ready", "1 once the model is loaded and warmed, else 0.", registry=r
        )
        # Monitoring (fisheye.serving.live_monitor).
        self.drift_p_value = Gauge(
            "fisheye_drift_p_value",
            "p-value of the latest MMD drift test on the recent-photo window (NaN before one).",
            registry=r,
        )
        self.drift_p_value.set(float("nan"))
        self.drift_score = Gauge(
            "fisheye_drift_score", "MMD score of the latest drift test.", registry=r
        )
        self.drift_score.set(float("nan"))
        self.drift_tests = Counter("fisheye_drift_tests", "Background drift tests run.", registry=r)
        self.ood_predictions = Counter(
            "fisheye_ood_predictions",
            "Predictions on photos that do not look like the training photos.",
            registry=r,
        )
        self.feedback = Counter(
            "fisheye_feedback",
            "Feedback labels received, by whether the prediction was correct.",
            ["correct"],
            registry=r,
        )
        self.feedback_corrections = Counter(
            "fisheye_feedback_corrections",
            "Feedback that disagreed with the first feedback on a prediction (kept for review).",
            registry=r,
        )
        self.feedback_accuracy = Gauge(
            "fisheye_feedback_accuracy",
            "Accuracy of logged predictions that received feedback (NaN before any).",
            registry=r,
        )
        self.feedback_accuracy.set(float("nan"))
        self.log_lost_rows = Counter(
            "fisheye_prediction_log_lost_rows",
            "Prediction-log rows dropped (disk full, database locked or read-only, queue full).",
            registry=r,
        )

    def observe_batch(self, size: int, seconds: float) -> None:
        """Record one model call (called from the batcher thread)."""
        self.batch_size.observe(size)
        self.batch_seconds.observe(seconds)


def route_label(scope: Scope) -> str:
    """The route template that answered (never the raw path, which would explode labels)."""
    route: Any = scope.get("route")
    path = getattr(route, "path", None)
    if isinstance(path, str) and path:
        return path
    return "static" if scope.get("path", "").startswith("/static/") else "unmatched"
