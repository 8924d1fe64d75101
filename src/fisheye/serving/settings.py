"""Server settings: every knob is a `FISHEYE_*` environment variable."""

from __future__ import annotations

import os
from dataclasses import fields
from pathlib import Path
from typing import Annotated

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from fisheye.bundle import default_bundle_dir
from fisheye.data.images import DEFAULT_MAX_DECODE_BYTES, DEFAULT_MAX_PIXELS
from fisheye.inference.backends import AUTO, BackendChoice
from fisheye.inference.options import PredictionOptions, RuntimeOptions
from fisheye.monitoring.monitor import MonitorOptions
from fisheye.monitoring.photo_archive import KeepOptions
from fisheye.serving.log_settings import MB, PredictionLogSettings, default_prediction_db
from fisheye.tracking.model_registry import is_registry_uri

GB = 1024 * MB


def _cores() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


class ServeSettings(BaseSettings, PredictionLogSettings):
    """Settings for `fisheye serve`; e.g. FISHEYE_MAX_BATCH_SIZE=32 sets max_batch_size.
    The prediction log's and the photo archive's come from PredictionLogSettings."""

    model_config = SettingsConfigDict(env_prefix="FISHEYE_", extra="ignore")

    model: Path | str = Field(
        default_factory=default_bundle_dir,
        validate_default=True,
        description="Model bundle folder, or a registry URI models:/NAME@ALIAS or "
        "models:/NAME/VERSION (FISHEYE_MODEL); `fisheye serve` resolves a URI through MLflow "
        "($MLFLOW_TRACKING_URI, else runs/mlflow.db) to a verified bundle pinned to its "
        "registered hash.",
    )
    model_sha256: str | None = Field(
        None,
        description="Pin the bundle: the sha256 its bundle.json must have (the hash in its "
        "bundle.json.sha256); any other bundle is refused.",
    )
    host: str = Field("127.0.0.1", description="Interface to listen on.")
    port: int = Field(8000, ge=0, le=65535, description="TCP port to listen on.")
    max_upload_mb: float = Field(10.0, gt=0, description="Largest accepted photo, in MiB.")
    max_files: int = Field(32, ge=1, description="Most photos in one batch request.")
    max_batch_size: int = Field(16, ge=1, description="Most photos in one model call.")
    max_batch_wait_ms: float = Field(
        2.0, ge=0, description="How long the batcher waits for more photos to fill a batch."
    )
    max_queue: int = Field(
        256, ge=1, description="Most photos waiting for the model; beyond it requests get 503."
    )
    model_workers: int = Field(
        default_factory=_cores,
        ge=1,
        description="Threads that run model calls at the same time (default: the CPU cores). "
        "A batch runs on FISHEYE_THREADS / model_workers intra-op threads (at least 1); a lone "
        "photo on FISHEYE_THREADS.",
    )
    threads: int = Field(
        2, ge=1, description="Intra-op threads for the model (PyTorch or ONNX Runtime)."
    )
    backend: BackendChoice = Field(
        BackendChoice(AUTO),
        description="Model backend; auto: the fastest exported one within 0.5 points of fp32.",
    )
    top_k: int = Field(5, ge=1, description="Classes listed in each answer.")
    abstain_below: float | None = Field(
        None,
        ge=0,
        le=1,
        description='Answer "not sure" (label null) below this confidence; unset: the '
        "bundle's abstention threshold (bundle.json `abstention`); 0: always answer.",
    )
    max_pixels: int = Field(
        DEFAULT_MAX_PIXELS, ge=1, description="Largest decoded photo (decompression-bomb guard)."
    )
    max_decode_mb: float = Field(
        DEFAULT_MAX_DECODE_BYTES / MB,
        gt=0,
        description="Memory one photo's decode may use, in MiB; larger photos are decoded "
        "smaller (JPEG) or shrunk before conversion, or refused with 413.",
    )
    decode_workers: int = Field(
        default_factory=_cores,
        ge=1,
        description="Photos decoded at the same time (default: the CPU cores); with "
        "max_decode_mb this bounds decoding's memory.",
    )
    max_decode_queue: int = Field(
        256, ge=0, description="Photos that may wait for a decode slot; beyond it, 503."
    )
    max_decodes_per_client: int | None = Field(
        None,
        ge=1,
        description="Decode slots one client address may hold at once (default: all but "
        "one of FISHEYE_DECODE_WORKERS, at least 1); its other photos wait their turn.",
    )
    max_decode_cpu_s: float = Field(
        5.0,
        gt=0,
        description="CPU seconds one photo's decode may take; beyond it the decode is ended "
        "and the photo refused with 413.",
    )
    decode_processes: bool = Field(
        True,
        description="Decode photos in worker processes (limits on CPU time and memory; a "
        "decode whose request goes away is ended). false: in threads of the server.",
    )
    max_upload_memory_mb: float = Field(
        512.0,
        gt=0,
        description="Uploaded photo bytes held in memory by all requests together, in MiB; "
        "beyond it, 503 with Retry-After.",
    )
    max_concurrent_requests: int = Field(
        256, ge=1, description="Requests handled at once; beyond it, 503 with Retry-After."
    )
    request_timeout_s: float = Field(
        30.0, gt=0, description="A request not answered in this time gets 408 (slow clients)."
    )
    keep_alive_s: float = Field(5.0, gt=0, description="Idle keep-alive connections close after.")
    max_header_bytes: int = Field(
        16 * 1024, ge=1024, description="Largest total size of a request's headers (431 above)."
    )
    max_unread_body_bytes: int = Field(
        64 * 1024,
        ge=0,
        description="Body bytes the server still reads after answering a request whose body "
        "the route did not read (e.g. a 404), to keep the connection; a longer body, or one "
        "not all there within request_timeout_s of the headers, closes the connection.",
    )
    max_form_fields: int = Field(
        16,
        ge=0,
        description="Multipart parts besides the photos in one request (413 above); with their "
        "headers and values within 64 KiB.",
    )
    summary_cache_s: float = Field(
        1.0,
        ge=0,
        description="How long a /v1/monitoring/summary answer is reused for the same window "
        "(identical requests at the same time share one computation whatever this is).",
    )
    cors_origins: list[str] = Field(
        default_factory=list,
        description="Origins allowed to call the API from a browser (CORS); none by default. "
        "As JSON: FISHEYE_CORS_ORIGINS='[\"https://quality.example.com\"]'.",
    )
    api_docs: bool = Field(
        True, description="Serve the interactive API docs at /docs (offline, no CDN)."
    )
    log_level: str = Field("info", description="uvicorn / logging level.")
    access_log: bool = Field(
        False,
        description="Log one line per request (the Prometheus metrics and the prediction log "
        "record requests already; the line costs about a sixth of the throughput).",
    )
    spin_wait: bool = Field(
        True,
        description="Run single photos in an ONNX Runtime session whose threads spin during "
        "the call (about 1 ms less latency); batches always use sleeping threads.",
    )
    memory_arena: bool = Field(
        True,
        description="Let ONNX Runtime keep freed buffers for the next call (an arena per "
        "session): faster, but a process holds its peak memory; false returns it.",
    )
    # Access control (docs/serving.md#access-control).
    admin_token: SecretStr | None = Field(
        None,
        description="Bearer token of the admin endpoints (/v1/admin/*: hot swap, challenger, "
        "promote, rollback); unset, they are disabled (403), never open.",
    )
    feedback_token: SecretStr | None = Field(
        None, description="Bearer token POST /v1/feedback requires (unset: feedback is open)."
    )
    api_keys: Annotated[list[SecretStr], NoDecode] = Field(
        default_factory=list,
        description="Comma-separated API keys; when set, the prediction routes require one "
        "(`Authorization: Bearer KEY` or `X-API-Key: KEY`).",
    )
    rate_limit_per_s: float = Field(
        0.0,
        ge=0,
        description="Requests per second each client (the credential it presents when that "
        "verifies, else its IP address) may make to /v1 on average; 0 turns the limit off. "
        "Beyond it: 429 with Retry-After.",
    )
    rate_limit_burst: int = Field(
        20, ge=1, description="Requests a client may make at once before the rate limit applies."
    )
    rate_limit_clients: int = Field(
        10_000, ge=1, description="Clients the rate limiter tracks (least recent dropped first)."
    )
    auth_failures_per_minute: float = Field(
        10.0,
        ge=0,
        description="Failed authentications (401/403 on /v1) an IP address may have per minute "
        "on average, after a burst of auth_failure_burst; beyond them its requests with a "
        "token or key that does not verify get 429 with Retry-After. 0 turns this off.",
    )
    auth_failure_burst: int = Field(
        20, ge=1, description="Failed authentications an IP address may have at once."
    )
    # Hot swap and challenger models (docs/serving.md#changing-the-model).
    shadow_max_pending: int = Field(
        8,
        ge=1,
        description="Shadow photos waiting for the challenger at once; more are skipped (and "
        "counted), so the challenger never holds back the live model.",
    )
    # Monitoring (docs/monitoring.md).
    monitoring: bool = Field(
        True, description="OOD scores, the drift window and the prediction log (false: all off)."
    )
    ood_false_alarm_rate: float | None = Field(
        None,
        gt=0,
        lt=1,
        description="Re-calibrate the OOD threshold to this false-alarm rate on the bundle's "
        "val scores (default: the rate the bundle was fitted with, 5%).",
    )
    drift_window: int = Field(200, ge=2, description="Photos (features only) in the drift window.")
    drift_every_requests: int = Field(
        200, ge=1, description="Run the background drift test after this many new photos..."
    )
    drift_interval_s: float = Field(60.0, gt=0, description="...or after this many seconds.")
    drift_min_interval_s: float = Field(
        10.0,
        ge=0,
        description="...but at most once per this many seconds, however busy (CPU cost cap).",
    )
    drift_min_samples: int = Field(
        30, ge=2, description="Photos the window needs before the first drift test."
    )
    drift_permutations: int = Field(
        1000, ge=100, description="Permutations of the MMD test (p-value resolution)."
    )
    drift_false_alarms_per_10k: float = Field(
        0.2,
        gt=0,
        description="Expected false drift alarms per 10,000 photos of a healthy stream: each "
        "test spends its share (the photos it adds) of this error budget (docs/monitoring.md).",
    )
    fleet_features_per_s: float = Field(
        20.0,
        ge=0,
        description="With a PostgreSQL log: photos a second (at most) whose features this "
        "replica writes for the fleet's drift test, run by one elected replica "
        "(docs/monitoring.md#fleet-drift). 0: no fleet drift test.",
    )
    fleet_feature_rows: int = Field(
        10_000,
        ge=1,
        description="With a PostgreSQL log: sampled feature rows the store keeps for the "
        "fleet's drift test (the oldest are deleted).",
    )

    @field_validator("model", mode="before")
    @classmethod
    def _folder_or_registry_uri(cls, value: object) -> Path | str:
        """A registry URI stays a string (a Path would fold its `//`); anything else a Path."""
        return str(value) if is_registry_uri(value) else Path(str(value))

    @field_validator("api_keys", mode="before")
    @classmethod
    def _comma_separated(cls, value: object) -> object:
        if isinstance(value, str):
            return [key.strip() for key in value.split(",") if key.strip()]
        return value

    @model_validator(mode="after")
    def _check_limits(self) -> ServeSettings:
        if self.max_queue < self.max_files:
            raise ValueError(
                f"max_queue ({self.max_queue}) must be at least max_files ({self.max_files}), "
                "or a full batch request could never be accepted"
            )
        if self.archive is not None and not (self.monitoring and self.prediction_log):
            raise ValueError(
                "FISHEYE_ARCHIVE keeps photos named by the prediction log: it needs "
                "FISHEYE_MONITORING=true and FISHEYE_PREDICTION_LOG=true"
            )
        if self.max_upload_memory_bytes < self.max_upload_bytes:
            raise ValueError(
                f"max_upload_memory_mb ({self.max_upload_memory_mb:g}) must be at least "
                f"max_upload_mb ({self.max_upload_mb:g}), or no photo could ever be accepted"
            )
        return self

    @property
    def batch_threads(self) -> int:
        """Intra-op threads of each batch: the threads shared among the model workers."""
        return max(1, self.threads // self.model_workers)

    def runtime_options(self) -> RuntimeOptions:
        """How backends run here: the RuntimeOptions fields, read from the same names (a field
        with no setting of its name keeps its default)."""
        names = [f.name for f in fields(RuntimeOptions) if hasattr(self, f.name)]
        return RuntimeOptions(**{name: getattr(self, name) for name in names})

    def prediction_options(self) -> PredictionOptions:
        """What a Predictor accepts and answers: the PredictionOptions fields, same names."""
        return PredictionOptions(
            **{f.name: getattr(self, f.name) for f in fields(PredictionOptions)}
        )

    def monitor_options(self) -> MonitorOptions | None:
        """How the drift reference is used, or None when monitoring is off."""
        if not self.monitoring:
            return None
        return MonitorOptions(self.ood_false_alarm_rate, self.drift_permutations)

    def keep_options(self) -> KeepOptions | None:
        """Where and which photos the server keeps, or None when it keeps none. The deprecated
        FISHEYE_STORE_IMAGES keeps every photo in FISHEYE_IMAGE_DIR (unless FISHEYE_ARCHIVE
        is set: then it is ignored)."""
        if not (self.monitoring and self.prediction_log):
            return None
        location, sample_rate = self.archive, self.archive_sample_rate
        if location is None and self.store_images:
            db = self.prediction_db
            # Beside the SQLite file; with PostgreSQL, in this replica's state folder.
            beside = Path(f"{db}.images") if isinstance(db, Path) else None
            location = str(self.image_dir or beside or default_prediction_db().with_name("images"))
            sample_rate = 1.0
        if location is None:
            return None
        return KeepOptions(
            location=location,
            sample_rate=sample_rate,
            max_bytes=int(self.archive_max_gb * GB),
            max_age_days=self.archive_max_age_days,
            recent_bytes=int(self.archive_recent_mb * MB),
            feedback_window_s=self.archive_feedback_window_s,
        )

    @property
    def max_decode_bytes(self) -> int:
        """The per-photo decode memory budget in bytes."""
        return int(self.max_decode_mb * MB)

    @property
    def max_upload_memory_bytes(self) -> int:
        """The shared in-memory upload budget in bytes."""
        return int(self.max_upload_memory_mb * MB)

    @property
    def max_upload_bytes(self) -> int:
        """The per-photo size limit in bytes."""
        return int(self.max_upload_mb * MB)

    @property
    def max_request_bytes(self) -> int:
        """The whole-body limit of a batch request: every photo at the limit, plus headers."""
        return self.max_upload_bytes * self.max_files + MB
