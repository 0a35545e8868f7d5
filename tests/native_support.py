"""Shared pieces of the native services' tests (outbox, e-mail, webhook, Discord, Slack, Teams).

- ``FILES``: one sample per file datatype (datatype, content builder, upload name, MIME type
  the services send it as), for the "every datatype each platform takes" tests;
- ``start_gateway(tmp_path_factory, server_keys, env)``: a real runner with short backoffs;
- ``cli_send(gateway, content, serv, dest, ...)``: ``multimsg send --wait`` against it (the CLI
  path: /key, encrypted upload, /msg, waiting on /cons), returns the completed process.
"""

from __future__ import annotations

import shutil

from tests import media
from tests.gatewayproc import Gateway
from tests.test_cli import multimsg

__all__ = ["FILES", "start_gateway", "cli_send", "FAST", "wait_attempted"]

FILES = [
    ("image", media.png, "shot.png", "image/png"),
    ("document", media.pdf, "report.pdf", "application/pdf"),
    ("audio", media.mp3, "song.mp3", "audio/mpeg"),
    ("video", media.mp4, "clip.mp4", "video/mp4"),
    ("voice", media.ogg_opus, "note.ogg", "audio/ogg"),
]

FAST = {
    "MULTIMSG_DRAIN_INTERVAL": "0.2",  # the timer drains too: `multimsg send --wait` only polls
    "MULTIMSG_RETRY_BASE": "0.05",
    "MULTIMSG_RETRY_CAP": "0.2",
    "MULTIMSG_READ_TIMEOUT": "2",
    "MULTIMSG_FSYNC": "0",
    "MULTIMSG_REPORT_GRACE": "0",
}


def start_gateway(tmp_path_factory, server_keys, env: dict[str, str], name: str = "native") -> Gateway:
    home = tmp_path_factory.mktemp(name) / "home"
    shutil.copytree(server_keys, home / "keys")
    return Gateway(home, {**FAST, **env}).start()


def cli_send(gateway: Gateway, tmp_path, content: bytes, serv: str, dest: str, *args: str, name: str = "upload.bin"):
    path = tmp_path / name
    path.write_bytes(content)
    return multimsg("send", str(path), "--serv", serv, "--dest", dest, "--server", gateway.url, "--wait", "--timeout", "20", "--json", *args)


def wait_attempted(gateway: Gateway, message_id: str, timeout: float = 10.0) -> tuple[dict, str]:
    """Drain until the message has been tried once (the runner's timer may hold the drain); its report, and the passes' summaries as text."""
    import json
    import time

    deadline, summaries = time.monotonic() + timeout, []
    while True:
        summaries.append(json.dumps(gateway.drain()))
        report = gateway.state(message_id)
        if report["attempts"] or report["last_error"] or time.monotonic() > deadline:
            return report, " ".join(summaries)
        time.sleep(0.1)


def settled_drain(gateway: Gateway, timeout: float = 10.0) -> dict:
    """A drain pass that ran (the runner's timer may hold the drain: then ask again), its summary."""
    import time

    deadline = time.monotonic() + timeout
    while True:
        summary = gateway.drain()
        if not summary.get("busy") or time.monotonic() > deadline:
            return summary
        time.sleep(0.05)
