"""Caracal backup bundles: write them as Caracal's backup.sh does, encrypt them with age, and open
and validate them before anything is restored.

Layout (FACTS-1.0 §16.1): ``caracalBackup-<stamp>.tar.gz`` holding one top directory
``caracalBackup-<stamp>/`` with ``manifest.txt``, ``postgres/globals.sql``,
``postgres/<db>.dump`` (custom format), ``redis/appendonlydir/`` and ``replay/{sts,gateway}/``.
Bundles written here add ``fingerprint.json``: per database a fingerprint taken in the dump's
own snapshot, the Redis stream state, and the SHA-256 of every other file. A bundle written by
backup.sh (no fingerprint) is read as it is.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import datetime as dt
import json
import logging
import re
import shutil
import tarfile
import tempfile
import time
import zlib
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path, PurePosixPath
from typing import Any, Protocol

import psycopg
import redis as redis_lib
from psycopg import IsolationLevel

from caracal_restore.environments.base import (
    PgEndpoint,
    RedisEndpoint,
    lower_thread_priority,
    run_tool,
)
from caracal_restore.errors import BackupFailed, BundleError
from caracal_restore.fingerprint import FORMAT as FINGERPRINT_FORMAT
from caracal_restore.fingerprint import file_hashes, redis_stream_state
from caracal_restore.redact import REDACTOR
from caracal_restore.waiting import WaitTimeout, until

log = logging.getLogger(__name__)

STAMP_FORMAT = "%Y%m%dT%H%M%SZ"
MANIFEST_VERSION = 1
PREFIX = "caracalBackup-"
TOP_DIR_RE = re.compile(r"caracalBackup-(\d{8}T\d{6}Z)")
ARCHIVE_RE = re.compile(r"caracalBackup-(\d{8}T\d{6}Z)\.tar\.gz(\.age)?")
AGE_MAGIC = b"age-encryption.org/v1"
AGE_ARMOR = b"-----BEGIN AGE ENCRYPTED FILE-----"
GZIP_MAGIC = b"\x1f\x8b"
PGDMP_MAGIC = b"PGDMP"
REPLAY_SERVICES = ("sts", "gateway")
#: ``pg_dump --compress`` of the dumps the suite takes. backup.sh runs ``pg_dump --format=custom``
#: at its default (gzip level 6); level 1 writes the same format (gzip blocks, which restore.sh
#: and any pg_restore read) in ~40 % of pg_dump's CPU time for ~14 % more bytes (1 000 000
#: audit events: 5.5 s of CPU and 221 MB against 13.5 s and 194 MB). The dump is the backup's
#: longest step, and the bundle's tar adds no compression of its own.
DUMP_COMPRESSION = "gzip:1"
#: backup.sh's database list, verbatim.
LIST_DATABASES = "SELECT datname FROM pg_database WHERE NOT datistemplate AND datname <> 'postgres'"

FingerprintHook = Callable[[str, "psycopg.Connection[Any]"], Mapping[str, Any]]


class ToolPaths(Protocol):
    """Where PostgreSQL client tools live (``ClientTools`` of the environments package)."""

    def path(self, tool: str) -> Path: ...


def parse_stamp(stamp: str) -> dt.datetime:
    """The UTC instant of a ``%Y%m%dT%H%M%SZ`` stamp (ValueError when it is not one)."""
    return dt.datetime.strptime(stamp, STAMP_FORMAT).replace(tzinfo=dt.UTC)


def new_stamp(now: dt.datetime | None = None) -> str:
    """A bundle stamp for ``now`` (default: the current UTC second)."""
    return (now or dt.datetime.now(dt.UTC)).astimezone(dt.UTC).strftime(STAMP_FORMAT)


# ----------------------------------------------------------------------------- manifest


@dataclasses.dataclass(frozen=True)
class Manifest:
    """``manifest.txt`` of a bundle, exactly as backup.sh writes it."""

    version: int
    created_at: str
    project: str
    databases: tuple[str, ...]

    def render(self) -> str:
        """backup.sh's text: names space-separated, each followed by a space, then a newline."""
        names = "".join(f"{name} " for name in self.databases)
        return (
            f"version: {self.version}\ncreatedAt: {self.created_at}\n"
            f"project: {self.project}\ndatabases: {names}\n"
        )

    @property
    def created_at_utc(self) -> dt.datetime:
        """``createdAt`` as an aware UTC datetime."""
        return parse_stamp(self.created_at)

    @classmethod
    def parse(cls, text: str) -> Manifest:
        """Read a manifest; BundleError names a missing, malformed or unsupported line."""
        lines = text.split("\n")
        fields: dict[str, str] = {}
        for line in lines:
            key, sep, value = line.partition(":")
            if sep and key not in fields:
                fields[key] = value.strip()
        if "version" not in fields:
            raise BundleError(
                "manifest.txt has no 'version:' line; backup.sh writes 'version: 1' first "
                "(the file is cut short or is not a Caracal manifest)"
            )
        if fields["version"] != str(MANIFEST_VERSION):
            raise BundleError(
                f"manifest.txt version {fields['version']!r} is not supported: this suite reads "
                f"version {MANIFEST_VERSION} (Caracal backup.sh); restore it with the tooling "
                "of the Caracal release that wrote it"
            )
        if f"version: {MANIFEST_VERSION}" not in lines:
            raise BundleError(
                f"manifest.txt declares version {MANIFEST_VERSION} but not as the exact line "
                f"'version: {MANIFEST_VERSION}' that Caracal's restore.sh requires; rewrite "
                "that line"
            )
        created = fields.get("createdAt")
        if not created:
            raise BundleError("manifest.txt has no 'createdAt:' line; backup.sh always writes it")
        try:
            parse_stamp(created)
        except ValueError:
            raise BundleError(
                f"manifest.txt createdAt {created!r} is not a UTC stamp like 20261124T061910Z"
            ) from None
        if "databases" not in fields:
            raise BundleError(
                "manifest.txt has no 'databases:' line, so the dumps cannot be checked against it"
            )
        return cls(MANIFEST_VERSION, created, fields.get("project", ""),
                   tuple(fields["databases"].split()))


# ------------------------------------------------------------------------------- writer


def take_backup(
    out_dir: Path,
    *,
    pg_admin: PgEndpoint,
    tools: ToolPaths,
    stamp: str | None = None,
    project: str = "caracal",
    redis_dir_provider: Callable[[], Path] | None = None,
    redis_client: Any = None,
    replay_dirs: Mapping[str, Path | None] | None = None,
    fingerprint_hook: FingerprintHook | None = None,
    exclude_databases: Iterable[str] = (),
) -> Path:
    """Write ``out_dir/caracalBackup-<stamp>.tar.gz`` the way backup.sh does, plus a fingerprint.

    Each database is dumped in the snapshot its fingerprint was taken in. ``redis_dir_provider``
    returns an ``appendonlydir`` to copy (``redis_aof_local`` or ``redis_aof_via_replica``);
    ``redis_client`` (read with SCAN/XINFO only) records the stream state in fingerprint.json.
    ``replay_dirs`` maps ``sts``/``gateway`` to the service's ``/var/lib/caracal`` (or its
    ``audit-replay`` directory). fingerprint.json is written when ``fingerprint_hook`` is given.
    """
    stamp = stamp or new_stamp()
    if not _is_stamp(stamp):
        raise BackupFailed(f"stamp {stamp!r} is not %Y%m%dT%H%M%SZ (UTC)")
    unknown = set(replay_dirs or {}) - set(REPLAY_SERVICES)
    if unknown:
        raise BackupFailed(f"replay_dirs names {sorted(unknown)}; only {REPLAY_SERVICES} exist")
    name = f"{PREFIX}{stamp}"
    archive = out_dir / f"{name}.tar.gz"
    if archive.exists():
        raise BackupFailed(f"{archive} already exists; bundles are never overwritten")
    staging = Path(tempfile.mkdtemp(prefix=f".{name}.", dir=out_dir))
    partial = out_dir / f".{name}.tar.gz.partial"
    root = staging / name
    try:
        (root / "postgres").mkdir(parents=True)
        (root / "replay").mkdir()
        _dump_globals(pg_admin, tools, root / "postgres" / "globals.sql")
        databases = _list_databases(pg_admin, set(exclude_databases))
        dumped = {db: _dump_database(pg_admin.with_db(db), tools, root / "postgres",
                                     fingerprint_hook) for db in databases}
        if redis_dir_provider is not None:
            _copy_aof(redis_dir_provider(), root / "redis" / "appendonlydir")
        for service, source in (replay_dirs or {}).items():
            if source is not None:
                _copy_replay(source, root / "replay" / service)
        (root / "manifest.txt").write_text(
            Manifest(MANIFEST_VERSION, stamp, project, tuple(databases)).render())
        if fingerprint_hook is not None:
            # Redis is read after its AOF copy: like backup.sh, no global cut with Postgres.
            redis_state = redis_stream_state(redis_client) if redis_client is not None else None
            _write_fingerprint(root, stamp, project, dumped, redis_state)
        # gzip as backup.sh's ``tar -czf`` (any reader of a .tar.gz reads it), in stored
        # blocks: the dumps, nearly all of the bytes, are compressed already, and deflating
        # them again costs ~3 s per 200 MB to save almost nothing.
        with tarfile.open(partial, "w:gz", compresslevel=0) as tar:
            tar.add(root, arcname=name)
        partial.rename(archive)
    except (OSError, psycopg.Error, redis_lib.RedisError, RuntimeError) as exc:
        raise BackupFailed(REDACTOR(f"backup {name} failed: {exc}")) from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        partial.unlink(missing_ok=True)
    log.info("wrote %s (%d databases)", archive, len(databases))
    return archive


def _write_fingerprint(
    root: Path,
    stamp: str,
    project: str,
    dumped: Mapping[str, tuple[str, dict[str, Any] | None]],
    redis_state: dict[str, Any] | None,
) -> None:
    """fingerprint.json: per-database fingerprints and snapshots, Redis, every file's SHA-256."""
    document = {
        "format": 1,
        "createdAt": stamp,
        "project": project,
        "databases": {db: fp for db, (_snapshot, fp) in dumped.items()},
        "snapshots": {db: snapshot for db, (snapshot, _fp) in dumped.items()},
        "redis": redis_state,
        "files": file_hashes(root),
    }
    (root / "fingerprint.json").write_text(
        json.dumps(document, indent=2, sort_keys=True, default=str) + "\n")


def _dump_globals(admin: PgEndpoint, tools: ToolPaths, dest: Path) -> None:
    run_tool([tools.path("pg_dumpall"), "--globals-only", f"--file={dest}"],
             env=admin.libpq_env(), what=f"pg_dumpall --globals-only on {admin.where}")


def _list_databases(admin: PgEndpoint, exclude: set[str]) -> list[str]:
    with psycopg.connect(admin.conninfo(), autocommit=True) as conn:
        names = [row[0] for row in conn.execute(LIST_DATABASES).fetchall()]
    return [name for name in names if name not in exclude]


def _dump_database(
    endpoint: PgEndpoint, tools: ToolPaths, dest_dir: Path, hook: FingerprintHook | None
) -> tuple[str, dict[str, Any] | None]:
    """Export a snapshot, fingerprint inside it, pg_dump it while the transaction stays open."""
    db = endpoint.dbname
    if "/" in db or db in {".", ".."}:
        raise BackupFailed(f"database name {db!r} cannot be a file name under postgres/")
    with psycopg.connect(endpoint.conninfo(), autocommit=False) as conn:
        conn.isolation_level = IsolationLevel.REPEATABLE_READ
        conn.read_only = True
        row = conn.execute("SELECT pg_export_snapshot()").fetchone()
        assert row is not None
        snapshot = str(row[0])
        # pg_dump reads the snapshot while the fingerprint is taken in it (the transaction that
        # exported it stays open until both are done): two readers of one state, side by side.
        # The fingerprint, done well before pg_dump, yields it the CPU (a thread of its own at a
        # lower priority): 1 000 000 events dumped in 13.6 s instead of 15.6 s.
        # PGDATABASE carries the name: pg_dump would parse a name holding '=' as a conninfo.
        with concurrent.futures.ThreadPoolExecutor(1, "pg-dump") as pool, \
                concurrent.futures.ThreadPoolExecutor(1, "fingerprint",
                                                      initializer=lower_thread_priority) as beside:
            dump = pool.submit(run_tool, [tools.path("pg_dump"), "--format=custom",
                                          f"--compress={DUMP_COMPRESSION}",
                                          f"--snapshot={snapshot}",
                                          f"--file={dest_dir / f'{db}.dump'}"],
                               env=endpoint.libpq_env(), what=f"pg_dump of {endpoint.where}")
            try:
                fingerprint = (dict(beside.submit(hook, db, conn).result()) if hook is not None
                               else None)
            finally:
                dump.result()
        conn.rollback()
    return snapshot, fingerprint


def _copy_aof(source: Path, dest: Path) -> None:
    if not any(p.name.endswith(".manifest") for p in source.glob("*")):
        raise BackupFailed(
            f"{source} holds no appendonly.aof.manifest: it is not a Redis >= 7 multi-part AOF "
            "directory (is appendonly on?)"
        )
    shutil.copytree(source, dest)


def _copy_replay(source: Path, dest: Path) -> None:
    # backup.sh copies /var/lib/caracal, whose content is audit-replay/pending-*.ndjson.
    if source.name == "audit-replay":
        dest = dest / "audit-replay"
    shutil.copytree(source, dest)


# --------------------------------------------------------------------------------- redis


def rewrite_aof(client: Any, *, timeout: float = 300.0) -> dict[str, Any]:
    """BGREWRITEAOF and poll INFO persistence until the rewrite is over (backup.sh's wait)."""
    info = client.info("persistence")
    if not int(info.get("aof_enabled", 0)):
        raise BackupFailed("Redis has appendonly off: its appendonlydir would not hold the data")
    try:
        client.bgrewriteaof()
    except redis_lib.ResponseError as exc:
        if "already in progress" not in str(exc):
            raise BackupFailed(f"BGREWRITEAOF refused: {exc}") from None

    def finished() -> dict[str, Any] | None:
        state = client.info("persistence")
        busy = int(state["aof_rewrite_in_progress"]) or int(state["aof_rewrite_scheduled"])
        return None if busy else dict(state)

    try:
        state = until(finished, timeout=timeout, interval=0.1,
                      transient=(redis_lib.ConnectionError,), what="BGREWRITEAOF completes")
    except WaitTimeout as exc:
        raise BackupFailed(str(exc)) from None
    if state.get("aof_last_bgrewrite_status") != "ok":
        status = state.get("aof_last_bgrewrite_status")
        raise BackupFailed(f"BGREWRITEAOF ended with status {status!r}; see the Redis log")
    return state


def redis_aof_local(client: Any, datadir: Path | None = None, *, timeout: float = 300.0) -> Path:
    """Rewrite the AOF and return the server's ``appendonlydir`` (its files must be reachable)."""
    rewrite_aof(client, timeout=timeout)
    if datadir is None:
        datadir = Path(client.config_get("dir")["dir"])
    folder = client.config_get("appenddirname").get("appenddirname", "appendonlydir")
    return datadir / folder


def redis_aof_via_replica(
    source: RedisEndpoint, workdir: Path, *, binary: str | None = None, timeout: float = 300.0
) -> Path:
    """Replicate ``source`` into a local redis-server, rewrite its AOF, return its appendonlydir.

    Nothing is written to the source's keyspace; the source serves one full sync (a fork, or
    an RDB file when it is not configured for diskless sync). The replica is stopped before
    returning, so the directory is stable; it lives under ``workdir``.
    """
    from caracal_restore.environments import redis as redis_env

    workdir.mkdir(parents=True, exist_ok=True)
    with redis_env.embedded(binary=binary, workdir=workdir, keep=True) as replica:
        client = replica.client()
        source_client = redis_lib.Redis(host=source.host, port=source.port,
                                        username=source.username or None,
                                        password=source.password or None)
        try:
            if source.password:
                client.config_set("masterauth", source.password)
            if source.username:
                client.config_set("masteruser", source.username)
            client.replicaof(source.host, source.port)
            _wait_in_sync(client, source_client, timeout)
            rewrite_aof(client, timeout=timeout)
        finally:
            client.close()
            source_client.close()
        assert replica.datadir is not None
        folder = replica.datadir / "appendonlydir"
    return folder


def _wait_in_sync(replica: Any, source: Any, timeout: float) -> None:
    """Wait until the replica's link is up and it has applied the source's current offset."""

    def link_up() -> bool:
        info = replica.info("replication")
        return info.get("master_link_status") == "up" and not int(
            info.get("master_sync_in_progress", 0))

    try:
        until(link_up, timeout=timeout, interval=0.1, what="replica finished its full sync")
        target = int(source.info("replication")["master_repl_offset"])
        until(lambda: int(replica.info("replication")["slave_repl_offset"]) >= target,
              timeout=timeout, interval=0.05, what=f"replica reached source offset {target}")
    except WaitTimeout as exc:
        raise BackupFailed(str(exc)) from None


# ---------------------------------------------------------------------------- encryption


def encrypt_file(path: Path, recipients: Sequence[str], *, out: Path | None = None) -> Path:
    """Encrypt to age X25519 recipients (``age1…``); writes ``<name>.age`` beside ``path``."""
    import pyrage

    if not recipients:
        raise BundleError("encrypt_file needs at least one age recipient (age1…)")
    parsed = []
    for recipient in recipients:
        try:
            parsed.append(pyrage.x25519.Recipient.from_str(recipient.strip()))
        except pyrage.RecipientError:
            raise BundleError(
                f"{recipient!r} is not an age X25519 recipient; give the public key line "
                "'age1…' printed by age-keygen"
            ) from None
    out = out or path.with_name(path.name + ".age")
    pyrage.encrypt_file(str(path), str(out), parsed)
    return out


def load_identities(identity_file: Path) -> list[Any]:
    """Parse an age identity file (age-keygen output); key material never reaches a message."""
    import pyrage

    try:
        text = identity_file.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise BundleError(f"cannot read age identity file {identity_file}: "
                          f"{type(exc).__name__}") from None
    identities = []
    for number, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        REDACTOR.add(line)
        try:
            identities.append(pyrage.x25519.Identity.from_str(line))
        except pyrage.IdentityError:
            raise BundleError(
                f"age identity file {identity_file}, line {number}: not an X25519 identity "
                "(AGE-SECRET-KEY-1…); SSH and plugin identities are not supported"
            ) from None
    if not identities:
        raise BundleError(
            f"age identity file {identity_file} holds no identity (AGE-SECRET-KEY-1…)")
    return identities


def decrypt_file(path: Path, identity_file: Path, *, out: Path | None = None) -> Path:
    """Decrypt an age file with the identities of ``identity_file``; BundleError when they fail."""
    import pyrage

    identities = load_identities(identity_file)
    out = out or path.with_name(_plain_name(path.name))
    try:
        pyrage.decrypt_file(str(path), str(out), identities)
    except pyrage.DecryptError as exc:
        out.unlink(missing_ok=True)
        if "no matching keys" in str(exc).lower():
            raise BundleError(
                f"{path.name} was not encrypted to the identity in {identity_file} (no matching "
                "recipient); pass the identity file whose public key (age1…) the bundle was "
                "encrypted to"
            ) from None
        raise BundleError(
            f"{path.name} could not be decrypted with {identity_file}: the age file is corrupt "
            "or truncated; fetch it again"
        ) from None
    return out


def _plain_name(name: str) -> str:
    """Where a decrypted file goes: the name without ``.age`` (else with ``.plain``)."""
    return name[: -len(".age")] if name.endswith(".age") else name + ".plain"


# -------------------------------------------------------------------------------- reader


@dataclasses.dataclass(frozen=True)
class Bundle:
    """A bundle that passed validation, extracted under a work directory."""

    source: str
    archive: Path
    root: Path
    manifest: Manifest
    dumps: Mapping[str, Path]
    globals_sql: Path
    redis_aof_dir: Path | None
    replay: Mapping[str, Path | None]
    fingerprint: dict[str, Any] | None
    encrypted: bool
    file_hashes: Mapping[str, str]
    timings: Mapping[str, float]
    warnings: tuple[str, ...] = ()

    @property
    def stamp(self) -> str:
        """The stamp in the top directory's name."""
        return self.root.name[len(PREFIX):]

    @property
    def created_at(self) -> dt.datetime:
        """When backup.sh says the bundle was made (manifest ``createdAt``, UTC)."""
        return self.manifest.created_at_utc

    @property
    def databases(self) -> tuple[str, ...]:
        """Databases the manifest lists."""
        return self.manifest.databases


def open_bundle(
    source: str | Path,
    workdir: Path,
    *,
    identity_file: Path | None = None,
    object_store_client: Any = None,
    endpoint_url: str | None = None,
    tools: ToolPaths | None = None,
    whole_object: bool = False,
) -> Bundle:
    """Fetch, decrypt, extract and validate a bundle (local path or ``s3://bucket/key``).

    Every defect raises BundleError naming what is wrong and how to fix it; nothing in the
    bundle is restored here. Phase timings are recorded for RTO evidence. ``whole_object``
    fetches with one GET instead of parallel ranged GETs (for the embedded store, which reads
    the whole object again for every range: 2.6 s instead of 0.3 s for 200 MB).
    """
    workdir.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="bundle-", dir=workdir))
    timings: dict[str, float] = {}  # filled phase by phase; the Bundle holds this same dict
    started = time.perf_counter()
    local, description = _fetch(source, work, object_store_client, endpoint_url, whole_object)
    timings["fetch"] = time.perf_counter() - started

    started = time.perf_counter()
    head = _head(local)
    encrypted = head.startswith((AGE_MAGIC, AGE_ARMOR))
    if encrypted:
        if identity_file is None:
            raise BundleError(f"{description} is age-encrypted; pass identity_file (the "
                              "age-keygen file whose recipient it was encrypted to)")
        local = decrypt_file(local, identity_file, out=work / _plain_name(local.name))
        head = _head(local)
    timings["decrypt"] = time.perf_counter() - started

    started = time.perf_counter()
    root = _extract(local, head, work / "extract", description)
    timings["extract"] = time.perf_counter() - started

    started = time.perf_counter()
    bundle = _validate(root, description, local, encrypted, tools, timings)
    timings["validate"] = time.perf_counter() - started
    return bundle


def _fetch(source: str | Path, work: Path, client: Any, endpoint_url: str | None,
           whole_object: bool = False) -> tuple[Path, str]:
    text = str(source)
    if not text.startswith("s3://"):
        path = Path(text)
        if not path.is_file():
            raise BundleError(f"bundle {path} does not exist or is not a file")
        return path, str(path)
    bucket, _, key = text[5:].partition("/")
    if not bucket or not key:
        raise BundleError(f"{text} does not name an object; use s3://bucket/key")
    from boto3.s3.transfer import TransferConfig
    from botocore.exceptions import BotoCoreError, ClientError

    dest = work / PurePosixPath(key).name
    config = TransferConfig(multipart_threshold=1 << 62) if whole_object else TransferConfig()
    try:
        _s3(client, endpoint_url).download_file(bucket, key, str(dest), Config=config)
    except (ClientError, BotoCoreError) as exc:
        raise BundleError(REDACTOR(f"cannot fetch {text}: {exc}; check the bucket, key and "
                                   "credentials")) from None
    return dest, text


def _s3(client: Any, endpoint_url: str | None) -> Any:
    if client is not None:
        return client
    import boto3

    return boto3.client("s3", endpoint_url=endpoint_url)


def _head(path: Path) -> bytes:
    with path.open("rb") as handle:
        return handle.read(64)


def _extract(archive: Path, head: bytes, dest: Path, description: str) -> Path:
    """Check every member is safe and under one caracalBackup-<stamp>/, extracting as it goes.

    One pass over the archive: each member is checked before it is extracted, and when any
    check fails nothing extracted is kept (listing the members first, then extracting them,
    read and inflated the whole archive twice: ~0.4 s more per 200 MB).
    """
    if not head.startswith(GZIP_MAGIC):
        raise BundleError(
            f"{description} is not a gzip-compressed tar (it starts with {head[:8]!r}); pass "
            "the caracalBackup-<stamp>.tar.gz that backup.sh wrote"
        )
    members = _Members(description)
    try:
        with tarfile.open(archive, "r|gz") as tar:
            for member in tar:
                members.check(member)
                tar.extract(member, dest, filter="data")
        return dest / members.top()
    except (tarfile.TarError, EOFError, OSError, zlib.error) as exc:
        shutil.rmtree(dest, ignore_errors=True)
        raise BundleError(
            f"{description} is not a readable tar.gz ({type(exc).__name__}: {exc}); the "
            "archive is corrupt or truncated: fetch or copy it again"
        ) from None
    except BundleError:
        shutil.rmtree(dest, ignore_errors=True)
        raise


class _Members:
    """The checks of a bundle's tar members: each one safe, all under one top directory."""

    def __init__(self, description: str) -> None:
        self.description = description
        self.tops: set[str] = set()
        self.top_level_files: set[str] = set()

    def check(self, member: tarfile.TarInfo) -> None:
        """Refuse a member with an absolute path, '..', a link leaving the bundle or a
        special file; note its top-level entry."""
        description = self.description
        name = _member_name(member.name)
        if name is None:
            return
        parts = PurePosixPath(name).parts
        if name.startswith("/") or re.match(r"^[A-Za-z]:", name):
            raise _unsafe(description, member, "has an absolute path")
        if ".." in parts:
            raise _unsafe(description, member, "climbs out with '..'")
        if member.issym() or member.islnk():
            # A symlink resolves from its own folder, a hard link from the archive's root.
            base = PurePosixPath(name).parent if member.issym() else PurePosixPath()
            resolved = _normalise(base / member.linkname)
            outside = resolved is None or resolved.parts[:1] != parts[:1]
            if member.linkname.startswith("/") or outside:
                raise _unsafe(description, member,
                              f"links outside the bundle (to {member.linkname!r})")
        elif not (member.isfile() or member.isdir()):
            raise _unsafe(description, member, "is a device, fifo or other special file")
        self.tops.add(parts[0])
        if len(parts) == 1 and not member.isdir():
            self.top_level_files.add(parts[0])

    def top(self) -> str:
        """The one top directory, named caracalBackup-<stamp> (BundleError otherwise)."""
        tops, description = self.tops, self.description
        if len(tops) != 1 or self.top_level_files:
            shown = ", ".join(sorted(tops)[:5]) or "nothing"
            raise BundleError(
                f"{description} must hold exactly one top directory caracalBackup-<stamp> and "
                f"nothing beside it; it holds {len(tops)} top-level entries ({shown}); "
                "re-create it with tar -C <dir> -czf <bundle> caracalBackup-<stamp>"
            )
        top = next(iter(tops))
        if not TOP_DIR_RE.fullmatch(top) or not _is_stamp(top[len(PREFIX):]):
            raise BundleError(
                f"{description}: top directory {top!r} is not named "
                "caracalBackup-<%Y%m%dT%H%M%SZ> as backup.sh names it; this is not a Caracal "
                "bundle or it was repacked"
            )
        return top


def _member_name(name: str) -> str | None:
    """A member's path without leading ``./`` (None for the archive's own ``.`` entry)."""
    while name.startswith("./"):
        name = name[2:]
    return None if name in {"", "."} else name


def _unsafe(description: str, member: tarfile.TarInfo, why: str) -> BundleError:
    return BundleError(
        f"{description}: unsafe tar member {member.name!r} {why}; nothing of the bundle is "
        "extracted (a backup.sh bundle holds only relative paths under caracalBackup-<stamp>/)"
    )


def _normalise(path: PurePosixPath) -> PurePosixPath | None:
    """Collapse ``..`` lexically; None when the path climbs above its start."""
    parts: list[str] = []
    for part in path.parts:
        if part == "..":
            if not parts:
                return None
            parts.pop()
        elif part != ".":
            parts.append(part)
    return PurePosixPath(*parts) if parts else None


def _is_stamp(text: str) -> bool:
    try:
        parse_stamp(text)
    except ValueError:
        return False
    return True


def _validate(
    root: Path,
    description: str,
    archive: Path,
    encrypted: bool,
    tools: ToolPaths | None,
    timings: Mapping[str, float],
) -> Bundle:
    """backup.sh's structure, then file hashes, then every dump read through pg_restore."""
    top = root.name
    manifest_path = root / "manifest.txt"
    if not manifest_path.is_file():
        raise BundleError(f"{description}: {top}/manifest.txt is missing; backup.sh always "
                          "writes it, so the archive is incomplete or not a Caracal bundle")
    try:
        manifest = Manifest.parse(manifest_path.read_text())
    except BundleError as exc:
        raise BundleError(f"{description}: {exc}") from None
    except UnicodeDecodeError:
        raise BundleError(f"{description}: {top}/manifest.txt is not text") from None
    warnings = []
    stamp = top[len(PREFIX):]
    if manifest.created_at != stamp:
        warnings.append(f"manifest createdAt {manifest.created_at} differs from the directory "
                        f"stamp {stamp}: the bundle was renamed or its manifest replaced")
    globals_sql = root / "postgres" / "globals.sql"
    if not globals_sql.is_file():
        raise BundleError(f"{description}: {top}/postgres/globals.sql is missing; without the "
                          "roles of pg_dumpall --globals-only the dumps' grants cannot be restored")
    dumps = _dumps(root, manifest, description)
    hashes = file_hashes(root)
    fingerprint = _fingerprint(root, hashes, description)
    # fingerprint.json, when present, recorded every file's SHA-256 at backup time (checked).
    recorded = fingerprint is not None
    stale = _stale_formats(fingerprint)
    if stale:
        # Its file hashes held (checked above); only its table digests are of another kind.
        warnings.append(f"fingerprint.json holds table digests of format {stale} (an earlier "
                        f"caracal-restore); this suite takes format {FINGERPRINT_FORMAT}, so "
                        "the restore is compared with the dumps themselves")
        fingerprint = None
    for db, dump in dumps.items():
        # A dump whose SHA-256 the fingerprint recorded at backup time (compared above) is the
        # file pg_dump completed: its data blocks need no second reading before the restore
        # (pg_restore reads them all anyway, and fails on a damaged one). Any other dump is
        # read through once, so a truncated or corrupt one is refused before anything is
        # written.
        _check_dump(db, dump, description, tools, data_blocks=not recorded)
    aof = root / "redis" / "appendonlydir"
    if aof.is_dir() and not any(p.name.endswith(".manifest") for p in aof.iterdir()):
        warnings.append("redis/appendonlydir holds no appendonly.aof.manifest (not multi-part AOF)")
    replay = {svc: (root / "replay" / svc if (root / "replay" / svc).is_dir() else None)
              for svc in REPLAY_SERVICES}
    for warning in warnings:
        log.warning("%s: %s", description, warning)
    return Bundle(
        source=description,
        archive=archive,
        root=root,
        manifest=manifest,
        dumps=dumps,
        globals_sql=globals_sql,
        redis_aof_dir=aof if aof.is_dir() else None,
        replay=replay,
        fingerprint=fingerprint,
        encrypted=encrypted,
        file_hashes=hashes,
        timings=timings,
        warnings=tuple(warnings),
    )


def _dumps(root: Path, manifest: Manifest, description: str) -> dict[str, Path]:
    folder = root / "postgres"
    present = {p.name[: -len(".dump")]: p for p in sorted(folder.glob("*.dump")) if p.is_file()}
    missing = [db for db in manifest.databases if db not in present]
    if missing:
        raise BundleError(
            f"{description}: manifest.txt lists {', '.join(missing)} but postgres/"
            f"{missing[0]}.dump is missing; the backup of that database is lost: take a new one"
        )
    extra = [db for db in present if db not in manifest.databases]
    if extra:
        raise BundleError(
            f"{description}: postgres/{extra[0]}.dump is not listed in manifest.txt databases "
            f"({' '.join(manifest.databases) or 'none'}); the manifest and dumps disagree"
        )
    return {db: present[db] for db in manifest.databases}


def _fingerprint(root: Path, hashes: Mapping[str, str], description: str) -> dict[str, Any] | None:
    path = root / "fingerprint.json"
    if not path.exists():
        return None
    try:
        document = json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError) as exc:
        raise BundleError(f"{description}: fingerprint.json is not JSON ({exc})") from None
    files = document.get("files") if isinstance(document, dict) else None
    if not isinstance(files, dict):
        raise BundleError(f"{description}: fingerprint.json has no 'files' map of SHA-256")
    for rel, expected in files.items():
        actual = hashes.get(rel)
        if actual is None:
            raise BundleError(f"{description}: {rel} is listed in fingerprint.json but missing "
                              "from the bundle; the bundle is incomplete")
        if actual != expected:
            raise BundleError(
                f"{description}: {rel} has SHA-256 {actual[:16]}…, fingerprint.json recorded "
                f"{str(expected)[:16]}…; the file changed after the backup: do not restore it"
            )
    extra = sorted(set(hashes) - set(files))
    if extra:
        raise BundleError(f"{description}: {extra[0]} is not in fingerprint.json's files map; "
                          "it was added after the backup")
    return document


def _stale_formats(document: Mapping[str, Any] | None) -> list[object]:
    """Formats of the per-database fingerprints that this suite does not take (sorted)."""
    databases = (document or {}).get("databases") or {}
    return sorted({fp.get("format") for fp in databases.values()
                   if isinstance(fp, dict) and fp.get("format") != FINGERPRINT_FORMAT}, key=str)


def _check_dump(db: str, dump: Path, description: str, tools: ToolPaths | None, *,
                data_blocks: bool = True) -> None:
    """A custom-format archive whose table of contents (and, with ``data_blocks``, every data
    block) pg_restore reads."""
    with dump.open("rb") as handle:
        magic = handle.read(len(PGDMP_MAGIC))
    if magic != PGDMP_MAGIC:
        raise BundleError(
            f"{description}: postgres/{dump.name} does not start with PGDMP: it is not a "
            "pg_dump --format=custom archive (restore.sh would fail on it)"
        )
    if tools is None:
        from caracal_restore.environments.pgbin import find_client_tools

        tools = find_client_tools()
    pg_restore = tools.path("pg_restore")
    checks: list[tuple[list[str | Path], str]] = [
        ([pg_restore, "--list", dump], "its table of contents (pg_restore --list)"),
    ]
    if data_blocks:
        checks.append(([pg_restore, "--file=/dev/null", dump],
                       "every data block (pg_restore -f /dev/null)"))
    for argv, what in checks:
        try:
            run_tool(argv, what=f"pg_restore of {dump.name}")
        except RuntimeError as exc:
            raise BundleError(
                f"{description}: postgres/{dump.name} ({db}) fails reading {what}: {exc}; the "
                "dump is truncated or corrupt: take a new backup"
            ) from None


# ----------------------------------------------------------------------------- retention


def list_bundles(
    location: str | Path, *, object_store_client: Any = None, endpoint_url: str | None = None
) -> list[tuple[str, dt.datetime]]:
    """Bundles (``caracalBackup-*.tar.gz[.age]``) in a directory or ``s3://bucket/prefix``,
    newest first."""
    text = str(location)
    if text.startswith("s3://"):
        names = _s3_names(text, object_store_client, endpoint_url)
    elif Path(text).is_dir():
        names = [p.name for p in Path(text).iterdir() if p.is_file()]
    else:
        raise BundleError(f"backup location {text} is not a directory; pass a directory or "
                          "s3://bucket/prefix")
    found = []
    for name in names:
        match = ARCHIVE_RE.fullmatch(name)
        if match and _is_stamp(match.group(1)):
            found.append((name, parse_stamp(match.group(1))))
    return sorted(found, key=lambda item: (item[1], item[0]), reverse=True)


def _s3_names(url: str, client: Any, endpoint_url: str | None) -> list[str]:
    """Object names directly under an ``s3://bucket/prefix`` (the prefix taken as a folder)."""
    from botocore.exceptions import BotoCoreError, ClientError

    bucket, _, prefix = url[5:].partition("/")
    if prefix and not prefix.endswith("/"):
        prefix += "/"
    try:
        paginator = _s3(client, endpoint_url).get_paginator("list_objects_v2")
        return [
            obj["Key"][len(prefix):]
            for page in paginator.paginate(Bucket=bucket, Prefix=prefix, Delimiter="/")
            for obj in page.get("Contents", [])
        ]
    except (ClientError, BotoCoreError) as exc:
        raise BundleError(REDACTOR(f"cannot list {url}: {exc}; check the bucket and "
                                   "credentials")) from None
