"""Retries with exponential backoff and full jitter, bounded by an overall deadline."""
from __future__ import annotations

import random
import time
from dataclasses import dataclass
from typing import Callable, TypeVar

from serving.errors import ServingError

T = TypeVar("T")


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how long to retry transient failures (see errors.RETRYABLE_CODES)."""

    max_retries: int = 5
    initial_backoff: float = 0.1
    max_backoff: float = 5.0
    multiplier: float = 2.0

    def backoff(self, retry: int, rng: random.Random = random) -> float:
        # Full jitter: clients that failed together do not come back together.
        cap = min(self.max_backoff, self.initial_backoff * self.multiplier ** retry)
        return rng.uniform(0.0, cap)


def call_with_retries(attempt: Callable[[float], T], policy: RetryPolicy, timeout: float,
                      clock: Callable[[], float] = time.monotonic,
                      sleep: Callable[[float], None] = time.sleep) -> T:
    """Run `attempt(remaining_seconds)` until it succeeds, fails for good, or time runs out.

    `attempt` raises ServingError; only retryable codes are retried, at most
    `policy.max_retries` times and never past `timeout` seconds from now. The error raised
    last carries the number of attempts made.
    """
    deadline = clock() + timeout
    retry = 0
    while True:
        remaining = deadline - clock()
        try:
            return attempt(max(remaining, 0.001))
        except ServingError as err:
            err.attempts = retry + 1
            if not err.retryable or retry >= policy.max_retries:
                raise _with_attempts(err)
            pause = policy.backoff(retry)
            if clock() + pause >= deadline:
                raise _with_attempts(err, f" (deadline of {timeout:g} s reached)")
            sleep(pause)
            retry += 1


def _with_attempts(err: ServingError, note: str = "") -> ServingError:
    return ServingError(err.code, err.message + note, attempts=err.attempts, target=err.target)
