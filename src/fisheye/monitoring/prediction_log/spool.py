"""A bounded local file for the rows a shared store could not take while it was away.

While the PostgreSQL store cannot be reached, the writer appends each batch to this file
(one JSON line per batch, flushed to disk) instead of holding it, so the in-memory queue
keeps moving and a replica stopped meanwhile keeps its rows. When the store answers again,
the writer replays the batches in order; predictions carry unique ids, so a batch replayed
twice is stored once. Past `max_bytes` new batches are refused (the writer counts them as
lost). A torn last line (a replica killed while writing it) is skipped.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import astuple
from pathlib import Path
from typing import Any

from fisheye.monitoring.prediction_log.rows import PredictionRow, ShadowRow

log = logging.getLogger(__name__)
Batch = tuple[list[PredictionRow], list[dict[str, Any]], list[ShadowRow]]


def _plain(value: Any) -> Any:
    """JSON for what json cannot write itself (numpy scalars in drift results)."""
    item = getattr(value, "item", None)
    return item() if callable(item) else str(value)


class Spool:
    """Batches kept on disk, oldest first, at most `max_bytes` of them."""

    def __init__(self, path: Path, max_bytes: int) -> None:
        self.path = Path(path)
        self.max_bytes = max_bytes

    @property
    def pending(self) -> bool:
        """Whether the file holds batches not yet written to the store."""
        try:
            return self.path.stat().st_size > 0
        except OSError:
            return False

    def append(self, batch: Batch) -> bool:
        """Keep a batch; False when the spool is full or cannot be written."""
        predictions, drifts, shadows = batch
        line = json.dumps(
            {
                "p": [astuple(r) for r in predictions],
                "d": drifts,
                "s": [astuple(s) for s in shadows],
            },
            default=_plain,
        )
        data = (line + "\n").encode()
        try:
            size = self.path.stat().st_size if self.path.exists() else 0
            if size + len(data) > self.max_bytes:
                return False
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with open(self.path, "ab") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
        except OSError as exc:
            log.warning("prediction log: cannot spool rows to %s: %s", self.path, exc)
            return False
        return True

    def batches(self) -> list[Batch]:
        """The kept batches, oldest first."""
        try:
            lines = self.path.read_bytes().splitlines()
        except OSError:
            return []
        out: list[Batch] = []
        for line in lines:
            try:
                item = json.loads(line)
                out.append(
                    (
                        [PredictionRow(*r) for r in item["p"]],
                        list(item["d"]),
                        [ShadowRow(*s) for s in item["s"]],
                    )
                )
            except (ValueError, TypeError, KeyError):
                log.warning("prediction log: skipped a torn line in the spool %s", self.path)
        return out

    def keep_only(self, batches: list[Batch]) -> None:
        """Replace the file's batches by `batches` (those the store has not taken yet)."""
        if not batches:
            self.path.unlink(missing_ok=True)
            return
        tmp = self.path.with_name(self.path.name + ".tmp")
        tmp.unlink(missing_ok=True)
        rest = Spool(tmp, max_bytes=2**62)
        for batch in batches:
            rest.append(batch)
        os.replace(tmp, self.path)
