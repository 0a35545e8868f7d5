"""A real redis-server for tests: one per session, on a free loopback port, in a temp folder.

``redis_server`` (session-scoped) starts ``redis-server`` without persistence,
waits for PING, and stops it by its own PID at the end. ``redis_url`` gives
each test its own database, flushed first. No fakeredis on this path: the Lua
scripts, WATCH and expiry are what is under test.

Without redis-server the tests are skipped with the reason, except under
``CI=true``, where a missing server fails them (CI must run them).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from tests.gatewayproc import free_port

__all__ = ["RedisServer", "redis_server", "redis_url", "missing_redis"]


def missing_redis(reason: str) -> None:
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"{reason} (CI=true: the Redis backend must be tested)")
    pytest.skip(reason)


class RedisServer:
    def __init__(self, binary: str, folder: Path, port: int | None = None, extra: tuple[str, ...] = ()):
        self.binary, self.folder, self.extra = binary, folder, tuple(extra)  # extra: more options (persistence), last wins
        self.port = port or free_port()
        self.url = f"redis://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None
        self.log_path = folder / "redis.log"

    def start(self, timeout: float = 15.0) -> "RedisServer":
        import redis

        self.proc = subprocess.Popen(
            [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--dir", str(self.folder), "--databases", "256", *self.extra],
            cwd=self.folder, stdout=open(self.log_path, "ab"), stderr=subprocess.STDOUT,
        )
        client = redis.Redis(port=self.port, socket_connect_timeout=0.5)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"redis-server exited with {self.proc.returncode}: {self.log_path.read_text()}")
            try:
                if client.ping():
                    client.close()
                    return self
            except redis.ConnectionError:
                time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"redis-server did not answer PING within {timeout} s")

    def kill9(self) -> None:
        """SIGKILL: no shutdown, no last write (what a power cut leaves is what was fsynced)."""
        if self.proc and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)  # our own child, by its PID
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                os.kill(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)


@pytest.fixture(scope="session")
def redis_server():
    binary = shutil.which("redis-server")
    if binary is None:
        missing_redis("redis-server is not installed")
    try:
        import redis  # noqa: F401
    except ImportError:
        missing_redis("the redis package is not installed (pip install -e '.[test]')")
    with tempfile.TemporaryDirectory(prefix="multimsg-redis-") as folder:
        server = RedisServer(binary, Path(folder)).start()
        try:
            yield server
        finally:
            server.stop()


_next_db = iter(range(1, 256))


@pytest.fixture
def redis_url(redis_server) -> str:
    """A URL to a database of its own for this test (flushed first)."""
    import redis

    url = f"{redis_server.url}/{next(_next_db, 0)}"
    client = redis.Redis.from_url(url)
    client.flushdb()
    client.close()
    return url
