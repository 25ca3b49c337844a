"""Object stores for audit exports and bundles: an S3 endpoint (embedded moto server, MinIO in
docker, or a real S3-compatible service) or a plain directory.

Before any retention or immutability verdict the suite probes what the substrate *enforces*
(``probe_immutability``); an emulator that does not enforce Object Lock must never make an
immutability check pass.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import io
import math
import os
import re
import secrets
import shutil
import string
import tempfile
import uuid
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, Protocol

from caracal_restore.environments.base import LOOPBACK, free_port, is_loopback, supervised
from caracal_restore.environments.s3get import ObjectGetter
from caracal_restore.errors import EnvironmentNotReady, NotIsolated
from caracal_restore.redact import REDACTOR
from caracal_restore.waiting import ready, until

PROVIDERS = ("embedded", "docker", "external", "dir")


@dataclasses.dataclass(frozen=True)
class ObjectInfo:
    """One key in a store: its size and how many versions it has (1 without versioning)."""

    key: str
    size: int
    versions: int = 1


@dataclasses.dataclass(frozen=True)
class ImmutabilityProbe:
    """What a substrate was observed to enforce (each field is an observation, not a setting)."""

    substrate: str
    object_lock_configurable: bool
    compliance_shortening_refused: bool
    locked_version_delete_refused: bool
    notes: tuple[str, ...] = ()

    @property
    def enforces_object_lock(self) -> bool:
        """True only when COMPLIANCE retention was observed to resist shortening and deletion."""
        return (
            self.object_lock_configurable
            and self.compliance_shortening_refused
            and self.locked_version_delete_refused
        )


class ObjectStore(Protocol):
    """The operations the suite needs from an object store."""

    provider: str
    substrate: str
    bucket: str

    @property
    def reads_ahead(self) -> bool:
        """True when ``get_many`` already has the next objects on their way while the caller
        parses one (pipelined GETs): a reader needs no thread of its own fetching ahead."""
        ...

    def put(self, key: str, data: bytes, *, if_none_match: bool = False) -> bool: ...
    def get(self, key: str) -> bytes: ...
    def get_many(self, keys: Iterable[str]) -> Iterator[tuple[str, bytes | OSError]]: ...
    def list(self, prefix: str = "") -> list[ObjectInfo]: ...
    def probe_immutability(self) -> ImmutabilityProbe: ...
    def bucket_lock_configuration(self) -> dict[str, Any] | None: ...


# ---------------------------------------------------------------------------------- S3


#: Versions asked for per ListObjectVersions page of the embedded store (see ``S3Store.list``).
EMBEDDED_LIST_PAGE = 50_000


class S3Store:
    """An S3 bucket reached with boto3 (moto server, MinIO, or real S3)."""

    def __init__(
        self,
        provider: str,
        substrate: str,
        endpoint_url: str | None,
        bucket: str,
        *,
        access_key: str | None = None,
        secret_key: str | None = None,
        region: str = "us-east-1",
    ) -> None:
        import boto3
        from botocore.config import Config

        self.provider = provider
        self.substrate = substrate
        self.endpoint_url = endpoint_url
        self.bucket = bucket
        if provider != "embedded":  # moto's fixed dummy credentials are not secrets
            REDACTOR.add(secret_key or "")
        self._region = region
        self._static_credentials = (access_key, secret_key) if access_key and secret_key else None
        self._client = boto3.client(
            "s3",
            endpoint_url=endpoint_url,
            aws_access_key_id=access_key,
            aws_secret_access_key=secret_key,
            region_name=region,
            config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 2}),
        )

    @property
    def client(self) -> Any:
        """The boto3 client (for checks that read bucket configuration)."""
        return self._client

    def __repr__(self) -> str:
        return f"S3Store({self.provider}, {self.endpoint_url or 'aws'}, bucket={self.bucket})"

    @property
    def reads_ahead(self) -> bool:
        """``get_many`` pipelines its GETs when it goes through ``s3get`` (``_direct``: an
        explicit endpoint with static credentials); through boto3 it reads one at a time."""
        return self._direct() is not None

    def create_bucket(
        self,
        *,
        object_lock: bool = False,
        versioning: bool = True,
        compliance_days: int | None = None,
    ) -> None:
        """Create the bucket (Object Lock implies versioning; ``compliance_days`` sets a default
        COMPLIANCE retention for every new object version)."""
        kwargs: dict[str, Any] = {"Bucket": self.bucket}
        if object_lock:
            kwargs["ObjectLockEnabledForBucket"] = True
        self._client.create_bucket(**kwargs)
        if object_lock and compliance_days:
            self._client.put_object_lock_configuration(
                Bucket=self.bucket,
                ObjectLockConfiguration={
                    "ObjectLockEnabled": "Enabled",
                    "Rule": {"DefaultRetention": {"Mode": "COMPLIANCE", "Days": compliance_days}},
                },
            )
        if versioning and not object_lock:
            self._client.put_bucket_versioning(
                Bucket=self.bucket, VersioningConfiguration={"Status": "Enabled"}
            )

    def put(self, key: str, data: bytes, *, if_none_match: bool = False) -> bool:
        """Write an object; with ``if_none_match`` an existing key is left alone (returns False)."""
        from botocore.exceptions import ClientError

        kwargs: dict[str, Any] = {
            "Bucket": self.bucket,
            "Key": key,
            "Body": data,
            "ContentType": "application/octet-stream",
        }
        if if_none_match:
            kwargs["IfNoneMatch"] = "*"
        try:
            self._client.put_object(**kwargs)
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in {"PreconditionFailed", "412"}:
                return False
            raise
        return True

    def get(self, key: str) -> bytes:
        body = self._client.get_object(Bucket=self.bucket, Key=key)["Body"]
        return bytes(body.read())

    def _direct(self) -> ObjectGetter | None:
        """A one-connection client of ``s3get`` for this bucket, when the store is reached at an
        explicit endpoint with static credentials (None: requests go through boto3)."""
        if not (self.endpoint_url and self._static_credentials):
            return None
        access_key, secret_key = self._static_credentials
        return ObjectGetter(self.endpoint_url, self.bucket, access_key=access_key,
                            secret_key=secret_key, region=self._region)

    def get_many(self, keys: Iterable[str]) -> Iterator[tuple[str, bytes | OSError]]:
        """``(key, bytes)`` per key, in order; a key that cannot be read yields its error.

        At an explicit endpoint with static credentials the GETs share one kept-alive
        connection, pipelined (``s3get``); otherwise each goes through boto3.
        """
        getter = self._direct()
        if getter is not None:  # pipelined: see reads_ahead
            yield from getter.get_many(keys)
            return
        from botocore.exceptions import BotoCoreError, ClientError

        for key in keys:
            try:
                yield key, self.get(key)
            except (ClientError, BotoCoreError) as exc:
                yield key, OSError(f"GetObject {key}: {exc}")

    def list(self, prefix: str = "") -> list[ObjectInfo]:
        """The objects under ``prefix`` whose latest version is not a delete marker, with that
        version's size and the number of versions of the key, in key order.

        At an explicit endpoint with static credentials the pages are fetched and parsed by
        ``s3get`` (one connection, ElementTree); otherwise through boto3's paginator.
        """
        counts: dict[str, int] = {}
        sizes: dict[str, int] = {}
        # S3 and MinIO send at most 1 000 versions a page whatever is asked. The embedded moto
        # sends what is asked, and builds and sorts every version of the bucket for each page:
        # it is asked for large pages (10 000 exports: 10 such passes became 1).
        page = EMBEDDED_LIST_PAGE if self.provider == "embedded" else None
        for key, latest, size in self._versions(prefix, page):
            counts[key] = counts.get(key, 0) + 1
            if latest:
                sizes[key] = size
        return [ObjectInfo(k, sizes.get(k, 0), counts[k]) for k in sorted(counts) if k in sizes]

    def _versions(self, prefix: str, page: int | None) -> Iterator[tuple[str, bool, int]]:
        """``(key, is_latest, size)`` of every version under ``prefix`` (no delete markers)."""
        lister = self._direct()
        if lister is not None:
            try:
                yield from lister.list_versions(prefix, page)
            finally:
                lister.close()
            return
        paginator = self._client.get_paginator("list_object_versions")
        paging = {"PageSize": page} if page is not None else {}
        for answer in paginator.paginate(Bucket=self.bucket, Prefix=prefix,
                                         PaginationConfig=paging):
            for version in answer.get("Versions", []):
                yield version["Key"], bool(version.get("IsLatest")), int(version["Size"])

    def bucket_lock_configuration(self) -> dict[str, Any] | None:
        """The bucket's Object Lock configuration, or None when it has none."""
        from botocore.exceptions import ClientError

        try:
            conf = self._client.get_object_lock_configuration(Bucket=self.bucket)
        except ClientError:
            return None
        return dict(conf.get("ObjectLockConfiguration") or {}) or None

    def probe_immutability(self) -> ImmutabilityProbe:
        """Observe, on a scratch bucket, whether COMPLIANCE retention is really enforced."""
        from botocore.exceptions import ClientError

        probe_bucket = f"caracal-probe-{uuid.uuid4().hex[:12]}"
        notes: list[str] = []
        s3 = self._client
        try:
            s3.create_bucket(Bucket=probe_bucket, ObjectLockEnabledForBucket=True)
        except ClientError as exc:
            return ImmutabilityProbe(self.substrate, False, False, False,
                                     (f"object-lock bucket refused: {exc}",))
        until_date = dt.datetime.now(dt.UTC) + dt.timedelta(days=1)
        try:
            put = s3.put_object(
                Bucket=probe_bucket,
                Key="probe",
                Body=b"probe",
                ObjectLockMode="COMPLIANCE",
                ObjectLockRetainUntilDate=until_date,
            )
            version_id = put.get("VersionId")
        except ClientError as exc:
            return ImmutabilityProbe(self.substrate, False, False, False,
                                     (f"COMPLIANCE put refused: {exc}",))
        shortened_refused = False
        try:
            s3.put_object_retention(
                Bucket=probe_bucket,
                Key="probe",
                VersionId=version_id,
                Retention={
                    "Mode": "COMPLIANCE",
                    "RetainUntilDate": dt.datetime.now(dt.UTC) + dt.timedelta(minutes=1),
                },
            )
            notes.append("shortening a COMPLIANCE retention was accepted")
        except ClientError as exc:
            shortened_refused = True
            notes.append(f"shortening refused: {exc.response.get('Error', {}).get('Code')}")
        delete_refused = False
        try:
            s3.delete_object(Bucket=probe_bucket, Key="probe", VersionId=version_id)
            notes.append("deleting a locked version was accepted")
        except ClientError as exc:
            delete_refused = True
            notes.append(f"delete refused: {exc.response.get('Error', {}).get('Code')}")
        if not delete_refused:
            with contextlib.suppress(ClientError):
                s3.delete_bucket(Bucket=probe_bucket)
        return ImmutabilityProbe(self.substrate, True, shortened_refused, delete_refused,
                                 tuple(notes))


# --------------------------------------------------------------------------------- dir


class DirStore:
    """A plain directory: no versioning, no locks (its probe says so)."""

    provider = "dir"
    substrate = "directory"
    reads_ahead = False

    def __init__(self, root: Path, bucket: str = "archive") -> None:
        self.root = root
        self.bucket = bucket
        (root / bucket).mkdir(parents=True, exist_ok=True)

    def __repr__(self) -> str:
        return f"DirStore({self.root})"

    def _path(self, key: str) -> Path:
        path = (self.root / self.bucket / key).resolve()
        if not str(path).startswith(str((self.root / self.bucket).resolve())):
            raise ValueError(f"key escapes the store: {key!r}")
        return path

    def put(self, key: str, data: bytes, *, if_none_match: bool = False) -> bool:
        path = self._path(key)
        if if_none_match and path.exists():
            return False
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        return True

    def get(self, key: str) -> bytes:
        return self._path(key).read_bytes()

    def get_many(self, keys: Iterable[str]) -> Iterator[tuple[str, bytes | OSError]]:
        """``(key, bytes)`` per key, in order; a key that cannot be read yields its error."""
        for key in keys:
            try:
                yield key, self.get(key)
            except OSError as exc:
                yield key, exc

    def list(self, prefix: str = "") -> list[ObjectInfo]:
        base = self.root / self.bucket
        out = []
        for path in sorted(base.rglob("*")):
            if path.is_file():
                key = path.relative_to(base).as_posix()
                if key.startswith(prefix):
                    out.append(ObjectInfo(key, path.stat().st_size))
        return out

    def bucket_lock_configuration(self) -> dict[str, Any] | None:
        return None

    def probe_immutability(self) -> ImmutabilityProbe:
        return ImmutabilityProbe(self.substrate, False, False, False,
                                 ("a plain directory enforces no retention",))


# ----------------------------------------------------------------------------- providers


@dataclasses.dataclass
class ObjectStoreServer:
    """Where the store lives and how to make buckets in it."""

    provider: str
    substrate: str
    endpoint_url: str | None
    access_key: str | None = dataclasses.field(default=None, repr=False)
    secret_key: str | None = dataclasses.field(default=None, repr=False)
    root: Path | None = None

    def bucket(self, name: str, *, create: bool = False, object_lock: bool = False,
               compliance_days: int | None = None) -> ObjectStore:
        """A store for one bucket (created when asked, optionally with default retention)."""
        if self.provider == "dir":
            assert self.root is not None
            return DirStore(self.root, name)
        store = S3Store(self.provider, self.substrate, self.endpoint_url, name,
                        access_key=self.access_key, secret_key=self.secret_key)
        if create:
            store.create_bucket(object_lock=object_lock, compliance_days=compliance_days)
        return store


#: The embedded substrate: moto, made to refuse what S3 refuses under COMPLIANCE retention.
EMBEDDED_SUBSTRATE = "moto+compliance-lock"


def _parse_lock_date(value: str) -> dt.datetime:
    for fmt in ("%Y-%m-%dT%H:%M:%S.%fZ", "%Y-%m-%dT%H:%M:%SZ"):
        try:
            return dt.datetime.strptime(value, fmt).replace(tzinfo=dt.UTC)
        except ValueError:
            continue
    return dt.datetime.fromisoformat(value.replace("Z", "+00:00"))


def enforce_compliance_retention() -> None:
    """Make the in-process moto refuse to weaken a COMPLIANCE retention, as S3 does.

    moto already refuses to delete a locked version, but accepts shortening a COMPLIANCE
    retention or switching it to GOVERNANCE; S3 refuses both (AccessDenied). The embedded
    object store applies this rule so that its behaviour — which ``probe_immutability``
    observes, never assumes — matches the real service; the evidence names the substrate
    ``moto+compliance-lock``.
    """
    from moto.s3.exceptions import AccessDeniedByLock
    from moto.s3.models import S3Backend

    original = S3Backend.put_object_retention
    if getattr(original, "_caracal_enforced", False):
        return

    def put_object_retention(
        self: Any, bucket_name: str, key_name: str, version_id: str | None,
        retention: tuple[str | None, str | None],
    ) -> None:
        key = self.get_object(bucket_name, key_name, version_id=version_id)
        if key is not None and key.lock_mode == "COMPLIANCE" and key.lock_until:
            mode, until = retention
            current = _parse_lock_date(key.lock_until)
            if current > dt.datetime.now(dt.UTC) and (
                mode != "COMPLIANCE" or not until or _parse_lock_date(until) < current
            ):
                raise AccessDeniedByLock
        original(self, bucket_name, key_name, version_id, retention)

    put_object_retention._caracal_enforced = True  # type: ignore[attr-defined]
    S3Backend.put_object_retention = put_object_retention  # type: ignore[method-assign]


def route_requests_without_rescanning_moto() -> None:
    """Make the in-process moto find the S3 backend without listing its package on each request.

    moto 5's server dispatcher asks ``moto.backends.list_of_moto_modules()`` which service a
    request is for on every request, and that function lists moto's package directory and
    stats each of its ~180 entries each time: half of moto's time per GetObject (reading the
    10 000 hourly objects of an archive made ~1.8 million ``stat`` calls). The directory does
    not change while the server runs, so it is listed once; routing is otherwise unchanged.
    """
    from moto import backends

    if getattr(backends.list_of_moto_modules, "_caracal_listed_once", False):
        return
    modules = tuple(backends.list_of_moto_modules())

    def listed_once() -> tuple[str, ...]:
        return modules

    listed_once._caracal_listed_once = True  # type: ignore[attr-defined]
    backends.list_of_moto_modules = listed_once


def keep_objects_in_memory() -> None:
    """Make the in-process moto keep every object's bytes in memory, not only the small ones.

    moto writes an object's bytes to a ``SpooledTemporaryFile`` that moves to a file on disk
    once it holds more than ~5 MB: a bundle's PutObject (221 MB at 1 000 000 audit events) spent
    a quarter of its time writing that file, and each GetObject reads it back whole. The
    archive's hourly objects are far smaller and were in memory already; the bundle is now too
    (the process holds it once more while a GetObject answers, as before). Only where the bytes
    sit changes.
    """
    from moto.s3 import models

    models.get_s3_default_key_buffer_size = _in_memory_buffer_size  # type: ignore[attr-defined]


def _in_memory_buffer_size() -> int:
    """moto's spill size for an object's bytes (``keep_objects_in_memory``): never reached."""
    return 1 << 62


def list_versions_without_copying_data() -> None:
    """Make the in-process moto list object versions without copying every object's data.

    moto 5 deep-copies every version of every key of the bucket (its data included) on each
    ``ListObjectVersions`` page, and the copies are never freed: listing an archive of 10 000
    hourly exports leaked ~350 MB per page, so a 1 000 000-event run outgrew 23 GB. The listing
    only reads a version's metadata and sets ``is_latest`` on its copy, so a copy that shares the
    stored data buffer (and never closes it) answers the same. Nothing else in moto deep-copies
    a key.
    """
    from moto.s3.models import FakeKey

    if getattr(FakeKey, "_caracal_light_copy", False):
        return

    class ListedVersion(FakeKey):  # type: ignore[misc]
        """A listing's view of a stored version: shares its buffer, never disposes of it."""

        def dispose(self, garbage: bool = False) -> None:
            self.disposed = True

        def __del__(self) -> None:
            pass

    def light_deepcopy(self: Any, memo: dict[int, Any]) -> Any:
        view = object.__new__(ListedVersion)
        view.__dict__.update(self.__dict__)
        return view

    FakeKey.__deepcopy__ = light_deepcopy  # type: ignore[attr-defined]
    FakeKey._caracal_light_copy = True  # type: ignore[attr-defined]


def list_versions_without_model_serializer() -> None:
    """Make the in-process moto write ``ListObjectVersions`` answers itself.

    moto 5 writes this answer through its generic, model-driven XML serializer: ~0.13 ms per
    version, 1.3 s for the 10 000 versions of a year's archive, listed twice per run. The
    versions, delete markers and markers are still chosen by moto's own backend; only the XML
    (the ``ListVersionsResult`` document S3 sends, same elements) is written here.
    """
    from xml.sax.saxutils import escape

    from moto.s3.responses import S3Response

    if getattr(S3Response.list_object_versions, "_caracal_direct", False):
        return

    def text(name: str, value: object) -> str:
        return f"<{name}>{escape(str(value))}</{name}>"

    def entry(tag: str, item: Any, owner: str, *, version: bool) -> str:
        parts = [text("Key", item.name),
                 text("VersionId", item.version_id if item.version_id is not None else "null"),
                 text("IsLatest", "true" if getattr(item, "is_latest", False) else "false"),
                 text("LastModified", item.last_modified_ISO8601)]
        if version:
            parts += [text("ETag", item.etag), text("Size", item.size)]
        parts.append(owner)
        if version:
            parts.append(text("StorageClass", item.storage_class))
        return f"<{tag}>{''.join(parts)}</{tag}>"

    def list_object_versions(self: Any) -> tuple[int, dict[str, str], str]:
        query = self.querystring
        delimiter = query.get("delimiter", [None])[0]
        key_marker = query.get("key-marker", [None])[0]
        version_id_marker = query.get("version-id-marker", [None])[0]
        max_keys = int(query.get("max-keys", [1000])[0])
        prefix = self._get_querystring(self.request, self.uri).get("prefix", [""])[0]
        bucket = self.backend.get_bucket(self.bucket_name)
        versions, prefixes, markers, next_key, next_version = self.backend.list_object_versions(
            self.bucket_name, delimiter=delimiter, key_marker=key_marker, max_keys=max_keys,
            prefix=prefix, version_id_marker=version_id_marker)
        owner = ("<Owner><ID>75aa57f09aa0c8caeab4f8c24e99d10f8e7faeebf76c078efc7c6caea54ba06a"
                 "</ID><DisplayName>webfile</DisplayName></Owner>")
        body = ['<?xml version="1.0" encoding="UTF-8"?>'
                '<ListVersionsResult xmlns="http://s3.amazonaws.com/doc/2006-03-01/">',
                text("Name", bucket.name), text("Prefix", prefix),
                text("KeyMarker", key_marker or ""),
                text("VersionIdMarker", version_id_marker or ""), text("MaxKeys", max_keys)]
        if delimiter:
            body.append(text("Delimiter", delimiter))
        body.append(text("IsTruncated", "true" if next_key is not None else "false"))
        if next_key is not None:
            body.append(text("NextKeyMarker", next_key))
            if next_version is not None:
                body.append(text("NextVersionIdMarker", next_version))
        body += [entry("Version", v, owner, version=True) for v in versions]
        body += [entry("DeleteMarker", m, owner, version=False) for m in markers]
        body += [f"<CommonPrefixes>{text('Prefix', p)}</CommonPrefixes>" for p in sorted(prefixes)]
        body.append("</ListVersionsResult>")
        headers = {"Content-Type": "application/xml", **self.response_headers}
        return 200, headers, "".join(body)

    list_object_versions._caracal_direct = True  # type: ignore[attr-defined]
    list_object_versions.moto_original = S3Response.list_object_versions  # type: ignore[attr-defined]
    S3Response.list_object_versions = list_object_versions  # type: ignore[method-assign]


#: Request headers that make a GET more than "the latest version, whole": moto answers those.
_NOT_PLAIN = ("HTTP_RANGE", "HTTP_IF_MATCH", "HTTP_IF_NONE_MATCH", "HTTP_IF_MODIFIED_SINCE",
              "HTTP_IF_UNMODIFIED_SINCE", "HTTP_ORIGIN", "HTTP_X_AMZ_CHECKSUM_MODE",
              "HTTP_X_MOTO_ACCOUNT_ID", "HTTP_X_AMZ_SERVER_SIDE_ENCRYPTION_CUSTOMER_ALGORITHM",
              "HTTP_X_AMZ_SERVER_SIDE_ENCRYPTION_CUSTOMER_KEY")
#: Object keys answered directly: no character that a path could carry escaped or folded.
_PLAIN_KEY = re.compile(r"[A-Za-z0-9._~=/-]+")
#: The region of a SigV4 ``Authorization`` header (moto takes the third field of its scope).
_SIGV4_SCOPE = re.compile(r"^AWS4-HMAC-SHA256 Credential=[^/,]+/[0-9]{8}/([^/,]+)/s3/aws4_request,")


#: The characters of moto's request ids (``get_random_string``: letters and digits).
_REQUEST_ID_CHARS = string.ascii_letters + string.digits


def _plain_gets_answered_directly(app: Any) -> Any:
    """A WSGI application that answers a plain GetObject from moto's own stored object, and
    hands every other request to ``app`` (moto's application).

    moto routes each request through Werkzeug, Flask and its generic request parsing before its
    GetObject code looks the key up: ~0.3 ms of CPU per object, 3 s for the 10 000 hourly
    objects of a year's archive, read while pg_dump runs. A plain GET (path-style, no query,
    no range, condition, checksum mode, customer key or CORS origin; a bucket without a policy
    or access logging; the latest version a STANDARD object) gets the answer moto's GetObject
    builds for it — its headers made by moto's own key (``response_dict``, metadata), the
    stored bytes — without that machinery. tests/test_environments.py compares the two answers.
    """
    from moto import settings
    from moto.core.responses import BaseResponse
    from moto.iam.models import get_account_id_from
    from moto.moto_api._internal import mock_random
    from moto.s3.models import FakeKey, s3_backends
    from moto.utilities.utils import get_partition

    access_key = BaseResponse.access_key_regex
    region_in_agent = BaseResponse.region_from_useragent_regex

    def stored(environ: dict[str, Any]) -> Any:
        """The moto key a plain GET asks for (None: not plain, or not a plain object)."""
        if (environ.get("REQUEST_METHOD") != "GET" or environ.get("QUERY_STRING")
                or any(name in environ for name in _NOT_PLAIN)
                or "MOTO_ACCOUNT_ID" in os.environ or settings.DISABLE_GLOBAL_CORS
                or not math.isinf(settings.INITIAL_NO_AUTH_ACTION_COUNT)
                or environ.get("HTTP_HOST", "").rsplit(":", 1)[0] != LOOPBACK
                or region_in_agent.search(environ.get("HTTP_USER_AGENT", ""))):
            return None
        path = environ.get("PATH_INFO", "")
        bucket_name, _, key_name = path[1:].partition("/")
        authorization = environ.get("HTTP_AUTHORIZATION", "")
        scope = _SIGV4_SCOPE.search(authorization)
        if (not key_name or not _PLAIN_KEY.fullmatch(path) or "//" in path
                or environ.get("REQUEST_URI", path) != path or scope is None):
            return None
        found = access_key.search(authorization)
        account = get_account_id_from(found.group(1) if found else "AKIAEXAMPLE")
        bucket = s3_backends[account][get_partition(scope.group(1))].buckets.get(bucket_name)
        if bucket is None or bucket.policy or bucket.logging:
            return None
        key = bucket.keys.get(key_name)
        if type(key) is not FakeKey or key.storage_class != "STANDARD":
            return None
        return key

    def answer(environ: dict[str, Any], start_response: Any) -> Any:
        key = stored(environ)
        if key is None:
            return app(environ, start_response)
        key.advance()  # what moto's lookup does on each read (a no-op but for transitions)
        headers: dict[str, Any] = {}
        if key.version_id != "null":
            headers["x-amz-version-id"] = key.version_id
        headers.update(key.response_dict)
        headers.update(key.metadata)
        headers["Accept-Ranges"] = "bytes"
        # moto's request id (52 letters and digits), drawn in one call instead of 52
        headers["x-amzn-requestid"] = "".join(mock_random.choices(_REQUEST_ID_CHARS, k=52))
        headers["Access-Control-Allow-Origin"] = "*"
        if not any(name.lower() == "content-type" for name in headers):
            headers["Content-Type"] = "text/html; charset=utf-8"
        body = key.value
        start_response("200 OK", [(name, str(value)) for name, value in headers.items()])
        return [body]

    return answer


#: How long a worker that answered a request waits for the next one on the same connection
#: before handing the connection back to cheroot's manager (see ``_back_to_back``).
_NEXT_REQUEST_WAIT = 0.002


def _back_to_back(connection_class: Any) -> Any:
    """A cheroot connection class that answers a client's back-to-back requests on one thread.

    cheroot hands a kept-alive connection back to its manager after every answer: the manager
    waits for the next request in its selector, queues the connection and wakes a worker, so
    each request costs three thread hand-overs (and the GIL each time). A reader fetching
    thousands of objects one after another (the archive's ~10 000 hourly objects) sends its next
    GET within a fraction of a millisecond: the worker that answered waits that long for it and
    answers it too. A connection with nothing to read by then goes back to the manager as before.
    """
    class BackToBack(connection_class):  # type: ignore[misc,valid-type]
        def communicate(self) -> bool:
            while True:
                keep_open: bool = super().communicate()
                if not keep_open or not (self.rfile.has_data() or ready(
                        self.socket.fileno(), timeout=_NEXT_REQUEST_WAIT)):
                    return keep_open

    return BackToBack


#: Request bodies at least this long are read at once, into one buffer (``_bodies_at_once``).
_WHOLE_BODY = 1 << 20

_INCOMPLETE_BODY = (
    b'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>IncompleteBody</Code><Message>You did'
    b' not provide the number of bytes specified by the Content-Length HTTP header</Message>'
    b"</Error>")


def _bodies_at_once(app: Any) -> Any:
    """A WSGI application that reads a large request body into one buffer before ``app`` runs.

    moto reads a body through Werkzeug 64 KB at a time, and each piece goes through cheroot's
    pure-Python buffered reader, which allocates and copies it several times: a third of the CPU
    of a bundle's PutObject (221 MB at 1 000 000 audit events). Here a body of a known length is
    read from the connection straight into one buffer (``readinto``), cheroot's count of the
    body's remaining bytes is kept, and ``app`` reads the same bytes from memory. A body that
    ends before its Content-Length is refused as S3 refuses it (400 IncompleteBody), never
    handed on shortened.
    """
    def whole(environ: dict[str, Any], start_response: Any) -> Any:
        stream = environ.get("wsgi.input")
        reader = getattr(stream, "rfile", None)
        length = environ.get("CONTENT_LENGTH") or ""
        if not (length.isdigit() and int(length) >= _WHOLE_BODY and reader is not None
                and getattr(stream, "remaining", None) == int(length)
                and hasattr(reader, "readinto")):
            return app(environ, start_response)
        body = bytearray(int(length))
        view = memoryview(body)
        got = 0
        while got < len(body):
            n = reader.readinto(view[got:])
            if not n:
                break
            got += n
        stream.remaining -= got  # type: ignore[union-attr]
        if got < len(body):
            start_response("400 Bad Request", [("Content-Type", "application/xml"),
                                               ("Connection", "close")])
            return [_INCOMPLETE_BODY]
        data = bytes(body)
        del view, body  # one copy of the body held while moto stores its own, not two
        environ["wsgi.input"] = io.BytesIO(data)
        environ["wsgi.input_terminated"] = True
        return app(environ, start_response)

    return whole


#: Largest piece of an answer handed to cheroot at once (see ``_in_slices``).
_SLICE = 1 << 20


def _in_slices(app: Any) -> Any:
    """A WSGI application that hands ``app``'s answer on in pieces of at most ``_SLICE`` bytes.

    moto answers a GetObject with the whole object as one piece, and cheroot's buffered writer
    sends a large piece slowly (200 MB took 2 s instead of 0.1 s); the bytes are unchanged.
    """
    def sliced(environ: dict[str, Any], start_response: Any) -> Iterator[bytes]:
        answer = app(environ, start_response)
        try:
            for piece in answer:
                if len(piece) <= _SLICE:
                    yield piece
                    continue
                view = memoryview(piece)
                for start in range(0, len(view), _SLICE):
                    yield bytes(view[start:start + _SLICE])
        finally:
            close = getattr(answer, "close", None)
            if close is not None:
                close()

    return sliced


@contextlib.contextmanager
def embedded() -> Iterator[ObjectStoreServer]:
    """A moto S3 server on 127.0.0.1 that enforces COMPLIANCE retention like S3 does.

    It is an emulator all the same: ``probe_immutability`` observes what it enforces, and the
    evidence names the substrate.
    """
    import threading

    from cheroot import wsgi
    from moto.moto_server.werkzeug_app import DomainDispatcherApplication, create_backend_app

    enforce_compliance_retention()
    list_versions_without_copying_data()
    list_versions_without_model_serializer()
    route_requests_without_rescanning_moto()
    keep_objects_in_memory()
    # moto's app behind cheroot, not behind moto's ThreadedMotoServer: Werkzeug's development
    # server closes the connection after every answer and starts a thread per connection, so
    # each of an archive's 10 000 GetObject calls paid a TCP connect and a thread. cheroot
    # keeps HTTP/1.1 connections alive and answers from a pool of threads (~0.35 ms less CPU
    # per GetObject). Requests reach the same moto application either way.
    server = wsgi.Server((LOOPBACK, free_port()),
                         _bodies_at_once(_in_slices(_plain_gets_answered_directly(
                             DomainDispatcherApplication(create_backend_app)))),
                         numthreads=8, server_name="caracal-restore-embedded-s3")
    server.ConnectionClass = _back_to_back(server.ConnectionClass)
    server.prepare()  # bound and listening before the block, or it raises here
    port = server.bind_addr[1]
    thread = threading.Thread(target=server.serve, name=f"embedded-s3-{port}", daemon=True)
    thread.start()

    def stop() -> None:
        server.stop()
        thread.join(timeout=30)

    url = f"http://{LOOPBACK}:{port}"
    with supervised(f"moto S3 server on {url}", stop):
        import httpx

        until(lambda: httpx.get(url + "/moto-api/", timeout=2).status_code < 500, timeout=30,
              transient=(httpx.HTTPError,), what="moto S3 server answers")
        yield ObjectStoreServer("embedded", EMBEDDED_SUBSTRATE, url, "testing", "testing")


@contextlib.contextmanager
def docker(*, image: str = "minio/minio:latest") -> Iterator[ObjectStoreServer]:
    """MinIO in a throwaway container bound to 127.0.0.1."""
    from caracal_restore.environments.postgres import docker_available

    reason = docker_available()
    if reason:
        raise EnvironmentNotReady(
            f"--object-store-provider docker: {reason}; start Docker or use embedded"
        )
    from testcontainers.minio import MinioContainer

    secret = secrets.token_hex(16)
    port = free_port()
    container = MinioContainer(image, access_key="caracal", secret_key=secret)
    # docker-py binds (ip, port) tuples; the stub only knows a port: loopback only.
    container.with_bind_ports(9000, (LOOPBACK, port))  # type: ignore[arg-type]
    with container:
        yield ObjectStoreServer("docker", "minio", f"http://{LOOPBACK}:{port}", "caracal", secret)


@contextlib.contextmanager
def external(
    endpoint_url: str | None, *, allow_remote: bool = False
) -> Iterator[ObjectStoreServer]:
    """A real S3 (or compatible) endpoint; credentials from the standard AWS chain."""
    if endpoint_url:
        from urllib.parse import urlparse

        host = urlparse(endpoint_url).hostname or ""
        if not allow_remote and not is_loopback(host):
            raise NotIsolated(
                f"object store endpoint {host!r} is not on loopback; pass --allow-remote-target "
                "to use a remote S3 endpoint"
            )
    elif not allow_remote:
        raise NotIsolated("AWS S3 is remote; pass --allow-remote-target to use it")
    yield ObjectStoreServer("external", "s3", endpoint_url)


@contextlib.contextmanager
def directory(workdir: Path | None = None, keep: bool = False) -> Iterator[ObjectStoreServer]:
    """A plain directory standing in for a bucket."""
    root = Path(tempfile.mkdtemp(prefix="caracal-objects-", dir=workdir))
    try:
        yield ObjectStoreServer("dir", "directory", None, root=root)
    finally:
        if not keep:
            shutil.rmtree(root, ignore_errors=True)


@contextlib.contextmanager
def provide(
    provider: str,
    *,
    endpoint_url: str | None = None,
    workdir: Path | None = None,
    keep: bool = False,
    allow_remote: bool = False,
) -> Iterator[ObjectStoreServer]:
    """Start (or attach to) an object store by provider name."""
    if provider == "embedded":
        with embedded() as server:
            yield server
    elif provider == "docker":
        with docker() as server:
            yield server
    elif provider == "external":
        with external(endpoint_url, allow_remote=allow_remote) as server:
            yield server
    elif provider == "dir":
        with directory(workdir, keep) as server:
            yield server
    else:
        raise EnvironmentNotReady(f"unknown object store provider {provider!r}; use {PROVIDERS}")
