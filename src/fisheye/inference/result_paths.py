"""Paths and messages as result text: anything a file system holds, written so it reads back.

`os.fsdecode` turns bytes that are not UTF-8 into lone surrogates, which no UTF-8 file can
hold; they are written as `\\xNN` (and a backslash doubled), so two names never give the
same text and a resumed run recognises what it wrote.
"""

from __future__ import annotations

import os
import re


def path_text(path: str | os.PathLike[str]) -> str:
    """A path as the text written to results: undecodable bytes (the surrogate escapes of
    `os.fsdecode`) as `\\xNN`, a backslash as `\\\\`, everything else as it is."""
    text = os.fspath(path)
    if "\\" not in text and not _SURROGATE.search(text):
        return text
    return _SURROGATE.sub(_escape_surrogate, text.replace("\\", "\\\\"))


_SURROGATE = re.compile("[\ud800-\udfff]")


def _escape_surrogate(m: re.Match[str]) -> str:
    code = ord(m.group())
    # os.fsdecode maps an undecodable byte 0xNN to U+DCNN; any other lone surrogate is kept
    # as its code point.
    return f"\\x{code - 0xDC00:02x}" if 0xDC80 <= code <= 0xDCFF else f"\\u{code:04x}"


def plain_text(text: str) -> str:
    """Text that encodes as UTF-8 (a lone surrogate, e.g. in an error message, escaped)."""
    return _SURROGATE.sub(_escape_surrogate, text)
