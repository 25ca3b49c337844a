"""Restore checklist step 3: migration verification, read-only (never the mutating script).

At 2026.06 "run migration verification" meant ``validateMigrations.sh``, which re-runs the
migrations and creates a login role (FACTS-2026.06 §1.4). The suite keeps its evidence and
drops its writes: the ledger is compared with the release's exact versions and with the
source's, and ``verify.sh``'s checks a-f are evaluated on the restored database — check c
(audit rows cannot be changed by the audit role) by having the server authorise its statements
without running them, check f against the backup's own month rather than today's.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import itertools
from collections.abc import Sequence
from typing import Any

import psycopg
from psycopg import errors as pg_errors
from psycopg import sql

from caracal_restore.inspect import CannotEvaluate
from caracal_restore.profiles import Profile

Conn = psycopg.Connection[Any]
#: verify.sh's statements for check c, verbatim (they touch no row even when allowed).
AUDIT_WRITE_PROBES = (
    ("UPDATE", "UPDATE audit_events SET decision='x' WHERE false"),
    ("DELETE", "DELETE FROM audit_events WHERE false"),
)
RLS_POLICY = "zone_isolation"
AUDIT_TABLE = "audit_events"


# --------------------------------------------------------------------------------- ledger


def read_ledger(conn: Conn, ledger_table: str) -> list[str] | None:
    """Versions in the ledger table the release names (unqualified: through search_path)."""
    row = conn.execute("SELECT to_regclass(%s)::text", (ledger_table,)).fetchone()
    if row is None or row[0] is None:
        return None
    schema, _, name = ledger_table.rpartition(".")
    table = sql.Identifier(schema, name) if schema else sql.Identifier(name)
    return [r[0] for r in conn.execute(
        sql.SQL("SELECT version::text FROM {} ORDER BY version").format(table)).fetchall()]


@dataclasses.dataclass(frozen=True)
class LedgerDiff:
    """A ledger against the versions it must hold."""

    found: int
    expected: int
    missing: tuple[str, ...]
    unexpected: tuple[str, ...]
    duplicated: tuple[str, ...]

    @property
    def equal(self) -> bool:
        """Same versions, each once."""
        return not (self.missing or self.unexpected or self.duplicated)


def diff_ledger(found: Sequence[str], expected: Sequence[str]) -> LedgerDiff:
    """Versions missing from, added to, or repeated in a ledger."""
    counts: dict[str, int] = {}
    for version in found:
        counts[version] = counts.get(version, 0) + 1
    dups = sorted(v for v, n in counts.items() if n > 1)
    return LedgerDiff(
        found=len(found), expected=len(expected),
        missing=tuple(v for v in expected if v not in set(found)),
        unexpected=tuple(sorted(set(found) - set(expected))),
        duplicated=tuple(dups),
    )


# ------------------------------------------------------------------------- verify.sh a-f


def present_tables(conn: Conn, names: Sequence[str]) -> list[str]:
    """Those of ``names`` that exist in ``public`` (to_regclass, like verify.sh)."""
    rows = conn.execute(
        "SELECT t FROM unnest(%s::text[]) AS t"
        " WHERE to_regclass('public.' || quote_ident(t)) IS NOT NULL", (list(names),)).fetchall()
    found = {r[0] for r in rows}
    return [t for t in names if t in found]


@dataclasses.dataclass(frozen=True)
class WriteProbe:
    """One of verify.sh's writes, authorised (or refused) by the server for the audit role."""

    statement: str
    outcome: str  # denied | allowed
    sqlstate: str | None
    message: str


def audit_write_probes(conn: Conn, role: str) -> list[WriteProbe]:
    """verify.sh check c: as ``role``, UPDATE and DELETE on audit_events must be refused.

    Each statement is put to the server as ``EXPLAIN <statement>`` under ``SET LOCAL ROLE``, in
    a read-only transaction that is rolled back. PostgreSQL checks the role's privileges on every
    table a statement writes when it starts the statement's plan, for ``EXPLAIN`` as for the
    statement itself (and before a read-only transaction would refuse a write), so the verdict is
    the one the statement would meet, while nothing can be written: this runs on the restored
    database itself. Only a privilege error (42501) counts as refused; any other error cannot
    decide the control, nor can a statement the role may run when a statement-level trigger on
    audit_events (which fires when the statement runs, not when it is explained) might refuse it.
    """
    exists = conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (role,)).fetchone()
    if not exists:
        return [WriteProbe(f"SET ROLE {role}", "missing-role", None,
                           f"role {role!r} does not exist on the target (globals.sql roles "
                           "were not restored)")]
    out = []
    for verb, statement in AUDIT_WRITE_PROBES:
        try:
            with conn.transaction(force_rollback=True):
                conn.execute("SET TRANSACTION READ ONLY")
                conn.execute(sql.SQL("SET LOCAL ROLE {}").format(sql.Identifier(role)))
                conn.execute("EXPLAIN " + statement)
            out.append(WriteProbe(statement, "allowed", None,
                                  f"{role} may {verb} audit_events"))
        except pg_errors.InsufficientPrivilege as exc:
            out.append(WriteProbe(statement, "denied", exc.sqlstate, _line(exc)))
        except psycopg.Error as exc:
            raise CannotEvaluate(
                f"{statement!r} as {role} failed with {exc.sqlstate or type(exc).__name__} "
                f"({_line(exc)}), not a privilege error: verify.sh's check c cannot be decided"
            ) from None
    allowed = {verb for (verb, _), probe in zip(AUDIT_WRITE_PROBES, out, strict=True)
               if probe.outcome == "allowed"}
    guards = _statement_triggers(conn, allowed)
    if guards:
        # verify.sh runs the statement, which fires these (EXPLAIN does not): they may refuse it.
        raise CannotEvaluate(
            f"{role} holds the privilege to {' and '.join(sorted(allowed))} audit_events, but "
            f"statement-level trigger(s) {', '.join(guards)} on it would fire on verify.sh's "
            "statements and may refuse them: verify.sh's check c cannot be decided without "
            "running them"
        )
    return out


#: pg_trigger.tgtype bits: row-level, DELETE, UPDATE.
_TRIGGER_ROW, _TRIGGER_DELETE, _TRIGGER_UPDATE = 1, 8, 16


def _statement_triggers(conn: Conn, verbs: set[str]) -> list[str]:
    """Enabled statement-level triggers on audit_events for any of ``verbs``."""
    events = ((_TRIGGER_UPDATE if "UPDATE" in verbs else 0)
              | (_TRIGGER_DELETE if "DELETE" in verbs else 0))
    if not events:
        return []
    rows = conn.execute(
        "SELECT tgname FROM pg_trigger WHERE tgrelid = to_regclass('public.audit_events')"
        " AND NOT tgisinternal AND tgenabled IN ('O', 'A') AND tgtype & %s = 0"
        " AND tgtype & %s <> 0 ORDER BY tgname", (_TRIGGER_ROW, events)).fetchall()
    return [r[0] for r in rows]


@dataclasses.dataclass(frozen=True)
class TriggerState:
    """An immutability trigger the release requires, as found on the target."""

    name: str
    table: str | None
    enabled: str | None  # O/A/R enabled, D disabled, None missing


def immutable_triggers(conn: Conn, names: Sequence[str]) -> list[TriggerState]:
    """verify.sh check d: the release's non-internal immutability triggers exist."""
    rows = {r[0]: (r[1], r[2]) for r in conn.execute(
        "SELECT t.tgname, c.relname, t.tgenabled FROM pg_trigger t"
        " JOIN pg_class c ON c.oid = t.tgrelid WHERE NOT t.tgisinternal"
        " AND t.tgname = ANY(%s)", (list(names),)).fetchall()}
    return [TriggerState(n, rows[n][0] if n in rows else None,
                         str(rows[n][1]) if n in rows else None) for n in names]


@dataclasses.dataclass(frozen=True)
class RlsState:
    """Row-level security of one table: enabled, and its policies."""

    table: str
    exists: bool
    enabled: bool
    zone_isolation_policies: int
    other_policies: tuple[str, ...]


def rls_states(conn: Conn, tables: Sequence[str]) -> list[RlsState]:
    """verify.sh check e: RLS enabled and exactly one ``zone_isolation`` policy per table."""
    rel = {r[0]: bool(r[1]) for r in conn.execute(
        "SELECT c.relname, c.relrowsecurity FROM pg_class c JOIN pg_namespace n"
        " ON n.oid = c.relnamespace WHERE n.nspname = 'public' AND c.relname = ANY(%s)"
        " AND c.relkind IN ('r', 'p')", (list(tables),)).fetchall()}
    policies: dict[str, list[str]] = {}
    for table, name in conn.execute(
            "SELECT tablename, policyname FROM pg_policies WHERE schemaname = 'public'"
            " AND tablename = ANY(%s)", (list(tables),)).fetchall():
        policies.setdefault(table, []).append(name)
    return [RlsState(t, t in rel, rel.get(t, False),
                     policies.get(t, []).count(RLS_POLICY),
                     tuple(sorted(p for p in policies.get(t, []) if p != RLS_POLICY)))
            for t in tables]


@dataclasses.dataclass(frozen=True)
class PartitionWindow:
    """verify.sh check f, evaluated at the backup's time: month M .. M+n partitions."""

    anchor: str
    expected: tuple[tuple[str, str], ...]
    found: dict[str, str | None]
    default_rows_inside: dict[str, int]
    findings: tuple[str, ...]


def month_starts(moment: dt.datetime, ahead: int) -> list[dt.datetime]:
    """The first instants (UTC) of the month of ``moment`` and the ``ahead`` months after it."""
    utc = moment.astimezone(dt.UTC)
    year, month = utc.year, utc.month
    out = []
    for _ in range(ahead + 2):
        out.append(dt.datetime(year, month, 1, tzinfo=dt.UTC))
        year, month = (year + 1, 1) if month == 12 else (year, month + 1)
    return out


def partition_window(conn: Conn, profile: Profile, anchor: dt.datetime) -> PartitionWindow:
    """Partitions for the anchor's month and the profile's months ahead, with their bounds."""
    starts = month_starts(anchor, profile.audit_partition_months_ahead)
    expected = []
    for begin, end in itertools.pairwise(starts):
        name = profile.audit_partition_format.format(year=begin.year, month=begin.month)
        bound = (f"FOR VALUES FROM ('{begin:%Y-%m-%d %H:%M:%S}+00') "
                 f"TO ('{end:%Y-%m-%d %H:%M:%S}+00')")
        expected.append((name, bound, begin, end))
    with conn.transaction(force_rollback=True):
        conn.execute("SELECT set_config('TimeZone', 'UTC', true)")
        attached = dict(conn.execute(
            "SELECT c.relname, pg_get_expr(c.relpartbound, c.oid) FROM pg_inherits i"
            " JOIN pg_class c ON c.oid = i.inhrelid"
            " WHERE i.inhparent = to_regclass('public.audit_events')").fetchall())
        default = next((n for n, b in attached.items() if b == "DEFAULT"), None)
        inside: dict[str, int] = {}
        findings = []
        for name, bound, begin, end in expected:
            if attached.get(name) == bound:
                continue
            if default is not None:
                row = conn.execute(sql.SQL(
                    "SELECT count(*) FROM {} WHERE occurred_at >= %s AND occurred_at < %s"
                ).format(sql.Identifier("public", default)), (begin, end)).fetchone()
                inside[name] = int(row[0]) if row else 0
            blocked = (f"; {default} holds {inside[name]} row(s) of that month, which blocks "
                       "creating it" if inside.get(name) else "")
            if name not in attached:
                findings.append(f"{name} ({begin:%Y-%m}) is missing{blocked}")
            else:
                findings.append(f"{name} has bound {attached[name]!r}, expected {bound!r}")
    return PartitionWindow(
        anchor=anchor.isoformat(), expected=tuple((n, b) for n, b, _s, _e in expected),
        found={n: attached.get(n) for n, _b, _s, _e in expected},
        default_rows_inside=inside, findings=tuple(findings))


def _line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__
