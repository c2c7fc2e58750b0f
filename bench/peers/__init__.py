"""Peer servers of the benchmark, each speaking the same room/echo contract (see bench.loadgen)."""
