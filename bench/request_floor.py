"""Benchmark 15: the floor of a request's CPU: /msg and /data in one process, with and without their storage.

Through Flask's test client, in this process (fsync on, rate limit off):
a bare hello, ``/msg`` as served, ``/msg`` with the store's ``add`` and the
spool's ``attach`` made no-ops, ``/data`` as served and with the spool's
``put`` made a no-op. What is left with the storage gone is the HTTP layer,
the identity, the validation and Flask: the least a request of this design
can cost, whatever the store. Prints the median CPU ms a request of
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

        rows = [("bare hello", cpu(lambda: bare.get("/"))), ("/msg", cpu(msg))]
        with _stubbed(TinyStore, "add", lambda self, message: None), \
                _stubbed(FileSpool, "attach", lambda self, client, data_id, message_id: None):
            rows.append(("/msg, no store add, no spool attach", cpu(msg)))
        rows.append(("/data (1 KB)", cpu(upload)))
        with _stubbed(FileSpool, "put", lambda self, client, chunks, filename: _no_put(chunks, data_id)):
            rows.append(("/data, no spool put", cpu(upload)))
        print("| request | CPU ms |\n| --- | --- |")
        for name, ms in rows:
            print(f"| {name} | {ms:.3f} |")
    finally:
        shutil.rmtree(home, ignore_errors=True)


def _no_put(chunks, data_id: str):
    """A put that reads the body and stores nothing: the upload answered is the one made at the start."""
    from multimsg.queue.spool import DataInfo

    for _ in chunks:
        pass
    return DataInfo(data_id, 0, "b.txt", time.time())


if __name__ == "__main__":
    main()
