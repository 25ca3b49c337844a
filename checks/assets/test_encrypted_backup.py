"""Flow "encrypted backup": Postgres, the secret manager and the replay volumes go into an
encrypted backup.

The artifact itself is read (its first bytes, from where the run fetched it): age-encrypted or
not. Whether encryption is required is explicit — ``--require-encryption``, or ``--gate`` when
that is unset — and the message says which.
"""

from __future__ import annotations

from caracal_restore.environments.objectstore import ObjectStoreServer
from caracal_restore.inspect import CannotEvaluate
from caracal_restore.inspect import assets as inspect_assets
from caracal_restore.runstate import RunState
from checks.assets.expectations import ENCRYPTED
from fixtures import evidence
from fixtures.controls import Severity, control
from fixtures.options import SuiteConfig


@control("AS-8", feature=ENCRYPTED, grade="verified", severity=Severity.CRITICAL)
def test_backup_is_encrypted_when_required(run_state: RunState, suite_config: SuiteConfig,
                                           object_store_server: ObjectStoreServer) -> None:
    """AS-8 The backup artifact is age-encrypted whenever the run requires encryption."""
    if run_state.bundle is None:
        raise CannotEvaluate("the run has no bundle whose artifact could be read")
    head = inspect_assets.artifact_head(run_state.bundle.source, object_store_server)
    observed = inspect_assets.artifact_format(head)
    encrypted = observed.startswith("age")
    required, why = inspect_assets.encryption_required(suite_config.require_encryption,
                                                       suite_config.gate)
    evidence.json("backup artifact", {
        "artifact": run_state.bundle.source, "format": observed,
        "first_bytes_sha256": inspect_assets.sha256_head(head), "encrypted": encrypted,
        "run_state_says_encrypted": run_state.bundle.encrypted,
        "encryption_required": required, "because": why})
    assert encrypted or not required, (
        f"the backup {run_state.bundle.source} is {observed}, but this run requires an "
        f"encrypted backup ({why}); encrypt bundles with age before they leave the host")
