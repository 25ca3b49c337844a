"""Waivers: accepted, dated exceptions to a check, from one data file (TOML or JSON).

Every waiver names the check (a control id such as ``SY-3``, one parameter by its clause id
``SY-4.a.sessions`` or as ``SY-4.a[SY-4.a.sessions]``, or a full node id), a justification,
an owner, a ticket and an expiry date; all are required.
A waiver turns a *failure* (an ``assert``) into *waived*; it never hides a broken check. An
expired waiver waives nothing and fails the ``--gate``.

TOML shape::

    [[waiver]]
    check = "SY-3"
    justification = "Revocation replay lands in release 2026.07"
    owner = "platform-security@example.com"
    ticket = "SEC-1234"
    expires = 2026-09-30
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

REQUIRED = ("check", "justification", "owner", "ticket", "expires")


class WaiverError(ValueError):
    """The waivers file is malformed; the message names every bad entry."""


@dataclasses.dataclass(frozen=True)
class Waiver:
    """One accepted exception."""

    check: str
    justification: str
    owner: str
    ticket: str
    expires: dt.date

    def expired(self, today: dt.date) -> bool:
        """True once the expiry date has passed (the waiver holds through its expiry date)."""
        return today > self.expires

    def matches(self, control_id: str, nodeid: str, param_id: str | None) -> bool:
        """True when this waiver covers the check ``nodeid`` of control ``control_id``."""
        if self.check in (control_id, nodeid):
            return True
        return param_id is not None and self.check in (param_id, f"{control_id}[{param_id}]")

    def reason(self) -> str:
        """The text shown for a waived result (``waived`` first, so categories can match it)."""
        return (f"waived {self.check} until {self.expires.isoformat()} (ticket {self.ticket}, "
                f"owner {self.owner}): {self.justification}")

    def as_dict(self) -> dict[str, str]:
        """Plain data for the summary."""
        return {"check": self.check, "justification": self.justification, "owner": self.owner,
                "ticket": self.ticket, "expires": self.expires.isoformat()}


def load(path: Path) -> list[Waiver]:
    """Read and validate a waivers file; raise ``WaiverError`` naming every bad entry."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise WaiverError(f"cannot read the waivers file {path}: {exc.strerror}") from None
    try:
        data: Any = json.loads(raw) if path.suffix == ".json" else tomllib.loads(raw.decode())
    except (ValueError, UnicodeDecodeError) as exc:
        raise WaiverError(f"{path} is not valid {path.suffix.lstrip('.') or 'toml'}: {exc}") \
            from None
    entries = data.get("waiver", data.get("waivers", [])) if isinstance(data, Mapping) else data
    if not isinstance(entries, list):
        raise WaiverError(f"{path}: expected a list of [[waiver]] entries")
    waivers: list[Waiver] = []
    problems: list[str] = []
    for index, entry in enumerate(entries, start=1):
        try:
            waivers.append(_waiver(entry))
        except WaiverError as exc:
            label = entry.get("check") if isinstance(entry, Mapping) else None
            problems.append(f"waiver #{index}" + (f" (check {label!r})" if label else "")
                            + f": {exc}")
    if problems:
        raise WaiverError(f"{path}: " + "; ".join(problems))
    return waivers


def _waiver(entry: Any) -> Waiver:
    if not isinstance(entry, Mapping):
        raise WaiverError("must be a table with " + ", ".join(REQUIRED))
    missing = [k for k in REQUIRED if k not in entry or str(entry[k]).strip() == ""]
    unknown = sorted(set(entry) - set(REQUIRED))
    problems = []
    if missing:
        problems.append("missing " + ", ".join(missing))
    if unknown:
        problems.append("unknown keys " + ", ".join(unknown))
    expires: dt.date | None = None
    if "expires" not in missing:
        expires = _date(entry["expires"])
        if expires is None:
            problems.append(f"expires {entry['expires']!r} is not a date (YYYY-MM-DD)")
    if problems:
        raise WaiverError("; ".join(problems))
    assert expires is not None
    return Waiver(str(entry["check"]).strip(), str(entry["justification"]).strip(),
                  str(entry["owner"]).strip(), str(entry["ticket"]).strip(), expires)


def _date(value: Any) -> dt.date | None:
    if isinstance(value, dt.datetime):
        return value.date()
    if isinstance(value, dt.date):
        return value
    try:
        return dt.date.fromisoformat(str(value).strip())
    except ValueError:
        return None
