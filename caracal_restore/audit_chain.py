"""Offline verifier of Caracal's audit evidence chains, with graded diagnoses.

Reads a restored database read-only and checks the per-zone hash chain of ``audit_events``
(FACTS-1.0 §4.3–4.8, §20 S2; unchanged at 2026.06 §4) and of ``admin_audit_events`` (§5):
recomputed content hashes, ``prev_content_sha256`` links, ``chain_hmac`` under a supplied
``AUDIT_HMAC_KEY``, ``chain_seq`` continuity, chain heads against the backup's fingerprint,
retention holes against the partitions and an export archive, and the rehash marker.

One unordered ``COPY … TO STDOUT`` pass (optionally split by partition over worker processes)
recomputes every content hash and chain_hmac from the canonical bytes and proves each zone's
links with a randomised multiset balance; only zones that do not balance are read again in
``chain_seq`` order (a binary server-side cursor) and diagnosed row by row. Memory holds one
row or batch plus O(zones + findings), never the whole table. The hashing rules are
``caracal_restore.chainhash``'s; this module only decides what a difference means.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import datetime as dt
import hashlib
import heapq
import hmac
import itertools
import json
import os
import pickle
import subprocess
import sys
import time
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import psycopg
from psycopg import pq, sql

from caracal_restore.chainhash import (
    AUDIT_CANONICAL_SELECT,
    AUDIT_HASH_SELECT,
    EPOCH,
    SEP,
    admin_content_hash,
    chain_hmac,
    chain_hmac_bytes,
    content_hash_parts,
    parse_hmac_key,
)
from caracal_restore.pgcopy import copy_rows, split_escaped
from caracal_restore.redact import REDACTOR

#: Finding kinds, in report order.
KINDS = (
    "table_missing",
    "marker_table_missing",
    "marker_missing",
    "truncated_head",
    "beyond_head",
    "gap",
    "retention_hole",
    "link_break",
    "reordered_seq",
    "duplicate_seq",
    "unsequenced",
    "content_mismatch",
    "hmac_mismatch_all",
    "hmac_mismatch_some",
    "archive_mismatch",
)

#: The operations page's symptom-table cause each finding kind points to.
CAUSES = {
    "table_missing": "partial restore",
    "marker_table_missing": "missing rehash marker",
    "marker_missing": "missing rehash marker",
    "truncated_head": "partial restore",
    "beyond_head": "rows newer than the backup",
    "gap": "missing audit rows",
    "retention_hole": "expected retention",
    "link_break": "missing audit rows",
    "reordered_seq": "tampered rows",
    "duplicate_seq": "duplicated audit rows",
    "unsequenced": "tampered rows",
    "content_mismatch": "tampered rows",
    "hmac_mismatch_all": "wrong AUDIT_HMAC_KEY",
    "hmac_mismatch_some": "tampered rows",
    "archive_mismatch": "tampered rows",
}

#: Finding kinds that do not make a report fail.
BENIGN = frozenset({"retention_hole"})

VERIFIED = "verified against the archive"
UNVERIFIED = "consistent with retention, unverified"

#: How far (in chain_seq) a broken link's predecessor is searched for to diagnose reordering.
REORDER_WINDOW = 64
#: At most this many reordering look-ups per run (each is one indexed query).
MAX_LOOKUPS = 500

_HMAC_PROBE = ("0" * 64, "f" * 64)


@dataclasses.dataclass(frozen=True)
class ArchivedEvent:
    """One exported event (Parquet ``event_id``, ``content_sha256``, ``chain_hmac``, ``time``)."""

    event_id: str
    content_sha256: str
    chain_hmac: str
    time_ms: int


@dataclasses.dataclass(frozen=True)
class Finding:
    """One diagnosed defect of a chain (zone_id None = table-wide or the admin global chain)."""

    kind: str
    zone_id: str | None
    chain_seq: int | None
    detail: str

    @property
    def cause(self) -> str:
        """The symptom-table cause this finding points to."""
        return CAUSES[self.kind]


@dataclasses.dataclass
class ZoneSummary:
    """What the verifier saw in one zone's chain."""

    zone_id: str | None
    rows: int = 0
    first_seq: int | None = None
    head_seq: int | None = None
    head_sha256: str | None = None
    missing_rows: int = 0
    retention_rows: int = 0
    hmac_checked: int = 0
    hmac_failed: int = 0
    unsigned_rows: int = 0
    content_not_recomputable: int = 0


@dataclasses.dataclass
class Report:
    """Outcome of one chain verification: counts per kind, examples, per-zone summaries."""

    table: str
    rows_checked: int
    elapsed_s: float
    counts: dict[str, int]
    findings: tuple[Finding, ...]
    zones: dict[str | None, ZoneSummary]
    hmac_checked: bool
    retention: dict[str, int]
    notes: tuple[str, ...] = ()
    #: ``key_check`` of the key the HMACs were recomputed under (None: none was given).
    hmac_key_check: str | None = dataclasses.field(default=None, repr=False)

    @property
    def events_per_s(self) -> float:
        """Rows verified per second of wall time."""
        return self.rows_checked / self.elapsed_s if self.elapsed_s > 0 else 0.0

    @property
    def ok(self) -> bool:
        """True when every finding is an expected retention hole."""
        return all(kind in BENIGN for kind, n in self.counts.items() if n)

    def causes(self) -> set[str]:
        """The symptom-table causes of every finding (retention included)."""
        return {CAUSES[kind] for kind, n in self.counts.items() if n}

    def of_kind(self, kind: str) -> list[Finding]:
        """The stored examples of one kind (at most the per-kind cap)."""
        return [f for f in self.findings if f.kind == kind]

    def summary(self) -> str:
        """A few lines for humans and evidence attachments."""
        lines = [
            f"{self.table}: {self.rows_checked} rows in {len(self.zones)} chains, "
            f"{self.elapsed_s:.2f} s ({self.events_per_s:,.0f} events/s), "
            f"HMAC {'checked' if self.hmac_checked else 'not checked (no key)'}",
        ]
        counted = [f"{k}={self.counts[k]}" for k in KINDS if self.counts.get(k)]
        lines.append("findings: " + (", ".join(counted) if counted else "none"))
        if self.counts.get("retention_hole"):
            lines.append(
                f"retention holes: {self.retention.get(VERIFIED, 0)} {VERIFIED}, "
                f"{self.retention.get(UNVERIFIED, 0)} {UNVERIFIED}"
            )
        lines.extend(self.notes)
        lines.extend(f"  {f.kind} zone={f.zone_id} seq={f.chain_seq}: {f.detail}"
                     for f in self.findings[:20])
        return "\n".join(lines)

    def as_dict(self) -> dict[str, Any]:
        """A JSON-ready form of the report (for evidence attachments)."""
        return {
            "table": self.table,
            "rows_checked": self.rows_checked,
            "elapsed_s": round(self.elapsed_s, 3),
            "events_per_s": round(self.events_per_s),
            "ok": self.ok,
            "hmac_checked": self.hmac_checked,
            "counts": {k: self.counts[k] for k in KINDS if self.counts.get(k)},
            "causes": sorted(self.causes()),
            "retention": dict(self.retention),
            "notes": list(self.notes),
            "findings": [dataclasses.asdict(f) for f in self.findings],
            "zones": [dataclasses.asdict(z) for z in self.zones.values()],
        }


@dataclasses.dataclass(frozen=True)
class Partition:
    """One monthly (range) partition of ``audit_events``: bounds in Unix microseconds."""

    name: str
    lo_us: int
    hi_us: int

    def holds(self, micros: int) -> bool:
        """True when a row with this occurred_at would live in this partition."""
        return self.lo_us <= micros < self.hi_us


class _Findings:
    """Counts every finding, keeps the first ``cap`` examples of each kind."""

    def __init__(self, cap: int) -> None:
        self.cap = cap
        self.counts: collections.Counter[str] = collections.Counter()
        self.examples: dict[str, list[Finding]] = collections.defaultdict(list)

    def add(self, kind: str, zone: str | None, seq: int | None, detail: str) -> None:
        """Record one finding."""
        self.counts[kind] += 1
        if len(self.examples[kind]) < self.cap:
            self.examples[kind].append(Finding(kind, zone, seq, detail))

    def ordered(self) -> tuple[Finding, ...]:
        """Every stored example, by kind then zone then chain_seq."""
        rank = {k: i for i, k in enumerate(KINDS)}
        found = itertools.chain.from_iterable(self.examples.values())
        return tuple(sorted(found, key=lambda f: (rank[f.kind], f.zone_id or "", f.chain_seq or 0)))


@dataclasses.dataclass
class _Context:
    """Everything one verification run shares between zones."""

    conn: psycopg.Connection[Any]
    table: str
    findings: _Findings
    batch_size: int
    key: bytes | None
    archive: Mapping[tuple[str, int], ArchivedEvent] | None = None
    partitions: Sequence[Partition] | None = None
    hmac_keyed: int = 0
    hmac_failed: int = 0
    hmac_examples: list[tuple[str | None, int | None, str]] = dataclasses.field(
        default_factory=list
    )
    retention: collections.Counter[str] = dataclasses.field(default_factory=collections.Counter)
    lookups_left: int = MAX_LOOKUPS
    cursor_ids: Iterator[int] = dataclasses.field(default_factory=itertools.count)

    def hmac_failure(self, zone: str | None, seq: int | None, detail: str) -> None:
        """Remember an HMAC failure; whether it is 'all' or 'some' is decided at the end."""
        self.hmac_failed += 1
        if len(self.hmac_examples) < self.findings.cap:
            self.hmac_examples.append((zone, seq, detail))

    def classify_hmac(self) -> None:
        """Turn the HMAC failures into hmac_mismatch_all (wrong key) or _some (forged rows)."""
        if not self.hmac_failed:
            return
        if self.hmac_failed == self.hmac_keyed:
            self.findings.add(
                "hmac_mismatch_all", None, None,
                f"all {self.hmac_keyed} signed rows fail chain_hmac: the AUDIT_HMAC_KEY given is "
                "not the key the chain was written with",
            )
            return
        for zone, seq, detail in self.hmac_examples:
            self.findings.add("hmac_mismatch_some", zone, seq, detail)
        self.findings.counts["hmac_mismatch_some"] = self.hmac_failed


# ------------------------------------------------------------------------------ helpers


#: What ``key_check`` signs; no chain message has this form (those are hex, '|' and hex).
_KEY_CHECK_MESSAGE = b"caracal-restore: the key these HMACs were recomputed under"


def key_check(key: bytes | None) -> str | None:
    """An HMAC of a fixed message under ``key``, to tell whether two readings used the same key
    without keeping the key (None: no key)."""
    return hmac.new(key, _KEY_CHECK_MESSAGE, hashlib.sha256).hexdigest() if key else None


def _hmac_hex(key: bytes) -> Callable[[str, str], str]:
    """A fast chain_hmac(content, prev) for one key, proven equal to chainhash.chain_hmac."""
    base = hmac.new(key, digestmod=hashlib.sha256)
    copy = base.copy

    def mac(content: str, prev: str) -> str:
        h = copy()
        h.update(f"{content}|{prev}".encode())
        return h.hexdigest()

    if mac(*_HMAC_PROBE) != chain_hmac(key, *_HMAC_PROBE):  # pragma: no cover - sanity
        raise AssertionError("fast chain HMAC disagrees with chainhash.chain_hmac")
    return mac


def _as_key(hmac_key: bytes | str | None) -> bytes | None:
    """Normalise the key (hex text is decoded like AUDIT_HMAC_KEY) and register it as secret."""
    if hmac_key is None or hmac_key in (b"", ""):
        return None
    key = parse_hmac_key(hmac_key) if isinstance(hmac_key, str) else bytes(hmac_key)
    REDACTOR.add(key)
    return key


@contextlib.contextmanager
def _read_snapshot(conn: psycopg.Connection[Any]) -> Iterator[bool]:
    """One read-only repeatable-read transaction (a savepoint if the caller holds one).

    Yields True when the transaction is ours (top level: its snapshot can be exported).
    """
    if conn.info.transaction_status != pq.TransactionStatus.IDLE:
        with conn.transaction():
            yield False
        return
    saved = (conn.isolation_level, conn.read_only)
    conn.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
    conn.read_only = True
    try:
        with conn.transaction():
            yield True
    finally:
        conn.isolation_level, conn.read_only = saved


def _exists(conn: psycopg.Connection[Any], table: str) -> bool:
    """True when a relation of that name is visible on the search path."""
    row = conn.execute("SELECT to_regclass(%s) IS NOT NULL", (table,)).fetchone()
    return bool(row and row[0])


def audit_partitions(conn: psycopg.Connection[Any]) -> list[Partition]:
    """The range partitions of ``audit_events`` now (pg_inherits + pg_get_expr), oldest first."""
    rows = conn.execute(
        "SELECT c.relname,"
        " (extract(epoch FROM m[1]::timestamptz) * 1000000)::bigint,"
        " (extract(epoch FROM m[2]::timestamptz) * 1000000)::bigint"
        " FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid"
        " CROSS JOIN LATERAL regexp_match(pg_get_expr(c.relpartbound, c.oid),"
        "   $re$FROM \\('([^']+)'\\) TO \\('([^']+)'\\)$re$) AS m"
        " WHERE i.inhparent = 'audit_events'::regclass AND m IS NOT NULL"
    ).fetchall()
    return sorted((Partition(name, lo, hi) for name, lo, hi in rows), key=lambda p: p.lo_us)


def _partition_of(partitions: Sequence[Partition], micros: int) -> Partition | None:
    """The monthly partition that would hold a timestamp (None: default or none)."""
    return next((p for p in partitions if p.holds(micros)), None)


def _month(micros: int) -> str:
    """YYYY-MM (UTC) of a Unix-microsecond timestamp."""
    return (EPOCH + dt.timedelta(microseconds=micros)).strftime("%Y-%m")


def chain_heads(
    conn: psycopg.Connection[Any], table: str = "audit_events"
) -> dict[str, tuple[int, str]]:
    """Per-zone chain heads ``{zone_id: (max chain_seq, its content_sha256)}`` (global: '')."""
    if table not in ("audit_events", "admin_audit_events"):
        raise ValueError(f"no chain in table {table!r}")
    rows = conn.execute(
        f"SELECT DISTINCT ON (zone_id) COALESCE(zone_id, ''), chain_seq, content_sha256"
        f" FROM {table} WHERE chain_seq IS NOT NULL ORDER BY zone_id, chain_seq DESC"
    ).fetchall()
    return {zone: (int(seq), sha) for zone, seq, sha in rows}


def archive_from_parquet(paths: Iterable[str | Path]) -> dict[tuple[str, int], ArchivedEvent]:
    """Index exported Parquet objects (OCSF columns) by ``(zone_id, chain_seq)``."""
    import pyarrow.parquet as pq_files

    columns = ["zone_id", "chain_seq", "event_id", "content_sha256", "chain_hmac", "time"]
    index: dict[tuple[str, int], ArchivedEvent] = {}
    for path in paths:
        table = pq_files.read_table(path, columns=columns).to_pydict()
        for zone, seq, event_id, sha, mac, ms in zip(*(table[c] for c in columns), strict=True):
            index[(zone, int(seq))] = ArchivedEvent(event_id, sha, mac or "", int(ms))
    return index


# --------------------------------------------------------------------------- zone scan


class _ZoneScan:
    """One zone's chain: the hot loop in ``run``, every irregular row in a method."""

    def __init__(self, ctx: _Context, zone: str | None, select: str, where: str,
                 content_of: Callable[[tuple[Any, ...]], str | None]) -> None:
        self.ctx = ctx
        self.zone = zone
        self.select = select
        self.where = where
        self.content_of = content_of
        self.summary = ZoneSummary(zone)
        #: contents the row after a duplicated chain_seq may link to, and that chain_seq
        self.alternatives: set[str] = set()
        self.duplicated = 0

    # The hot loop: rows are (chain_seq, content, prev, hmac, <hashed fields...>).
    def run(self) -> ZoneSummary:
        """Stream the zone's rows in chain_seq order and check each one."""
        ctx, summary, zone = self.ctx, self.summary, self.zone
        content_of = self.content_of
        mac = _hmac_hex(ctx.key) if ctx.key else None
        archive = ctx.archive
        irregular, content_differs = self.irregular, self.content_differs
        hmac_fails = self.hmac_fails
        expect, last = 1, ""
        rows = keyed = unsigned = 0
        name = f"caracal_chain_{next(ctx.cursor_ids)}"
        with ctx.conn.cursor(name=name, binary=True) as cur:
            cur.execute(f"SELECT {self.select} WHERE {self.where}"
                        " ORDER BY chain_seq, id COLLATE \"C\", occurred_at",
                        (zone,) if zone is not None else None)
            while batch := cur.fetchmany(ctx.batch_size):
                rows += len(batch)
                for r in batch:
                    seq, stored, prev, signature = r[0], r[1], r[2], r[3]
                    computed = content_of(r)
                    if computed != stored:
                        content_differs(r, computed)
                    if seq != expect or prev != last:
                        expect, last = irregular(r, expect, last)
                    else:
                        if expect == 1:  # the chain starts on the happy path at chain_seq 1
                            summary.first_seq = 1
                        expect, last = seq + 1, stored
                    if mac is not None:
                        if signature:
                            keyed += 1
                            if mac(stored, prev) != signature:
                                hmac_fails(seq)
                        else:
                            unsigned += 1
                    if archive is not None:
                        self.against_archive(r, archive)
        summary.rows = rows
        summary.hmac_checked = keyed
        summary.unsigned_rows = unsigned
        ctx.hmac_keyed += keyed
        if expect > 1:
            summary.head_seq, summary.head_sha256 = expect - 1, last
        return summary

    # --------------------------------------------------------------- rare paths

    def content_differs(self, r: tuple[Any, ...], computed: str | None) -> None:
        """Recomputed content hash differs from the stored one (or cannot be recomputed)."""
        if computed is None:
            self.summary.content_not_recomputable += 1
            return
        stored = r[1] or "NULL"
        why = (f"recomputed {computed[:16]}…" if computed else
               "occurred_at has sub-millisecond digits the writer cannot produce")
        self.ctx.findings.add(
            "content_mismatch", self.zone, r[0],
            f"row {r[4]!r}: stored content_sha256 {stored[:16]}…, {why} "
            "(a hashed field was edited after the row was written)",
        )

    def hmac_fails(self, seq: int | None) -> None:
        """chain_hmac does not verify under the given key."""
        self.summary.hmac_failed += 1
        self.ctx.hmac_failure(self.zone, seq, "chain_hmac does not verify under the given key")

    def irregular(self, r: tuple[Any, ...], expect: int, last: str) -> tuple[int, str]:
        """A row off the happy path: first row, gap, duplicate, broken link; returns new state."""
        seq, stored, prev = r[0], r[1], r[2]
        summary, add, zone = self.summary, self.ctx.findings.add, self.zone
        if seq is None or seq < 1:
            add("unsequenced", zone, seq, f"row {r[4]!r} has chain_seq {seq!r}: outside the chain")
            return expect, last
        if summary.first_seq is None:
            summary.first_seq = seq
        if seq == expect:
            if seq == self.duplicated + 1 and prev in self.alternatives:
                return seq + 1, stored
            self.broken_link(seq, prev, last)
            return seq + 1, stored
        if seq == expect - 1:
            add("duplicate_seq", zone, seq,
                f"chain_seq {seq} appears more than once (row {r[4]!r})")
            if self.duplicated != seq:
                self.duplicated, self.alternatives = seq, {last}
            self.alternatives.add(stored)
            return expect, last
        if seq < expect:
            add("reordered_seq", zone, seq, f"chain_seq {seq} after {expect - 1}: not increasing")
            return expect, last
        self.gap(expect, seq - 1, r, last)
        return seq + 1, stored

    def broken_link(self, seq: int, prev: str, last: str) -> None:
        """prev_content_sha256 is not the previous row's content: reordered or a link break."""
        if seq == 1:
            add_detail = "the first row of the chain has a predecessor hash (rows renumbered?)"
            self.ctx.findings.add("link_break", self.zone, seq, add_detail)
            return
        if not prev:
            self.ctx.findings.add("link_break", self.zone, seq,
                                  f"prev_content_sha256 is NULL at chain_seq {seq}, not genesis")
            return
        other = self.find_seq(prev, seq)
        if other is not None:
            self.ctx.findings.add("reordered_seq", self.zone, seq,
                                  f"row links to chain_seq {other}, not {seq - 1}")
            return
        self.ctx.findings.add(
            "link_break", self.zone, seq,
            f"prev_content_sha256 {prev[:16]}… is not the content of chain_seq {seq - 1} "
            f"({last[:16]}…) nor of any nearby row: its predecessor was removed or replaced",
        )

    def find_seq(self, content: str, seq: int) -> int | None:
        """chain_seq of a nearby row with this content (indexed look-up, budgeted)."""
        if self.ctx.lookups_left <= 0:
            return None
        self.ctx.lookups_left -= 1
        row = self.ctx.conn.execute(
            f"SELECT chain_seq FROM {self.ctx.table} WHERE {self.where} AND content_sha256 = %s"
            " AND chain_seq BETWEEN %s AND %s AND chain_seq <> %s ORDER BY chain_seq LIMIT 1",
            (*((self.zone,) if self.zone is not None else ()), content,
             seq - REORDER_WINDOW, seq + REORDER_WINDOW, seq - 1),
        ).fetchone()
        return int(row[0]) if row else None

    def gap(self, lo: int, hi: int, r: tuple[Any, ...], last: str) -> None:
        """chain_seq lo..hi are absent: retention (verified or plausible) or missing rows."""
        count, prev, prefix = hi - lo + 1, r[2], lo == 1
        span = f"chain_seq {lo}..{hi} absent ({count} rows)"
        reasons: list[str] = []
        if self.ctx.partitions is not None:
            if self.ctx.archive is not None and self.archive_covers(lo, hi):
                reasons = self.archived_gap(lo, hi, prev, last)
                if not reasons:
                    self.retention(lo, count, f"{span}, {VERIFIED}", VERIFIED)
                    return
            elif prefix:
                reasons = self.prefix_gap(r)
                if not reasons:
                    self.retention(lo, count, f"{span}, {UNVERIFIED}: older partitions are gone",
                                   UNVERIFIED)
                    return
        if not reasons:
            if self.ctx.partitions is None:
                reasons.append("the table has no retention")
            elif self.ctx.archive is None:
                reasons.append("mid-chain, and no archive was given to show they were exported")
            else:
                reasons.append("the archive does not hold every missing row")
        if not prefix and prev == last:
            reasons.append("links are intact across it: chain_seq numbering jumps")
        self.summary.missing_rows += count
        self.ctx.findings.add("gap", self.zone, lo, f"{span}: " + "; ".join(reasons))

    def retention(self, lo: int, count: int, detail: str, mode: str) -> None:
        """Record an expected retention hole starting at chain_seq lo."""
        self.summary.retention_rows += count
        self.ctx.retention[mode] += 1
        self.ctx.findings.add("retention_hole", self.zone, lo, detail)

    def archive_covers(self, lo: int, hi: int) -> bool:
        """True when the archive holds every missing chain_seq of the zone."""
        assert self.ctx.archive is not None
        archive, zone = self.ctx.archive, self.zone or ""
        return all((zone, s) in archive for s in range(lo, hi + 1))

    def archived_gap(self, lo: int, hi: int, prev: str, last: str) -> list[str]:
        """Why archived rows lo..hi are NOT a retention hole (empty: they are one)."""
        assert self.ctx.archive is not None
        assert self.ctx.partitions is not None
        archive, zone = self.ctx.archive, self.zone or ""
        reasons: list[str] = []
        mac = _hmac_hex(self.ctx.key) if self.ctx.key else None
        before = "" if lo == 1 else last
        for s in range(lo, hi + 1):
            event = archive[(zone, s)]
            part = _partition_of(self.ctx.partitions, event.time_ms * 1000)
            if part is not None and not reasons:
                reasons.append(f"archived chain_seq {s} ({_month(event.time_ms * 1000)}) belongs "
                               f"in partition {part.name}, which still exists")
            if mac is not None and event.chain_hmac:
                self.ctx.hmac_keyed += 1
                if mac(event.content_sha256, before) != event.chain_hmac:
                    self.ctx.hmac_failure(self.zone, s, "archived chain_hmac does not verify")
            before = event.content_sha256
        if archive[(zone, hi)].content_sha256 != prev:
            reasons.append(f"the row after the hole does not link to archived chain_seq {hi}")
        return reasons

    def prefix_gap(self, r: tuple[Any, ...]) -> list[str]:
        """Why a missing prefix is NOT consistent with dropped partitions (empty: it is)."""
        assert self.ctx.partitions is not None
        if not r[2]:
            return ["the first surviving row has no predecessor hash"]
        if not self.ctx.partitions:
            return ["no monthly partition exists"]
        oldest = self.ctx.partitions[0]
        occurred = r[16]  # epoch microseconds, the last column of _AUDIT_SELECT
        if not oldest.holds(occurred):
            where = _partition_of(self.ctx.partitions, occurred)
            name = where.name if where else "the default partition"
            return [f"the first surviving row is in {name}, not in the oldest partition "
                    f"{oldest.name}"]
        return []

    def against_archive(self, r: tuple[Any, ...], archive: Mapping[tuple[str, int], ArchivedEvent]
                        ) -> None:
        """A surviving row must equal its exported copy (event_id, content, chain_hmac)."""
        event = archive.get((self.zone or "", r[0]))
        if event is None:
            return
        if (event.event_id, event.content_sha256, event.chain_hmac) != (r[4], r[1], r[3]):
            self.ctx.findings.add("archive_mismatch", self.zone, r[0],
                                  f"row {r[4]!r} differs from its exported copy {event.event_id!r}")


# ------------------------------------------------------------------------- audit_events

#: Row layout shared by both chains: chain columns first, then the hashed fields.
_AUDIT_SELECT = (
    "chain_seq, COALESCE(content_sha256, ''), COALESCE(prev_content_sha256, ''),"
    f" COALESCE(chain_hmac, ''), {AUDIT_HASH_SELECT} FROM audit_events"
)


def _audit_content(r: tuple[Any, ...]) -> str:
    """content_sha256 of an audit_events row read with _AUDIT_SELECT."""
    return content_hash_parts(r[4:16], r[16])


# ----------------------------------------------------------------- streaming pass (fast)
#
# The hashes of a row depend on that row alone, so they are recomputed over an unordered
# ``COPY … TO STDOUT`` of every partition — the table read at the server's own pace, no sort.
# The links are what need order, and they are checked without any: per zone, the multiset of
# (chain_seq, content_sha256) pairs the rows offer must equal the multiset of
# (chain_seq - 1, prev_content_sha256) pairs the rows ask for, but for the chain's two ends.
# Mapping each pair through a hash keyed with fresh randomness and adding turns that equality
# into one integer per zone (a randomised multiset test: an attacker who wrote the rows before
# the key existed cannot make a broken chain balance but with negligible probability — the sum
# of 128-bit keyed hashes cancels by chance below 2^-100 for any table under 2^28 rows); pairs
# that cancel between consecutive rows of the stream are not even hashed. With
# chain_seq >= 1 everywhere, a balance proves the chain_seq are exactly min..max once each and
# every row's prev is its predecessor's content — exactly when the ordered scan would see no
# irregular row after the first. A zone that does not balance is verified again by the ordered
# scan, so every defect is classified by the same code as before; a clean zone only replays
# its first row (retention prefix) and its stored examples. Partitions are independent, so
# they can be read by several processes sharing one exported snapshot: the sums just add.

#: Columns of the streaming pass: zone, chain columns, then the canonical fields (nanoseconds).
STREAM_COLUMNS = (
    "zone_id, chain_seq, COALESCE(content_sha256, ''), COALESCE(prev_content_sha256, ''),"
    f" COALESCE(chain_hmac, ''), {AUDIT_CANONICAL_SELECT}"
)
_LINK_MOD = 1 << 128
_NO_SEQ = 1 << 64
_NO_PENDING = -(1 << 70)  # never a chain_seq, nor one less than a chain_seq


def stream_query(relation: str = "audit_events", zones: Collection[str] | None = None
                 ) -> tuple[str, tuple[Any, ...]]:
    """The streaming pass's ``COPY (SELECT …) TO STDOUT`` over one relation (and its params)."""
    where, params = "", ()  # type: tuple[str, tuple[Any, ...]]
    if zones is not None:
        where, params = " WHERE zone_id = ANY(%s)", (sorted(zones),)
    return f"COPY (SELECT {STREAM_COLUMNS} FROM {relation}{where}) TO STDOUT", params


class _ZoneTally:
    """What the streaming pass learnt about one zone: counts, ends, link sum, first examples."""

    __slots__ = ("archive_bad", "archive_examples", "content_bad", "content_examples",
                 "hmac_bad", "hmac_examples", "keyed", "links", "malformed", "max_content",
                 "max_seq", "min_line", "min_seq", "pend_seq", "pend_stored", "rows",
                 "unsigned", "zone")

    def __init__(self, zone: str) -> None:
        self.zone = zone
        self.rows = self.keyed = self.unsigned = self.malformed = 0
        self.min_seq, self.max_seq = _NO_SEQ, -1
        self.min_line = b""
        self.max_content = b""
        self.links = 0
        #: the last row seen, whose (chain_seq, content) pair is not yet in ``links``
        self.pend_seq, self.pend_stored = _NO_PENDING, b""
        self.content_bad = self.hmac_bad = self.archive_bad = 0
        #: max-heaps (negated chain_seq) of the smallest chain_seq examples, at most cap each
        self.content_examples: list[tuple[int, str, str, str]] = []
        self.hmac_examples: list[int] = []
        self.archive_examples: list[tuple[int, str, str]] = []

    @staticmethod
    def _keep(heap: list[Any], item: Any, cap: int) -> None:
        """Keep the ``cap`` items with the smallest chain_seq (items start with -chain_seq)."""
        if len(heap) < cap:
            heapq.heappush(heap, item)
        elif item > heap[0]:
            heapq.heapreplace(heap, item)

    def flush(self, link_value: Callable[[int, bytes], int]) -> None:
        """Add the pair the last row offers (no later row of this stream cancelled it)."""
        if self.pend_seq != _NO_PENDING:
            self.links += link_value(self.pend_seq, self.pend_stored)
            self.pend_seq, self.pend_stored = _NO_PENDING, b""

    def merge(self, other: _ZoneTally, cap: int) -> None:
        """Add another process's (flushed) tally of the same zone (other partitions)."""
        self.rows += other.rows
        self.keyed += other.keyed
        self.unsigned += other.unsigned
        self.malformed += other.malformed
        self.links += other.links
        if other.min_seq < self.min_seq:
            self.min_seq, self.min_line = other.min_seq, other.min_line
        if other.max_seq > self.max_seq:
            self.max_seq, self.max_content = other.max_seq, other.max_content
        self.content_bad += other.content_bad
        self.hmac_bad += other.hmac_bad
        self.archive_bad += other.archive_bad
        for mine, theirs in ((self.content_examples, other.content_examples),
                             (self.hmac_examples, other.hmac_examples),
                             (self.archive_examples, other.archive_examples)):
            for item in theirs:
                self._keep(mine, item, cap)  # type: ignore[arg-type]

    def balanced(self, link_value: Callable[[int, bytes], int]) -> bool:
        """True when the chain_seq are min..max once each and every inner link holds."""
        if self.malformed or self.min_seq < 1 or self.max_seq < self.min_seq:
            return False
        if self.rows != self.max_seq - self.min_seq + 1:
            return False
        first = split_escaped(self.min_line) if b"\\" in self.min_line else \
            self.min_line.rstrip(b"\n").split(b"\t")
        ends = link_value(self.max_seq, self.max_content) - link_value(self.min_seq - 1,
                                                                         first[3] or b"")
        return (self.links - ends) % _LINK_MOD == 0

    def first_row(self) -> tuple[Any, ...]:
        """The zone's first row in the ordered scan's layout (``_AUDIT_SELECT``)."""
        line = self.min_line
        f = split_escaped(line) if b"\\" in line else line.rstrip(b"\n").split(b"\t")
        text = [(v or b"").decode("utf-8", "replace") for v in f[2:17]]
        return (int(f[1] or 0), *text, int(f[17] or 0) // 1000)


def _link_hasher(link_key: bytes) -> tuple[Callable[[], Any], Callable[[int, bytes], int]]:
    """The keyed pair hash of the link sums: a copier for the hot loop and a one-shot form."""
    base = hashlib.blake2b(key=link_key, digest_size=16)

    def value(seq: int, content: bytes) -> int:
        h = base.copy()
        h.update(b"%d|" % seq + content)
        return int.from_bytes(h.digest(), "little")

    return base.copy, value


def tally_stream(
    chunks: Iterable[Any],
    tallies: dict[bytes, _ZoneTally],
    *,
    key: bytes | None,
    link_key: bytes,
    archive: Mapping[tuple[str, int], ArchivedEvent] | None,
    cap: int,
) -> int:
    """Check every row of a text COPY stream (one row per chunk); returns the rows read.

    Per row: content hash over the canonical bytes, chain_hmac, the zone's link sum and ends,
    the archived copy; anomalies keep a count and the ``cap`` first examples per zone. A row
    that directly follows the zone's previous row in the stream (the next chain_seq, linking
    to its content: the common case, rows lie in ingestion order) has its link checked by a
    comparison, and the two pairs it would add and subtract are skipped: they cancel.
    """
    sha = hashlib.sha256
    link, _ = _link_hasher(link_key)
    mac = chain_hmac_bytes(key) if key else None
    from_bytes = int.from_bytes
    get = tallies.get
    keep = _ZoneTally._keep
    archive_get = archive.get if archive is not None else None
    n = 0
    for data in chunks:
        line = bytes(data)
        n += 1
        if b"\\" not in line:
            zone_b, seq_b, stored, prev, sig, rest = line.split(b"\t", 5)
            message = rest[:-1].replace(b"\t", SEP)
            ident = None
        else:  # escapes (a backslash, a control character, a NULL): field by field
            f = split_escaped(line)
            if len(f) != 18 or any(v is None for v in (f[0], *f[2:])):
                zone_b = f[0] or b""
                bad = tallies.setdefault(zone_b, _ZoneTally(zone_b.decode("utf-8", "replace")))
                bad.rows += 1
                bad.malformed += 1
                continue
            zone_b, seq_b, stored, prev, sig, ident = f[:6]  # type: ignore[assignment]
            message = SEP.join(f[5:])  # type: ignore[arg-type]
            rest = b""
        t = get(zone_b)
        if t is None:
            t = tallies[zone_b] = _ZoneTally(zone_b.decode("utf-8", "replace"))
        t.rows += 1
        if seq_b is None:
            t.malformed += 1  # NULL chain_seq: the ordered scan reports it
            continue
        seq = int(seq_b)
        computed = sha(message).hexdigest().encode()
        if computed != stored:
            t.content_bad += 1
            event_id = (rest.split(b"\t", 1)[0] if ident is None else ident).decode(
                "utf-8", "replace")
            keep(t.content_examples,
                 (-seq, event_id, stored.decode("utf-8", "replace"), computed.decode()), cap)
        if seq < t.min_seq:
            t.min_seq, t.min_line = seq, line
        if seq > t.max_seq:
            t.max_seq, t.max_content = seq, stored
        if seq != t.pend_seq + 1 or prev != t.pend_stored:
            # not the successor of the zone's previous row in this stream: both pairs count
            if t.pend_seq != _NO_PENDING:
                h = link()
                h.update(b"%d|" % t.pend_seq + t.pend_stored)
                t.links += from_bytes(h.digest(), "little")
            g = link()
            g.update(b"%d|" % (seq - 1) + prev)
            t.links -= from_bytes(g.digest(), "little")
        # else: the link to the previous row holds; its pair and this row's request cancel
        t.pend_seq, t.pend_stored = seq, stored
        if mac is not None:
            if sig:
                t.keyed += 1
                if mac(stored, prev) != sig:
                    t.hmac_bad += 1
                    keep(t.hmac_examples, -seq, cap)
            else:
                t.unsigned += 1
        if archive_get is not None:
            event = archive_get((t.zone, seq))
            if event is not None:
                event_id = (rest.split(b"\t", 1)[0] if ident is None else ident).decode(
                    "utf-8", "replace")
                if (event.event_id, event.content_sha256, event.chain_hmac) != (
                        event_id, stored.decode("utf-8", "replace"),
                        sig.decode("utf-8", "replace")):
                    t.archive_bad += 1
                    keep(t.archive_examples, (-seq, event_id, event.event_id), cap)
    _, value = _link_hasher(link_key)
    for t in tallies.values():
        t.flush(value)
    return n


def _copy_rows(conn: psycopg.Connection[Any], relation: str, zones: Collection[str] | None,
               sink: Callable[[Iterable[Any]], int]) -> int:
    """Run the streaming COPY of one relation and feed its rows to ``sink``.

    The bytes must be UTF-8 (what the hashes cover): the client encoding is pinned for the
    transaction, whatever the caller's connection uses.
    """
    query, params = stream_query(relation, zones)
    conn.execute("SELECT set_config('client_encoding', 'UTF8', true)")
    return sink(itertools.chain.from_iterable(copy_rows(conn, query, params or None)))


def leaf_partitions(conn: psycopg.Connection[Any], table: str = "audit_events"
                    ) -> list[tuple[str, int]]:
    """The relations holding a table's rows (leaf partitions, or itself) and their sizes (pages)."""
    rows = conn.execute(
        "SELECT t.relid::regclass::text,"
        " (pg_relation_size(t.relid) / current_setting('block_size')::int)::bigint"
        " FROM pg_partition_tree(%s::regclass) t WHERE t.isleaf ORDER BY 1", (table,),
    ).fetchall()
    return [(name, int(pages)) for name, pages in rows]


# Parallel workers: ``python -c`` processes (never a fork of a process holding connections, and
# no re-import of the caller's main module as multiprocessing's spawn would do), each with one
# connection inside the verifier's exported snapshot. Arguments (the HMAC key and password
# included) travel pickled over the child's stdin, never on its command line or environment.

_WORKER_MAIN = "from caracal_restore.audit_chain import _worker_main; _worker_main()"


@dataclasses.dataclass(frozen=True)
class _WorkerJob:
    """What one worker process tallies, and how it reaches the snapshot."""

    conninfo: str
    password: str | None = dataclasses.field(repr=False)
    snapshot: str
    relations: tuple[str, ...]
    key: bytes | None = dataclasses.field(repr=False)
    link_key: bytes = dataclasses.field(repr=False)
    archive: Mapping[tuple[str, int], ArchivedEvent] | None
    zones: Collection[str] | None
    cap: int


def _worker_main() -> None:
    """Entry point of a worker process: read a job on stdin, write its tallies on stdout."""
    job: _WorkerJob = pickle.loads(sys.stdin.buffer.read())
    kwargs: dict[str, Any] = {"autocommit": True}
    if job.password:
        kwargs["password"] = job.password
    tallies: dict[bytes, _ZoneTally] = {}
    rows = 0
    with psycopg.connect(job.conninfo, **kwargs) as conn:
        conn.execute("BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        conn.execute(sql.SQL("SET TRANSACTION SNAPSHOT {}").format(sql.Literal(job.snapshot)))

        def sink(chunks: Iterable[Any]) -> int:
            return tally_stream(chunks, tallies, key=job.key, link_key=job.link_key,
                                archive=job.archive, cap=job.cap)

        for relation in job.relations:
            rows += _copy_rows(conn, relation, job.zones, sink)
        conn.execute("COMMIT")
    sys.stdout.buffer.write(pickle.dumps((rows, tallies), protocol=pickle.HIGHEST_PROTOCOL))


def _assign(relations: Sequence[tuple[str, int]], workers: int) -> list[tuple[str, ...]]:
    """Spread partitions over workers, largest first onto the least loaded (by pages)."""
    loads = [(0, i, []) for i in range(workers)]  # type: list[tuple[int, int, list[str]]]
    heapq.heapify(loads)
    for name, pages in sorted(relations, key=lambda r: (-r[1], r[0])):
        load, i, names = heapq.heappop(loads)
        names.append(name)
        heapq.heappush(loads, (load + max(pages, 1), i, names))
    return [tuple(names) for _, _, names in sorted(loads, key=lambda x: x[1]) if names]


def _run_workers(jobs: Sequence[_WorkerJob]) -> list[dict[bytes, _ZoneTally]]:
    """Run one worker process per job; return their tallies (raise if one fails)."""
    env = dict(os.environ)
    root = str(Path(__file__).resolve().parents[1])
    env["PYTHONPATH"] = os.pathsep.join(filter(None, (root, env.get("PYTHONPATH"))))
    procs: list[subprocess.Popen[bytes]] = []
    try:
        for job in jobs:
            proc = subprocess.Popen([sys.executable, "-c", _WORKER_MAIN], env=env,
                                    stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                    stderr=subprocess.PIPE)
            procs.append(proc)
            assert proc.stdin is not None
            proc.stdin.write(pickle.dumps(job, protocol=pickle.HIGHEST_PROTOCOL))
            proc.stdin.close()
            proc.stdin = None  # sent: communicate() must not flush it again
        results = []
        for proc in procs:
            out, err = proc.communicate()
            if proc.returncode != 0:
                tail = REDACTOR(err.decode("utf-8", "replace")[-2000:])
                raise RuntimeError(f"audit chain worker failed (exit {proc.returncode}): {tail}")
            results.append(pickle.loads(out)[1])
        return results
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
            for pipe in (proc.stdout, proc.stderr):
                if pipe is not None:
                    pipe.close()
            proc.wait()


def default_workers() -> int:
    """Worker processes for the streaming pass: one per two cores (each pairs with a backend)."""
    return max(1, (os.cpu_count() or 1) // 2)


def _stream_pass(ctx: _Context, zones: Collection[str] | None, workers: int,
                 link_key: bytes, *, owned: bool) -> dict[bytes, _ZoneTally]:
    """Tally every row of ``audit_events`` (in this process, or in ``workers`` processes).

    Workers need a snapshot to import, so they are only used when the transaction is ours.
    """
    tallies: dict[bytes, _ZoneTally] = {}
    cap = ctx.findings.cap
    relations = leaf_partitions(ctx.conn) if workers > 1 and owned else []
    snapshot = _export_snapshot(ctx.conn) if len(relations) > 1 else None
    if snapshot is None:
        def sink(rows: Iterable[Any]) -> int:
            return tally_stream(rows, tallies, key=ctx.key, link_key=link_key,
                                archive=ctx.archive, cap=cap)

        _copy_rows(ctx.conn, "audit_events", zones, sink)
        return tallies
    info = ctx.conn.info
    archive = dict(ctx.archive) if ctx.archive is not None else None
    jobs = [
        _WorkerJob(info.dsn, info.password, snapshot, names, ctx.key, link_key, archive,
                   set(zones) if zones is not None else None, cap)
        for names in _assign(relations, workers)
    ]
    for part in _run_workers(jobs):
        for zone_b, tally in part.items():
            mine = tallies.get(zone_b)
            if mine is None:
                tallies[zone_b] = tally
            else:
                mine.merge(tally, cap)
    return tallies


def _export_snapshot(conn: psycopg.Connection[Any]) -> str | None:
    """Export the verifier's snapshot for worker processes (None: not possible here).

    Only a top-level repeatable-read transaction can export one; a server in recovery cannot.
    """
    row = conn.execute("SELECT pg_is_in_recovery()").fetchone()
    if row is None or row[0]:
        return None
    row = conn.execute("SELECT pg_export_snapshot()").fetchone()
    return str(row[0]) if row else None


def _replay_tally(ctx: _Context, zone: str, tally: _ZoneTally) -> ZoneSummary:
    """Findings of a balanced zone, in the order the ordered scan would have made them."""
    scan = _ZoneScan(ctx, zone, _AUDIT_SELECT, "zone_id = %s", _audit_content)
    summary = scan.summary
    for neg_seq, event_id, stored, computed in sorted(tally.content_examples, reverse=True):
        scan.content_differs((-neg_seq, stored, "", "", event_id), computed)
    ctx.findings.counts["content_mismatch"] += tally.content_bad - len(tally.content_examples)
    first = tally.first_row()
    summary.first_seq = first[0]
    if first[0] != 1 or first[2]:
        scan.irregular(first, 1, "")  # retention prefix, or a genesis row with a predecessor
    for neg_seq in sorted(tally.hmac_examples, reverse=True):
        scan.hmac_fails(-neg_seq)
    extra = tally.hmac_bad - len(tally.hmac_examples)
    summary.hmac_failed += extra
    ctx.hmac_failed += extra
    for neg_seq, event_id, archived_id in sorted(tally.archive_examples, reverse=True):
        ctx.findings.add("archive_mismatch", zone, -neg_seq,
                         f"row {event_id!r} differs from its exported copy {archived_id!r}")
    ctx.findings.counts["archive_mismatch"] += tally.archive_bad - len(tally.archive_examples)
    summary.rows = tally.rows
    summary.hmac_checked = tally.keyed
    summary.unsigned_rows = tally.unsigned
    summary.head_seq, summary.head_sha256 = tally.max_seq, tally.max_content.decode()
    ctx.hmac_keyed += tally.keyed
    return summary


def verify_audit_chain(
    conn: psycopg.Connection[Any],
    *,
    hmac_key: bytes | str | None = None,
    expected_heads: Mapping[str, tuple[int, str]] | None = None,
    archive: Mapping[tuple[str, int], ArchivedEvent] | None = None,
    zones: Collection[str] | None = None,
    batch_size: int = 20000,
    max_examples: int = 100,
    workers: int | None = None,
    ordered: bool = False,
) -> Report:
    """Verify every (or the given) zone chain of ``audit_events``; read-only.

    By default one unordered streaming pass checks every hash and balances every zone's links
    (``workers`` processes read partitions in parallel; default one per two cores); zones that
    do not balance are read again in ``chain_seq`` order and diagnosed row by row. ``ordered``
    reads every zone in order (the reference behaviour the streaming pass must reproduce).
    """
    started = time.perf_counter()
    ctx = _Context(conn, "audit_events", _Findings(max_examples), batch_size, _as_key(hmac_key),
                   archive=archive)
    summaries: dict[str | None, ZoneSummary] = {}
    with _read_snapshot(conn) as owned:
        if not _exists(conn, "audit_events"):
            ctx.findings.add("table_missing", None, None, "audit_events does not exist")
            return _report(ctx, summaries, started)
        _check_marker(ctx)
        ctx.partitions = audit_partitions(conn)
        tallies: dict[str, _ZoneTally] = {}
        if ordered:
            present = {z for (z,) in conn.execute("SELECT DISTINCT zone_id FROM audit_events")}
        else:
            link_key = os.urandom(32)
            _, link_value = _link_hasher(link_key)
            streamed = _stream_pass(ctx, zones, workers or default_workers(), link_key,
                                    owned=owned)
            tallies = {t.zone: t for t in streamed.values() if t.balanced(link_value)}
            present = {t.zone for t in streamed.values()}
        wanted = present | set(expected_heads or ())
        if zones is not None:
            wanted &= set(zones)
        for zone in sorted(wanted):
            if zone in tallies:
                summaries[zone] = _replay_tally(ctx, zone, tallies[zone])
            else:
                scan = _ZoneScan(ctx, zone, _AUDIT_SELECT, "zone_id = %s", _audit_content)
                summaries[zone] = scan.run()
            if expected_heads is not None:
                _check_head(ctx, summaries[zone], expected_heads.get(zone))
    ctx.classify_hmac()
    return _report(ctx, summaries, started)


def _check_marker(ctx: _Context) -> None:
    """The rehash marker must be restored with the rows (else Audit rewrites every chain)."""
    if not _exists(ctx.conn, "audit_chain_rehash"):
        ctx.findings.add("marker_table_missing", None, None,
                         "audit_chain_rehash does not exist")
        return
    row = ctx.conn.execute(
        "SELECT EXISTS (SELECT 1 FROM audit_chain_rehash),"
        " EXISTS (SELECT 1 FROM audit_events)"
    ).fetchone()
    assert row is not None
    if row[1] and not row[0]:
        ctx.findings.add(
            "marker_missing", None, None,
            "audit_chain_rehash is empty while audit_events holds rows: starting Audit would "
            "rewrite every chain under the current key (laundering a wrong key or tampering)",
        )


def _check_head(ctx: _Context, summary: ZoneSummary, expected: tuple[int, str] | None) -> None:
    """Compare a zone's head with the backup fingerprint's."""
    zone, add = summary.zone_id, ctx.findings.add
    if expected is None:
        if summary.rows:
            add("beyond_head", zone, summary.head_seq, "zone is not in the backup's chain heads")
        return
    exp_seq, exp_sha = expected
    if summary.head_seq is None:
        add("truncated_head", zone, None,
            f"zone absent from the restore; the backup's head is chain_seq {exp_seq}")
    elif summary.head_seq < exp_seq:
        add("truncated_head", zone, summary.head_seq,
            f"head at chain_seq {summary.head_seq}, the backup's head is {exp_seq}: "
            f"{exp_seq - summary.head_seq} rows missing at the head")
    elif summary.head_seq == exp_seq:
        if summary.head_sha256 != exp_sha:
            add("truncated_head", zone, exp_seq,
                "head chain_seq matches the backup but its content_sha256 differs")
    else:
        row = ctx.conn.execute(
            "SELECT content_sha256 FROM audit_events WHERE zone_id = %s AND chain_seq = %s",
            (zone, exp_seq),
        ).fetchall()
        if exp_sha not in {sha for (sha,) in row}:
            add("truncated_head", zone, exp_seq,
                f"the row at the backup's head chain_seq {exp_seq} differs or is missing")
        else:
            add("beyond_head", zone, summary.head_seq,
                f"{summary.head_seq - exp_seq} rows newer than the backup's head {exp_seq}")


def _report(ctx: _Context, summaries: dict[str | None, ZoneSummary], started: float) -> Report:
    """Freeze a run's state into a Report."""
    notes = []
    if ctx.lookups_left <= 0:
        notes.append(f"reordering diagnosis stopped after {MAX_LOOKUPS} look-ups")
    not_recomputable = sum(z.content_not_recomputable for z in summaries.values())
    if not_recomputable:
        notes.append(f"{not_recomputable} rows: content hash not recomputable (JSON payload "
                     "hashed in the writer's key order); links and HMACs still checked")
    unsigned = sum(z.unsigned_rows for z in summaries.values())
    if unsigned:
        notes.append(f"{unsigned} rows carry no chain_hmac (no key at write time)")
    return Report(
        table=ctx.table,
        rows_checked=sum(z.rows for z in summaries.values()),
        elapsed_s=time.perf_counter() - started,
        counts={k: n for k, n in ctx.findings.counts.items() if n},
        findings=ctx.findings.ordered(),
        zones=summaries,
        hmac_checked=ctx.key is not None,
        retention=dict(ctx.retention),
        notes=tuple(notes),
        hmac_key_check=key_check(ctx.key),
    )


# ------------------------------------------------------------------- admin_audit_events

_ADMIN_SELECT = (
    "chain_seq, COALESCE(content_sha256, ''), COALESCE(prev_content_sha256, ''),"
    " COALESCE(chain_hmac, ''), COALESCE(id, ''), COALESCE(request_id, ''),"
    " COALESCE(actor_id, ''), COALESCE(actor_name, ''), COALESCE(actor_scope, ''),"
    " COALESCE(action, ''), COALESCE(method, ''), COALESCE(path, ''), COALESCE(zone_id, ''),"
    " COALESCE(entity_type, ''), COALESCE(entity_id, ''), COALESCE(status_code::text, ''),"
    " payload_json::text, occurred_at FROM admin_audit_events"
)

#: Key orders the writers used when building payloads (FACTS-1.0 §5, FACTS-2026.06 §4).
_PAYLOAD_ORDER = (
    "rls_mode", "rls_zone_guc", "operator", "change_kind", "changed_fields", "secret_rotated",
    "dcr_registration_disabled", "dcr_shutdown_mode", "live_dcr_applications",
    "revoked_applications", "revoked_sessions", "terminated_agents", "revoked_delegations",
)
_RANK = {k: i for i, k in enumerate(_PAYLOAD_ORDER)}


def _iso_ms(occurred_at: dt.datetime) -> str | None:
    """JavaScript toISOString() of a stored timestamp (None: not a millisecond value)."""
    utc = occurred_at.astimezone(dt.UTC)
    if utc.microsecond % 1000:
        return None
    return utc.strftime("%Y-%m-%dT%H:%M:%S.") + f"{utc.microsecond // 1000:03d}Z"


def _payload_candidates(text: str) -> list[str]:
    """JSON.stringify forms the writer may have hashed: known key order, then jsonb order."""
    value = json.loads(text)
    forms = []
    if isinstance(value, dict):
        ordered = dict(sorted(value.items(), key=lambda kv: _RANK.get(kv[0], len(_RANK))))
        forms.append(json.dumps(ordered, separators=(",", ":"), ensure_ascii=False))
    plain = json.dumps(value, separators=(",", ":"), ensure_ascii=False)
    if plain not in forms:
        forms.append(plain)
    return forms


def _admin_content(r: tuple[Any, ...]) -> str | None:
    """content_sha256 of an admin row; None when it cannot be recomputed from the database."""
    iso = _iso_ms(r[17])
    if iso is None:
        return ""  # never a stored hash: reported as an edited occurred_at
    fields = list(r[4:16])
    if r[16] is None:
        return admin_content_hash([*fields, "", iso])
    stored = r[1]
    for payload in _payload_candidates(r[16]):
        digest = admin_content_hash([*fields, payload, iso])
        if digest == stored:
            return digest
    return None


def verify_admin_chain(
    conn: psycopg.Connection[Any],
    key: bytes | str | None = None,
    *,
    batch_size: int = 20000,
    max_examples: int = 100,
) -> Report:
    """Verify ``admin_audit_events``: one chain per zone_id, NULL zone = the global chain."""
    started = time.perf_counter()
    ctx = _Context(conn, "admin_audit_events", _Findings(max_examples), batch_size, _as_key(key))
    summaries: dict[str | None, ZoneSummary] = {}
    with _read_snapshot(conn):
        if not _exists(conn, "admin_audit_events"):
            ctx.findings.add("table_missing", None, None, "admin_audit_events does not exist")
            return _report(ctx, summaries, started)
        zones = [z for (z,) in conn.execute("SELECT DISTINCT zone_id FROM admin_audit_events")]
        for zone in sorted(zones, key=lambda z: (z is not None, z or "")):
            where = "zone_id = %s" if zone is not None else "zone_id IS NULL"
            summaries[zone] = _ZoneScan(ctx, zone, _ADMIN_SELECT, where, _admin_content).run()
    ctx.classify_hmac()
    return _report(ctx, summaries, started)
