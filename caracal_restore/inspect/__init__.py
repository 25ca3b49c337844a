"""Read-only inspection of a restored Caracal environment: observations and findings.

The library side of the restore checklist (steps 1-3) and the asset table. Every function
looks at the restored environment (or the bundle it came from) and returns what it saw,
with the differences from what the control requires; the checks attach the observation and
assert on the findings. Nothing here writes to the restored copy, and no secret value is
ever part of an observation.
"""

from __future__ import annotations

from caracal_restore.errors import SuiteError


class CannotEvaluate(SuiteError):
    """A control could not be evaluated on this environment; the message says what was seen."""
