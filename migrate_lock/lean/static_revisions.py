"""The scripts' heads read from the revision files' text: no Alembic, no import, no build step.

Without a heads manifest (``migrate-lock freeze``) the at-head path still wants the heads
and every revision id. Alembic learns them by importing every revision file; this module
reads each file's module-level literal assignments instead::

    revision: str = "0042"
    down_revision = ("0040", "0041")
    branch_labels = None
    depends_on = "0007"

It is only ever certain or silent. Whatever it cannot vouch for makes it return None,
and the caller asks Alembic: a value that is not a literal (a string, None, a tuple or
list of strings), a name bound twice or in any other way (an ``if``, an import, a
walrus, ``globals()``), a file that touches its own module (``sys.modules``,
``setattr``, ``exec`` …), a module-level statement it does not recognise, a name of a
file Alembic treats specially (``_x.py``, ``.x.py``), a ``.pyc`` beside the sources, a
symbolic link, a revision id outside ``[A-Za-z0-9_]``, a revision defined twice, a
``down_revision`` or ``depends_on`` naming no revision id (a branch label, a partial
id), a cycle, a branch label used twice, no revision at all; in alembic.ini: a
``package:resource`` location, a missing directory, a separator Alembic does not know,
``sourceless`` or ``revision_environment`` set, a boolean that is not ``true``/``false``.

Two readers, one answer. The fast one is a handful of regular expressions that accept
only the shape revision files nearly always have: a docstring, imports, the
assignments, then ``def``/``class``/decorators at column 0. A file of any other shape
goes to the exact one, ``ast`` (about 65 µs a file, so only for those files), with the
same rules. What neither checks is whether a file would import (a syntax error in a
function body, a failing import, a ``raise`` at module level): its assignments are still
certain, at head no revision runs, and every verb that runs one loads the files with
Alembic first (and reports such a file, exit 78).

Standard library only: this is part of the at-head path (tests/unit/test_imports.py).
"""

from __future__ import annotations

import ast
import configparser
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, NamedTuple

from migrate_lock.lean.alembic_compat import (
    reads_recursive_version_locations,
    version_locations_separator,
)
from migrate_lock.lean.manifest import Manifest, read_manifest, script_files
from migrate_lock.logs import log

_NAMES = ("revision", "down_revision", "depends_on", "branch_labels")
#: Revision ids and branch labels the reader vouches for; Alembic forbids @ - + : in ids
#: and gives head, heads and base their own meaning.
_ID = re.compile(r"[A-Za-z0-9_]+\Z")
_RESERVED = frozenset({"head", "heads", "base"})
#: What in a file's text may rebind a name of its module other than by an assignment.
#: Alembic does not put a revision module in sys.modules, so code can reach the module's
#: names only through its own frame or namespace: globals(), locals(), vars(), a frame
#: (sys._getframe, inspect.currentframe, a traceback's tb_frame), exec/eval (which run in
#: the caller's globals), ``global``, a walrus, ``__dict__``, setattr, the gc module. A
#: cheap substring test over all new files at once, then a regular expression (with no
#: leading ``\b``: a literal prefix keeps it fast); a file where one is found goes to
#: ``ast``, which refuses it if the word really is the name.
_SUSPECT: tuple[tuple[str, re.Pattern[str] | None], ...] = (
    (":=", None),
    ("global", None),
    ("locals", None),
    ("vars", re.compile(r"vars\b")),
    ("exec", re.compile(r"exec\b")),  # not op.execute
    ("eval", re.compile(r"eval\b")),
    ("frame", None),
    ("__dict__", None),
    ("setattr", None),
    ("gc.", None),
)
_SUSPECT_NAMES = frozenset(
    {"globals", "locals", "vars", "exec", "eval", "setattr", "delattr", "__import__"}
    | {"importlib", "builtins", "__builtins__", "gc"}
)
_SUSPECT_ATTRIBUTES = _SUSPECT_NAMES | {
    "__dict__",
    "modules",
    "_getframe",
    "currentframe",
    "f_globals",
    "f_locals",
    "__setattr__",
    "__delattr__",
    "tb_frame",
    "gi_frame",
    "cr_frame",
    "f_back",
}

#: A string the fast reader takes: an id it vouches for, quoted (else ``ast`` reads it).
_STR = r"""(?:"[A-Za-z0-9_]*"|'[A-Za-z0-9_]*')"""
_LITERAL = (
    rf"(?:None|{_STR}|\(\s*(?:{_STR}\s*,\s*)*(?:{_STR}\s*)?\)"
    rf"|\[\s*(?:{_STR}\s*,\s*)*(?:{_STR}\s*)?\])"
)
_NAME = r"(?:revision|down_revision|depends_on|branch_labels)"
_COMMENT = r"[ \t]*(?:\#[^\n]*)?\n"
#: ``import a.b as c`` and ``from .a import b, c``, on one line or in parentheses (an
#: import that binds one of the four names comes before its assignment, which wins).
_IMPORT = (
    rf"(?:from[ \t]+\.*[\w.]*[ \t]+)?import[ \t]+[\w. \t,]+{_COMMENT}"
    rf"|from[ \t]+\.*[\w.]*[ \t]+import[ \t]*\([\w. \t,\n]*\){_COMMENT}"
)
#: A docstring, its loops unrolled (half the time of one alternation per character).
_DOCSTRING = (
    r'''[rRuU]?(?:"""[^"\\]*(?:(?:\\[\s\S]|"(?!""))[^"\\]*)*"""'''
    r"""|'''[^'\\]*(?:(?:\\[\s\S]|'(?!''))[^'\\]*)*'''"""
    r"""|"[^"\\\n]*(?:\\.[^"\\\n]*)*"|'[^'\\\n]*(?:\\.[^'\\\n]*)*')"""
)
#: The top of a revision file as Alembic's templates (old and new) write it: blank lines
#: and comments, a docstring, imports, then the four assignments in their order
#: (``branch_labels`` and ``depends_on`` may be left out), blank lines and comments. The
#: rest of the file must then begin with ``def``, ``class`` or a decorator, and every
#: later line at column 0 must be one of those (or a comment, or a closing parenthesis).
#: Any other file goes to ``ast``.
_HEADER = re.compile(
    rf"(?:{_COMMENT})*(?:{_DOCSTRING}{_COMMENT})?(?:{_COMMENT}|{_IMPORT})*"
    + "".join(
        rf"{'(?:' if optional else ''}{name}[ \t]*(?::[^=\n]*)?=[ \t]*(?P<{name}>{_LITERAL})"
        rf"{_COMMENT}(?:{_COMMENT})*{')?' if optional else ''}"
        for name, optional in (
            ("revision", False),
            ("down_revision", False),
            ("branch_labels", True),
            ("depends_on", True),
        )
    )
)
_STRINGS = re.compile(_STR)
#: ``def``/``class`` of another name than the four, or a decorator.
_DEF = rf"(?:(?:async[ \t]+)?def|class)[ \t]+(?!{_NAME}\b)"
_REST_STARTS = re.compile(rf"{_DEF}|@")
_REST_OTHER_LINE = re.compile(rf"\n(?![ \t\n#@)]|\Z|{_DEF})")
_CODING = re.compile(rb"^[ \t\f]*#.*?coding[:=][ \t]*([-\w.]+)", re.M)


@dataclass(frozen=True)
class StaticRevisions:
    """The scripts' heads and every revision id, as the revision files' text says."""

    heads: tuple[str, ...]
    revisions: frozenset[str]
    #: Where the heads came from, as the ``heads_from`` of ``migrate.up_to_date`` says.
    source: ClassVar[str] = "revision_files"


class _Entry(NamedTuple):
    """One revision file's four assignments (ids as tuples, None as ()); a NamedTuple, as
    a frozen dataclass costs three times as much to make (1000 files: 1.5 ms)."""

    revision: str
    down: tuple[str, ...]
    depends_on: tuple[str, ...]
    labels: tuple[str, ...]


class _Unsure(Exception):
    """The reader cannot vouch for something: the caller asks Alembic."""


#: The revision files last read in this process, by their bytes (a readiness probe reads
#: them again on every call, but parses only the ones that changed).
_ENTRIES: dict[bytes, _Entry] = {}
#: Version locations by alembic.ini's path, size, time and the working directory.
_LOCATIONS: dict[tuple[object, ...], tuple[tuple[str, ...], bool] | None] = {}


def read_revisions(alembic_ini: Path | str) -> StaticRevisions | None:
    """The heads and every revision id of the project of ``alembic_ini``, read from the
    revision files without importing them; None whenever only Alembic can be sure."""
    try:
        located = _version_locations(Path(alembic_ini))
        if located is None:
            raise _Unsure("alembic.ini: a location or an option only Alembic resolves")
        directories, recursive = located
        entries = _entries(_files(directories, recursive))
        return _graph(entries)
    except _Unsure as reason:
        log.debug("heads.static_deferred", reason=str(reason))
        return None
    except (OSError, ValueError, configparser.Error) as error:
        log.debug("heads.static_deferred", reason=f"{type(error).__name__}: {error}")
        return None


# --- where the files are --------------------------------------------------------------


def _version_locations(ini: Path) -> tuple[tuple[str, ...], bool] | None:
    about = ini.stat()
    key = (str(ini.absolute()), about.st_size, about.st_mtime_ns, os.getcwd())
    if key not in _LOCATIONS:
        found = _read_locations(ini)
        _LOCATIONS.clear()
        _LOCATIONS[key] = found
    return _LOCATIONS[key]


def _read_locations(ini: Path) -> tuple[tuple[str, ...], bool] | None:
    """As Alembic's Config and ScriptDirectory.from_config read them (alembic 1.13-1.x),
    or None wherever they could differ."""
    parser = configparser.ConfigParser({"here": ini.absolute().parent.as_posix()})
    with ini.open(encoding="utf-8") as file:
        parser.read_file(file)
    if not parser.has_section("alembic"):
        return None
    section = parser["alembic"]
    for option in ("sourceless", "revision_environment"):
        if section.get(option, "false") != "false":
            return None
    recursive = section.get("recursive_version_locations", "false")
    if recursive not in ("true", "false"):
        return None  # Alembic reads anything but "true" as false; a typo is unusual
    if recursive == "true" and not reads_recursive_version_locations():
        recursive = "false"  # Alembic before 1.10 has no such option
    location = section.get("script_location")
    if not location or (":" in location and not os.path.isabs(location)):
        return None  # missing, or package:resource
    if not os.path.isdir(location):
        return None
    versions = section.get("version_locations")
    if not versions:
        return (os.path.join(location, "versions"),), recursive == "true"
    separator = version_locations_separator(section)
    if separator is None:
        parts = re.split(r", *|(?: +)", versions)  # Alembic's legacy splitting
    else:
        split = {"space": " ", "newline": "\n", "os": os.pathsep, ":": ":", ";": ";"}
        if separator not in split:
            return None
        parts = [part.strip() for part in versions.split(split[separator]) if part]
    if not parts or any(not part or (":" in part and not os.path.isabs(part)) for part in parts):
        return None
    real = [os.path.realpath(part) for part in parts]
    if len(set(real)) != len(real):
        return None  # Alembic reads such files once and warns
    if recursive == "true" and any(
        a != b and b.startswith(a.rstrip(os.sep) + os.sep) for a in real for b in real
    ):
        return None  # nested locations, walked twice
    return tuple(parts), recursive == "true"


def _files(directories: Iterable[str], recursive: bool) -> list[str]:
    """The path of each revision file Alembic would load."""
    found: list[str] = []
    for top in directories:
        if not os.path.isdir(top) or os.path.basename(os.path.normpath(top)).endswith(
            "__pycache__"
        ):
            raise _Unsure(f"version location {top}: not a directory, or one Alembic skips")
        pending = [top]
        while pending:
            directory = pending.pop()
            with os.scandir(directory) as listing:
                for entry in listing:
                    _one_entry(entry, recursive, found, pending)
    return found


def _one_entry(
    entry: os.DirEntry[str],
    recursive: bool,
    found: list[str],
    pending: list[str],
) -> None:
    name = entry.name
    if entry.is_symlink():
        if name.endswith((".py", ".pyc", ".pyo")) or recursive:
            raise _Unsure(f"{entry.path} is a symbolic link")
        return
    if entry.is_dir():
        if not recursive:
            return
        if name.endswith("__pycache__"):
            # Alembic skips its files but walks on into any directory below it.
            with os.scandir(entry.path) as inside:
                if any(item.is_dir() for item in inside):
                    raise _Unsure(f"{entry.path} has directories")
            return
        pending.append(entry.path)
        return
    if "\n" in name or "\r" in name:
        raise _Unsure(f"a file name with a line break in {os.path.dirname(entry.path)}")
    if name.endswith((".pyc", ".pyo")):
        raise _Unsure(f"{entry.path}: compiled revision files beside the sources")
    if not name.endswith(".py") or name.startswith(("__init__", ".#")):
        return  # Alembic's pattern skips them too
    if name.startswith(("_", ".")):
        raise _Unsure(f"{entry.path}: a name starting with {name[0]!r}")
    if not entry.is_file():
        raise _Unsure(f"{entry.path} is not a regular file")
    found.append(entry.path)


# --- one file ------------------------------------------------------------------------------


def _entries(paths: list[str]) -> list[_Entry]:
    """Each file's assignments: the last result for the same bytes, else parsed (the new
    files' text checked for suspect words all at once: nearly always none, and one search
    over all of it is cheaper than one per file)."""
    global _ENTRIES  # noqa: PLW0603 - the cache is replaced by the files of this call
    contents = [_read(path) for path in paths]
    found = [_ENTRIES.get(data) for data in contents]
    new = [index for index, entry in enumerate(found) if entry is None]
    texts = [_text(contents[index], paths[index]) for index in new]
    suspects = bool(texts) and _suspect("".join(texts))
    for index, text in zip(new, texts, strict=True):
        found[index] = _parse(text, paths[index], suspects=suspects)
    entries = [entry for entry in found if entry is not None]
    _ENTRIES = dict(zip(contents, entries, strict=True))
    return entries


def _read(path: str) -> bytes:
    # os.open/os.read: a third of the CPU of open().read() (1000 files: 1.3 ms, not 4.5);
    # a regular file's read returns less than asked only at its end.
    descriptor = os.open(path, os.O_RDONLY)
    try:
        data = os.read(descriptor, 65536)
        if len(data) == 65536:
            chunks = [data]
            while chunk := os.read(descriptor, 65536):
                chunks.append(chunk)
            data = b"".join(chunks)
    finally:
        os.close(descriptor)
    return data


def read_source(data: bytes, path: str = "<revision>") -> _Entry:
    """One revision file's assignments, from its bytes; _Unsure if not certain."""
    return _parse(_text(data, path), path, suspects=True)


def _text(data: bytes, path: str) -> str:
    """The source as Python reads it (UTF-8, universal newlines), or _Unsure."""
    if b"coding" in data[:1024]:  # a cookie must be on the first or second line
        head = data[: data.find(b"\n", data.find(b"\n") + 1) + 1] if b"\n" in data else data
        coding = _CODING.search(head)
        if coding and coding[1].decode("ascii", "replace").lower() not in ("utf-8", "utf8"):
            raise _Unsure(f"{path}: a source encoding other than UTF-8")
    if b"\0" in data or b"\f" in data or b"\v" in data:
        raise _Unsure(f"{path}: a NUL, form feed or vertical tab")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise _Unsure(f"{path}: not UTF-8") from None
    text = text.removeprefix("\ufeff")
    if "\r" in text:
        text = text.replace("\r\n", "\n").replace("\r", "\n")
    return text if text.endswith("\n") else text + "\n"


def _parse(text: str, path: str, *, suspects: bool) -> _Entry:
    # Python reads identifiers in NFKC ("globals" with a fullwidth g is globals): only
    # ``ast``, which normalizes them, reads a file with anything but ASCII in it.
    found = None if (suspects and _suspect(text)) or not text.isascii() else _fast(text)
    return found if found is not None else _checked(_exact(text, path), path)


def _suspect(text: str) -> bool:
    return any(
        word in text and (pattern is None or pattern.search(text) is not None)
        for word, pattern in _SUSPECT
    )


def _fast(text: str) -> _Entry | None:
    """The four values by one regular expression, or None when the file is not of the
    usual shape or holds anything to look at twice (then ``_exact`` decides)."""
    header = _HEADER.match(text)
    if header is None:
        return None
    end = header.end()
    if end < len(text) and (
        _REST_STARTS.match(text, end) is None or _REST_OTHER_LINE.search(text, end) is not None
    ):
        return None
    revision, down, depends_on, labels = header.group(
        "revision", "down_revision", "depends_on", "branch_labels"
    )
    if revision[0] not in "\"'":
        return None
    entry = _Entry(revision[1:-1], _fast_ids(down), _fast_ids(depends_on), _fast_ids(labels))
    ids = (entry.revision, *entry.down, *entry.depends_on, *entry.labels)
    if "" in ids or not _RESERVED.isdisjoint(ids):
        return None
    if any(len(set(group)) != len(group) for group in (entry.down, entry.depends_on, entry.labels)):
        return None
    return entry


def _fast_ids(value: str | None) -> tuple[str, ...]:
    """A literal the header's pattern matched: None, a quoted id, or a tuple/list of them."""
    if value is None or value == "None":
        return ()
    if value[0] in "\"'":
        return (value[1:-1],)
    return tuple(item[1:-1] for item in _STRINGS.findall(value))


def _exact(text: str, path: str) -> dict[str, object]:
    """The four values by ``ast``: each bound once, by a module-level assignment of a
    literal, and in no other way in the module's scope; nothing in the file that could
    rewrite the module (``globals()``, ``sys.modules``, ``global revision`` …)."""
    try:
        tree = ast.parse(text, path)
    except (SyntaxError, ValueError) as error:
        raise _Unsure(f"{path}: {type(error).__name__}") from None
    plain: set[int] = set()
    values: dict[str, object] = {}
    for statement in tree.body:
        target, value = _assigned(statement)
        if target is not None and target.id in _NAMES and value is not None:
            if target.id in values:
                raise _Unsure(f"{path}: {target.id} is assigned twice")
            try:
                values[target.id] = ast.literal_eval(value)
            except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
                raise _Unsure(f"{path}: {target.id} is not a literal") from None
            plain.add(id(target))
    for node in ast.walk(tree):
        _refuse_rewrites(node, path)
    for node in _module_scope(tree):
        if id(node) not in plain:
            _refuse_other_binding(node, path)
    return values


def _assigned(statement: ast.stmt) -> tuple[ast.Name | None, ast.expr | None]:
    if (
        isinstance(statement, ast.Assign)
        and len(statement.targets) == 1
        and isinstance(statement.targets[0], ast.Name)
    ):
        return statement.targets[0], statement.value
    if isinstance(statement, ast.AnnAssign) and isinstance(statement.target, ast.Name):
        return statement.target, statement.value
    return None, None


def _module_scope(tree: ast.Module) -> Iterable[ast.AST]:
    """The nodes whose bindings land in the module: all but function and class bodies
    (their decorators, defaults, annotations and bases included)."""
    stack: list[ast.AST] = [tree]
    while stack:
        node = stack.pop()
        yield node
        scoped = isinstance(
            node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef | ast.Lambda
        )
        for field, value in ast.iter_fields(node):
            if scoped and field == "body":
                continue
            if isinstance(value, ast.AST):
                stack.append(value)
            elif isinstance(value, list):
                stack.extend(item for item in value if isinstance(item, ast.AST))


def _refuse_rewrites(node: ast.AST, path: str) -> None:
    """_Unsure if ``node``, anywhere in the file, could rebind a name of the module."""
    if isinstance(node, ast.Name) and node.id in _SUSPECT_NAMES:
        raise _Unsure(f"{path}: line {node.lineno} uses {node.id}")
    if isinstance(node, ast.Attribute) and node.attr in _SUSPECT_ATTRIBUTES:
        raise _Unsure(f"{path}: line {node.lineno} uses .{node.attr}")
    if isinstance(node, ast.Global | ast.Nonlocal) and set(node.names) & set(_NAMES):
        raise _Unsure(f"{path}: line {node.lineno} declares a name global")
    if (
        isinstance(node, ast.NamedExpr)
        and isinstance(node.target, ast.Name)
        and node.target.id in _NAMES
    ):
        raise _Unsure(f"{path}: line {node.lineno} assigns {node.target.id} with :=")
    if isinstance(node, ast.ImportFrom) and any(alias.name == "*" for alias in node.names):
        raise _Unsure(f"{path}: line {node.lineno} imports *")


def _refuse_other_binding(node: ast.AST, path: str) -> None:
    """_Unsure if ``node``, in the module's scope, binds one of the four names in a way
    other than the one plain assignment."""
    bound: Iterable[str] = ()
    if isinstance(node, ast.Name) and not isinstance(node.ctx, ast.Load):
        bound = [node.id]
    elif isinstance(node, ast.Import | ast.ImportFrom):
        bound = [(alias.asname or alias.name).split(".")[0] for alias in node.names]
    elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
        bound = [node.name]
    elif isinstance(node, ast.ExceptHandler | ast.MatchAs | ast.MatchStar):
        bound = [node.name] if node.name else []
    elif isinstance(node, ast.MatchMapping):
        bound = [node.rest] if node.rest else []
    elif isinstance(node, ast.AnnAssign) and node.value is None:
        bound = [node.target.id] if isinstance(node.target, ast.Name) else []
    for name in bound:
        if name in _NAMES:
            raise _Unsure(f"{path}: {name} is bound by a {type(node).__name__}")


def _checked(values: dict[str, object], path: str) -> _Entry:
    revision = values.get("revision")
    if not isinstance(revision, str) or "down_revision" not in values:
        raise _Unsure(f"{path}: no literal revision id and down_revision")
    entry = _Entry(
        revision,
        _ids(values["down_revision"], path),
        _ids(values.get("depends_on"), path),
        _ids(values.get("branch_labels"), path),
    )
    for value in (revision, *entry.down, *entry.depends_on, *entry.labels):
        if not _ID.match(value) or value in _RESERVED:
            raise _Unsure(f"{path}: {value!r} is not an id the reader vouches for")
    return entry


def _ids(value: object, path: str) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str):
        return (value,)
    if isinstance(value, tuple | list) and all(isinstance(item, str) for item in value):
        if len(set(value)) != len(value):
            raise _Unsure(f"{path}: the same id twice in one assignment")
        return tuple(value)
    raise _Unsure(f"{path}: a value that is not a string, None, or a tuple of strings")


# --- the graph -----------------------------------------------------------------------------


def _graph(entries: list[_Entry]) -> StaticRevisions:
    if not entries:
        raise _Unsure("no revision files")
    by_id: dict[str, _Entry] = {}
    for entry in entries:
        if entry.revision in by_id:
            raise _Unsure(f"revision {entry.revision} is defined twice")
        by_id[entry.revision] = entry
    labels: set[str] = set()
    for entry in entries:
        for label in entry.labels:
            if label in labels or label in by_id:
                raise _Unsure(f"branch label {label} is used twice or is a revision id")
            labels.add(label)
    children: dict[str, int] = dict.fromkeys(by_id, 0)
    for entry in entries:
        for parent in (*entry.down, *entry.depends_on):
            if parent not in by_id:
                raise _Unsure(f"revision {entry.revision} names {parent}, which no file defines")
            children[parent] += 1
    # Kahn's algorithm over down_revision and depends_on: a cycle leaves revisions behind.
    waiting = dict(children)
    ready = [revision for revision, count in waiting.items() if count == 0]
    seen = 0
    while ready:
        entry = by_id[ready.pop()]
        seen += 1
        for parent in (*entry.down, *entry.depends_on):
            waiting[parent] -= 1
            if waiting[parent] == 0:
                ready.append(parent)
    if seen != len(by_id):
        raise _Unsure("the revisions form a cycle")
    versioned = {parent for entry in entries for parent in entry.down}
    heads = tuple(sorted(revision for revision in by_id if revision not in versioned))
    return StaticRevisions(heads=heads, revisions=frozenset(by_id))


def known_heads(alembic_ini: Path | str) -> Manifest | StaticRevisions | None:
    """The heads without Alembic: a fresh heads manifest (``freeze``) when there is one,
    else the revision files' text when the reader is certain, else None."""
    files = script_files(Path(alembic_ini))
    manifest = read_manifest(files) if files is not None else None
    return manifest or read_revisions(alembic_ini)
