"""Deadline-based polling: the only way the suite waits for something to become true."""

from __future__ import annotations

import select
import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


class WaitTimeout(TimeoutError):
    """A condition did not hold before its deadline; the message names the last observation."""


def until(
    probe: Callable[[], T | None],
    *,
    timeout: float,
    interval: float = 0.1,
    transient: tuple[type[BaseException], ...] = (OSError,),
    what: str = "condition",
) -> T:
    """Call ``probe`` until it returns a truthy value, or raise ``WaitTimeout`` at the deadline.

    Exceptions listed in ``transient`` count as "not yet"; any other exception propagates.
    """
    deadline = time.monotonic() + timeout
    attempts = 0
    last: object = None
    while True:
        attempts += 1
        try:
            value = probe()
        except transient as exc:
            last = f"{type(exc).__name__}: {exc}"
        else:
            if value:
                return value
            last = value
        if time.monotonic() >= deadline:
            raise WaitTimeout(
                f"{what} did not hold within {timeout:.1f}s ({attempts} attempts); "
                f"last observation: {last!r}"
            )
        time.sleep(interval)


def ready(fd: int, *, write: bool = False, timeout: float | None = None) -> bool:
    """Wait until the file descriptor ``fd`` can be read (or written), at most ``timeout``
    seconds (None: as long as it takes); True when it can. ``poll(2)`` where there is one, so
    any descriptor number works (``select(2)`` refuses those above 1023)."""
    if hasattr(select, "poll"):
        poller = select.poll()
        poller.register(fd, select.POLLOUT if write else select.POLLIN)
        return bool(poller.poll(None if timeout is None else max(0, round(timeout * 1000))))
    waiting = ([], [fd]) if write else ([fd], [])
    return any(select.select(*waiting, [], timeout)[:2])
