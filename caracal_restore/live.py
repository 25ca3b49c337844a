"""The live part of the restore checklist (steps 4-6): readiness, records, canary flow.

Step 4 polls ``/ready`` with a deadline (``waiting.until``) and tells "not ready" (the service
answered a failure body: the control is violated) from "unreachable" (it never answered: the
check cannot be evaluated, ``ServiceUnreachable``). Step 5 confirms the restored records —
audit query, policy-set activation, gateway bindings, sessions, agents, delegations — against
the bundle's fingerprint (or by internal consistency when the bundle has none). Step 6 runs the
canary: a client-credentials token exchange at the STS, verification of the mandate with PyJWT
against the restored JWKS, a protected request through the Gateway, and the audit evidence of
both, which must continue each zone's HMAC chain from the restored head.

Every observation is plain data the checks attach as evidence; HTTP records never hold the
``Authorization`` header, tokens or client secrets. Verdicts are lists of problems written for
an auditor; an empty list means the control holds.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import time
import uuid
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import httpx
import jwt
import psycopg
from psycopg import sql

from caracal_restore import fingerprint as fp
from caracal_restore.chainhash import AUDIT_HASH_SELECT, chain_hmac, content_hash_parts
from caracal_restore.chainhead import head_contents, zone_head
from caracal_restore.errors import SuiteError
from caracal_restore.profiles import Profile
from caracal_restore.redact import REDACTOR
from caracal_restore.waiting import WaitTimeout, until

GRANT_TOKEN_EXCHANGE = "urn:ietf:params:oauth:grant-type:token-exchange"
#: Canary flows a profile may name (``Profile.canary_flow``).
CANARY_FLOWS = ("session-mandate", "gateway-mandate")
#: Headers never copied into evidence (credentials), compared case-insensitively.
HIDDEN_HEADERS = frozenset({"authorization", "proxy-authorization", "cookie", "set-cookie"})
#: JSON fields of request forms and response bodies whose values are credentials.
CREDENTIAL_FIELDS = frozenset(
    {"access_token", "refresh_token", "id_token", "subject_token", "client_secret"}
)
BODY_LIMIT = 4000


class ServiceUnreachable(SuiteError):
    """A service never answered (connection refused, timeout): the check is not evaluated."""


class NotEvaluable(SuiteError):
    """A service answered, but not in a way a control can be judged on (the check is broken)."""


def new_request_id(purpose: str) -> str:
    """A fresh request id (1..128 printable ASCII), never reused: it is the STS nonce."""
    return f"caracal-restore-{purpose}-{uuid.uuid4().hex}"


# ------------------------------------------------------------------------------------ HTTP


def http_client(timeout: float = 10.0) -> httpx.Client:
    """A client for the live checks: bounded timeouts, no redirects, no proxies from the env."""
    return httpx.Client(timeout=httpx.Timeout(timeout, connect=3.0), follow_redirects=False,
                        trust_env=False)


def _headers(headers: httpx.Headers) -> dict[str, str]:
    return {k: v for k, v in headers.items() if k.lower() not in HIDDEN_HEADERS}


def _mask(value: Any) -> Any:
    """A JSON value with every credential field replaced by its length."""
    if isinstance(value, dict):
        return {k: (f"«hidden: {len(str(v))} chars»" if k in CREDENTIAL_FIELDS and v else _mask(v))
                for k, v in value.items()}
    if isinstance(value, list):
        return [_mask(v) for v in value]
    return value


def body_of(response: httpx.Response) -> Any:
    """The response body as JSON when it is JSON (credentials hidden), else bounded text."""
    try:
        return _mask(response.json())
    except (json.JSONDecodeError, UnicodeDecodeError):
        text = response.text
        return text if len(text) <= BODY_LIMIT else text[:BODY_LIMIT] + "…"


def http_record(response: httpx.Response, form: Mapping[str, str] | None = None) -> dict[str, Any]:
    """One HTTP exchange as evidence: method, URL, status, headers (no credentials), body."""
    request = response.request
    out: dict[str, Any] = {
        "request": {"method": request.method, "url": str(request.url),
                    "headers": _headers(request.headers)},
        "response": {"status": response.status_code, "headers": _headers(response.headers),
                     "body": body_of(response)},
    }
    if form is not None:
        out["request"]["form"] = _mask(dict(form))
    return out


def error_text(response: httpx.Response) -> str:
    """``<status> <error>: <error_description>`` (or the bounded body) for messages."""
    body = body_of(response)
    if isinstance(body, dict) and ("error" in body or "error_description" in body):
        return (f"{response.status_code} {body.get('error', '')}: "
                f"{body.get('error_description', '')}").rstrip(": ")
    text = json.dumps(body) if not isinstance(body, str) else body
    return f"{response.status_code} {text[:300]}"


# ------------------------------------------------------------------------------ readiness


@dataclasses.dataclass(frozen=True)
class ReadyObservation:
    """The last answer of a service's ``/ready`` within the deadline."""

    service: str
    url: str
    ready: bool
    status: int
    body: str
    reason: str | None
    attempts: int
    seconds: float
    record: dict[str, Any]

    def evidence(self) -> dict[str, Any]:
        """What the report shows."""
        return {"service": self.service, "url": self.url, "ready": self.ready,
                "status": self.status, "body": self.body, "reason": self.reason,
                "attempts": self.attempts, "seconds": round(self.seconds, 3),
                "exchange": self.record}


def _same_json(text: str, expected: str) -> bool:
    try:
        return bool(json.loads(text) == json.loads(expected))
    except json.JSONDecodeError:
        return False


def wait_ready(client: httpx.Client, service: str, base_url: str, expected_body: str, *,
               timeout: float, interval: float = 0.5) -> ReadyObservation:
    """Poll ``<base_url>/ready`` until it answers 200 with ``expected_body`` or the deadline.

    Returns the last answer (``ready`` False when the service kept answering something else);
    raises ``ServiceUnreachable`` when it never answered at all.
    """
    url = base_url.rstrip("/") + "/ready"
    started = time.monotonic()
    attempts = 0
    last: list[httpx.Response] = []

    def probe() -> httpx.Response | None:
        nonlocal attempts
        attempts += 1
        response = client.get(url)
        last[:] = [response]
        if response.status_code == 200 and _same_json(response.text, expected_body):
            return response
        return None

    try:
        until(probe, timeout=timeout, interval=interval, transient=(httpx.TransportError,),
              what=f"{service} /ready")
    except WaitTimeout as exc:
        if not last:
            raise ServiceUnreachable(
                f"{service} at {base_url} never answered /ready within {timeout:.0f}s "
                f"({attempts} attempts): {exc}"
            ) from None
    response = last[0]
    reason = None
    try:
        parsed = response.json()
        if isinstance(parsed, dict) and parsed.get("reason") is not None:
            reason = str(parsed["reason"])
    except (json.JSONDecodeError, UnicodeDecodeError):
        pass
    ready = response.status_code == 200 and _same_json(response.text, expected_body)
    return ReadyObservation(service, url, ready, response.status_code, response.text[:BODY_LIMIT],
                            reason, attempts, time.monotonic() - started, http_record(response))


# ------------------------------------------------------------------------------ audit chain


@dataclasses.dataclass(frozen=True)
class ChainHead:
    """The last row of one zone's audit chain (``max_seq`` 0 and no hash: an empty chain)."""

    zone_id: str
    max_seq: int
    content_sha256: str | None


@dataclasses.dataclass(frozen=True)
class AuditRow:
    """One ``audit_events`` row with what is needed to recompute its hash and HMAC."""

    id: str
    zone_id: str
    event_type: str
    request_id: str
    decision: str
    evaluation_status: str
    chain_seq: int | None
    content_sha256: str | None
    prev_content_sha256: str | None
    chain_hmac: str | None
    fields: tuple[str, ...] = dataclasses.field(repr=False)
    epoch_micros: int = 0

    def evidence(self) -> dict[str, Any]:
        """The row as the report shows it (identifiers, decision, chain columns)."""
        return {"id": self.id, "zone_id": self.zone_id, "event_type": self.event_type,
                "request_id": self.request_id, "decision": self.decision,
                "evaluation_status": self.evaluation_status, "chain_seq": self.chain_seq,
                "content_sha256": self.content_sha256,
                "prev_content_sha256": self.prev_content_sha256, "chain_hmac": self.chain_hmac}

    def chain_columns(self) -> tuple[Any, ...]:
        """What the audit query must return unchanged."""
        return (self.zone_id, self.event_type, self.decision, self.chain_seq,
                self.content_sha256, self.prev_content_sha256, self.chain_hmac)


_ROW_SELECT = sql.SQL(
    AUDIT_HASH_SELECT + ", content_sha256, prev_content_sha256, chain_hmac, chain_seq"
    " FROM {} "
)


def _audit_rows(conn: psycopg.Connection[Any], table: str, where: str,
                params: Sequence[Any]) -> list[AuditRow]:
    query = sql.SQL("SELECT ") + _ROW_SELECT.format(sql.Identifier(table)) + sql.SQL(where)
    rows = []
    for r in conn.execute(query, params).fetchall():
        fields = tuple(str(v) for v in r[:12])
        rows.append(AuditRow(
            id=fields[0], zone_id=fields[1], event_type=fields[2], request_id=fields[3],
            decision=fields[4], evaluation_status=fields[8], chain_seq=r[16],
            content_sha256=r[13], prev_content_sha256=r[14], chain_hmac=r[15],
            fields=fields, epoch_micros=int(r[12]),
        ))
    return rows


def chain_head(conn: psycopg.Connection[Any], profile: Profile, zone_id: str) -> ChainHead:
    """The zone's head as the ingestor finds it (``ORDER BY chain_seq DESC NULLS LAST``)."""
    head = zone_head(conn, zone_id, profile.audit_table)
    if head is None or head[1] is None:
        return ChainHead(zone_id, 0, None)
    return ChainHead(zone_id, int(head[1]), head[0])


def rows_after(conn: psycopg.Connection[Any], profile: Profile, zone_id: str,
               after_seq: int) -> list[AuditRow]:
    """The zone's rows past ``after_seq``, in chain order."""
    return _audit_rows(conn, profile.audit_table,
                       "WHERE zone_id = %s AND chain_seq > %s ORDER BY chain_seq",
                       (zone_id, after_seq))


def rows_by_request(conn: psycopg.Connection[Any], profile: Profile,
                    request_ids: Sequence[str]) -> list[AuditRow]:
    """Every row carrying one of ``request_ids`` (the audit query's ``request_id`` filter)."""
    return _audit_rows(conn, profile.audit_table,
                       "WHERE request_id = ANY(%s) ORDER BY zone_id, chain_seq, id",
                       (list(request_ids),))


def row_problems(row: AuditRow, key: bytes) -> list[str]:
    """Recompute a row's content hash and chain HMAC; differences as auditor sentences."""
    problems = []
    content = content_hash_parts(list(row.fields), row.epoch_micros)
    if content != row.content_sha256:
        problems.append(f"row {row.id} (seq {row.chain_seq}): content_sha256 "
                        f"{_short(row.content_sha256)} does not recompute ({_short(content)})")
    mac = chain_hmac(key, row.content_sha256 or "", row.prev_content_sha256)
    if mac != row.chain_hmac:
        problems.append(f"row {row.id} (seq {row.chain_seq}): chain_hmac does not verify with "
                        "the restored AUDIT_HMAC_KEY")
    return problems


def continuation_problems(head: ChainHead, rows: Sequence[AuditRow], key: bytes) -> list[str]:
    """Do ``rows`` (a zone's rows past the restored head, in order) continue the chain?"""
    if not rows:
        return [f"zone {head.zone_id}: no row was appended after the restored head "
                f"(chain_seq {head.max_seq})"]
    problems = []
    expected_seq, expected_prev = head.max_seq + 1, head.content_sha256
    for index, row in enumerate(rows):
        where = "first new row" if index == 0 else f"new row {index + 1}"
        if row.chain_seq != expected_seq:
            problems.append(f"zone {head.zone_id}: {where} has chain_seq {row.chain_seq}, "
                            f"expected {expected_seq} (restored head {head.max_seq})")
        if (row.prev_content_sha256 or None) != (expected_prev or None):
            problems.append(
                f"zone {head.zone_id}: {where} (seq {row.chain_seq}) has prev_content_sha256 "
                f"{_short(row.prev_content_sha256)}, expected {_short(expected_prev)}"
                + (" — the restored head's content_sha256" if index == 0 else ""))
        problems += [f"zone {head.zone_id}: {p}" for p in row_problems(row, key)]
        expected_seq = (row.chain_seq or expected_seq) + 1
        expected_prev = row.content_sha256
    return problems


def _short(value: str | None) -> str:
    return f"{value[:16]}…" if value else "none"


# ------------------------------------------------------------------------ signing keys


def signing_key_ids(conn: psycopg.Connection[Any], profile: Profile, zone_id: str) -> list[str]:
    """Ids (= JWT ``kid``) of the zone's signing key rows."""
    rows = conn.execute(
        sql.SQL("SELECT id::text FROM {} WHERE zone_id = %s AND name = %s ORDER BY id").format(
            sql.Identifier(profile.signing_key_table)),
        (zone_id, profile.signing_key_name),
    ).fetchall()
    return [r[0] for r in rows]


@dataclasses.dataclass(frozen=True)
class MandateCheck:
    """PyJWT's verification of a mandate against the restored JWKS."""

    header: dict[str, Any]
    claims: dict[str, Any] | None
    error: str | None


def unverified_header(token: str) -> dict[str, Any]:
    """A JWT's header, unverified ({} when the token is not a JWT)."""
    try:
        return dict(jwt.get_unverified_header(token))
    except jwt.PyJWTError:
        return {}


def verify_mandate(token: str, jwks: Mapping[str, Any]) -> MandateCheck:
    """Verify an ES256 mandate with PyJWT against the JWKS entry its ``kid`` names.

    ``iss`` must be present and ``aud`` must contain it (``aud`` = ``[ISSUER_URL]``).
    """
    try:
        header = dict(jwt.get_unverified_header(token))
        unverified = jwt.decode(token, options={"verify_signature": False})
    except jwt.PyJWTError as exc:
        return MandateCheck({}, None, f"not a JWT: {exc}")
    kid = header.get("kid")
    entries = [k for k in jwks.get("keys", []) if isinstance(k, dict)]
    entry = next((k for k in entries if k.get("kid") == kid), None)
    if entry is None:
        kids = [k.get("kid") for k in entries]
        return MandateCheck(header, None, f"kid {kid} is not in the restored JWKS {kids}")
    issuer = unverified.get("iss")
    try:
        key = jwt.PyJWK(entry).key
        claims = jwt.decode(token, key, algorithms=["ES256"], issuer=issuer, audience=issuer,
                            options={"require": ["exp", "iat", "iss", "aud", "sub", "jti"]})
    except jwt.PyJWTError as exc:
        return MandateCheck(header, None, f"{type(exc).__name__}: {exc}")
    return MandateCheck(header, dict(claims), None)


# ---------------------------------------------------------------------------- canary flow


@dataclasses.dataclass(frozen=True)
class CanaryExchange:
    """The bootstrap exchange of the canary and what it was judged against."""

    zone_id: str
    application_id: str
    resource: str
    request_id: str
    status: int
    record: dict[str, Any]
    error: str | None
    token_type: str | None
    mandate: str | None = dataclasses.field(repr=False)
    jwks_record: dict[str, Any] | None
    check: MandateCheck | None
    source_kids: tuple[str, ...]
    restored_kids: tuple[str, ...]
    live_kids_before: tuple[str, ...]
    live_kids_after: tuple[str, ...]
    #: The zone's audit head on the restored copy, read before anything was exchanged.
    restored_head: ChainHead
    #: Release 1.0's gateway-mandate flow after the bootstrap (None: the release has none).
    gateway: GatewayMandate | None = None

    @property
    def protected_mandate(self) -> str | None:
        """The mandate the Gateway accepts: the ``use=gateway`` mint, else the bootstrap's."""
        return self.gateway.mandate if self.gateway is not None else self.mandate

    def evidence(self) -> dict[str, Any]:
        """The exchange, the JWKS and the key observations (no token)."""
        return {
            "gateway_mandate_flow": self.gateway.evidence() if self.gateway else None,
            "request_id": self.request_id,
            "restored_head": dataclasses.asdict(self.restored_head),
            "exchange": self.record, "jwks": self.jwks_record,
            "mandate_header": self.check.header if self.check else None,
            "mandate_claims": self.check.claims if self.check else None,
            "verification_error": self.check.error if self.check else None,
            "signing_keys": {"source (canary inputs)": list(self.source_kids),
                             "restored copy": list(self.restored_kids),
                             "live copy before": list(self.live_kids_before),
                             "live copy after": list(self.live_kids_after)},
        }


#: FACTS-1.0 §14.3: the table whose ``scopes`` a gateway-routed resource declares.
RESOURCE_TABLE = "resources"


@dataclasses.dataclass(frozen=True)
class GatewayMandate:
    """Release 1.0's gateway-mandate flow (FACTS-1.0 §14.5 steps 2-4) after the bootstrap.

    Two Coordinator Sessions (source and target), a delegation between them scoped to the
    canary resource, and the ``use=gateway`` mint at the STS for the target Session.
    """

    scope: str
    agent_session_ids: tuple[str, ...]
    delegation_edge_id: str | None
    mint_request_id: str
    #: HTTP records of the Coordinator calls and the mint (no tokens, no secrets).
    steps: tuple[dict[str, Any], ...]
    error: str | None
    check: MandateCheck | None
    mandate: str | None = dataclasses.field(repr=False, default=None)

    def evidence(self) -> dict[str, Any]:
        """The flow's requests and the minted mandate's header and claims (no token)."""
        return {"business_scope": self.scope, "agent_session_ids": list(self.agent_session_ids),
                "delegation_edge_id": self.delegation_edge_id,
                "mint_request_id": self.mint_request_id, "steps": list(self.steps),
                "error": self.error,
                "mandate_header": self.check.header if self.check else None,
                "mandate_claims": self.check.claims if self.check else None,
                "verification_error": self.check.error if self.check else None}


def business_scope(conn: psycopg.Connection[Any], profile: Profile, zone_id: str,
                   resource: str) -> str | None:
    """A scope the canary resource declares besides the bootstrap scope (None: it has none)."""
    row = conn.execute(
        sql.SQL("SELECT scopes FROM {} WHERE zone_id::text = %s AND identifier = %s"
                " AND archived_at IS NULL").format(sql.Identifier(RESOURCE_TABLE)),
        (zone_id, resource)).fetchone()
    scopes = [str(s) for s in (row[0] if row and row[0] else []) if s != profile.canary_scope]
    return scopes[0] if scopes else None


def _coordinator_post(client: httpx.Client, url: str, bearer: str, body: Mapping[str, Any],
                      headers: Mapping[str, str]) -> tuple[httpx.Response, dict[str, Any]]:
    try:
        response = client.post(url, json=dict(body),
                               headers={"Authorization": f"Bearer {bearer}", **headers})
    except httpx.TransportError as exc:
        raise ServiceUnreachable(f"Coordinator at {url} did not answer: "
                                 f"{type(exc).__name__}: {exc}") from None
    record = http_record(response)
    record["request"]["json"] = _mask(dict(body))
    return response, record


def gateway_mandate(client: httpx.Client, *, sts_url: str, coordinator_url: str,
                    bootstrap: str, zone_id: str, application_id: str, client_secret: str,
                    resource: str, scope: str | None, jwks: Mapping[str, Any] | None,
                    profile: Profile) -> GatewayMandate:
    """Sessions, delegation and the ``use=gateway`` mint (FACTS-1.0 §14.5 steps 2-4).

    Each step is the request the SDK makes; the first refusal stops the flow and is kept as
    the error (a refused step is a control violation, not a broken check).
    """
    mint_request_id = new_request_id("canary-mint")
    steps: list[dict[str, Any]] = []

    def stop(error: str, sessions: Sequence[str] = (), edge: str | None = None
             ) -> GatewayMandate:
        return GatewayMandate(scope or "", tuple(sessions), edge, mint_request_id,
                              tuple(steps), error, None)

    if scope is None:
        return stop(f"the canary resource {resource!r} declares no scope besides "
                    f"{profile.canary_scope!r}, so no use=gateway mandate can be minted for it")
    base = coordinator_url.rstrip("/") + f"/zones/{zone_id}"
    sessions: list[str] = []
    for role in ("source", "target"):
        response, record = _coordinator_post(
            client, base + "/agents", bootstrap,
            {"application_id": application_id, "ttl_seconds": 600,
             "labels": [application_id]},
            {"idempotency-key": f"caracal-restore-canary-{role}-{uuid.uuid4().hex}"})
        steps.append({"step": f"start the {role} Session", **record})
        session_id = (body_of(response) or {}).get("agent_session_id") \
            if response.status_code == 201 and isinstance(body_of(response), dict) else None
        if not session_id:
            return stop(f"the Coordinator refused to start the {role} Session: "
                        f"{error_text(response)}", sessions)
        sessions.append(str(session_id))
    response, record = _coordinator_post(
        client, base + "/delegations", bootstrap,
        {"issuer_application_id": application_id, "source_session_id": sessions[0],
         "target_session_id": sessions[1], "receiver_application_id": application_id,
         "scopes": [scope], "constraints": {"resources": [resource]}, "ttl_seconds": 600},
        {})
    steps.append({"step": "delegate from the source to the target Session", **record})
    body = body_of(response)
    edge = body.get("delegation_edge_id") if response.status_code == 201 and isinstance(
        body, dict) else None
    if not edge:
        return stop(f"the Coordinator refused the delegation: {error_text(response)}", sessions)
    form = {"grant_type": GRANT_TOKEN_EXCHANGE, "zone_id": zone_id,
            "application_id": application_id, "client_secret": client_secret,
            "resource": resource, "scope": scope, "agent_session_id": sessions[1],
            "delegation_edge_id": str(edge)}
    try:
        minted = client.post(sts_url.rstrip("/") + "/oauth/2/token", data=form,
                             headers={"X-Request-Id": mint_request_id})
    except httpx.TransportError as exc:
        raise ServiceUnreachable(f"STS at {sts_url} did not answer the use=gateway mint: "
                                 f"{type(exc).__name__}: {exc}") from None
    steps.append({"step": "mint the use=gateway mandate", **http_record(minted, form)})
    token = None
    if minted.status_code == 200:
        try:  # the raw body: body_of masks the token it holds
            token = minted.json().get("access_token")
        except (json.JSONDecodeError, AttributeError):
            token = None
    if not token:
        return stop(f"the STS refused the use=gateway mint: {error_text(minted)}", sessions,
                    str(edge))
    REDACTOR.add(str(token))
    check = (verify_mandate(str(token), jwks) if jwks is not None else
             MandateCheck(unverified_header(str(token)), None, "no restored JWKS"))
    return GatewayMandate(scope, tuple(sessions), str(edge), mint_request_id, tuple(steps),
                          None, check, str(token))


def canary_exchange(client: httpx.Client, sts_url: str, *, zone_id: str, application_id: str,
                    client_secret: str, resource: str, profile: Profile,
                    restored_conn: psycopg.Connection[Any], live_conn: psycopg.Connection[Any],
                    source_kids: Sequence[str],
                    coordinator_url: str | None = None) -> CanaryExchange:
    """Run the bootstrap exchange (FACTS-2026.06 §7.2, FACTS-1.0 §14.3), fetch the restored
    JWKS and, where the release's Gateway takes only ``use=gateway`` mandates (profile
    ``canary_flow`` = ``gateway-mandate``), run the Coordinator flow and the mint.

    Raises ``ServiceUnreachable`` when a service does not answer, ``NotEvaluable`` when the
    release's flow needs a service the run does not have.
    """
    REDACTOR.add(client_secret)
    if profile.canary_flow not in CANARY_FLOWS:
        raise NotEvaluable(f"release {profile.release}: unknown canary flow "
                           f"{profile.canary_flow!r} (this suite knows {list(CANARY_FLOWS)})")
    if profile.canary_flow == "gateway-mandate" and not coordinator_url:
        raise NotEvaluable(
            f"release {profile.release}'s Gateway takes only use=gateway mandates, minted through "
            "Coordinator Sessions and a delegation, and the run gives no Coordinator URL "
            "(--coordinator-url, with --services external)")
    head = chain_head(restored_conn, profile, zone_id)
    restored_kids = tuple(signing_key_ids(restored_conn, profile, zone_id))
    before = tuple(signing_key_ids(live_conn, profile, zone_id))
    request_id = new_request_id("canary-exchange")
    form = {"grant_type": GRANT_TOKEN_EXCHANGE, "zone_id": zone_id,
            "application_id": application_id, "client_secret": client_secret,
            "resource": resource}
    if profile.canary_scope:
        form["scope"] = profile.canary_scope
    url = sts_url.rstrip("/") + "/oauth/2/token"
    try:
        response = client.post(url, data=form, headers={"X-Request-Id": request_id})
    except httpx.TransportError as exc:
        raise ServiceUnreachable(f"STS at {sts_url} did not answer the token exchange: "
                                 f"{type(exc).__name__}: {exc}") from None
    mandate = token_type = None
    error = None
    if response.status_code == 200:
        try:
            body = response.json()
            mandate, token_type = str(body["access_token"]), str(body.get("token_type"))
        except (json.JSONDecodeError, KeyError, TypeError):
            error = f"200 without an access_token: {str(body_of(response))[:300]}"
    else:
        error = error_text(response)
    if mandate:
        REDACTOR.add(mandate)
    record = http_record(response, form)
    jwks_record: dict[str, Any] | None = None
    jwks_doc: dict[str, Any] | None = None
    check: MandateCheck | None = None
    if mandate:
        try:
            jwks = client.get(sts_url.rstrip("/") + "/.well-known/jwks.json",
                              params={"zone_id": zone_id})
        except httpx.TransportError as exc:
            raise ServiceUnreachable(f"STS at {sts_url} did not answer the JWKS request: "
                                     f"{type(exc).__name__}: {exc}") from None
        jwks_record = http_record(jwks)
        if jwks.status_code == 200:
            jwks_doc = jwks.json()
            check = verify_mandate(mandate, jwks_doc)
        else:
            check = MandateCheck(unverified_header(mandate), None,
                                 f"the restored JWKS answered {error_text(jwks)}")
    gateway: GatewayMandate | None = None
    if profile.canary_flow == "gateway-mandate" and coordinator_url:
        gateway = (gateway_mandate(
            client, sts_url=sts_url, coordinator_url=coordinator_url, bootstrap=mandate,
            zone_id=zone_id, application_id=application_id, client_secret=client_secret,
            resource=resource, scope=business_scope(live_conn, profile, zone_id, resource),
            jwks=jwks_doc, profile=profile) if mandate else
            GatewayMandate("", (), None, "", (), "no bootstrap mandate", None))
    after = tuple(signing_key_ids(live_conn, profile, zone_id))
    return CanaryExchange(zone_id, application_id, resource, request_id, response.status_code,
                          record, error, token_type, mandate, jwks_record, check,
                          tuple(source_kids) or restored_kids, restored_kids, before, after,
                          head, gateway)


def exchange_problems(ex: CanaryExchange, profile: Profile) -> list[str]:
    """Why the canary exchange does not demonstrate a working restore (empty: it does)."""
    if ex.mandate is None:
        return [f"the canary token exchange was refused: {ex.error}"]
    problems = []
    minted = sorted(set(ex.live_kids_after) - set(ex.restored_kids))
    kid = ex.check.header.get("kid") if ex.check else None
    if kid is not None and kid not in ex.source_kids:
        problems.append(
            f"a new signing key was minted: the mandate is signed with kid {kid}, which is not "
            f"one of the source's zone signing keys {list(ex.source_kids)}")
    if minted:
        problems.append(
            f"a new signing key was minted: the live copy's {profile.signing_key_table} rows "
            f"for zone {ex.zone_id} grew from {len(ex.live_kids_before)} to "
            f"{len(ex.live_kids_after)} (new kids {minted}; restored copy had "
            f"{list(ex.restored_kids)})")
    if ex.token_type != "Bearer":
        problems.append(f"token_type is {ex.token_type!r}, expected 'Bearer'")
    if ex.check is None or ex.check.claims is None:
        problems.append("the mandate does not verify against the restored JWKS: "
                        f"{ex.check.error if ex.check else 'no JWKS'}")
        return problems
    claims, header = ex.check.claims, ex.check.header
    if header.get("alg") != "ES256":
        problems.append(f"mandate alg is {header.get('alg')!r}, expected ES256")
    expected = {"use": profile.canary_mandate_use, "zone_id": ex.zone_id,
                "client_id": ex.application_id, "sub": ex.application_id}
    for name, value in expected.items():
        if claims.get(name) != value:
            problems.append(f"mandate claim {name} is {claims.get(name)!r}, expected {value!r}")
    target = claims.get("target")
    if not isinstance(target, list) or ex.resource not in target:
        problems.append(f"mandate target {target!r} does not name the canary resource "
                        f"{ex.resource!r}")
    if ex.gateway is not None:
        problems += gateway_mandate_problems(ex, profile)
    return problems


def gateway_mandate_problems(ex: CanaryExchange, profile: Profile) -> list[str]:
    """Why the ``use=gateway`` mint (FACTS-1.0 §14.5) does not show a working restore."""
    gw = ex.gateway
    if gw is None:
        return []
    if gw.mandate is None:
        return [f"the gateway-mandate flow stopped: {gw.error}"]
    if gw.check is None or gw.check.claims is None:
        return ["the use=gateway mandate does not verify against the restored JWKS: "
                f"{gw.check.error if gw.check else 'no JWKS'}"]
    problems = []
    kid = gw.check.header.get("kid")
    if kid not in ex.source_kids:
        problems.append(f"a new signing key was minted: the use=gateway mandate is signed with "
                        f"kid {kid}, not one of the source's {list(ex.source_kids)}")
    use = "gateway" if "gateway" in profile.mandate_uses else None
    expected = {"use": use, "zone_id": ex.zone_id, "client_id": ex.application_id,
                "agent_session_id": gw.agent_session_ids[-1],
                "delegation_edge_id": gw.delegation_edge_id}
    for name, value in expected.items():
        if gw.check.claims.get(name) != value:
            problems.append(f"use=gateway mandate claim {name} is "
                            f"{gw.check.claims.get(name)!r}, expected {value!r}")
    return problems


@dataclasses.dataclass(frozen=True)
class CanaryRequest:
    """The protected Gateway request made with the canary's mandate."""

    request_id: str
    resource: str
    ready_record: dict[str, Any] | None
    record: dict[str, Any] | None
    status: int | None
    echo: Any
    response_request_id: str | None
    not_attempted: str | None

    def evidence(self) -> dict[str, Any]:
        """The Gateway's /ready and the protected request (no token)."""
        return {"request_id": self.request_id, "gateway_ready": self.ready_record,
                "protected_request": self.record, "not_attempted": self.not_attempted}


def protected_request(client: httpx.Client, gateway_url: str, exchange: CanaryExchange, *,
                      path: str = "/caracal-restore/canary") -> CanaryRequest:
    """Call the Gateway with the mandate (``X-Caracal-Resource``, fresh ``X-Request-Id``).

    The Gateway's ``/ready`` is read first: it makes a running Gateway pick up the restored
    binding revision (FACTS-2026.06 §7.1), as step 4 does before step 6.
    """
    request_id = new_request_id("canary-request")
    if exchange.mandate is None:
        return CanaryRequest(request_id, exchange.resource, None, None, None, None, None,
                             f"no mandate: the canary token exchange was refused "
                             f"({exchange.error})")
    token = exchange.protected_mandate
    if token is None:
        return CanaryRequest(request_id, exchange.resource, None, None, None, None, None,
                             "no use=gateway mandate: the gateway-mandate flow stopped "
                             f"({exchange.gateway.error if exchange.gateway else ''})")
    base = gateway_url.rstrip("/")
    try:
        ready = client.get(base + "/ready")
        response = client.get(base + path, headers={
            "Authorization": f"Bearer {token}",
            "X-Caracal-Resource": exchange.resource, "X-Request-Id": request_id})
    except httpx.TransportError as exc:
        raise ServiceUnreachable(f"Gateway at {gateway_url} did not answer: "
                                 f"{type(exc).__name__}: {exc}") from None
    echo = body_of(response)
    return CanaryRequest(request_id, exchange.resource, http_record(ready),
                         http_record(response), response.status_code, echo,
                         response.headers.get("X-Request-Id"), None)


def request_problems(req: CanaryRequest) -> list[str]:
    """Why the protected request does not show the Gateway routing to the canary upstream."""
    if req.not_attempted is not None or req.status is None or req.record is None:
        return [f"no protected request was made: {req.not_attempted}"]
    if not 200 <= req.status < 300:
        body = req.record["response"]["body"]
        detail = (f"{body.get('error', '')}: {body.get('error_description', '')}"
                  if isinstance(body, dict) else str(body)[:300])
        return [f"the Gateway answered {req.status} {detail} to the protected request for "
                f"resource {req.resource!r} (request id {req.request_id})"]
    problems = []
    if req.response_request_id != req.request_id:
        problems.append(f"the Gateway returned X-Request-Id {req.response_request_id!r}, "
                        f"expected {req.request_id!r}")
    headers = req.echo.get("headers") if isinstance(req.echo, dict) else None
    if not isinstance(headers, dict):
        problems.append(f"the upstream did not echo the request (body {str(req.echo)[:200]!r})")
        return problems
    lowered = {str(k).lower(): v for k, v in headers.items()}
    if lowered.get("x-request-id") != req.request_id:
        problems.append(f"the upstream saw X-Request-Id {lowered.get('x-request-id')!r}, not "
                        f"the canary's {req.request_id!r}: the request did not come through "
                        "the Gateway")
    if "authorization" in lowered and "Bearer " in str(lowered["authorization"]):
        problems.append("the Gateway forwarded a bearer token to the upstream echo")
    return problems


@dataclasses.dataclass(frozen=True)
class CanaryEvidence:
    """The canary's audit events as they landed in the live copy, and the chain after them."""

    head: ChainHead
    expected: tuple[tuple[str, str], ...]  # (event_type, request_id)
    found: tuple[AuditRow, ...]
    new_rows: tuple[AuditRow, ...]
    waited_seconds: float
    timed_out: str | None
    #: Why nothing was awaited: the flow failed before the protected request succeeded.
    not_demonstrated: str | None = None

    def evidence(self) -> dict[str, Any]:
        """What the report shows."""
        return {"restored_head": dataclasses.asdict(self.head),
                "expected_events": [list(e) for e in self.expected],
                "found": [r.evidence() for r in self.found],
                "rows_after_restored_head": [r.evidence() for r in self.new_rows],
                "waited_seconds": round(self.waited_seconds, 3), "timed_out": self.timed_out,
                "not_demonstrated": self.not_demonstrated}


def canary_events(profile: Profile, exchange: CanaryExchange,
                  request: CanaryRequest) -> tuple[tuple[str, str], ...]:
    """(event_type, request_id) of the canary's audit events: the exchanges (bootstrap, the
    ``use=gateway`` mint where the release has one, the Gateway's) and the request."""
    exchange_type, request_type = profile.canary_exchange_event[0], profile.canary_request_event[0]
    mint = ((exchange_type, exchange.gateway.mint_request_id),) if exchange.gateway else ()
    return ((exchange_type, exchange.request_id), *mint, (exchange_type, request.request_id),
            (request_type, request.request_id))


def await_canary_evidence(live_conninfo: str, profile: Profile, exchange: CanaryExchange,
                          request: CanaryRequest, *, timeout: float) -> CanaryEvidence:
    """Poll the live copy until the canary's audit events are there (or the deadline).

    Nothing is awaited when the protected request did not succeed: the evidence of a flow that
    never completed cannot demonstrate it.
    """
    head = exchange.restored_head
    expected = canary_events(profile, exchange, request)
    if request.not_attempted is not None:
        return CanaryEvidence(head, expected, (), (), 0.0, None,
                              f"no protected request was made: {request.not_attempted}")
    if request.status is None or not 200 <= request.status < 300:
        return CanaryEvidence(head, expected, (), (), 0.0, None,
                              f"the protected request failed ({request_problems(request)[0]})")
    started = time.monotonic()
    request_ids = sorted({rid for _, rid in expected})
    wanted = set(expected)

    def probe() -> list[AuditRow] | None:
        with psycopg.connect(live_conninfo, autocommit=True) as conn:
            rows = rows_by_request(conn, profile, request_ids)
        seen = {(r.event_type, r.request_id) for r in rows}
        return rows if wanted <= seen else None

    timed_out = None
    try:
        found = until(probe, timeout=timeout, interval=0.2, transient=(),
                      what="the canary's audit events")
    except WaitTimeout as exc:
        timed_out = str(exc)
        with psycopg.connect(live_conninfo, autocommit=True) as conn:
            found = rows_by_request(conn, profile, request_ids)
    with psycopg.connect(live_conninfo, autocommit=True) as conn:
        new_rows = rows_after(conn, profile, head.zone_id, head.max_seq)
    return CanaryEvidence(head, expected, tuple(found), tuple(new_rows),
                          time.monotonic() - started, timed_out)


def evidence_problems(ev: CanaryEvidence, profile: Profile, key: bytes) -> list[str]:
    """Did the canary's events land (right decisions) and do they continue the zone's chain?"""
    if ev.not_demonstrated is not None:
        return [f"not demonstrated: {ev.not_demonstrated}"]
    decisions = {event: (decision, status) for event, decision, status in
                 (profile.canary_exchange_event, profile.canary_request_event)}
    problems = []
    seen = {(r.event_type, r.request_id): r for r in ev.found}
    for event_type, request_id in ev.expected:
        row = seen.get((event_type, request_id))
        if row is None:
            problems.append(f"no {event_type} event with request id {request_id} reached "
                            f"{profile.audit_table} within the deadline")
            continue
        decision, status = decisions[event_type]
        if (row.decision, row.evaluation_status) != (decision, status):
            problems.append(f"{event_type} {request_id}: decision {row.decision!r} / "
                            f"{row.evaluation_status!r}, expected {decision!r} / {status!r}")
        if row.zone_id != ev.head.zone_id:
            problems.append(f"{event_type} {request_id} is in zone {row.zone_id}, expected "
                            f"{ev.head.zone_id}")
    new_ids = {r.id for r in ev.new_rows}
    outside = [f"{r.event_type} seq {r.chain_seq}" for r in ev.found
               if r.zone_id == ev.head.zone_id and r.id not in new_ids]
    if outside:
        problems.append(f"canary events {outside} are not past the restored head "
                        f"(seq {ev.head.max_seq})")
    problems += continuation_problems(ev.head, ev.new_rows, key)
    return problems


# ------------------------------------------------------------------------------ step 5


@dataclasses.dataclass
class Finding:
    """What one step-5 record looks like after the restore, and what is wrong with it."""

    record: str
    basis: str
    observed: dict[str, Any] = dataclasses.field(default_factory=dict)
    problems: list[str] = dataclasses.field(default_factory=list)
    notes: list[str] = dataclasses.field(default_factory=list)
    not_applicable: str | None = None

    def evidence(self) -> dict[str, Any]:
        """What the report shows."""
        return {"record": self.record, "basis": self.basis, "observed": self.observed,
                "problems": self.problems, "notes": self.notes}


def _basis(source: Mapping[str, Any] | None) -> str:
    return ("fingerprint (taken in the dump's snapshot)" if source is not None else
            "internal consistency (the bundle has no fingerprint: there is no source to "
            "compare with)")


def restored_fingerprint(conn: psycopg.Connection[Any], profile: Profile,
                         tables: Iterable[str]) -> dict[str, Any]:
    """The restored copy's fingerprint, limited to ``tables`` and to the readings a step-5
    record compares (same rules as the source's)."""
    return fp.take_fingerprint(conn, tables=list(tables), sessions_table=profile.lineage_table,
                               agents_table=profile.agent_table,
                               parts=("tables", "binding_revision", "revoked"))


def _digest_problems(source: Mapping[str, Any], restored: Mapping[str, Any],
                     tables: Sequence[str]) -> list[str]:
    wanted = set(tables)
    exp = {k: v for k, v in source.get("tables", {}).items() if k in wanted}
    act = {k: v for k, v in restored.get("tables", {}).items() if k in wanted}
    return fp.compare_tables(exp, act)


def _set_problems(what: str, source: Sequence[str] | None,
                  restored: Sequence[str] | None) -> list[str]:
    if source is None:
        return [f"the fingerprint records no {what}"]
    exp, act = set(source), set(restored or ())
    problems = []
    if exp - act:
        lost = sorted(exp - act)
        problems.append(f"{len(lost)} {what} revoked/stopped in the source are not after the "
                        f"restore: {lost[:10]}{' …' if len(lost) > 10 else ''}")
    if act - exp:
        extra = sorted(act - exp)
        problems.append(f"{len(extra)} {what} revoked/stopped after the restore were not in the "
                        f"source: {extra[:10]}{' …' if len(extra) > 10 else ''}")
    return problems


def _counts(conn: psycopg.Connection[Any], table: str) -> dict[str, int]:
    rows = conn.execute(sql.SQL("SELECT status, count(*) FROM {} GROUP BY status ORDER BY 1")
                        .format(sql.Identifier(table))).fetchall()
    return {str(k): int(v) for k, v in rows}


def _orphans(conn: psycopg.Connection[Any], child: str, column: str, parent: str,
             parent_column: str = "id") -> list[str]:
    query = sql.SQL(
        "SELECT c.{col}::text FROM {child} c LEFT JOIN {parent} p ON p.{pcol} = c.{col}"
        " WHERE c.{col} IS NOT NULL AND p.{pcol} IS NULL ORDER BY 1 LIMIT 20"
    ).format(col=sql.Identifier(column), child=sql.Identifier(child),
             parent=sql.Identifier(parent), pcol=sql.Identifier(parent_column))
    return [r[0] for r in conn.execute(query).fetchall()]


def confirm_policy_activation(conn: psycopg.Connection[Any], profile: Profile,
                              source: Mapping[str, Any] | None) -> Finding:
    """Per zone, the active policy-set versions equal the source's; manifests resolve."""
    f = Finding("policy_activation", _basis(source))
    restored = fp.policy_activation(conn) or {}
    f.observed["active versions per zone"] = restored
    if source is not None:
        expected = source.get("policy_activation")
        if expected is None:
            f.problems.append("the fingerprint records no policy_activation")
            expected = {}
        for zone in sorted(set(expected) | set(restored)):
            exp = {b["policy_set_id"]: b["active_version_id"] for b in expected.get(zone, [])}
            got = {b["policy_set_id"]: b["active_version_id"] for b in restored.get(zone, [])}
            for ps in sorted(set(exp) | set(got)):
                if ps not in got:
                    f.problems.append(f"zone {zone}: policy set {ps} has no binding after the "
                                      f"restore (source active version {exp[ps]})")
                elif ps not in exp:
                    f.problems.append(f"zone {zone}: policy set {ps} is bound after the restore "
                                      f"(active version {got[ps]}) but was not in the source")
                elif exp[ps] != got[ps]:
                    f.problems.append(f"zone {zone}: policy set {ps} active version is "
                                      f"{got[ps] or 'none (deactivated)'} after the restore, "
                                      f"the source had {exp[ps] or 'none'}")
    rows = conn.execute(
        "SELECT b.zone_id, b.policy_set_id, b.active_version_id, v.id, v.policy_set_id,"
        " v.manifest_json::text, v.manifest_sha256 FROM policy_set_bindings b"
        " LEFT JOIN policy_set_versions v ON v.id = b.active_version_id"
        " WHERE b.active_version_id IS NOT NULL ORDER BY 1, 2").fetchall()
    manifests: dict[str, list[str]] = {}
    for zone, ps, active, version, version_set, manifest, sha in rows:
        label = f"zone {zone}: active version {active} of policy set {ps}"
        if version is None:
            f.problems.append(f"{label} does not exist in policy_set_versions")
            continue
        if version_set != ps:
            f.problems.append(f"{label} belongs to policy set {version_set}")
        try:
            entries = json.loads(manifest)
            ids = [str(e["policy_version_id"]) for e in entries]
        except (TypeError, KeyError, json.JSONDecodeError):
            f.problems.append(f"{label}: manifest_json is not a list of policy_version_id "
                              f"entries ({str(manifest)[:120]})")
            continue
        manifests[active] = ids
        recomputed = hashlib.sha256(json.dumps(
            [{"policy_version_id": i} for i in ids], separators=(",", ":"),
            ensure_ascii=False).encode()).hexdigest()
        if recomputed != sha:
            f.problems.append(f"{label}: manifest_sha256 {_short(sha)} does not recompute "
                              f"({_short(recomputed)})")
        found = {r[0] for r in conn.execute(
            "SELECT id::text FROM policy_versions WHERE id = ANY(%s)", (ids,)).fetchall()}
        missing = [i for i in ids if i not in found]
        if missing:
            f.problems.append(f"{label}: manifest names policy versions that do not exist "
                              f"{missing} (the STS would fail 'policy bundle incomplete')")
    f.observed["manifests of active versions"] = manifests
    zones = [r[0] for r in conn.execute("SELECT id::text FROM zones ORDER BY 1").fetchall()]
    inactive = [z for z in zones if not any(b["active_version_id"] for b in restored.get(z, []))]
    if inactive:
        f.notes.append(f"zones without an active policy set (the STS denies all): {inactive}")
    several = [z for z, bs in restored.items() if sum(1 for b in bs if b["active_version_id"]) > 1]
    if several:
        f.notes.append(f"zones with several active policy sets (the STS picks one arbitrarily, "
                       f"FACTS-2026.06 §2.3): {several}")
    return f


def confirm_gateway_bindings(conn: psycopg.Connection[Any], profile: Profile,
                             source: Mapping[str, Any] | None) -> Finding:
    """Revision equals the source's; every binding matches a live resource and managed app."""
    f = Finding("gateway_bindings", _basis(source))
    if not profile.has_gateway_bindings:
        f.not_applicable = (f"not applicable: release {profile.release} has no gateway "
                            "bindings (routing comes from resources)")
        return f
    bindings, revision_table = profile.binding_table, profile.binding_revision_table
    revisions = conn.execute(sql.SQL("SELECT id, version FROM {} ORDER BY version").format(
        sql.Identifier(revision_table))).fetchall()
    f.observed["revision rows"] = [list(r) for r in revisions]
    if len(revisions) != 1 or revisions[0][0] is not True or revisions[0][1] < 0:
        f.problems.append(f"{revision_table} must hold exactly one row (true, version >= 0); "
                          f"found {[tuple(r) for r in revisions]} (the Gateway cannot start)")
    if source is not None:
        restored = restored_fingerprint(conn, profile, (bindings, revision_table))
        if source.get("binding_revision") != restored.get("binding_revision"):
            f.problems.append(f"binding revision is {restored.get('binding_revision')} after the "
                              f"restore, the source had {source.get('binding_revision')}")
        f.problems += _digest_problems(source, restored, (bindings, revision_table))
    rows = conn.execute(sql.SQL(
        "SELECT b.zone_id, b.resource_identifier, b.application_id, r.id, r.archived_at,"
        " a.id, a.archived_at, a.registration_method,"
        " (a.expires_at IS NOT NULL AND a.expires_at <= now())"
        " FROM {} b LEFT JOIN resources r ON r.zone_id = b.zone_id"
        " AND r.identifier = b.resource_identifier"
        " LEFT JOIN applications a ON a.zone_id = b.zone_id AND a.id = b.application_id"
        " ORDER BY 1, 2").format(sql.Identifier(bindings))).fetchall()
    f.observed["bindings"] = [{"zone_id": r[0], "resource_identifier": r[1],
                               "application_id": r[2]} for r in rows]
    for zone, ident, app, res, res_archived, app_id, app_archived, method, expired in rows:
        label = f"zone {zone}: binding {ident!r} -> application {app}"
        if res is None:
            f.problems.append(f"{label} matches no resource")
        elif res_archived is not None:
            f.problems.append(f"{label} points at an archived resource")
        if app_id is None:
            f.problems.append(f"{label}: the application does not exist in that zone")
        elif app_archived is not None or expired or method != "managed":
            f.problems.append(f"{label}: the application is not an unarchived, unexpired "
                              f"managed application (method {method})")
    unbound = conn.execute(sql.SQL(
        "SELECT r.zone_id, r.identifier FROM resources r WHERE r.archived_at IS NULL"
        " AND r.upstream_url IS NOT NULL AND r.identifier <> %s AND NOT EXISTS (SELECT 1 FROM {}"
        " b WHERE b.zone_id = r.zone_id AND b.resource_identifier = r.identifier) ORDER BY 1, 2"
    ).format(sql.Identifier(bindings)), (profile.control_audience,)).fetchall()
    for zone, ident in unbound:
        f.problems.append(f"zone {zone}: resource {ident!r} has an upstream but no gateway "
                          "binding (the Gateway answers 403 'resource not configured')")
    return f


def _state_finding(record: str, conn: psycopg.Connection[Any], profile: Profile,
                   source: Mapping[str, Any] | None, *, tables: Sequence[str],
                   revoked_key: str, status_table: str) -> Finding:
    f = Finding(record, _basis(source))
    restored = restored_fingerprint(conn, profile, tables)
    f.observed["status counts"] = _counts(conn, status_table)
    f.observed[f"revoked/stopped {record}"] = len(restored["revoked"][revoked_key] or [])
    f.observed["table digests"] = {t: restored["tables"].get(t) for t in tables}
    if source is not None:
        f.problems += _set_problems(record, (source.get("revoked") or {}).get(revoked_key),
                                    restored["revoked"][revoked_key])
        f.problems += _digest_problems(source, restored, tables)
    return f


def confirm_sessions(conn: psycopg.Connection[Any], profile: Profile,
                     source: Mapping[str, Any] | None) -> Finding:
    """Revoked sessions and the session table equal the source's; lineage is whole."""
    table = profile.lineage_table
    f = _state_finding("sessions", conn, profile, source, tables=(table,),
                       revoked_key="sessions", status_table=table)
    orphans = _orphans(conn, table, "parent_id", table)
    if orphans:
        f.problems.append(f"{table}: sessions whose parent does not exist: {orphans}")
    return f


def confirm_agents(conn: psycopg.Connection[Any], profile: Profile,
                   source: Mapping[str, Any] | None) -> Finding:
    """Stopped agents and the agent tables equal the source's; every subject session exists."""
    table = profile.agent_table
    f = _state_finding("agents", conn, profile, source, tables=profile.agent_record_tables,
                       revoked_key="agents", status_table=table)
    for child, column, parent in ((table, profile.agent_subject_column, profile.lineage_table),
                                  (table, "parent_id", table)):
        orphans = _orphans(conn, child, column, parent)
        if orphans:
            f.problems.append(f"{child}.{column} names rows missing from {parent}: {orphans}")
    return f


def confirm_delegations(conn: psycopg.Connection[Any], profile: Profile,
                        source: Mapping[str, Any] | None) -> Finding:
    """Revoked edges and the delegation tables equal the source's; endpoints exist."""
    edges = profile.delegation_record_tables[0]
    f = _state_finding("delegations", conn, profile, source,
                       tables=profile.delegation_record_tables, revoked_key="edges",
                       status_table=edges)
    for column in ("source_session_id", "target_session_id"):
        orphans = _orphans(conn, edges, column, profile.agent_table)
        if orphans:
            f.problems.append(f"{edges}.{column} names agents that do not exist: {orphans}")
    unstamped = conn.execute(sql.SQL(
        "SELECT count(*) FROM {} WHERE status = 'revoked' AND revoked_at IS NULL").format(
        sql.Identifier(edges))).fetchone()
    if unstamped and unstamped[0]:
        f.notes.append(f"{unstamped[0]} revoked edges have no revoked_at: the Gateway's "
                       "revocation snapshot does not load them (FACTS-2026.06 §5.3)")
    return f


#: The step-5 records read on the pristine restored copy.
OFFLINE_RECORDS = {
    "policy_activation": confirm_policy_activation,
    "gateway_bindings": confirm_gateway_bindings,
    "sessions": confirm_sessions,
    "agents": confirm_agents,
    "delegations": confirm_delegations,
}


def confirm_record(record: str, conn: psycopg.Connection[Any], profile: Profile,
                   source: Mapping[str, Any] | None) -> Finding:
    """Confirm one offline step-5 record; the surface a real deployment offers goes in notes."""
    finding = OFFLINE_RECORDS[record](conn, profile, source)
    surface = dict(profile.record_surfaces).get(record)
    if surface:
        finding.notes.append(f"HTTP surface of a real deployment: {surface}")
    return finding


def _source_heads(restored_conn: psycopg.Connection[Any], profile: Profile,
                  source: Mapping[str, Any] | None) -> tuple[dict[str, dict[str, Any]], list[str]]:
    """Per-zone heads to sample within, and differences of the restored heads from the source's.

    The restored copy is compared only up to the source's head, so rows appended later (by
    services running on it) do not count as differences.
    """
    table = sql.Identifier(profile.audit_table)
    if source is None:
        return fp.audit_heads(restored_conn) or {}, []
    heads = source.get("heads") or {}
    # Every restored zone, with its rows up to the source's head counted, in one pass.
    upto = {str(zone): (n, low, high) for zone, n, low, high in restored_conn.execute(sql.SQL(
        "SELECT e.zone_id, count(*) FILTER (WHERE e.chain_seq <= s.top),"
        " min(e.chain_seq) FILTER (WHERE e.chain_seq <= s.top),"
        " max(e.chain_seq) FILTER (WHERE e.chain_seq <= s.top)"
        " FROM {} e LEFT JOIN unnest(%s::text[], %s::bigint[]) AS s(zone, top)"
        " ON s.zone = e.zone_id GROUP BY e.zone_id").format(table),
        (list(heads), [h.get("max_seq") for h in heads.values()])).fetchall()}
    # The restored row at each source head's chain_seq (none where the source had no head).
    contents = head_contents(restored_conn, table, {
        zone: h["max_seq"] for zone, h in heads.items() if h.get("max_seq") is not None})
    problems = []
    for zone in sorted(set(heads) | set(upto)):
        exp = heads.get(zone)
        if exp is None:
            problems.append(f"zone {zone}: audit rows after the restore, none in the source")
            continue
        count, low, high = upto.get(zone, (0, None, None))
        got = {"count": count, "min_seq": low, "max_seq": high,
               "content_sha256": contents.get(zone)}
        if got != {k: exp.get(k) for k in got}:
            problems.append(f"zone {zone}: restored audit head {got} differs from the "
                            f"source's {dict(exp)}")
    return heads, problems


def _sample_request_ids(conn: psycopg.Connection[Any], profile: Profile,
                        heads: Mapping[str, Mapping[str, Any]], per_zone: int) -> list[str]:
    """Request ids spread evenly over each zone's chain (first row and head included)."""
    zones, targets = [], []
    for zone, head in sorted(heads.items()):
        low, high = head.get("min_seq"), head.get("max_seq")
        if low is None or high is None:
            continue
        n = max(2, per_zone)
        for i in range(n):
            zones.append(zone)
            targets.append(int(low + (high - low) * i // (n - 1)))
    rows = conn.execute(sql.SQL(
        "SELECT DISTINCT e.request_id FROM unnest(%s::text[], %s::bigint[]) AS t(zone_id, target)"
        " CROSS JOIN LATERAL (SELECT request_id FROM {} a WHERE a.zone_id = t.zone_id"
        " AND a.chain_seq >= t.target AND a.request_id IS NOT NULL AND a.request_id <> ''"
        " ORDER BY a.chain_seq LIMIT 1) e ORDER BY 1").format(
        sql.Identifier(profile.audit_table)), (zones, targets)).fetchall()
    return [r[0] for r in rows]


def confirm_audit_query(restored_conn: psycopg.Connection[Any],
                        query_conn: psycopg.Connection[Any], profile: Profile,
                        source: Mapping[str, Any] | None, key: bytes, *, per_zone: int,
                        queried: str) -> Finding:
    """A sample of the source's request ids returns the same events from the running copy.

    The expected events are the restored copy's rows for the sampled request ids, proven to be
    the source's evidence: the zone heads equal the fingerprint's, and each row's content hash
    and chain HMAC recompute with the restored AUDIT_HMAC_KEY.
    """
    f = Finding("audit_query", _basis(source))
    heads, f.problems = _source_heads(restored_conn, profile, source)
    request_ids = _sample_request_ids(restored_conn, profile, heads, per_zone)
    f.observed["queried database"] = queried
    f.observed["sampled request ids"] = request_ids
    if not request_ids:
        if any(h.get("count") for h in heads.values()):
            raise NotEvaluable("no request id could be sampled from the restored audit events")
        f.notes.append("the source holds no audit events: nothing to query")
        return f
    expected = rows_by_request(restored_conn, profile, request_ids)
    limit = {z: int(h["max_seq"]) for z, h in heads.items() if h.get("max_seq") is not None}
    expected = [r for r in expected if r.chain_seq is not None
                and r.zone_id in limit and r.chain_seq <= limit[r.zone_id]]
    for row in expected:
        f.problems += row_problems(row, key)
    answered = rows_by_request(query_conn, profile, request_ids)
    f.observed["expected events"] = [r.evidence() for r in expected]
    f.observed["query answer"] = [r.evidence() for r in answered]
    by_id = {r.id: r for r in answered}
    for row in expected:
        got = by_id.get(row.id)
        if got is None:
            f.problems.append(f"request {row.request_id}: event {row.id} ({row.event_type}, "
                              f"seq {row.chain_seq}) is missing from the query answer")
        elif got.chain_columns() != row.chain_columns():
            f.problems.append(f"request {row.request_id}: event {row.id} differs — expected "
                              f"{row.chain_columns()}, query returned {got.chain_columns()}")
    expected_ids = {r.id for r in expected}
    for row in answered:
        if row.id in expected_ids:
            continue
        bound = limit.get(row.zone_id)
        if bound is not None and row.chain_seq is not None and row.chain_seq > bound:
            f.notes.append(f"request {row.request_id}: event {row.id} was appended after the "
                           f"restore (seq {row.chain_seq})")
        else:
            f.problems.append(f"request {row.request_id}: the query returned event {row.id} "
                              f"({row.event_type}, seq {row.chain_seq}) that the source did "
                              "not have")
    surface = dict(profile.record_surfaces).get("audit_query")
    if surface:
        f.notes.append(f"HTTP surface of a real deployment: {surface}; the services under "
                       f"test offer none here, so the rows they serve from were read directly")
    return f


def metric_value(text: str, name: str) -> float | None:
    """The value of an unlabelled sample in Prometheus text format (None when absent)."""
    for line in text.splitlines():
        parts = line.split()
        if len(parts) >= 2 and parts[0] == name:
            try:
                return float(parts[1])
            except ValueError:
                return None
    return None


def confirm_bindings_loaded(client: httpx.Client, gateway_url: str, bearer: str | None,
                            restored_conn: psycopg.Connection[Any], profile: Profile) -> Finding:
    """The running Gateway loaded exactly the restored bindings (its gauge vs the table)."""
    f = Finding("bindings_loaded", "restored copy")
    if not profile.has_gateway_bindings:
        f.not_applicable = (f"not applicable: release {profile.release} has no gateway "
                            "bindings (routing comes from resources)")
        return f
    base = gateway_url.rstrip("/")
    headers = {"Authorization": f"Bearer {bearer}"} if bearer else {}
    try:
        ready = client.get(base + "/ready")
        metrics = client.get(base + "/metrics", headers=headers)
    except httpx.TransportError as exc:
        raise ServiceUnreachable(f"Gateway at {gateway_url} did not answer: "
                                 f"{type(exc).__name__}: {exc}") from None
    f.observed["gateway ready"] = http_record(ready)
    f.observed["metrics"] = {"status": metrics.status_code,
                             "url": str(metrics.request.url)}
    if metrics.status_code != 200:
        raise NotEvaluable(f"Gateway /metrics answered {error_text(metrics)} (bearer from "
                           f"{profile.metrics_bearer_secret or 'none'})")
    loaded = metric_value(metrics.text, profile.bindings_loaded_metric)
    if loaded is None:
        raise NotEvaluable(f"Gateway /metrics has no {profile.bindings_loaded_metric} sample")
    row = restored_conn.execute(sql.SQL("SELECT count(*) FROM {}").format(
        sql.Identifier(profile.binding_table))).fetchone()
    count = int(row[0]) if row else 0
    f.observed[profile.bindings_loaded_metric] = loaded
    f.observed[f"{profile.binding_table} rows (restored copy)"] = count
    if loaded != count:
        f.problems.append(f"the Gateway reports {profile.bindings_loaded_metric} = {loaded:g}, "
                          f"the restored copy has {count} {profile.binding_table} rows")
    return f

