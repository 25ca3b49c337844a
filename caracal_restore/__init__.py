"""Library of the Caracal restore verification suite: everything that is not pytest plumbing."""

from __future__ import annotations

__version__ = "0.1.0"
