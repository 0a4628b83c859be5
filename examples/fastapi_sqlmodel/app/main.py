"""A tiny API: a health check and a login that checks the first superuser's password."""

from __future__ import annotations

from fastapi import FastAPI, HTTPException
from sqlmodel import Session, select

from app.core.config import settings
from app.core.db import engine
from app.core.security import verify_password
from app.models import LoginRequest, User

app = FastAPI(title=settings.PROJECT_NAME)


@app.get(f"{settings.API_V1_STR}/utils/health-check/")
def health_check() -> bool:
    return True


@app.post(f"{settings.API_V1_STR}/login")
def login(body: LoginRequest) -> dict[str, object]:
    with Session(engine) as session:
        user = session.exec(select(User).where(User.email == body.email)).first()
    if user is None or not verify_password(body.password, user.hashed_password):
        raise HTTPException(status_code=400, detail="Incorrect email or password")
    return {"email": user.email, "is_superuser": user.is_superuser}
