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


def _literal_pattern(forms: Iterable[str]) -> str:
    """One regular expression matching any of ``forms``, the longest at each position.

    The forms become a trie: each branching point is a group of alternatives that start
    with distinct characters, and a form that ends where longer ones go on makes the rest
    optional (greedy, so the longer form wins). Matching a position then costs the length
    of one form, not the number of forms: a flat ``a|b|c…`` alternation tries every form
    at every character, and a long run registers thousands of forms.
    """
    end = ""  # the key that marks "a form ends here" (no character is the empty string)
    root: dict[str, dict] = {}
    for form in forms:
        node = root
        for char in form:
            node = node.setdefault(char, {})
        node[end] = {}

    def pattern(node: dict[str, dict]) -> str:
        parts: list[str] = []
        while True:
            chars = [c for c in node if c != end]
            if len(chars) == 1 and end not in node:
                parts.append(re.escape(chars[0]))
                node = node[chars[0]]
                continue
            if not chars:
                return "".join(parts)
            branches = [re.escape(c) + pattern(node[c]) for c in sorted(chars)]
            group = branches[0] if len(branches) == 1 else "(?:" + "|".join(branches) + ")"
            if end in node:
                group = f"(?:{group})?" if len(branches) == 1 else group + "?"
            return "".join(parts) + group

    return pattern(root)


class Redactor:
    """Holds the known secret values of a run and removes them from text."""

    def __init__(self, secrets: Iterable[str | bytes] = ()) -> None:
        self._lock = threading.Lock()
        self._forms: set[str] = set()
        self._pattern: re.Pattern[str] | None = None
        self._stale = False
        self.add(*secrets)

    def add(self, *secrets: str | bytes) -> None:
        """Register secret values (all their printable forms are scrubbed from then on)."""
        with self._lock:
            before = len(self._forms)
            for secret in secrets:
                if secret:
                    self._forms |= secret_forms(secret)
            # Compiled when next used: a run registers secrets one at a time, by the hundred.
            self._stale = self._stale or len(self._forms) != before

    def _compiled(self) -> re.Pattern[str] | None:
        if self._stale:
            with self._lock:
                if self._stale:
                    forms = self._forms
                    self._pattern = re.compile(_literal_pattern(forms)) if forms else None
                    self._stale = False
        return self._pattern

    def __call__(self, text: str) -> str:
        """Return ``text`` with every known secret form replaced by a mask."""
        pattern = self._compiled()
        return pattern.sub(MASK, text) if pattern else text

    def __contains__(self, text: str) -> bool:
        pattern = self._compiled()
        return bool(pattern and pattern.search(text))

    def __repr__(self) -> str:
        return f"Redactor({len(self._forms)} forms)"


#: The process-wide redactor: environments register the secrets they create or read.
REDACTOR = Redactor()
