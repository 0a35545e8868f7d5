"""Shared pieces of the native services' tests (outbox, e-mail, webhook, Discord, Slack, Teams).

- ``FILES``: one sample per file datatype (datatype, content builder, upload name, MIME type
  the services send it as), for the "every datatype each platform takes" tests;
- ``start_gateway(tmp_path_factory, server_keys, env)``: a real runner with short backoffs;
- ``cli_send(gateway, content, serv, dest, ...)``: ``multimsg send --wait`` against it (the CLI
  path: /key, encrypted upload, /msg, waiting on /cons), returns the completed process;
- ``SAMPLES``, ``VIA`` and ``send_every(gateway, tmp_path, via, serv, dests)``: one sample of
  each datatype through the HTTP API (upload, /msg, drain, /cons) or the CLI, all queued at
  once through one runner, then every report: the "each datatype end to end" tests;
- the outcome rows through a runner: ``scripted`` (an emulator's scripted answer, then a
  message to that dest), and what each kind of outcome looks like from outside:
  ``assert_gave_up_retrying`` (a transient answer, with ``RETRIES`` in the runner's
  environment), ``assert_throttled`` (a rate limit: the service waits, no attempt used),
  ``assert_held`` (refused credentials: the service is held, its messages stay queued).
"""

from __future__ import annotations

import json
import shutil
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from typing import Callable, Iterable, Iterator

from tests import media
from tests.gatewayproc import Gateway
from tests.test_cli import multimsg

__all__ = ["FILES", "SAMPLES", "VIA", "Sent", "send_every", "arrivals", "instance_env", "start_gateway", "serve", "cli_send", "FAST", "wait_attempted",
           "settled_drain", "swept", "RETRIES", "scripted", "assert_gave_up_retrying", "assert_throttled", "assert_held"]

FILES = [
    ("image", media.png, "shot.png", "image/png"),
    ("document", media.pdf, "report.pdf", "application/pdf"),
    ("audio", media.mp3, "song.mp3", "audio/mpeg"),
    ("video", media.mp4, "clip.mp4", "video/mp4"),
    ("voice", media.ogg_opus, "note.ogg", "audio/ogg"),
]

FILE_TYPES = [datatype for datatype, *_ in FILES]
SAMPLES = [("text", lambda: "hola ✓ — una línea\ny otra".encode(), "note.txt", "text/plain"), *FILES]
VIA = ["http", "cli"]


@dataclass
class Sent:
    """One sample sent by ``send_every``: what went, where, its caption, and the final report."""

    datatype: str
    content: bytes
    dest: str
    upload_name: str
    mime: str
    caption: str | None
    report: dict


FAST = {
    "MULTIMSG_DRAIN_INTERVAL": "0.2",  # the timer drains too: `multimsg send --wait` only polls
    "MULTIMSG_RETRY_BASE": "0.05",
    "MULTIMSG_RETRY_CAP": "0.2",
    "MULTIMSG_READ_TIMEOUT": "2",
    "MULTIMSG_FSYNC": "0",
    "MULTIMSG_REPORT_GRACE": "0",
}


def instance_env(name: str, kind: str, **settings: str) -> dict[str, str]:
    """The environment that configures instance ``name`` of ``kind`` (``MULTIMSG_<NAME>_<KEY>``), unpaced unless ``settings`` say."""
    settings = {"kind": kind, "rate": "0", "dest_interval": "0", **settings}
    return {f"MULTIMSG_{name.upper()}_{key.upper()}": value for key, value in settings.items()}


def start_gateway(tmp_path_factory, server_keys, env: dict[str, str], name: str = "native") -> Gateway:
    home = tmp_path_factory.mktemp(name) / "home"
    shutil.copytree(server_keys, home / "keys")
    return swept(Gateway(home, {**FAST, **env}).start())


def swept(gateway: Gateway) -> Gateway:
    """The runner once its first drain pass (and the sweep that pass runs) is over.

    The rows then start from a settled engine: the sweep's rebuild of the due index is not
    running under their first sends, and a row that times a hold or a retry does not count
    a start-up pass's time. (That rebuild once dropped from the index a message queued into
    a new shard meanwhile; ``test_tiny_rebuild_keeps_in_the_index_a_message_queued_into_a_new_shard_meanwhile``
    covers the fix.)
    """
    settled_drain(gateway)
    return gateway


def serve(tmp_path_factory, server_keys, env: dict[str, str], name: str = "native") -> Iterator[Gateway]:
    """A module fixture's body: ``yield from serve(...)`` runs a gateway for the module and stops it after."""
    runner = start_gateway(tmp_path_factory, server_keys, env, name)
    try:
        yield runner
    finally:
        runner.stop()


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


def send_every(gateway: Gateway, tmp_path, via: str, serv: str, dests: dict[str, str], captioned: Iterable[str] | None = None) -> dict[str, Sent]:
    """Send the sample of each datatype in ``dests`` (datatype -> dest) to ``serv`` through ``via``.

    ``via`` is ``"http"`` (upload, /msg, then drain and /cons until final) or ``"cli"``
    (``multimsg send --wait --json`` per sample, all at once, while this drains the runner
    as its timer would). Files go with a caption (only the datatypes in ``captioned``, when
    given). Returns datatype -> ``Sent`` with the final report of each.
    """
    samples = [(datatype, build(), name, mime) for datatype, build, name, mime in SAMPLES if datatype in dests]
    assert len(samples) == len(dests), f"no sample for {sorted(set(dests) - {s[0] for s in samples})}"
    takes = set(FILE_TYPES if captioned is None else captioned)
    captions = {datatype: f"{datatype} ✓ by {via}" if datatype in takes else None for datatype, *_ in samples}
    if via == "http":
        ids = {}
        for datatype, content, name, _ in samples:
            extra = {"caption": captions[datatype]} if captions[datatype] else {}
            ids[datatype] = gateway.send(content, serv, dests[datatype], datatype, filename=name, **extra)
        reports = {datatype: gateway.wait_state(message_id, timeout=30) for datatype, message_id in ids.items()}
    else:
        def run(sample):
            datatype, content, name, _ = sample
            folder = tmp_path / f"cli-{datatype}"
            folder.mkdir(parents=True, exist_ok=True)
            extra = ["--caption", captions[datatype]] if captions[datatype] else []
            result = cli_send(gateway, folder, content, serv, dests[datatype], "--type", datatype, *extra, name=name)
            assert result.returncode == 0, f"{datatype}: exit {result.returncode}: {result.stderr.decode(errors='replace')}"
            return datatype, json.loads(result.stdout)

        done = threading.Event()

        def drain_meanwhile():  # `multimsg send --wait` only polls: drain as the runner's timer does
            while not done.wait(0.2):
                gateway.drain()

        drainer = threading.Thread(target=drain_meanwhile, daemon=True)
        drainer.start()
        try:
            with ThreadPoolExecutor(len(samples)) as pool:
                reports = dict(pool.map(run, samples))
        finally:
            done.set()
            drainer.join(30)
    return {datatype: Sent(datatype, content, dests[datatype], name, mime, captions[datatype], reports[datatype])
            for datatype, content, name, mime in samples}


def _same_dest(item: Sent, record: dict) -> bool:
    return record["dest"] == item.dest


def arrivals(sent: dict[str, Sent], emulator, match: Callable[[Sent, dict], bool] = _same_dest) -> Iterator[tuple[Sent, dict]]:
    """Each sample ``send_every`` sent, checked delivered, with the one record ``emulator`` has of it (``match``: by dest)."""
    for item in sent.values():
        assert item.report["state"] == "delivered", (item.datatype, item.report)
        [record] = emulator.wait_for(partial(match, item))
        yield item, record


# -- outcome rows through a runner ------------------------------------------------------------------

# A message that meets a transient answer twice gives up: /cons then shows the answer's reason
# (a retried message that goes out at last shows none). Throttles and holds use up no attempt.
RETRIES = {"MULTIMSG_RETRY_MAX_ATTEMPTS": "2"}


def scripted(gateway: Gateway, emulator, serv: str, dest: str, answer, times: int = 1, content: bytes = b"scripted", **extra) -> str:
    """Script ``answer`` for the next ``times`` sends to ``dest``, then queue a text to it through ``serv``; the message id."""
    emulator.script(answer, dest=dest, times=times, **extra)
    return gateway.send(content, serv, dest)


def _to(dest: str) -> Callable[[dict], bool]:
    return lambda record: record["dest"] == dest


def assert_gave_up_retrying(gateway: Gateway, emulator, message_id: str, dest: str, words: str) -> list[dict]:
    """The message met a transient answer on both attempts (``RETRIES``): tried again, then failed by the
    attempt cap with the answer's reason in /cons. Returns the platform's two records of it."""
    report = gateway.wait_state(message_id)
    assert report["state"] == "failed" and report["attempts"] == 2, report
    assert report["last_error"].startswith("gave up after 2 attempts: ") and words in report["last_error"], report
    return emulator.wait_for(_to(dest), count=2)


def assert_throttled(gateway: Gateway, emulator, serv: str, message_id: str, dests: tuple[str, str], words: str,
                     retry_after: float | None) -> list[dict]:
    """The message to ``dests[0]`` met a rate limit (the caller scripted it): it waits queued, with the platform's
    words in /cons and no attempt used up, until the platform's ``retry_after``; the whole service waits that long
    (or the engine's own short hold when the platform said none), so a message to ``dests[1]`` queued meanwhile
    waits too; then both are delivered. Returns the records: the limited one, its resend, the other."""
    from multimsg.queue.pacing import DEFAULT_HOLD

    limited_dest, other_dest = dests
    report = _first_answer(gateway, message_id)
    assert report["state"] == "queued" and report["attempts"] == 0 and words in (report["last_error"] or ""), report
    if retry_after is not None:
        assert _epoch(report["next_attempt_at"]) - _epoch(report["updated_at"]) >= retry_after - 0.001, report
    other_id = gateway.send(b"meanwhile", serv, other_dest)
    for waited in (message_id, other_id):
        final = gateway.wait_state(waited)
        assert final["state"] == "delivered" and final["attempts"] == 0, final
    limited, resent = emulator.wait_for(_to(limited_dest), count=2)
    [other] = emulator.wait_for(_to(other_dest))
    assert limited["status"] == 429 and 200 <= resent["status"] < 300 and 200 <= other["status"] < 300, (limited, resent, other)
    hold = DEFAULT_HOLD if retry_after is None else retry_after
    assert min(resent["t"], other["t"]) - limited["t"] >= hold * 0.95, (limited["t"], resent["t"], other["t"])
    return [limited, resent, other]


def _first_answer(gateway: Gateway, message_id: str, timeout: float = 10.0) -> dict:
    """The message's report once its first answer is written, read while the runner's timer drains.

    Not by /drain: a pass that claims the throttled message sleeps through the hold and sends it
    again before it returns, and the queued state in between would go unseen.
    """
    import time

    assert float(gateway.env.get("MULTIMSG_DRAIN_INTERVAL", "0")) > 0, "the runner must drain on its own timer (FAST)"
    deadline = time.monotonic() + timeout
    while True:
        report = gateway.state(message_id)
        if report["attempts"] or report["last_error"] or report["state"] != "queued" or time.monotonic() > deadline:
            return report
        time.sleep(0.02)


def _epoch(iso_time: str) -> float:
    from datetime import datetime

    return datetime.fromisoformat(iso_time.replace("Z", "+00:00")).timestamp()


def assert_held(gateway: Gateway, emulator, serv: str, message_id: str, words: str, other_dest: str) -> dict:
    """Refused credentials hold ``serv``: the message stays queued with the reason in /cons (no attempt used
    up), the drain reports the service with it, and a message queued meanwhile is not sent. The first report."""
    report, _ = wait_attempted(gateway, message_id)
    assert report["state"] == "queued" and report["attempts"] == 0 and words in (report["last_error"] or ""), report
    waiting = gateway.send(b"while held", serv, other_dest)
    summary = settled_drain(gateway)
    assert words in summary["misconfigured"].get(serv, ""), summary
    untouched = gateway.state(waiting)
    assert untouched["state"] == "queued" and untouched["attempts"] == 0 and untouched["last_error"] is None, untouched
    assert gateway.state(message_id)["state"] == "queued"
    assert not [record for record in emulator.received() if record["dest"] == other_dest]
    return report
