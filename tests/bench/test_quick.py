"""The benchmark harness works end to end: ``python -m bench --quick`` against all four servers.

Asserts structure and completeness only, never timings: in the fan-out scenario each server
(the Soko hub as a real ``soko hub`` subprocess, stock python-socketio, Node socket.io, raw
websockets) had every subscriber join and delivered every published message exactly once to
every subscriber; the idle scenario measured every server's memory with all sockets joined;
the hub's catch-up returned every entry once, in seq order, in 500-entry pages; and the run
wrote ``latest.json`` and the markdown ratio table. CI installs ``bench/node`` with
``npm ci``, so a missing ``node_modules`` is a failure, not a skip.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SERVERS = ("soko", "pysio", "node", "ws")
LATENCY_KEYS = ("p50_ms", "p99_ms", "p999_ms")


@pytest.mark.node
@pytest.mark.timeout(300)
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
        timeout=280,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]

    results = json.loads((out / "latest.json").read_text())
    assert results["mode"] == "quick"
    assert results["machine"]["cores"] >= 1
    kinds = {entry["kind"]: entry for entry in results["scenarios"].values()}
    assert set(kinds) == {"fanout", "idle", "catchup"}

    fanout = kinds["fanout"]
    subscribers = fanout["subscribers"]
    assert set(fanout["servers"]) == set(SERVERS)
    for name, server in fanout["servers"].items():
        assert server["connected"] == subscribers, (name, server["connect_errors"])
        assert server["kb_per_conn"] is not None, name
        assert server["steps"], name
        for step in server["steps"]:
            assert step["publisher_errors"] == [], (name, step["publisher_errors"])
            assert step["subscribers_alive"] == subscribers, name
            assert step["expected"] == subscribers * step["messages"], name
            assert step["received"] == step["expected"], (name, step)
            assert step["duplicates"] == 0 and step["foreign"] == 0, (name, step)
            assert step["complete"], (name, step)
            assert step["server_cpu_s"] >= 0 and step["loadgen_cpu_s"] > 0, (name, step)
            assert all(step[k] is not None and step[k] > 0 for k in LATENCY_KEYS), (name, step)
            ordered = step["p50_ms"] <= step["p99_ms"] <= step["p999_ms"] <= step["max_ms"] * 1.02 + 0.01
            assert ordered, (name, step)
        assert server["all_complete"] and server["ok"], name
        # The peak also needs p99 <= 2 s, a timing this test must not depend on.
        assert server["peak"] is None or server["peak"] in server["steps"], name

    idle = kinds["idle"]
    assert set(idle["servers"]) == set(SERVERS)
    for name, server in idle["servers"].items():
        assert server["connected"] == idle["subscribers"], (name, server["connect_errors"])
        assert server["rss_connected_kb"] > 0 and server["kb_per_conn"] is not None, name
        assert server["ok"] and server["steps"] == [], name

    (catchup,) = kinds["catchup"]["servers"].values()
    assert catchup["received"] == catchup["messages"] == kinds["catchup"]["messages"]
    assert catchup["in_order"] and catchup["ok"]
    assert catchup["pages"] == -(-catchup["messages"] // 500)

    table = (out / "latest.md").read_text()
    for name in SERVERS:
        assert f"| {name} (" in table
    for peer in ("node", "pysio", "ws"):
        assert f"Soko ÷ {peer}" in table
