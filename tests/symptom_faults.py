"""Defects both releases share, for the symptom fault-injection modules (2026.06 and 1.0).

A module builds one ``Env`` for its prepared run (``env_of``) and injects these into clones.
Audit evidence (``audit_events``, its chain algorithm and the rehash marker) is the same at
2026.06 and 1.0 (FACTS-1.0 §4, FACTS-2026.06 §4); revocations in flight differ only in the
lineage table's name and columns.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import psycopg
import redis as redis_lib
from psycopg import sql

from caracal_restore.chainhash import (
    AUDIT_HASH_SELECT,
    chain_hmac,
    content_hash_parts,
    parse_hmac_key,
)
from caracal_restore.diagnose import Diagnosis, by_profile
from caracal_restore.diagnose import revocation as revocation_diag
from caracal_restore.parquet_export import ArchiveIndex, read_archive
from caracal_restore.profiles import Profile
from caracal_restore.redact import REDACTOR
from tests.harness import ClonedRun, PreparedRun

REVOKE = revocation_diag.REVOKE_STREAM
STS_GROUP = revocation_diag.STS_GROUP
HMAC_SECRET = "auditHmacKey"


@dataclasses.dataclass
class Env:
    """A module's run and what every diagnosis compares with."""

    run: PreparedRun
    fingerprint: dict[str, Any]
    archive: ArchiveIndex
    canary_kids: tuple[str, ...]
    #: SQL naming "the other zone" (not the canary's, ``%s``) the defects break.
    zone_sql: str

    def other_zone(self, conn: psycopg.Connection[Any]) -> str:
        """The zone the defects break (never the canary's)."""
        canary = self.run.state.canary
        assert canary is not None
        return str(one(conn, self.zone_sql, canary.zone_id))


def env_of(run: PreparedRun, zone_sql: str) -> Env:
    """The module's Env: the bundle's fingerprint, the archive's index, the canary's keys."""
    root = Path(run.state.bundle.root) if run.state.bundle else None
    assert root is not None
    fingerprint = json.loads((root / "fingerprint.json").read_text())["databases"]["caracal"]
    assert run.state.archive_bucket
    archive = read_archive(run.stack.objects.bucket(run.state.archive_bucket))
    canary = run.state.canary
    assert canary is not None
    return Env(run, fingerprint, archive, canary.signing_key_ids, zone_sql)


def secrets_of(clone: ClonedRun) -> dict[str, str]:
    """Every secret of the clone's store."""
    store = clone.secrets()
    return {name: store.read(name) for name in store.names()}


def diagnose(clone: ClonedRun, env: Env, profile: Profile, families: tuple[str, ...],
             fingerprint: Mapping[str, Any] | None = None) -> dict[str, Diagnosis]:
    """The offline diagnoses ``families`` of a (broken) copy, keyed by family, computed exactly
    as the checks' fixtures compute them (``diagnose.by_profile``)."""
    fp = env.fingerprint if fingerprint is None else fingerprint
    values = secrets_of(clone)
    assert clone.redis_url is not None
    client = redis_lib.Redis.from_url(clone.redis_url)
    try:
        with clone.connect() as conn:
            run: dict[str, Callable[[], Diagnosis]] = {
                "kek": lambda: by_profile.kek(conn, values, profile, fp, env.canary_kids),
                "chain": lambda: by_profile.chain(conn, values, profile, fp, env.archive)[0],
                "admin-chain": lambda: by_profile.admin_chain(conn, values, profile, fp)[0],
                "routing": lambda: by_profile.routing(conn, profile, fp),
                "revocation": lambda: by_profile.revocation(conn, client, profile, fp),
            }
            return {family: run[family]() for family in families}
    finally:
        client.close()


def new_key() -> str:
    """A fresh 32-byte hex key, known to the redactor."""
    value = os.urandom(32).hex()
    REDACTOR.add(value)
    return value


def one(conn: psycopg.Connection[Any], query: str | sql.Composable, *args: Any) -> Any:
    """The single row (or value) a query must return."""
    row = conn.execute(query, args).fetchone()  # type: ignore[arg-type]
    assert row is not None, query
    return row[0] if len(row) == 1 else row


def mid(conn: psycopg.Connection[Any], env: Env, table: str = "audit_events",
        zone: str | None = None) -> tuple[str, int]:
    """A zone and the chain_seq in the middle of its chain in ``table``."""
    zone = zone or env.other_zone(conn)
    low, high = one(conn, sql.SQL("SELECT min(chain_seq), max(chain_seq) FROM {}"
                                  " WHERE zone_id = %s").format(sql.Identifier(table)), zone)
    return zone, (low + high) // 2


def delete_audit_row(clone: ClonedRun, env: Env) -> None:
    with clone.connect() as conn:
        zone, seq = mid(conn, env)
        conn.execute("DELETE FROM audit_events WHERE zone_id = %s AND chain_seq = %s",
                     (zone, seq))


def edit_decision(clone: ClonedRun, env: Env) -> None:
    with clone.connect() as conn:
        zone, seq = mid(conn, env)
        conn.execute("UPDATE audit_events SET decision = CASE WHEN decision = 'allow'"
                     " THEN 'deny' ELSE 'allow' END WHERE zone_id = %s AND chain_seq = %s",
                     (zone, seq))


def wrong_hmac_key(clone: ClonedRun, env: Env) -> None:
    clone.secrets().write(HMAC_SECRET, new_key())


def truncate_head(clone: ClonedRun, env: Env) -> None:
    with clone.connect() as conn:
        zone = env.other_zone(conn)
        conn.execute("DELETE FROM audit_events WHERE zone_id = %s AND chain_seq >"
                     " (SELECT max(chain_seq) - 25 FROM audit_events WHERE zone_id = %s)",
                     (zone, zone))


def drop_oldest_partition(clone: ClonedRun, env: Env) -> None:
    with clone.connect() as conn:
        name = one(conn, "SELECT c.relname FROM pg_inherits i JOIN pg_class c"
                         " ON c.oid = i.inhrelid WHERE i.inhparent = 'audit_events'::regclass"
                         " AND c.relname <> 'audit_events_default'"
                         " AND EXISTS (SELECT 1 FROM audit_events a WHERE a.tableoid = c.oid)"
                         " ORDER BY c.relname LIMIT 1")
        conn.execute(sql.SQL("DROP TABLE {}").format(sql.Identifier(name)))


def duplicate_chain_seq(clone: ClonedRun, env: Env) -> None:
    """A forked chain: a second, validly hashed and signed event takes an existing chain_seq."""
    key = parse_hmac_key(secrets_of(clone)[HMAC_SECRET])
    with clone.connect() as conn:
        zone, seq = mid(conn, env)
        assert (zone, seq) in env.archive.rows  # the exported row differs from the fork too
        # A copy with a new id (and occurred_at), then its own correct hash and HMAC.
        conn.execute("CREATE TEMP TABLE forked AS SELECT * FROM audit_events"
                     " WHERE zone_id = %s AND chain_seq = %s", (zone, seq))
        conn.execute("UPDATE forked SET id = 'forked-' || id,"
                     " occurred_at = occurred_at + interval '1 millisecond'")
        conn.execute("INSERT INTO audit_events SELECT * FROM forked")
        row = conn.execute(f"SELECT {AUDIT_HASH_SELECT}, COALESCE(prev_content_sha256, '')"
                           " FROM audit_events WHERE id LIKE 'forked-%%'").fetchone()
        assert row is not None
        content = content_hash_parts(list(row[:12]), row[12])
        conn.execute("UPDATE audit_events SET content_sha256 = %s, chain_hmac = %s"
                     " WHERE id LIKE 'forked-%%'", (content, chain_hmac(key, content, row[13])))


def delete_marker(clone: ClonedRun, env: Env) -> None:
    with clone.connect() as conn:
        conn.execute("DELETE FROM audit_chain_rehash")


def unrevoke_edge(clone: ClonedRun, env: Env) -> None:
    """The first revoked delegation edge of the source restored active."""
    with clone.connect() as conn:
        edge = sorted(env.fingerprint["revoked"]["edges"])[0]
        conn.execute("UPDATE delegation_edges SET status = 'active', revoked_at = NULL"
                     " WHERE id = %s", (edge,))


def clean(clone: ClonedRun, env: Env) -> None:
    """No defect."""


def in_flight(clone: ClonedRun, env: Env, position: str | tuple[str, ...], *,
              lineage_table: str = "sessions",
              reset: str = "status = 'active'") -> tuple[str, str, dict[str, Any]]:
    """Make the source's state 'revocation published, STS not yet applied' for one record.

    Picks a lineage row (2026.06 ``sessions``, 1.0 ``authority_records``) whose one published
    revocation entry is ``position`` for sts-revocation in the copy's Redis, makes it active
    again (``reset``) and unexpired, and returns it with its entry id and a fingerprint in
    which the source had not revoked it yet.
    """
    wanted = (position,) if isinstance(position, str) else position
    assert clone.redis_url is not None
    client = redis_lib.Redis.from_url(clone.redis_url)
    try:
        where = revocation_diag.entry_positions(client)
        entries = {f["outbox_id"]: i for i, f in revocation_diag.stream_entries(client, REVOKE)
                   if "outbox_id" in f}
    finally:
        client.close()
    with clone.connect() as conn:
        rows = conn.execute(
            "SELECT id::text, payload_json->>'session_id' FROM caracal_outbox"
            " WHERE topic = %s AND status = 'published' AND payload_json ? 'session_id'"
            " UNION ALL SELECT id::text, payload_json->>'session_id' FROM event_outbox"
            " WHERE stream_name = %s AND dispatched_at IS NOT NULL", (REVOKE, REVOKE)).fetchall()
        by_record: dict[str, list[str]] = {}
        for outbox_id, sid in rows:
            by_record.setdefault(sid, []).append(outbox_id)
        sid, outbox_ids = next(
            (s, ids) for s, ids in sorted(by_record.items())
            if all(where.get(i) in wanted for i in ids) and len(ids) == 1)
        conn.execute(sql.SQL("UPDATE {} SET {}, expires_at = now() + interval '2 hours'"
                             " WHERE id = %s").format(sql.Identifier(lineage_table),
                                                      sql.SQL(reset)), (sid,))
    fingerprint = json.loads(json.dumps(env.fingerprint))
    fingerprint["revoked"]["sessions"].remove(sid)
    return sid, entries[outbox_ids[0]], fingerprint
