"""The prediction log on either store (SQLite for one machine, PostgreSQL for a fleet): the
same figures from the same rows; and, on a real PostgreSQL, replicas sharing one store,
feedback through any replica, and schema migrations."""

from __future__ import annotations

import sqlite3
import threading
import time
from pathlib import Path

import pytest

from fisheye.monitoring.prediction_log import (
    FeedbackConflictError,
    FeedbackError,
    LogStore,
    PredictionLog,
    PredictionRow,
    ShadowRow,
    Spool,
    SQLiteStore,
    StoreError,
    StoreUnavailableError,
    open_fleet_store,
    open_store,
)
from fisheye.monitoring.prediction_log.queries import MAX_CORRECTIONS_PER_PREDICTION
from fisheye.monitoring.report import write_report

psycopg = pytest.importorskip("psycopg")

from fisheye.monitoring.prediction_log.pg_schema import (  # noqa: E402
    MIGRATIONS,
    SCHEMA_VERSION,
    migrate,
    schema_versions,
)
from fisheye.monitoring.prediction_log.postgres_store import PostgresStore  # noqa: E402


def _row(i: int, label: str = "Trout", ts: float | None = None, ood: bool = False) -> PredictionRow:
    return PredictionRow(
        id=f"id-{i}",
        ts=time.time() if ts is None else ts,
        model_version="v1",
        backend="onnx",
        label=label,
        confidence=0.9,
        ood_score=99.0 if ood else 1.0,
        in_distribution=not ood,
        latency_ms=10.0 + i,
        sha256="ab" * 32,
    )


def _db(request: pytest.FixtureRequest, tmp_path: Path) -> Path | str:
    if request.param == "sqlite":
        return tmp_path / "log.sqlite"
    return request.getfixturevalue("postgres_url")


@pytest.fixture(params=["sqlite", "postgres"])
def db(request: pytest.FixtureRequest, tmp_path: Path) -> Path | str:
    """Where a log lives: a SQLite file, or an empty PostgreSQL database."""
    return _db(request, tmp_path)


@pytest.fixture
def plog(db: Path | str):
    log = PredictionLog(open_store(db, replica="replica-a"), linger_s=0.001)
    log.start()
    yield log
    log.stop()


def _query(log: PredictionLog | LogStore, sql: str) -> list[tuple]:
    """Rows of `sql` (no parameters) from the log's own database, SQLite or PostgreSQL."""
    store = log.store if isinstance(log, PredictionLog) else log
    if isinstance(store, SQLiteStore):
        with sqlite3.connect(store.path) as conn:
            return conn.execute(sql).fetchall()
    assert isinstance(store, PostgresStore)
    with psycopg.connect(store.url) as conn:
        return [tuple(r) for r in conn.execute(sql).fetchall()]


# -- the same behaviour on both stores ---------------------------------------------------------
def test_rows_are_written_and_summarised(plog: PredictionLog) -> None:
    for i in range(10):
        plog.record(_row(i, "Trout" if i < 6 else "Shrimp", ood=i == 9))
    plog.record_drift(
        {"computed_at": time.time(), "n": 50, "score": 0.2, "p_value": 0.001, "drift": True}
    )
    assert plog.flush()
    assert _query(plog, "SELECT COUNT(*) FROM predictions") == [(10,)]
    fb = plog.add_feedback("id-0", "Trout")
    assert fb["correct"] and fb["accuracy"] == 1.0
    fb = plog.add_feedback("id-7", "Trout")  # predicted Shrimp
    assert not fb["correct"] and fb["accuracy"] == 0.5 and fb["feedback_count"] == 2
    with pytest.raises(FeedbackError):
        plog.add_feedback("nope", "Trout")
    s = plog.summary(3600)
    assert s["predictions"] == 10 and s["counts"] == {"Shrimp": 4, "Trout": 6}
    assert s["ood_rate"] == pytest.approx(0.1) and s["feedback"]["accuracy"] == 0.5
    assert s["estimated_accuracy"] == pytest.approx(0.9)
    assert s["latency_ms"]["p50"] == pytest.approx(14.5, rel=0.05)
    assert s["drift"]["tests"] == 1 and s["drift"]["latest"]["drift"] is True


def test_both_stores_give_the_same_figures(tmp_path: Path, postgres_url: str) -> None:
    """The same rows, feedback and drift tests: the same summary from SQLite and PostgreSQL."""
    summaries = []
    now = time.time()
    for db in (tmp_path / "same.sqlite", postgres_url):
        log = PredictionLog(open_store(db, replica="one"))
        log.start()
        try:
            for i in range(40):
                label = ["Trout", "Shrimp", "Sea Bass"][i % 3]
                log.record(_row(i, label, ts=now - 30 * i, ood=i % 7 == 0))
            for p in (0.5, 0.03):
                log.record_drift(
                    {"computed_at": now, "n": 80, "score": 0.1, "p_value": p, "drift": p < 0.05}
                )
            log.record_drift(
                {"computed_at": now, "n": 80, "score": 0.3, "p_value": 0.001, "drift": True},
                role="challenger",
                model_version="v2",
            )
            for i in range(0, 40, 4):
                log.add_feedback(f"id-{i}", "Trout")
            summaries.append(log.summary(3600))
        finally:
            log.stop()
    sqlite_summary, pg_summary = summaries
    assert pg_summary.pop("replicas") == {"one": sqlite_summary["predictions"]}
    assert pg_summary == sqlite_summary


def test_feedback_first_write_wins_and_corrections_are_audited(plog: PredictionLog) -> None:
    plog.record(_row(1, "Shrimp"))  # not flushed: feedback finds queued predictions too
    first = plog.add_feedback("id-1", "Shrimp")
    assert first["new"] and first["correct"] and first["feedback_count"] == 1
    again = plog.add_feedback("id-1", "Shrimp")
    assert not again["new"] and again["feedback_count"] == 1
    with pytest.raises(FeedbackConflictError) as conflict:
        plog.add_feedback("id-1", "Trout")
    assert conflict.value.recorded["label"] == "Shrimp"
    assert _query(plog, "SELECT label FROM feedback WHERE id = 'id-1'") == [("Shrimp",)]
    assert _query(plog, "SELECT id, label, recorded FROM feedback_corrections") == [
        ("id-1", "Trout", "Shrimp")
    ]
    assert plog.summary(3600)["feedback"] == {"count": 1, "accuracy": 1.0}


def test_repeated_conflicting_feedback_keeps_only_the_latest_corrections(
    plog: PredictionLog,
) -> None:
    plog.record(_row(1, "Salmon"))
    plog.add_feedback("id-1", "Salmon")
    labels = ["Trout", "Shrimp", "Tuna"]
    for i in range(2 * MAX_CORRECTIONS_PER_PREDICTION + 1):
        with pytest.raises(FeedbackConflictError):
            plog.add_feedback("id-1", labels[i % 3])
    rows = _query(plog, "SELECT label FROM feedback_corrections ORDER BY ts")
    assert len(rows) == MAX_CORRECTIONS_PER_PREDICTION
    assert rows[-1] == (labels[(2 * MAX_CORRECTIONS_PER_PREDICTION) % 3],)


@pytest.mark.parametrize("max_rows", [4, 1000])
def test_retention_by_age_and_rows(db: Path | str, max_rows: int) -> None:
    store = open_store(db, replica="replica-a")
    try:
        old = time.time() - 40 * 86400
        rows = [_row(i, ts=old if i < 3 else time.time() - i) for i in range(10)]
        store.write(rows, [], [])
        for row in (rows[0], rows[5]):
            store.add_feedback(row.id, "Trout", row.label, row.ts)
        assert store.retain(retention_days=30, max_rows=max_rows) == 10 - min(max_rows, 7)
        left = [r[0] for r in _query(store, "SELECT id FROM predictions ORDER BY ts DESC")]
        assert left == [f"id-{i}" for i in range(3, 10)][: min(max_rows, 7)]
        # Feedback on a deleted prediction goes with it, and the totals follow.
        assert _query(store, "SELECT id FROM feedback") == [("id-5",)]
        assert store.add_feedback("id-5", "Trout", "Trout", rows[5].ts)[2:] == (1, 1)
    finally:
        store.close()


@pytest.mark.parametrize("window_s", [1e30, -1e30, float("inf"), float("-inf"), float("nan")])
def test_the_summary_holds_any_window_arithmetic(plog: PredictionLog, window_s: float) -> None:
    plog.record(_row(1))
    assert plog.summary(window_s)["predictions"] in (0, 1)


def test_report_from_either_store(plog: PredictionLog, db: Path | str, tmp_path: Path) -> None:
    for i in range(12):
        plog.record(_row(i, ["Trout", "Shrimp"][i % 2], ts=time.time() - 100 * i, ood=i % 5 == 0))
    plog.record_drift(
        {"computed_at": time.time(), "n": 50, "score": 0.01, "p_value": 0.5, "drift": False}
    )
    plog.add_feedback("id-2", "Trout")
    page = write_report(db, tmp_path / "report")
    names = {p.name for p in (tmp_path / "report").iterdir()}
    assert {"class_mix.png", "drift_p_values.png", "feedback_accuracy.png"} <= names
    assert "FishEye monitoring report" in page.read_text()


# -- a fleet on PostgreSQL ---------------------------------------------------------------------
@pytest.fixture
def fleet(postgres_url: str):
    """Two replicas' logs writing to one PostgreSQL database."""
    logs = [PredictionLog(open_store(postgres_url, replica=name)) for name in ("pod-a", "pod-b")]
    for log in logs:
        log.start()
    yield logs
    for log in logs:
        log.stop()


def test_feedback_through_one_replica_finds_the_other_replicas_prediction(fleet) -> None:
    a, b = fleet
    for i in range(6):
        a.record(_row(i, "Trout"))
        b.record(_row(100 + i, "Shrimp"))
    # Each replica's feedback on the other's predictions, still queued there: it waits for
    # them (a store shared by replicas gives other replicas' rows a moment to arrive).
    assert b.add_feedback("id-0", "Trout")["correct"]
    assert not a.add_feedback("id-100", "Trout")["correct"]
    with pytest.raises(FeedbackConflictError):  # first feedback wins, whichever replica took it
        a.add_feedback("id-0", "Shrimp")
    with pytest.raises(FeedbackError):
        a.add_feedback("id-never", "Trout")
    fleet_view = b.summary(3600)
    assert fleet_view["predictions"] == 12 and fleet_view["counts"] == {"Shrimp": 6, "Trout": 6}
    assert fleet_view["replicas"] == {"pod-a": 6, "pod-b": 6}
    assert fleet_view["feedback"] == {"count": 2, "accuracy": 0.5}
    # Per replica: its own predictions, and the feedback on them (wherever it was given).
    only_a = b.summary(3600, replica="pod-a")
    assert only_a["counts"] == {"Trout": 6} and only_a["feedback"] == {"count": 1, "accuracy": 1.0}
    assert a.summary(3600) == fleet_view
    rows = _query(a, "SELECT id, replica, received_by FROM feedback ORDER BY id")
    assert rows == [("id-0", "pod-a", "pod-b"), ("id-100", "pod-b", "pod-a")]


def test_concurrent_replicas_lose_no_row(fleet) -> None:
    def record(log: PredictionLog, start: int) -> None:
        for i in range(start, start + 300):
            log.record(_row(i, "Trout" if i % 2 else "Shrimp"))

    threads = [
        threading.Thread(target=record, args=(log, k * 1000))
        for k, log in enumerate(fleet + fleet)  # two threads per replica
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(log.flush(timeout=30) for log in fleet)
    assert all(log.lost == 0 for log in fleet)
    assert _query(fleet[0], "SELECT COUNT(DISTINCT id) FROM predictions") == [(1200,)]
    assert fleet[0].summary(3600)["predictions"] == 1200


def test_a_row_written_twice_is_stored_and_counted_once(postgres_url: str) -> None:
    store = PostgresStore(postgres_url, replica="pod-a")
    try:
        rows = [_row(i) for i in range(5)]
        store.write(rows, [], [])
        store.write(rows[2:] + [_row(9)], [], [])  # a batch replayed after a lost answer
        assert store.summary(0)["predictions"] == 6
    finally:
        store.close()


def test_rows_wait_while_the_store_cannot_be_reached_and_arrive_after(
    postgres_server, postgres_url: str
) -> None:
    """A database that does not exist yet (as a store still starting): rows stay queued,
    none is lost, and they are written once it is there."""
    url = postgres_url.rsplit("/", 1)[0] + "/not_yet"
    log = PredictionLog(open_store(url, replica="pod-a"))
    log.start()
    try:
        for i in range(20):
            log.record(_row(i))
        assert not log.flush(timeout=0.5)
        assert log.degraded and "not_yet" in log.degraded
        with psycopg.connect(postgres_server.url, autocommit=True) as conn:
            conn.execute("CREATE DATABASE not_yet")
        assert log.flush(timeout=30)
        assert log.lost == 0 and log.summary(3600)["predictions"] == 20
        assert log.degraded is None
    finally:
        log.stop()


def test_a_lost_connection_is_reopened_and_no_row_is_lost(postgres_url: str) -> None:
    """The server ends the writer's connection (as a PostgreSQL restart or failover does)."""
    log = PredictionLog(open_store(postgres_url, replica="pod-a"))
    log.start()
    try:
        log.record(_row(0))
        assert log.flush()
        with psycopg.connect(postgres_url, autocommit=True) as conn:
            ended = conn.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE application_name = 'fisheye pod-a'"
            ).fetchall()
        assert ended == [(True,)]
        for i in range(1, 30):
            log.record(_row(i))
        assert log.add_feedback("id-3", "Trout")["correct"]
        assert log.flush(timeout=30)
        assert log.lost == 0 and log.summary(3600)["predictions"] == 30
    finally:
        log.stop()


def _wait_until(done, why: str, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s  # a safety net only: the store answers at once
    while not done():
        assert time.monotonic() < deadline, why
        time.sleep(0.05)


# -- the spool: rows kept on disk while the store is away ----------------------------------------
def test_the_spool_keeps_batches_in_order_within_its_bound(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "s.jsonl", max_bytes=2000)
    assert not spool.pending
    drift = {"computed_at": 1.0, "n": 5, "score": 0.1, "p_value": 0.5, "drift": False}
    shadow = ShadowRow("id-0", 1.0, "v2", "Trout", 0.8, None, None, 4.0, "Trout", True)
    assert spool.append(([_row(0), _row(1)], [drift], [shadow]))
    assert spool.append(([_row(2)], [], []))
    full = [_row(i) for i in range(3, 20)]
    assert not spool.append((full, [], []))  # past max_bytes: refused, the rest kept
    with open(spool.path, "ab") as f:
        f.write(b'{"p": [["torn')  # a replica killed while writing its last line
    batches = spool.batches()
    assert [[r.id for r in b[0]] for b in batches] == [["id-0", "id-1"], ["id-2"]]
    assert batches[0][0][0] == _row(0, ts=batches[0][0][0].ts)
    assert batches[0][1] == [drift] and batches[0][2] == [shadow]
    spool.keep_only(batches[1:])
    assert [[r.id for r in b[0]] for b in spool.batches()] == [["id-2"]]
    spool.keep_only([])
    assert not spool.pending


def test_rows_go_to_the_spool_while_the_store_is_away_and_are_replayed_once(
    postgres_server, postgres_url: str, tmp_path: Path
) -> None:
    url = postgres_url.rsplit("/", 1)[0] + "/away_then_back"
    spool = Spool(tmp_path / "spool.jsonl", max_bytes=1 << 20)
    log = PredictionLog(open_store(url, replica="pod-a"), spool=spool)
    log.start()
    try:
        for i in range(25):
            log.record(_row(i))
        assert log.flush()  # the writer is not held up: the rows are on disk
        assert spool.pending and log.degraded and log.lost == 0
        with pytest.raises(StoreError):  # feedback cannot be written now: it fails at once
            log.add_feedback("id-1", "Trout")
        with psycopg.connect(postgres_server.url, autocommit=True) as conn:
            conn.execute("CREATE DATABASE away_then_back")
        log.record(_row(25))
        _wait_until(lambda: not spool.pending, "the spool was not replayed")
        assert log.flush()
        assert log.summary(3600)["predictions"] == 26 and log.degraded is None
        assert log.add_feedback("id-1", "Trout")["new"]
    finally:
        log.stop()
    assert log.lost == 0


def test_a_replica_stopped_while_the_store_is_away_keeps_its_rows_for_the_next_start(
    postgres_server, postgres_url: str, tmp_path: Path
) -> None:
    """SIGTERM during an outage loses nothing: the rows stay in the spool, and the next
    start writes them; a batch both written and spooled is stored once."""
    url = postgres_url.rsplit("/", 1)[0] + "/down_at_stop"
    spool = Spool(tmp_path / "spool.jsonl", max_bytes=1 << 20)
    log = PredictionLog(open_store(url, replica="pod-a"), spool=spool)
    log.start()
    for i in range(10):
        log.record(_row(i))
    log.stop()
    assert log.lost == 0 and len(spool.batches()) >= 1
    with psycopg.connect(postgres_server.url, autocommit=True) as conn:
        conn.execute("CREATE DATABASE down_at_stop")
    store = open_store(url, replica="pod-a")
    store.write([_row(i) for i in range(5)], [], [])  # as if a replay had half-succeeded
    store.close()
    again = PredictionLog(open_store(url, replica="pod-a"), spool=spool)
    again.start()
    try:
        _wait_until(lambda: not spool.pending, "the spool was not replayed")
        assert again.summary(3600)["predictions"] == 10
    finally:
        again.stop()


# -- a store that stops answering: every wait is bounded ----------------------------------------
# A short timeout keeps these tests quick; each wait below has a generous safety net only.
TIMEOUT_S = 1.0


def _within(call, why: str, safety_net_s: float = 60.0):
    """`call()`'s result (or the exception it raised), asserting it returned at all: a call
    blocked on a frozen store would otherwise hang the test with the store frozen."""
    out: dict[str, object] = {}

    def run() -> None:
        try:
            out["result"] = call()
        except BaseException as exc:  # handed to the test
            out["error"] = exc

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(safety_net_s)
    assert not thread.is_alive(), why
    if "error" in out:
        raise out["error"]  # type: ignore[misc]
    return out["result"]


def _stored_once(log: PredictionLog, n: int) -> None:
    """The store holds `n` predictions, each once, and its rollups count each once."""
    assert _query(log, "SELECT COUNT(*), COUNT(DISTINCT id) FROM predictions") == [(n, n)]
    assert log.summary(3600)["predictions"] == n


def test_a_frozen_store_degrades_the_log_its_rows_are_spooled_and_then_stored_once(
    postgres_server, postgres_url: str, tmp_path: Path
) -> None:
    """The server stops (SIGSTOP) with the writer's connection open, for longer than the
    timeout: no error comes from it, yet the writer gives up on the batch, says degraded,
    spools the rows, and writes them once when the server runs again."""
    spool = Spool(tmp_path / "spool.jsonl", max_bytes=1 << 20)
    changes: list[bool] = []
    log = PredictionLog(
        open_store(postgres_url, replica="pod-a", timeout_s=TIMEOUT_S),
        spool=spool,
        linger_s=0.001,
        on_degraded=changes.append,
    )
    log.start()
    try:
        for i in range(5):
            log.record(_row(i))
        assert log.flush()
        with postgres_server.paused():
            for i in range(5, 30):
                log.record(_row(i))
            _wait_until(lambda: log.degraded is not None, "a frozen store never said degraded")
            assert "did not answer" in log.degraded
            for i in range(30, 40):  # rows answered while degraded go straight to the spool
                log.record(_row(i))
            assert log.flush(timeout=60)  # the writer is not held by the store
            assert spool.pending and log.lost == 0
        _wait_until(lambda: not spool.pending, "the spool was not replayed")
        assert log.flush()
        assert log.degraded is None and changes == [True, False]
        _stored_once(log, 40)
        assert log.add_feedback("id-7", "Trout")["new"]
    finally:
        log.stop()
    assert log.lost == 0


def test_a_replica_stopped_while_its_store_is_frozen_keeps_its_rows_for_the_next_start(
    postgres_server, postgres_url: str, tmp_path: Path
) -> None:
    """SIGTERM during a freeze: the stop does not wait for the store, the rows stay in the
    spool, and the next start stores them once."""
    spool = Spool(tmp_path / "spool.jsonl", max_bytes=1 << 20)
    log = PredictionLog(open_store(postgres_url, replica="pod-a", timeout_s=TIMEOUT_S), spool=spool)
    log.start()
    log.record(_row(0))
    assert log.flush()
    with postgres_server.paused():
        for i in range(1, 10):
            log.record(_row(i))
        _wait_until(lambda: log.degraded is not None, "a frozen store never said degraded")
        for i in range(10, 15):
            log.record(_row(i))
        writer = log._thread
        assert writer is not None
        _within(log.stop, "the stop waited for a frozen store")
        assert not writer.is_alive() and log.lost == 0 and spool.pending
    again = PredictionLog(open_store(postgres_url, replica="pod-a"), spool=spool)
    again.start()
    try:
        _wait_until(lambda: not spool.pending, "the spool was not replayed")
        _stored_once(again, 15)
    finally:
        again.stop()


def test_a_statement_held_up_by_a_lock_fails_at_the_timeout_and_the_rows_wait_in_the_spool(
    postgres_url: str, tmp_path: Path
) -> None:
    """The server answers, but the write waits for a lock another session holds: it fails
    at the timeout; rows are spooled and written once the lock is released."""
    spool = Spool(tmp_path / "spool.jsonl", max_bytes=1 << 20)
    log = PredictionLog(
        open_store(postgres_url, replica="pod-a", timeout_s=TIMEOUT_S), spool=spool, linger_s=0.001
    )
    log.start()
    try:
        log.record(_row(0))
        assert log.flush()
        with psycopg.connect(postgres_url) as blocker:
            blocker.execute("LOCK TABLE predictions IN ACCESS EXCLUSIVE MODE")
            for i in range(1, 20):
                log.record(_row(i))
            # The server cancels it (statement timeout), or, were it too busy to, this side
            # closes the connection a second later: either way the write fails.
            _wait_until(lambda: log.degraded is not None, "a held-up write never failed")
            assert log.flush(timeout=60) and spool.pending
            blocker.rollback()
        _wait_until(lambda: not spool.pending, "the spool was not replayed")
        assert log.flush() and log.degraded is None
        _stored_once(log, 20)
    finally:
        log.stop()
    assert log.lost == 0


class _AnswerLostOnce(PostgresStore):
    """A store whose first write commits but whose answer never arrives (the connection cut
    just after COMMIT was sent): the writer cannot tell it was written."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.writes = 0

    def write(self, predictions, drifts, shadows) -> None:
        super().write(predictions, drifts, shadows)
        self.writes += 1
        if self.writes == 1:
            raise StoreUnavailableError("the answer to COMMIT was lost")


def test_a_batch_whose_commit_went_unanswered_is_replayed_and_stored_once(
    postgres_url: str, tmp_path: Path
) -> None:
    spool = Spool(tmp_path / "spool.jsonl", max_bytes=1 << 20)
    changes: list[bool] = []
    store = _AnswerLostOnce(postgres_url, replica="pod-a", timeout_s=TIMEOUT_S)
    log = PredictionLog(store, spool=spool, on_degraded=changes.append)
    log.start()
    try:
        # One batch: predictions, a drift test and a shadow answer.
        now = time.time()
        log.record_drift(
            {"computed_at": now, "n": 50, "score": 0.1, "p_value": 0.4, "drift": False}
        )
        log.record_shadow(ShadowRow("id-3", now, "v2", "Trout", 0.8, 1.0, True, 4.0, "Trout", True))
        for i in range(10):
            log.record(_row(i))
        assert log.flush()
        _wait_until(lambda: not spool.pending, "the spool was not replayed")
        assert log.flush()
        assert store.writes >= 2 and changes == [True, False]  # written twice, kept once:
        _stored_once(log, 10)
        assert _query(log, "SELECT COUNT(*) FROM drift") == [(1,)]
        assert _query(log, "SELECT COUNT(*) FROM shadow") == [(1,)]
    finally:
        log.stop()


def test_feedback_and_the_summary_answer_while_the_store_is_frozen(
    postgres_server, postgres_url: str, tmp_path: Path
) -> None:
    """Neither waits for a frozen store: both fail with StoreError (the server: 503
    log_unavailable), and both work again once it runs."""
    spool = Spool(tmp_path / "spool.jsonl", max_bytes=1 << 20)
    log = PredictionLog(open_store(postgres_url, replica="pod-a", timeout_s=TIMEOUT_S), spool=spool)
    log.start()
    try:
        log.record(_row(0))
        assert log.summary(3600)["predictions"] == 1  # the read pool holds a connection now
        with postgres_server.paused():
            for _ in range(2):  # the pooled connection, then a new one
                with pytest.raises(StoreError):
                    _within(lambda: log.summary(3600), "the summary waited for a frozen store")
            with pytest.raises(StoreError):
                _within(
                    lambda: log.add_feedback("id-0", "Trout"),
                    "feedback waited for a frozen store",
                )
            log.record(_row(1))
        _wait_until(lambda: log.flush() and not spool.pending, "the spool was not replayed")
        assert log.add_feedback("id-0", "Trout")["new"]
        _stored_once(log, 2)
    finally:
        log.stop()


def test_the_fleet_drift_connection_fails_instead_of_waiting_on_a_frozen_store(
    postgres_server, postgres_url: str
) -> None:
    """The fleet drift leader's connection: a read on a frozen store fails (the lease goes
    with the connection), and the lease is taken again once the store runs."""
    fleet_store = open_fleet_store(postgres_url, replica="pod-a", timeout_s=TIMEOUT_S)
    try:
        assert fleet_store.try_lead()
        with postgres_server.paused():
            with pytest.raises(StoreError):
                _within(
                    lambda: fleet_store.latest_result(), "the fleet store waited for a frozen store"
                )
            assert not fleet_store.leading
        _wait_until(fleet_store.try_lead, "the lease was not taken again")
        assert fleet_store.latest_result() is None
    finally:
        fleet_store.close()


def test_every_connection_to_the_store_bounds_its_waits(postgres_url: str) -> None:
    """The writer's, the read pool's and the fleet store's connections: a statement timeout
    on the server, a connect timeout, TCP keepalives and a TCP user timeout."""
    store = PostgresStore(postgres_url, replica="pod-a", timeout_s=2.5)
    fleet_store = open_fleet_store(postgres_url, replica="pod-a", timeout_s=2.5)
    try:
        store.write([_row(0)], [], [])
        fleet_store.latest_result()
        with store._reading() as reader:
            conns = [store._writer, reader, fleet_store._conn]
            for conn in conns:
                assert conn is not None
                assert conn.execute("SHOW statement_timeout").fetchone() == ("2500ms",)
                params = conn.info.get_parameters()
                assert params["connect_timeout"] == "3" and params["keepalives"] == "1"
                assert int(params["tcp_user_timeout"]) > 2500
                assert {"keepalives_idle", "keepalives_interval", "keepalives_count"} <= set(params)
    finally:
        store.close()
        fleet_store.close()


# -- migrations ------------------------------------------------------------------------------
def test_migrations_applied_twice_change_nothing(postgres_url: str) -> None:
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        assert migrate(conn, "pod-a") == [m.version for m in MIGRATIONS]
        assert migrate(conn, "pod-b") == []
        assert schema_versions(conn) == [m.version for m in MIGRATIONS]


def test_replicas_starting_together_migrate_once(postgres_url: str) -> None:
    applied: list[list[int]] = []
    barrier = threading.Barrier(4)

    def start() -> None:
        with psycopg.connect(postgres_url, autocommit=True) as conn:
            barrier.wait()
            applied.append(migrate(conn, threading.current_thread().name))

    threads = [threading.Thread(target=start) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(applied, key=len) == [[], [], [], [m.version for m in MIGRATIONS]]


class _FirstVersionStore(PostgresStore):
    """A replica of FishEye's first PostgreSQL version: schema migration 1 only, and rows
    that name only the columns it had."""

    def __init__(self, url: str, replica: str) -> None:
        super().__init__(url, replica=replica, migrations=MIGRATIONS[:1])

    def write(self, predictions: list[PredictionRow], drifts: list, shadows: list) -> None:
        from fisheye.monitoring.prediction_log.pg_queries import add_to_rollups

        with self._writing() as conn, conn.transaction():
            for r in predictions:
                inserted = conn.execute(
                    "INSERT INTO predictions (id, ts, replica, model_version, backend, label, "
                    "confidence, ood_score, in_distribution, latency_ms, sha256, image_path) "
                    "VALUES (%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s) ON CONFLICT (id) DO NOTHING "
                    "RETURNING ts, label, confidence, in_distribution, latency_ms",
                    (
                        r.id,
                        r.ts,
                        self.replica,
                        r.model_version,
                        r.backend,
                        r.label,
                        r.confidence,
                        r.ood_score,
                        int(bool(r.in_distribution)),
                        r.latency_ms,
                        r.sha256,
                        None,
                    ),
                ).fetchall()
                add_to_rollups(conn, self.replica, inserted)


def test_a_database_of_the_previous_schema_is_upgraded_while_it_keeps_its_rows(
    postgres_url: str,
) -> None:
    old = _FirstVersionStore(postgres_url, replica="old-pod")
    old.write([_row(i) for i in range(4)], [], [])
    with psycopg.connect(postgres_url) as conn:
        assert schema_versions(conn) == [1]
    new = PredictionLog(open_store(postgres_url, replica="new-pod"))
    new.start()
    try:
        new.record(_row(10, "Shrimp"))
        assert new.add_feedback("id-1", "Trout")["correct"]  # uses the added column
        # The old replica still writes after the upgrade (the change is additive), and one
        # of the old version starting now opens the newer schema as it is.
        old.write([_row(20)], [], [])
        late = _FirstVersionStore(postgres_url, replica="old-pod")
        late.write([_row(21)], [], [])
        late.close()
        with psycopg.connect(postgres_url) as conn:
            assert schema_versions(conn) == list(range(1, SCHEMA_VERSION + 1))
        s = new.summary(3600)
        assert s["predictions"] == 7 and s["replicas"] == {"new-pod": 1, "old-pod": 6}
    finally:
        new.stop()
        old.close()


def test_a_password_never_shows_in_errors() -> None:
    store = PostgresStore("postgresql://fish:s3cret@127.0.0.1:1/db", replica="pod-a")
    with pytest.raises(StoreError) as failure:  # nothing listens on port 1
        store.find_prediction("id-0")
    assert "s3cret" not in str(failure.value) and "s3cret" not in repr(store)
    store.close()


# -- two servers, one store ---------------------------------------------------------------------
def test_feedback_on_any_replica_and_the_fleet_summary(
    postgres_url: str, tiny_bundle: Path, tmp_path: Path
) -> None:
    """Two servers (replicas) sharing one PostgreSQL: a prediction answered by one takes
    feedback through the other, and either one's summary covers both."""
    from fastapi.testclient import TestClient

    from fisheye.serving.app import create_app
    from fisheye.serving.settings import ServeSettings
    from tests.helpers.photos import encode, photo

    def replica(name: str) -> TestClient:
        settings = ServeSettings(
            model=tiny_bundle,
            threads=1,
            model_workers=1,
            prediction_db=postgres_url,
            replica_id=name,
            summary_cache_s=0,
            log_spool=tmp_path / f"spool-{name}.jsonl",
        )
        return TestClient(create_app(settings))

    body = encode(photo(3), "PNG")
    with replica("pod-a") as a, replica("pod-b") as b:
        for client in (a, b):
            state = client.app.state.serving  # type: ignore[attr-defined]
            state.wait_loaded(60)
            assert state.ready, state.load_error
        made_by_a = [
            a.post("/v1/predict", files={"file": ("a.png", body)}).json() for _ in range(3)
        ]
        made_by_b = b.post("/v1/predict", files={"file": ("b.png", body)}).json()
        res = b.post("/v1/feedback", json={"id": made_by_a[0]["id"], "label": "Trout"})
        assert res.status_code == 200, res.text
        res = a.post("/v1/feedback", json={"id": made_by_b["id"], "label": "Trout"})
        assert res.status_code == 200, res.text
        assert res.json()["feedback_count"] == 2
        assert (
            b.post("/v1/feedback", json={"id": "never-made", "label": "Trout"}).status_code == 404
        )
        fleet_view = a.get("/v1/monitoring/summary", params={"window": "1h"}).json()
        assert fleet_view["predictions"] == 4 and fleet_view["feedback"]["count"] == 2
        assert fleet_view["replicas"] == {"pod-a": 3, "pod-b": 1}
        only_b = a.get("/v1/monitoring/summary", params={"window": "1h", "replica": "pod-b"})
        assert only_b.json()["predictions"] == 1 and only_b.json()["replicas"] == {"pod-b": 1}


def test_settings_take_a_postgres_url_or_a_file(tmp_path: Path) -> None:
    from fisheye.serving.settings import ServeSettings

    url = "postgresql://fisheye@db.internal:5432/fisheye"
    assert ServeSettings(prediction_db=url).prediction_db == url  # not folded into a Path
    assert ServeSettings(prediction_db=str(tmp_path / "p.sqlite")).prediction_db == (
        tmp_path / "p.sqlite"
    )
    assert ServeSettings().replica_id  # the hostname by default
    assert isinstance(open_store(url, replica="pod-a"), PostgresStore)
    assert isinstance(open_store(tmp_path / "p.sqlite", replica="pod-a"), SQLiteStore)


def test_a_sqlite_log_has_no_rows_of_another_replica(tmp_path: Path) -> None:
    log = PredictionLog(open_store(tmp_path / "one.sqlite", replica="pod-a"))
    log.start()
    try:
        log.record(_row(1))
        assert log.summary(3600, replica="pod-a")["predictions"] == 1
        assert log.summary(3600, replica="pod-z")["predictions"] == 0
        assert log.summary(3600)["predictions"] == 1
    finally:
        log.stop()


def test_a_server_answers_while_its_store_is_away_and_says_the_log_is_degraded(
    postgres_server, postgres_url: str, tiny_bundle: Path, tmp_path: Path
) -> None:
    from fastapi.testclient import TestClient

    from fisheye.serving.app import create_app
    from fisheye.serving.settings import ServeSettings
    from tests.helpers.photos import encode, photo

    url = postgres_url.rsplit("/", 1)[0] + "/comes_later"
    spool = tmp_path / "spool.jsonl"
    settings = ServeSettings(
        model=tiny_bundle, threads=1, model_workers=1, prediction_db=url, log_spool=spool
    )
    body = encode(photo(2), "PNG")
    with TestClient(create_app(settings)) as client:
        state = client.app.state.serving  # type: ignore[attr-defined]
        state.wait_loaded(60)
        ids = []
        for _ in range(3):
            res = client.post("/v1/predict", files={"file": ("p.png", body)})
            assert res.status_code == 200, res.text
            ids.append(res.json()["id"])
        assert state.prediction_log.flush()  # into the spool
        assert spool.stat().st_size > 0
        ready = client.get("/readyz")
        assert ready.status_code == 200 and ready.json()["prediction_log"] == "degraded"
        assert "fisheye_prediction_log_degraded 1.0" in client.get("/metrics").text
        with psycopg.connect(postgres_server.url, autocommit=True) as conn:
            conn.execute("CREATE DATABASE comes_later")
        _wait_until(lambda: not spool.exists(), "the spool was not replayed")
        assert client.get("/readyz").json()["prediction_log"] == "ok"
        assert "fisheye_prediction_log_degraded 0.0" in client.get("/metrics").text
        res = client.post("/v1/feedback", json={"id": ids[0], "label": "Trout"})
        assert res.status_code == 200, res.text
        assert state.prediction_log.lost == 0


def test_a_server_whose_store_freezes_keeps_answering_and_says_the_log_is_degraded(
    postgres_server, postgres_url: str, tiny_bundle: Path, tmp_path: Path
) -> None:
    """The store frozen (SIGSTOP) under a running server: predictions are answered, /readyz
    and the gauge say degraded, feedback and the summary answer 503 log_unavailable instead
    of waiting; resumed, the spooled rows are stored once and all is well again."""
    from fastapi.testclient import TestClient

    from fisheye.serving.app import create_app
    from fisheye.serving.settings import ServeSettings
    from tests.helpers.photos import encode, photo

    spool = tmp_path / "spool.jsonl"
    settings = ServeSettings(
        model=tiny_bundle,
        threads=1,
        model_workers=1,
        prediction_db=postgres_url,
        log_spool=spool,
        store_timeout_s=TIMEOUT_S,
        summary_cache_s=0,
        fleet_features_per_s=0,
    )
    body = encode(photo(2), "PNG")
    with TestClient(create_app(settings)) as client:
        state = client.app.state.serving  # type: ignore[attr-defined]
        state.wait_loaded(60)
        plog = state.prediction_log

        def predict() -> str:
            res = client.post("/v1/predict", files={"file": ("p.png", body)})
            assert res.status_code == 200, res.text
            return res.json()["id"]

        before = predict()
        assert plog.flush()
        assert client.get("/v1/monitoring/summary").status_code == 200
        with postgres_server.paused():
            during = [_within(predict, "a prediction waited for the store") for _ in range(3)]
            _wait_until(lambda: plog.degraded is not None, "the log never said degraded")
            ready = _within(lambda: client.get("/readyz"), "/readyz waited")
            assert ready.status_code == 200 and ready.json()["prediction_log"] == "degraded"
            metrics = _within(lambda: client.get("/metrics"), "/metrics waited").text
            assert "fisheye_prediction_log_degraded 1.0" in metrics
            for call in (
                lambda: client.post("/v1/feedback", json={"id": before, "label": "Trout"}),
                lambda: client.get("/v1/monitoring/summary"),
            ):
                res = _within(call, "a request waited for a frozen store")
                assert res.status_code == 503 and res.json()["error"] == "log_unavailable"
        _wait_until(lambda: not spool.exists(), "the spool was not replayed")
        assert client.get("/readyz").json()["prediction_log"] == "ok"
        assert "fisheye_prediction_log_degraded 0.0" in client.get("/metrics").text
        res = client.post("/v1/feedback", json={"id": during[0], "label": "Trout"})
        assert res.status_code == 200, res.text
        assert client.get("/v1/monitoring/summary").json()["predictions"] == 4
        assert plog.lost == 0
    ids = [before, *during]
    with psycopg.connect(postgres_url) as conn:
        rows = conn.execute("SELECT id FROM predictions WHERE id = ANY(%s)", (ids,)).fetchall()
    assert sorted(r[0] for r in rows) == sorted(ids)


def test_the_report_command_reads_the_fleet_or_one_replica(fleet, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from fisheye.cli import app

    a, b = fleet
    for i in range(4):
        a.record(_row(i, "Trout"))
        b.record(_row(100 + i, "Shrimp"))
    assert a.flush() and b.flush()
    url = a.store.url
    for extra, out in (([], "fleet"), (["--replica", "pod-b"], "pod-b")):
        res = CliRunner().invoke(
            app, ["monitor", "report", "--db", url, "-o", str(tmp_path / out), *extra]
        )
        assert res.exit_code == 0, res.output
    assert "Trout" in (tmp_path / "fleet" / "report.html").read_text()
    page = (tmp_path / "pod-b" / "report.html").read_text()
    assert "Shrimp" in page and "Trout" not in page
    broken = url.rsplit("/", 1)[0] + "/no_such_db"
    res = CliRunner().invoke(app, ["monitor", "report", "--db", broken, "-o", str(tmp_path)])
    assert res.exit_code == 2 and "cannot read the prediction log" in res.output


def test_a_server_with_a_sqlite_log_never_imports_psycopg(tmp_path: Path) -> None:
    """psycopg is loaded only for a PostgreSQL URL: start-up with SQLite pays nothing."""
    import subprocess
    import sys

    code = (
        "import sys\n"
        "from fisheye.serving.live_monitor import open_prediction_log\n"
        "from fisheye.serving.metrics import Metrics\n"
        "from fisheye.serving.settings import ServeSettings\n"
        f"log = open_prediction_log(ServeSettings(prediction_db={str(tmp_path / 'l.sqlite')!r}),"
        " Metrics())\n"
        "log.start(); log.stop()\n"
        "print('psycopg' in sys.modules, 'psycopg_pool' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"], out.stderr
