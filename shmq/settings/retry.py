# SPDX-License-Identifier: Apache-2.0
"""How failed jobs are retried (RetryPolicy): a setting of a queue handle and
of a task, checked where it is given."""

from __future__ import annotations

import random

from shmq import errors
from shmq.settings.params import HANDLE_DEFAULTS

__all__ = ["RetryPolicy", "RETRIES_MAX"]

# retries= of a job is 16 bits in its envelope; 0xFFFF means "the consumer's default".
RETRIES_MAX = 0xFFFE
_RETRIES_DEFAULT = RETRIES_MAX + 1


class RetryPolicy:
    """How failed jobs are retried: ``retries`` more attempts after the first,
    waiting ``backoff * 2**(attempt-1)`` seconds (at most ``backoff_max``),
    spread by +-``jitter`` (a fraction) so that failures do not retry in step."""

    __slots__ = ("retries", "backoff", "backoff_max", "jitter")

    def __init__(self, retries: int = HANDLE_DEFAULTS["retries"], backoff: float = HANDLE_DEFAULTS["backoff"],
                 backoff_max: float = HANDLE_DEFAULTS["backoff_max"], jitter: float = 0.5):
        if isinstance(retries, bool) or not isinstance(retries, int) or not 0 <= retries < _RETRIES_DEFAULT:
            raise errors.ConfigError(f"retries={retries!r} must be an integer from 0 to {_RETRIES_DEFAULT - 1}")
        for key, value, low, high in (
            ("backoff", backoff, 0.0, 86400.0),
            ("backoff_max", backoff_max, 0.0, 30 * 86400.0),
            ("jitter", jitter, 0.0, 1.0),
        ):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value <= high:
                raise errors.ConfigError(f"{key}={value!r} must be a number from {low:g} to {high:g}")
        self.retries, self.backoff, self.backoff_max, self.jitter = retries, float(backoff), float(backoff_max), float(jitter)

    def delay(self, attempt: int) -> float:
        """Seconds before attempt `attempt` + 1 (attempt 1 is the first run)."""
        base = min(self.backoff_max, self.backoff * (2.0 ** min(attempt - 1, 60)))
        return base * (1.0 + self.jitter * (2.0 * random.random() - 1.0))

    def __repr__(self) -> str:
        return (f"RetryPolicy(retries={self.retries}, backoff={self.backoff}, backoff_max={self.backoff_max}, "
                f"jitter={self.jitter})")
