"""Configuration: every setting multimsg reads, its environment name and default.

One owner for configuration. Everything is read from the environment (names
start with ``MULTIMSG_``, plus ``PORT``); ``settings()`` parses them once per
process. Global settings are declared once, as the fields of ``Settings``
(name, type, default, secret); services declare theirs as data in their class
and receive them in a ``ServiceConfig`` when built: nothing else reads the
environment.

A TOML file can hold the same settings (``MULTIMSG_CONFIG``, else
``multimsg.toml`` in the data folder); the environment wins over it. A key maps
to the variable of the same name, upper-cased, with tables joined by ``_`` and
``MULTIMSG_`` put in front (``[telegram] token`` is ``MULTIMSG_TELEGRAM_TOKEN``;
``host`` and ``port`` are ``HOST`` and ``PORT``).

Service instances: ``serv`` names an instance, whose ``kind`` says which
module sends. ``wpp1`` (kind whatsapp), ``telegram`` and ``outbox`` exist
always; more come from ``[services.NAME]`` tables (``kind = "whatsapp"``,
``token = "..."``) or from ``MULTIMSG_<NAME>_KIND`` in the environment. Every
key of an instance is the variable ``MULTIMSG_<NAME>_<KEY>``
(``[services.wpp2] token`` is ``MULTIMSG_WPP2_TOKEN``), so the environment
sets or overrides any of it. Instance names are lower-case letters and
digits, starting with a letter, and may not shadow a global setting
(``drain``, ``retry``, ...).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field, fields
from functools import lru_cache
from pathlib import Path

__all__ = [
    "Settings", "ServiceConfig", "settings", "service_config", "setting", "env", "env_float", "env_int", "DEFAULT_HOME",
    "instances", "instance_variable", "BUILTIN_INSTANCES", "INSTANCE_NAME",
]

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
# An Apprise URL holds its plugin's credentials.
_SECRET_RE = re.compile(r"(^|_)(TOKEN|SECRET|PASSWORD|PASSWD|CREDENTIALS|APIKEY|API_KEY)(_|$)|_KEY$|(^|_)APPRISE_URL$")


def is_secret(name: str) -> bool:
    """Whether a setting holds a credential (masked by ``multimsg config``, redacted from logs).

    By its name, or because ``Settings`` declares it ``secret`` (``MULTIMSG_BACKEND``: a URL
    that may carry a password).
    """
    if name in DECLARED_SECRETS or _SECRET_RE.search(name):
        return True
    return name in {f.metadata["env"] for f in fields(Settings) if f.metadata["secret"]}


DECLARED_SECRETS: set[str] = set()  # service settings their class declares secret (a webhook URL carries its token)


def config_path() -> tuple[Path, bool]:
    """The config file, and whether it was named explicitly (by MULTIMSG_CONFIG)."""
    raw = getattr(os.environ, "_data", None)
    if isinstance(raw, dict):
        # POSIX: the undecoded variables; os.environ.get encodes the name, raises and catches KeyError for an
        # unset one (MULTIMSG_CONFIG, usually) and decodes the value, 4 us of the three asked on every /msg.
        return _config_path_undecoded(raw.get(b"MULTIMSG_CONFIG"), raw.get(b"MULTIMSG_HOME"), raw.get(b"HOME"))
    environ = os.environ
    return _config_path(environ.get("MULTIMSG_CONFIG", ""), environ.get("MULTIMSG_HOME", ""), environ.get("HOME", ""))


@lru_cache(maxsize=8)
def _config_path_undecoded(given: bytes | None, home: bytes | None, user_home: bytes | None) -> tuple[Path, bool]:
    def decoded(value: bytes | None) -> str:  # as os.environ decodes a value on POSIX
        return "" if value is None else os.fsdecode(value)

    return _config_path(decoded(given), decoded(home), decoded(user_home))


@lru_cache(maxsize=8)
def _config_path(given: str, home: str, _user_home: str) -> tuple[Path, bool]:
    # Asked twice on every /msg (the service instances): worked out once per value of the variables it depends on.
    if given.strip():
        return Path(given.strip()).expanduser(), True
    return Path(home.strip() or DEFAULT_HOME).expanduser() / "multimsg.toml", False


def file_values() -> dict[str, str]:
    """The config file's settings by variable name ({} when there is no file)."""
    path, explicit = config_path()
    try:
        stat = os.stat(path)
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
        if not prefix and key == "services" and isinstance(value, dict):  # [services.NAME] key: MULTIMSG_NAME_KEY
            for name, section in value.items():
                if not isinstance(section, dict) or not INSTANCE_NAME.fullmatch(str(name)):
                    raise SystemExit(f"{path}: services.{name} must be a table named by lower-case letters and digits")
                yield from _flatten(path, section, (str(name),))
            continue
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


def _path(value: str) -> Path:
    return Path(value).expanduser().resolve()


def _kind(kind):
    """The parser of a setting of type ``kind`` (str, int, float, bool, Path, or a parser)."""
    if kind is str:
        return lambda name, default: env(name, default)
    if kind is float:
        return env_float
    if kind is int:
        return env_int
    if kind is bool:
        return env_bool
    if kind is Path:
        return lambda name, default: _path(env(name, default))
    if kind == "path?":
        return lambda name, default: _path(env(name)) if env(name) else None
    return kind


def setting(variable: str, default, kind=str, *, secret: bool = False, help: str = ""):
    """Declare a setting once: its environment name, default, type, whether it is secret, what it does."""
    return field(default=default, metadata={"env": variable, "parse": _kind(kind), "secret": secret, "help": help})


def _positive(name: str, default: float) -> float:
    value = env_float(name, default)
    if value <= 0:
        raise SystemExit(f"{name} must be a number of seconds above 0, not {value:g}")
    return value


def _rate(name: str, default: float) -> float:
    return max(0.0, env_float(name, default))


def _workers(name: str, default: int) -> int:
    value = env_int(name, default)
    if value < 0:
        raise SystemExit(f"{name} must be a number of processes (0: one per core), not {value}")
    return value or os.cpu_count() or 1


def _share(name: str, default: str | None) -> tuple[int, int] | None:
    from .queue.shares import parse_share

    value = (env(name) or "").strip()
    if not value:
        return None
    try:
        return parse_share(value)
    except ValueError:
        raise SystemExit(f"{name} must be I/N (share I, from 0, of N drain processes), not {value!r}") from None


def _identity(name: str, default: str) -> str:
    return env_choice(name, default, ("mac", "token", "ip"))


def _hops(name: str, default: str) -> int:
    return env_hops(name)


@dataclass(frozen=True)
class Settings:
    """The effective configuration of this process: every global setting, declared once.

    Each field is one setting (its metadata names the variable); services
    declare their own (credentials, options) as data in their class and get
    them in a ``ServiceConfig`` when built (``service_config``).
    """

    home: Path = setting("MULTIMSG_HOME", DEFAULT_HOME, Path, help="the data folder")
    host: str = setting("HOST", "127.0.0.1", help="address the runner binds")
    port: int = setting("PORT", 8080, int, help="port the runner binds")
    workers: int = setting("MULTIMSG_WORKERS", 0, _workers,
                           help="processes the local runner serves HTTP from (0: one per core; 1: one process that also drains)")
    worker_pin: bool = setting("MULTIMSG_WORKER_PIN", True, bool,
                               help="each HTTP worker of the runner keeps to one core (its index-th, round robin), as the drain "
                                    "children do (MULTIMSG_DRAIN_PIN)")
    drain_interval: float = setting("MULTIMSG_DRAIN_INTERVAL", 5.0, float)
    drain_workers: int = setting("MULTIMSG_DRAIN_WORKERS", 0, _workers,
                                 help="drain processes of the runner with several workers, each sending for its own share of the "
                                      "service instances (0: one per core; never more than there are instances)")
    drain_share: tuple[int, int] | None = setting("MULTIMSG_DRAIN_SHARE", None, _share,
                                                  help="I/N: this process drains only share I (from 0) of N (each runner drain child has one)")
    drain_pin: bool = setting("MULTIMSG_DRAIN_PIN", True, bool,
                              help="each drain child of the runner keeps to one core (its index-th, round robin): its threads "
                                   "hand the interpreter lock to each other without waking the other core")
    drain_token: str | None = setting("MULTIMSG_DRAIN_TOKEN", None, secret=True)
    drain_lock: bool = setting("MULTIMSG_DRAIN_LOCK", True, bool, help="one pass at a time per data folder (an optimisation; leases keep several safe)")
    lease: float = setting("MULTIMSG_LEASE", 60.0, float, help="seconds a drain pass holds a message it claimed (extended while it sends)")
    max_upload: int = setting("MULTIMSG_MAX_UPLOAD", 105 * 1000 * 1000, int)
    data_ttl: float = setting("MULTIMSG_DATA_TTL", DAY, float)
    validity: float = setting("MULTIMSG_VALIDITY", DAY, float)
    fsync: bool = setting("MULTIMSG_FSYNC", True, bool)
    retry_base: float = setting("MULTIMSG_RETRY_BASE", 5.0, float)
    retry_factor: float = setting("MULTIMSG_RETRY_FACTOR", 2.0, float)
    retry_cap: float = setting("MULTIMSG_RETRY_CAP", 3600.0, float)
    retry_max_attempts: int = setting("MULTIMSG_RETRY_MAX_ATTEMPTS", 12, int)
    pace_margin: float = setting("MULTIMSG_PACE_MARGIN", 0.92, float)
    expected_latency: float = setting("MULTIMSG_EXPECTED_LATENCY", 0.25, float)
    drain_window: int = setting("MULTIMSG_DRAIN_WINDOW", 1000, int)
    drain_horizon: float = setting("MULTIMSG_DRAIN_HORIZON", 60.0, float)
    sweep_interval: float = setting("MULTIMSG_SWEEP_INTERVAL", 600.0, float)
    result_ttl: float = setting("MULTIMSG_RESULT_TTL", 7 * DAY, float)
    report_grace: float = setting("MULTIMSG_REPORT_GRACE", 3600.0, float, help="seconds a reported final state stays readable by /cons before it is archived")
    storage_key: str | None = setting("MULTIMSG_STORAGE_KEY", None, secret=True,
                                      help="base64 of 32 bytes: wraps every upload's data key at rest (comma-separated while rotating, current first)")
    storage_key_file: Path = setting("MULTIMSG_STORAGE_KEY_FILE", "~/.config/multimsg/storage-keys", Path,
                                     help="the storage key file when MULTIMSG_STORAGE_KEY is unset (made on first run; never inside the data folder)")
    history_days: float = setting("MULTIMSG_HISTORY_DAYS", 7.0, float, help="days GET /messages shows a client's messages (archived ones too)")
    archive_months: int = setting("MULTIMSG_ARCHIVE_MONTHS", 12, int, help="monthly archive files kept (0: keep all)")
    connect_timeout: float = setting("MULTIMSG_CONNECT_TIMEOUT", 5.0, float)
    read_timeout: float = setting("MULTIMSG_READ_TIMEOUT", 30.0, float)
    identity: str = setting("MULTIMSG_IDENTITY", "mac", _identity)
    trust_proxy: int = setting("MULTIMSG_TRUST_PROXY", "off", _hops)
    tokens_file: Path | None = setting("MULTIMSG_TOKENS_FILE", None, "path?")
    rate_limit: float = setting("MULTIMSG_RATE_LIMIT", 1000.0, float, help="per-client requests per second on /data and /msg (a safety net)")
    rate_burst: int = setting("MULTIMSG_RATE_BURST", 2000, int)
    key_grace: float = setting("MULTIMSG_KEY_GRACE", 7 * DAY, float)
    client_quota: int = setting("MULTIMSG_CLIENT_QUOTA", 1000 * 1000 * 1000, int, help="bytes a client's uploads may hold (0: no quota)")
    ffmpeg: str = setting("MULTIMSG_FFMPEG", "ffmpeg", help="the ffmpeg that /msg convert=1 uses: a command on PATH or a path (missing: no conversion)")
    convert_cpu: int = setting("MULTIMSG_CONVERT_CPU", 60, int, help="seconds of CPU time one audio conversion may use (RLIMIT_CPU of ffmpeg)")
    convert_memory: int = setting("MULTIMSG_CONVERT_MEMORY", 512, int, help="MB of address space one audio conversion may use (RLIMIT_AS of ffmpeg)")
    log_format: str = setting("MULTIMSG_LOG_FORMAT", "text")
    header_timeout: float = setting("MULTIMSG_HEADER_TIMEOUT", 10.0, _positive, help="seconds a client has to send a request's headers")
    body_timeout: float = setting("MULTIMSG_BODY_TIMEOUT", 30.0, _positive, help="seconds a client has to send a body (plus 1 s per BODY_MIN_RATE bytes)")
    body_min_rate: float = setting("MULTIMSG_BODY_MIN_RATE", 1024.0, _rate, help="bytes per second a slow body must keep up")
    backend: str | None = setting("MULTIMSG_BACKEND", None, secret=True,
                                  help="unset: the embedded store; redis://HOST:PORT/DB (rediss://, a password in the URL)"
                                  " or redis+cluster://HOST:PORT[,HOST:PORT...]: a shared store")
    redis_tag: str = setting("MULTIMSG_REDIS_TAG", "mm", help="the hash tag of every Redis key (mm:{TAG}:...): one per deployment sharing a Redis")
    key_seal: str | None = setting("MULTIMSG_KEY_SEAL", None, secret=True,
                                   help="Redis backend: 32 random bytes, base64, sealing the server's private keys in Redis (the same on every process)")
    redis_blob_max: int = setting("MULTIMSG_REDIS_BLOB_MAX", 20 * 1000 * 1000, int, help="largest upload kept in Redis, in bytes (above: 413)")
    callback_url: str | None = setting("MULTIMSG_CALLBACK_URL", None, help="callback URL of messages sent without one")
    callback_allow_private: bool = setting("MULTIMSG_CALLBACK_ALLOW_PRIVATE", False, bool,
                                           help="let callbacks go to loopback, private and link-local addresses (tests, a trusted LAN)")
    callback_backoff: str = setting("MULTIMSG_CALLBACK_BACKOFF", "60 300 1800 3600 7200 21600 50400",
                                    help="seconds between callback attempts; one more attempt than values (default: 8 over ~24 h)")
    blobs: str | None = setting("MULTIMSG_BLOBS", None,
                                help="where upload bytes live: unset: the data folder (embedded) or Redis (Redis backend); s3://BUCKET/PREFIX; a folder")
    s3_endpoint_url: str | None = setting("MULTIMSG_S3_ENDPOINT_URL", None,
                                          help="the S3 API's address for a store other than AWS (e.g. https://storage.googleapis.com)")
    schedule_horizon: float = setting("MULTIMSG_SCHEDULE_HORIZON", 30 * DAY, float,
                                      help="how far ahead /msg's 'at' may schedule a send, in seconds (never past MULTIMSG_VALIDITY)")
    idempotency_ttl: float = setting("MULTIMSG_IDEMPOTENCY_TTL", DAY, float,
                                     help="seconds an Idempotency-Key's answer is kept and replayed to the same client")

    @classmethod
    def from_env(cls) -> "Settings":
        values = {}
        for f in fields(cls):
            values[f.name] = f.metadata["parse"](f.metadata["env"], f.default)
        return cls(**values)

    @classmethod
    def variables(cls) -> dict[str, str]:
        """Field name -> environment name, for every global setting."""
        return {f.name: f.metadata["env"] for f in fields(cls)}


@dataclass(frozen=True)
class ServiceConfig:
    """What a service instance is built with: its declared credentials and options, pacing overrides, timeouts."""

    values: dict[str, str | None]
    rate: float | None = None  # MULTIMSG_<SERV>_RATE: sends per second (0: no service pacing)
    dest_interval: float | None = None  # MULTIMSG_<SERV>_DEST_INTERVAL: seconds between sends to one destination
    concurrency: int | None = None  # MULTIMSG_<SERV>_CONCURRENCY: sends in flight at once
    connect_timeout: float = 5.0
    read_timeout: float = 30.0
    name: str = ""  # the instance (the serv value)
    kind: str = ""  # the module that sends (KINDS in multimsg.services)
    variables: dict[str, str] = field(default_factory=dict)  # attribute -> the variable it was read from
    convert: bool = False  # MULTIMSG_<SERV>_CONVERT: /msg converts audio the platform refuses unless it says convert=0


def service_config(name: str, credentials: dict[str, str], options: dict[str, tuple[str, str]], *,
                   kind: str = "", secrets: frozenset[str] = frozenset()) -> ServiceConfig:
    """Read one instance's settings: the keys its class declares, as ``MULTIMSG_<NAME>_<KEY>``, and its pacing.

    ``credentials`` map attribute -> key (required), ``options`` attribute -> (key, default);
    ``secrets`` are the attributes whose value is a credential (masked, redacted).
    """
    prefix = f"MULTIMSG_{name.upper()}_"
    variables = {attr: instance_variable(name, key) for attr, key in credentials.items()}
    variables.update({attr: instance_variable(name, key) for attr, (key, _default) in options.items()})
    DECLARED_SECRETS.update(variables[attr] for attr in secrets if attr in variables)
    values: dict[str, str | None] = {attr: env(variables[attr]) for attr in credentials}
    values.update({attr: env(variables[attr], default) for attr, (_key, default) in options.items()})
    optional_float = lambda variable: None if env(variable) is None else env_float(variable, 0.0)  # noqa: E731
    concurrency = env(prefix + "CONCURRENCY")
    s = settings()
    return ServiceConfig(values, optional_float(prefix + "RATE"), optional_float(prefix + "DEST_INTERVAL"),
                         None if concurrency is None else env_int(prefix + "CONCURRENCY", 1), s.connect_timeout, s.read_timeout,
                         name=name, kind=kind, variables=variables, convert=env_bool(prefix + "CONVERT", False))


# -- service instances -----------------------------------------------------------
INSTANCE_NAME = re.compile(r"[a-z][a-z0-9]{0,31}")
BUILTIN_INSTANCES = {"wpp1": "whatsapp", "telegram": "telegram", "outbox": "outbox"}  # instance -> kind, always there
_KIND_VARIABLE = re.compile(r"MULTIMSG_([A-Z][A-Z0-9]{0,31})_KIND")


def instance_variable(name: str, key: str) -> str:
    """The variable of an instance's key: ``MULTIMSG_<NAME>_<KEY>`` (``wpp2``, ``token``: ``MULTIMSG_WPP2_TOKEN``)."""
    return f"MULTIMSG_{name.upper()}_{key.upper()}"


def _reserved(name: str) -> str | None:
    """The global setting an instance called ``name`` would shadow, if any."""
    prefix = f"MULTIMSG_{name.upper()}_"
    for variable in Settings.variables().values():
        if variable.startswith(prefix):
            return variable
    return None


def instances() -> dict[str, str]:
    """Every configured service instance: name -> kind (the built-in ones, the config file's, the environment's)."""
    # Asked on every /msg: worked out again only when the environment or the config file changed.
    raw = getattr(os.environ, "_data", None)  # the undecoded variables: far cheaper to compare than os.environ.items()
    environ = tuple(raw.items()) if isinstance(raw, dict) else tuple(os.environ.items())
    return dict(_instances(environ, tuple(sorted(file_values().items()))))


@lru_cache(maxsize=4)
def _instances(environ: tuple, from_file: tuple[tuple[str, str], ...]) -> tuple[tuple[str, str], ...]:
    variables, in_file = dict(os.environ), dict(from_file)  # (environ: only the cache's key)
    names = set(BUILTIN_INSTANCES)
    for variable in [*variables, *in_file]:
        match = _KIND_VARIABLE.fullmatch(variable)
        if match and (variables.get(variable, "").strip() or in_file.get(variable, "").strip()):
            names.add(match.group(1).lower())
    found = {}
    for name in sorted(names):
        if name not in BUILTIN_INSTANCES:
            shadowed = _reserved(name)
            if shadowed:
                raise SystemExit(f"service instance {name!r}: the name is taken by the setting {shadowed}; choose another")
        kind = (env(instance_variable(name, "kind"), BUILTIN_INSTANCES.get(name)) or "").strip().lower()
        found[name] = kind
    return tuple(found.items())


@lru_cache(maxsize=1)
def settings() -> Settings:
    """This process's settings, read from the environment on first use."""
    return Settings.from_env()
