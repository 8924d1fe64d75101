"""The photo archive in a real server: out-of-distribution photos are kept and named by their
rows, a sample rate of 0 keeps no other photo, feedback keeps the photo of a recent
prediction; and a server left as it comes keeps none."""

from __future__ import annotations

import hashlib
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from fisheye.monitoring.photo_archive import LocalArchive
from tests.helpers.photos import synthetic_photos
from tests.helpers.server import Server, run_server

pytestmark = pytest.mark.integration


def _metric(server: Server, name: str, labels: str = "") -> float:
    for line in httpx.get(f"{server.url}/metrics", timeout=5).text.splitlines():
        if line.startswith(f"{name}{labels} "):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def _wait(check, timeout: float = 30.0):
    """`check()` once it is truthy (or its last value after `timeout`: a safety net only)."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(0.2)


def _rows(db: Path) -> dict[str, tuple[str, str | None, int | None]]:
    """id -> (sha256, photo_sha256, in_distribution) of every logged prediction."""
    with sqlite3.connect(db, timeout=5) as conn:
        return {
            r[0]: (r[1], r[2], r[3])
            for r in conn.execute(
                "SELECT id, sha256, photo_sha256, in_distribution FROM predictions"
            )
        }


@pytest.fixture(scope="module")
def archiving(
    monitored_bundle: Path, tmp_path_factory: pytest.TempPathFactory, synthetic_dataset: Path
) -> Iterator[tuple[Server, Path, LocalArchive, list[Path]]]:
    """A server that keeps out-of-distribution photos (about half of them here) and no random
    sample, never answers "not sure", and looks for feedback every 2 s."""
    tmp = tmp_path_factory.mktemp("archiving-server")
    db = tmp / "log.sqlite"
    env = {
        "FISHEYE_PREDICTION_DB": str(db),
        "FISHEYE_ARCHIVE": str(tmp / "archive"),
        "FISHEYE_ARCHIVE_SAMPLE_RATE": "0",
        "FISHEYE_ABSTAIN_BELOW": "0",
        "FISHEYE_OOD_FALSE_ALARM_RATE": "0.5",
    }
    with run_server(monitored_bundle, tmp, **env) as srv:
        yield srv, db, LocalArchive(tmp / "archive"), synthetic_photos(synthetic_dataset)


def test_ood_photos_are_kept_and_named_and_no_other_photo_is(archiving) -> None:
    server, db, archive, photos = archiving
    sent: dict[str, bytes] = {}
    with httpx.Client(base_url=server.url, timeout=30) as client:
        for p in photos[:6]:
            r = client.post("/v1/predict", files={"file": (p.name, p.read_bytes())})
            assert r.status_code == 200, r.text
            sent[r.json()["id"]] = p.read_bytes()
        r = client.post(
            "/v1/predict/batch", files=[("files", (p.name, p.read_bytes())) for p in photos[6:14]]
        )
        assert r.status_code == 200
        for item, p in zip(r.json()["results"], photos[6:14], strict=True):
            sent[item["id"]] = p.read_bytes()
    rows = _wait(lambda: (found := _rows(db)) and set(sent) <= set(found) and found)
    assert rows, server.log_tail()
    ood = {pid for pid in sent if rows[pid][2] == 0}
    assert ood and ood != set(sent)  # both verdicts, so the test shows each way
    for pid, data in sent.items():
        sha, photo_sha, _ = rows[pid]
        assert sha == hashlib.sha256(data).hexdigest()
        assert photo_sha == (sha if pid in ood else None)
    expected = {rows[pid][0] for pid in ood}
    assert _wait(lambda: {p.sha256 for p in archive.photos()} == expected), server.log_tail()
    for sha in expected:
        assert hashlib.sha256(archive.get(sha)).hexdigest() == sha
    assert _metric(server, "fisheye_archive_photos_total", '{reason="ood"}') == len(ood)
    assert _metric(server, "fisheye_archive_photos_total", '{reason="sample"}') == 0
    assert _metric(server, "fisheye_archive_photos_total", '{reason="unsure"}') == 0
    assert _metric(server, "fisheye_archive_written_bytes_total") > 0
    assert _metric(server, "fisheye_archive_errors_total", '{kind="write"}') == 0


def test_feedback_on_a_recent_prediction_keeps_its_photo(archiving) -> None:
    server, db, archive, photos = archiving
    with httpx.Client(base_url=server.url, timeout=30) as client:
        answers = []
        for p in photos[20:32]:
            r = client.post("/v1/predict", files={"file": (p.name, p.read_bytes())})
            assert r.status_code == 200
            answers.append((r.json(), p.read_bytes()))
        plain = [(a, data) for a, data in answers if a["in_distribution"]]
        assert plain, "no in-distribution answer to give feedback on"
        answer, data = plain[0]
        sha = hashlib.sha256(data).hexdigest()
        assert sha not in {p.sha256 for p in archive.photos()}
        label = client.get("/v1/model").json()["classes"][0]
        r = client.post("/v1/feedback", json={"id": answer["id"], "label": label})
        assert r.status_code == 200, r.text

    def named() -> bool:
        row = _rows(db).get(answer["id"])
        return row is not None and row[1] == sha

    assert _wait(named), server.log_tail()
    assert archive.get(sha) == data
    assert _metric(server, "fisheye_archive_photos_total", '{reason="feedback"}') == 1
    # The other in-distribution answers got no feedback: their photos are not kept.
    rows = _rows(db)
    for other, _ in plain[1:]:
        assert rows[other["id"]][1] is None


def test_a_server_as_it_comes_keeps_no_photo(
    monitored_bundle: Path, tmp_path: Path, synthetic_dataset: Path
) -> None:
    db = tmp_path / "log.sqlite"
    env = {"FISHEYE_PREDICTION_DB": str(db), "FISHEYE_OOD_FALSE_ALARM_RATE": "0.5"}
    with run_server(monitored_bundle, tmp_path, **env) as server:
        with httpx.Client(base_url=server.url, timeout=30) as client:
            ids = []
            for p in synthetic_photos(synthetic_dataset)[:6]:
                r = client.post("/v1/predict", files={"file": (p.name, p.read_bytes())})
                ids.append(r.json()["id"])
            label = client.get("/v1/model").json()["classes"][0]
            assert client.post("/v1/feedback", json={"id": ids[0], "label": label}).is_success
        rows = _wait(lambda: (found := _rows(db)) and len(found) == 6 and found)
        assert rows and all(photo is None for _, photo, _ in rows.values())
        assert "fisheye_archive_photos_total{" not in httpx.get(f"{server.url}/metrics").text
    # Nothing but the log and the server's own output was written.
    written = {p.name for p in tmp_path.rglob("*")}
    assert written <= {"log.sqlite", "log.sqlite-wal", "log.sqlite-shm", server.log_path.name}
