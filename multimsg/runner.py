"""The local runner: every handler on one port under waitress, and the drain on a timer.

waitress reads every request in its event loop (headers, then the whole body,
spilling to a temporary file past 512 KB) and hands it to one of 16 threads
only once it has fully arrived, so a client that sends slowly, or stops, holds
a connection but never a thread. What waitress does not bound itself — how long
a request may take to arrive while bytes keep trickling in — is bounded here:
a request's headers must arrive within MULTIMSG_HEADER_TIMEOUT seconds of its
first byte, and its body within MULTIMSG_BODY_TIMEOUT seconds plus one more
second per MULTIMSG_BODY_MIN_RATE bytes received; a connection that is silent
for MULTIMSG_HEADER_TIMEOUT between requests is closed too (waitress's
``channel_timeout``).

With ``MULTIMSG_WORKERS=1`` everything is one process and the drain timer is
a thread of it. With more (the default: one per core) the parent binds the
port and forks that many workers serving it, each as above, plus the drain
children that run the drain timer (``multimsg.supervisor``): one, or with
several service instances up to ``MULTIMSG_DRAIN_WORKERS`` (one per core by
default), each sending for its own share of the instances (``queue.shares``).
``--debug`` uses Flask's development server instead, bound to the given host
(127.0.0.1 by default).

Workers share the listening sockets, and the kernel wakes every worker for a
new connection: the one scheduled first takes it, and in a burst (a client
opening 8 keep-alive connections at once) one worker took them all, leaving
the other core idle (/msg at 466 requests/s with 8 connections on one worker,
860 with 4 on each). So workers keep their open connections in one shared
table (``AcceptShares``), and a worker takes a new one only while no live
worker holds fewer: connections spread evenly, whoever wakes first.
"""

from __future__ import annotations

import argparse
import ctypes
import logging
import math
import multiprocessing
import os
import signal
import socket
import sys
import threading
import time

from .config import settings
from .functions.app import create_app
from .gateway import drain_processes, gateway
from .logs import setup as setup_logs

__all__ = ["main", "DrainTimer", "THREADS", "CONNECTION_LIMIT", "MAX_HEADER_BYTES"]

LOOP_FLUSH_BYTES = 1 << 16  # unsent output of a running task that the event loop flushes (below it, the task does: Channel.writable)
THREADS = 16  # request threads (as functions-framework's gunicorn has); slow clients never hold one
CONNECTION_LIMIT = 1000  # open connections at once; past it waitress stops accepting until one closes
MAX_HEADER_BYTES = 16 * 1024  # request line and headers together; larger ones get 431
LINGER_SECONDS, LINGER_BYTES = 2.0, 64 * 1024  # how long and how much a closing connection reads away (RFC 9112 9.6)

log = logging.getLogger("multimsg.runner")


PASS_GAP = 0.5  # seconds between two passes when the last one found work


class DrainTimer(threading.Thread):
    """Runs drain passes until stopped: the next one ``PASS_GAP`` after a pass that
    claimed messages (it may have left some for later, and more may have come
    in meanwhile), else after ``interval`` seconds.

    Passes are paced even when there is work: with a backlog that becomes due a
    few messages at a time, back-to-back passes would each take a handful and
    compete with ``/msg`` for the store (doubling its latency); a pass is cheap
    (the due index), so a short gap loses nothing.
    """

    def __init__(self, interval: float):
        super().__init__(name="multimsg-drain-timer", daemon=True)
        self.interval = interval
        self.stopped = threading.Event()

    def run(self) -> None:
        while not self.stopped.is_set():
            busy_or_idle = True
            try:
                summary = gateway().drain()
                busy_or_idle = summary["busy"] or not summary["claimed"]
            except Exception:
                log.exception("drain pass failed")
            self.stopped.wait(self.interval if busy_or_idle else min(self.interval, PASS_GAP))


def _start_timer() -> None:
    interval = settings().drain_interval
    if interval > 0:
        DrainTimer(interval).start()


def _drain_child(interval: float, index: int, count: int) -> None:
    """A drain child of a runner with several workers: the timer, for share ``index`` of ``count``, until SIGTERM."""
    if count > 1:
        os.environ["MULTIMSG_DRAIN_SHARE"] = f"{index}/{count}"  # read when this child builds its gateway...
        settings.cache_clear()  # ...from settings read again (the parent's were read before it was set)
    if settings().drain_pin:
        pin_to_one_core(index, "drain process")
    timer = DrainTimer(interval)
    signal.signal(signal.SIGTERM, lambda *_: timer.stopped.set())  # after the pass in progress
    timer.run()


def pin_to_one_core(index: int, what: str) -> int | None:
    """Keep this process (and the threads it starts) on one of the cores it may use, the ``index``-th (round robin).

    A drain process, or an HTTP worker, is bound by its interpreter lock: its
    threads (dozens sending, sixteen serving) hand it to each other at every
    system call (each file write, each socket read); a drain made some 190
    futex calls and 120 context switches a message on 2 cores. Spread over
    both cores, every handoff wakes a thread on the other core, which then
    mostly finds the lock taken again; on one core the handoffs are plain
    switches. The process never uses more than one core anyway. Measured in
    alternating runs: ``bench.accounts`` 3.9 against 4.9 ms of CPU a message,
    ``bench.intake`` ``/msg`` 3.8 against 4.6 ms a request.
    Returns the core, or None where affinity cannot be set (not Linux, one core).
    """
    try:
        cores = sorted(os.sched_getaffinity(0))
        if len(cores) < 2:
            return None
        core = cores[index % len(cores)]
        os.sched_setaffinity(0, {core})
    except (AttributeError, OSError):  # no sched_setaffinity here, or refused
        return None
    log.info("this %s runs on core %d", what, core)
    return core


class AcceptShares:
    """The open connections of each worker, in memory shared by the workers a parent forks (``_serve_waitress``).

    Only worker ``i`` writes slot ``i`` (its count, and when it last showed it
    was alive); a worker takes a new connection only while no live worker
    (seen within ``ALIVE`` seconds) holds fewer. A worker that died and was
    started again begins at zero.

    A worker that leaves the listening socket to the others sleeps in its
    event loop; one that takes a connection and so holds more than another
    wakes that one (a byte on its pipe, ``wakeup``) to take the next, rather
    than leaving the connection queued until the sleeper's loop times out.
    """

    ALIVE = 3.0

    def __init__(self, workers: int):
        self.counts = multiprocessing.RawArray(ctypes.c_int, workers)
        self.seen = multiprocessing.RawArray(ctypes.c_double, workers)
        self.pipes = [os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC) for _ in range(workers)]  # made before the fork: every worker has all

    def start(self, index: int) -> None:
        self.counts[index] = 0
        self.beat(index)

    def beat(self, index: int) -> None:
        self.seen[index] = time.monotonic()  # CLOCK_MONOTONIC: the same clock in every process

    def add(self, index: int, delta: int) -> None:
        self.counts[index] = mine = self.counts[index] + delta
        if delta > 0:
            for n, count in enumerate(self.counts):
                if n != index and count < mine:
                    try:
                        os.write(self.pipes[n][1], b"\0")
                    except BlockingIOError:  # a full pipe: that worker has wake-ups enough to read
                        pass

    def wakeup(self, index: int) -> int:
        """The read end of worker ``index``'s pipe: readable when another worker wants it to look at the socket again."""
        return self.pipes[index][0]

    def may_accept(self, index: int) -> bool:
        mine, alive = self.counts[index], time.monotonic() - self.ALIVE
        return all(count >= mine for n, count in enumerate(self.counts) if n != index and self.seen[n] > alive)


def _serve_worker(app, sockets: list[socket.socket], index: int = 0, shares: AcceptShares | None = None) -> None:
    """One HTTP worker of several: its own gateway (store, spool, keys) built before it takes a connection."""
    if settings().worker_pin:
        pin_to_one_core(index, "HTTP worker")
    gateway().public_key()
    _serve_waitress(app, "", 0, sockets, (shares, index) if shares else None)


def _serve_workers(app, host: str, port: int, workers: int) -> None:
    from .ratelimit import share_between_processes
    from .supervisor import Child, Supervisor, bind

    sockets = bind(host, port)
    share_between_processes()  # one count of each client's requests for all the workers
    shares = AcceptShares(workers)
    children = [Child(f"worker {n}", lambda n=n: _serve_worker(app, sockets, n - 1, shares)) for n in range(1, workers + 1)]
    s = settings()
    if s.drain_interval > 0:
        count = drain_processes(s)  # each its own share of the instances: one core is not enough for several busy accounts
        children += [Child("drain" if count == 1 else f"drain {n + 1}/{count}", lambda n=n: _drain_child(s.drain_interval, n, count))
                     for n in range(count)]
    sys.exit(Supervisor(children).run())


def _serve_waitress(app, host: str, port: int, sockets: list[socket.socket] | None = None,
                    share: tuple[AcceptShares, int] | None = None) -> None:
    from waitress import wasyncore
    from waitress.adjustments import Adjustments
    from waitress.channel import HTTPChannel
    from waitress.parser import HTTPRequestParser
    from waitress.server import TcpWSGIServer
    from waitress.task import ThreadedTaskDispatcher

    s = settings()

    class TimedParser(HTTPRequestParser):
        """waitress's request parser, noting when the request began and how much body has come."""

        def __init__(self, adj):
            super().__init__(adj)
            self.began = time.monotonic()  # the request's first byte
            self.body_began: float | None = None
            self.body_bytes = 0

        def received(self, data):
            had_headers = self.headers_finished
            consumed = super().received(data)
            if had_headers:
                self.body_bytes += consumed
            elif self.headers_finished:
                self.body_began = time.monotonic()
            return consumed

    class Channel(HTTPChannel):
        """waitress's connection, with the close RFC 9112 section 9.6 asks for.

        waitress closes at once after an error page (431, 413) while the client
        may still be sending; the unread input then becomes a reset that can
        destroy the answer before the client reads it. Here the server sends
        FIN, reads away what still comes (at most LINGER_BYTES for
        LINGER_SECONDS), then closes.
        """

        parser_class = TimedParser
        linger_until: float | None = None
        lingered = 0
        counted = False

        def add_channel(self, map=None):
            super().add_channel(map)
            if share is not None and not self.counted:
                self.counted = True
                share[0].add(share[1], 1)

        def del_channel(self, map=None):
            super().del_channel(map)
            if share is not None and self.counted:
                self.counted = False
                share[0].add(share[1], -1)

        def handle_close(self):
            if self.linger_until is None and self.connected and not self.requests and not self.total_outbufs_len:
                try:
                    self.socket.shutdown(socket.SHUT_WR)
                except OSError:
                    pass
                else:
                    self.linger_until = time.monotonic() + LINGER_SECONDS
                    self.will_close = self.close_when_flushed = False
                    return
            super().handle_close()

        def readable(self):
            return True if self.linger_until is not None else super().readable()

        def writable(self):
            if self.linger_until is not None:
                return False
            if self.requests and self.total_outbufs_len < LOOP_FLUSH_BYTES and not (self.will_close or self.close_when_flushed):
                # A task is running: it sends what it writes itself, holding
                # the output's lock (waitress's send_bytes is 1). Meanwhile the
                # loop could only fail to take that lock, and a socket that can
                # take more makes poll() return at once: the loop would spin
                # (and take the interpreter lock from the task) until the send
                # ends. What a task leaves unsent goes when it ends (it wakes
                # the loop: pull_trigger), or from here past LOOP_FLUSH_BYTES.
                return False
            return super().writable()

        def handle_read(self):
            if self.linger_until is None:
                return super().handle_read()
            try:
                data = self.socket.recv(1 << 16)
            except OSError:
                data = b""
            self.lingered += len(data)
            if not data or self.lingered >= LINGER_BYTES or time.monotonic() > self.linger_until:
                super().handle_close()

    class Wakeup(wasyncore.file_dispatcher):
        """The worker's wake-up pipe (``AcceptShares``) in its event loop: reading it is all it takes (the loop then asks ``readable`` again)."""

        def readable(self):
            return True

        def writable(self):
            return False

        def handle_read(self):
            try:
                os.read(self._fileno, 512)
            except BlockingIOError:
                pass

    class Server(TcpWSGIServer):
        channel_class = Channel

        def readable(self):
            return super().readable() and (share is None or share[0].may_accept(share[1]))

        def maintenance(self, now):
            """Close connections whose request is arriving too slowly (runs about once a second)."""
            super().maintenance(now)  # connections idle between requests, after channel_timeout
            if share is not None:
                share[0].beat(share[1])
            mono = time.monotonic()
            for channel in list(self.active_channels.values()):
                if channel.linger_until is not None:
                    if mono > channel.linger_until:
                        HTTPChannel.handle_close(channel)
                    continue
                request = channel.request  # the request still arriving on this connection, if any
                if request is None or request.completed or channel.requests or channel.will_close:
                    continue
                if request.body_began is None:
                    late = mono - request.began > s.header_timeout
                else:
                    allowed = s.body_timeout + (request.body_bytes / s.body_min_rate if s.body_min_rate else 0.0)
                    late = mono - request.body_began > allowed
                if late:
                    log.debug("closing a connection from %s: its request is arriving too slowly", channel.addr)
                    channel.will_close = True

    where = {"sockets": sockets} if sockets else {"host": host, "port": port}
    adj = Adjustments(
        **where,
        threads=THREADS,
        connection_limit=CONNECTION_LIMIT,
        asyncore_use_poll=True,  # select() stops at 1024 descriptors
        channel_timeout=max(1, math.ceil(s.header_timeout)),
        cleanup_interval=1,  # run maintenance (the timeouts above) every second
        max_request_header_size=MAX_HEADER_BYTES,
        # The handlers refuse bodies over their own limits with a one-line reason;
        # waitress refuses only what no handler could take, before reading it.
        max_request_body_size=s.max_upload + (1 << 20),
        recv_bytes=1 << 16,
        clear_untrusted_proxy_headers=False,  # X-Forwarded-For is multimsg's to judge (MULTIMSG_TRUST_PROXY)
        ident="multimsg",
    )
    dispatcher = ThreadedTaskDispatcher()
    dispatcher.set_thread_count(adj.threads)
    connections: dict = {}  # one event loop for every address the host name resolves to
    if sockets:  # bound by the parent, shared by every worker
        servers = [Server(app, map=connections, _sock=sock, dispatcher=dispatcher, adj=adj, bind_socket=False,
                          sockinfo=(sock.family, sock.type, sock.proto, sock.getsockname())) for sock in sockets]
    else:
        servers = [Server(app, map=connections, dispatcher=dispatcher, adj=adj, sockinfo=info) for info in adj.listen]
    if share is not None:
        share[0].start(share[1])
        Wakeup(share[0].wakeup(share[1]), connections)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))  # waitress stops its threads on SystemExit
    servers[0].run()


def main(argv: list[str] | None = None) -> None:
    s = settings()
    parser = argparse.ArgumentParser(prog="local_runner.py", description="Serve every multimsg endpoint on one port.")
    parser.add_argument("--host", default=s.host, help="address to bind (default %(default)s; env HOST)")
    parser.add_argument("--port", type=int, default=s.port, help="port (default %(default)s; env PORT)")
    parser.add_argument("--debug", action="store_true", help="Flask's development server, with reloader and debugger")
    args = parser.parse_args(argv)

    os.umask(0o077)  # whatever the service or a library it uses creates (metrics files, temp files) is private to its user
    setup_logs()  # human lines, or JSON lines with MULTIMSG_LOG_FORMAT=json; secrets redacted
    log.info("data folder %s", s.home)
    app = create_app()
    app.config["MAX_CONTENT_LENGTH"] = s.max_upload
    gateway().public_key()  # make the key pair before serving, so /key is the same from the first call
    if s.workers > 1 and not args.debug:
        gateway.cache_clear()  # each worker builds its own (this one only checked the settings); the parent keeps none
        log.info("listening on http://%s:%s with %d workers (drain every %g s, from %d child(ren) of its own)",
                 args.host, args.port, s.workers, s.drain_interval, drain_processes(s))
        _serve_workers(app, args.host, args.port, s.workers)
        return
    log.info("listening on http://%s:%s (drain every %g s)", args.host, args.port, s.drain_interval)
    _start_timer()  # the one drain timer of this server (a thread of this process)
    if args.debug:
        app.run(host=args.host, port=args.port, debug=True, use_reloader=False)
    else:
        _serve_waitress(app, args.host, args.port)
