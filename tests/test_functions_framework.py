"""Each handler deploys alone: ``functions-framework --source main.py --target <name>``.

Two single-handler servers sharing one data folder behave as one gateway.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time

import pytest
import requests

from tests.gatewayproc import ROOT, free_port


def serve(target: str, home, env: dict) -> tuple[subprocess.Popen, str]:
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "functions_framework", "--source", "main.py", "--target", target,
         "--host", "127.0.0.1", "--port", str(port)],
        cwd=ROOT, env={**os.environ, **env, "MULTIMSG_HOME": str(home)},
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            requests.get(url, timeout=15)  # the first request imports the gateway (handlers import it lazily)
            return proc, url
        except requests.ConnectionError:
            assert proc.poll() is None, proc.stderr.read().decode()
            time.sleep(0.05)
    proc.kill()
    pytest.fail(f"functions-framework --target {target} did not start")


def test_single_handlers_share_the_data_folder(tmp_path, gateway_env, server_keys):
    shutil.copytree(server_keys, tmp_path / "home" / "keys")
    procs = {}
    try:
        for target in ("key", "data", "msg", "cons", "cancel"):
            procs[target] = serve(target, tmp_path / "home", gateway_env)
        url = {target: u for target, (_, u) in procs.items()}
        assert requests.get(url["key"]).text.startswith("-----BEGIN PUBLIC KEY-----")
        data_id = requests.post(url["data"], files={"data": ("t.txt", b"deployed alone")}).text
        message_id = requests.post(url["msg"], data={"id": data_id, "serv": "wpp1", "dest": "5491100000000", "type": "text"}).text
        assert requests.post(url["cons"], data={"id": message_id}).text == "queued"
        scheduled = requests.post(url["msg"], data={"id": data_id, "serv": "wpp1", "dest": "5491100000000", "type": "text",
                                                    "at": str(int(time.time() + 3600))}).text
        assert requests.post(url["cancel"], data={"id": scheduled}).text == "cancelled"
        assert requests.post(url["cons"], data={"id": scheduled}).text == "cancelled"
        assert requests.get(url["msg"]).status_code == 405
    finally:
        for proc, _ in procs.values():
            proc.kill()
            proc.wait()
