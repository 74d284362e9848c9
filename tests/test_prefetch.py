"""The read-ahead helper shared by the RF and inference."""

from __future__ import annotations

import threading
import time

import pytest

from activeseg.prefetch import prefetch


def test_order_and_fn():
    assert list(prefetch(range(7), lambda i: i * i)) == [i * i for i in range(7)]
    assert list(prefetch(iter("abc"))) == ["a", "b", "c"]
    assert list(prefetch([])) == []


def test_runs_in_background_at_most_depth_ahead():
    started: list[int] = []
    main = threading.get_ident()
    threads = set()

    def gen():
        for i in range(6):
            threads.add(threading.get_ident())
            started.append(i)
            yield i

    def settled(n):
        deadline = time.monotonic() + 10
        while len(started) < n and time.monotonic() < deadline:
            time.sleep(0.005)
        time.sleep(0.05)  # time to (wrongly) run further ahead
        return list(started)

    it = prefetch(gen(), depth=1)
    assert next(it) == 0
    assert settled(2) == [0, 1]  # the next one is ready, nothing further
    assert next(it) == 1
    assert settled(3) == [0, 1, 2]
    assert list(it) == [2, 3, 4, 5]
    assert main not in threads


def test_exception_reaches_consumer_after_earlier_items():
    def fn(i):
        if i == 3:
            raise KeyError("boom")
        return i

    got = []
    with pytest.raises(KeyError, match="boom"):
        for v in prefetch(range(10), fn):
            got.append(v)
    assert got == [0, 1, 2]


def test_early_exit_stops_and_joins_the_thread():
    produced: list[int] = []

    def gen():
        for i in range(1000):
            produced.append(i)
            yield i

    before = threading.active_count()
    it = prefetch(gen(), depth=2, name="test-prefetch")
    for v in it:
        if v == 1:
            break
    it.close()
    assert threading.active_count() == before
    assert len(produced) <= 4  # 1 held + at most depth ahead


def test_bad_depth():
    with pytest.raises(ValueError, match="depth"):
        list(prefetch([1], depth=0))
