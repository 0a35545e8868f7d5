"""Configuration: every setting multimsg reads, its environment name and default.

One owner for configuration. Everything is read from the environment (names
start with ``MULTIMSG_``, plus ``PORT``); ``settings()`` parses them once per
process. Services declare their own credentials as data and read them through
``env()`` so that their names stay next to the code that uses them.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

__all__ = ["Settings", "settings", "env", "env_float", "env_int", "DEFAULT_HOME"]

DEFAULT_HOME = "~/.local/share/multimsg"

DAY = 24 * 3600.0


def env(name: str, default: str | None = None) -> str | None:
    """The variable's value, or ``default`` when it is unset or empty."""
    value = os.environ.get(name, "")
    return value if value.strip() else default


def env_float(name: str, default: float) -> float:
    value = env(name)
    if value is None:
        return default
    try:
        return float(value)
    except ValueError:
        raise SystemExit(f"{name} must be a number, not {value!r}") from None


def env_int(name: str, default: int) -> int:
    return int(env_float(name, default))


def env_bool(name: str, default: bool) -> bool:
    value = env(name)
    if value is None:
        return default
    return value.strip().lower() not in ("0", "false", "no", "off")


@dataclass(frozen=True)
class Settings:
    """The effective configuration of this process."""

    home: Path
    host: str
    port: int
    drain_interval: float
    drain_token: str | None
    max_upload: int
    data_ttl: float
    validity: float
    fsync: bool
    retry_base: float
    retry_factor: float
    retry_cap: float
    retry_max_attempts: int
    connect_timeout: float
    read_timeout: float

    @classmethod
    def from_env(cls) -> "Settings":
        return cls(
            home=Path(env("MULTIMSG_HOME", DEFAULT_HOME)).expanduser().resolve(),
            host=env("HOST", "127.0.0.1"),
            port=env_int("PORT", 8080),
            drain_interval=env_float("MULTIMSG_DRAIN_INTERVAL", 5.0),
            drain_token=env("MULTIMSG_DRAIN_TOKEN"),
            max_upload=env_int("MULTIMSG_MAX_UPLOAD", 105 * 1000 * 1000),
            data_ttl=env_float("MULTIMSG_DATA_TTL", DAY),
            validity=env_float("MULTIMSG_VALIDITY", DAY),
            fsync=env_bool("MULTIMSG_FSYNC", True),
            retry_base=env_float("MULTIMSG_RETRY_BASE", 5.0),
            retry_factor=env_float("MULTIMSG_RETRY_FACTOR", 2.0),
            retry_cap=env_float("MULTIMSG_RETRY_CAP", 3600.0),
            retry_max_attempts=env_int("MULTIMSG_RETRY_MAX_ATTEMPTS", 12),
            connect_timeout=env_float("MULTIMSG_CONNECT_TIMEOUT", 5.0),
            read_timeout=env_float("MULTIMSG_READ_TIMEOUT", 30.0),
        )


@lru_cache(maxsize=1)
def settings() -> Settings:
    """This process's settings, read from the environment on first use."""
    return Settings.from_env()
