"""Schemathesis: requests generated from the OpenAPI schema never get a 5xx.

Cases come from each operation's Hypothesis strategy (valid and invalid inputs), bounded by
`max_examples` per operation and mode and by an overall time budget.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error

from tests.helpers.server import Server, run_server

pytestmark = pytest.mark.integration

MAX_EXAMPLES = 20
TIME_BUDGET_S = 60.0
log = logging.getLogger(__name__)


@pytest.fixture(scope="module")
def server(tiny_bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    tmp = tmp_path_factory.mktemp("serving-schema")
    with run_server(tiny_bundle, tmp, FISHEYE_MAX_FILES="4") as srv:
        yield srv


def _fuzz(op, mode: GenerationMode, session: requests.Session, deadline: float, seen: list) -> None:
    """Send up to MAX_EXAMPLES generated cases for one operation and mode."""

    @given(case=op.as_strategy(generation_mode=mode))
    @settings(
        max_examples=MAX_EXAMPLES,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    def run(case) -> None:
        if time.monotonic() > deadline:
            return
        res = case.call_and_validate(session=session, checks=[not_a_server_error], timeout=30)
        seen.append((op.label, mode.value, res.status_code))

    # Unsatisfiable: e.g. no invalid request exists for a GET without parameters.
    with contextlib.suppress(Unsatisfiable):
        run()


def test_generated_requests_get_no_5xx(server: Server) -> None:
    schema = schemathesis.openapi.from_url(f"{server.url}/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    assert {op.path for op in operations} >= {"/v1/predict", "/v1/predict/batch", "/readyz"}
    deadline = time.monotonic() + TIME_BUDGET_S
    seen: list[tuple[str, str, int]] = []
    with requests.Session() as session:
        for op in operations:
            for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
                _fuzz(op, mode, session, deadline, seen)
    assert any(label == "POST /v1/predict" for label, _, _ in seen), seen
    counts = Counter(seen)
    log.info("schemathesis cases (operation, mode, status): %s", dict(counts))
    assert all(status < 500 for _, _, status in seen), counts
    assert requests.get(f"{server.url}/healthz", timeout=5).status_code == 200
