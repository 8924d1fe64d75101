"""POST /v1/predict and /v1/predict/batch: species of one photo, or of several."""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from typing import Any

import numpy as np
from fastapi import APIRouter, Request, Response
from starlette.background import BackgroundTask

from fisheye.data.images import (
    FORMATS_TEXT,
    ImageDecodeError,
    ImageTooLargeError,
    UnsupportedFormatError,
)
from fisheye.inference.backend import InferenceOutput
from fisheye.inference.predictor import Predictor
from fisheye.monitoring.photo_archive import PhotoKeeper
from fisheye.serving.auth import require_api_key
from fisheye.serving.batcher import BatcherStoppedError, QueueFullError
from fisheye.serving.capacity import OverloadedError
from fisheye.serving.decoding import DecodeStoppedError
from fisheye.serving.deps import ready_state
from fisheye.serving.errors import APIError, api_error
from fisheye.serving.limits import MULTIPART_OVERHEAD, LimitedRoute, limits
from fisheye.serving.live_monitor import Observation
from fisheye.serving.metrics import START_KEY
from fisheye.serving.schemas import BatchItem, BatchOut, PredictionOut, error_responses
from fisheye.serving.slots import ModelSlot
from fisheye.serving.state import ServingState
from fisheye.serving.uploads import Upload, read_uploads

log = logging.getLogger(__name__)
router = APIRouter(prefix="/v1", tags=["predict"], route_class=LimitedRoute)
MULTIPART = ("multipart/form-data",)
RESPONSES = error_responses(401, 403, 413, 415, 422, 429, 503)


def _elapsed_ms(request: Request) -> float:
    start = request.scope.get(START_KEY) or time.perf_counter()
    return round((time.perf_counter() - start) * 1000.0, 3)


def model_ref(predictor: Predictor) -> dict[str, str]:
    """Which model answered (the `ModelRef` schema)."""
    return {
        "name": predictor.bundle.name,
        "version": predictor.bundle.version,
        "backend": predictor.backend_name,
    }


def _respond(
    answer: dict[str, Any],
    state: ServingState,
    slot: ModelSlot,
    seen: list[Observation],
    inputs: list[np.ndarray | None],
) -> Response:
    """The answer as JSON, with monitoring (and shadow work) run after it is sent.

    The dict already has the shape of the route's response model, so it is encoded
    directly instead of being validated again.
    """
    return Response(
        json.dumps(answer, separators=(",", ":")).encode(),
        media_type="application/json",
        background=BackgroundTask(_observe, state, slot, seen, answer["latency_ms"], inputs),
    )


async def _decode(
    request: Request, state: ServingState, slot: ModelSlot, upload: Upload
) -> np.ndarray:
    """Decode and preprocess one photo into a (1, C, H, W) model input (the decode pool)."""
    assert state.decoder is not None
    try:
        if not upload.data:
            raise APIError(422, "empty_file", "the file is empty; choose a photo (JPEG, PNG, WebP)")
        client = request.client.host if request.client is not None else ""
        try:
            x = await state.decoder.prepare(slot.predictor.preparer, upload.data, client)
        except DecodeStoppedError as exc:
            raise APIError(503, "shutting_down", str(exc), {"Retry-After": "1"}) from None
        except OverloadedError as exc:
            raise api_error(exc) from None
        except ImageTooLargeError as exc:
            raise APIError(413, "image_too_large", str(exc)) from None
        except UnsupportedFormatError:
            raise APIError(
                415,
                "unsupported_media_type",
                f"the file is not an image FishEye can read; send a {FORMATS_TEXT}",
            ) from None
        except ImageDecodeError as exc:
            raise APIError(422, "invalid_image", f"the image cannot be read: {exc}") from None
        return x[None]
    except APIError as exc:
        state.metrics.rejected.labels(exc.error).inc()
        raise


async def _infer(state: ServingState, slot: ModelSlot, inputs: np.ndarray) -> InferenceOutput:
    """Run a (n, C, H, W) batch through the slot's micro-batcher; 503 when full or stopped."""
    assert slot.batcher is not None
    try:
        return await slot.batcher.submit(inputs)
    except QueueFullError as exc:
        state.metrics.rejected.labels("queue_full").inc(inputs.shape[0])
        raise APIError(
            503, "overloaded", f"the server is busy ({exc}); retry shortly", {"Retry-After": "1"}
        ) from None
    except BatcherStoppedError as exc:
        raise APIError(503, "shutting_down", str(exc), {"Retry-After": "1"}) from None


def _answers(
    state: ServingState, slot: ModelSlot, out: InferenceOutput, photos: list[bytes]
) -> tuple[list[dict[str, Any]], list[Observation]]:
    """The JSON fields of each photo's prediction, and what monitoring records of them."""
    fields, seen = [], []
    # The Predictor owns the probabilities -> top-k logic, so the CLI and the API agree.
    for i, pred in enumerate(slot.predictor.predictions(out)):
        state.metrics.predictions.labels(pred.label).inc()
        if pred.unsure:
            state.metrics.unsure_answers.inc()
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
                pred.unsure,
            )
        )
    return fields, seen


async def _observe(
    state: ServingState,
    slot: ModelSlot,
    seen: list[Observation],
    latency_ms: float,
    inputs: list[np.ndarray | None],
) -> None:
    """Hand answered photos to monitoring (window, OOD metric, prediction log, photo archive)
    and the shadow share to a shadow challenger; never raises.

    A coroutine, so the background task runs on the event loop right after the response is
    sent (a plain function would be sent to the thread pool and back).
    """
    if not seen:
        return
    try:
        if slot.live_monitor is not None:
            kept = _offer_photos(state.photo_keeper, seen)
            slot.live_monitor.observe(seen, latency_ms, kept)
        challenger = state.slots.challenger
        if challenger is not None and slot is state.slots.live and state.decoder is not None:
            challenger.shadow(state.decoder, slot, seen, inputs)
    except Exception:  # monitoring must never fail a prediction
        log.exception("monitoring failed to record %d prediction(s)", len(seen))


def _offer_photos(keeper: PhotoKeeper | None, seen: list[Observation]) -> set[str]:
    """Offer the answered photos to the photo keeper; the ids of those it keeps now."""
    if keeper is None:
        return set()
    return {
        it.id
        for it in seen
        if it.data is not None
        and keeper.offer(it.id, it.data, in_distribution=it.in_distribution, unsure=it.unsure)
    }


def _multipart_body(field_name: str, many: bool) -> dict[str, Any]:
    """The OpenAPI request body of a photo upload (the body is parsed by `read_uploads`)."""
    photo = {"type": "string", "format": "binary"}
    schema = {"type": "array", "items": photo} if many else photo
    return {
        "requestBody": {
            "required": True,
            "content": {
                "multipart/form-data": {
                    "schema": {
                        "type": "object",
                        "required": [field_name],
                        "properties": {field_name: schema},
                    }
                }
            },
        }
    }


@router.post(
    "/predict",
    response_model=PredictionOut,
    responses=RESPONSES,
    summary="Predict the species in one photo",
    openapi_extra=_multipart_body("file", many=False),
)
@limits(body_bytes=lambda s: s.max_upload_bytes + MULTIPART_OVERHEAD, content_types=MULTIPART)
async def predict(request: Request) -> Response:
    """Classify one photo (multipart field `file`: JPEG, PNG, WebP, BMP or TIFF)."""
    # The prediction routes check readiness themselves: FastAPI's dependency resolution
    # costs more than the check on the busiest path.
    state = ready_state(request)
    require_api_key(request)
    s = state.settings
    assert state.uploads is not None
    with state.slots.answering() as slot:
        async with read_uploads(
            request,
            "file",
            state.uploads,
            max_files=1,
            max_file_bytes=s.max_upload_bytes,
            max_fields=s.max_form_fields,
            single=True,
        ) as (upload,):
            inputs = await _decode(request, state, slot, upload)
            out = await _infer(state, slot, inputs)
            (fields,), seen = _answers(state, slot, out, [upload.data])
    answer = {**fields, "model": model_ref(slot.predictor), "latency_ms": _elapsed_ms(request)}
    return _respond(answer, state, slot, seen, [inputs])


@router.post(
    "/predict/batch",
    response_model=BatchOut,
    responses=RESPONSES,
    summary="Predict the species in several photos",
    openapi_extra=_multipart_body("files", many=True),
)
@limits(body_bytes=lambda s: s.max_request_bytes, content_types=MULTIPART)
async def predict_batch(request: Request) -> Response:
    """Classify several photos (multipart field `files`, up to FISHEYE_MAX_FILES, default 32).

    A file that cannot be used gets an inline error; the others are still answered.
    """
    state = ready_state(request)
    require_api_key(request)
    s = state.settings
    assert state.uploads is not None
    with state.slots.answering() as slot:
        async with read_uploads(
            request,
            "files",
            state.uploads,
            max_files=s.max_files,
            max_file_bytes=s.max_upload_bytes,
            max_fields=s.max_form_fields,
        ) as uploads:
            return await _answer_batch(request, state, slot, uploads)


async def _answer_batch(
    request: Request, state: ServingState, slot: ModelSlot, uploads: list[Upload]
) -> Response:
    predictor = slot.predictor
    prepared = await asyncio.gather(
        *(_decode(request, state, slot, upload) for upload in uploads),
        return_exceptions=True,
    )
    items: list[dict[str, Any]] = []
    good: list[tuple[int, np.ndarray]] = []
    for i, (upload, result) in enumerate(zip(uploads, prepared, strict=True)):
        item: dict[str, Any] = {"index": i, "filename": upload.filename}
        if isinstance(result, APIError):
            item.update(error=result.error, detail=result.detail, status=result.status)
        elif isinstance(result, BaseException):
            raise result
        else:
            good.append((i, result))
        items.append(item)
    seen: list[Observation] = []
    if good:
        out = await _infer(state, slot, np.concatenate([x for _, x in good]))
        fields, seen = _answers(state, slot, out, [uploads[i].data for i, _ in good])
        for (i, _), answer in zip(good, fields, strict=True):
            # `status` of a batch item is the file's HTTP status; the verdict is `answer`.
            verdict = answer.pop("status")
            items[i].update(answer, answer=verdict)
    answer = {
        "model": model_ref(predictor),
        "latency_ms": _elapsed_ms(request),
        "count": len(items),
        "results": [BatchItem(**it).model_dump() for it in items],
    }
    return _respond(answer, state, slot, seen, [x for _, x in good])
