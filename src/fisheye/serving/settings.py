"""Server settings: every knob is a `FISHEYE_*` environment variable."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from fisheye.bundle import default_bundle_dir
from fisheye.data.images import DEFAULT_MAX_PIXELS

MB = 1024 * 1024


class ServeSettings(BaseSettings):
    """Settings for `fisheye serve`; e.g. FISHEYE_MAX_BATCH_SIZE=32 sets max_batch_size."""

    model_config = SettingsConfigDict(env_prefix="FISHEYE_", extra="ignore")

    model: Path = Field(
        default_factory=default_bundle_dir, description="Model bundle folder (FISHEYE_MODEL)."
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
    threads: int = Field(2, ge=1, description="PyTorch intra-op threads for the model.")
    top_k: int = Field(5, ge=1, description="Classes listed in each answer.")
    max_pixels: int = Field(
        DEFAULT_MAX_PIXELS, ge=1, description="Largest decoded photo (decompression-bomb guard)."
    )
    log_level: str = Field("info", description="uvicorn / logging level.")

    @model_validator(mode="after")
    def _check_limits(self) -> ServeSettings:
        if self.max_queue < self.max_files:
            raise ValueError(
                f"max_queue ({self.max_queue}) must be at least max_files ({self.max_files}), "
                "or a full batch request could never be accepted"
            )
        return self

    @property
    def max_upload_bytes(self) -> int:
        """The per-photo size limit in bytes."""
        return int(self.max_upload_mb * MB)

    @property
    def max_request_bytes(self) -> int:
        """The whole-body limit of a batch request: every photo at the limit, plus headers."""
        return self.max_upload_bytes * self.max_files + MB
