"""Ctrl-C and SIGTERM: both unwind the command like ``KeyboardInterrupt``, and the user is told what to do next.

SIGTERM (``kill``, systemd, a CI runner's timeout) is turned into :class:`Terminated`, a subclass of
``KeyboardInterrupt``, so every ``finally`` and every ``except KeyboardInterrupt`` that cleans up after
Ctrl-C also runs for it. What to advise depends on how far the command got: a command states it with
:func:`advise` as it goes (for example ``finetune`` once its first epoch is checkpointed).
"""

from __future__ import annotations

import signal
from types import FrameType

_DEFAULT_ADVICE = "interrupted; nothing was written"
_advice = _DEFAULT_ADVICE


class Terminated(KeyboardInterrupt):
    """The process received SIGTERM."""

    signal_number = signal.SIGTERM


def advise(text: str) -> None:
    """Set the line printed if the command is interrupted from now on (``interrupted; ...``)."""
    global _advice
    _advice = text


def advice() -> str:
    """The line to print for an interruption at this point of the command."""
    return _advice


def reset() -> None:
    """Back to the default advice (a new command in the same process)."""
    advise(_DEFAULT_ADVICE)


def exit_code(interrupt: BaseException) -> int:
    """130 for Ctrl-C (SIGINT), 143 for SIGTERM: 128 + the signal number, as shells report them."""
    return 128 + int(signal.SIGTERM if isinstance(interrupt, Terminated) else signal.SIGINT)


def _raise_terminated(signum: int, frame: FrameType | None) -> None:
    raise Terminated()


def handle_sigterm() -> None:
    """Turn SIGTERM into :class:`Terminated` in this (main) thread."""
    signal.signal(signal.SIGTERM, _raise_terminated)
