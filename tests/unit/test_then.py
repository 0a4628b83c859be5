"""The bootstrap step's decision and fingerprint (then.py), without a database."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from migrate_lock.errors import ConfigError, ThenFailed
from migrate_lock.lean.settings_schema import read_settings
from migrate_lock.seeds.files import SeedFile
from migrate_lock.then import Then, decide, parse_files, prepare, run_command, then_step

pytestmark = pytest.mark.unit

HEADS = ("0002",)


def _seed(name: str, data: bytes) -> SeedFile:
    return SeedFile(name, Path(name), data)


def test_the_decision_says_why_or_none() -> None:
    """Why: "when does it run" is the feature; each reason must win in its order."""
    step = Then(command="python create_admin.py")
    print_ = "sha256:a"

    assert decide(step, fingerprint=print_, recorded=print_) is None
    assert decide(step, fingerprint=print_, recorded=None) == "never_ran"
    assert decide(step, fingerprint=print_, recorded="sha256:b") == "changed"
    assert decide(step, fingerprint=print_, recorded=print_, migrated=True) == "migrated"
    assert decide(step, fingerprint=print_, recorded=print_, seeded=True) == "seeded"
    always = Then(command="python create_admin.py", always=True)
    assert decide(always, fingerprint=print_, recorded=print_) == "always"


def test_the_fingerprint_changes_with_the_command_the_heads_the_seeds_and_the_files(
    tmp_path: Path,
) -> None:
    """Why: a new release (another command, new heads, a changed seed or script) must run
    the step again; a restart of the same release must not."""
    script = tmp_path / "create_admin.py"
    script.write_text("print('v1')\n")
    step = Then(command="python create_admin.py", files=(script,))
    seeds = [_seed("a.csv", b"id\n1\n")]
    base = step.fingerprint(HEADS, seeds)

    assert step.fingerprint(HEADS, list(seeds)) == base
    assert (
        Then(command="python create_admin.py 2", files=(script,)).fingerprint(HEADS, seeds) != base
    )
    assert step.fingerprint(("0003",), seeds) != base
    assert step.fingerprint(HEADS, [_seed("a.csv", b"id\n2\n")]) != base
    assert step.fingerprint(HEADS, []) != base
    script.write_text("print('v2')\n")
    assert step.fingerprint(HEADS, seeds) != base


def test_a_directory_counts_its_files_but_not_caches(tmp_path: Path) -> None:
    """Why: MIGRATE_THEN_FILES=app/ must follow the code, not Python's bytecode caches."""
    app = tmp_path / "app"
    (app / "__pycache__").mkdir(parents=True)
    (app / "data.py").write_text("X = 1\n")
    step = Then(command="python -m app.initial_data", files=(app,))
    base = step.fingerprint(HEADS, [])

    (app / "__pycache__" / "data.cpython-311.pyc").write_bytes(b"\0")
    assert step.fingerprint(HEADS, []) == base
    (app / "data.py").write_text("X = 2\n")
    assert step.fingerprint(HEADS, []) != base


def test_a_missing_declared_file_is_a_config_error(tmp_path: Path) -> None:
    """Why: a typo in MIGRATE_THEN_FILES would silently never re-run the step."""
    step = Then(command="true", files=(tmp_path / "nope.py",))

    with pytest.raises(ConfigError, match="MIGRATE_THEN_FILES names") as error:
        step.fingerprint(HEADS, [])
    assert error.value.exit_code == 78


def test_the_step_comes_from_the_settings_and_a_function_beats_them() -> None:
    """Why: one entry in the settings table (env, flag, .env) and the Python argument."""
    settings = read_settings(
        {
            "MIGRATE_THEN": " python initial_data.py ",
            "MIGRATE_THEN_FILES": "initial_data.py, app/",
            "MIGRATE_THEN_ALWAYS": "yes",
        },
        {},
    )

    step = then_step(settings)
    assert step == Then(
        command="python initial_data.py",
        files=(Path("initial_data.py"), Path("app")),
        always=True,
    )
    assert then_step(read_settings({}, {})) is None
    assert prepare(read_settings({}, {}), HEADS, []) is None

    def bootstrap() -> None:
        pass

    by_function = then_step(settings, bootstrap)
    assert by_function is not None
    assert by_function.command is None
    assert by_function.label.endswith("bootstrap()")
    assert parse_files("a.py a.py,b.py") == (Path("a.py"), Path("b.py"))


def test_a_function_is_fingerprinted_by_its_name_and_source() -> None:
    """Why: editing the bootstrap function is a new release of it, as a new command is."""

    def first() -> None:
        pass

    def second() -> None:
        return None

    assert Then(function=first).fingerprint(HEADS, []) == Then(function=first).fingerprint(
        HEADS, []
    )
    assert Then(function=first).fingerprint(HEADS, []) != Then(function=second).fingerprint(
        HEADS, []
    )


def test_a_failing_command_reports_its_exit_and_stderr_tail(
    capfd: pytest.CaptureFixture[str],
) -> None:
    """Why: the operator sees why the start failed in the one line, and the command's
    output is passed on (to stderr: stdout carries --json)."""
    code = "import sys; print('to stdout'); sys.stderr.write('line 1\\nline 2\\n'); sys.exit(4)"

    with pytest.raises(ThenFailed) as failed:
        run_command(f'{sys.executable} -c "{code}"')

    assert failed.value.exit_code == 1
    assert failed.value.exit_status == 4
    assert failed.value.stderr_tail == "line 1 | line 2"
    assert "failed with exit 4: line 1 | line 2" in str(failed.value)
    captured = capfd.readouterr()
    assert captured.out == ""
    assert "to stdout" in captured.err


def test_a_killed_command_and_a_long_stderr_are_reported_short() -> None:
    """Why: a signal is named, and the line stays one readable line whatever it printed."""
    with pytest.raises(ThenFailed, match="was killed by SIGKILL"):
        run_command("kill -9 $$")
    with pytest.raises(ThenFailed) as failed:
        run_command(
            f"{sys.executable} -c \"import sys; sys.stderr.write('x' * 5000); sys.exit(1)\""
        )
    assert len(failed.value.stderr_tail) <= 400
    assert "\n" not in str(failed.value)


def test_the_command_gets_our_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Why: "the same environment": the step reads DATABASE_URL and its own secrets."""
    monkeypatch.setenv("ADMIN_EMAIL", "root@example.com")

    run_command('test "$ADMIN_EMAIL" = root@example.com')
    with pytest.raises(ThenFailed):
        run_command('test "$ADMIN_EMAIL" = someone-else')
