"""The SigV4 header of the many-GET client equals botocore's for the same request and time, and
its version listing equals boto3's on the embedded object store."""

from __future__ import annotations

import datetime as dt
import os
import time

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
