"""Local Telegram and WhatsApp emulators, and the Python handle tests and benchmarks use.

Owns `Emulator` (with `TelegramEmulator` / `WhatsAppEmulator`): it runs one emulator as its own
process (`python -m tests.emulators.<name> --port 0 ...` from the repo root), waits for its
`LISTENING <port>` line and talks to its `/_emu/` control API.

    with TelegramEmulator(latency=0.15).start() as tg:
        env = {"MULTIMSG_TELEGRAM_API_URL": tg.url, "MULTIMSG_TELEGRAM_TOKEN": tg.token}
        ...
        tg.script("retry_after", dest=42, retry_after=2)
        sent = tg.wait_for(lambda r: r["dest"] == 42, count=2)

Records (`received()`) are dicts with: t (time.monotonic() at arrival; system-wide on Linux),
method, dest, type, fields, json, files ({field: {sha256, size, filename, content_type}}),
media, status (HTTP status answered; 0 = connection dropped), schema_errors, and also
outcome ("delivered" | "rejected" | "rate_limited" | "scripted" | "dropped"), script (name of
the scripted answer used, or None), error (error text answered) and response (body answered).
Server-side behaviour is described in common.py, telegram.py and whatsapp.py.
"""

from __future__ import annotations

import importlib
import json
import os
import sys
import time
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, Callable, NoReturn

from .common import COMMON_OPTIONS, EmulatorApp

if TYPE_CHECKING:
    import subprocess

__all__ = ["Emulator", "TelegramEmulator", "WhatsAppEmulator", "DiscordEmulator", "SlackEmulator", "TeamsEmulator", "WebhookReceiver",
           "SignalEmulator", "MatrixEmulator", "TwilioEmulator", "Receiver", "REPO_ROOT"]

REPO_ROOT = Path(__file__).resolve().parents[2]


# The emulator processes import this package too: what only this side uses (urllib, subprocess,
# 40 ms of CPU to import) is imported where it is used, not at the start of every emulator.
_OPENER: list[Any] = []


def _open(request: Any) -> Any:
    if not _OPENER:
        import urllib.request

        _OPENER.append(urllib.request.build_opener(urllib.request.ProxyHandler({})))  # never via an HTTP proxy
    return _OPENER[0].open(request, timeout=10)


class Emulator:
    """One emulator process.  Options are the emulator's flags (the server class's `OPTIONS`,
    e.g. `token`, `latency`, `rate`); `True`/`False` turn a numeric limit on (default) / off."""

    # The server class, `APP` in tests.emulators.<module>, is imported on first use only, so that
    # `python -m tests.emulators.<module>` does not import that module twice.
    module = ""
    APP = ""
    START_TIMEOUT = 15.0

    def __init__(self, **options: Any) -> None:
        self.app: type[EmulatorApp] = getattr(importlib.import_module(f"{__name__}.{self.module}"), self.APP)
        known = {**COMMON_OPTIONS, **self.app.OPTIONS}
        unknown = sorted(set(options) - set(known))
        if unknown:
            raise TypeError(f"unknown {self.app.name} emulator option(s) {unknown}; known: {sorted(known)}")
        self.options = {name: known[name].coerce(value) for name, value in options.items()}
        self.defaults = {name: option.default for name, option in known.items()}
        self.proc: subprocess.Popen[bytes] | None = None
        self.port: int | None = None
        self._stderr: IO[bytes] | None = None

    # ---- addresses -------------------------------------------------------------------------
    @property
    def base(self) -> str:
        if self.port is None:
            raise RuntimeError(f"{self.app.name} emulator is not started")
        return f"http://127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return self.base

    @property
    def token(self) -> str:
        return str(self.options.get("token", self.defaults["token"]))

    # ---- process ---------------------------------------------------------------------------
    def command(self) -> list[str]:
        args = [sys.executable, "-m", f"tests.emulators.{self.app.name}", "--port", "0", "--exit-with-stdin"]
        for name, value in self.options.items():
            args += ["--" + name.replace("_", "-"), str(value)]
        return args

    def start(self) -> "Emulator":
        import selectors
        import subprocess
        import tempfile

        if self.proc is not None:
            return self
        self._stderr = tempfile.TemporaryFile()
        # stdin stays open and unused: the emulator exits when it closes, i.e. when we die.
        self.proc = subprocess.Popen(self.command(), cwd=REPO_ROOT, stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=self._stderr)
        line, deadline = b"", time.monotonic() + self.START_TIMEOUT
        assert self.proc.stdout is not None
        with selectors.DefaultSelector() as selector:
            selector.register(self.proc.stdout, selectors.EVENT_READ)
            while b"\n" not in line:
                remaining = deadline - time.monotonic()
                if remaining <= 0 or not selector.select(remaining):
                    self._fail(f"no LISTENING line within {self.START_TIMEOUT:g} s")
                chunk = os.read(self.proc.stdout.fileno(), 4096)
                if not chunk:
                    self._fail(f"exited with code {self.proc.wait()}")
                line += chunk
        first = line.split(b"\n", 1)[0].decode(errors="replace").strip()
        if not first.startswith("LISTENING "):
            self._fail(f"unexpected first line {first!r}")
        self.port = int(first.split()[1])
        return self

    def stderr(self) -> str:
        """What the emulator wrote to stderr so far (errors only; requests are not logged)."""
        if self._stderr is None:
            return ""
        fd = self._stderr.fileno()  # pread: the emulator shares this file's offset
        return os.pread(fd, os.fstat(fd).st_size, 0).decode(errors="replace")

    def _fail(self, why: str) -> NoReturn:
        output = self.stderr()
        self.stop()
        raise RuntimeError(f"{self.app.name} emulator failed to start: {why}\n"
                           f"command: {' '.join(self.command())}\nstderr:\n{output}")

    def stop(self) -> None:
        import subprocess

        proc, self.proc, self.port = self.proc, None, None
        if proc is not None:
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
            for pipe in (proc.stdin, proc.stdout):
                if pipe is not None:
                    pipe.close()
        if self._stderr is not None:
            self._stderr.close()
            self._stderr = None

    def __enter__(self) -> "Emulator":
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.base if self.port else 'stopped'} {self.options}>"

    # ---- control API -----------------------------------------------------------------------
    def _control(self, method: str, action: str, payload: Any = None) -> Any:
        import urllib.error
        import urllib.request

        data = None if payload is None else json.dumps(payload).encode()
        request = urllib.request.Request(f"{self.base}/_emu/{action}", data=data, method=method,
                                         headers={"Content-Type": "application/json"})
        try:
            with _open(request) as response:
                return json.load(response)
        except urllib.error.HTTPError as exc:
            raise ValueError(f"{self.app.name} emulator: {method} /_emu/{action}: {exc.read().decode()}") from None

    def received(self, ok_only: bool = False) -> list[dict[str, Any]]:
        """Recorded send requests in arrival order; `ok_only`: only those answered 2xx."""
        records = self._control("GET", "received")
        return [r for r in records if 200 <= r["status"] < 300] if ok_only else records

    def wait_for(self, predicate: Callable[[dict[str, Any]], bool] | None = None, count: int = 1,
                 timeout: float = 10.0) -> list[dict[str, Any]]:
        """Poll until at least `count` records match `predicate` (default: any); return them all."""
        deadline = time.monotonic() + timeout
        while True:
            records = self.received()
            matching = [r for r in records if predicate is None or predicate(r)]
            if len(matching) >= count:
                return matching
            if self.proc is None or self.proc.poll() is not None:
                raise AssertionError(f"{self.app.name} emulator is not running; stderr:\n{self.stderr()}")
            if time.monotonic() >= deadline:
                lines = "\n".join(f"  {self._summary(r)}" for r in records) or "  (nothing)"
                raise AssertionError(f"{self.app.name} emulator: {len(matching)} of {count} expected matching "
                                     f"record(s) within {timeout:g} s; received {len(records)}:\n{lines}")
            time.sleep(0.02)

    @staticmethod
    def _summary(record: dict[str, Any]) -> str:
        problems = f" schema_errors={record['schema_errors']}" if record["schema_errors"] else ""
        script = f" script={record['script']}" if record.get("script") else ""
        return (f"{record['method']} dest={record['dest']!r} type={record['type']} status={record['status']} "
                f"{record['outcome']}{script}{problems}")

    def script(self, response: str | int | dict[str, Any], dest: Any = None, times: int = 1,
               **extra: Any) -> dict[str, Any]:
        """The next `times` send requests to `dest` (None: any; `method=` narrows further) get
        `response`: a name (see the platform's NAMED, plus "timeout" and "drop") or
        {"status", "body"|"raw", "headers"}.  `extra` feeds named answers (retry_after=, seconds=)."""
        return self._control("POST", "script", {"response": response, "dest": dest, "times": times, **extra})

    def configure(self, **options: Any) -> dict[str, Any]:
        """Change options at run time; returns the whole configuration."""
        return self._control("POST", "config", options)

    def reset(self, keep_config: bool = False) -> None:
        """Clear records, scripts, limiters and uploads; restore start-up options unless keep_config."""
        self._control("POST", "reset", {"keep_config": keep_config})

    def stats(self) -> dict[str, Any]:
        return self._control("GET", "stats")

    def file(self, sha256: str) -> bytes:
        """The bytes of an uploaded file (only while the option ``keep_files`` covers its size)."""
        with _open(f"{self.base}/_emu/files/{sha256}") as response:
            return response.read()


class TelegramEmulator(Emulator):
    """`url` is the API base to put in MULTIMSG_TELEGRAM_API_URL (requests go to url/bot<token>/<method>)."""

    module, APP = "telegram", "TelegramApp"


class WhatsAppEmulator(Emulator):
    """`url` is http://127.0.0.1:PORT/<version> for MULTIMSG_WPP1_API_URL; `phone_id` the number's id."""

    module, APP = "whatsapp", "WhatsAppApp"

    def __init__(self, version: str = "v23.0", **options: Any) -> None:
        super().__init__(**options)
        self.version = version

    @property
    def url(self) -> str:
        return f"{self.base}/{self.version}"

    @property
    def phone_id(self) -> str:
        return str(self.options.get("phone_id", self.defaults["phone_id"]))

    def statuses(self, url: str, app_secret: str, message: str | None = None, **spec: Any) -> dict[str, Any]:
        """Send signed status webhooks to ``url`` as Meta does (see whatsapp.py); returns the wamid and each answer."""
        return self._control("POST", "statuses", {"url": url, "app_secret": app_secret, "message": message, **spec})


class DiscordEmulator(Emulator):
    """`url` is the webhook URL for MULTIMSG_<NAME>_WEBHOOK_URL."""

    module, APP = "discord", "DiscordApp"

    @property
    def url(self) -> str:
        options = {**self.defaults, **self.options}
        return f"{self.base}/api/webhooks/{options['webhook_id']}/{options['token']}"


class SlackEmulator(Emulator):
    """`url` is the Web API base for MULTIMSG_<NAME>_API_URL; `token` the bot token."""

    module, APP = "slack", "SlackApp"

    @property
    def url(self) -> str:
        return f"{self.base}/api"


class TeamsEmulator(Emulator):
    """`url` is the workflow's webhook URL for MULTIMSG_<NAME>_URL."""

    module, APP = "teams", "TeamsApp"

    @property
    def url(self) -> str:
        options = {**self.defaults, **self.options}
        return f"{self.base}/workflows/{options['workflow']}/triggers/manual/paths/invoke?api-version=1&sig={options['sig']}"


class WebhookReceiver(Emulator):
    """`url` is the receiver's endpoint for MULTIMSG_<NAME>_URL; `secret` the signing secret."""

    module, APP = "webhook", "WebhookApp"

    @property
    def url(self) -> str:
        return f"{self.base}/hook"

    @property
    def secret(self) -> str:
        return str(self.options.get("secret", self.defaults["secret"]))


class SignalEmulator(Emulator):
    """`url` is the signal-cli-rest-api base for `api_url`; `number` the account it is registered with."""

    module, APP = "signal", "SignalApp"

    @property
    def number(self) -> str:
        return str(self.options.get("number", self.defaults["number"]))


class MatrixEmulator(Emulator):
    """`url` is the homeserver base for `homeserver`; `token` the access token it accepts."""

    module, APP = "matrix", "MatrixApp"


class TwilioEmulator(Emulator):
    """`url` is the API base for `api_url` (requests go to url/2010-04-01/Accounts/<sid>/Messages.json)."""

    module, APP = "twilio", "TwilioApp"

    @property
    def sid(self) -> str:
        return str(self.options.get("sid", self.defaults["sid"]))


class Receiver(Emulator):
    """A plain HTTP receiver (any path): records JSON, form and multipart bodies; `url` is its base."""

    module, APP = "receiver", "ReceiverApp"
