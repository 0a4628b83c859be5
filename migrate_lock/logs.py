"""Structured events on stderr: one line each, JSON in containers, text on a terminal.

Event names are stable (``lock.waiting``, ``lock.acquired``, ``migrate.revision``,
``migrate.done`` …) and documented in docs/logging.md. Known secrets are scrubbed from
every line, whatever the caller passed in.
"""

from __future__ import annotations

import json
import sys
import time
from datetime import datetime, timezone
from typing import Any, TextIO

from migrate_lock.dsn import mask_url_text
from migrate_lock.lean.settings_schema import choices

#: LOG_LEVEL's values (the settings table lists them mildest first), numbered as the
#: standard library's logging numbers them.
LEVELS = {name: 10 * rank for rank, name in enumerate(choices("log_level"), start=1)}
_NOT_SECRET = {"postgres", "password", "changeme", "postgresql"}


class EventLog:
    """Writes events; ``configure`` decides the format and the level."""

    def __init__(self) -> None:
        self.format = "text"
        self.level = LEVELS["INFO"]
        self.stream: TextIO | None = None
        self._secrets: set[str] = set()
        self._started = time.monotonic()

    def configure(self, *, log_format: str = "auto", level: str = "INFO") -> None:
        stream = self.stream or sys.stderr
        if log_format not in ("json", "text"):
            log_format = "text" if _isatty(stream) else "json"
        self.format = log_format
        self.level = LEVELS.get(level.upper(), LEVELS["INFO"])

    def add_secret(self, secret: str | None) -> None:
        """Never print ``secret``: it is replaced by ``***`` in every later line.

        URLs are always masked; this also catches a password quoted on its own. A
        short or well-known password ("postgres") is no secret, and scrubbing that word
        would garble every line that names the database or the scheme.
        """
        if secret and len(secret) >= 8 and secret.lower() not in _NOT_SECRET:
            self._secrets.add(secret)

    def debug(self, event: str, **fields: Any) -> None:
        self.emit("DEBUG", event, **fields)

    def info(self, event: str, **fields: Any) -> None:
        self.emit("INFO", event, **fields)

    def warning(self, event: str, **fields: Any) -> None:
        self.emit("WARNING", event, **fields)

    def error(self, event: str, **fields: Any) -> None:
        self.emit("ERROR", event, **fields)

    def emit(self, level: str, event: str, **fields: Any) -> None:
        if LEVELS[level] < self.level:
            return
        stream = self.stream or sys.stderr
        if self.format == "json":
            record = {"ts": _now(), "level": level.lower(), "event": event, **fields}
            line = json.dumps(record, default=str, ensure_ascii=False)
        else:
            rendered = " ".join(f"{key}={_text_value(value)}" for key, value in fields.items())
            line = f"{_now()[11:23]} {level:<7} {event}" + (f" {rendered}" if rendered else "")
        stream.write(self.scrub(line) + "\n")
        stream.flush()

    def scrub(self, text: str) -> str:
        text = mask_url_text(text)
        for secret in self._secrets:
            text = text.replace(secret, "***")
        return text


def _text_value(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value, default=str)
    text = " ".join(text.split())
    return json.dumps(text) if (" " in text or not text) else text


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _isatty(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


log = EventLog()
