"""A message accepted by /msg (and an upload, and a /send) is on disk before the answer: checked on the system calls.

The runner's process is traced with strace around one ``POST /msg``
(after its upload). From the trace: some file under the store's journal
folder (``store/journal/``) that the request wrote was fsynced after its last
write, the folder itself was fsynced after the last file created (``O_EXCL``)
or renamed into it (a request that only appends to a file it made earlier changes no
entry of the folder), and those fsyncs had returned before the first bytes of
the ``HTTP/1.1 200`` answer were written to the client's socket.

The check knows nothing of the files beyond "a file in this folder": which
file holds the record is the store's business. With ``MULTIMSG_FSYNC=0`` the
same check must find the fsyncs missing, which shows it can fail.
"""

from __future__ import annotations

import os
import re
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.gatewayproc import session_from
from tests.strace_support import traced

TRACED = "fsync,fdatasync,rename,renameat,renameat2,openat,link,linkat,write,writev,sendto,sendmsg"
LINE = re.compile(r"^(?P<pid>\d+)\s+(?P<t>\d+\.\d+)\s+(?P<rest>.*)$")
RESUMED = re.compile(r"^<\.\.\. (?P<name>\w+) resumed>(?P<tail>.*)$")
CALL = re.compile(r"^(?P<name>\w+)\((?P<args>.*)$")
DURATION = re.compile(r"<(?P<seconds>\d+\.\d+)>\s*$")
FD_PATH = re.compile(r"^\d+<(?P<path>[^>]*)>")
STRING_ARGS = re.compile(r'"((?:[^"\\]|\\.)*)"')


@dataclass
class Call:
    pid: int
    name: str
    start: float
    end: float
    text: str  # the arguments and the result, as strace printed them

    @property
    def fd_path(self) -> str | None:
        match = FD_PATH.match(self.text)
        return match.group("path") if match else None

    @property
    def ok(self) -> bool:
        return re.search(r"\)\s+=\s+-1\b", self.text) is None


def parse(trace: str) -> list[Call]:
    """strace -f -ttt -T -yy output, with unfinished/resumed halves joined, in start order."""
    calls, pending = [], {}
    for line in trace.splitlines():
        match = LINE.match(line)
        if not match:
            continue
        pid, t, rest = int(match["pid"]), float(match["t"]), match["rest"]
        resumed = RESUMED.match(rest)
        if resumed:
            if pid not in pending:
                continue
            name, start, head = pending.pop(pid)
            text = head + resumed["tail"]
        elif rest.endswith("<unfinished ...>"):
            call = CALL.match(rest)
            if call:
                pending[pid] = (call["name"], t, call["args"][: -len("<unfinished ...>")].rstrip())
            continue
        else:
            call = CALL.match(rest)
            if not call:
                continue  # signals, exits
            name, start, text = call["name"], t, call["args"]
        duration = DURATION.search(text)
        # A resumed call's line is printed when it returns: its time is the end (adding the duration counted it twice).
        end = t if resumed else start + (float(duration["seconds"]) if duration else 0.0)
        calls.append(Call(pid, name, start, end, text))
    return sorted(calls, key=lambda c: c.start)


def durability_problems(calls: list[Call], store: Path, files: bool = True) -> list[str]:
    """What the trace lacks for "the record was on disk before the answer"; empty when nothing.

    ``files=False``: the folder gets only new names (hard links), no written file; those must be fsynced.
    """
    store_dir = str(store)
    answers = [c for c in calls if c.name in ("write", "writev", "sendto", "sendmsg")
               and (c.fd_path or "").startswith("TCP:") and "HTTP/1.1 200" in c.text]
    if not answers:
        return ["no 'HTTP/1.1 200' written to a TCP socket in the trace"]
    answered = answers[0].start
    before = [c for c in calls if c.end <= answered and c.ok]

    def under_store(path: str | None) -> bool:
        return bool(path) and path.startswith(store_dir + "/")

    problems = []
    written = {c.fd_path for c in before if c.name in ("write", "writev") and under_store(c.fd_path)}
    if files and not written:
        problems.append(f"no file under {store_dir}/ written before the answer")
    synced = [
        path for path in written
        if any(c.name in ("fsync", "fdatasync") and c.fd_path == path
               and c.start >= max(w.end for w in before if w.name in ("write", "writev") and w.fd_path == path)
               for c in before)
    ]
    if written and not synced:
        problems.append(f"none of the files written under {store_dir}/ was fsynced after its last write before the answer: {sorted(written)}")
    entries = [c for c in before if (c.name in ("rename", "renameat", "renameat2", "link", "linkat")
                                     and any(under_store(s) for s in STRING_ARGS.findall(c.text)[1:]))
               or (c.name == "openat" and "O_EXCL" in c.text and any(under_store(s) for s in STRING_ARGS.findall(c.text)))]
    dir_syncs = [c for c in before if c.name in ("fsync", "fdatasync") and c.fd_path == store_dir]
    if not files and not entries:
        problems.append(f"no name made in {store_dir} before the answer")
    if entries and not any(s.start >= entries[-1].end for s in dir_syncs):
        problems.append(f"the folder {store_dir} was not fsynced after the last file made or renamed in it")
    return problems


def worker_pid(master: int) -> int:
    """The process that serves requests: the runner itself (waitress serves in one process, with threads)."""
    children = Path(f"/proc/{master}/task/{master}/children").read_text().split()
    assert not children, f"the runner {master} has child processes {children}: trace them instead"
    return master


def trace_one_msg(runner, tmp_path: Path, data_id: str) -> tuple[str, str]:
    """strace the worker around one POST /msg; (the trace, the answer's body)."""
    return trace_one(runner, tmp_path, "/msg", data={"id": data_id, "serv": "telegram", "dest": "4242", "type": "text"})


def trace_one(runner, tmp_path: Path, path: str, **request) -> tuple[str, str]:
    """strace the worker around one POST to ``path``; (the trace, the answer's body)."""
    options = ["-ttt", "-T", "-yy", "-s", "128", "-e", f"trace={TRACED}"]
    with traced(worker_pid(runner.proc.pid), options, tmp_path, "tracing the worker's fsyncs") as out:
        with session_from(None) as client:  # a new connection, accepted while traced
            answer = client.post(runner.url + path, timeout=30, **request)
        assert answer.status_code == 200, answer.text
        time.sleep(0.3)  # strace prints a call when it returns
    return out.read_text(errors="replace"), answer.text


@pytest.mark.parametrize("fsync", ["on", "off"])
def test_the_store_file_and_folder_are_fsynced_before_msg_answers(make_gateway, tmp_path, fsync):
    runner = make_gateway(env={"MULTIMSG_FSYNC": "1" if fsync == "on" else "0", "MULTIMSG_RATE_LIMIT": "0"})
    data_id = runner.upload_id(b"on disk before the answer")
    trace, message_id = trace_one_msg(runner, tmp_path, data_id)
    calls = parse(trace)
    assert any(c.name == "openat" for c in calls), f"an empty or unparsed trace:\n{trace[:2000]}"
    problems = durability_problems(calls, (runner.home / "store" / "journal").resolve())
    links = next((runner.home / "spool").resolve().iterdir()) / "msg"
    problems += durability_problems(calls, links, files=False)  # the message's link to its upload's content
    if fsync == "on":
        assert not problems, "\n".join(problems) + f"\n--- trace ---\n{trace[-6000:]}"
    else:  # the check can fail: without fsync it finds the fsyncs missing
        assert any("fsync" in p for p in problems), f"MULTIMSG_FSYNC=0 and the check found nothing missing:\n{trace[-6000:]}"
    assert os.path.isdir(runner.home / "store") and runner.cons(message_id).text == "queued"


@pytest.mark.parametrize("fsync", ["on", "off"])
def test_an_upload_and_a_send_are_fsynced_before_they_answer(make_gateway, tmp_path, fsync):
    """/data: the content and its folder; /send: the message's own content file and its folder, and the record."""
    runner = make_gateway(env={"MULTIMSG_FSYNC": "1" if fsync == "on" else "0", "MULTIMSG_RATE_LIMIT": "0"})
    runner.upload_id(b"the first upload makes the client's folders")
    client_dir = next((runner.home / "spool").resolve().iterdir())
    upload = {"files": {"data": ("a.txt", b"an upload on disk before the answer")}}
    send = {"files": {"data": ("b.txt", b"a send on disk before the answer"), "serv": (None, "telegram"),
                      "dest": (None, "4242"), "type": (None, "text")}}
    runner.send(b"the first send makes msg/", "telegram", "4242")  # makes msg/ (a folder made in the traced request would need its parent fsynced)
    checks = [("/data", upload, client_dir), ("/send", send, client_dir / "msg"), ("/send", send, (runner.home / "store" / "journal").resolve())]
    for path, request, folder in checks:
        calls = parse(trace_one(runner, tmp_path, path, **request)[0])
        problems = durability_problems(calls, folder)
        if fsync == "on":
            assert not problems, f"{path}, {folder}: " + "\n".join(problems)
        else:
            assert any("fsync" in p for p in problems), f"{path}, {folder}: MULTIMSG_FSYNC=0 and the check found nothing missing"
