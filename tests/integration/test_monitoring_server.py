"""Monitoring in a real server: OOD fields, background drift, feedback, summary, Prometheus."""

from __future__ import annotations

import contextlib
import shutil
import sqlite3
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.helpers.paths import DEPLOY
from tests.helpers.photos import synthetic_photos
from tests.helpers.server import Server, free_port, run_server

pytestmark = pytest.mark.integration
PROMTOOL = shutil.which("promtool")
PROMETHEUS = shutil.which("prometheus")
PROMETHEUS_DEPLOY = DEPLOY / "prometheus"


@pytest.fixture(scope="module")
def monitored(
    monitored_bundle: Path, tmp_path_factory: pytest.TempPathFactory, synthetic_dataset: Path
) -> Iterator:
    """A server on the monitored bundle with its prediction log, and the synthetic photos."""
    tmp = tmp_path_factory.mktemp("monitored-server")
    db = tmp / "log.sqlite"
    env = {
        "FISHEYE_PREDICTION_DB": str(db),
        "FISHEYE_DRIFT_EVERY_REQUESTS": "8",
        "FISHEYE_DRIFT_MIN_SAMPLES": "8",
        "FISHEYE_DRIFT_WINDOW": "40",
        "FISHEYE_DRIFT_PERMUTATIONS": "200",
        # Flag about half of all photos as OOD, so both verdicts show up.
        "FISHEYE_OOD_FALSE_ALARM_RATE": "0.5",
    }
    with run_server(monitored_bundle, tmp, **env) as srv:
        yield srv, db, synthetic_photos(synthetic_dataset)


def _metric(server: Server, name: str) -> float | None:
    for line in httpx.get(f"{server.url}/metrics", timeout=5).text.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            return float(line.rsplit(" ", 1)[1])
    return None


def _wait(check, timeout: float = 20.0):
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(0.2)


def test_answers_carry_ood_and_feed_drift_log_and_feedback(monitored) -> None:
    server, db, photos = monitored
    ids, verdicts = [], []
    with httpx.Client(base_url=server.url, timeout=30) as client:
        for p in photos[:6]:
            r = client.post("/v1/predict", files={"file": (p.name, p.read_bytes())})
            assert r.status_code == 200, r.text
            body = r.json()
            assert isinstance(body["ood_score"], float)
            verdicts.append(body["in_distribution"])
            ids.append(body["id"])
        r = client.post(
            "/v1/predict/batch", files=[("files", (p.name, p.read_bytes())) for p in photos[6:14]]
        )
        assert r.status_code == 200
        for item in r.json()["results"]:
            assert isinstance(item["ood_score"], float)
            verdicts.append(item["in_distribution"])
        assert set(verdicts) == {True, False}

        drift = _wait(lambda: client.get("/v1/monitoring/drift").json()["latest"])
        assert drift, server.log_tail()
        assert 0 < drift["p_value"] <= 1 and drift["n"] >= 8
        status = client.get("/v1/monitoring/drift").json()
        assert status["window"]["capacity"] == 40 and status["window"]["size"] >= 8
        assert (
            _metric(server, "fisheye_drift_p_value")
            == pytest.approx(status["latest"]["p_value"], abs=1e-9)
            or status["tests"] > 1
        )
        assert _metric(server, "fisheye_ood_predictions_total") == verdicts.count(False)

        label = client.get("/v1/model").json()["classes"][0]
        r = client.post("/v1/feedback", json={"id": ids[0], "label": label})
        assert r.status_code == 200, r.text
        assert r.json()["feedback_count"] == 1
        assert client.post("/v1/feedback", json={"id": "nope", "label": label}).status_code == 404
        r = client.post("/v1/feedback", json={"id": ids[0], "label": "Goldfish"})
        assert r.status_code == 422 and r.json()["error"] == "unknown_label"
        assert client.post("/v1/feedback", json={"label": label}).status_code == 422
        assert _metric(server, "fisheye_feedback_accuracy") in (0.0, 1.0)

        s = client.get("/v1/monitoring/summary", params={"window": "1h"}).json()
        assert s["predictions"] == 14 and sum(s["counts"].values()) == 14
        assert s["ood_rate"] == pytest.approx(verdicts.count(False) / 14)
        assert s["feedback"]["count"] == 1 and s["latency_ms"]["p95"] > 0
        assert s["drift"]["tests"] >= 1
        bad = client.get("/v1/monitoring/summary", params={"window": "forever"})
        assert bad.status_code == 422
    with sqlite3.connect(db) as conn:
        row = conn.execute(
            "SELECT model_version, backend, label, sha256, latency_ms, image_path "
            "FROM predictions WHERE id = ?",
            (ids[0],),
        ).fetchone()
    assert row[1] == "torch" and len(row[3]) == 64 and row[4] > 0
    assert row[5] is None  # photos are not stored unless the operator opts in


def test_a_locked_log_never_fails_a_prediction(monitored) -> None:
    """Another process holds the log's write lock: predictions are answered, and their rows
    are written once the lock is gone (none is dropped)."""
    server, db, photos = monitored
    lost_before = _metric(server, "fisheye_prediction_log_lost_rows_total") or 0.0
    blocker = sqlite3.connect(db, timeout=5)
    blocker.execute("BEGIN EXCLUSIVE")
    ids = []
    try:
        for p in photos[:3]:
            r = httpx.post(
                f"{server.url}/v1/predict", files={"file": (p.name, p.read_bytes())}, timeout=30
            )
            assert r.status_code == 200
            ids.append(r.json()["id"])
        time.sleep(0.5)  # longer than SQLite's busy timeout: the writer meets the lock
    finally:
        blocker.rollback()
        blocker.close()

    def logged() -> bool:
        with sqlite3.connect(db, timeout=5) as conn:
            marks = ",".join("?" * len(ids))
            query = f"SELECT COUNT(*) FROM predictions WHERE id IN ({marks})"
            return conn.execute(query, ids).fetchone()[0] == len(ids)

    assert _wait(logged), server.log_tail()
    assert (_metric(server, "fisheye_prediction_log_lost_rows_total") or 0.0) == lost_before


@pytest.mark.skipif(PROMTOOL is None, reason="promtool not installed (apt-get install prometheus)")
def test_promtool_accepts_the_config_and_alert_rules() -> None:
    for args in (
        ["check", "config", str(PROMETHEUS_DEPLOY / "prometheus.yml")],
        ["check", "rules", str(PROMETHEUS_DEPLOY / "alerts.yml")],
        ["test", "rules", str(PROMETHEUS_DEPLOY / "alerts_test.yml")],
    ):
        out = subprocess.run([PROMTOOL, *args], capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stdout + out.stderr


@pytest.mark.skipif(
    PROMETHEUS is None, reason="prometheus not installed (apt-get install prometheus)"
)
def test_a_real_prometheus_scrapes_fisheye(monitored, tmp_path: Path) -> None:
    server, _, _ = monitored
    target = server.url.removeprefix("http://")
    config = tmp_path / "prometheus.yml"
    config.write_text(
        "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n"
        f"rule_files:\n  - {PROMETHEUS_DEPLOY / 'alerts.yml'}\n"
        "scrape_configs:\n  - job_name: fisheye\n"
        f"    static_configs:\n      - targets: ['{target}']\n"
    )
    port = free_port()
    log = tmp_path / "prometheus.log"
    cmd = [
        PROMETHEUS,
        f"--config.file={config}",
        f"--storage.tsdb.path={tmp_path / 'tsdb'}",
        f"--web.listen-address=127.0.0.1:{port}",
    ]
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT)
    try:

        def query() -> list:
            with contextlib.suppress(httpx.HTTPError, ValueError, KeyError):
                r = httpx.get(
                    f"http://127.0.0.1:{port}/api/v1/query",
                    params={"query": "fisheye_model_ready"},
                    timeout=2,
                )
                return r.json()["data"]["result"]
            return []

        result = _wait(query, timeout=45)
        assert result, log.read_text(errors="replace")[-3000:]
        assert result[0]["value"][1] == "1" and result[0]["metric"]["job"] == "fisheye"
        # The FishEye monitoring gauges are scraped too.
        r = httpx.get(
            f"http://127.0.0.1:{port}/api/v1/query",
            params={"query": "fisheye_drift_p_value"},
            timeout=5,
        )
        assert r.json()["data"]["result"]
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
