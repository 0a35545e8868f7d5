"""An older multimsg server, for the client's fallback tests: today's handlers without ``POST /send``.

    python -m tests.older_server PORT [--describe-send]

It serves every handler but ``/send`` (an unknown path there: 404, as a
server from before ``/send`` answers) under waitress on 127.0.0.1:PORT, with
the description of the API minus ``/send`` — or, with ``--describe-send``,
the full description (a server behind a proxy that does not route ``/send``).
No drain timer.
"""

from __future__ import annotations

import sys

import waitress

from multimsg.functions import PATHS, openapi


def main(argv: list[str]) -> None:
    port, describe_send = int(argv[0]), "--describe-send" in argv[1:]
    del PATHS["/send"]
    if not describe_send:
        openapi.spec()["paths"].pop("/send")
    from multimsg.functions.app import create_app  # its HANDLERS are read from PATHS when it is imported

    waitress.serve(create_app(), host="127.0.0.1", port=port, threads=4, ident="multimsg")


if __name__ == "__main__":
    main(sys.argv[1:])
