"""SIGTERM and SIGINT as exceptions, so whatever is open is rolled back on the way out.

Python as PID 1 in a container ignores SIGTERM unless it handles it. We raise
``Terminated`` (a SystemExit) from the handler: psycopg cancels a running query when
one of these interrupts it, the transaction rolls back, and the CLI exits 143.
"""

from __future__ import annotations

import signal
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType


class Terminated(SystemExit):
    """SIGTERM arrived."""

    def __init__(self) -> None:
        super().__init__(143)


@contextmanager
def signals_raise() -> Iterator[None]:
    """Within the block, SIGTERM raises Terminated and SIGINT raises KeyboardInterrupt."""

    def on_term(signum: int, frame: FrameType | None) -> None:
        raise Terminated

    previous_term = signal.signal(signal.SIGTERM, on_term)
    previous_int = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous_term)
        signal.signal(signal.SIGINT, previous_int)
