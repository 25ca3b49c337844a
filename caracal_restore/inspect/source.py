"""The restore against the live source it came from, where the source may have moved on.

Without a fingerprint (a bundle from Caracal's own backup.sh) the running source is the only
independent witness of what the backup held. It keeps writing after the backup, so each
comparison asks what must still hold: the migration ledger is the same; every restored audit
chain is a prefix of the source's chain of the same zone (same ``content_sha256`` and
``chain_hmac`` at each ``chain_seq``, FACTS-1.0 §4.5, §4.8); so is every admin audit chain
(§5; nothing prunes it); and every revocation restored still holds at the source (§9: a
revocation is terminal). A difference the source's own retention explains since the backup (a
dropped audit partition, a pruned session) is reported, not failed. Both sides are only read.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Generator, Mapping
from typing import Any

import psycopg
from psycopg import sql

from caracal_restore import fingerprint as fp
from caracal_restore.inspect import CannotEvaluate
from caracal_restore.inspect import migrations as inspect_migrations
from caracal_restore.profiles import Profile

Conn = psycopg.Connection[Any]
COMPARISONS = ("ledger", "audit-chains", "admin-audit-chains", "revocations")
#: Differences listed in the evidence before they are only counted.
LISTED = 50
#: Statuses no later write undoes, and the one a Coordinator may lift (resume).
TERMINAL = {"sessions": ("revoked",), "agents": ("terminated", "expired"), "edges": ("revoked",)}
LIFTABLE = {"agents": ("suspended",)}
EDGES_TABLE = "delegation_edges"


@dataclasses.dataclass(frozen=True)
class SourceComparison:
    """One comparison with the live source: what was compared, what differs, what is explained."""

    key: str
    checked: int
    findings: tuple[str, ...]
    #: Differences the source's own writes since the backup explain (retention, resumption).
    reported: tuple[str, ...]
    observed: Mapping[str, Any]


def compare(restored: Conn, source: Conn, profile: Profile, key: str) -> SourceComparison:
    """Run one comparison by name."""
    if key == "ledger":
        return ledger(restored, source, profile)
    if key == "audit-chains":
        return audit_chains(restored, source, profile.audit_table or "audit_events")
    if key == "admin-audit-chains":
        return admin_audit_chains(restored, source)
    if key == "revocations":
        return revocations(restored, source, profile)
    raise KeyError(f"no live-source comparison {key!r}; known: {', '.join(COMPARISONS)}")


def source_identity(source: Conn) -> dict[str, Any]:
    """Who the live source is: cluster identity, database, login (no secret)."""
    row = source.execute(
        "SELECT (SELECT system_identifier::text FROM pg_control_system()), current_database(),"
        " current_user, current_setting('server_version'),"
        " current_setting('default_transaction_read_only')").fetchone()
    assert row is not None
    return {"system_identifier": row[0], "database": row[1], "login": row[2],
            "server_version": row[3], "read_only": row[4]}


def require_every_row(source: Conn, table: str) -> None:
    """The source login must see every row of ``table`` (row-level security would hide some)."""
    row = source.execute(
        "SELECT r.rolsuper OR r.rolbypassrls OR NOT c.relrowsecurity"
        " OR (pg_has_role(c.relowner, 'MEMBER') AND NOT c.relforcerowsecurity)"
        " FROM pg_class c, pg_roles r WHERE c.oid = to_regclass(%s) AND r.rolname = current_user",
        (f"public.{table}",)).fetchone()
    if row is None:
        raise CannotEvaluate(f"the live source has no table {table}")
    if not row[0]:
        raise CannotEvaluate(
            f"the live source login is subject to row-level security on {table} and would see "
            "only some rows; give --source-dsn a login that owns the tables or bypasses RLS")


# ------------------------------------------------------------------------------ ledger


def ledger(restored: Conn, source: Conn, profile: Profile) -> SourceComparison:
    """The restored migration ledger equals the live source's."""
    mine = inspect_migrations.read_ledger(restored, profile.ledger_table)
    theirs = inspect_migrations.read_ledger(source, profile.ledger_table)
    if theirs is None:
        raise CannotEvaluate(f"the live source has no ledger table {profile.ledger_table}")
    if mine is None:
        return SourceComparison("ledger", 0, (f"the restored database has no ledger table "
                                              f"{profile.ledger_table}",), (), {"source": theirs})
    diff = inspect_migrations.diff_ledger(mine, theirs)
    findings = [f"applied at the source, missing from the restore: {v}" for v in diff.missing]
    findings += [f"in the restore, not at the source: {v}" for v in diff.unexpected]
    findings += [f"recorded twice in the restore: {v}" for v in diff.duplicated]
    return SourceComparison("ledger", len(theirs), tuple(findings), (),
                            {"restored": mine, "source": theirs})


# ------------------------------------------------------------------------ audit chains

#: (zone key, chain_seq) -> the compared columns; the zone key is '' for the global chain.
ChainKey = tuple[str, int]


def _chain_rows(conn: Conn, table: str, extra: str = ""
                ) -> Generator[tuple[Any, ...], None, None]:
    """(zone, chain_seq, content_sha256, chain_hmac[, extra]) in byte order of zone, then seq."""
    columns: sql.Composable = sql.SQL(
        "COALESCE(zone_id::text, ''), chain_seq, content_sha256, chain_hmac")
    if extra:
        columns = sql.SQL("{}, {}").format(columns, sql.SQL(extra))
    query = sql.SQL(
        "SELECT {} FROM {} WHERE chain_seq IS NOT NULL"
        " ORDER BY COALESCE(zone_id::text, '') COLLATE \"C\", chain_seq"
    ).format(columns, sql.Identifier("public", table))
    with conn.transaction(), conn.cursor(name=f"caracal_source_{table}") as cur:
        cur.itersize = 5000
        cur.execute(query)
        yield from cur


def _heads(conn: Conn, table: str) -> dict[str, int]:
    return {str(z): int(h) for z, h in conn.execute(sql.SQL(
        "SELECT COALESCE(zone_id::text, ''), max(chain_seq) FROM {} GROUP BY 1").format(
            sql.Identifier("public", table))).fetchall() if h is not None}


def _unsequenced(conn: Conn, table: str) -> int:
    row = conn.execute(sql.SQL("SELECT count(*) FROM {} WHERE chain_seq IS NULL").format(
        sql.Identifier("public", table))).fetchone()
    return int(row[0]) if row else 0


def _zone(zone: str) -> str:
    return zone or "(global)"


def _prefix(restored: Conn, source: Conn, table: str, key: str,
            explained: Callable[[tuple[Any, ...]], str | None]) -> SourceComparison:
    """Every restored chain row equals the source's at its (zone, chain_seq); the source's rows
    up to each restored zone's head are all restored (the restored chain is a prefix)."""
    require_every_row(source, table)
    heads = _heads(restored, table)
    source_heads = _heads(source, table)
    findings: list[str] = []
    reported: list[str] = []
    per_zone: dict[str, dict[str, int]] = {
        _zone(z): {"restored_head": h, "source_head": source_heads.get(z, 0), "equal": 0,
                   "differ": 0, "missing_at_source": 0, "dropped_by_source_retention": 0,
                   "missing_from_restore": 0} for z, h in heads.items()}
    mine = _chain_rows(restored, table, extra="tableoid::regclass::text")
    source_rows = _chain_rows(source, table)
    theirs = (r for r in source_rows if r[0] in heads and r[1] <= heads[r[0]])
    checked = 0
    a, b = next(mine, None), next(theirs, None)
    while a is not None or b is not None:
        ka: ChainKey | None = (a[0], a[1]) if a is not None else None
        kb: ChainKey | None = (b[0], b[1]) if b is not None else None
        if ka is not None and (kb is None or ka < kb):
            assert a is not None
            zone = per_zone[_zone(a[0])]
            why = explained(a)
            where = f"{table} zone {_zone(a[0])} chain_seq {a[1]}"
            if why:
                zone["dropped_by_source_retention"] += 1
                reported.append(f"{where}: not at the source any more ({why})")
            else:
                zone["missing_at_source"] += 1
                findings.append(f"{where}: restored, but the source has no row at that position")
            checked += 1
            a = next(mine, None)
        elif kb is not None and (ka is None or kb < ka):
            assert b is not None
            per_zone[_zone(b[0])]["missing_from_restore"] += 1
            findings.append(f"{table} zone {_zone(b[0])} chain_seq {b[1]}: at the source (at or "
                            "below the restored head), missing from the restore")
            b = next(theirs, None)
        else:
            assert a is not None
            assert b is not None
            zone = per_zone[_zone(a[0])]
            checked += 1
            if (a[2], a[3]) != (b[2], b[3]):
                zone["differ"] += 1
                findings.append(
                    f"{table} zone {_zone(a[0])} chain_seq {a[1]}: restored content_sha256 "
                    f"{str(a[2])[:16]}… chain_hmac {str(a[3])[:16]}…, the source has "
                    f"{str(b[2])[:16]}… {str(b[3])[:16]}…")
            else:
                zone["equal"] += 1
            a, b = next(mine, None), next(theirs, None)
    source_rows.close()  # the source's rows past every restored head are not read
    observed = {"zones": per_zone, "rows_without_chain_seq_not_compared": _unsequenced(
        restored, table), "differences_listed": findings[:LISTED],
        "explained_listed": reported[:LISTED]}
    return SourceComparison(key, checked, tuple(findings), tuple(reported), observed)


def _partitions(conn: Conn, table: str) -> set[str]:
    return {str(r[0]) for r in conn.execute(
        "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid"
        " WHERE i.inhparent = to_regclass(%s)", (f"public.{table}",)).fetchall()}


def audit_chains(restored: Conn, source: Conn, table: str = "audit_events") -> SourceComparison:
    """Every restored audit chain is a prefix of the source's chain of its zone.

    A restored row the source no longer has is explained only when its whole partition is
    gone at the source (retention drops monthly partitions, never single rows, and never the
    default partition, FACTS-1.0 §12.1).
    """
    live_partitions = _partitions(source, table)

    def dropped(row: tuple[Any, ...]) -> str | None:
        partition = str(row[4]).rpartition(".")[2].strip('"')
        if partition == table or partition in live_partitions:
            return None
        return f"its partition {partition} was dropped at the source since the backup"

    result = _prefix(restored, source, table, "audit-chains", dropped)
    return dataclasses.replace(result, observed={**result.observed,
                                                 "source_partitions": sorted(live_partitions)})


def admin_audit_chains(restored: Conn, source: Conn,
                       table: str = "admin_audit_events") -> SourceComparison:
    """Every restored admin audit chain (per zone, and the global one) is a prefix of the
    source's; nothing prunes this table, so every absent row is a finding."""
    return _prefix(restored, source, table, "admin-audit-chains", lambda _row: None)


# ------------------------------------------------------------------------- revocations


def _statuses(conn: Conn, table: str, ids: list[str]) -> dict[str, str]:
    rows = conn.execute(sql.SQL("SELECT id::text, status::text FROM {} WHERE id::text = ANY(%s)")
                        .format(sql.Identifier("public", table)), (ids,)).fetchall()
    return {str(i): str(s) for i, s in rows}


def revocations(restored: Conn, source: Conn, profile: Profile) -> SourceComparison:
    """Every revocation the restore holds still holds at the source (terminal states stay)."""
    tables = {"sessions": profile.lineage_table, "agents": profile.agent_table,
              "edges": EDGES_TABLE}
    revoked = fp.revoked(restored, sessions_table=profile.lineage_table,
                         agents_table=profile.agent_table)
    findings: list[str] = []
    reported: list[str] = []
    counts: dict[str, dict[str, int]] = {}
    checked = 0
    for kind, ids in revoked.items():
        if ids is None:
            continue
        table = tables[kind]
        require_every_row(source, table)
        mine = _statuses(restored, table, ids)
        theirs = _statuses(source, table, ids)
        tally = counts.setdefault(kind, {"restored": len(ids), "still_revoked": 0,
                                         "lifted_at_source": 0, "gone_at_source": 0,
                                         "differ": 0})
        for ident in ids:
            checked += 1
            was, now = mine.get(ident, "absent"), theirs.get(ident)
            if now is None:
                tally["gone_at_source"] += 1
                reported.append(f"{table} {ident}: {was} in the restore, deleted at the source "
                                "since the backup (retention)")
            elif now == was or (was in TERMINAL[kind] and now in TERMINAL[kind]) or (
                    was in LIFTABLE.get(kind, ()) and now in TERMINAL[kind]):
                tally["still_revoked"] += 1
            elif was in LIFTABLE.get(kind, ()):
                tally["lifted_at_source"] += 1
                reported.append(f"{table} {ident}: {was} in the restore, {now} at the source "
                                "(lifted since the backup)")
            else:
                tally["differ"] += 1
                findings.append(f"{table} {ident}: {was} in the restore, but {now} at the "
                                "source (a revocation is never undone)")
    observed = {"kinds": counts, "differences_listed": findings[:LISTED],
                "explained_listed": reported[:LISTED]}
    return SourceComparison("revocations", checked, tuple(findings), tuple(reported), observed)
