"""Restore checklist step 2: the runtime secrets are restored, well formed, and match the data.

Presence and shape prove only that files exist; the cross-checks prove each secret belongs to
the restored data (FACTS-1.0 §20 A2, in 2026.06 names per FACTS-2026.06 §8/§3): the KEK opens
every sealed value, the audit key verifies the chain HMACs and producer signatures, the
streams key verifies ``_sig``, the admin token matches its stored hashes, and the database
and Redis passwords log in. Observations carry names, counts and row ids, never a value.
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import itertools
import json
import re
import secrets as _random
from collections.abc import Mapping, Sequence
from typing import Any
from urllib.parse import urlsplit

import psycopg
import redis as redis_lib
from psycopg import sql

from caracal_restore import envelope
from caracal_restore.audit_chain import Report, key_check
from caracal_restore.chainhash import chain_hmac_bytes, producer_signature, stream_signature
from caracal_restore.pgcopy import copy_line_batches
from caracal_restore.profiles import Profile, SealedSpec
from caracal_restore.redact import REDACTOR

Conn = psycopg.Connection[Any]
_HEX = re.compile(r"[0-9a-f]+")
#: Examples of failing rows shown in a finding.
EXAMPLES = 3
#: Who seeds the admin token row at API start-up (FACTS-2026.06 §2.2).
ENV_BOOTSTRAP = "env-bootstrap"
#: Caracal's audit stream and its dead-letter stream (producer ``sig`` over ``data``).
AUDIT_STREAM = "caracal.audit.events"
AUDIT_DLQ = "caracal.audit.events.dlq"
DLQ_HMAC_FAILED = "hmac_verify_failed"


# ------------------------------------------------------------------------------ inventory


@dataclasses.dataclass(frozen=True)
class SecretShape:
    """What one secret of the inventory looks like (never its value)."""

    name: str
    derived: bool
    present: bool
    length: int | None
    expected_length: int | None
    lowercase_hex: bool | None
    problem: str | None


def weak_key_reason(raw: bytes) -> str | None:
    """Why STS would refuse this KEK (FACTS-2026.06 §3.1), or None.

    Our reading of its four rules: all zeros; one byte repeated; bytes ascending or
    descending by one; a pattern of 2 to 16 bytes repeated over the whole key.
    """
    if not any(raw):
        return "is all zeros"
    if len(set(raw)) == 1:
        return "repeats the same byte"
    steps = {(b - a) % 256 for a, b in itertools.pairwise(raw)}
    if steps in ({1}, {255}):
        return "is a sequential byte pattern"
    for period in range(2, 17):
        if len(raw) % period == 0 and raw == raw[:period] * (len(raw) // period):
            return f"repeats a {period}-byte pattern"
    return None


def inventory(profile: Profile, secrets: Mapping[str, str]) -> list[SecretShape]:
    """Every secret of the release's inventory: present, non-empty, hex of the right length."""
    out = []
    for spec in profile.secrets:
        value = secrets.get(spec.name)
        problem: str | None = None
        is_hex: bool | None = None
        if value is None:
            problem = "missing from the secret store"
        elif not value:
            problem = "empty"
        elif not spec.derived:
            is_hex = bool(_HEX.fullmatch(value))
            if not is_hex:
                problem = "is not lowercase hex"
            elif spec.hex_len is not None and len(value) != spec.hex_len:
                problem = f"has {len(value)} hex characters, the release writes {spec.hex_len}"
            elif spec.name == profile.kek_secret:
                weak = weak_key_reason(bytes.fromhex(value))
                problem = f"{weak}: STS refuses such a KEK" if weak else None
        out.append(SecretShape(spec.name, spec.derived, value is not None,
                               len(value) if value is not None else None, spec.hex_len,
                               is_hex, problem))
    return out


# -------------------------------------------------------------------------- derived URLs

_PLACEHOLDER = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")


def _shape_of(name: str) -> str:
    if name.endswith("_query"):
        return r"(?:\?sslmode=[A-Za-z-]+)?"
    if name.endswith("_port"):
        return r"\d+"
    return r"[^:/@?#]*"


@dataclasses.dataclass(frozen=True)
class DerivedCheck:
    """One derived secret re-rendered from the primaries (parts shown without secrets)."""

    name: str
    template: str
    parts: dict[str, str]
    findings: tuple[str, ...]


def derived_secrets(profile: Profile, secrets: Mapping[str, str]) -> list[DerivedCheck]:
    """Each derived secret must be its template rendered with the current primaries."""
    primaries = {s.name for s in profile.primary_secrets}
    out = []
    for name, template in profile.derived_templates:
        value = secrets.get(name)
        if value is None:
            out.append(DerivedCheck(name, template, {}, (f"{name} is missing",)))
            continue
        pattern, names, pos = "", [], 0
        for match in _PLACEHOLDER.finditer(template):
            pattern += re.escape(template[pos:match.start()])
            names.append(match.group(1))
            pattern += f"({_shape_of(match.group(1))})"
            pos = match.end()
        pattern += re.escape(template[pos:])
        found = re.fullmatch(pattern, value)
        if not found:
            shown = _PLACEHOLDER.sub(lambda m: f"<{m.group(1)}>", template)
            out.append(DerivedCheck(name, template, {}, (f"{name} is not of the form {shown}",)))
            continue
        captured = dict(zip(names, found.groups(), strict=True))
        findings = []
        for part, text in captured.items():
            if part in primaries and text != secrets.get(part):
                findings.append(f"{name} does not carry the current {part}")
        rendered = template.format(**{**captured, **{p: secrets.get(p, "") for p in names
                                                     if p in primaries}})
        if not findings and rendered != value:
            findings.append(f"{name} does not re-render from its primaries")
        parts = {k: ("<" + k + ">" if k in primaries else v) for k, v in captured.items()}
        out.append(DerivedCheck(name, template, parts, tuple(findings)))
    return out


# ------------------------------------------------------------------------------ KEK


@dataclasses.dataclass(frozen=True)
class SealedResult:
    """How many sealed values of one location the KEK opened, and which it did not."""

    location: str
    table: str
    column: str
    rows: int
    opened: int
    failures: tuple[str, ...]
    kek_problem: str | None = None


def open_sealed(conn: Conn, spec: SealedSpec, kek_hex: str, kek_format: str) -> SealedResult:
    """Open every sealed value of one location with the KEK and parse its plaintext."""
    where = f"{spec.table}.{spec.column}"
    try:
        kek = envelope.parse_kek(kek_hex)
    except envelope.EnvelopeError as exc:
        return SealedResult(spec.id, spec.table, spec.column, 0, 0, (), f"the KEK {exc}")
    id_column = getattr(spec, "id_column", "id") or "id"
    aad_column = getattr(spec, "aad_column", "")
    columns = [sql.SQL("{}::text").format(sql.Identifier(id_column)), sql.Identifier(spec.column),
               sql.Identifier(spec.nonce_column) if spec.nonce_column else sql.NULL,
               sql.Identifier(aad_column) if aad_column else sql.NULL]
    query = sql.SQL("SELECT {} FROM {} WHERE {} IS NOT NULL").format(
        sql.SQL(", ").join(columns), sql.Identifier("public", spec.table),
        sql.Identifier(spec.column))
    if getattr(spec, "where", ""):
        query = sql.SQL("{} AND ({})").format(query, sql.SQL(spec.where))  # profile's own text
    rows = conn.execute(sql.SQL("{} ORDER BY 1").format(query)).fetchall()
    failures = []
    for ident, sealed, nonce, aad_value in rows:
        try:
            plain = _open(kek, kek_format, bytes(sealed), nonce, spec,
                          aad_value if aad_value is not None else getattr(spec, "aad", ""))
            _parse_plaintext(plain, spec.plaintext)
        except (envelope.EnvelopeError, ValueError) as exc:
            failures.append(f"{where} of row {ident}: {exc}")
    return SealedResult(spec.id, spec.table, spec.column, len(rows), len(rows) - len(failures),
                        tuple(failures))


def _open(kek: bytes, kek_format: str, sealed: bytes, nonce: Any, spec: SealedSpec,
          aad: str) -> bytes:
    if kek_format == "zone-chacha20":
        if spec.nonce_column:
            if nonce is None:
                raise ValueError("nonce column is NULL")
            return envelope.zone_open(kek, sealed, bytes(nonce))
        return envelope.zone_open_packed(kek, sealed)
    if kek_format == "css1":
        return envelope.css1_open(kek, sealed, aad)
    raise ValueError(f"unknown KEK format {kek_format!r}")


def _parse_plaintext(plain: bytes, kind: str) -> None:
    """Raise ValueError unless the opened value is what the location stores."""
    if kind == "ec-p256-pem":
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.hazmat.primitives.serialization import load_pem_private_key

        try:
            key = load_pem_private_key(plain, password=None)
        except (ValueError, TypeError) as exc:
            raise ValueError(f"opened, but not a PEM private key ({type(exc).__name__})") from None
        if not isinstance(key, ec.EllipticCurvePrivateKey) or key.curve.name != "secp256r1":
            raise ValueError("opened, but not a P-256 EC private key")
    elif kind == "json":
        try:
            doc = json.loads(plain.decode("utf-8"))
        except (UnicodeDecodeError, ValueError):
            raise ValueError("opened, but not JSON") from None
        if not isinstance(doc, dict):
            raise ValueError("opened, but not a JSON object")
    elif kind == "text":
        try:
            text = plain.decode("utf-8")
        except UnicodeDecodeError:
            raise ValueError("opened, but not UTF-8 text") from None
        if not text:
            raise ValueError("opened, but empty")
    else:
        raise ValueError(f"unknown plaintext kind {kind!r}")


# ------------------------------------------------------------------------- audit HMAC key


@dataclasses.dataclass(frozen=True)
class SignatureResult:
    """Signatures of one kind checked with one key: how many, how many held, examples."""

    what: str
    signed: int
    verified: int
    unsigned: int
    failures: tuple[str, ...]
    failed: int

    @property
    def all_failed(self) -> bool:
        """Every signature failed: the key is not the one they were made with."""
        return self.signed > 0 and self.verified == 0


def parse_hex_key(value: str) -> bytes:
    """A hex key secret as bytes (ValueError with a secret-free message)."""
    try:
        return bytes.fromhex(value)
    except ValueError:
        raise ValueError("is not hex") from None


def verify_chain_hmacs(conn: Conn, table: str, key: bytes) -> SignatureResult:
    """Recompute ``chain_hmac`` = HMAC(content_sha256 | prev) of every signed row (§4.5).

    The rows are streamed with COPY (text), in one pass that also counts the unsigned rows
    (``chain_hmac`` NULL or empty: written without a key): the hashed fields are hex (or
    empty), which COPY never escapes, so each line's fields are the stored values as they are.
    """
    unsigned = signed = verified = 0
    examples: list[str] = []
    mac = chain_hmac_bytes(key)
    query = sql.SQL(
        "COPY (SELECT COALESCE(content_sha256, ''), COALESCE(prev_content_sha256, ''),"
        " COALESCE(chain_hmac, ''), zone_id, chain_seq, id::text FROM {}) TO STDOUT"
    ).format(sql.Identifier("public", table))
    for lines in copy_line_batches(conn, query):
        for line in lines:
            content, prev, stored, where = line.split(b"\t", 3)
            if not stored:
                unsigned += 1
                continue
            signed += 1
            if hmac.compare_digest(mac(content, prev), stored):
                verified += 1
            elif len(examples) < EXAMPLES:
                zone, seq, ident = where.decode("utf-8", "backslashreplace").split("\t")
                examples.append(f"{table} zone {zone} chain_seq {seq} (id {ident})")
    return SignatureResult(table, signed, verified, unsigned, tuple(examples), signed - verified)


def chain_hmacs_as_verified(report: Report, key: bytes, rows: int) -> SignatureResult | None:
    """``verify_chain_hmacs`` of ``report.table`` as the chain verification already made it.

    The verifier recomputes the same HMAC over every row it reads (stored ``content_sha256`` and
    ``prev_content_sha256``, NULL as ''; a NULL or empty ``chain_hmac`` is unsigned) and counts
    the results per zone. They stand for this reading only when they cover exactly what it
    would read: the report was made under ``key`` (its key check), its zones hold the table's
    ``rows`` rows (counted by the caller), and each of them was recomputed or counted unsigned.
    Returns None otherwise, and when any HMAC failed: the caller then reads the rows itself,
    which also names the rows that fail.
    """
    if not report.hmac_checked or report.hmac_key_check != key_check(key):
        return None
    zones = report.zones.values()
    signed = sum(z.hmac_checked for z in zones)
    unsigned = sum(z.unsigned_rows for z in zones)
    failed = sum(z.hmac_failed for z in zones)
    if failed or not rows == sum(z.rows for z in zones) == signed + unsigned:
        return None
    return SignatureResult(report.table, signed, signed, unsigned, (), 0)


def table_rows(conn: Conn, table: str) -> int:
    """Rows of ``public.<table>`` (with its partitions)."""
    row = conn.execute(sql.SQL("SELECT count(*) FROM {}").format(
        sql.Identifier("public", table))).fetchone()
    assert row is not None
    return int(row[0])


def verify_audit_stream(client: Any, key: bytes) -> SignatureResult:
    """Producer ``sig`` over ``data`` on the audit stream and ``src_sig`` in its DLQ (A2.3)."""
    signed = verified = unsigned = 0
    examples: list[str] = []
    for stream, sig_field, data_field in ((AUDIT_STREAM, b"sig", b"data"),
                                          (AUDIT_DLQ, b"src_sig", b"src_data")):
        for entry_id, fields in _entries(client, stream):
            if stream == AUDIT_DLQ and fields.get(b"reason") == DLQ_HMAC_FAILED.encode():
                continue  # dead-lettered because their signature failed at the source
            sig, data = fields.get(sig_field), fields.get(data_field)
            if sig is None or data is None:
                unsigned += 1
                continue
            signed += 1
            if hmac.compare_digest(producer_signature(key, data), sig.decode(errors="replace")):
                verified += 1
            elif len(examples) < EXAMPLES:
                examples.append(f"{stream} entry {entry_id}")
    return SignatureResult("audit stream sig", signed, verified, unsigned, tuple(examples),
                           signed - verified)


def verify_stream_sigs(client: Any, key: bytes, signed_streams: Sequence[str]
                       ) -> SignatureResult:
    """Every ``_sig`` on every stream entry verifies with the streams key (FACTS-1.0 §11.3)."""
    signed = verified = unsigned = 0
    examples: list[str] = []
    names = sorted({_text(k) for k in client.scan_iter(_type="stream")})
    for stream in names:
        for entry_id, fields in _entries(client, stream):
            sig = fields.get(b"_sig")
            if sig is None:
                if stream in signed_streams:
                    unsigned += 1
                continue
            signed += 1
            if hmac.compare_digest(stream_signature(key, stream, fields),
                                   sig.decode(errors="replace")):
                verified += 1
            elif len(examples) < EXAMPLES:
                examples.append(f"{stream} entry {entry_id}")
    return SignatureResult("stream _sig", signed, verified, unsigned, tuple(examples),
                           signed - verified)


def _entries(client: Any, stream: str, page: int = 1000) -> Any:
    """Every entry of a stream, oldest first, in pages (ids as text, fields as bytes)."""
    start = "-"
    while True:
        batch = client.xrange(stream, min=start, max="+", count=page)
        for entry_id, fields in batch:
            yield _text(entry_id), fields
        if len(batch) < page:
            return
        start = "(" + _text(batch[-1][0])


def _text(value: bytes | str) -> str:
    return value.decode("utf-8", "backslashreplace") if isinstance(value, bytes) else value


# ------------------------------------------------------------------------- admin token


@dataclasses.dataclass(frozen=True)
class AdminTokenResult:
    """The env-bootstrap rows and which of them the restored admin token matches."""

    bootstrap_rows: int
    unrevoked: int
    sha256_matches: tuple[str, ...]
    argon2_checked: tuple[str, ...]
    argon2_failed: tuple[str, ...]
    findings: tuple[str, ...]


def admin_token(conn: Conn, token: str, secret_name: str) -> AdminTokenResult:
    """The unrevoked env-bootstrap row stores sha256(token) and, when set, an Argon2id of it."""
    from argon2 import PasswordHasher
    from argon2.exceptions import InvalidHashError, VerificationError

    rows = conn.execute(
        "SELECT id::text, token_sha256, token_hash, revoked_at IS NULL FROM admin_tokens"
        " WHERE created_by = %s ORDER BY created_at, id", (ENV_BOOTSTRAP,)).fetchall()
    digest = hashlib.sha256(token.encode()).digest()
    live = [r for r in rows if r[3]]
    matches = [r for r in live if r[1] is not None and hmac.compare_digest(bytes(r[1]), digest)]
    checked, failed = [], []
    hasher = PasswordHasher()
    for ident, _sha, phc, _live in matches:
        if phc:
            checked.append(ident)
            try:
                hasher.verify(phc, token)
            except (VerificationError, InvalidHashError):
                failed.append(ident)
    findings = []
    if not live:
        findings.append(f"admin_tokens has no unrevoked {ENV_BOOTSTRAP} row")
    elif not matches:
        findings.append(f"no unrevoked {ENV_BOOTSTRAP} row of admin_tokens stores "
                        f"sha256({secret_name}): the restored admin token is not the one the "
                        f"data was made with ({len(live)} unrevoked row(s) checked)")
    for ident in failed:
        findings.append(f"admin_tokens {ident}: token_hash (Argon2id) does not verify "
                        f"{secret_name}")
    return AdminTokenResult(len(rows), len(live), tuple(r[0] for r in matches), tuple(checked),
                            tuple(failed), tuple(findings))


# ------------------------------------------------------------------------- passwords


@dataclasses.dataclass(frozen=True)
class Login:
    """One login attempt: who, where, and what the server answered (never the password)."""

    label: str
    where: str
    accepted: bool
    answer: str


def pg_login(label: str, host: str, port: int, dbname: str, user: str, password: str) -> Login:
    """Log in to PostgreSQL read-only with a password; report what the server said."""
    where = f"{user}@{host}:{port}/{dbname}"
    conninfo = psycopg.conninfo.make_conninfo(
        host=host, port=str(port), dbname=dbname, user=user, password=password,
        connect_timeout="10", options="-c default_transaction_read_only=on")
    try:
        with psycopg.connect(conninfo, autocommit=True) as conn:
            row = conn.execute("SELECT current_user").fetchone()
        return Login(label, where, True, f"logged in as {row[0] if row else '?'}")
    except psycopg.OperationalError as exc:
        return Login(label, where, False, REDACTOR(_first_line(exc)))


def wrong_password() -> str:
    """A password nobody has (proves the server checks passwords at all)."""
    return "wrong-" + _random.token_hex(12)


def redis_login(label: str, host: str, port: int, password: str | None) -> Login:
    """AUTH (or no AUTH with None) and PING a Redis server."""
    where = f"redis://{host}:{port}"
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    # One attempt: redis-py retries a refused AUTH (it is a ConnectionError) by default.
    client = redis_lib.Redis(host=host, port=port, password=password, socket_timeout=10,
                             socket_connect_timeout=10, retry=Retry(NoBackoff(), 0))
    try:
        pong = client.ping()
        return Login(label, where, bool(pong), "PONG" if pong else repr(pong))
    except (redis_lib.AuthenticationError, redis_lib.ResponseError) as exc:
        return Login(label, where, False, REDACTOR(_first_line(exc)))
    finally:
        client.close()


def url_password(url: str) -> tuple[str | None, str | None]:
    """(user, password) of a URL, percent-decoding both (None where absent)."""
    from urllib.parse import unquote

    parts = urlsplit(url)
    user = unquote(parts.username) if parts.username is not None else None
    password = unquote(parts.password) if parts.password is not None else None
    return user, password


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"


def _one(conn: Conn, query: sql.Composed) -> int:
    row = conn.execute(query).fetchone()
    return int(row[0]) if row else 0
