"""Exceptions of the library: environment, backup and restore failures carry what was observed."""

from __future__ import annotations


class SuiteError(Exception):
    """Base class of every error the suite raises on purpose."""


class EnvironmentNotReady(SuiteError):
    """An isolated environment (database, cache, object or secret store) could not be provided."""


class BundleError(SuiteError):
    """A backup bundle is malformed, incomplete or does not match its fingerprint."""


class BackupFailed(SuiteError):
    """Taking a backup of the source failed."""


class RestoreFailed(SuiteError):
    """Restoring a bundle into the isolated environment failed."""


class NotIsolated(SuiteError):
    """A restore target is not isolated (it is the source, or it already holds data)."""
