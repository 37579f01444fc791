"""Benchmarks of kiosk-agent against the raw libraries it is built on (`make bench`).

Every headline figure is a ratio against the raw library doing the same work on the same
machine in the same run; see docs/performance.md.
"""
