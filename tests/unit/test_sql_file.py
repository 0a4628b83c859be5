"""Splitting SQL files: only top-level semicolons end a statement."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from migrate_lock.seeds.sql_file import (
    TransactionControlError,
    split_statements,
    transaction_control,
    without_transaction_control,
)

pytestmark = pytest.mark.unit


def statements(text: str) -> list[tuple[str, int]]:
    return [(statement.sql, statement.line) for statement in split_statements(text)]


def test_semicolons_inside_strings_identifiers_and_comments_do_not_split() -> None:
    """A split inside a string would run half a statement and fail at the wrong line."""
    text = (
        "INSERT INTO t VALUES ('a;b', 'it''s; fine');\n"
        'SELECT 1 AS "odd;name"; -- trailing; comment\n'
        "/* block; /* nested; */ still */ SELECT E'\\';';\n"
    )
    assert [line for _, line in statements(text)] == [1, 2, 3]
    assert statements(text)[0][0] == "INSERT INTO t VALUES ('a;b', 'it''s; fine')"


def test_dollar_quoted_function_bodies_stay_whole() -> None:
    """Function bodies are full of semicolons; they must reach the server in one piece."""
    text = (
        "CREATE FUNCTION f() RETURNS int AS $body$\nBEGIN\n  RETURN 1;\nEND;\n$body$"
        " LANGUAGE plpgsql;\nSELECT $$;$$;\n"
    )
    found = statements(text)
    assert len(found) == 2
    assert found[0][0].endswith("LANGUAGE plpgsql")
    assert found[1] == ("SELECT $$;$$", 6)


def test_a_sql_standard_routine_body_stays_whole() -> None:
    """BEGIN ATOMIC … END holds semicolons; split there, its END read as a transaction's."""
    text = (
        "CREATE OR REPLACE FUNCTION f(begin int) RETURNS int LANGUAGE sql\n"
        "BEGIN ATOMIC\n  SELECT CASE WHEN $1 > 0 THEN 1 END;\n  SELECT 2;\nEND;\n"
        "CREATE PROCEDURE p() LANGUAGE sql BEGIN ATOMIC INSERT INTO t VALUES (1); END;\n"
        "SELECT 3;\n"
    )
    found = statements(text)
    assert [line for _, line in found] == [1, 6, 7]
    assert found[0][0].endswith("SELECT 2;\nEND")
    assert kept("BEGIN;\n" + text + "COMMIT;\n")[1] is True


def test_statement_line_is_where_its_code_starts_after_comments() -> None:
    """A failure is reported by line: it must point at the code, not the comment above it."""
    text = "SELECT 1;\n\n-- why\n/* more */\nSELECT 2;\n-- only a comment at the end\n"
    assert statements(text) == [("SELECT 1", 1), ("-- why\n/* more */\nSELECT 2", 5)]


def test_a_backslash_does_not_escape_a_quote_in_a_standard_string() -> None:
    """standard_conforming_strings is on: 'C:\\' ends at its quote, and the next ';' splits."""
    assert statements("SELECT 'C:\\temp\\'; SELECT 2;") == [
        ("SELECT 'C:\\temp\\'", 1),
        ("SELECT 2", 1),
    ]


def test_a_backslash_escapes_a_quote_only_in_an_e_string() -> None:
    """E'it\\'s;' is one string; a type name ending in e before a quote is not an E-string."""
    assert len(statements("SELECT E'it\\'s; fine';")) == 1
    assert len(statements("SELECT type'x\\'; SELECT 2;")) == 2


def test_positional_parameters_are_not_dollar_quotes() -> None:
    """$1 in a PREPARE must not start a dollar-quoted body that swallows the rest."""
    assert statements("PREPARE p AS SELECT $1;\nEXECUTE p(1);") == [
        ("PREPARE p AS SELECT $1", 1),
        ("EXECUTE p(1)", 2),
    ]


def test_an_unterminated_string_keeps_the_rest_as_one_statement() -> None:
    """The server then reports the syntax error at the right line, instead of us guessing."""
    assert statements("SELECT 1;\nSELECT 'oops;\nSELECT 3;") == [
        ("SELECT 1", 1),
        ("SELECT 'oops;\nSELECT 3;", 2),
    ]


def test_a_file_of_only_comments_has_no_statements() -> None:
    """An empty seed (comments only) runs nothing instead of sending an empty query."""
    assert statements("-- nothing yet;\n/* later; */\n;\n") == []


def kept(text: str) -> tuple[list[str], bool]:
    inner, wrapped = without_transaction_control(split_statements(text))
    return [statement.sql for statement in inner], wrapped


def refused(text: str) -> tuple[int, str]:
    with pytest.raises(TransactionControlError) as raised:
        without_transaction_control(split_statements(text))
    return raised.value.statement.line, raised.value.keyword


def test_a_begin_commit_pair_around_the_whole_file_is_dropped() -> None:
    """The common psql habit: it means what the seed run's one transaction already does."""
    text = "-- plans\nBEGIN;\nINSERT INTO t VALUES (1);\nINSERT INTO t VALUES (2);\nCOMMIT;\n"
    assert kept(text) == (["INSERT INTO t VALUES (1)", "INSERT INTO t VALUES (2)"], True)
    assert kept("start transaction; SELECT 1; end work;") == (["SELECT 1"], True)
    assert kept("Begin Transaction; SELECT 1; Commit;") == (["SELECT 1"], True)
    assert kept("SELECT 1; SELECT 2;") == (["SELECT 1", "SELECT 2"], False)


@pytest.mark.parametrize(
    ("text", "line", "keyword"),
    [
        ("INSERT INTO t VALUES (1);\nCOMMIT;\nINSERT INTO t VALUES (2);", 2, "COMMIT"),
        ("BEGIN;\nSELECT 1;\nCOMMIT;\nBEGIN;\nSELECT 2;\nCOMMIT;", 3, "COMMIT"),
        ("BEGIN;\nSELECT 1;\nROLLBACK;", 1, "BEGIN"),
        ("BEGIN ISOLATION LEVEL SERIALIZABLE;\nSELECT 1;\nCOMMIT;", 1, "BEGIN"),
        ("BEGIN;\nSELECT 1;\nCOMMIT AND CHAIN;", 1, "BEGIN"),
        ("SELECT 1;\n  /* x */ savepoint a;\nSELECT 2;\nrelease savepoint a;", 2, "SAVEPOINT"),
        ("SELECT 1;\nabort;", 2, "ABORT"),
        ("SELECT 1;\nEND;", 2, "END"),
        ("SELECT 1;\nPREPARE TRANSACTION 'x';", 2, "PREPARE TRANSACTION"),
        ("START\n TRANSACTION;\nSELECT 1;", 1, "START TRANSACTION"),
        ("COMMIT;", 1, "COMMIT"),
    ],
)
def test_any_other_transaction_control_is_refused_with_its_line(
    text: str, line: int, keyword: str
) -> None:
    """A COMMIT inside a seed commits half a seed run (and ends a transaction-scoped lock)."""
    assert refused(text) == (line, keyword)


def test_transaction_words_inside_bodies_strings_and_names_are_not_control() -> None:
    """plpgsql's BEGIN/END, a string or a column named commit_sha are ordinary SQL."""
    text = (
        "DO $$ BEGIN PERFORM 1; COMMIT; END $$;\n"
        "INSERT INTO t (commit_sha, note) VALUES ('abc', 'COMMIT;');\n"
        "-- COMMIT;\n/* ROLLBACK; */ SELECT 1;\n"
        'PREPARE p AS SELECT 1;\nSELECT * FROM "end";\nbeginning;\n'
    )
    assert kept(text)[1] is False
    assert len(kept(text)[0]) == 6
    assert [transaction_control(s) for s in split_statements("ENDING; END;")] == [None, "END"]


words = st.from_regex(r"[a-z0-9_ ]{0,12}", fullmatch=True)
anything = st.text(max_size=12)
tags = st.from_regex(r"[a-z_]{0,4}", fullmatch=True)


@st.composite
def fragments(draw: st.DrawFn) -> str:
    """A piece of a statement that may hide a semicolon (or a quote) from a naive split."""
    kind = draw(st.sampled_from(["word", "string", "identifier", "dollar", "line", "block"]))
    text = draw(anything)
    if kind == "string":
        return " '" + text.replace("'", "''") + "'"
    if kind == "identifier":
        return ' "' + text.replace('"', '""') + '"'
    if kind == "dollar":
        tag = "$" + draw(tags) + "$"
        return " " + tag + text.replace("$", "") + tag
    if kind == "line":
        return " --" + text.replace("\n", " ").replace("\r", " ") + "\n"
    if kind == "block":
        return " /*" + text.replace("*", "").replace("/", "") + "*/"
    return " " + draw(words)


@given(st.lists(st.lists(fragments(), max_size=6), min_size=1, max_size=6), st.data())
def test_any_mix_of_quotes_and_comments_splits_only_between_statements(
    bodies: list[list[str]], data: st.DataObject
) -> None:
    """Whatever the strings and comments hold, each statement comes back whole, at its line."""
    expected: list[tuple[str, int]] = []
    text = ""
    for body in bodies:
        text += data.draw(st.sampled_from(["", "\n", "\n\n  "]))
        statement = "SELECT 1" + "".join(body)
        expected.append((statement.strip(), text.count("\n") + 1))
        text += statement + ";"

    assert statements(text) == expected
