"""`fisheye monitor report`: an HTML page with PNG plots from the prediction log."""

from __future__ import annotations

import html
import json
import logging
import re
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from fisheye.monitoring.prediction_log import (
    SQLiteStore,
    StoreError,
    is_postgres_url,
    open_store,
    redact,
)

log = logging.getLogger(__name__)
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
MAX_WINDOW_DAYS = 3660  # ten years: longer than any log is kept, and far from float overflow


class ReportError(RuntimeError):
    """The prediction log cannot be read."""


def parse_window(text: str) -> float:
    """Seconds in a window such as `30m`, `24h`, `7d` (a bare number is seconds).

    ValueError unless it is positive and at most MAX_WINDOW_DAYS.
    """
    m = re.fullmatch(r"\s*(\d{1,30}(?:\.\d{1,30})?)\s*([smhdw]?)\s*", text or "")
    if not m:
        raise ValueError(f"invalid window {text!r}; use e.g. 30m, 24h or 7d")
    value = float(m.group(1)) * _UNITS[m.group(2) or "s"]
    if value <= 0:
        raise ValueError(f"the window must be positive, got {text!r}")
    if not value <= MAX_WINDOW_DAYS * 86400:  # also refuses inf and nan
        raise ValueError(
            f"the window {text!r} is too long; at most {MAX_WINDOW_DAYS}d "
            f"({MAX_WINDOW_DAYS // 366} years)"
        )
    return value


def _bins(ts: np.ndarray, n_bins: int = 24) -> tuple[np.ndarray, np.ndarray]:
    lo, hi = float(ts.min()), float(ts.max())
    edges = np.linspace(lo, hi if hi > lo else lo + 1, n_bins + 1)
    idx = np.clip(np.searchsorted(edges, ts, side="right") - 1, 0, n_bins - 1)
    return edges, idx


def _dates(x: np.ndarray) -> list[datetime]:
    return [datetime.fromtimestamp(float(t), UTC) for t in x]


def write_report(
    db: Path | str,
    out_dir: Path,
    *,
    window_s: float | None = None,
    replica: str | None = None,
) -> Path:
    """Write report.html and its PNG plots into `out_dir`; returns the page's path.

    `db` is the SQLite file of one server, or the PostgreSQL URL a fleet shares (the report
    then covers every replica, or `replica` only)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if is_postgres_url(db):
        store = open_store(db, replica="report", readonly=True)
        where = redact(str(db))
    else:
        db = Path(db)
        if not db.is_file():
            raise ReportError(
                f"no prediction log at {db} (set FISHEYE_PREDICTION_DB on the server)"
            )
        store, where = SQLiteStore(db, readonly=True), str(db)
    since = 0.0 if window_s is None else time.time() - window_s
    try:
        read = store.report_rows(since, replica)
    except StoreError as exc:
        raise ReportError(f"cannot read the prediction log {where}: {exc}") from exc
    finally:
        store.close()
    preds, drift, fb, summary = (read[k] for k in ("predictions", "drift", "feedback", "summary"))
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    plots: list[tuple[str, str]] = []

    def save(fig, name: str, title: str) -> None:
        fig.autofmt_xdate()
        fig.tight_layout()
        fig.savefig(out_dir / name, dpi=100)
        plt.close(fig)
        plots.append((name, title))

    if preds:
        ts = np.array([r[0] for r in preds])
        labels = np.array([r[1] for r in preds])
        conf = np.array([r[2] if r[2] is not None else np.nan for r in preds], dtype=float)
        ood = np.array([np.nan if r[3] is None else 1 - r[3] for r in preds], dtype=float)
        edges, idx = _bins(ts)
        centres = _dates((edges[:-1] + edges[1:]) / 2)
        width = (edges[1] - edges[0]) / 86400 * 0.9

        fig, ax = plt.subplots(figsize=(9, 4))
        bottom = np.zeros(len(centres))
        for cls in sorted(set(labels)):
            counts = np.bincount(idx[labels == cls], minlength=len(centres))
            ax.bar(centres, counts, width=width, bottom=bottom, label=cls)
            bottom += counts
        ax.set_ylabel("predictions")
        ax.legend(fontsize=7, ncol=3)
        save(fig, "class_mix.png", "Class mix over time")

        def per_bin(values: np.ndarray) -> np.ndarray:
            out = np.full(len(centres), np.nan)
            for b in range(len(centres)):
                v = values[(idx == b) & np.isfinite(values)]
                if v.size:
                    out[b] = v.mean()
            return out

        fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 3.5))
        a1.plot(centres, per_bin(conf), marker="o")
        a1.set_ylabel("mean confidence = estimated accuracy")
        a1.set_ylim(0, 1)
        a2.hist(conf[np.isfinite(conf)], bins=20, range=(0, 1))
        a2.set_xlabel("confidence")
        save(fig, "confidence.png", "Confidence")

        fig, ax = plt.subplots(figsize=(9, 3.5))
        ax.plot(centres, per_bin(ood), marker="o", color="tab:red")
        ax.axhline(0.2, ls="--", color="grey", label="alert: 20%")
        ax.set_ylabel("OOD rate")
        ax.set_ylim(0, 1)
        ax.legend()
        save(fig, "ood_rate.png", "Out-of-distribution rate")
    if drift:
        fig, ax = plt.subplots(figsize=(9, 3.5))
        ax.semilogy(_dates(np.array([r[0] for r in drift])), [r[1] for r in drift], marker="o")
        ax.axhline(0.01, ls="--", color="tab:red", label="drift: p < 0.01")
        ax.set_ylabel("MMD p-value")
        ax.legend()
        save(fig, "drift_p_values.png", "Drift test p-values")
    if fb:
        fts = np.array([r[0] for r in fb])
        ok = np.array([float(r[1]) for r in fb])
        fig, ax = plt.subplots(figsize=(9, 3.5))
        ax.plot(_dates(fts), np.cumsum(ok) / np.arange(1, len(ok) + 1), marker=".")
        ax.set_ylabel("accuracy on feedback (cumulative)")
        ax.set_ylim(0, 1.05)
        save(fig, "feedback_accuracy.png", "Accuracy on feedback")

    period = "all time" if window_s is None else f"the last {window_s / 3600:g} h"
    body = (
        "\n".join(
            f'<section><h2>{html.escape(title)}</h2><img src="{name}" alt="{html.escape(title)}">'
            "</section>"
            for name, title in plots
        )
        or "<p>The log holds no predictions in this window.</p>"
    )
    page = out_dir / "report.html"
    page.write_text(
        "<!doctype html><html lang=en><head><meta charset=utf-8>"
        "<title>FishEye monitoring report</title><style>body{font-family:sans-serif;"
        "max-width:980px;margin:2em auto}img{max-width:100%}pre{background:#f4f4f4;"
        "padding:1em;overflow:auto}</style></head><body>"
        f"<h1>FishEye monitoring report</h1><p>{html.escape(where)}, {period}, generated "
        f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC.</p>"
        f"<h2>Summary</h2><pre>{html.escape(json.dumps(summary, indent=2))}</pre>"
        f"{body}</body></html>\n"
    )
    log.info("report written to %s", page)
    return page
