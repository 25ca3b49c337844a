"""The one-pass search of the secret scan finds exactly what searching for each needle finds."""

from __future__ import annotations

import random

import pytest

from caracal_restore.inspect.assets import MIN_NEEDLE
from caracal_restore.inspect.needles import MIN_LENGTH, WORD, NeedleFinder


def _each(needles: list[bytes], data: bytes) -> set[bytes]:
    return {n for n in needles if n in data}


def test_finds_what_a_search_for_each_needle_finds() -> None:
    rng = random.Random(7)
    needles = [rng.randbytes(rng.randrange(MIN_LENGTH, 70)) for _ in range(60)]
    # Needles sharing their first word, a needle inside another, a periodic one (its inner
    # words repeat), and hex text like the dumps'.
    needles += [needles[0][:WORD] + b"-other-continuation", needles[1][3:3 + MIN_LENGTH],
                b"abc" * 9, b"0123456789abcdef" * 2]
    for trial in range(40):
        data = bytearray(rng.randbytes(rng.randrange(0, 5000)))
        if trial % 3 == 0:
            data = bytearray(rng.choice(b"0123456789abcdef") for _ in range(len(data)))
        for needle in rng.sample(needles, rng.randrange(0, 8)):
            at = rng.randrange(0, len(data) + 1)
            data[at:at] = needle
        if trial % 5 == 0 and len(data) > 10:  # at the very start and end, every offset mod 8
            data[:0] = needles[trial % len(needles)]
            data += needles[(trial + 1) % len(needles)]
        blob = bytes(data)
        assert NeedleFinder(needles).present(blob) == _each(needles, blob)


@pytest.mark.parametrize("needle", [b"secret-needle-0123", b"shortest-needle"],
                         ids=["18 bytes", "the shortest allowed"])
def test_every_position_modulo_the_word_size(needle: bytes) -> None:
    finder = NeedleFinder([needle])
    for at in range(3 * WORD):
        data = b"x" * at + needle + b"y" * (at % 5)
        assert finder.present(data) == {needle}, at
        assert finder.present(data[:-1 - at % 5]) == set(), at  # cut short: not there
        assert finder.present(data[at + 1:]) == set(), at  # its first byte cut off


def test_short_needles_are_refused_and_no_needles_find_nothing() -> None:
    assert len(b"shortest-needle") == MIN_LENGTH <= MIN_NEEDLE  # the scan's forms all qualify
    with pytest.raises(ValueError, match=f"at least {MIN_LENGTH} bytes"):
        NeedleFinder([b"fourteen-bytes"])
    assert NeedleFinder([]).present(b"anything at all") == set()
    assert NeedleFinder([b"shortest-needle"]).present(b"seven!!") == set()
