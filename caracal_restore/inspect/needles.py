"""Which of many byte strings occur in a buffer: one pass over the buffer, not one per string.

The secret search looks for ~100 forms of 10-25 secrets in every byte of a bundle, its dumps
rendered to SQL included (about 1 GB at 1 000 000 audit events). Searching for each form in
turn (``needle in data``) reads every byte once per form: 17 s of CPU per GB.

Here the buffer is read as 8-byte words at the positions that are multiples of 8 (one
zero-copy view), and every needle is at least ``MIN_LENGTH`` (15) bytes long. An occurrence of
a needle of length L at position p spans the L - 7 >= 8 consecutive word starts p .. p + L - 8,
so one of them is a multiple of 8: the word there is one of the needle's L - 7 inner words.
Every inner word of every needle is hashed into a bit table; each word of the buffer is hashed
the same way, and only the words that hit the table are compared, as a needle's inner word at
offset j, with the needle placed j bytes before. No occurrence is missed, and a hit of an
unrelated word (1 in ~1 000 words) only costs a dictionary lookup.

Measured on the SQL text of a 1 000 000-event dump in 4 MB chunks: 0.6 ns per byte in memory
(1.5 ns with the file read and the chunks' overlap), against 4.2 ns for the same table read at
all eight offsets with the needles' first words only.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

#: Bytes of the words read from the buffer and hashed into the table.
WORD = 8
#: The shortest needle that spans a whole aligned word wherever it starts: 2 words less a byte.
MIN_LENGTH = 2 * WORD - 1
_BITS = 20
_MULTIPLIER = np.uint64(0x9E3779B97F4A7C15)  # 2**64 / golden ratio: mixes into the top bits
_SHIFT = np.uint64(64 - _BITS)


class NeedleFinder:
    """Finds which of a fixed set of needles occur in a buffer."""

    def __init__(self, needles: Iterable[bytes]) -> None:
        #: Each inner word -> the needles holding it, with the word's offset in the needle.
        self._by_word: dict[int, list[tuple[bytes, int]]] = {}
        for needle in needles:
            if len(needle) < MIN_LENGTH:
                raise ValueError(f"a needle must be at least {MIN_LENGTH} bytes long")
            for offset in range(len(needle) - WORD + 1):
                word = int.from_bytes(needle[offset:offset + WORD], "little")
                self._by_word.setdefault(word, []).append((needle, offset))
        self._table = np.zeros(1 << _BITS, dtype=np.bool_)
        if self._by_word:
            words = np.array(list(self._by_word), dtype=np.uint64)
            self._table[(words * _MULTIPLIER) >> _SHIFT] = True

    def present(self, data: bytes) -> set[bytes]:
        """The needles that occur in ``data`` (each found entirely inside it)."""
        found: set[bytes] = set()
        count = len(data) // WORD
        if not self._by_word or count == 0:
            return found
        words = np.frombuffer(data, dtype="<u8", count=count)
        slots = words * _MULTIPLIER
        slots >>= _SHIFT
        for i in np.flatnonzero(self._table[slots]).tolist():
            for needle, offset in self._by_word.get(int(words[i]), ()):
                position = WORD * i - offset
                if position >= 0 and needle not in found and data.startswith(needle, position):
                    found.add(needle)
        return found
