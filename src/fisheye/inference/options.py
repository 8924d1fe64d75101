"""The settings inference takes, as small frozen objects built once and passed whole.

`RuntimeOptions` say how a backend uses the CPU, `PredictionOptions` what a Predictor
accepts and answers. The server builds both from its `FISHEYE_*` settings (same names), the
CLI from its options; a layer that does not use a field passes the object on unchanged, so a
new setting is a field here and the line that reads it.
"""

from __future__ import annotations

from dataclasses import dataclass

from fisheye.data.images import DEFAULT_MAX_DECODE_BYTES, DEFAULT_MAX_PIXELS


@dataclass(frozen=True)
class RuntimeOptions:
    """How a backend runs on the CPU."""

    # Intra-op threads for a lone photo (None: the cores this process may run on).
    threads: int | None = None
    # Intra-op threads for a batch (None: `threads`).
    batch_threads: int | None = None
    # Lone photos run in an ONNX Runtime session whose threads spin during the call.
    spin_wait: bool = True
    # With spin_wait: that session is opened by `open_spinning_session` (the server calls it
    # once its first prediction is answered, so a cold start opens one session, not two);
    # until then lone photos run in the batch session.
    spinning_session_later: bool = False
    # ONNX Runtime keeps freed buffers in an arena for the next call (faster, more memory).
    memory_arena: bool = True


@dataclass(frozen=True)
class PredictionOptions:
    """What a Predictor accepts (decode limits) and answers (how many classes)."""

    top_k: int = 5
    # Answer "not sure" below this confidence (None: the bundle's threshold; 0: never).
    abstain_below: float | None = None
    max_pixels: int = DEFAULT_MAX_PIXELS
    max_decode_bytes: int = DEFAULT_MAX_DECODE_BYTES
