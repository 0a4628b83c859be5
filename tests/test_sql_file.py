"""Splitting SQL files: only top-level semicolons end a statement."""

from __future__ import annotations

from migrate_lock.seeds.sql_file import split_statements


def statements(text: str) -> list[tuple[str, int]]:
    return [(statement.sql, statement.line) for statement in split_statements(text)]


def test_semicolons_inside_strings_identifiers_and_comments_do_not_split() -> None:
    text = (
        "INSERT INTO t VALUES ('a;b', 'it''s; fine');\n"
        'SELECT 1 AS "odd;name"; -- trailing; comment\n'
        "/* block; /* nested; */ still */ SELECT E'\\';';\n"
    )
    assert [line for _, line in statements(text)] == [1, 2, 3]
    assert statements(text)[0][0] == "INSERT INTO t VALUES ('a;b', 'it''s; fine')"


def test_dollar_quoted_function_bodies_stay_whole() -> None:
    text = (
        "CREATE FUNCTION f() RETURNS int AS $body$\nBEGIN\n  RETURN 1;\nEND;\n$body$"
        " LANGUAGE plpgsql;\nSELECT $$;$$;\n"
    )
    found = statements(text)
    assert len(found) == 2
    assert found[0][0].endswith("LANGUAGE plpgsql")
    assert found[1] == ("SELECT $$;$$", 6)


def test_statement_line_is_where_its_code_starts_after_comments() -> None:
    text = "SELECT 1;\n\n-- why\n/* more */\nSELECT 2;\n-- only a comment at the end\n"
    assert statements(text) == [("SELECT 1", 1), ("-- why\n/* more */\nSELECT 2", 5)]
