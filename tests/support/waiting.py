"""Waiting in tests for something that has no event to wait on: poll a real condition until a generous deadline.

What it is for: a test that must see another thread or process reach a state (a server started, a request
reached the engine, a counter moved) and has no ``Event``/``Future`` to wait on. The poll interval is only how
often the condition is looked at; the deadline is a bound on a hang, never an expectation of speed, so make it
generous (tens of seconds): on a loaded machine things take long, and a passing test never waits for the deadline.

What it is not for: waiting a fixed time in the hope that something has happened (there is then no condition
to poll: find one, or an event), nor timing assertions.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")

#: How often the condition is looked at (seconds); short, since a poll costs little.
POLL_S = 0.02


def wait_until(condition: Callable[[], T], timeout: float = 60.0, message: str = "", interval: float = POLL_S) -> T:
    """Return ``condition()``'s first truthy value, polling until ``timeout`` seconds have passed.

    Args:
        condition (`Callable[[], T]`): looked at again until it returns something truthy.
        timeout (`float`, *optional*): seconds before giving up; a bound on a hang, not a performance limit.
        message (`str`, *optional*): what was awaited, for the failure.
        interval (`float`, *optional*): seconds between looks; longer where a look is costly (an HTTP request).

    Raises:
        AssertionError: the condition still did not hold after ``timeout`` seconds (the test fails).

    Example:
        >>> wait_until(lambda: server.started, 60, "the server to start")
    """
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"waited {timeout:g} s for {message or 'a condition'}, in vain")
        time.sleep(interval)  # the poll interval, not a synchronisation: the condition decides
