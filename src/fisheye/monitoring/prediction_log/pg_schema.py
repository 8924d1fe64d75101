"""The PostgreSQL schema of the prediction log, as numbered migrations.

Every replica of a fleet opens the same database. On start each one reads which migrations
`fisheye_schema_migrations` says are applied; when one it knows is missing, it takes an
advisory lock, reads again, and applies the ones the database lacks, in one transaction.
Migrations are additive only (new tables, new nullable columns, new indexes), and every
statement names its columns, so replicas of the previous version keep writing while a newer
one migrates, and after it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

log = logging.getLogger(__name__)

# pg_advisory_xact_lock's key for migrations (any bigint FishEye alone uses), and retention's.
MIGRATION_LOCK = 0x46495348_45594531  # "FISHEYE1"
RETENTION_LOCK = 0x46495348_45594532  # "FISHEYE2"
FLEET_DRIFT_LOCK = 0x46495348_45594533  # "FISHEYE3": held by the replica that tests the fleet


@dataclass(frozen=True)
class Migration:
    version: int
    description: str
    sql: str


MIGRATIONS: tuple[Migration, ...] = (
    Migration(
        1,
        "predictions, rollups, feedback, drift and shadow rows, each tagged with its replica",
        """
CREATE TABLE IF NOT EXISTS predictions (
    id TEXT PRIMARY KEY,
    ts DOUBLE PRECISION NOT NULL,
    replica TEXT NOT NULL,
    model_version TEXT,
    backend TEXT,
    label TEXT NOT NULL,
    confidence DOUBLE PRECISION,
    ood_score DOUBLE PRECISION,
    in_distribution INTEGER,
    latency_ms DOUBLE PRECISION,
    sha256 TEXT,
    image_path TEXT
);
CREATE INDEX IF NOT EXISTS predictions_ts ON predictions (ts);
-- Per-minute rollups of each replica: replicas never update the same rollup row.
CREATE TABLE IF NOT EXISTS minute_counts (
    minute BIGINT NOT NULL,
    replica TEXT NOT NULL,
    label TEXT NOT NULL,
    n BIGINT NOT NULL,
    confidence_sum DOUBLE PRECISION NOT NULL,
    verdicts BIGINT NOT NULL,
    ood BIGINT NOT NULL,
    PRIMARY KEY (minute, replica, label)
);
CREATE TABLE IF NOT EXISTS minute_latency (
    minute BIGINT NOT NULL,
    replica TEXT NOT NULL,
    bucket INTEGER NOT NULL,
    n BIGINT NOT NULL,
    PRIMARY KEY (minute, replica, bucket)
);
-- `replica` is the replica that made the prediction.
CREATE TABLE IF NOT EXISTS feedback (
    id TEXT PRIMARY KEY,
    ts DOUBLE PRECISION NOT NULL,
    replica TEXT NOT NULL,
    label TEXT NOT NULL,
    predicted TEXT NOT NULL,
    prediction_ts DOUBLE PRECISION NOT NULL,
    correct INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS feedback_prediction_ts ON feedback (prediction_ts, correct);
CREATE TABLE IF NOT EXISTS feedback_corrections (
    id TEXT NOT NULL,
    ts DOUBLE PRECISION NOT NULL,
    label TEXT NOT NULL,
    recorded TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS feedback_corrections_id ON feedback_corrections (id, ts);
CREATE INDEX IF NOT EXISTS feedback_corrections_ts ON feedback_corrections (ts);
-- Feedback counts per replica, kept by a trigger: no single row every replica updates.
CREATE TABLE IF NOT EXISTS feedback_totals (
    replica TEXT PRIMARY KEY,
    n BIGINT NOT NULL,
    correct BIGINT NOT NULL
);
CREATE OR REPLACE FUNCTION fisheye_count_feedback() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN
        INSERT INTO feedback_totals AS t (replica, n, correct) VALUES (NEW.replica, 1, NEW.correct)
        ON CONFLICT (replica) DO UPDATE SET n = t.n + 1, correct = t.correct + EXCLUDED.correct;
    ELSE
        UPDATE feedback_totals SET n = n - 1, correct = correct - OLD.correct
        WHERE replica = OLD.replica;
    END IF;
    RETURN NULL;
END $$;
DROP TRIGGER IF EXISTS feedback_counted ON feedback;
CREATE TRIGGER feedback_counted AFTER INSERT OR DELETE ON feedback
    FOR EACH ROW EXECUTE FUNCTION fisheye_count_feedback();
CREATE TABLE IF NOT EXISTS drift (
    ts DOUBLE PRECISION NOT NULL,
    replica TEXT NOT NULL,
    n INTEGER,
    score DOUBLE PRECISION,
    p_value DOUBLE PRECISION,
    p_value_is_bound INTEGER,
    drift INTEGER,
    ood_fraction DOUBLE PRECISION,
    role TEXT NOT NULL DEFAULT 'live',
    model_version TEXT
);
CREATE INDEX IF NOT EXISTS drift_ts ON drift (ts);
CREATE TABLE IF NOT EXISTS shadow (
    id TEXT NOT NULL,
    ts DOUBLE PRECISION NOT NULL,
    replica TEXT NOT NULL,
    model_version TEXT,
    label TEXT NOT NULL,
    confidence DOUBLE PRECISION,
    ood_score DOUBLE PRECISION,
    in_distribution INTEGER,
    latency_ms DOUBLE PRECISION,
    live_label TEXT NOT NULL,
    agree INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS shadow_ts ON shadow (ts);
""",
    ),
    Migration(
        2,
        "which replica took each feedback; predictions by replica and time",
        """
ALTER TABLE feedback ADD COLUMN IF NOT EXISTS received_by TEXT;
CREATE INDEX IF NOT EXISTS predictions_replica_ts ON predictions (replica, ts);
""",
    ),
    Migration(
        3,
        "a sample of each replica's photo features, and the fleet's drift tests",
        """
-- `photos`: the photos this row stands for (itself and those the sample skipped before it
-- on its replica). `features`: float16, little-endian. `feature_space`: the bundle and the
-- backend family whose features these are (the leader tests only its own).
CREATE TABLE IF NOT EXISTS fleet_features (
    id BIGSERIAL PRIMARY KEY,
    ts DOUBLE PRECISION NOT NULL,
    replica TEXT NOT NULL,
    model_version TEXT,
    feature_space TEXT NOT NULL,
    photos INTEGER NOT NULL,
    label INTEGER NOT NULL,
    ood BOOLEAN NOT NULL,
    confidence REAL,
    features BYTEA NOT NULL
);
-- float16 features barely compress: stored as they are, without a try.
ALTER TABLE fleet_features ALTER COLUMN features SET STORAGE EXTERNAL;
CREATE INDEX IF NOT EXISTS fleet_features_space_ts ON fleet_features (feature_space, ts);
CREATE INDEX IF NOT EXISTS fleet_features_space_id ON fleet_features (feature_space, id);
CREATE INDEX IF NOT EXISTS fleet_features_ts ON fleet_features (ts);
CREATE TABLE IF NOT EXISTS fleet_drift (
    id BIGSERIAL PRIMARY KEY,
    ts DOUBLE PRECISION NOT NULL,
    leader TEXT NOT NULL,
    model_version TEXT,
    feature_space TEXT NOT NULL,
    last_feature BIGINT NOT NULL,
    new_photos BIGINT NOT NULL,
    unspent BIGINT NOT NULL,
    n INTEGER NOT NULL,
    score DOUBLE PRECISION,
    p_value DOUBLE PRECISION,
    alpha DOUBLE PRECISION,
    drift INTEGER NOT NULL,
    class_mix_p_value DOUBLE PRECISION,
    alarm INTEGER NOT NULL,
    ood_fraction DOUBLE PRECISION,
    estimated_accuracy DOUBLE PRECISION,
    detail JSONB NOT NULL
);
CREATE INDEX IF NOT EXISTS fleet_drift_space_id ON fleet_drift (feature_space, id);
CREATE INDEX IF NOT EXISTS fleet_drift_ts ON fleet_drift (ts);
""",
    ),
    Migration(
        4,
        "the kept photo of each prediction (its key in the photo archive)",
        """
ALTER TABLE predictions ADD COLUMN IF NOT EXISTS photo_sha256 TEXT;
""",
    ),
)
SCHEMA_VERSION = MIGRATIONS[-1].version

_MIGRATIONS_TABLE = """
CREATE TABLE IF NOT EXISTS fisheye_schema_migrations (
    version INTEGER PRIMARY KEY,
    description TEXT NOT NULL,
    applied_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    applied_by TEXT
)
"""


def migrate(conn: Any, replica: str, migrations: tuple[Migration, ...] = MIGRATIONS) -> list[int]:
    """Apply the migrations the database lacks (under the advisory lock, in one transaction);
    returns the versions applied now. `conn` is a psycopg connection in autocommit mode."""
    with conn.transaction():
        # Waiting for another replica's migration, or building an index on a large table,
        # takes what it takes: not bounded by the connection's statement timeout.
        conn.execute("SET LOCAL statement_timeout = 0")
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK,))
        conn.execute(_MIGRATIONS_TABLE)
        applied = {r[0] for r in conn.execute("SELECT version FROM fisheye_schema_migrations")}
        done = []
        for m in migrations:
            if m.version in applied:
                continue
            conn.execute(m.sql)
            conn.execute(
                "INSERT INTO fisheye_schema_migrations (version, description, applied_by) "
                "VALUES (%s, %s, %s)",
                (m.version, m.description, replica),
            )
            done.append(m.version)
    if done:
        log.info("prediction store: applied schema migration(s) %s", done)
    _note_newer(max(applied | set(done), default=0), migrations)
    return done


def pending_migrations(conn: Any, migrations: tuple[Migration, ...] = MIGRATIONS) -> list[int]:
    """The versions in `migrations` the database lacks (a quick read, no lock)."""
    if conn.execute("SELECT to_regclass('fisheye_schema_migrations')").fetchone()[0] is None:
        return [m.version for m in migrations]
    applied = {r[0] for r in conn.execute("SELECT version FROM fisheye_schema_migrations")}
    _note_newer(max(applied, default=0), migrations)
    return [m.version for m in migrations if m.version not in applied]


def _note_newer(newest: int, migrations: tuple[Migration, ...]) -> None:
    known = migrations[-1].version if migrations else 0
    if newest > known:
        log.info(
            "prediction store: schema version %d is newer than this replica's %d; "
            "it keeps writing the columns it knows (migrations are additive)",
            newest,
            known,
        )


def schema_versions(conn: Any) -> list[int]:
    """The migrations applied to the database, in order."""
    return [r[0] for r in conn.execute("SELECT version FROM fisheye_schema_migrations ORDER BY 1")]
