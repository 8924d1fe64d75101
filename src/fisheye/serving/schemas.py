"""Response models: they document the API in OpenAPI and check what the server returns."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field


class TopK(BaseModel):
    """One class and its probability."""

    label: str
    probability: float = Field(ge=0, le=1)


class ModelRef(BaseModel):
    """Which model answered."""

    name: str
    version: str
    backend: str = Field(description="What runs the model: torch, onnx or onnx-int8.")


class PredictionOut(BaseModel):
    """The answer for one photo."""

    id: str = Field(description="A uuid4 for this prediction, for logs and feedback.")
    label: str | None = Field(
        description="The species; null when the model is not sure (`status`: unsure)."
    )
    status: Literal["ok", "unsure"] = Field(
        description="unsure: the confidence is under the model's abstention threshold (chosen "
        "on real-world validation photos); the candidates are in `top_k`."
    )
    confidence: float = Field(ge=0, le=1, description="Probability of the most likely class.")
    top_k: list[TopK] = Field(description="The most likely classes, best first.")
    ood_score: float | None = Field(
        None,
        description="Out-of-distribution score (distance to the training photos' features); "
        "null when the model has no drift reference or monitoring is off.",
    )
    in_distribution: bool | None = Field(
        None,
        description="False when the photo does not look like the training photos: the "
        "prediction is then unreliable.",
    )
    model: ModelRef
    latency_ms: float = Field(description="Server time from request to answer, in ms.")


class BatchItem(BaseModel):
    """One file's result in a batch: a prediction, or why the file could not be used."""

    index: int = Field(description="Position of the file in the request, from 0.")
    filename: str | None = None
    id: str | None = None
    label: str | None = None
    answer: Literal["ok", "unsure"] | None = Field(
        None, description="As /v1/predict's `status`: unsure when the model is not sure."
    )
    confidence: float | None = None
    top_k: list[TopK] | None = None
    ood_score: float | None = None
    in_distribution: bool | None = None
    error: str | None = Field(None, description="Set when this file failed, e.g. invalid_image.")
    detail: str | None = None
    status: int = Field(200, description="The status this file would get from /v1/predict.")


class BatchOut(BaseModel):
    """The answer for a batch: one item per file, in request order."""

    model: ModelRef
    latency_ms: float
    count: int
    results: list[BatchItem]


class BackendCheckOut(BaseModel):
    """A quantised backend's host check: does it compute here what it did where measured?"""

    backend: str
    status: str = Field(description="same_cpu, passed, failed or unverifiable.")
    host: str = Field(description="This CPU: architecture, int8 instruction sets, runtime.")
    measured_on: str | None = Field(description="The CPU its recorded figures come from.")
    features_deviation: float | None = Field(
        description="Median relative distance of its features from fp32's on this CPU."
    )
    limit: float | None = Field(description="The most that deviation may be to pass.")
    detail: str
    seconds: float


class BackendSelectionOut(BaseModel):
    """Which backend serves, and why: `auto` checks a quantised backend on this CPU."""

    requested: str = Field(description="The configured backend (FISHEYE_BACKEND), e.g. auto.")
    served: str
    status: str = Field(
        description="fallback (the preferred backend failed its host check), same_cpu, "
        "passed, or not_checked."
    )
    fallback_from: str | None = Field(description="The backend auto preferred but refused.")
    host: str
    checks: list[BackendCheckOut]


class ModelOut(BaseModel):
    """The loaded model's description."""

    name: str
    version: str
    architecture: str
    backend: str = Field(description="What runs the model: torch, onnx or onnx-int8.")
    backend_selection: BackendSelectionOut
    sha256: str = Field(description="sha256 of the bundle's bundle.json; pins this bundle.")
    classes: list[str]
    metrics: dict[str, Any]
    preprocessing: dict[str, Any]
    created: str | None
    data: dict[str, Any]


class HealthOut(BaseModel):
    """Liveness / readiness answer."""

    status: str
    detail: str | None = None
    backend: str | None = Field(None, description="Once ready: the backend that serves.")
    backend_status: str | None = Field(
        None, description="Once ready: fallback, same_cpu, passed or not_checked (/v1/model)."
    )
    monitoring: str | None = Field(
        None,
        description="Once ready: the drift monitoring of the live model: ready, loading (its "
        "reference is prepared in the background; answers already carry OOD scores), "
        "no_reference or off.",
    )
    prediction_log: str | None = Field(
        None,
        description="Once ready: the prediction log: ok, degraded (its store cannot be "
        "reached; rows wait in the queue and predictions are answered as usual) or off.",
    )


OTHER_LABEL = "other"  # feedback label for a photo of none of the model's classes


class FeedbackIn(BaseModel):
    """The true species of a photo that was predicted earlier."""

    id: str = Field(min_length=1, max_length=100, description="The prediction's `id`.")
    label: str = Field(
        min_length=1,
        max_length=200,
        description=f"The true class, one of the model's classes, or {OTHER_LABEL!r}.",
    )


class FeedbackOut(BaseModel):
    """What the feedback was recorded against."""

    id: str
    label: str
    predicted: str
    correct: bool
    accuracy: float | None = Field(description="Accuracy over all feedback in the log.")
    feedback_count: int
    new: bool = Field(
        description="False when this repeats the label already recorded for the prediction."
    )


class ModelChangeIn(BaseModel):
    """The model to make live."""

    model: str = Field(
        min_length=1,
        max_length=4096,
        description="A bundle folder on the server, or a registry URI models:/NAME@ALIAS.",
    )


class ChallengerIn(ModelChangeIn):
    """The challenger to attach and how much traffic it gets."""

    mode: Literal["shadow", "canary"] = Field(
        "shadow",
        description="shadow: it sees `share` of the photos after they are answered, answering "
        "none; canary: it answers `share` of the requests.",
    )
    share: float = Field(0.1, ge=0, le=1, description="Share of photos or requests, 0 to 1.")


class ErrorBody(BaseModel):
    """The body of every error response."""

    error: str
    detail: str


# Error responses name ErrorBody's schema by reference, not as a `model`: FastAPI would
# build a validator for each (route, code) when the routes are created, which slowed the
# server's start by a third of its route set-up, for the API docs only. The app adds the
# schema to its OpenAPI document when that is built (`serving.app`), as FastAPI would.
ERROR_BODY_REF = {"$ref": "#/components/schemas/ErrorBody"}


def error_responses(*codes: int, **texts: str) -> dict[int | str, dict[str, Any]]:
    """OpenAPI `responses` for error codes: the shared wording, or `texts` by `e<code>=`."""
    return {
        code: {
            "description": texts.get(f"e{code}", ERROR_TEXTS[code]),
            "content": {"application/json": {"schema": ERROR_BODY_REF}},
        }
        for code in codes
    }


ERROR_TEXTS = {
    401: "Missing credentials (`Authorization: Bearer <token>`).",
    403: "Wrong credentials, or the endpoint is disabled.",
    429: "Over the client's rate limit; retry after `Retry-After` seconds.",
    409: "Conflicts with what is already recorded, or another change is in progress.",
    404: "Unknown prediction id, the prediction log is off, or nothing to act on.",
    413: "The body or the photo is too large (bytes or pixels).",
    415: "The file is not an image format FishEye reads.",
    422: "Missing field, empty file, or a corrupt or truncated image.",
    503: "The model is loading or the queue is full; retry after `Retry-After` seconds.",
}
