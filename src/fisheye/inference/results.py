"""Batch prediction results streamed to a file as they are produced, and resumed after a kill.

The format follows the name: `.csv`, `.jsonl` or `.parquet`. Whatever the format, what is
on disk after a kill (SIGKILL, OOM, a lost node) is only whole rows, so a resumed run skips
exactly the photos already written and every photo ends up in the output once:

- a local CSV or JSON Lines file is appended to and flushed after every batch; a row cut
  short by a kill is the text after the last row's end (JSON Lines: the last newline; CSV:
  the last newline outside a quoted field), which `resume` cuts off;
- Parquet (whose footer is written last) and every object-storage output are a folder of
  part files, each made complete before it appears (written beside its final name then
  renamed; an object-storage PUT is atomic), `rows_per_part` rows each.

Paths are written as text (`path_text`): a name's UTF-8 as it is, each byte that is not
UTF-8 as `\\xNN`, and a backslash as two, so any file name can be written, and a resumed
run recognises it. A row that is not a result row is refused with its line, never guessed at.
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from fisheye.data.storage import filesystem, is_url, url_of
from fisheye.inference.predictor import FileResult
from fisheye.inference.result_paths import path_text, plain_text

FORMATS = {".csv": "csv", ".jsonl": "jsonl", ".parquet": "parquet"}
COLUMNS = ("path", "label", "confidence", "top_k", "ood_score", "in_distribution", "error")
ROWS_PER_PART = 1000
_PART = re.compile(r"^part-(\d{6})\.(csv|jsonl|parquet)$")


class ResultsError(ValueError):
    """An output cannot be written or resumed (unknown format, exists, unreadable)."""


def result_format(out: str | Path) -> str:
    """csv, jsonl or parquet, from the output's name (ResultsError otherwise)."""
    name = str(out).rstrip("/")
    for suffix, fmt in FORMATS.items():
        if name.lower().endswith(suffix):
            return fmt
    raise ResultsError(f"{out}: the output's name must end in {', '.join(FORMATS)}")


def result_row(result: FileResult) -> dict[str, Any]:
    """One photo's output row (every column present; None where it does not apply)."""
    row: dict[str, Any] = dict.fromkeys(COLUMNS)
    row["path"] = path_text(result.path)
    if result.prediction is None:
        row["error"] = plain_text(result.error or "unreadable")
        return row
    row.update(result.prediction.to_dict())
    return row


def _parquet():
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError as exc:
        raise ResultsError(
            "Parquet output needs pyarrow: pip install 'fisheye[scale]' (or use .csv/.jsonl)"
        ) from exc
    return pa, pq


def _parquet_schema(pa):
    top_k = pa.list_(pa.struct([("label", pa.string()), ("probability", pa.float64())]))
    return pa.schema(
        [
            ("path", pa.string()),
            ("label", pa.string()),
            ("confidence", pa.float64()),
            ("top_k", top_k),
            ("ood_score", pa.float64()),
            ("in_distribution", pa.bool_()),
            ("error", pa.string()),
        ]
    )


def _csv_cell(column: str, value: Any) -> Any:
    if value is None:
        return ""
    if column == "top_k":
        return json.dumps(value)
    if column == "in_distribution":
        return "true" if value else "false"
    return value


def _csv_value(column: str, text: str) -> Any:
    if text == "":
        return None
    if column == "top_k":
        return json.loads(text)
    if column in ("confidence", "ood_score"):
        return float(text)
    if column == "in_distribution":
        return text == "true"
    return text


def encode(rows: list[dict[str, Any]], fmt: str, *, header: bool = True) -> bytes:
    """Rows as the bytes of a CSV, JSON Lines or Parquet file."""
    if fmt == "parquet":
        pa, pq = _parquet()
        buf = io.BytesIO()
        pq.write_table(pa.Table.from_pylist(rows, schema=_parquet_schema(pa)), buf)
        return buf.getvalue()
    if fmt == "jsonl":
        text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
        return text.encode("utf-8", "backslashreplace")
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    if header:
        writer.writerow(COLUMNS)
    writer.writerows([_csv_cell(c, r[c]) for c in COLUMNS] for r in rows)
    return buf.getvalue().encode("utf-8", "backslashreplace")


def decode(data: bytes, fmt: str) -> list[dict[str, Any]]:
    """The rows of one CSV, JSON Lines or Parquet file (as `encode` writes them).

    ResultsError, naming the line, for a row that is not a result row.
    """
    if fmt == "parquet":
        _, pq = _parquet()
        rows = pq.read_table(io.BytesIO(data)).to_pylist()
        for n, row in enumerate(rows, 1):
            _check_row(row, f"row {n}")
        return rows
    if fmt == "jsonl":
        return list(_decode_jsonl(data))
    return list(_decode_csv(data))


def _check_row(row: Any, where: str) -> None:
    if not isinstance(row, dict) or not isinstance(row.get("path"), str) or not row["path"]:
        raise ResultsError(
            f"{where}: not a result row (a row must be an object with a non-empty `path`), "
            f"got {_preview(row)}"
        )


def _preview(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _decode_jsonl(data: bytes) -> Iterator[dict[str, Any]]:
    # Rows end at "\n" only: a path may hold U+2028, U+0085 or "\r", which str.splitlines
    # would also split at.
    for n, line in enumerate(data.split(b"\n"), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line.decode("utf-8"))
        except (UnicodeDecodeError, ValueError) as exc:
            raise ResultsError(f"line {n}: not a JSON row ({exc})") from None
        _check_row(row, f"line {n}")
        yield row


def _decode_csv(data: bytes) -> Iterator[dict[str, Any]]:
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ResultsError(f"not UTF-8 text ({exc})") from None
    reader = csv.DictReader(io.StringIO(text, newline=""))
    try:
        if reader.fieldnames is not None and "path" not in reader.fieldnames:
            raise ResultsError("not a FishEye results file: no `path` column")
        for raw in reader:
            where = f"line {reader.line_num}"
            try:
                row = {c: _csv_value(c, raw.get(c) or "") for c in COLUMNS}
            except (ValueError, TypeError) as exc:
                raise ResultsError(f"{where}: not a result row ({exc})") from None
            _check_row(row, where)
            yield row
    except csv.Error as exc:
        raise ResultsError(f"line {reader.line_num}: not CSV ({exc})") from None


_CSV_SPECIAL = re.compile(rb'["\n]')


def _whole_rows(data: bytes, fmt: str) -> bytes:
    """The bytes up to the end of the last whole row (a row cut short by a kill dropped).

    A JSON Lines row ends at a newline; a CSV row at a newline outside a quoted field (a
    path with a newline is quoted), so a cut inside a quoted field is dropped whole.
    """
    if fmt != "csv":
        return data[: data.rfind(b"\n") + 1]
    end = 0
    quoted = False
    for m in _CSV_SPECIAL.finditer(data):
        if m.group() == b'"':
            quoted = not quoted  # a doubled quote inside a field toggles twice
        elif not quoted:
            end = m.end()
    return data[:end]


class _Parts:
    """A folder (local or object storage) of part files, each complete before it appears."""

    def __init__(self, out: str | Path, fmt: str):
        self.fmt = fmt
        self.url = str(out).rstrip("/") if is_url(out) else None
        if self.url is not None:
            self.fs, self.root = filesystem(self.url)
        else:
            self.fs, self.root = None, str(out)

    def _join(self, name: str) -> str:
        return f"{self.root.rstrip('/')}/{name}"

    def names(self) -> list[str]:
        """The finished part files' names, in order; temporaries and other files ignored."""
        if self.fs is None:
            listed = os.listdir(self.root) if os.path.isdir(self.root) else []
        else:
            listed = [p.rsplit("/", 1)[-1] for p in self.fs.find(self.root)]
        return sorted(n for n in listed if _PART.match(n))

    def exists(self) -> bool:
        """Whether anything is at the output's location."""
        if self.fs is None:
            return os.path.exists(self.root) and (
                not os.path.isdir(self.root) or bool(os.listdir(self.root))
            )
        return bool(self.fs.exists(self.root) and self.fs.find(self.root))

    def read(self, name: str) -> bytes:
        """One part file's bytes."""
        if self.fs is None:
            return Path(self.root, name).read_bytes()
        return self.fs.cat_file(self._join(name))

    def write(self, name: str, data: bytes) -> None:
        """Make the part file `name` appear whole (rename locally; one PUT in object storage)."""
        if self.fs is not None:
            self.fs.pipe_file(self._join(name), data)
            return
        os.makedirs(self.root, exist_ok=True)
        tmp = Path(self.root, f".{name}.tmp")
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, Path(self.root, name))

    def remove_temporaries(self) -> None:
        """Delete half-written local parts a killed run left behind."""
        if self.fs is None and os.path.isdir(self.root):
            for name in os.listdir(self.root):
                if name.startswith(".part-") and name.endswith(".tmp"):
                    os.remove(Path(self.root, name))

    def location(self, name: str) -> str:
        """Where a part file is, as the user would spell it."""
        if self.fs is None:
            return str(Path(self.root, name))
        return url_of(self.fs, self._join(name), self.url)


def _is_parts(out: str | Path, fmt: str) -> bool:
    return fmt == "parquet" or is_url(out)


def read_results(out: str | Path) -> Iterator[dict[str, Any]]:
    """Every row written to an output so far (a file, or a folder of part files)."""
    fmt = result_format(out)
    if _is_parts(out, fmt):
        parts = _Parts(out, fmt)
        for name in parts.names():
            yield from decode(parts.read(name), fmt)
        return
    path = Path(out)
    if path.exists():
        yield from decode(_whole_rows(path.read_bytes(), fmt), fmt)


class ResultWriter:
    """Streams result rows to `out`; with `resume`, continues an earlier run's output.

    `done` holds the paths (as written) already in the output: skip them. Without `resume`
    an existing, non-empty output is refused rather than overwritten.
    """

    def __init__(
        self, out: str | Path, *, resume: bool = False, rows_per_part: int = ROWS_PER_PART
    ):
        if rows_per_part < 1:
            raise ResultsError(f"rows_per_part must be at least 1, got {rows_per_part}")
        self.out = out
        self.fmt = result_format(out)
        self.rows_per_part = rows_per_part
        self.done: set[str] = set()
        self.written = 0
        self._pending: list[dict[str, Any]] = []
        self._file = None
        self._parts = _Parts(out, self.fmt) if _is_parts(out, self.fmt) else None
        if self._parts is not None:
            self._open_parts(resume)
        else:
            self._open_file(Path(out), resume)

    def _refuse_existing(self) -> None:
        raise ResultsError(
            f"{self.out} already exists: pass --resume to continue it, or choose a new name"
        )

    def _open_parts(self, resume: bool) -> None:
        parts = self._parts
        if parts.exists() and not resume:
            self._refuse_existing()
        if parts.fs is None and os.path.isfile(parts.root):
            raise ResultsError(f"{self.out} is a file; Parquet output is a folder of parts")
        parts.remove_temporaries()
        names = parts.names()
        for name in names:
            self.done.update(r["path"] for r in self._decode(parts.read(name), name))
        self._next_part = int(_PART.match(names[-1]).group(1)) + 1 if names else 0

    def _open_file(self, path: Path, resume: bool) -> None:
        if path.is_dir():
            raise ResultsError(f"{path} is a folder; give a file name ending in .{self.fmt}")
        existing = path.read_bytes() if path.exists() else b""
        if existing and not resume:
            self._refuse_existing()
        whole = _whole_rows(existing, self.fmt)
        self.done.update(r["path"] for r in self._decode(whole, str(path)))
        path.parent.mkdir(parents=True, exist_ok=True)
        self._file = open(path, "r+b" if path.exists() else "wb")  # noqa: SIM115 (closed in close)
        self._file.truncate(len(whole))
        self._file.seek(len(whole))
        # The CSV header comes with the first rows: a run that fails before any leaves an
        # empty file, which the next run may reuse without --resume.
        self._header = not whole

    def _decode(self, data: bytes, where: str) -> list[dict[str, Any]]:
        try:
            return decode(data, self.fmt)
        except ResultsError as exc:
            raise ResultsError(f"cannot resume from {where}: {exc}") from None
        except Exception as exc:  # a format library's own errors: not a results file
            raise ResultsError(
                f"cannot resume from {where}: not a FishEye results file ({exc})"
            ) from exc

    def write(self, rows: Iterable[dict[str, Any]]) -> None:
        """Add rows; a file is flushed at once, parts are written every `rows_per_part` rows."""
        rows = list(rows)
        self.written += len(rows)
        if self._file is not None:
            self._file.write(encode(rows, self.fmt, header=self._header))
            self._file.flush()
            self._header = False
            return
        self._pending += rows
        while len(self._pending) >= self.rows_per_part:
            self._write_part(self._pending[: self.rows_per_part])
            self._pending = self._pending[self.rows_per_part :]

    def _write_part(self, rows: list[dict[str, Any]]) -> None:
        name = f"part-{self._next_part:06d}.{self.fmt}"
        self._parts.write(name, encode(rows, self.fmt))
        self._next_part += 1

    def close(self) -> None:
        """Write what is pending and close the output."""
        if self._pending:
            self._write_part(self._pending)
            self._pending = []
        if self._file is not None:
            self._file.close()
            self._file = None

    def __enter__(self) -> ResultWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        # On an exception (Ctrl-C included) the rows produced so far are still written.
        self.close()
