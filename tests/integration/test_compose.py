"""docker-compose.yml brought up for real: Prometheus in its container scrapes FishEye in its.

Built from local images (the Debian base; Prometheus from Debian's package), since no image
registry is reachable here. Grafana's official image cannot be pulled here: its dashboard
is checked offline (tests/unit/test_dashboard.py) and its every query is evaluated below.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest

from tests.helpers.docker import (
    base_image,
    build_image,
    docker,
    replacing,
    report,
    require_compose,
)
from tests.helpers.paths import DEPLOY, REPO_ROOT, require_default_model, val_photos
from tests.helpers.server import free_port

PROMETHEUS_TAG = "fisheye-prometheus:debian"


def _wait(probe: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(httpx.HTTPError, ValueError, KeyError):
            result = probe()
            if result:
                return result
        time.sleep(1)
    raise AssertionError(f"timed out waiting for {what}")


@contextlib.contextmanager
def compose_stack(env: dict[str, str], *services: str) -> Iterator[list[str]]:
    """`docker compose up -d --build SERVICES` as a throwaway project; down -v afterwards."""
    cmd = ["compose", "-p", f"fisheye-test-{uuid.uuid4().hex[:8]}"]
    cmd += ["-f", str(REPO_ROOT / "docker-compose.yml")]
    with replacing(env.get("FISHEYE_IMAGE", "fisheye-serve:latest")):
        docker(*cmd, "up", "-d", "--build", *services, env=env, cwd=REPO_ROOT, timeout=1800)
    try:
        yield cmd
    except BaseException:
        logs = docker(*cmd, "logs", "--no-color", env=env, cwd=REPO_ROOT, check=False)
        print(logs.stdout[-5000:])
        raise
    finally:
        docker(*cmd, "down", "-v", "--remove-orphans", env=env, cwd=REPO_ROOT, check=False)


def test_prometheus_scrapes_fisheye_across_containers(pytestconfig: pytest.Config) -> None:
    require_compose()
    require_default_model()
    prometheus = build_image("prometheus-debian.Dockerfile", PROMETHEUS_TAG)
    api_port, prom_port = free_port(), free_port()
    env = {
        **os.environ,
        "FISHEYE_BASE_IMAGE": base_image(),
        "FISHEYE_IMAGE": "fisheye-serve:compose-test",
        "PROMETHEUS_IMAGE": PROMETHEUS_TAG,
        "FISHEYE_HOST_PORT": str(api_port),
        "PROMETHEUS_HOST_PORT": str(prom_port),
    }
    api, prom = f"http://127.0.0.1:{api_port}", f"http://127.0.0.1:{prom_port}"

    def query(expr: str) -> dict:
        r = httpx.get(f"{prom}/api/v1/query", params={"query": expr}, timeout=5)
        return r.json()

    with compose_stack(env, "api", "prometheus"):
        _wait(lambda: httpx.get(f"{api}/readyz", timeout=2).status_code == 200, 120, "FishEye")
        _, photo = val_photos(per_class=1)[0]
        r = httpx.post(f"{api}/v1/predict", files={"file": (photo.name, photo.read_bytes())})
        assert r.status_code == 200, r.text

        # Scraped from the api container by its service name, on the compose network.
        ready = _wait(
            lambda: query('fisheye_model_ready{job="fisheye"}')["data"]["result"],
            120,
            "Prometheus to scrape FishEye",
        )
        assert ready[0]["metric"]["instance"] == "api:8000"
        assert ready[0]["value"][1] == "1"
        served = _wait(
            lambda: query("sum(fisheye_predictions_total)")["data"]["result"],
            60,
            "the prediction counter",
        )
        assert float(served[0]["value"][1]) == 1.0

        # Every Grafana panel's query is valid PromQL on this Prometheus.
        dashboard = json.loads((DEPLOY / "grafana/dashboards/fisheye.json").read_text())
        for panel in dashboard["panels"]:
            for target in panel["targets"]:
                answer = query(target["expr"])
                assert answer["status"] == "success", (panel["title"], answer)
        report(
            pytestconfig,
            f"\n[compose] Prometheus ({prometheus.tag}, {prometheus.size_mb:.0f} MB) "
            f"scraped api:8000: fisheye_predictions_total = {served[0]['value'][1]}",
        )


def _replicas_up(stats_url: str) -> list[str]:
    """The replica slots HAProxy has UP (from its stats CSV)."""
    text = httpx.get(f"{stats_url}/stats;csv", timeout=5).text.lstrip("# ")
    rows = csv.DictReader(io.StringIO(text))
    return [
        r["svname"]
        for r in rows
        if r["pxname"] == "fisheye" and r["svname"] != "BACKEND" and r["status"] == "UP"
    ]


def test_the_fleet_profile_serves_through_haproxy_into_one_store(
    pytestconfig: pytest.Config,
) -> None:
    """`docker compose --profile fleet`: 3 replicas behind HAProxy, one PostgreSQL store,
    each replica scraped by Prometheus; feedback lands on any replica."""
    require_compose()
    require_default_model()
    build_image("prometheus-debian.Dockerfile", PROMETHEUS_TAG)
    lb_port, stats_port, prom_port = free_port(), free_port(), free_port()
    env = {
        **os.environ,
        "FISHEYE_BASE_IMAGE": base_image(),
        "FISHEYE_IMAGE": "fisheye-serve:compose-test",
        "PROMETHEUS_IMAGE": PROMETHEUS_TAG,
        "FISHEYE_REPLICAS": "3",
        "FISHEYE_LB_HOST_PORT": str(lb_port),
        "HAPROXY_STATS_HOST_PORT": str(stats_port),
        "PROMETHEUS_HOST_PORT": str(prom_port),
        "POSTGRES_PASSWORD": uuid.uuid4().hex,
        "COMPOSE_PROFILES": "fleet",
    }
    lb, stats = f"http://127.0.0.1:{lb_port}", f"http://127.0.0.1:{stats_port}"
    prom = f"http://127.0.0.1:{prom_port}"

    with compose_stack(env, "replica", "balancer", "postgres", "prometheus"):
        _wait(lambda: len(_replicas_up(stats)) == 3, 180, "HAProxy to see 3 replicas up")
        photos = [p for _, p in val_photos(per_class=2)]
        ids = []
        with httpx.Client(base_url=lb, timeout=30) as client:
            for photo in photos:
                r = client.post("/v1/predict", files={"file": (photo.name, photo.read_bytes())})
                assert r.status_code == 200, r.text
                ids.append(r.json()["id"])

            def summary_counts_all() -> dict | None:
                s = client.get("/v1/monitoring/summary").json()
                return s if s["predictions"] == len(ids) else None

            summary = _wait(summary_counts_all, 60, "every prediction in the store")
            # Round robin: every replica made some, and the one store holds them all.
            assert len(summary["replicas"]) == 3, summary["replicas"]
            assert sum(summary["replicas"].values()) == len(ids)
            for i in ids:
                r = client.post("/v1/feedback", json={"id": i, "label": "Trout"})
                assert r.status_code == 200, r.text
            labelled = _wait(
                lambda: (
                    client.get("/v1/monitoring/summary").json()["feedback"]["count"] == len(ids)
                ),
                60,
                "the feedback in the store",
            )
            assert labelled

        def replica_targets_up() -> list | None:
            targets = httpx.get(f"{prom}/api/v1/targets", timeout=5).json()["data"]
            up = [
                t
                for t in targets["activeTargets"]
                if t["labels"]["instance"] != "api:8000" and t["health"] == "up"
            ]
            return up if len(up) == 3 else None

        _wait(replica_targets_up, 120, "Prometheus to scrape the 3 replicas")
        report(
            pytestconfig,
            f"\n[compose fleet] 3 replicas behind HAProxy: {len(ids)} predictions in one "
            f"store {summary['replicas']}, {len(ids)} feedback accepted; Prometheus scraped 3",
        )
