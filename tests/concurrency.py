"""Run callables in threads that start at the same moment, for the row-lock tests."""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from typing import Any


def run_at_once(calls: Sequence[Callable[[], Any]]) -> list[Any]:
    """Start every call together (a barrier), wait for all, return their results in order.

    Each thread closes its own database connections. An exception in any call is re-raised
    here, after all threads finished, so a test never passes on a thread that died.
    """
    barrier = threading.Barrier(len(calls))
    results: list[Any] = [None] * len(calls)
    errors: list[BaseException] = []

    def run(index: int, call: Callable[[], Any]) -> None:
        from django.db import connections

        try:
            barrier.wait()
            results[index] = call()
        except BaseException as exc:  # re-raised below
            errors.append(exc)
        finally:
            connections.close_all()

    threads = [threading.Thread(target=run, args=(i, c)) for i, c in enumerate(calls)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise errors[0]
    return results
