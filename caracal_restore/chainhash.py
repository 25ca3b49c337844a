"""The audit chain's hashing rules, exactly as Caracal's audit ingestor applies them.

content_sha256 = SHA-256 over ``id, zone_id, event_type, request_id, decision, policy_set_id,
policy_set_version_id, manifest_sha, evaluation_status, determining_policies_json,
diagnostics_json, metadata_json`` each followed by 0x1F, then the decimal Unix nanoseconds of
``occurred_at`` (UTC, microsecond storage) with no trailing separator. Text NULL -> ``''``;
JSON is PostgreSQL's own ``jsonb::text`` with NULL -> ``null``. Lowercase hex.

chain_hmac = hex HMAC-SHA256(hex-decoded AUDIT_HMAC_KEY, content ‖ ``|`` ‖ prev), prev ``''`` at
genesis (stored NULL). ``''`` when no key was configured at write time.

The admin audit chain (``admin_audit_events``) hashes every field followed by 0x1F, including
the last (the ISO millisecond ``occurred_at``).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
from collections.abc import Callable, Sequence

SEP = b"\x1f"
_SHA256_BLOCK = 64
EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)

#: Text fields of ``audit_events`` in hashing order (JSON fields follow).
AUDIT_TEXT_FIELDS = (
    "id",
    "zone_id",
    "event_type",
    "request_id",
    "decision",
    "policy_set_id",
    "policy_set_version_id",
    "manifest_sha",
    "evaluation_status",
)
AUDIT_JSON_FIELDS = ("determining_policies_json", "diagnostics_json", "metadata_json")
AUDIT_HASHED_FIELDS = AUDIT_TEXT_FIELDS + AUDIT_JSON_FIELDS

#: SELECT list that reads the hashed fields the way the verifier must (server text for JSON).
AUDIT_HASH_SELECT = ", ".join(
    [f"COALESCE({f}, '')" for f in AUDIT_TEXT_FIELDS]
    + [f"COALESCE({f}::text, 'null')" for f in AUDIT_JSON_FIELDS]
    + ["(extract(epoch FROM occurred_at) * 1000000)::bigint"]
)


#: The same fields as ``COPY … TO STDOUT`` text columns, the timestamp already in nanoseconds
#: (exact integer arithmetic on the server): ``f1 \t … f12 \t nanos``. Joining the 13 columns
#: with 0x1F gives the canonical message byte for byte (see ``canonical_message``).
AUDIT_CANONICAL_SELECT = ", ".join(
    [f"COALESCE({f}, '')" for f in AUDIT_TEXT_FIELDS]
    + [f"COALESCE({f}::text, 'null')" for f in AUDIT_JSON_FIELDS]
    + ["(extract(epoch FROM occurred_at) * 1000000)::bigint * 1000"]
)


def unix_nanos(occurred_at: dt.datetime) -> int:
    """Unix nanoseconds of a timestamp, exact (microsecond storage times 1000)."""
    if occurred_at.tzinfo is None:
        raise ValueError("occurred_at must be timezone-aware")
    micros = (occurred_at - EPOCH) // dt.timedelta(microseconds=1)
    return micros * 1000


def content_hash_parts(fields: Sequence[str], epoch_micros: int) -> str:
    """content_sha256 from the 12 field texts (already NULL-coalesced) and epoch microseconds."""
    if len(fields) != len(AUDIT_HASHED_FIELDS):
        raise ValueError(f"expected {len(AUDIT_HASHED_FIELDS)} fields, got {len(fields)}")
    h = hashlib.sha256()
    for value in fields:
        h.update(value.encode())
        h.update(SEP)
    h.update(str(epoch_micros * 1000).encode())
    return h.hexdigest()


def content_hash(
    *,
    id: str,
    zone_id: str,
    event_type: str,
    request_id: str | None,
    decision: str | None,
    policy_set_id: str | None,
    policy_set_version_id: str | None,
    manifest_sha: str | None,
    evaluation_status: str | None,
    determining_policies_json: str | None,
    diagnostics_json: str | None,
    metadata_json: str | None,
    occurred_at: dt.datetime,
) -> str:
    """content_sha256 of one event; JSON arguments must be the server's ``jsonb::text``."""
    texts = [id, zone_id, event_type, request_id, decision, policy_set_id,
             policy_set_version_id, manifest_sha, evaluation_status]
    jsons = [determining_policies_json, diagnostics_json, metadata_json]
    parts = [t or "" for t in texts] + [j if j else "null" for j in jsons]
    return content_hash_parts(parts, unix_nanos(occurred_at) // 1000)


def canonical_message(fields: Sequence[bytes], nanos: bytes | int) -> bytes:
    """The exact bytes content_sha256 covers: 12 UTF-8 fields each + 0x1F, then the nanoseconds.

    ``fields`` are already NULL-coalesced (``''`` / ``null``); ``nanos`` is the decimal Unix
    nanoseconds (bytes as the server printed them, or an int).
    """
    if len(fields) != len(AUDIT_HASHED_FIELDS):
        raise ValueError(f"expected {len(AUDIT_HASHED_FIELDS)} fields, got {len(fields)}")
    tail = nanos if isinstance(nanos, bytes) else str(nanos).encode()
    return SEP.join(fields) + SEP + tail


def content_hash_bytes(message: bytes) -> bytes:
    """content_sha256 (lowercase hex, as ASCII bytes) of a canonical message."""
    return hashlib.sha256(message).hexdigest().encode()


def chain_hmac_bytes(key: bytes) -> Callable[[bytes, bytes], bytes]:
    """A fast ``chain_hmac`` for one key over bytes: ``mac(content_hex, prev_hex) -> hex bytes``.

    HMAC-SHA256 written out as its two keyed SHA-256 states (RFC 2104), copied per message: the
    same digest as ``chain_hmac`` without re-deriving the key pads for every row.
    """
    if len(key) > _SHA256_BLOCK:
        key = hashlib.sha256(key).digest()
    padded = key.ljust(_SHA256_BLOCK, b"\0")
    inner_copy = hashlib.sha256(bytes(b ^ 0x36 for b in padded)).copy
    outer_copy = hashlib.sha256(bytes(b ^ 0x5C for b in padded)).copy

    def mac(content: bytes, prev: bytes) -> bytes:
        inner = inner_copy()
        inner.update(content + b"|" + prev)
        outer = outer_copy()
        outer.update(inner.digest())
        return outer.hexdigest().encode()

    probe = ("0" * 64, "f" * 64)
    if mac(*(p.encode() for p in probe)).decode() != chain_hmac(key, *probe):
        raise AssertionError("chain_hmac_bytes disagrees with chain_hmac")  # pragma: no cover
    return mac


def parse_hmac_key(hex_key: str) -> bytes:
    """Decode AUDIT_HMAC_KEY (hex, at least 32 bytes)."""
    raw = bytes.fromhex(hex_key.rstrip(" \t\r\n"))
    if len(raw) < 32:
        raise ValueError(f"AUDIT_HMAC_KEY must decode to >= 32 bytes, got {len(raw)}")
    return raw


def chain_hmac(key: bytes | None, content_sha256: str, prev_content_sha256: str | None) -> str:
    """chain_hmac of a row ('' when the writer had no key)."""
    if not key:
        return ""
    message = f"{content_sha256}|{prev_content_sha256 or ''}".encode()
    return hmac.new(key, message, hashlib.sha256).hexdigest()


def admin_content_hash(fields: Sequence[str]) -> str:
    """content_sha256 of an admin audit row: every field followed by 0x1F, the last included.

    Fields in order: id, request_id, actor_id, actor_name, actor_scope, action, method, path,
    zone_id, entity_type, entity_id, status_code (decimal), payload (JSON.stringify or ''),
    occurred_at (ISO millisecond ``YYYY-MM-DDTHH:MM:SS.sssZ``); NULL -> ''.
    """
    h = hashlib.sha256()
    for value in fields:
        h.update(value.replace("\x00", "").encode())
        h.update(SEP)
    return h.hexdigest()


def stream_signature(key: bytes, stream: str, fields: dict[str, str] | dict[bytes, bytes]) -> str:
    """The ``_sig`` of a stream entry: HMAC-SHA256 over ``stream\\n`` then sorted ``k=v\\n``."""
    items: dict[bytes, bytes] = {}
    for k, v in fields.items():
        kb = k.encode() if isinstance(k, str) else k
        vb = v.encode() if isinstance(v, str) else v
        if kb == b"_sig" or v is None:
            continue
        items[kb] = vb
    canonical = stream.encode() + b"\n"
    for k in sorted(items):
        canonical += k + b"=" + items[k] + b"\n"
    return hmac.new(key, canonical, hashlib.sha256).hexdigest()


def producer_signature(key: bytes, data: bytes) -> str:
    """The ``sig`` of an audit stream message: HMAC-SHA256 over the exact ``data`` bytes."""
    return hmac.new(key, data, hashlib.sha256).hexdigest()
