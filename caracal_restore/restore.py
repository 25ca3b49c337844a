"""Restore a validated bundle into an isolated environment, timing every phase (the RTO).

Steps, as Caracal's ``restore.sh`` does them but into a target the suite owns: secrets into the
isolated secret store first (Redis needs its password), roles from ``globals.sql``, each
database from its dump with ``pg_restore --exit-on-error``, Redis from the AOF directory (a
fresh ``redis-server`` started on a copy), replay files into a fresh directory. Nothing is
restored until the bundle passed validation; a failed step raises ``RestoreFailed`` naming it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import logging
import re
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

import psycopg
from psycopg import sql

from caracal_restore.bundle import Bundle
from caracal_restore.environments import redis as redis_env
from caracal_restore.environments.base import PgEndpoint, run_tool
from caracal_restore.environments.postgres import PostgresServer
from caracal_restore.environments.secretstore import SecretStore
from caracal_restore.errors import RestoreFailed
from caracal_restore.redact import REDACTOR

log = logging.getLogger(__name__)

#: Owner role of Caracal's databases (Compose POSTGRES_USER).
DEFAULT_OWNER = "caracal"


@dataclasses.dataclass(frozen=True)
class RestoredEnvironment:
    """What a restore produced: where each asset now lives, and how long each phase took."""

    bundle_stamp: str
    created_at: dt.datetime
    restored_at: dt.datetime
    databases: Mapping[str, PgEndpoint]  # logical name -> superuser endpoint
    redis: redis_env.RedisServer | None
    replay: Mapping[str, Path | None]
    secret_names: tuple[str, ...]
    timings: Mapping[str, float]
    notes: tuple[str, ...] = ()
    globals_log: str = ""

    @property
    def total_seconds(self) -> float:
        """Measured recovery time: every phase, fetch to secrets."""
        return float(sum(self.timings.values()))


class _Clock:
    def __init__(self, timings: dict[str, float]) -> None:
        self.timings = timings

    @contextlib.contextmanager
    def phase(self, name: str) -> Iterator[None]:
        started = time.perf_counter()
        try:
            yield
        finally:
            self.timings[name] = round(time.perf_counter() - started, 4)


def restore_roles(target: PostgresServer, globals_sql: Path) -> tuple[str, list[str]]:
    """Apply ``globals.sql`` (roles) like restore.sh, but never touch the login we connect as.

    restore.sh ignores every error of this step; we apply statement by statement, keep the
    output as evidence, and skip statements about the target's own admin role (re-passwording
    it would lock the suite out of its own target).
    """
    admin_role = target.admin.user
    kept, skipped = [], []
    pattern = re.compile(rf'^\s*(CREATE|ALTER)\s+ROLE\s+"?{re.escape(admin_role)}"?[\s;]', re.I)
    for line in globals_sql.read_text().splitlines():
        if pattern.match(line):
            skipped.append(line.split(" PASSWORD ")[0])
            continue
        kept.append(line)
    filtered = globals_sql.with_name(globals_sql.name + ".target")
    filtered.write_text("\n".join(kept) + "\n")
    proc = run_tool(
        [target.tools.path("psql"), "-X", "-q", "-v", "ON_ERROR_STOP=0", "-f", filtered],
        env=target.admin.libpq_env(), what="psql globals.sql",
    )
    filtered.unlink()
    output = REDACTOR((proc.stdout + proc.stderr).decode(errors="replace"))
    notes = [f"skipped (target admin role): {s}" for s in skipped]
    return output, notes


def restore_database(target: PostgresServer, logical: str, dump: Path, owner: str) -> PgEndpoint:
    """Create the database (refusing a non-empty one) and pg_restore the dump into it."""
    endpoint = target.create_database(logical)
    with target.connect() as conn:
        exists = conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (owner,)).fetchone()
        if exists:
            conn.execute(sql.SQL("ALTER DATABASE {} OWNER TO {}").format(
                sql.Identifier(endpoint.dbname), sql.Identifier(owner)))
    try:
        run_tool(
            [target.tools.path("pg_restore"), "--exit-on-error", "--no-password",
             "-d", endpoint.dbname, dump],
            env=target.admin.libpq_env(), what=f"pg_restore of {logical}", timeout=7200,
        )
    except RuntimeError as exc:
        raise RestoreFailed(f"database {logical!r}: {exc}") from None
    # Statistics for the planner: pg_restore leaves none, and the checks read every table.
    # A sample of 3 000 rows per table (statistics target 10) is enough for the checks' plans
    # and takes ~0.4 s at 1 000 000 audit events, against ~4.5 s at the default target 100.
    with target.connect(endpoint.dbname) as conn:
        conn.execute("SET default_statistics_target = 10")
        conn.execute("ANALYZE")
    return endpoint


#: How often ``data_loaded`` asks the server whether an index build has begun.
WATCH_POLL = 0.2


@contextlib.contextmanager
def data_loaded(target: PostgresServer, dbname: str, callback: Callable[[], object], *,
                poll: float = WATCH_POLL) -> Iterator[None]:
    """While the block runs, call ``callback`` once, from a thread, when an index build in
    ``dbname`` is first seen (``pg_stat_progress_create_index``).

    ``pg_restore`` builds a database's indexes and constraints after loading all its data, in
    one backend; a restore's last database building its first index is loaded. The sign is a
    scheduling hint only: it moves no verdict, and a server that cannot be watched (an error)
    simply never gives it.
    """
    stop = threading.Event()

    def watch() -> None:
        try:
            with target.connect() as conn:  # autocommit: each poll sees the server as it is
                while not stop.wait(poll):
                    row = conn.execute(
                        "SELECT EXISTS (SELECT 1 FROM pg_stat_progress_create_index"
                        " WHERE datname = %s)", (dbname,)).fetchone()
                    if row is not None and row[0]:
                        callback()
                        return
        except psycopg.Error as exc:
            log.info("the restore's index builds could not be watched: %s", type(exc).__name__)
        except Exception:  # the callback's own failure: the run goes on without the hint
            log.warning("the restore's data-loaded hint failed", exc_info=True)

    thread = threading.Thread(target=watch, name="restore-watch", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


@contextlib.contextmanager
def restore_bundle(
    bundle: Bundle,
    target: PostgresServer,
    *,
    secrets: Mapping[str, str],
    secret_store: SecretStore,
    workdir: Path | None = None,
    keep: bool = False,
    redis_binary: str | None = None,
    owner: str = DEFAULT_OWNER,
) -> Iterator[RestoredEnvironment]:
    """Restore everything in the bundle into the isolated target; stop Redis at the end."""
    timings: dict[str, float] = {
        k: round(v, 4) for k, v in bundle.timings.items() if k in {"fetch", "decrypt", "extract"}
    }
    clock = _Clock(timings)
    notes: list[str] = list(bundle.warnings)
    with clock.phase("secrets"):
        for name, value in secrets.items():
            secret_store.write(name, value)
    with clock.phase("roles"):
        globals_log, role_notes = restore_roles(target, bundle.globals_sql)
        notes += role_notes
    databases: dict[str, PgEndpoint] = {}
    for logical in bundle.databases:
        with clock.phase(f"database:{logical}"):
            databases[logical] = restore_database(target, logical, bundle.dumps[logical], owner)
    replay_root = Path(tempfile.mkdtemp(prefix="caracal-replay-", dir=workdir))
    replay: dict[str, Path | None] = {}
    with clock.phase("replay"):
        for service in ("sts", "gateway"):
            source = bundle.replay.get(service)
            dest = replay_root / service
            dest.mkdir(mode=0o750)
            if source is not None:
                shutil.copytree(source, dest, dirs_exist_ok=True)
            replay[service] = dest
    with contextlib.ExitStack() as stack:
        server: redis_env.RedisServer | None = None
        if bundle.redis_aof_dir is not None:
            with clock.phase("redis"):
                try:
                    server = stack.enter_context(redis_env.embedded(
                        binary=redis_binary, appendonlydir=bundle.redis_aof_dir,
                        workdir=workdir, keep=keep, password=secrets.get("redisPassword"),
                    ))
                except Exception as exc:
                    raise RestoreFailed(f"Redis did not start on the bundle's AOF: {exc}") from exc
        else:
            notes.append("the bundle has no redis/appendonlydir: Redis was not restored")
        restored = RestoredEnvironment(
            bundle_stamp=bundle.stamp,
            created_at=bundle.created_at,
            restored_at=dt.datetime.now(dt.UTC),
            databases=databases,
            redis=server,
            replay=replay,
            secret_names=tuple(sorted(secrets)),
            timings=dict(timings),
            notes=tuple(notes),
            globals_log=globals_log,
        )
        try:
            yield restored
        finally:
            if not keep:
                shutil.rmtree(replay_root, ignore_errors=True)
