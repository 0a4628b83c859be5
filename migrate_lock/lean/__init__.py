"""The lean at-head path: standard library and libpq only.

Everything here may run before (and instead of) psycopg, SQLAlchemy, Alembic, pydantic
and click are imported; tests/unit/test_imports.py checks that nothing here reaches them.
"""
