"""The engine, and the first superuser (the template's ``init_db``)."""

from __future__ import annotations

from sqlmodel import Session, create_engine, select

from app.core.config import settings
from app.core.security import get_password_hash
from app.models import User

engine = create_engine(settings.SQLALCHEMY_DATABASE_URI)


def init_db(session: Session) -> None:
    # Tables come from the Alembic migrations (migrate-lock upgrade), not create_all().
    # "Check, then insert": safe because migrate-lock runs this under its lock, once.
    user = session.exec(select(User).where(User.email == settings.FIRST_SUPERUSER)).first()
    if user is None:
        session.add(
            User(
                email=settings.FIRST_SUPERUSER,
                hashed_password=get_password_hash(settings.FIRST_SUPERUSER_PASSWORD),
                is_superuser=True,
            )
        )
        session.commit()
