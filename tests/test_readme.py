"""The README's first example runs as written against a fresh runner with no account, and its
smallest complete module is the outbox's real code."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

from tests.conftest import require_tool

README = (Path(__file__).resolve().parents[1] / "README.md").read_text()


def first_example() -> str:
    after = README[README.index("The first example needs no account"):]
    return re.search(r"```sh\n(.*?)```", after, re.S).group(1)


def test_the_first_example_works_with_no_account(make_gateway, tmp_path):
    require_tool("curl", "the README's example is curl commands")
    # No account at all, and the default report grace (the example asks /cons again after "delivered").
    gateway = make_gateway(env={"MULTIMSG_TELEGRAM_TOKEN": "", "MULTIMSG_WPP1_TOKEN": "", "MULTIMSG_REPORT_GRACE": "3600"})
    script = first_example().replace("http://127.0.0.1:8080", gateway.url).replace("~/.local/share/multimsg", str(gateway.home))
    result = subprocess.run(["bash", "-euo", "pipefail", "-c", script], cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    out = result.stdout  # plain-text answers carry no trailing newline: they run together
    assert out.startswith(("queued{", "delivered{")) and '}delivered{' in out, out
    message_id = re.search(r'"id": "([A-Za-z0-9]{16})"', out).group(1)
    assert '"state": "delivered"' in out and '"serv": "outbox"' in out
    lines = out.splitlines()
    assert lines[-2].endswith(f"{message_id}.txt"), out
    assert lines[-1] == f"{message_id}.txt.json"
    assert (gateway.home / "outbox" / "alice" / f"{message_id}.txt").read_text() == "Hola desde multimsg\n"


def test_the_smallest_module_shown_is_the_outbox_itself():
    shown = re.search(r"```python\n(from __future__ import annotations\n.*?class Outbox\(ServiceBase\):.*?)```", README, re.S).group(1)
    source = (Path(__file__).resolve().parents[1] / "multimsg" / "services" / "outbox.py").read_text()
    assert shown in source and source.endswith(shown)  # all of it, from the imports to the end
    registered = re.search(r"```python\n(KINDS: .*?)```", README, re.S).group(1)
    assert registered in (Path(__file__).resolve().parents[1] / "multimsg" / "services" / "__init__.py").read_text()


def test_the_receiver_snippet_verifies_a_real_callback_and_refuses_a_forged_one(make_gateway, telegram, tmp_path, monkeypatch):
    import threading
    import time
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    import pytest
    from cryptography.exceptions import InvalidSignature

    got: list[tuple[dict, bytes]] = []

    class Capture(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802
            got.append((self.headers, self.rfile.read(int(self.headers["Content-Length"]))))
            self.send_response(204)
            self.end_headers()

        def log_message(self, *a) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Capture)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        runner = make_gateway(env={"MULTIMSG_CALLBACK_ALLOW_PRIVATE": "1"})
        message_id = runner.send("hola 👋".encode(), "telegram", "4242", callback=f"http://127.0.0.1:{server.server_port}/cb")
        deadline = time.monotonic() + 20
        while not got:
            assert time.monotonic() < deadline, "no callback came"
            runner.drain()
            time.sleep(0.1)
    finally:
        server.shutdown()
    monkeypatch.chdir(tmp_path)
    (tmp_path / "callback-key.pem").write_text(runner.http.get(runner.url + "/callback-key", timeout=10).text)
    snippet = README[README.index("A receiver verifies a callback in a few lines"):]
    namespace: dict = {}
    exec(re.search(r"```python\n(.*?)```", snippet, re.S).group(1), namespace)
    headers, body = got[0]
    event = namespace["verify"](headers, body)
    assert event["type"] == "message.delivered" and event["data"]["id"] == message_id
    with pytest.raises(InvalidSignature):
        namespace["verify"](headers, body.replace(b"delivered", b"failed", 1))
