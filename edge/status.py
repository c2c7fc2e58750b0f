"""What ``soko edge status`` prints: the outbox's queue, the hub link and each sensor's health.

It reads the outbox file only (see :func:`edge.outbox.read_status`), so it works whether
or not the gateway is running.
"""

from __future__ import annotations

import dataclasses
import time
from datetime import UTC, datetime
from typing import Any

from edge.outbox import OutboxStatus


def _when(ts: float | None, now: float) -> str:
    if ts is None:
        return "never"
    stamp = datetime.fromtimestamp(ts, tz=UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    return f"{stamp} ({_age(now - ts)} ago)"


def _age(seconds: float) -> str:
    seconds = max(0.0, seconds)
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def render_status(status: OutboxStatus, now: float | None = None) -> str:
    """A human-readable report; ``now`` (Unix seconds) defaults to the current time."""
    now = time.time() if now is None else now
    t = status.totals
    oldest = "" if status.oldest_age_s is None else f", oldest {_age(status.oldest_age_s)}"
    lines = [
        f"boutique {status.boutique}",
        f"queue: {status.depth} pending ({status.stock_depth} stock, {status.health_depth} health){oldest}",
        f"uplink: last delivery {_when(status.last_ok_ts, now)};"
        f" last attempt {_when(status.last_attempt_ts, now)}",
    ]
    if status.last_error is not None:
        lines.append(f"  last error {_when(status.last_error_ts, now)}: {status.last_error}")
    lines.append(
        f"totals: created {t.created}, delivered {t.delivered}, coalesced {t.coalesced}, "
        f"dropped {t.dropped}, rejected {t.rejected} (dead letters: {status.dead_letters}); "
        f"hub answered duplicate {t.duplicate}, stale {t.stale}"
    )
    lines.append(f"sensors ({len(status.sensors)}):")
    width = max((len(s.key) for s in status.sensors), default=0)
    sku_width = max((len(s.sku) for s in status.sensors), default=0)
    for sensor in status.sensors:
        level = "-" if sensor.level is None else str(sensor.level)
        detail = f"  {sensor.detail}" if sensor.detail and sensor.health != "ok" else ""
        lines.append(
            f"  {sensor.key:<{width}}  {sensor.sku:<{sku_width}}  level {level:>5}  {sensor.health}{detail}"
        )
    if not status.sensors:
        lines.append("  (none reported yet)")
    return "\n".join(lines)


def status_json(status: OutboxStatus) -> dict[str, Any]:
    """The same report as plain JSON-able data (field names as in :class:`OutboxStatus`)."""
    return dataclasses.asdict(status)
