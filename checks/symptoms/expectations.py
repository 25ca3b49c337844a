"""Data tables of the symptom checks (frozen rows with stable clause ids: never renumber)."""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class RevokedKind:
    """One kind of revoked anchor whose Postgres state must equal the source's."""

    clause: str
    #: Key of the fingerprint's ``revoked`` section.
    kind: str
    #: How the diagnosis names one such row (``<subject> <id>``).
    subject: str
    #: What the rows are, in an auditor's words.
    noun: str


REVOKED_KINDS: tuple[RevokedKind, ...] = (
    RevokedKind("SY-4.a.sessions", "sessions", "session", "revoked STS sessions"),
    RevokedKind("SY-4.a.agents", "agents", "agent",
                "suspended, terminated or expired agent sessions"),
    RevokedKind("SY-4.a.edges", "edges", "edge", "revoked delegation edges"),
)
