"""docker-entrypoint.sh reads ENTRYPOINT_PASSTHROUGH as migrate-lock reads it, without Python.

The script decides before Python starts which commands skip the migration; if it read the
variable by another rule than ``migrate-lock run``, a container would migrate (or not)
depending on which of the two looked first.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from migrate_lock.lean.settings_schema import read_field

pytestmark = pytest.mark.unit

SCRIPT = Path(__file__).resolve().parents[2] / "entrypoints" / "docker-entrypoint.sh"
COMMANDS = ("migrate-lock", "alembic", "sh", "bash", "none", "NONE", "gunicorn")
#: Python's whitespace in ASCII (what str.strip() and str.split() remove), and commas.
SEPARATORS = (" ", "\t", "\n", "\r", "\x0b", "\x0c", "\x1c", "\x1f", ",", " , ", ",,")


@pytest.fixture(scope="module")
def stubs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Every command prints its first argument: ``probe`` when the script exec'd it as it
    is, ``run`` when it handed it to ``migrate-lock run --`` (a stub here too)."""
    directory = tmp_path_factory.mktemp("bin")
    for name in COMMANDS:
        stub = directory / name
        stub.write_text('#!/bin/sh\nprintf "%s\\n" "$1"\n')
        stub.chmod(0o755)
    return directory


def script_passes_through(stubs: Path, command: str, value: str | None, shell: str) -> bool:
    env = {"PATH": f"{stubs}:/usr/bin:/bin"}
    if value is not None:
        env["ENTRYPOINT_PASSTHROUGH"] = value
    result = subprocess.run(
        [str(shutil.which(shell)), str(SCRIPT), str(stubs / command), "probe"],
        cwd=stubs,
        env=env,
        capture_output=True,
        text=True,
        timeout=10,
        check=False,
    )
    assert result.returncode == 0 and result.stderr == "", result
    assert result.stdout in ("probe\n", "run\n"), result
    return result.stdout == "probe\n"


def run_passes_through(command: str, value: str | None) -> bool:
    """What ``migrate-lock run`` decides: the settings' reading of the same variable."""
    environ = {} if value is None else {"ENTRYPOINT_PASSTHROUGH": value}
    try:
        names = read_field("entrypoint_passthrough", environ)
    except ValueError:
        return False  # run refuses the value (exit 78): nothing may pass through first
    return command in str(names).split()


values = st.one_of(
    st.none(),
    st.builds(
        lambda lead, words: lead + "".join(word + separator for word, separator in words),
        st.lists(st.sampled_from(SEPARATORS), max_size=2).map("".join),
        st.lists(
            st.tuples(
                st.sampled_from((*COMMANDS, "/bin/sh", "bin/sh", "None")),
                st.sampled_from(SEPARATORS),
            ),
            max_size=3,
        ),
    ),
)


@pytest.mark.parametrize("shell", ["sh", "bash"])
@settings(max_examples=60, deadline=None)
@given(command=st.sampled_from(COMMANDS), value=values)
@example(command="alembic", value=None)
@example(command="alembic", value="")
@example(command="migrate-lock", value=" \t ")
@example(command="alembic", value="none")
@example(command="none", value=" none ")
@example(command="sh", value="none, sh")
@example(command="sh", value="sh /bin/sh")
@example(command="sh", value="\rsh\r")
def test_the_script_reads_entrypoint_passthrough_as_the_settings_do(
    stubs: Path, shell: str, command: str, value: str | None
) -> None:
    """Blank is the default, ``none`` alone is no command, whitespace around names is
    ignored, a path makes the value wrong (run reports it): the script agrees on each."""
    assert script_passes_through(stubs, command, value, shell) == run_passes_through(command, value)


@pytest.mark.parametrize("value", ["", "  ", "\t\n"], ids=["empty", "spaces", "tab_newline"])
def test_a_blank_passthrough_is_the_default_in_the_script(stubs: Path, value: str) -> None:
    """Why: ``ENTRYPOINT_PASSTHROUGH=`` (a blank line in a compose file) passed nothing
    through in the script while ``migrate-lock run`` read it as the default list."""
    assert script_passes_through(stubs, "alembic", value, "sh")
    assert script_passes_through(stubs, "migrate-lock", value, "sh")


def test_none_passes_no_command_through_in_the_script(stubs: Path) -> None:
    """Why: ``none`` is the documented way to migrate before every command."""
    assert not script_passes_through(stubs, "alembic", " none ", "sh")
    assert not script_passes_through(stubs, "none", "none", "sh")
