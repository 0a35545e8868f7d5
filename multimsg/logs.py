"""Log output: one format for every multimsg process, human lines or JSON lines, never a secret.

``setup()`` is called once by the runner and by the ``multimsg`` command. It
formats every record as a human line (default) or, with
``MULTIMSG_LOG_FORMAT=json``, as one JSON object per line. The drain logs one
line per message state change (logger ``multimsg.drain``, ``message <id>
serv=... outcome=... state=... attempt=... reason=...``); in JSON those
``key=value`` pairs become fields (``message_id``, ``serv``, ``outcome``,
``state``, ``attempts``, ``reason``; numbers as numbers), and so do any
``extra={...}`` fields a caller passes.

Every line goes through ``Redactor`` first: the values of secret settings
(``config.is_secret``: tokens, passwords, keys; read stripped), also with any
of their characters percent-encoded (as ``urllib.parse.quote`` or a form
encoder writes them, ``+`` for a space), and anything shaped like a bot token
(also inside ``/bot<token>/``), a bearer credential, a password in a URL
(``scheme://user:password@host``) or a credential in a query string
(``?token=``, ``access_token=``, ``key=``, ``password=``...) are replaced by ``***``.
"""

from __future__ import annotations

import json
import logging
import re
import sys
import time
from typing import Pattern

from .config import READ, env, is_secret, settings

__all__ = ["setup", "JsonFormatter", "HumanFormatter", "Redactor", "FORMATS"]

FORMATS = ("text", "json")
_RESERVED = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime"}
_STATE_LINE = re.compile(r"message (?P<message_id>\S+) (?P<pairs>.*)")
_PAIR = re.compile(r"(\w+)=(.*?)(?= \w+=|$)")
_SHAPES = [
    re.compile(r"(?<![0-9])\d{5,}(?::|%3[Aa])[A-Za-z0-9_-]{30,}(?![A-Za-z0-9_-])"),  # Telegram bot tokens, /bot<token>/ too
    re.compile(r"(?i)(bearer\s+)[A-Za-z0-9._~+/=%-]{8,}"),  # Authorization: Bearer ...
    re.compile(r"(?i)(://[^/\s:@]*:)[^@\s/]+(?=@)"),  # scheme://user:password@host
    re.compile(r"(?i)((?<![A-Za-z0-9])(?:access_token|token|api_key|apikey|key|secret|password|passwd)=)[^&\s#\"']+"),
]


def _encoded(secret: str) -> str:
    """A pattern for ``secret`` as it is or with any of its characters percent-encoded (either hex case)."""
    pattern = []
    for char in secret:
        escaped = "".join("%" + "".join(f"[{d}{d.lower()}]" if d.isalpha() else d for d in f"{byte:02X}") for byte in char.encode("utf-8", "surrogatepass"))
        pattern.append(f"(?:{re.escape(char)}|{escaped}{'|[+]' if char == ' ' else ''})")
    return "".join(pattern)


class Redactor(logging.Filter):
    """Replaces secret values in a record's final text (set as ``record.msg``, no args left)."""

    def __init__(self, secrets: list[str] | None = None):
        super().__init__()
        self.extra_secrets = [s.strip() for s in (secrets or []) if s and s.strip()]
        self._known: tuple[int, list[str], Pattern | None] = (-1, [], None)

    def _refresh(self) -> None:
        if self._known[0] != len(READ):
            values = list(self.extra_secrets)
            for name in [n for n in list(READ) if is_secret(n)]:
                value = env(name)
                if value and len(value) >= 4:
                    values.append(value)
            values = sorted(set(values), key=len, reverse=True)
            pattern = re.compile("|".join(_encoded(value) for value in values)) if values else None
            self._known = (len(READ), values, pattern)

    def secrets(self) -> list[str]:
        """The secret values to hide, recomputed when settings not seen before were read."""
        self._refresh()
        return self._known[1]

    def scrub_secrets(self, text: str) -> str:
        """``text`` with the secret values, plain or percent-encoded, replaced by ``***`` (no shape rules)."""
        self._refresh()
        pattern = self._known[2]
        return text if pattern is None else pattern.sub("***", text)

    def scrub(self, text: str) -> str:
        text = self.scrub_secrets(text)
        for shape in _SHAPES:
            text = shape.sub(lambda m: (m.group(1) if m.groups() else "") + "***", text)
        return text

    def filter(self, record: logging.LogRecord) -> bool:
        text = record.getMessage()
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        record.msg, record.args = self.scrub(text), None
        if record.exc_text:
            record.exc_text = self.scrub(record.exc_text)
        for key, value in list(vars(record).items()):
            if key not in _RESERVED and isinstance(value, str):
                setattr(record, key, self.scrub(value))
        return True


def _fields(record: logging.LogRecord) -> dict:
    """Structured fields of a record: ``extra`` values, or the pairs of a state-change line."""
    fields = {k: v for k, v in vars(record).items() if k not in _RESERVED and not k.startswith("_")}
    if not fields and record.name == "multimsg.drain":
        match = _STATE_LINE.fullmatch(record.getMessage())
        if match:
            fields["message_id"] = match["message_id"]
            fields.update(_PAIR.findall(match["pairs"]))
            if fields.get("reason") == "-":
                fields["reason"] = None
            for key, value in list(fields.items()):
                if isinstance(value, str) and value.isdigit():
                    fields[key] = int(value)
    return fields


def _timestamp(created: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(created)) + f".{int(created % 1 * 1000):03d}Z"


class HumanFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line = f"{_timestamp(record.created)} {record.levelname} {record.name}: {record.getMessage()}"
        if record.exc_text:
            line += "\n" + record.exc_text
        return line


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": _timestamp(record.created),
            "level": record.levelname.lower(),
            "severity": record.levelname,  # the name Google Cloud Logging reads
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in _fields(record).items():
            entry.setdefault(key, value if isinstance(value, (str, int, float, bool, type(None))) else str(value))
        if record.exc_text:
            entry["exception"] = record.exc_text
        return json.dumps(entry, ensure_ascii=False)


def setup(level: int = logging.INFO, stream=None, fmt: str | None = None) -> logging.Handler:
    """Send multimsg's logs (and the root logger's) to ``stream`` (stderr) in the configured format.

    Replaces handlers a previous ``setup`` installed; returns the new handler.
    """
    fmt = (fmt or settings().log_format or "text").strip().lower()
    if fmt not in FORMATS:
        raise SystemExit(f"MULTIMSG_LOG_FORMAT must be one of {', '.join(FORMATS)}, not {fmt!r}")
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.addFilter(Redactor())
    handler.setFormatter(JsonFormatter() if fmt == "json" else HumanFormatter())
    handler._multimsg = True  # type: ignore[attr-defined]
    root = logging.getLogger()
    for old in [h for h in root.handlers if getattr(h, "_multimsg", False)]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    return handler
