"""Structured events on stderr: one line each, JSON in containers, text on a terminal.

Event names are stable (``lock.waiting``, ``lock.acquired``, ``migrate.revision``,
``migrate.done`` …) and documented in docs/logging.md. Known secrets are scrubbed from
every field before it is encoded (so JSON's escaping cannot hide one from the scrubber),
whatever the caller passed in.
"""

from __future__ import annotations

import json
import sys
import time
from datetime import datetime, timezone
from typing import Any, TextIO

from migrate_lock.dsn import is_secret, scrub_text, spellings
from migrate_lock.lean.settings_schema import choices

#: LOG_LEVEL's values (the settings table lists them mildest first), numbered as the
#: standard library's logging numbers them.
LEVELS = {name: 10 * rank for rank, name in enumerate(choices("log_level"), start=1)}


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
        secret shorter than ``dsn.MIN_SECRET_LENGTH`` (3) or a well-known word
        ("postgres") is not scrubbed as a literal: scrubbing "7" or "postgres" would
        garble every line, and where the stars fall would spell the secret out.
        """
        if secret:
            self._secrets.update(variant for variant in spellings(secret) if is_secret(variant))

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
        # Scrubbed before encoding: JSON (and the text format's quoting) escape quotes and
        # backslashes, and an escaped password no longer matches the scrubber.
        fields = {key: self._scrub_value(value) for key, value in fields.items()}
        if self.format == "json":
            record = {"ts": _now(), "level": level.lower(), "event": event, **fields}
            line = json.dumps(record, default=str, ensure_ascii=False)
        else:
            rendered = " ".join(f"{key}={_text_value(value)}" for key, value in fields.items())
            line = f"{_now()[11:23]} {level:<7} {event}" + (f" {rendered}" if rendered else "")
        stream.write(line + "\n")
        stream.flush()

    def scrub(self, text: str) -> str:
        """``text`` without any password: URLs masked, every known secret replaced by
        ``***`` (``dsn.scrub_text``, plus the secrets given to ``add_secret``)."""
        return scrub_text(text, self._secrets)

    def _scrub_value(self, value: Any) -> Any:
        if isinstance(value, str):
            return self.scrub(value)
        if value is None:
            return value
        if isinstance(value, bool | int | float):
            # A number stays a number unless it spells a secret (a password of digits).
            text = str(value)
            scrubbed = self.scrub(text)
            return value if scrubbed == text else scrubbed
        if isinstance(value, dict):
            return {self.scrub(str(key)): self._scrub_value(item) for key, item in value.items()}
        if isinstance(value, list | tuple | set | frozenset):
            return [self._scrub_value(item) for item in value]
        return self.scrub(str(value))


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
