"""The service contract: what a platform module declares and does.

A service is one class per platform, deriving from ``ServiceBase``:

- declared as data: ``name``, ``datatypes``, ``dest_format`` (shown to users),
  ``dest_pattern``, ``credentials`` (environment names that must be set) and
  ``options`` (environment names with defaults);
- ``validate(datatype)`` (the seed's contract) and ``check(...)``, which raise
  ``InvalidInput`` before anything is queued;
- ``send(data)``, which returns an ``Outcome``: delivered (with the platform's
  message ids), retry later (and when), failed for good (and why), or
  misconfigured (the server's fault, not the message's).

``data`` keeps the seed's keys: ``id`` (the message id), ``dir`` (folder of the
content file, named ``id``), ``dest``, ``type``, ``state``; plus ``path`` (the
content file), ``filename``, ``options`` and ``platform_ids`` (parts already
delivered by earlier attempts).
"""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import requests

from ..config import env, settings
from ..errors import InvalidInput
from .datatypes import Datatypes

__all__ = ["ServiceBase", "Outcome", "read_text", "json_or_none", "DELIVERED", "RETRY", "FAILED", "MISCONFIGURED"]

DELIVERED = "delivered"
RETRY = "retry"
FAILED = "failed"
MISCONFIGURED = "misconfigured"


@dataclass(frozen=True)
class Outcome:
    """What a send attempt came to."""

    kind: str
    platform_ids: list[str] = field(default_factory=list)  # ids of parts delivered in this attempt
    reason: str = ""
    retry_after: float | None = None  # seconds, when the platform said

    @classmethod
    def delivered(cls, platform_ids: list[str]) -> "Outcome":
        return cls(DELIVERED, list(platform_ids))

    @classmethod
    def retry(cls, reason: str, retry_after: float | None = None, platform_ids=()) -> "Outcome":
        return cls(RETRY, list(platform_ids), reason, retry_after)

    @classmethod
    def failed(cls, reason: str, platform_ids=()) -> "Outcome":
        return cls(FAILED, list(platform_ids), reason)

    @classmethod
    def misconfigured(cls, reason: str, platform_ids=()) -> "Outcome":
        return cls(MISCONFIGURED, list(platform_ids), reason)


class ServiceBase(ABC):
    name: ClassVar[str]
    datatypes: ClassVar[frozenset[str]]
    dest_format: ClassVar[str]
    dest_pattern: ClassVar[re.Pattern]
    # Pacing, as data (the drain enforces it): sends per second for the whole
    # service, and per destination ``dest_limit(dest) -> (sends, per_seconds)``.
    rate: ClassVar[float] = 1.0
    credentials: ClassVar[dict[str, str]] = {}  # attribute -> environment name (required)
    options: ClassVar[dict[str, tuple[str, str]]] = {}  # attribute -> (environment name, default)

    def __init__(self, session: requests.Session | None = None):
        self.session = session or requests.Session()
        for attribute, variable in self.credentials.items():
            setattr(self, attribute, env(variable))
        for attribute, (variable, default) in self.options.items():
            setattr(self, attribute, env(variable, default))
        self.timeout = (settings().connect_timeout, settings().read_timeout)

    # -- configuration -----------------------------------------------------
    def missing_credentials(self) -> list[str]:
        return [variable for attribute, variable in self.credentials.items() if not getattr(self, attribute)]

    def configured(self) -> bool:
        return not self.missing_credentials()

    # -- validation (before queueing) --------------------------------------
    def validate(self, datatype: str) -> bool:
        """The seed's contract: whether this service sends ``datatype``."""
        return Datatypes.validate(datatype) and datatype in self.datatypes

    def check_dest(self, dest: str) -> str:
        dest = dest.strip()
        if not self.dest_pattern.fullmatch(dest):
            raise InvalidInput(f"'dest' for {self.name} must be {self.dest_format}")
        return dest

    text_limit: ClassVar[int] = 4096

    def check_content(self, datatype: str, path: Path, size: int) -> None:
        """Raise InvalidInput if the stored content cannot be sent as ``datatype``."""
        if datatype == Datatypes.TEXT:
            text = read_text(path)
            if len(text) > self.text_limit:
                raise InvalidInput(f"text is {len(text)} characters; {self.name} takes at most {self.text_limit}")

    def dest_limit(self, dest: str) -> tuple[int, float]:
        """How many sends ``dest`` may receive per how many seconds."""
        return (1, 1.0)

    # -- delivery ----------------------------------------------------------
    @abstractmethod
    def send(self, data: dict) -> Outcome:
        """Send one message (all its parts not yet delivered) and say how it went."""

    def post(self, url: str, classify, **kwargs) -> Outcome:
        """POST with this service's timeouts; the answer is classified by ``classify``.

        Timeouts and connection errors are worth a retry. Their text is not
        passed on: requests puts the URL in it, and URLs can hold tokens.
        """
        try:
            response = self.session.post(url, timeout=self.timeout, **kwargs)
        except requests.Timeout:
            return Outcome.retry(f"{self.name}: the platform did not answer in time")
        except requests.RequestException as exc:
            return Outcome.retry(f"{self.name}: could not reach the platform ({type(exc).__name__})")
        return classify(response)


def read_text(path: Path) -> str:
    """The content of a text message: UTF-8, not empty."""
    try:
        text = Path(path).read_bytes().decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidInput(f"text must be UTF-8 (invalid byte at offset {exc.start})") from None
    if not text.strip():
        raise InvalidInput("text is empty")
    return text


def json_or_none(response: requests.Response) -> dict | None:
    """The answer's JSON object, or None when the body is not one (an HTML error page, say)."""
    try:
        body = response.json()
    except ValueError:
        return None
    return body if isinstance(body, dict) else None
