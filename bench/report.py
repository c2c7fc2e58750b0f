"""Write ``latest.json``, the markdown tables with the Soko-to-peer ratios, and (with matplotlib) plots."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

PEERS = ("node", "pysio", "ws")
STEPPED = ("fanout", "chat", "gps", "cluster")


def _fmt(value: float | None, digits: int = 0) -> str:
    if value is None:
        return "—"
    return f"{value:,.{digits}f}"


def _mb(kb: float | None) -> str:
    return _fmt(kb / 1024, 1) if kb is not None else "—"


def _ratio(a: float | None, b: float | None) -> str:
    if not a or not b:
        return "—"
    return f"{a / b:.2f}\u00d7"


def _lat(record: dict[str, Any], prefix: str = "") -> str:
    return " / ".join(_fmt(record.get(prefix + k), 1) for k in ("p50_ms", "p99_ms", "p999_ms"))


def _stepped(sc: dict[str, Any]) -> list[str]:
    lines = [
        "| server | sockets | peak deliveries/s | p50 / p99 / p999 ms at peak | p99 ms at half peak"
        " | server CPU % at peak | server RSS MB at peak | KB per connection | load generator CPU % at peak"
        " | best deliveries per server CPU-s | every message delivered |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    notes = []
    for server, r in sc["servers"].items():
        peak = r.get("peak") or {}
        half = r.get("half_peak") or {}
        lines.append(
            f"| {server} ({r['label']}) | {r.get('connected', 0)}"
            f" | {_fmt(peak.get('deliveries_per_s'))} | {_lat(peak)} | {_fmt(half.get('p99_ms'), 1)}"
            f" | {_fmt(peak.get('server_cpu_pct'))} | {_mb(peak.get('server_rss_kb'))}"
            f" | {_fmt(r.get('kb_per_conn'), 1)} | {_fmt(peak.get('loadgen_cpu_pct'))}"
            f" | {_fmt(r.get('best_per_server_cpu_s'))} | {'yes' if r.get('all_complete') else 'no'} |"
        )
        if half:
            notes.append(f"{server}: {half['how']}")
        if r.get("fd_limit_note"):
            notes.append(f"{server}: {r['fd_limit_note']}")
    if notes:
        lines += ["", "Half peak: " + "; ".join(notes) + "."]
    soko = sc["servers"].get("soko")
    if soko:
        sp, sh = soko.get("peak") or {}, soko.get("half_peak") or {}
        lines += [
            "",
            "| Soko ÷ peer | peak deliveries/s | best deliveries per server CPU-s"
            " | p99 at half peak (lower is better) | KB per connection |",
            "|---|---|---|---|---|",
        ]
        per_cpu = "best_per_server_cpu_s"
        for peer in PEERS:
            r = sc["servers"].get(peer)
            if not r:
                continue
            pp, ph = r.get("peak") or {}, r.get("half_peak") or {}
            lines.append(
                f"| Soko ÷ {peer} | {_ratio(sp.get('deliveries_per_s'), pp.get('deliveries_per_s'))}"
                f" | {_ratio(soko.get(per_cpu), r.get(per_cpu))}"
                f" | {_ratio(sh.get('p99_ms'), ph.get('p99_ms'))}"
                f" | {_ratio(soko.get('kb_per_conn'), r.get('kb_per_conn'))} |"
            )
    ratio = sc.get("two_over_one")
    if ratio:
        lines += [
            "",
            f"Two processes ÷ one: peak deliveries/s {_fmt(ratio['peak_deliveries_per_s'], 2)}\u00d7,"
            f" best deliveries per server CPU-s {_fmt(ratio['best_per_server_cpu_s'], 2)}\u00d7"
            " (server CPU is the sum of the hub processes; Redis's CPU is `aux_cpu_s` in the JSON).",
        ]
    return lines


def _storm(sc: dict[str, Any]) -> list[str]:
    lines = [
        "| server | clients ready | entries caught up | p50 / p99 / p999 ms to ready"
        " | TCP connected at, p50 / p99 ms | SYNs dropped (listen queue full) | last ready, s"
        " | reconnects/s | entries/s | server CPU %"
        " | server RSS MB after | KB per connection | load generator CPU % | measured |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for server, r in sc["servers"].items():
        s = r.get("storm") or {}
        lines.append(
            f"| {server} ({r['label']}) | {_fmt(s.get('ready'))} / {r.get('clients')}"
            f" | {_fmt(s.get('entries')) if r.get('missed_per_client') else 'n/a'} | {_lat(s)}"
            f" | {_fmt(s.get('tcp_p50_ms'), 1)} / {_fmt(s.get('tcp_p99_ms'), 1)}"
            f" | {_fmt(s.get('listen_overflows'))} | {_fmt(s.get('wall_s'), 2)}"
            f" | {_fmt(s.get('reconnects_per_s'))}"
            f" | {_fmt(s.get('deliveries_per_s'))} | {_fmt(s.get('server_cpu_pct'))}"
            f" | {_mb(s.get('server_rss_kb'))} | {_fmt(r.get('kb_per_conn'), 1)}"
            f" | {_fmt(s.get('loadgen_cpu_pct'))} | {r.get('measured')} |"
        )
    return lines


def _idle(sc: dict[str, Any]) -> list[str]:
    lines = [
        "| server | connected | RSS at start, MB | RSS with all joined, MB | KB per connection"
        " | connect + join p50 / p99 / p999 ms | server CPU % idle | load generator CPU % idle"
        " | server fd limit | Soko ÷ this (KB per connection) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    soko_kb = (sc["servers"].get("soko") or {}).get("kb_per_conn")
    notes = []
    for server, r in sc["servers"].items():
        limits = ", ".join(_fmt(v) for v in r.get("server_nofile") or [])
        lines.append(
            f"| {server} ({r['label']}) | {r.get('connected', 0)} | {_mb(r.get('rss_base_kb'))}"
            f" | {_mb(r.get('rss_connected_kb'))} | {_fmt(r.get('kb_per_conn'), 1)} | {_lat(r, 'connect_')}"
            f" | {_fmt(r.get('idle_server_cpu_pct'), 1)} | {_fmt(r.get('idle_loadgen_cpu_pct'), 1)}"
            f" | {limits} | {_ratio(soko_kb, r.get('kb_per_conn'))} |"
        )
        if r.get("fd_limit_note"):
            notes.append(f"{server}: {r['fd_limit_note']}")
    if notes:
        lines += ["", "File descriptors: " + "; ".join(notes) + "."]
    return lines


def _catchup(sc: dict[str, Any]) -> list[str]:
    lines = [
        "| server | entries | received | in order | pages | seconds | entries/s | page p50 / p99 / p999 ms"
        " | server CPU-s | server RSS MB |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for server, r in sc["servers"].items():
        lines.append(
            f"| {server} ({r['label']}) | {r['messages']} | {_fmt(r.get('received'))}"
            f" | {'yes' if r.get('in_order') else 'no'} | {_fmt(r.get('pages'))}"
            f" | {_fmt(r.get('seconds'), 3)} | {_fmt(r.get('entries_per_s'))} | {_lat(r)}"
            f" | {_fmt(r.get('server_cpu_s'), 3)} | {_mb(r.get('server_rss_kb'))} |"
        )
    return lines


def markdown(results: dict[str, Any]) -> str:
    m = results["machine"]
    lines = [
        f"# Soko Live benchmark ({results['mode']} mode, {results['started']},"
        f" {results.get('repeat', 1)} run(s) per step)",
        "",
        f"Machine: {m['cpu']}, {m['cores']} cores, {m['os']}, Python {m['python']}, Node {m['node']}. "
        "Server and load generator share the machine.",
        "",
    ]
    if m.get("nofile_note"):
        lines += [f"File descriptors: {m['nofile']:,} per process at most here ({m['nofile_note']}).", ""]
    sections = {"storm": _storm, "idle": _idle, "catchup": _catchup}
    for name, sc in results["scenarios"].items():
        lines += [f"## {name}: {sc['description']}", ""]
        lines += sections.get(sc["kind"], _stepped)(sc)
        for server, why in (sc.get("n/a") or {}).items():
            lines.append(f"\n{server}: n/a ({why}).")
        lines.append("")
    lines += [
        "Peak: the complete step (every receiving socket got every message) with p99 ≤ 2 s and the most"
        " deliveries per second; it cannot exceed that step's offered load, and the load generator shares"
        " the cores. Deliveries per server CPU-second is the fairer comparison; it is noisy when other"
        " processes load the machine. With several runs per step, a step's figures are the medians.",
        "",
    ]
    return "\n".join(lines)


def plot(results: dict[str, Any], out: Path) -> list[str]:
    """One PNG per stepped scenario: p99 (and p50) latency against delivered load; [] without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return []
    written = []
    for name, sc in results["scenarios"].items():
        if sc["kind"] not in STEPPED or not sc["servers"]:
            continue
        fig, ax = plt.subplots(figsize=(7, 4.5))
        for server, r in sc["servers"].items():
            steps = [s for s in r.get("steps", []) if s["p99_ms"] is not None]
            if not steps:
                continue
            x = [s["deliveries_per_s"] for s in steps]
            line = ax.plot(x, [s["p99_ms"] for s in steps], marker="o", label=f"{server} p99")[0]
            ax.plot(x, [s["p50_ms"] for s in steps], marker=".", ls="--", color=line.get_color(), alpha=0.6)
        ax.set_xlabel("deliveries per second")
        ax.set_ylabel("latency, ms (solid p99, dashed p50)")
        ax.set_yscale("log")
        ax.set_title(f"{name}: {sc['description']}", fontsize=9)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend()
        fig.tight_layout()
        path = out / f"{name}.png"
        fig.savefig(path, dpi=100)
        plt.close(fig)
        written.append(path.name)
    return written


def write_reports(results: dict[str, Any], out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    results["plots"] = plot(results, out)
    (out / "latest.json").write_text(json.dumps(results, indent=2) + "\n")
    (out / "latest.md").write_text(markdown(results))
