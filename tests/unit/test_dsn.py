"""Database URLs: parsed into the forms psycopg and SQLAlchemy need, printed without secrets."""

from __future__ import annotations

import io
import json
from urllib.parse import quote

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from migrate_lock import dsn
from migrate_lock.dsn import (
    MIN_SECRET_LENGTH,
    is_secret,
    mask_url_text,
    parse_database_url,
    register_secrets,
    scrub_text,
    secret_candidates,
    with_database,
)
from migrate_lock.errors import ConfigError, ExitCode
from migrate_lock.logs import EventLog

pytestmark = pytest.mark.unit

#: Passwords as operators write them: any printable text, except our own placeholder.
passwords = st.text(
    st.characters(blacklist_categories=("Cs", "Cc", "Zs", "Zl", "Zp")), min_size=8, max_size=24
).filter(lambda text: text != "PASSWORD")
#: User and host names that cannot contain a password drawn from ``passwords`` by chance.
names = st.from_regex(r"[a-z][a-z0-9_]{0,11}", fullmatch=True)


def test_the_three_forms_share_credentials_host_and_database() -> None:
    """psycopg, SQLAlchemy and the log must all mean the same server and database."""
    url = parse_database_url("postgresql://bob:s%40cret@db.example:5433/app?sslmode=require")

    assert url.libpq == "postgresql://bob:s%40cret@db.example:5433/app?sslmode=require"
    assert url.sqlalchemy == "postgresql+psycopg://bob:s%40cret@db.example:5433/app?sslmode=require"
    assert url.masked == "postgresql://bob:***@db.example:5433/app?sslmode=require"
    assert (url.password, url.host, url.port, url.database) == ("s@cret", "db.example", 5433, "app")


def test_a_sqlalchemy_driver_url_is_accepted_and_driven_by_psycopg() -> None:
    """Applications share one DATABASE_URL between asyncpg/psycopg2 and us."""
    url = parse_database_url("postgresql+asyncpg://bob:pw@db/app")

    assert url.libpq == "postgresql://bob:pw@db/app"
    assert url.sqlalchemy == "postgresql+psycopg://bob:pw@db/app"


def test_query_host_and_port_override_the_authority_like_libpq() -> None:
    """Socket URLs (``?host=/run/postgresql``) must reach the scope check with libpq's meaning."""
    url = parse_database_url("postgresql:///app?host=/run/pg&port=6432")

    assert (url.host, url.port, url.database) == ("/run/pg", 6432, "app")
    assert url.libpq == "postgresql:///app?host=/run/pg&port=6432"


def test_the_repr_never_shows_the_password() -> None:
    """A DatabaseUrl in a traceback or a debug print must not leak the password."""
    url = parse_database_url("postgresql://bob:Hunter2-secret@db/app")

    assert "Hunter2-secret" not in repr(url)


@pytest.mark.parametrize(
    ("raw", "says"),
    [
        ("localhost:5432", "X is not a URL"),
        ("mysql://bob:pw@db/app", "X must be a PostgreSQL URL, got scheme 'mysql'"),
        ("postgresql://bob:pw@db:99999/app", "X is malformed (postgresql://bob:***@db:99999/app)"),
        ("postgresql://db:0/app", "X has port 0"),
        ("postgresql://db/app?sslmode=bogus", "X is malformed: sslmode='bogus' is not one of"),
        ("postgresql://db/app?nonsense=1", "X is malformed: invalid URI query parameter"),
    ],
)
def test_a_bad_url_is_a_config_error_naming_the_variable(raw: str, says: str) -> None:
    """A wrong URL must stop the start with exit 78 and name the variable, not fail later."""
    with pytest.raises(ConfigError) as raised:
        parse_database_url(raw, variable="X")

    assert raised.value.exit_code == ExitCode.CONFIG
    assert str(raised.value).startswith(says)


def test_a_malformed_url_is_reported_without_its_password() -> None:
    """The error line is printed and logged: it must mask what it quotes."""
    with pytest.raises(ConfigError) as raised:
        parse_database_url("postgresql://bob:Hunter2-secret@db:99999/app")

    assert "Hunter2-secret" not in str(raised.value)


@given(user=names, password=passwords, host=names, database=st.text(min_size=1, max_size=16))
def test_percent_encoded_credentials_round_trip(
    user: str, password: str, host: str, database: str
) -> None:
    """Any password and database name, percent-encoded, reaches the server unchanged."""
    raw = f"postgresql://{user}:{quote(password, safe='')}@{host}:5432/{quote(database, safe='')}"

    url = parse_database_url(raw, libpq_check=lambda _text, _variable: None)

    assert (url.password, url.database, url.host) == (password, database, host)
    assert url.masked.startswith(f"postgresql://{user}:***@{host}:5432/")


@given(user=names, password=passwords, host=names)
def test_with_database_keeps_server_and_credentials(user: str, password: str, host: str) -> None:
    """Scratch databases (backup checks, tests) must go to the same server as the same role."""
    url = parse_database_url(
        f"postgresql://{user}:{quote(password, safe='')}@{host}:6000/app?sslmode=disable",
        libpq_check=lambda _text, _variable: None,
    )

    other = with_database(url, "scratch db")

    assert (other.password, other.host, other.port) == (password, host, 6000)
    assert other.database == "scratch db"
    assert other.libpq.endswith("/scratch%20db?sslmode=disable")


@given(
    scheme=st.sampled_from(["postgresql", "postgres", "postgresql+asyncpg", "mysql", "redis"]),
    user=names,
    password=st.from_regex(r"[A-Z0-9!$%&*+;=~-]{8,20}", fullmatch=True),
    host=names,
    before=st.text(max_size=20),
)
def test_every_url_password_in_a_text_is_masked(
    scheme: str, user: str, password: str, host: str, before: str
) -> None:
    """Driver errors quote URLs of any scheme; the password must never reach the log."""
    text = f"{before} could not connect to {scheme}://{user}:{password}@{host}/app: refused"

    masked = mask_url_text(text)

    assert f"{scheme}://{user}:***@{host}/app" in masked
    assert f":{password}@" not in masked


def test_a_password_query_parameter_is_masked() -> None:
    """libpq also takes the password as ``?password=``; it must be hidden the same way."""
    assert mask_url_text("postgresql://db/app?user=bob&password=Hunter2&sslmode=require") == (
        "postgresql://db/app?user=bob&password=***&sslmode=require"
    )


def test_the_hint_placeholder_is_not_masked() -> None:
    """Our own hints show ``USER:PASSWORD@HOST``; masking it would make them unreadable."""
    hint = "use postgresql://USER:PASSWORD@HOST:5432/DBNAME"

    assert mask_url_text(hint) == hint


def event_log(log_format: str) -> tuple[EventLog, io.StringIO]:
    log = EventLog()
    stream = io.StringIO()
    log.stream = stream
    log.configure(log_format=log_format)
    return log, stream


@pytest.mark.parametrize("log_format", ["json", "text"])
@given(password=st.from_regex(r"[A-Za-z0-9]{8,20}", fullmatch=True).filter(str.isalnum))
def test_a_known_secret_is_scrubbed_from_every_field(log_format: str, password: str) -> None:
    """A password quoted on its own (not in a URL) must not reach the log either."""
    log, stream = event_log(log_format)
    log.add_secret(password)

    log.info("db.error", detail=f"auth failed for {password}", password=password)

    assert password not in stream.getvalue()
    assert "***" in stream.getvalue()


@pytest.mark.parametrize("common", ["postgres", "Password", "ab", "7"])
def test_a_very_short_or_well_known_password_is_not_scrubbed(common: str) -> None:
    """Scrubbing "postgres" would garble every line naming the database or the scheme, and
    scrubbing "7" every exit code and timestamp (the stars would spell the password)."""
    log, stream = event_log("text")
    log.add_secret(common)

    log.info("db.connect", database=common)

    assert f"database={common}" in stream.getvalue()


def test_a_three_character_password_is_scrubbed() -> None:
    """The documented limit: three characters and more are secrets (docs/configuration.md)."""
    log, stream = event_log("text")
    log.add_secret("k9!")

    log.info("db.error", detail="auth failed for k9!")

    assert "k9!" not in stream.getvalue()
    assert MIN_SECRET_LENGTH == 3


@pytest.mark.parametrize("log_format", ["json", "text"])
def test_a_secret_with_a_quote_or_backslash_is_scrubbed(log_format: str) -> None:
    """Encoding a field must not hide a password from the scrubber."""
    log, stream = event_log(log_format)
    secret = 'ab"cd\\efgh'
    log.add_secret(secret)

    log.info("db.error", detail=f"auth failed for {secret} here")

    assert "cd\\" not in stream.getvalue() and "efgh" not in stream.getvalue()


@pytest.fixture(autouse=True)
def _no_secrets_from_other_tests(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every test starts with no registered secret (parsing a URL registers its password)."""
    monkeypatch.setattr(dsn, "_registered", set())
    for variable in ("DATABASE_URL", "MIGRATION_DATABASE_URL", "PGPASSWORD"):
        monkeypatch.delenv(variable, raising=False)


#: Issue 14's passwords: an unencoded "%", spaces, a raw "@".
ISSUE_URLS = {
    "percent": ("postgresql://app:Kx9%qT!zPw@db:5432/shop", ["Kx9%qT!zPw"]),
    "spaces": ("postgresql://app:correct horse battery@db/shop", ["correct horse battery"]),
    "raw @": ("postgresql://app:ret99@Tail@127.0.0.1/shop", ["ret99", "Tail"]),
}


@pytest.mark.parametrize("case", ISSUE_URLS)
def test_a_bad_url_is_refused_without_any_part_of_its_password(case: str) -> None:
    """libpq's parse error quotes the token it choked on: the password itself."""
    raw, pieces = ISSUE_URLS[case]

    with pytest.raises(ConfigError) as raised:
        parse_database_url(raw)

    assert raised.value.exit_code == ExitCode.CONFIG
    for piece in pieces:
        assert piece not in str(raised.value)


def test_a_raw_at_sign_in_the_password_is_refused_not_tried_as_a_host() -> None:
    """libpq ends the password at the first "@" and would resolve "Tail@127.0.0.1"."""
    with pytest.raises(ConfigError) as raised:
        parse_database_url("postgresql://app:ret99@Tail@127.0.0.1:5432/shop", variable="X")

    assert str(raised.value).startswith("X has a raw '@' in its user name or password")
    assert "percent-encode the password" in str(raised.value)


@pytest.mark.parametrize("log_format", ["json", "text"])
@pytest.mark.parametrize("case", ISSUE_URLS)
def test_what_a_url_registers_is_scrubbed_from_every_later_line(case: str, log_format: str) -> None:
    """A message quoting the password on its own (a driver's, an application's) is scrubbed,
    in both formats, once any parser saw the URL, even one that refused it."""
    raw, pieces = ISSUE_URLS[case]
    log, stream = event_log(log_format)
    with pytest.raises(ConfigError):
        parse_database_url(raw)

    for piece in pieces:
        log.error("app.error", detail=f'could not use "{piece}" here', items=[piece])

    for piece in pieces:
        assert piece not in stream.getvalue()


@pytest.mark.parametrize(
    ("raw", "secret"),
    [
        ("host=db password='a b\\'c' dbname=shop", "a b'c"),
        ("host=db password=Hunter2x dbname=shop", "Hunter2x"),
        ("postgresql://db/shop?password=p%40ss%20word", "p@ss word"),
        ("postgresql://app:a/b%zz@db/shop", "a/b%zz"),
    ],
)
def test_password_parameters_and_odd_urls_register_their_password(raw: str, secret: str) -> None:
    """``password=`` in keyword/value form (quoted, escaped) and in a query, and a password
    with a raw "/" (where neither parser finds it), are secrets before anything parses."""
    assert secret in secret_candidates(raw)
    register_secrets(raw)

    assert scrub_text(f"rejected {secret}!") == "rejected ***!"


def test_pgpassword_is_scrubbed(monkeypatch: pytest.MonkeyPatch) -> None:
    """libpq reads PGPASSWORD too: no line may print it."""
    monkeypatch.setenv("PGPASSWORD", "fr0m-the-env")
    log, stream = event_log("json")

    log.info("db.error", detail="fr0m-the-env")

    assert "fr0m-the-env" not in stream.getvalue()


def test_a_database_url_in_the_environment_is_scrubbed_before_anything_parsed_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """An error raised before the settings are read (a broken .env, env.py) is scrubbed too."""
    monkeypatch.setenv("DATABASE_URL", "postgresql://app:correct horse battery@db/shop")

    assert scrub_text('"correct horse battery" is wrong') == '"***" is wrong'


@pytest.mark.parametrize(
    ("raw", "host", "port"),
    [
        (
            "postgresql://u:pw@h1:5432,h2:5433/db?target_session_attrs=read-write",
            "h1,h2",
            None,
        ),
        ("postgresql://u@h1,h2/db", "h1,h2", None),
        ("postgresql://u@[::1]:5433,db.example/db", "::1,db.example", None),
        ("postgresql://u@db.example:6543/db", "db.example", 6543),
        ("postgresql://u@/db?host=h1,h2&port=5432,5433", "h1,h2", None),
    ],
)
def test_a_failover_url_with_several_hosts_is_accepted(
    raw: str, host: str, port: int | None
) -> None:
    """libpq's multi-host form (it tries each host in turn) is a valid URL."""
    url = parse_database_url(raw)

    assert (url.host, url.port, url.database) == (host, port, "db")
    assert url.libpq == raw
    assert "pw" not in url.masked.replace("postgresql", "")


@pytest.mark.parametrize(
    "raw",
    ["postgresql://u@h1:5432,h2:99999/db", "postgresql://u@h1:x,h2/db", "postgresql://u@[::1/db"],
)
def test_a_bad_port_in_a_host_list_is_malformed(raw: str) -> None:
    with pytest.raises(ConfigError, match="DATABASE_URL is malformed"):
        parse_database_url(raw)


def test_a_password_with_runs_of_whitespace_is_scrubbed_from_a_one_line_error() -> None:
    """Error lines fold every run of whitespace into one space: the folded password is
    a secret too."""
    password = "correct  horse\tbattery"
    parse_database_url(f"postgresql://app:{quote(password, safe='')}@db/shop")
    error = ConfigError(f"the application said: bad password {password}")

    assert scrub_text(str(error)) == "the application said: bad password ***"


def test_a_raw_hash_in_the_password_is_read_as_libpq_reads_it() -> None:
    """libpq has no URL fragments: "#" is part of the password, and the query after it
    still counts (Python's urlsplit would cut both off)."""
    url = parse_database_url("postgresql://app:ab#cd-ef@db:5433/shop?sslmode=require")

    assert (url.password, url.host, url.port, url.database) == ("ab#cd-ef", "db", 5433, "shop")
    assert url.masked == "postgresql://app:***@db:5433/shop?sslmode=require"
    assert with_database(url, "other").libpq == (
        "postgresql://app:ab#cd-ef@db:5433/other?sslmode=require"
    )


@pytest.mark.parametrize(
    "raw",
    ["postgresql://app:@0/@db/shop", "postgresql://app:pw@db/sh@p"],
)
def test_a_raw_at_sign_after_a_raw_slash_is_refused_too(raw: str) -> None:
    """A password like "@0/" makes libpq read a host "0" and a database "@db/shop": refused,
    not connected somewhere else with the password's tail on show."""
    with pytest.raises(ConfigError, match="percent-encode the password"):
        parse_database_url(raw)


@pytest.mark.parametrize("raw", ["postgresql://app:a\x00b@db/shop", "postgresql://app:\udcff@db/x"])
def test_a_nul_byte_or_undecodable_bytes_are_a_config_error(raw: str) -> None:
    """Bytes the environment could not decode reach us as surrogates: exit 78, not a crash."""
    with pytest.raises(ConfigError, match="NUL byte or bytes that are not UTF-8"):
        parse_database_url(raw)


def test_a_query_password_with_spaces_is_a_secret_up_to_the_next_ampersand() -> None:
    """libpq reads a query value up to "&" and quotes all of it when it refuses the spaces."""
    with pytest.raises(ConfigError) as raised:
        parse_database_url("postgresql://db/shop?user=app&password=0 zz 9&sslmode=require")

    assert "0 zz 9" not in str(raised.value)


@settings(max_examples=300, deadline=None)
@given(
    password=st.text(st.characters(min_codepoint=32, max_codepoint=126), min_size=3, max_size=16),
    encoded=st.booleans(),
    form=st.sampled_from(["authority", "query"]),
    host=st.sampled_from(["db", "h1:5432,h2:5433", "[::1]:5"]),
    log_format=st.sampled_from(["json", "text"]),
)
def test_no_password_reaches_a_log_line_whatever_the_url(
    password: str, encoded: bool, form: str, host: str, log_format: str
) -> None:
    """Any printable password, percent-encoded or raw, in the authority or the query: the
    URL is accepted or refused with ConfigError, and neither the masked URL nor the error
    line shows the password."""
    assume(is_secret(password) and password not in "***")
    dsn._registered.clear()
    text = quote(password, safe="") if encoded else password
    raw = (
        f"postgresql://app:{text}@{host}/shop"
        if form == "authority"
        else f"postgresql://{host}/shop?user=app&password={text}"
    )
    try:
        shown = parse_database_url(raw).masked
    except ConfigError as error:
        shown = str(error)
    log, stream = event_log(log_format)

    log.error("command.failed", error=shown)

    line = stream.getvalue()
    value = json.loads(line)["error"] if log_format == "json" else line.split(" error=", 1)[1]
    assert password not in value or password in _OUR_WORDS


#: Our own words around a masked URL: a "password" of three of their letters may show.
_OUR_WORDS = (
    "DATABASE_URL is malformed has a raw '@' in its user name or password; percent-encode the "
    "password: '@' is %40, ':' %3A, '/' %2F, '%' %25 use postgresql://USER:PASSWORD@HOST:5432/"
    "DBNAME; percent-encode special characters in the password invalid URI query parameter "
    'invalid port number unexpected spaces found in "***", use percent-encoded spaces (%20) '
    'instead invalid percent-encoded token: extra key/value separator "=" in URI query '
    "parameter: postgresql://app:***@db/shop?user=app&password=*** h1:5432,h2:5433 [::1]:5"
)


@pytest.mark.parametrize("log_format", ["json", "text"])
def test_a_password_of_digits_is_scrubbed_from_a_number_field(log_format: str) -> None:
    """A field that is a number is scrubbed too; other numbers stay numbers."""
    log, stream = event_log(log_format)
    log.add_secret("20261201")

    log.info("db.retry", sleep_ms=20261201, attempt=2)

    assert "20261201" not in stream.getvalue()
    assert ('"attempt": 2' if log_format == "json" else "attempt=2") in stream.getvalue()


@pytest.mark.parametrize("name", ["dbname", "%64bname", "dbname "])
def test_a_scratch_url_never_keeps_a_dbname_from_the_query(name: str) -> None:
    """Why: libpq lets ?dbname= beat the path; smoke's stairway and restore's scratch
    database would otherwise run against the very database the URL names."""
    url = parse_database_url(
        f"postgresql://app:secret-pass@db.example.com:5432/?{name}=shop&sslmode=require"
    )
    scratch = with_database(url, "scratch_1").libpq
    assert "shop" not in scratch
    assert scratch.endswith("/scratch_1?sslmode=require")
