"""A callback receiver for tests, in its own process: verifies every signature with the gateway's public key.

    python -m tests.callback_receiver --port 0 --key callback.pem --out events.jsonl [--status 200]

Prints ``LISTENING <port>``. Every POST is checked the way the README tells a
receiver to (Standard Webhooks headers, ``v1a`` Ed25519 signature over
``{id}.{timestamp}.{body}``, a timestamp within 5 minutes) and appended to
``--out`` as one JSON line: {"id", "verified", "status", "event"}. A verified
event is answered ``--status`` (200 by default), an unverified one 400.
"""

from __future__ import annotations

import argparse
import base64
import json
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.serialization import load_pem_public_key


def verify(public_key, headers, body: bytes) -> dict:
    """The event, if the request is signed by ``public_key``; raises otherwise (the README's few lines)."""
    msg_id, timestamp = headers["webhook-id"], headers["webhook-timestamp"]
    if abs(time.time() - int(timestamp)) > 300:
        raise ValueError("stale timestamp")
    signed = f"{msg_id}.{timestamp}.".encode() + body
    for signature in headers["webhook-signature"].split():
        version, _, value = signature.partition(",")
        if version == "v1a":
            public_key.verify(base64.b64decode(value), signed)  # raises InvalidSignature
            return json.loads(body)
    raise ValueError("no v1a signature")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--key", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--status", type=int, default=200)
    args = parser.parse_args()
    public_key = load_pem_public_key(Path(args.key).read_bytes())
    out = Path(args.out)
    lock = threading.Lock()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            try:
                event, verified = verify(public_key, self.headers, body), True
            except (KeyError, ValueError, InvalidSignature):
                event, verified = None, False
            status = args.status if verified else 400
            with lock, out.open("a") as f:
                f.write(json.dumps({"id": self.headers.get("webhook-id"), "verified": verified, "status": status,
                                    "path": self.path, "host": self.headers.get("Host"), "event": event}) + "\n")
            self.send_response(status)
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"ok")

        def log_message(self, *a) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", args.port), Handler)
    print(f"LISTENING {server.server_address[1]}", flush=True)
    threading.Thread(target=lambda: (sys.stdin.read(), server.shutdown()), daemon=True).start()
    server.serve_forever()


if __name__ == "__main__":
    main()
