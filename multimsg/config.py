"""Configuration: every setting multimsg reads, its environment name and default.

One owner for configuration. Everything is read from the environment (names
start with ``MULTIMSG_``, plus ``PORT``); ``settings()`` parses them once per
process. Services declare their own credentials as data and read them through
``env()`` so that their names stay next to the code that uses them.

A TOML file can hold the same settings (``MULTIMSG_CONFIG``, else
``multimsg.toml`` in the data folder); the environment wins over it. A key maps
to the variable of the same name, upper-cased, with tables joined by ``_`` and
``MULTIMSG_`` put in front (``[telegram] token`` is ``MULTIMSG_TELEGRAM_TOKEN``;
``host`` and ``port`` are ``HOST`` and ``PORT``).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

__all__ = ["Settings", "settings", "env", "env_float", "env_int", "DEFAULT_HOME"]

DEFAULT_HOME = "~/.local/share/multimsg"

DAY = 24 * 3600.0


def env(name: str, default: str | None = None) -> str | None:
    """The variable's value, else the config file's, or ``default`` when both are unset or empty."""
    READ.setdefault(name, default)
    value = os.environ.get(name, "")
    if not value.strip():
        value = file_values().get(name, "")
    return (value.strip() if is_secret(name) else value) if value.strip() else default  # secrets: a stray space is not part of a token


# -- the TOML file -------------------------------------------------------------
READ: dict[str, str | None] = {}  # every name env() was asked for, with its default (``multimsg config``)
UNPREFIXED = frozenset({"HOST", "PORT"})
_SECRET_RE = re.compile(r"(^|_)(TOKEN|SECRET|PASSWORD|PASSWD|CREDENTIALS|APIKEY|API_KEY)(_|$)|_KEY$")


def is_secret(name: str) -> bool:
    """Whether a setting holds a credential (masked by ``multimsg config``, redacted from logs)."""
    return bool(_SECRET_RE.search(name))


def config_path() -> tuple[Path, bool]:
    """The config file, and whether it was named explicitly (by MULTIMSG_CONFIG)."""
    given = os.environ.get("MULTIMSG_CONFIG", "").strip()
    if given:
        return Path(given).expanduser(), True
    home = os.environ.get("MULTIMSG_HOME", "").strip() or DEFAULT_HOME
    return Path(home).expanduser() / "multimsg.toml", False


def file_values() -> dict[str, str]:
    """The config file's settings by variable name ({} when there is no file)."""
    path, explicit = config_path()
    try:
        stat = path.stat()
    except (FileNotFoundError, NotADirectoryError):
        if explicit:
            raise SystemExit(f"MULTIMSG_CONFIG: no such file: {path}") from None
        return {}
    return _read_toml(str(path), stat.st_mtime_ns, stat.st_size)


@lru_cache(maxsize=4)
def _read_toml(path: str, _mtime_ns: int, _size: int) -> dict[str, str]:
    import tomllib

    try:
        data = tomllib.loads(Path(path).read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise SystemExit(f"{path}: not valid TOML ({exc})") from None
    except OSError as exc:
        raise SystemExit(f"{path}: {exc.strerror}") from None
    return dict(_flatten(path, data, ()))


def _flatten(path: str, table: dict, prefix: tuple[str, ...]):
    for key, value in table.items():
        keys = prefix + (str(key),)
        if isinstance(value, dict):
            yield from _flatten(path, value, keys)
            continue
        name = "_".join(keys).upper().replace("-", "_")
        if not (name.startswith("MULTIMSG_") or name in UNPREFIXED):
            name = "MULTIMSG_" + name
        if isinstance(value, bool):
            value = "true" if value else "false"
        elif not isinstance(value, (str, int, float)):
            raise SystemExit(f"{path}: {'.'.join(keys)} must be a string, a number or a boolean")
        yield name, str(value)


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


def env_choice(name: str, default: str, choices: tuple[str, ...]) -> str:
    value = (env(name) or default).strip().lower()
    if value not in choices:
        raise SystemExit(f"{name} must be one of {', '.join(choices)}, not {value!r}")
    return value


def env_hops(name: str) -> int:
    """How many proxies to trust: off/false/0 is none, on/true/yes is one, or a count."""
    value = (env(name) or "off").strip().lower()
    if value in ("0", "false", "no", "off"):
        return 0
    if value in ("1", "true", "yes", "on"):
        return 1
    if value.isdigit():
        return int(value)
    raise SystemExit(f"{name} must be off, on, or a number of proxies, not {value!r}")


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
    pace_margin: float
    expected_latency: float
    drain_window: int
    drain_horizon: float
    sweep_interval: float
    result_ttl: float
    connect_timeout: float
    read_timeout: float
    identity: str
    trust_proxy: int
    tokens_file: Path | None
    rate_limit: float
    rate_burst: int
    key_grace: float
    client_quota: int = 0

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
            pace_margin=env_float("MULTIMSG_PACE_MARGIN", 0.92),
            expected_latency=env_float("MULTIMSG_EXPECTED_LATENCY", 0.25),
            drain_window=env_int("MULTIMSG_DRAIN_WINDOW", 1000),
            drain_horizon=env_float("MULTIMSG_DRAIN_HORIZON", 60.0),
            sweep_interval=env_float("MULTIMSG_SWEEP_INTERVAL", 600.0),
            result_ttl=env_float("MULTIMSG_RESULT_TTL", 7 * DAY),
            connect_timeout=env_float("MULTIMSG_CONNECT_TIMEOUT", 5.0),
            read_timeout=env_float("MULTIMSG_READ_TIMEOUT", 30.0),
            identity=env_choice("MULTIMSG_IDENTITY", "mac", ("mac", "token", "ip")),
            trust_proxy=env_hops("MULTIMSG_TRUST_PROXY"),
            tokens_file=Path(env("MULTIMSG_TOKENS_FILE")).expanduser().resolve() if env("MULTIMSG_TOKENS_FILE") else None,
            rate_limit=env_float("MULTIMSG_RATE_LIMIT", 20.0),
            rate_burst=env_int("MULTIMSG_RATE_BURST", 200),
            key_grace=env_float("MULTIMSG_KEY_GRACE", 7 * DAY),
            client_quota=env_int("MULTIMSG_CLIENT_QUOTA", 1000 * 1000 * 1000),  # bytes a client's uploads may hold; 0: no quota
        )


@lru_cache(maxsize=1)
def settings() -> Settings:
    """This process's settings, read from the environment on first use."""
    return Settings.from_env()
