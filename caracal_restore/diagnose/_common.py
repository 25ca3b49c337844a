"""Small pieces the diagnostic families share: digests like the fingerprint's, HTTP, errors."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from typing import Any

import httpx
import psycopg

from caracal_restore import fingerprint as fp
from caracal_restore.errors import SuiteError


class DiagnosticError(SuiteError):
    """A diagnostic could not be evaluated; the message says what was observed instead."""


def table_digests(conn: psycopg.Connection[Any],
                  tables: Iterable[str]) -> dict[str, dict[str, Any]]:
    """Row count and digest of some tables, computed exactly as the bundle's fingerprint was.

    The fingerprint pins the server's output settings in its transaction; the same settings
    (``fingerprint._PINNED_SETTINGS``, the single source) are pinned here, in a transaction of
    our own, so the digests compare with the bundle's on any server configuration.
    """
    with conn.transaction():
        for name, value in fp._PINNED_SETTINGS:
            conn.execute("SELECT set_config(%s, %s, true)", (name, value))
        return fp.table_digests(conn, tables=list(tables))


def fingerprint_table(fingerprint: Mapping[str, Any] | None, table: str) -> dict[str, Any] | None:
    """The fingerprint's entry of one table (None without a fingerprint or the table)."""
    if not fingerprint:
        return None
    entry = (fingerprint.get("tables") or {}).get(table)
    return dict(entry) if entry else None


def http_client(timeout: float = 10.0) -> httpx.Client:
    """An HTTP client for loopback services (no proxies from the environment, no redirects)."""
    return httpx.Client(trust_env=False, follow_redirects=False, timeout=timeout)


def error_of(response: httpx.Response) -> tuple[int, str]:
    """(status, error_description) of a Caracal JSON error (description '' when not JSON)."""
    try:
        body = response.json()
    except (json.JSONDecodeError, ValueError):
        return response.status_code, response.text[:200].strip()
    if isinstance(body, Mapping):
        return response.status_code, str(body.get("error_description") or body.get("reason")
                                         or body.get("error") or "")
    return response.status_code, ""


def exists(conn: psycopg.Connection[Any], table: str) -> bool:
    """True when ``public.<table>`` exists."""
    row = conn.execute("SELECT to_regclass(%s) IS NOT NULL", (f"public.{table}",)).fetchone()
    return bool(row and row[0])


def has_column(conn: psycopg.Connection[Any], table: str, column: str) -> bool:
    """True when ``public.<table>`` has that column."""
    row = conn.execute(
        "SELECT EXISTS (SELECT 1 FROM information_schema.columns WHERE table_schema = 'public'"
        " AND table_name = %s AND column_name = %s)", (table, column)).fetchone()
    return bool(row and row[0])
