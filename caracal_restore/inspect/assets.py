"""The asset table: each asset the operations page names was backed up and came back.

Postgres databases (every one the manifest lists, row for row), runtime secrets (in the
secret store, and nowhere in the bundle), the STS/Gateway replay volumes (the same files,
valid, and — once services run — ingested exactly once), the Redis snapshot (streams,
groups and pending entries as at backup time), the audit exports (an object for every hour
up to the watermark) and the backup's encryption (observed on the artifact itself).
"""

from __future__ import annotations

import base64
import dataclasses
import datetime as dt
import hashlib
import os
import subprocess
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import quote

import psycopg
from psycopg import sql

from caracal_restore import fingerprint as fp
from caracal_restore.inspect.needles import NeedleFinder
from caracal_restore.parquet_export import ArchiveIndex, object_key
from caracal_restore.replay_files import ReplayEvent, parse_replay_dir
from caracal_restore.waiting import WaitTimeout, until

Conn = psycopg.Connection[Any]
REPLAY_SERVICES = ("sts", "gateway")
AGE_MAGIC = b"age-encryption.org/v1"
AGE_ARMOR = b"-----BEGIN AGE ENCRYPTED FILE-----"
GZIP_MAGIC = b"\x1f\x8b"
#: The audit stream and the group the Audit ingestor reads it with (FACTS-1.0 §11.1).
AUDIT_STREAM = "caracal.audit.events"
AUDIT_INGEST_GROUP = "audit-ingestor"
#: Shortest form of a secret searched for (shorter strings would match by chance).
MIN_NEEDLE = 16
_CHUNK = 4 << 20


# ---------------------------------------------------------------------- Postgres database


@dataclasses.dataclass(frozen=True)
class DatabaseRows:
    """Rows of one restored database, per table holding rows, and against the source."""

    database: str
    restored_as: str | None
    tables: int
    rows: int
    source_rows: int | None
    differences: tuple[str, ...]


def leaf_row_counts(conn: Conn) -> dict[str, int]:
    """``count(*)`` of every table of ``public`` that holds rows (partitions, not parents)."""
    names = [r[0] for r in conn.execute(
        "SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
        " WHERE n.nspname = 'public' AND c.relkind = 'r' ORDER BY 1").fetchall()]
    out = {}
    for name in names:
        row = conn.execute(sql.SQL("SELECT count(*) FROM ONLY {}").format(
            sql.Identifier("public", name))).fetchone()
        out[name] = int(row[0]) if row else 0
    return out


def compare_rows(database: str, restored_as: str | None, counts: Mapping[str, int] | None,
                 source: Mapping[str, Any] | None) -> DatabaseRows:
    """A database's row totals against the source fingerprint's (None: no fingerprint)."""
    if counts is None:
        return DatabaseRows(database, restored_as, 0, 0, None,
                            (f"{database}: not restored",))
    total = sum(counts.values())
    if source is None:
        return DatabaseRows(database, restored_as, len(counts), total, None, ())
    expected = {n: int(t["rows"]) for n, t in source["tables"].items()
                if t["kind"] != "partitioned"}
    diffs = [f"{database}.{n}: {expected.get(n, 0)} rows in the source, {counts.get(n, 0)} "
             "after restore" for n in sorted(expected.keys() | counts.keys())
             if expected.get(n, 0) != counts.get(n, 0) or (n in expected) != (n in counts)]
    return DatabaseRows(database, restored_as, len(counts), total, sum(expected.values()),
                        tuple(diffs))


# ---------------------------------------------------------------------- secrets in bundle


@dataclasses.dataclass(frozen=True)
class Needle:
    """One printable or binary form of one secret (the bytes are never shown)."""

    secret: str
    form: str
    data: bytes = dataclasses.field(repr=False)


def secret_needles(secrets: Mapping[str, str]) -> list[Needle]:
    """Every form a secret could take in a file: as written, hex, base64, url-quoted, raw."""
    out: dict[bytes, Needle] = {}

    def add(secret: str, form: str, data: bytes) -> None:
        if len(data) >= MIN_NEEDLE and data not in out:
            out[data] = Needle(secret, form, data)

    for name, value in sorted(secrets.items()):
        if not value:
            continue
        text = value.encode()
        add(name, "as written", text)
        add(name, "url-quoted", quote(value, safe="").encode())
        add(name, "base64", base64.b64encode(text))
        add(name, "base64 (unpadded)", base64.b64encode(text).rstrip(b"="))
        try:
            raw = bytes.fromhex(value)
        except ValueError:
            continue
        add(name, "raw bytes", raw)
        add(name, "upper-case hex", raw.hex().upper().encode())
        for form, encoded in (("base64 of the bytes", base64.b64encode(raw)),
                              ("base64url of the bytes", base64.urlsafe_b64encode(raw))):
            add(name, form, encoded)
            add(name, form + " (unpadded)", encoded.rstrip(b"="))
    return list(out.values())


@dataclasses.dataclass(frozen=True)
class Leak:
    """A secret found where it must not be."""

    secret: str
    form: str
    where: str


@dataclasses.dataclass(frozen=True)
class LeakScan:
    """What was searched (files, decoded dumps, the Redis keyspace) and what was found."""

    sources: tuple[str, ...]
    bytes_scanned: int
    needles: int
    secrets: tuple[str, ...]
    leaks: tuple[Leak, ...]


def scan_stream(chunks: Iterable[bytes], needles: Sequence[Needle], where: str,
                found: dict[tuple[str, str], Leak]) -> int:
    """Search a byte stream for every needle (chunk borders overlap); returns bytes read.

    All needles are looked for in one pass over each chunk (``NeedleFinder``); of several forms
    of a secret found in one chunk, the first in ``needles``' order is reported.
    """
    keep = max((len(n.data) for n in needles), default=1) - 1
    finder = NeedleFinder(n.data for n in needles)
    tail = b""
    total = 0
    for chunk in chunks:
        total += len(chunk)
        window = tail + chunk
        present = finder.present(window)
        for needle in needles:
            if (needle.secret, where) not in found and needle.data in present:
                found[(needle.secret, where)] = Leak(needle.secret, needle.form, where)
        tail = window[-keep:] if keep else b""
    return total


def _file_chunks(path: Path) -> Iterator[bytes]:
    with path.open("rb") as handle:
        while chunk := handle.read(_CHUNK):
            yield chunk


def _dump_chunks(dump: Path, pg_restore: Path) -> Iterator[bytes]:
    """The SQL text of a custom-format dump (its data blocks are compressed on disk)."""
    with subprocess.Popen([str(pg_restore), "--file=-", str(dump)], stdout=subprocess.PIPE,
                          stderr=subprocess.DEVNULL) as proc:
        assert proc.stdout is not None
        try:
            while chunk := proc.stdout.read(_CHUNK):
                yield chunk
        finally:
            if proc.poll() is None and proc.stdout.closed is False:
                proc.stdout.close()
        if proc.wait(timeout=3600) != 0:
            raise RuntimeError(f"pg_restore could not read {dump.name} (exit {proc.returncode})")


def _redis_chunks(client: Any) -> Iterator[bytes]:
    """Every key and value of a Redis keyspace (RDB bases compress strings on disk)."""
    for key in client.scan_iter(count=1000):
        kind = client.type(key)
        kind = kind.decode() if isinstance(kind, bytes) else str(kind)
        parts: list[bytes] = [key]
        if kind == "string":
            parts.append(client.get(key) or b"")
        elif kind == "hash":
            for k, v in client.hgetall(key).items():
                parts += [k, v]
        elif kind == "list":
            parts += client.lrange(key, 0, -1)
        elif kind == "set":
            parts += list(client.smembers(key))
        elif kind == "zset":
            parts += [m for m, _ in client.zrange(key, 0, -1, withscores=True)]
        elif kind == "stream":
            for _entry_id, fields in client.xrange(key):
                for k, v in fields.items():
                    parts += [k, v]
        yield b"\n".join(parts) + b"\n"


def scan_bundle_files(root: Path, secrets: Mapping[str, str], *,
                      pg_restore: Path | None = None) -> LeakScan:
    """Search every file of an extracted bundle (its dumps also rendered to SQL)."""
    needles = secret_needles(secrets)
    found: dict[tuple[str, str], Leak] = {}
    sources, total = [], 0
    for dirpath, _dirs, files in os.walk(root):
        for name in sorted(files):
            path = Path(dirpath, name)
            if path.is_symlink() or not path.is_file():
                continue
            rel = path.relative_to(root).as_posix()
            total += scan_stream(_file_chunks(path), needles, rel, found)
            sources.append(rel)
            if pg_restore is not None and rel.startswith("postgres/") and name.endswith(".dump"):
                where = f"{rel} (as SQL, via pg_restore)"
                total += scan_stream(_dump_chunks(path, pg_restore), needles, where, found)
                sources.append(where)
    return _leak_scan(sources, total, needles, secrets, found.values())


def scan_redis_keyspace(client: Any, secrets: Mapping[str, str]) -> LeakScan:
    """Search the keyspace of the Redis restored from the bundle's AOF."""
    needles = secret_needles(secrets)
    found: dict[tuple[str, str], Leak] = {}
    where = "redis/appendonlydir (its keyspace, read from the Redis restored from it)"
    total = scan_stream(_redis_chunks(client), needles, where, found)
    return _leak_scan([where], total, needles, secrets, found.values())


def combine_scans(*scans: LeakScan) -> LeakScan:
    """One scan of everything several scans (of the same secrets) searched."""
    leaks = {(leak.where, leak.secret): leak for scan in scans for leak in scan.leaks}
    return LeakScan(tuple(s for scan in scans for s in scan.sources),
                    sum(scan.bytes_scanned for scan in scans),
                    max((scan.needles for scan in scans), default=0),
                    scans[0].secrets if scans else (),
                    tuple(sorted(leaks.values(), key=lambda x: (x.where, x.secret))))


def _leak_scan(sources: Sequence[str], total: int, needles: Sequence[Needle],
               secrets: Mapping[str, str], leaks: Iterable[Leak]) -> LeakScan:
    return LeakScan(tuple(sources), total, len(needles), tuple(sorted(secrets)),
                    tuple(sorted(leaks, key=lambda x: (x.where, x.secret))))


# -------------------------------------------------------------------------- replay files


def _files(root: Path | None) -> dict[str, str]:
    if root is None or not root.is_dir():
        return {}
    return fp.file_hashes(root)


@dataclasses.dataclass(frozen=True)
class ReplayComparison:
    """One service's replay files: in the bundle, after restore, and their grammar."""

    service: str
    bundle_files: dict[str, str]
    restored_files: dict[str, str]
    events: int
    problems: tuple[str, ...]
    findings: tuple[str, ...]


def compare_replay(bundle_root: Path, service: str, restored: str | None) -> ReplayComparison:
    """Files restored for a service equal the bundle's byte for byte and parse as replay files."""
    source = bundle_root / "replay" / service
    target = Path(restored) if restored else None
    want, got = _files(source), _files(target)
    findings = []
    if target is None or not target.is_dir():
        findings.append(f"{service}: no restored replay directory")
    for rel in sorted(want.keys() | got.keys()):
        if rel not in got:
            findings.append(f"{service}: {rel} is in the bundle but not restored")
        elif rel not in want:
            findings.append(f"{service}: {rel} was not in the bundle")
        elif want[rel] != got[rel]:
            findings.append(f"{service}: {rel} differs from the bundle's copy")
    scan = parse_replay_dir(target) if target is not None else None
    problems = scan.problems if scan is not None else ()
    findings += [f"{service}: {p}" for p in problems]
    return ReplayComparison(service, want, got, len(scan.events) if scan else 0, problems,
                            tuple(findings))


def bundle_replay_events(bundle_root: Path) -> tuple[list[ReplayEvent], list[str]]:
    """Every event the bundle's replay files hold, and the grammar problems met."""
    events: list[ReplayEvent] = []
    problems: list[str] = []
    for service in REPLAY_SERVICES:
        scan = parse_replay_dir(bundle_root / "replay" / service)
        events += scan.events
        problems += [f"{service}: {p}" for p in scan.problems]
    return events, problems


@dataclasses.dataclass(frozen=True)
class Ingestion:
    """Replayed events in the live copy's audit_events after waiting (bounded)."""

    events: int
    waited_s: float
    timeout_s: float
    ended: str  # all ingested | pipeline settled | deadline
    ingested: int
    missing: tuple[str, ...]
    duplicated: tuple[str, ...]
    mismatched: tuple[str, ...]


def _ingested(conn: Conn, events: Sequence[ReplayEvent]) -> dict[str, list[tuple[Any, ...]]]:
    rows = conn.execute(
        "SELECT id::text, zone_id, event_type, request_id, decision, occurred_at"
        " FROM audit_events WHERE id = ANY(%s)", ([e.id for e in events],)).fetchall()
    out: dict[str, list[tuple[Any, ...]]] = {}
    for row in rows:
        out.setdefault(row[0], []).append(row[1:])
    return out


def pipeline_settled(redis_client: Any, replay_dirs: Mapping[str, str] | None,
                     backup_last_id: str | None = None) -> Callable[[], bool]:
    """True once nothing more can arrive: the replay files are gone, the ingest group has read
    the whole audit stream and acknowledged everything added since the backup
    (``backup_last_id``: the stream's last id at backup time; None: everything)."""
    floor = _id_key(backup_last_id) if backup_last_id else None

    def settled() -> bool:
        if leftover_replay_files(replay_dirs):
            return False
        last = _text(redis_client.xinfo_stream(AUDIT_STREAM)["last-generated-id"])
        group = next((g for g in redis_client.xinfo_groups(AUDIT_STREAM)
                      if _text(g["name"]) == AUDIT_INGEST_GROUP), None)
        if group is None:
            return False
        if not (group.get("lag") == 0 or _text(group["last-delivered-id"]) == last):
            return False
        summary = redis_client.xpending(AUDIT_STREAM, AUDIT_INGEST_GROUP)
        if not int(summary.get("pending") or 0):
            return True
        # Entries pending since before the backup are not the replayed ones.
        return floor is not None and _id_key(_text(summary["max"])) <= floor

    return settled


def _id_key(entry_id: str) -> tuple[int, int]:
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq or 0)


def wait_for_ingestion(connect: Callable[[], Conn], events: Sequence[ReplayEvent], *,
                       timeout: float, interval: float = 0.5,
                       settled: Callable[[], bool] | None = None) -> Ingestion:
    """Poll until every replayed event id is in audit_events, the ingest pipeline has settled
    (``settled``), or the deadline; then compare what arrived with the replay files."""
    started = time.monotonic()
    with connect() as conn:
        def probe() -> tuple[str, dict[str, list[tuple[Any, ...]]]] | None:
            seen = _ingested(conn, events)
            if all(e.id in seen for e in events):
                return "all ingested", seen
            if settled is not None and settled():
                return "pipeline settled", _ingested(conn, events)
            return None

        try:
            ended, seen = until(probe, timeout=timeout, interval=interval,
                                transient=(psycopg.OperationalError,),
                                what="replayed events reach audit_events")
        except WaitTimeout:
            ended, seen = "deadline", _ingested(conn, events)
    missing = [e.id for e in events if e.id not in seen]
    dups = sorted(i for i, rows in seen.items() if len(rows) > 1)
    mismatched = []
    for event in events:
        for zone, kind, request, decision, occurred in seen.get(event.id, [])[:1]:
            want = (event.zone_id, event.event_type, event.request_id, event.decision,
                    event.occurred_at)
            got = (zone, kind, request, decision, occurred.astimezone(dt.UTC))
            if want != got:
                mismatched.append(f"{event.id}: stored {got} but the replay file says {want}")
    return Ingestion(len(events), round(time.monotonic() - started, 2), timeout, ended,
                     len(seen), tuple(missing), tuple(dups), tuple(mismatched))


def leftover_replay_files(dirs: Mapping[str, str] | None) -> dict[str, list[str]]:
    """Replay files still waiting in the live services' directories (deleted once replayed)."""
    out: dict[str, list[str]] = {}
    for service, root in (dirs or {}).items():
        scan = parse_replay_dir(Path(root))
        if scan.files:
            out[service] = [f.name for f in scan.files]
    return out


# --------------------------------------------------------------------------------- Redis


def compare_redis(expected: Mapping[str, Any], actual: Mapping[str, Any]) -> list[str]:
    """Streams, lengths, last ids, groups, delivery positions and pending counts (A4.2-3)."""
    problems = []
    for stream in sorted(expected.keys() | actual.keys()):
        if stream not in actual:
            problems.append(f"{stream}: in the backup ({expected[stream]['length']} entries), "
                            "missing after restore")
            continue
        if stream not in expected:
            problems.append(f"{stream}: not in the backup, present after restore")
            continue
        exp, act = expected[stream], actual[stream]
        for field in ("length", "last_generated_id"):
            if exp[field] != act[field]:
                problems.append(f"{stream}: {field} {act[field]} after restore, "
                                f"{exp[field]} in the backup")
        for group in sorted(exp["groups"].keys() | act["groups"].keys()):
            if group not in act["groups"]:
                problems.append(f"{stream}: group {group} missing after restore")
            elif group not in exp["groups"]:
                problems.append(f"{stream}: group {group} not in the backup")
            else:
                for field in ("last_delivered_id", "pending"):
                    want, got = exp["groups"][group][field], act["groups"][group][field]
                    if want != got:
                        problems.append(f"{stream}: group {group} {field} {got} after restore, "
                                        f"{want} in the backup")
    return problems


def provisioned_missing(actual: Mapping[str, Any],
                        streams: Iterable[tuple[str, Sequence[str]]]) -> list[str]:
    """Provisioned streams or groups the restored Redis lacks."""
    problems = []
    for name, groups in streams:
        if name not in actual:
            problems.append(f"{name}: provisioned stream missing")
            continue
        problems += [f"{name}: provisioned group {g} missing" for g in groups
                     if g not in actual[name]["groups"]]
    return problems


def outbox_backlog(conn: Conn) -> dict[str, int]:
    """Rows Postgres will still publish or has given up on (it stays authoritative, A4.5)."""
    row = conn.execute(
        "SELECT (SELECT count(*) FROM event_outbox WHERE dispatched_at IS NULL"
        "        AND available_at <> 'infinity'),"
        " (SELECT count(*) FROM event_outbox WHERE dispatched_at IS NULL"
        "        AND available_at = 'infinity'),"
        " (SELECT count(*) FROM caracal_outbox WHERE status = 'pending'),"
        " (SELECT count(*) FROM caracal_outbox WHERE status = 'dead')").fetchone()
    assert row is not None
    keys = ("event_outbox undispatched", "event_outbox dead", "caracal_outbox pending",
            "caracal_outbox dead")
    return dict(zip(keys, (int(v) for v in row), strict=True))


# ------------------------------------------------------------------------- audit exports


@dataclasses.dataclass(frozen=True)
class ExportCoverage:
    """Hours with audit rows up to the watermark, and the archive objects that hold them."""

    watermark: str | None
    hours_with_rows: int
    rows: int
    objects_listed: int
    objects_read: int
    missing: tuple[str, ...]
    incomplete: tuple[str, ...]


def export_coverage(watermark: dt.datetime | None, rows_by_hour: Mapping[dt.datetime, int],
                    unconfirmed: Mapping[dt.datetime, set[str]],
                    archive: ArchiveIndex) -> ExportCoverage:
    """Every hour with rows through the watermark has its object, and the object holds them.

    ``rows_by_hour`` counts the restored rows per hour; ``unconfirmed`` holds, per hour, the
    event ids that were not found in the hour's object at their ``(zone_id, chain_seq)``
    (``retention.exports.read_hours``): only those are looked up among the object's event ids.
    """
    listed = {o.key for o in archive.objects}
    if watermark is None:
        return ExportCoverage(None, 0, 0, len(listed), 0, (), ())
    keys = {hour: object_key(hour) for hour in rows_by_hour}
    present = {hour for hour, key in keys.items() if key in listed}
    doubtful = {keys[hour] for hour, ids in unconfirmed.items() if ids and hour in present}
    contents = ({k: ids for k, ids in archive.event_ids_by_key().items() if k in doubtful}
                if doubtful else {})
    missing, incomplete = [], []
    for hour in sorted(rows_by_hour):
        key, rows = keys[hour], rows_by_hour[hour]
        if hour not in present:
            missing.append(f"{key} ({rows} rows)")
            continue
        absent = unconfirmed.get(hour, set()) - contents.get(key, set())
        if absent:
            incomplete.append(f"{key} lacks {len(absent)} of its {rows} rows "
                              f"(e.g. {sorted(absent)[0]})")
    return ExportCoverage(watermark.isoformat(), len(rows_by_hour), sum(rows_by_hour.values()),
                          len(listed), len(present), tuple(missing), tuple(incomplete))


# ------------------------------------------------------------------------------ encryption


def artifact_head(source: str, object_store: Any = None, size: int = 64) -> bytes:
    """The first bytes of the backup artifact as stored (``s3://bucket/key`` or a path)."""
    if source.startswith("s3://"):
        bucket, _, key = source[5:].partition("/")
        if object_store is None:
            raise ValueError(f"{source} is in an object store, but none was given")
        store = object_store.bucket(bucket)
        client = getattr(store, "client", None)
        if client is not None:
            body = client.get_object(Bucket=bucket, Key=key, Range=f"bytes=0-{size - 1}")["Body"]
            return bytes(body.read())[:size]
        return bytes(store.get(key))[:size]
    with Path(source).open("rb") as handle:
        return handle.read(size)


def artifact_format(head: bytes) -> str:
    """What the artifact is, by its magic bytes."""
    if head.startswith(AGE_MAGIC):
        return "age (binary)"
    if head.startswith(AGE_ARMOR):
        return "age (armored)"
    if head.startswith(GZIP_MAGIC):
        return "gzip (not encrypted)"
    return f"unknown ({head[:8].hex()})"


def encryption_required(require_encryption: bool | None, gate: bool) -> tuple[bool, str]:
    """Whether the run requires an encrypted backup, and why (for the message)."""
    if require_encryption is not None:
        return require_encryption, f"--require-encryption is {str(require_encryption).lower()}"
    return gate, f"--require-encryption unset, so it follows --gate ({str(gate).lower()})"


def sha256_head(head: bytes) -> str:
    """A short digest of the bytes read (evidence that they were read)."""
    return hashlib.sha256(head).hexdigest()[:16]


def _text(value: bytes | str) -> str:
    return value.decode("utf-8", "backslashreplace") if isinstance(value, bytes) else value
