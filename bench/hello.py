"""A bare Flask hello, served the way the local runner serves the gateway (its waitress set-up), for bench.intake.

Run: ``python -m bench.hello --port N``.
"""

from __future__ import annotations

import argparse

import flask

from multimsg import runner


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    app = flask.Flask("hello")
    app.add_url_rule("/", "hello", lambda: "hello", methods=["GET", "POST"])
    runner._serve_waitress(app, "127.0.0.1", args.port)


if __name__ == "__main__":
    main()
