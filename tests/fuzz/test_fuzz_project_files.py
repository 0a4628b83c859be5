"""Broken revision files and alembic.ini files: every verb that loads them exits with a
documented code and one line naming the file, never a "bug" line or a traceback
(issue 14, items 2, 7 and 10).

No database: the URL points at a closed port with no connect budget, so a verb that gets
past the files to connecting exits 75 at once.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from .harness import NO_SERVER, Secret, check, copy_of, examples, run
from .strategies import MARK_END, MARK_START, broken_ini_files, broken_revisions

#: The verbs that load the scripts (and `env show`, `run`, which load settings first).
VERBS = [
    ["status"],
    ["heads"],
    ["history"],
    ["upgrade"],
    ["upgrade", "--sql"],
    ["plan"],
    ["freeze"],
    ["lint"],
    ["current"],
    ["run", "--", "true"],
]
OFFLINE = {"DB_CONNECT_TIMEOUT_SECONDS": "0"}
#: alembic.ini may hold a URL with a password (INI_LINES): it is never printed either.
SECRET = Secret.of(f"{MARK_START}inTheIni{MARK_END}")


def _revision(project: Path, number: int) -> Path:
    return next((project / "migrations" / "versions").glob(f"{number:04d}_*.py"))


@examples(share=1.0)
@given(
    data=st.data(),
    which=st.sampled_from([1, 2, 3, "new"]),
    verb=st.sampled_from(VERBS),
    log_format=st.sampled_from(["text", "json"]),
)
def test_a_broken_revision_is_one_line_and_a_documented_code(
    small_project: Path, data: st.DataObject, which: int | str, verb: list[str], log_format: str
) -> None:
    with copy_of(small_project) as project:
        original = _revision(project, 2 if which == "new" else int(which))
        broken = data.draw(broken_revisions(original.read_bytes()), label="revision")
        target = project / "migrations" / "versions" / "0004_new.py" if which == "new" else original
        target.write_bytes(broken)
        result = run(
            verb, cwd=project, database_url=NO_SERVER, env={**OFFLINE, "LOG_FORMAT": log_format}
        )
    check(result, SECRET)


@examples(share=1.0)
@given(
    data=st.data(),
    verb=st.sampled_from(VERBS),
    log_format=st.sampled_from(["text", "json"]),
)
def test_a_broken_alembic_ini_is_one_line_and_a_documented_code(
    small_project: Path, data: st.DataObject, verb: list[str], log_format: str
) -> None:
    with copy_of(small_project) as project:
        ini = project / "alembic.ini"
        ini.write_bytes(data.draw(broken_ini_files(ini.read_bytes()), label="alembic.ini"))
        result = run(
            verb, cwd=project, database_url=NO_SERVER, env={**OFFLINE, "LOG_FORMAT": log_format}
        )
    check(result, SECRET)


@pytest.mark.parametrize("what", ["missing", "directory", "empty"])
def test_no_usable_alembic_ini_is_exit_78(small_project: Path, what: str) -> None:
    """The edges the strategies do not draw: no file, a directory, an empty file."""
    with copy_of(small_project) as project:
        ini = project / "alembic.ini"
        ini.unlink()
        if what == "directory":
            ini.mkdir()
        elif what == "empty":
            ini.write_bytes(b"")
        result = run(["status"], cwd=project, database_url=NO_SERVER, env=OFFLINE)
    check(result, SECRET, codes={78})
