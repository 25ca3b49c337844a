"""Unit tests of the symptom diagnostics: causes, envelope opens, HTTP mappings, tokens, replay.

No servers: the online probes talk to ``httpx.MockTransport`` handlers that answer the way the
facts say STS and the Gateway answer. The end-to-end proof (defects injected into a restored
environment) is ``test_symptoms_fault_injection``.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

from caracal_restore import audit_chain, envelope
from caracal_restore.chainhash import stream_signature
from caracal_restore.diagnose import (
    CAUSES,
    NOT_ON_PAGE,
    PAGE_CHECKS,
    SYMPTOM_KEK,
    SYMPTOM_REVOCATION,
    Diagnosis,
    Finding,
    causes_of,
    mandate,
)
from caracal_restore.diagnose import chain as chain_diag
from caracal_restore.diagnose import kek as kek_diag
from caracal_restore.diagnose import revocation as revocation_diag
from caracal_restore.diagnose import routing as routing_diag
from caracal_restore.diagnose._common import DiagnosticError

REPO = Path(__file__).resolve().parent.parent
PAGE = Path("/work/shared/caracal/OPERATIONS-PAGE.md")

# FACTS-2026.06 §3.3: the cross-language check vector of the ZONE_KEK seal.
VECTOR_KEK = "8f3d9a712c45e6b0d18f2a4c6e9b3d57a1c4f8020e6a9c3d5b7f1a2c4e6d8b90"
VECTOR_NONCE = bytes.fromhex("000102030405060708090a0b")
VECTOR_PLAIN = b"caracal v2026.06.21 zone kek vector"
VECTOR_CT = bytes.fromhex(
    "cdbb212481ebc93fc8fd83b2c64d55d18c80776faf5ef64efaf1f59915f2376b19b30f379c975faee4588d71"
    "3a6e5e729adff1")
SPLIT_TEXT = kek_diag.SealedColumn("t.ct", "t", "ct", "nonce", "text")
PACKED_TEXT = kek_diag.SealedColumn("t.packed", "t", "packed", None, "text")


# ------------------------------------------------------------------------------ causes


def test_every_symptom_row_of_the_page_is_a_family_with_its_causes() -> None:
    """Symptoms and their 'Check' wording are spelled as on the page; each page cause exists."""
    page = PAGE.read_text() if PAGE.exists() else ""
    for symptom, check in PAGE_CHECKS.items():
        if page:
            assert f"| {symptom} | {check} |" in page
        on_page = {c.page_cause for c in causes_of(symptom) if c.page_cause != NOT_ON_PAGE}
        assert on_page, symptom
        for wording in on_page:
            assert wording.lower() in check.lower(), (symptom, wording)
    listed = {"ZONE_KEK does not match the database secrets", "Missing audit rows",
              "wrong AUDIT_HMAC_KEY", "partial restore", "Missing gateway binding rows",
              "stale binding revision", "Restore Postgres revocation/session state",
              "replay Redis revocation events where needed"}
    assert listed <= {c.page_cause for c in CAUSES.values()}


def test_diagnosis_explains_symptom_cause_page_wording_and_examples() -> None:
    """The auditor's message names the symptom, the cause, the page's words and the rows."""
    findings = tuple(Finding("sealed-rows-corrupt", f"secrets.ciphertext row k{i}", "bad", "z1")
                     for i in range(12))
    diagnosis = Diagnosis(SYMPTOM_KEK, (*findings,
                                        Finding("kek-mismatch", "zone z2", "all fail", "z2")))
    text = diagnosis.explain(limit=3)
    first, *_ = text.splitlines()
    assert first.startswith(f"{SYMPTOM_KEK} — cause: ZONE_KEK does not match the database "
                            "secrets (the page's cause: ZONE_KEK does not match")
    assert "some sealed rows are damaged" in text
    assert "not listed on the page" in text
    assert "… and 9 more" in text
    assert diagnosis.only("kek-mismatch").causes == {"kek-mismatch"}
    assert json.loads(json.dumps(diagnosis.as_dict()))["present"] is True
    assert Diagnosis(SYMPTOM_KEK, ()).explain() == f"{SYMPTOM_KEK}: no finding"
    with pytest.raises(ValueError, match="unknown cause"):
        Finding("no-such-cause", "x", "y")


def test_chain_causes_cover_every_verifier_kind() -> None:
    """Every finding kind of the chain verifier maps to a named cause (none falls to 'other')."""
    for kind, verifier_cause in audit_chain.CAUSES.items():
        if verifier_cause in chain_diag.BENIGN_CAUSES:
            assert kind in audit_chain.BENIGN
            continue
        assert verifier_cause in chain_diag.CAUSE_OF, kind
        assert CAUSES[chain_diag.CAUSE_OF[verifier_cause]].symptom == "Audit chain verification " \
            "fails"
    assert chain_diag.expected_heads(None) is None
    heads = chain_diag.expected_heads({"heads": {"z": {"max_seq": 5, "content_sha256": "ab"}}})
    assert heads == {"z": (5, "ab")}


# ------------------------------------------------------------------------------ sealed


def test_open_value_uses_the_facts_vector() -> None:
    """The §3.3 vector opens with its KEK; any other KEK is an AEAD failure, not a layout one."""
    kek = envelope.parse_kek(VECTOR_KEK)
    assert kek_diag.open_value(kek, SPLIT_TEXT, VECTOR_CT, VECTOR_NONCE) == ("opened", "")
    assert kek_diag.open_value(kek, PACKED_TEXT, VECTOR_NONCE + VECTOR_CT, None) == ("opened", "")
    outcome, reason = kek_diag.open_value(os.urandom(32), SPLIT_TEXT, VECTOR_CT, VECTOR_NONCE)
    assert outcome == "aead"
    assert reason == "chacha20poly1305: message authentication failed"
    assert kek_diag.open_value(kek, SPLIT_TEXT, VECTOR_CT, VECTOR_NONCE[:8])[0] == "layout"
    assert kek_diag.open_value(kek, SPLIT_TEXT, None, VECTOR_NONCE)[0] == "layout"
    assert kek_diag.open_value(kek, PACKED_TEXT, VECTOR_CT[:20], None)[0] == "layout"


def test_open_value_checks_what_the_location_must_hold() -> None:
    """Values open under the KEK but hold the wrong thing (moved between columns): 'plaintext'."""
    kek = os.urandom(32)
    pem_column = kek_diag.SealedColumn("s", "secrets", "ciphertext", "nonce", "ec-p256-pem")
    json_column = kek_diag.SealedColumn("p", "providers", "ct", "nonce", "json")
    ct, nonce = envelope.zone_seal(kek, b'{"api_key":"x"}')
    assert kek_diag.open_value(kek, pem_column, ct, nonce)[0] == "plaintext"
    assert kek_diag.open_value(kek, json_column, ct, nonce) == ("opened", "")
    ct, nonce = envelope.zone_seal(kek, b"not json")
    assert kek_diag.open_value(kek, json_column, ct, nonce)[0] == "plaintext"
    from cryptography.hazmat.primitives import serialization

    key = ec.generate_private_key(ec.SECP256R1())
    pem = key.private_bytes(serialization.Encoding.PEM,
                            serialization.PrivateFormat.TraditionalOpenSSL,
                            serialization.NoEncryption())
    ct, nonce = envelope.zone_seal(kek, pem)
    assert kek_diag.open_value(kek, pem_column, ct, nonce) == ("opened", "")
    other = ec.generate_private_key(ec.SECP384R1()).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption())
    ct, nonce = envelope.zone_seal(kek, other)
    assert kek_diag.open_value(kek, pem_column, ct, nonce) == ("plaintext",
                                                               "opened, but is not a P-256 key")


# FACTS-1.0 §7.2: the CSS1 golden vector.
CSS1_ENVELOPE = bytes.fromhex(
    "435353318547798a706fba7297f14e4710dbb70cafae5284625e843ff8421f7c39a916393521998fb02c28cb8e"
    "d66bd59c3ee433fdb69dbe116f295b047f469dda4e0b18458de702ee430005bce2eb80fa7179ebc2f1703b332e"
    "b089df95e40689a592b90f696c8a10b80922d812515ec4db3ff067ccb578a016521c9e815538")
CSS1_COLUMN = kek_diag.SealedColumn("golden", "t", "envelope", None, "text",
                                    aad="caracal/test/golden")


def test_css1_envelope_names_a_foreign_kek_by_its_key_id() -> None:
    """Release 1.0: the golden envelope opens; another KEK is 'sealed under a different KEK'
    (the kekId says so), a wrong AAD is a rejected value (damage or a moved envelope)."""
    kek = envelope.parse_kek(VECTOR_KEK)
    assert kek_diag.open_value(kek, CSS1_COLUMN, CSS1_ENVELOPE, None, fmt="css1",
                               aad="caracal/test/golden") == ("opened", "")
    assert kek_diag.open_value([os.urandom(32), kek], CSS1_COLUMN, CSS1_ENVELOPE, None,
                               fmt="css1", aad="caracal/test/golden") == ("opened", "")
    outcome, reason = kek_diag.open_value(os.urandom(32), CSS1_COLUMN, CSS1_ENVELOPE, None,
                                          fmt="css1", aad="caracal/test/golden")
    assert (outcome, reason.split(":")[0]) == ("foreign-kek",
                                               "secret envelope was sealed under a different KEK")
    assert kek_diag.open_value(kek, CSS1_COLUMN, CSS1_ENVELOPE, None, fmt="css1",
                               aad="caracal/other")[0] == "aead"
    assert kek_diag.open_value(kek, CSS1_COLUMN, CSS1_ENVELOPE[:50], None, fmt="css1",
                               aad="x")[0] == "layout"
    foreign = kek_diag.OpenResult("golden", "r1", "z1", "foreign-kek", "x", "8547798a706fba72")
    damaged = kek_diag.OpenResult("golden", "r3", "", "aead", "value rejected", "11")
    observed = {"restored_kek_id": "1111111111111111", "restored_previous_kek_id": None}
    # No envelope under the restored key: SECRET_STORE_KEK itself is wrong.
    findings = kek_diag._classify_css1([foreign, damaged], dict(observed), "SECRET_STORE_KEK",
                                       "SECRET_STORE_KEK_PREVIOUS")
    assert [f.cause for f in findings] == ["kek-mismatch", "sealed-rows-corrupt"]
    assert "1 under kekId 8547798a706fba72" in findings[0].detail
    assert "restored SECRET_STORE_KEK (kekId 1111111111111111)" in findings[0].detail
    # The restored key seals others: the foreign envelope predates a rotation (_PREVIOUS).
    opened = kek_diag.OpenResult("golden", "r2", "z1", "opened", "", "1111111111111111")
    findings = kek_diag._classify_css1([foreign, opened, damaged], dict(observed),
                                       "SECRET_STORE_KEK", "SECRET_STORE_KEK_PREVIOUS")
    assert [f.cause for f in findings] == ["kek-previous-mismatch", "sealed-rows-corrupt"]
    assert "the restored SECRET_STORE_KEK_PREVIOUS is absent" in findings[0].detail


def _result(zone: str, row: str, outcome: str) -> kek_diag.OpenResult:
    return kek_diag.OpenResult("secrets.ciphertext", row, zone, outcome,
                               "" if outcome == "opened" else "authentication failed")


def test_all_failing_is_a_wrong_kek_some_failing_is_damaged_rows() -> None:
    """The count decides: every value failing names the KEK, some failing names the rows."""
    observed: dict[str, Any] = {}
    every = [_result("z1", "a", "aead"), _result("z2", "b", "aead"), _result("z2", "c", "aead")]
    wrong = kek_diag._classify_opens(every, observed)
    assert {(f.cause, f.zone_id) for f in wrong} == {("kek-mismatch", "z1"),
                                                     ("kek-mismatch", "z2")}
    assert observed["sealed_values"] == {"secrets.ciphertext": {"rows": 3, "failed": 3}}
    some = [_result("z1", "a", "opened"), _result("z2", "b", "aead"), _result("z2", "c", "opened")]
    damaged = kek_diag._classify_opens(some, {})
    assert [(f.cause, f.subject) for f in damaged] == [
        ("sealed-rows-corrupt", "secrets.ciphertext row b (zone z2)")]
    assert "2 of 3 sealed values open" in damaged[0].detail
    assert kek_diag._classify_opens([_result("z1", "a", "opened")], {}) == []


def test_verification_set_follows_the_24_hour_grace() -> None:
    """Active key, plus the previous one while the active is younger than 24 h."""
    now = dt.datetime(2026, 6, 21, tzinfo=dt.UTC)
    rows = [kek_diag.SigningKeyRow("k2", "z", 2, now - dt.timedelta(hours=1)),
            kek_diag.SigningKeyRow("k1", "z", 1, now - dt.timedelta(days=90))]
    assert kek_diag.verification_set(rows, now) == ["k2", "k1"]
    assert kek_diag.verification_set(rows, now + dt.timedelta(days=1)) == ["k2"]
    assert kek_diag.verification_set([], now) == []


# ------------------------------------------------------------------------- online (mock)


def _client(handler: Callable[[httpx.Request], httpx.Response]) -> httpx.Client:
    return httpx.Client(transport=httpx.MockTransport(handler))


def _error(status: int, error: str, description: str) -> httpx.Response:
    return httpx.Response(status, json={"error": error, "error_description": description})


KEYS = {"z1": [kek_diag.SigningKeyRow("k1", "z1", 1, dt.datetime(2026, 1, 1, tzinfo=dt.UTC))],
        "z2": [kek_diag.SigningKeyRow("k2", "z2", 1, dt.datetime(2026, 1, 1, tzinfo=dt.UTC))]}


@pytest.mark.parametrize(("answers", "causes"), [
    ({"z1": (200, ["k1"]), "z2": (200, ["k2"])}, set()),
    ({"z1": (500, "signing key decryption failed"), "z2": (200, ["k2"])}, {"kek-mismatch"}),
    ({"z1": (200, []), "z2": (200, ["k2"])}, {"kek-mismatch"}),
    ({"z1": (200, ["minted"]), "z2": (200, ["k2"])}, {"signing-keys-missing"}),
    ({"z1": (404, "zone signing key not found"), "z2": (200, ["k2"])}, {"signing-keys-missing"}),
], ids=["clean", "jwks-500", "key-skipped", "key-minted", "jwks-404"])
def test_jwks_answers_map_to_causes(answers: dict[str, tuple[int, Any]], causes: set[str]) -> None:
    """FACTS-2026.06 §3.4: 500 'signing key decryption failed', skipped keys, a minted key id."""
    def handler(request: httpx.Request) -> httpx.Response:
        status, body = answers[request.url.params["zone_id"]]
        if status == 200:
            return httpx.Response(200, json={"keys": [{"kid": k} for k in body]})
        return _error(status, "internal_error", body)

    with _client(handler) as client:
        diagnosis = kek_diag.probe_jwks(client, "http://sts", KEYS, ["z1", "z2"])
    assert diagnosis.causes == causes, diagnosis.explain()


def test_jwks_refines_to_damaged_rows_and_raises_on_the_unexpected() -> None:
    """Offline 'damaged rows' refines a JWKS 500; an answer outside the symptom is not a verdict."""
    offline = Diagnosis(SYMPTOM_KEK, (Finding("sealed-rows-corrupt", "row", "bad", "z1"),))
    with _client(lambda r: _error(500, "internal_error", "signing key decryption failed")) as c:
        diagnosis = kek_diag.probe_jwks(c, "http://sts", KEYS, ["z1"], offline=offline)
    assert diagnosis.causes == {"sealed-rows-corrupt"}
    with _client(lambda r: httpx.Response(502, text="bad gateway")) as c, \
            pytest.raises(DiagnosticError, match="unexpected 502"):
        kek_diag.probe_jwks(c, "http://sts", KEYS, ["z1"])


def test_canary_exchange_outcomes() -> None:
    """200 with a restored kid is clean; a new kid is a minted key; 500 'token issuance failed'
    is the KEK; 401 'invalid client credentials' cannot be judged here (broken, not failed)."""
    header = base64.urlsafe_b64encode(b'{"alg":"ES256","kid":"k1","typ":"JWT"}').rstrip(b"=")
    token = header.decode() + ".e30.sig"

    def ok(request: httpx.Request) -> httpx.Response:
        form = dict(x.split("=", 1) for x in request.content.decode().split("&"))
        assert form["grant_type"] == "urn%3Aietf%3Aparams%3Aoauth%3Agrant-type%3Atoken-exchange"
        assert request.headers["X-Request-Id"].startswith("caracal-restore-")
        return httpx.Response(200, json={"access_token": token})

    with _client(ok) as c:
        exchange = kek_diag.canary_exchange(c, "http://sts", zone_id="z1", application_id="a",
                                            client_secret="s", resource="r")
    assert exchange.kid == "k1"
    assert not kek_diag.probe_canary_exchange(exchange, "z1", KEYS).present
    assert kek_diag.probe_canary_exchange(exchange, "z2", KEYS).causes == {"signing-keys-missing"}
    failed = kek_diag.CanaryExchange(500, "token issuance failed", None, "rid")
    assert kek_diag.probe_canary_exchange(failed, "z1", KEYS).causes == {"kek-mismatch"}
    denied = kek_diag.CanaryExchange(401, "invalid client credentials", None, "rid")
    with pytest.raises(DiagnosticError, match="outside this symptom"):
        kek_diag.probe_canary_exchange(denied, "z1", KEYS)


def test_route_probe_is_unsigned_and_maps_403_to_the_cause() -> None:
    """The probe carries only zone and expiry; 403 'resource not configured' names missing rows
    (no binding row) or a stale map (the row exists, the Gateway did not load it)."""
    token = routing_diag.probe_token("z1")
    _head, claims, sig = token.split(".")
    decoded = json.loads(base64.urlsafe_b64decode(claims + "=" * (-len(claims) % 4)))
    assert decoded["zone_id"] == "z1"
    assert decoded["exp"] > dt.datetime.now(dt.UTC).timestamp() + 35
    assert base64.urlsafe_b64decode(sig + "==") == bytes(64)

    def handler(request: httpx.Request) -> httpx.Response:
        assert request.headers["Authorization"].startswith("Bearer ")
        if request.headers["X-Caracal-Resource"] == "bound":
            return _error(401, "invalid_token", "invalid token")
        return _error(403, "access_denied", "resource not configured")

    wanted = [routing_diag.Route("z1", "bound", True), routing_diag.Route("z1", "gone", False),
              routing_diag.Route("z1", "unloaded", True)]
    with _client(handler) as client:
        diagnosis = routing_diag.probe_routes(client, "http://gw", wanted)
    assert [(f.cause, f.subject) for f in diagnosis.findings] == [
        ("binding-missing", "zone z1 resource gone"),
        ("revision-stale", "zone z1 resource unloaded")]
    with _client(lambda r: httpx.Response(200)) as client, \
            pytest.raises(DiagnosticError, match="accepted an unsigned bearer"):
        routing_diag.probe_route(client, "http://gw", "z1", "r")


def test_bindings_loaded_metric() -> None:
    """caracal_gateway_bindings_loaded is read behind the metrics bearer and compared."""
    def handler(request: httpx.Request) -> httpx.Response:
        if request.headers.get("Authorization") != "Bearer m":
            return httpx.Response(401)
        return httpx.Response(200, text="# TYPE caracal_gateway_bindings_loaded gauge\n"
                                        "caracal_gateway_bindings_loaded 9\n")

    with _client(handler) as client:
        assert routing_diag.bindings_loaded(client, "http://gw", "m") == 9
        with pytest.raises(DiagnosticError, match="401"):
            routing_diag.bindings_loaded(client, "http://gw", None)
    assert not routing_diag.probe_bindings_loaded(9, 9).present
    assert routing_diag.probe_bindings_loaded(9, 8).causes == {"revision-stale"}


# ---------------------------------------------------------------------- tokens and replay


def test_probe_mandate_verifies_as_es256() -> None:
    """The probe mandate is a compact ES256 JWS the STS's own key verifies (r ‖ s signature)."""
    key = ec.generate_private_key(ec.SECP256R1())
    zone_key = mandate.ZoneKey("z1", "kid-1", key)
    claims = mandate.session_claims(issuer="http://sts", zone_id="z1", client_id="app",
                                    resource="res", sid="s1", subject="user",
                                    extra={"agent_session_id": "a1"})
    token = mandate.sign(zone_key, claims)
    head, body, sig = token.split(".")
    pad = lambda s: s + "=" * (-len(s) % 4)  # noqa: E731
    assert json.loads(base64.urlsafe_b64decode(pad(head))) == {"alg": "ES256", "kid": "kid-1",
                                                                "typ": "JWT"}
    decoded = json.loads(base64.urlsafe_b64decode(pad(body)))
    assert decoded["use"] == "session"
    assert (decoded["sid"], decoded["root_sid"], decoded["agent_session_id"]) == ("s1", "s1", "a1")
    raw = base64.urlsafe_b64decode(pad(sig))
    der = encode_dss_signature(int.from_bytes(raw[:32], "big"), int.from_bytes(raw[32:], "big"))
    key.public_key().verify(der, f"{head}.{body}".encode(), ec.ECDSA(hashes.SHA256()))
    jwt = pytest.importorskip("jwt")
    assert jwt.decode(token, key.public_key(), algorithms=["ES256"],
                      options={"verify_aud": False})["zone_id"] == "z1"


def test_replay_fields_are_the_dispatchers_and_sign_like_the_stream() -> None:
    """Flat string fields (nulls dropped, numbers plain), signed over the stream name."""
    fields = revocation_diag.flatten_payload(
        {"zone_id": "z", "session_id": "s", "reason": "ttl", "n": 3, "f": 1.5, "b": True,
         "gone": None, "obj": {"a": 1}})
    assert fields == {"zone_id": "z", "session_id": "s", "reason": "ttl", "n": "3", "f": "1.5",
                      "b": "true", "obj": '{"a":1}'}
    key = os.urandom(32)
    signed = {**fields, "outbox_id": "o1", "_sig": ""}
    assert stream_signature(key, "caracal.sessions.revoke", signed) == stream_signature(
        key, "caracal.sessions.revoke", {**fields, "outbox_id": "o1"})
    with pytest.raises(DiagnosticError):
        revocation_diag.flatten_payload("[1, 2]")


def test_coverage_states_hold_or_not() -> None:
    """The §5.4 invariant's holding states, as the module documents them."""
    holds = {s for s in ("revoked", "expired", "pending", "undelivered", "outbox-pending",
                         "acked", "missing", "no-group", "outbox-dead")
             if revocation_diag.RevocationCoverage("o", "i", "s", None, s).holds}
    assert holds == {"revoked", "expired", "pending", "undelivered", "outbox-pending"}
    assert CAUSES["revocation-redis-lost"].symptom == SYMPTOM_REVOCATION


def test_checks_carry_one_control_each_and_the_page_rows() -> None:
    """The symptom checks collect with their controls; features are the page's rows."""
    out = subprocess.run(
        [sys.executable, "-m", "pytest", "checks/symptoms", "--collect-only", "-q",
         "-p", "no:cacheprovider"],
        cwd=REPO, capture_output=True, text=True, check=False, timeout=120,
        env={k: v for k, v in os.environ.items() if not k.startswith("CARACAL_RESTORE_")})
    ids = [line for line in out.stdout.splitlines() if "::" in line]
    assert len(ids) == 21, out.stdout + out.stderr
    source = "".join(p.read_text() for p in (REPO / "checks" / "symptoms").glob("test_*.py"))
    for control in ("SY-1.a", "SY-1.b", "SY-1.c", "SY-1.d", "SY-2.a", "SY-2.b", "SY-2.c",
                    "SY-3.a", "SY-3.b", "SY-3.c", "SY-3.d", "SY-3.e", "SY-3.f", "SY-3.g",
                    "SY-3.h", "SY-4.a", "SY-4.b", "SY-4.c", "SY-4.d"):
        assert source.count(f'@control("{control}"') == 1, control
