"""Benchmark 9: the CPU of one store operation on the embedded backend: add, fold, claim, outcome.

``--messages`` one-message shards in a fresh data folder (fsync on, as served):
each added (``add``: one line of the journal, in one thread here, so no fsync
is shared), the journal filed into the shards (``fold``, as the drain's first
claim does), all leased by one scan (``claim_due``), each given its outcome
(``finish``), in this process. Prints wall time and user and system CPU
per message for each, the median of ``--rounds`` rounds:

    python3 -m bench.store_ops [--messages 1000] [--rounds 3]
"""

from __future__ import annotations

import argparse
import resource
import shutil
import statistics
import tempfile
import time
from pathlib import Path

from multimsg.ids import new_id
from multimsg.layout import Layout
from multimsg.model import Message, State
from multimsg.queue.backends.tiny import TinyStore


def _cpu() -> tuple[float, float]:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime, usage.ru_stime


def one_round(count: int) -> dict[str, dict[str, float]]:
    folder = Path(tempfile.mkdtemp(prefix="multimsg-bench-ops-"))
    try:
        store = TinyStore(Layout(folder / "home"), fsync=True)
        now = time.time()
        messages = [Message(id=new_id(), client="mac:00:00:00:00:00:00", data_id="d" * 16, serv="telegram", dest=str(n),
                            type="text", created_at=now, updated_at=now, next_attempt_at=now) for n in range(count)]
        claims: list[Message] = []
        steps = {
            "add": lambda: [store.add(m) for m in messages],
            "fold": store.fold,
            "claim": lambda: claims.extend(store.claim_due(time.time(), 60.0)),
            "outcome": lambda: [store.finish(c, {"state": State.DELIVERED, "platform_ids": ["1"]}, time.time()) for c in claims],
        }
        figures = {}
        for name, step in steps.items():
            (u0, s0), t0 = _cpu(), time.monotonic()
            step()
            (u1, s1), t1 = _cpu(), time.monotonic()
            figures[name] = {"wall_ms": 1000 * (t1 - t0) / count, "user_ms": 1000 * (u1 - u0) / count,
                             "system_ms": 1000 * (s1 - s0) / count}
        return figures
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.store_ops", description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)
    rounds = [one_round(args.messages) for _ in range(args.rounds)]
    print("| operation | wall ms | user ms | system ms | CPU ms |\n| --- | --- | --- | --- | --- |")
    for name in rounds[0]:
        median = {key: statistics.median(r[name][key] for r in rounds) for key in rounds[0][name]}
        print(f"| {name} | {median['wall_ms']:.3f} | {median['user_ms']:.3f} | {median['system_ms']:.3f} "
              f"| {median['user_ms'] + median['system_ms']:.3f} |")


if __name__ == "__main__":
    main()
