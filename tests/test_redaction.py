"""Redaction removes every printable form of a secret."""

from __future__ import annotations

import base64
import random
import re

from caracal_restore.redact import MASK, Redactor, _literal_pattern


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


def test_a_secret_inside_a_longer_one_leaves_no_part_of_the_longer_visible() -> None:
    """The longest registered form at a position is masked whole, whatever the order added."""
    short, long = "abcdef12", "xxabcdef12yy"
    for order in ((short, long), (long, short)):
        red = Redactor(order)
        assert red(f"[{long}] [{short}] [abcdef12yy]") == f"[{MASK}] [{MASK}] [{MASK}yy]"


def test_many_forms_match_exactly_as_a_longest_first_alternation() -> None:
    """The trie pattern finds what ``longest|…|shortest`` finds, on forms sharing prefixes."""
    rnd = random.Random(7)
    for _ in range(500):
        alphabet = rnd.choice(["ab", "abc", "a.b*(", "xy|?\\"])
        forms = {"".join(rnd.choice(alphabet) for _ in range(rnd.randint(1, 7)))
                 for _ in range(rnd.randint(1, 12))}
        text = "".join(rnd.choice(alphabet + "Q") for _ in range(60))
        flat = re.compile("|".join(map(re.escape, sorted(forms, key=len, reverse=True))))
        assert re.sub(_literal_pattern(forms), "#", text) == flat.sub("#", text), (forms, text)


def test_secrets_added_after_a_use_are_masked_too() -> None:
    red = Redactor(["first-secret"])
    assert red("first-secret") == MASK
    red.add("second-secret")
    assert red("first-secret second-secret") == f"{MASK} {MASK}"
    assert "second-secret" in red
