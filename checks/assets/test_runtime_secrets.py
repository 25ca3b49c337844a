"""Asset "Runtime secrets": in the environment's secret store, and never inside the bundle.

Caracal keeps secrets out of its backup bundle: they travel separately and are restored into
the secret store. Both halves are checked — the store holds the release's whole inventory,
and no secret value (as written, hex, base64, url-quoted or as raw bytes) appears in any file
of the bundle, in its dumps decoded to SQL, or in the Redis keyspace restored from it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

from caracal_restore.environments.secretstore import SecretStore
from caracal_restore.inspect import assets as inspect_assets
from caracal_restore.inspect.tables import shorten
from caracal_restore.profiles import Profile
from checks.assets.expectations import SECRETS
from fixtures import evidence
from fixtures.controls import Severity, control


@control("AS-2", feature=SECRETS, grade="configured", severity=Severity.CRITICAL)
def test_secret_store_holds_the_inventory(profile: Profile, secret_store: SecretStore,
                                          restored_secrets: Mapping[str, str]) -> None:
    """AS-2 The environment's secret store holds every runtime secret of the release."""
    wanted = [s.name for s in profile.secrets]
    missing = [n for n in wanted if not restored_secrets.get(n)]
    evidence.json("secret store", {"provider": secret_store.provider, "release": profile.release,
                                   "inventory": wanted, "held": sorted(restored_secrets),
                                   "missing_or_empty": missing})
    assert not missing, (
        f"the {secret_store.provider} secret store lacks {len(missing)} of the {len(wanted)} "
        f"runtime secrets of release {profile.release}: {', '.join(missing)}")


@control("AS-3", feature=SECRETS, grade="verified", severity=Severity.CRITICAL)
def test_no_secret_is_inside_the_bundle(bundle_secret_scan: inspect_assets.LeakScan) -> None:
    """AS-3 No runtime secret, in any encoding, is inside the backup bundle."""
    scan = bundle_secret_scan
    evidence.json("bundle searched for secrets (forms, never values)", dataclasses.asdict(scan))
    leaks = [f"{x.secret} ({x.form}) in {x.where}" for x in scan.leaks]
    assert not leaks, (
        f"{len(leaks)} runtime secret occurrence(s) inside the bundle: {shorten(leaks)}; "
        "secrets must travel separately from the backup")
