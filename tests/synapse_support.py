"""A throwaway Synapse homeserver for tests: generated config, a free loopback port, users by shared secret.

``Synapse(folder).start()`` generates a config (``--generate-config``), binds it to
127.0.0.1 on a free port with an SQLite database in ``folder``, lifts the message rate
limits (tests send faster than Synapse's default 0.2 a second), starts
``python -m synapse.app.homeserver`` and waits (at most ``START_TIMEOUT``) for
``/_matrix/client/versions``. ``register(name)`` makes a user through the shared-secret
admin API and returns its access token.
"""

from __future__ import annotations

import hashlib
import hmac
import socket
import subprocess
import sys
import time
from pathlib import Path

import requests
import yaml

__all__ = ["Synapse", "START_TIMEOUT"]

START_TIMEOUT = 60.0
_DIRECT = {"http": "", "https": ""}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Synapse:
    def __init__(self, folder: Path, server_name: str = "localhost"):
        self.folder, self.server_name = folder, server_name
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None
        self.config = folder / "homeserver.yaml"
        self.session = requests.Session()
        self.session.trust_env = False  # never through a proxy

    def start(self) -> "Synapse":
        self.folder.mkdir(parents=True, exist_ok=True)
        subprocess.run([sys.executable, "-m", "synapse.app.homeserver", "--server-name", self.server_name, "--config-path", str(self.config),
                        "--data-directory", str(self.folder), "--generate-config", "--report-stats=no"],
                       check=True, capture_output=True, timeout=START_TIMEOUT, cwd=self.folder)
        config = yaml.safe_load(self.config.read_text())
        config["listeners"] = [{"port": self.port, "bind_addresses": ["127.0.0.1"], "type": "http", "tls": False,
                                "x_forwarded": False, "resources": [{"names": ["client"], "compress": False}]}]
        config["trusted_key_servers"] = []
        config["suppress_key_server_warning"] = True
        lifted = {"per_second": 1000, "burst_count": 1000}
        config.update(rc_message=lifted, rc_registration=lifted, rc_login={"address": lifted, "account": lifted, "failed_attempts": lifted},
                      rc_joins={"local": lifted, "remote": lifted}, rc_room_creation=lifted)
        self.secret = config["registration_shared_secret"]
        self.config.write_text(yaml.safe_dump(config))
        self.log = open(self.folder / "stderr.log", "wb")
        self.proc = subprocess.Popen([sys.executable, "-m", "synapse.app.homeserver", "-c", str(self.config)],
                                     cwd=self.folder, stdout=self.log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            try:
                if self.session.get(f"{self.url}/_matrix/client/versions", timeout=2).status_code == 200:
                    return self
            except requests.RequestException:
                pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                output = (self.folder / "stderr.log").read_text(errors="replace")[-3000:]
                raise RuntimeError(f"synapse did not start within {START_TIMEOUT:g} s:\n{output}")
            time.sleep(0.2)

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if getattr(self, "log", None):
            self.log.close()

    def __enter__(self) -> "Synapse":
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    # -- admin ---------------------------------------------------------------
    def register(self, user: str, password: str = "correct horse battery", admin: bool = False) -> str:
        """A new user's access token (shared-secret registration, /_synapse/admin/v1/register)."""
        url = f"{self.url}/_synapse/admin/v1/register"
        nonce = self.session.get(url, timeout=10).json()["nonce"]
        mac = hmac.new(self.secret.encode(), b"\x00".join([nonce.encode(), user.encode(), password.encode(), b"admin" if admin else b"notadmin"]), hashlib.sha1)
        answer = self.session.post(url, json={"nonce": nonce, "username": user, "password": password, "admin": admin, "mac": mac.hexdigest()},
                                   timeout=30)
        answer.raise_for_status()
        return answer.json()["access_token"]

    def client(self, token: str, method: str, path: str, **kwargs) -> requests.Response:
        return self.session.request(method, f"{self.url}{path}", headers={"Authorization": f"Bearer {token}"}, timeout=30, **kwargs)
