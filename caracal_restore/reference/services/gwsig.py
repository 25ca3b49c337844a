"""The Gateway→STS exchange signature of release 2026.06 (FACTS-2026.06 §7.3 step 5).

``X-Caracal-Gateway-Signature`` = hex HMAC-SHA256(GATEWAY_STS_HMAC_KEY,
``<unix>\\n<request id>\\n<METHOD>\\n<path>\\n<hex sha256(url-encoded sorted form)>``); the
request id doubles as the nonce (``X-Caracal-Gateway-Request``), consumed once in Redis under
``caracal:sts:gw-nonce:<request id>`` for 120 s; clock skew at most 60 s. The form encoding is
Go's ``url.Values.Encode``: keys sorted, values in order, ``QueryEscape`` (space → ``+``).
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Sequence
from urllib.parse import quote_plus

HEADER_TIMESTAMP = "X-Caracal-Gateway-Timestamp"
HEADER_REQUEST = "X-Caracal-Gateway-Request"
HEADER_SIGNATURE = "X-Caracal-Gateway-Signature"
MAX_SKEW_SECONDS = 60
NONCE_TTL_SECONDS = 120


def nonce_key(request_id: str) -> str:
    """The Redis key that makes a request id single-use."""
    return f"caracal:sts:gw-nonce:{request_id}"


def encode_form(items: Sequence[tuple[str, str]]) -> str:
    """``url.Values.Encode``: sorted by key (stable within a key), ``QueryEscape``d."""
    ordered = sorted(items, key=lambda kv: kv[0])
    return "&".join(f"{quote_plus(k, safe='')}={quote_plus(v, safe='')}" for k, v in ordered)


def signature(key: bytes, timestamp: int | str, request_id: str, method: str, path: str,
              form: Sequence[tuple[str, str]]) -> str:
    """The hex signature of one exchange request."""
    digest = hashlib.sha256(encode_form(form).encode()).hexdigest()
    message = f"{timestamp}\n{request_id}\n{method.upper()}\n{path}\n{digest}"
    return hmac.new(key, message.encode(), hashlib.sha256).hexdigest()


def parse_hex_key(value: str, name: str) -> bytes:
    """A hex HMAC key of at least 32 bytes (``ValueError`` naming the secret otherwise)."""
    try:
        raw = bytes.fromhex(value.rstrip(" \t\r\n"))
    except ValueError:
        raise ValueError(f"{name} is not hex") from None
    if len(raw) < 32:
        raise ValueError(f"{name} must decode to >= 32 bytes, got {len(raw)}")
    return raw
