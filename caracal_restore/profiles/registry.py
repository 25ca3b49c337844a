"""Profile lookup by release name, and release detection from a restored ledger.

Detection follows the probe of FACTS-2026.06 §1.5 / §12: ``0001_init`` in the ledger →
the 2026.06 family, ``0002_approval_hardening`` → 1.0 (HEAD family),
``0002_resource_operations`` → rc.1 (``v2026.07.03-rc.1``, which the suite has no profile
for). Version names alone do not identify a schema (1.0 reuses ``0001_baseline`` with other
content), so the probe is the version that only one family has.
"""

from __future__ import annotations

from collections.abc import Iterable

from caracal_restore.profiles import Profile

RELEASES = ("2026.06", "1.0")

#: Probe versions of release families the suite recognises but has no profile for.
UNSUPPORTED = (
    ("0002_resource_operations", "v2026.07.03-rc.1"),
)


class UnsupportedRelease(LookupError):
    """The ledger identifies a release family the suite knows of but does not verify."""


def profile_for(release: str) -> Profile:
    """The profile of a release name (``2026.06`` or ``1.0``)."""
    if release == "2026.06":
        from caracal_restore.profiles.release_2026_06 import PROFILE

        return PROFILE
    if release == "1.0":
        from caracal_restore.profiles.release_1_0 import PROFILE as PROFILE_1_0

        return PROFILE_1_0
    raise KeyError(f"no profile for release {release!r}; known: {', '.join(RELEASES)}")


def detect_release(ledger: Iterable[str]) -> str:
    """Pick the release whose probe version is in the ledger; a clear error otherwise.

    ``UnsupportedRelease`` (a ``LookupError``) names an rc.1 ledger; a plain
    ``LookupError`` names what was found when nothing matches (or two families match).
    """
    versions = sorted(set(ledger))
    matches = [r for r in RELEASES if profile_for(r).probe_version in versions]
    if len(matches) == 1:
        return matches[0]
    shown = ", ".join(versions[:6]) + (" …" if len(versions) > 6 else "")
    found = f"found {len(versions)} versions: {shown or 'none'}"
    if len(matches) > 1:
        probes = ", ".join(f"{profile_for(r).probe_version} ({r})" for r in matches)
        raise LookupError(
            f"the restored schema_migrations ledger carries the probe versions of more than "
            f"one release ({probes}; {found}); pass --caracal-release to name it"
        )
    for probe, name in UNSUPPORTED:
        if probe in versions:
            raise UnsupportedRelease(
                f"the restored schema_migrations ledger is Caracal {name} ({probe} present; "
                f"{found}); the suite verifies releases {', '.join(RELEASES)} only — "
                f"{name} is unsupported"
            )
    raise LookupError(
        f"the restored schema_migrations ledger matches no known release ({found}); "
        f"pass --caracal-release to name it"
    )
