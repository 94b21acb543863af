"""Stopping a command by signal: Ctrl-C (SIGINT) and SIGTERM (how schedulers and `kill` stop a job).

Both raise KeyboardInterrupt wherever the program is, so every command stops the same way: the
file being written is abandoned whole (encoders.outputs writes atomically), one line is printed,
and the exit status is 128 + the signal's number: 130 for Ctrl-C, 143 for SIGTERM. Lightning turns
a KeyboardInterrupt inside `fit` into `sys.exit(1)`; the signal recorded here still decides the status.
"""

from __future__ import annotations

import signal

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Interrupts:
    """Context manager: SIGINT and SIGTERM raise KeyboardInterrupt and are remembered until exit."""

    def __init__(self) -> None:
        self.received: list[int] = []
        self._previous: dict[int, object] = {}

    def _handle(self, signum: int, frame: object) -> None:
        self.received.append(signum)
        raise KeyboardInterrupt

    def __enter__(self) -> "Interrupts":
        self._previous = {s: signal.signal(s, self._handle) for s in SIGNALS}
        return self

    def __exit__(self, *exc: object) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler)

    def stopped(self, error: BaseException) -> bool:
        """Was `error` (KeyboardInterrupt, or Lightning's SystemExit after one) caused by a signal?"""
        return isinstance(error, KeyboardInterrupt) or (isinstance(error, SystemExit) and bool(self.received))

    @property
    def status(self) -> int:
        return 128 + int(self.received[-1] if self.received else signal.SIGINT)

    @property
    def name(self) -> str:
        return signal.Signals(self.received[-1]).name if self.received else "SIGINT"
