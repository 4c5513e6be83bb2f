"""Measure a subject and its baseline in turns, so that drift on a noisy machine hits both."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

Run = Callable[[], Awaitable[float]]


async def alternate(
    repeat: int, subject: Run, baseline: Run, settle: Callable[[], Awaitable[None]]
) -> tuple[list[float], list[float]]:
    """Run each ``repeat`` times, alternating which goes first; ``settle()`` before every run.

    Returns the figures of the subject and of the baseline, in run order.
    """
    subject_figures: list[float] = []
    baseline_figures: list[float] = []
    for i in range(repeat):
        turns = [(subject, subject_figures), (baseline, baseline_figures)]
        if i % 2:
            turns.reverse()
        for run, figures in turns:
            await settle()
            figures.append(await run())
    return subject_figures, baseline_figures
