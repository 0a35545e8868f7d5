"""Benchmark 15: the floor of a request's CPU: /msg and /data in one process, with and without their storage.

Through Flask's test client, in this process (fsync on, rate limit off):
a bare hello, ``/msg`` as served, ``/msg`` with the store's ``add`` and the
spool's ``attach`` made no-ops, ``/data`` as served and with the spool's
``put`` made a no-op. What is left with the storage gone is the HTTP layer,
the identity, the validation and Flask: the least a request of this design
can cost, whatever the store. Two rows bound it from below: ``GET /msg``
(a 405 from our own app: Flask, functions-framework and the handler's
wrapper, no work) and a ``/msg``'s durable steps alone (the reads, the
link, the journal append and the two fsyncs, as bare system calls in a
loop). Prints the median CPU ms a request of
``--rounds`` rounds of ``--requests`` each:

    python3 -m bench.request_floor [--requests 1000] [--rounds 3]

This stubs our own code, so it is a measurement, never a test.
"""

from __future__ import annotations

import argparse
import io
import os
import shutil
import statistics
import tempfile
import time
from contextlib import contextmanager
from typing import Callable, Iterator


@contextmanager
def _stubbed(owner: type, name: str, value: Callable) -> Iterator[None]:
    real = owner.__dict__[name]
    setattr(owner, name, value)
    try:
        yield
    finally:
        setattr(owner, name, real)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.request_floor", description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)
    home = tempfile.mkdtemp(prefix="multimsg-bench-floor-")
    os.environ.update({"MULTIMSG_HOME": home, "MULTIMSG_DRAIN_INTERVAL": "0", "MULTIMSG_RATE_LIMIT": "0",
                       "MULTIMSG_TELEGRAM_TOKEN": "123:abc", "MULTIMSG_TELEGRAM_API_URL": "http://127.0.0.1:9"})
    try:
        import flask

        from multimsg.functions.app import create_app
        from multimsg.queue.backends.files import FileSpool
        from multimsg.queue.backends.tiny import TinyStore

        client = create_app().test_client()
        peer = {"REMOTE_ADDR": "127.0.0.1"}

        def upload() -> object:
            return client.post("/data", data={"data": (io.BytesIO(b"x" * 1024), "b.txt")},
                               content_type="multipart/form-data", environ_base=peer)

        data_id = upload().get_data(as_text=True).strip()
        form = {"id": data_id, "serv": "telegram", "dest": "4242", "type": "text"}
        hello = flask.Flask("hello")
        hello.add_url_rule("/", "hello", lambda: "hello")
        bare = hello.test_client()

        def cpu(request: Callable[[], object]) -> float:
            for _ in range(50):
                request()
            rounds = []
            for _ in range(args.rounds):
                began = time.process_time()
                for _ in range(args.requests):
                    request()
                rounds.append(1000 * (time.process_time() - began) / args.requests)
            return statistics.median(rounds)

        def msg() -> object:
            return client.post("/msg", data=form, environ_base=peer)

        rows = [("bare hello", cpu(lambda: bare.get("/"))), ("GET /msg (405: our app, no work)", cpu(lambda: client.get("/msg", environ_base=peer))),
                ("/msg", cpu(msg))]
        with _stubbed(TinyStore, "add", lambda self, message: None), \
                _stubbed(FileSpool, "attach", lambda self, client, data_id, message_id: None):
            rows.append(("/msg, no store add, no spool attach", cpu(msg)))
        rows.append(("/msg's durable steps alone (its system calls, no Python logic)", cpu(_durable_steps(home))))
        rows.append(("/data (1 KB)", cpu(upload)))
        with _stubbed(FileSpool, "put", lambda self, client, chunks, filename: _no_put(chunks, data_id)):
            rows.append(("/data, no spool put", cpu(upload)))
        print("| request | CPU ms |\n| --- | --- |")
        for name, ms in rows:
            print(f"| {name} | {ms:.3f} |")
    finally:
        shutil.rmtree(home, ignore_errors=True)


def _durable_steps(home: str) -> Callable[[], None]:
    """What a ``/msg`` must do to the disk whatever code does it, in bare system calls: read the upload's
    record and its content's first chunk, link the content to the message, append its line to a journal
    and fsync it and the link's folder (the link removed again after, so that the folder does not grow)."""
    folder = tempfile.mkdtemp(dir=home)
    os.mkdir(f"{folder}/msg")
    for name, size in (("upload.json", 80), ("upload", 1024 + 192)):
        with open(f"{folder}/{name}", "wb") as file:
            file.write(b"x" * size)
    journal = os.open(f"{folder}/journal", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    links = os.open(f"{folder}/msg", os.O_RDONLY)
    line = b"x" * 400 + b"\n"

    def step() -> None:
        for name in ("upload.json", "upload"):
            fd = os.open(f"{folder}/{name}", os.O_RDONLY)
            os.read(fd, 1 << 16)
            os.close(fd)
        os.link(f"{folder}/upload", f"{folder}/msg/m")
        os.write(journal, line)
        os.fsync(links)
        os.fsync(journal)
        os.unlink(f"{folder}/msg/m")

    return step


def _no_put(chunks, data_id: str):
    """A put that reads the body and stores nothing: the upload answered is the one made at the start."""
    from multimsg.queue.spool import DataInfo

    for _ in chunks:
        pass
    return DataInfo(data_id, 0, "b.txt", time.time())


if __name__ == "__main__":
    main()
