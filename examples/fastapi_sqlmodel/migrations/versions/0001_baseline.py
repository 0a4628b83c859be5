"""baseline

The first revision of this project. Create your starting schema here, or leave it
empty and add revisions with `alembic revision -m "..."`. Reference data that belongs
with the baseline goes in seed_data.sql beside this file.

Revision ID: 0001
Revises:
Create Date: 2026-01-01 00:00:00
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from migrate_lock.seeds.sql_file import run_sql_file

revision: str = "0001"
down_revision: str | Sequence[str] | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    run_sql_file(Path(__file__).with_name("seed_data.sql"))


def downgrade() -> None:
    pass
