"""The fleet's drift test on a real PostgreSQL store: replicas write a sample of their photos'
features, one elected replica (the holder of an advisory lock) tests the fleet's recent
photos with the false-alarm budget counted over the fleet's photos, and every replica reports
its result. With a SQLite log nothing of this exists."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from fisheye.monitoring.drift import DriftDetector
from fisheye.monitoring.prediction_log.fleet_rows import FEATURE_DTYPE
from fisheye.serving.fleet_drift import FleetDrift
from fisheye.serving.fleet_features import FeatureSampler
from tests.helpers.bundles import make_monitored_bundle

psycopg = pytest.importorskip("psycopg")

from fisheye.monitoring.prediction_log.fleet_store import FleetStore  # noqa: E402

DIM = 8
SPACE = "bundle/onnx"


def _normal(n: int, seed: int, shift: float = 0.0) -> np.ndarray:
    return (np.random.default_rng(seed).normal(size=(n, DIM)) + shift).astype(np.float32)


def _replica(url: str, name: str, detector: DriftDetector, **schedule) -> FleetDrift:
    """A replica's fleet-drift part, driven by `step()` (no thread); every photo sampled."""
    sampler = FeatureSampler(1e9, model_version="v1", feature_space=SPACE)
    options = {"size": 40, "every_requests": 40, "min_samples": 10, "interval_s": 1e9}
    options |= {"false_alarms_per_photo": 1e-4, **schedule}
    return FleetDrift(FleetStore(url, replica=name), sampler, detector, **options)


def _offer(replica: FleetDrift, feats: np.ndarray, confidence: float = 0.9, ood: bool = False):
    n = len(feats)
    replica.sampler.offer(feats, np.full(n, ood), np.zeros(n, int), np.full(n, confidence))


def _query(url: str, sql: str, *args) -> list[tuple]:
    with psycopg.connect(url) as conn:
        return conn.execute(sql, args).fetchall()


def _kill_session(url: str, replica: FleetDrift) -> None:
    """End a replica's session from the server side, as PostgreSQL does when the replica's
    process or host is gone (its lease goes with it), and wait until it has ended."""
    name = f"fisheye {replica.store.replica} fleet"
    with psycopg.connect(url, autocommit=True) as conn:
        ended = conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = %s",
            (name,),
        ).fetchall()
        assert ended == [(True,)]
        deadline = time.monotonic() + 60  # a safety net: the backend exits at once
        while conn.execute(
            "SELECT 1 FROM pg_stat_activity WHERE application_name = %s", (name,)
        ).fetchall():
            assert time.monotonic() < deadline, "the session did not end"
            time.sleep(0.01)


@pytest.fixture(scope="module")
def monitored(tmp_path_factory: pytest.TempPathFactory, synthetic_dataset: Path) -> Path:
    """The tiny bundle with a fitted drift reference (read-only)."""
    return make_monitored_bundle(tmp_path_factory.mktemp("monitored") / "bundle", synthetic_dataset)


@pytest.fixture
def detector() -> DriftDetector:
    return DriftDetector(_normal(300, 0), n_permutations=999)


def test_the_leaders_test_sees_every_replicas_photos(postgres_url: str, detector) -> None:
    a, b = _replica(postgres_url, "pod-a", detector), _replica(postgres_url, "pod-b", detector)
    try:
        _offer(a, _normal(20, 1), confidence=0.9)
        a.step()  # writes its 20, takes the lease; 20 fleet photos are not a test yet
        assert a.leading and a.latest is None
        _offer(b, _normal(20, 2), confidence=0.7, ood=True)
        b.step()
        assert not b.leading and b.latest is None
        a.step()
        latest = a.latest
        assert latest is not None and latest["leader"] == "pod-a"
        assert latest["n"] == 40 and latest["window"]["replicas"] == {"pod-a": 20, "pod-b": 20}
        assert latest["new_photos"] == 40 and latest["alpha"] == pytest.approx(40e-4)
        assert latest["estimated_accuracy"] == pytest.approx(0.8)
        assert latest["ood_fraction"] == pytest.approx(0.5)
        b.step()
        assert b.latest == latest  # every replica reports the fleet's latest result
        assert b.status()["latest"] == latest and b.status()["leader"] is False
        (stored,) = _query(postgres_url, "SELECT length(features), photos FROM fleet_features")[:1]
        assert stored == (DIM * FEATURE_DTYPE.itemsize, 1)
    finally:
        a.stop()
        b.stop()


def test_one_shifted_replica_raises_the_fleet_alarm_only_when_its_share_shifts_the_window(
    postgres_url: str, detector
) -> None:
    schedule = {"size": 200, "every_requests": 200, "min_samples": 200}
    a = _replica(postgres_url, "pod-a", detector, **schedule)
    b = _replica(postgres_url, "pod-b", detector, **schedule)
    try:
        # pod-b's own photos are plainly shifted...
        shifted = _normal(5, 20, shift=1.0)
        assert detector.test(shifted, alpha=0.02).drift
        # ...but they are 5 of the fleet's 200: the fleet is not.
        _offer(a, _normal(195, 10))
        _offer(b, shifted)
        for replica in (a, b, a):
            replica.step()
        small = a.latest
        assert small is not None and small["window"]["replicas"] == {"pod-a": 195, "pod-b": 5}
        assert small["alpha"] == pytest.approx(0.02) and not small["alarm"]
        # Once half the fleet's photos come shifted, the fleet's window drifts.
        _offer(a, _normal(100, 11))
        _offer(b, _normal(100, 21, shift=1.0))
        for replica in (a, b, a, b):
            replica.step()
        large = b.latest
        assert large is not None and large["id"] > small["id"]
        assert large["window"]["replicas"] == {"pod-a": 100, "pod-b": 100}
        assert large["alarm"] and large["p_value"] <= large["alpha"]
    finally:
        a.stop()
        b.stop()


def test_when_the_leader_is_gone_another_replica_takes_over_where_it_left_off(
    postgres_url: str, detector
) -> None:
    a, b = _replica(postgres_url, "pod-a", detector), _replica(postgres_url, "pod-b", detector)
    try:
        _offer(a, _normal(40, 1))
        a.step()
        first = a.latest
        assert a.leading and first is not None and first["new_photos"] == 40
        b.step()
        assert not b.leading
        _kill_session(postgres_url, a)
        b.step()
        assert b.leading
        _offer(b, _normal(40, 2))
        b.step()
        second = b.latest
        assert second is not None and second["leader"] == "pod-b"
        # Only the photos since the last test count, whoever ran it.
        assert second["new_photos"] == 40 and second["id"] > first["id"]
        a.step()  # finds its session ended: it no longer leads...
        assert not a.leading and a.error is not None
        a.step()  # ...reconnects, and reports the new leader's result
        assert not a.leading and a.latest == second and a.error is None
    finally:
        a.stop()
        b.stop()


def test_a_killed_leaders_lease_passes_to_another_replica(postgres_url: str, detector) -> None:
    code = (
        "import sys, time\n"
        "from fisheye.monitoring.prediction_log.fleet_store import FleetStore\n"
        f"store = FleetStore({postgres_url!r}, replica='doomed')\n"
        "print('leading' if store.try_lead() else 'not leading', flush=True)\n"
        "time.sleep(600)\n"
    )
    doomed = subprocess.Popen(
        [sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, env=dict(os.environ)
    )
    b = _replica(postgres_url, "pod-b", detector)
    try:
        assert doomed.stdout is not None and doomed.stdout.readline().strip() == "leading"
        b.step()
        assert not b.leading
        doomed.kill()  # SIGKILL: no goodbye to PostgreSQL, only a closed socket
        doomed.wait(30)
        deadline = time.monotonic() + 60  # a safety net: PostgreSQL sees the socket close
        while not b.leading:
            assert time.monotonic() < deadline, "the lease of a killed leader was not released"
            time.sleep(0.1)
            b.step()
    finally:
        if doomed.poll() is None:
            doomed.kill()
            doomed.wait(30)
        b.stop()


def test_a_healthy_fleet_holds_its_false_alarm_budget_across_leaders(
    postgres_url: str,
) -> None:
    """Two replicas each answer 5 photos between fleet tests; at 1 false alarm per 100 photos
    of the fleet each test runs at alpha 0.1 (10 fleet photos), so 300 tests over 3,000
    photos expect at most 30 false alarms, whichever replica leads (the leader changes
    halfway). As in test_drift_false_alarms.py for one replica."""
    detector = DriftDetector(_normal(300, 0), n_permutations=99)
    schedule = {"size": 40, "every_requests": 10, "min_samples": 40}
    a = _replica(postgres_url, "pod-a", detector, false_alarms_per_photo=0.01, **schedule)
    b = _replica(postgres_url, "pod-b", detector, false_alarms_per_photo=0.01, **schedule)
    try:
        _offer(a, _normal(20, 1))
        _offer(b, _normal(20, 2))
        b.step()
        a.step()
        leader = b
        results = []
        for i in range(300):
            if i == 150:  # the leader is gone; the other takes over, and it comes back
                _kill_session(postgres_url, b)
                a.step()
                b.step()
                leader = a
            _offer(a, _normal(5, 100 + i))
            _offer(b, _normal(5, 1000 + i))
            for replica in (a, b) if leader is b else (b, a):
                replica.step()
            assert leader.leading and leader.latest is not None
            results.append(leader.latest)
        assert len({r["id"] for r in results}) == 300  # a test after every 10 fleet photos
        assert {r["leader"] for r in results} == {"pod-a", "pod-b"}
        assert all(r["alpha"] == pytest.approx(0.1) for r in results[1:])
        alarms = sum(r["drift"] for r in results)
        assert alarms <= 45  # expected <= 30; P(more than 45) < 0.2% even at the bound
        shifted = 0
        for i in range(10):
            _offer(a, _normal(5, 5000 + i, shift=1.5))
            _offer(b, _normal(5, 6000 + i, shift=1.5))
            b.step()
            a.step()
            shifted += a.latest["drift"]
        assert shifted >= 5
    finally:
        a.stop()
        b.stop()


def test_the_store_keeps_only_the_newest_feature_rows(postgres_url: str, detector) -> None:
    a = _replica(postgres_url, "pod-a", detector, size=20, keep_rows=50, prune_every_s=0)
    try:
        for i in range(4):
            _offer(a, _normal(30, i))
            a.step()
        ((rows, newest),) = _query(postgres_url, "SELECT count(*), max(id) FROM fleet_features")
        assert rows == 50 and newest == 120
    finally:
        a.stop()


def test_the_sample_admits_at_most_its_rate_and_counts_every_photo() -> None:
    now = [0.0]
    sampler = FeatureSampler(10, model_version="v1", feature_space=SPACE, clock=lambda: now[0])
    feats = _normal(50, 0)
    flags, labels, conf = np.zeros(50, bool), np.arange(50) % 3, np.full(50, 0.8)
    sampler.offer(feats, flags, labels, conf)
    first = sampler.take()
    assert len(first) == 10 and [r.photos for r in first] == [1] * 10  # one second's burst
    now[0] = 0.5  # half a second: 5 more photos may pass
    sampler.offer(feats, flags, labels, conf)
    second = sampler.take()
    # The first admitted row stands for the 40 photos skipped before it, and itself.
    assert [r.photos for r in second] == [41, 1, 1, 1, 1]
    assert sum(r.photos for r in first + second) == 100 - 45  # the rest wait for a row
    assert np.array_equal(
        np.frombuffer(second[0].features, FEATURE_DTYPE), feats[0].astype(np.float16)
    )
    small = FeatureSampler(1e9, model_version="v1", feature_space=SPACE, max_pending=3)
    small.offer(feats[:5], flags[:5], labels[:5], conf[:5])
    assert len(small.take()) == 3 and small.dropped == 2  # bounded while the store is away


def test_a_server_reports_the_fleet_with_postgres_and_nothing_new_with_sqlite(
    postgres_url: str, monitored: Path, tmp_path: Path
) -> None:
    from fastapi.testclient import TestClient

    from fisheye.serving.app import create_app
    from fisheye.serving.settings import ServeSettings
    from tests.helpers.photos import encode, photo

    quick = {"drift_min_samples": 4, "drift_every_requests": 4, "drift_min_interval_s": 0}
    for db in (tmp_path / "log.sqlite", postgres_url):
        settings = ServeSettings(
            model=monitored, threads=1, model_workers=1, prediction_db=db, **quick
        )
        with TestClient(create_app(settings)) as client:
            client.app.state.serving.wait_loaded(60)  # type: ignore[attr-defined]
            for i in range(6):
                res = client.post("/v1/predict", files={"file": ("p.png", encode(photo(i)))})
                assert res.status_code == 200, res.text
            drift = client.get("/v1/monitoring/drift").json()
            if db == postgres_url:
                deadline = time.monotonic() + 60  # a safety net: the thread tests in a second
                while drift["fleet"]["latest"] is None:
                    assert time.monotonic() < deadline, drift["fleet"]
                    time.sleep(0.2)
                    drift = client.get("/v1/monitoring/drift").json()
                fleet = drift["fleet"]
                assert fleet["leader"] and fleet["latest"]["n"] >= 4
                assert client.get("/v1/monitoring/summary").json()["drift_now"]["fleet"]
                metrics = client.get("/metrics").text
                assert "fisheye_fleet_drift_leader 1.0" in metrics
                assert "fisheye_fleet_drift_p_value NaN" not in metrics
            else:
                assert drift["enabled"] and "fleet" not in drift
                assert "fisheye_fleet_drift_p_value NaN" in client.get("/metrics").text
