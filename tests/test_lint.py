"""``migrate-lock lint``: each revision's offline SQL through Squawk, with exclusions."""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import yaml  # type: ignore[import-untyped]

from migrate_lock.checks.lint import split_revisions
from migrate_lock.scaffold import init_project

from support import assert_one_line_failure, cli_env, run_cli

REPO = Path(__file__).resolve().parent.parent

REVISION = '''"""{doc}"""
{comment}
from alembic import op

revision = "{rev}"
down_revision = {down}
branch_labels = None
depends_on = None


def upgrade() -> None:
{up}


def downgrade() -> None:
    pass
'''


def lint_project(path: Path, *, drop_comment: str = "") -> Path:
    """Baseline, a table (clean SQL), then a revision that drops a column."""
    init_project(path)
    versions = path / "migrations" / "versions"
    revisions = [
        (
            "0002",
            '"0001"',
            "create accounts",
            "",
            [
                "CREATE TABLE accounts (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,"
                " email text NOT NULL, nickname text)",
            ],
        ),
        (
            "0003",
            '"0002"',
            "drop nickname",
            drop_comment,
            [
                "ALTER TABLE accounts DROP COLUMN nickname",
            ],
        ),
    ]
    for rev, down, doc, comment, statements in revisions:
        up = "\n".join(f"    op.execute({sql!r})" for sql in statements)
        source = REVISION.format(doc=doc, comment=comment, rev=rev, down=down, up=up)
        (versions / f"{rev}_{doc.replace(' ', '_')}.py").write_text(source)
    return path


def test_dropping_a_column_is_reported_for_its_revision_with_rule_and_line(tmp_path: Path) -> None:
    """A dropped column breaks the replicas still running the previous release."""
    project = lint_project(tmp_path / "p")
    result = run_cli(["lint", "--json"], cwd=project, database_url=None)
    assert result.returncode == 1, result.stderr
    report = json.loads(result.stdout)
    assert report["revisions"] == ["0001", "0002", "0003"]
    assert [
        (f["revision"], f["rule"], f["kind"], f["line"], f["statement"]) for f in report["findings"]
    ] == [
        ("0003", "ban-drop-column", "destructive", 1, "ALTER TABLE accounts DROP COLUMN nickname;")
    ]


def test_readable_report_names_revision_line_rule_and_statement(tmp_path: Path) -> None:
    """Without --json the finding must still say where to look and what is wrong."""
    project = lint_project(tmp_path / "p")
    result = run_cli(["lint"], cwd=project, database_url=None)
    assert result.returncode == 1
    assert result.stdout.splitlines()[0] == (
        "0003 line 1: ban-drop-column (destructive): Dropping a column may break existing "
        "clients. [ALTER TABLE accounts DROP COLUMN nickname;]"
    )
    assert "3 revisions, 1 findings" in result.stdout


def test_timeout_rules_are_excluded_because_migrate_lock_sets_the_timeouts(
    tmp_path: Path,
) -> None:
    """Squawk asks for lock_timeout in the SQL; migrate-lock sets it on the session instead."""
    project = lint_project(tmp_path / "p")
    result = run_cli(["lint", "--json"], cwd=project, database_url=None)
    report = json.loads(result.stdout)
    assert {"require-lock-timeout", "require-statement-timeout"} <= set(report["excluded_rules"])
    included = run_cli(
        ["lint", "--json"],
        cwd=project,
        database_url=None,
        LINT_INCLUDE_RULES="require-lock-timeout",
    )
    rules = {f["rule"] for f in json.loads(included.stdout)["findings"]}
    assert "require-lock-timeout" in rules


def test_a_global_exclusion_silences_a_rule_everywhere(tmp_path: Path) -> None:
    """A team that accepts a rule's risk says so once, in the environment."""
    project = lint_project(tmp_path / "p")
    result = run_cli(["lint"], cwd=project, database_url=None, LINT_EXCLUDE_RULES="ban-drop-column")
    assert result.returncode == 0, result.stdout
    assert "3 revisions, 0 findings" in result.stdout


def test_a_revision_comment_ignores_a_rule_for_that_revision_only(tmp_path: Path) -> None:
    """The reviewed, deliberate drop is accepted where it is written, and nowhere else."""
    project = lint_project(
        tmp_path / "p", drop_comment="# migrate-lock: lint-ignore ban-drop-column\n"
    )
    result = run_cli(["lint", "--json"], cwd=project, database_url=None)
    assert result.returncode == 0, result.stdout
    report = json.loads(result.stdout)
    assert report["ignored_per_revision"] == {"0003": ["ban-drop-column"]}


def test_a_range_lints_only_the_revisions_after_its_start(tmp_path: Path) -> None:
    """CI lints the revisions a branch adds, not the whole reviewed history."""
    project = lint_project(tmp_path / "p")
    result = run_cli(["lint", "--json", "0001:0002"], cwd=project, database_url=None)
    assert result.returncode == 0, result.stdout
    assert json.loads(result.stdout)["revisions"] == ["0002"]


def test_an_unknown_revision_in_the_range_is_a_usage_error(tmp_path: Path) -> None:
    """A typo in the range must fail loudly, not lint nothing and pass."""
    project = lint_project(tmp_path / "p")
    result = run_cli(["lint", "0001:9999"], cwd=project, database_url=None)
    line = assert_one_line_failure(result, 2)
    assert "9999" in line


def test_offline_sql_is_cut_per_revision_without_the_version_table_preamble() -> None:
    """Findings are attributed to the revision whose SQL it is, never to Alembic's own DDL."""
    sql = (
        "BEGIN;\n\nCREATE TABLE alembic_version (version_num VARCHAR(32) NOT NULL);\n\n"
        "-- Running upgrade  -> 0001\n\nINSERT INTO alembic_version VALUES ('0001');\n\n"
        "-- Running upgrade 0001 -> 0002\n\nDROP TABLE x;\n\nUPDATE alembic_version;\n\n"
        "COMMIT;\n"
    )
    revisions = split_revisions(sql)
    assert [(r.revision, r.down_revisions) for r in revisions] == [
        ("0001", ()),
        ("0002", ("0001",)),
    ]
    assert revisions[1].sql == "DROP TABLE x;\n\nUPDATE alembic_version;\n"


# --- what is new, levels, autocommit blocks, integrations (issue 15 item 4, issue 18 item 11)


def write_revisions(path: Path, revisions: list[tuple[str, str, list[str]]]) -> Path:
    """A ``migrate-lock init`` project plus (rev, doc, statements) revisions in a chain.

    A statement that starts with ``autocommit:`` runs inside an ``autocommit_block``.
    """
    if not (path / "alembic.ini").exists():
        init_project(path)
    versions = path / "migrations" / "versions"
    down = '"0001"'
    for rev, doc, statements in revisions:
        body = []
        for sql in statements:
            if sql.startswith("autocommit:"):
                body.append("    with op.get_context().autocommit_block():")
                body.append(f"        op.execute({sql.removeprefix('autocommit:')!r})")
            else:
                body.append(f"    op.execute({sql!r})")
        source = REVISION.format(doc=doc, comment="", rev=rev, down=down, up="\n".join(body))
        (versions / f"{rev}_{doc.replace(' ', '_')}.py").write_text(source)
        down = f'"{rev}"'
    return path


ACCOUNTS = "CREATE TABLE accounts (id bigint PRIMARY KEY, email text NOT NULL)"


def findings_of(result: subprocess.CompletedProcess[str]) -> list[tuple[str, str, str, str]]:
    report = json.loads(result.stdout)
    return [(f["revision"], f["rule"], f["kind"], f["level"]) for f in report["findings"]]


def test_autocommit_boundaries_are_not_findings_and_a_concurrent_index_must_be_rerunnable(
    tmp_path: Path,
) -> None:
    """Alembic's COMMIT/BEGIN around an autocommit_block are not the revision's doing; a
    CONCURRENTLY statement that fails half-way is, and its rerun fails without IF [NOT] EXISTS."""
    project = write_revisions(
        tmp_path / "p",
        [
            ("0002", "accounts", [ACCOUNTS]),
            (
                "0003",
                "concurrent indexes",
                [
                    "autocommit:CREATE INDEX CONCURRENTLY accounts_email ON accounts (email)",
                    "autocommit:DROP INDEX CONCURRENTLY old_index",
                    "autocommit:CREATE INDEX CONCURRENTLY IF NOT EXISTS a2 ON accounts (id)",
                    "autocommit:DROP INDEX CONCURRENTLY IF EXISTS a3",
                ],
            ),
        ],
    )
    result = run_cli(["lint", "--json", "0002:0003"], cwd=project, database_url=None)
    assert findings_of(result) == [
        ("0003", "prefer-robust-stmts", "retry-unsafe", "warning"),
        ("0003", "prefer-robust-stmts", "retry-unsafe", "warning"),
    ]
    statements = [f["statement"] for f in json.loads(result.stdout)["findings"]]
    assert statements == [
        "CREATE INDEX CONCURRENTLY accounts_email ON accounts (email);",
        "DROP INDEX CONCURRENTLY old_index;",
    ]
    assert result.returncode == 0, result.stdout  # a warning: shown, not failing by default
    strict = run_cli(["lint", "--fail-on", "warning", "0002:0003"], cwd=project, database_url=None)
    assert strict.returncode == 1, strict.stdout
    assert "2 at warning or above" in strict.stdout


def test_prefer_rules_are_advice_and_fail_only_when_asked(tmp_path: Path) -> None:
    """A timestamp without time zone locks nothing: it must not fail a deploy by default."""
    project = write_revisions(
        tmp_path / "p", [("0002", "events", ["CREATE TABLE events (id bigint, at timestamp)"])]
    )
    result = run_cli(["lint", "--json"], cwd=project, database_url=None)
    assert result.returncode == 0, result.stdout
    assert ("0002", "prefer-timestamp-tz", "advice", "advice") in findings_of(result)
    assert json.loads(result.stdout)["fail_on"] == "error"
    by_setting = run_cli(["lint"], cwd=project, database_url=None, LINT_FAIL_ON="advice")
    assert by_setting.returncode == 1, by_setting.stdout


def test_since_lints_only_the_newer_revisions_and_tables_they_create_count_as_new(
    tmp_path: Path,
) -> None:
    """The reviewed history stays quiet; an index on a table the new revisions create
    locks nobody, while one on an existing table does."""
    project = write_revisions(
        tmp_path / "p",
        [
            ("0002", "accounts", [ACCOUNTS, "ALTER TABLE accounts DROP COLUMN email"]),
            ("0003", "orders", ["CREATE TABLE orders (id bigint PRIMARY KEY, note text)"]),
            (
                "0004",
                "indexes",
                [
                    "CREATE INDEX orders_note ON orders (note)",
                    "CREATE INDEX accounts_id ON accounts (id)",
                ],
            ),
        ],
    )
    result = run_cli(["lint", "--json", "--since", "0002"], cwd=project, database_url=None)
    report = json.loads(result.stdout)
    assert report["scope"]["mode"] == "since"
    assert report["revisions"] == ["0003", "0004"]
    assert [(f["revision"], f["statement"]) for f in report["findings"]] == [
        ("0004", "CREATE INDEX accounts_id ON accounts (id);")
    ]
    assert [f["statement"] for f in report["on_new_tables"]] == [
        "CREATE INDEX orders_note ON orders (note);"
    ]
    assert result.returncode == 1


def test_git_base_lints_the_revision_files_changed_since_the_base(tmp_path: Path) -> None:
    """CI on a pull request: only the revisions the branch adds (committed or not)."""
    project = write_revisions(
        tmp_path / "p", [("0002", "accounts", [ACCOUNTS, "ALTER TABLE accounts DROP COLUMN email"])]
    )
    git = ["git", "-c", "user.email=t@example.com", "-c", "user.name=t"]
    subprocess.run([*git, "init", "-q", "-b", "main"], cwd=project, check=True)
    subprocess.run([*git, "add", "."], cwd=project, check=True)
    subprocess.run([*git, "commit", "-q", "-m", "base"], cwd=project, check=True)
    rename = "ALTER TABLE accounts RENAME COLUMN email TO mail"
    write_revisions(project, [("0002", "accounts", [ACCOUNTS]), ("0003", "rename", [rename])])
    result = run_cli(["lint", "--json", "--git-base", "main"], cwd=project, database_url=None)
    report = json.loads(result.stdout)
    assert report["scope"]["mode"] == "git-base"
    assert report["revisions"] == ["0002", "0003"]  # 0002 was changed in the work tree
    # Why: run from another repository (-c naming this project), git answered for that one:
    # "0 revision files changed", exit 0. The migrations' own repository is asked.
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    subprocess.run([*git, "init", "-q", "-b", "main"], cwd=elsewhere, check=True)
    subprocess.run([*git, "commit", "-q", "--allow-empty", "-m", "x"], cwd=elsewhere, check=True)
    result = run_cli(
        ["-c", str(project / "alembic.ini"), "lint", "--json", "--git-base", "main"],
        cwd=elsewhere,
        database_url=None,
    )
    assert json.loads(result.stdout)["revisions"] == ["0002", "0003"], result.stderr[-300:]
    bad = run_cli(["lint", "--git-base", "no-such-ref"], cwd=project, database_url=None)
    line = assert_one_line_failure(bad, 2)
    assert "--git-base no-such-ref" in line


def test_with_a_database_lint_checks_the_pending_revisions(
    tmp_path: Path, database_url: str
) -> None:
    """A deployed history is not linted again on every deploy: only what will run."""
    project = write_revisions(
        tmp_path / "p",
        [
            ("0002", "accounts", [ACCOUNTS, "ALTER TABLE accounts DROP COLUMN email"]),
            ("0003", "index", ["CREATE INDEX accounts_id ON accounts (id)"]),
        ],
    )
    assert run_cli(["upgrade", "0002"], cwd=project, database_url=database_url).returncode == 0
    result = run_cli(["lint", "--json"], cwd=project, database_url=database_url)
    report = json.loads(result.stdout)
    assert report["scope"]["mode"] == "pending"
    assert report["revisions"] == ["0003"]
    assert [f["rule"] for f in report["findings"]] == ["require-concurrent-index-creation"]


def test_without_a_database_or_option_lint_says_it_checks_every_revision(tmp_path: Path) -> None:
    """Whoever reads the CI log must see why old revisions were linted too."""
    project = lint_project(tmp_path / "p")
    result = run_cli(["lint"], cwd=project, database_url=None)
    scope = [line for line in result.stderr.splitlines() if "lint.scope" in line]
    assert len(scope) == 1, result.stderr
    assert "every revision (no database URL" in scope[0]
    assert "--since REV or --git-base REF" in scope[0]


def test_junit_report_and_github_annotations(tmp_path: Path) -> None:
    """CI systems show test reports and inline annotations, not a log nobody opens."""
    project = lint_project(tmp_path / "p")
    report = tmp_path / "out" / "lint.xml"
    result = run_cli(
        ["lint", "--junit", str(report)],
        cwd=project,
        database_url=None,
        GITHUB_ACTIONS="true",
        GITHUB_WORKSPACE=str(project),
    )
    assert result.returncode == 1
    suite = ET.parse(report).getroot().find("testsuite")
    assert suite is not None
    assert (suite.get("tests"), suite.get("failures")) == ("3", "1")
    failed = [case for case in suite if case.find("failure") is not None]
    assert failed[0].get("name") == "0003"
    assert failed[0].get("file") == "migrations/versions/0003_drop_nickname.py"
    annotations = [line for line in result.stdout.splitlines() if line.startswith("::")]
    assert annotations == [
        "::error file=migrations/versions/0003_drop_nickname.py,line=12,"
        "title=ban-drop-column (destructive)::revision 0003, SQL line 1: Dropping a column "
        "may break existing clients.%0AALTER TABLE accounts DROP COLUMN nickname;"
    ]
    quiet = run_cli(["lint"], cwd=project, database_url=None)
    assert "::error" not in quiet.stdout + quiet.stderr  # only inside GitHub Actions


def test_without_squawk_lint_names_the_extra_to_install(tmp_path: Path) -> None:
    """Squawk is an optional extra: its absence is a configuration error, not a crash."""
    project = lint_project(tmp_path / "p")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "python").symlink_to(sys.executable)  # no squawk beside this interpreter
    paths = [p for p in sys.path if p.endswith("site-packages")] + [str(REPO)]
    result = subprocess.run(
        [str(bin_dir / "python"), "-m", "migrate_lock", "lint"],
        cwd=project,
        env=cli_env(None, PATH=str(bin_dir), PYTHONPATH=os.pathsep.join(paths)),
        capture_output=True,
        text=True,
        check=False,
    )
    line = assert_one_line_failure(result, 78)
    assert "squawk is not installed" in line
    assert "pip install 'migrate-lock[lint]'" in line


def test_the_pre_commit_hooks_lint_the_revision_files_they_are_given(tmp_path: Path) -> None:
    """pre-commit runs ``entry`` with the changed files that match ``files`` appended."""
    hooks = yaml.safe_load((REPO / ".pre-commit-hooks.yaml").read_text())
    assert [hook["id"] for hook in hooks] == ["migrate-lock-lint", "migrate-lock-lint-system"]
    project = lint_project(tmp_path / "p")
    versions = sorted((project / "migrations" / "versions").glob("*.py"))
    changed = [str(path.relative_to(project)) for path in versions]
    changed += ["migrations/env.py", "README.md"]
    for hook in hooks:
        assert {"id", "name", "entry", "language", "files"} <= set(hook)
        selected = [name for name in changed if re.search(hook["files"], name)]
        assert selected == [str(path.relative_to(project)) for path in versions]
    assert len({hook["entry"] for hook in hooks}) == 1  # one command: run it once
    program, *args = shlex.split(hooks[0]["entry"])
    assert program == "migrate-lock"
    drop = [name for name in selected if "0003" in name]
    result = run_cli([*args, *drop], cwd=project, database_url=None)
    assert result.returncode == 1, result.stderr  # 0003 drops a column
    assert result.stdout.startswith("0003 line 1: ban-drop-column"), result.stdout
    clean = run_cli([*args, *selected[:2], "README.md"], cwd=project, database_url=None)
    assert clean.returncode == 0, clean.stdout
    assert "2 revisions, 0 findings" in clean.stdout


def test_the_github_actions_example_runs_smoke_and_lint_on_a_postgresql_service() -> None:
    """The documented workflow is the one in the repository, and it is valid YAML."""
    workflow = yaml.safe_load((REPO / "examples/github-actions/migrations.yml").read_text())
    job = workflow["jobs"]["migrations"]
    assert job["services"]["postgres"]["image"].startswith("postgres:")
    commands = " ".join(step.get("run", "") for step in job["steps"])
    assert "migrate-lock smoke --database-url" in commands
    assert "migrate-lock lint --git-base" in commands and "--junit" in commands
    assert "examples/github-actions/migrations.yml" in (REPO / "docs/ci.md").read_text()


def test_a_database_that_does_not_answer_lints_every_revision_with_a_warning(
    tmp_path: Path,
) -> None:
    """lint is an offline check: a CI job whose database is not up yet still gets it."""
    project = lint_project(tmp_path / "p")
    result = run_cli(
        ["lint", "--json"],
        cwd=project,
        database_url="postgresql://nobody@127.0.0.1:1/nothing",
        DB_CONNECT_TIMEOUT_SECONDS="1",
    )
    assert result.returncode == 1, result.stderr  # 0003's drop, as without a database
    report = json.loads(result.stdout)
    assert report["scope"]["mode"] == "all"
    assert "the database did not answer" in report["scope"]["detail"]
    assert "lint.no_database" in result.stderr
