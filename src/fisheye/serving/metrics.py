"""Prometheus metrics on a per-app registry (`ServingMiddleware` records the requests)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from fisheye.serving.shared_results import SharedResults

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
        self.unsure_answers = Counter(
            "fisheye_unsure_answers",
            'Photos answered "not sure" (the confidence was under the abstention threshold).',
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
        self.backend_fallback = Gauge(
            "fisheye_backend_fallback",
            "1 when the live model runs a slower backend because the preferred (quantised) "
            "one failed its host check on this CPU, else 0.",
            registry=r,
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
            "Prediction-log rows dropped (disk full, database locked or read-only, queue or "
            "spool full).",
            registry=r,
        )
        self.log_degraded = Gauge(
            "fisheye_prediction_log_degraded",
            "1 while the prediction log's store cannot be reached (rows wait in the queue).",
            registry=r,
        )
        # The photo archive (fisheye.monitoring.photo_archive), when it is on.
        self.archive_photos = Counter(
            "fisheye_archive_photos",
            "Photos put in the photo archive, by reason (ood, unsure, sample, feedback).",
            ["reason"],
            registry=r,
        )
        self.archive_written_bytes = Counter(
            "fisheye_archive_written_bytes",
            "Bytes written to the photo archive (a photo it holds already adds none).",
            registry=r,
        )
        self.archive_errors = Counter(
            "fisheye_archive_errors",
            "Photos the archive could not keep, and its failures, by kind (write: the folder "
            "or bucket refused a photo; queue_full: photos came faster than it writes; "
            "feedback_lookup: the store could not be asked for feedback; prune; open: the "
            "archive could not be opened at start, so none is kept).",
            ["kind"],
            registry=r,
        )
        self.archive_pruned = Counter(
            "fisheye_archive_pruned_photos",
            "Photos deleted from the archive for its age or size bound.",
            registry=r,
        )
        self.archive_stored_bytes = Gauge(
            "fisheye_archive_stored_bytes",
            "Bytes in the photo archive after its latest prune (every replica's photos, when "
            "they share it).",
            registry=r,
        )

        # Access control and rate limiting (fisheye.serving.auth, .rate_limit).
        self.auth_failures = Counter(
            "fisheye_auth_failures",
            "Requests refused for their credentials, by scope (admin, feedback, predict) and "
            "reason (missing, wrong, disabled).",
            ["scope", "reason"],
            registry=r,
        )
        self.rate_limited = Counter(
            "fisheye_rate_limited_requests",
            "Requests refused with 429 by the per-client rate limit.",
            registry=r,
        )
        # Model changes and the challenger (fisheye.serving.state, .challenger).
        self.model_swaps = Counter(
            "fisheye_model_swaps",
            "Changes of the live model, by action (swap, reload, promote, rollback) and "
            "result (ok, failed).",
            ["action", "result"],
            registry=r,
        )
        self.model_loaded_at = Gauge(
            "fisheye_model_loaded_timestamp_seconds",
            "When the live model started answering (Unix time).",
            registry=r,
        )
        self.challenger_info = Gauge(
            "fisheye_challenger_info",
            "The attached challenger model (value: its share of traffic), by name, version "
            "and mode (shadow, canary).",
            ["name", "version", "mode"],
            registry=r,
        )
        self.challenger_predictions = Counter(
            "fisheye_challenger_predictions",
            "Photos the challenger answered, by mode and whether it agreed with the live "
            'model (shadow only; canary answers: agree="n/a").',
            ["mode", "agree"],
            registry=r,
        )
        self.challenger_disagreements = Counter(
            "fisheye_challenger_disagreements",
            "Shadow photos the two models labelled differently, by live and challenger label.",
            ["live", "challenger"],
            registry=r,
        )
        self.challenger_latency = Histogram(
            "fisheye_challenger_inference_seconds",
            "Time the challenger took on a shadow photo (decode excluded).",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.challenger_ood = Counter(
            "fisheye_challenger_ood_predictions",
            "Shadow photos the challenger's own OOD scorer flagged.",
            registry=r,
        )
        self.challenger_skipped = Counter(
            "fisheye_challenger_skipped",
            "Shadow photos not sent to the challenger because it was busy.",
            registry=r,
        )
        self.challenger_errors = Counter(
            "fisheye_challenger_errors",
            "Shadow photos the challenger failed on.",
            registry=r,
        )
        self.class_mix_p_value = Gauge(
            "fisheye_class_mix_p_value",
            "p-value of the latest chi-square test of the predicted-class mix against the "
            "training prior (NaN before one, or without a prior).",
            registry=r,
        )
        self.class_mix_p_value.set(float("nan"))
        self.drift_alarm = Gauge(
            "fisheye_drift_alarm",
            "1 when the latest drift test (features or class mix) raised an alarm at its "
            "level (the false-alarm budget spent on it), else 0.",
            registry=r,
        )
        self.challenger_drift_p_value = Gauge(
            "fisheye_challenger_drift_p_value",
            "p-value of the latest MMD drift test on the challenger's own features and "
            "reference (shadow photos; NaN before one).",
            registry=r,
        )
        self.challenger_drift_p_value.set(float("nan"))
        self.drift_alarms = Counter(
            "fisheye_drift_alarms",
            "Drift tests that raised an alarm, by test (mmd, class_mix).",
            ["test"],
            registry=r,
        )

        # The fleet's drift test (fisheye.serving.fleet_drift): the same on every replica.
        self.fleet_drift_score = Gauge(
            "fisheye_fleet_drift_score",
            "MMD score of the fleet's latest drift test (every replica's recent photos; NaN "
            "before one).",
            registry=r,
        )
        self.fleet_drift_p_value = Gauge(
            "fisheye_fleet_drift_p_value",
            "p-value of the fleet's latest MMD drift test (NaN before one).",
            registry=r,
        )
        self.fleet_drift_alarm = Gauge(
            "fisheye_fleet_drift_alarm",
            "1 when the fleet's latest drift test (features or class mix) raised an alarm at "
            "its level (the fleet's false-alarm budget), else 0.",
            registry=r,
        )
        self.fleet_class_mix_p_value = Gauge(
            "fisheye_fleet_class_mix_p_value",
            "p-value of the fleet's latest class-mix test (NaN before one, or without a prior).",
            registry=r,
        )
        self.fleet_estimated_accuracy = Gauge(
            "fisheye_fleet_estimated_accuracy",
            "Label-free accuracy estimate (mean calibrated confidence) of the photos of the "
            "fleet's latest drift test (NaN before one).",
            registry=r,
        )
        for gauge in (
            self.fleet_drift_score,
            self.fleet_drift_p_value,
            self.fleet_class_mix_p_value,
            self.fleet_estimated_accuracy,
        ):
            gauge.set(float("nan"))
        self.fleet_drift_leader = Gauge(
            "fisheye_fleet_drift_leader",
            "1 on the replica that runs the fleet's drift test now (holds the lease), else 0.",
            registry=r,
        )
        self.fleet_feature_rows = Counter(
            "fisheye_fleet_feature_rows",
            "Sampled feature rows this replica wrote to the store for the fleet's drift test.",
            registry=r,
        )

        # Scrapes at the same time share one rendering, in a thread: scrapers cost the
        # predictions at most one rendering at a time.
        self._scrapes: SharedResults[None, bytes] = SharedResults(
            lambda _: generate_latest(self.registry)
        )

    async def render(self) -> bytes:
        """The metrics in Prometheus' text format."""
        return await self._scrapes.get(None)

    def observe_batch(self, size: int, seconds: float) -> None:
        """Record one model call (called from the batcher thread)."""
        self.batch_size.observe(size)
        self.batch_seconds.observe(seconds)
