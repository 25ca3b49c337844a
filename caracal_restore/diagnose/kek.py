"""Symptom "Restored STS cannot decrypt keys" — the page's cause: ZONE_KEK does not match.

Release 2026.06 seals with bare ChaCha20-Poly1305 under the 32 ZONE_KEK bytes: no key id, no
header (FACTS-2026.06 §3.2). A KEK mismatch therefore shows only as failed opens, and is told
apart from damaged rows by *how many* fail: every sealed value failing means the KEK is wrong;
some failing while the KEK opens the others means those rows are damaged.

Offline (``diagnose_offline``): open every sealed value with the restored KEK — ``secrets``
(``ciphertext`` + ``nonce``; plaintext a P-256 ``EC PRIVATE KEY`` PEM), ``providers``
(``secret_config_ct`` + ``secret_config_nonce``; JSON) and ``provider_grants`` (packed
``access_token_ct`` / ``refresh_token_ct``) — and look for the silent trap: a zone whose
signing-key rows are missing (STS would mint a new key on first signing and break every token
issued before; §3.4), judged against the fingerprint's ``secrets`` table and the zones that
have issued tokens.

Online (``probe_jwks``, ``probe_canary_exchange``): the STS's JWKS per zone and a canary token
exchange; ``500 signing key decryption failed`` and ``500 token issuance failed`` map to this
symptom, and a key id the restored database never held means STS minted a new key.

Release 1.0 (``SECRET_STORE_KEK`` + optional ``SECRET_STORE_KEK_PREVIOUS``, CSS1 envelopes with
a key id and a location AAD, FACTS-1.0 §7) is handled by the same code with ``fmt="css1"``:
every envelope's kekId is compared with the restored keyring's first, so a mismatch names the
key it is about — SECRET_STORE_KEK when no envelope is under it, SECRET_STORE_KEK_PREVIOUS when
the current key seals the others (a rotation window restored without its retiring key) — and
only an envelope under a restored kekId that still does not open is a damaged row. The
locations come from the release profile.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import datetime as dt
import json
import uuid
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import httpx
import psycopg
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from psycopg import sql

from caracal_restore import envelope
from caracal_restore.diagnose import SYMPTOM_KEK, Diagnosis, Finding
from caracal_restore.diagnose._common import (
    DiagnosticError,
    error_of,
    exists,
    fingerprint_table,
    has_column,
    table_digests,
)

Plaintext = Literal["ec-p256-pem", "json", "text"]

#: ``secrets.name`` of a zone signing key, and the verification grace of the previous key.
SIGNING_KEY_NAME = "zone_signing_key"
GRACE = dt.timedelta(hours=24)


@dataclasses.dataclass(frozen=True)
class SealedColumn:
    """One place release 2026.06 stores a value sealed under ZONE_KEK (FACTS-2026.06 §3.2)."""

    id: str
    table: str
    ciphertext: str
    #: Column of the 12-byte nonce; None for the packed layout nonce‖ct‖tag (or CSS1).
    nonce: str | None
    plaintext: Plaintext
    #: CSS1 only: the location's AAD, or the column whose value is the AAD (``ref``).
    aad: str = ""
    aad_column: str = ""
    #: Column naming the row in findings, and an SQL filter on the rows ('' = all).
    id_column: str = "id"
    where: str = ""

    @classmethod
    def from_spec(cls, spec: Any) -> SealedColumn:
        """From a release profile's ``SealedSpec`` (same fields, the profile's names)."""
        return cls(spec.id, spec.table, spec.column, spec.nonce_column or None, spec.plaintext,
                   spec.aad, spec.aad_column, spec.id_column, spec.where)


#: Every sealed location of release 2026.06, in the order the facts list them.
SEALED_2026_06: tuple[SealedColumn, ...] = (
    SealedColumn("secrets.ciphertext", "secrets", "ciphertext", "nonce", "ec-p256-pem"),
    SealedColumn("providers.secret_config_ct", "providers", "secret_config_ct",
                 "secret_config_nonce", "json"),
    SealedColumn("provider_grants.access_token_ct", "provider_grants", "access_token_ct", None,
                 "text"),
    SealedColumn("provider_grants.refresh_token_ct", "provider_grants", "refresh_token_ct", None,
                 "text"),
)


@dataclasses.dataclass(frozen=True)
class OpenResult:
    """The outcome of opening one sealed value (never its plaintext)."""

    location: str
    row_id: str
    zone_id: str
    #: opened | aead | foreign-kek | layout | plaintext
    outcome: str
    reason: str = ""
    #: CSS1: the envelope's kekId (hex)
    kek_id: str = ""

    @property
    def ok(self) -> bool:
        """True when the value opened and holds what the location should hold."""
        return self.outcome == "opened"


def open_value(kek: bytes | Sequence[bytes], column: SealedColumn, ciphertext: bytes | None,
               nonce: bytes | None, *, fmt: str = "zone-chacha20",
               aad: str = "") -> tuple[str, str]:
    """Open one stored value as STS/API would; returns (outcome, reason).

    ``fmt`` ``zone-chacha20`` (2026.06; ``kek`` is the KEK) or ``css1`` (1.0; ``kek`` may be a
    keyring, current first; ``aad`` is the location's AAD).
    """
    if ciphertext is None:
        return "layout", "ciphertext is NULL while the row expects a sealed value"
    keys = [kek] if isinstance(kek, bytes) else list(kek)
    try:
        if fmt == "css1":
            plain = envelope.css1_open(keys, bytes(ciphertext), aad)
        elif column.nonce is None:
            plain = envelope.zone_open_packed(keys[0], bytes(ciphertext))
        else:
            if nonce is None:
                return "layout", "nonce is NULL"
            plain = envelope.zone_open(keys[0], bytes(ciphertext), bytes(nonce))
    except envelope.EnvelopeError as exc:
        return _outcome_of(exc), str(exc)
    return _check_plaintext(column.plaintext, plain)


def _outcome_of(exc: envelope.EnvelopeError) -> str:
    text = str(exc)
    if "different KEK" in text:
        return "foreign-kek"
    if "authentication failed" in text or "rejected" in text:
        return "aead"
    return "layout"


def _check_plaintext(kind: Plaintext, plain: bytes) -> tuple[str, str]:
    """Does an opened value hold what its location should (values moved between columns open)?"""
    if kind == "ec-p256-pem":
        if not plain.startswith(b"-----BEGIN EC PRIVATE KEY-----"):
            return "plaintext", "opened, but is not an EC PRIVATE KEY PEM block"
        try:
            key = serialization.load_pem_private_key(plain, password=None)
        except (ValueError, TypeError):
            return "plaintext", "opened, but the PEM does not parse"
        if not isinstance(key, ec.EllipticCurvePrivateKey) or key.curve.name != "secp256r1":
            return "plaintext", "opened, but is not a P-256 key"
        return "opened", ""
    if kind == "json":
        try:
            value = json.loads(plain.decode())
        except (UnicodeDecodeError, json.JSONDecodeError):
            return "plaintext", "opened, but is not UTF-8 JSON"
        if not isinstance(value, dict):
            return "plaintext", "opened, but is not a JSON object"
        return "opened", ""
    try:
        plain.decode()
    except UnicodeDecodeError:
        return "plaintext", "opened, but is not UTF-8 text"
    return "opened", ""


def _column(name: str | None) -> sql.Composable:
    """A column reference, or NULL where the location has no such column."""
    return sql.Identifier(name) if name else sql.SQL("NULL")


def open_all(conn: psycopg.Connection[Any], kek: bytes | Sequence[bytes],
             columns: Sequence[SealedColumn] = SEALED_2026_06, *,
             fmt: str = "zone-chacha20") -> list[OpenResult]:
    """Open every sealed value of every location (rows with no sealed value are skipped)."""
    results: list[OpenResult] = []
    for column in columns:
        if not exists(conn, column.table):
            continue
        zone = _column("zone_id" if has_column(conn, column.table, "zone_id") else None)
        query = sql.SQL(
            "SELECT {ident}::text, {zone}::text, {ct}, {nonce}::bytea, {aad}::text FROM {table}"
            " WHERE ({ct} IS NOT NULL OR {nonce} IS NOT NULL){where} ORDER BY 2, 1"
        ).format(ident=sql.Identifier(column.id_column), zone=zone,
                 ct=sql.Identifier(column.ciphertext), nonce=_column(column.nonce),
                 aad=_column(column.aad_column or None), table=sql.Identifier(column.table),
                 where=sql.SQL(f" AND ({column.where})" if column.where else ""))
        for row_id, zone_id, ct, nc, aad_value in conn.execute(query).fetchall():
            outcome, reason = open_value(kek, column, ct, nc, fmt=fmt,
                                         aad=aad_value or column.aad)
            kek_id = bytes(ct[4:12]).hex() if fmt == "css1" and ct is not None else ""
            results.append(OpenResult(column.id, row_id, zone_id or "", outcome, reason,
                                      kek_id))
    return results


@dataclasses.dataclass(frozen=True)
class SigningKeyRow:
    """One zone signing key as the restored database holds it (sealed part left out)."""

    kid: str
    zone_id: str
    version: int
    created_at: dt.datetime


def signing_keys(conn: psycopg.Connection[Any]) -> dict[str, list[SigningKeyRow]]:
    """Signing-key rows per zone, active (highest version) first."""
    out: dict[str, list[SigningKeyRow]] = collections.defaultdict(list)
    if not exists(conn, "secrets"):
        return {}
    rows = conn.execute(
        "SELECT id::text, zone_id::text, version, created_at FROM secrets WHERE name = %s"
        " ORDER BY zone_id, version DESC, created_at DESC", (SIGNING_KEY_NAME,)).fetchall()
    for kid, zone, version, created in rows:
        out[zone].append(SigningKeyRow(kid, zone, int(version), created))
    return dict(out)


def verification_set(rows: Sequence[SigningKeyRow], now: dt.datetime) -> list[str]:
    """Kids STS publishes for a zone: the active key, plus rank 2 while the active is < 24 h old."""
    if not rows:
        return []
    if len(rows) >= 2 and now - rows[0].created_at < GRACE:
        return [rows[0].kid, rows[1].kid]
    return [rows[0].kid]


def keyring(secrets: Mapping[str, str], kek_secret: str, previous_secret: str = "") -> list[bytes]:
    """The restored keyring from a secret store's values: the KEK, then the retiring KEK when
    the release has one (``previous_secret``) and the store holds it.

    ``EnvelopeError`` for an unusable current key; an unusable retiring key is left out (the
    offline diagnosis names it).
    """
    ring = [envelope.parse_kek(secrets.get(kek_secret, ""))]
    previous = secrets.get(previous_secret) if previous_secret else None
    if previous:
        with contextlib.suppress(envelope.EnvelopeError):
            ring.append(envelope.parse_kek(previous))
    return ring


# ------------------------------------------------------------------------------- offline


def diagnose_offline(
    conn: psycopg.Connection[Any],
    kek_hex: str | None,
    *,
    fingerprint: Mapping[str, Any] | None,
    lineage_table: str = "sessions",
    expected_kids: Sequence[str] = (),
    kek_secret: str = "zoneKek",
    columns: Sequence[SealedColumn] = SEALED_2026_06,
    fmt: str = "zone-chacha20",
    kek_env: str = "ZONE_KEK",
    previous_hex: str | None = None,
    previous_env: str = "",
) -> Diagnosis:
    """Open every sealed value with the restored KEK and look for missing signing keys.

    ``fingerprint`` is the source database's (None: internal consistency only);
    ``expected_kids`` are signing key ids known to exist in the source (the canary's inputs);
    ``columns``/``fmt`` are the release's sealed locations and envelope format. CSS1 (1.0):
    ``previous_hex`` is the restored retiring key (``previous_env``,
    SECRET_STORE_KEK_PREVIOUS), and every envelope's kekId is compared with the keyring's
    before anything is opened, so a mismatch names the key it is about.
    """
    findings: list[Finding] = []
    notes: list[str] = []
    observed: dict[str, Any] = {}
    kek: bytes | None = None
    if kek_hex is None:
        findings.append(Finding("kek-unusable", f"secret {kek_secret}",
                                "absent from the restored secret store: STS refuses to start "
                                f"({kek_env} is required)"))
    else:
        try:
            kek = envelope.parse_kek(kek_hex)
        except envelope.EnvelopeError as exc:
            findings.append(Finding("kek-unusable", f"secret {kek_secret}",
                                    f"not a usable {kek_env} ({exc})"))
    previous: bytes | None = None
    if previous_hex is not None and fmt == "css1":
        try:
            previous = envelope.parse_kek(previous_hex)
        except envelope.EnvelopeError as exc:
            findings.append(Finding("kek-unusable", f"secret {previous_env}",
                                    f"not a usable {previous_env} ({exc})"))
    if kek is not None:
        ring = [kek] + ([previous] if previous is not None else [])
        results = open_all(conn, ring, columns, fmt=fmt)
        if fmt == "css1":
            observed["restored_kek_id"] = envelope.kek_id(kek).hex()
            observed["restored_previous_kek_id"] = (envelope.kek_id(previous).hex()
                                                    if previous is not None else None)
            findings += _classify_css1(results, observed, kek_env, previous_env)
        else:
            findings += _classify_opens(results, observed, kek_secret)
    else:
        notes.append("sealed values not opened: no usable KEK")
    keys = signing_keys(conn)
    findings += _missing_signing_keys(conn, keys, fingerprint, lineage_table, expected_kids,
                                      observed, notes)
    observed["signing_keys_per_zone"] = {z: [k.kid for k in rows] for z, rows in keys.items()}
    return Diagnosis(SYMPTOM_KEK, tuple(findings), observed, tuple(notes))


def _observe_opens(results: list[OpenResult], observed: dict[str, Any]) -> list[OpenResult]:
    """Record values and failures per location; return the failures."""
    failed = [r for r in results if not r.ok]
    per_location = collections.Counter(r.location for r in results)
    observed["sealed_values"] = {
        loc: {"rows": n, "failed": sum(1 for r in failed if r.location == loc)}
        for loc, n in per_location.items()
    }
    observed["failed_opens"] = [dataclasses.asdict(r) for r in failed]
    return failed


def _classify_opens(results: list[OpenResult], observed: dict[str, Any],
                    kek_secret: str = "zoneKek") -> list[Finding]:
    """All fail: the KEK is wrong. Some fail: those rows are damaged (2026.06: no key id)."""
    failed = _observe_opens(results, observed)
    if not failed:
        return []
    undecryptable = [r for r in failed if r.outcome == "aead"]
    if len(undecryptable) == len(results):
        zones: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
        for r in failed:
            zones[r.zone_id][r.location] += 1
        return [
            Finding("kek-mismatch", f"zone {zone}",
                    "every sealed value fails to open under the restored ZONE_KEK ("
                    + ", ".join(f"{n} {loc}" for loc, n in sorted(counts.items()))
                    + "): chacha20poly1305: message authentication failed", zone)
            for zone, counts in sorted(zones.items())
        ]
    return [_corrupt(r, results, failed) for r in failed]


def _classify_css1(results: list[OpenResult], observed: dict[str, Any], kek_env: str,
                   previous_env: str) -> list[Finding]:
    """CSS1: kekIds first. An envelope names the KEK that sealed it (FACTS-1.0 §7.2).

    Envelopes whose kekId matches neither restored key are a KEK mismatch: of the current key
    (``kek_env``) when no envelope at all is under it, else of the retiring key
    (``previous_env``): the current key is proven by the envelopes it seals, so the others were
    sealed before a rotation and need SECRET_STORE_KEK_PREVIOUS. An envelope under a restored
    kekId that still does not open (data key or value rejected, bad layout) is a damaged row.
    """
    failed = _observe_opens(results, observed)
    current = observed.get("restored_kek_id") or ""
    prior = observed.get("restored_previous_kek_id")
    observed["envelopes_per_kek_id"] = dict(collections.Counter(r.kek_id for r in results))
    foreign = [r for r in failed if r.outcome == "foreign-kek"]
    under_current = sum(1 for r in results if r.kek_id == current)
    by_zone: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
    for r in foreign:
        by_zone[r.zone_id or "(no zone)"][r.kek_id] += 1
    out = []
    for zone, ids in sorted(by_zone.items()):
        seen = ", ".join(f"{n} under kekId {k}" for k, n in sorted(ids.items()))
        if under_current:
            cause = "kek-previous-mismatch"
            detail = (f"envelopes sealed before a rotation: {seen}; the restored {previous_env} "
                      + (f"has kekId {prior}" if prior else "is absent")
                      + f" ({kek_env} kekId {current} seals {under_current} other envelopes)")
        else:
            cause = "kek-mismatch"
            detail = (f"envelopes sealed under another KEK than the restored {kek_env} (kekId "
                      f"{current}" + (f", {previous_env} kekId {prior}" if prior else "")
                      + f"): {seen}")
        out.append(Finding(cause, f"zone {zone}", detail, zone if zone != "(no zone)" else None))
    rest = [r for r in failed if r.outcome != "foreign-kek"]
    return out + [_corrupt(r, results, failed) for r in rest]


def _corrupt(r: OpenResult, results: list[OpenResult], failed: list[OpenResult]) -> Finding:
    return Finding("sealed-rows-corrupt", f"{r.location} row {r.row_id} (zone {r.zone_id or '-'})",
                   f"{r.reason}; {len(results) - len(failed)} of {len(results)} sealed values "
                   "open under the same KEK", r.zone_id or None)


def _missing_signing_keys(
    conn: psycopg.Connection[Any],
    keys: Mapping[str, list[SigningKeyRow]],
    fingerprint: Mapping[str, Any] | None,
    lineage_table: str,
    expected_kids: Sequence[str],
    observed: dict[str, Any],
    notes: list[str],
) -> list[Finding]:
    """The silent trap: key rows the source had are gone, so STS would mint new ones."""
    findings: list[Finding] = []
    restored = {k.kid for rows in keys.values() for k in rows}
    for kid in expected_kids:
        if kid not in restored:
            findings.append(Finding("signing-keys-missing", f"signing key {kid}",
                                    "known to exist in the source, absent after restore"))
    issuing: dict[str, tuple[int, int]] = {}
    if exists(conn, lineage_table):
        live = (sql.SQL("count(*) FILTER (WHERE expires_at > now())")
                if has_column(conn, lineage_table, "expires_at") else sql.SQL("count(*)"))
        issuing = {z: (int(n), int(u)) for z, n, u in conn.execute(sql.SQL(
            "SELECT zone_id::text, count(*), {} FROM {} GROUP BY zone_id ORDER BY zone_id"
        ).format(live, sql.Identifier(lineage_table))).fetchall()}
    observed["token_lineage_rows_per_zone"] = {z: {"rows": n, "unexpired": u}
                                               for z, (n, u) in issuing.items()}
    source = fingerprint_table(fingerprint, "secrets")
    now = (table_digests(conn, ["secrets"]).get("secrets", {"rows": 0, "sha256": None})
           if source is not None else None)
    rows_lost = source is not None and now is not None and now["rows"] < source["rows"]
    for zone, (sessions, unexpired) in sorted(issuing.items()):
        if zone in keys:
            continue
        if unexpired or rows_lost:
            why = (f"{unexpired} of its {sessions} {lineage_table} rows are unexpired tokens"
                   if unexpired else f"{sessions} {lineage_table} rows show STS issued tokens "
                   "here and the source had more secrets rows")
            findings.append(Finding(
                "signing-keys-missing", f"zone {zone}",
                f"no zone_signing_key row although {why}: STS would mint a new key on first "
                "signing and every earlier token would stop verifying", zone))
        else:
            notes.append(f"zone {zone}: {sessions} {lineage_table} rows, all expired, and no "
                         "signing key: STS will mint one on first signing; no live token "
                         "depends on an earlier key")
    if source is None or now is None:
        notes.append("no source fingerprint: missing key rows judged from the zones whose "
                     "tokens depend on them (internal consistency)")
        return findings
    observed["secrets_table"] = {"source": source, "restored": now}
    if rows_lost:
        named = {f.zone_id for f in findings if f.zone_id}
        findings.append(Finding(
            "signing-keys-missing", "table secrets",
            f"{source['rows'] - now['rows']} of the source's {source['rows']} rows are missing "
            f"after restore" + (f" (zones without keys: {', '.join(sorted(named))})" if named
                                else "")))
    elif now["sha256"] != source["sha256"] and not any(f.cause == "signing-keys-missing"
                                                       for f in findings):
        notes.append(f"secrets: {now['rows']} rows, content differs from the source "
                     f"(rows damaged or replaced: see the open results)")
    return findings


# -------------------------------------------------------------------------------- online


def probe_jwks(
    client: httpx.Client,
    sts_url: str,
    keys: Mapping[str, list[SigningKeyRow]],
    zones: Sequence[str],
    *,
    offline: Diagnosis | None = None,
    now: dt.datetime | None = None,
) -> Diagnosis:
    """GET the JWKS of every zone; compare with the restored verification set of each.

    ``keys`` are the restored (pristine) rows, so a key the STS minted after the restore shows
    as a key id the restore never held.
    """
    now = now or dt.datetime.now(dt.UTC)
    all_kids = {k.kid for rows in keys.values() for k in rows}
    findings: list[Finding] = []
    observed: dict[str, Any] = {}
    for zone in zones:
        expected = verification_set(keys.get(zone, []), now)
        reply = client.get(f"{sts_url.rstrip('/')}/.well-known/jwks.json",
                           params={"zone_id": zone})
        status, description = error_of(reply)
        seen: list[str] = []
        if status == 200:
            seen = [str(k.get("kid")) for k in reply.json().get("keys", [])]
        observed[zone] = {"status": status, "description": "" if status == 200 else description,
                          "published_kids": seen, "restored_verification_set": expected}
        if status == 200:
            findings += _jwks_kids(zone, expected, seen, all_kids, offline)
        elif status == 500 and description == "signing key decryption failed":
            findings.append(Finding(_kek_cause(offline), f"JWKS of zone {zone}",
                                    "500 signing key decryption failed: no key of the zone opens "
                                    "under the STS's ZONE_KEK", zone))
        elif status == 404 and description == "zone signing key not found":
            if expected:
                findings.append(Finding("signing-keys-missing", f"JWKS of zone {zone}",
                                        "404 zone signing key not found although the restore "
                                        f"holds {len(expected)} key(s)", zone))
        else:
            raise DiagnosticError(f"JWKS of zone {zone}: unexpected {status} {description!r}")
    return Diagnosis(SYMPTOM_KEK, tuple(findings), observed)


def _kek_cause(offline: Diagnosis | None) -> str:
    """The online failure's cause: the offline diagnosis refines 'cannot decrypt'."""
    if offline is not None and offline.of("sealed-rows-corrupt") and not offline.of(
            "kek-mismatch", "kek-unusable"):
        return "sealed-rows-corrupt"
    return "kek-mismatch"


def _jwks_kids(zone: str, expected: Sequence[str], seen: Sequence[str], all_kids: set[str],
               offline: Diagnosis | None) -> list[Finding]:
    """A minted key explains absent restored keys (their rows are gone); else they were skipped."""
    skipped = [k for k in expected if k not in seen]
    minted = [k for k in seen if k not in all_kids]
    if minted:
        gone = (f"; restored key(s) {', '.join(skipped)} are no longer published" if skipped
                else "")
        return [Finding("signing-keys-missing", f"JWKS of zone {zone}",
                        f"published key(s) {', '.join(minted)} were never in the restored "
                        f"database: STS found no key row and minted a new key{gone}", zone)]
    if skipped:
        return [Finding(_kek_cause(offline), f"JWKS of zone {zone}",
                        f"restored key(s) {', '.join(skipped)} are not published: STS skipped "
                        "them as undecryptable", zone)]
    return []


@dataclasses.dataclass(frozen=True)
class CanaryExchange:
    """The canary exchange's observable outcome (the token itself is not kept)."""

    status: int
    description: str
    kid: str | None
    request_id: str


def canary_exchange(client: httpx.Client, sts_url: str, *, zone_id: str, application_id: str,
                    client_secret: str, resource: str, scope: str = "") -> CanaryExchange:
    """The minimal token exchange of FACTS-2026.06 §7.2 (client credentials, one resource).

    ``scope``: what the release's bootstrap exchange must request ('' = none; 1.0 requires
    ``agent:lifecycle``).
    """
    request_id = f"caracal-restore-{uuid.uuid4()}"
    form = {"grant_type": "urn:ietf:params:oauth:grant-type:token-exchange",
            "zone_id": zone_id, "application_id": application_id,
            "client_secret": client_secret, "resource": resource}
    if scope:
        form["scope"] = scope
    reply = client.post(f"{sts_url.rstrip('/')}/oauth/2/token", data=form,
                        headers={"X-Request-Id": request_id})
    status, description = error_of(reply)
    kid = None
    if status == 200:
        token = str(reply.json().get("access_token", ""))
        kid = _kid_of(token)
    return CanaryExchange(status, "" if status == 200 else description, kid, request_id)


def _kid_of(token: str) -> str | None:
    import base64

    head = token.split(".", 1)[0]
    try:
        header = json.loads(base64.urlsafe_b64decode(head + "=" * (-len(head) % 4)))
    except (ValueError, json.JSONDecodeError):
        return None
    return str(header.get("kid")) if isinstance(header, dict) and header.get("kid") else None


def probe_canary_exchange(exchange: CanaryExchange, zone_id: str,
                          keys: Mapping[str, list[SigningKeyRow]], *,
                          offline: Diagnosis | None = None) -> Diagnosis:
    """Map the canary exchange's outcome to this symptom's causes."""
    observed = dataclasses.asdict(exchange)
    restored = {k.kid for k in keys.get(zone_id, [])}
    observed["restored_kids_of_zone"] = sorted(restored)
    findings: list[Finding] = []
    if exchange.status == 200:
        if exchange.kid not in restored:
            findings.append(Finding("signing-keys-missing", f"canary token of zone {zone_id}",
                                    f"signed with kid {exchange.kid}, which the restored database "
                                    "never held: STS minted a new signing key", zone_id))
    elif exchange.status == 500 and exchange.description == "token issuance failed":
        findings.append(Finding(_kek_cause(offline), f"canary exchange in zone {zone_id}",
                                "500 token issuance failed: the active signing key does not open "
                                "under the STS's ZONE_KEK", zone_id))
    else:
        raise DiagnosticError(
            f"the canary exchange failed for a reason outside this symptom: {exchange.status} "
            f"{exchange.description!r} (request {exchange.request_id})")
    return Diagnosis(SYMPTOM_KEK, tuple(findings), observed)
