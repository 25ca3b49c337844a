"""Apply the reference 1.0 schema, its ledger and its service logins; manage audit partitions.

The DDL lives in ``schema_1_0.sql`` (ours, written from FACTS-1.0 §2). Monthly partitions
are created and dropped the way 1.0 does it: through ``public.audit_partition_ensure(date)``
and ``public.audit_partition_drop(text)`` (SECURITY DEFINER), never by direct DDL. Like
``migrate.sh``, applying also gives each service role LOGIN and its password from the secret
set (§3.1), so the per-service DSNs of §15 work against the database.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Mapping, Sequence
from importlib import resources

import psycopg
from psycopg import sql

from caracal_restore.profiles.release_1_0 import MIGRATIONS, SERVICE_DSNS
from caracal_restore.reference import schema as schema_2026_06

SCHEMA_FILE = "schema_1_0.sql"
#: Helpers whose date arithmetic does not depend on the release.
month_start = schema_2026_06.month_start
add_months = schema_2026_06.add_months
month_range = schema_2026_06.month_range
partition_name = schema_2026_06.partition_name
partition_bounds = schema_2026_06.partition_bounds
monthly_partitions = schema_2026_06.monthly_partitions


def schema_sql() -> str:
    """The DDL text of the reference 1.0 schema."""
    return resources.files(__package__).joinpath(SCHEMA_FILE).read_text(encoding="utf-8")


def ensure_partition(conn: psycopg.Connection, month: dt.date) -> str:
    """``SELECT public.audit_partition_ensure(month)``; returns the partition name."""
    first = month_start(month)
    conn.execute("SELECT public.audit_partition_ensure(%s)", (first,))
    return partition_name(first)


def drop_partition(conn: psycopg.Connection, month: dt.date) -> str:
    """``SELECT public.audit_partition_drop(name)`` (a no-op for a name that is not a child)."""
    name = partition_name(month)
    conn.execute("SELECT public.audit_partition_drop(%s)", (name,))
    return name


def insert_ledger(
    conn: psycopg.Connection,
    versions: Iterable[str] = MIGRATIONS,
    *,
    applied_at: dt.datetime | None = None,
) -> None:
    """Insert ``public.schema_migrations`` rows (one per version, ~0.4 s apart like migrate.sh)."""
    with conn.cursor() as cur:
        for i, version in enumerate(versions):
            if applied_at is None:
                cur.execute("INSERT INTO public.schema_migrations (version) VALUES (%s)",
                            (version,))
            else:
                cur.execute(
                    "INSERT INTO public.schema_migrations (version, applied_at) VALUES (%s, %s)",
                    (version, applied_at + dt.timedelta(milliseconds=400 * i)),
                )


def service_logins(secrets: Mapping[str, str]) -> dict[str, str]:
    """Role -> password of every service login whose password file is in ``secrets``."""
    return {role: secrets[pw] for _dsn, role, pw, _db in SERVICE_DSNS if secrets.get(pw)}


def set_logins(conn: psycopg.Connection, passwords: Mapping[str, str]) -> None:
    """``ALTER ROLE <role> WITH LOGIN PASSWORD <pw>`` for each role (what migrate.sh re-applies)."""
    for role, password in sorted(passwords.items()):
        conn.execute(sql.SQL("ALTER ROLE {} WITH LOGIN PASSWORD {}").format(
            sql.Identifier(role), sql.Literal(password)))


def apply_schema(
    conn: psycopg.Connection,
    *,
    months: Sequence[dt.date],
    applied_at: dt.datetime | None = None,
    secrets: Mapping[str, str] | None = None,
) -> None:
    """Create the whole 1.0 schema, the given monthly partitions, the ledger and the logins."""
    with conn.transaction():
        conn.execute(schema_sql().encode())
        for month in sorted({month_start(m) for m in months}):
            ensure_partition(conn, month)
        insert_ledger(conn, applied_at=applied_at)
        if secrets is not None:
            set_logins(conn, service_logins(secrets))
