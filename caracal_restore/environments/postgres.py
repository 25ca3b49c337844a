"""PostgreSQL environments: embedded (initdb on loopback), docker (testcontainers), external (DSN).

Every provider yields a ``PostgresServer``: a superuser endpoint, client tools of a matching
major version, and database management that refuses targets that already hold data.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import secrets
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
from psycopg import sql

from caracal_restore.environments.base import (
    LOOPBACK,
    PgEndpoint,
    become_subreaper,
    check_reachable,
    free_port,
    give_to,
    is_loopback,
    reap,
    run_as_user,
    run_tool,
    supervised,
)
from caracal_restore.environments.pgbin import (
    ClientTools,
    ServerBinaries,
    find_client_tools,
    find_server,
)
from caracal_restore.errors import EnvironmentNotReady, NotIsolated
from caracal_restore.waiting import until

log = logging.getLogger(__name__)

PROVIDERS = ("embedded", "docker", "external")


@dataclasses.dataclass
class PostgresServer:
    """A running PostgreSQL the suite may use, with the databases it created."""

    provider: str
    admin: PgEndpoint
    tools: ClientTools
    #: True when the suite owns the whole cluster (embedded/docker): database names are kept.
    owns_cluster: bool
    name_prefix: str = ""
    created: list[str] = dataclasses.field(default_factory=list)
    datadir: Path | None = None

    def connect(self, dbname: str | None = None, **kwargs: object) -> psycopg.Connection:
        """A new connection as the superuser (autocommit unless told otherwise)."""
        endpoint = self.admin.with_db(dbname) if dbname else self.admin
        kwargs.setdefault("autocommit", True)
        return psycopg.connect(endpoint.conninfo(), **kwargs)  # type: ignore[arg-type]

    def server_facts(self) -> dict[str, str]:
        """Server version, data checksums and listen addresses, as the server reports them."""
        with self.connect() as conn:
            row = conn.execute(
                "SELECT current_setting('server_version'), current_setting('server_version_num'),"
                " current_setting('data_checksums'), current_setting('listen_addresses')"
            ).fetchone()
        assert row is not None
        return {
            "server_version": row[0],
            "server_version_num": row[1],
            "data_checksums": row[2],
            "listen_addresses": row[3],
        }

    def database_name(self, logical: str) -> str:
        """The real name a logical database (``caracal``) gets on this server."""
        return f"{self.name_prefix}{logical}" if self.name_prefix else logical

    def endpoint(self, logical: str) -> PgEndpoint:
        """Superuser endpoint of a logical database."""
        return self.admin.with_db(self.database_name(logical))

    def create_database(self, logical: str, *, template: str | None = None) -> PgEndpoint:
        """Create a fresh database; refuse one that exists and already holds tables."""
        name = self.database_name(logical)
        with self.connect() as conn:
            exists = conn.execute(
                "SELECT 1 FROM pg_database WHERE datname = %s", (name,)
            ).fetchone()
        if exists:
            tables = self.count_tables(name)
            if tables:
                raise NotIsolated(
                    f"database {name!r} on {self.admin.host}:{self.admin.port} already holds "
                    f"{tables} tables; the suite restores only into an empty database "
                    "(name another target database or drop it first)"
                )
            return self.admin.with_db(name)
        with self.connect() as conn:
            stmt = sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name))
            if template:
                # FILE_COPY copies the template's files after a checkpoint; the default
                # (WAL_LOG) writes every page through the WAL: 2.5-3.6 s instead of 1.1-2.6 s
                # per GB here.
                stmt = sql.SQL("CREATE DATABASE {} TEMPLATE {} STRATEGY FILE_COPY").format(
                    sql.Identifier(name), sql.Identifier(template)
                )
            conn.execute(stmt)
        self.created.append(name)
        return self.admin.with_db(name)

    def count_tables(self, name: str) -> int:
        """User tables in a database (0 for an empty one)."""
        with self.connect(name) as conn:
            row = conn.execute(
                "SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
                " WHERE c.relkind IN ('r','p') AND n.nspname NOT IN ('pg_catalog',"
                " 'information_schema') AND n.nspname NOT LIKE 'pg_toast%%'"
            ).fetchone()
        return int(row[0]) if row else 0

    def drop_database(self, name: str) -> None:
        """Drop a database the suite created (forcefully: other sessions are ended)."""
        with self.connect() as conn:
            conn.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )
        if name in self.created:
            self.created.remove(name)

    def drop_created(self) -> None:
        """Drop every database this run created (external provider teardown)."""
        for name in list(reversed(self.created)):
            with contextlib.suppress(psycopg.Error):
                self.drop_database(name)


# ----------------------------------------------------------------------------- embedded


@contextlib.contextmanager
def embedded(
    *,
    min_major: int = 18,
    bindir: Path | None = None,
    cache_dir: Path | None = None,
    workdir: Path | None = None,
    keep: bool = False,
    server: ServerBinaries | None = None,
) -> Iterator[PostgresServer]:
    """initdb a fresh cluster (checksums on), start it on 127.0.0.1, stop and remove it after."""
    server = server or find_server(min_major=min_major, bindir=bindir, cache_dir=cache_dir)
    tools = find_client_tools(min_major=server.major, near=server.bindir)
    user = run_as_user()
    if workdir is not None:
        check_reachable(workdir, user)
    base = Path(tempfile.mkdtemp(prefix="caracal-pg-", dir=workdir))
    datadir = base / "data"
    password = secrets.token_hex(16)
    pwfile = base / "pwfile"
    pwfile.write_text(password)
    give_to(base, user)
    try:
        run_tool(
            [
                server.initdb,
                "-D",
                datadir,
                "--data-checksums",
                "-U",
                "postgres",
                "--auth=scram-sha-256",
                f"--pwfile={pwfile}",
                "-E",
                "UTF8",
                "--locale=C",
            ],
            user=user,
            what="initdb",
        )
        pwfile.unlink()
        port = free_port()
        become_subreaper()
        options = (
            f"-c listen_addresses={LOOPBACK} -p {port} -c unix_socket_directories={base}"
            " -c fsync=off -c synchronous_commit=off -c full_page_writes=off"
            # Short-lived servers: no background vacuum competing with the run for the CPU
            # (a restore runs ANALYZE itself, as PostgreSQL's documentation advises).
            " -c autovacuum=off"
            " -c max_connections=200 -c timezone=UTC"
        )
        if server.major >= 18:
            # Reads in the backend that asks for them: PostgreSQL 18's default hands them to I/O
            # worker processes, which took ~9.6 s of CPU in a 1 000 000-event run on two busy
            # cores, against ~3-5 s more in the backends without them, for no time saved.
            options += " -c io_method=sync"
        run_tool(
            [server.pg_ctl, "-D", datadir, "-o", options, "-l", base / "server.log", "-w",
             "-t", "60", "start"],
            user=user,
            what="pg_ctl start",
        )
    except RuntimeError as exc:
        log_tail = _tail(base / "server.log")
        shutil.rmtree(base, ignore_errors=True)
        raise EnvironmentNotReady(
            f"embedded PostgreSQL ({server.bindir}) did not start: {exc}{log_tail}"
        ) from exc

    postmaster = _postmaster_pid(datadir)

    def stop() -> None:
        with contextlib.suppress(RuntimeError, OSError):
            run_tool([server.pg_ctl, "-D", datadir, "-m", "fast", "-w", "-t", "60", "stop"],
                     user=user, what="pg_ctl stop")
        if (datadir / "postmaster.pid").exists():
            with contextlib.suppress(RuntimeError, OSError):
                run_tool([server.pg_ctl, "-D", datadir, "-m", "immediate", "stop"],
                         user=user, what="pg_ctl stop immediate")
        if postmaster:
            reap(postmaster)
        if not keep:
            shutil.rmtree(base, ignore_errors=True)

    admin = PgEndpoint(LOOPBACK, port, "postgres", "postgres", password)
    with supervised(f"embedded PostgreSQL on {LOOPBACK}:{port}", stop):
        pg = PostgresServer("embedded", admin, tools, owns_cluster=True, datadir=datadir)
        until(lambda: pg.server_facts(), timeout=30, transient=(psycopg.OperationalError,),
              what="embedded PostgreSQL accepts connections")
        yield pg


def _postmaster_pid(datadir: Path) -> int | None:
    try:
        return int((datadir / "postmaster.pid").read_text().split("\n", 1)[0])
    except (OSError, ValueError):
        return None


def _tail(path: Path, lines: int = 15) -> str:
    try:
        text = path.read_text(errors="replace").splitlines()[-lines:]
    except OSError:
        return ""
    return "\nserver log:\n" + "\n".join(text) if text else ""


# ------------------------------------------------------------------------------- docker


def docker_available() -> str | None:
    """None when a Docker engine answers ``/_ping``; otherwise why not (no client library used)."""
    import os
    import socket

    host = os.environ.get("DOCKER_HOST", "unix:///var/run/docker.sock")
    try:
        if host.startswith("unix://"):
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            address: str | tuple[str, int] = host[len("unix://"):]
        elif host.startswith("tcp://"):
            hostport = host[len("tcp://"):].rstrip("/")
            name, _, port = hostport.rpartition(":")
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            address = (name, int(port))
        else:
            return f"no Docker engine (unsupported DOCKER_HOST {host!r})"
        with sock:
            sock.settimeout(5)
            sock.connect(address)
            sock.sendall(b"GET /_ping HTTP/1.0\r\nHost: docker\r\n\r\n")
            reply = sock.recv(4096)
    except OSError as exc:
        return f"no Docker engine ({type(exc).__name__}: {exc})"
    if b" 200 " not in reply.split(b"\r\n", 1)[0]:
        return "no Docker engine (/_ping did not answer 200)"
    return None


@contextlib.contextmanager
def docker(*, image: str = "postgres:18", min_major: int = 18) -> Iterator[PostgresServer]:
    """A throwaway ``postgres:18`` container bound to 127.0.0.1, removed after the run."""
    reason = docker_available()
    if reason:
        raise EnvironmentNotReady(f"--pg-provider docker: {reason}; start Docker or use embedded")
    from testcontainers.postgres import PostgresContainer

    password = secrets.token_hex(16)
    port = free_port()
    container = PostgresContainer(image, username="postgres", password=password, dbname="postgres")
    # docker-py binds (ip, port) tuples; the stub only knows a port: loopback only, on purpose.
    container.with_bind_ports(5432, (LOOPBACK, port))  # type: ignore[arg-type]
    container.with_command("postgres -c fsync=off -c autovacuum=off -c timezone=UTC")
    container.with_env("POSTGRES_INITDB_ARGS", "--data-checksums --auth-host=scram-sha-256")
    tools = find_client_tools(min_major=min_major)
    with container:
        admin = PgEndpoint(LOOPBACK, port, "postgres", "postgres", password)
        pg = PostgresServer("docker", admin, tools, owns_cluster=True)
        until(lambda: pg.server_facts(), timeout=60, transient=(psycopg.OperationalError,),
              what="docker PostgreSQL accepts connections")
        yield pg


# ----------------------------------------------------------------------------- external


def endpoint_from_dsn(dsn: str) -> PgEndpoint:
    """Parse a libpq DSN or URL into an endpoint."""
    try:
        params = psycopg.conninfo.conninfo_to_dict(dsn)
    except psycopg.ProgrammingError as exc:
        raise EnvironmentNotReady(f"the PostgreSQL DSN does not parse: {exc}") from None
    return PgEndpoint(
        host=str(params.get("host") or "localhost"),
        port=int(params.get("port") or 5432),
        user=str(params.get("user") or "postgres"),
        dbname=str(params.get("dbname") or "postgres"),
        password=str(params.get("password") or ""),
    )


@contextlib.contextmanager
def external(
    admin_dsn: str, *, min_major: int = 18, allow_remote: bool = False
) -> Iterator[PostgresServer]:
    """A server the user runs: the suite creates uniquely named databases and drops them after."""
    admin = endpoint_from_dsn(admin_dsn)
    if not allow_remote and not is_loopback(admin.host):
        raise NotIsolated(
            f"external PostgreSQL host {admin.host!r} is not on loopback; the suite sends "
            "traffic to loopback only unless --allow-remote-target names it as isolated"
        )
    tools = find_client_tools(min_major=min_major)
    prefix = f"caracal_restore_{uuid.uuid4().hex[:8]}_"
    pg = PostgresServer("external", admin, tools, owns_cluster=False, name_prefix=prefix)
    try:
        facts = pg.server_facts()
    except psycopg.Error as exc:
        raise EnvironmentNotReady(
            f"external PostgreSQL {admin.where} refused the connection: {exc}"
        ) from None
    if int(facts["server_version_num"]) // 10000 < min_major:
        raise EnvironmentNotReady(
            f"external PostgreSQL {admin.where} is {facts['server_version']}; "
            f"the suite needs >= {min_major}"
        )
    try:
        yield pg
    finally:
        pg.drop_created()


@contextlib.contextmanager
def provide(
    provider: str,
    *,
    min_major: int = 18,
    bindir: Path | None = None,
    cache_dir: Path | None = None,
    admin_dsn: str | None = None,
    workdir: Path | None = None,
    keep: bool = False,
    allow_remote: bool = False,
) -> Iterator[PostgresServer]:
    """Start (or attach to) a PostgreSQL by provider name."""
    if provider == "embedded":
        with embedded(min_major=min_major, bindir=bindir, cache_dir=cache_dir, workdir=workdir,
                      keep=keep) as pg:
            yield pg
    elif provider == "docker":
        with docker(min_major=min_major) as pg:
            yield pg
    elif provider == "external":
        if not admin_dsn:
            raise EnvironmentNotReady("--pg-provider external needs --pg-admin-dsn")
        with external(admin_dsn, min_major=min_major, allow_remote=allow_remote) as pg:
            yield pg
    else:
        raise EnvironmentNotReady(f"unknown PostgreSQL provider {provider!r}; use {PROVIDERS}")
