"""CSV seeds, the parts decided before any SQL: file name to table, header, encoding, errors."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
from hypothesis import given
from hypothesis import strategies as st
from psycopg import sql

from migrate_lock.errors import ExitCode
from migrate_lock.seeds.csv_merge import (
    SeedError,
    _check_header,
    _Column,
    _copy_position,
    _decode,
    _header,
    _Table,
    target_table,
)

pytestmark = pytest.mark.unit

TABLE = _Table(sql.Identifier("leagues"), "leagues", 16384)
PLAIN = _Column(not_null=False, has_default=False, generated=False, identity="")
REQUIRED = _Column(not_null=True, has_default=False, generated=False, identity="")


@pytest.mark.parametrize(
    ("name", "target"),
    [
        ("leagues.csv", (None, "leagues")),
        ("sports.leagues.csv", ("sports", "leagues")),
        ("10_leagues.csv", (None, "leagues")),
        ("020-sports.leagues.csv", ("sports", "leagues")),
        ("1_2024_results.csv", (None, "2024_results")),
    ],
)
def test_the_file_name_names_the_table(name: str, target: tuple[str | None, str]) -> None:
    """Seeds are matched to tables by name alone; a numeric prefix only orders them."""
    assert target_table(name) == target


@pytest.mark.parametrize("name", ["leagues.txt", "a.b.c.csv", ".csv", "leagues.csv.bak"])
def test_a_name_that_is_not_table_csv_is_refused(name: str) -> None:
    """A misnamed file must stop the seed with its name, not fill some other table."""
    with pytest.raises(SeedError) as raised:
        target_table(name)

    assert raised.value.exit_code == ExitCode.MIGRATION_FAILED
    assert str(raised.value).startswith(f"{name}: a CSV seed must be named TABLE.csv")


@given(
    schema=st.from_regex(r"[a-z_][a-z0-9_]{0,20}", fullmatch=True),
    table=st.from_regex(r"[A-Za-z_][A-Za-z0-9_ $-]{0,20}", fullmatch=True),
    order=st.sampled_from(["", "1_", "010-"]),
)
def test_any_schema_and_table_name_round_trips(schema: str, table: str, order: str) -> None:
    """Table names with spaces, digits and dashes are legal in PostgreSQL and in file names."""
    assert target_table(f"{order}{schema}.{table}.csv") == (schema, table)


def test_header_cells_are_trimmed_and_may_be_quoted() -> None:
    """Hand-edited CSVs carry stray spaces; a quoted header may even contain a comma."""
    assert _header("t.csv", ' id , name ,"a,b"\n1,x,y\n') == ["id", "name", "a,b"]


@pytest.mark.parametrize("text", ["", "\n1,2\n", " , \n1,2\n"])
def test_a_file_without_a_header_is_refused_at_line_1(text: str) -> None:
    """Without a header the rows cannot be matched to columns."""
    with pytest.raises(SeedError, match=r"^t\.csv:1: no header row"):
        _header("t.csv", text)


def test_a_column_named_twice_is_refused() -> None:
    """Two values for one column: which one wins would be an accident of the merge."""
    with pytest.raises(SeedError, match=r"^t\.csv:1: column\(s\) named twice: id, name$"):
        _header("t.csv", "id,name, name,id,x\n")


def test_invalid_utf8_names_its_line_and_byte() -> None:
    """A Latin-1 export must be found by line, not by a decode traceback."""
    data = b"id,name\n1,ok\n2," + b"M\xfcnchen\n"

    with pytest.raises(SeedError) as raised:
        _decode("cities.csv", data)

    assert str(raised.value) == "cities.csv:3: not UTF-8 (byte 16); save the file as UTF-8"


def test_a_byte_order_mark_is_not_part_of_the_first_column() -> None:
    """Excel writes "CSV UTF-8" with a byte order mark; the first column must still be found."""
    data = "\ufeffid,name\n1,a\n".encode()

    assert _header("t.csv", _decode("t.csv", data)) == ["id", "name"]


def test_an_unknown_column_is_refused_with_the_known_ones() -> None:
    """A typo in the header must name the column, its position and what exists."""
    columns = {"id": REQUIRED, "name": PLAIN}

    with pytest.raises(SeedError) as raised:
        _check_header("leagues.csv", ["id", "nmae"], columns, TABLE)

    assert str(raised.value) == (
        "leagues.csv:1: column 2 'nmae' is not a column of leagues; its columns are: id, name"
    )


def test_a_generated_column_cannot_be_seeded() -> None:
    """PostgreSQL computes it; a seeded value would be an error deep inside the merge."""
    columns = {"id": REQUIRED, "slug": _Column(False, True, True, "")}

    with pytest.raises(SeedError, match="column 'slug' is generated and cannot be seeded"):
        _check_header("leagues.csv", ["id", "slug"], columns, TABLE)


def test_a_missing_not_null_column_without_a_default_is_refused() -> None:
    """Every new row would fail; say so before copying anything."""
    columns = {"id": REQUIRED, "name": REQUIRED, "country": REQUIRED}

    with pytest.raises(SeedError) as raised:
        _check_header("leagues.csv", ["id"], columns, TABLE)

    assert str(raised.value).startswith(
        "leagues.csv:1: the header lacks required column(s) country, name"
    )


@pytest.mark.parametrize(
    "column",
    [
        _Column(not_null=True, has_default=True, generated=False, identity=""),
        _Column(not_null=True, has_default=False, generated=False, identity="a"),
        _Column(not_null=True, has_default=False, generated=False, identity="d"),
        _Column(not_null=False, has_default=False, generated=False, identity=""),
    ],
)
def test_a_column_the_database_can_fill_may_be_left_out(column: _Column) -> None:
    """Defaults, identities and nullable columns fill themselves; requiring them would nag."""
    _check_header("leagues.csv", ["id"], {"id": REQUIRED, "other": column}, TABLE)


@dataclass
class Diag:
    message_primary: str | None
    context: str | None


@dataclass
class CopyError:
    """What psycopg raises for a bad COPY row: the position is only in the CONTEXT text."""

    sqlstate: str
    diag: Diag

    def __str__(self) -> str:
        return f"{self.diag.message_primary}\nCONTEXT: {self.diag.context}"


def test_a_copy_error_names_the_line_and_column() -> None:
    """Operators fix seeds by line and column; the SQLSTATE tells what kind of error."""
    error = CopyError(
        "22P02",
        Diag(
            'invalid input syntax for type integer: "abc"',
            'COPY migrate_lock_seed_rows, line 3, column founded: "abc"',
        ),
    )

    assert _copy_position(error) == (
        '3, column founded: [22P02] invalid input syntax for type integer: "abc"'
    )


def test_a_copy_error_for_a_whole_line_names_the_line() -> None:
    """Missing columns are reported for the line, without a column."""
    error = CopyError(
        "22P04",
        Diag('missing data for column "name"', 'COPY migrate_lock_seed_rows, line 7: "7"'),
    )

    assert _copy_position(error) == '7: [22P04] missing data for column "name"'


def test_a_copy_error_without_a_position_keeps_the_message() -> None:
    """Not every COPY failure has a line; the message must still reach the operator."""
    error = CopyError("53100", Diag(None, None))

    assert _copy_position(error) == " [53100] None"
