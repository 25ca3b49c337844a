"""Last line of secret hygiene: rewrite any evidence file that still holds a known secret.

Attachments are redacted when they are made (``fixtures/evidence.py``), but Allure also writes
text it takes from pytest itself (failure messages, tracebacks, captured output). Before the
manifest is written, every file under the reports directory is searched for every printable
form of every secret the run knows (``caracal_restore.redact``); a text file that holds one is
rewritten with the secret masked, a binary file is replaced by a note. The files touched are
named in the terminal and in ``summary.json``, because a hit is a defect to fix at its source.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from caracal_restore.redact import Redactor

_BINARY_NOTE = b"[removed by caracal-restore: this attachment contained a secret value]\n"


def scrub_file(path: Path, redactor: Redactor) -> bool:
    """Mask every known secret in ``path``; return True when the file had to be changed."""
    data = path.read_bytes()
    try:
        body = data.decode("utf-8")
    except UnicodeDecodeError:
        if data.decode("latin-1") in redactor:
            path.write_bytes(_BINARY_NOTE)
            return True
        return False
    if body not in redactor:
        return False
    path.write_text(redactor(body), encoding="utf-8")
    return True


def scrub_tree(root: Path, redactor: Redactor, *, skip_dirs: Sequence[str] = ()) -> list[Path]:
    """Scrub every regular file under ``root`` (not following links); return the files changed."""
    changed: list[Path] = []
    if not root.is_dir():
        return changed
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        base = Path(dirpath)
        if base == root:
            dirnames[:] = [d for d in dirnames if d not in skip_dirs]
        for name in sorted(filenames):
            path = base / name
            if path.is_symlink() or not path.is_file():
                continue
            try:
                if scrub_file(path, redactor):
                    changed.append(path)
            except OSError:  # vanished or unreadable: not evidence we can vouch for either way
                continue
    return changed
