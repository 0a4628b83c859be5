"""One settings table, two readers: the lean one never disagrees with ``Settings``.

The at-head fast path reads settings without pydantic. Its promise is "slower, never
wrong": for any environment it either reads exactly what ``load_settings`` reads, or it
defers (``Undecided``) and the full path decides. These tests hold it to that.
"""

from __future__ import annotations

import os
import re
import tempfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from unittest import mock

import pytest
from dotenv import dotenv_values
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from migrate_lock.dsn import parse_database_url
from migrate_lock.errors import ConfigError, MigrateLockError
from migrate_lock.lean.pq import LeanUnavailable, conninfo_is_valid
from migrate_lock.lean.settings_schema import (
    ENVIRONMENT_ALIASES,
    SCHEMA,
    Undecided,
    choices,
    configuration_table,
    default,
    dotenv_path,
    read_dotenv,
    read_field,
    read_settings,
)
from migrate_lock.settings import Settings, load_settings, variable_name

pytestmark = pytest.mark.unit

DOCS = Path(__file__).resolve().parent.parent / "docs"
FIELDS = [row.field for row in SCHEMA]
REJECTED = "rejected"
DEFERRED = "deferred"


@contextmanager
def environment(environ: Mapping[str, str], dotenv_text: str | None) -> Iterator[Path]:
    """Exactly this environment, in a fresh directory with this ``.env`` (if any)."""
    with tempfile.TemporaryDirectory() as directory, mock.patch.dict(os.environ, clear=True):
        os.environ.update(environ)
        if dotenv_text is not None:
            (Path(directory) / ".env").write_text(dotenv_text, encoding="utf-8")
        before = os.getcwd()
        os.chdir(directory)
        try:
            yield Path(directory) / ".env"
        finally:
            os.chdir(before)


def full_path(overrides: Mapping[str, Any]) -> dict[str, Any] | str:
    """What ``load_settings`` reads (every field), or REJECTED (exit 78)."""
    try:
        settings_ = load_settings(**overrides)
    except ConfigError:
        return REJECTED
    return {field: getattr(settings_, field) for field in FIELDS}


def lean_path(dotenv: Path, overrides: Mapping[str, Any]) -> dict[str, Any] | str:
    """What the lean reader reads, URLs checked as the fast path checks them; or DEFERRED."""
    try:
        found = dotenv_path(os.environ, overrides)
        assert found is None or found.resolve() == dotenv.resolve()
        lean = read_settings(os.environ, read_dotenv(found), overrides)
        for field in ("database_url", "migration_database_url"):
            url = getattr(lean, field)
            if url:
                parse_database_url(url, variable=variable_name(field), libpq_check=_libpq)
    except (ValueError, MigrateLockError, LeanUnavailable):  # Undecided, a missing ENV_FILE
        return DEFERRED
    return {field: getattr(lean, field) for field in FIELDS}


def _libpq(conninfo: str, variable: str) -> None:
    if not conninfo_is_valid(conninfo):
        raise LeanUnavailable("libpq rejects the URL")


def both_paths(
    environ: Mapping[str, str], dotenv_text: str | None = None, **overrides: Any
) -> tuple[dict[str, Any] | str, dict[str, Any] | str]:
    with environment(environ, dotenv_text) as dotenv:
        return full_path(overrides), lean_path(dotenv, overrides)


# --- the property ------------------------------------------------------------------------

_TEXT = st.text(
    alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"),
    max_size=12,
)
#: Digits that are not ASCII: Python's float() and \d accept them, PostgreSQL does not.
ARABIC_12 = "\u0661\u0662"
ARABIC_10S = "1\u0660s"
_BLANK = st.sampled_from(["", " ", "  ", "\t", "\u00a0", "\u3000"])


def _case_variants(text: str) -> st.SearchStrategy[str]:
    return st.sampled_from([text, text.lower(), text.upper(), text.title(), text.swapcase()])


def _values_for(row: Any) -> st.SearchStrategy[str]:
    """Raw values for one setting: valid, blank, padded, re-cased, out of range, odd."""
    typical: list[str] = list(row.kind.choices)
    if row.field == "environment":  # the application's spellings, known and unknown
        typical += [*ENVIRONMENT_ALIASES, "preview", "locale"]
    typical += {
        "NUMBER": [
            "0",
            "30",
            "2.5",
            "-1",
            "1e3",
            "1e999",
            "nan",
            "inf",
            "+5",
            ".5",
            "5.",
            "\u0661\u0662",
        ],
        "LOCK_KEY": ["0", "-1", "42", str(2**63 - 1), str(2**63), str(-(2**63)), "1.0", "+7"],
        "COUNT": ["1", "3", "0", "-2", "10", "2.0"],
        "BOOL": ["true", "false", "1", "0", "yes", "no", "on", "off", "maybe", "t", "N"],
        "DURATION": [
            "0",
            "500ms",
            "10s",
            "10 s",
            "5min",
            "1h",
            "1.5s",
            "10sec",
            "forever",
            "1\u0660s",
        ],
        "IDENTIFIER": ["alembic_version", "my$table", "9abc", "public", "a-b", "x" * 64],
        "COMMANDS": ["migrate-lock alembic", "sh,bash", "/bin/sh", "none", "a/b c", "gunicorn"],
        "URL": [
            "postgresql://app:pw@db:5432/app",
            "postgres://app:pw@db2/app?sslmode=require",
            "mysql://x@y/z",
            "not a url",
            "postgresql://app:pw@db:0/app",
            "postgresql://app@db/app?nonsense=1",
        ],
    }.get(_kind_name(row), ["x", "some value", "a,b"])
    base = st.sampled_from(typical or ["x"])
    return st.one_of(
        base,
        base.flatmap(_case_variants),
        st.tuples(_BLANK, base, _BLANK).map("".join),
        _BLANK,
        _TEXT,
    )


def _kind_name(row: Any) -> str:
    from migrate_lock.lean import settings_schema

    for name in ("NUMBER", "LOCK_KEY", "COUNT", "BOOL", "DURATION", "IDENTIFIER", "COMMANDS"):
        if row.kind is getattr(settings_schema, name):
            return name
    return "URL" if row.kind is settings_schema.URL else ""


@st.composite
def assignments(draw: st.DrawFn) -> tuple[str, str, bool]:
    """One (variable spelling, raw value, in .env?) for a random setting."""
    row = draw(st.sampled_from(SCHEMA))
    name = draw(st.sampled_from(row.variables).flatmap(_case_variants))
    return name, draw(_values_for(row)), draw(st.booleans())


def _dotenv_line(name: str, value: str, quoting: str) -> str:
    return f"{name}={quoting}{value}{quoting}"


@st.composite
def overrides(draw: st.DrawFn) -> dict[str, Any]:
    chosen = draw(st.lists(st.sampled_from(SCHEMA), max_size=3, unique_by=lambda row: row.field))
    result: dict[str, Any] = {}
    for row in chosen:
        typed = [row.default, None, True, 7, 2.5, Path("x.ini")]
        result[row.field] = draw(st.one_of(_values_for(row), st.sampled_from(typed)))
    return result


@settings(
    max_examples=200,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
@given(
    st.lists(assignments(), max_size=8),
    st.sampled_from(["", "'", '"']),
    overrides(),
)
def test_the_lean_reader_reads_what_settings_reads_or_defers(
    assigned: list[tuple[str, str, bool]], quoting: str, flags: dict[str, Any]
) -> None:
    """Why: the fast path may be slower than the full path, never wrong."""
    environ = {name: value for name, value, in_dotenv in assigned if not in_dotenv}
    dotenv_lines = [
        _dotenv_line(name, value, quoting) for name, value, in_dotenv in assigned if in_dotenv
    ]
    full, lean = both_paths(environ, "\n".join(dotenv_lines) + "\n" if dotenv_lines else None)
    event(f"full {'rejects' if full == REJECTED else 'accepts'}, lean {_verdict(lean)}")
    if lean != DEFERRED:
        assert full != REJECTED, "the lean reader accepted what Settings rejects"
        assert lean == full


def _verdict(lean: object) -> str:
    return "defers" if lean == DEFERRED else "reads"


_PLAIN_LINE = st.tuples(
    st.sampled_from(["", "export "]),
    st.sampled_from(["A", "B_2", "a"]),
    st.sampled_from(["=", " = "]),
    st.sampled_from(["v", "a b", "'q'", '"q"', "x #c", "x#c", "'a' #c", "", "$HOME", " v "]),
).map("".join)
_ODD_LINE = st.tuples(
    st.sampled_from(["", " ", "export ", "\t", "# "]),
    st.sampled_from(["A", "B_2", "a", "9x", "A.B", "'A'"]),
    st.sampled_from(["=", " = ", "= ", "\t=", ""]),
    st.one_of(
        st.sampled_from(["v", "# c", "${HOME}", "'a\\'b'", '"a\\nb"', "'open", '"a\'b"', "é"]),
        _TEXT,
    ),
).map("".join)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.one_of(_PLAIN_LINE, _PLAIN_LINE, _PLAIN_LINE, _ODD_LINE), max_size=6))
def test_the_lean_dotenv_reader_reads_what_python_dotenv_reads_or_defers(
    lines: list[str],
) -> None:
    """Why: the full path reads .env with python-dotenv; the lean reader must not differ."""
    text = "\n".join(lines) + "\n"
    with environment({"HOME": "/home/app"}, text) as path:
        try:
            lean = read_dotenv(path)
        except Undecided:
            event("lean defers")
            return
        event("lean reads")
        assert lean == dotenv_values(path, encoding="utf-8")


# --- the drift bugs of issue 12, one by one ----------------------------------------------


@pytest.mark.parametrize(
    ("variable", "field", "expected"),
    [
        ("MIGRATION_LOCK_SCOPE", "migration_lock_scope", "auto"),
        ("LOG_FORMAT", "log_format", "auto"),
    ],
)
def test_an_empty_variable_means_the_default_on_both_paths(
    variable: str, field: str, expected: str
) -> None:
    """Why: the full path rejected these with exit 78 while the lean path read them as None."""
    full, lean = both_paths({variable: ""})
    assert full != REJECTED and lean != DEFERRED
    assert full[field] == lean[field] == expected  # type: ignore[index]


def test_a_path_in_entrypoint_passthrough_is_rejected_by_both_paths() -> None:
    """Why: the lean path accepted ``/bin/sh``, said "at head", where the full path exits 78."""
    with environment({"ENTRYPOINT_PASSTHROUGH": "/bin/sh"}, None) as dotenv:
        with pytest.raises(ConfigError, match="ENTRYPOINT_PASSTHROUGH is invalid"):
            load_settings()
        with pytest.raises(Undecided):
            read_settings(os.environ, read_dotenv(dotenv), {})


def test_a_lowercase_variable_name_is_read_by_both_paths() -> None:
    """Why: ``environment=production`` switched the production checks on in one path only."""
    full, lean = both_paths({"environment": "production"})
    assert full != REJECTED and lean != DEFERRED
    assert full["environment"] == lean["environment"] == "production"  # type: ignore[index]


# --- the rule ----------------------------------------------------------------------------


def test_two_spellings_with_different_values_are_an_error_naming_both() -> None:
    """Why: which of the two wins would depend on the order of the environment."""
    with environment({"ENVIRONMENT": "staging", "environment": "production"}, None) as dotenv:
        with pytest.raises(ConfigError) as raised:
            load_settings()
        with pytest.raises(Undecided):
            read_settings(os.environ, read_dotenv(dotenv), {})
    assert "ENVIRONMENT" in str(raised.value) and "environment" in str(raised.value)


def test_two_spellings_with_the_same_value_are_one_setting() -> None:
    full, lean = both_paths({"LOG_LEVEL": "debug", "log_level": " debug "})
    assert full != REJECTED and lean != DEFERRED
    assert full["log_level"] == lean["log_level"] == "DEBUG"  # type: ignore[index]


def test_the_environment_beats_dotenv_setting_by_setting_and_a_name_beats_its_alias() -> None:
    full, lean = both_paths(
        {"APP_ENV": "staging", "LOG_FORMAT": " "},
        "ENVIRONMENT=development\nSEED_ON_UPGRADE=no\nLOG_FORMAT=json\n",
    )
    assert full == lean
    assert isinstance(full, dict)
    assert full["environment"] == "staging"
    assert full["seed_on_upgrade"] is False
    assert full["log_format"] == "json"  # blank in the environment: .env's value applies
    full, lean = both_paths({"APP_ENV": "staging", "ENVIRONMENT": "Production"})
    assert full == lean
    assert isinstance(full, dict) and full["environment"] == "production"


def test_a_database_url_override_beats_migration_database_url_from_the_environment() -> None:
    """Why: ``--database-url`` names the one database to use, on both paths."""
    url = "postgresql://app:pw@flag-host/app"
    full, lean = both_paths(
        {"MIGRATION_DATABASE_URL": "postgresql://app:pw@env-host/app"}, database_url=url
    )
    assert full == lean
    assert isinstance(full, dict) and full["migration_database_url"] is None


def test_a_wrong_value_names_the_spelling_it_came_from() -> None:
    with environment({"app_env": "preview"}, None), pytest.raises(ConfigError) as raised:
        load_settings()
    assert str(raised.value).startswith("app_env is invalid (got 'preview'): must be one of")


def test_a_url_is_never_shown_in_an_error() -> None:
    url = "postgresql://u:hunter22@h:99999/db"
    with environment({"DATABASE_URL": url}, None), pytest.raises(ConfigError) as raised:
        load_settings()
    assert "hunter22" not in str(raised.value)


def test_a_value_the_lean_reader_cannot_judge_sends_it_to_the_full_path() -> None:
    with pytest.raises(Undecided):
        read_settings({"DB_CONNECT_TIMEOUT_SECONDS": "soon"}, {}, {})
    with pytest.raises(Undecided):
        read_settings({}, {"ENVIRONMENT": "preview"}, {})


def test_a_dotenv_line_the_lean_reader_does_not_parse_defers(tmp_path: Path) -> None:
    (tmp_path / ".env").write_text('A="multi\nline"\n')
    with pytest.raises(Undecided):
        read_dotenv(tmp_path / ".env")


# --- the table ---------------------------------------------------------------------------


def test_every_default_is_what_its_own_text_reads_as() -> None:
    """Why: a default the parser would not produce could never be set explicitly."""
    for row in SCHEMA:
        if row.default is not None:
            shown = str(row.default).lower() if isinstance(row.default, bool) else row.default
            assert row.parse(str(shown)) == row.default, row.field


def test_the_settings_model_is_the_table() -> None:
    assert list(Settings.model_fields) == FIELDS
    for row in SCHEMA:
        info = Settings.model_fields[row.field]
        assert info.default == row.default == default(row.field)
        assert variable_name(row.field) == row.variables[0]


def test_choices_are_the_canonical_values() -> None:
    assert choices("log_format") == ("auto", "json", "text")
    assert choices("log_level") == ("DEBUG", "INFO", "WARNING", "ERROR")
    assert choices("environment") == ("development", "test", "staging", "production")
    assert choices("migration_lock_scope") == ("auto", "session", "transaction")
    assert choices("database_url") == ()


def test_configuration_reference_contains_exactly_the_generated_table() -> None:
    """Why: the docs are the operator's contract. To regenerate, see the comment above the
    table in docs/configuration.md (``configuration_table()`` prints it)."""
    text = (DOCS / "configuration.md").read_text(encoding="utf-8")
    found = re.search(r"-->\n(\| Variable .*?)<!-- end of generated table -->", text, re.S)
    assert found is not None, "the generated table's markers are missing"
    assert found[1] == configuration_table()


def test_one_field_is_read_by_the_same_rule() -> None:
    """Why: code that needs one setting (protect(), the CLI's early logging) must not
    read it another way."""
    assert read_field("environment", {"app_env": " Staging "}) == "staging"
    assert read_field("log_format", {"LOG_FORMAT": ""}) == "auto"
    assert read_field("version_table", {}, {"VERSION_TABLE": "v"}) == "v"
    with pytest.raises(ValueError, match="must be one of"):
        read_field("log_level", {"LOG_LEVEL": "loud"})
