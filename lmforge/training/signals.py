"""SIGTERM and SIGINT ask the trainer for a graceful stop (finish the step, save); a second Ctrl-C stops at once."""
from __future__ import annotations

import contextlib
import signal
import threading
from typing import Callable, Iterator


@contextlib.contextmanager
def graceful_stop(request_stop: Callable[[str], None], stopping: Callable[[], bool]) -> Iterator[None]:
    """Within the block, the signals call `request_stop`; only possible on the main thread (elsewhere a no-op)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):
        if signum == signal.SIGINT and stopping():
            raise KeyboardInterrupt  # a second Ctrl-C: stop now, the last checkpoint stands
        request_stop(f"signal {signal.Signals(signum).name}")

    old = {s: signal.signal(s, handler) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)
