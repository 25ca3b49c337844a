"""The live source a user names (``--source-dsn``) and where its audit exports live (``--archive``).

The live source is the running deployment a bundle came from. The suite only ever reads it:
every connection carries ``default_transaction_read_only=on``, so a statement that would write
is refused by the server itself. Its DSN is a secret: it is registered with the redactor and
kept in a ``PgEndpoint`` whose password never appears in a repr.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg
from psycopg.conninfo import conninfo_to_dict

from caracal_restore.environments.base import PgEndpoint
from caracal_restore.errors import SuiteError
from caracal_restore.redact import REDACTOR
from caracal_restore.runstate import RunState

#: libpq keys a live-source DSN may carry: anything else (sslmode, sslrootcert, …) would be
#: dropped by the endpoint, so it is refused rather than silently ignored.
DSN_KEYS = frozenset({"host", "hostaddr", "port", "user", "dbname", "password",
                      "connect_timeout"})


class BadLiveSourceInput(SuiteError):
    """``--source-dsn`` or ``--archive`` cannot be used as given (the message says why)."""


def endpoint_from_dsn(dsn: str) -> PgEndpoint:
    """The live source's endpoint from a libpq DSN or URL (read-only use only)."""
    REDACTOR.add(dsn)
    try:
        parts = conninfo_to_dict(dsn)
    except psycopg.ProgrammingError:
        raise BadLiveSourceInput("--source-dsn is not a libpq connection string or "
                                 "postgres:// URL") from None
    if parts.get("password"):
        REDACTOR.add(str(parts["password"]))
    unsupported = sorted(set(parts) - DSN_KEYS)
    if unsupported:
        raise BadLiveSourceInput(
            f"--source-dsn carries {', '.join(unsupported)}, which the suite cannot keep; give "
            f"only {', '.join(sorted(DSN_KEYS))} (a local tunnel or socket for TLS setups)")
    host = str(parts.get("host") or parts.get("hostaddr") or "")
    if not host or "," in host:
        raise BadLiveSourceInput("--source-dsn must name exactly one host of the source")
    return PgEndpoint(host, int(parts.get("port") or 5432), str(parts.get("user") or ""),
                      str(parts.get("dbname") or "caracal"), str(parts.get("password") or ""))


def check_archive(location: str) -> str:
    """``--archive`` as given, when it is an ``s3://bucket`` or an existing directory."""
    if location.startswith("s3://"):
        bucket, _, prefix = location[5:].partition("/")
        if not bucket or prefix.strip("/"):
            raise BadLiveSourceInput(
                f"--archive {location!r}: name the bucket only (s3://<bucket>): the Audit "
                "exporter writes its audit/<YYYY>/… keys at the bucket's root")
        return f"s3://{bucket}"
    path = Path(location).expanduser()
    if not path.is_dir():
        raise BadLiveSourceInput(f"--archive {location!r} is neither s3://<bucket> nor an "
                                 "existing directory")
    return str(path.resolve())


def input_attacher(*, source_dsn: str | None, archive: str | None
                   ) -> Callable[[RunState], RunState]:
    """Check ``--source-dsn`` and ``--archive`` now; add them to a run state later."""
    endpoint = endpoint_from_dsn(source_dsn) if source_dsn else None
    location = check_archive(archive) if archive else None

    def attach(state: RunState) -> RunState:
        changes: dict[str, Any] = {}
        if endpoint is not None:
            changes["live_source_db"] = endpoint
        if location is not None:
            changes["archive_location"] = location
        return dataclasses.replace(state, **changes) if changes else state

    return attach


def connect(source: PgEndpoint) -> psycopg.Connection[Any]:
    """A connection to the live source in which every transaction is read-only."""
    return psycopg.connect(source.read_only().conninfo(), autocommit=True)
