"""SIGINT and SIGTERM during training: finish the step, save, exit cleanly."""

from __future__ import annotations

import signal
import threading


class StopOnSignals:
    """Within the block, SIGINT and SIGTERM only record themselves (`signum`): the training
    loop stops at the end of the current step, saves and exits with 128 + signal, instead of
    dying mid-save. Outside the main thread (where handlers cannot be set) it does nothing."""

    def __init__(self):
        self.signum: int | None = None
        self._previous = {}

    def _handle(self, signum, frame):
        del frame
        self.signum = signum

    def __enter__(self) -> "StopOnSignals":
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> bool:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        return False
