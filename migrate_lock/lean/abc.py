"""The connection the light code talks to, whichever implementation is behind it.

Two implementations satisfy it: psycopg's ``Connection`` (the full path) and
``lean.pq.LeanConnection`` (libpq through ctypes, the at-head path). The lock, the
version-table reads and the seed checksums are written once against this Protocol,
as psycopg keeps libpq behind ``pq/abc.py``. Queries use ``%s`` placeholders; the
connection is in autocommit mode, so ``BEGIN``/``COMMIT``/``ROLLBACK`` are statements.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any, Protocol


class Rows(Protocol):
    """What ``execute`` returns: psycopg's cursor, or the lean result."""

    def fetchone(self) -> Any: ...

    def fetchall(self) -> list[Any]: ...


class Endpoint(Protocol):
    """Where the connection went, as the client sees it (psycopg's ``info``)."""

    @property
    def host(self) -> str: ...

    @property
    def port(self) -> int: ...


class LockConnection(Protocol):
    """An autocommit connection to PostgreSQL: enough to read, lock and wait."""

    def execute(self, query: Any, params: Sequence[Any] | None = ...) -> Rows: ...

    def notifies(
        self, *, timeout: float | None = ..., stop_after: int | None = ...
    ) -> Iterator[Any]: ...

    @property
    def info(self) -> Endpoint: ...

    @property
    def closed(self) -> bool: ...

    @property
    def broken(self) -> bool: ...
