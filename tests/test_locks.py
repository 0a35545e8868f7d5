"""The data folder's locks (multimsg/locks.py) and the folders' group commit (multimsg/fsutil.py fsync_dir).

The locks are tested across real processes: a holder in another process makes
a waiter here block in the kernel until it lets go (or dies), and a numbered
slot never holds up another number.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from multimsg import fsutil
from multimsg.locks import Locks, LockTimeout

HOLDER = """
import sys, time
from pathlib import Path
from multimsg.locks import Locks
locks = Locks(Path(sys.argv[1]))
which = sys.argv[2]
with (locks.named("usage-x") if which == "named" else locks.keyed("usage-x") if which == "keyed" else locks.slot(int(which))):
    print("held", flush=True)
    sys.stdin.readline()  # held until the test writes a line (or closes stdin)
"""


def holder(folder: Path, which: str) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(folder), which], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            text=True, cwd=Path(__file__).resolve().parent.parent)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "held"
    return proc


def waiter(enter) -> tuple[threading.Thread, threading.Event]:
    acquired = threading.Event()

    def run():
        with enter():
            acquired.set()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, acquired


@pytest.mark.parametrize("which", ["7", "named", "keyed"])
def test_a_lock_held_by_another_process_makes_the_waiter_sleep_until_it_is_released(tmp_path, which):
    proc = holder(tmp_path, which)
    locks = Locks(tmp_path)
    try:
        thread, acquired = waiter(lambda: {"7": lambda: locks.slot(7), "named": lambda: locks.named("usage-x"),
                                           "keyed": lambda: locks.keyed("usage-x")}[which]())
        assert not acquired.wait(0.5)  # held elsewhere: still waiting
        if which == "7":
            with locks.slot(8):  # another number is free meanwhile
                pass
        if which == "keyed":
            with locks.keyed("usage-y"), locks.slot(7):  # another name, and the slots, are free meanwhile
                pass
        assert proc.stdin is not None
        proc.stdin.write("go\n")
        proc.stdin.flush()
        assert acquired.wait(10), "the waiter was not woken when the other process let go"
        thread.join(10)
    finally:
        proc.kill()
        proc.wait(10)


def test_a_lock_of_a_killed_process_is_free_at_once(tmp_path):
    proc = holder(tmp_path, "3")
    proc.kill()
    proc.wait(10)
    with Locks(tmp_path).slot(3):
        pass


def test_threads_of_one_process_exclude_each_other_and_give_up_after_the_timeout(tmp_path):
    locks = Locks(tmp_path, timeout=0.2)
    inside = []
    with locks.slot(1):
        with pytest.raises(LockTimeout):
            with locks.slot(1):
                inside.append("second")  # never: the same slot is held by this thread
    thread, acquired = waiter(lambda: locks.slot(1))
    assert acquired.wait(10) and not inside
    thread.join(10)


def test_concurrent_folder_fsyncs_share_one_and_each_waits_for_one_begun_after_it_asked(tmp_path, monkeypatch):
    synced, release_first = [], threading.Event()
    real_fsync = os.fsync

    def fsync(fd):
        synced.append(time.monotonic())
        if len(synced) == 1:
            release_first.wait(10)  # the first fsync is slow: the others ask meanwhile
        real_fsync(fd)

    monkeypatch.setattr(fsutil.os, "fsync", fsync)
    first = threading.Thread(target=fsutil.fsync_dir, args=(tmp_path,))
    first.start()
    while not synced:
        time.sleep(0.01)
    asked_at = time.monotonic()
    later = [threading.Thread(target=fsutil.fsync_dir, args=(tmp_path,)) for _ in range(5)]
    for thread in later:
        thread.start()
    deadline = time.monotonic() + 10
    while fsutil._folders[os.fspath(tmp_path)].asked < 6:  # all five are waiting on the first (which began before they asked)
        assert time.monotonic() < deadline
        time.sleep(0.01)
    assert len(synced) == 1
    release_first.set()
    for thread in [first, *later]:
        thread.join(10)
    assert len(synced) == 2  # the five shared the second fsync...
    assert synced[1] >= asked_at  # ...which began after they asked
