# SPDX-License-Identifier: Apache-2.0
"""Time arguments of calls, checked in one place and turned into nanoseconds.

Every timeout, lease, delay and extension of the public API goes through
``seconds_ns``: a bool, a str or any other non-number is an ArgumentTypeError
(also a TypeError); NaN, an infinity, a negative value or one beyond its
range is an ArgumentError (also a ValueError). Each message names the
argument, the value and the range allowed.

The rule for timeouts is the standard library's (queue.Queue.get): ``None``
waits without limit, 0 does not wait, a negative timeout is an error; with
``block=False`` the timeout is not looked at.
"""

from __future__ import annotations

import math
import numbers
from typing import Any

from shmq import errors

__all__ = ["DELAY_MAX", "LEASE_MAX", "LEASE_MIN", "TIMEOUT_MAX", "seconds_ns", "timeout_ns"]

# Ten years: longer than any wait a program means; far below int64 nanoseconds (292 years).
TIMEOUT_MAX = 10 * 365 * 86400.0
DELAY_MAX = TIMEOUT_MAX
# A lease: from a millisecond to a week (the lease_timeout setting's range).
LEASE_MIN = 0.001
LEASE_MAX = 7 * 86400.0


def _range_text(low: float, high: float) -> str:
    return f"{low:g} .. {high:g} seconds"


def shown(value: Any) -> str:
    """repr(value), cut to 40 characters (an int of 400 digits is named, not printed)."""
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def seconds_ns(name: str, value: Any, low: float, high: float, hint: str = "") -> int:
    """`value` seconds as integer nanoseconds, checked against low .. high."""
    if type(value) is float and low <= value <= high:  # the common case, in one comparison (NaN fails it)
        return round(value * 1e9)
    hint = f"; {hint}" if hint else ""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise errors.ArgumentTypeError(
            f"{name}={shown(value)} must be a number of seconds (int or float), not {type(value).__name__}: "
            f"allowed {_range_text(low, high)}{hint}"
        )
    try:
        seconds = float(value)
    except (OverflowError, ValueError, TypeError):  # an int too large for a float: out of range either way
        seconds = 2.0 * high if value > 0 else -1.0
    if math.isnan(seconds):
        problem = "is not a number"
    elif math.isinf(seconds):
        problem = "is infinite"
    elif seconds < low:
        problem = "is negative" if seconds < 0 else "is too small"
    elif seconds > high:
        problem = "is too large"
    else:
        return round(seconds * 1e9)
    raise errors.ArgumentError(f"{name}={shown(value)} {problem}: allowed {_range_text(low, high)}{hint}")


def timeout_ns(value: Any, name: str = "timeout") -> int:
    """A timeout in nanoseconds; None (wait without limit) is -1."""
    if value is None:
        return -1
    return seconds_ns(name, value, 0.0, TIMEOUT_MAX, "None waits without limit")
