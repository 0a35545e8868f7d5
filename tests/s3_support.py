"""A real S3-compatible server for tests: moto's standalone server in its own process on a free loopback port.

``s3_server`` (session-scoped) starts ``python -m moto.server -H 127.0.0.1 -p PORT``, waits until it
answers, and stops it by its own PID at the end. ``s3_bucket`` makes a fresh bucket for each test.
The tests talk to it over HTTP with boto3, as a gateway talks to AWS S3 or Google Cloud Storage.

Without moto or boto3 the tests are skipped with the reason, except under ``CI=true`` (``require``).
"""

from __future__ import annotations

import itertools
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import require
from tests.gatewayproc import free_port

__all__ = ["S3Server", "s3_server", "s3_bucket", "S3_ENV"]

# Credentials moto accepts (any); boto3 needs some, and a region.
S3_ENV = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1", "AWS_REGION": "us-east-1"}


class S3Server:
    def __init__(self, folder: Path):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = folder / "moto.log"
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 30.0) -> "S3Server":
        import requests

        self.proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
                                     stdout=open(self.log_path, "ab"), stderr=subprocess.STDOUT, env={**os.environ, **S3_ENV})
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"moto.server exited with {self.proc.returncode}: {self.log_path.read_text()}")
            try:
                requests.get(self.url + "/moto-api/", timeout=1)
                return self
            except requests.ConnectionError:
                time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"moto.server did not answer within {timeout} s")

    def client(self):
        from multimsg.queue.backends.s3_spool import s3_client

        for name, value in S3_ENV.items():
            os.environ.setdefault(name, value)
        return s3_client(self.url)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)  # our own child, by its PID
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                os.kill(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory):
    try:
        import boto3  # noqa: F401
        import moto.server  # noqa: F401
    except ImportError as exc:
        require(False, f"{exc.name} is not installed (pip install -e '.[test]'): the S3 spool's tests need moto's server")
    server = S3Server(tmp_path_factory.mktemp("moto")).start()
    try:
        yield server
    finally:
        server.stop()


_buckets = itertools.count(1)


@pytest.fixture
def s3_bucket(s3_server) -> str:
    name = f"multimsg-test-{os.getpid()}-{next(_buckets)}"
    s3_server.client().create_bucket(Bucket=name)
    return name
