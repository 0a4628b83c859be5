"""Multi-statement SQL files, run one statement at a time so a failure names its line.

The splitter knows what can hide a semicolon in PostgreSQL: quoted strings ('…', E'…'),
quoted identifiers, dollar-quoted bodies ($$…$$, $fn$…$fn$), and both kinds of comment.

A file runs inside a transaction it does not own (the revision's, the seed run's, the
transaction that holds the migration lock), so it may not control transactions itself:
``without_transaction_control`` drops one ``BEGIN … COMMIT`` pair that wraps the whole
file (a common habit; it means what the surrounding transaction already does) and
refuses every other transaction-control statement, naming its line, before anything runs.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from alembic import context, op

from migrate_lock.errors import ConfigError, MigrationFailed
from migrate_lock.logs import log

_DOLLAR_TAG = re.compile(r"\$(?:[A-Za-z_][A-Za-z_0-9]*)?\$")
_ROUTINE = re.compile(r"create\s+(?:or\s+replace\s+)?(?:function|procedure)\b", re.IGNORECASE)
_WORD = re.compile(r"\w[\w$]*")

#: Statements that begin, end or split a transaction (matched at a statement's start).
_TRANSACTION_CONTROL = re.compile(
    r"(?:begin|start\s+transaction|commit|end|rollback|abort|savepoint|release"
    r"|prepare\s+transaction)(?![A-Za-z0-9_$])",
    re.IGNORECASE,
)
#: The only pair that is dropped, and only as the file's first and last statements.
_PLAIN_BEGIN = re.compile(r"(?:begin(?:\s+(?:work|transaction))?|start\s+transaction)", re.I)
_PLAIN_COMMIT = re.compile(r"(?:commit|end)(?:\s+(?:work|transaction))?", re.I)


@dataclass(frozen=True)
class Statement:
    """One statement of a file and the line it starts on (1-based)."""

    sql: str
    line: int


def split_statements(text: str) -> list[Statement]:
    """Split ``text`` at top-level semicolons; empty statements are dropped.

    As psql does, the semicolons inside a SQL-standard routine body (``CREATE FUNCTION …
    BEGIN ATOMIC …; …; END``) do not split: in a statement that starts ``CREATE [OR
    REPLACE] FUNCTION|PROCEDURE``, ``BEGIN`` (and ``CASE`` inside it) open a block that
    ``END`` closes, outside parentheses.
    """
    statements: list[Statement] = []
    start = 0
    index = 0
    length = len(text)
    routine: bool | None = None  # None: the statement's first word is still to come
    depth = 0  # BEGIN … END blocks open in a routine body
    parens = 0
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
        elif char == ";" and depth == 0:
            _add(statements, text, start, index)
            start = index + 1
            index += 1
            routine, parens = None, 0
        else:
            if routine is None and not char.isspace():
                routine = _ROUTINE.match(text, index) is not None
            if routine:
                if char.isalpha() or char == "_":
                    end = _WORD.match(text, index).end()  # type: ignore[union-attr]
                    if parens == 0:
                        depth = _nest(text[index:end].lower(), depth)
                    index = end
                    continue
                if char == "(":
                    parens += 1
                elif char == ")":
                    parens = max(0, parens - 1)
            index += 1
    _add(statements, text, start, length)
    return statements


def _nest(word: str, depth: int) -> int:
    if word == "begin":
        return depth + 1
    if word == "case" and depth:
        return depth + 1
    if word == "end" and depth:
        return depth - 1
    return depth


class TransactionControlError(ValueError):
    """A statement of a SQL file that would begin or end a transaction (not the wrapper)."""

    def __init__(self, statement: Statement, keyword: str) -> None:
        super().__init__(f"line {statement.line}: {keyword}")
        self.statement = statement
        self.keyword = keyword

    def describe(self, name: str) -> str:
        """The one-line refusal, naming the file ``name`` and the line."""
        return (
            f"{name}:{self.statement.line}: {self.keyword} controls the transaction, which a "
            "SQL file may not: it runs inside migrate-lock's transaction (all seed files of a "
            "run, or the revision, in one transaction); nothing was run"
        )

    hint = (
        "remove it (a single BEGIN ... COMMIT around the whole file is allowed and ignored); "
        "to make a step optional use a DO block or IF NOT EXISTS, not a savepoint"
    )


def transaction_control(statement: Statement) -> str | None:
    """The transaction-control keyword ``statement`` starts with (``COMMIT``), if any."""
    code = statement.sql[_code_offset(statement.sql) :]
    match = _TRANSACTION_CONTROL.match(code)
    return " ".join(match.group(0).upper().split()) if match else None


def without_transaction_control(
    statements: list[Statement],
) -> tuple[list[Statement], bool]:
    """``statements`` without a ``BEGIN … COMMIT`` pair wrapping them all, and whether one
    was dropped. Raises TransactionControlError for any other transaction control."""
    wrapped = (
        len(statements) >= 2
        and _PLAIN_BEGIN.fullmatch(_code(statements[0])) is not None
        and _PLAIN_COMMIT.fullmatch(_code(statements[-1])) is not None
    )
    inner = statements[1:-1] if wrapped else statements
    for statement in inner:
        keyword = transaction_control(statement)
        if keyword is not None:
            raise TransactionControlError(statement, keyword)
    return inner, wrapped


def read_statements(source: Path, text: str | None = None) -> tuple[list[Statement], bool]:
    """The statements of the SQL file ``source`` (or of its ``text``), without a wrapping
    ``BEGIN … COMMIT`` pair, and whether there was one. Raises TransactionControlError."""
    if text is None:
        text = source.read_text(encoding="utf-8-sig")
    return without_transaction_control(split_statements(text.removeprefix("\ufeff")))


def run_sql_file(path: Path | str, connection: Any = None) -> int:
    """Run every statement of the SQL file ``path``; return how many ran.

    ``connection`` is a psycopg or SQLAlchemy connection; inside an Alembic revision
    leave it out and the migration's own connection is used (offline ``--sql`` mode
    prints the statements instead). Raises MigrationFailed naming file and line.
    """
    source = Path(path)
    try:
        statements, wrapped = read_statements(source)
    except FileNotFoundError:
        raise ConfigError(f"SQL file not found: {source}") from None
    except UnicodeDecodeError as error:
        raise ConfigError(f"{source} is not UTF-8 (byte {error.start})") from None
    except TransactionControlError as error:
        raise MigrationFailed(error.describe(source.name), hint=error.hint) from None
    if wrapped:
        log.warning("sql_file.transaction_wrapper_ignored", file=source.name)
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


def _code(statement: Statement) -> str:
    # The statement without leading comments, its words separated by single spaces.
    return " ".join(statement.sql[_code_offset(statement.sql) :].split())


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
