"""A real multimsg server for tests: ``local_runner.py`` in its own process on loopback.

``Gateway`` starts the runner with a private data folder and the given
environment, waits until it answers, and offers small client helpers
(``upload``, ``msg``, ``cons``, ``drain``) that speak the public HTTP API,
optionally from another loopback source address (127.0.0.2 is a different
client from 127.0.0.1).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import requests
from requests.adapters import HTTPAdapter

ROOT = Path(__file__).resolve().parent.parent

__all__ = ["Gateway", "free_port", "session_from", "ROOT"]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class _SourceAdapter(HTTPAdapter):
    def __init__(self, source: str):
        self.source = source
        super().__init__()

    def init_poolmanager(self, *args, **kwargs):
        kwargs["source_address"] = (self.source, 0)
        super().init_poolmanager(*args, **kwargs)


def session_from(source: str | None = None) -> requests.Session:
    """A requests session whose connections leave from ``source`` (a loopback address)."""
    session = requests.Session()
    if source:
        session.mount("http://", _SourceAdapter(source))
    return session


class Gateway:
    def __init__(self, home: Path, env: dict[str, str] | None = None, port: int | None = None, root: Path = ROOT):
        self.home = Path(home)
        self.root = Path(root)  # the checkout whose local_runner.py (and multimsg package) runs
        self.chosen_port = port is None  # picked here: another may be picked if something else takes it first
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        # One worker process unless a test asks for more (tests/test_workers.py): the suite's many
        # runners stay one process each (as cheap to start as before on a shared 2-core machine),
        # and per-process behaviour under test (a /health cache, an embedded rate limit) does not
        # depend on which worker answered. MULTIMSG_TEST_WORKERS=2 runs any test file with two.
        self.env = {"MULTIMSG_DRAIN_INTERVAL": "0", "MULTIMSG_WORKERS": os.environ.get("MULTIMSG_TEST_WORKERS", "1"), **(env or {})}
        self.proc: subprocess.Popen | None = None
        self.log_path = self.home.parent / f"{self.home.name}-runner.log"
        self.http = session_from(None)

    # -- process ---------------------------------------------------------
    def start(self, timeout: float = 30.0) -> "Gateway":
        for _ in range(5):
            if self._start(timeout):
                return self
            # The free port was taken between our pick and the runner's bind (by another test's process):
            # a runner that answers there is not ours. Pick another.
            self.port = free_port()
            self.url = f"http://127.0.0.1:{self.port}"
        raise RuntimeError(f"runner could not bind a free port in 5 tries:\n{self.log()}")

    def _start(self, timeout: float) -> bool:
        env = {**os.environ, **self.env, "MULTIMSG_HOME": str(self.home), "PYTHONUNBUFFERED": "1"}
        log = open(self.log_path, "ab")
        logged = log.tell()
        self.proc = subprocess.Popen(
            [sys.executable, str(self.root / "local_runner.py"), "--port", str(self.port)],
            cwd=self.root, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                if self.chosen_port and "Address already in use" in self.log()[logged:]:
                    return False
                raise RuntimeError(f"runner exited with {self.proc.returncode}:\n{self.log()}")
            try:
                answer = self.http.get(self.url + "/key", timeout=1)
                if answer.status_code == 200 and self._ours(answer.headers.get("X-Multimsg-Worker")):
                    return True
            except (requests.ConnectionError, requests.Timeout):  # several workers: the port takes connections before one answers
                pass
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"runner did not answer within {timeout} s:\n{self.log()}")

    def _ours(self, worker: str | None) -> bool:
        """Whether the process that answered is this runner or one of its workers (not another test's server)."""
        assert self.proc is not None
        if worker is None:
            return True  # a server from before the header (tests/older_server.py): it cannot tell
        if not worker.isdigit():
            return False
        pid = int(worker)
        if pid == self.proc.pid:
            return True
        try:
            return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1]) == self.proc.pid
        except (FileNotFoundError, IndexError, ValueError):
            return False

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def kill9(self) -> None:
        """SIGKILL the whole runner (its process group) at once."""
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> None:
        self.http.close()  # a server may wait for kept-alive connections before it exits
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGINT)  # quick shutdown
            try:
                self.proc.wait(3)
            except subprocess.TimeoutExpired:
                self.kill9()

    def __enter__(self) -> "Gateway":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def storage_keys(self):
        """The runner's storage keyring (uploads are sealed at rest with it)."""
        from multimsg.storage_keys import storage_keys

        return storage_keys(self.env.get("MULTIMSG_STORAGE_KEY"), Path(self.env.get("MULTIMSG_STORAGE_KEY_FILE")
                            or "~/.config/multimsg/storage-keys"), self.home).load()

    def stored(self, path: Path) -> bytes:
        """The plaintext of an upload as the spool keeps it at ``path`` (opened with the runner's storage key)."""
        from multimsg.queue.backends.files import FileContent
        from multimsg.queue.sealed import SealedContent

        return SealedContent(FileContent(path), self.storage_keys()).read()

    def stored_name(self, client: str, data_id: str) -> str:
        """An upload's file name as the spool keeps it (sealed at rest), opened."""
        from multimsg.layout import Layout
        from multimsg.queue.backends.files import FileSpool
        from multimsg.queue.sealed import SealedSpool

        class _Keys:
            load = self.storage_keys

        return SealedSpool(FileSpool(Layout(self.home), ttl=1e9, fsync=False), _Keys()).get(client, data_id).filename

    # -- the public API ----------------------------------------------------
    def _session(self, source: str | None) -> requests.Session:
        return self.http if source is None else session_from(source)

    def upload(self, content: bytes, key: bytes | None = None, source: str | None = None, filename: str = "data.bin") -> requests.Response:
        files = {"data": (filename, content)}
        if key is not None:
            files["key"] = ("key.bin", key)
        return self._session(source).post(self.url + "/data", files=files, timeout=30)

    def upload_id(self, content: bytes, **kwargs) -> str:
        response = self.upload(content, **kwargs)
        assert response.status_code == 200, response.text
        return response.text

    def msg(self, source: str | None = None, json_body: bool = False, **fields) -> requests.Response:
        if json_body:
            return self._session(source).post(self.url + "/msg", json=fields, timeout=30)
        return self._session(source).post(self.url + "/msg", data=fields, timeout=30)

    def send(self, content: bytes, serv: str, dest: str, type: str = "text", **kwargs) -> str:
        """Upload and queue in one go; returns the message id."""
        data_id = self.upload_id(content, **{k: v for k, v in kwargs.items() if k in ("key", "source", "filename")})
        extra = {k: v for k, v in kwargs.items() if k not in ("key", "source", "filename")}
        response = self.msg(source=kwargs.get("source"), id=data_id, serv=serv, dest=dest, type=type, **extra)
        assert response.status_code == 200, response.text
        return response.text

    def cons(self, message_id: str, source: str | None = None, as_json: bool = False) -> requests.Response:
        headers = {"Accept": "application/json"} if as_json else {}
        return self._session(source).post(self.url + "/cons", data={"id": message_id}, headers=headers, timeout=30)

    def drain(self, **headers) -> dict:
        response = self.http.post(self.url + "/drain", headers=headers, timeout=600)
        assert response.status_code == 200, response.text
        return response.json()

    def state(self, message_id: str) -> dict:
        """The message's JSON report. Careful: a final state is reported only once."""
        response = self.cons(message_id, as_json=True)
        assert response.status_code == 200, response.text
        return response.json()

    def wait_state(self, message_id: str, states=("delivered", "failed"), timeout: float = 15.0, drain: bool = True) -> dict:
        """Drain (if asked) and poll /cons until the message reaches one of ``states``."""
        deadline = time.monotonic() + timeout
        while True:
            if drain:
                self.drain()
            report = self.state(message_id)
            if report["state"] in states:
                return report
            if time.monotonic() > deadline:
                raise AssertionError(f"message {message_id} still {report} after {timeout} s")
            time.sleep(0.05)
