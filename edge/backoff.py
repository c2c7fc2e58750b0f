"""Reconnect pacing shared by the gateway's links (MQTT broker, hub)."""

from __future__ import annotations

import asyncio
import random

MIN_DELAY_S = 0.5
MAX_DELAY_S = 30.0


def delay_cap(attempt: int) -> float:
    """The longest wait before reconnect attempt ``attempt`` (1, 2, ...): 0.5 s doubling to 30 s."""
    return float(min(MAX_DELAY_S, MIN_DELAY_S * 2 ** max(0, attempt - 1)))


async def jittered_backoff(attempt: int) -> None:
    """Sleep a uniformly random time in ``[0, delay_cap(attempt)]`` (full jitter), so the
    gateways of a whole mall do not all reconnect in the same instant after an outage."""
    await asyncio.sleep(random.uniform(0, delay_cap(attempt)))  # noqa: S311 (jitter, not crypto)
