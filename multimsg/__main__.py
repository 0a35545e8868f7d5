"""The ``multimsg`` command: ``serve`` (the local runner) and ``drain`` (one pass, for cron)."""

from __future__ import annotations

import argparse
import json
import sys

__all__ = ["main"]


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(prog="multimsg", description="Self-hosted messaging gateway.")
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("serve", help="serve the HTTP API on one port (same as local_runner.py)", add_help=False)
    commands.add_parser("drain", help="run one drain pass and print its summary (for crontab)")
    args, rest = parser.parse_known_args(argv)
    if args.command == "serve":
        from .runner import main as serve

        serve(rest)
        return 0
    if rest:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    from .gateway import gateway

    summary = gateway().drain()
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
