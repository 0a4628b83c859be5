"""A long generated history (issue 18, "Done when"; issue 16, item 1).

320 revisions like those of large real projects: branches and merges, a branch label, a
``depends_on``, annotated assignments (Alembic's newer template), files without the
``branch_labels``/``depends_on`` lines (older ones), hexadecimal ids in file names that do
not sort in revision order. Every verb works on it, and at head without ``freeze`` both
``upgrade`` and ``status`` answer from the revision files' text, loading neither Alembic
nor SQLAlchemy. One project and one database for the module (copied per test).
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from alembic.config import Config
from alembic.script import ScriptDirectory
from conftest import Server, copy_database, fresh_database

import migrate_lock
from migrate_lock import project as project_module
from migrate_lock.dsn import parse_database_url
from migrate_lock.scaffold import init_project
from migrate_lock.settings import load_settings

from support import cli_env, query, run_cli

COUNT = 320
HEAVY = ("alembic", "sqlalchemy", "psycopg", "pydantic")


def rev_id(number: int) -> str:
    return "0001" if number == 1 else hashlib.sha1(str(number).encode()).hexdigest()[:12]


def revision_source(number: int, down: str | tuple[str, ...], **more: Any) -> str:
    rev = rev_id(number)
    style = number % 3
    note = ": str" if style == 0 else ""
    union = ": Union[str, Sequence[str], None]" if style == 0 else ""
    body = f"op.execute('CREATE TABLE big_{number} (id int)')" if number % 20 == 0 else "pass"
    lines = [
        f'"""step {number}\n\nRevision ID: {rev}\nRevises: {down}\nCreate Date: 2026-01-01\n"""',
        "from typing import Sequence, Union" if style == 0 else "",
        "",
        "from alembic import op",
        "import sqlalchemy as sa",
        "",
        "# revision identifiers, used by Alembic.",
        f"revision{note} = {rev!r}",
        f"down_revision{union} = {down!r}",
    ]
    if style != 1 or more:  # style 1: an older template, no branch_labels/depends_on lines
        lines.append(f"branch_labels{union} = {more.get('labels')!r}")
        lines.append(f"depends_on{union} = {more.get('depends_on')!r}")
    lines += ["", "", "def upgrade() -> None:", f"    {body}", "", "", "def downgrade() -> None:"]
    lines.append(f"    op.execute('DROP TABLE big_{number}')" if number % 20 == 0 else "    pass")
    return "\n".join(lines) + "\n"


def write_long_history(path: Path) -> str:
    """The example baseline, then revisions 2..COUNT: a chain that forks every 40 revisions
    into two branches of three that a merge joins. Returns the head."""
    init_project(path)
    versions = path / "migrations" / "versions"
    down: str | tuple[str, ...] = rev_id(1)
    number = 2
    while number <= COUNT:
        more: dict[str, Any] = {}
        if number == 100:
            more["labels"] = ("reports",)
        if number == 200:
            more["depends_on"] = rev_id(150)
        if number % 40 == 0 and number + 7 <= COUNT:
            fork = down
            left = [number, number + 1, number + 2]
            right = [number + 3, number + 4, number + 5]
            for branch in (left, right):
                parent = fork
                for step in branch:
                    (versions / f"{rev_id(step)}_step.py").write_text(
                        revision_source(step, parent, **(more if step == number else {}))
                    )
                    parent = rev_id(step)
            merge = number + 6
            down = (rev_id(left[-1]), rev_id(right[-1]))
            (versions / f"{rev_id(merge)}_merge.py").write_text(revision_source(merge, down))
            down = rev_id(merge)
            number = merge + 1
            continue
        (versions / f"{rev_id(number)}_step.py").write_text(revision_source(number, down, **more))
        down = rev_id(number)
        number += 1
    assert isinstance(down, str)
    return down


@pytest.fixture(scope="module")
def big_project(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    path = tmp_path_factory.mktemp("big") / "project"
    head = write_long_history(path)
    return path, head


@pytest.fixture(scope="module")
def big_template(pg_server: Server, big_project: tuple[Path, str]) -> Iterator[str]:
    """A database that a real ``upgrade`` brought from empty to the head (the upgrade
    verb's test: it must work, each revision once)."""
    path, head = big_project
    with fresh_database(pg_server) as url:
        result = run_cli(["upgrade", "--json"], cwd=path, database_url=url, timeout=600)
        assert result.returncode == 0, result.stderr
        done = json.loads(result.stdout)
        assert done["to_revisions"] == [head]
        assert len(done["applied"]) == COUNT
        yield parse_database_url(url).database


@pytest.fixture
def big_at_head(pg_server: Server, database_url: str, big_template: str) -> str:
    return copy_database(pg_server, database_url, big_template)


def test_the_generated_history_is_what_it_claims(big_project: tuple[Path, str]) -> None:
    path, head = big_project
    script = ScriptDirectory.from_config(Config(str(path / "alembic.ini")))
    revisions = list(script.walk_revisions("base", "heads"))

    assert len(revisions) >= 300
    assert sum(1 for r in revisions if r.is_merge_point) >= 5
    assert tuple(script.get_heads()) == (head,)
    sources = [p.read_text() for p in (path / "migrations" / "versions").glob("*.py")]
    assert sum("revision: str =" in s for s in sources) >= 100
    assert sum("branch_labels" not in s for s in sources) >= 100
    from migrate_lock.lean.static_revisions import read_revisions

    found = read_revisions(path / "alembic.ini")
    assert found is not None
    assert (found.heads, found.revisions) == ((head,), frozenset(r.revision for r in revisions))


def test_every_verb_works_on_it(
    pg_server: Server, big_project: tuple[Path, str], big_at_head: str
) -> None:
    path, head = big_project
    url = big_at_head

    def cli(*args: str, database: str = url) -> subprocess.CompletedProcess[str]:
        started = time.monotonic()
        result = run_cli(list(args), cwd=path, database_url=database, timeout=300)
        print(f"{' '.join(args)}: {time.monotonic() - started:.1f} s")
        assert result.returncode == 0, (args, result.stderr)
        return result

    with fresh_database(pg_server) as empty:
        plan = json.loads(cli("plan", "--no-sql", "--json", database=empty).stdout)
        assert len(plan["pending"]) == COUNT, plan["status"]
        status = run_cli(["status", "--json"], cwd=path, database_url=empty)
        assert status.returncode == 4, status.stderr
        assert len(json.loads(status.stdout)["pending"]) == COUNT

    assert cli("heads").stdout.split() == [head]
    assert cli("current").stdout.split() == [head]
    history = cli("history").stdout
    assert history.count("(mergepoint)") >= 5 and "(branchpoint)" in history
    assert "reports" in history
    status = json.loads(cli("status", "--json").stdout)
    assert (status["status"], status["heads"]) == ("at_head", [head])
    assert json.loads(cli("plan", "--no-sql", "--json").stdout)["pending"] == []
    cli("lint")
    cli("freeze")
    try:
        assert json.loads(cli("status", "--json").stdout)["status"] == "at_head"
    finally:  # the other tests read this project without a manifest
        (path / "migrations" / "migrate-lock.heads.json").unlink()
    tables = "SELECT count(*) FROM pg_tables WHERE left(tablename, 4) = 'big_'"
    assert query(url, tables) == [(COUNT // 20,)]


def loaded_modules(path: Path, url: str, *args: str) -> tuple[int, list[str], str]:
    """Run ``migrate-lock ARGS`` in a process that reports, on exit, which of HEAVY it
    had loaded (the CLI's own exit code, those modules, its stderr)."""
    code = (
        "import atexit, sys\n"
        f"heavy = {HEAVY!r}\n"
        "atexit.register(lambda: print('LOADED', sorted({m.split('.')[0] for m in sys.modules}"
        " & set(heavy)), file=sys.stderr))\n"
        "from migrate_lock.cli import main\n"
        f"main({list(args)!r})\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        cwd=path,
        env=cli_env(url, LOG_FORMAT="json"),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    line = next(x for x in result.stderr.splitlines() if x.startswith("LOADED"))
    return (
        result.returncode,
        json.loads(line.removeprefix("LOADED ").replace("'", '"')),
        result.stderr,
    )


@pytest.mark.parametrize("verb", ["upgrade", "status"])
def test_at_head_without_freeze_loads_no_alembic(
    big_project: tuple[Path, str], big_at_head: str, verb: str
) -> None:
    """Why (issue 16 item 1, issue 18 item 6): without a build step, a replica at head and
    a ``status`` probe paid for importing Alembic and SQLAlchemy (0.5-0.7 CPU-s); the
    revision files' text says the heads."""
    path, _ = big_project
    assert not (path / "migrations" / "migrate-lock.heads.json").exists()

    code, loaded, stderr = loaded_modules(path, big_at_head, verb)

    assert code == 0, stderr
    assert loaded == [], stderr
    if verb == "upgrade":
        assert '"heads_from": "revision_files"' in stderr


def test_a_pending_revision_is_never_hidden(
    big_project: tuple[Path, str], big_at_head: str, tmp_path: Path
) -> None:
    """Why: the at-head answer without a manifest must see a new revision file, and one
    the reader cannot vouch for (a computed id) must send the decision to Alembic."""
    path, head = big_project
    copy = tmp_path / "project"
    subprocess.run(["cp", "-r", str(path), str(copy)], check=True)
    versions = copy / "migrations" / "versions"
    (versions / "ffff_computed.py").write_text(
        revision_source(COUNT + 1, head).replace(repr(rev_id(COUNT + 1)), "'ffff' + 'eeee'")
    )

    status = run_cli(["status", "--json"], cwd=copy, database_url=big_at_head)
    assert status.returncode == 4, status.stderr
    assert json.loads(status.stdout)["pending"] == ["ffffeeee"]
    done = run_cli(["upgrade", "--json"], cwd=copy, database_url=big_at_head)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["applied"] == ["ffffeeee"]


def test_readiness_without_freeze_loads_no_revision_file(
    big_project: tuple[Path, str], big_at_head: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Why (issue 18 item 6): ``schema_state()`` at head answered from the revision files'
    text, not by importing 320 files (before: on the first call of each process)."""
    path, head = big_project
    settings = load_settings(database_url=big_at_head, alembic_config=path / "alembic.ini")

    def refuse(*_: object, **__: object) -> None:
        raise AssertionError("the scripts were loaded although the reader could answer")

    monkeypatch.setattr(ScriptDirectory, "from_config", refuse)
    monkeypatch.setattr(project_module, "_LOADED", {})

    started = time.process_time()
    state = migrate_lock.schema_state(settings=settings)
    first = time.process_time() - started
    started = time.process_time()
    for _ in range(20):
        migrate_lock.schema_state(settings=settings)
    later = (time.process_time() - started) / 20

    print(
        f"schema_state CPU, {COUNT} revisions, no manifest: first {first * 1000:.1f} ms, "
        f"then {later * 1000:.2f} ms a call"
    )
    assert (state.status, state.heads) == ("at_head", (head,))
    assert later <= 0.020  # the target is 5 ms; generous on 2 shared cores
