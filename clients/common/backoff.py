"""Reconnect and retry pacing: capped exponential backoff with full jitter."""

from __future__ import annotations

import random

MIN_DELAY_S = 0.5
"""The cap of the first retry's wait."""


def delay(attempt: int, cap: float, base: float = MIN_DELAY_S) -> float:
    """A uniformly random wait in ``[0, min(cap, base * 2 ** (attempt - 1))]`` before retry
    ``attempt`` (1, 2, ...). Full jitter, so the apps of a whole city do not all reconnect in the
    same instant after an outage; never negative, never above ``cap``."""
    ceiling = min(cap, base * 2 ** max(0, min(attempt, 64) - 1))
    return random.uniform(0, max(0.0, ceiling))  # noqa: S311 (jitter, not crypto)
