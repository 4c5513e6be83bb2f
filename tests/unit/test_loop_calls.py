"""Calls from the actors' threads to the loop, sharing one wake-up of the loop."""

from __future__ import annotations

import asyncio
import functools
import threading
from collections.abc import Callable
from typing import Any

import pytest

from shelltrail.actors.supervisor import _LoopCalls

WAIT = 10.0


def count_wakeups(monkeypatch: pytest.MonkeyPatch, loop: asyncio.AbstractEventLoop) -> list[int]:
    """Count the loop's ``call_soon_threadsafe`` calls (each one writes to its socket)."""
    wakeups = [0]
    real = loop.call_soon_threadsafe

    def counting(callback: Callable[..., Any], *args: Any, **kwargs: Any) -> asyncio.Handle:
        wakeups[0] += 1
        return real(callback, *args, **kwargs)

    monkeypatch.setattr(loop, "call_soon_threadsafe", counting)
    return wakeups


async def test_calls_from_threads_run_on_the_loop_in_order_with_one_wakeup(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    loop = asyncio.get_running_loop()
    calls = _LoopCalls(loop)
    wakeups = count_wakeups(monkeypatch, loop)
    ran: list[tuple[int, int, bool]] = []
    done = asyncio.Event()

    def record(thread: int, number: int) -> None:
        ran.append((thread, number, threading.get_ident() == loop_thread))
        if len(ran) == 40:
            done.set()

    loop_thread = threading.get_ident()

    def caller(thread: int) -> None:
        for number in range(10):
            calls.call(functools.partial(record, thread, number))

    threads = [threading.Thread(target=caller, args=(t,)) for t in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()  # the loop is held here: it runs nothing meanwhile
    assert ran == []
    await asyncio.wait_for(done.wait(), WAIT)
    assert all(on_loop for _, _, on_loop in ran)
    for caller_number in range(4):
        assert [n for t, n, _ in ran if t == caller_number] == list(range(10))
    assert wakeups[0] == 1  # forty calls, made while the loop was busy: one wake-up


async def test_a_call_after_the_loop_ran_the_others_wakes_it_again(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    loop = asyncio.get_running_loop()
    calls = _LoopCalls(loop)
    wakeups = count_wakeups(monkeypatch, loop)
    for expected in (1, 2):
        ran = asyncio.Event()
        thread = threading.Thread(target=calls.call, args=(ran.set,))
        thread.start()
        thread.join()
        await asyncio.wait_for(ran.wait(), WAIT)
        assert wakeups[0] == expected


async def test_a_call_from_the_loop_itself_does_not_wake_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    loop = asyncio.get_running_loop()
    calls = _LoopCalls(loop)
    wakeups = count_wakeups(monkeypatch, loop)
    ran = asyncio.Event()
    calls.call(ran.set)
    assert not ran.is_set()  # soon, not now: as from any other thread
    await asyncio.wait_for(ran.wait(), WAIT)
    assert wakeups[0] == 0


async def test_a_failing_call_does_not_keep_the_others_from_running() -> None:
    loop = asyncio.get_running_loop()
    calls = _LoopCalls(loop)
    ran: list[str] = []
    done = asyncio.Event()

    def fail() -> None:
        raise RuntimeError("a bug")

    def queue_three() -> None:
        calls.call(lambda: ran.append("first"))
        calls.call(fail)
        calls.call(done.set)

    thread = threading.Thread(target=queue_three)
    thread.start()
    thread.join()
    await asyncio.wait_for(done.wait(), WAIT)
    assert ran == ["first"]


def test_with_the_loop_closed_every_call_fails_not_only_the_first() -> None:
    loop = asyncio.new_event_loop()
    calls = _LoopCalls(loop)
    loop.close()
    errors: list[BaseException] = []

    def call_twice() -> None:
        for _ in range(2):
            try:
                calls.call(lambda: None)
            except RuntimeError as exc:
                errors.append(exc)

    thread = threading.Thread(target=call_twice)
    thread.start()
    thread.join()
    assert len(errors) == 2  # the first failed call is not left waiting for the loop
