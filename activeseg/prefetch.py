"""Read ahead in a background thread while the caller computes (docs/architecture.md §3).

:func:`prefetch` is the one read-ahead helper: the RF computes the next block's
features while the forest predicts this one (:mod:`activeseg.bootstrap`), and
inference reads the next block's context slices while the network runs
(:mod:`activeseg.infer`). numpy and scipy release the GIL in their loops, so the two
overlap.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Generator, Iterable
from typing import Any, TypeVar

__all__ = ["prefetch"]

T = TypeVar("T")
R = TypeVar("R")

_DONE = object()


class _Failed:
    """An exception raised by the producer, re-raised in the consumer."""

    def __init__(self, exc: BaseException) -> None:
        self.exc = exc


def prefetch(
    items: Iterable[T],
    fn: Callable[[T], R] | None = None,
    *,
    depth: int = 1,
    name: str = "activeseg-prefetch",
) -> Generator[R, None, None]:
    """Yield ``fn(item)`` (or ``item`` when ``fn`` is None) for each item, in order,
    producing up to ``depth`` results ahead of the consumer in a background thread.

    Both iterating ``items`` and calling ``fn`` happen in the thread. The producer only
    starts a result when fewer than ``depth + 1`` are alive (the one the consumer
    holds counts until it asks for the next), so an ``items`` iterator that writes
    into a ring of ``depth + 1`` buffers never overwrites one in use.

    Parameters
    ----------
    items : an iterable (a generator is advanced in the background thread).
    fn : applied to each item in the background thread; None yields the items.
    depth : results produced ahead of the consumer, >= 1.
    name : name of the thread (shown in debuggers and thread dumps).

    Yields
    ------
    The results, in the order of ``items``.

    Notes
    -----
    An exception raised by ``items`` or ``fn`` is raised in the consumer when it
    reaches that position (every earlier result is yielded first). When the consumer
    stops early (``break``, an exception, ``close()``), the producer stops before the
    next item and the thread is joined (an item being produced is finished first).
    """
    if isinstance(depth, bool) or not isinstance(depth, int) or depth < 1:
        raise ValueError(f"depth must be an integer >= 1, got {depth!r}")
    results: queue.Queue = queue.Queue()
    free = threading.Semaphore(depth + 1)
    stop = threading.Event()

    def produce() -> None:
        try:
            it = iter(items)
            while True:
                free.acquire()
                if stop.is_set():
                    return
                try:
                    item = next(it)
                except StopIteration:
                    results.put(_DONE)
                    return
                results.put(item if fn is None else fn(item))
        except BaseException as exc:  # re-raised in the consumer
            results.put(_Failed(exc))

    worker = threading.Thread(target=produce, name=name, daemon=True)
    worker.start()
    try:
        while True:
            got: Any = results.get()
            if got is _DONE:
                return
            if isinstance(got, _Failed):
                raise got.exc
            yield got
            free.release()  # the consumer is done with ``got``
    finally:
        stop.set()
        free.release()  # wake a producer waiting for a free slot, so it sees ``stop``
        worker.join()
