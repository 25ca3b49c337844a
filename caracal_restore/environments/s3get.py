"""Many GetObject requests, and ListObjectVersions, over one kept-alive HTTP connection,
signed with SigV4 here.

Reading an audit export archive means one GetObject per exported hour: ~10 000 small objects
for a year. boto3 spends about a millisecond of client CPU per call on work a plain GET does
not need (request models, parameter validation, response parsing, checksum setup); this client
sends the same path-style ``GET /<bucket>/<key>`` with an AWS Signature Version 4 header
(unsigned payload, as S3 allows for GET) over one connection, so the archive read is bound by
the server. Listing the archive's versions through botocore cost ~1.6 s of CPU per 10 000
(its XML parser, a regular expression over every page, a date parser per version); here the
``ListVersionsResult`` pages are parsed with ElementTree, keeping key, size and latest flag.
Only for stores reached at an explicit endpoint with static credentials (the embedded server,
MinIO, an S3-compatible URL); anything else goes through boto3.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import http.client
import xml.etree.ElementTree as ET
from collections.abc import Iterable, Iterator
from urllib.parse import quote, unquote_plus, urlsplit

ALGORITHM = "AWS4-HMAC-SHA256"
UNSIGNED = "UNSIGNED-PAYLOAD"
_SIGNED_HEADERS = "host;x-amz-content-sha256;x-amz-date"


class ObjectGetError(OSError):
    """A GetObject answered with something other than 200 (the status and S3 error code)."""


def _hmac(key: bytes, text: str) -> bytes:
    return hmac.new(key, text.encode(), hashlib.sha256).digest()


def signing_key(secret_key: str, day: str, region: str, service: str = "s3") -> bytes:
    """The SigV4 signing key of one day, region and service."""
    return _hmac(_hmac(_hmac(_hmac(("AWS4" + secret_key).encode(), day), region), service),
                 "aws4_request")


def canonical_query(params: Iterable[tuple[str, str]]) -> str:
    """SigV4's canonical query string (names and values URI-encoded, sorted by name); the
    request carries the same text."""
    return "&".join(sorted(f"{quote(k, safe='-_.~')}={quote(v, safe='-_.~')}"
                           for k, v in params))


def authorization(method: str, host: str, path: str, amz_date: str, *, access_key: str,
                  key: bytes, region: str, service: str = "s3", query: str = "") -> str:
    """The ``Authorization`` header of a request with an unsigned payload.

    ``path`` is already URI-encoded and ``query`` is ``canonical_query`` of the request's
    parameters (empty: none); ``key`` is ``signing_key`` of ``amz_date``'s day.
    """
    canonical = "\n".join((method, path, query, f"host:{host}",
                           f"x-amz-content-sha256:{UNSIGNED}", f"x-amz-date:{amz_date}", "",
                           _SIGNED_HEADERS, UNSIGNED))
    scope = f"{amz_date[:8]}/{region}/{service}/aws4_request"
    to_sign = "\n".join((ALGORITHM, amz_date, scope,
                         hashlib.sha256(canonical.encode()).hexdigest()))
    signature = hmac.new(key, to_sign.encode(), hashlib.sha256).hexdigest()
    return (f"{ALGORITHM} Credential={access_key}/{scope}, SignedHeaders={_SIGNED_HEADERS}, "
            f"Signature={signature}")


class ObjectGetter:
    """GetObject of many keys of one bucket over one connection (reconnects once on a drop)."""

    def __init__(self, endpoint_url: str, bucket: str, *, access_key: str, secret_key: str,
                 region: str = "us-east-1", timeout: float = 60.0) -> None:
        parts = urlsplit(endpoint_url)
        if parts.scheme not in {"http", "https"} or not parts.hostname:
            raise ValueError(f"endpoint {endpoint_url!r} is not an http(s) URL")
        self._https = parts.scheme == "https"
        self._host = parts.hostname
        self._port = parts.port or (443 if self._https else 80)
        default = (self._port == 443) if self._https else (self._port == 80)
        self._host_header = parts.netloc if not default else self._host
        self._prefix = parts.path.rstrip("/")
        self.bucket = bucket
        self._access_key = access_key
        self._secret_key = secret_key
        self._region = region
        self._timeout = timeout
        self._day = ""
        self._key = b""
        self._conn: http.client.HTTPConnection | None = None

    def __repr__(self) -> str:
        return f"ObjectGetter({self._host}:{self._port}, bucket={self.bucket})"

    def _connection(self) -> http.client.HTTPConnection:
        if self._conn is None:
            kind = http.client.HTTPSConnection if self._https else http.client.HTTPConnection
            self._conn = kind(self._host, self._port, timeout=self._timeout)
        return self._conn

    def close(self) -> None:
        """Close the connection."""
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def _get(self, path: str, query: str = "") -> tuple[int, bytes]:
        """Status and body of a signed GET of ``path`` (URI-encoded) with a canonical query."""
        now = dt.datetime.now(dt.UTC)
        amz_date = now.strftime("%Y%m%dT%H%M%SZ")
        if amz_date[:8] != self._day:
            self._day = amz_date[:8]
            self._key = signing_key(self._secret_key, self._day, self._region)
        headers = {
            "Host": self._host_header, "x-amz-date": amz_date, "x-amz-content-sha256": UNSIGNED,
            "Authorization": authorization("GET", self._host_header, path, amz_date,
                                           access_key=self._access_key, key=self._key,
                                           region=self._region, query=query),
        }
        target = f"{path}?{query}" if query else path
        for attempt in (1, 2):
            conn = self._connection()
            try:
                conn.request("GET", target, headers=headers)
                response = conn.getresponse()
                body = response.read()
            except (http.client.HTTPException, ConnectionError):
                self.close()
                if attempt == 2:
                    raise
                continue
            return response.status, body
        raise AssertionError("unreachable")

    def get(self, key: str) -> bytes:
        """One object's bytes (ObjectGetError for a non-200 answer)."""
        path = f"{self._prefix}/{quote(self.bucket, safe='')}/{quote(key, safe='/~')}"
        status, body = self._get(path)
        if status != 200:
            raise ObjectGetError(f"GetObject {key}: HTTP {status} {_error_code(body)}")
        return body

    def list_versions(self, prefix: str = "", page_size: int | None = None
                      ) -> Iterator[tuple[str, bool, int]]:
        """``(key, is_latest, size)`` of every version under ``prefix`` (delete markers
        left out), page after page (ObjectGetError for a non-200 answer).

        Keys are asked URL-encoded and decoded when the answer says so (as botocore does, a
        space sent as ``+``: a key may hold characters XML cannot carry); a store that ignores
        the request sends them as XML text.
        """
        path = f"{self._prefix}/{quote(self.bucket, safe='')}"
        params = [("versions", ""), ("encoding-type", "url"), ("prefix", prefix)]
        if page_size is not None:
            params.append(("max-keys", str(page_size)))
        markers: list[tuple[str, str]] = []
        while True:
            status, body = self._get(path, canonical_query(params + markers))
            if status != 200:
                raise ObjectGetError(f"ListObjectVersions {self.bucket}/{prefix}: HTTP "
                                     f"{status} {_error_code(body)}")
            root = ET.fromstring(body)
            ns = root.tag[:root.tag.index("}") + 1] if root.tag.startswith("{") else ""
            encoded = root.findtext(f"{ns}EncodingType") == "url"

            def text(node: ET.Element, name: str, *, key: bool = False,
                     _ns: str = ns, _encoded: bool = encoded) -> str:
                value = node.findtext(f"{_ns}{name}") or ""
                return unquote_plus(value) if key and _encoded else value

            for version in root.iterfind(f"{ns}Version"):
                yield (text(version, "Key", key=True), text(version, "IsLatest") == "true",
                       int(text(version, "Size") or 0))
            if root.findtext(f"{ns}IsTruncated") != "true":
                return
            next_key = text(root, "NextKeyMarker", key=True)
            next_version = text(root, "NextVersionIdMarker")
            if not next_key:
                raise ObjectGetError(f"ListObjectVersions {self.bucket}/{prefix}: a truncated "
                                     "page without NextKeyMarker")
            markers = [("key-marker", next_key)]
            if next_version:
                markers.append(("version-id-marker", next_version))

    def get_many(self, keys: Iterable[str]) -> Iterator[tuple[str, bytes | ObjectGetError]]:
        """``(key, bytes)`` per key in order; a failed key yields its error and the rest go on."""
        try:
            for key in keys:
                try:
                    yield key, self.get(key)
                except ObjectGetError as exc:
                    yield key, exc
        finally:
            self.close()


def _error_code(body: bytes) -> str:
    """The ``<Code>`` of an S3 error document (empty when there is none)."""
    start = body.find(b"<Code>")
    end = body.find(b"</Code>", start)
    return body[start + 6:end].decode("utf-8", "replace") if 0 <= start < end else ""
