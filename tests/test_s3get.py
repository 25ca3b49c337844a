"""The SigV4 header of the many-GET client equals botocore's for the same request and time, and
its version listing equals boto3's on the embedded object store."""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import time
from typing import Any

import pytest
from botocore.auth import S3SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.config import Config
from botocore.credentials import Credentials

from caracal_restore.environments import objectstore
from caracal_restore.environments.s3get import (
    ObjectGetter,
    authorization,
    canonical_query,
    signing_key,
)


@pytest.mark.parametrize(("host", "path"), [
    ("127.0.0.1:9000", "/caracal-audit-archive/audit/2026/11/24/2026-11-24T13.parquet"),
    ("minio.local", "/bucket/a%20key%2Bwith/odd~chars"),
])
def test_authorization_equals_botocore(monkeypatch: pytest.MonkeyPatch, host: str,
                                       path: str) -> None:
    when = dt.datetime(2026, 11, 24, 13, 5, 7)
    amz_date = when.strftime("%Y%m%dT%H%M%SZ")
    # botocore told to leave the payload unsigned, as our GETs do (the scheme is not signed).
    request = AWSRequest(method="GET", url=f"https://{host}{path}")
    request.context["client_config"] = Config(s3={"payload_signing_enabled": False})
    monkeypatch.setattr("botocore.auth.get_current_datetime", lambda: when)
    signer = S3SigV4Auth(Credentials("AKIDEXAMPLE", "wJalrXUtnFEMI/K7MDENG"), "s3", "eu-west-1")
    signer.add_auth(request)
    ours = authorization("GET", host, path, amz_date, access_key="AKIDEXAMPLE",
                         key=signing_key("wJalrXUtnFEMI/K7MDENG", amz_date[:8], "eu-west-1"),
                         region="eu-west-1")
    assert ours == request.headers["Authorization"]


def test_getter_refuses_a_non_http_endpoint_and_hides_its_secret() -> None:
    with pytest.raises(ValueError, match="not an http"):
        ObjectGetter("ftp://127.0.0.1", "b", access_key="a", secret_key="s")
    getter = ObjectGetter("http://127.0.0.1:9", "b", access_key="a", secret_key="very-secret")
    assert "very-secret" not in repr(getter)


@pytest.mark.parametrize("params", [
    [("versions", ""), ("encoding-type", "url"), ("prefix", "audit/")],
    [("versions", ""), ("prefix", "audit/2026 x+y~z/"), ("max-keys", "50000"),
     ("key-marker", "audit/a&b=c/é.parquet"), ("version-id-marker", "3/L4kqtJl+cpXk")],
])
def test_authorization_with_a_query_equals_botocore(monkeypatch: pytest.MonkeyPatch,
                                                    params: list[tuple[str, str]]) -> None:
    """A signed query (a listing's parameters, markers with reserved characters) as botocore
    signs the same URL."""
    when = dt.datetime(2026, 11, 25, 1, 2, 3)
    amz_date = when.strftime("%Y%m%dT%H%M%SZ")
    query = canonical_query(params)
    request = AWSRequest(method="GET", url=f"http://127.0.0.1:9000/bucket?{query}")
    request.context["client_config"] = Config(s3={"payload_signing_enabled": False})
    monkeypatch.setattr("botocore.auth.get_current_datetime", lambda: when)
    signer = S3SigV4Auth(Credentials("AKIDEXAMPLE", "wJalrXUtnFEMI/K7MDENG"), "s3", "us-east-1")
    signer.add_auth(request)
    ours = authorization("GET", "127.0.0.1:9000", "/bucket", amz_date, access_key="AKIDEXAMPLE",
                         key=signing_key("wJalrXUtnFEMI/K7MDENG", amz_date[:8], "us-east-1"),
                         region="us-east-1", query=query)
    assert ours == request.headers["Authorization"]


def test_version_listing_equals_boto3s() -> None:
    """Every version (no delete markers), latest flags and sizes, over several pages, under a
    prefix, with keys that need escaping, as boto3's paginator lists them; and S3Store.list
    gives the same objects through either."""
    with objectstore.embedded() as srv:
        store = srv.bucket(f"raw-list-{os.getpid()}-{time.monotonic_ns()}", create=True)
        client = store.client
        keys = ["audit/a&b<c>.parquet", "audit/2026/x y+z~", "audit/2026/y", "other/z",
                "audit/q", "audit/%41"] + [f"audit/many/{i:03d}" for i in range(30)]
        for key in keys:
            client.put_object(Bucket=store.bucket, Key=key, Body=key.encode())
        client.put_object(Bucket=store.bucket, Key="audit/q", Body=b"second version")
        client.delete_object(Bucket=store.bucket, Key="audit/2026/y")  # a delete marker
        access, secret = store._static_credentials  # type: ignore[misc]
        getter = ObjectGetter(srv.endpoint_url, store.bucket, access_key=access,
                              secret_key=secret)
        for prefix, page in (("", None), ("audit/", 7), ("audit/2026/", 1)):
            expected = [
                (v["Key"], bool(v["IsLatest"]), int(v["Size"]))
                for answer in client.get_paginator("list_object_versions").paginate(
                    Bucket=store.bucket, Prefix=prefix,
                    PaginationConfig={"PageSize": page} if page else {})
                for v in answer.get("Versions", [])]
            assert list(getter.list_versions(prefix, page)) == expected, (prefix, page)
        getter.close()
        raw = store.list("audit/")
        store._static_credentials = None  # type: ignore[attr-defined]
        assert store.list("audit/") == raw
    assert ("audit/q", 14, 2) in [(i.key, i.size, i.versions) for i in raw]
    assert "audit/2026/y" not in {i.key for i in raw}


def test_url_encoded_listing_is_decoded_and_followed() -> None:
    """A store that honours encoding-type=url (S3, MinIO) sends keys and markers URL-encoded,
    a space as '+': they come out decoded, and the next page is asked from the decoded marker
    (a loopback server answering S3's documents)."""
    import http.server
    import threading
    from urllib.parse import parse_qs, urlsplit

    asked: list[dict[str, list[str]]] = []
    pages = [
        "<IsTruncated>true</IsTruncated><NextKeyMarker>audit/a+b%2Bc%25</NextKeyMarker>"
        "<NextVersionIdMarker>v+1</NextVersionIdMarker>"
        "<Version><Key>audit/a+b%2Bc%25</Key><VersionId>v+1</VersionId>"
        "<IsLatest>true</IsLatest><Size>7</Size></Version>",
        "<IsTruncated>false</IsTruncated>"
        "<Version><Key>audit/%C3%A9t%C3%A9</Key><VersionId>v2</VersionId>"
        "<IsLatest>false</IsLatest><Size>3</Size></Version>"
        "<DeleteMarker><Key>audit/gone</Key><VersionId>v3</VersionId>"
        "<IsLatest>true</IsLatest></DeleteMarker>",
    ]

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self) -> None:
            asked.append(parse_qs(urlsplit(self.path).query, keep_blank_values=True))
            body = ('<?xml version="1.0" encoding="UTF-8"?><ListVersionsResult '
                    'xmlns="http://s3.amazonaws.com/doc/2006-03-01/"><Name>b</Name>'
                    f"<EncodingType>url</EncodingType>{pages[len(asked) - 1]}"
                    "</ListVersionsResult>").encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        getter = ObjectGetter(f"http://127.0.0.1:{server.server_address[1]}", "b",
                              access_key="a", secret_key="s")
        listed = list(getter.list_versions("audit/", 1))
        getter.close()
    finally:
        server.shutdown()
        server.server_close()
    assert listed == [("audit/a b+c%", True, 7), ("audit/été", False, 3)]
    assert asked[0]["encoding-type"] == ["url"]
    assert asked[1]["key-marker"] == ["audit/a b+c%"]
    assert asked[1]["version-id-marker"] == ["v+1"]


class _Scripted:
    """A loopback HTTP server that answers each GET as ``answer(connection, n, path)`` says:
    the bytes to send, or None to close the connection there without answering. It records
    how many requests each connection had sent when its first answer was written."""

    def __init__(self, answer: Any, *, first_delay: float = 0.0) -> None:
        import socket
        import threading

        self.answer = answer
        self.first_delay = first_delay
        self.ahead: list[int] = []
        self.paths: list[list[str]] = []
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        connection = 0
        while True:
            try:
                sock, _ = self.listener.accept()
            except OSError:
                return
            with sock, contextlib.suppress(OSError):  # a client's reset ends its connection
                self._one(sock, connection)
            connection += 1

    def _one(self, sock: Any, connection: int) -> None:
        buf = b""
        paths: list[str] = []
        self.paths.append(paths)
        answered = 0
        while True:
            while b"\r\n\r\n" not in buf:
                if answered == 0 and self.first_delay and paths:
                    break
                data = sock.recv(65536)
                if not data:
                    return
                buf += data
            if b"\r\n\r\n" in buf:
                head, buf = buf.split(b"\r\n\r\n", 1)
                paths.append(head.split(b" ")[1].decode())
                if answered == 0 and self.first_delay:
                    time.sleep(self.first_delay)
                    sock.settimeout(0.05)
                    try:
                        while data := sock.recv(65536):
                            buf += data
                    except OSError:
                        pass
                    sock.settimeout(None)
                    self.ahead.append(1 + buf.count(b"\r\n\r\n"))
            reply = self.answer(connection, answered, paths[answered])
            if reply is None:  # an orderly close: the answers sent are not reset away
                self._drain(sock)
                return
            try:
                sock.sendall(reply)
            except OSError:
                return
            answered += 1
            if (b"Connection: close" in reply or b"\r\n\r\n" not in reply
                    or reply.startswith(b"HTTP/1.0")):  # the connection ends here
                self._drain(sock)
                return

    @staticmethod
    def _drain(sock: Any) -> None:
        import socket

        sock.shutdown(socket.SHUT_WR)
        sock.settimeout(5)
        try:
            while sock.recv(65536):
                pass
        except OSError:
            pass

    def close(self) -> None:
        import socket

        with contextlib.suppress(OSError):
            self.listener.shutdown(socket.SHUT_RDWR)  # wakes the accept
        self.listener.close()
        self.thread.join(timeout=5)

    def getter(self, **kw: Any) -> ObjectGetter:
        return ObjectGetter(f"http://127.0.0.1:{self.port}", "b", access_key="a",
                            secret_key="s", timeout=10, **kw)


def _fetch_all(answer: Any, keys: list[str], *, window: int = 8, first_delay: float = 0.0
               ) -> tuple[_Scripted, list[tuple[str, Any]]]:
    """Every key through ``get_many`` from a scripted server (closed after), and the server."""
    server = _Scripted(answer, first_delay=first_delay)
    try:
        return server, list(server.getter(window=window).get_many(keys))
    finally:
        server.close()


def _ok(body: bytes, *extra: str) -> bytes:
    head = "".join(f"{h}\r\n" for h in extra)
    return f"HTTP/1.1 200 OK\r\nContent-Length: {len(body)}\r\n{head}\r\n".encode() + body


def test_get_many_pipelines_and_reads_every_form_of_answer() -> None:
    """Up to ``window`` requests are on their way before the first answer is read; answers
    with a length, in chunks (an extension, a trailer), after an interim 100, and an S3 error
    each come back as their key's, in order."""
    def answer(_c: int, _n: int, path: str) -> bytes:
        key = path.rsplit("/", 1)[1]
        body = f"object {key} ".encode() * 50
        if key.endswith("3"):
            half = len(body) // 2
            return (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
                    + f"{half:x};ext=1\r\n".encode() + body[:half] + b"\r\n"
                    + f"{len(body) - half:X}\r\n".encode() + body[half:] + b"\r\n"
                    + b"0\r\nx-trailer: y\r\n\r\n")
        if key.endswith("5"):
            return b"HTTP/1.1 100 Continue\r\n\r\n" + _ok(body, "ETag: \"e\"")
        if key.endswith("7"):
            error = b"<Error><Code>NoSuchKey</Code></Error>"
            return (f"HTTP/1.1 404 Not Found\r\nContent-Length: {len(error)}\r\n\r\n".encode()
                    + error)
        return _ok(body)

    keys = [f"audit/k{i}" for i in range(20)]
    server, got = _fetch_all(answer, keys, window=8, first_delay=0.3)
    assert [k for k, _ in got] == keys
    for key, value in got:
        if key.endswith("7"):
            assert isinstance(value, OSError)
            assert "HTTP 404 NoSuchKey" in str(value)
        else:
            assert value == f"object {key.rsplit('/', 1)[1]} ".encode() * 50, key
    assert server.ahead == [8]  # eight requests sent before the first answer
    assert len(server.paths) == 1  # one connection


def test_get_many_sends_unanswered_requests_again_on_a_new_connection() -> None:
    """A connection dropped with requests unanswered, and one closed by an answer
    (``Connection: close``): the requests not answered go again on a new connection, and
    every key comes back once, in order."""
    def answer(c: int, n: int, path: str) -> bytes | None:
        if c == 0 and n == 3:
            return None  # dropped with requests pending
        close = ("Connection: close",) if c == 1 and n == 1 else ()
        return _ok(path.encode(), *close)

    keys = [f"k{i}" for i in range(12)]
    server, got = _fetch_all(answer, keys, window=4)
    assert got == [(k, f"/b/{k}".encode()) for k in keys]
    assert len(server.paths) == 3
    assert server.paths[1][0] == "/b/k3"  # the first unanswered request, sent again
    assert server.paths[2][0] == "/b/k5"


@pytest.mark.parametrize("reply", [None, b"garbage\r\n\r\n", b"HTTP/1.1 200 OK\r\nContent-L"])
def test_get_many_raises_when_the_new_connection_fails_too(reply: bytes | None) -> None:
    """A server that drops the connection, or answers what is not HTTP, on the new connection
    too: get_many raises (a ConnectionError) instead of yielding anything."""
    from caracal_restore.environments.s3get import ProtocolError

    server = _Scripted(lambda _c, _n, _p: reply)
    try:
        with pytest.raises(ProtocolError):
            list(server.getter().get_many(["a", "b"]))
    finally:
        server.close()
    assert len(server.paths) == 2


def test_get_many_reads_an_answer_without_a_length_to_the_end_of_its_connection() -> None:
    """An HTTP/1.0 answer without Content-Length ends with its connection: its body is all
    that came, and the requests not answered go again on a new connection."""
    def answer(c: int, n: int, path: str) -> bytes:
        if c == 0 and n == 1:
            return b"HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\n\r\n" + path.encode() * 3
        return _ok(path.encode())

    keys = [f"k{i}" for i in range(5)]
    server, got = _fetch_all(answer, keys, window=3)
    assert got == [(k, f"/b/{k}".encode() * (3 if k == "k1" else 1)) for k in keys]
    assert [p[0] for p in server.paths] == ["/b/k0", "/b/k2"]
