"""Secret redaction: every text that leaves the suite passes through one ``Redactor``."""

from __future__ import annotations

import base64
import binascii
import re
import threading
from collections.abc import Iterable
from urllib.parse import quote

MASK = "«redacted»"
_MIN_SECRET_LEN = 6


def secret_forms(value: str | bytes) -> set[str]:
    """Every printable form of a secret: raw, hex, base64 (std/url), url-quoted."""
    raw = value.encode() if isinstance(value, str) else bytes(value)
    forms: set[str] = set()
    try:
        text = raw.decode()
    except UnicodeDecodeError:
        text = ""
    if text:
        forms |= {text, quote(text, safe=""), quote(text)}
        # A hex secret also appears as its decoded bytes in other encodings.
        if re.fullmatch(r"(?:[0-9a-fA-F]{2})+", text):
            decoded = binascii.unhexlify(text)
            forms |= _binary_forms(decoded)
    forms |= _binary_forms(raw)
    return {f for f in forms if len(f) >= _MIN_SECRET_LEN}


def _binary_forms(raw: bytes) -> set[str]:
    forms = {raw.hex(), raw.hex().upper()}
    for enc in (base64.b64encode(raw), base64.urlsafe_b64encode(raw)):
        s = enc.decode()
        forms |= {s, s.rstrip("=")}
    return forms


class Redactor:
    """Holds the known secret values of a run and removes them from text."""

    def __init__(self, secrets: Iterable[str | bytes] = ()) -> None:
        self._lock = threading.Lock()
        self._forms: set[str] = set()
        self._pattern: re.Pattern[str] | None = None
        self.add(*secrets)

    def add(self, *secrets: str | bytes) -> None:
        """Register secret values (all their printable forms are scrubbed from then on)."""
        with self._lock:
            for secret in secrets:
                if secret:
                    self._forms |= secret_forms(secret)
            ordered = sorted(self._forms, key=len, reverse=True)
            self._pattern = re.compile("|".join(map(re.escape, ordered))) if ordered else None

    def __call__(self, text: str) -> str:
        """Return ``text`` with every known secret form replaced by a mask."""
        pattern = self._pattern
        return pattern.sub(MASK, text) if pattern else text

    def __contains__(self, text: str) -> bool:
        pattern = self._pattern
        return bool(pattern and pattern.search(text))

    def __repr__(self) -> str:
        return f"Redactor({len(self._forms)} forms)"


#: The process-wide redactor: environments register the secrets they create or read.
REDACTOR = Redactor()
