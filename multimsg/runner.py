"""The local runner: every handler on one port under gunicorn, and the drain on a timer.

gunicorn runs one worker process with threads (as functions-framework does);
the drain timer is a thread of that worker. ``--debug`` uses Flask's
development server instead, bound to the given host (127.0.0.1 by default).
"""

from __future__ import annotations

import argparse
import logging
import os
import threading

from .config import settings
from .functions.app import create_app
from .gateway import gateway
from .logs import setup as setup_logs

__all__ = ["main", "DrainTimer"]

log = logging.getLogger("multimsg.runner")


class DrainTimer(threading.Thread):
    """Runs drain passes until stopped: the next one at once after a pass that
    claimed messages (it may have left some for later, and more may have come
    in meanwhile), else after ``interval`` seconds."""

    def __init__(self, interval: float):
        super().__init__(name="multimsg-drain-timer", daemon=True)
        self.interval = interval
        self.stopped = threading.Event()

    def run(self) -> None:
        while not self.stopped.is_set():
            busy_or_idle = True
            try:
                summary = gateway().drain()
                busy_or_idle = summary["busy"] or not summary["claimed"]
            except Exception:
                log.exception("drain pass failed")
            self.stopped.wait(self.interval if busy_or_idle else 0.05)


def _start_timer() -> None:
    interval = settings().drain_interval
    if interval > 0:
        DrainTimer(interval).start()


def _serve_gunicorn(app, host: str, port: int) -> None:
    from gunicorn.app.base import BaseApplication

    class Server(BaseApplication):
        def load_config(self):
            options = {
                "bind": f"[{host}]:{port}" if ":" in host else f"{host}:{port}",
                "workers": 1,
                "threads": 16,
                "worker_class": "gthread",
                "timeout": 0,
                "loglevel": "warning",
                "post_worker_init": lambda worker: _start_timer(),
            }
            for name, value in options.items():
                self.cfg.set(name, value)

        def load(self):
            return app

    Server().run()


def main(argv: list[str] | None = None) -> None:
    s = settings()
    parser = argparse.ArgumentParser(prog="local_runner.py", description="Serve every multimsg endpoint on one port.")
    parser.add_argument("--host", default=s.host, help="address to bind (default %(default)s; env HOST)")
    parser.add_argument("--port", type=int, default=s.port, help="port (default %(default)s; env PORT)")
    parser.add_argument("--debug", action="store_true", help="Flask's development server, with reloader and debugger")
    args = parser.parse_args(argv)

    os.umask(0o077)  # whatever the service or a library it uses creates (metrics files, temp files) is private to its user
    setup_logs()  # human lines, or JSON lines with MULTIMSG_LOG_FORMAT=json; secrets redacted
    log.info("data folder %s", s.home)
    gateway().public_key()  # make the key pair before serving, so /key is the same from the first call
    app = create_app()
    app.config["MAX_CONTENT_LENGTH"] = s.max_upload
    log.info("listening on http://%s:%s (drain every %g s)", args.host, args.port, s.drain_interval)
    if args.debug:
        _start_timer()
        app.run(host=args.host, port=args.port, debug=True, use_reloader=False)
    else:
        _serve_gunicorn(app, args.host, args.port)
