"""Reference services of release 2026.06 (STS, Gateway, audit ingestor, canary upstream).

They exist to exercise the suite's checks on a restored deployment, not to reimplement
Caracal. Each ``start_*`` function returns a started ``RunningService`` (``.url``,
``.stop()``), usable as a context manager; every server binds 127.0.0.1 only.
"""

from __future__ import annotations

from caracal_restore.reference.services.audit import start_audit
from caracal_restore.reference.services.common import RunningService, StartupError
from caracal_restore.reference.services.gateway import start_gateway
from caracal_restore.reference.services.sts import start_sts
from caracal_restore.reference.services.upstream import start_upstream

__all__ = [
    "RunningService",
    "StartupError",
    "start_audit",
    "start_gateway",
    "start_sts",
    "start_upstream",
]
