"""Create the first superuser (the template's app/initial_data.py).

Run it under migrate-lock's lock, after the migrations:

    migrate-lock run --then 'python initial_data.py' -- fastapi run app/main.py
"""

from __future__ import annotations

import logging

from app.core.db import engine, init_db
from sqlmodel import Session

logging.basicConfig(level=logging.INFO)
logger = logging.getLogger(__name__)


def main() -> None:
    logger.info("Creating initial data")
    with Session(engine) as session:
        init_db(session)
    logger.info("Initial data created")


if __name__ == "__main__":
    main()
