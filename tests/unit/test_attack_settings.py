"""Odd but legal settings an operator meets, read alike by both paths (issue 15, item 3 and 5).

Found by attacking the environment aliases, ``.env`` discovery and secrets from files:
each test says what went wrong before.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any
from unittest import mock

import pytest

from migrate_lock.errors import ConfigError
from migrate_lock.guard import check_startup
from migrate_lock.lean.settings_schema import dotenv_path, read_dotenv, read_settings
from migrate_lock.settings import load_settings

pytestmark = pytest.mark.unit

URL = "postgresql://app:n0t-A-placeh0lder@db.internal:5432/app"


def both(**overrides: Any) -> tuple[Any, Any]:
    """The settings as the full path and the lean path read them (the lean one must not
    defer here)."""
    lean = read_settings(os.environ, read_dotenv(dotenv_path(os.environ, overrides)), overrides)
    return load_settings(**overrides), lean


def test_our_name_in_dotenv_never_lowers_a_stricter_environment_value(cwd: Path) -> None:
    """Why: a developer's .env (MIGRATE_LOCK_ENVIRONMENT=development) left on a server whose
    environment says ENVIRONMENT=production turned production's checks off: a placeholder
    password and localhost were accepted."""
    (cwd / ".env").write_text("MIGRATE_LOCK_ENVIRONMENT=development\n")
    os.environ.update(ENVIRONMENT="production", DATABASE_URL=URL)
    full, lean = both()
    assert full.environment == lean.environment == "production"
    placeholder = URL.replace("n0t-A-placeh0lder", "changethis")
    os.environ.update(APP_ENV="prod", ENVIRONMENT="", DATABASE_URL=placeholder)
    full, lean = both()
    assert full.environment == lean.environment == "production"
    with pytest.raises(ConfigError, match="placeholder password"):
        check_startup(lean)
    os.environ.update(ENVIRONMENT="preview-42", APP_ENV="production")  # one unknown, one known
    full, lean = both()
    assert full.environment == lean.environment == "production"


def test_our_name_in_dotenv_still_beats_a_milder_or_unknown_environment_value(
    cwd: Path,
) -> None:
    """What holds: .env's MIGRATE_LOCK_ENVIRONMENT maps an application value we do not know,
    or raises a milder one; in the environment, ours is the operator's word."""
    (cwd / ".env").write_text("MIGRATE_LOCK_ENVIRONMENT=staging\n")
    cases = (("preview-42", "staging"), ("local", "staging"), ("prod", "production"))
    for value, expected in cases:
        os.environ["ENVIRONMENT"] = value
        full, lean = both()
        assert full.environment == lean.environment == expected, value
    os.environ.update(MIGRATE_LOCK_ENVIRONMENT="development", ENVIRONMENT="production")
    full, lean = both()
    assert full.environment == lean.environment == "development"


@pytest.mark.parametrize("ending", ["\n", "\r\n", "", "\n\n"])
def test_a_secret_file_written_with_a_byte_order_mark_holds_the_url(cwd: Path, ending: str) -> None:
    """Why: a secret file saved by a Windows editor (or PowerShell's -Encoding utf8) starts
    with a BOM: exit 78 "got scheme '\\ufeffpostgresql'" (an invisible character) on the
    full path, while the lean reader handed the BOM on as part of the URL."""
    (cwd / "url").write_bytes(b"\xef\xbb\xbf" + (URL + ending).encode())
    os.environ["DATABASE_URL_FILE"] = str(cwd / "url")
    full, lean = both()
    assert full.database_url == lean.database_url == URL


def test_a_losing_source_s_secret_file_is_not_read(cwd: Path) -> None:
    """Why: .env's DATABASE_URL_FILE=/run/secrets/db (for the container) made every verb
    exit 78 on a laptop that exports DATABASE_URL, and so did --database-url beside a
    DATABASE_URL_FILE naming a secret not mounted here: the value that loses was read."""
    (cwd / ".env").write_text("DATABASE_URL_FILE=/run/secrets/not-mounted-here\n")
    os.environ["DATABASE_URL"] = URL
    full, lean = both()
    assert full.database_url == lean.database_url == URL
    del os.environ["DATABASE_URL"]
    os.environ["MIGRATION_DATABASE_URL_FILE"] = "/run/secrets/not-mounted-either"
    full, lean = both(database_url=URL)
    assert full.database_url == lean.database_url == URL
    assert full.migration_database_url is lean.migration_database_url is None
    with pytest.raises(ConfigError, match="not-mounted-here, which cannot be read"):
        load_settings()  # the file that counts must still be readable


def test_a_directory_above_that_may_not_be_searched_is_one_line_not_a_traceback(
    cwd: Path,
) -> None:
    """Why: run from a directory whose parent has no search (x) permission for this user,
    every verb died with a PermissionError traceback (exit 1): .env was looked up by
    absolute path, through that parent, even in the current directory itself.

    The filesystem is modelled (the suite may run as root, which ignores permissions):
    a path that goes through ``cwd`` (the parent) from above or from below raises EACCES.
    """
    here = cwd / "backend"
    here.mkdir()
    os.chdir(here)
    real_stat = os.stat

    def stat(path: Any, *args: Any, **kwargs: Any) -> os.stat_result:
        text = os.fspath(path)
        through_parent = text.startswith(str(cwd) + os.sep) or text.startswith("..")
        if through_parent:
            raise PermissionError(13, "Permission denied", text)
        return real_stat(path, *args, **kwargs)

    with mock.patch("os.stat", stat):
        with pytest.raises(ConfigError) as raised:
            load_settings()
        assert str(raised.value).startswith(f"cannot look for .env in {cwd} (Permission denied)")
        assert "set ENV_FILE" in str(raised.value)
        (here / ".env").write_text(f"DATABASE_URL={URL}\n")  # its own .env: found, read
        full, lean = both()
    assert full.database_url == lean.database_url == URL


def test_a_secret_file_that_is_a_pipe_is_read_once(cwd: Path) -> None:
    """Why: DATABASE_URL_FILE=<(vault read …) (a pipe): the lean path read it, deferred to
    the full path (the database was not at head), which found it empty: exit 78 "names
    /dev/fd/63, which is empty"."""
    reader, writer = os.pipe()
    try:
        os.write(writer, (URL + "\n").encode())
        os.close(writer)
        os.environ["DATABASE_URL_FILE"] = f"/dev/fd/{reader}"
        full, lean = both()
        assert full.database_url == lean.database_url == URL
        assert load_settings().database_url == URL  # and again
    finally:
        os.close(reader)


@pytest.mark.parametrize("named", ["/dev/null", "/dev/stdin"])
def test_an_env_file_that_is_a_device_or_a_pipe_is_not_said_to_be_missing(
    cwd: Path, named: str
) -> None:
    """Why: `--env-file /dev/null` or `ENV_FILE=<(…)` was refused as "a file that does not
    exist", which it plainly does."""
    os.environ["ENV_FILE"] = named
    with pytest.raises(ConfigError) as raised:
        load_settings()
    assert f"ENV_FILE names {named}, not a regular file" in str(raised.value)
    assert "does not exist" not in str(raised.value)


def test_a_malformed_url_from_a_secret_file_says_it_came_from_the_file(cwd: Path) -> None:
    """Why: a secret file with a second line (a comment, a stray line) was reported as
    "DATABASE_URL is malformed" while DATABASE_URL was not set anywhere."""
    (cwd / "url").write_text(URL + "\n# rotated 2026-11-30\n")
    os.environ["DATABASE_URL_FILE"] = str(cwd / "url")
    with pytest.raises(ConfigError) as raised:
        load_settings()
    assert str(raised.value).startswith("DATABASE_URL (from DATABASE_URL_FILE) is ")
    assert "n0t-A-placeh0lder" not in str(raised.value)
    os.environ.update(DATABASE_URL_FILE="", DATABASE_URL="postgres://app@db/app?sslmode=bad")
    with pytest.raises(ConfigError, match=r"^DATABASE_URL is malformed"):
        load_settings()
