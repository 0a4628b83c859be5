"""A project whose revisions read from the database while they run (issue 18, item 8):
they cannot be rendered as offline SQL. Shared by the unit and the CLI tests."""

from __future__ import annotations

from pathlib import Path

from migrate_lock.scaffold import init_project

REVISION = '''"""{doc}"""
import sqlalchemy as sa
from alembic import context, op

revision = "{rev}"
down_revision = "{down}"
branch_labels = None
depends_on = None


def upgrade() -> None:
{body}


def downgrade() -> None:
    pass
'''

#: revision -> (doc, upgrade body). 0002-0004 read from the database, three ways.
REVISIONS = {
    "0002": (
        "accounts",
        '    op.execute("CREATE TABLE accounts (id bigint PRIMARY KEY, nickname text)")',
    ),
    "0003": (
        "backfill from live rows",
        '    rows = op.get_bind().execute(sa.text("SELECT id FROM accounts")).fetchall()\n'
        "    for row in rows:\n"
        "        op.execute(f\"UPDATE accounts SET nickname = 'n{row[0]}' WHERE id = {row[0]}\")",
    ),
    "0004": (
        "inspect the table",
        "    columns = sa.inspect(op.get_bind()).get_columns('accounts')\n    assert columns",
    ),
    "0005": (
        "iterate rows",
        '    for row in op.get_bind().execute(sa.text("SELECT 1")):\n'
        "        op.execute('SELECT 1')",
    ),
    "0006": ("drop nickname", '    op.execute("ALTER TABLE accounts DROP COLUMN nickname")'),
}

LIVE = ("0003", "0004", "0005")


def live_project(path: Path, *, refuse_offline: bool = False) -> Path:
    """The baseline, then REVISIONS; ``refuse_offline`` adds 0007, which raises whenever
    it is rendered offline (to prove that ``plan --no-sql`` renders nothing)."""
    init_project(path)
    versions = path / "migrations" / "versions"
    revisions = dict(REVISIONS)
    if refuse_offline:
        revisions["0007"] = (
            "not offline",
            "    if context.is_offline_mode():\n"
            '        raise RuntimeError("rendered offline")\n'
            "    op.execute('SELECT 1')",
        )
    down = "0001"
    for rev, (doc, body) in revisions.items():
        source = REVISION.format(doc=doc, rev=rev, down=down, body=body)
        (versions / f"{rev}_{doc.replace(' ', '_')}.py").write_text(source)
        down = rev
    return path
