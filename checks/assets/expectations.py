"""The asset table's rows (Allure features) and its clauses with stable ids.

Features are spelled as the operations page spells the asset rows; "Encrypted backup" is the
page's flow line (Postgres, the secret manager and the replay volumes go into an encrypted
backup). Clause ids are pytest parameter ids: never renumber or reuse one.
"""

from __future__ import annotations

import dataclasses

POSTGRES = "Postgres database"
SECRETS = "Runtime secrets"
REPLAY = "STS/Gateway replay volumes"
REDIS = "Redis snapshot or managed backup"
EXPORTS = "Audit exports"
ENCRYPTED = "Encrypted backup"


@dataclasses.dataclass(frozen=True)
class ReplayVolume:
    """One service's replay volume (``replay/<service>`` in the bundle layout)."""

    clause: str
    service: str


REPLAY_VOLUMES = (
    ReplayVolume("AS-4.sts", "sts"),
    ReplayVolume("AS-4.gateway", "gateway"),
)

#: How long the live check waits for replayed events to reach audit_events (seconds).
INGEST_TIMEOUT_S = 60.0
