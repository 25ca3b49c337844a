"""Redaction removes every printable form of a secret."""

from __future__ import annotations

import base64

from caracal_restore.redact import MASK, Redactor


def test_all_forms_are_removed() -> None:
    secret = "8f3d9a712c45e6b0d18f2a4c6e9b3d57a1c4f8020e6a9c3d5b7f1a2c4e6d8b90"
    raw = bytes.fromhex(secret)
    red = Redactor([secret])
    for form in (secret, secret.upper(), base64.b64encode(raw).decode(),
                 base64.urlsafe_b64encode(raw).decode().rstrip("=")):
        assert MASK in red(f"x={form};")
        assert form not in red(f"x={form};")


def test_url_quoted_password_is_removed() -> None:
    red = Redactor(["p@ss/word!"])
    assert "p%40ss%2Fword%21" not in red("postgres://u:p%40ss%2Fword%21@h/db")


def test_short_values_are_ignored() -> None:
    red = Redactor(["abc"])
    assert red("abc abc") == "abc abc"


def test_repr_shows_no_secret() -> None:
    assert "hunter2hunter2" not in repr(Redactor(["hunter2hunter2"]))
