"""A few libpq calls through ctypes, for the at-head fast path only.

Importing psycopg costs about a quarter of a CPU-second; loading libpq itself (the
one psycopg[binary] ships, or the system's) costs a few milliseconds. The fast path
needs one connection and three small read-only queries, so it talks to libpq
directly. Anything unexpected (no libpq found, a connection error, a query error)
returns None or raises ``LeanUnavailable``, and the caller takes the full path,
which has the retries, the error classification and the messages.
"""

from __future__ import annotations

import ctypes
import importlib.util
import math
import re
import select
import time
from collections.abc import Iterator, Sequence
from functools import cache
from pathlib import Path
from typing import Any

_CONNECTION_OK = 0
_TUPLES_OK = 2
_COMMAND_OK = 1
_PLACEHOLDER = re.compile(r"%s")
_BOOL, _INT8, _INT2, _INT4 = 16, 20, 21, 23


class LeanUnavailable(Exception):
    """The lean path cannot answer; take the full path."""


class LeanConnection:
    """The psycopg-like subset our read-only queries use: ``execute(...).fetchall()``."""

    def __init__(self, lib: Any, handle: int) -> None:
        self._lib = lib
        self._handle = handle

    @classmethod
    def connect(cls, conninfo: str, *, timeout_seconds: int) -> LeanConnection:
        lib = _libpq()
        keys = [b"dbname", b"connect_timeout", b"application_name", b"keepalives"]
        values = [conninfo.encode(), str(max(1, timeout_seconds)).encode(), b"migrate-lock", b"1"]
        key_array = (ctypes.c_char_p * (len(keys) + 1))(*keys, None)
        value_array = (ctypes.c_char_p * (len(values) + 1))(*values, None)
        # expand_dbname=1: the URL in "dbname" is expanded, the other keys complete it.
        handle = lib.PQconnectdbParams(key_array, value_array, 1)
        if not handle or lib.PQstatus(handle) != _CONNECTION_OK:
            if handle:
                lib.PQfinish(handle)
            raise LeanUnavailable("connection failed")
        return cls(lib, handle)

    def execute(self, query: str, params: Sequence[object] | None = None) -> _Result:
        lib = self._lib
        params = params or ()
        counter = iter(range(1, len(params) + 1))
        text = _PLACEHOLDER.sub(lambda _: f"${next(counter)}", query)
        values = (ctypes.c_char_p * max(1, len(params)))(*[_text(p) for p in params])
        result = lib.PQexecParams(
            self._handle, text.encode(), len(params), None, values, None, None, 0
        )
        try:
            status = lib.PQresultStatus(result)
            if status not in (_TUPLES_OK, _COMMAND_OK):
                raise LeanUnavailable("query failed")
            types = [lib.PQftype(result, column) for column in range(lib.PQnfields(result))]
            rows = []
            for row in range(lib.PQntuples(result)):
                rows.append(
                    tuple(
                        None
                        if lib.PQgetisnull(result, row, column)
                        else _value(lib.PQgetvalue(result, row, column).decode(), kind)
                        for column, kind in enumerate(types)
                    )
                )
            return _Result(rows)
        finally:
            lib.PQclear(result)

    def notifies(
        self, *, timeout: float | None = None, stop_after: int | None = None
    ) -> Iterator[bytes]:
        """Yield the channel of each NOTIFY received within ``timeout`` seconds (None: no end)."""
        lib = self._lib
        deadline = time.monotonic() + (math.inf if timeout is None else timeout)
        received = 0
        while True:
            if not lib.PQconsumeInput(self._handle):
                raise LeanUnavailable("connection lost")
            while notify := lib.PQnotifies(self._handle):
                lib.PQfreemem(notify)
                received += 1
                yield b""
                if stop_after is not None and received >= stop_after:
                    return
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            select.select(
                [lib.PQsocket(self._handle)], [], [], None if math.isinf(remaining) else remaining
            )

    @property
    def info(self) -> LeanConnection:
        """Like psycopg's ``connection.info``: ``host`` and ``port``."""
        return self

    @property
    def host(self) -> str:
        """Where we connected: a host name or address, or a socket directory."""
        value = self._lib.PQhost(self._handle)
        return value.decode() if value else ""

    @property
    def port(self) -> int:
        value = self._lib.PQport(self._handle)
        return int(value) if value and value.isdigit() else 5432

    @property
    def closed(self) -> bool:
        return not self._handle

    @property
    def broken(self) -> bool:
        return bool(self._handle) and self._lib.PQstatus(self._handle) != _CONNECTION_OK

    def close(self) -> None:
        if self._handle:
            self._lib.PQfinish(self._handle)
            self._handle = 0

    def __enter__(self) -> LeanConnection:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class _Result:
    def __init__(self, rows: list[tuple[object, ...]]) -> None:
        self._rows = rows

    def fetchone(self) -> tuple[object, ...] | None:
        return self._rows[0] if self._rows else None

    def fetchall(self) -> list[tuple[object, ...]]:
        return self._rows


def conninfo_is_valid(conninfo: str) -> bool:
    """libpq's own parser accepts ``conninfo`` (what psycopg's conninfo_to_dict checks)."""
    return conninfo_error(conninfo) is None


def conninfo_error(conninfo: str) -> str | None:
    """Why libpq's parser rejects ``conninfo`` (the text psycopg's ProgrammingError
    carries), or None when it accepts it. Raises LeanUnavailable without a libpq."""
    lib = _libpq()
    error = ctypes.c_void_p()
    options = lib.PQconninfoParse(conninfo.encode(), ctypes.byref(error))
    message = ""
    if error.value:
        message = ctypes.string_at(error.value).decode("utf8", "replace")
        lib.PQfreemem(error)
    if not options:
        return message or "invalid connection string"
    lib.PQconninfoFree(options)
    return None


def _value(text: str, kind: int) -> object:
    if kind == _BOOL:
        return text == "t"
    if kind in (_INT8, _INT2, _INT4):
        return int(text)
    return text


def _text(value: object) -> bytes | None:
    if value is None:
        return None
    if isinstance(value, list | tuple):
        inner = ",".join(
            '"' + str(item).replace("\\", "\\\\").replace('"', '\\"') + '"' for item in value
        )
        return ("{" + inner + "}").encode()
    return str(value).encode()


@cache
def _libpq() -> Any:
    path = _find_libpq()
    if path is None:
        raise LeanUnavailable("libpq not found")
    lib = ctypes.CDLL(path)
    lib.PQconnectdbParams.restype = ctypes.c_void_p
    lib.PQconnectdbParams.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int]
    lib.PQstatus.argtypes = [ctypes.c_void_p]
    lib.PQfinish.argtypes = [ctypes.c_void_p]
    lib.PQexecParams.restype = ctypes.c_void_p
    lib.PQexecParams.argtypes = [
        ctypes.c_void_p,
        ctypes.c_char_p,
        ctypes.c_int,
        ctypes.c_void_p,
        ctypes.c_void_p,
        ctypes.c_void_p,
        ctypes.c_void_p,
        ctypes.c_int,
    ]
    lib.PQresultStatus.argtypes = [ctypes.c_void_p]
    lib.PQntuples.argtypes = [ctypes.c_void_p]
    lib.PQnfields.argtypes = [ctypes.c_void_p]
    lib.PQgetisnull.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_int]
    lib.PQgetvalue.restype = ctypes.c_char_p
    lib.PQgetvalue.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_int]
    lib.PQclear.argtypes = [ctypes.c_void_p]
    lib.PQconninfoParse.restype = ctypes.c_void_p
    lib.PQconninfoParse.argtypes = [ctypes.c_char_p, ctypes.c_void_p]
    lib.PQconninfoFree.argtypes = [ctypes.c_void_p]
    lib.PQfreemem.argtypes = [ctypes.c_void_p]
    lib.PQftype.argtypes = [ctypes.c_void_p, ctypes.c_int]
    lib.PQftype.restype = ctypes.c_uint
    lib.PQconsumeInput.argtypes = [ctypes.c_void_p]
    lib.PQnotifies.argtypes = [ctypes.c_void_p]
    lib.PQnotifies.restype = ctypes.c_void_p
    lib.PQsocket.argtypes = [ctypes.c_void_p]
    for name in ("PQhost", "PQport"):
        getattr(lib, name).restype = ctypes.c_char_p
        getattr(lib, name).argtypes = [ctypes.c_void_p]
    return lib


def _find_libpq() -> str | None:
    # The libpq that psycopg[binary] ships beside its package, else the system's.
    spec = importlib.util.find_spec("psycopg_binary")
    if spec is not None and spec.submodule_search_locations:
        package = Path(next(iter(spec.submodule_search_locations)))
        shipped = sorted(package.parent.glob("psycopg_binary.libs/libpq*.so*"))
        if shipped:
            return str(shipped[0])
    # ctypes.util imports subprocess and more (~10 ms of a 70 ms start): only this rare
    # fallback (no psycopg[binary]) needs it.
    import ctypes.util  # noqa: PLC0415 - see above

    return ctypes.util.find_library("pq")
