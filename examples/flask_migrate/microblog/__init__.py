"""A Flask + Flask-SQLAlchemy + Flask-Migrate application, as the Flask Mega-Tutorial
builds it: an application factory, its database URL from ``DATABASE_URL`` with a SQLite
file as the fallback (the fallback a CI job without a database gets)."""

import os

from flask import Flask
from flask_migrate import Migrate
from flask_sqlalchemy import SQLAlchemy

from migrate_lock import include_object

basedir = os.path.abspath(os.path.dirname(__file__))

db = SQLAlchemy()
# Autogenerate (flask db migrate, flask db check) leaves migrate-lock's own tables alone.
migrate = Migrate(include_object=include_object)


def database_uri() -> str:
    url = os.environ.get("DATABASE_URL") or "sqlite:///" + os.path.join(basedir, "app.db")
    # psycopg 3 is the driver migrate-lock installs: name it (SQLAlchemy's default is psycopg2).
    return url.replace("postgresql://", "postgresql+psycopg://", 1)


def create_app() -> Flask:
    app = Flask(__name__)
    app.config["SQLALCHEMY_DATABASE_URI"] = database_uri()
    db.init_app(app)
    migrate.init_app(app, db)

    from microblog import models  # noqa: PLC0415 - models import db from here

    @app.get("/users")
    def users() -> dict[str, list[str]]:
        return {"users": [user.username for user in db.session.scalars(db.select(models.User))]}

    return app
