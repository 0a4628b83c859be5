"""The shapes valid setting values take, shared by the settings model and the fast path.

Kept free of heavy imports: the at-head fast path checks values with these without
loading pydantic.
"""

from __future__ import annotations

import re

ENVIRONMENTS = ("development", "test", "staging", "production")
LOG_FORMATS = ("auto", "json", "text")
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
LOCK_SCOPES = ("auto", "session", "transaction")

#: A PostgreSQL duration as SET accepts it: 0, 500ms, 10s, 5min, 1h, 1d.
DURATION = re.compile(r"^\s*\d+(\.\d+)?\s*(us|ms|s|min|h|d)?\s*$")
#: A plain SQL identifier (no quoting needed; NAMEDATALEN - 1 bytes at most).
IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_$]{0,62}$")
#: The range of a PostgreSQL bigint, which is what pg_advisory_lock takes.
INT64 = (-(2**63), 2**63 - 1)
