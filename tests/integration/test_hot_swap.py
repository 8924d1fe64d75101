"""Hot swap in a real server under concurrent load: no request fails, each answer names the
model that gave it; SIGHUP reloads; `fisheye admin` drives it."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import time
from pathlib import Path

import httpx
import pytest
from typer.testing import CliRunner

from fisheye.cli import app
from tests.helpers.bundles import TINY_NAME, make_bundle
from tests.helpers.photos import encode, photo
from tests.helpers.server import fisheye_command, run_server

pytestmark = pytest.mark.integration
TOKEN = "swap-test-token"
SECOND_NAME = "tiny-test-b"


@pytest.fixture(scope="module")
def second_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_bundle(tmp_path_factory.mktemp("second") / "bundle", seed=1, name=SECOND_NAME)


class Load:
    """Closed-loop clients posting photos until stopped; every answer is kept."""

    def __init__(self, url: str, clients: int = 4) -> None:
        self.url = url
        self.stop = threading.Event()
        self.answers: list[tuple[int, str | None]] = []
        self.errors: list[str] = []
        self.photos = [encode(photo(i), "PNG") for i in range(8)]
        self.threads = [threading.Thread(target=self._run, args=(i,)) for i in range(clients)]

    def _run(self, seed: int) -> None:
        with httpx.Client(base_url=self.url, timeout=30) as client:
            i = seed
            while not self.stop.is_set():
                data = self.photos[i % len(self.photos)]
                i += 1
                try:
                    res = client.post("/v1/predict", files={"file": ("p.png", data)})
                except httpx.HTTPError as exc:
                    self.errors.append(f"{type(exc).__name__}: {exc}")
                    continue
                name = res.json()["model"]["name"] if res.status_code == 200 else None
                self.answers.append((res.status_code, name))

    def __enter__(self) -> Load:
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(30)

    def since(self, n: int) -> set[str | None]:
        return {name for _, name in self.answers[n:]}


def _admin(url: str, method: str, path: str, body=None) -> httpx.Response:
    headers = {"Authorization": f"Bearer {TOKEN}"}
    return httpx.request(method, f"{url}/v1/admin/{path}", json=body, headers=headers, timeout=120)


def _wait_for(condition, timeout: float = 60.0) -> bool:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True


def test_swaps_under_concurrent_load_fail_no_request(
    tiny_bundle: Path, second_bundle: Path, tmp_path: Path
) -> None:
    env = {"FISHEYE_ADMIN_TOKEN": TOKEN, "FISHEYE_MODEL_WORKERS": "1"}
    with run_server(tiny_bundle, tmp_path, **env) as server, Load(server.url) as load:
        assert _wait_for(lambda: len(load.answers) >= 20), server.log_tail()
        for target, name in ((second_bundle, SECOND_NAME), (tiny_bundle, TINY_NAME)) * 2:
            res = _admin(server.url, "POST", "model", {"model": str(target)})
            assert res.status_code == 200, res.text
            assert res.json()["live"]["name"] == name
            mark = len(load.answers)
            # Soon after the switch every new request is answered by the new model.
            assert _wait_for(lambda m=mark: len(load.answers) >= m + 20), server.log_tail()
            later = len(load.answers) - 5
            assert load.since(later) == {name}, load.answers[later:]
        # A bad bundle under load: refused, and the live model goes on answering.
        res = _admin(server.url, "POST", "model", {"model": str(tmp_path / "missing")})
        assert res.status_code == 422 and res.json()["error"] == "bundle_invalid"

        # SIGHUP reloads the configured model (the first one) beside the live one.
        _admin(server.url, "POST", "model", {"model": str(second_bundle)})
        server.process.send_signal(signal.SIGHUP)

        def reloaded() -> bool:
            changes = _admin(server.url, "GET", "status").json()["changes"]
            return any(c["action"] == "reload" and "error" not in c for c in changes)

        assert _wait_for(reloaded), server.log_tail()
        mark = len(load.answers)
        assert _wait_for(lambda: len(load.answers) >= mark + 20), server.log_tail()
        assert load.since(len(load.answers) - 5) == {TINY_NAME}

        # The admin CLI talks to the same endpoints with the token from the environment.
        cli_env = {**os.environ, "FISHEYE_ADMIN_TOKEN": TOKEN}
        out = subprocess.run(
            fisheye_command("admin", "status", "--url", server.url, "--json"),
            capture_output=True,
            text=True,
            env=cli_env,
            timeout=60,
        )
        assert out.returncode == 0, out.stderr
        assert json.loads(out.stdout)["live"]["name"] == TINY_NAME
        out = subprocess.run(
            fisheye_command("admin", "promote", "--url", server.url),
            capture_output=True,
            text=True,
            env=cli_env,
            timeout=60,
        )
        assert out.returncode == 1 and "no_challenger" in out.stderr
        runner = CliRunner()
        url = ["--url", server.url]
        for args, shown in (
            (["attach", str(second_bundle), "--mode", "shadow", "--share", "0.5"], SECOND_NAME),
            (["detach"], TINY_NAME),
            (["swap", str(second_bundle)], SECOND_NAME),
            (["rollback"], TINY_NAME),
            (["reload"], TINY_NAME),
        ):
            res = runner.invoke(app, ["admin", *args, *url], env=cli_env)
            assert res.exit_code == 0, res.output
            assert shown in res.output, res.output
        res = runner.invoke(app, ["admin", "status", *url], env={"FISHEYE_ADMIN_TOKEN": ""})
        assert res.exit_code == 2 and "FISHEYE_ADMIN_TOKEN" in res.output
    statuses = {status for status, _ in load.answers}
    assert not load.errors and statuses == {200}, (load.errors[:5], statuses)
    assert {name for _, name in load.answers} == {TINY_NAME, SECOND_NAME}
    assert len(load.answers) > 150
