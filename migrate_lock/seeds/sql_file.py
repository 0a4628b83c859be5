"""Multi-statement SQL files, run one statement at a time so a failure names its line.

The splitter knows what can hide a semicolon in PostgreSQL: quoted strings ('…', E'…'),
quoted identifiers, dollar-quoted bodies ($$…$$, $fn$…$fn$), and both kinds of comment.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from alembic import context, op

from migrate_lock.errors import ConfigError, MigrationFailed

_DOLLAR_TAG = re.compile(r"\$(?:[A-Za-z_][A-Za-z_0-9]*)?\$")


@dataclass(frozen=True)
class Statement:
    """One statement of a file and the line it starts on (1-based)."""

    sql: str
    line: int


def split_statements(text: str) -> list[Statement]:
    """Split ``text`` at top-level semicolons; empty statements are dropped."""
    statements: list[Statement] = []
    start = 0
    index = 0
    length = len(text)
    while index < length:
        char = text[index]
        if char in {"'", '"'}:
            index = _skip_quoted(text, index, char)
        elif char == "-" and text.startswith("--", index):
            newline = text.find("\n", index)
            index = length if newline == -1 else newline
        elif char == "/" and text.startswith("/*", index):
            index = _skip_block_comment(text, index)
        elif char == "$" and (match := _DOLLAR_TAG.match(text, index)):
            close = text.find(match.group(0), match.end())
            index = length if close == -1 else close + len(match.group(0))
        elif char == ";":
            _add(statements, text, start, index)
            start = index + 1
            index += 1
        else:
            index += 1
    _add(statements, text, start, length)
    return statements


def run_sql_file(path: Path | str, connection: Any = None) -> int:
    """Run every statement of the SQL file ``path``; return how many ran.

    ``connection`` is a psycopg or SQLAlchemy connection; inside an Alembic revision
    leave it out and the migration's own connection is used (offline ``--sql`` mode
    prints the statements instead). Raises MigrationFailed naming file and line.
    """
    source = Path(path)
    try:
        text = source.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"SQL file not found: {source}") from None
    except UnicodeDecodeError as error:
        raise ConfigError(f"{source} is not UTF-8 (byte {error.start})") from None
    statements = split_statements(text)
    execute = _executor(connection)
    for statement in statements:
        try:
            execute(statement.sql)
        except Exception as error:  # noqa: BLE001 - reported with its file and line
            raise MigrationFailed(
                f"{source.name}:{statement.line}: {_describe(error)}",
                hint=f"fix the statement at line {statement.line} of {source}",
            ) from None
    return len(statements)


def _executor(connection: Any) -> Any:
    if connection is None:
        if context.is_offline_mode():
            return op.execute
        connection = op.get_bind()
    # A SQLAlchemy connection: run on its psycopg connection, in the same transaction,
    # so that '%' in the file is never taken for a parameter placeholder.
    raw = getattr(connection, "connection", None)
    driver = getattr(raw, "driver_connection", None)
    target = driver if driver is not None else connection
    return target.execute


def _describe(error: BaseException) -> str:
    original = getattr(error, "orig", None) or error
    sqlstate = getattr(original, "sqlstate", None)
    diag = getattr(original, "diag", None)
    primary = getattr(diag, "message_primary", None) or str(original).splitlines()[0]
    return f"[{sqlstate}] {primary}" if sqlstate else primary


def _add(statements: list[Statement], text: str, start: int, end: int) -> None:
    chunk = text[start:end]
    body = chunk.strip()
    if not body or not _has_code(body):
        return
    line = text.count("\n", 0, start + _code_offset(chunk)) + 1
    statements.append(Statement(body, line))


def _code_offset(chunk: str) -> int:
    # Where the statement's code begins: past blank space and leading comments.
    offset = 0
    while True:
        rest = chunk[offset:]
        stripped = rest.lstrip()
        offset += len(rest) - len(stripped)
        if stripped.startswith("--"):
            newline = chunk.find("\n", offset)
            offset = len(chunk) if newline == -1 else newline
        elif stripped.startswith("/*"):
            offset = _skip_block_comment(chunk, offset)
        else:
            return offset


def _has_code(body: str) -> bool:
    # A chunk of only comments (e.g. after the last semicolon) is not a statement.
    stripped = re.sub(r"--[^\n]*", "", body)
    stripped = re.sub(r"/\*.*?\*/", "", stripped, flags=re.S)
    return bool(stripped.strip())


def _skip_quoted(text: str, index: int, quote: str) -> int:
    # E'…' strings allow backslash escapes; elsewhere a doubled quote is the escape.
    backslash = (
        quote == "'"
        and index > 0
        and text[index - 1] in "eE"
        and (index < 2 or not (text[index - 2].isalnum() or text[index - 2] == "_"))
    )
    index += 1
    while index < len(text):
        char = text[index]
        if backslash and char == "\\":
            index += 2
            continue
        if char == quote:
            if text.startswith(quote * 2, index):
                index += 2
                continue
            return index + 1
        index += 1
    return index


def _skip_block_comment(text: str, index: int) -> int:
    depth = 0
    while index < len(text):
        if text.startswith("/*", index):
            depth += 1
            index += 2
        elif text.startswith("*/", index):
            depth -= 1
            index += 2
            if depth == 0:
                return index
        else:
            index += 1
    return index
