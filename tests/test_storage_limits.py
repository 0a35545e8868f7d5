"""What the spool may hold: a per-client quota (MULTIMSG_CLIENT_QUOTA), and a full disk.

Both against a real runner. The full disk is a small tmpfs mounted as the data
folder (root only: the test skips with the reason where mounting is not
permitted, and fails instead when CI=true).
"""

from __future__ import annotations

import errno
import json
import os
import subprocess

import pytest

from multimsg.queue.sealed import plain_size
from tests.gatewayproc import Gateway


def _spooled(runner: Gateway) -> list:
    return sorted((runner.home / "spool").glob("*/*.json"))


def test_a_client_over_its_quota_gets_413_and_others_are_not_affected(make_gateway):
    runner = make_gateway("quota", env={"MULTIMSG_CLIENT_QUOTA": "100000", "MULTIMSG_RATE_LIMIT": "0"})
    first = runner.upload_id(b"a" * 60_000)
    over = runner.upload(b"b" * 50_000)
    assert over.status_code == 413 and "quota" in over.text, over.text
    assert "\n" not in over.text.strip()
    assert len(_spooled(runner)) == 1  # the refused upload was not stored
    assert runner.upload(b"c" * 30_000).status_code == 200  # what still fits is taken
    assert runner.upload(b"d" * 20_000).status_code == 413
    # The quota is per client: another client has its own.
    assert runner.upload(b"e" * 90_000, source="127.0.0.2").status_code == 200
    # A message's own link to its content does not count twice.
    assert runner.msg(id=first, serv="telegram", dest="1", type="text").status_code == 200
    assert runner.upload(b"f" * 9_000).status_code == 200


def test_quota_zero_turns_it_off(make_gateway):
    runner = make_gateway("no-quota", env={"MULTIMSG_CLIENT_QUOTA": "0", "MULTIMSG_RATE_LIMIT": "0"})
    for _ in range(3):
        assert runner.upload(b"x" * 100_000).status_code == 200


@pytest.fixture
def small_disk(tmp_path):
    """A 2 MB tmpfs, unmounted afterwards whatever happens."""
    mount = tmp_path / "disk"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m,mode=0700", "tmpfs", str(mount)], capture_output=True, text=True)
    if done.returncode != 0:
        if os.environ.get("CI") == "true":
            pytest.fail(f"cannot mount a tmpfs in CI: {done.stderr.strip()}")
        pytest.skip(f"mounting a tmpfs is not permitted here: {done.stderr.strip() or done.returncode}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], capture_output=True)


def _fill(path, limit=4 << 20) -> int:
    """Write zeros to ``path`` until the disk is full; returns how much was written."""
    written = 0
    with open(path, "wb", buffering=0) as out:
        while written < limit:
            try:
                written += out.write(b"\0" * 4096)
            except OSError as exc:
                assert exc.errno == errno.ENOSPC
                break
    return written


def test_a_full_disk_answers_507_and_loses_nothing_already_stored(small_disk, make_gateway, telegram):
    runner = make_gateway("full", home=small_disk, env={"MULTIMSG_RATE_LIMIT": "0", "MULTIMSG_CLIENT_QUOTA": "0"})
    witnesses = [runner.send(f"stored before the disk filled {i}".encode(), "telegram", str(9000 + i)) for i in range(3)]
    spare = runner.upload_id(b"an upload kept for later")
    stored_before = _spooled(runner)

    # An upload larger than the whole disk: 507, and no partial file is left.
    big = runner.upload(os.urandom(3 * 1000 * 1000))
    assert big.status_code == 507, big.text
    assert "full" in big.text and "\n" not in big.text.strip()
    assert not [p for p in (small_disk / "spool").rglob("*") if p.name.endswith(".tmp")]
    assert _spooled(runner) == stored_before

    # Now nothing fits at all: small uploads and new messages get 507 too.
    filler = small_disk / "filler"
    assert _fill(filler) > 0
    answers = [runner.upload(b"tiny") for _ in range(3)]
    answers += [runner.msg(id=spare, serv="telegram", dest="777", type="text") for _ in range(3)]
    assert [a.status_code for a in answers] == [507] * 6, [(a.status_code, a.text) for a in answers]
    assert "Traceback" not in runner.log()
    assert _spooled(runner) == stored_before

    # Room again: everything stored before the errors is still there and goes out.
    filler.unlink()
    for message_id in witnesses:
        assert runner.wait_state(message_id)["state"] == "delivered"
    delivered = sorted(r["fields"]["text"] for r in telegram.received(ok_only=True))
    assert delivered == [f"stored before the disk filled {i}" for i in range(3)]
    assert runner.msg(id=spare, serv="telegram", dest="778", type="text").status_code == 200
    assert plain_size(json.loads(next((small_disk / "spool").glob(f"*/{spare}.json")).read_text())["size"]) == len(b"an upload kept for later")
