"""The benchmark chart (bench/throughput.png) and table, from bench/results.json.

Run after the benchmarks: ``python -m bench.chart`` (needs matplotlib:
``pip install -e '.[bench]'``). Prints the Markdown table for bench/README.md.
"""

from __future__ import annotations

import json
from pathlib import Path

from .common import RESULTS

CHART = Path(__file__).resolve().parent / "throughput.png"
BARS = [  # scenario, label, limit
    ("wpp1", "WhatsApp\n2,000 texts", 80),
    ("wpp1-naive", "WhatsApp\none at a time", 80),
    ("telegram", "Telegram\n2,000 chats", 30),
    ("telegram-naive", "Telegram\none at a time", 30),
]


def chart(results: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    throughput = results["throughput"]
    shown = [(key, label, limit) for key, label, limit in BARS if key in throughput]
    fig, ax = plt.subplots(figsize=(7, 3.6), dpi=110)
    xs = range(len(shown))
    rates = [throughput[key]["rate"] for key, _, _ in shown]
    ax.bar(xs, rates, color=["#2b7bba" if "naive" not in key else "#b0b0b0" for key, _, _ in shown], width=0.6)
    for x, (key, _, limit) in zip(xs, shown):
        ax.hlines(limit, x - 0.4, x + 0.4, colors="#c0392b", linestyles="--", linewidth=1.5)
        ax.hlines(0.9 * limit, x - 0.4, x + 0.4, colors="#e67e22", linestyles=":", linewidth=1.2)
        figures = throughput[key]
        label = f"{figures['rate']:.1f}/s\n{figures['rate_limited']} × 429"
        if figures["rate"] > 20:  # inside a tall bar, under the limit lines
            ax.text(x, figures["rate"] / 2, label, ha="center", va="center", fontsize=8, color="white")
        else:
            ax.text(x, figures["rate"] + 1.5, label, ha="center", va="bottom", fontsize=8)
    ax.set_xticks(list(xs), [label for _, label, _ in shown], fontsize=8)
    ax.set_ylabel("messages per second (whole pass)")
    ax.set_ylim(0, 95)
    ax.set_title("Drain throughput vs the platform's limit (red: limit, orange: 90%)", fontsize=9)
    ax.spines[["top", "right"]].set_visible(False)
    fig.tight_layout()
    fig.savefig(CHART)
    print(f"wrote {CHART}")


def table(results: dict) -> str:
    throughput = results.get("throughput", {})
    rows = ["| scenario | messages | limit | seconds | rate (msg/s) | % of limit | 429s | most in any window | runner CPU ms/msg |",
            "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for key, figures in throughput.items():
        if not isinstance(figures, dict) or "rate" not in figures:
            continue
        window = "1 s" if figures["limit_window_s"] == 1.0 else f"{figures['limit_window_s']:g} s"
        rows.append(f"| {key} | {figures['messages']} | {figures['limit']} / {window} | {figures['seconds']} | {figures['rate']} | "
                    f"{figures.get('percent_of_limit', '–')} | {figures['rate_limited']} | {figures['max_in_any_window']} | "
                    f"{figures.get('runner_cpu_ms_per_message', '–')} |")
    backlog = results.get("backlog")
    if backlog:
        rows += ["", "| enqueue (`/data` + `/msg`) | median ms | p90 ms | p99 ms |", "| --- | --- | --- | --- |"]
        for key, label in (("enqueue_empty", "empty store"), ("enqueue_backlog", f"{backlog['backlog']:,} queued"),
                           ("enqueue_during_drain", f"{backlog['backlog']:,} queued, during a drain pass")):
            if key in backlog:
                e = backlog[key]
                rows.append(f"| {label} | {e['median_ms']} | {e['p90_ms']} | {e['p99_ms']} |")
        rows += ["", f"enqueue ratio (medians, {backlog['backlog']:,} queued / empty): **{backlog['enqueue_ratio']}**", "",
                 "| runner worker memory (VmHWM) | MiB |", "| --- | --- |"]
        for key, label in (("memory_idle_empty_kib", "started, empty store"), ("memory_idle_backlog_kib", f"started, {backlog['backlog']:,} queued"),
                           ("memory_after_enqueue_kib", "after the enqueue requests"), ("memory_during_drain_kib", "peak during a drain pass over the backlog"),
                           ):
            rows.append(f"| {label} | {backlog[key] / 1024:.1f} |")
        d = backlog["drain"]
        rows.append(f"\n(drain over the backlog, unpaced and without latency: {d['sent']} sent in {d['seconds_watched']} s watched, {d['rate']}/s, "
                    f"{d['runner_cpu_ms_per_message']} ms of runner CPU per message)")
    return "\n".join(rows)


def main() -> None:
    results = json.loads(RESULTS.read_text())
    if "throughput" in results:
        chart(results)
    print(table(results))


if __name__ == "__main__":
    main()
