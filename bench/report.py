"""Write ``latest.json``, the markdown table of Soko-to-peer ratios, and (with matplotlib) plots."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

PEERS = ("node", "pysio", "ws")


def _fmt(value: float | None, digits: int = 0) -> str:
    if value is None:
        return "—"
    return f"{value:,.{digits}f}"


def _ratio(a: float | None, b: float | None) -> str:
    if not a or not b:
        return "—"
    return f"{a / b:.2f}\u00d7"


def _fanout(sc: dict[str, Any]) -> list[str]:
    lines = [
        "| server | connected | peak deliveries/s | p50 / p99 / p999 ms at peak"
        " | best deliveries per server CPU-s | KB per connection | every message delivered |",
        "|---|---|---|---|---|---|---|",
    ]
    for server, r in sc["servers"].items():
        peak = r.get("peak") or {}
        lat = " / ".join(_fmt(peak.get(k), 1) for k in ("p50_ms", "p99_ms", "p999_ms"))
        lines.append(
            f"| {server} ({r['label']}) | {r.get('connected', 0)}"
            f" | {_fmt(peak.get('deliveries_per_s'))} | {lat} | {_fmt(r.get('best_per_server_cpu_s'))}"
            f" | {_fmt(r.get('kb_per_conn'), 1)}"
            f" | {'yes' if r.get('all_complete') else 'no'} |"
        )
    soko = sc["servers"].get("soko")
    if soko:
        sp = soko.get("peak") or {}
        lines += [
            "",
            "| Soko ÷ peer | peak deliveries/s | best deliveries per server CPU-s | KB per connection |",
            "|---|---|---|---|",
        ]
        per_cpu = "best_per_server_cpu_s"
        for peer in PEERS:
            r = sc["servers"].get(peer)
            if not r:
                continue
            pp = r.get("peak") or {}
            lines.append(
                f"| Soko ÷ {peer} | {_ratio(sp.get('deliveries_per_s'), pp.get('deliveries_per_s'))}"
                f" | {_ratio(soko.get(per_cpu), r.get(per_cpu))}"
                f" | {_ratio(soko.get('kb_per_conn'), r.get('kb_per_conn'))} |"
            )
    return lines


def _idle(sc: dict[str, Any]) -> list[str]:
    lines = [
        "| server | connected | RSS at start, MB | RSS with all joined, MB | KB per connection"
        " | Soko ÷ this |",
        "|---|---|---|---|---|---|",
    ]
    soko_kb = (sc["servers"].get("soko") or {}).get("kb_per_conn")
    for server, r in sc["servers"].items():
        lines.append(
            f"| {server} ({r['label']}) | {r.get('connected', 0)} | {_fmt(r.get('rss_base_kb', 0) / 1024, 1)}"
            f" | {_fmt(r.get('rss_connected_kb', 0) / 1024, 1)} | {_fmt(r.get('kb_per_conn'), 1)}"
            f" | {_ratio(soko_kb, r.get('kb_per_conn'))} |"
        )
    return lines


def _catchup(sc: dict[str, Any]) -> list[str]:
    lines = [
        "| server | entries | received | in order | pages | seconds | entries/s | server CPU-s |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for server, r in sc["servers"].items():
        lines.append(
            f"| {server} ({r['label']}) | {r['messages']} | {_fmt(r.get('received'))}"
            f" | {'yes' if r.get('in_order') else 'no'} | {_fmt(r.get('pages'))}"
            f" | {_fmt(r.get('seconds'), 3)}"
            f" | {_fmt(r.get('entries_per_s'))} | {_fmt(r.get('server_cpu_s'), 3)} |"
        )
    return lines


def markdown(results: dict[str, Any]) -> str:
    m = results["machine"]
    lines = [
        f"# Soko Live benchmark ({results['mode']} mode, {results['started']})",
        "",
        f"Machine: {m['cpu']}, {m['cores']} cores, {m['os']}, Python {m['python']}, Node {m['node']}. "
        "Server and load generator share the machine.",
        "",
    ]
    for name, sc in results["scenarios"].items():
        lines += [f"## {name}: {sc['description']}", ""]
        lines += {"fanout": _fanout, "idle": _idle, "catchup": _catchup}[sc["kind"]](sc)
        lines.append("")
    lines += [
        "Peak: the complete step (every subscriber got every message) with p99 ≤ 2 s and the most"
        " deliveries per second; it cannot exceed that step's offered load, and the load generator shares"
        " the cores. Deliveries per server CPU-second is the fairer comparison; it is noisy when other"
        " processes load the machine.",
        "",
    ]
    return "\n".join(lines)


def plot(results: dict[str, Any], out: Path) -> list[str]:
    """One PNG per scenario: p99 (and p50) latency against delivered load; [] without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return []
    written = []
    for name, sc in results["scenarios"].items():
        if sc["kind"] != "fanout":
            continue
        fig, ax = plt.subplots(figsize=(7, 4.5))
        for server, r in sc["servers"].items():
            steps = [s for s in r["steps"] if s["p99_ms"] is not None]
            if not steps:
                continue
            x = [s["deliveries_per_s"] for s in steps]
            line = ax.plot(x, [s["p99_ms"] for s in steps], marker="o", label=f"{server} p99")[0]
            ax.plot(x, [s["p50_ms"] for s in steps], marker=".", ls="--", color=line.get_color(), alpha=0.6)
        ax.set_xlabel("deliveries per second")
        ax.set_ylabel("latency, ms (solid p99, dashed p50)")
        ax.set_yscale("log")
        ax.set_title(f"{name}: {sc['description']}")
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
