"""The provisioned Grafana dashboard, checked offline: it reads FishEye's metrics from the
provisioned Prometheus datasource and its panels fit the grid.

(The compose test evaluates every panel query on a Prometheus that scraped FishEye.)
"""

from __future__ import annotations

import json
import re

import yaml
from prometheus_client import CollectorRegistry

from fisheye.serving.metrics import Metrics
from tests.helpers.paths import DEPLOY

GRAFANA = DEPLOY / "grafana"
DASHBOARD = GRAFANA / "dashboards" / "fisheye.json"
SUFFIXES = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count"), "gauge": ("",)}


def dashboard() -> dict:
    return json.loads(DASHBOARD.read_text())


def exported_series() -> set[str]:
    """Every series name a FishEye server exports on /metrics."""
    registry = CollectorRegistry()
    Metrics(registry)
    names = set()
    for family in registry.collect():
        names |= {family.name + s for s in SUFFIXES.get(family.type, ("",))}
        names |= {sample.name for sample in family.samples}
    return names


def test_the_panels_query_the_provisioned_datasource() -> None:
    provisioned = yaml.safe_load((GRAFANA / "provisioning/datasources/prometheus.yml").read_text())
    uids = {ds["uid"] for ds in provisioned["datasources"] if ds["type"] == "prometheus"}
    panels = dashboard()["panels"]
    assert panels
    for panel in panels:
        assert panel["datasource"]["uid"] in uids, panel["title"]
        assert panel["targets"], f"panel {panel['title']!r} has no query"


def test_every_series_a_panel_reads_is_one_fisheye_exports() -> None:
    exported = exported_series()
    for panel in dashboard()["panels"]:
        for target in panel["targets"]:
            for name in re.findall(r"\bfisheye_\w+", target["expr"]):
                assert name in exported, f"panel {panel['title']!r} reads {name}, not exported"


def test_panels_have_unique_ids_and_do_not_overlap() -> None:
    panels = dashboard()["panels"]
    assert len({p["id"] for p in panels}) == len(panels)
    cells: dict[tuple[int, int], str] = {}
    for panel in panels:
        pos = panel["gridPos"]
        assert pos["x"] >= 0 and pos["x"] + pos["w"] <= 24, panel["title"]
        for x in range(pos["x"], pos["x"] + pos["w"]):
            for y in range(pos["y"], pos["y"] + pos["h"]):
                assert (x, y) not in cells, f"{panel['title']!r} overlaps {cells[(x, y)]!r}"
                cells[(x, y)] = panel["title"]
