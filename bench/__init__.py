"""Benchmarks of shelltrail's event store, each against a raw PostgreSQL baseline.

Run them with ``python -m bench`` (or ``make bench``); results are kept in
``docs/benchmarks.md``.
"""
