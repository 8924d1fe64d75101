"""Every answered prediction reaches the log while feedback is written at the same time:
feedback goes through the log's one writer, and a lock held by another process delays rows
instead of dropping them."""

from __future__ import annotations

import random
import sqlite3
import threading
import time
from collections import Counter, defaultdict
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from fisheye.monitoring.prediction_log import (
    FeedbackConflictError,
    FeedbackError,
    PredictionLog,
    PredictionRow,
    StoreError,
)
from fisheye.monitoring.prediction_log.queries import MAX_CORRECTIONS_PER_PREDICTION
from fisheye.serving.app import create_app
from fisheye.serving.settings import ServeSettings
from tests.helpers.paths import FISH_CLASSES
from tests.helpers.photos import encode, photo

LABELS = ["Trout", "Shrimp", "Sea Bass"]


def _row(i: int, label: str = "Trout") -> PredictionRow:
    return PredictionRow(
        id=f"id-{i}",
        ts=time.time(),
        model_version="v1",
        backend="onnx",
        label=label,
        confidence=0.9,
        ood_score=1.0,
        in_distribution=True,
        latency_ms=5.0,
        sha256="cd" * 32,
    )


@pytest.fixture
def plog(tmp_path: Path):
    log = PredictionLog(tmp_path / "log.sqlite", linger_s=0.001)
    log.start()
    yield log
    log.stop()


def _logged_ids(path: Path) -> set[str]:
    with sqlite3.connect(path) as conn:
        return {r[0] for r in conn.execute("SELECT id FROM predictions")}


def test_concurrent_feedback_never_costs_a_prediction_row(plog: PredictionLog) -> None:
    """16 feedback writers on the predictions as they are recorded, readers summarising."""
    n = 600
    recorded: list[str] = []
    answers: dict[str, list[tuple[str, str]]] = defaultdict(list)  # id -> (sent, outcome)
    lock = threading.Lock()
    done = threading.Event()

    def predictions() -> None:
        for i in range(n):
            plog.record(_row(i, LABELS[i % 3]))
            with lock:
                recorded.append(f"id-{i}")
        done.set()

    def feedback(seed: int) -> Counter[str]:
        rng = random.Random(seed)
        outcomes: Counter[str] = Counter()
        while not done.is_set() or outcomes.total() < 40:
            with lock:
                if not recorded:
                    continue
                pid = recorded[-1 - min(len(recorded) - 1, int(rng.expovariate(0.2)))]
            label = rng.choice(LABELS)
            try:
                result = plog.add_feedback(pid, label)
                outcome = "new" if result["new"] else "same"
            except FeedbackConflictError as exc:
                assert exc.recorded["label"] != label
                outcome = "conflict"
            except FeedbackError:  # an id recorded before this call is always found
                outcome = "unknown"
            with lock:
                answers[pid].append((label, outcome))
            outcomes[outcome] += 1
        return outcomes

    def summaries() -> None:
        while not done.is_set():
            plog.store.summary(0.0)  # a reader on its own connection, as the routes do

    with ThreadPoolExecutor(18) as pool:
        readers = pool.submit(summaries)
        writers = [pool.submit(feedback, seed) for seed in range(16)]
        pool.submit(predictions).result()
        outcomes = sum((w.result() for w in writers), Counter())
        readers.result()
    assert plog.flush(timeout=30)
    assert plog.lost == 0
    assert _logged_ids(plog.path) == {f"id-{i}" for i in range(n)}
    assert outcomes["unknown"] == 0 and outcomes["new"] > 0
    with sqlite3.connect(plog.path) as conn:
        on_record = dict(conn.execute("SELECT id, label FROM feedback"))
        per_id = Counter(r[0] for r in conn.execute("SELECT id FROM feedback_corrections"))
        totals = conn.execute("SELECT n FROM feedback_totals").fetchone()[0]
    # First write wins: one new answer per id, and every later answer agrees with it.
    for pid, sent in answers.items():
        assert [o for _, o in sent].count("new") == 1, pid
        first = on_record[pid]
        for label, outcome in sent:
            assert outcome == ("same" if label == first else "conflict") or outcome == "new"
    assert totals == len(on_record) == outcomes["new"]
    assert max(per_id.values(), default=0) <= MAX_CORRECTIONS_PER_PREDICTION


def test_a_lock_held_by_another_process_now_and_then_loses_nothing(
    plog: PredictionLog,
) -> None:
    """Another connection takes the write lock again and again (longer than SQLite's busy
    timeout): rows and feedback wait for it, none is dropped."""
    stop = threading.Event()

    def hog() -> None:
        conn = sqlite3.connect(plog.path, timeout=30, isolation_level=None)
        while not stop.is_set():
            conn.execute("BEGIN IMMEDIATE")
            stop.wait(0.3)
            conn.execute("COMMIT")
            time.sleep(0.05)
        conn.close()

    plog.record(_row(-1))
    assert plog.flush()
    thread = threading.Thread(target=hog)
    thread.start()
    try:
        for i in range(200):
            plog.record(_row(i))
            if i % 50 == 0:
                assert plog.add_feedback(f"id-{i}", "Trout")["new"]
    finally:
        stop.set()
        thread.join()
    assert plog.flush(timeout=30)
    assert plog.lost == 0
    assert len(_logged_ids(plog.path)) == 201


def test_feedback_waits_for_the_writer_in_order(plog: PredictionLog) -> None:
    """A prediction recorded just before its feedback is found, with no flush in between."""
    for i in range(50):
        plog.record(_row(i, "Shrimp"))
        assert plog.add_feedback(f"id-{i}", "Shrimp")["correct"]
    with pytest.raises(FeedbackError):
        plog.add_feedback("id-never", "Shrimp")


def test_feedback_on_a_stopped_log_is_a_store_error(tmp_path: Path) -> None:
    log = PredictionLog(tmp_path / "log.sqlite")
    with pytest.raises(StoreError, match="not running"):
        log.add_feedback("id-0", "Trout")


def test_the_server_logs_every_answered_prediction_under_feedback_load(
    tmp_path: Path, tiny_bundle: Path
) -> None:
    """Predict and feedback clients at once over HTTP; after shutdown every answered
    prediction is in the log, and no feedback was refused for a lock."""
    db = tmp_path / "log.db"
    settings = ServeSettings(model=tiny_bundle, threads=1, model_workers=1, prediction_db=db)
    answered: list[str] = []
    statuses: Counter[int] = Counter()
    lock = threading.Lock()
    with TestClient(create_app(settings)) as client:
        state = client.app.state.serving  # type: ignore[attr-defined]
        state.wait_loaded(60)
        assert state.ready, state.load_error
        body = encode(photo(3), "PNG")

        def predict(k: int) -> None:
            for _ in range(25):
                res = client.post("/v1/predict", files={"file": (f"{k}.png", body)})
                assert res.status_code == 200, res.text
                with lock:
                    answered.append(res.json()["id"])

        def feedback(seed: int) -> None:
            rng = random.Random(seed)
            for _ in range(20):
                with lock:
                    pid = answered[-1 - rng.randrange(min(len(answered), 5))] if answered else None
                if pid is None:
                    time.sleep(0.005)
                    continue
                label = rng.choice(FISH_CLASSES)
                res = client.post("/v1/feedback", json={"id": pid, "label": label})
                with lock:
                    statuses[res.status_code] += 1

        with ThreadPoolExecutor(12) as pool:
            jobs = [pool.submit(predict, k) for k in range(4)]
            jobs += [pool.submit(feedback, seed) for seed in range(8)]
            for job in jobs:
                job.result()
    assert len(answered) == 100
    assert set(statuses) <= {200, 409}, statuses  # never 503 (lock) nor 404 (not yet written)
    assert _logged_ids(db) >= set(answered)
