"""Data cards: every photo FishEye uses from outside ../shared, with its source, licence and hash.

A card is a CSV (`data/cards/*.csv`), one row per photo: where it comes from (a URL, and for
a git repository its name, commit and path), its licence, its sha256, its class and how that
label was decided, the group of photos of the same fish (never split), and what FishEye
uses it for (`train`, `val` or `test`: whole sources, never split). The photos themselves
are never committed; `stage_card` fetches them (from the URL, or from a local git mirror)
into a class-per-folder tree and checks every sha256.
"""

from __future__ import annotations

import csv
import hashlib
import logging
import os
import re
import subprocess
import tempfile
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

log = logging.getLogger(__name__)

COLUMNS = (
    "class",
    "source",
    "use",
    "group",
    "url",
    "repo",
    "commit",
    "path",
    "licence",
    "sha256",
    "bytes",
    "label_from",
)
USES = ("train", "val", "test")
MAX_PHOTO_BYTES = 50 * 1024 * 1024
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_SAFE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff")


class CardError(ValueError):
    """A data card is malformed, or a photo it lists cannot be fetched or does not match."""


@dataclass(frozen=True)
class CardRow:
    """One photo of a data card."""

    label: str
    source: str
    use: str
    group: str
    url: str
    repo: str
    commit: str
    path: str
    licence: str
    sha256: str
    bytes: int
    label_from: str

    @property
    def file_name(self) -> str:
        """Where the photo goes under the staging folder: use/class/source-hash.ext."""
        suffix = PurePosixPath(self.path or self.url).suffix.lower()
        suffix = suffix if suffix in IMAGE_SUFFIXES else ".jpg"
        return f"{self.use}/{self.label}/{self.source}-{self.sha256[:16]}{suffix}"


def _row(raw: dict[str, str], where: str, classes: Iterable[str] | None) -> CardRow:
    optional = ("repo", "commit", "path", "url")
    missing = [c for c in COLUMNS if c not in optional and not (raw.get(c) or "").strip()]
    if missing:
        raise CardError(f"{where}: empty {', '.join(missing)}")
    sha = raw["sha256"].strip().lower()
    if not _SHA256.match(sha):
        raise CardError(f"{where}: sha256 {raw['sha256']!r} is not 64 hex digits")
    if raw["use"].strip() not in USES:
        raise CardError(f"{where}: use {raw['use']!r} is not one of {', '.join(USES)}")
    if not _SAFE.match(raw["source"].strip()):
        raise CardError(f"{where}: source {raw['source']!r} must be a plain name")
    label = raw["class"].strip()
    if classes is not None and label not in set(classes):
        raise CardError(f"{where}: class {label!r} is not one of the model's classes")
    url = (raw.get("url") or "").strip()
    if not url and not (raw.get("repo") and raw.get("commit") and raw.get("path")):
        raise CardError(f"{where}: needs a url, or a repo, commit and path")
    if url and not url.startswith(("https://", "http://")):
        raise CardError(f"{where}: url {url!r} is not http(s)")
    try:
        size = int(raw["bytes"])
    except ValueError:
        raise CardError(f"{where}: bytes {raw['bytes']!r} is not a number") from None
    return CardRow(
        label,
        raw["source"].strip(),
        raw["use"].strip(),
        raw["group"].strip(),
        url,
        (raw.get("repo") or "").strip(),
        (raw.get("commit") or "").strip(),
        (raw.get("path") or "").strip(),
        raw["licence"].strip(),
        sha,
        size,
        raw["label_from"].strip(),
    )


def read_card(path: Path, classes: Iterable[str] | None = None) -> list[CardRow]:
    """The rows of a card (CardError naming the line of the first problem)."""
    path = Path(path)
    try:
        with path.open(newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            absent = [c for c in COLUMNS if c not in (reader.fieldnames or [])]
            if absent:
                raise CardError(f"{path}: missing columns {', '.join(absent)}")
            rows = [_row(raw, f"{path}:{i + 2}", classes) for i, raw in enumerate(reader)]
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise CardError(f"cannot read the card {path}: {exc}") from exc
    seen: dict[str, str] = {}
    for r in rows:
        if seen.setdefault(r.sha256, r.source) != r.source:
            raise CardError(f"{path}: the photo {r.sha256[:12]} is listed by two sources")
    uses = {}
    for r in rows:
        if uses.setdefault(r.source, r.use) != r.use:
            raise CardError(f"{path}: source {r.source} is in both {uses[r.source]} and {r.use}")
    return rows


Fetch = Callable[[CardRow], bytes]


def http_fetcher(timeout_s: float = 60.0) -> Fetch:
    """Fetch a photo from its URL (at most MAX_PHOTO_BYTES)."""

    def fetch(row: CardRow) -> bytes:
        if not row.url:
            raise CardError(f"{row.source}: {row.path} has no url (use a git mirror)")
        request = urllib.request.Request(row.url, headers={"User-Agent": "fisheye-data-cards"})
        with urllib.request.urlopen(request, timeout=timeout_s) as response:  # noqa: S310
            data = response.read(MAX_PHOTO_BYTES + 1)
        if len(data) > MAX_PHOTO_BYTES:
            raise CardError(f"{row.url} is over {MAX_PHOTO_BYTES} bytes")
        return data

    return fetch


def git_fetcher(mirrors: Path) -> Fetch:
    """Read a photo from a local git mirror of its repository (<mirrors>/<owner>+<name>)."""

    def fetch(row: CardRow) -> bytes:
        if not (row.repo and row.commit and row.path):
            raise CardError(f"{row.source}: no repo, commit and path to read from a mirror")
        base = Path(mirrors) / row.repo.replace("/", "+")
        candidates = (base / "repo" / ".git", base / "repo", base)
        gitdirs = [d for d in candidates if (d / "HEAD").exists()]
        if not gitdirs:
            raise CardError(f"no git mirror of {row.repo} under {mirrors}")
        for rev in (row.commit, "HEAD"):  # a newer snapshot may lack the recorded commit
            done = subprocess.run(
                ["git", "--git-dir", str(gitdirs[0]), "show", f"{rev}:{row.path}"],
                capture_output=True,
                timeout=120,
            )
            if done.returncode == 0:
                return done.stdout
        raise CardError(f"{row.repo} has no {row.path} at {row.commit[:12]} nor at HEAD")

    return fetch


@dataclass
class StageReport:
    """What staging a card did."""

    staged: int = 0
    present: int = 0
    failed: list[tuple[CardRow, str]] = field(default_factory=list)
    counts: Counter = field(default_factory=Counter)  # (use, class) -> photos


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def stage_card(
    rows: Iterable[CardRow],
    out: Path,
    fetch: Fetch,
    on_done: Callable[[int], None] | None = None,
) -> StageReport:
    """Fetch every photo into out/<use>/<class>/, checking its sha256; already there: kept.

    A photo that cannot be fetched or does not match is reported, not written, and the
    others go on.
    """
    out = Path(out)
    report = StageReport()
    for row in rows:
        target = out / row.file_name
        if target.is_file() and _sha256(target.read_bytes()) == row.sha256:
            report.present += 1
        else:
            try:
                data = fetch(row)
            except (OSError, CardError, subprocess.SubprocessError) as exc:
                report.failed.append((row, f"{type(exc).__name__}: {exc}"))
                data = None
            if data is not None and _sha256(data) != row.sha256:
                report.failed.append((row, f"sha256 {_sha256(data)[:12]}..., not the card's"))
                data = None
            if data is not None:
                target.parent.mkdir(parents=True, exist_ok=True)
                fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=".stage-")
                with os.fdopen(fd, "wb") as f:
                    f.write(data)
                os.replace(tmp, target)
                report.staged += 1
        if target.is_file():
            report.counts[(row.use, row.label)] += 1
        if on_done is not None:
            on_done(1)
    return report
