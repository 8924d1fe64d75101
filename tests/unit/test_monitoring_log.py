"""The SQLite prediction log: WAL, retention, feedback, summary, failures that lose rows only."""

from __future__ import annotations

import os
import sqlite3
import time
from pathlib import Path

import pytest

from fisheye.monitoring.prediction_log import (
    FeedbackConflictError,
    FeedbackError,
    PredictionLog,
    PredictionRow,
)
from fisheye.monitoring.prediction_log.queries import (
    MAX_CORRECTIONS_PER_PREDICTION,
    apply_retention,
)
from fisheye.monitoring.prediction_log.rollups import (
    LATENCY_BASE_MS,
    LATENCY_GROWTH,
    latency_bucket,
)
from fisheye.monitoring.prediction_log.schema import connect
from fisheye.monitoring.report import MAX_WINDOW_DAYS, parse_window, write_report


def _row(i: int, label: str = "Trout", ts: float | None = None, ood: bool = False) -> PredictionRow:
    return PredictionRow(
        id=f"id-{i}",
        ts=time.time() if ts is None else ts,
        model_version="v1",
        backend="torch",
        label=label,
        confidence=0.9,
        ood_score=99.0 if ood else 1.0,
        in_distribution=not ood,
        latency_ms=10.0 + i,
        sha256="ab" * 32,
    )


@pytest.fixture
def plog(tmp_path: Path):
    lost: list[int] = []
    log = PredictionLog(tmp_path / "log.sqlite", on_lost=lost.append)
    log.lost_calls = lost  # type: ignore[attr-defined]
    log.start()
    yield log
    log.stop()


def test_rows_are_written_in_wal_mode_and_summarised(plog: PredictionLog) -> None:
    for i in range(10):
        plog.record(_row(i, "Trout" if i < 6 else "Shrimp", ood=i == 9))
    plog.record_drift(
        {"computed_at": time.time(), "n": 50, "score": 0.2, "p_value": 0.001, "drift": True}
    )
    assert plog.flush()
    with sqlite3.connect(plog.path) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert conn.execute("SELECT COUNT(*) FROM predictions").fetchone()[0] == 10
    fb = plog.add_feedback("id-0", "Trout")
    assert fb["correct"] and fb["accuracy"] == 1.0
    fb = plog.add_feedback("id-7", "Trout")  # predicted Shrimp
    assert not fb["correct"] and fb["accuracy"] == 0.5 and fb["feedback_count"] == 2
    with pytest.raises(FeedbackError):
        plog.add_feedback("nope", "Trout")
    s = plog.summary(3600)
    assert s["predictions"] == 10 and s["counts"] == {"Shrimp": 4, "Trout": 6}
    assert s["ood_rate"] == pytest.approx(0.1) and s["feedback"]["accuracy"] == 0.5
    # Calibrated confidences of 0.9 estimate that 90% of the predictions are right.
    assert s["estimated_accuracy"] == pytest.approx(0.9)
    # Percentiles come from the rollups' histogram: within 5% of the exact value.
    assert s["latency_ms"]["p50"] == pytest.approx(14.5, rel=0.05)
    assert s["drift"]["tests"] == 1 and s["drift"]["latest"]["drift"] is True


def test_retention_by_age_and_rows(tmp_path: Path) -> None:
    conn = connect(tmp_path / "r.sqlite")
    old = time.time() - 40 * 86400
    rows = [_row(i, ts=old if i < 3 else time.time() - i) for i in range(10)]
    with conn:
        conn.executemany(
            "INSERT INTO predictions VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
            [tuple(vars(r).values()) for r in rows],
        )
    assert apply_retention(conn, retention_days=30, max_rows=5) == 5
    left = [r[0] for r in conn.execute("SELECT id FROM predictions ORDER BY ts DESC")]
    assert left == [f"id-{i}" for i in range(3, 8)]  # the newest five, none of the old


def _fill_every_growing_table(conn: sqlite3.Connection, old: float, n: int) -> None:
    """`n` rows in each table that grows with traffic, the first three dated `old`."""
    now = time.time()
    with conn:
        for i in range(n):
            ts = old if i < 3 else now - i
            row = _row(i, ts=ts)
            conn.execute(
                "INSERT INTO predictions VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
                tuple(vars(row).values()),
            )
            conn.execute(
                "INSERT INTO feedback VALUES (?,?,?,?,?,?)", (row.id, ts, "Trout", "Trout", ts, 1)
            )
            conn.execute(
                "INSERT INTO feedback_corrections VALUES (?,?,?,?)", (row.id, ts, "Shrimp", "Trout")
            )
            conn.execute(
                "INSERT INTO shadow VALUES (?,?,?,?,?,?,?,?,?,?)",
                (row.id, ts, "v2", "Trout", 0.9, 1.0, 1, 5.0, "Trout", 1),
            )
            conn.execute("INSERT INTO drift (ts, n, role) VALUES (?, 10, 'live')", (ts,))


@pytest.mark.parametrize("max_rows", [5, 1, 1000])
def test_retention_covers_every_table_that_grows(tmp_path: Path, max_rows: int) -> None:
    conn = connect(tmp_path / "r.sqlite")
    _fill_every_growing_table(conn, time.time() - 40 * 86400, 12)
    apply_retention(conn, retention_days=30, max_rows=max_rows)
    keep = min(max_rows, 9)  # nine rows are recent enough
    for table in ("predictions", "feedback", "feedback_corrections", "shadow", "drift"):
        count = conn.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0]
        assert count == keep, table
        oldest = conn.execute(f"SELECT MIN(ts) FROM {table}").fetchone()[0]
        assert oldest > time.time() - 30 * 86400, table
    # The feedback totals follow the rows that were deleted.
    assert conn.execute("SELECT n, correct FROM feedback_totals").fetchone() == (keep, keep)


def test_corrections_of_deleted_feedback_go_with_it(tmp_path: Path) -> None:
    conn = connect(tmp_path / "r.sqlite")
    _fill_every_growing_table(conn, time.time() - 40 * 86400, 6)
    with conn:  # a correction dated recently, of feedback that retention deletes
        conn.execute(
            "INSERT INTO feedback_corrections VALUES ('id-0', ?, 'Tuna', 'Trout')", (time.time(),)
        )
    apply_retention(conn, retention_days=30, max_rows=100)
    ids = {r[0] for r in conn.execute("SELECT id FROM feedback_corrections")}
    assert ids == {f"id-{i}" for i in range(3, 6)}


@pytest.mark.parametrize("labels", [["Trout", "Shrimp"], ["Trout", "Shrimp", "Tuna", "Crab"]])
def test_repeated_conflicting_feedback_keeps_only_the_latest_corrections(
    plog: PredictionLog, labels: list[str]
) -> None:
    plog.record(_row(1, "Salmon"))
    plog.add_feedback("id-1", "Salmon")
    for i in range(3 * MAX_CORRECTIONS_PER_PREDICTION):
        with pytest.raises(FeedbackConflictError):
            plog.add_feedback("id-1", labels[i % len(labels)])
    assert plog.flush()
    with sqlite3.connect(plog.path) as conn:
        rows = conn.execute(
            "SELECT label FROM feedback_corrections WHERE id = 'id-1' ORDER BY ts, rowid"
        ).fetchall()
    assert len(rows) == MAX_CORRECTIONS_PER_PREDICTION
    last = 3 * MAX_CORRECTIONS_PER_PREDICTION - 1
    assert rows[-1] == (labels[last % len(labels)],)  # the latest is kept


def test_a_locked_database_delays_rows_but_never_loses_or_blocks(plog: PredictionLog) -> None:
    """Another process holding the write lock: the writer keeps the rows and writes them once
    the lock is gone (it used to drop them after 200 ms)."""
    plog.record(_row(0))
    assert plog.flush()
    blocker = sqlite3.connect(plog.path, timeout=0)
    blocker.execute("BEGIN EXCLUSIVE")
    try:
        start = time.perf_counter()
        for i in range(1, 21):
            plog.record(_row(i))
        assert time.perf_counter() - start < 0.1  # record() only queues
        assert not plog.flush(timeout=0.5)  # still waiting for the lock
    finally:
        blocker.rollback()
        blocker.close()
    plog.record(_row(30))
    assert plog.flush(timeout=30)
    assert plog.lost == 0 and plog.lost_calls == []  # type: ignore[attr-defined]
    with sqlite3.connect(plog.path) as conn:
        assert conn.execute("SELECT COUNT(*) FROM predictions").fetchone() == (22,)


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores file permissions")
def test_a_read_only_database_loses_rows(tmp_path: Path) -> None:
    db = tmp_path / "ro.sqlite"
    connect(db).close()
    db.chmod(0o444)
    log = PredictionLog(db)
    log.start()
    log.record(_row(0))
    log.flush()
    log.stop()
    assert log.lost == 1


def test_an_unopenable_database_loses_rows(tmp_path: Path) -> None:
    (tmp_path / "dir.sqlite").mkdir()  # a folder where the file should be: cannot open
    log = PredictionLog(tmp_path / "dir.sqlite")
    log.start()
    log.record(_row(0))
    log.flush()
    log.stop()
    assert log.lost == 1


def test_a_full_queue_drops_and_counts(tmp_path: Path) -> None:
    log = PredictionLog(tmp_path / "q.sqlite", max_queue=3)  # writer not started
    for i in range(5):
        log.record(_row(i))
    assert log.lost == 2


def test_report_writes_html_and_plots(plog: PredictionLog, tmp_path: Path) -> None:
    for i in range(20):
        plog.record(_row(i, ["Trout", "Shrimp"][i % 2], ts=time.time() - 100 * i, ood=i % 5 == 0))
    plog.record_drift(
        {"computed_at": time.time(), "n": 50, "score": 0.01, "p_value": 0.5, "drift": False}
    )
    plog.flush()
    plog.add_feedback("id-2", "Trout")
    page = write_report(plog.path, tmp_path / "report")
    names = {p.name for p in (tmp_path / "report").iterdir()}
    assert {"class_mix.png", "confidence.png", "ood_rate.png", "drift_p_values.png"} <= names
    assert "feedback_accuracy.png" in names
    assert "FishEye monitoring report" in page.read_text()


def test_parse_window() -> None:
    assert parse_window("24h") == 86400 and parse_window("30m") == 1800 and parse_window("90") == 90
    assert parse_window(f"{MAX_WINDOW_DAYS}d") == MAX_WINDOW_DAYS * 86400
    with pytest.raises(ValueError):
        parse_window("soon")


@pytest.mark.parametrize(
    "text",
    ["9999999999999999999w", f"{MAX_WINDOW_DAYS + 1}d", "1" * 30, "0", "0.0h", "1" * 40 + "s"],
)
def test_parse_window_refuses_windows_out_of_range(text: str) -> None:
    with pytest.raises(ValueError, match="too long|positive|invalid window"):
        parse_window(text)


@pytest.mark.parametrize("window_s", [1e30, -1e30, float("inf"), float("-inf"), float("nan")])
def test_the_summary_holds_any_window_arithmetic(plog: PredictionLog, window_s: float) -> None:
    plog.record(_row(1))
    out = plog.summary(window_s)  # no OverflowError from SQLite's 64-bit integers
    assert out["predictions"] in (0, 1)


def test_feedback_first_write_wins_and_corrections_are_audited(plog: PredictionLog) -> None:
    plog.record(_row(1, "Shrimp"))  # not flushed: feedback finds queued predictions too
    first = plog.add_feedback("id-1", "Shrimp")
    assert first["new"] and first["correct"] and first["feedback_count"] == 1
    again = plog.add_feedback("id-1", "Shrimp")  # the same label again: answered, not counted
    assert not again["new"] and again["feedback_count"] == 1
    with pytest.raises(FeedbackConflictError) as conflict:
        plog.add_feedback("id-1", "Trout")
    assert conflict.value.recorded["label"] == "Shrimp"
    assert plog.flush()
    with sqlite3.connect(plog.path) as conn:
        assert conn.execute("SELECT label FROM feedback WHERE id = 'id-1'").fetchone() == (
            "Shrimp",
        )
        corrections = conn.execute("SELECT id, label, recorded FROM feedback_corrections")
        assert corrections.fetchall() == [("id-1", "Trout", "Shrimp")]
        assert conn.execute("SELECT n, correct FROM feedback_totals").fetchone() == (1, 1)
    assert plog.summary(3600)["feedback"] == {"count": 1, "accuracy": 1.0}


def test_a_log_written_by_the_previous_schema_is_migrated(tmp_path: Path) -> None:
    db = tmp_path / "old.sqlite"
    with sqlite3.connect(db) as old:
        old.executescript(
            "CREATE TABLE predictions (id TEXT PRIMARY KEY, ts REAL NOT NULL, model_version "
            "TEXT, backend TEXT, label TEXT NOT NULL, confidence REAL, ood_score REAL, "
            "in_distribution INTEGER, latency_ms REAL, sha256 TEXT, image_path TEXT);"
            "CREATE TABLE feedback (id TEXT PRIMARY KEY, ts REAL NOT NULL, label TEXT NOT NULL);"
            "CREATE TABLE drift (ts REAL NOT NULL, n INTEGER, score REAL, p_value REAL, "
            "p_value_is_bound INTEGER, drift INTEGER, ood_fraction REAL);"
        )
        now = time.time()
        old.executemany(
            "INSERT INTO predictions VALUES (?,?,?,?,?,?,?,?,?,?,?)",
            [
                (f"id-{i}", now - i, "v1", "torch", "Trout", 0.9, 1.0, 1, 10.0, "", None)
                for i in range(5)
            ],
        )
        old.execute("INSERT INTO feedback VALUES ('id-0', ?, 'Shrimp')", (now,))
        old.execute("INSERT INTO drift VALUES (?, 200, 0.01, 0.4, 0, 0, 0.05)", (now,))
    log = PredictionLog(db)
    log.start()
    try:
        s = log.summary(3600)
        assert s["predictions"] == 5 and s["counts"] == {"Trout": 5}
        assert s["feedback"] == {"count": 1, "accuracy": 0.0}
        assert s["drift"]["tests"] == 1 and s["drift"]["latest"]["p_value"] == 0.4
        assert s["challenger_drift"]["tests"] == 0
    finally:
        log.stop()


def test_challenger_drift_tests_are_logged_apart_from_the_live_ones(
    tmp_path: Path, tiny_bundle: Path
) -> None:
    from fisheye.monitoring.drift import DriftResult
    from fisheye.monitoring.loading import load_model
    from fisheye.serving.live_monitor import LiveMonitor
    from fisheye.serving.metrics import Metrics
    from fisheye.serving.settings import ServeSettings

    log = PredictionLog(tmp_path / "log.sqlite")
    log.start()
    predictor, _ = load_model(tiny_bundle)
    metrics = Metrics()
    live = LiveMonitor(ServeSettings(), metrics, predictor, None, log)
    challenger = LiveMonitor(ServeSettings(), metrics, predictor, None, log, role="challenger")
    try:
        live._on_drift(DriftResult(n=200, score=0.01, p_value=0.5, drift=False))
        challenger._on_drift(DriftResult(n=200, score=0.2, p_value=0.001, drift=True))
        challenger._on_drift(DriftResult(n=200, score=0.1, p_value=0.02, drift=False))
        assert log.flush()
        s = log.summary(3600)
        # The live model's drift figures and alerts see only its own tests.
        assert s["drift"]["tests"] == 1 and s["drift"]["drift_detected"] == 0
        assert s["challenger_drift"] == {
            "tests": 2,
            "drift_detected": 1,
            "min_p_value": 0.001,
            "model_versions": [predictor.bundle.version],
        }
        with sqlite3.connect(tmp_path / "log.sqlite") as conn:
            roles = conn.execute("SELECT role, model_version FROM drift ORDER BY ts").fetchall()
        assert [r[0] for r in roles] == ["live", "challenger", "challenger"]
        assert {r[1] for r in roles} == {predictor.bundle.version}
    finally:
        log.stop()


@pytest.mark.parametrize("ms", [0.05, 0.1, 0.5, 3.0, 14.5, 250.0, 9000.0])
def test_latency_buckets_are_within_five_percent(ms: float) -> None:
    upper = LATENCY_BASE_MS * LATENCY_GROWTH ** latency_bucket(ms)
    assert ms <= upper + 1e-12 and (ms < LATENCY_BASE_MS or upper <= ms * LATENCY_GROWTH + 1e-9)
