"""The production guard against odd but legal URLs (issue 15, item 3's placeholders)."""

from __future__ import annotations

import pytest

from migrate_lock.errors import ConfigError
from migrate_lock.guard import check_database_urls

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(
    "url",
    [
        # Why: the user given in the query was not compared with the password.
        "postgresql://db.internal/app?user=app&password=app",
        "postgresql://other@db.internal/app?user=app&password=app",
        # What held: percent-encoded, mixed case, in the query, a multi-host URL.
        "postgresql://app:change%74his@db.internal/app",
        "postgresql://app:%43hangeThis@db.internal/app",
        "postgresql://app@db.internal/app?password=ChangeThis",
        "postgresql://app:changethis@db1.internal:5432,db2.internal:5432/app",
        "postgresql+psycopg://a%70p:app@db.internal/app",
    ],
)
def test_production_refuses_a_placeholder_password_however_the_url_spells_it(url: str) -> None:
    with pytest.raises(ConfigError, match="default or placeholder password") as raised:
        check_database_urls("production", {"DATABASE_URL": url})
    assert "changethis" not in str(raised.value).lower()
    assert "password=app" not in str(raised.value)
