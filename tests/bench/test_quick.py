"""The benchmark harness works end to end: ``python -m bench --quick`` against all four servers.

Asserts structure and completeness only, never timings:

* fan-out, chat pairs and GPS: on each server (the Soko hub as a real ``soko hub`` subprocess,
  stock python-socketio, Node socket.io, raw websockets) every socket connected and joined,
  and every step delivered every message exactly once to every socket that should get it (for
  the hub: real ``stock.update``/``stock.watch``, ``chat.send`` between a shopper and a
  boutique's staff, ``driver.location`` to ``track.watch`` watchers of orders created and
  assigned over the service HTTP API); the p99 at half of the peak was measured;
* reconnect storm: every client reconnected; on the hub each one ``sync``-ed and caught up
  exactly its missed messages in order, the peers say they measured reconnect + rejoin only;
* idle: every server's memory was measured with all sockets joined (and the fd limits read);
* catch-up: the hub returned every entry once, in seq order, in 500-entry pages;
* two hub processes on Redis delivered everything, as did one, and the ratio was computed;
* ``latest.json`` and the markdown ratio table were written.

CI installs ``bench/node`` with ``npm ci``, so a missing ``node_modules`` is a failure, not a skip.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
SERVERS = ("soko", "pysio", "node", "ws")
PEERS = ("pysio", "node", "ws")
LATENCY_KEYS = ("p50_ms", "p99_ms", "p999_ms")


def check_step(name: str, step: dict[str, Any], sockets: int) -> None:
    """One step of a stepped scenario delivered every message once, and its figures are sane."""
    assert step["errors"] == [] and step["error_count"] == 0, (name, step["errors"])
    assert step["sockets_expecting"] > 0 and step["sockets_alive_after"] == sockets, (name, step)
    assert step["expected"] > 0 and step["received"] == step["expected"], (name, step)
    assert step["duplicates"] == 0 and step["foreign"] == 0, (name, step)
    assert step["complete"], (name, step)
    assert step["server_cpu_s"] >= 0 and step["loadgen_cpu_s"] > 0, (name, step)
    assert step["server_rss_kb"] > 0, (name, step)
    assert all(step[k] is not None and step[k] > 0 for k in LATENCY_KEYS), (name, step)
    ordered = step["p50_ms"] <= step["p99_ms"] <= step["p999_ms"] <= step["max_ms"] * 1.02 + 0.01
    assert ordered, (name, step)


def check_stepped(entry: dict[str, Any], sockets: int, servers: tuple[str, ...] = SERVERS) -> None:
    assert set(entry["servers"]) == set(servers)
    for name, server in entry["servers"].items():
        assert server["connected"] == sockets, (name, server["connect_errors"])
        assert server["kb_per_conn"] is not None, name
        assert server["steps"], name
        for step in server["steps"]:
            check_step(name, step, sockets)
        assert server["all_complete"] and server["ok"], name
        # The peak also needs p99 <= 2 s, a timing this test must not depend on.
        assert server["peak"] is None or server["peak"] in server["steps"], name
        half = server["half_peak"]
        if server["peak"] is not None:
            assert half["p99_ms"] is not None and half["how"].startswith("measured"), (name, half)
            if half["step"] is not None:
                check_step(name, half["step"], sockets)


@pytest.mark.node
@pytest.mark.timeout(900)
def test_quick_mode_measures_every_server(tmp_path: Path) -> None:
    assert (REPO / "bench" / "node" / "node_modules" / "socket.io" / "package.json").is_file(), (
        "run `npm ci` in bench/node"
    )
    out = tmp_path / "results"
    proc = subprocess.run(
        [sys.executable, "-m", "bench", "--quick", "--no-progress", "--out", str(out)],
        cwd=REPO,
        check=False,
        capture_output=True,
        text=True,
        timeout=880,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]

    results = json.loads((out / "latest.json").read_text())
    assert results["mode"] == "quick" and results["repeat"] == 1
    assert results["machine"]["cores"] >= 1 and results["machine"]["nofile"] > 0
    kinds = {entry["kind"]: entry for entry in results["scenarios"].values()}
    assert set(kinds) == {"fanout", "chat", "gps", "storm", "idle", "catchup", "cluster"}

    check_stepped(kinds["fanout"], kinds["fanout"]["subscribers"])
    check_stepped(kinds["chat"], 2 * kinds["chat"]["pairs"])
    gps = kinds["gps"]
    check_stepped(gps, gps["drivers"] + gps["watchers"])
    for name, server in gps["servers"].items():
        # The last step has every driver send: each fix reached each of its 1-3 watchers.
        last = server["steps"][-1]
        assert last["active_drivers"] == gps["drivers"], name
        assert last["expected"] == gps["watchers"] * last["messages"], name

    storm = kinds["storm"]
    assert set(storm["servers"]) == set(SERVERS)
    for name, server in storm["servers"].items():
        assert server["connected"] == storm["clients"], (name, server["connect_errors"])
        s = server["storm"]
        assert s["errors"] == [] and s["ready"] == storm["clients"] and s["complete"], (name, s)
        assert all(s[k] is not None and s[k] > 0 for k in LATENCY_KEYS), (name, s)
        assert server["ok"], name
    hub_storm = storm["servers"]["soko"]["storm"]
    assert hub_storm["entries"] == hub_storm["expected_entries"] == storm["clients"] * storm["missed"]
    for peer in PEERS:
        assert storm["servers"][peer]["missed_per_client"] is None
        assert "reconnect + rejoin" in storm["servers"][peer]["measured"]

    idle = kinds["idle"]
    assert set(idle["servers"]) == set(SERVERS)
    for name, server in idle["servers"].items():
        assert server["connected"] == idle["subscribers"], (name, server["connect_errors"])
        assert server["alive_after_idle"] == idle["subscribers"], name
        assert server["rss_connected_kb"] > 0 and server["kb_per_conn"] is not None, name
        assert all(n is None or n > idle["subscribers"] for n in server["server_nofile"]), name
        assert server["ok"] and server["steps"] == [], name

    (catchup,) = kinds["catchup"]["servers"].values()
    assert catchup["received"] == catchup["messages"] == kinds["catchup"]["messages"]
    assert catchup["in_order"] and catchup["ok"]
    assert catchup["pages"] == -(-catchup["messages"] // 500)
    assert set(kinds["catchup"]["n/a"]) == set(PEERS)

    cluster = kinds["cluster"]
    check_stepped(cluster, cluster["subscribers"], ("soko-1", "soko-2"))
    assert set(cluster["two_over_one"]) == {"peak_deliveries_per_s", "best_per_server_cpu_s"}
    assert set(cluster["n/a"]) == set(PEERS)

    table = (out / "latest.md").read_text()
    for name in SERVERS:
        assert f"| {name} (" in table
    for peer in PEERS:
        assert f"Soko ÷ {peer}" in table
    assert "Two processes ÷ one" in table
    assert {p.removesuffix(".png") for p in results["plots"]} == {
        name for name, e in results["scenarios"].items() if e["kind"] in ("fanout", "chat", "gps", "cluster")
    }
