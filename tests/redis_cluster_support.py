"""A real 3-node Redis Cluster for tests: three redis-server processes on free loopback ports, in a temp folder.

``redis_cluster`` (session-scoped) starts each node with ``--cluster-enabled yes`` and its own
``--cluster-config-file``, joins them with ``redis-cli --cluster create ... --cluster-replicas 0
--cluster-yes``, waits (bounded) for ``cluster_state:ok`` on every node, and stops them by their
own PIDs at the end. Its value is the ``redis+cluster://`` URL the gateway takes.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest

from tests.gatewayproc import free_port
from tests.redis_support import missing_redis

__all__ = ["RedisCluster", "redis_cluster"]


def cluster_port() -> int:
    """A free loopback port whose cluster bus port (port + 10000) is a valid, free port too."""
    import socket

    for _ in range(200):
        port = free_port()
        if port + 10000 > 65535:
            continue
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port + 10000))
            except OSError:
                continue
        return port
    raise RuntimeError("no free port pair for a cluster node")


class RedisCluster:
    def __init__(self, binary: str, cli: str, folder: Path, nodes: int = 3):
        self.binary, self.cli, self.folder = binary, cli, folder
        self.ports = [cluster_port() for _ in range(nodes)]
        self.procs: list[subprocess.Popen] = []

    @property
    def url(self) -> str:
        return "redis+cluster://" + ",".join(f"127.0.0.1:{port}" for port in self.ports)

    def _info(self, port: int) -> str:
        return subprocess.run([self.cli, "-p", str(port), "cluster", "info"], capture_output=True, text=True, timeout=5).stdout

    def start(self, timeout: float = 30.0) -> "RedisCluster":
        deadline = time.monotonic() + timeout
        for port in self.ports:
            node = self.folder / str(port)
            node.mkdir()
            self.procs.append(subprocess.Popen(
                [self.binary, "--port", str(port), "--bind", "127.0.0.1", "--cluster-enabled", "yes",
                 "--cluster-config-file", str(node / "nodes.conf"), "--cluster-node-timeout", "2000",
                 "--save", "", "--appendonly", "no", "--dir", str(node)],
                cwd=node, stdout=open(node / "redis.log", "ab"), stderr=subprocess.STDOUT))
        for port in self.ports:
            while subprocess.run([self.cli, "-p", str(port), "ping"], capture_output=True, text=True, timeout=5).stdout.strip() != "PONG":
                if time.monotonic() > deadline:
                    raise RuntimeError(f"cluster node {port} did not answer PING")
                time.sleep(0.05)
        create = subprocess.run([self.cli, "--cluster", "create", *(f"127.0.0.1:{p}" for p in self.ports), "--cluster-replicas", "0",
                                 "--cluster-yes"], capture_output=True, text=True, timeout=max(1.0, deadline - time.monotonic()))
        if create.returncode != 0:
            raise RuntimeError(f"redis-cli --cluster create failed: {create.stdout}{create.stderr}")
        while not all("cluster_state:ok" in self._info(port) for port in self.ports):
            if time.monotonic() > deadline:
                raise RuntimeError("the cluster did not reach cluster_state:ok")
            time.sleep(0.1)
        return self

    def stop(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                os.kill(proc.pid, signal.SIGTERM)  # our own children, by their PIDs
        for proc in self.procs:
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait(10)


@pytest.fixture(scope="session")
def redis_cluster(tmp_path_factory):
    binary, cli = shutil.which("redis-server"), shutil.which("redis-cli")
    if binary is None or cli is None:
        missing_redis("redis-server and redis-cli are not installed")
    cluster = RedisCluster(binary, cli, tmp_path_factory.mktemp("redis-cluster"))
    try:
        yield cluster.start()
    finally:
        cluster.stop()
