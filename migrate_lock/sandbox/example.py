"""The example project that ``demo`` (and the tests and the benchmark) migrate.

A chain of revisions that create tables, add columns and indexes and insert
reference rows. Every revision also writes one row to ``migration_log``; with no
unique constraints anywhere, a revision applied twice would show as two rows, so
``applied_counts`` proves (or disproves) exactly-once.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from migrate_lock.scaffold import init_project

BASELINE = "0001"
_KINDS = ("table", "column", "index", "rows")


def revision_id(number: int) -> str:
    return f"{number:04d}"


def write_example_project(
    path: Path,
    revisions: int = 20,
    *,
    slow_revision: int | None = None,
    slow_seconds: float = 0.0,
    pause_seconds: float = 0.0,
) -> list[str]:
    """Scaffold ``path`` and add revisions up to ``revisions`` in all (baseline included).

    ``slow_revision`` pauses ``slow_seconds`` in the middle of that revision, after
    its first statement, so a test can interrupt a half-done revision.
    ``pause_seconds`` does the same in every other revision after the baseline, so
    that a whole run lasts long enough to be interrupted at a random moment.
    Returns the revision ids, oldest first.
    """
    init_project(path)
    versions = path / "migrations" / "versions"
    ids = [BASELINE]
    for number in range(2, revisions + 1):
        pause = slow_seconds if number == slow_revision else pause_seconds
        body = _revision_source(number, pause)
        (versions / f"{revision_id(number)}_{_kind(number)}.py").write_text(body)
        ids.append(revision_id(number))
    return ids


def applied_counts(connection: Any) -> dict[str, int]:
    """How many times each revision ran, from ``migration_log`` (a psycopg connection)."""
    rows = connection.execute(
        "SELECT revision, count(*) FROM migration_log GROUP BY revision"
    ).fetchall()
    return {str(revision): int(count) for revision, count in rows}


def _kind(number: int) -> str:
    return "start" if number == 2 else _KINDS[(number - 3) % 4]


def _revision_source(number: int, pause: float) -> str:
    rev = revision_id(number)
    kind = _kind(number)
    table = f"t_{number - (number - 3) % 4}"
    if kind == "start":
        up = [
            "CREATE TABLE migration_log (revision text NOT NULL,"
            " applied_at timestamptz NOT NULL DEFAULT clock_timestamp())",
            "CREATE TABLE leagues (id serial PRIMARY KEY, name text NOT NULL)",
            "INSERT INTO leagues (name) VALUES ('Premier League'), ('La Liga'), ('Serie A')",
        ]
        down = ["DROP TABLE leagues", "DROP TABLE migration_log"]
    elif kind == "table":
        up = [
            f"CREATE TABLE {table} (id bigserial PRIMARY KEY, name text NOT NULL,"
            " created_at timestamptz NOT NULL DEFAULT now())"
        ]
        down = [f"DROP TABLE {table}"]
    elif kind == "column":
        up = [f"ALTER TABLE {table} ADD COLUMN note text"]
        down = [f"ALTER TABLE {table} DROP COLUMN note"]
    elif kind == "index":
        up = [f"CREATE INDEX ix_{table}_name ON {table} (name)"]
        down = [f"DROP INDEX ix_{table}_name"]
    else:
        names = f"('League {number}a'), ('League {number}b')"
        up = [f"INSERT INTO leagues (name) VALUES {names}"]
        down = [f"DELETE FROM leagues WHERE name IN ('League {number}a', 'League {number}b')"]
    if pause:
        up.insert(1, f"SELECT pg_sleep({pause})")
    up.append(f"INSERT INTO migration_log (revision) VALUES ('{rev}')")
    down.insert(0, f"DELETE FROM migration_log WHERE revision = '{rev}'")
    if kind == "start":
        down = down[1:]
    return _TEMPLATE.format(
        doc=f"{kind} {table if kind != 'start' else 'leagues'}",
        rev=rev,
        down=revision_id(number - 1),
        up="\n".join(f"    op.execute({sql!r})" for sql in up),
        downgrade="\n".join(f"    op.execute({sql!r})" for sql in down),
    )


_TEMPLATE = '''"""{doc}"""

from alembic import op

revision = "{rev}"
down_revision = "{down}"
branch_labels = None
depends_on = None


def upgrade() -> None:
{up}


def downgrade() -> None:
{downgrade}
'''
