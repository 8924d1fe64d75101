"""The photo archive: content addressing, dedupe, atomic writes, pruning by age and size, on a
folder and on fsspec's memory filesystem; the keeping policy, the photos held for feedback,
and the keeper thread with a real prediction log (SQLite and PostgreSQL, two replicas)."""

from __future__ import annotations

import hashlib
import os
import random
import sqlite3
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

import pytest

from fisheye.monitoring.photo_archive import (
    ArchiveError,
    FsspecArchive,
    KeepOptions,
    KeepPolicy,
    LocalArchive,
    PhotoArchive,
    PhotoKeeper,
    PhotoNotFoundError,
    RecentPhotos,
    check_location,
    open_archive,
    photo_path,
    photo_suffix,
)
from fisheye.monitoring.prediction_log import PredictionLog, PredictionRow, open_store
from tests.helpers.photos import encode, photo

DAY = 86400.0


def _jpeg(seed: int) -> bytes:
    return encode(photo(seed), "JPEG")


def _memory_archive() -> FsspecArchive:
    fsspec = pytest.importorskip("fsspec", reason="the object-storage backend needs fsspec")
    fs = fsspec.filesystem("memory")
    return FsspecArchive(fs, f"/archive-{uuid.uuid4().hex}", location="memory://archive")


@pytest.fixture(params=["folder", "memory"])
def archive(request: pytest.FixtureRequest, tmp_path: Path) -> PhotoArchive:
    """An empty archive in a folder, or in fsspec's memory filesystem (as object storage)."""
    if request.param == "folder":
        return LocalArchive(tmp_path / "archive")
    return _memory_archive()


def _set_age(archive: PhotoArchive, sha256: str, seconds_ago: float) -> None:
    """Make a kept photo look written `seconds_ago`."""
    path = archive.find(sha256)
    assert path is not None
    when = time.time() - seconds_ago
    if isinstance(archive, LocalArchive):
        os.utime(archive.root / path, (when, when))
    else:
        assert isinstance(archive, FsspecArchive)
        entry = archive.fs.store[f"{archive.root}/{path}"]
        entry.created = datetime.fromtimestamp(when, tz=UTC)


# -- the archive --------------------------------------------------------------------------------
def test_a_photo_is_kept_by_the_sha256_of_its_bytes(archive: PhotoArchive) -> None:
    data = _jpeg(1)
    key = archive.put(data)
    assert key == hashlib.sha256(data).hexdigest()
    assert archive.find(key) == f"{key[:2]}/{key[2:4]}/{key}.jpg" == photo_path(key, "jpg")
    assert archive.get(key) == data
    png = encode(photo(2), "PNG")
    assert archive.find(archive.put(png)).endswith(".png")
    assert sorted(p.sha256 for p in archive.photos()) == sorted([key, archive.put(png)])
    assert {p.size for p in archive.photos()} == {len(data), len(png)}


def test_the_same_bytes_are_kept_once(archive: PhotoArchive) -> None:
    data = _jpeg(3)
    first = archive.put_photo(data)
    again = archive.put_photo(bytes(data))  # equal bytes, another object
    assert first.written and not again.written and first.sha256 == again.sha256
    assert len(archive.photos()) == 1


def test_a_photo_cut_short_by_a_crash_is_written_again(archive: PhotoArchive) -> None:
    data = _jpeg(4)
    key = archive.put(data)
    archive._write(archive.find(key), data[:10])  # what a torn write would leave
    with pytest.raises(ArchiveError, match="damaged"):
        archive.get(key)
    assert archive.put_photo(data).written
    assert archive.get(key) == data


def test_a_failed_write_leaves_no_photo_and_no_temporary_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    archive = LocalArchive(tmp_path / "archive")
    data = _jpeg(5)

    def crash(*_args: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError, match="No space"):
        archive.put(data)
    monkeypatch.undo()
    assert archive.photos() == [] and list((tmp_path / "archive").rglob("*.*")) == []
    assert archive.find(hashlib.sha256(data).hexdigest()) is None


def test_a_temporary_file_left_by_a_killed_writer_is_not_a_photo_and_is_cleaned(
    tmp_path: Path,
) -> None:
    archive = LocalArchive(tmp_path / "archive")
    key = archive.put(_jpeg(6))
    left = archive.root / key[:2] / key[2:4] / f".{key}.jpg.{uuid.uuid4().hex}.tmp"
    left.write_bytes(b"half a photo")
    assert [p.sha256 for p in archive.photos()] == [key]
    archive.prune(10**9, 30)
    assert left.exists()  # young: may be a write under way
    old = time.time() - 2 * 3600
    os.utime(left, (old, old))
    archive.prune(10**9, 30)
    assert not left.exists() and archive.get(key)


def test_prune_deletes_photos_older_than_the_age_bound(archive: PhotoArchive) -> None:
    keys = [archive.put(_jpeg(10 + i)) for i in range(4)]
    _set_age(archive, keys[0], 40 * DAY)
    _set_age(archive, keys[1], 31 * DAY)
    _set_age(archive, keys[2], 29 * DAY)
    result = archive.prune(max_bytes=10**9, max_age_days=30)
    assert result.deleted == 2 and result.kept == 2
    assert sorted(p.sha256 for p in archive.photos()) == sorted(keys[2:])
    with pytest.raises(PhotoNotFoundError):
        archive.get(keys[0])
    # Variant: the same archive seen from a later day.
    assert archive.prune(10**9, 30, now=time.time() + 2 * DAY).deleted == 1


def test_prune_deletes_the_oldest_photos_beyond_the_size_bound(archive: PhotoArchive) -> None:
    photos = [_jpeg(20 + i) for i in range(5)]
    keys = [archive.put(p) for p in photos]
    for age, key in zip((50, 40, 30, 20, 10), keys, strict=True):
        _set_age(archive, key, age)
    budget = sum(len(p) for p in photos[2:])  # room for the three newest
    result = archive.prune(max_bytes=budget, max_age_days=30)
    assert result.deleted == 2 and result.kept_bytes == budget
    assert sorted(p.sha256 for p in archive.photos()) == sorted(keys[2:])
    assert archive.prune(max_bytes=budget, max_age_days=30).deleted == 0
    assert archive.prune(max_bytes=0, max_age_days=30).kept == 0


def test_a_missing_photo_and_a_bad_key_are_clear_errors(archive: PhotoArchive) -> None:
    with pytest.raises(PhotoNotFoundError, match="no photo"):
        archive.get("0" * 64)
    with pytest.raises(ValueError, match="64 lowercase hex"):
        archive.get("../../etc/passwd")


def test_photo_suffixes_follow_the_format() -> None:
    assert photo_suffix(_jpeg(1)) == "jpg"
    assert photo_suffix(encode(photo(1), "PNG")) == "png"
    assert photo_suffix(encode(photo(1), "WEBP")) == "webp"
    assert photo_suffix(encode(photo(1), "BMP")) == "bmp"
    assert photo_suffix(encode(photo(1), "TIFF")) == "tif"
    assert photo_suffix(b"not a photo") == "bin"


def test_open_archive_takes_a_folder_or_a_url(tmp_path: Path) -> None:
    assert isinstance(open_archive(tmp_path / "a"), LocalArchive)
    pytest.importorskip("fsspec", reason="the object-storage backend needs fsspec")
    remote = open_archive(f"memory://archive-{uuid.uuid4().hex}")
    assert isinstance(remote, FsspecArchive)
    key = remote.put(_jpeg(7))
    assert remote.get(key) == _jpeg(7)
    assert remote.url(remote.find(key)).startswith("memory://archive-")


def test_object_storage_without_its_driver_names_the_extra(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "s3fs" else real(name, *a)
    )
    with pytest.raises(ArchiveError, match=r"needs s3fs: pip install 'fisheye\[archive\]'"):
        check_location("s3://bucket/photos")
    assert check_location("/var/lib/fisheye/photos") == "/var/lib/fisheye/photos"
    with pytest.raises(ArchiveError, match="empty"):
        check_location(" ")


def test_settings_refuse_an_archive_without_the_prediction_log(tmp_path: Path) -> None:
    from pydantic import ValidationError

    from fisheye.serving.settings import ServeSettings

    folder = str(tmp_path / "archive")
    with pytest.raises(ValidationError, match="FISHEYE_PREDICTION_LOG"):
        ServeSettings(archive=folder, prediction_log=False)
    assert ServeSettings().keep_options() is None  # off by default
    options = ServeSettings(archive=folder, archive_max_gb=0.5).keep_options()
    assert options is not None and options.max_bytes == 2**29 and options.sample_rate == 0.01
    # The deprecated switch: every photo, in the folder it named.
    old = ServeSettings(store_images=True, image_dir=tmp_path / "images").keep_options()
    assert old is not None and old.sample_rate == 1.0 and old.location == str(tmp_path / "images")


# -- what is kept, and for how long in memory ------------------------------------------------------
def test_the_policy_keeps_ood_and_unsure_photos_and_a_sample() -> None:
    never = KeepPolicy(0.0)
    assert never.reason(False, False) == "ood" and never.reason(False, True) == "ood"
    assert never.reason(True, True) == "unsure" and never.reason(None, True) == "unsure"
    assert [never.reason(True, False) for _ in range(1000)] == [None] * 1000
    assert KeepPolicy(1.0).reason(True, False) == "sample"
    some = KeepPolicy(0.1, random.Random(0))
    kept = sum(some.reason(None, False) == "sample" for _ in range(10_000))
    assert 800 < kept < 1200
    with pytest.raises(ValueError, match="sample_rate"):
        KeepOptions("x", sample_rate=1.5)


def test_recent_photos_are_bounded_by_bytes_and_age() -> None:
    recent = RecentPhotos(max_bytes=25, max_age_s=60)
    now = time.time()
    for i in range(4):
        recent.add(f"id-{i}", bytes(10), now - 100 + i)
    assert len(recent) == 2 and recent.nbytes == 20  # the two newest fit
    assert recent.pop("id-0") is None and recent.pop("id-3") == bytes(10)
    recent.add("big", bytes(26), now)  # larger than the whole budget: not held
    assert recent.pop("big") is None
    recent.add("new", bytes(5), now)
    assert recent.oldest() == now - 98
    assert recent.expire(now) == 1 and recent.oldest() == now and len(recent) == 1


# -- the keeper ---------------------------------------------------------------------------------
class _FakeLog:
    """Feedback ids to report, and the references the keeper asked for."""

    def __init__(self) -> None:
        self.feedback: list[str] = []
        self.refs: list[tuple[str, str]] = []
        self.fail = False

    def find(self, _predicted_since: float, _received_since: float) -> list[str]:
        if self.fail:
            raise OSError("the store is away")
        return list(self.feedback)

    def reference(self, refs: list[tuple[str, str]]) -> None:
        self.refs.extend(refs)


def _keeper(archive: PhotoArchive, fake: _FakeLog, **options: float) -> tuple[PhotoKeeper, dict]:
    seen: dict = {"kept": [], "errors": [], "pruned": []}
    keeper = PhotoKeeper(
        archive,
        KeepOptions("test", **{"sample_rate": 0.0, **options}),
        fake.find,
        fake.reference,
        on_kept=lambda reason, n: seen["kept"].append((reason, n)),
        on_error=seen["errors"].append,
        on_pruned=lambda n, size: seen["pruned"].append((n, size)),
        poll_s=3600,  # looks for feedback on flush and stop only: the test says when
    )
    keeper.start()
    return keeper, seen


def test_the_keeper_writes_what_the_policy_keeps_and_photos_that_get_feedback(
    archive: PhotoArchive,
) -> None:
    fake = _FakeLog()
    keeper, seen = _keeper(archive, fake)
    try:
        ood, unsure, plain, other = _jpeg(30), _jpeg(31), _jpeg(32), _jpeg(33)
        assert keeper.offer("a", ood, in_distribution=False, unsure=False)
        assert keeper.offer("b", unsure, in_distribution=True, unsure=True)
        assert not keeper.offer("c", plain, in_distribution=True, unsure=False)
        assert not keeper.offer("d", other, in_distribution=None, unsure=False)
        assert keeper.flush()
        assert sorted(p.sha256 for p in archive.photos()) == sorted(
            hashlib.sha256(p).hexdigest() for p in (ood, unsure)
        )
        assert fake.refs == []  # the rows of "a" and "b" name their photo when written
        fake.feedback = ["c", "unknown-id"]
        assert keeper.flush()
        assert fake.refs == [("c", hashlib.sha256(plain).hexdigest())]
        assert archive.get(fake.refs[0][1]) == plain
        assert keeper.flush() and len(fake.refs) == 1  # feedback seen again: kept once
        assert [r for r, _ in seen["kept"]] == ["ood", "unsure", "feedback"]
        assert seen["errors"] == [] and seen["pruned"][0][0] == 0
    finally:
        keeper.stop()
    assert len(archive.photos()) == 3


def test_feedback_on_a_photo_no_longer_held_keeps_none(tmp_path: Path) -> None:
    archive = LocalArchive(tmp_path / "archive")
    fake = _FakeLog()
    first, second = _jpeg(40), _jpeg(41)
    keeper, _ = _keeper(archive, fake, recent_bytes=max(len(first), len(second)))
    try:
        keeper.offer("first", first, in_distribution=True, unsure=False)
        keeper.offer("second", second, in_distribution=True, unsure=False)  # pushes it out
        fake.feedback = ["first"]
        assert keeper.flush()
        assert fake.refs == [] and archive.photos() == []
        fake.feedback = ["first", "second"]
        assert keeper.flush()
        assert fake.refs == [("second", hashlib.sha256(second).hexdigest())]
    finally:
        keeper.stop()


def test_an_archive_that_fails_is_counted_and_loses_only_its_photos(
    tmp_path: Path,
) -> None:
    blocker = tmp_path / "archive"
    blocker.write_text("a file where the folder should be: every write fails")
    fake = _FakeLog()
    keeper, seen = _keeper(LocalArchive(blocker), fake)
    try:
        assert keeper.offer("a", _jpeg(50), in_distribution=False, unsure=False)
        keeper.offer("b", _jpeg(51), in_distribution=True, unsure=False)
        fake.feedback = ["b"]
        assert keeper.flush()
        # (The first prune fails too: the archive cannot be listed.)
        assert [e for e in seen["errors"] if e != "prune"] == ["write", "write"]
        assert seen["kept"] == []
        assert fake.refs == []  # no row names a photo that was not written
        fake.fail = True
        keeper.offer("c", _jpeg(52), in_distribution=True, unsure=False)
        assert keeper.flush() and seen["errors"][-1] == "feedback_lookup"
        assert keeper.running
    finally:
        keeper.stop()


def test_a_full_write_queue_holds_the_photo_for_feedback_instead(tmp_path: Path) -> None:
    fake = _FakeLog()
    archive = LocalArchive(tmp_path / "archive")
    seen: list[str] = []
    keeper = PhotoKeeper(
        archive,
        KeepOptions("test", sample_rate=1.0),
        fake.find,
        fake.reference,
        on_error=seen.append,
        max_pending_bytes=10,  # smaller than any photo
        poll_s=3600,
    )
    keeper.start()
    try:
        assert not keeper.offer("a", _jpeg(60), in_distribution=False, unsure=False)
        assert seen == ["queue_full"]
        fake.feedback = ["a"]
        assert keeper.flush() and [pid for pid, _ in fake.refs] == ["a"]
    finally:
        keeper.stop()


def test_a_stopped_keeper_takes_no_photo(tmp_path: Path) -> None:
    keeper, _ = _keeper(LocalArchive(tmp_path / "archive"), _FakeLog())
    keeper.stop()
    assert not keeper.offer("a", _jpeg(70), in_distribution=False, unsure=False)
    assert not keeper.running


# -- with the prediction log ----------------------------------------------------------------------
def _row(pid: str, data: bytes, kept: bool = False) -> PredictionRow:
    sha = hashlib.sha256(data).hexdigest()
    return PredictionRow(
        id=pid,
        ts=time.time(),
        model_version="v1",
        backend="onnx",
        label="Trout",
        confidence=0.9,
        ood_score=1.0,
        in_distribution=True,
        latency_ms=5.0,
        sha256=sha,
        photo_sha256=sha if kept else None,
    )


def _photo_refs(log: PredictionLog) -> dict[str, str | None]:
    store = log.store
    sql = "SELECT id, photo_sha256 FROM predictions"
    if log.path is not None:
        with sqlite3.connect(log.path) as conn:
            return dict(conn.execute(sql).fetchall())
    import psycopg

    with psycopg.connect(store.url) as conn:  # type: ignore[attr-defined]
        return dict(conn.execute(sql).fetchall())


@pytest.fixture(params=["sqlite", "postgres"])
def db(request: pytest.FixtureRequest, tmp_path: Path) -> Path | str:
    if request.param == "sqlite":
        return tmp_path / "log.sqlite"
    return request.getfixturevalue("postgres_url")


def test_feedback_on_a_recent_prediction_names_its_photo_in_the_row(
    db: Path | str, tmp_path: Path
) -> None:
    log = PredictionLog(open_store(db, replica="pod-a"), linger_s=0.001)
    log.start()
    archive = LocalArchive(tmp_path / "archive")
    keeper = PhotoKeeper(
        archive,
        KeepOptions(str(archive.root), sample_rate=0.0),
        log.store.recent_feedback_ids,
        log.reference_photos,
        poll_s=3600,
    )
    keeper.start()
    try:
        kept, held, unused = _jpeg(80), _jpeg(81), _jpeg(82)
        assert keeper.offer("p-kept", kept, in_distribution=False, unsure=False)
        log.record(_row("p-kept", kept, kept=True))
        for pid, data in (("p-held", held), ("p-unused", unused)):
            assert not keeper.offer(pid, data, in_distribution=True, unsure=False)
            log.record(_row(pid, data))
        assert log.flush()
        assert log.add_feedback("p-held", "Trout")["correct"]
        assert keeper.flush() and log.flush()
        refs = _photo_refs(log)
        assert refs == {
            "p-kept": hashlib.sha256(kept).hexdigest(),
            "p-held": hashlib.sha256(held).hexdigest(),
            "p-unused": None,
        }
        assert archive.get(refs["p-held"]) == held and log.lost == 0
    finally:
        keeper.stop()
        log.stop()


def test_feedback_taken_by_another_replica_keeps_the_photo_of_the_one_that_answered(
    postgres_url: str, tmp_path: Path
) -> None:
    """A fleet shares one store and one archive: feedback through pod-b names pod-a's photo;
    pod-b holds no photo of it and keeps nothing."""
    archive = LocalArchive(tmp_path / "shared-archive")
    logs, keepers = [], []
    for pod in ("pod-a", "pod-b"):
        log = PredictionLog(open_store(postgres_url, replica=pod), linger_s=0.001)
        log.start()
        keeper = PhotoKeeper(
            archive,
            KeepOptions(str(archive.root), sample_rate=0.0),
            log.store.recent_feedback_ids,
            log.reference_photos,
            poll_s=3600,
        )
        keeper.start()
        logs.append(log)
        keepers.append(keeper)
    (a, b), (keep_a, keep_b) = logs, keepers
    try:
        data = _jpeg(90)
        keep_a.offer("a-1", data, in_distribution=True, unsure=False)
        a.record(_row("a-1", data))
        keep_b.offer("b-1", _jpeg(91), in_distribution=True, unsure=False)
        b.record(_row("b-1", _jpeg(91)))
        assert a.flush() and b.flush()
        assert b.add_feedback("a-1", "Trout")["new"]
        assert keep_b.flush() and keep_a.flush() and a.flush()
        refs = _photo_refs(a)
        assert refs == {"a-1": hashlib.sha256(data).hexdigest(), "b-1": None}
        assert [p.sha256 for p in archive.photos()] == [refs["a-1"]]
    finally:
        for keeper in keepers:
            keeper.stop()
        for log in logs:
            log.stop()


def test_a_log_of_the_previous_sqlite_schema_gains_the_photo_column(tmp_path: Path) -> None:
    db = tmp_path / "v5.sqlite"
    log = PredictionLog(db)
    log.start()
    log.record(_row("old", _jpeg(100)))
    assert log.flush()
    log.stop()
    with sqlite3.connect(db) as conn:  # as FishEye before the archive wrote it
        conn.execute("ALTER TABLE predictions DROP COLUMN photo_sha256")
        conn.execute("PRAGMA user_version = 5")
    log = PredictionLog(db)
    log.start()
    try:
        log.record(_row("new", _jpeg(101), kept=True))
        assert log.flush()
        refs = _photo_refs(log)
        assert refs == {"old": None, "new": hashlib.sha256(_jpeg(101)).hexdigest()}
    finally:
        log.stop()
    with sqlite3.connect(db) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == 6


def test_a_replica_of_the_previous_postgres_schema_keeps_writing(postgres_url: str) -> None:
    from fisheye.monitoring.prediction_log.pg_schema import MIGRATIONS
    from fisheye.monitoring.prediction_log.postgres_store import PostgresStore

    new = PredictionLog(open_store(postgres_url, replica="new-pod"), linger_s=0.001)
    new.start()
    old = PostgresStore(postgres_url, replica="old-pod", migrations=MIGRATIONS[:3])
    try:
        new.record(_row("new-1", _jpeg(110), kept=True))
        assert new.flush()
        old.write([_row("old-1", _jpeg(111))], [], [])  # it names no photo column
        refs = _photo_refs(new)
        assert refs == {"new-1": hashlib.sha256(_jpeg(110)).hexdigest(), "old-1": None}
    finally:
        old.close()
        new.stop()


# -- in the app ----------------------------------------------------------------------------------
def _serve_and_predict(settings, n: int) -> tuple[list[str], str]:
    """Answer `n` photos in an app with `settings`; their ids, and the metrics after."""
    from fastapi.testclient import TestClient

    from fisheye.serving.app import create_app

    with TestClient(create_app(settings)) as client:
        state = client.app.state.serving  # type: ignore[attr-defined]
        state.wait_loaded(60)
        ids = []
        for i in range(n):
            res = client.post("/v1/predict", files={"file": ("p.jpg", _jpeg(200 + i))})
            assert res.status_code == 200, res.text
            ids.append(res.json()["id"])
        assert state.photo_keeper is not None and state.photo_keeper.flush()
        assert state.prediction_log.flush()
        metrics = client.get("/metrics").text
    return ids, metrics


def test_unsure_photos_are_kept_by_the_app(tiny_bundle: Path, tmp_path: Path) -> None:
    from fisheye.serving.settings import ServeSettings

    db = tmp_path / "log.sqlite"
    settings = ServeSettings(
        model=tiny_bundle,
        threads=1,
        model_workers=1,
        prediction_db=db,
        archive=str(tmp_path / "archive"),
        archive_sample_rate=0,
        abstain_below=1.0,  # every answer is "not sure"
    )
    ids, metrics = _serve_and_predict(settings, 3)
    with sqlite3.connect(db) as conn:
        refs = dict(conn.execute("SELECT id, photo_sha256 FROM predictions").fetchall())
    expected = {i: hashlib.sha256(_jpeg(200 + n)).hexdigest() for n, i in enumerate(ids)}
    assert refs == expected
    archive = LocalArchive(tmp_path / "archive")
    assert {p.sha256 for p in archive.photos()} == set(expected.values())
    assert 'fisheye_archive_photos_total{reason="unsure"} 3.0' in metrics
    assert 'fisheye_archive_photos_total{reason="sample"} 0.0' in metrics


def test_the_deprecated_store_images_keeps_every_photo_beside_the_log(
    tiny_bundle: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from fisheye.serving.settings import ServeSettings

    db = tmp_path / "log.sqlite"
    settings = ServeSettings(
        model=tiny_bundle, threads=1, model_workers=1, prediction_db=db, store_images=True
    )
    with caplog.at_level("WARNING"):
        ids, metrics = _serve_and_predict(settings, 2)
    assert "FISHEYE_STORE_IMAGES is deprecated" in caplog.text
    archive = LocalArchive(Path(f"{db}.images"))
    assert len(archive.photos()) == 2
    assert 'fisheye_archive_photos_total{reason="sample"} 2.0' in metrics
