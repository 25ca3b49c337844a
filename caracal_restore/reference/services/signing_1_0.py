"""Zone signing keys of release 1.0 (FACTS-1.0 §7.3): CSS1 envelopes in ``secrets.envelope``.

Plaintext = PEM ``EC PRIVATE KEY`` (SEC1 DER, P-256) sealed with AAD
``caracal/secrets/zoneSigningKey`` under SECRET_STORE_KEK; opened with the keyring (current
first, ``SECRET_STORE_KEK_PREVIOUS`` second) routed by the envelope's kekId. Active key =
highest ``version``; the verification set adds the rank-2 key while the active one is < 24 h
old; ``kid`` = ``secrets.id``. A zone with no row gets a freshly minted version 1 on first
signing (only when there is no row — a row that does not open is an error, not a trigger).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Sequence
from typing import Any

import psycopg
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from caracal_restore.envelope import AAD_ZONE_SIGNING_KEY, EnvelopeError, css1_open, css1_seal
from caracal_restore.reference.services.common import uuid7
from caracal_restore.reference.services.signing import GRACE, KEY_NAME, KeyUnavailable, SigningKey

__all__ = ["KeyRow", "KeyUnavailable", "SigningKey", "active_key", "open_row",
           "verification_rows"]


@dataclasses.dataclass(frozen=True)
class KeyRow:
    """One ``secrets`` row of a zone signing key (sealed)."""

    kid: str
    version: int
    created_at: dt.datetime
    envelope: bytes = dataclasses.field(repr=False)


def _rows(conn: psycopg.Connection[Any], zone_id: str, limit: int) -> list[KeyRow]:
    cur = conn.execute(
        "SELECT id, version, created_at, envelope FROM secrets WHERE zone_id = %s AND name = %s"
        " ORDER BY version DESC, created_at DESC LIMIT %s",
        (zone_id, KEY_NAME, limit),
    )
    return [KeyRow(r[0], int(r[1]), r[2], bytes(r[3])) for r in cur.fetchall()]


def verification_rows(conn: psycopg.Connection[Any], zone_id: str) -> list[KeyRow]:
    """The active key plus the rank-2 key while the active one is within its 24 h grace."""
    rows = _rows(conn, zone_id, 2)
    if len(rows) == 2 and dt.datetime.now(dt.UTC) - rows[0].created_at >= GRACE:
        rows = rows[:1]
    return rows


def open_row(keyring: Sequence[bytes], row: KeyRow) -> SigningKey:
    """Open a sealed row (``KeyUnavailable`` with Caracal's envelope wording on failure)."""
    try:
        pem = css1_open(list(keyring), row.envelope, AAD_ZONE_SIGNING_KEY)
    except EnvelopeError as exc:
        raise KeyUnavailable(f"decrypt signing key {row.kid}: {exc}") from None
    try:
        key = serialization.load_pem_private_key(pem, password=None)
    except (ValueError, TypeError):
        raise KeyUnavailable(f"parse signing key {row.kid}: not a PEM private key") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey) or key.curve.name != "secp256r1":
        raise KeyUnavailable(f"parse signing key {row.kid}: not a P-256 key")
    return SigningKey(row.kid, key)


def active_key(conn: psycopg.Connection[Any], keyring: Sequence[bytes],
               zone_id: str) -> SigningKey:
    """The key to sign with; mints and stores version 1 when the zone has no row at all."""
    rows = _rows(conn, zone_id, 1)
    if rows:
        return open_row(keyring, rows[0])
    conn.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (f"{KEY_NAME}:{zone_id}",))
    rows = _rows(conn, zone_id, 1)
    if rows:
        return open_row(keyring, rows[0])
    key = ec.generate_private_key(ec.SECP256R1())
    pem = key.private_bytes(serialization.Encoding.PEM,
                            serialization.PrivateFormat.TraditionalOpenSSL,
                            serialization.NoEncryption())
    kid = uuid7()
    conn.execute(
        "INSERT INTO secrets (id, zone_id, entity_id, name, type, envelope, version)"
        " VALUES (%s, %s, %s, %s, 'token', %s, 1)",
        (kid, zone_id, zone_id, KEY_NAME, css1_seal(keyring[0], pem, AAD_ZONE_SIGNING_KEY)),
    )
    return SigningKey(kid, key)
