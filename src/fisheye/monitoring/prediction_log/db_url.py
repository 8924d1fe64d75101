"""What a prediction store's name says: a PostgreSQL URL or a SQLite file, and the URL
without its password for messages."""

from __future__ import annotations

import re

POSTGRES_SCHEMES = ("postgresql://", "postgres://")


def is_postgres_url(db: object) -> bool:
    """Whether `db` names a PostgreSQL database (a URL) rather than a SQLite file."""
    return isinstance(db, str) and db.startswith(POSTGRES_SCHEMES)


def redact(url: str) -> str:
    """A database URL without its password (for messages and logs)."""
    return re.sub(r"(://[^:/@]*):[^@/]*@", r"\1:***@", url)
