"""POST /v1/predict and /v1/predict/batch: species of one photo, or of several."""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from typing import Annotated, Any

import numpy as np
from fastapi import APIRouter, File, Request, UploadFile
from PIL import UnidentifiedImageError
from starlette.concurrency import run_in_threadpool

from fisheye.data.images import ImageDecodeError, ImageTooLargeError
from fisheye.inference.backend import InferenceOutput
from fisheye.inference.predictor import Predictor
from fisheye.serving.batcher import BatcherStoppedError, QueueFullError
from fisheye.serving.deps import ReadyState
from fisheye.serving.errors import APIError
from fisheye.serving.limits import MULTIPART_OVERHEAD, LimitedRoute, limits
from fisheye.serving.live_monitor import Observation
from fisheye.serving.metrics import START_KEY
from fisheye.serving.schemas import BatchItem, BatchOut, ModelRef, PredictionOut, error_responses
from fisheye.serving.settings import MB, ServeSettings
from fisheye.serving.state import ServingState

log = logging.getLogger(__name__)
router = APIRouter(prefix="/v1", tags=["predict"], route_class=LimitedRoute)
MULTIPART = ("multipart/form-data",)
RESPONSES = error_responses(413, 415, 422, 503)


def _elapsed_ms(request: Request) -> float:
    start = request.scope.get(START_KEY) or time.perf_counter()
    return round((time.perf_counter() - start) * 1000.0, 3)


def model_ref(predictor: Predictor) -> ModelRef:
    """Which model answered."""
    return ModelRef(
        name=predictor.bundle.name,
        version=predictor.bundle.version,
        backend=predictor.backend_name,
    )


async def _read_upload(upload: UploadFile, settings: ServeSettings) -> bytes:
    """The upload's bytes, refusing files over the size limit before reading them."""
    limit = settings.max_upload_bytes
    if upload.size is not None and upload.size > limit:
        raise APIError(
            413,
            "file_too_large",
            f"{upload.filename or 'the file'} is {upload.size / MB:.1f} MiB; "
            f"the limit is {settings.max_upload_mb:g} MiB",
        )
    data = await upload.read(limit + 1)
    if len(data) > limit:
        raise APIError(
            413, "file_too_large", f"the file is over the {settings.max_upload_mb:g} MiB limit"
        )
    return data


def _prepare(predictor: Predictor, data: bytes) -> np.ndarray:
    """Decode and preprocess one photo into a (1, C, H, W) model input (runs in a thread)."""
    if not data:
        raise APIError(422, "empty_file", "the file is empty; choose a photo (JPEG, PNG, WebP)")
    try:
        return predictor.prepare(data)[None]
    except ImageTooLargeError as exc:
        raise APIError(413, "image_too_large", str(exc)) from None
    except ImageDecodeError as exc:
        if isinstance(exc.__cause__, UnidentifiedImageError):
            raise APIError(
                415,
                "unsupported_media_type",
                "the file is not an image FishEye can read; send a JPEG, PNG, WebP, BMP or TIFF",
            ) from None
        raise APIError(422, "invalid_image", f"the image cannot be read: {exc}") from None


async def _infer(state: ServingState, inputs: np.ndarray) -> InferenceOutput:
    """Run a (n, C, H, W) batch through the micro-batcher; 503 when it is full or stopped."""
    assert state.batcher is not None
    try:
        return await state.batcher.submit(inputs)
    except QueueFullError as exc:
        state.metrics.rejected.labels("queue_full").inc(inputs.shape[0])
        raise APIError(
            503, "overloaded", f"the server is busy ({exc}); retry shortly", {"Retry-After": "1"}
        ) from None
    except BatcherStoppedError as exc:
        raise APIError(503, "shutting_down", str(exc), {"Retry-After": "1"}) from None


def _answers(
    state: ServingState, out: InferenceOutput, photos: list[bytes]
) -> tuple[list[dict[str, Any]], list[Observation]]:
    """The JSON fields of each photo's prediction, and what monitoring records of them."""
    assert state.predictor is not None
    fields, seen = [], []
    # The Predictor owns the probabilities -> top-k logic, so the CLI and the API agree.
    for i, pred in enumerate(state.predictor.predictions(out)):
        state.metrics.predictions.labels(pred.label).inc()
        answer = {"id": str(uuid.uuid4()), **pred.to_dict()}
        fields.append(answer)
        seen.append(
            Observation(
                answer["id"],
                pred.label,
                pred.confidence,
                pred.ood_score,
                pred.in_distribution,
                out.features[i],
                photos[i],
            )
        )
    return fields, seen


def _observe(state: ServingState, seen: list[Observation], latency_ms: float) -> None:
    """Hand answered photos to monitoring (window, OOD metric, prediction log); never raises."""
    if state.monitoring is None or not seen:
        return
    try:
        state.monitoring.observe(seen, latency_ms)
    except Exception:  # monitoring must never fail a prediction
        log.exception("monitoring failed to record %d prediction(s)", len(seen))


@router.post(
    "/predict",
    response_model=PredictionOut,
    responses=RESPONSES,
    summary="Predict the species in one photo",
)
@limits(body_bytes=lambda s: s.max_upload_bytes + MULTIPART_OVERHEAD, content_types=MULTIPART)
async def predict(
    request: Request,
    state: ReadyState,
    file: Annotated[UploadFile, File(description="A photo: JPEG, PNG, WebP, BMP or TIFF.")],
) -> dict[str, Any]:
    """Classify one photo (multipart field `file`)."""
    data = await _read_upload(file, state.settings)
    assert state.predictor is not None
    try:
        inputs = await run_in_threadpool(_prepare, state.predictor, data)
    except APIError as exc:
        state.metrics.rejected.labels(exc.error).inc()
        raise
    out = await _infer(state, inputs)
    (fields,), seen = _answers(state, out, [data])
    answer = {**fields, "model": model_ref(state.predictor), "latency_ms": _elapsed_ms(request)}
    _observe(state, seen, answer["latency_ms"])
    return answer


@router.post(
    "/predict/batch",
    response_model=BatchOut,
    responses=RESPONSES,
    summary="Predict the species in several photos",
)
@limits(body_bytes=lambda s: s.max_request_bytes, content_types=MULTIPART)
async def predict_batch(
    request: Request,
    state: ReadyState,
    files: Annotated[
        list[UploadFile],
        File(description="Up to FISHEYE_MAX_FILES (default 32) photos, in the order to answer."),
    ],
) -> dict[str, Any]:
    """Classify several photos (multipart field `files`); a bad file gets an inline error."""
    if len(files) > state.settings.max_files:
        raise APIError(
            413, "too_many_files", f"{len(files)} files; the limit is {state.settings.max_files}"
        )
    predictor = state.predictor
    assert predictor is not None
    raw: dict[int, bytes] = {}

    async def prepare(index: int, upload: UploadFile) -> np.ndarray:
        data = await _read_upload(upload, state.settings)
        raw[index] = data
        return await run_in_threadpool(_prepare, predictor, data)

    prepared = await asyncio.gather(
        *(prepare(i, f) for i, f in enumerate(files)), return_exceptions=True
    )
    items: list[dict[str, Any]] = []
    good: list[tuple[int, np.ndarray]] = []
    for i, (upload, result) in enumerate(zip(files, prepared, strict=True)):
        item: dict[str, Any] = {"index": i, "filename": upload.filename}
        if isinstance(result, APIError):
            state.metrics.rejected.labels(result.error).inc()
            item.update(error=result.error, detail=result.detail, status=result.status)
        elif isinstance(result, BaseException):
            raise result
        else:
            good.append((i, result))
        items.append(item)
    seen: list[Observation] = []
    if good:
        out = await _infer(state, np.concatenate([x for _, x in good]))
        fields, seen = _answers(state, out, [raw[i] for i, _ in good])
        for (i, _), answer in zip(good, fields, strict=True):
            items[i].update(answer)
    latency_ms = _elapsed_ms(request)
    _observe(state, seen, latency_ms)
    return {
        "model": model_ref(predictor),
        "latency_ms": latency_ms,
        "count": len(items),
        "results": [BatchItem(**it) for it in items],
    }
