"""What the fuzz tier generates: passwords and database URLs, setting values (from the
settings table itself), and the exceptions an application raises."""

from __future__ import annotations

import string
from dataclasses import dataclass, field
from urllib.parse import quote, quote_from_bytes

from hypothesis import strategies as st

from .harness import CLOSED_PORTS, MARK_END, MARK_START, Secret

# --- passwords -------------------------------------------------------------------------------

#: Characters that mean something in a URL, a query, libpq's keyword/value form, a shell,
#: JSON, or the scrubber: the usual suspects, drawn often.
SPECIAL = [
    *"%@:/?#&=' \"\\\t\n;,[]{}$*!+~`<>|^",
    *("%zz", "%4", "%40", "%25", "%00", "%FF", "://", "password=", "***", "\r\n"),
    *("\u00a0", "\u2028", "\u00e9", "\u20ac", "\U0001d518"),
]
#: Any text an environment variable can hold: every code point but NUL and surrogates.
ANY_CHARACTER = st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00")
PRINTABLE_ASCII = st.sampled_from(string.printable)


#: Bytes that are not UTF-8, as the environment hands them to Python (surrogate escapes:
#: the process receives the raw bytes 0x80-0xff).
RAW_BYTES = st.text(
    st.characters(min_codepoint=0xDC80, max_codepoint=0xDCFF), min_size=1, max_size=3
)


def password_middles(*, binary: bool) -> st.SearchStrategy[str]:
    pieces = [
        st.sampled_from(SPECIAL),
        st.text(PRINTABLE_ASCII, min_size=1, max_size=6),
        st.text(ANY_CHARACTER, min_size=1, max_size=4),
    ]
    return st.lists(st.one_of(*pieces, *([RAW_BYTES] if binary else [])), max_size=6).map("".join)


@dataclass(frozen=True)
class Password:
    """A password (bytes that are not UTF-8 as surrogate escapes) and how the input writes it."""

    text: str
    written: str

    @property
    def secret(self) -> Secret:
        return Secret.of(self.text, self.written)


@st.composite
def passwords(draw: st.DrawFn, *, url: bool = True, binary: bool = True) -> Password:
    """Marked passwords, written raw, percent-encoded or partly; with ``binary``, also
    bytes that are not UTF-8, raw or percent-encoded. ``url``: as in a URL; else raw."""
    if url and binary and draw(st.integers(0, 5)) == 0:
        raw = draw(st.binary(max_size=10))
        written = MARK_START + quote_from_bytes(raw, safe="") + MARK_END
        decoded = raw.decode("utf-8", "ignore")
        return Password(MARK_START + decoded + MARK_END, written)
    text = MARK_START + draw(password_middles(binary=binary)) + MARK_END
    if not url:
        return Password(text, text)
    encoding = draw(st.sampled_from(["raw", "encoded", "partly"]))
    if encoding == "raw":
        written = text
    elif encoding == "encoded":
        written = quote(text, safe="", errors="surrogateescape")
    else:
        safe = "".join(draw(st.lists(st.sampled_from("%@:/?#&=' ;,+$!*"), unique=True)))
        written = quote(text, safe=safe, errors="surrogateescape")
    return Password(text, written)


# --- database URLs ---------------------------------------------------------------------------

SCHEMES = ["postgresql", "postgres", "postgresql+psycopg", "POSTGRESQL", "postgresql+psycopg2"]
HOSTS = [
    f"127.0.0.1:{CLOSED_PORTS[0]}",
    f"127.0.0.1:{CLOSED_PORTS[0]},127.0.0.1:{CLOSED_PORTS[1]}",
    f"[::1]:{CLOSED_PORTS[0]}",
    f"localhost:{CLOSED_PORTS[0]},[::1]:{CLOSED_PORTS[1]}",
    f"127.0.0.1:{CLOSED_PORTS[0]},",
]
QUERIES = [
    "sslmode=disable",
    "sslmode=require",
    "sslmode=bogus",
    "target_session_attrs=read-write",
    "target_session_attrs=any",
    "application_name=fuzz",
    "connect_timeout=1",
    "options=-c%20statement_timeout%3D5s",
    f"host=127.0.0.1&port={CLOSED_PORTS[0]}",
    "dbname=other",
    "bogus_parameter=1",
]


@dataclass(frozen=True)
class DatabaseInput:
    """Where a generated URL goes: environment variables and command-line arguments."""

    env: dict[str, str]
    flags: list[str] = field(default_factory=list)
    secret: Secret = field(default_factory=Secret.of)


def _keyword_value(password: Password, quoted: bool) -> str:
    text = password.text
    if quoted:
        text = "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"
    return f"host=127.0.0.1 port={CLOSED_PORTS[0]} user=app password={text} dbname=shop"


@st.composite
def database_inputs(draw: st.DrawFn) -> DatabaseInput:
    """A database URL with a marked password, in each form and place a URL can take:
    the password in the URL, in its query, in libpq's keyword/value form or in
    PGPASSWORD; one host or several; given as DATABASE_URL, MIGRATION_DATABASE_URL or
    --database-url. Every host is a closed local port: nothing ever connects."""
    form = draw(st.sampled_from(["userinfo", "query", "keywords", "pgpassword"]))
    password = draw(passwords(url=form in ("userinfo", "query")))
    scheme = draw(st.sampled_from(SCHEMES))
    user = draw(st.sampled_from(["app", "migrate_lock_app", "a%40b", ""]))
    hosts = draw(st.sampled_from(HOSTS))
    database = draw(st.sampled_from(["shop", "", "my%20db"]))
    extra = draw(st.lists(st.sampled_from(QUERIES), max_size=2, unique=True))
    env: dict[str, str] = {}
    if form == "userinfo":
        url = f"{scheme}://{user}:{password.written}@{hosts}/{database}"
    elif form == "query":
        extra = [f"password={password.written}", *extra]
        url = f"{scheme}://{user}@{hosts}/{database}" if user else f"{scheme}://{hosts}/{database}"
    elif form == "keywords":
        url = _keyword_value(password, quoted=draw(st.booleans()))
        extra = []
    else:
        url = f"{scheme}://{user or 'app'}@{hosts}/{database}"
        env["PGPASSWORD"] = password.written
    if extra:
        url += "?" + "&".join(extra)
    where = draw(st.sampled_from(["DATABASE_URL", "MIGRATION_DATABASE_URL", "--database-url"]))
    flags: list[str] = []
    if where == "--database-url":
        flags = ["--database-url", url]
    else:
        env[where] = url
    if where != "DATABASE_URL":
        # The application's own URL beside it: a good one, with no secret.
        env["DATABASE_URL"] = f"postgresql://app@127.0.0.1:{CLOSED_PORTS[1]}/app"
    return DatabaseInput(env, flags, password.secret)


# --- the application's exceptions ------------------------------------------------------------

#: Python source for an exception an application may raise, by what it is. ``{message}`` is
#: the message as a Python literal expression.
EXCEPTIONS = [
    "ValueError({message})",
    "RuntimeError({message})",
    "KeyError({message})",
    "TypeError({message})",
    "OSError(13, {message})",
    "FileNotFoundError(2, {message}, 'settings.toml')",
    "ConnectionError({message})",
    "TimeoutError({message})",
    "ImportError({message}, name='myapp')",
    "ModuleNotFoundError({message}, name='myapp.settings')",
    "AttributeError({message})",
    "AssertionError({message})",
    "NotImplementedError({message})",
    "RecursionError({message})",
    "UnicodeDecodeError('utf-8', b'\\xff', 0, 1, {message})",
    "ZeroDivisionError({message})",
    "Exception({message})",
    "Exception()",
    "type('AppError', (Exception,), {{}})({message})",
    "type('Odd', (Exception,), {{'__str__': lambda self: 1 / 0}})({message})",
    "type('Noisy', (Exception,), {{'__repr__': lambda self: 1 / 0}})({message})",
    "ExceptionGroup('several', [ValueError({message}), KeyError('k')])",
    "__import__('psycopg').OperationalError({message})",
    "__import__('psycopg').errors.UndefinedTable({message})",
    "__import__('psycopg').errors.AdminShutdown({message})",
    "__import__('sqlalchemy').exc.OperationalError('SELECT 1', {{}}, Exception({message}))",
    "__import__('sqlalchemy').exc.ArgumentError({message})",
    "__import__('alembic.util', fromlist=['x']).CommandError({message})",
    "__import__('click').ClickException({message})",
    "__import__('migrate_lock.errors', fromlist=['x']).ConfigError({message})",
    "SystemExit({message})",
    "SystemExit(0)",
    "SystemExit(3)",
    "SystemExit(None)",
    "KeyboardInterrupt()",
    "type('AppBase', (BaseException,), {{}})({message})",
    "GeneratorExit()",
    "__import__('asyncio').CancelledError({message})",
]

#: How an application's message may end up quoting the database URL or its password.
LEAKS = [
    "",
    " + __import__('os').environ.get('DATABASE_URL', '')",
    " + __import__('os').environ.get('MIGRATION_DATABASE_URL', '')",
    " + repr(__import__('os').environ.get('DATABASE_URL', ''))",
    " + __import__('urllib.parse').parse.unquote("
    "__import__('os').environ.get('DATABASE_URL', '').partition('@')[0].rpartition(':')[2])",
]

#: Code that raises, as a statement, at any indentation (one line).
PYDANTIC_FAILURE = (
    "type('AppSettings', (__import__('pydantic_settings').BaseSettings,), "
    "{'__annotations__': {'secret_key': str}})()"
)


@st.composite
def raising_statements(draw: st.DrawFn) -> str:
    """One line of Python that raises what an application raises (its settings failing
    validation, a library's error, an exit), with a message that may quote the URL."""
    if draw(st.integers(0, 7)) == 0:
        return PYDANTIC_FAILURE
    text = draw(st.text(ANY_CHARACTER, max_size=30))
    message = repr(text) + draw(st.sampled_from(LEAKS))
    raised = draw(st.sampled_from(EXCEPTIONS)).format(message=f"({message})")
    if draw(st.integers(0, 4)) == 0:
        return f"raise {raised} from ValueError('the cause')"
    return f"raise {raised}"


# --- setting values, by the settings table ---------------------------------------------------

#: Text with the characters that break readers: whitespace of every kind, quotes, "#",
#: "$", "=", non-ASCII letters that change under case mapping (the dotless i, the long s).
AWKWARD_TEXT = st.text(
    st.one_of(
        ANY_CHARACTER, st.sampled_from(list(" \t\n\r\v\f'\"#$={}\\\u0131\u017f\u212a\u00a0\u2028"))
    ),
    max_size=12,
)


def _numbers() -> st.SearchStrategy[str]:
    return st.one_of(
        st.integers(-(2**70), 2**70).map(str),
        st.floats().map(repr),
        st.floats(0, 1e6).map(lambda value: f"{value:g}"),
        st.sampled_from(["1e309", "-0", "0x10", "1_000", ".5", "5.", "+3", "٣", "NaN", "inf"]),
    )


def _durations() -> st.SearchStrategy[str]:
    unit = st.sampled_from(["", "us", "ms", "s", "min", "h", "d", "w", "MS", "sec", "m", "μs"])
    return st.builds(
        lambda number, space, unit: f"{number}{space}{unit}",
        _numbers(),
        st.sampled_from(["", " ", "\t"]),
        unit,
    )


def _identifiers() -> st.SearchStrategy[str]:
    return st.one_of(
        st.from_regex(r"[A-Za-z_][A-Za-z0-9_$]{0,70}", fullmatch=True),
        st.sampled_from(
            [
                "user",
                "select",
                "order",
                "public",
                "pg_catalog",
                "information_schema",
                "migrate_lock",
                "alembic_version",
                "Public",
                "pg_temp",
                "x" * 63,
                "x" * 64,
            ]
        ),
    )


_PATHS = [
    ".",
    "/",
    "..",
    "/nonexistent/x",
    "alembic.ini",
    "migrations",
    "migrations/env.py",
    "/dev/null",
    "/proc/self/status",
    "~/x",
    "seeds",
    "a/../../b",
    "-c",
]
_COMMANDS = ["none", "sh", "sh bash", "alembic,migrate-lock", "/bin/sh", "true , false", "NONE"]
_URL_FORMS = [
    "{url}",
    "{url}&sslmode=disable",
    "{url}?options=-c%20search_path%3Dnope",
    "{url}?application_name=%00",
    " {url} ",
    "{url}/extra",
]


def _urls(url: str) -> st.SearchStrategy[str]:
    return st.sampled_from(_URL_FORMS).map(lambda form: form.format(url=url))


#: MIGRATE_THEN's values: run for real by upgrade and run, so chosen to be harmless (never
#: any text at all): success, failure, a signal, no such command, the URL on stderr.
_SHELL_COMMANDS = [
    "true",
    "exit 3",
    'echo "$DATABASE_URL" >&2; exit 1',
    'echo "$MIGRATION_DATABASE_URL $DATABASE_URL"',
    "kill -9 $$",
    "no-such-command-of-migrate-lock",
    "printf '\\377\\n' >&2; exit 2",
    "'",
]


def setting_values(row: object, url: str) -> st.SearchStrategy[str]:
    """Values for one row of the settings table (lean/settings_schema.py): the kind's
    valid spellings, its edge cases, and any text at all. ``url``: a working database URL,
    for the URL settings' variations."""
    from migrate_lock.lean import settings_schema as schema

    kind = row.kind  # type: ignore[attr-defined]
    if kind is schema.SHELL_COMMAND:
        return st.sampled_from(_SHELL_COMMANDS)
    by_kind: dict[object, st.SearchStrategy[str]] = {
        schema.TEXT: AWKWARD_TEXT,
        schema.URL: _urls(url),
        schema.NUMBER: _numbers(),
        schema.LOCK_KEY: _numbers(),
        schema.COUNT: _numbers(),
        schema.BOOL: st.sampled_from(["true", "False", "1", "0", "YES", "n", "on", "Off", "2"]),
        schema.DURATION: _durations(),
        schema.IDENTIFIER: _identifiers(),
        schema.PATH: st.sampled_from(_PATHS),
        schema.DIRECTORY: st.sampled_from(_PATHS),
        schema.COMMANDS: st.sampled_from(_COMMANDS),
    }
    if kind.choices:
        valid = st.builds(
            lambda choice, case: case(choice),
            st.sampled_from(kind.choices),
            st.sampled_from([str, str.upper, str.lower, str.title]),
        )
    else:
        assert kind in by_kind, f"a new kind of setting ({kind.allowed}): give it values here"
        valid = by_kind[kind]
    padded = st.builds(lambda value, pad: pad.format(value), valid, st.sampled_from(["{}", " {} "]))
    return st.one_of(padded, padded, AWKWARD_TEXT)


# --- broken project files --------------------------------------------------------------------

#: Characters Python's tokenizer cares about, for lines of almost-Python.
PYTHON_BITS = st.text(
    st.sampled_from(list("()[]{}:;'\"\\=#@.,*\t abcdefrs0123\u00e9")), max_size=20
)
PYTHON_LINES = [
    "import does_not_exist",
    "from alembic import does_not_exist",
    "def upgrade(:",
    "\tx = 1",
    "  x = 1",
    "yield",
    "return",
    "await x",
    "del revision",
    "revision = undefined_name",
    "import sys; sys.exit(0)",
    "import sys; sys.exit('the application stopped here')",
    "raise SystemExit(78)",
    "x = '''",
    "f'{'",
    "\\",
    "# -*- coding: latin-1 -*-",
    "# -*- coding: no-such-codec -*-",
    "from __future__ import braces",
    "from __future__ import annotations",
]
ASSIGNED = ["revision", "down_revision", "branch_labels", "depends_on"]
VALUES = [
    "None",
    '"0001"',
    '"0002"',
    '"0003"',
    '"9999"',
    '""',
    "123",
    '("0001", "0001")',
    '["0001", None]',
    '"0001 0002"',
    '"head"',
    '"base"',
    '"heads"',
    '"@"',
    '"0001@x"',
    '"-1"',
    '"\u00e9"',
    '"a" * 1000',
    "object()",
]


@st.composite
def python_lines(draw: st.DrawFn) -> str:
    """A line an application's Python file may hold by mistake, or on purpose."""
    return draw(st.one_of(st.sampled_from(PYTHON_LINES), raising_statements(), PYTHON_BITS))


@st.composite
def broken_revisions(draw: st.DrawFn, source: bytes) -> bytes:
    """``source`` (a revision file) with one or two things wrong."""
    for _ in range(draw(st.integers(1, 2))):
        lines = source.split(b"\n")
        how = draw(
            st.sampled_from(["assign", "assign", "delete", "insert", "bytes", "truncate", "body"])
        )
        if how == "assign":
            name = draw(st.sampled_from(ASSIGNED)).encode()
            value = draw(st.sampled_from(VALUES)).encode()
            lines = [
                name + b" = " + value if line.split(b":")[0].split(b" =")[0] == name else line
                for line in lines
            ]
        elif how == "delete":
            name = draw(st.sampled_from(ASSIGNED)).encode()
            lines = [line for line in lines if not line.startswith(name + b" ")]
            lines = [line for line in lines if not line.startswith(name + b":")]
        elif how == "insert":
            at = draw(st.integers(0, len(lines)))
            lines.insert(at, draw(python_lines()).encode("utf-8", "surrogatepass"))
        elif how == "body":
            # The application's own code failing when the revision runs.
            statement = draw(raising_statements()).encode("utf-8", "surrogatepass")
            lines = [
                line + b"\n    " + statement if line.startswith(b"def upgrade(") else line
                for line in lines
            ]
        source = b"\n".join(lines)
        if how == "bytes":
            at = draw(st.integers(0, len(source)))
            source = source[:at] + draw(st.binary(min_size=1, max_size=4)) + source[at:]
        elif how == "truncate":
            source = source[: draw(st.integers(0, len(source)))]
    return source


INI_LINES = [
    "script_location = migrations",
    "script_location =",
    "script_location = nowhere",
    "script_location = %(here)s/nowhere",
    "script_location = %(nope)s",
    "script_location = 100%",
    "script_location = migrations/versions",
    "script_location = /",
    "script_location = alembic.ini",
    "[alembic]",
    "[alembic",
    "[loggers]",
    "keys = root,missing",
    "class = NoSuchHandler",
    "args = (nope,)",
    "format = %(bogus",
    "level = LOUD",
    "prepend_sys_path = /nonexistent",
    "path_separator = bogus",
    "version_path_separator = ;",
    "version_locations = nowhere",
    "sqlalchemy.url = postgresql://app:Qv7inTheIniJx4@127.0.0.1:1/app",
    "sqlalchemy.url = %(DATABASE_URL)s",
    "  indented = continuation",
    "no equals sign",
    "= no name",
]


@st.composite
def broken_ini_files(draw: st.DrawFn, source: bytes) -> bytes:
    """``source`` (alembic.ini) with one or two things wrong."""
    for _ in range(draw(st.integers(1, 2))):
        lines = source.split(b"\n")
        how = draw(st.sampled_from(["insert", "replace", "delete", "bytes", "truncate"]))
        line = draw(st.one_of(st.sampled_from(INI_LINES), AWKWARD_TEXT))
        at = draw(st.integers(0, max(0, len(lines) - 1)))
        if how == "insert":
            lines.insert(at, line.encode("utf-8", "surrogatepass"))
        elif how == "replace":
            lines[at] = line.encode("utf-8", "surrogatepass")
        elif how == "delete":
            del lines[at]
        source = b"\n".join(lines)
        if how == "bytes":
            at = draw(st.integers(0, len(source)))
            source = source[:at] + draw(st.binary(min_size=1, max_size=4)) + source[at:]
        elif how == "truncate":
            source = source[: draw(st.integers(0, len(source)))]
    return source
