"""The application's settings, from the environment (pydantic-settings, as the template)."""

from __future__ import annotations

from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(extra="ignore")

    PROJECT_NAME: str = "Example"
    API_V1_STR: str = "/api/v1"
    #: The same variable migrate-lock reads: one URL for the application and its migrations.
    DATABASE_URL: str
    FIRST_SUPERUSER: str = "admin@example.com"
    FIRST_SUPERUSER_PASSWORD: str

    @property
    def SQLALCHEMY_DATABASE_URI(self) -> str:
        scheme, _, rest = self.DATABASE_URL.partition("://")
        if scheme in ("postgres", "postgresql"):
            return "postgresql+psycopg://" + rest  # psycopg 3, as migrate-lock
        return self.DATABASE_URL


settings = Settings()  # type: ignore[call-arg]
