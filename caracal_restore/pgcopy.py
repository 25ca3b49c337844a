"""Rows of ``COPY … TO STDOUT`` (text format) as lines of bytes, streamed.

COPY's text format ends every row with a newline and escapes newlines, tabs and backslashes
inside values, so a row is exactly one line and its fields are separated by raw tabs. Reading
COPY is the fastest way to stream a million rows out of PostgreSQL; the readings that hash or
compare every row (fingerprints, chain HMACs, rows per export hour) take their rows from here.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator
from typing import Any

import psycopg
from psycopg import errors, pq
from psycopg.abc import Query

from caracal_restore.waiting import ready

#: Rows handed on per list by ``copy_rows`` (a list per row would cost more than the row).
BATCH = 2048


def copy_rows(conn: psycopg.Connection[Any], query: Query,
              params: Any = None) -> Iterator[list[bytes]]:
    """The rows of ``COPY … TO STDOUT`` (text), each with its newline, in lists of up to
    ``BATCH``, in the order the server sends them.

    The server sends each row as one CopyData message. They are taken from libpq one by one
    (``PQgetCopyData``, through psycopg's ``pgconn``), not through psycopg's ``Copy`` object,
    whose Python layers cost ~0.5–1 µs more per row, and a run reads several million rows.
    The query is bound on the client, as psycopg binds a COPY's parameters. An error of the
    server raises the psycopg exception of its SQLSTATE; a row that does not end with a newline
    raises ``psycopg.DataError``. Rows left unread when the caller stops are drained, so the
    connection can be used again.
    """
    statement = psycopg.ClientCursor(conn).mogrify(query, params)
    pgconn = conn.pgconn
    pgconn.send_query(statement.encode(conn.info.encoding))
    _flush(pgconn)
    _expect(conn, _result(pgconn), pq.ExecStatus.COPY_OUT)
    get = pgconn.get_copy_data
    done = False
    try:
        rows: list[bytes] = []
        room = BATCH
        while True:
            size, data = get(1)  # what libpq holds; 0: nothing yet
            if size > 0:
                rows.append(bytes(data))
                room -= 1
                if not room:
                    _check_last(rows)
                    yield rows
                    rows, room = [], BATCH
            elif size == 0:  # nothing held yet (once per network read, not per row)
                _receive(pgconn)
            else:  # -1: the end; -2: an error (raised by _finish)
                done = True
                break
        if rows:
            _check_last(rows)
            yield rows
    finally:
        if not done:  # the caller stopped early, or raised: read the rest
            while (size := get(1)[0]) >= 0:
                if size == 0:
                    _receive(pgconn)
        _finish(conn)


def _flush(pgconn: Any) -> None:
    """Send what libpq holds (a non-blocking connection may keep part of a statement)."""
    while pgconn.flush():
        ready(pgconn.socket, write=True)


def _receive(pgconn: Any) -> None:
    """Wait for the server's next bytes here, where a signal can interrupt the wait (not in
    libpq), and hand them to libpq."""
    ready(pgconn.socket)
    pgconn.consume_input()


def _result(pgconn: Any) -> Any:
    """``PQgetResult``, its waits done by ``_receive``."""
    while pgconn.is_busy():
        _receive(pgconn)
    return pgconn.get_result()


def _check_last(rows: list[bytes]) -> None:
    """Each CopyData message is one row: the last of a list must end with its newline."""
    if rows[-1][-1:] != b"\n":
        raise psycopg.DataError("a COPY row without its newline")


def _expect(conn: psycopg.Connection[Any], result: Any, status: pq.ExecStatus) -> None:
    """Raise the server's error when ``result`` is not of ``status`` (and read the results
    left, so the connection is ready for the next statement)."""
    if result is not None and result.status == status:
        return
    if result is not None and result.status == pq.ExecStatus.COPY_IN:
        conn.pgconn.put_copy_end(b"not read: only COPY ... TO STDOUT is")  # the server aborts
        _flush(conn.pgconn)
    elif result is not None and result.status == pq.ExecStatus.FATAL_ERROR:
        _finish(conn)
        raise _error(conn, result)
    with contextlib.suppress(psycopg.Error):
        _finish(conn)
    raise psycopg.ProgrammingError("the statement is not a COPY ... TO STDOUT")


def _finish(conn: psycopg.Connection[Any]) -> None:
    """Read every result left of the statement; raise the first error among them."""
    error = None
    while (result := _result(conn.pgconn)) is not None:
        if result.status == pq.ExecStatus.FATAL_ERROR and error is None:
            error = _error(conn, result)
    if error is not None:
        raise error


def _error(conn: psycopg.Connection[Any], result: Any) -> psycopg.Error:
    """The psycopg exception for an error result (by its SQLSTATE)."""
    code = result.error_field(pq.DiagnosticField.SQLSTATE)
    message = (result.error_field(pq.DiagnosticField.MESSAGE_PRIMARY)
               or result.error_message or b"COPY failed").decode(conn.info.encoding, "replace")
    try:
        kind = errors.lookup(code.decode("ascii")) if code else psycopg.DatabaseError
    except KeyError:
        kind = psycopg.DatabaseError
    return kind(message)


def copy_line_batches(conn: psycopg.Connection[Any], query: Query,
                      params: Any = None) -> Iterator[list[bytes]]:
    """Lists of complete rows (lines without their newline), in the order COPY sends them
    (``copy_rows``).

    ``query`` is a whole ``COPY (…) TO STDOUT`` statement.
    """
    for rows in copy_rows(conn, query, params):
        yield [row[:-1] for row in rows]


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
