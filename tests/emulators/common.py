"""Machinery shared by the platform emulators (telegram.py, whatsapp.py).

Owns: options (CLI flags that can also be changed at run time), the sliding-window limiter,
recording of send requests, scripted answers, the `/_emu/` control API, and start-up of the
server (server.py) that prints `LISTENING <port>`.  A platform module subclasses
`EmulatorApp`, implements its wire format in the hooks (`route`, `limits`, `deliver`,
`rate_limited`, `NAMED`) and calls `main(<its class>)`.

How one platform request is answered (`EmulatorApp.platform`):
  1. `route()` parses it.  Requests that are not sends (getMe, unknown paths) get a `Reply` and
     are not recorded; sends come back as a `Send`, whose `denied` (bad token / path) or
     `invalid` (validation) reply is set when the request must fail.
  2. Under one lock, in arrival order: denied -> scripted answer -> invalid -> limiter ->
     `deliver()`.  The outcome is appended to the records.
  3. The configured latency (plus a scripted delay) is slept, outside the lock.

Control API (JSON; not part of any platform):
  GET  /_emu/received  every recorded send request, in arrival order, whatever its answer
  GET  /_emu/stats     {requests, accepted, rate_limited, max_in_any_window, first_t, last_t}
                       over message sends (uploads excluded); accepted = delivered
  POST /_emu/reset     forget records, scripts, limiter and platform state, and restore the
                       start-up options (`{"keep_config": true}` keeps the current ones)
  GET|POST /_emu/config  read / change options at run time, e.g. {"latency": 0.15, "rate": 0}
  GET  /_emu/files/<sha256>  the bytes of an uploaded file, kept while `keep_files` covers its size
  POST /_emu/script    {"response": <name> | {"status", "body"|"raw", "headers"}, "dest": <id>
                       or null (any), "times": 1, "method": <optional filter>, ...extra}
                       Besides the platform's NAMED answers: "timeout" (processed normally, so
                       possibly delivered, but answered `seconds` (default 30) late) and "drop"
                       (connection closed unanswered, status 0; delivered only if "deliver": true).

Times (`t`, `first_t`, ...) are `time.monotonic()` of the emulator process; on Linux that
clock is system-wide, so tests can compare them with their own `time.monotonic()`.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import threading
import time
from collections import deque
from typing import TYPE_CHECKING, Any, Callable, ClassVar, Mapping

from .server import Request, Response, serve

if TYPE_CHECKING:
    from werkzeug.datastructures import FileStorage

__all__ = [
    "COMMON_OPTIONS",
    "EmulatorApp",
    "Limit",
    "Option",
    "Reply",
    "Request",
    "Response",
    "Send",
    "SlidingLog",
    "describe_file",
    "main",
    "max_in_window",
]


# Plain classes, not dataclasses: `dataclasses` (with `inspect`) and the code it generates cost
# 20 ms of CPU at every emulator's start, which the benchmarks count against the gateway.
class Option:
    """A setting given as `--name` on the command line and changeable via `/_emu/config`."""

    def __init__(self, default: Any, help: str, on: Any = None) -> None:
        self.default, self.help = default, help
        self.on = on  # value used when the run-time config sets a numeric option to `true`

    def coerce(self, value: Any) -> Any:
        if isinstance(value, bool) and not isinstance(self.default, bool):
            value = (self.default if self.on is None else self.on) if value else 0
        return type(self.default)(value)


COMMON_OPTIONS: dict[str, Option] = {
    "latency": Option(0.0, "seconds slept before answering each platform request (per request, not global)"),
    "keep_files": Option(0, "keep the bytes of uploaded files up to this size, for GET /_emu/files/<sha256> (0: none)"),
}


class Reply:
    """One HTTP answer: a JSON `body`, or `raw` text; optionally delayed or dropped."""

    def __init__(self, status: int, body: Any = None, raw: str | None = None, headers: dict[str, str] | None = None,
                 content_type: str = "text/html; charset=utf-8", error: str | None = None, delay: float = 0.0,
                 drop: bool = False) -> None:
        self.status, self.body, self.raw = status, body, raw
        self.headers = headers if headers is not None else {}
        self.content_type = content_type  # used for `raw` bodies only
        self.error = error  # short error text kept in the record
        self.delay = delay  # extra seconds before answering (scripted timeouts)
        self.drop = drop  # close the connection without answering

    def __repr__(self) -> str:
        return f"Reply({self.status}, {self.body if self.raw is None else self.raw!r})"

    @classmethod
    def custom(cls, spec: Mapping[str, Any]) -> "Reply":
        """A scripted `{"status", "body", "headers", "raw"}` answer."""
        return cls(int(spec["status"]), spec.get("body"), spec.get("raw"), dict(spec.get("headers") or {}))

    def response(self) -> Response:
        if self.raw is not None:
            return Response(self.raw, self.status, self.headers, content_type=self.content_type)
        return Response(json.dumps(self.body), self.status, self.headers, content_type="application/json")


class Send:
    """A parsed send request, as the platform module hands it to `EmulatorApp.decide`."""

    def __init__(self, method: str, dest: Any = None, type: str | None = None, fields: dict[str, Any] | None = None,
                 json: Any = None, files: dict[str, dict[str, Any]] | None = None, media: Any = None,
                 problems: list[str] | None = None, denied: Reply | None = None, invalid: Reply | None = None) -> None:
        self.method, self.dest, self.type, self.json, self.media = method, dest, type, json, media
        self.fields: dict[str, Any] = fields if fields is not None else {}
        self.files: dict[str, dict[str, Any]] = files if files is not None else {}
        self.problems: list[str] = problems if problems is not None else []  # recorded as `schema_errors`
        self.denied = denied  # token / path errors: answered even if a script matches
        self.invalid = invalid  # validation errors: answered unless a script matches
        self.data: dict[str, Any] = {}  # platform-private, for deliver()

    def __repr__(self) -> str:
        return f"Send({self.method!r}, dest={self.dest!r}, type={self.type!r})"


class SlidingLog:
    """Arrival times of accepted requests, for a limit of `limit` per any `period` seconds."""

    def __init__(self) -> None:
        self.times: deque[float] = deque()

    def wait(self, now: float, limit: int, period: float) -> float:
        """0.0 if one more request fits now, else the seconds until one does."""
        while self.times and self.times[0] <= now - period:
            self.times.popleft()
        if len(self.times) < limit:
            return 0.0
        return self.times[-limit] + period - now

    def add(self, now: float) -> None:
        self.times.append(now)


class Limit:
    def __init__(self, log: SlidingLog, limit: int, period: float, reason: str) -> None:
        self.log, self.period, self.reason = log, period, reason
        self.limit = limit  # 0 = off


def max_in_window(times: list[float], period: float = 1.0) -> int:
    """Largest number of `times` (sorted) inside any sliding window of `period` seconds."""
    best = start = 0
    for end, t in enumerate(times):
        while t - times[start] >= period:
            start += 1
        best = max(best, end - start + 1)
    return best


def describe_file(upload: FileStorage) -> dict[str, Any]:
    """sha256, size, filename and content type of an uploaded multipart file."""
    digest, size = hashlib.sha256(), 0
    upload.stream.seek(0)
    for chunk in iter(lambda: upload.stream.read(1 << 20), b""):
        digest.update(chunk)
        size += len(chunk)
    return {"sha256": digest.hexdigest(), "size": size, "filename": upload.filename,
            "content_type": upload.mimetype or None}


class EmulatorApp:
    """The state of one emulator and its answers (`handle`); platform modules implement the hooks."""

    name: ClassVar[str] = ""
    OPTIONS: ClassVar[Mapping[str, Option]] = {}
    # Named scripted answers: name -> function(extra options of the script) -> Reply.
    NAMED: ClassVar[Mapping[str, Callable[[dict[str, Any]], Reply]]] = {}
    # Send methods left out of /_emu/stats (e.g. WhatsApp media uploads, which are not messages).
    UNCOUNTED: ClassVar[frozenset[str]] = frozenset()

    def __init__(self, **config: Any) -> None:
        self.options = {**COMMON_OPTIONS, **self.OPTIONS}
        self.config = {name: option.default for name, option in self.options.items()}
        self.lock = threading.Lock()
        self.startup = self.configure(config)
        self.reset()

    # ---- hooks for the platform modules ----------------------------------------------------
    def route(self, request: Request) -> Send | Reply:
        raise NotImplementedError

    def limits(self, send: Send) -> list[Limit]:
        return []

    def deliver(self, send: Send) -> Reply:
        raise NotImplementedError

    def rate_limited(self, send: Send, reason: str, wait: float) -> Reply:
        raise NotImplementedError

    def dest_key(self, dest: Any) -> str:
        return str(dest)

    # ---- state ---------------------------------------------------------------------------
    def reset(self, keep_config: bool = False) -> None:
        """Forget records, scripts, limiter and platform state; restore the start-up options
        too unless `keep_config` (so a test's `/_emu/config` cannot leak into the next test)."""
        with self.lock:
            if not keep_config and hasattr(self, "startup"):
                self.config = dict(self.startup)
            self.records: list[dict[str, Any]] = []
            self.scripts: list[dict[str, Any]] = []
            self.logs: dict[tuple[Any, ...], SlidingLog] = {}
            self.kept: dict[str, bytes] = {}  # sha256 -> bytes of uploaded files (option keep_files)
            self.reset_platform()

    def reset_platform(self) -> None:
        """Clear platform state that /_emu/reset must forget (e.g. uploaded media)."""

    def describe(self, upload: FileStorage) -> dict[str, Any]:
        """``describe_file``, keeping the bytes when ``keep_files`` covers their size."""
        described = describe_file(upload)
        if 0 < described["size"] <= self.config["keep_files"]:
            upload.stream.seek(0)
            with self.lock:
                self.kept[described["sha256"]] = upload.stream.read()
        return described

    def log(self, *key: Any) -> SlidingLog:
        log = self.logs.get(key)
        if log is None:
            log = self.logs[key] = SlidingLog()
        return log

    def configure(self, changes: Mapping[str, Any]) -> dict[str, Any]:
        unknown = sorted(set(changes) - set(self.options))
        if unknown:
            raise ValueError(f"unknown option(s) {unknown}; known: {sorted(self.options)}")
        with self.lock:
            for name, value in changes.items():
                self.config[name] = self.options[name].coerce(value)
            return dict(self.config)

    # ---- HTTP ------------------------------------------------------------------------------
    def handle(self, request: Request) -> Response | None:
        """The answer to one request; None: close the connection unanswered."""
        if request.path.startswith("/_emu/"):
            return self.control(request)
        return self.platform(request)

    def platform(self, request: Request) -> Response | None:
        routed = self.route(request)
        reply = routed if isinstance(routed, Reply) else self.decide(routed)
        pause = self.config["latency"] + reply.delay
        if pause > 0:
            time.sleep(pause)  # in this connection's own thread: other connections go on
        return None if reply.drop else reply.response()

    def decide(self, send: Send) -> Reply:
        with self.lock:
            t = time.monotonic()
            script = None if send.denied else self._take_script(send)
            if send.denied:
                reply, outcome = send.denied, "rejected"
            elif script is not None:
                reply, outcome = self._scripted(script, send, t)
            elif send.invalid:
                reply, outcome = send.invalid, "rejected"
            else:
                reply, outcome = self._admit(send, t)
            self.records.append({
                "t": t, "wall": time.time(), "method": send.method, "dest": send.dest, "type": send.type,
                "fields": send.fields, "json": send.json, "files": send.files, "media": send.media,
                "status": 0 if reply.drop else reply.status, "schema_errors": send.problems,
                "outcome": outcome, "script": script and self._script_name(script),
                "error": reply.error, "response": reply.raw if reply.raw is not None else reply.body,
            })
        return reply

    def _admit(self, send: Send, t: float) -> tuple[Reply, str]:
        limits = [limit for limit in self.limits(send) if limit.limit > 0]
        wait, reason = max(((lim.log.wait(t, lim.limit, lim.period), lim.reason) for lim in limits),
                           default=(0.0, ""))
        if wait > 0:
            return self.rate_limited(send, reason, wait), "rate_limited"
        for limit in limits:
            limit.log.add(t)
        return self.deliver(send), "delivered"

    # ---- scripts ---------------------------------------------------------------------------
    @staticmethod
    def _script_name(script: dict[str, Any]) -> str:
        response = script["response"]
        return response if isinstance(response, str) else f"custom {response.get('status')}"

    def add_script(self, spec: Mapping[str, Any]) -> dict[str, Any]:
        spec = dict(spec)
        response = spec.pop("response", None)
        if isinstance(response, (int, float)) and not isinstance(response, bool):
            response = str(int(response))  # WhatsApp codes may be given as numbers
        if isinstance(response, str):
            if response not in self.NAMED and response not in ("timeout", "drop"):
                raise ValueError(f"unknown response {response!r}; named: {sorted([*self.NAMED, 'timeout', 'drop'])}")
        elif not (isinstance(response, dict) and isinstance(response.get("status"), int)):
            raise ValueError("response must be a name or {'status': int, 'body'|'raw': ..., 'headers': {...}}")
        dest = spec.pop("dest", None)
        times = int(spec.pop("times", 1))
        if times < 1:
            raise ValueError("times must be >= 1")
        script = {"response": response, "dest": None if dest is None else str(dest), "times": times,
                  "method": spec.pop("method", None), "extra": spec}
        with self.lock:
            self.scripts.append(script)
        return script

    def _take_script(self, send: Send) -> dict[str, Any] | None:
        for script in self.scripts:
            if script["dest"] is not None and self.dest_key(script["dest"]) != self.dest_key(send.dest):
                continue
            if script["method"] is not None and script["method"].lower() != send.method.lower():
                continue
            script["times"] -= 1
            if script["times"] == 0:
                self.scripts.remove(script)
            return script
        return None

    def _scripted(self, script: dict[str, Any], send: Send, t: float) -> tuple[Reply, str]:
        response, extra = script["response"], script["extra"]
        if response == "timeout":  # processed normally, answered late (so it may be delivered twice)
            reply, outcome = self._admit(send, t)
            reply.delay = float(extra.get("seconds", 30))
            return reply, outcome
        if response == "drop":
            if extra.get("deliver"):
                reply, outcome = self._admit(send, t)
            else:
                reply, outcome = Reply(0), "dropped"
            reply.drop = True
            return reply, outcome
        reply = self.NAMED[response](extra) if isinstance(response, str) else Reply.custom(response)
        return reply, "scripted"

    # ---- control API -----------------------------------------------------------------------
    def stats(self) -> dict[str, Any]:
        with self.lock:
            records = [r for r in self.records if r["method"] not in self.UNCOUNTED]
        delivered = [r["t"] for r in records if r["outcome"] == "delivered"]
        return {
            "requests": len(records),
            "accepted": len(delivered),
            "rate_limited": sum(r["outcome"] == "rate_limited" for r in records),
            "max_in_any_window": max_in_window(delivered),
            "first_t": records[0]["t"] if records else None,
            "last_t": records[-1]["t"] if records else None,
        }

    def control(self, request: Request) -> Response:
        action = (request.method, request.path[len("/_emu/"):].strip("/"))
        payload = request.get_json(silent=True) if request.method == "POST" else None
        try:
            if action == ("GET", "received"):
                with self.lock:
                    result: Any = list(self.records)
            elif action == ("POST", "reset"):
                self.reset(keep_config=bool((payload or {}).get("keep_config")))
                result = {"ok": True}
            elif action in (("GET", "config"), ("POST", "config")):
                result = self.configure(payload or {})
            elif action == ("POST", "script"):
                result = self.add_script(payload or {})
            elif action == ("GET", "stats"):
                result = self.stats()
            elif request.method == "GET" and action[1].startswith("files/"):
                with self.lock:
                    kept = self.kept.get(action[1][len("files/"):])
                if kept is None:
                    return Reply(404, {"error": "no such file kept (is keep_files set?)"}).response()
                return Response(kept, 200, content_type="application/octet-stream")
            else:
                return Reply(404, {"error": f"no control endpoint {action[0]} {request.path}"}).response()
        except (ValueError, TypeError, KeyError) as exc:
            return Reply(400, {"error": str(exc)}).response()
        return Reply(200, result).response()


def _exit_when_stdin_closes() -> None:
    sys.stdin.buffer.read()
    os._exit(0)


def main(app_class: type[EmulatorApp], argv: list[str] | None = None) -> None:
    """Command line: `python -m tests.emulators.<name> --port 0 [--<option> VALUE ...]`."""
    options = {**COMMON_OPTIONS, **app_class.OPTIONS}
    parser = argparse.ArgumentParser(prog=f"python -m tests.emulators.{app_class.name}",
                                     description=(app_class.__doc__ or "").strip().splitlines()[0])
    parser.add_argument("--port", type=int, default=0, help="port on 127.0.0.1; 0 picks a free one")
    parser.add_argument("--exit-with-stdin", action="store_true",
                        help="exit when stdin reaches EOF (the Python handle uses it so that emulators die with the test run)")
    for name, option in options.items():
        parser.add_argument("--" + name.replace("_", "-"), dest=name, type=type(option.default),
                            default=option.default, help=f"{option.help} (default: {option.default})")
    args = parser.parse_args(argv)
    app = app_class(**{name: getattr(args, name) for name in options})
    if args.exit_with_stdin:
        threading.Thread(target=_exit_when_stdin_closes, daemon=True).start()
    try:  # no access log: at 100 requests/s it would only fill the parent's stderr
        serve(app.handle, args.port, lambda port: print(f"LISTENING {port}", flush=True))
    except KeyboardInterrupt:
        pass
