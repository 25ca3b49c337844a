"""The one explicit remediation: replay revocation events lost with Redis (FACTS-2026.06 §5.4).

Never automatic: a check runs it only when the run is given ``--remediate revocations``, and only
against the restored environment's *live copy* (the writable database and Redis the services
run on, ``ServicesInfo.live_db`` / ``live_redis``); the pristine restored copy is never written.

For every revocation outbox row that breaks the §5.4 invariant on the live copy:

* published rows whose entry is gone or was acknowledged without effect are re-published: the
  same fields the dispatcher wrote (payload, ``outbox_id``, ``dedupe_key``) signed with
  ``STREAMS_HMAC_KEY`` (``_sig``) and XADDed to ``caracal.sessions.revoke``, where STS's
  ``sts-revocation`` group reads them (re-delivery is idempotent at STS);
* dead rows (never dispatched) are requeued by SQL so their dispatcher publishes them:
  ``caracal_outbox`` → ``status='pending', attempts=0, available_at=now()``; ``event_outbox`` →
  ``dispatched_at=NULL, available_at=now(), locked_until=NULL``.

``method="requeue"`` requeues every row by SQL instead (what an operator does without Redis
access). The report lists every action and the invariant before and after.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Literal

import psycopg
import redis as redis_lib

from caracal_restore.chainhash import stream_signature
from caracal_restore.diagnose.revocation import (
    REVOKE_STREAM,
    RevocationCoverage,
    replay_events,
    revocation_coverage,
)

Method = Literal["xadd", "requeue"]


@dataclasses.dataclass(frozen=True)
class ReplayAction:
    """One thing the remediation did."""

    outbox: str
    outbox_id: str
    session_id: str
    was: str
    action: str  # xadd | requeue
    entry_id: str | None = None


@dataclasses.dataclass(frozen=True)
class ReplayReport:
    """What the remediation found, did, and left behind (ids only, no key material)."""

    target_database: str
    target_redis: str
    before: tuple[RevocationCoverage, ...]
    actions: tuple[ReplayAction, ...]
    after: tuple[RevocationCoverage, ...]

    @property
    def lost_before(self) -> list[RevocationCoverage]:
        """Rows that broke the invariant before the replay."""
        return [c for c in self.before if not c.holds]

    @property
    def lost_after(self) -> list[RevocationCoverage]:
        """Rows that still break it after the replay."""
        return [c for c in self.after if not c.holds]

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready form for the evidence."""
        return {
            "target_database": self.target_database,
            "target_redis": self.target_redis,
            "lost_before": [dataclasses.asdict(c) for c in self.lost_before],
            "actions": [dataclasses.asdict(a) for a in self.actions],
            "lost_after": [dataclasses.asdict(c) for c in self.lost_after],
            "rows_checked": len(self.after),
        }


_REQUEUE = {
    "caracal_outbox": "UPDATE caracal_outbox SET status = 'pending', attempts = 0,"
                      " available_at = now() WHERE id::text = %s",
    "event_outbox": "UPDATE event_outbox SET dispatched_at = NULL, available_at = now(),"
                    " locked_until = NULL WHERE id::text = %s",
}


def replay_revocations(
    conn: psycopg.Connection[Any],
    client: redis_lib.Redis,
    *,
    streams_hmac_key: bytes,
    method: Method = "xadd",
    sessions_table: str = "sessions",
    target: tuple[str, str] = ("", ""),
) -> ReplayReport:
    """Replay every lost revocation on the live copy ``conn``/``client``; return the report.

    ``conn`` must be writable (autocommit); ``target`` names the database and Redis written to
    (for the report). Rows that already hold are never touched, so a second run does nothing.
    """
    before = revocation_coverage(conn, client, sessions_table)
    lost = [c for c in before if not c.holds]
    actions: list[ReplayAction] = []
    events = {e.outbox_id: e for e in replay_events(conn, lost)}
    for c in lost:
        event = events.get(c.outbox_id)
        if method == "xadd" and c.state != "outbox-dead" and event is not None:
            fields: dict[str, str] = dict(event.fields)
            fields["_sig"] = stream_signature(streams_hmac_key, event.stream, fields)
            entry = client.xadd(event.stream, fields)  # type: ignore[arg-type]
            entry_id = entry.decode() if isinstance(entry, bytes) else str(entry)
            actions.append(ReplayAction(c.outbox, c.outbox_id, c.session_id, c.state, "xadd",
                                        entry_id))
        else:
            conn.execute(_REQUEUE[c.outbox], (c.outbox_id,))
            actions.append(ReplayAction(c.outbox, c.outbox_id, c.session_id, c.state, "requeue"))
    after = revocation_coverage(conn, client, sessions_table)
    return ReplayReport(target[0], target[1], tuple(before), tuple(actions), tuple(after))


__all__ = ["REVOKE_STREAM", "ReplayAction", "ReplayReport", "replay_revocations"]
