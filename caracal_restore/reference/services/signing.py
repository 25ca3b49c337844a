"""Zone signing keys of release 2026.06 (FACTS-2026.06 §2.2, §3): rows in ``secrets``.

Plaintext = PEM ``EC PRIVATE KEY`` (SEC1 DER, P-256), sealed bare with ChaCha20-Poly1305 under
ZONE_KEK: ``ciphertext`` = ct‖tag, ``nonce`` = 12 bytes, ``dek_id`` = ``zoneKek``. Active key =
highest ``version``; the verification set adds the rank-2 key while the active one is < 24 h
old. ``kid`` = ``secrets.id``. A zone with no row at all gets a freshly minted key on first
signing — the silent trap of the facts, reproduced on purpose.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from typing import Any

import psycopg
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from caracal_restore.envelope import EnvelopeError, zone_open, zone_seal
from caracal_restore.reference.services.common import uuid7

KEY_NAME = "zone_signing_key"
GRACE = dt.timedelta(hours=24)


class KeyUnavailable(Exception):
    """A key row exists but does not open under ZONE_KEK (or is not a P-256 PEM)."""


@dataclasses.dataclass(frozen=True)
class KeyRow:
    """One ``secrets`` row of a zone signing key (sealed)."""

    kid: str
    version: int
    created_at: dt.datetime
    ciphertext: bytes = dataclasses.field(repr=False)
    nonce: bytes = dataclasses.field(repr=False)


@dataclasses.dataclass(frozen=True)
class SigningKey:
    """An opened signing key."""

    kid: str
    private_key: ec.EllipticCurvePrivateKey = dataclasses.field(repr=False)


def _rows(conn: psycopg.Connection[Any], zone_id: str, limit: int) -> list[KeyRow]:
    cur = conn.execute(
        "SELECT id, version, created_at, ciphertext, nonce FROM secrets"
        " WHERE zone_id = %s AND name = %s ORDER BY version DESC, created_at DESC LIMIT %s",
        (zone_id, KEY_NAME, limit),
    )
    return [KeyRow(r[0], int(r[1]), r[2], bytes(r[3]), bytes(r[4])) for r in cur.fetchall()]


def verification_rows(conn: psycopg.Connection[Any], zone_id: str) -> list[KeyRow]:
    """The active key plus the rank-2 key while the active one is within its 24 h grace."""
    rows = _rows(conn, zone_id, 2)
    if len(rows) == 2 and dt.datetime.now(dt.UTC) - rows[0].created_at >= GRACE:
        rows = rows[:1]
    return rows


def open_row(kek: bytes, row: KeyRow) -> SigningKey:
    """Open a sealed row (``KeyUnavailable`` on AEAD failure or a non-P-256 PEM)."""
    try:
        pem = zone_open(kek, row.ciphertext, row.nonce)
    except EnvelopeError as exc:
        raise KeyUnavailable(f"decrypt signing key {row.kid}: {exc}") from None
    try:
        key = serialization.load_pem_private_key(pem, password=None)
    except (ValueError, TypeError):
        raise KeyUnavailable(f"parse signing key {row.kid}: not a PEM private key") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey) or key.curve.name != "secp256r1":
        raise KeyUnavailable(f"parse signing key {row.kid}: not a P-256 key")
    return SigningKey(row.kid, key)


def seal_new_key(kek: bytes) -> tuple[ec.EllipticCurvePrivateKey, bytes, bytes]:
    """A new P-256 key and its seal (ciphertext‖tag, nonce) under ZONE_KEK."""
    key = ec.generate_private_key(ec.SECP256R1())
    pem = key.private_bytes(serialization.Encoding.PEM,
                            serialization.PrivateFormat.TraditionalOpenSSL,
                            serialization.NoEncryption())
    ciphertext, nonce = zone_seal(kek, pem)
    return key, ciphertext, nonce


def active_key(conn: psycopg.Connection[Any], kek: bytes, zone_id: str) -> SigningKey:
    """The key to sign with; mints and stores version 1 when the zone has no row at all."""
    rows = _rows(conn, zone_id, 1)
    if rows:
        return open_row(kek, rows[0])
    conn.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (f"{KEY_NAME}:{zone_id}",))
    rows = _rows(conn, zone_id, 1)
    if rows:
        return open_row(kek, rows[0])
    key, ciphertext, nonce = seal_new_key(kek)
    kid = uuid7()
    conn.execute(
        "INSERT INTO secrets (id, zone_id, entity_id, name, type, ciphertext, nonce, dek_id,"
        " version) VALUES (%s, %s, %s, %s, 'token', %s, %s, 'zoneKek', 1)",
        (kid, zone_id, zone_id, KEY_NAME, ciphertext, nonce),
    )
    return SigningKey(kid, key)
