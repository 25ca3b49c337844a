"""Data rows of the live restore-checklist steps (4 /ready, 5 records, 6 canary).

Rows are frozen dataclasses; ``clause`` is the pytest id and Allure parameter: never renumber
or reuse one. Release-specific names (ready bodies, tables, secrets) come from the profile,
never from here.
"""

from __future__ import annotations

import dataclasses
from typing import Literal

#: How long a service may take to answer /ready with the release's body (the suite runs after
#: the services were started; Compose allows a 15-20 s start period and 20 x 5 s retries).
READY_DEADLINE_SECONDS = 30.0
#: How long the canary's audit events may take to reach audit_events through the ingestor.
EVIDENCE_DEADLINE_SECONDS = 30.0
#: Request ids sampled per zone for the audit query (first row and head included).
AUDIT_SAMPLE_PER_ZONE = 6


@dataclasses.dataclass(frozen=True)
class ReadyRow:
    """One service whose /ready step 4 requires."""

    clause: str
    service: Literal["STS", "Gateway"]
    #: ServicesInfo attribute holding the base URL.
    url_field: Literal["sts_url", "gateway_url"]
    #: Profile attribute holding the exact ready body.
    body_field: Literal["ready_body_sts", "ready_body_gateway"]


READY_ROWS = (
    ReadyRow("RC-4.sts", "STS", "sts_url", "ready_body_sts"),
    ReadyRow("RC-4.gateway", "Gateway", "gateway_url", "ready_body_gateway"),
)


@dataclasses.dataclass(frozen=True)
class RecordRow:
    """One record step 5 confirms after the restore."""

    clause: str
    record: str
    title: str


#: Records read on the pristine restored copy (evaluated offline too).
RESTORED_RECORDS = (
    RecordRow("RC-5.policy-activation", "policy_activation",
              "policy-set activation state per zone"),
    RecordRow("RC-5.gateway-bindings", "gateway_bindings",
              "Gateway bindings and the binding revision"),
    RecordRow("RC-5.sessions", "sessions", "sessions (STS lineage) and their revocations"),
    RecordRow("RC-5.agents", "agents", "agents and their stopped states"),
    RecordRow("RC-5.delegations", "delegations", "delegation records and their revocations"),
)

#: Records confirmed through the running services (not evaluated with --services none).
AUDIT_QUERY = RecordRow("RC-5.audit-query", "audit_query",
                        "audit query by request id returns the source's events")
BINDINGS_LOADED = RecordRow("RC-5.bindings-loaded", "bindings_loaded",
                            "the running Gateway loaded every restored binding")
