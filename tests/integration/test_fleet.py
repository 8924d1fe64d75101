"""A fleet on one machine: three `fisheye serve` replicas sharing one PostgreSQL prediction
store, behind a real HAProxy running deploy/haproxy/haproxy.cfg (tests/helpers/fleet.py).

The tests share one fleet and run in file order: one kills a replica and starts it again,
the last one kills a replica for good.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from pathlib import Path

import httpx
import psycopg
import pytest

from tests.helpers.client_load import ClientLoad, Photo
from tests.helpers.fleet import (
    SERVED_BY_LINE,
    Fleet,
    check_haproxy_config,
    haproxy_path,
    render_haproxy_config,
    run_fleet,
    run_replicas,
    wait_until,
)
from tests.helpers.photos import encode, photo
from tests.helpers.postgres import PostgresServer, fresh_database

pytestmark = pytest.mark.integration
REPLICAS = ("replica-1", "replica-2", "replica-3")
WINDOW = {"window": "1h"}
SETTLE_S = 60.0  # safety net only: every wait polls for its condition


@pytest.fixture(scope="module")
def haproxy() -> str:
    """Skips where HAProxy is not installed, except in CI, where .ci/run installs it."""
    found = haproxy_path()
    if found is None:
        message = "HAProxy is not installed (apt-get install haproxy)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return found


@pytest.fixture(scope="module")
def fleet_store(postgres_server: PostgresServer) -> str:
    return fresh_database(postgres_server, "fleet")


@pytest.fixture(scope="module")
def fleet(
    haproxy: str, fleet_store: str, tiny_bundle: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Fleet]:
    workdir = tmp_path_factory.mktemp("fleet")
    # Summaries are not reused (1 s by default), so every answer reads the store as it is.
    with run_fleet(
        tiny_bundle,
        fleet_store,
        workdir,
        # Each answer names its replica (a header), to follow predictions to their replica.
        backend_lines=(SERVED_BY_LINE,),
        FISHEYE_SUMMARY_CACHE_S="0",
    ) as running:
        yield running


def predict(client: httpx.Client, n: int, seed: int = 0) -> list[str]:
    """Post `n` photos; every one must be answered. The predictions' ids."""
    ids = []
    for i in range(n):
        res = client.post("/v1/predict", files={"file": ("p.png", encode(photo(seed + i), "PNG"))})
        assert res.status_code == 200, res.text
        ids.append(res.json()["id"])
    return ids


def made_by(store: str, ids: list[str]) -> dict[str, str]:
    """The replica that made each prediction among `ids` that is in the store."""
    with psycopg.connect(store) as conn:
        rows = conn.execute(
            "SELECT id, replica FROM predictions WHERE id = ANY(%s)", (ids,)
        ).fetchall()
    return dict(rows)


def all_stored(store: str, ids: list[str]) -> dict[str, str] | None:
    """`made_by` once every prediction among `ids` is in the store, else None."""
    found = made_by(store, ids)
    return found if len(found) == len(ids) else None


def stored_count(store: str) -> int:
    with psycopg.connect(store) as conn:
        return conn.execute("SELECT count(*) FROM predictions").fetchone()[0]


def settled_summary(url: str, store: str) -> dict:
    """The summary from `url` once it counts every prediction in the store (rows another
    replica still holds in its queue are waited for)."""

    def summary() -> dict | None:
        s = httpx.get(f"{url}/v1/monitoring/summary", params=WINDOW, timeout=30).json()
        return s if s["predictions"] == stored_count(store) else None

    return wait_until(summary, SETTLE_S, f"the summary of {url} to count every stored row")


def test_the_haproxy_config_is_valid(haproxy: str, tmp_path: Path) -> None:
    config = tmp_path / "haproxy.cfg"
    config.write_text(render_haproxy_config({"a": "127.0.0.1:8001", "b": "127.0.0.1:8002"}))
    output = check_haproxy_config(config)
    assert "WARNING" not in output and "ALERT" not in output, output
    config.write_text(render_haproxy_config({"a": "127.0.0.1:8001"}) + "    servr b x:1\n")
    with pytest.raises(RuntimeError, match="haproxy -c failed"):
        check_haproxy_config(config)


def test_predictions_reach_every_replica_and_land_in_one_store(
    fleet: Fleet, fleet_store: str
) -> None:
    with httpx.Client(base_url=fleet.balancer.url, timeout=30) as client:
        ids = predict(client, 12)
    makers = wait_until(lambda: all_stored(fleet_store, ids), SETTLE_S, "every row stored")
    assert set(makers.values()) == set(REPLICAS)  # round robin: no replica left out

    summary = settled_summary(fleet.balancer.url, fleet_store)
    assert summary["predictions"] >= len(ids)
    assert set(summary["replicas"]) == set(REPLICAS)
    assert sum(summary["replicas"].values()) == summary["predictions"]


def test_feedback_through_haproxy_is_accepted_for_any_replicas_prediction(
    fleet: Fleet, fleet_store: str
) -> None:
    with httpx.Client(base_url=fleet.balancer.url, timeout=30) as client:
        ids = predict(client, 6, seed=100)
        before = settled_summary(fleet.balancer.url, fleet_store)["feedback"]["count"]
        # Each label is sent twice in a row: round robin gives the two requests to two
        # different replicas, so at least one of them did not make the prediction.
        for i in ids:
            for _ in range(2):
                res = client.post("/v1/feedback", json={"id": i, "label": "Trout"})
                assert res.status_code == 200, res.text
    after = settled_summary(fleet.balancer.url, fleet_store)["feedback"]["count"]
    assert after - before == len(ids)

    # And straight to a replica that did not make the prediction.
    for i, maker in made_by(fleet_store, ids).items():
        other = fleet.replicas[next(r for r in REPLICAS if r != maker)]
        res = httpx.post(f"{other.url}/v1/feedback", json={"id": i, "label": "Trout"}, timeout=30)
        assert res.status_code == 200, res.text
        assert res.json()["feedback_count"] == after


def test_haproxy_reports_its_health_and_the_replicas(fleet: Fleet) -> None:
    assert httpx.get(f"{fleet.balancer.stats_url}/healthz", timeout=5).status_code == 200
    assert fleet.balancer.server_states() == dict.fromkeys(REPLICAS, "UP")
    metrics = httpx.get(f"{fleet.balancer.stats_url}/metrics", timeout=5).text
    assert 'haproxy_server_status{proxy="fisheye",server="replica-1",state="UP"} 1' in metrics


def test_every_replica_reports_the_fleet_as_haproxy_does(fleet: Fleet, fleet_store: str) -> None:
    through_haproxy = settled_summary(fleet.balancer.url, fleet_store)
    for name, server in fleet.replicas.items():
        direct = httpx.get(f"{server.url}/v1/monitoring/summary", params=WINDOW, timeout=30)
        assert direct.json() == through_haproxy, name
        own = httpx.get(
            f"{server.url}/v1/monitoring/summary", params={**WINDOW, "replica": name}, timeout=30
        ).json()
        assert own["predictions"] == through_haproxy["replicas"][name]


def test_every_replica_reports_the_same_fleet_drift_result(
    postgres_server: PostgresServer, monitored_bundle: Path, tmp_path: Path
) -> None:
    """Two replicas of a bundle with a drift reference, each sent its own photos: one of
    them tests the fleet's photos, and both report that result. (A fleet of its own: the
    shared one serves a bundle without a drift reference.)"""
    store = fresh_database(postgres_server, "fleet_drift")
    quick = {
        "FISHEYE_DRIFT_MIN_SAMPLES": "6",
        "FISHEYE_DRIFT_EVERY_REQUESTS": "6",
        "FISHEYE_DRIFT_MIN_INTERVAL_S": "0",
    }
    names = ["replica-a", "replica-b"]
    with run_replicas(
        monitored_bundle, tmp_path, names, FISHEYE_PREDICTION_DB=store, **quick
    ) as replicas:
        for i, server in enumerate(replicas.values()):
            with httpx.Client(base_url=server.url, timeout=30) as client:
                predict(client, 6, seed=500 + 10 * i)

        def fleet_views() -> list[dict]:
            return [
                httpx.get(f"{server.url}/v1/monitoring/drift", timeout=30).json()["fleet"]
                for server in replicas.values()
            ]

        def same_result() -> dict | None:
            latest = [view["latest"] for view in fleet_views()]
            if None in latest or len({result["id"] for result in latest}) > 1:
                return None  # not tested yet, or a newer test reached one replica first
            # The first test may come before the other replica's photos are written.
            return latest[0] if len(latest[0]["window"]["replicas"]) == len(names) else None

        result = wait_until(same_result, SETTLE_S, "one fleet drift result on every replica")
        assert result["leader"] in names and result["window"]["replicas"] == dict.fromkeys(names, 6)
        assert [view["leader"] for view in fleet_views()].count(True) == 1


def test_a_replica_killed_under_load_and_restarted_keeps_its_written_rows_and_takes_feedback(
    fleet: Fleet, fleet_store: str
) -> None:
    victim = "replica-2"
    photos = [Photo("Trout", f"p{i}.png", encode(photo(500 + i), "PNG")) for i in range(8)]
    load = ClientLoad(fleet.balancer.url, photos, clients=4, seconds=SETTLE_S * 4).start()
    try:
        wait_until(lambda: len(load.answered(victim)) >= 10, SETTLE_S, f"{victim}'s answers")
        written = [r.id for r in load.answered(victim)]
        wait_until(lambda: all_stored(fleet_store, written), SETTLE_S, "its rows written")

        fleet.replicas[victim].process.send_signal(signal.SIGKILL)
        fleet.replicas[victim].process.wait(10)
        killed_at = load.elapsed()
        fleet.replicas.restart(victim, timeout=SETTLE_S)
        wait_until(lambda: fleet.balancer.server_states()[victim] == "UP", SETTLE_S, f"{victim} UP")
        answers = len(load.answered(victim))
        wait_until(lambda: len(load.answered(victim)) >= answers + 3, SETTLE_S, "its answers")
    finally:
        load.stop()
        requests = load.join()
    answered = [r for r in requests if r.status == 200]
    assert any(r.sent > killed_at and r.replica != victim for r in answered)

    # Feedback through HAProxy on the killed replica's predictions: four labels in round
    # robin reach every replica, the restarted one included.
    with httpx.Client(base_url=fleet.balancer.url, timeout=30) as client:
        for i in written[:4]:
            res = client.post("/v1/feedback", json={"id": i, "label": "Trout"})
            assert res.status_code == 200, res.text

    # What the victim had written before the kill stays; every other answer (the other
    # replicas', and the restarted victim's) reaches the store. Only rows the victim still
    # held in memory when it was killed may be missing.
    assert set(made_by(fleet_store, written).values()) == {victim}
    others = [r.id for r in answered if r.replica != victim or r.sent > killed_at]
    wait_until(lambda: all_stored(fleet_store, others), SETTLE_S, "every other row stored")
    with psycopg.connect(fleet_store) as conn:
        twice = conn.execute("SELECT id FROM predictions GROUP BY id HAVING count(*) > 1")
        assert twice.fetchall() == []


def test_a_killed_replica_is_routed_around_and_its_flushed_rows_stay(
    fleet: Fleet, fleet_store: str
) -> None:
    victim = fleet.replicas["replica-3"]
    with httpx.Client(base_url=fleet.balancer.url, timeout=30) as client:
        ids = predict(client, 6, seed=200)
        settled_summary(fleet.balancer.url, fleet_store)  # every row flushed
        flushed = [i for i, r in made_by(fleet_store, ids).items() if r == "replica-3"]
        assert flushed

        victim.process.send_signal(signal.SIGKILL)
        victim.process.wait(10)
        # Whether or not the health check has noticed yet, every request is answered: a
        # refused connection is sent again to another replica.
        after_kill = predict(client, 6, seed=300)
        wait_until(
            lambda: fleet.balancer.server_states()["replica-3"].startswith("DOWN"),
            SETTLE_S,
            "haproxy's health check to mark replica-3 DOWN",
        )
        after_down = predict(client, 6, seed=400)
        for i in flushed:  # feedback on the killed replica's predictions still lands
            assert client.post("/v1/feedback", json={"id": i, "label": "Trout"}).status_code == 200

    answered = after_kill + after_down
    makers = wait_until(lambda: all_stored(fleet_store, answered), SETTLE_S, "every row stored")
    assert set(makers.values()) == {"replica-1", "replica-2"}
    assert set(made_by(fleet_store, flushed).values()) == {"replica-3"}
