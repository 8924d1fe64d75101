"""Changing the served model: hot swap, rollback, shadow and canary challengers, and the
credentials every endpoint asks for (none, wrong and right)."""

from __future__ import annotations

import logging
import os
import shutil
import sqlite3
import time
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from fisheye.bundle import bundle_sha256
from fisheye.serving.app import create_app
from fisheye.serving.settings import ServeSettings
from tests.helpers.bundles import TINY_NAME, make_bundle
from tests.helpers.photos import encode, photo

TOKEN = "admin-secret-4f1c"
SECOND_NAME = "tiny-test-b"
ADMIN_CALLS = (
    ("GET", "/v1/admin/status", None),
    ("POST", "/v1/admin/model", {"model": "/nonexistent"}),
    ("POST", "/v1/admin/reload", None),
    ("POST", "/v1/admin/challenger", {"model": "/nonexistent", "mode": "shadow"}),
    ("DELETE", "/v1/admin/challenger", None),
    ("POST", "/v1/admin/promote", None),
    ("POST", "/v1/admin/rollback", None),
)


@pytest.fixture(scope="module")
def second_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Another tiny model (other weights, other name) to swap to."""
    return make_bundle(tmp_path_factory.mktemp("second") / "bundle", seed=1, name=SECOND_NAME)


def _ready(client: TestClient, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while client.get("/readyz").status_code != 200:
        assert time.monotonic() < deadline, client.get("/readyz").json()
        time.sleep(0.05)


@pytest.fixture
def serve(tmp_path: Path):
    """Start an app on a bundle with extra settings; yields a ready TestClient."""
    clients: list[TestClient] = []

    def start(model: Path, **settings) -> TestClient:
        s = ServeSettings(
            model=model, threads=1, model_workers=1, prediction_db=tmp_path / "log.db", **settings
        )
        client = TestClient(create_app(s))
        client.__enter__()
        clients.append(client)
        _ready(client)
        return client

    yield start
    for client in clients:
        client.__exit__(None, None, None)


def _auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def _call(client: TestClient, method: str, path: str, body, headers=None):
    return client.request(method, path, json=body, headers=headers or {})


def _predict(client: TestClient, seed: int = 1, headers=None):
    return client.post(
        "/v1/predict", files={"file": ("a.png", encode(photo(seed), "PNG"))}, headers=headers or {}
    )


def _live_name(client: TestClient) -> str:
    res = _predict(client)
    assert res.status_code == 200, res.text
    return res.json()["model"]["name"]


def test_admin_endpoints_are_disabled_without_a_token(serve, tiny_bundle: Path) -> None:
    client = serve(tiny_bundle)
    for method, path, body in ADMIN_CALLS:
        for headers in (None, _auth("anything")):
            res = _call(client, method, path, body, headers)
            assert res.status_code == 403, (path, res.text)
            assert res.json()["error"] == "admin_disabled"
            assert "FISHEYE_ADMIN_TOKEN" in res.json()["detail"]
    assert _live_name(client) == TINY_NAME
    metrics = client.get("/metrics").text
    assert 'fisheye_auth_failures_total{reason="disabled",scope="admin"} 14.0' in metrics


def test_admin_endpoints_want_the_right_token(serve, tiny_bundle: Path) -> None:
    client = serve(tiny_bundle, admin_token=TOKEN)
    for method, path, body in ADMIN_CALLS:
        res = _call(client, method, path, body)
        assert res.status_code == 401, (path, res.text)
        assert res.headers["www-authenticate"] == "Bearer"
        res = _call(client, method, path, body, _auth(TOKEN + "x"))
        assert res.status_code == 403 and res.json()["error"] == "forbidden", path
        res = _call(client, method, path, body, {"Authorization": f"Basic {TOKEN}"})
        assert res.status_code == 401, path
        res = _call(client, method, path, body, _auth(TOKEN))
        assert res.status_code not in (401, 403), (path, res.text)
    # Right token, but nothing to act on: clear errors, and the live model is unchanged.
    assert _call(client, "POST", "/v1/admin/promote", None, _auth(TOKEN)).status_code == 404
    assert _call(client, "POST", "/v1/admin/rollback", None, _auth(TOKEN)).status_code == 409
    assert _live_name(client) == TINY_NAME


def test_tokens_never_reach_the_log(
    serve, tiny_bundle: Path, caplog: pytest.LogCaptureFixture
) -> None:
    client = serve(tiny_bundle, admin_token=TOKEN, feedback_token="fb-secret", api_keys="key-1")
    with caplog.at_level(logging.DEBUG):
        _call(client, "POST", "/v1/admin/model", {"model": "/x"}, _auth("guess-" + TOKEN))
        _call(client, "POST", "/v1/admin/model", {"model": "/missing"}, _auth(TOKEN))
        _predict(client, headers=_auth("key-1-wrong"))
        client.post("/v1/feedback", json={"id": "x", "label": "Trout"}, headers=_auth("fb-bad"))
    assert "refused" in caplog.text  # the refusals are logged...
    for secret in (TOKEN, "fb-secret", "key-1", "fb-bad"):  # ...without any token
        assert secret not in caplog.text


def test_hot_swap_changes_the_answering_model_and_rollback_restores_it(
    serve, tiny_bundle: Path, second_bundle: Path
) -> None:
    client = serve(tiny_bundle, admin_token=TOKEN)
    res = _call(client, "POST", "/v1/admin/model", {"model": str(second_bundle)}, _auth(TOKEN))
    assert res.status_code == 200, res.text
    status = res.json()
    assert status["live"]["name"] == SECOND_NAME and status["previous"]["name"] == TINY_NAME
    assert _live_name(client) == SECOND_NAME
    assert client.get("/v1/model").json()["name"] == SECOND_NAME
    metrics = client.get("/metrics").text
    assert 'fisheye_model_swaps_total{action="swap",result="ok"} 1.0' in metrics
    assert f'fisheye_model_info{{architecture="small_cnn",name="{SECOND_NAME}"' in metrics
    assert f'name="{TINY_NAME}"' not in metrics.split("fisheye_model_info")[-1].split("\n")[0]

    res = _call(client, "POST", "/v1/admin/rollback", None, _auth(TOKEN))
    assert res.status_code == 200 and res.json()["live"]["name"] == TINY_NAME
    assert _live_name(client) == TINY_NAME
    # One step only: the model rolled back from is not kept.
    res = _call(client, "POST", "/v1/admin/rollback", None, _auth(TOKEN))
    assert res.status_code == 409 and res.json()["error"] == "nothing_to_roll_back"
    actions = [
        c["action"] for c in client.get("/v1/admin/status", headers=_auth(TOKEN)).json()["changes"]
    ]
    assert actions[:2] == ["swap", "rollback"]


def test_a_failing_bundle_leaves_the_live_model_untouched(
    serve, tiny_bundle: Path, writable_tiny_bundle: Path, tmp_path: Path
) -> None:
    client = serve(tiny_bundle, admin_token=TOKEN)
    weights = writable_tiny_bundle / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-8] + b"tampered")
    not_a_bundle = tmp_path / "empty"
    not_a_bundle.mkdir()
    for source in (writable_tiny_bundle, not_a_bundle, tmp_path / "missing", "models:/x@y@z"):
        res = _call(client, "POST", "/v1/admin/model", {"model": str(source)}, _auth(TOKEN))
        assert 400 <= res.status_code < 600 and res.status_code not in (401, 403), res.text
        body = res.json()
        assert body["error"] in ("bundle_invalid", "registry_unavailable"), body
        assert body["detail"]
        assert _live_name(client) == TINY_NAME
    res = _call(client, "POST", "/v1/admin/model", {"model": ""}, _auth(TOKEN))
    assert res.status_code == 422
    metrics = client.get("/metrics").text
    assert 'fisheye_model_swaps_total{action="swap",result="failed"} 4.0' in metrics
    status = client.get("/v1/admin/status", headers=_auth(TOKEN)).json()
    assert status["previous"] is None and status["live"]["name"] == TINY_NAME
    assert all("error" in c for c in status["changes"])


def _wait_shadowed(client: TestClient, n: int, timeout: float = 20) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        body = client.get("/v1/monitoring/challenger").json()
        done = body["shadow"]["photos"] + body["shadow"]["skipped"] + body["shadow"]["errors"]
        if done >= n or time.monotonic() > deadline:
            return body
        time.sleep(0.05)


def test_a_shadow_challenger_sees_photos_and_never_answers(
    serve, tiny_bundle: Path, second_bundle: Path, tmp_path: Path
) -> None:
    client = serve(tiny_bundle, admin_token=TOKEN, shadow_max_pending=64)
    assert client.get("/v1/monitoring/challenger").json()["attached"] is False
    body = {"model": str(second_bundle), "mode": "shadow", "share": 1.0}
    res = _call(client, "POST", "/v1/admin/challenger", body, _auth(TOKEN))
    assert res.status_code == 200, res.text
    assert res.json()["challenger"]["model"]["name"] == SECOND_NAME
    ids = []
    for seed in range(12):
        res = _predict(client, seed)
        assert res.json()["model"]["name"] == TINY_NAME  # the live model answers
        ids.append(res.json()["id"])
    view = _wait_shadowed(client, 12)
    shadow = view["shadow"]
    assert view["attached"] and view["mode"] == "shadow"
    assert view["model"]["name"] == SECOND_NAME and "path" not in view["model"]
    assert shadow["photos"] == 12 and shadow["errors"] == 0
    disagreeing = sum(d["count"] for d in shadow["disagreements"])
    assert shadow["agreement"] == pytest.approx((12 - disagreeing) / 12)
    assert shadow["latency_ms"]["p50"] > 0
    metrics = client.get("/metrics").text
    assert f'fisheye_challenger_info{{mode="shadow",name="{SECOND_NAME}"' in metrics
    assert "fisheye_challenger_inference_seconds_count 12.0" in metrics
    # Each shadow answer is logged against the live prediction it shadowed.
    time.sleep(0.5)
    with sqlite3.connect(tmp_path / "log.db") as conn:
        rows = conn.execute("SELECT id, live_label, label, agree FROM shadow").fetchall()
    assert sorted(r[0] for r in rows) == sorted(ids)
    assert all(bool(agree) == (live == label) for _, live, label, agree in rows)
    # Dropping it: the live model goes on alone.
    assert _call(client, "DELETE", "/v1/admin/challenger", None, _auth(TOKEN)).status_code == 200
    assert client.get("/v1/monitoring/challenger").json()["attached"] is False
    assert "fisheye_challenger_info{" not in client.get("/metrics").text


def test_a_shadow_of_the_live_model_agrees_on_every_photo(serve, tiny_bundle: Path) -> None:
    client = serve(tiny_bundle, admin_token=TOKEN, shadow_max_pending=64)
    body = {"model": str(tiny_bundle), "mode": "shadow", "share": 1.0}
    assert _call(client, "POST", "/v1/admin/challenger", body, _auth(TOKEN)).status_code == 200
    for seed in range(8):
        _predict(client, seed)
    shadow = _wait_shadowed(client, 8)["shadow"]
    assert shadow["photos"] == 8 and shadow["agreement"] == 1.0 and not shadow["disagreements"]


def test_a_canary_answers_its_share_and_promotion_makes_it_live(
    serve, tiny_bundle: Path, second_bundle: Path
) -> None:
    client = serve(tiny_bundle, admin_token=TOKEN)
    body = {"model": str(second_bundle), "mode": "canary", "share": 1.0}
    assert _call(client, "POST", "/v1/admin/challenger", body, _auth(TOKEN)).status_code == 200
    assert {_live_name(client) for _ in range(3)} == {SECOND_NAME}
    assert client.get("/v1/monitoring/challenger").json()["canary"]["answers"] == 3
    body["share"] = 0.0
    assert _call(client, "POST", "/v1/admin/challenger", body, _auth(TOKEN)).status_code == 200
    assert {_live_name(client) for _ in range(3)} == {TINY_NAME}

    res = _call(client, "POST", "/v1/admin/promote", None, _auth(TOKEN))
    assert res.status_code == 200, res.text
    status = res.json()
    assert status["live"]["name"] == SECOND_NAME and status["challenger"] is None
    assert status["previous"]["name"] == TINY_NAME
    assert _live_name(client) == SECOND_NAME
    assert _call(client, "POST", "/v1/admin/rollback", None, _auth(TOKEN)).status_code == 200
    assert _live_name(client) == TINY_NAME


def test_challenger_settings_are_checked(serve, tiny_bundle: Path) -> None:
    client = serve(tiny_bundle, admin_token=TOKEN)
    for body in (
        {"model": str(tiny_bundle), "mode": "both"},
        {"model": str(tiny_bundle), "share": 1.5},
        {"mode": "shadow"},
    ):
        res = _call(client, "POST", "/v1/admin/challenger", body, _auth(TOKEN))
        assert res.status_code == 422, body


def test_feedback_wants_its_token_when_one_is_set(serve, tiny_bundle: Path) -> None:
    client = serve(tiny_bundle, feedback_token="fb-token", admin_token=TOKEN)
    prediction = _predict(client).json()
    body = {"id": prediction["id"], "label": prediction["label"]}
    assert client.post("/v1/feedback", json=body).status_code == 401
    assert client.post("/v1/feedback", json=body, headers=_auth("fb-wrong")).status_code == 403
    # The admin token is not a feedback token.
    assert client.post("/v1/feedback", json=body, headers=_auth(TOKEN)).status_code == 403
    res = client.post("/v1/feedback", json=body, headers=_auth("fb-token"))
    assert res.status_code == 200, res.text and res.json()["correct"] is True


def test_feedback_is_open_without_a_feedback_token(serve, tiny_bundle: Path) -> None:
    client = serve(tiny_bundle)
    prediction = _predict(client).json()
    body = {"id": prediction["id"], "label": prediction["label"]}
    assert client.post("/v1/feedback", json=body).status_code == 200


def test_prediction_wants_an_api_key_when_keys_are_set(serve, tiny_bundle: Path) -> None:
    client = serve(tiny_bundle, api_keys="key-one, key-two")
    batch = [("files", ("a.png", encode(photo(1), "PNG")))]
    assert _predict(client).status_code == 401
    assert client.post("/v1/predict/batch", files=batch).status_code == 401
    assert _predict(client, headers=_auth("key-three")).status_code == 403
    assert client.post("/v1/predict/batch", files=batch, headers=_auth("nope")).status_code == 403
    assert _predict(client, headers=_auth("key-two")).status_code == 200
    assert _predict(client, headers={"X-API-Key": "key-one"}).status_code == 200
    res = client.post("/v1/predict/batch", files=batch, headers={"X-API-Key": "key-one"})
    assert res.status_code == 200
    # Probes, the model description and the page need no key.
    for path in ("/healthz", "/readyz", "/metrics", "/v1/model", "/"):
        assert client.get(path).status_code == 200, path
    metrics = client.get("/metrics").text
    assert 'fisheye_auth_failures_total{reason="missing",scope="predict"} 2.0' in metrics
    assert 'fisheye_auth_failures_total{reason="wrong",scope="predict"} 2.0' in metrics


def test_the_rate_limit_answers_429_with_retry_after(serve, tiny_bundle: Path) -> None:
    client = serve(tiny_bundle, rate_limit_per_s=0.5, rate_limit_burst=2)
    assert [_predict(client).status_code for _ in range(2)] == [200, 200]
    res = _predict(client)
    assert res.status_code == 429 and res.json()["error"] == "rate_limited"
    assert 1 <= int(res.headers["retry-after"]) <= 2
    # Probes are never limited; a key that verifies nothing is no other client: it counts
    # as its address (tests/unit/test_rate_limit_identity.py: valid keys have their own).
    assert all(client.get("/healthz").status_code == 200 for _ in range(5))
    assert _predict(client, headers={"X-API-Key": "someone-else"}).status_code == 429
    assert "fisheye_rate_limited_requests_total 2.0" in client.get("/metrics").text


def test_registry_uris_load_through_the_same_resolver_at_start_and_on_swap(
    serve,
    tiny_bundle: Path,
    second_bundle: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from fisheye.tracking import model_registry as registry
    from fisheye.tracking.store import local_store_uri

    store = local_store_uri(tmp_path / "runs")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    for bundle, alias in ((tiny_bundle, "champion"), (second_bundle, "challenger")):
        version, _ = registry.register(bundle, "fisheye", tracking_uri=store)
        registry.promote("fisheye", version.version, alias, tracking_uri=store)
    # The uvicorn factory path (no `fisheye serve` to resolve it first) takes a URI too.
    client = serve("models:/fisheye@champion", admin_token=TOKEN)
    assert _live_name(client) == TINY_NAME
    body = {"model": "models:/fisheye@challenger"}
    res = _call(client, "POST", "/v1/admin/model", body, _auth(TOKEN))
    assert res.status_code == 200, res.text
    assert res.json()["live"]["source"] == "models:/fisheye@challenger"
    assert _live_name(client) == SECOND_NAME
    res = _call(client, "POST", "/v1/admin/model", {"model": "models:/fisheye@gone"}, _auth(TOKEN))
    assert res.status_code == 422 and res.json()["error"] == "bundle_invalid", res.text
    assert _live_name(client) == SECOND_NAME


def test_a_shadow_with_other_preprocessing_decodes_again_and_busy_shadows_are_skipped(
    serve, tiny_bundle: Path, tmp_path: Path
) -> None:
    wider = make_bundle(tmp_path / "wider", input_size=48, seed=2, name="tiny-test-48")
    client = serve(tiny_bundle, admin_token=TOKEN, shadow_max_pending=2)
    body = {"model": str(wider), "mode": "shadow", "share": 1.0}
    assert _call(client, "POST", "/v1/admin/challenger", body, _auth(TOKEN)).status_code == 200
    files = [("files", (f"{i}.png", encode(photo(i), "PNG"))) for i in range(10)]
    res = client.post("/v1/predict/batch", files=files)
    assert res.status_code == 200 and res.json()["model"]["name"] == TINY_NAME
    shadow = _wait_shadowed(client, 10)["shadow"]
    # Ten photos at once, room for two: two shadowed (decoded again at 48 px), eight skipped.
    assert shadow["photos"] == 2 and shadow["skipped"] == 8 and shadow["errors"] == 0
    assert "fisheye_challenger_skipped_total 8.0" in client.get("/metrics").text


@pytest.mark.parametrize(
    "window", ["9999999999999999999w", "99999999999999999999", "3661d", "0", "soon", "1e9d"]
)
def test_the_summary_window_is_range_checked(serve, tiny_bundle: Path, window: str) -> None:
    client = serve(tiny_bundle)
    res = client.get("/v1/monitoring/summary", params={"window": window})
    assert res.status_code == 422, res.text
    assert res.json()["error"] in ("invalid_window", "invalid_request"), res.text
    assert client.get("/v1/monitoring/summary", params={"window": "3660d"}).status_code == 200


def test_challenger_shares_out_of_range_are_refused(serve, tiny_bundle: Path) -> None:
    client = serve(tiny_bundle, admin_token=TOKEN)
    for share in ("NaN", "Infinity", "-Infinity", "-0.1", "1e308", "2"):
        body = f'{{"model": "{tiny_bundle}", "mode": "canary", "share": {share}}}'
        res = client.post(
            "/v1/admin/challenger",
            content=body,
            headers={**_auth(TOKEN), "Content-Type": "application/json"},
        )
        assert res.status_code == 422, (share, res.text)


@pytest.mark.parametrize("spelling", ["same", "trailing_slash", "dot_segment", "link"])
def test_reload_and_swap_of_the_configured_folder_keep_the_pin(
    serve, tiny_bundle: Path, second_bundle: Path, tmp_path: Path, spelling: str
) -> None:
    """FISHEYE_MODEL_SHA256 holds for reload (as SIGHUP does it) and for a swap to the same
    folder however it is named: a folder rewritten with another valid bundle is refused."""
    model = tmp_path / "model"
    shutil.copytree(tiny_bundle, model)
    client = serve(model, admin_token=TOKEN, model_sha256=bundle_sha256(model))
    # Someone replaces the folder's contents with another, self-consistent bundle.
    for path in model.iterdir():
        path.unlink()
    for path in second_bundle.iterdir():
        shutil.copy2(path, model / path.name)
    (tmp_path / "link").symlink_to(model)
    named = {
        "same": str(model),
        "trailing_slash": f"{model}/",
        "dot_segment": f"{tmp_path}/./model",
        "link": str(tmp_path / "link"),
    }[spelling]
    if spelling == "same":
        res = _call(client, "POST", "/v1/admin/reload", None, _auth(TOKEN))
    else:
        res = _call(client, "POST", "/v1/admin/model", {"model": named}, _auth(TOKEN))
    assert res.status_code == 422, res.text
    assert res.json()["error"] == "bundle_not_pinned" or "pinned" in res.json()["detail"]
    assert _live_name(client) == TINY_NAME
    # Without the pin being in play (another folder), an admin may swap as before.
    assert (
        _call(client, "POST", "/v1/admin/model", {"model": str(second_bundle)}, _auth(TOKEN))
    ).status_code == 200
    assert _live_name(client) == SECOND_NAME


@pytest.mark.parametrize("kind", ["fifo", "dev-zero"])
@pytest.mark.parametrize("name", ["bundle.json.sha256", "bundle.json", "model.safetensors"])
def test_a_swap_to_a_folder_with_special_files_is_refused_and_frees_the_change_lock(
    serve, tiny_bundle: Path, second_bundle: Path, tmp_path: Path, kind: str, name: str
) -> None:
    client = serve(tiny_bundle, admin_token=TOKEN)
    target = tmp_path / "target"
    shutil.copytree(second_bundle, target)
    (target / name).unlink()
    if kind == "fifo":
        os.mkfifo(target / name)
    else:
        (target / name).symlink_to("/dev/zero")
    res = _call(client, "POST", "/v1/admin/model", {"model": str(target)}, _auth(TOKEN))
    assert res.status_code == 422, res.text
    assert res.json()["error"] == "bundle_invalid"
    assert "regular file" in res.json()["detail"]
    assert _live_name(client) == TINY_NAME
    # The refused change left the lock free: the next one goes through.
    res = _call(client, "POST", "/v1/admin/model", {"model": str(second_bundle)}, _auth(TOKEN))
    assert res.status_code == 200, res.text
