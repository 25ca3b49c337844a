"""Profile lookup by release name, and release detection from a restored ledger."""

from __future__ import annotations

from collections.abc import Iterable

from caracal_restore.profiles import Profile

RELEASES = ("2026.06",)


def profile_for(release: str) -> Profile:
    """The profile of a release name (``2026.06`` or ``1.0``)."""
    if release == "2026.06":
        from caracal_restore.profiles.release_2026_06 import PROFILE

        return PROFILE
    raise KeyError(f"no profile for release {release!r}; known: {', '.join(RELEASES)}")


def detect_release(ledger: Iterable[str]) -> str:
    """Pick the release whose probe version is in the ledger; a clear error otherwise."""
    versions = sorted(set(ledger))
    for release in RELEASES:
        if profile_for(release).probe_version in versions:
            return release
    shown = ", ".join(versions[:6]) + (" …" if len(versions) > 6 else "")
    raise LookupError(
        f"the restored schema_migrations ledger matches no known release (found {len(versions)}"
        f" versions: {shown or 'none'}); pass --caracal-release to name it"
    )
