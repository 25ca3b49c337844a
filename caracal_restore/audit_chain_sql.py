"""In-database verifier of the audit chain: the server recomputes, this process only classifies.

For chains too large to ship to a client, PostgreSQL itself recomputes every row of
``audit_events`` (FACTS-1.0 §4.4–4.5, §20 S2):

- ``content_sha256`` with ``sha256()`` over the canonical bytes — the 12 fields NULL-coalesced
  (``''`` for text, ``'null'`` for JSON, ``jsonb::text`` as stored), each followed by
  ``chr(31)``, then the decimal Unix nanoseconds from exact integer arithmetic
  (``(extract(epoch FROM occurred_at) * 1000000)::bigint * 1000``), ``convert_to(…, 'UTF8')``;
- ``chain_hmac`` with pgcrypto's ``hmac(…, key, 'sha256')`` (or, without pgcrypto, the same
  HMAC written as two ``sha256()`` over the key pads), the key a bind parameter — never part of
  the statement text, never logged;
- the links with window functions over each zone in ``chain_seq`` order (``lag``), plus
  per-zone counts (``count(*) FILTER (…) OVER (PARTITION BY zone_id)``).

Only the rows the ordered scan could find irregular come back (a zone's first and last rows, a
row whose predecessor is not ``chain_seq - 1`` or whose ``prev_content_sha256`` is not its
predecessor's content, the row after a duplicate, unsequenced rows) and the first
``max_examples`` rows of each zone with a bad content hash, HMAC or archived copy. Between two
returned rows every row is regular, so the ordered scan's state is known at each returned row;
``caracal_restore.audit_chain`` then classifies them with the very same code, and the two
verifiers give the same findings (tests/test_audit_chain_agreement.py).
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import time
from collections.abc import Collection, Generator, Iterator, Mapping, Sequence
from typing import Any

import psycopg

from caracal_restore.audit_chain import (
    _AUDIT_SELECT,
    ArchivedEvent,
    Report,
    ZoneSummary,
    _as_key,
    _audit_content,
    _check_head,
    _check_marker,
    _Context,
    _exists,
    _Findings,
    _read_snapshot,
    _report,
    _ZoneScan,
    audit_partitions,
)
from caracal_restore.chainhash import AUDIT_HASHED_FIELDS, AUDIT_JSON_FIELDS

__all__ = ["verify_audit_chain_sql"]

_SHA256_BLOCK = 64

#: The canonical message of a row, built by the server (FACTS-1.0 §4.4).
CANONICAL_SQL = "concat(" + ", chr(31), ".join(
    [f"COALESCE({f}::text, 'null')" if f in AUDIT_JSON_FIELDS else f"COALESCE({f}, '')"
     for f in AUDIT_HASHED_FIELDS]
    + ["((extract(epoch FROM occurred_at) * 1000000)::bigint * 1000)::text"]
) + ")"

#: Order of every returned row: the ordered scan's (``ORDER BY chain_seq`` puts chain_seq < 1
#: first and NULL last; ties by id, then occurred_at), zones in bytewise order.
_ORDER = 'zone_id COLLATE "C", band, seq, event_id COLLATE "C", micros'

#: Columns of the link rows (statement B) and of the example rows (statement C).
_LINK_OUT = ("zone_id", "band", "seq", "event_id", "stored", "prev", "micros", "first",
             "pred_seq", "pred_stored", "pred_id", "pred_micros")
_EXAMPLE_OUT = ("zone_id", "band", "seq", "event_id", "stored", "prev", "micros", "computed",
                "content_bad", "hmac_bad", "archive_bad", "archived_id")
_TOTALS = ("n_rows", "n_keyed", "n_unsigned", "n_content", "n_hmac", "n_archive")


def _hmac_sql(function: str | None) -> str:
    """SQL for a row's chain_hmac under the bound key (pgcrypto, or the pads by hand)."""
    message = "convert_to(h.stored || '|' || h.prev, 'UTF8')"
    if function is not None:
        return f"encode({function}({message}, %(key)s, 'sha256'), 'hex')"
    return f"encode(sha256(%(opad)s || sha256(%(ipad)s || {message})), 'hex')"


def _rows_sql(filtered: bool) -> str:
    """Every row's chain columns, NULL-coalesced as the ordered scan reads them."""
    where = " WHERE zone_id = ANY(%(zones)s)" if filtered else ""
    return (
        "SELECT zone_id, chain_seq AS seq,"
        " CASE WHEN chain_seq IS NULL THEN 2 WHEN chain_seq < 1 THEN 0 ELSE 1 END AS band,"
        " COALESCE(id, '') AS event_id, COALESCE(content_sha256, '') AS stored,"
        " COALESCE(prev_content_sha256, '') AS prev, COALESCE(chain_hmac, '') AS sig,"
        " (extract(epoch FROM occurred_at) * 1000000)::bigint AS micros,"
        f" {CANONICAL_SQL} AS canonical"
        f" FROM audit_events{where}"
    )


def _checked_sql(*, keyed: bool, hmac_function: str | None, archived: bool,
                 filtered: bool) -> str:
    """Every row with its three per-row verdicts (content, HMAC, archived copy)."""
    if keyed:
        keyed_sql = "h.sig <> ''"
        hmac_bad = f"h.sig <> '' AND {_hmac_sql(hmac_function)} <> h.sig"
    else:
        keyed_sql = hmac_bad = "false"
    if archived:
        archive_join = (
            " LEFT JOIN unnest(%(a_zone)s::text[], %(a_seq)s::bigint[], %(a_id)s::text[],"
            " %(a_content)s::text[], %(a_hmac)s::text[])"
            " AS a(zone_id, seq, event_id, content, hmac)"
            " ON a.zone_id = h.zone_id AND a.seq = h.seq"
        )
        archive_bad = ("COALESCE(a.event_id IS NOT NULL AND (a.event_id, a.content, a.hmac)"
                       " IS DISTINCT FROM (h.event_id, h.stored, h.sig), false)")
        archived_id = "a.event_id"
    else:
        archive_join, archive_bad, archived_id = "", "false", "NULL::text"
    return f"""
    SELECT h.zone_id, h.seq, h.band, h.event_id, h.stored, h.prev, h.micros,
           h.sig = '' AS unsigned, {keyed_sql} AS keyed,
           d.computed, d.computed <> h.stored AS content_bad,
           {hmac_bad} AS hmac_bad, {archive_bad} AS archive_bad, {archived_id} AS archived_id
    FROM ({_rows_sql(filtered)}) h
    CROSS JOIN LATERAL (SELECT encode(sha256(convert_to(h.canonical, 'UTF8')), 'hex')
                        AS computed) d{archive_join}"""


def _totals_sql(checked: str) -> str:
    """Statement A: per-zone counts of rows, signed rows and each per-row failure."""
    return f"""
SELECT zone_id, count(*), count(*) FILTER (WHERE keyed), count(*) FILTER (WHERE unsigned),
       count(*) FILTER (WHERE content_bad), count(*) FILTER (WHERE hmac_bad),
       count(*) FILTER (WHERE archive_bad)
FROM ({checked}) c GROUP BY zone_id"""


def _links_sql(filtered: bool) -> str:
    """Statement B: the rows the ordered scan could find irregular (links by window functions).

    A zone's first and last sequenced rows, unsequenced rows, a row whose predecessor is not
    chain_seq - 1 or whose prev is not its predecessor's content, and the row after a
    duplicate. Every other row is regular: the scan's state before it is (chain_seq, prev).
    The window runs in ``chain_seq DESC`` order — the order of Caracal's own index
    ``audit_events_zone_chain (zone_id, chain_seq DESC)``, so no sort is needed when it exists
    — which makes each row's predecessor its ``lead``.
    """
    rows = _rows_sql(filtered).replace(f" {CANONICAL_SQL} AS canonical", " NULL AS canonical")
    return f"""
SELECT {", ".join(_LINK_OUT)} FROM (
    SELECT s.*,
           s.band = 1 AND (lead(s.seq) OVER lane IS NULL OR lead(s.seq) OVER lane < 1)
               AS first,
           lead(s.seq) OVER lane AS pred_seq, lead(s.seq, 2) OVER lane AS pred2_seq,
           lead(s.stored) OVER lane AS pred_stored, lead(s.event_id) OVER lane AS pred_id,
           lead(s.micros) OVER lane AS pred_micros, lag(s.seq) OVER lane AS next_seq
    FROM ({rows}) s
    WINDOW lane AS (PARTITION BY s.zone_id
                    ORDER BY s.seq DESC, s.event_id COLLATE "C" DESC, s.micros DESC)
) w
WHERE band <> 1 OR first OR next_seq IS NULL
   OR pred_seq <> seq - 1 OR prev <> pred_stored OR pred_seq = pred2_seq
ORDER BY {_ORDER}"""


def _examples_sql(checked: str) -> str:
    """Statement C: the first ``cap`` rows of each zone failing each per-row check."""
    return f"""
SELECT {", ".join(_EXAMPLE_OUT)} FROM (
    SELECT c.*,
           count(*) FILTER (WHERE c.content_bad) OVER run AS content_rank,
           count(*) FILTER (WHERE c.hmac_bad) OVER run AS hmac_rank,
           count(*) FILTER (WHERE c.archive_bad) OVER run AS archive_rank
    FROM ({checked}) c
    WHERE c.content_bad OR c.hmac_bad OR c.archive_bad
    WINDOW run AS (PARTITION BY c.zone_id
                   ORDER BY c.band, c.seq, c.event_id COLLATE "C", c.micros
                   ROWS UNBOUNDED PRECEDING)
) w
WHERE (content_bad AND content_rank <= %(cap)s) OR (hmac_bad AND hmac_rank <= %(cap)s)
   OR (archive_bad AND archive_rank <= %(cap)s)
ORDER BY {_ORDER}"""


def _hmac_function(conn: psycopg.Connection[Any]) -> str | None:
    """pgcrypto's ``hmac(bytea, bytea, text)`` as a qualified name, or None when absent."""
    row = conn.execute("SELECT to_regprocedure('hmac(bytea,bytea,text)')::oid").fetchone()
    if row is None or row[0] is None:
        return None
    name = conn.execute(
        "SELECT quote_ident(n.nspname) || '.' || quote_ident(p.proname) FROM pg_proc p"
        " JOIN pg_namespace n ON n.oid = p.pronamespace WHERE p.oid = %s", (row[0],),
    ).fetchone()
    return str(name[0]) if name else None


@contextlib.contextmanager
def _prefer_index(conn: psycopg.Connection[Any]) -> Iterator[None]:
    """Plan statement B along the chain index rather than sorting (transaction-local)."""
    settings = ("enable_sort", "enable_seqscan", "enable_bitmapscan")
    for name in settings:
        conn.execute("SELECT set_config(%s, 'off', true)", (name,))
    try:
        yield
    finally:
        for name in settings:
            conn.execute("SELECT set_config(%s, 'on', true)", (name,))


def _pads(key: bytes) -> tuple[bytes, bytes]:
    """HMAC-SHA256 inner and outer key pads (RFC 2104), for servers without pgcrypto."""
    if len(key) > _SHA256_BLOCK:
        key = hashlib.sha256(key).digest()
    padded = key.ljust(_SHA256_BLOCK, b"\0")
    return bytes(b ^ 0x36 for b in padded), bytes(b ^ 0x5C for b in padded)


def _archive_params(archive: Mapping[tuple[str, int], ArchivedEvent]) -> dict[str, list[Any]]:
    """The archive as five parallel arrays (zone, chain_seq, event_id, content, chain_hmac)."""
    keys = list(archive)
    return {
        "a_zone": [z for z, _ in keys],
        "a_seq": [s for _, s in keys],
        "a_id": [archive[k].event_id for k in keys],
        "a_content": [archive[k].content_sha256 for k in keys],
        "a_hmac": [archive[k].chain_hmac for k in keys],
    }


def _key(r: Mapping[str, Any]) -> tuple[Any, ...]:
    """A returned row's place in the ordered scan (zones bytewise, like ``COLLATE "C"``)."""
    return (r["zone_id"], r["band"], r["seq"] if r["seq"] is not None else 0, r["event_id"],
            r["micros"])


def _stream(conn: psycopg.Connection[Any], name: str, query: str, params: Mapping[str, Any],
            columns: Sequence[str], batch_size: int) -> Generator[dict[str, Any], None, None]:
    """Rows of one statement through a server-side cursor, as dicts."""
    with conn.cursor(name=name) as cur:
        cur.itersize = batch_size
        cur.execute(query, params)
        for values in cur:
            yield dict(zip(columns, values, strict=True))


def _merged(links: Iterator[dict[str, Any]], examples: Iterator[dict[str, Any]]
            ) -> Iterator[dict[str, Any]]:
    """Link rows and example rows in scan order; a row in both carries both."""
    link, example = next(links, None), next(examples, None)
    while link is not None or example is not None:
        if example is None or (link is not None and _key(link) < _key(example)):
            assert link is not None
            yield link
            link = next(links, None)
        elif link is None or _key(example) < _key(link):
            yield example
            example = next(examples, None)
        else:
            yield {**link, **example}
            link, example = next(links, None), next(examples, None)


class _Replay:
    """One zone's returned rows, classified as the ordered scan would have seen them."""

    def __init__(self, ctx: _Context, zone: str) -> None:
        self.ctx = ctx
        self.zone = zone
        self.scan = _ZoneScan(ctx, zone, _AUDIT_SELECT, "zone_id = %s", _audit_content)
        self.expect, self.last = 1, ""
        #: (chain_seq, id, occurred_at) of the last sequenced row this replay has seen
        self.last_seen: tuple[Any, ...] | None = None
        self.examples = {"content": 0, "hmac": 0, "archive": 0}

    def row(self, r: Mapping[str, Any]) -> None:
        """Classify one returned row (rows arrive in the ordered scan's order)."""
        scan, seq, band = self.scan, r["seq"], r["band"]
        if band == 1:
            if "pred_seq" not in r:
                # an example row the links did not flag: regular, so the state is its own
                self.expect, self.last = seq, r["prev"]
            elif r["first"]:
                self.expect, self.last = 1, ""  # unsequenced rows never move the state
            elif (r["pred_seq"], r["pred_id"], r["pred_micros"]) != self.last_seen:
                # its predecessor was not returned, so it was regular: the state follows it
                self.expect, self.last = r["pred_seq"] + 1, r["pred_stored"]
            self.last_seen = (seq, r["event_id"], r["micros"])
        # the ordered scan's row layout: seq, content, prev, hmac, id, 11 fields, micros
        row = (seq, r["stored"], r["prev"], "", r["event_id"], *([""] * 11), r["micros"])
        if r.get("content_bad"):
            self.examples["content"] += 1
            scan.content_differs(row, r["computed"])
        if band != 1:
            scan.irregular(row, self.expect, self.last)
        elif seq != self.expect or r["prev"] != self.last:
            self.expect, self.last = scan.irregular(row, self.expect, self.last)
        else:
            if self.expect == 1:
                scan.summary.first_seq = 1
            self.expect, self.last = seq + 1, r["stored"]
        if r.get("hmac_bad"):
            self.examples["hmac"] += 1
            scan.hmac_fails(seq)
        if r.get("archive_bad"):
            self.examples["archive"] += 1
            self.ctx.findings.add(
                "archive_mismatch", self.zone, seq,
                f"row {r['event_id']!r} differs from its exported copy {r['archived_id']!r}")

    def finish(self, totals: Mapping[str, int]) -> ZoneSummary:
        """Close the zone: the state after its last row, counts beyond the examples.

        The zone's last sequenced row is always returned, so the state is the ordered scan's.
        """
        ctx, summary = self.ctx, self.scan.summary
        if self.expect > 1:
            summary.head_seq, summary.head_sha256 = self.expect - 1, self.last
        summary.rows = totals["n_rows"]
        if ctx.key is not None:
            summary.hmac_checked = totals["n_keyed"]
            summary.unsigned_rows = totals["n_unsigned"]
            ctx.hmac_keyed += totals["n_keyed"]
        extra = totals["n_hmac"] - self.examples["hmac"]
        summary.hmac_failed += extra
        ctx.hmac_failed += extra
        ctx.findings.counts["content_mismatch"] += totals["n_content"] - self.examples["content"]
        ctx.findings.counts["archive_mismatch"] += totals["n_archive"] - self.examples["archive"]
        return summary


def verify_audit_chain_sql(
    conn: psycopg.Connection[Any],
    *,
    hmac_key: bytes | str | None = None,
    expected_heads: Mapping[str, tuple[int, str]] | None = None,
    archive: Mapping[tuple[str, int], ArchivedEvent] | None = None,
    zones: Collection[str] | None = None,
    batch_size: int = 20000,
    max_examples: int = 100,
    work_mem: str | None = "256MB",
) -> Report:
    """Verify ``audit_events`` inside the server; same arguments and Report as the client's.

    Three statements in one snapshot: A counts per zone (hashes recomputed by the server, in
    parallel workers when the planner wants), B returns the link rows (window functions over
    the chain columns only), C — only when A counted failures — the first failing rows.
    ``work_mem`` is set for this transaction only (B's sort); None leaves it alone.
    """
    started = time.perf_counter()
    ctx = _Context(conn, "audit_events", _Findings(max_examples), batch_size, _as_key(hmac_key),
                   archive=archive)
    summaries: dict[str | None, ZoneSummary] = {}
    with _read_snapshot(conn):
        if not _exists(conn, "audit_events"):
            ctx.findings.add("table_missing", None, None, "audit_events does not exist")
            return _report(ctx, summaries, started)
        _check_marker(ctx)
        ctx.partitions = audit_partitions(conn)
        if work_mem:
            conn.execute("SELECT set_config('work_mem', %s, true)", (work_mem,))
        params: dict[str, Any] = {"cap": max_examples}
        function = None
        if ctx.key is not None:
            function = _hmac_function(conn)
            if function is not None:
                params["key"] = ctx.key
            else:
                params["ipad"], params["opad"] = _pads(ctx.key)
        if zones is not None:
            params["zones"] = sorted(zones)
        if archive is not None:
            params.update(_archive_params(archive))
        checked = _checked_sql(keyed=ctx.key is not None, hmac_function=function,
                               archived=archive is not None, filtered=zones is not None)
        totals = {
            zone: dict(zip(_TOTALS, counts, strict=True))
            for zone, *counts in conn.execute(_totals_sql(checked), params).fetchall()
        }
        wanted = set(totals) | set(expected_heads or ())
        if zones is not None:
            wanted &= set(zones)
        failing = any(t["n_content"] or t["n_hmac"] or t["n_archive"] for t in totals.values())
        with contextlib.ExitStack() as cursors:  # both cursors close inside the transaction
            link_rows = _stream(conn, "caracal_chain_links", _links_sql(zones is not None),
                                params, _LINK_OUT, batch_size)
            cursors.enter_context(contextlib.closing(link_rows))
            with _prefer_index(conn):
                first = next(link_rows, None)  # declares (plans) the cursor under the settings
            links = itertools.chain([first] if first is not None else [], link_rows)
            examples = cursors.enter_context(contextlib.closing(_stream(
                conn, "caracal_chain_examples", _examples_sql(checked), params, _EXAMPLE_OUT,
                batch_size))) if failing else iter(())
            rows = _merged(links, examples)
            pending = next(rows, None)
            for zone in sorted(wanted):
                replay = _Replay(ctx, zone)
                while pending is not None and pending["zone_id"] == zone:
                    replay.row(pending)
                    pending = next(rows, None)
                summaries[zone] = (replay.finish(totals[zone]) if zone in totals
                                   else ZoneSummary(zone))
                if expected_heads is not None:
                    _check_head(ctx, summaries[zone], expected_heads.get(zone))
    ctx.classify_hmac()
    return _report(ctx, summaries, started)
