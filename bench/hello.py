"""A bare Flask hello, served the way the local runner serves the gateway, for bench.intake.

Run: ``python -m bench.hello --port N [--workers W]``: the runner's waitress
set-up, in ``W`` worker processes sharing one listening socket (the runner's
``MULTIMSG_WORKERS``; default: one per core, as the runner's default).
"""

from __future__ import annotations

import argparse
import os
import sys

import flask

from multimsg import runner
from multimsg.config import env_bool


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    args = parser.parse_args()
    app = flask.Flask("hello")
    app.add_url_rule("/", "hello", lambda: "hello", methods=["GET", "POST"])
    if args.workers <= 1:
        runner._serve_waitress(app, "127.0.0.1", args.port)
        return
    from multimsg.supervisor import Child, Supervisor, bind

    sockets = bind("127.0.0.1", args.port)
    shares = runner.AcceptShares(args.workers)  # connections spread over the workers as the runner's are

    def serve(n: int) -> None:
        if env_bool("MULTIMSG_WORKER_PIN", True):  # as the runner's workers (the same setting)
            runner.pin_to_one_core(n, "hello worker")
        runner._serve_waitress(app, "", 0, sockets, (shares, n))

    children = [Child(f"hello {n}", lambda n=n: serve(n)) for n in range(args.workers)]
    sys.exit(Supervisor(children).run())


if __name__ == "__main__":
    main()
