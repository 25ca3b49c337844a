"""ES256 JSON Web Tokens, written for the reference STS (no JWT library, so tests can use one).

Compact JWS: base64url(header) ``.`` base64url(claims) ``.`` base64url(r ‖ s), where r and s
are the 32-byte big-endian halves of an ECDSA P-256 / SHA-256 signature.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Mapping
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import (
    decode_dss_signature,
    encode_dss_signature,
)

_COORD = 32


class TokenError(ValueError):
    """A token is malformed or does not verify."""


def b64url(raw: bytes) -> str:
    """Base64url without padding."""
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def b64url_decode(text: str) -> bytes:
    """Inverse of ``b64url`` (raises ``TokenError``)."""
    try:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError):
        raise TokenError("bad base64url") from None


def _json(obj: Mapping[str, Any]) -> bytes:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode()


def sign_es256(key: ec.EllipticCurvePrivateKey, kid: str, claims: Mapping[str, Any]) -> str:
    """A compact ES256 JWT with header ``{"alg":"ES256","kid":<kid>,"typ":"JWT"}``."""
    header = {"alg": "ES256", "kid": kid, "typ": "JWT"}
    signing_input = f"{b64url(_json(header))}.{b64url(_json(claims))}".encode()
    r, s = decode_dss_signature(key.sign(signing_input, ec.ECDSA(hashes.SHA256())))
    raw = r.to_bytes(_COORD, "big") + s.to_bytes(_COORD, "big")
    return signing_input.decode() + "." + b64url(raw)


def peek(token: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """Header and claims of a token, unverified (raises ``TokenError`` when malformed)."""
    parts = token.split(".")
    if len(parts) != 3:
        raise TokenError("not a compact JWS")
    try:
        header = json.loads(b64url_decode(parts[0]))
        claims = json.loads(b64url_decode(parts[1]))
    except ValueError:
        raise TokenError("bad JSON") from None
    if not isinstance(header, dict) or not isinstance(claims, dict):
        raise TokenError("header or claims are not objects")
    return header, claims


def verify_es256(token: str, keys: Mapping[str, ec.EllipticCurvePublicKey]) -> dict[str, Any]:
    """Claims of a token whose ES256 signature verifies under the key its ``kid`` names."""
    header, claims = peek(token)
    if header.get("alg") != "ES256":
        raise TokenError("alg is not ES256")
    key = keys.get(str(header.get("kid", "")))
    if key is None:
        raise TokenError("unknown kid")
    signature = b64url_decode(token.rsplit(".", 1)[1])
    if len(signature) != 2 * _COORD:
        raise TokenError("bad signature length")
    der = encode_dss_signature(int.from_bytes(signature[:_COORD], "big"),
                               int.from_bytes(signature[_COORD:], "big"))
    try:
        key.verify(der, token.rsplit(".", 1)[0].encode(), ec.ECDSA(hashes.SHA256()))
    except InvalidSignature:
        raise TokenError("signature does not verify") from None
    return claims


def public_jwk(kid: str, key: ec.EllipticCurvePublicKey) -> dict[str, str]:
    """The JWKS entry of a P-256 public key."""
    numbers = key.public_numbers()
    return {
        "kty": "EC",
        "crv": "P-256",
        "use": "sig",
        "kid": kid,
        "alg": "ES256",
        "x": b64url(numbers.x.to_bytes(_COORD, "big")),
        "y": b64url(numbers.y.to_bytes(_COORD, "big")),
    }


def jwk_public_key(jwk: Mapping[str, Any]) -> ec.EllipticCurvePublicKey:
    """A public key from a JWKS entry (raises ``TokenError`` for anything but EC P-256)."""
    if jwk.get("kty") != "EC" or jwk.get("crv") != "P-256":
        raise TokenError("not an EC P-256 key")
    x = int.from_bytes(b64url_decode(str(jwk.get("x", ""))), "big")
    y = int.from_bytes(b64url_decode(str(jwk.get("y", ""))), "big")
    try:
        return ec.EllipticCurvePublicNumbers(x, y, ec.SECP256R1()).public_key()
    except ValueError:
        raise TokenError("point not on the curve") from None
