"""Rows of ``COPY … TO STDOUT`` (text format) as lines of bytes, streamed.

COPY's text format ends every row with a newline and escapes newlines, tabs and backslashes
inside values, so a row is exactly one line and its fields are separated by raw tabs. Reading
COPY is the fastest way to stream a million rows out of PostgreSQL; the readings that hash or
compare every row (fingerprints, chain HMACs, rows per export hour) take their rows from here.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import psycopg
from psycopg.abc import Query


def copy_line_batches(conn: psycopg.Connection[Any], query: Query,
                      params: Any = None) -> Iterator[list[bytes]]:
    """Each chunk's complete rows (lines without their newline), in the order COPY sends them.

    ``query`` is a whole ``COPY (…) TO STDOUT`` statement. A stream that ends inside a row
    raises ``psycopg.DataError``.
    """
    rest = b""
    with conn.cursor() as cur, cur.copy(query, params) as copy:
        for chunk in copy:
            lines = (rest + bytes(chunk)).split(b"\n")
            rest = lines.pop()
            if lines:
                yield lines
    if rest:
        raise psycopg.DataError("COPY ended inside a row")


_ESCAPES = {b"b": b"\b", b"f": b"\f", b"n": b"\n", b"r": b"\r", b"t": b"\t", b"v": b"\v"}
_ESCAPE_RE = re.compile(rb"\\(x[0-9A-Fa-f]{1,2}|[0-7]{1,3}|.)", re.DOTALL)


def unescape(field: bytes) -> bytes | None:
    """One field of a text COPY line as the server holds it (None: NULL)."""
    if field == b"\\N":
        return None

    def one(m: re.Match[bytes]) -> bytes:
        code = m.group(1)
        if code[:1] == b"x" and len(code) > 1:
            return bytes([int(code[1:], 16)])
        if code[:1].isdigit():
            return bytes([int(code, 8) & 0xFF])
        return _ESCAPES.get(code, code)

    return _ESCAPE_RE.sub(one, field)


def split_escaped(line: bytes) -> list[bytes | None]:
    """Every field of a text COPY line that holds escapes (tabs inside values are escaped).

    A line without a backslash needs none of this: ``line.split(b"\\t")`` gives its fields.
    """
    return [unescape(f) for f in line.rstrip(b"\n").split(b"\t")]
