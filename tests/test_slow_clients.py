"""Slow and stalled clients do not starve honest ones, and are cut off after the configured timeouts.

Every test attacks a real runner on loopback with raw sockets: connections that
send nothing, a request line and nothing more, or a body one byte at a time
behind a large Content-Length. Honest requests on fresh connections must still
be answered within a second (a functional bound, far above the few milliseconds
they take), and each slow connection must be closed by the server once its
header or body timeout (MULTIMSG_HEADER_TIMEOUT, MULTIMSG_BODY_TIMEOUT) has
passed. Every loop here is bounded in count and time, and every socket is closed.
"""

from __future__ import annotations

import http.client
import select
import socket
import threading
import time
from contextlib import ExitStack

import pytest
import requests

from tests.gatewayproc import Gateway, session_from

ATTACKERS = 200
HONEST_BOUND = 1.0  # seconds an honest request may take with the attackers connected


def _connect(runner: Gateway) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", runner.port), timeout=5)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def _slow_body_head(path: str = "/data", length: int = 50_000_000) -> bytes:
    return (f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            f"Content-Type: multipart/form-data; boundary=zz\r\nContent-Length: {length}\r\n\r\n").encode()


class Trickler(threading.Thread):
    """Sends one byte per ``every`` seconds on each socket until stopped (at most ``limit`` seconds)."""

    def __init__(self, sockets: list[socket.socket], every: float = 1.0, limit: float = 60.0):
        super().__init__(daemon=True)
        self.sockets, self.every, self.limit = list(sockets), every, limit
        self.stopped = threading.Event()

    def run(self) -> None:
        deadline = time.monotonic() + self.limit
        while not self.stopped.wait(self.every) and time.monotonic() < deadline:
            for sock in list(self.sockets):
                try:
                    sock.send(b"-")
                except OSError:  # the server cut it off
                    self.sockets.remove(sock)


def _attack(runner: Gateway, stack: ExitStack) -> None:
    """ATTACKERS connections: a third idle, a third with half a request line, a third trickling a body."""
    idle, half, trickling = [], [], []
    for n in range(ATTACKERS):
        sock = stack.enter_context(_connect(runner))
        if n % 3 == 0:
            idle.append(sock)
        elif n % 3 == 1:
            sock.sendall(b"GET /health HTTP/1.1\r\n")
            half.append(sock)
        else:
            sock.sendall(_slow_body_head())
            trickling.append(sock)
    trickler = Trickler(trickling, every=1.0, limit=60.0)
    trickler.start()
    stack.callback(trickler.join, 5)
    stack.callback(trickler.stopped.set)
    time.sleep(0.5)  # let the server take them all in


def _timed(call) -> tuple[float, requests.Response | Exception]:
    started = time.monotonic()
    try:
        answer = call()
    except requests.RequestException as exc:
        answer = exc
    return time.monotonic() - started, answer


def test_honest_requests_are_answered_while_200_slow_clients_hold_connections(make_gateway, telegram):
    runner = make_gateway("slow", env={"MULTIMSG_RATE_LIMIT": "0", "MULTIMSG_FSYNC": "0"})
    with ExitStack() as stack:
        _attack(runner, stack)
        honest = stack.enter_context(session_from(None))  # fresh connections, as a new client's
        timings = {}
        timings["GET /health"] = _timed(lambda: honest.get(runner.url + "/health", timeout=5))
        timings["POST /data"] = _timed(lambda: honest.post(runner.url + "/data", files={"data": ("a.txt", b"honest")}, timeout=5))
        _, upload = timings["POST /data"]
        data_id = upload.text if isinstance(upload, requests.Response) else "A" * 16
        timings["POST /msg"] = _timed(lambda: honest.post(runner.url + "/msg", timeout=5,
                                                          data={"id": data_id, "serv": "telegram", "dest": "123456", "type": "text"}))
        late = {name: f"{answer!r} after {seconds:.2f} s" for name, (seconds, answer) in timings.items()
                if not isinstance(answer, requests.Response) or answer.status_code != 200 or seconds > HONEST_BOUND}
        assert not late, late


def _closed_by_server(sock: socket.socket, deadline: float, trickle_every: float | None) -> float | None:
    """Wait (until ``deadline``) for the server to close ``sock``, sending a byte every
    ``trickle_every`` seconds meanwhile; the monotonic time it closed, or None."""
    next_send = time.monotonic()
    while (now := time.monotonic()) < deadline:
        if trickle_every is not None and now >= next_send:
            next_send = now + trickle_every
            try:
                sock.send(b"-")
            except OSError:
                return time.monotonic()
        readable, _, _ = select.select([sock], [], [], 0.1)
        if readable:
            try:
                if not sock.recv(65536):
                    return time.monotonic()
            except OSError:
                return time.monotonic()
    return None


@pytest.mark.parametrize("kind", ["idle after connect", "half a request line, a byte at a time", "a body, a byte at a time"])
def test_a_slow_client_is_cut_off_after_its_timeout(make_gateway, kind):
    header_timeout, body_timeout = 1.0, 2.0
    runner = make_gateway("cut", env={"MULTIMSG_HEADER_TIMEOUT": str(header_timeout), "MULTIMSG_BODY_TIMEOUT": str(body_timeout),
                                      "MULTIMSG_BODY_MIN_RATE": "1000"})
    with _connect(runner) as sock:
        started = time.monotonic()
        if kind == "idle after connect":
            timeout, trickle = header_timeout, None
        elif kind.startswith("half a request line"):
            sock.sendall(b"GET /health HTTP/1.1\r\nX-Slow: ")
            timeout, trickle = header_timeout, 0.3  # activity keeps coming: the cut must not wait for silence
        else:
            sock.sendall(_slow_body_head())
            timeout, trickle = body_timeout, 0.3
        closed = _closed_by_server(sock, started + timeout + 3.0, trickle)
        assert closed is not None, f"{kind}: still open {timeout + 3.0:.0f} s after connecting (timeout {timeout} s)"
        assert closed - started >= timeout * 0.8, f"{kind}: cut after {closed - started:.2f} s, before its {timeout} s timeout"
    # The server is still fine afterwards.
    assert runner.http.get(runner.url + "/health", timeout=5).status_code == 200


def test_a_chunked_body_over_the_small_limit_gets_413(make_gateway):
    runner = make_gateway("chunked", env={"MULTIMSG_RATE_LIMIT": "0"})
    body = b"id=" + b"A" * 16 + b"&serv=telegram&dest=1&type=text&caption=" + b"x" * 100_000
    for path, content_type in (("/msg", "application/x-www-form-urlencoded"), ("/cons", "application/x-www-form-urlencoded"),
                               ("/msg", "application/json")):
        connection = http.client.HTTPConnection("127.0.0.1", runner.port, timeout=10)
        try:
            pieces = (body[i:i + 8192] for i in range(0, len(body), 8192))
            connection.request("POST", path, body=pieces, headers={"Content-Type": content_type}, encode_chunked=True)
            response = connection.getresponse()
            status, text = response.status, response.read().decode(errors="replace")
        finally:
            connection.close()
        assert status == 413, (path, content_type, status, text[:200])


def _request_on(sock: socket.socket, head: bytes, body: bytes = b"", deadline: float = 10.0) -> tuple[int, dict, bytes]:
    """Send one request on an open connection and read one answer (status, headers, body)."""
    sock.sendall(head + body)
    answer, end = b"", time.monotonic() + deadline
    while b"\r\n\r\n" not in answer and time.monotonic() < end:
        chunk = sock.recv(65536)
        if not chunk:
            break
        answer += chunk
    head_part, _, rest = answer.partition(b"\r\n\r\n")
    lines = head_part.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    length = int(headers.get("content-length", "0"))
    while len(rest) < length and time.monotonic() < end:
        chunk = sock.recv(65536)
        if not chunk:
            break
        rest += chunk
    return int(lines[0].split()[1]), headers, rest


def test_refused_requests_with_stalled_bodies_hold_no_thread(make_gateway):
    """A request refused before its body is read (here 401: token mode, no token) must not
    leave a thread reading that body from a client that stopped sending it."""
    runner = make_gateway("refused", env={"MULTIMSG_IDENTITY": "token", "MULTIMSG_RATE_LIMIT": "0"})
    head = _slow_body_head("/data", length=900_000)
    with ExitStack() as stack:
        for _ in range(40):
            sock = stack.enter_context(_connect(runner))
            sock.sendall(head + b"-" * 1000)  # then nothing more
        time.sleep(0.5)
        honest = stack.enter_context(session_from(None))
        seconds, answer = _timed(lambda: honest.get(runner.url + "/health", timeout=5))
        assert isinstance(answer, requests.Response) and answer.status_code == 200 and seconds <= HONEST_BOUND, \
            f"{answer!r} after {seconds:.2f} s"

    # A refused request whose body did arrive leaves its connection usable.
    small = b"--zz--\r\n"
    with _connect(runner) as sock:
        sock.settimeout(10)
        assert _request_on(sock, _slow_body_head("/data", length=len(small)), small)[0] == 401
        assert _request_on(sock, b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")[0] == 200


def test_pipelined_answers_read_slowly_arrive_whole_and_in_order(make_gateway):
    """A client that reads slowly gets every byte: a running task sends its own output, the event loop the rest.

    Four ``GET /openapi.json`` (40 KB each) in one write, on a connection with a
    small receive buffer, read a few KB at a time: the server's sends are
    partial, and what a task leaves unsent must still go when it ends.
    """
    runner = make_gateway("slow-reader")
    whole = requests.get(runner.url + "/openapi.json", timeout=30).content
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # before connecting: the window the server sees
    with sock:
        sock.settimeout(10)
        sock.connect(("127.0.0.1", runner.port))
        sock.sendall(b"GET /openapi.json HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n" * 4)
        received, deadline = b"", time.monotonic() + 60
        while received.count(whole) < 4 and time.monotonic() < deadline:
            chunk = sock.recv(2048)
            if not chunk:
                break
            received += chunk
            time.sleep(0.001)
    answers = received.split(b"HTTP/1.1 ")[1:]
    assert len(answers) == 4, received[:200]
    for answer in answers:
        head, body = answer.split(b"\r\n\r\n", 1)
        assert head.startswith(b"200 ") and body == whole
