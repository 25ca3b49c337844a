"""One call builds a reference source deployment; its services answer /ready and complete a
canary exchange and a protected Gateway request; the audit events continue the chain."""

from __future__ import annotations

import shutil
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest

from caracal_restore import chainhash
from caracal_restore.environments import objectstore
from caracal_restore.reference.deployment import build_reference, start_services
from caracal_restore.reference.generator import Volume
from caracal_restore.waiting import until


@pytest.fixture(scope="module")
def deployment() -> Iterator[Any]:
    work = Path(tempfile.mkdtemp(prefix="caracal-deploy-"))
    work.chmod(0o755)
    started = time.perf_counter()
    try:
        with objectstore.embedded() as srv:
            archive = srv.bucket("archive", create=True, object_lock=True)
            with build_reference(archive=archive, volume=Volume(audit_events=800),
                                 workdir=work) as dep:
                print(f"reference deployment built in {time.perf_counter() - started:.1f}s")
                yield dep
    finally:
        shutil.rmtree(work, ignore_errors=True)


def test_one_call_builds_every_asset(deployment: Any) -> None:
    data = deployment.data
    assert data.counts["audit_events"] > 0
    assert data.dropped_partitions
    assert deployment.export_objects > 0
    assert sorted(deployment.secrets) == sorted(
        ["postgresPassword", "redisPassword", "caracalAdminToken", "caracalCoordinatorToken",
         "metricsBearer", "zoneKek", "auditHmacKey", "streamsHmacKey", "gatewayStsHmacKey",
         "databaseUrl", "redisUrl"])
    assert sorted(p.name for p in deployment.secrets_dir.iterdir()) == sorted(deployment.secrets)
    for service in ("sts", "gateway"):
        files = list((deployment.replay[service] / "audit-replay").glob("pending-*.ndjson"))
        assert files, f"no replay file for {service}"
    client = deployment.redis.client()
    try:
        assert client.exists("caracal.sessions.revoke")
        groups = {g["name"] for g in client.xinfo_groups("caracal.sessions.revoke")}
        assert {b"sts-revocation", b"gateway-revocation"} <= groups
    finally:
        client.close()


def test_services_answer_and_complete_the_canary_flow(deployment: Any) -> None:
    canary = deployment.data.canary
    db = deployment.owner_db
    with psycopg.connect(db.conninfo(), autocommit=True) as conn:
        head_seq, head_hash = conn.execute(
            "SELECT chain_seq, content_sha256 FROM audit_events WHERE zone_id = %s"
            " ORDER BY chain_seq DESC LIMIT 1", (canary.zone_id,)).fetchone()
    with start_services(db=db, redis=deployment.redis.endpoint, secrets=deployment.secrets,
                        replay=deployment.replay) as running, httpx.Client(
                            trust_env=False, timeout=10) as http:
        for url in (running.sts_url, running.gateway_url):
            ready = until(lambda u=url: http.get(f"{u}/ready").status_code == 200 or None,
                          timeout=30, transient=(httpx.HTTPError,), what=f"{url}/ready")
            assert ready
            assert http.get(f"{url}/ready").json() == {"ok": True, "ready": True}
        token = http.post(f"{running.sts_url}/oauth/2/token", data={
            "grant_type": "urn:ietf:params:oauth:grant-type:token-exchange",
            "zone_id": canary.zone_id, "application_id": canary.application_id,
            "client_secret": canary.client_secret, "resource": canary.resource_identifier,
        })
        assert token.status_code == 200, token.text
        request_id = f"canary-{uuid.uuid4().hex}"
        protected = http.get(f"{running.gateway_url}/hello", headers={
            "Authorization": f"Bearer {token.json()['access_token']}",
            "X-Caracal-Resource": canary.resource_identifier, "X-Request-Id": request_id})
        assert protected.status_code == 200, protected.text
        assert protected.json()["path"].endswith("/hello")

        def new_rows() -> list[Any] | None:
            with psycopg.connect(db.conninfo(), autocommit=True) as conn:
                rows = conn.execute(
                    f"SELECT chain_seq, prev_content_sha256, content_sha256, chain_hmac,"
                    f" {chainhash.AUDIT_HASH_SELECT} FROM audit_events"
                    " WHERE zone_id = %s AND chain_seq > %s ORDER BY chain_seq",
                    (canary.zone_id, head_seq)).fetchall()
            return rows if len(rows) >= 3 else None

        rows = until(new_rows, timeout=30, what="canary audit events ingested")
    key = chainhash.parse_hmac_key(deployment.secrets["auditHmacKey"])
    prev = head_hash
    for expected_seq, row in enumerate(rows, start=head_seq + 1):
        seq, row_prev, content, hmac_hex, *fields = row
        assert seq == expected_seq
        assert row_prev == prev
        texts = [str(f) for f in fields[:12]]
        assert chainhash.content_hash_parts(texts, int(fields[12])) == content
        assert chainhash.chain_hmac(key, content, row_prev) == hmac_hex
        prev = content
