"""Probe mandates: ES256 mandates signed with a restored zone signing key.

Used only by the online revocation probe, against the restored environment's own services:
the key is the restored ``secrets`` row opened with the restored KEK, so the Gateway verifies
the probe like any mandate its STS issued. Release 2026.06 seals the key with bare
ChaCha20-Poly1305 under ZONE_KEK (``ciphertext`` + ``nonce``) and its Gateway takes
``use=session`` mandates (FACTS-2026.06 §7.2); release 1.0 seals it in a CSS1 envelope
(``secrets.envelope``, AAD ``caracal/secrets/zoneSigningKey``, keyring SECRET_STORE_KEK then
SECRET_STORE_KEK_PREVIOUS, FACTS-1.0 §7.2-7.3) and its Gateway accepts one-shot ``use=gateway``
mandates with a fresh ``jti`` (§14.4-14.5). Written with ``cryptography`` (compact JWS; the
signature is r ‖ s, 32 bytes each).
"""

from __future__ import annotations

import base64
import dataclasses
import json
import time
import uuid
from collections.abc import Mapping, Sequence
from typing import Any

import psycopg
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

from caracal_restore import envelope
from caracal_restore.diagnose._common import DiagnosticError
from caracal_restore.diagnose.kek import SIGNING_KEY_NAME


@dataclasses.dataclass(frozen=True)
class ZoneKey:
    """A zone's active signing key, opened (never shown)."""

    zone_id: str
    kid: str
    private_key: ec.EllipticCurvePrivateKey = dataclasses.field(repr=False)


def active_key(conn: psycopg.Connection[Any], kek: bytes | Sequence[bytes], zone_id: str, *,
               fmt: str = "zone-chacha20") -> ZoneKey:
    """Open the zone's active (highest version) signing key with the restored KEK.

    ``fmt`` ``zone-chacha20`` (2026.06: ``kek`` is ZONE_KEK) or ``css1`` (1.0: ``kek`` may be
    the keyring, current first).
    """
    columns = "envelope, NULL::bytea" if fmt == "css1" else "ciphertext, nonce"
    row = conn.execute(
        f"SELECT id::text, {columns} FROM secrets WHERE zone_id = %s AND name = %s"
        " ORDER BY version DESC, created_at DESC LIMIT 1", (zone_id, SIGNING_KEY_NAME)).fetchone()
    if row is None:
        raise DiagnosticError(f"zone {zone_id} has no signing key row: no probe mandate can be "
                              "signed (see 'Restored STS cannot decrypt keys')")
    ring = [kek] if isinstance(kek, bytes) else list(kek)
    try:
        if fmt == "css1":
            pem = envelope.css1_open(ring, bytes(row[1]), envelope.AAD_ZONE_SIGNING_KEY)
        else:
            pem = envelope.zone_open(ring[0], bytes(row[1]), bytes(row[2]))
        key = serialization.load_pem_private_key(pem, password=None)
    except (envelope.EnvelopeError, ValueError, TypeError):
        raise DiagnosticError(f"zone {zone_id}: the active signing key {row[0]} does not open "
                              "under the restored KEK, so no probe mandate can be signed "
                              "(see 'Restored STS cannot decrypt keys')") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise DiagnosticError(f"zone {zone_id}: signing key {row[0]} is not an EC key")
    return ZoneKey(zone_id, str(row[0]), key)


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def sign(key: ZoneKey, claims: Mapping[str, Any]) -> str:
    """A compact ES256 JWT with header ``{"alg":"ES256","kid":<kid>,"typ":"JWT"}``."""
    header = {"alg": "ES256", "kid": key.kid, "typ": "JWT"}
    head = _b64(json.dumps(header, separators=(",", ":")).encode())
    body = _b64(json.dumps(dict(claims), separators=(",", ":")).encode())
    signing_input = f"{head}.{body}".encode()
    r, s = decode_dss_signature(key.private_key.sign(signing_input, ec.ECDSA(hashes.SHA256())))
    return f"{head}.{body}.{_b64(r.to_bytes(32, 'big') + s.to_bytes(32, 'big'))}"


def session_claims(*, issuer: str, zone_id: str, client_id: str, resource: str,
                   sid: str | None = None, subject: str | None = None,
                   extra: Mapping[str, str] | None = None, lifetime: int = 300) -> dict[str, Any]:
    """Claims of a session mandate (``use=session``) as STS issues them at 2026.06 (§7.2)."""
    now = int(time.time())
    sid = sid or str(uuid.uuid4())
    claims: dict[str, Any] = {
        "iss": issuer, "sub": subject or client_id, "aud": [issuer], "exp": now + lifetime,
        "iat": now, "jti": str(uuid.uuid4()), "zone_id": zone_id, "client_id": client_id,
        "scope": "", "sid": sid, "root_sid": sid, "use": "session",
        "sub_type": "application", "target": [resource],
    }
    claims.update(extra or {})
    return claims


def gateway_claims(*, issuer: str, zone_id: str, client_id: str, resource: str,
                   sid: str | None = None, subject: str | None = None,
                   extra: Mapping[str, str] | None = None, lifetime: int = 300) -> dict[str, Any]:
    """Claims of a one-shot ``use=gateway`` mandate as the 1.0 STS mints it (FACTS-1.0 §14.4).

    Every call has a fresh ``jti`` (the 1.0 Gateway consumes ``seen:jti:<jti>`` before it looks
    at revocation, so a reused jti would be refused as a replay, not as revoked).
    """
    claims = session_claims(issuer=issuer, zone_id=zone_id, client_id=client_id,
                            resource=resource, sid=sid, subject=subject, lifetime=lifetime)
    claims.update({"use": "gateway", "scope": "", "hop_count": 0})
    claims.update(extra or {})
    return claims
