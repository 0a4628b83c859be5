"""One CSV seed file, upserted into its table by primary key.

The file is COPYed into a temporary table (so PostgreSQL itself checks every value's
type, and reports the line), checked for NULLs in NOT NULL columns and for duplicate
keys, then merged with ``INSERT … ON CONFLICT … DO UPDATE … WHERE … IS DISTINCT FROM``
so rows that did not change are not rewritten. Runs inside the caller's transaction.
"""

from __future__ import annotations

import csv
import io
import re
from dataclasses import dataclass
from typing import Any

import psycopg
import psycopg.errors
from psycopg import sql
from psycopg.pq import TransactionStatus

from migrate_lock.errors import MigrationFailed

#: ``leagues.csv``, ``sports.leagues.csv``, optionally ordered: ``10_leagues.csv``.
_NAME = re.compile(r"^(?:\d+[_-])?(?:(?P<schema>[^.]+)\.)?(?P<table>[^.]+)\.csv$")
_COPY_LINE = re.compile(r"line (\d+)(?:, column ([^:]+))?")
_STAGE = "migrate_lock_seed_rows"
_CHUNK = 1 << 20
_BOM = "\ufeff".encode()


class SeedError(MigrationFailed):
    """A seed file is wrong; nothing from this seed run was applied."""


@dataclass(frozen=True)
class Counts:
    """What a seed did (or, in a dry run, would do) to its table."""

    inserted: int = 0
    updated: int = 0
    unchanged: int = 0
    deleted: int = 0


@dataclass(frozen=True)
class _Column:
    not_null: bool
    has_default: bool
    generated: bool
    identity: str  # '' (none), 'a' (ALWAYS) or 'd' (BY DEFAULT)

    @property
    def required(self) -> bool:
        return self.not_null and not self.has_default and not self.identity


@dataclass(frozen=True)
class _Table:
    identifier: sql.Identifier
    display: str
    oid: int


def target_table(file_name: str) -> tuple[str | None, str]:
    """The (schema, table) a CSV seed file name stands for."""
    match = _NAME.match(file_name)
    if not match:
        raise SeedError(
            f"{file_name}: a CSV seed must be named TABLE.csv or SCHEMA.TABLE.csv",
            hint="rename the file after the table it fills",
        )
    return match.group("schema"), match.group("table")


def upsert_csv(
    connection: psycopg.Connection[Any],
    file_name: str,
    data: bytes,
    *,
    prune: bool = False,
    dry_run: bool = False,
) -> Counts:
    """Merge the CSV ``data`` into its table; with ``prune``, delete rows not in it."""
    text = _decode(file_name, data)
    data = data.removeprefix(_BOM)  # what COPY reads must match what _decode read
    table = _resolve(connection, file_name)
    header = _header(file_name, text)
    columns = _columns(connection, table.oid)
    _check_header(file_name, header, columns, table)
    keys = _primary_key(connection, table, file_name)
    missing = [key for key in keys if key not in header]
    if missing:
        raise SeedError(
            f"{file_name}:1: the header lacks primary key column(s) {', '.join(missing)}",
            hint="seeds are matched to rows by primary key",
        )
    cols = sql.SQL(", ").join(sql.Identifier(name) for name in header)
    if not dry_run and not prune:
        inserted = _copy_into_empty_table(connection, table, data, cols)
        if inserted is not None:
            _advance_sequences(connection, table, header)
            return Counts(inserted=inserted)
    stage = sql.Identifier(_STAGE)
    connection.execute(
        sql.SQL("CREATE TEMP TABLE {} AS SELECT {} FROM {} WITH NO DATA").format(
            stage, cols, table.identifier
        )
    )
    try:
        connection.execute(
            sql.SQL("ALTER TABLE {} ADD COLUMN _line bigint GENERATED ALWAYS AS IDENTITY").format(
                stage
            )
        )
        _copy(connection, file_name, data, stage, cols)
        _check_not_null(connection, file_name, stage, header, columns)
        _check_duplicates(connection, file_name, stage, keys)
        if dry_run:
            return _preview(connection, table, stage, header, keys, prune)
        counts = _merge(connection, table, stage, header, keys, columns)
        if prune:
            counts = Counts(
                counts.inserted,
                counts.updated,
                counts.unchanged,
                _prune(connection, table, stage, keys),
            )
        _advance_sequences(connection, table, header)
        return counts
    finally:
        # After an error the transaction is aborted and rolls back the table with it.
        if connection.info.transaction_status != TransactionStatus.INERROR:
            connection.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(stage))


def _copy_into_empty_table(
    connection: psycopg.Connection[Any], table: _Table, data: bytes, cols: sql.Composable
) -> int | None:
    """The first seed of a table: COPY straight into it, about as fast as a raw COPY.

    Returns the rows inserted, or None when the table is not empty or the COPY failed
    (rolled back to a savepoint: the staging path then says exactly what is wrong).
    """
    empty = connection.execute(
        sql.SQL("SELECT NOT EXISTS (SELECT 1 FROM {})").format(table.identifier)
    ).fetchone()
    if not (empty and empty[0]):
        return None
    statement = sql.SQL("COPY {} ({}) FROM STDIN WITH (FORMAT csv, HEADER true)").format(
        table.identifier, cols
    )
    try:
        with connection.transaction(), connection.cursor() as cursor:
            with cursor.copy(statement) as copy:
                _stream(copy, data)
            return max(cursor.rowcount, 0)
    except (psycopg.errors.LockNotAvailable, psycopg.errors.QueryCanceled):
        raise  # the DDL timeouts ran out: the slower way would only wait as long again
    except psycopg.Error:
        return None


def _stream(copy: Any, data: bytes) -> None:
    for start in range(0, len(data), _CHUNK):
        copy.write(data[start : start + _CHUNK])


def _decode(file_name: str, data: bytes) -> str:
    # Excel's "CSV UTF-8" starts with a byte order mark: not part of the first column.
    try:
        return data.decode("utf-8").removeprefix("\ufeff")
    except UnicodeDecodeError as error:
        line = data.count(b"\n", 0, error.start) + 1
        raise SeedError(
            f"{file_name}:{line}: not UTF-8 (byte {error.start})",
            hint="save the file as UTF-8",
        ) from None


def _resolve(connection: psycopg.Connection[Any], file_name: str) -> _Table:
    schema, table = target_table(file_name)
    display = f"{schema}.{table}" if schema else table
    row = connection.execute(
        "SELECT to_regclass(format('%%I.%%I', %s::text, %s::text))::oid"
        if schema
        else "SELECT to_regclass(quote_ident(%s::text))::oid",
        (schema, table) if schema else (table,),
    ).fetchone()
    if row is None or row[0] is None:
        raise SeedError(
            f"{file_name}: table {display} does not exist",
            hint="create it in a migration first, or rename the seed file",
        )
    identifier = sql.Identifier(schema, table) if schema else sql.Identifier(table)
    return _Table(identifier, display, int(row[0]))


def _header(file_name: str, text: str) -> list[str]:
    first = next(csv.reader(io.StringIO(text)), None)
    if not first or not any(cell.strip() for cell in first):
        raise SeedError(f"{file_name}:1: no header row", hint="the first line names the columns")
    header = [cell.strip() for cell in first]
    duplicates = sorted({name for name in header if header.count(name) > 1})
    if duplicates:
        raise SeedError(f"{file_name}:1: column(s) named twice: {', '.join(duplicates)}")
    return header


def _columns(connection: psycopg.Connection[Any], oid: int) -> dict[str, _Column]:
    rows = connection.execute(
        "SELECT attname, attnotnull, atthasdef, attgenerated <> '', attidentity"
        " FROM pg_attribute WHERE attrelid = %s AND attnum > 0 AND NOT attisdropped",
        (oid,),
    ).fetchall()
    return {
        str(name): _Column(bool(not_null), bool(has_default), bool(generated), str(identity))
        for name, not_null, has_default, generated, identity in rows
    }


def _check_header(
    file_name: str, header: list[str], columns: dict[str, _Column], table: _Table
) -> None:
    for position, name in enumerate(header, start=1):
        if name not in columns:
            known = ", ".join(sorted(columns))
            raise SeedError(
                f"{file_name}:1: column {position} '{name}' is not a column of {table.display}",
                hint=f"its columns are: {known}",
            )
        if columns[name].generated:
            raise SeedError(
                f"{file_name}:1: column '{name}' is generated and cannot be seeded",
                hint="drop it from the header",
            )
    required = [name for name, column in columns.items() if column.required and name not in header]
    if required:
        raise SeedError(
            f"{file_name}:1: the header lacks required column(s) {', '.join(sorted(required))}",
            hint="they are NOT NULL without a default",
        )


def _primary_key(connection: psycopg.Connection[Any], table: _Table, file_name: str) -> list[str]:
    rows = connection.execute(
        "SELECT a.attname FROM pg_index i"
        " JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY(i.indkey)"
        " WHERE i.indrelid = %s AND i.indisprimary ORDER BY array_position(i.indkey, a.attnum)",
        (table.oid,),
    ).fetchall()
    if not rows:
        raise SeedError(
            f"{file_name}: table {table.display} has no primary key",
            hint="CSV seeds upsert by primary key; add one, or use a .sql seed",
        )
    return [str(row[0]) for row in rows]


def _copy(
    connection: psycopg.Connection[Any],
    file_name: str,
    data: bytes,
    stage: sql.Identifier,
    cols: sql.Composable,
) -> None:
    statement = sql.SQL("COPY {} ({}) FROM STDIN WITH (FORMAT csv, HEADER true)").format(
        stage, cols
    )
    try:
        with connection.cursor().copy(statement) as copy:
            _stream(copy, data)
    except psycopg.Error as error:
        raise SeedError(f"{file_name}:{_copy_position(error)}") from None


def _copy_position(error: Any) -> str:
    # PostgreSQL names the offending line and column only in the error's CONTEXT
    # ("COPY t, line 3, column founded: …"); there is no structured field for it.
    diag = error.diag
    primary = diag.message_primary or str(error).splitlines()[0]
    match = _COPY_LINE.search(diag.context or "")
    if not match:
        return f" [{error.sqlstate}] {primary}"
    column = f", column {match.group(2)}" if match.group(2) else ""
    return f"{match.group(1)}{column}: [{error.sqlstate}] {primary}"


def _check_not_null(
    connection: psycopg.Connection[Any],
    file_name: str,
    stage: sql.Identifier,
    header: list[str],
    columns: dict[str, _Column],
) -> None:
    not_null = [name for name in header if columns[name].not_null]
    if not not_null:
        return
    checks = sql.SQL(", ").join(
        sql.SQL("min(_line) FILTER (WHERE {} IS NULL)").format(sql.Identifier(name))
        for name in not_null
    )
    row = connection.execute(sql.SQL("SELECT {} FROM {}").format(checks, stage)).fetchone()
    for name, line in zip(not_null, row or (), strict=False):
        if line is not None:
            raise SeedError(
                f"{file_name}:{int(line) + 1}, column {name}: empty, but the column is NOT NULL",
                hint="fill in the value",
            )


def _check_duplicates(
    connection: psycopg.Connection[Any], file_name: str, stage: sql.Identifier, keys: list[str]
) -> None:
    key_cols = sql.SQL(", ").join(sql.Identifier(name) for name in keys)
    rows = connection.execute(
        sql.SQL(
            "SELECT array_agg(_line + 1 ORDER BY _line) FROM {} GROUP BY {}"
            " HAVING count(*) > 1 ORDER BY min(_line) LIMIT 5"
        ).format(stage, key_cols)
    ).fetchall()
    if rows:
        groups = "; ".join("lines " + ", ".join(str(line) for line in row[0]) for row in rows)
        raise SeedError(
            f"{file_name}: duplicate primary key ({', '.join(keys)}) on {groups}",
            hint="each key may appear once",
        )


def _key_match(keys: list[str], left: str, right: str) -> sql.Composable:
    return sql.SQL(" AND ").join(
        sql.SQL("{}.{} = {}.{}").format(
            sql.Identifier(left), sql.Identifier(key), sql.Identifier(right), sql.Identifier(key)
        )
        for key in keys
    )


def _row(alias: str, names: list[str]) -> sql.Composable:
    return sql.SQL("ROW({})").format(
        sql.SQL(", ").join(
            sql.SQL("{}.{}").format(sql.Identifier(alias), sql.Identifier(n)) for n in names
        )
    )


def _preview(
    connection: psycopg.Connection[Any],
    table: _Table,
    stage: sql.Identifier,
    header: list[str],
    keys: list[str],
    prune: bool,
) -> Counts:
    values = [name for name in header if name not in keys] or keys
    row = connection.execute(
        sql.SQL(
            "SELECT count(*) FILTER (WHERE t.{first} IS NULL),"
            " count(*) FILTER (WHERE t.{first} IS NOT NULL AND {old} IS DISTINCT FROM {new}),"
            " count(*) FROM {stage} s LEFT JOIN {table} t ON {match}"
        ).format(
            first=sql.Identifier(keys[0]),
            old=_row("t", values),
            new=_row("s", values),
            stage=stage,
            table=table.identifier,
            match=_key_match(keys, "t", "s"),
        )
    ).fetchone()
    inserted, updated, total = (int(value) for value in (row or (0, 0, 0)))
    deleted = 0
    if prune:
        found = connection.execute(
            sql.SQL(
                "SELECT count(*) FROM {table} t"
                " WHERE NOT EXISTS (SELECT 1 FROM {stage} s WHERE {match})"
            ).format(table=table.identifier, stage=stage, match=_key_match(keys, "t", "s"))
        ).fetchone()
        deleted = int(found[0]) if found else 0
    return Counts(inserted, updated, total - inserted - updated, deleted)


def _merge(
    connection: psycopg.Connection[Any],
    table: _Table,
    stage: sql.Identifier,
    header: list[str],
    keys: list[str],
    columns: dict[str, _Column],
) -> Counts:
    cols = sql.SQL(", ").join(sql.Identifier(name) for name in header)
    overriding = (
        sql.SQL(" OVERRIDING SYSTEM VALUE")
        if any(columns[name].identity == "a" for name in header)
        else sql.SQL("")
    )
    total_row = connection.execute(sql.SQL("SELECT count(*) FROM {}").format(stage)).fetchone()
    total = int(total_row[0]) if total_row else 0
    values = [name for name in header if name not in keys]
    action: sql.Composable
    if values:
        action = sql.SQL("DO UPDATE SET {} WHERE {} IS DISTINCT FROM {}").format(
            sql.SQL(", ").join(
                sql.SQL("{} = EXCLUDED.{}").format(sql.Identifier(n), sql.Identifier(n))
                for n in values
            ),
            _row("t", values),
            sql.SQL("ROW({})").format(
                sql.SQL(", ").join(sql.SQL("EXCLUDED.{}").format(sql.Identifier(n)) for n in values)
            ),
        )
    else:
        action = sql.SQL("DO NOTHING")
    row = connection.execute(
        sql.SQL(
            "WITH merged AS (INSERT INTO {table} AS t ({cols}){overriding}"
            " SELECT {cols} FROM {stage} ORDER BY _line"
            " ON CONFLICT ({keys}) {action} RETURNING (xmax = 0) AS inserted)"
            " SELECT count(*) FILTER (WHERE inserted), count(*) FILTER (WHERE NOT inserted)"
            " FROM merged"
        ).format(
            table=table.identifier,
            cols=cols,
            overriding=overriding,
            stage=stage,
            keys=sql.SQL(", ").join(sql.Identifier(k) for k in keys),
            action=action,
        )
    ).fetchone()
    inserted, updated = (int(value) for value in (row or (0, 0)))
    return Counts(inserted, updated, total - inserted - updated)


def _prune(
    connection: psycopg.Connection[Any], table: _Table, stage: sql.Identifier, keys: list[str]
) -> int:
    cursor = connection.execute(
        sql.SQL(
            "DELETE FROM {table} t WHERE NOT EXISTS (SELECT 1 FROM {stage} s WHERE {match})"
        ).format(table=table.identifier, stage=stage, match=_key_match(keys, "t", "s"))
    )
    return cursor.rowcount


def _advance_sequences(
    connection: psycopg.Connection[Any], table: _Table, header: list[str]
) -> None:
    # Rows seeded with explicit ids must not collide with the next id the app inserts.

    for name in header:
        row = connection.execute(
            "SELECT pg_get_serial_sequence(%s::regclass::text, %s)", (table.oid, name)
        ).fetchone()
        sequence = row[0] if row else None
        if sequence is None:
            continue
        connection.execute(
            sql.SQL(
                "SELECT setval(%s::regclass, m) FROM (SELECT max({col}) AS m FROM {table}) top"
                " WHERE m > COALESCE(pg_sequence_last_value(%s::regclass), 0)"
            ).format(col=sql.Identifier(name), table=table.identifier),
            (sequence, sequence),
        )
