"""Ctrl-C and SIGTERM: every command stops with one line and exit 128 + the signal's number
(130, 143), keeping what was committed, at any moment.

:func:`handled` installs handlers that raise :class:`Interrupted` once, at the first
signal, and remember it: a library that swallows the exception (some catch everything
around a blocking call) cannot lose the signal, because :func:`check` raises it again,
and the command's end asks :func:`received` before it returns success.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType
from typing import Any

SIGNALS = (signal.SIGINT, signal.SIGTERM)
_received: list[int] = []


class Interrupted(KeyboardInterrupt):
    """A command was stopped by a signal; its exit code is 128 + the signal's number."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum

    @property
    def exit_code(self) -> int:
        return 128 + self.signum

    @property
    def name(self) -> str:
        return signal.Signals(self.signum).name


def early() -> None:
    """Until a command installs :func:`handled`: a signal ends the process at once, in one
    line (nothing has started that could be kept or lost)."""

    def stop(signum: int, frame: FrameType | None) -> None:
        os.write(2, f"vaegrid: interrupted ({signal.Signals(signum).name})\n".encode())
        os._exit(128 + signum)

    for s in SIGNALS:
        signal.signal(s, stop)


def _handler(signum: int, frame: FrameType | None) -> None:
    first = not _received
    _received.append(signum)
    if first:  # later signals only wait for the first one's cleanup to finish
        raise Interrupted(signum)


@contextmanager
def handled() -> Iterator[None]:
    """While the block runs, SIGINT and SIGTERM raise :class:`Interrupted` (main thread
    only: elsewhere Python runs no handler); the previous handlers come back after."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {s: signal.signal(s, _handler) for s in SIGNALS}
    hook = sys.unraisablehook
    sys.unraisablehook = _unraisable
    try:
        yield
    finally:
        sys.unraisablehook = hook
        for s, handler in previous.items():
            signal.signal(s, handler)


def _unraisable(unraisable: Any) -> None:
    """A signal that lands in a callback Python cannot raise from (a garbage collector's
    weakref callback, a __del__) is remembered, not printed as "Exception ignored": the
    command answers it at its next check or at its end. So is the timeout of a Dask client
    that could not connect (the command has said so in its one line)."""
    if isinstance(unraisable.exc_value, Interrupted):
        return
    where = getattr(unraisable.object, "__qualname__", "")
    if where == "Client.__del__":  # a Dask client that never connected, closing: said already
        return
    sys.__unraisablehook__(unraisable)


def received() -> Interrupted | None:
    """The first signal received since :func:`reset`, as the exception it raised."""
    return Interrupted(_received[0]) if _received else None


def caused(error: BaseException) -> bool:
    """Whether ``error`` was raised by a signal's :class:`Interrupted` on its way: in its
    chain of causes and contexts (a library that wraps it, or raises in its handler)."""
    seen: set[int] = set()
    link: BaseException | None = error
    while link is not None and id(link) not in seen:
        if isinstance(link, Interrupted):
            return True
        seen.add(id(link))
        link = link.__cause__ or link.__context__
    return False


def check() -> None:
    """Raise the first signal received again (it may have been swallowed on its way)."""
    if _received:
        raise Interrupted(_received[0])


def reset() -> None:
    _received.clear()
