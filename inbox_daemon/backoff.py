"""How long to wait before attempt ``n`` again: one rule for jobs, downloads, polls and webhooks."""

from __future__ import annotations

import random


def backoff(attempt: int, base: float, cap: float) -> float:
    """Exponential backoff with full jitter (AWS architecture blog): uniform in [0, min(cap, base·2ⁿ)].

    Full jitter spreads the retries of many clients that failed together (a server restart),
    instead of having them return in lockstep."""
    return random.uniform(0, min(cap, base * 2 ** (attempt - 1)))
