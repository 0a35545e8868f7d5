"""The ``multimsg`` command: a client for users, and the tools operators run next to a server.

Client side (talks HTTP to ``--server`` / MULTIMSG_URL through ``multimsg.Client``):
``send``, ``status``. Operator side (works on the local data folder, MULTIMSG_HOME):
``serve``, ``drain``, ``stats``, ``keys``, ``config``, ``migrate``; ``token`` is
``multimsg.tokens``' own command. Errors are one line on stderr, with the
server's reason when it gave one; exit codes are in ``EXIT_CODES``
(``multimsg --help`` lists them).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
from pathlib import Path

from .client import CANCELLED_EXIT, EXIT_CODES, Client, ClientError, ConnectionFailed, Status, default_known_keys, infer_type
from .errors import Unavailable

__all__ = ["main", "build_parser", "Bar"]

PROGRESS_MIN = 4 * 1024 * 1024  # uploads this large get a progress bar (on a terminal)
PASSTHROUGH = ("serve", "token")  # subcommands with their own argument parsers


def _say(text: str) -> None:
    print(f"multimsg: {text}", file=sys.stderr, flush=True)


def _human_seconds(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    seconds = int(seconds)
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m {seconds % 60:02d}s"
    if seconds < 86400:
        return f"{seconds // 3600}h {seconds % 3600 // 60:02d}m"
    return f"{seconds // 86400}d {seconds % 86400 // 3600:02d}h"


def _size(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} GB"


class Bar:
    """A one-line progress bar on a terminal (stderr), redrawn at most ten times a second."""

    def __init__(self, label: str, stream=None, width: int = 28):
        self.label = label
        self.stream = stream or sys.stderr
        self.width = width
        self._drawn = 0.0
        self._shown = False

    def draw(self, done: float, total: float, detail: str = "", force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._drawn < 0.1:
            return
        self._drawn = now
        fraction = min(1.0, done / total) if total else 0.0
        filled = int(fraction * self.width)
        bar = "#" * filled + "." * (self.width - filled)
        self.stream.write(f"\r{self.label} [{bar}] {fraction * 100:3.0f}% {detail}\033[K")
        self.stream.flush()
        self._shown = True

    def done(self) -> None:
        if self._shown:
            self.stream.write("\n")
            self.stream.flush()


class StatusLine:
    """``--wait``'s display: a live line on a terminal, one line per change otherwise (stderr)."""

    def __init__(self, message_id: str, stream=None):
        self.message_id = message_id
        self.stream = stream or sys.stderr
        self.live = self.stream.isatty()
        self.started = time.monotonic()
        self._last: tuple | None = None

    @staticmethod
    def describe(status: Status) -> str:
        text = status.state
        if status.attempts:
            text += f", {status.attempts} attempt{'s' if status.attempts != 1 else ''}"
        if status.last_error and not status.delivered:
            text += f": {status.last_error}"
        if status.delivered and status.platform_ids:
            text += f" (platform id{'s' if len(status.platform_ids) > 1 else ''} {', '.join(map(str, status.platform_ids))})"
        return text

    def __call__(self, status: Status) -> None:
        elapsed = time.monotonic() - self.started
        if self.live:
            self.stream.write(f"\r{self.message_id} {self.describe(status)} [{elapsed:.1f}s]\033[K")
            if status.final:
                self.stream.write("\n")
            self.stream.flush()
            return
        key = (status.state, status.attempts, status.last_error)
        if key != self._last:
            self._last = key
            print(f"{self.message_id} {self.describe(status)}", file=self.stream, flush=True)


# -- client commands -----------------------------------------------------------------
SEND_RETRIES = 3  # multimsg send tries a request again this many times, with the same Idempotency-Key


def _client(args, retries: int = 0) -> Client:
    pin = getattr(args, "key_fingerprint", None)
    return Client(args.server, args.token, timeout=args.http_timeout, key_fingerprint=pin, known_keys=default_known_keys(),
                  retries=retries)


def _wait(client: Client, message_id: str, args) -> int:
    line = StatusLine(message_id)
    status = client.wait(message_id, timeout=args.timeout, on_poll=line)
    if args.json:
        print(json.dumps(status.raw))
    return 0 if status.delivered else CANCELLED_EXIT if status.state == "cancelled" else 1


def cmd_send(args) -> int:
    client = _client(args, retries=SEND_RETRIES)
    if args.file == "-":
        content, filename = sys.stdin.buffer.read(), args.filename or "stdin"
        size = len(content)
    else:
        path = Path(args.file)
        try:
            with open(path, "rb"):
                pass
            size = path.stat().st_size
        except OSError as exc:
            _say(f"cannot read {args.file}: {exc.strerror}")
            return 2
        content, filename = path, args.filename
    bar = Bar(f"upload {_size(size)}") if size >= PROGRESS_MIN and sys.stderr.isatty() else None
    progress = (lambda sent, total: bar.draw(sent, total, f"{_size(sent)}/{_size(total)}", force=sent >= total)) if bar else None
    try:
        datatype = args.type
        if datatype is None:
            if isinstance(content, bytes):
                head = content[:8192]
            else:
                with content.open("rb") as handle:
                    head = handle.read(8192)
            datatype = infer_type(head, args.serv)
        message_id = client.send(content, args.serv, args.dest, datatype, caption=args.caption,
                                 filename=filename, encrypt=not args.plain, progress=progress, at=args.at, convert=args.convert,
                                 idempotency_key=args.idempotency_key or client.new_idempotency_key())
    finally:
        if bar:
            bar.done()
    if args.json and not args.wait:
        print(json.dumps({"id": message_id, "type": datatype, "encrypted": not args.plain}))
    elif not args.json:
        print(message_id, flush=True)
    if args.wait:
        return _wait(client, message_id, args)
    return 0


def cmd_status(args) -> int:
    client = _client(args)
    if args.wait:
        return _wait(client, args.id, args)
    status = client.status(args.id)
    if args.json:
        print(json.dumps(status.raw))
    else:
        print(f"{status.id} {StatusLine.describe(status)}")
        if status.final:
            print("(a final state stays readable for MULTIMSG_REPORT_GRACE after it is first read, then it is archived)", file=sys.stderr)
    return 1 if status.failed else 0


def cmd_cancel(args) -> int:
    status = _client(args).cancel(args.id)
    print(json.dumps(status.raw) if args.json else f"{status.id} {status.state}")
    return 0


def cmd_history(args) -> int:
    client, cursor, rows = _client(args), args.cursor, []
    while True:  # --all follows the cursor; else one page
        page = client.history(state=args.state, serv=args.serv, since=args.since, limit=args.limit, cursor=cursor)
        rows += page["messages"]
        cursor = page.get("next_cursor")
        if not (args.all and cursor):
            break
    if args.json:
        print(json.dumps({"messages": rows, "next_cursor": cursor}))
        return 0
    table = [("ID", "CREATED", "STATE", "SERV", "DEST", "TYPE", "ERROR")]
    table += [(m["id"], (m.get("created_at") or "")[:19].replace("T", " "), m["state"], m["serv"], m["dest"], m["type"],
               (m.get("last_error") or "")[:40]) for m in rows]
    widths = [max(len(str(row[i])) for row in table) for i in range(len(table[0]))]
    for row in table:
        print("  ".join(str(v).ljust(w) for v, w in zip(row, widths)).rstrip())
    if cursor:
        print(f"(more: --cursor {cursor}, or --all)", file=sys.stderr)
    return 0


# -- operator commands ---------------------------------------------------------------
def cmd_drain(args) -> int:
    from . import logs
    from .gateway import gateway

    tty = sys.stderr.isatty() and not args.json
    logs.setup(level=30 if tty else 20)  # on a terminal the bar replaces the per-message lines
    gw = gateway()
    counters = getattr(gw.store, "counters", None)
    stop = threading.Event()
    painter = None
    if tty and counters is not None:
        painter = threading.Thread(target=_paint_drain, args=(counters, stop), daemon=True)
        painter.start()
    started = time.monotonic()
    try:
        summary = gw.drain()
    finally:
        stop.set()
        if painter:
            painter.join(2)
    elapsed = time.monotonic() - started
    if args.json:
        print(json.dumps(summary))
        return 0
    if summary.get("busy"):
        print("drain: another drain pass is running on this data folder; nothing done")
        return 0
    line = (
        f"drain: claimed {summary.get('claimed', 0)}, delivered {summary.get('delivered', 0)}, "
        f"retried {summary.get('retried', 0)}, failed {summary.get('failed', 0)} in {elapsed:.2f} s"
    )
    for serv, reason in (summary.get("misconfigured") or {}).items():
        line += f"; {serv} misconfigured: {reason}"
    print(line, flush=True)
    return 0


def cmd_migrate(args) -> int:
    from .config import settings
    from .migrate import migrate

    if not args.to.startswith(("redis://", "rediss://", "redis+cluster://", "rediss+cluster://")):
        _say("migrate --to takes the shared store's URL: redis://HOST:PORT/DB (or rediss://, redis+cluster://HOST:PORT,...)")
        return 2
    report = migrate(settings(), args.to)
    print(report.line(), flush=True)
    return 0


def _outcomes(snapshot: dict) -> dict[str, int]:
    return {o: sum(s["outcomes"].get(o, 0) for s in snapshot["services"].values()) for o in ("delivered", "failed", "retried")}


def _paint_drain(counters, stop: threading.Event) -> None:
    """The drain's progress bar: messages handled in this pass, out of those queued when it began."""
    bar = Bar("drain")
    first = counters.snapshot()
    queued = sum(s["states"].get("queued", 0) for s in first["services"].values())
    before = _outcomes(first)
    while True:
        stopping = stop.wait(0.1)
        now = _outcomes(counters.snapshot())
        delta = {o: now[o] - before[o] for o in now}
        done = sum(delta.values())
        total = max(queued, done, 1)
        bar.draw(done, total, f"{done}/{total} messages: {delta['delivered']} delivered, "
                              f"{delta['failed']} failed, {delta['retried']} retried", force=stopping)
        if stopping:
            break
    bar.done()


def cmd_stats(args) -> int:
    from .gateway import gateway
    from .metrics import receipt_counts
    from .services import instances

    store = gateway().store
    if args.rebuild:
        counted = store.rebuild()
        print(f"counted {counted} stored messages again", file=sys.stderr)
    snapshot = store.counters.snapshot()
    snapshot["callbacks"] = store.outbox_figures()
    snapshot["receipts"] = receipt_counts()
    for serv in instances():
        snapshot["services"].setdefault(serv, {
            "states": {}, "oldest_queued_age": None, "outcomes": {}, "last_hour": {}, "latency": {},
        })
    if args.json:
        for figures in snapshot["services"].values():
            figures.pop("latency", None)
        print(json.dumps(snapshot, indent=2, sort_keys=True))
        return 0
    header = ("service", "queued", "oldest queued", "delivered 1h", "failed 1h", "retried 1h", "awaiting /cons")
    rows = []
    for serv, figures in sorted(snapshot["services"].items()):
        states, hour = figures["states"], figures["last_hour"]
        rows.append((
            serv, str(states.get("queued", 0)), _human_seconds(figures["oldest_queued_age"]),
            str(hour.get("delivered", 0)), str(hour.get("failed", 0)), str(hour.get("retried", 0)),
            str(states.get("delivered", 0) + states.get("failed", 0)),
        ))
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    for row in [header, *rows]:
        print("  ".join(cell.ljust(w) if i == 0 else cell.rjust(w) for i, (cell, w) in enumerate(zip(row, widths))))
    callbacks = snapshot["callbacks"]
    print(f"callbacks: {callbacks.get('pending', 0)} pending, {callbacks.get('delivered', 0)} delivered, "
          f"{callbacks.get('given_up', 0)} given up")
    for serv, statuses in sorted(snapshot["receipts"].items()):
        print(f"receipts {serv}: " + ", ".join(f"{n} {status}" for status, n in sorted(statuses.items())))
    drain = snapshot.get("drain") or {}
    if drain.get("last_at"):
        ago = time.time() - drain["last_at"]
        print(f"drain: {drain.get('passes', 0)} passes; the last ended {_human_seconds(ago)} ago and took {drain.get('last_seconds', 0):.3f} s")
    else:
        print("drain: no pass recorded yet")
    return 0


def cmd_keys(args) -> int:
    from .config import settings
    from .crypto import key_fingerprint
    from .gateway import server_keys

    if args.action == "show" and args.server:  # a server's /key over HTTP (no pinning: this is how to read it)
        with Client(args.server, timeout=30.0) as client:
            pem = client.public_key()
        print(f"{key_fingerprint(pem)} ({client.url}/key)")
        return 0
    if args.action == "rotate-storage":
        return _rotate_storage(settings())
    keys = server_keys(settings())
    if args.action == "rotate":
        info = keys.rotate(args.grace)
        print(f"new key {key_fingerprint(info['public_pem'])} (served by /key from now on)")
        if info["retired_until"]:
            until = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(info["retired_until"]))
            print(f"the previous key still decrypts uploads until {until} ({_human_seconds(info['retired_until'] - time.time())})")
        else:
            print("the previous key no longer decrypts anything")
        return 0
    print(f"current key {key_fingerprint(keys.public_pem)}")
    for retired in keys.retired:
        until = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(retired.expires_at))
        print(f"retired key {key_fingerprint(retired.public_pem)} decrypts until {until}")
    return 0


def _rotate_storage(s) -> int:
    """A new storage key wraps every upload's data key (content untouched); older keys go once nothing needs them."""
    from .gateway import _backend
    from .layout import Layout
    from .queue.sealed import SealedSpool
    from .storage_keys import KeyFile, storage_keys

    source = storage_keys(s.storage_key, s.storage_key_file, s.home)
    spool = _backend(s, Layout(s.home))[1]
    assert isinstance(spool, SealedSpool)
    keys = source.add_current() if isinstance(source, KeyFile) else source.load()
    counts = spool.rewrap(keys)
    print(f"re-wrapped {counts['rewrapped']} data keys with the current storage key ({keys.source}); content not rewritten")
    if counts["unreadable"]:
        print(f"{counts['unreadable']} stored objects open with no key of {keys.source} (altered, or another key): left as they are")
    if counts["on_old_keys"]:
        print(f"{counts['on_old_keys']} uploads arrived sealed with an older key meanwhile: run this again; the older keys stay")
        return 1
    if isinstance(source, KeyFile):
        source.keep_only([keys.current])
        print(f"older storage keys removed from {source.path}")
    elif len(keys.keys) > 1:
        print("every upload now opens with the first key of MULTIMSG_STORAGE_KEY: the others can be removed from it")
    return 0


def cmd_config(args) -> int:
    from . import config
    from .services import get_service, instances

    s = config.settings()
    configured_instances = instances()
    for name in configured_instances:  # instances read their own settings when made
        get_service(name)
    config.env("MULTIMSG_LOG_FORMAT", "text")
    path, explicit = config.config_path()
    from_file = config.file_values()
    # A Settings field is named after its variable (drain_interval: MULTIMSG_DRAIN_INTERVAL; port: PORT).
    parsed = {}
    for field_name, value in vars(s).items():
        variable = field_name.upper()
        parsed[variable if variable in config.UNPREFIXED else f"MULTIMSG_{variable}"] = value
    rows = {}
    for name in sorted(config.READ):
        default = config.READ[name]
        value = parsed[name] if name in parsed else config.env(name, default)
        if value is not None and not isinstance(value, str):
            value = str(value)
        if os.environ.get(name, "").strip():
            source = "environment"
        elif name in from_file:
            source = "file"
        else:
            source = "default"
        if value is not None and config.is_secret(name):
            value = "******** (set)"
        rows[name] = {"value": value, "source": source}
    unknown = sorted(set(from_file) - set(config.READ))
    services = {}
    for name, kind in sorted(configured_instances.items()):
        service = get_service(name)
        variables = [config.instance_variable(name, "kind"), *service.config.variables.values()]
        services[name] = {"kind": kind, "configured": service.configured(), "missing": service.missing_credentials(),
                          "settings": {variable: rows[variable]["value"] for variable in variables if variable in rows}}
    file_state = "found" if from_file or path.exists() else ("missing" if explicit else "none")
    if args.json:
        print(json.dumps({"file": str(path), "file_state": file_state, "home": str(s.home), "settings": rows, "services": services,
                          "unknown": unknown}, indent=2))
    else:
        print(f"# config file: {path} ({file_state}); the environment wins over it")
        print(f"# data folder: {s.home}")
        width = max(len(name) for name in rows)
        for name, row in rows.items():
            value = "(unset)" if row["value"] is None else row["value"]
            print(f"{name.ljust(width)}  {value}  [{row['source']}]")
        print("# service instances (serv: kind, configured or the settings missing)")
        for name, shown in services.items():
            state = "configured" if shown["configured"] else "missing " + ", ".join(shown["missing"])
            print(f"{name}: {shown['kind']}, {state}")
    for name in unknown:
        _say(f"{path}: {name} is not a setting multimsg reads (ignored)")
    if from_file and path.exists() and path.stat().st_mode & 0o077 and any(config.is_secret(n) for n in from_file):
        _say(f"{path} holds secrets and is readable by others: chmod 600 {path}")
    return 0


# -- the parser ----------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    codes = "\n".join(f"  {code:>3}  {meaning}" for code, meaning in sorted(EXIT_CODES.items()))
    parser = argparse.ArgumentParser(
        prog="multimsg",
        description="Send files and messages through a multimsg gateway, and run one.",
        epilog=f"exit codes:\n{codes}",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    remote = argparse.ArgumentParser(add_help=False)
    remote.add_argument("--server", metavar="URL", help="the gateway's URL (default: MULTIMSG_URL, else http://127.0.0.1:8080)")
    remote.add_argument("--token", help="client token for token identity mode (default: MULTIMSG_TOKEN)")
    remote.add_argument("--http-timeout", type=float, default=30.0, metavar="SECONDS", help=argparse.SUPPRESS)
    waiting = argparse.ArgumentParser(add_help=False)
    waiting.add_argument("--timeout", type=float, metavar="SECONDS", help="with --wait: give up after this long (exit 8)")
    waiting.add_argument("--json", action="store_true", help="print the answer as JSON on stdout")

    send = commands.add_parser("send", parents=[remote, waiting], help="upload a file (encrypted) and queue it; prints the message id",
                               description="Upload FILE (encrypted with the server's /key unless --plain), queue it, print the message id.")
    send.add_argument("file", metavar="FILE", help="the file to send, or - for standard input")
    send.add_argument("--serv", required=True, help="the service: telegram, wpp1, ...")
    send.add_argument("--dest", required=True, help="the destination on that service (chat id, phone number, ...)")
    send.add_argument("--type", help="text, image, document, audio, video, voice, template (default: inferred from the content)")
    send.add_argument("--caption", help="a caption for a photo, video, document...")
    send.add_argument("--filename", help="the file name the recipient sees (documents; default: FILE's name)")
    send.add_argument("--convert", action=argparse.BooleanOptionalAction, default=None,
                      help="voice/audio the platform refuses is transcoded by the server (ffmpeg): voice to OGG/Opus, audio to MP3 "
                           "(--no-convert: never; default: the service's setting)")
    send.add_argument("--plain", action="store_true", help="upload without encryption (over plain HTTP, anyone on the network path can read it)")
    send.add_argument("--wait", action="store_true", help="wait for delivered (exit 0), failed (exit 1) or cancelled (exit 11), showing the state")
    send.add_argument("--key-fingerprint", metavar="FP",
                      help="refuse any server key but this one: SHA256:<base64> as 'multimsg keys show' prints it, or 64 hex digits "
                           "(default: MULTIMSG_KEY_FINGERPRINT; without one the first key seen per server URL is pinned in "
                           "$XDG_CONFIG_HOME/multimsg/known_keys, exit 9 if it changes)")
    send.add_argument("--at", metavar="TIME", help="not sent before TIME: RFC 3339 with an offset (2026-12-01T09:30:00Z) or Unix seconds")
    send.add_argument("--idempotency-key", metavar="KEY",
                      help="the Idempotency-Key of both requests (default: a fresh one per send, reused on the command's own retries)")
    send.set_defaults(run=cmd_send)

    cancel = commands.add_parser("cancel", parents=[remote], help="cancel a queued or scheduled message; it is never sent")
    cancel.add_argument("id", metavar="ID")
    cancel.add_argument("--json", action="store_true", help="print the answer as JSON on stdout")
    cancel.set_defaults(run=cmd_cancel)

    status = commands.add_parser("status", parents=[remote, waiting], help="a message's state (a final state is archived after it has been read)")
    status.add_argument("id", metavar="ID")
    status.add_argument("--wait", action="store_true", help="wait for a final state")
    status.set_defaults(run=cmd_status)

    history = commands.add_parser("history", parents=[remote], help="your own messages of the last days, newest first, as a table")
    history.add_argument("--state", help="only this state (queued, delivered, failed, ...)")
    history.add_argument("--serv", help="only this service")
    history.add_argument("--since", metavar="TIME", help="only messages created since TIME (Unix seconds or RFC 3339)")
    history.add_argument("--limit", type=int, metavar="N", help="messages per page (1-500; default 50)")
    history.add_argument("--cursor", metavar="CURSOR", help="the page after this cursor (as the previous page printed)")
    history.add_argument("--all", action="store_true", help="follow the cursor to the last page")
    history.add_argument("--json", action="store_true", help="print the answer as JSON on stdout (for scripts)")
    history.set_defaults(run=cmd_history)

    commands.add_parser("serve", help="serve the HTTP API on one port (same as local_runner.py; serve --help)", add_help=False)

    drain = commands.add_parser("drain", help="run one drain pass on this data folder (for crontab)")
    drain.add_argument("--json", action="store_true", help="print the pass's summary as JSON")
    drain.set_defaults(run=cmd_drain)

    migrate = commands.add_parser("migrate", help="copy this data folder's messages and their content into a Redis backend (idempotent)",
                                  description="Copy the embedded store's messages (queued and final, not the archive) and their content "
                                              "into the shared store at URL (and MULTIMSG_BLOBS). Messages already there are skipped.")
    migrate.add_argument("--to", required=True, metavar="URL", help="redis://HOST:PORT/DB, rediss://..., or redis+cluster://HOST:PORT[,...]")
    migrate.set_defaults(run=cmd_migrate)

    stats = commands.add_parser("stats", help="queue depth, oldest queued message, deliveries in the last hour, callbacks, receipts")
    stats.add_argument("--json", action="store_true")
    stats.add_argument("--rebuild", action="store_true", help="recount the stored messages first (after a crash or an upgrade)")
    stats.set_defaults(run=cmd_stats)

    keys = commands.add_parser("keys", help="the server's key pair: show, rotate; the storage key: rotate-storage")
    key_actions = keys.add_subparsers(dest="action", required=True)
    show = key_actions.add_parser("show", help="the current key's fingerprint (SHA256:<base64>) and the retired keys still accepted")
    show.add_argument("--server", metavar="URL", help="show the key a server serves at URL/key instead of this data folder's")
    rotate = key_actions.add_parser("rotate", help="make a new key pair; the previous one keeps decrypting for a grace period")
    rotate.add_argument("--grace", type=float, metavar="SECONDS",
                        help="how long the previous key keeps working (default MULTIMSG_KEY_GRACE, 7 days; 0: not at all)")
    key_actions.add_parser("rotate-storage", help="a new storage key (the key file's; or re-wrap with the first of MULTIMSG_STORAGE_KEY) "
                                                  "re-wraps every upload's data key, without rewriting content")
    keys.set_defaults(run=cmd_keys)

    config = commands.add_parser("config", help="the effective configuration (environment, then multimsg.toml), secrets masked")
    config.add_argument("--json", action="store_true")
    config.set_defaults(run=cmd_config)

    # Subcommands owned by other modules, with their own parsers.
    commands.add_parser("token", help="client tokens for MULTIMSG_IDENTITY=token: token add NAME | list | remove NAME", add_help=False)
    return parser


def _passthrough(command: str, rest: list[str]) -> int:
    if command == "serve":
        from .runner import main as serve

        serve(rest)
        return 0
    from .tokens import main as token

    return token(rest)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    os.umask(0o077)  # drain, stats, keys and token write into the data folder: private to its user
    try:
        if argv and argv[0] in PASSTHROUGH:
            return _passthrough(argv[0], argv[1:])
        parser = build_parser()
        args = parser.parse_args(argv)
        if not getattr(args, "run", None):
            parser.print_help(sys.stderr)
            return 2
        return args.run(args)
    except ClientError as exc:
        _say(exc.reason)
        return exc.exit_code
    except Unavailable as exc:  # drain, stats, rebuild on a shared store that cannot be reached
        _say(exc.reason)
        return ConnectionFailed.exit_code
    except KeyboardInterrupt:
        print(file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 0
