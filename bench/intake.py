"""Benchmark 4: intake, side by side in one run: a bare hello, /data, /msg, /send and Apprise API's /notify/.

wrk (``--connections`` 8, ``--threads`` 2, ``--seconds`` per run) drives, in
alternating rounds (``--rounds``):

- ``hello``: a bare Flask hello served like the runner (``bench/hello.py``), in as many
  worker processes as the gateway (``--workers``, default one per core: the runner's default);
- ``/data``: a 1 KB multipart upload (a fresh random boundary each, as every real
  client sends); ``/msg``: queueing one upload (the same data id every time);
  ``/send``: both in one request (random boundaries too), if the server has it
  (else the column is skipped with the reason); ``/msg refused (400)``: a ``/msg``
  without its ``id``, refused at its first check (the form read, the client
  identified, a 400 answered, nothing looked up or stored): the floor of a
  ``/msg`` through this server, whatever its work costs;
- ``apprise /notify/``: Apprise API (caronc/apprise-api, its own gunicorn and
  gevent settings, its own requirements in a virtualenv) sending each message to
  the same Telegram emulator the gateway queues for, through its ``json://``
  plugin. ``--apprise PATH``: a checkout of it and ``--apprise-python``: the
  virtualenv's python; the commit measured is printed. Skipped with the reason
  when it is not given or does not start.

Then the gateway's columns again with ``--backlog`` (100,000) messages queued
(seeded as ``bench.backlog`` does, not due: nothing drains meanwhile).

Per column: requests/s, p50/p99 latency (wrk's), CPU per accepted request (user
+ system of the server's processes, from /proc), and messages/s (a message is
one /send, or one /data plus one /msg: 1 / (1/data + 1/msg)). Figures go to
bench/results.json under ``intake`` and the chart to bench/intake.svg.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from urllib.parse import quote

from tests.emulators import TelegramEmulator
from tests.gatewayproc import ROOT, Gateway, free_port

from .common import RESULTS, emulator_env, machine, seed, tree_cpu

BOUNDARY = "multimsgbench"
CHAT = "4242"


def multipart(fields: dict[str, str], files: dict[str, bytes]) -> bytes:
    parts = []
    for name, value in fields.items():
        parts.append(f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'.encode())
    for name, content in files.items():
        parts.append(f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="{name}"; filename="b.txt"\r\n'
                     f"Content-Type: text/plain\r\n\r\n".encode() + content + b"\r\n")
    return b"".join(parts) + f"--{BOUNDARY}--\r\n".encode()


def lua_string(data: bytes) -> str:
    return '"' + "".join(chr(b) if 32 <= b < 127 and chr(b) not in '"\\' else f"\\{b:03d}" for b in data) + '"'


def multipart_script(folder: Path, name: str, fields: dict[str, str], files: dict[str, bytes]) -> Path:
    """A wrk script POSTing ``multipart(fields, files)`` with a fresh random boundary each time, as real clients do."""
    template = multipart(fields, files).replace(BOUNDARY.encode(), b"@@B@@")
    path = folder / f"{name}.lua"
    path.write_text(f"""local template = {lua_string(template)}
init = function(args) math.randomseed(math.floor(os.clock() * 1000000) + os.time()) end
request = function()
  local b = string.format("{BOUNDARY}%08x%08x", math.random(0, 0x7fffffff), math.random(0, 0x7fffffff))
  return wrk.format("POST", nil, {{["Content-Type"] = "multipart/form-data; boundary=" .. b}}, (template:gsub("@@B@@", b)))
end
""")
    return path


def wrk_script(folder: Path, name: str, method: str, body: bytes | None, content_type: str | None) -> Path:
    lines = [f'wrk.method = "{method}"']
    if body is not None:
        lines.append(f"wrk.body = {lua_string(body)}")
    if content_type:
        lines.append(f'wrk.headers["Content-Type"] = "{content_type}"')
    path = folder / f"{name}.lua"
    path.write_text("\n".join(lines) + "\n")
    return path


def seconds_of(text: str) -> float:
    match = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text)
    assert match, text
    return float(match[1]) * {"us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0}[match[2]]


def wrk(url: str, script: Path, args, server_pid: int, count_refused: bool = False) -> dict:
    """One wrk run's figures; ``count_refused``: the column is answered with 4xx on purpose, and those are its requests."""
    before = tree_cpu(server_pid)
    out = subprocess.run(["wrk", "-t", str(args.threads), "-c", str(args.connections), "-d", f"{args.seconds}s",
                          "--latency", "-s", str(script), url], capture_output=True, text=True, timeout=args.seconds + 60).stdout
    cpu = tree_cpu(server_pid) - before
    (script.parent / f"{script.stem}.wrk.out").write_text(out)
    total = int(re.search(r"(\d+) requests in", out)[1])
    bad = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    errors = re.search(r"Socket errors: (.*)", out)
    accepted = total - (int(bad[1]) if bad else 0)
    answered = total if count_refused else accepted
    duration = seconds_of(re.search(r"requests in ([\d.]+\w+),", out)[1])
    p50, p99 = (re.search(rf"^\s+{q}%\s+(\S+)", out, re.M) for q in (50, 99))
    return {
        "requests_per_s": round(answered / duration, 1),
        "p50_ms": round(1000 * seconds_of(p50[1]), 2) if p50 else None,
        "p99_ms": round(1000 * seconds_of(p99[1]), 2) if p99 else None,
        "cpu_ms_per_request": round(1000 * cpu / answered, 2) if answered else None,
        "accepted": accepted, "refused": total - accepted, "socket_errors": errors[1] if errors else None,
    }


def start_hello(folder: Path, workers: int) -> tuple[subprocess.Popen, str]:
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "bench.hello", "--port", str(port), "--workers", str(workers)], cwd=ROOT,
                            stdout=open(folder / "hello.log", "wb"), stderr=subprocess.STDOUT)
    wait_port(port, proc)
    return proc, f"http://127.0.0.1:{port}/"


def wait_port(port: int, proc: subprocess.Popen, timeout: float = 60) -> None:
    import socket

    deadline = time.monotonic() + timeout
    while True:
        assert proc.poll() is None, "the server exited"
        try:
            socket.create_connection(("127.0.0.1", port), 1).close()
            return
        except OSError:
            assert time.monotonic() < deadline, f"nothing listens on {port}"
            time.sleep(0.1)


def start_apprise(args, folder: Path, emulator: TelegramEmulator) -> tuple[subprocess.Popen | None, str, str]:
    """(process, url, why not / the commit)."""
    if not args.apprise or not args.apprise_python:
        return None, "", "not measured: give --apprise (a checkout of caronc/apprise-api) and --apprise-python"
    source = Path(args.apprise)
    commit = subprocess.run(["git", "-C", str(source), "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip() or args.apprise_commit
    port = free_port()
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "core.settings", "APPRISE_CONFIG_DIR": str(folder / "apprise-config"),
           "APPRISE_ATTACH_DIR": str(folder / "apprise-attach"), "LOG_LEVEL": "warning", "APPRISE_STATEFUL_MODE": "disabled",
           "APPRISE_DENY_SERVICES": "", "PYTHONPATH": str(source / "apprise_api")}
    gunicorn = Path(args.apprise_python).parent / "gunicorn"
    try:
        proc = subprocess.Popen([str(gunicorn), "-c", str(source / "apprise_api" / "gunicorn.conf.py"), "--bind", f"127.0.0.1:{port}",
                                 "--pythonpath", str(source / "apprise_api"), "core.wsgi"], cwd=source / "apprise_api", env=env,
                                stdout=open(folder / "apprise.log", "wb"), stderr=subprocess.STDOUT)
        wait_port(port, proc)
    except (OSError, AssertionError) as exc:
        return None, "", f"not measured: Apprise API did not start ({exc}; see {folder / 'apprise.log'})"
    return proc, f"http://127.0.0.1:{port}/notify/", commit


def stop(proc: subprocess.Popen | None) -> None:
    if proc is not None and proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()


def warm_up(url: str, body: bytes) -> int:
    import requests

    return requests.post(url, data=body, headers={"Content-Type": "application/x-www-form-urlencoded"}, timeout=120).status_code


def has_send(runner: Gateway) -> bool:
    import requests

    return requests.post(runner.url + "/send", timeout=30).status_code != 404


def messages_per_s(columns: dict) -> float | None:
    if "/send" in columns:
        return columns["/send"]["requests_per_s"]
    data, msg = columns["/data"]["requests_per_s"], columns["/msg"]["requests_per_s"]
    return round(1 / (1 / data + 1 / msg), 1) if data and msg else None


def median_of(runs: list[dict]) -> dict:
    if not runs:
        return {}
    ordered = sorted(runs, key=lambda r: r["requests_per_s"])
    best = dict(ordered[len(ordered) // 2])
    best["rounds"] = [r["requests_per_s"] for r in runs]  # the upper median: of two rounds, the better
    return best


REFUSED = "/msg refused (400)"  # the floor of a /msg through this server: the form, identity and an answer, no work


def gateway_scripts(folder: Path, data_id: str) -> dict[str, tuple[str, Path]]:
    form = f"id={data_id}&serv=telegram&dest={CHAT}&type=text".encode()
    return {
        "/data": ("/data", multipart_script(folder, "data", {}, {"data": b"x" * 1024})),
        "/msg": ("/msg", wrk_script(folder, "msg", "POST", form, "application/x-www-form-urlencoded")),
        "/send": ("/send", multipart_script(folder, "send", {"serv": "telegram", "dest": CHAT, "type": "text"}, {"data": b"x" * 1024})),
    }


def run(args) -> dict:
    if shutil.which("wrk") is None:
        raise SystemExit("bench.intake needs wrk (apt-get install -y wrk)")
    folder = Path(tempfile.mkdtemp(prefix="multimsg-intake-"))
    result: dict = {"machine": machine(), "workers": args.workers, "connections": args.connections, "threads": args.threads, "seconds": args.seconds,
                    "rounds": args.rounds, "skipped": {}, "empty": {}, "backlog": {}}
    with TelegramEmulator(rate=0, chat_rate=0).start() as emulator:  # no limits: Apprise API sends every message at once
        env = {**emulator_env(emulator), "MULTIMSG_DRAIN_INTERVAL": "0", "MULTIMSG_RATE_LIMIT": "0",
               "MULTIMSG_WORKERS": str(args.workers)}
        hello, hello_url = start_hello(folder, args.workers)
        apprise, apprise_url, apprise_note = start_apprise(args, folder, emulator)
        runner = Gateway(folder / "home", env).start(timeout=120)
        try:
            data_id = runner.upload_id(b"x" * 1024)
            scripts = gateway_scripts(folder, data_id)
            if not has_send(runner):
                result["skipped"]["/send"] = "this server has no POST /send (404)"
                del scripts["/send"]
            columns: dict[str, tuple[str, Path, int]] = {"hello": (hello_url, wrk_script(folder, "hello", "GET", None, None), hello.pid)}
            columns.update({name: (runner.url + path, script, runner.proc.pid) for name, (path, script) in scripts.items()})
            refused = f"serv=telegram&dest={CHAT}&type=text".encode()  # no id: a 400 from /msg's first check, nothing stored
            columns[REFUSED] = (runner.url + "/msg", wrk_script(folder, "refused", "POST", refused, "application/x-www-form-urlencoded"),
                                runner.proc.pid)
            if apprise is not None:
                result["apprise_commit"] = apprise_note
                print("Apprise API commit measured:", apprise_note)
                url = f"json://127.0.0.1:{emulator.url.rsplit(':', 1)[1].strip('/')}/bot{emulator.token}/sendMessage?:chat_id={CHAT}&:message=text"
                body = ("urls=" + quote(url, safe="") + "&body=benchmark").encode()
                warm = [warm_up(apprise_url, body) for _ in range(args.connections)]  # every worker imports Django on its first request
                if all(code == 200 for code in warm):
                    columns["apprise /notify/"] = (apprise_url, wrk_script(folder, "apprise", "POST", body, "application/x-www-form-urlencoded"), apprise.pid)
                else:
                    result["skipped"]["apprise /notify/"] = f"its warm-up requests were answered {warm} (see {folder / 'apprise.log'})"
            else:
                result["skipped"]["apprise /notify/"] = apprise_note
            runs: dict[str, list[dict]] = {name: [] for name in columns}
            for round_ in range(args.rounds):
                for name, (url, script, pid) in columns.items():
                    runs[name].append(wrk(url, script, args, pid, count_refused=name == REFUSED))
                    print(f"round {round_ + 1} {name}: {runs[name][-1]}", flush=True)
            result["empty"] = {name: median_of(r) for name, r in runs.items()}
        finally:
            runner.stop()
            stop(hello)
            stop(apprise)

        # The same with a backlog queued (not due: the figures are the intake's, not a drain's).
        home = folder / "backlog-home"
        started = time.monotonic()
        seed(home, "telegram", (str(700_000_000 + n) for n in range(args.backlog)), due=False)
        result["backlog_seeded"] = {"messages": args.backlog, "seconds": round(time.monotonic() - started, 1)}
        runner = Gateway(home, env).start(timeout=120)
        try:
            scripts = gateway_scripts(folder, runner.upload_id(b"x" * 1024))
            if "/send" in result["skipped"]:
                del scripts["/send"]
            runs = {name: [] for name in scripts}
            for round_ in range(args.rounds):
                for name, (path, script) in scripts.items():
                    runs[name].append(wrk(runner.url + path, script, args, runner.proc.pid))
                    print(f"backlog round {round_ + 1} {name}: {runs[name][-1]}", flush=True)
            result["backlog"] = {name: median_of(r) for name, r in runs.items()}
        finally:
            runner.stop()
    return result


def verdicts(result: dict) -> dict:
    empty, backlog = result["empty"], result["backlog"]
    hello = empty["hello"]["requests_per_s"]
    ours = messages_per_s(empty)
    out = {
        "/data vs hello (>= 0.5)": round(empty["/data"]["requests_per_s"] / hello, 2),
        "/msg vs hello (>= 0.5)": round(empty["/msg"]["requests_per_s"] / hello, 2),
        "/msg p99 ms (<= 25)": empty["/msg"]["p99_ms"],
        "/msg refused at its first check vs hello (the floor of a /msg)": (
            round(empty[REFUSED]["requests_per_s"] / hello, 2) if REFUSED in empty else None),
        "messages/s": ours,
    }
    if "apprise /notify/" in empty:
        out["messages/s vs Apprise API (>= 1.5)"] = round(ours / empty["apprise /notify/"]["requests_per_s"], 2) if ours else None
    for name in backlog:
        out[f"{name} empty / 100k queued requests/s (<= 1.2)"] = round(empty[name]["requests_per_s"] / backlog[name]["requests_per_s"], 2)
    return out


def chart(result: dict, path: Path) -> None:
    """A bar chart of requests/s per column (empty store and with the backlog), as SVG."""
    bars = [(name, figures["requests_per_s"], "#4c72b0") for name, figures in result["empty"].items()]
    bars += [(f"{name} ({result['backlog_seeded']['messages'] // 1000}k queued)", figures["requests_per_s"], "#dd8452")
             for name, figures in result["backlog"].items()]
    top = max(v for _, v, _ in bars) or 1
    width, row, left = 760, 28, 230
    height = row * len(bars) + 60
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="sans-serif" font-size="13">',
           f'<text x="10" y="20" font-size="15">Intake, requests/s ({result["connections"]} connections, '
           f'{result["machine"]["cpus"]} cores, {result["machine"]["date"]})</text>']
    for i, (name, value, colour) in enumerate(bars):
        y = 40 + i * row
        length = (width - left - 80) * value / top
        out.append(f'<text x="{left - 8}" y="{y + 16}" text-anchor="end">{name}</text>')
        out.append(f'<rect x="{left}" y="{y + 3}" width="{length:.1f}" height="{row - 8}" fill="{colour}"/>')
        out.append(f'<text x="{left + length + 6:.1f}" y="{y + 16}">{value:g}</text>')
    out.append("</svg>")
    path.write_text("\n".join(out) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--connections", type=int, default=8)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seconds", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1,
                        help="worker processes of the gateway and of the hello (MULTIMSG_WORKERS; default: one per core, the runner's default)")
    parser.add_argument("--backlog", type=int, default=100_000)
    parser.add_argument("--apprise", help="a checkout of caronc/apprise-api (outside this repository)")
    parser.add_argument("--apprise-python", help="the python of a virtualenv with its requirements.txt installed")
    parser.add_argument("--apprise-commit", default="", help="the commit of --apprise, when it is not a git checkout")
    args = parser.parse_args()
    result = run(args)
    result["verdicts"] = verdicts(result)
    print(json.dumps(result, indent=2))
    results = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    results["intake"] = result
    RESULTS.write_text(json.dumps(results, indent=2) + "\n")
    chart(result, Path(__file__).resolve().parent / "intake.svg")


if __name__ == "__main__":
    main()
