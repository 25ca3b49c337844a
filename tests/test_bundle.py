"""Tests of caracal_restore.bundle: a round trip through embedded PostgreSQL 18 and Redis, the
real Caracal 1.0 bundle, one refusal per defect, age encryption, S3 fetch and retention listing."""

from __future__ import annotations

import gzip
import io
import shutil
import tarfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pyrage
import pytest

from caracal_restore.bundle import (
    Bundle,
    Manifest,
    decrypt_file,
    encrypt_file,
    list_bundles,
    open_bundle,
    redis_aof_local,
    redis_aof_via_replica,
    take_backup,
)
from caracal_restore.environments import objectstore, postgres, redis
from caracal_restore.errors import BackupFailed, BundleError
from caracal_restore.fingerprint import redis_stream_state, take_fingerprint

REAL = Path("/work/shared/caracal/real-1.0/caracalBackup-20261124T061910Z.tar.gz")
STAMP = "20261201T083000Z"
TOP = f"caracalBackup-{STAMP}"
STREAM = "caracal.sessions.revoke"


@pytest.fixture(scope="module")
def pg() -> Iterator[postgres.PostgresServer]:
    """An embedded PostgreSQL 18 holding ``caracal`` and ``caracal_auth`` (action: start)."""
    with postgres.embedded() as server:
        for name in ("caracal", "caracal_auth"):
            server.create_database(name)
            with server.connect(name) as conn:
                conn.execute("CREATE TABLE zones (id text PRIMARY KEY, meta jsonb, key bytea)")
                conn.execute("INSERT INTO zones VALUES ('z1', '{\"a\": 1}', '\\x00ff'),"
                             " ('z2', NULL, NULL)")
        yield server


@pytest.fixture(scope="module")
def rs() -> Iterator[redis.RedisServer]:
    """An embedded Redis with one stream and a group holding one pending entry (action: start)."""
    with redis.embedded() as server:
        client = server.client()
        for n in range(3):
            client.xadd(STREAM, {"session_id": f"s{n}"})
        client.xgroup_create(STREAM, "sts-revocation", id="0")
        client.xreadgroup("sts-revocation", "sts-1", {STREAM: ">"}, count=1)
        client.close()
        yield server


@pytest.fixture(scope="module")
def archive(pg, rs, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A bundle written by take_backup with Redis, STS replay files and a fingerprint."""
    base = tmp_path_factory.mktemp("backup")
    replay = base / "sts-state" / "audit-replay"
    replay.mkdir(parents=True)
    (replay / "pending-1-1.ndjson").write_text('{"id":"e1","zone_id":"z1"}\n')
    client = rs.client()
    out = base / "bundles"
    out.mkdir()
    try:
        return take_backup(
            out, stamp=STAMP, project="caracal", pg_admin=pg.admin, tools=pg.tools,
            redis_dir_provider=lambda: redis_aof_local(client, rs.datadir),
            redis_client=client, replay_dirs={"sts": replay.parent, "gateway": None},
            fingerprint_hook=lambda db, conn: take_fingerprint(conn),
        )
    finally:
        client.close()


@pytest.fixture(scope="module")
def opened(archive: Path, pg, tmp_path_factory: pytest.TempPathFactory) -> Bundle:
    """The round-trip bundle, opened and validated."""
    return open_bundle(archive, tmp_path_factory.mktemp("open"), tools=pg.tools)


# ------------------------------------------------------------------------------ manifest


def test_manifest_renders_backup_sh_text_byte_for_byte() -> None:
    """version, createdAt, project, then names each followed by a space, then a newline."""
    manifest = Manifest(1, STAMP, "caracal", ("caracal", "caracal_auth"))
    assert manifest.render() == (
        f"version: 1\ncreatedAt: {STAMP}\nproject: caracal\ndatabases: caracal caracal_auth \n"
    )
    assert Manifest.parse(manifest.render()) == manifest


def test_manifest_parse_tolerates_a_missing_trailing_space() -> None:
    """A hand-written databases line without the trailing space reads the same."""
    text = f"version: 1\ncreatedAt: {STAMP}\nproject: p\ndatabases: caracal\n"
    assert Manifest.parse(text).databases == ("caracal",)


def test_manifest_version_must_be_restore_sh_exact_line() -> None:
    """restore.sh needs the exact line 'version: 1'; a padded one is refused with that reason."""
    with pytest.raises(BundleError, match="exact line 'version: 1'"):
        Manifest.parse(f"version:  1\ncreatedAt: {STAMP}\nproject: p\ndatabases: \n")


# ----------------------------------------------------------------------------- round trip


def test_round_trip_manifest_is_byte_exact(archive: Path) -> None:
    """The written manifest is exactly what backup.sh would have written."""
    with tarfile.open(archive) as tar:
        member = tar.extractfile(f"{TOP}/manifest.txt")
        assert member is not None
        text = member.read()
        names = tar.getnames()
    assert text == (f"version: 1\ncreatedAt: {STAMP}\nproject: caracal\n"
                    "databases: caracal caracal_auth \n").encode()
    assert {n.split("/")[0] for n in names} == {TOP}
    assert f"{TOP}/postgres/globals.sql" in names
    assert f"{TOP}/replay/sts/audit-replay/pending-1-1.ndjson" in names
    assert f"{TOP}/redis/appendonlydir/appendonly.aof.manifest" in names


def test_round_trip_bundle_is_accepted(opened: Bundle, archive: Path) -> None:
    """open_bundle accepts what take_backup wrote and exposes every part."""
    assert opened.stamp == STAMP
    assert opened.warnings == ()
    assert opened.created_at.isoformat() == "2026-12-01T08:30:00+00:00"
    assert set(opened.dumps) == {"caracal", "caracal_auth"}
    assert opened.globals_sql.read_text().startswith("--")
    assert opened.replay["gateway"] is None
    assert opened.replay["sts"] is not None
    assert (opened.replay["sts"] / "audit-replay" / "pending-1-1.ndjson").is_file()
    assert opened.encrypted is False
    assert opened.source == str(archive)
    assert opened.fingerprint is not None
    assert set(opened.fingerprint["files"]) == set(opened.file_hashes)
    assert opened.fingerprint["databases"]["caracal"]["tables"]["zones"]["rows"] == 2
    assert set(opened.timings) == {"fetch", "decrypt", "extract", "validate"}


def test_redis_state_survives_the_round_trip(opened: Bundle) -> None:
    """A Redis started on the bundle's appendonlydir has the recorded streams and groups."""
    assert opened.fingerprint is not None
    assert opened.redis_aof_dir is not None
    recorded = opened.fingerprint["redis"]
    assert recorded[STREAM]["groups"]["sts-revocation"]["pending"] == 1
    with redis.embedded(appendonlydir=opened.redis_aof_dir) as restored:
        client = restored.client()
        assert redis_stream_state(client) == recorded
        client.close()


def test_replica_backs_up_a_live_redis_without_writing_to_it(rs, tmp_path: Path) -> None:
    """REPLICAOF + BGREWRITEAOF on a local replica copies the source; the source runs no writes."""
    source = rs.client()
    before_state, before_stats = redis_stream_state(source), source.info("commandstats")
    folder = redis_aof_via_replica(rs.endpoint, tmp_path)
    after_stats = source.info("commandstats")
    changed = {name for name, stats in after_stats.items()
               if stats["calls"] != before_stats.get(name, {}).get("calls")}
    read_only = {"cmdstat_info", "cmdstat_ping", "cmdstat_psync", "cmdstat_replconf",
                 "cmdstat_auth", "cmdstat_client|setinfo", "cmdstat_hello"}
    assert changed <= read_only, changed - read_only
    assert redis_stream_state(source) == before_state
    source.close()
    with redis.embedded(appendonlydir=folder) as copy:
        client = copy.client()
        assert redis_stream_state(client) == before_state
        client.close()


def test_failed_backup_leaves_nothing_and_hides_the_password(pg, tmp_path: Path) -> None:
    """A refused login is a BackupFailed naming the step; no partial bundle, no password."""
    wrong = pg.admin.with_login("postgres", "wrong-password-4f1c9e")
    with pytest.raises(BackupFailed, match="pg_dumpall --globals-only") as info:
        take_backup(tmp_path, pg_admin=wrong, tools=pg.tools, stamp=STAMP)
    assert "wrong-password-4f1c9e" not in str(info.value)
    assert list(tmp_path.iterdir()) == []


# ------------------------------------------------------------------------------ real 1.0


def test_real_caracal_1_0_bundle_is_accepted(tmp_path: Path) -> None:
    """backup.sh's own bundle: one database, no fingerprint, dumps fully readable."""
    bundle = open_bundle(REAL, tmp_path)
    assert bundle.databases == ("caracal",)
    assert bundle.manifest.project == "caracal-live"
    assert bundle.fingerprint is None
    assert bundle.warnings == ()
    assert bundle.redis_aof_dir is not None
    assert bundle.replay == {"sts": None, "gateway": None}
    assert bundle.dumps["caracal"].read_bytes()[:5] == b"PGDMP"
    assert "postgres/caracal.dump" in bundle.file_hashes


# ---------------------------------------------------------------------------- bad inputs


def _tree(source: Path, dest: Path) -> Path:
    """Unpack a bundle into ``dest`` and return its top directory, ready to be damaged."""
    with tarfile.open(source) as tar:
        tar.extractall(dest, filter="data")
    (top,) = dest.iterdir()
    return top


def _pack(parent: Path, out: Path) -> Path:
    """Pack every entry of ``parent`` as a top-level entry of a tar.gz."""
    with tarfile.open(out, "w:gz") as tar:
        for entry in sorted(parent.iterdir()):
            tar.add(entry, arcname=entry.name)
    return out


def _damaged(tmp_path: Path, damage: Callable[[Path], None], source: Path = REAL) -> Path:
    top = _tree(source, tmp_path / "tree")
    damage(top)
    return _pack(tmp_path / "tree", tmp_path / "damaged.tar.gz")


def _refused(path: Path, tmp_path: Path, match: str) -> str:
    with pytest.raises(BundleError, match=match) as info:
        open_bundle(path, tmp_path / "work")
    return str(info.value)


def test_not_a_tar_gz(tmp_path: Path) -> None:
    """Bytes that are not gzip are named as such."""
    path = tmp_path / "caracalBackup-20261124T061910Z.tar.gz"
    path.write_bytes(b"PK\x03\x04 a zip file")
    _refused(path, tmp_path, "is not a gzip-compressed tar")


def test_gzip_that_is_not_a_tar(tmp_path: Path) -> None:
    """A gzip of plain text is refused as unreadable."""
    path = tmp_path / "b.tar.gz"
    path.write_bytes(gzip.compress(b"just text, no tar headers" * 40))
    _refused(path, tmp_path, "is not a readable tar.gz")


def test_truncated_archive(tmp_path: Path) -> None:
    """An archive cut short (interrupted upload) is refused before anything is used."""
    path = tmp_path / "b.tar.gz"
    path.write_bytes(REAL.read_bytes()[: REAL.stat().st_size // 2])
    _refused(path, tmp_path, "corrupt or truncated")


def test_two_top_directories(tmp_path: Path) -> None:
    """A second directory beside caracalBackup-<stamp> is refused."""
    path = _damaged(tmp_path, lambda top: (top.parent / "extra").mkdir())
    _refused(path, tmp_path, "exactly one top directory")


def test_top_directory_misnamed(tmp_path: Path) -> None:
    """The top directory must be caracalBackup-<%Y%m%dT%H%M%SZ>."""
    path = _damaged(tmp_path, lambda top: top.rename(top.parent / "backup-2026-11-24"))
    _refused(path, tmp_path, "is not named caracalBackup-")


def test_missing_manifest(tmp_path: Path) -> None:
    """No manifest.txt means the bundle is incomplete."""
    path = _damaged(tmp_path, lambda top: (top / "manifest.txt").unlink())
    _refused(path, tmp_path, "manifest.txt is missing")


def test_unsupported_manifest_version(tmp_path: Path) -> None:
    """A version other than 1 is refused with the version named."""

    def bump(top: Path) -> None:
        text = (top / "manifest.txt").read_text()
        (top / "manifest.txt").write_text(text.replace("version: 1", "version: 2"))

    _refused(_damaged(tmp_path, bump), tmp_path, "version '2' is not supported")


def test_manifest_without_version(tmp_path: Path) -> None:
    """A manifest with no version line is refused."""

    def drop(top: Path) -> None:
        text = (top / "manifest.txt").read_text()
        (top / "manifest.txt").write_text(text.replace("version: 1\n", ""))

    _refused(_damaged(tmp_path, drop), tmp_path, "no 'version:' line")


def test_created_at_differing_from_the_stamp_is_recorded(tmp_path: Path) -> None:
    """A createdAt that differs from the directory stamp is a recorded warning, not a refusal."""

    def shift(top: Path) -> None:
        text = (top / "manifest.txt").read_text()
        (top / "manifest.txt").write_text(text.replace("20261124T061910Z", "20261124T061911Z"))

    bundle = open_bundle(_damaged(tmp_path, shift), tmp_path / "work")
    assert len(bundle.warnings) == 1
    assert "createdAt 20261124T061911Z differs from the directory stamp" in bundle.warnings[0]


def test_listed_database_without_dump(tmp_path: Path) -> None:
    """A database in the manifest with no dump is refused, naming the missing file."""

    def add(top: Path) -> None:
        text = (top / "manifest.txt").read_text()
        (top / "manifest.txt").write_text(text.replace("caracal \n", "caracal caracal_auth \n"))

    _refused(_damaged(tmp_path, add), tmp_path, "postgres/caracal_auth.dump is missing")


def test_dump_not_listed(tmp_path: Path) -> None:
    """A dump the manifest does not list is refused."""

    def add(top: Path) -> None:
        shutil.copy(top / "postgres" / "caracal.dump", top / "postgres" / "stray.dump")

    _refused(_damaged(tmp_path, add), tmp_path, "stray.dump is not listed in manifest.txt")


def test_dump_without_custom_format_magic(tmp_path: Path) -> None:
    """A dump that does not start with PGDMP (a plain SQL dump) is refused."""

    def plain(top: Path) -> None:
        (top / "postgres" / "caracal.dump").write_text("--\n-- PostgreSQL database dump\n")

    _refused(_damaged(tmp_path, plain), tmp_path, "does not start with PGDMP")


def test_truncated_dump_is_caught_by_the_full_read(tmp_path: Path) -> None:
    """Cut inside the data blocks: the TOC still lists, only reading every block catches it."""

    def cut(top: Path) -> None:
        dump = top / "postgres" / "caracal.dump"
        dump.write_bytes(dump.read_bytes()[: dump.stat().st_size * 9 // 10])

    message = _refused(_damaged(tmp_path, cut), tmp_path, "truncated or corrupt")
    assert "every data block (pg_restore -f /dev/null)" in message


def test_dump_whose_hash_the_fingerprint_recorded_is_read_once(
        archive: Path, pg, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A dump still bearing the SHA-256 fingerprint.json recorded at backup time is the file
    pg_dump completed: only its table of contents is read before the restore (the restore
    reads every block). Without a fingerprint every block is read (the test above)."""
    import caracal_restore.bundle as bundle_module

    calls: list[list[str]] = []
    real = bundle_module.run_tool

    def recorded(argv: list[str | Path], **kwargs: object) -> object:
        calls.append([str(a) for a in argv])
        return real(argv, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(bundle_module, "run_tool", recorded)
    opened = open_bundle(archive, tmp_path / "work", tools=pg.tools)
    assert opened.fingerprint is not None
    reads = [c[1:] for c in calls if Path(c[0]).name == "pg_restore"]
    assert len(reads) == 2, reads  # --list of caracal.dump and of caracal_auth.dump
    assert all(r[0] == "--list" for r in reads), reads


def test_missing_globals(tmp_path: Path) -> None:
    """Without globals.sql the roles are lost; refused."""
    path = _damaged(tmp_path, lambda top: (top / "postgres" / "globals.sql").unlink())
    _refused(path, tmp_path, "globals.sql is missing")


def test_file_differing_from_fingerprint(archive: Path, tmp_path: Path) -> None:
    """A file changed after the backup no longer matches fingerprint.json's files map."""

    def edit(top: Path) -> None:
        path = top / "replay" / "sts" / "audit-replay" / "pending-1-1.ndjson"
        path.write_text('{"id":"e2","zone_id":"z1"}\n')

    message = _refused(_damaged(tmp_path, edit, archive), tmp_path, "SHA-256")
    assert "replay/sts/audit-replay/pending-1-1.ndjson" in message


def _with_member(tmp_path: Path, member: tarfile.TarInfo, data: bytes = b"") -> Path:
    path = tmp_path / "unsafe.tar.gz"
    top = _tree(REAL, tmp_path / "tree")
    with tarfile.open(path, "w:gz") as tar:
        tar.add(top, arcname=top.name)
        tar.addfile(member, io.BytesIO(data) if member.isfile() else None)
    return path


def _link(name: str, target: str, kind: bytes) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, target
    return info


@pytest.mark.parametrize(
    ("member", "why"),
    [
        pytest.param(tarfile.TarInfo("/etc/caracal-evil"), "has an absolute path", id="absolute"),
        pytest.param(tarfile.TarInfo("caracalBackup-20261124T061910Z/../../evil"),
                     "climbs out with '..'", id="dot-dot"),
        pytest.param(_link("caracalBackup-20261124T061910Z/redis/x", "../../../etc/passwd",
                           tarfile.SYMTYPE), "links outside the bundle", id="symlink-out"),
        pytest.param(_link("caracalBackup-20261124T061910Z/redis/y", "/etc/passwd",
                           tarfile.SYMTYPE), "links outside the bundle", id="symlink-absolute"),
        pytest.param(_link("caracalBackup-20261124T061910Z/redis/z", "etc/passwd",
                           tarfile.LNKTYPE), "links outside the bundle", id="hardlink-out"),
    ],
)
def test_unsafe_members_are_refused(tmp_path: Path, member: tarfile.TarInfo, why: str) -> None:
    """Absolute paths, '..' and links leaving the bundle stop extraction of everything."""
    message = _refused(_with_member(tmp_path, member), tmp_path, "unsafe tar member")
    assert why in message
    assert not (tmp_path / "work").exists() or not any((tmp_path / "work").rglob("manifest.txt"))


# -------------------------------------------------------------------------------- age


def _identity_file(path: Path, identity: pyrage.x25519.Identity) -> Path:
    public = identity.to_public()
    path.write_text(f"# created: 2026-12-01T08:30:00Z\n# public key: {public}\n{identity}\n")
    return path


def test_age_round_trip(archive: Path, pg, tmp_path: Path) -> None:
    """An age-encrypted bundle is detected by its header and opened with the right identity."""
    identity = pyrage.x25519.Identity.generate()
    key_file = _identity_file(tmp_path / "bundle.key", identity)
    encrypted = encrypt_file(archive, [str(identity.to_public())],
                             out=tmp_path / f"{archive.name}.age")
    assert encrypted.read_bytes().startswith(b"age-encryption.org/v1\n")
    bundle = open_bundle(encrypted, tmp_path / "work", identity_file=key_file, tools=pg.tools)
    assert bundle.encrypted is True
    assert bundle.databases == ("caracal", "caracal_auth")
    assert bundle.timings["decrypt"] > 0
    plain = decrypt_file(encrypted, key_file, out=tmp_path / "plain.tar.gz")
    assert plain.read_bytes() == archive.read_bytes()


def test_age_wrong_identity_is_a_clear_error(archive: Path, tmp_path: Path) -> None:
    """The wrong identity names the identity file and prints no key material."""
    right, wrong = pyrage.x25519.Identity.generate(), pyrage.x25519.Identity.generate()
    encrypted = encrypt_file(archive, [str(right.to_public())],
                             out=tmp_path / f"{archive.name}.age")
    key_file = _identity_file(tmp_path / "wrong.key", wrong)
    with pytest.raises(BundleError, match="not encrypted to the identity in") as info:
        open_bundle(encrypted, tmp_path / "work", identity_file=key_file)
    message = str(info.value)
    assert str(key_file) in message
    assert str(wrong) not in message
    assert str(right) not in message
    assert "AGE-SECRET-KEY" not in message
    with pytest.raises(BundleError, match="is age-encrypted; pass identity_file"):
        open_bundle(encrypted, tmp_path / "work")


def test_bad_recipient_and_identity_file(tmp_path: Path) -> None:
    """A recipient that is not age1… and an identity file with a bad line are named."""
    path = tmp_path / "x"
    path.write_bytes(b"x")
    with pytest.raises(BundleError, match="not an age X25519 recipient"):
        encrypt_file(path, ["ssh-ed25519 AAAA"])
    bad = tmp_path / "bad.key"
    bad.write_text("# comment\nAGE-SECRET-KEY-1NOTAKEY\n")
    with pytest.raises(BundleError, match=r"bad\.key, line 2: not an X25519 identity") as info:
        decrypt_file(path, bad)
    assert "NOTAKEY" not in str(info.value)


# ------------------------------------------------------------------------- S3, retention


@pytest.fixture(scope="module")
def bucket() -> Iterator[objectstore.S3Store]:
    """A moto S3 server on loopback with one bucket (action: start + create bucket)."""
    with objectstore.embedded() as server:
        store = server.bucket("backups", create=True)
        assert isinstance(store, objectstore.S3Store)
        yield store


def test_s3_fetch(bucket: objectstore.S3Store, archive: Path, pg, tmp_path: Path) -> None:
    """s3://bucket/key is downloaded through boto3 and validated like a local file."""
    key = f"nightly/{archive.name}"
    bucket.put(key, archive.read_bytes())
    url = f"s3://backups/{key}"
    bundle = open_bundle(url, tmp_path, object_store_client=bucket.client, tools=pg.tools)
    assert bundle.source == url
    assert bundle.databases == ("caracal", "caracal_auth")
    assert bundle.timings["fetch"] > 0
    with pytest.raises(BundleError, match=r"cannot fetch s3://backups/nightly/missing\.tar\.gz"):
        open_bundle("s3://backups/nightly/missing.tar.gz", tmp_path,
                    object_store_client=bucket.client)


def test_list_bundles_in_s3_newest_first(bucket: objectstore.S3Store) -> None:
    """Only caracalBackup-*.tar.gz[.age] directly under the prefix, newest first."""
    for key in ("retain/caracalBackup-20261120T000000Z.tar.gz",
                "retain/caracalBackup-20261122T000000Z.tar.gz.age",
                "retain/caracalBackup-20261121T000000Z.tar.gz",
                "retain/notes.txt", "retain/old/caracalBackup-20261123T000000Z.tar.gz"):
        bucket.put(key, b"x")
    listed = list_bundles("s3://backups/retain", object_store_client=bucket.client)
    assert [name for name, _ in listed] == [
        "caracalBackup-20261122T000000Z.tar.gz.age",
        "caracalBackup-20261121T000000Z.tar.gz",
        "caracalBackup-20261120T000000Z.tar.gz",
    ]
    assert listed[0][1].isoformat() == "2026-11-22T00:00:00+00:00"


def test_list_bundles_in_a_directory(tmp_path: Path) -> None:
    """A directory is listed the same way; partial uploads and other names are ignored."""
    for name in ("caracalBackup-20261124T061910Z.tar.gz", "caracalBackup-20261201T000000Z.tar.gz",
                 ".caracalBackup-20261202T000000Z.tar.gz.partial", "caracalBackup-bad.tar.gz"):
        (tmp_path / name).write_bytes(b"")
    assert [n for n, _ in list_bundles(tmp_path)] == [
        "caracalBackup-20261201T000000Z.tar.gz", "caracalBackup-20261124T061910Z.tar.gz",
    ]


def test_a_fingerprint_of_another_format_is_set_aside_for_the_dumps() -> None:
    """Table digests of an earlier format never compare with this suite's: they are named."""
    from caracal_restore.bundle import _stale_formats
    from caracal_restore.fingerprint import FORMAT

    current = {"databases": {"caracal": {"format": FORMAT}, "caracal_auth": None}}
    older = {"databases": {"caracal": {"format": 1}, "caracal_auth": {"format": FORMAT}}}
    assert _stale_formats(current) == []
    assert _stale_formats(None) == []
    assert _stale_formats(older) == [1]
