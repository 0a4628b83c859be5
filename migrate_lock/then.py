"""The bootstrap step: the application's own code, run once per change under the lock.

``migrate-lock run --then 'python initial_data.py' -- SERVER`` (``upgrade --then``,
``MIGRATE_THEN``; ``upgrade(then=callable)`` in Python) runs the application's bootstrap
code (the first superuser, defaults computed in code) after the revisions and the seeds,
**while this process still holds the migration lock**: no other replica migrates, seeds or
runs it at the same time, and a replica that waited for the lock finds it done.

When it runs (``due``): on every start with ``MIGRATE_THEN_ALWAYS``; else when this start
applied revisions or seed files, or when the step's fingerprint differs from the one
recorded after its last successful run. The fingerprint covers the command's text (a
function's name and source), the files named in ``MIGRATE_THEN_FILES``, this code's heads
and the seed files' checksums: so a new release that migrates, changes a seed file, the
command or one of its files runs it again, and a failed run (nothing recorded) is retried
by the next start. Only a database exactly at this code's heads runs it (as for seeds: an
older replica of a rolling deploy never runs its older step against a newer schema).

The record is one row per application in ``"migrate_lock"."then_runs"``, keyed by the
qualified version table like the seed checksums. Light on purpose (standard library only,
the connection typed on ``lean.abc``): the at-head path reads that row with its own SQL
before it may say "nothing to do".
"""

from __future__ import annotations

import hashlib
import os
import selectors
import signal
import subprocess
import sys
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from migrate_lock.errors import ConfigError, ThenFailed, first_line
from migrate_lock.logs import log
from migrate_lock.version_table import (
    OWN_SCHEMA,
    create_if_missing,
    ensure_own_schema,
    existing,
)

if TYPE_CHECKING:
    from migrate_lock.lean.abc import LockConnection
    from migrate_lock.lean.settings_schema import LeanSettings
    from migrate_lock.seeds.files import SeedFile
    from migrate_lock.version_table import VersionTable

#: Our record of the step's last successful run, one row per application (version table).
THEN_TABLE = f'"{OWN_SCHEMA}"."then_runs"'

#: Why the step runs (None from ``decide``: it does not).
Reason = Literal["always", "migrated", "seeded", "never_ran", "changed"]

#: How much of the command's stderr the failure line quotes (its end).
TAIL_LINES = 5
TAIL_CHARS = 400
#: How long a command gets to stop after SIGTERM when this process is interrupted.
STOP_GRACE_SECONDS = 10.0
#: Directories under a MIGRATE_THEN_FILES directory that never count.
_SKIPPED_DIRS = frozenset({"__pycache__", ".git", ".mypy_cache", ".pytest_cache", ".ruff_cache"})


_RETRY_HINT = (
    "the revisions and seeds of this start stay applied; the step's run was not recorded, "
    "so the next start runs it again: fix it and redeploy"
)


@dataclass(frozen=True)
class Then:
    """The step: a shell ``command`` (MIGRATE_THEN) or a Python ``function`` (no arguments).

    ``files`` (MIGRATE_THEN_FILES) count in the fingerprint; ``always``
    (MIGRATE_THEN_ALWAYS) runs it on every start, one replica after the other.
    """

    command: str | None = None
    function: Callable[[], object] | None = None
    files: tuple[Path, ...] = ()
    always: bool = False

    @property
    def label(self) -> str:
        """How logs and errors name the step (scrubbed where printed)."""
        if self.function is not None:
            return _function_name(self.function)
        # The program only, as run.exec logs it: arguments may carry what is not ours to print.
        words = (self.command or "").split()
        program = os.path.basename(words[0]) if words else ""
        return program + (" …" if len(words) > 1 else "")

    def fingerprint(self, heads: Iterable[str], seeds: Sequence[SeedFile]) -> str:
        """What the last successful run is recorded as: the step, its files, the heads and
        the seed files it ran after. ConfigError (exit 78) for a declared file that is
        missing or unreadable."""
        digest = hashlib.sha256(b"migrate-lock then v1\0")
        if self.function is not None:
            digest.update(b"function\0" + _function_identity(self.function).encode() + b"\0")
        else:
            digest.update(b"command\0" + (self.command or "").encode() + b"\0")
        for path, content in _file_digests(self.files):
            digest.update(f"file\0{path}\0{content}\0".encode())
        digest.update(("heads\0" + ",".join(sorted(heads)) + "\0").encode())
        for seed in sorted(seeds, key=lambda seed: seed.name):
            digest.update(f"seed\0{seed.name}\0{seed.checksum}\0".encode())
        return "sha256:" + digest.hexdigest()


def then_step(settings: LeanSettings, function: Callable[[], object] | None = None) -> Then | None:
    """The step this start has, from the settings (or ``function``, which wins over
    MIGRATE_THEN: the caller's argument beats the environment). None: no step."""
    command = (settings.migrate_then or "").strip() or None
    if function is None and command is None:
        return None
    return Then(
        command=None if function is not None else command,
        function=function,
        files=parse_files(settings.migrate_then_files),
        always=settings.migrate_then_always,
    )


def parse_files(text: str | None) -> tuple[Path, ...]:
    """MIGRATE_THEN_FILES: paths separated by commas or blanks (relative: to the current
    directory), in the order given, each once."""
    names = (text or "").replace(",", " ").split()
    return tuple(Path(name) for name in dict.fromkeys(names))


def decide(
    then: Then,
    *,
    fingerprint: str,
    recorded: str | None,
    migrated: bool = False,
    seeded: bool = False,
) -> Reason | None:
    """Why the step runs now, or None when it does not (the decision, without I/O)."""
    if then.always:
        return "always"
    if migrated:
        return "migrated"
    if seeded:
        return "seeded"
    if recorded is None:
        return "never_ran"
    if recorded != fingerprint:
        return "changed"
    return None


def recorded_fingerprint(connection: LockConnection, table: VersionTable) -> str | None:
    """The fingerprint of the step's last successful run on ``table``'s application."""
    (present,) = existing(connection, THEN_TABLE)
    if not present:
        return None
    row = connection.execute(
        f"SELECT fingerprint FROM {THEN_TABLE} WHERE version_table = %s", (table.key,)
    ).fetchone()
    return str(row[0]) if row and row[0] is not None else None


@dataclass(frozen=True)
class ThenStep:
    """The step of one start, with its fingerprint (computed once per start)."""

    then: Then
    fingerprint: str

    def due(self, connection: LockConnection, table: VersionTable) -> bool:
        """Whether a start that finds the database at this code's heads (nothing to
        migrate or seed) still has the step to run: both paths' at-head checks, and their
        waiters, ask it before they may say "nothing to do"."""
        recorded = None if self.then.always else recorded_fingerprint(connection, table)
        return decide(self.then, fingerprint=self.fingerprint, recorded=recorded) is not None

    def run(
        self, connection: LockConnection, table: VersionTable, *, migrated: bool, seeded: bool
    ) -> Reason | None:
        """Run the step if it is due, holding the lock on ``connection`` (session scope, no
        transaction open), and record it: the reason it ran, or None. ThenFailed (exit 1)
        when it fails; then nothing is recorded."""
        then = self.then
        recorded = None if then.always else recorded_fingerprint(connection, table)
        reason = decide(
            then, fingerprint=self.fingerprint, recorded=recorded, migrated=migrated, seeded=seeded
        )
        if reason is None:
            return None
        log.info("then.start", step=then.label, reason=reason)
        started = time.monotonic()
        if then.function is not None:
            _call(then.function)
        else:
            run_command(then.command or "")
        duration_ms = round((time.monotonic() - started) * 1000)
        record(connection, table, self.fingerprint, duration_ms)
        log.info("then.done", step=then.label, reason=reason, duration_ms=duration_ms)
        return reason


def prepare(
    settings: LeanSettings,
    heads: Iterable[str],
    seeds: Sequence[SeedFile],
    function: Callable[[], object] | None = None,
) -> ThenStep | None:
    """This start's step for an upgrade to ``heads`` (None: there is none). ConfigError
    (exit 78) for a MIGRATE_THEN_FILES entry that is missing or unreadable."""
    then = then_step(settings, function)
    return None if then is None else ThenStep(then, then.fingerprint(heads, seeds))


def refuse_in_transaction_scope(reason: str) -> ConfigError:
    """The step cannot run in the transaction lock scope: its own connection would not see
    the schema before the lock's transaction commits, and the commit ends the lock."""
    return ConfigError(
        "MIGRATE_THEN (--then, upgrade(then=...)) cannot run in the transaction lock scope "
        f"({reason}): the step's connection would not see this start's schema until the "
        "commit that ends the lock; nothing was run",
        hint="set MIGRATION_DATABASE_URL to a direct connection to PostgreSQL and "
        "MIGRATION_LOCK_SCOPE=session (the application itself may keep the pooler)",
    )


def record(
    connection: LockConnection, table: VersionTable, fingerprint: str, duration_ms: int
) -> None:
    """Remember the step's successful run (creating our schema and table on first use)."""
    ensure_own_schema(connection)
    create_if_missing(
        connection,
        f"CREATE TABLE IF NOT EXISTS {THEN_TABLE} ("
        " version_table text PRIMARY KEY,"
        " fingerprint text NOT NULL,"
        " ran_at timestamptz NOT NULL DEFAULT now(),"
        " duration_ms bigint NOT NULL DEFAULT 0)",
    )
    connection.execute(
        f"INSERT INTO {THEN_TABLE} (version_table, fingerprint, duration_ms)"
        " VALUES (%s, %s, %s) ON CONFLICT (version_table) DO UPDATE SET"
        " fingerprint = EXCLUDED.fingerprint, ran_at = now(), duration_ms = EXCLUDED.duration_ms",
        (table.key, fingerprint, duration_ms),
    )


# --- running it ----------------------------------------------------------------------------


def run_command(command: str) -> None:
    """Run ``command`` with ``/bin/sh -c``, in this process's environment and directory.

    Its stdout and stderr are passed on to this process's stderr line by line (scrubbed of
    known secrets; stdout stays free for ``--json``). ThenFailed (exit 1) when it exits
    non-zero, quoting the end of its stderr. If this process is interrupted (SIGTERM,
    SIGINT), the command gets SIGTERM, then SIGKILL after ``STOP_GRACE_SECONDS``.
    """
    try:
        process = subprocess.Popen(  # noqa: S602 - a shell command is what MIGRATE_THEN is
            command,
            shell=True,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=dict(os.environ),
        )
    except OSError as error:
        raise ThenFailed(
            f"cannot start the MIGRATE_THEN step `{log.scrub(Then(command=command).label)}`: "
            f"{error.strerror or error}",
            hint="check MIGRATE_THEN / --then",
        ) from None
    tail: deque[str] = deque(maxlen=TAIL_LINES)
    try:
        _pass_on(process, tail)
        status = process.wait()
    finally:
        _stop(process)
    if status != 0:
        raise ThenFailed(
            f"the MIGRATE_THEN step `{log.scrub(Then(command=command).label)}` (run holding "
            f"the migration lock) {_how_it_ended(status)}: {_tail_text(tail)}",
            hint=_RETRY_HINT,
            exit_status=status,
            stderr_tail=_tail_text(tail),
        )


def _pass_on(process: subprocess.Popen[bytes], tail: deque[str]) -> None:
    """Copy the command's output to our stderr as it comes; keep stderr's last lines."""
    assert process.stdout is not None and process.stderr is not None
    stderr = process.stderr.fileno()
    pending = {process.stdout.fileno(): bytearray(), stderr: bytearray()}
    with selectors.DefaultSelector() as selector:
        for fd in pending:
            selector.register(fd, selectors.EVENT_READ)
        while selector.get_map():
            for key, _ in selector.select():
                fd = key.fd
                chunk = os.read(fd, 65536)
                keep = tail if fd == stderr else None
                if not chunk:
                    selector.unregister(fd)
                    _emit(bytes(pending[fd]), keep)
                    continue
                pending[fd].extend(chunk)
                *lines, rest = pending[fd].split(b"\n")
                for line in lines:
                    _emit(bytes(line), keep)
                pending[fd][:] = rest


def _emit(line: bytes, tail: deque[str] | None) -> None:
    if not line:
        return
    text = log.scrub(line.decode("utf-8", errors="replace").rstrip("\r"))
    sys.stderr.write(text + "\n")
    sys.stderr.flush()
    if tail is not None and text.strip():
        tail.append(text.strip())


def _stop(process: subprocess.Popen[bytes]) -> None:
    """Make sure the command is gone (we were interrupted: it must not outlive the lock)."""
    if process.poll() is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=STOP_GRACE_SECONDS)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def _how_it_ended(status: int) -> str:
    if status < 0:
        try:
            name = signal.Signals(-status).name
        except ValueError:
            name = f"signal {-status}"
        return f"was killed by {name}"
    return f"failed with exit {status}"


def _tail_text(tail: Iterable[str]) -> str:
    text = " | ".join(tail)
    if not text:
        return "(nothing on stderr)"
    return text if len(text) <= TAIL_CHARS else "..." + text[-(TAIL_CHARS - 3) :]


def _call(function: Callable[[], object]) -> None:
    """Call the Python step; its exception is the application's code failing (exit 1)."""
    try:
        function()
    except (Exception, SystemExit) as error:  # noqa: BLE001 - the application's, any
        raise ThenFailed(
            f"the step {_function_name(function)} (run holding the migration lock) raised "
            f"{log.scrub(first_line(error))}",
            hint=_RETRY_HINT,
        ) from None


def _function_name(function: Callable[[], object]) -> str:
    module = getattr(function, "__module__", None) or "?"
    name = getattr(function, "__qualname__", None) or type(function).__qualname__
    return f"{module}.{name}()"


def _function_identity(function: Callable[[], object]) -> str:
    """A function's name and, where Python can find it, its source code: editing the
    function runs it again, as changing MIGRATE_THEN's text does."""
    import inspect  # noqa: PLC0415 - only a Python step needs it; the at-head path stays light

    try:
        source = inspect.getsource(function)
    except (OSError, TypeError):
        source = ""
    return f"{_function_name(function)}\0{source}"


def _file_digests(paths: Sequence[Path]) -> Iterator[tuple[str, str]]:
    for path in paths:
        if path.is_dir():
            found = sorted(_files_under(path))
            if not found:
                yield str(path), "empty directory"
            for file in found:
                yield str(file), _digest(file)
        elif path.is_file():
            yield str(path), _digest(path)
        else:
            raise ConfigError(
                f"MIGRATE_THEN_FILES names {str(path)!r}, which is not a file or directory "
                f"(from {Path.cwd()})",
                hint="list the files the step reads, relative to the current directory",
            )


def _files_under(directory: Path) -> Iterator[Path]:
    for root, dirs, files in os.walk(directory):
        dirs[:] = [name for name in dirs if name not in _SKIPPED_DIRS]
        for name in files:
            if not name.endswith((".pyc", ".pyo")):
                yield Path(root) / name


def _digest(path: Path) -> str:
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError as error:
        raise ConfigError(
            f"MIGRATE_THEN_FILES: cannot read {str(path)!r}: {error.strerror or error}",
            hint="list the files the step reads, readable by this process",
        ) from None
