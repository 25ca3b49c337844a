"""The Gateway→STS exchange signature of release 1.0 (FACTS-1.0 §14.5, end).

Headers ``X-Caracal-Gateway-Timestamp`` (unix seconds), ``X-Caracal-Gateway-Request`` (a
64-hex nonce, consumed once in Redis under ``caracal:sts:gw-nonce:<nonce>``) and
``X-Caracal-Gateway-Signature`` = hex HMAC-SHA256(GATEWAY_STS_HMAC_KEY,
``<unix>\\n<nonce>\\n<UPPER METHOD>\\n<escaped path>\\n<hex sha256(body)>``), skew at most
60 s. On the token endpoint the form field ``gateway_request_id`` must equal the
``X-Request-Id`` header. (2026.06 used the request id as the nonce and hashed the sorted form.)
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets as secrets_lib
from urllib.parse import quote

from caracal_restore.reference.services.gwsig import (
    HEADER_REQUEST,
    HEADER_SIGNATURE,
    HEADER_TIMESTAMP,
    MAX_SKEW_SECONDS,
    NONCE_TTL_SECONDS,
    nonce_key,
    parse_hex_key,
)

__all__ = ["HEADER_REQUEST", "HEADER_SIGNATURE", "HEADER_TIMESTAMP", "MAX_SKEW_SECONDS",
           "NONCE_TTL_SECONDS", "is_nonce", "new_nonce", "nonce_key", "parse_hex_key",
           "signature"]

_NONCE = re.compile(r"^[0-9a-f]{64}$")


def new_nonce() -> str:
    """A fresh 64-hex nonce, as the Gateway makes them."""
    return secrets_lib.token_hex(32)


def is_nonce(value: str) -> bool:
    """True for a 64-character lowercase hex nonce."""
    return bool(_NONCE.match(value))


def signature(key: bytes, timestamp: int | str, nonce: str, method: str, path: str,
              body: bytes) -> str:
    """The hex signature of one signed request (the path escaped like Go's ``EscapedPath``)."""
    escaped = quote(path, safe="/:@!$&'()*+,;=-._~")
    message = (f"{timestamp}\n{nonce}\n{method.upper()}\n{escaped}\n"
               f"{hashlib.sha256(body).hexdigest()}")
    return hmac.new(key, message.encode(), hashlib.sha256).hexdigest()
