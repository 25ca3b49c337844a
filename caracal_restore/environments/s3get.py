"""Many GetObject requests, and ListObjectVersions, over one kept-alive HTTP connection,
signed with SigV4 here.

Reading an audit export archive means one GetObject per exported hour: ~10 000 small objects
for a year. boto3 spends about a millisecond of client CPU per call on work a plain GET does
not need (request models, parameter validation, response parsing, checksum setup); this client
sends the same path-style ``GET /<bucket>/<key>`` with an AWS Signature Version 4 header
(unsigned payload, as S3 allows for GET) over one connection, so the archive read is bound by
the server. The GETs of ``get_many`` are pipelined (HTTP/1.1: up to ``window`` requests are
written before their answers are read, and answered in order), so the server prepares the next
objects while the caller parses the last, with no thread of ours; answers are read by a small
HTTP/1.1 reader here (``http.client`` parses each header block with the ``email`` package).
Listing the archive's versions through botocore cost ~1.6 s of CPU per 10 000 (its XML parser,
a regular expression over every page, a date parser per version); here the
``ListVersionsResult`` pages are parsed with ElementTree, keeping key, size and latest flag.
Only for stores reached at an explicit endpoint with static credentials (the embedded server,
MinIO, an S3-compatible URL); anything else goes through boto3.
"""

from __future__ import annotations

import collections
import datetime as dt
import hashlib
import hmac
import socket
import ssl
import xml.etree.ElementTree as ET
from collections.abc import Iterable, Iterator
from urllib.parse import quote, unquote_plus, urlsplit

ALGORITHM = "AWS4-HMAC-SHA256"
UNSIGNED = "UNSIGNED-PAYLOAD"
_SIGNED_HEADERS = "host;x-amz-content-sha256;x-amz-date"


#: Requests of ``get_many`` written ahead of the answer being read.
WINDOW = 8
#: Longest header block of an answer accepted.
_MAX_HEAD = 1 << 16


class ObjectGetError(OSError):
    """A GetObject answered with something other than 200 (the status and S3 error code)."""


class ProtocolError(ConnectionError):
    """The connection ended, or sent something that is not an HTTP/1.x answer, before an
    answer was complete (the connection cannot be used again)."""


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
    """GetObject of many keys of one bucket over one connection (reconnects on a drop)."""

    def __init__(self, endpoint_url: str, bucket: str, *, access_key: str, secret_key: str,
                 region: str = "us-east-1", timeout: float = 60.0, window: int = WINDOW) -> None:
        parts = urlsplit(endpoint_url)
        if parts.scheme not in {"http", "https"} or not parts.hostname:
            raise ValueError(f"endpoint {endpoint_url!r} is not an http(s) URL")
        if window < 1:
            raise ValueError(f"window must be at least 1, not {window}")
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
        self._window = window
        self._day = ""
        self._key = b""
        self._conn: _Connection | None = None

    def __repr__(self) -> str:
        return f"ObjectGetter({self._host}:{self._port}, bucket={self.bucket})"

    def _connection(self) -> _Connection:
        if self._conn is None:
            self._conn = _Connection(self._host, self._port, tls=self._https,
                                     timeout=self._timeout)
        return self._conn

    def close(self) -> None:
        """Close the connection."""
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def _request(self, path: str, query: str = "") -> bytes:
        """A signed GET of ``path`` (URI-encoded) with a canonical query, as sent."""
        amz_date = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
        if amz_date[:8] != self._day:
            self._day = amz_date[:8]
            self._key = signing_key(self._secret_key, self._day, self._region)
        signed = authorization("GET", self._host_header, path, amz_date,
                               access_key=self._access_key, key=self._key,
                               region=self._region, query=query)
        target = f"{path}?{query}" if query else path
        return (f"GET {target} HTTP/1.1\r\nHost: {self._host_header}\r\n"
                f"x-amz-date: {amz_date}\r\nx-amz-content-sha256: {UNSIGNED}\r\n"
                f"Authorization: {signed}\r\n\r\n").encode()

    def _get(self, path: str, query: str = "") -> tuple[int, bytes]:
        """Status and body of a signed GET of ``path`` (URI-encoded) with a canonical query."""
        [(_, status, body)] = list(self._exchange([("", self._request(path, query))]))
        return status, body

    def _object_path(self, key: str) -> str:
        return f"{self._prefix}/{quote(self.bucket, safe='')}/{quote(key, safe='/~')}"

    def get(self, key: str) -> bytes:
        """One object's bytes (ObjectGetError for a non-200 answer)."""
        status, body = self._get(self._object_path(key))
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
        """``(key, bytes)`` per key in order; a failed key yields its error and the rest go on.

        The GETs are pipelined (``_exchange``): up to ``window`` are on their way at once.
        """
        try:
            for key, status, body in self._exchange(
                    (key, self._request(self._object_path(key))) for key in keys):
                if status == 200:
                    yield key, body
                else:
                    yield key, ObjectGetError(f"GetObject {key}: HTTP {status} "
                                              f"{_error_code(body)}")
        finally:
            self.close()

    def _exchange(self, requests: Iterable[tuple[str, bytes]]
                  ) -> Iterator[tuple[str, int, bytes]]:
        """``(name, status, body)`` of each ``(name, request)``, in order, on the connection.

        Up to ``window`` requests are written before the first of their answers is read
        (HTTP/1.1 pipelining; the answers come in the order of the requests). When the
        connection drops, or an answer closes it, the requests not yet answered are sent
        again on a new one (a GET changes nothing); a drop before any answer on the new
        connection raises. The connection stays open for the next exchange unless one was
        left with answers unread.
        """
        requests = iter(requests)
        sent: collections.deque[tuple[str, bytes]] = collections.deque()  # not yet answered
        again: collections.deque[tuple[str, bytes]] = collections.deque()  # to send again
        more = True
        drops = 0
        try:
            while True:
                batch: list[bytes] = []
                while len(sent) < self._window:
                    if again:
                        item = again.popleft()
                    elif more and (offered := next(requests, None)) is not None:
                        item = offered
                    else:
                        more = False
                        break
                    sent.append(item)
                    batch.append(item[1])
                if not sent:
                    return
                try:
                    conn = self._connection()
                    if batch:
                        conn.send(b"".join(batch))
                    status, body, keep = conn.answer()
                except ConnectionError:
                    self.close()
                    drops += 1
                    if drops > 1:
                        raise
                    again.extendleft(reversed(sent))
                    sent.clear()
                    continue
                drops = 0
                name = sent.popleft()[0]
                if not keep:  # the server closes after this answer: the rest go again
                    self.close()
                    again.extendleft(reversed(sent))
                    sent.clear()
                yield name, status, body
        finally:
            if sent:  # stopped with answers unread: the connection cannot be used again
                self.close()


class _Connection:
    """One HTTP/1.1 connection: requests written as given, answers read in order.

    Reads what an S3 GET can be answered with: a status line, headers, and a body of a
    ``Content-Length``, in chunks, or up to the end of the connection; interim (1xx) answers
    are passed over. Anything else raises ``ProtocolError``.
    """

    def __init__(self, host: str, port: int, *, tls: bool, timeout: float) -> None:
        sock = socket.create_connection((host, port), timeout=timeout)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if tls:
            sock = ssl.create_default_context().wrap_socket(sock, server_hostname=host)
        self._sock = sock
        self._buf = bytearray()
        self._pos = 0

    def close(self) -> None:
        self._sock.close()

    def send(self, data: bytes) -> None:
        self._sock.sendall(data)

    def answer(self) -> tuple[int, bytes, bool]:
        """The next answer: status, body, and whether the connection may be used again."""
        while True:
            status, version, fields = self._head()
            if 100 <= status < 200:
                continue
            connection = {t.strip().lower() for t in fields.get(b"connection", b"").split(b",")}
            keep = (b"close" not in connection if version == b"HTTP/1.1"
                    else b"keep-alive" in connection)
            coding = fields.get(b"transfer-encoding", b"").strip().lower()
            if status in (204, 304):
                return status, b"", keep
            if coding.endswith(b"chunked"):
                return status, self._chunked(), keep
            if coding:
                raise ProtocolError(f"unsupported transfer coding {coding!r}")
            length = fields.get(b"content-length")
            if length is None:
                return status, self._rest(), False
            if not length.strip().isdigit():
                raise ProtocolError(f"bad Content-Length {length[:40]!r}")
            return status, self._take(int(length)), keep

    def _head(self) -> tuple[int, bytes, dict[bytes, bytes]]:
        """Status, HTTP version and header fields (lower-case names) of the next answer."""
        while (end := self._buf.find(b"\r\n\r\n", self._pos)) < 0:
            if len(self._buf) - self._pos > _MAX_HEAD:
                raise ProtocolError("an answer's header block is too long")
            self._receive()
        lines = bytes(self._buf[self._pos:end]).split(b"\r\n")
        self._pos = end + 4
        version, _, rest = lines[0].partition(b" ")
        code = rest[:3]
        if version not in (b"HTTP/1.1", b"HTTP/1.0") or not code.isdigit():
            raise ProtocolError(f"not an HTTP/1.x status line: {lines[0][:60]!r}")
        fields: dict[bytes, bytes] = {}
        for line in lines[1:]:
            name, colon, value = line.partition(b":")
            if not colon:
                raise ProtocolError(f"not a header field: {line[:60]!r}")
            name = name.strip().lower()
            value = value.strip()
            if name == b"content-length" and fields.get(name, value) != value:
                raise ProtocolError("conflicting Content-Length fields")
            fields[name] = fields[name] + b", " + value if (
                name in fields and name != b"content-length") else value
        return int(code), version, fields

    def _receive(self) -> None:
        """Append what the connection has to the buffer (ProtocolError at its end)."""
        if self._pos and self._pos == len(self._buf):
            self._buf.clear()
            self._pos = 0
        elif self._pos > 1 << 20:
            del self._buf[:self._pos]
            self._pos = 0
        data = self._sock.recv(1 << 18)
        if not data:
            raise ProtocolError("the server closed the connection before the answer ended")
        self._buf += data

    def _take(self, n: int) -> bytes:
        """The next ``n`` bytes."""
        held = len(self._buf) - self._pos
        if held >= n:
            data = bytes(self._buf[self._pos:self._pos + n])
            self._pos += n
            return data
        out = bytearray(n)
        out[:held] = self._buf[self._pos:]
        self._buf.clear()
        self._pos = 0
        view = memoryview(out)
        got = held
        while got < n:
            count = self._sock.recv_into(view[got:])
            if not count:
                raise ProtocolError("the server closed the connection before the answer ended")
            got += count
        del view
        return bytes(out)

    def _line(self) -> bytes:
        while (end := self._buf.find(b"\r\n", self._pos)) < 0:
            if len(self._buf) - self._pos > _MAX_HEAD:
                raise ProtocolError("a chunk line is too long")
            self._receive()
        line = bytes(self._buf[self._pos:end])
        self._pos = end + 2
        return line

    def _chunked(self) -> bytes:
        """A chunked body, its trailer fields read and dropped."""
        parts: list[bytes] = []
        while True:
            size = self._line().split(b";", 1)[0].strip()
            try:
                n = int(size, 16)
            except ValueError:
                raise ProtocolError(f"bad chunk size {size[:20]!r}") from None
            if n == 0:
                while self._line():
                    pass
                return b"".join(parts)
            parts.append(self._take(n))
            if self._line():
                raise ProtocolError("a chunk does not end with CRLF")

    def _rest(self) -> bytes:
        """Everything up to the end of the connection (an answer without a length)."""
        parts = [bytes(self._buf[self._pos:])]
        self._buf.clear()
        self._pos = 0
        while data := self._sock.recv(1 << 18):
            parts.append(data)
        return b"".join(parts)


def _error_code(body: bytes) -> str:
    """The ``<Code>`` of an S3 error document (empty when there is none)."""
    start = body.find(b"<Code>")
    end = body.find(b"</Code>", start)
    return body[start + 6:end].decode("utf-8", "replace") if 0 <= start < end else ""
