"""Stand-ins for what the code under test expects from a database connection."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class Cursor:
    """What ``connection.execute(...)`` returns, as far as ``fetchone()`` goes."""

    row: tuple[object, ...] | None

    def fetchone(self) -> tuple[object, ...] | None:
        return self.row
