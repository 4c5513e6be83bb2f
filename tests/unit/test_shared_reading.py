"""SharedReading: one reading of /proc shared by callers who asked at the same time."""

from __future__ import annotations

import itertools
import threading
from collections.abc import Iterator

from shelltrail.actors.tree import SharedReading

WAIT = 10.0


def test_calls_one_after_another_each_take_a_reading() -> None:
    count = itertools.count(1)
    reading = SharedReading(lambda: next(count))
    assert [reading(), reading(), reading()] == [1, 2, 3]


def test_every_caller_gets_a_reading_that_began_after_it_called() -> None:
    """Many threads at once: each result is of a reading begun after that thread called,
    and no more readings are taken than there are calls."""
    clock = itertools.count()
    clock_lock = threading.Lock()
    readings: list[int] = []

    def tick() -> int:
        with clock_lock:
            return next(clock)

    def read() -> int:
        began = tick()
        readings.append(began)
        return began

    reading = SharedReading(read)
    results: list[tuple[int, int]] = []
    start = threading.Barrier(16)

    def caller() -> None:
        start.wait(WAIT)
        for _ in range(200):
            called = tick()
            results.append((called, reading()))

    threads = [threading.Thread(target=caller) for _ in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(WAIT)
    assert len(results) == 16 * 200
    assert all(began > called for called, began in results)
    assert len(readings) <= len(results)


def test_a_caller_arriving_during_a_reading_gets_the_next_one() -> None:
    """The reading under way began before the second call: it must not be reused."""
    first_began = threading.Event()
    release = threading.Event()
    values = iter(["old", "new"])

    def read() -> str:
        value = next(values)
        if value == "old":
            first_began.set()
            release.wait(WAIT)
        return value

    reading = SharedReading(read)
    got: list[str] = []
    first = threading.Thread(target=lambda: got.append(reading()))
    first.start()
    assert first_began.wait(WAIT)
    second: list[str] = []
    late = threading.Thread(target=lambda: second.append(reading()))
    late.start()  # it arrives while "old" is being read
    release.set()
    first.join(WAIT)
    late.join(WAIT)
    assert got == ["old"]
    assert second == ["new"]


def test_a_failed_reading_is_never_handed_to_a_caller_who_arrived_before_it() -> None:
    """C arrives, then another caller's reading begins and fails: C must read again, not
    take the reading from before its arrival."""
    outcomes: Iterator[str | Exception] = iter(
        ["before C", RuntimeError("the reading failed"), "fresh"]
    )

    def read() -> str:
        outcome = next(outcomes)
        if isinstance(outcome, Exception):
            raise outcome
        return outcome

    reading = SharedReading(read)
    assert reading() == "before C"
    lock = reading._lock  # the test orders C's wait for the lock after the failed reading
    c_waits, failed = threading.Event(), threading.Event()

    class OrderedLock:
        def __enter__(self) -> None:
            if threading.current_thread().name == "C":
                c_waits.set()
                failed.wait(WAIT)
            lock.acquire()

        def __exit__(self, *_: object) -> None:
            lock.release()

    reading._lock = OrderedLock()  # type: ignore[assignment]
    got: list[str] = []
    c = threading.Thread(target=lambda: got.append(reading()), name="C")
    c.start()
    assert c_waits.wait(WAIT)  # C has counted the readings begun, and waits for the lock
    try:
        reading()
    except RuntimeError:
        failed.set()
    c.join(WAIT)
    assert got == ["fresh"]
