"""Data cards: validation, and staging their photos from a local HTTP server or a git mirror."""

from __future__ import annotations

import csv
import functools
import hashlib
import http.server
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from fisheye.cli import app
from fisheye.data.cards import COLUMNS, CardError, git_fetcher, read_card, stage_card
from tests.helpers.photos import encode, photo

runner = CliRunner()


def _photos(folder: Path, n: int) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        path = folder / f"catch-{i}.png"
        path.write_bytes(encode(photo(i), "PNG"))
        paths.append(path)
    return paths


def _row(photo_file: Path, **over: str) -> dict[str, str]:
    data = photo_file.read_bytes()
    row = {
        "class": "Sea Bass",
        "source": "test-source",
        "use": "test",
        "group": photo_file.stem,
        "url": "",
        "repo": "",
        "commit": "",
        "path": photo_file.name,
        "licence": "CC0-1.0",
        "sha256": hashlib.sha256(data).hexdigest(),
        "bytes": str(len(data)),
        "label_from": "the test wrote it",
    }
    row.update(over)
    return row


def _card(path: Path, rows: list[dict[str, str]]) -> Path:
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    return path


@pytest.fixture
def http_root(tmp_path: Path) -> Iterator[tuple[Path, str]]:
    """A folder served over HTTP on 127.0.0.1 (no network beyond this machine)."""
    root = tmp_path / "www"
    root.mkdir()
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield root, f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def test_a_card_is_checked_row_by_row(tmp_path: Path) -> None:
    (good,) = _photos(tmp_path / "p", 1)
    base = _row(good, url="https://example.org/a.png")
    assert read_card(_card(tmp_path / "ok.csv", [base]))[0].file_name.startswith(
        "test/Sea Bass/test-source-"
    )
    bad = {
        "sha256": ({**base, "sha256": "abc"}, "64 hex"),
        "use": ({**base, "use": "holdout"}, "use"),
        "source": ({**base, "source": "../x"}, "plain name"),
        "where": ({**base, "url": ""}, "url, or a repo"),
        "scheme": ({**base, "url": "file:///etc/passwd"}, "http"),
    }
    for name, (row, message) in bad.items():
        with pytest.raises(CardError, match=message):
            read_card(_card(tmp_path / f"{name}.csv", [row]))
    with pytest.raises(CardError, match="not one of the model's classes"):
        read_card(_card(tmp_path / "cls.csv", [base]), classes=["Trout"])
    twice = [base, {**base, "source": "other"}]
    with pytest.raises(CardError, match="two sources"):
        read_card(_card(tmp_path / "twice.csv", twice))
    split = [base, {**_row(good, use="train"), "url": base["url"], "sha256": "f" * 64}]
    with pytest.raises(CardError, match="both test and train"):
        read_card(_card(tmp_path / "split.csv", split))


def test_download_stages_photos_and_refuses_a_changed_one(
    tmp_path: Path, http_root: tuple[Path, str]
) -> None:
    root, url = http_root
    photos = _photos(root, 3)
    rows = [_row(p, url=f"{url}/{p.name}") for p in photos]
    rows[2]["sha256"] = "0" * 64  # the server now serves other bytes than the card recorded
    card = _card(tmp_path / "card.csv", rows)
    out = tmp_path / "staged"
    result = runner.invoke(app, ["data", "download", "--card", str(card), "--out", str(out)])
    assert result.exit_code == 1, result.output
    staged = sorted((out / "test" / "Sea Bass").iterdir())
    assert len(staged) == 2
    assert {hashlib.sha256(p.read_bytes()).hexdigest() for p in staged} == {
        r["sha256"] for r in rows[:2]
    }
    assert "2 fetched, 0 already there, 1 failed" in result.output
    # Again, without the changed photo: nothing is fetched twice.
    _card(card, rows[:2])
    again = runner.invoke(app, ["data", "download", "--card", str(card), "--out", str(out)])
    assert again.exit_code == 0, again.output
    assert "0 fetched, 2 already there, 0 failed" in again.output


def test_photos_come_from_a_git_mirror_at_the_recorded_commit(tmp_path: Path) -> None:
    work = tmp_path / "repo"
    (photo_path,) = _photos(work / "images", 1)
    git = ["git", "-c", "user.email=t@example.org", "-c", "user.name=t"]
    subprocess.run([*git, "init", "-q", str(work)], check=True)
    subprocess.run([*git, "-C", str(work), "add", "."], check=True)
    subprocess.run([*git, "-C", str(work), "commit", "-qm", "photos"], check=True)
    commit = subprocess.run(
        ["git", "-C", str(work), "rev-parse", "HEAD"], capture_output=True, text=True, check=True
    ).stdout.strip()
    mirrors = tmp_path / "mirrors"
    subprocess.run(
        ["git", "clone", "-q", "--bare", str(work), str(mirrors / "owner+fish")], check=True
    )
    row = _row(photo_path, repo="owner/fish", commit=commit, path="images/catch-0.png")
    rows = read_card(_card(tmp_path / "card.csv", [row]))
    report = stage_card(rows, tmp_path / "out", git_fetcher(mirrors))
    assert report.staged == 1 and not report.failed
    assert report.counts[("test", "Sea Bass")] == 1
    missing = stage_card(rows, tmp_path / "out2", git_fetcher(tmp_path / "nowhere"))
    assert missing.staged == 0 and "no git mirror" in missing.failed[0][1]
