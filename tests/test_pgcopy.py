"""``caracal_restore.pgcopy``: COPY rows read from libpq directly equal psycopg's own reading;
server errors raise psycopg's exceptions, and the connection stays usable after an error or an
early stop (a real PostgreSQL 18)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from psycopg import errors, sql

from caracal_restore import pgcopy
from caracal_restore.environments import postgres

ROWS = pgcopy.BATCH * 2 + 7  # three lists, the last one short


@pytest.fixture(scope="module")
def conn() -> Iterator[psycopg.Connection[Any]]:
    """A database with values COPY escapes (action: initdb + start + one table)."""
    with postgres.embedded() as pg:
        pg.create_database("copies")
        with pg.connect("copies") as connection:
            connection.execute(
                "CREATE TABLE t (n int, s text, j jsonb, b bytea, at timestamptz)")
            connection.execute(
                "INSERT INTO t SELECT n, CASE n % 5 WHEN 0 THEN NULL"
                " WHEN 1 THEN E'tab\\there' WHEN 2 THEN E'line\\nbreak\\\\' WHEN 3 THEN 'é€😀'"
                " ELSE '100%' END, jsonb_build_object('n', n, 'q', 'say \"hi\"'),"
                " decode(lpad(to_hex(n), 8, '0'), 'hex'),"
                " '2026-01-01 00:00:00+00'::timestamptz + n * interval '1 second'"
                f" FROM generate_series(1, {ROWS}) n")
            yield connection


def _psycopg_lines(conn: psycopg.Connection[Any], query: Any, params: Any = None
                   ) -> list[bytes]:
    with conn.cursor() as cur, cur.copy(query, params) as copy:
        return [bytes(chunk) for chunk in copy]


@pytest.mark.parametrize(("query", "params"), [
    ("COPY t TO STDOUT", None),
    (sql.SQL("COPY (SELECT * FROM t WHERE at < %s AND s LIKE %s ORDER BY n) TO STDOUT"),
     (dt.datetime(2026, 1, 1, 0, 30, tzinfo=dt.UTC), "%")),
    ("COPY (SELECT s, '100%%' FROM t WHERE n < 9) TO STDOUT", None),
])
def test_rows_equal_psycopgs_copy(conn: psycopg.Connection[Any], query: Any,
                                  params: Any) -> None:
    """Every row, in order, byte for byte, with its newline (parameters bound as psycopg does);
    ``copy_line_batches`` gives the same lines without it."""
    batches = list(pgcopy.copy_rows(conn, query, params))
    rows = [row for batch in batches for row in batch]
    assert rows == _psycopg_lines(conn, query, params)
    assert rows
    assert all(len(batch) <= pgcopy.BATCH for batch in batches)
    lines = [line for batch in pgcopy.copy_line_batches(conn, query, params) for line in batch]
    assert lines == [row[:-1] for row in rows]


def test_rows_come_in_lists_of_batch(conn: psycopg.Connection[Any]) -> None:
    """Full lists, then the rest."""
    sizes = [len(batch) for batch in pgcopy.copy_rows(conn, "COPY t TO STDOUT")]
    assert sizes == [pgcopy.BATCH, pgcopy.BATCH, 7]


@pytest.mark.parametrize(("query", "error"), [
    ("COPY no_such_table TO STDOUT", errors.UndefinedTable),
    # fails after the first rows were sent
    (f"COPY (SELECT 1 / ({ROWS} - n) FROM t ORDER BY n) TO STDOUT", errors.DivisionByZero),
    ("COPY t FROM STDIN", psycopg.ProgrammingError),  # not a COPY out: aborted
    ("SELECT 1", psycopg.ProgrammingError),
])
def test_server_errors_raise_and_the_connection_stays_usable(
        conn: psycopg.Connection[Any], query: str, error: type[Exception]) -> None:
    with pytest.raises(error):
        for _batch in pgcopy.copy_rows(conn, query):
            pass
    assert conn.execute("SELECT 1").fetchone() == (1,)


def test_early_stop_drains_inside_a_transaction(conn: psycopg.Connection[Any]) -> None:
    """A caller that stops after the first list leaves the connection ready, its transaction
    open."""
    with conn.transaction():
        reading = pgcopy.copy_rows(conn, "COPY t TO STDOUT")
        assert len(next(reading)) == pgcopy.BATCH
        reading.close()
        assert conn.info.transaction_status == psycopg.pq.TransactionStatus.INTRANS
        assert conn.execute("SELECT count(*) FROM t").fetchone() == (ROWS,)


def test_ready_waits_for_a_descriptor_of_any_number() -> None:
    """``waiting.ready``: False when nothing comes within the timeout, True once data is there
    or the socket can be written — also for a descriptor above select(2)'s 1023."""
    import os
    import socket

    from caracal_restore.waiting import ready

    left, right = socket.socketpair()
    high = 1500
    try:
        try:
            os.dup2(left.fileno(), high)
        except OSError as exc:
            pytest.skip(f"no descriptor {high} here ({exc}): the open-files limit is lower")
        try:
            for fd in (left.fileno(), high):
                assert not ready(fd, timeout=0.01)
                assert ready(fd, write=True, timeout=0.01)
            right.sendall(b"x")
            for fd in (left.fileno(), high):
                assert ready(fd, timeout=1)
                assert ready(fd)
        finally:
            os.close(high)
    finally:
        left.close()
        right.close()
