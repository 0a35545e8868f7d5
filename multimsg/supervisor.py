"""Several worker processes behind one port: the local runner with ``MULTIMSG_WORKERS`` above 1.

The parent binds the listening sockets, then forks the children: ``workers``
HTTP workers that each serve those same sockets (the kernel hands every new
connection to one of them), and, when ``MULTIMSG_DRAIN_INTERVAL`` is above 0,
the drain children that run the drain timer (one, or one per share of the
service instances: ``queue.shares``), so each instance of a data folder is
drained from exactly one place however many processes serve it (``POST /drain``
still runs a pass in whichever worker answers it; the drain locks and the
leases make that safe, as for several runners).

The parent does nothing else: it starts no thread and builds no store, so
forking a replacement is safe at any time. A child that ends is replaced (a
child that ends within ``QUICK_EXIT`` seconds of its start waits
``RESTART_GAP`` seconds first, so a worker that cannot start does not spin).
SIGTERM, SIGINT or SIGHUP stop the runner: the parent passes SIGTERM on to
every child (each finishes its requests in flight, as one runner does; the
children ignore SIGINT and SIGHUP, which a terminal sends to the whole group)
and waits for them, sending SIGKILL to what is left after ``STOP_GRACE`` seconds.
Each child asks the kernel for SIGTERM when the parent dies (Linux), so a
killed parent leaves no worker serving, and no drain running, behind it.
"""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import socket
import sys
import time
from dataclasses import dataclass
from typing import Callable

__all__ = ["Supervisor", "Child", "bind", "QUICK_EXIT", "RESTART_GAP", "STOP_GRACE"]

QUICK_EXIT = 2.0
RESTART_GAP = 1.0
STOP_GRACE = 5
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
_PR_SET_PDEATHSIG = 1

log = logging.getLogger("multimsg.runner")


def bind(host: str, port: int, backlog: int = 1024) -> list[socket.socket]:
    """Listening sockets for every address ``host`` resolves to (as waitress would bind them)."""
    from waitress.adjustments import Adjustments  # type: ignore[import-untyped]

    sockets = []
    for family, socktype, proto, address in Adjustments(host=host, port=port).listen:
        sock = socket.socket(family, socktype, proto)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind(address)
        sock.listen(backlog)
        sock.setblocking(False)
        sockets.append(sock)
    return sockets


@dataclass
class Child:
    """One kind of child: its name (in the log) and what it runs until it is told to stop."""

    name: str
    run: Callable[[], None]
    pid: int = 0
    started: float = 0.0


class Supervisor:
    """Forks ``children``, replaces the ones that end, and stops them all on a stop signal."""

    def __init__(self, children: list[Child]):
        self.children = children
        self.stopping = False
        self.pid = 0

    def run(self) -> int:
        for signum in STOP_SIGNALS:
            signal.signal(signum, self._stop)
        signal.signal(signal.SIGALRM, self._kill_all)
        self.pid = os.getpid()
        for child in self.children:
            self._start(child)
        while self._running():
            try:
                pid, status = os.wait()
            except ChildProcessError:
                break
            ended = next((c for c in self.children if c.pid == pid), None)
            if ended is None:
                continue
            child = ended
            child.pid = 0
            if self.stopping:
                continue
            log.warning("%s (pid %d) ended (%s); starting another", child.name, pid, _describe(status))
            if time.monotonic() - child.started < QUICK_EXIT:
                time.sleep(RESTART_GAP)
            if not self.stopping:
                self._start(child)
        signal.alarm(0)
        return 0

    def _running(self) -> bool:
        return not self.stopping or any(child.pid for child in self.children)

    def _start(self, child: Child) -> None:
        pid = os.fork()
        if pid == 0:  # the child: never returns into the supervisor's code
            code = 1
            try:
                # The parent decides when to stop (Ctrl-C reaches the whole group): a child stops on its SIGTERM.
                for signum in (signal.SIGINT, signal.SIGHUP):
                    signal.signal(signum, signal.SIG_IGN)
                for signum in (signal.SIGTERM, signal.SIGALRM):
                    signal.signal(signum, signal.SIG_DFL)
                _die_with_parent(self.pid)
                child.run()
                code = 0
            except SystemExit as exc:
                code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
            except BaseException:
                log.exception("%s failed", child.name)
            finally:
                logging.shutdown()
                os._exit(code)
        child.pid, child.started = pid, time.monotonic()
        log.info("%s started (pid %d)", child.name, pid)

    def _stop(self, signum, frame) -> None:
        if self.stopping:
            return
        self.stopping = True
        for child in self.children:
            if child.pid:
                _signal(child.pid, signal.SIGTERM)
        signal.alarm(STOP_GRACE)

    def _kill_all(self, signum, frame) -> None:
        for child in self.children:
            if child.pid:
                _signal(child.pid, signal.SIGKILL)


def _signal(pid: int, signum: int) -> None:
    try:
        os.kill(pid, signum)
    except ProcessLookupError:
        pass


def _die_with_parent(parent: int) -> None:
    """Ask the kernel for SIGTERM when the parent ends (Linux's prctl; elsewhere a no-op)."""
    if not sys.platform.startswith("linux"):
        return
    try:
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):
        return
    if os.getppid() != parent:  # the parent already ended before the request took effect
        os._exit(0)


def _describe(status: int) -> str:
    if os.WIFSIGNALED(status):
        return f"killed by {signal.Signals(os.WTERMSIG(status)).name}"
    return f"exit code {os.WEXITSTATUS(status)}"
