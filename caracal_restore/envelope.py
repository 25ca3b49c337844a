"""Key-encryption envelopes of each Caracal release (seal and open), byte for byte.

Release 2026.06 (``ZONE_KEK``): a bare ChaCha20-Poly1305 seal under the 32 KEK bytes, a random
12-byte nonce, no AAD, no key id. Stored either split (ciphertext‖tag in one column, the nonce
in another) or packed (nonce‖ciphertext‖tag in one column).

Release 1.0 (``SECRET_STORE_KEK``): the CSS1 envelope — ``CSS1`` ‖ kekId(8) ‖ dekNonce(12) ‖
dekCt(48) ‖ valNonce(12) ‖ valCt(n+16); kekId = SHA-256(KEK)[0:8]; the DEK is sealed with AAD
``caracal.css1.dek`` and the value with the location's AAD.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

NONCE_LEN = 12
TAG_LEN = 16
KEY_LEN = 32


class EnvelopeError(ValueError):
    """An envelope could not be opened; ``kind`` says why in Caracal's own words."""

    def __init__(self, kind: str, detail: str = "") -> None:
        super().__init__(f"{kind}{': ' + detail if detail else ''}")
        self.kind = kind


def parse_kek(hex_value: str) -> bytes:
    """Decode a KEK secret (lowercase hex of 32 bytes; trailing whitespace trimmed)."""
    value = hex_value.rstrip(" \t\r\n")
    try:
        raw = bytes.fromhex(value)
    except ValueError as exc:
        raise EnvelopeError("KEK is not hex", str(exc)) from None
    if len(raw) != KEY_LEN:
        raise EnvelopeError("KEK must be 32 bytes", f"got {len(raw)}")
    return raw


# ------------------------------------------------------------------ release 2026.06 (ZONE_KEK)


def zone_seal(kek: bytes, plaintext: bytes, nonce: bytes | None = None) -> tuple[bytes, bytes]:
    """Seal under ZONE_KEK; returns (ciphertext‖tag, nonce) for the split layout."""
    nonce = nonce if nonce is not None else os.urandom(NONCE_LEN)
    return ChaCha20Poly1305(kek).encrypt(nonce, plaintext, None), nonce


def zone_open(kek: bytes, ciphertext: bytes, nonce: bytes) -> bytes:
    """Open a split-layout seal; ``EnvelopeError`` when the KEK does not match (or data changed)."""
    if len(nonce) != NONCE_LEN:
        raise EnvelopeError("nonce must be 12 bytes", f"got {len(nonce)}")
    if len(ciphertext) < TAG_LEN:
        raise EnvelopeError("ciphertext too short", f"{len(ciphertext)} bytes")
    try:
        return ChaCha20Poly1305(kek).decrypt(nonce, ciphertext, None)
    except InvalidTag:
        raise EnvelopeError("chacha20poly1305: message authentication failed") from None


def zone_seal_packed(kek: bytes, plaintext: bytes, nonce: bytes | None = None) -> bytes:
    """Seal under ZONE_KEK in the packed layout nonce‖ciphertext‖tag (provider grant tokens)."""
    ct, nonce = zone_seal(kek, plaintext, nonce)
    return nonce + ct


def zone_open_packed(kek: bytes, packed: bytes) -> bytes:
    """Open a packed-layout seal (split at byte 12)."""
    if len(packed) < NONCE_LEN + TAG_LEN:
        raise EnvelopeError("packed seal too short", f"{len(packed)} bytes")
    return zone_open(kek, packed[NONCE_LEN:], packed[:NONCE_LEN])


# ----------------------------------------------------------------- release 1.0 (CSS1 envelope)

CSS1_MAGIC = b"CSS1"
CSS1_DEK_AAD = b"caracal.css1.dek"
CSS1_MIN_LEN = 4 + 8 + 12 + 48 + 12 + 16

#: AAD of each sealed location at release 1.0 (``secret_store`` uses the row's ``ref``).
AAD_ZONE_SIGNING_KEY = "caracal/secrets/zoneSigningKey"
AAD_PROVIDER_ACCESS_TOKEN = "caracal/providerConnections/accessToken"
AAD_PROVIDER_REFRESH_TOKEN = "caracal/providerConnections/refreshToken"
AAD_NOTIFICATION_SINK = "caracal/notificationSinks/secret"
AAD_OPERATOR_PLAN = "caracal/operatorPlanSecrets/values"


def kek_id(kek: bytes) -> bytes:
    """The 8-byte key id of a KEK: SHA-256(KEK)[0:8]."""
    return hashlib.sha256(kek).digest()[:8]


@dataclasses.dataclass(frozen=True)
class Css1Header:
    """The readable part of a CSS1 envelope."""

    kek_id: bytes
    length: int


def css1_header(envelope: bytes) -> Css1Header:
    """Parse magic and kekId; ``EnvelopeError`` for a truncated or foreign value."""
    if len(envelope) < CSS1_MIN_LEN:
        raise EnvelopeError("secret envelope too short", f"{len(envelope)} bytes")
    if envelope[:4] != CSS1_MAGIC:
        raise EnvelopeError("secret envelope has unknown format")
    return Css1Header(envelope[4:12], len(envelope))


def css1_seal(
    kek: bytes,
    plaintext: bytes,
    aad: str,
    *,
    dek: bytes | None = None,
    dek_nonce: bytes | None = None,
    val_nonce: bytes | None = None,
) -> bytes:
    """Seal a value in a CSS1 envelope (fresh DEK per envelope unless given, for vectors)."""
    dek = dek if dek is not None else os.urandom(KEY_LEN)
    dek_nonce = dek_nonce if dek_nonce is not None else os.urandom(NONCE_LEN)
    val_nonce = val_nonce if val_nonce is not None else os.urandom(NONCE_LEN)
    dek_ct = ChaCha20Poly1305(kek).encrypt(dek_nonce, dek, CSS1_DEK_AAD)
    val_ct = ChaCha20Poly1305(dek).encrypt(val_nonce, plaintext, aad.encode())
    return CSS1_MAGIC + kek_id(kek) + dek_nonce + dek_ct + val_nonce + val_ct


def css1_open(keks: list[bytes] | bytes, envelope: bytes, aad: str) -> bytes:
    """Open a CSS1 envelope with a keyring (current first); errors use Caracal's wording."""
    ring = [keks] if isinstance(keks, bytes) else list(keks)
    header = css1_header(envelope)
    kek = next((k for k in ring if kek_id(k) == header.kek_id), None)
    if kek is None:
        raise EnvelopeError("secret envelope was sealed under a different KEK",
                            f"kekId {header.kek_id.hex()}")
    dek_nonce, dek_ct = envelope[12:24], envelope[24:72]
    val_nonce, val_ct = envelope[72:84], envelope[84:]
    try:
        dek = ChaCha20Poly1305(kek).decrypt(dek_nonce, dek_ct, CSS1_DEK_AAD)
    except InvalidTag:
        raise EnvelopeError("secret envelope data key rejected") from None
    try:
        return ChaCha20Poly1305(dek).decrypt(val_nonce, val_ct, aad.encode())
    except InvalidTag:
        raise EnvelopeError("secret envelope value rejected") from None
