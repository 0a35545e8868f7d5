"""strace attached to a running gateway, for the tests that watch it (tests/test_fsync_trace.py) or kill it
at one system call (tests/test_receipts_callbacks.py)."""

from __future__ import annotations

import signal
import subprocess
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from tests.conftest import require, require_tool

__all__ = ["traced"]


@contextmanager
def traced(pid: int, options: list[str], folder: Path, why: str) -> Iterator[Path]:
    """``strace -f OPTIONS`` attached to ``pid`` and every thread of it while the block runs; yields the trace file."""
    strace = require_tool("strace", why)
    out, err = folder / "strace.out", folder / "strace.err"
    tracer = subprocess.Popen([strace, "-f", *options, "-o", str(out), "-p", str(pid)],
                              stdout=subprocess.DEVNULL, stderr=open(err, "wb"))
    try:
        deadline = time.monotonic() + 10
        while "attached" not in err.read_text(errors="replace"):
            require(tracer.poll() is None, f"strace cannot attach to process {pid}: {err.read_text(errors='replace').strip()}")
            assert time.monotonic() < deadline, "strace did not attach within 10 s"
            time.sleep(0.02)
        time.sleep(0.2)  # every thread attached
        yield out
    finally:
        if tracer.poll() is None:
            tracer.send_signal(signal.SIGINT)  # strace detaches, the process goes on
        try:
            tracer.wait(10)
        except subprocess.TimeoutExpired:
            tracer.kill()
            tracer.wait(5)
