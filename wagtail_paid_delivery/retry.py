"""Handing work to django-q2 and trying it again: the broker, a claim's lease, backoff.

The Stripe event inbox (``inbox``) and the email outbox (``outbox``) keep their retry state on
their own rows (attempts, a next-attempt time that is also the claim's lease), because django-q2
has no backoff and its Redis broker never re-delivers a failed task. These are the pieces both
use, so a change to how long a claim lasts or how retries spread out is made once.
"""

from __future__ import annotations

import functools
import random
from datetime import timedelta
from typing import Any

#: The shortest lease, whatever the task timeout: a claim outlives any task that is still running.
#: The process-level fault tests shorten it to seconds (tests/processes.py).
SHORTEST_LEASE = timedelta(minutes=5)


@functools.cache
def broker() -> Any:
    """django-q2's configured broker, one per process.

    ``async_task`` without one builds a new broker (for Redis: a new connection) on every call;
    brokers are safe to share between threads.
    """
    from django_q.brokers import get_broker

    return get_broker()


def lease() -> timedelta:
    """How long a claimed row is left alone: longer than a task may run (Q_CLUSTER timeout),
    so a row is only taken over from a worker that died."""
    from django_q.conf import Conf

    return max(SHORTEST_LEASE, timedelta(seconds=2 * int(Conf.TIMEOUT or 0)))


def backoff(attempts: int, *, first: timedelta, longest: timedelta) -> timedelta:
    """The wait before the next try after ``attempts`` failed ones: ``first``, doubled each
    time, capped at ``longest``, plus up to 10% jitter so rows that failed together (an outage)
    spread out."""
    delay = min(first * (2 ** max(0, attempts - 1)), longest)
    return delay + delay * random.uniform(0, 0.1)  # noqa: S311  (not for security)
