"""Prediction and model-description routes under /v1."""

import asyncio
import logging
import time
import uuid
from typing import Annotated, Any

import numpy as np
import torch
from fastapi import APIRouter, Depends, File, Request, UploadFile
from PIL import UnidentifiedImageError
from starlette.concurrency import run_in_threadpool

from fisheye.data.images import ImageDecodeError, ImageTooLargeError
from fisheye.inference.predictor import Predictor
from fisheye.monitoring.service import Observation, split_row
from fisheye.serving.batcher import BatcherStoppedError, QueueFullError
from fisheye.serving.errors import APIError, ErrorBody
from fisheye.serving.metrics import START_KEY
from fisheye.serving.schemas import BatchItem, BatchOut, ModelOut, ModelRef, PredictionOut
from fisheye.serving.settings import MB, ServeSettings
from fisheye.serving.state import ServingState, require_ready

log = logging.getLogger(__name__)
ReadyState = Annotated[ServingState, Depends(require_ready)]


ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorBody, "description": text}
    for code, text in {
        413: "The body or the photo is too large (bytes or pixels).",
        415: "The file is not an image format FishEye reads.",
        422: "Missing field, empty file, or a corrupt or truncated image.",
        503: "The model is loading or the queue is full; retry after `Retry-After` seconds.",
    }.items()
}


def _elapsed_ms(request: Request) -> float:
    start = request.scope.get(START_KEY) or time.perf_counter()
    return round((time.perf_counter() - start) * 1000.0, 3)


def _model_ref(predictor: Predictor) -> ModelRef:
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


def _prepare(predictor: Predictor, data: bytes) -> torch.Tensor:
    """Decode and preprocess one photo into a (1, C, H, W) model input (runs in a thread)."""
    if not data:
        raise APIError(422, "empty_file", "the file is empty; choose a photo (JPEG, PNG, WebP)")
    try:
        img = predictor.decode(data)
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
    return predictor.to_tensor(img).unsqueeze(0)


async def _infer(state: ServingState, inputs: torch.Tensor) -> np.ndarray:
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


def _prediction_fields(
    state: ServingState,
    row: np.ndarray,
    data: bytes | None = None,
    seen: list[Observation] | None = None,
) -> dict[str, Any]:
    assert state.predictor is not None
    probs, ood_score, features = split_row(row)
    # The Predictor owns the probabilities -> top-k logic, so the CLI and API agree.
    pred = state.predictor.prediction_from_probabilities(probs, ood_score=ood_score)
    state.metrics.predictions.labels(pred.label).inc()
    fields = {"id": str(uuid.uuid4()), **pred.to_dict()}
    if seen is not None:
        seen.append(
            Observation(
                fields["id"],
                pred.label,
                pred.confidence,
                pred.ood_score,
                pred.in_distribution,
                features,
                data,
            )
        )
    return fields


def _observe(state: ServingState, seen: list[Observation], latency_ms: float) -> None:
    """Hand answered photos to monitoring (window, OOD metric, prediction log); never raises."""
    if state.monitoring is None or not seen:
        return
    try:
        state.monitoring.observe(seen, latency_ms)
    except Exception:  # monitoring must never fail a prediction
        log.exception("monitoring failed to record %d prediction(s)", len(seen))


def build_router(settings: ServeSettings) -> APIRouter:
    """The /v1 routes, with body limits taken from `settings`."""
    router = APIRouter(prefix="/v1", tags=["predict"])

    @router.post(
        "/predict",
        response_model=PredictionOut,
        responses=ERROR_RESPONSES,
        summary="Predict the species in one photo",
    )
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
        probs = await _infer(state, inputs)
        seen: list[Observation] = []
        answer = {
            **_prediction_fields(state, probs[0], data, seen),
            "model": _model_ref(state.predictor),
            "latency_ms": _elapsed_ms(request),
        }
        _observe(state, seen, answer["latency_ms"])
        return answer

    @router.post(
        "/predict/batch",
        response_model=BatchOut,
        responses=ERROR_RESPONSES,
        summary="Predict the species in several photos",
    )
    async def predict_batch(
        request: Request,
        state: ReadyState,
        files: Annotated[
            list[UploadFile],
            File(description=f"Up to {settings.max_files} photos, in the order to answer."),
        ],
    ) -> dict[str, Any]:
        """Classify several photos (multipart field `files`); a bad file gets an inline error."""
        if len(files) > state.settings.max_files:
            raise APIError(
                413,
                "too_many_files",
                f"{len(files)} files; the limit is {state.settings.max_files}",
            )
        assert state.predictor is not None
        predictor = state.predictor

        raw: dict[int, bytes] = {}

        async def prepare(index: int, upload: UploadFile) -> torch.Tensor:
            data = await _read_upload(upload, state.settings)
            raw[index] = data
            return await run_in_threadpool(_prepare, predictor, data)

        prepared = await asyncio.gather(
            *(prepare(i, f) for i, f in enumerate(files)), return_exceptions=True
        )
        items: list[dict[str, Any]] = []
        good: list[tuple[int, torch.Tensor]] = []
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
            probs = await _infer(state, torch.cat([t for _, t in good]))
            for (i, _), p in zip(good, probs, strict=True):
                items[i].update(_prediction_fields(state, p, raw.get(i), seen))
        latency_ms = _elapsed_ms(request)
        _observe(state, seen, latency_ms)
        return {
            "model": _model_ref(predictor),
            "latency_ms": latency_ms,
            "count": len(items),
            "results": [BatchItem(**it) for it in items],
        }

    @router.get(
        "/model", response_model=ModelOut, tags=["model"], responses={503: ERROR_RESPONSES[503]}
    )
    async def model_info(state: ReadyState) -> dict[str, Any]:
        """Describe the loaded model: classes, version, metrics, preprocessing, created time."""
        assert state.predictor is not None
        bundle = state.predictor.bundle
        meta = bundle.meta
        return {
            "name": bundle.name,
            "version": bundle.version,
            "architecture": bundle.architecture,
            "backend": state.predictor.backend_name,
            "classes": list(state.predictor.classes),
            "metrics": meta.get("metrics", {}),
            "preprocessing": meta.get("preprocessing", {}),
            "created": meta.get("provenance", {}).get("created"),
            "data": meta.get("data", {}),
        }

    return router
