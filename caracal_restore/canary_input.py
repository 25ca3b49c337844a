"""The canary a user names for their own bundle (``--canary-*``), checked before anything runs.

A reference run brings its own canary application. A user's bundle (``--bundle``) does not: the
restore checklist's step 6 and symptom SY-1.d need the user to name a canary that was in the
source before the backup (FACTS-2026.06 §7.2, FACTS-1.0 §14.3): its zone, the application's id
and client secret (Caracal stores only an Argon2id hash, so the secret comes from the user's own
test inputs), and the resource it exchanges for and requests through the Gateway. The zone's
signing key ids at the source are optional: without them the restored copy's keys are the
reference, and a key the STS mints during the canary is still caught.

The client secret is a secret: it is registered with the redactor here, kept in a field no repr
shows, and never part of an error message.
"""

from __future__ import annotations

import dataclasses

from caracal_restore.errors import SuiteError
from caracal_restore.redact import REDACTOR, secret_forms
from caracal_restore.runstate import CanaryInputs


class BadCanaryInput(SuiteError):
    """The ``--canary-*`` settings cannot be used as given (the message says why and how)."""


@dataclasses.dataclass(frozen=True)
class CanarySettings:
    """The raw ``--canary-*`` values as resolved from CLI, environment or ini (None: unset)."""

    zone_id: str | None = None
    application_id: str | None = None
    client_secret: str | None = dataclasses.field(default=None, repr=False)
    resource: str | None = None
    signing_key_ids: str | None = None


#: The settings a canary needs, in the order the usage errors name them.
REQUIRED = (("zone_id", "--canary-zone-id"), ("application_id", "--canary-application-id"),
            ("client_secret", "--canary-client-secret"), ("resource", "--canary-resource"))
OPTIONAL = (("signing_key_ids", "--canary-signing-key-ids"),)
#: What the broken canary checks tell a user whose bundle run has no canary.
HOW_TO_NAME = ("pass --canary-zone-id, --canary-application-id, --canary-client-secret and "
               "--canary-resource (an application of the bundle whose client secret you kept, "
               "and a resource it may exchange for; optional --canary-signing-key-ids)")


def canary_inputs(given: CanarySettings, *, bundle: bool) -> CanaryInputs | None:
    """The canary of a user's bundle from its settings (None: none was named).

    Raises ``BadCanaryInput`` when a setting is given without ``--bundle``, when some required
    settings are missing, or when a value cannot be what Caracal expects there.
    """
    named = [flag for field, flag in (*REQUIRED, *OPTIONAL) if getattr(given, field) is not None]
    if not named:
        return None
    if given.client_secret:
        REDACTOR.add(given.client_secret)
    if not bundle:
        raise BadCanaryInput(
            f"{', '.join(named)} name the canary of a user's --bundle; a run that backs up the "
            "reference deployment brings its own canary: pass --bundle, or unset them")
    missing = [flag for field, flag in REQUIRED if getattr(given, field) is None]
    if missing:
        raise BadCanaryInput(
            f"the canary of the bundle is only partly named: missing {', '.join(missing)} "
            f"(given {', '.join(named)}); {HOW_TO_NAME}")
    zone_id = _identifier("--canary-zone-id", given.zone_id)
    application_id = _identifier("--canary-application-id", given.application_id)
    resource = _identifier("--canary-resource", given.resource)
    secret = _secret(given.client_secret)
    kids = _key_ids(given.signing_key_ids)
    return CanaryInputs(zone_id, application_id, resource, secret, kids)


def _identifier(flag: str, value: str | None) -> str:
    """An id or identifier as Caracal stores it: printable, no whitespace, not empty."""
    text = value or ""
    if not text or not text.isprintable() or any(c.isspace() for c in text):
        raise BadCanaryInput(f"{flag} {text!r} is not an id Caracal stores: give it exactly as "
                             "the source has it (printable, no spaces)")
    return text


def _secret(value: str | None) -> str:
    """The client secret as the STS will see it (never echoed)."""
    text = value or ""
    if not text:
        raise BadCanaryInput("--canary-client-secret is empty")
    if text != text.strip() or not text.isprintable():
        raise BadCanaryInput("--canary-client-secret has surrounding whitespace or control "
                             "characters (a copied newline?): give the secret exactly")
    if text not in secret_forms(text):  # too short to be scrubbed from evidence
        raise BadCanaryInput("--canary-client-secret is too short for the suite to keep it out "
                             "of its evidence; a canary's secret is long and random")
    return text


def _key_ids(value: str | None) -> tuple[str, ...]:
    """Comma-separated signing key ids (JWT ``kid``), each once."""
    if value is None:
        return ()
    kids = tuple(part.strip() for part in value.split(","))
    if not all(kids):
        raise BadCanaryInput(f"--canary-signing-key-ids {value!r} has an empty entry: give "
                             "comma-separated key ids (the JWT kid of each zone signing key)")
    for kid in kids:
        _identifier("--canary-signing-key-ids", kid)
    if len(set(kids)) != len(kids):
        raise BadCanaryInput(f"--canary-signing-key-ids {value!r} names a key twice")
    return kids
